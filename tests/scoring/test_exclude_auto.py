"""``exclude_keys="auto"`` on a model that cannot say which token is BOS (a TransformerLens
model without a tokenizer): no key is excluded, and a warning says so and names the
options; ``"bos"`` is refused. Never a silently different answer."""

import warnings
from types import SimpleNamespace

import pytest
import torch

import rope_behavior as rb
from rope_behavior.model.adapters import adapter_for
from rope_behavior.scoring.geometry import (
    ExcludeKeysWarning,
    UnstatedBos,
    excluded_keys,
    model_bos,
)
from rope_behavior.tasks import ToyConfig, ToyRotaryTransformer
from tests.models import VOCAB, make_bridge

TOKS = torch.cat([torch.ones(2, 1, dtype=torch.long), torch.randint(3, VOCAB, (2, 20))], dim=1)


@pytest.fixture(scope="module")
def bare():
    """A bridge built from a config: it has no tokenizer."""
    return make_bridge("llama_gqa")


def test_model_bos_tells_unstated_from_none(bare):
    assert bare.tokenizer is None
    unstated = model_bos(adapter_for(bare))
    assert isinstance(unstated, UnstatedBos)
    assert unstated.why == "the model (LlamaForCausalLM) has no tokenizer"
    toy = ToyRotaryTransformer(ToyConfig(d_vocab=VOCAB, n_ctx=32))
    assert model_bos(adapter_for(toy)) is None  # a toy model states its BOS (none here)
    toy.bos_token_id = 1
    assert model_bos(adapter_for(toy)) == 1


def test_model_bos_reads_the_tokenizer_when_there_is_one():
    model = make_bridge("llama_gqa")
    model.tokenizer = SimpleNamespace(bos_token_id=1)
    assert model_bos(adapter_for(model)) == 1
    model.cfg.default_prepend_bos = False  # a tokenizer that prepends none: stated
    assert model_bos(adapter_for(model)) is None


def test_auto_without_a_tokenizer_warns_and_names_the_options():
    unstated = UnstatedBos("the model (X) has no tokenizer")
    with pytest.warns(ExcludeKeysWarning) as caught:
        out = excluded_keys(TOKS, "auto", unstated)
    assert not out.any()
    text = str(caught[0].message)
    assert text.startswith("exclude_keys='auto' excludes no key: the model (X) has no tokenizer")
    assert "exclude_keys='none'" in text
    assert "exclude_keys=(0,)" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert excluded_keys(TOKS, "auto", 1)[:, 0].all()  # a stated BOS: excluded, quietly
        assert not excluded_keys(TOKS, "auto", None).any()  # stated: prepends none
        assert excluded_keys(TOKS, (0,), unstated)[:, 0].all()  # explicit: no warning
        assert not excluded_keys(TOKS, "none", unstated).any()
    with pytest.raises(rb.RopeBehaviorError, match=r"'bos' but the model \(X\) has no tokenizer"):
        excluded_keys(TOKS, "bos", unstated)
    with pytest.raises(rb.RopeBehaviorError, match=r"'bos' but the model states no BOS token"):
        excluded_keys(TOKS, "bos", None)


def test_scorable_prompts_warns_on_a_bridge_without_a_tokenizer(bare):
    with pytest.warns(ExcludeKeysWarning, match=r"\(LlamaForCausalLM\) has no tokenizer") as w:
        auto = rb.scorable_prompts(bare, TOKS[:, :9], block_size=4)
    assert w[0].filename == __file__  # the user's line, not a frame inside the library
    with pytest.warns(ExcludeKeysWarning) as w:
        rb.score_heads(bare, TOKS[:, :12], block_size=4)  # through the shape-checking door
    assert {x.filename for x in w} == {__file__}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        none = rb.scorable_prompts(bare, TOKS[:, :9], block_size=4, exclude_keys="none")
        first = rb.scorable_prompts(bare, TOKS[:, :9], block_size=4, exclude_keys=(0,))
    # 8 keys before the last token: two blocks of 4 unless key 0 (the BOS here) is excluded
    assert none.all()
    assert not first.any()
    assert torch.equal(auto, none)  # what the warning says: nothing was excluded
