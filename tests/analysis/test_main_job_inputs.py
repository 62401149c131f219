"""The main job's doors: counts, sizes, seeds and flags checked where they enter; one mode
(eval) for every analysis; summaries of the whole corpus, not of its first shard."""

import pytest
import torch

import rope_behavior as rb
from rope_behavior.errors import RopeBehaviorError
from tests.models import hook_count, make_bridge


@pytest.fixture(scope="module")
def lm():
    return rb.load_shipped_lm()


@pytest.fixture(scope="module")
def texts():
    return [t[:400] for t in rb.heldout_texts()[:4]]


# -- 1. tokenize_prompts: no silent cuts -------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"max_prompts": -1}, r"max_prompts=-1; expected an int >= 1 \(or None for all texts\)"),
        ({"max_prompts": 0}, r"max_prompts=0; expected an int >= 1"),
        ({"max_prompts": True}, r"max_prompts=True \(bool\); expected an int >= 1"),
        ({"max_prompts": 2.0}, r"max_prompts=2.0 \(float\)"),
        (
            {"context": -1},
            r"context=-1; expected an int in \[1, 128\] \(the model's position table covers n_ctx=128 tokens\)",
        ),
        ({"context": 0}, r"context=0; expected an int in \[1, 128\]"),
        ({"context": 129}, r"context=129; expected an int in \[1, 128\] \(.*n_ctx=128"),
        ({"context": False}, r"context=False \(bool\)"),
        ({"context": "64"}, r"context='64' \(str\)"),
    ],
)
def test_tokenize_prompts_refuses_bad_numbers(lm, texts, kw, match):
    with pytest.raises(RopeBehaviorError, match=match):
        rb.tokenize_prompts(lm, texts, **{"context": 32, **kw})


def test_tokenize_prompts_keeps_what_it_is_asked_to(lm, texts):
    tokens, mask = rb.tokenize_prompts(lm, texts, context=32, max_prompts=3)
    assert tuple(tokens.shape) == (3, 32)
    assert mask.sum(1).tolist() == [32, 32, 32]  # nothing cut from the end of any prompt
    tokens, mask = rb.tokenize_prompts(lm, texts, context=lm.cfg.n_ctx)
    assert tokens.shape[0] == 4
    assert int(mask.sum(1).max()) <= lm.cfg.n_ctx
    assert rb.tokenize_prompts(lm, texts, context=1)[0].tolist() == [[0]] * 4  # BOS only


@pytest.mark.parametrize("texts", ["one string", [], ["ok", 3], None])
def test_tokenize_prompts_refuses_bad_texts(lm, texts):
    with pytest.raises(RopeBehaviorError, match="texts must be a non-empty list of strings"):
        rb.tokenize_prompts(lm, texts)


# -- 1. every count, size, seed and flag of the main job checked at its door ------------------

