"""score_corpus(next_token=True): the scoring forwards run on to the logits, which give
the next-token loss and accuracy; the scores are those of the forwards that stop early."""

import pytest
import torch

import rope_behavior as rb
from rope_behavior.analysis.corpus import score_corpus
from rope_behavior.analysis.next_token import NextToken
from rope_behavior.errors import RopeBehaviorError
from tests.models import VOCAB, hook_count


def _by_hand(model, tokens, mask, values=()):
    with torch.no_grad():
        logits = rb.run_with_interventions(model, tokens, values, attention_mask=mask)
    real = mask.bool()
    valid = real[:, 1:] & real[:, :-1]
    pred, target = logits[:, :-1][valid].double(), tokens[:, 1:][valid]
    loss = torch.nn.functional.cross_entropy(pred, target)
    return float(loss), float((pred.argmax(-1) == target).double().mean()), int(valid.sum())


@pytest.mark.parametrize("which", ["llama_gqa", "gpt_neox"])
def test_loss_from_the_scoring_forward(bridge_factory, which, gen):
    model = bridge_factory(which)
    tokens = torch.randint(3, VOCAB, (5, 40), generator=gen)
    mask = torch.ones_like(tokens)
    mask[2, 30:] = 0  # right padding: predictions into or out of it do not count
    kw = dict(attention_mask=mask, batch_size=2, block_size=4)
    plain = score_corpus(model, tokens, **kw)
    both = score_corpus(model, tokens, next_token=True, **kw)
    assert plain.next_token is None
    torch.testing.assert_close(
        both.scores.s_pos, plain.scores.s_pos, rtol=0, atol=0, equal_nan=True
    )
    torch.testing.assert_close(both.usage.logit_usage, plain.usage.logit_usage, rtol=0, atol=0)
    loss, acc, n = _by_hand(model, tokens, mask)
    assert both.next_token.n_predictions == n == 5 * 39 - 10
    assert both.next_token.loss == pytest.approx(loss, rel=1e-6)  # float32 terms
    assert both.next_token.accuracy == pytest.approx(acc, rel=1e-12)
    with rb.intervened(model, [rb.PRoPE(0.5)]):  # under an edit: the edited model's loss
        edited = score_corpus(model, tokens, next_token=True, **kw)
    assert edited.next_token.loss == pytest.approx(
        _by_hand(model, tokens, mask, [rb.PRoPE(0.5)])[0], rel=1e-6
    )
    assert edited.next_token.loss != both.next_token.loss
    assert hook_count(model) == 0


def test_next_token_refusals():
    with pytest.raises(RopeBehaviorError, match=r"no prediction of a real token"):
        _ = NextToken(0.0, 0, 0).loss
    tokens = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(RopeBehaviorError, match=r"next_token=1 \(int\); expected True or False"):
        score_corpus(torch.nn.Linear(1, 1), tokens, next_token=1)