_TOKS = torch.randint(3, 2000, (2, 40), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: rb.analyze(m, _TOKS, batch_size=0), r"batch_size=0; expected an int >= 1"),
        (lambda m: rb.analyze(m, _TOKS, batch_size=-2), r"batch_size=-2"),
        (lambda m: rb.analyze(m, _TOKS, batch_size=2.5), r"batch_size=2.5 \(float\)"),
        (lambda m: rb.analyze(m, _TOKS, block_size=True), r"block_size=True \(bool\)"),
        (
            lambda m: rb.analyze(m, _TOKS, pair_prompts=0),
            r"pair_prompts=0; expected an int >= 1 \(or None",
        ),
        (
            lambda m: rb.analyze(m, _TOKS, per_pair="no"),
            r"per_pair='no' \(str\); expected True or False",
        ),
        (
            lambda m: rb.analyze(m, _TOKS, seed=-1),
            r"seed=-1; expected a non-negative int below 2\*\*63",
        ),
        (lambda m: rb.analyze(m, _TOKS, seed=2**64), r"seed=18446744073709551616"),
        (lambda m: rb.analyze(m, _TOKS, seed=1.5), r"seed=1.5"),
        (lambda m: rb.analyze(m, _TOKS, name=3), r"name=3 \(int\); expected a str or None"),
        (lambda m: rb.analyze(m, _TOKS, progress="yes"), r"progress='yes'"),
        (lambda m: rb.score_corpus(m, _TOKS, batch_size=None), r"batch_size=None \(NoneType\)"),
        (lambda m: rb.score_heads(m, _TOKS, n_swaps=0), r"n_swaps=0; expected an int >= 1"),
        (lambda m: rb.score_heads(m, _TOKS, n_swaps=2.0), r"n_swaps=2.0 \(float\)"),
        (
            lambda m: rb.score_heads(m, _TOKS, tau=float("nan")),
            r"tau=nan; expected a number in \(0, inf\)",
        ),
        (
            lambda m: rb.score_heads(m, _TOKS, min_swapped_mass=float("nan")),
            r"min_swapped_mass=nan",
        ),
        (
            lambda m: rb.score_heads(m, _TOKS, sequences_per_forward=0, mode="tokens"),
            r"sequences_per_forward=0",
        ),
        (lambda m: rb.score_heads(m, _TOKS, seed=True), r"seed=True"),
        (lambda m: rb.score_heads(m, _TOKS, layers=1.0), r"layer=1.0 \(float\)"),
        (
            lambda m: rb.score_heads(m, _TOKS, per_pair=1),
            r"per_pair=1 \(int\); expected True or False",
        ),
        (lambda m: rb.capture(m, _TOKS, grad="no"), r"grad='no' \(str\); expected True or False"),
        (
            lambda m: rb.frequency_usage(rb.capture(m, _TOKS), attention_weighted=1),
            r"attention_weighted=1",
        ),
        (lambda m: rb.frequency_usage(rb.capture(m, _TOKS), layers="0"), r"layer='0' \(str\)"),
        (
            lambda m: rb.score_heads(m, _TOKS[:, :20], block_size=4).mean(n_boot=1),
            r"n_boot=1; expected an int >= 2",
        ),
        (
            lambda m: rb.score_heads(m, _TOKS[:, :20], block_size=4).mean(level=1.0),
            r"level=1.0; expected a number in \(0, 1\)",
        ),
        (lambda m: rb.score_heads(m, _TOKS[:, :20], block_size=4).mean(seed=-3), r"seed=-3"),
    ],
)
def test_main_job_numbers_are_checked_at_the_door(lm, call, match):
    with pytest.raises(RopeBehaviorError, match=match):
        call(lm)
    assert hook_count(lm) == 0


def test_correspondence_numbers_are_checked(lm):
    toks = _TOKS[:, :24]
    hs = rb.score_heads(lm, toks, block_size=4)
    usage = rb.frequency_usage(rb.capture(lm, toks))
    for kw, match in [
        ({"n_permutations": 0}, r"n_permutations=0; expected an int >= 1"),
        ({"confidence_level": 0}, r"confidence_level=0; expected a number in \(0, 1\)"),
        ({"confidence_level": float("nan")}, r"confidence_level=nan"),
        ({"seed": "0"}, r"seed='0'"),
    ]:
        with pytest.raises(RopeBehaviorError, match=match):
            rb.behavior_frequency_correspondence(hs, usage, **kw)


# -- 2. one analysis, one mode -------------------------------------------------------------


def _flags(model):
    from rope_behavior.model.context import _every_module

    return [m.training for m in _every_module(model)]


def test_analyze_in_training_mode_equals_eval_mode_and_restores_the_flags():
    model = make_bridge("llama_gqa", attention_dropout=0.5)  # dropout between the layers
    toks = torch.randint(3, 97, (4, 40), generator=torch.Generator().manual_seed(0))
    model.train()
    with torch.no_grad():  # dropout is live: two training forwards differ
        assert not torch.equal(model(toks), model(toks))
    model.eval()
    want = rb.analyze(model, toks, block_size=4, batch_size=2, per_pair=False)
    model.train()
    model.original_model.model.layers[1].train(False)  # a mixed state is put back as it was
    before = _flags(model)
    assert any(before)
    assert not all(before)
    for _ in range(2):
        got = rb.analyze(model, toks, block_size=4, batch_size=2, per_pair=False)
        assert _flags(model) == before
        torch.testing.assert_close(
            got.scores.s_pos, want.scores.s_pos, rtol=0, atol=0, equal_nan=True
        )
        torch.testing.assert_close(
            got.scores.s_sym, want.scores.s_sym, rtol=0, atol=0, equal_nan=True
        )
        torch.testing.assert_close(got.usage.logit_usage, want.usage.logit_usage, rtol=0, atol=0)
        torch.testing.assert_close(
            got.summary.s_pos_lo, want.summary.s_pos_lo, rtol=0, atol=0, equal_nan=True
        )
    assert hook_count(model) == 0


def test_interrupted_scoring_restores_the_flags():
    model = make_bridge("llama_gqa", attention_dropout=0.5)
    toks = torch.randint(3, 97, (2, 40), generator=torch.Generator().manual_seed(1))
    model.train()
    before = _flags(model)

    def interrupt(x, hook=None):
        raise KeyboardInterrupt

    with (
        model.hooks(fwd_hooks=[("blocks.1.attn.hook_rot_q", interrupt)]),
        pytest.raises(KeyboardInterrupt),
    ):
        rb.score_heads(model, toks, block_size=4, mode="tokens")
    assert _flags(model) == before
    assert hook_count(model) == 0


def test_a_sweep_refuses_a_bridge_whose_wrapped_model_trains():
    model = make_bridge("llama_gqa", attention_dropout=0.5)
    model.eval()
    model.original_model.train()  # the Bridge says eval, its Hugging Face model trains
    toks = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(2))
    with pytest.raises(RopeBehaviorError, match="training mode"):
        rb.frequency_patching_sweep(model, toks, toks.flip(1), lambda x: x.sum(), bands=2)
    assert hook_count(model) == 0


# -- 3. summaries of the whole corpus ----------------------------------------------------------


def _right_padded(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    toks = torch.randint(3, 97, (len(lengths), max(lengths)), generator=gen)
    mask = torch.zeros_like(toks)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return toks.masked_fill(mask == 0, 0), mask


def test_block_pairs_describe_the_whole_corpus():
    model = make_bridge("llama_gqa")
    # the first shard holds the long prompts (14 blocks of 4: 91 block pairs), a later
    # one the short (4 blocks: 6 pairs); the swaps are those every prompt has
    toks, mask = _right_padded([60, 58, 50, 20, 19])
    whole = rb.score_heads(model, toks, attention_mask=mask, block_size=4)
    assert (whole.n_block_pairs, len(whole.swaps)) == (6, 6)
    corpus = rb.score_corpus(
        model, toks, attention_mask=mask, batch_size=2, block_size=4, per_pair=True, pair_prompts=2
    )
    assert corpus.scores.n_block_pairs == 6
    assert corpus.pair_scores.n_block_pairs == 6  # per-pair scores of the first (long) prompts
    assert corpus.scores.swaps == whole.swaps
    assert "swaps=6 of 6 block pairs" in repr(corpus.scores)
    a = rb.analyze(model, toks, attention_mask=mask, batch_size=2, block_size=4, pair_prompts=2)
    assert (
        a.summary_dict()["block_pairs"]
        == a.summary.n_block_pairs
        == a.pair_summary.n_block_pairs
        == 6
    )
    assert a.summary_dict()["swaps"] == 6
    assert a.n_tokens == int(mask.sum())
    assert a.n_prompts == 5
    # every per-prompt field lines up with its prompt
    torch.testing.assert_close(corpus.scores.query_pos[:, 0], mask.sum(1) - 1)
    torch.testing.assert_close(
        corpus.scores.s_pos, whole.s_pos, rtol=1e-6, atol=1e-6, equal_nan=True
    )


def test_concat_scores_takes_the_fewest_block_pairs():
    from rope_behavior.analysis.corpus import concat_scores

    model = make_bridge("llama_gqa")
    toks, mask = _right_padded([60, 58, 20, 19])
    swaps = [(0, 1), (1, 2)]
    parts = [
        rb.score_heads(
            model, toks[i : i + 2], attention_mask=mask[i : i + 2], block_size=4, swaps=swaps
        )
        for i in (0, 2)
    ]
    assert parts[0].n_block_pairs > parts[1].n_block_pairs
    joined = concat_scores(parts)
    assert joined.n_block_pairs == parts[1].n_block_pairs
    assert joined.query_positions == (59,)
