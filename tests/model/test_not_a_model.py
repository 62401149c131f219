"""What is not a model is refused at the one door (model.context.resolve) with the way on:
a hub name or folder is loaded first, a plain Hugging Face model is wrapped first."""

import pathlib

import pytest
import torch
import transformers

import rope_behavior as rb
from rope_behavior.errors import NotAModelError

NAME = "meta-llama/Llama-3.2-1B"


def _plain_hf():
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        vocab_size=50,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


ENTRIES = [
    lambda m: rb.RopeSpec.from_model(m),
    lambda m: rb.score_heads(m, torch.zeros(1, 40, dtype=torch.long)),
    lambda m: rb.capture(m, torch.zeros(1, 4, dtype=torch.long)),
    lambda m: rb.analyze(m, torch.zeros(1, 40, dtype=torch.long)),
    lambda m: rb.scorable_prompts(m, torch.zeros(1, 40, dtype=torch.long)),
    lambda m: rb.run_with_interventions(m, torch.zeros(1, 4, dtype=torch.long), []),
]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("name", [NAME, pathlib.Path("runs/my-checkpoint")])
def test_a_name_is_refused_with_how_to_load_it(entry, name):
    with pytest.raises(NotAModelError) as err:
        entry(name)
    text = str(err.value)
    shown = repr(str(name))
    assert text.startswith(
        f"expected a model, got the {'string' if isinstance(name, str) else 'path'} {shown}; load it first"
    )
    assert f"TransformerBridge.boot_transformers({shown})" in text
    assert f"HookedTransformer.from_pretrained({shown})" in text
    assert "rope_behavior.load_shipped_lm()" in text
    assert isinstance(err.value, rb.RopeBehaviorError)
    assert isinstance(err.value, TypeError)


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_plain_hugging_face_model_is_refused_with_how_to_wrap_it(entry):
    hf = _plain_hf()
    before = [type(m) for m in hf.modules()]
    with pytest.raises(NotAModelError) as err:
        entry(hf)
    text = str(err.value)
    assert "got a plain Hugging Face LlamaForCausalLM" in text
    assert "TransformerBridge.boot_transformers(name_or_folder)" in text
    assert "build_bridge_from_module(model, 'LlamaForCausalLM', hf_config=model.config)" in text
    assert [type(m) for m in hf.modules()] == before  # the model was not touched


@pytest.mark.parametrize("thing", [3, None, object(), torch.nn.Linear(2, 2)])
def test_other_objects_are_refused(thing):
    with pytest.raises(
        NotAModelError, match=r"expected a TransformerLens TransformerBridge or HookedTransformer"
    ):
        rb.RopeSpec.from_model(thing)


def test_a_model_loader_outside_the_sharded_jobs():
    loader = rb.ModelLoader(NAME)
    with pytest.raises(
        NotAModelError, match=r"a ModelLoader builds a model where analyze, score_corpus"
    ):
        rb.score_heads(loader, torch.zeros(1, 40, dtype=torch.long))


def test_the_suggested_wrapping_works():
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    cfg = transformers.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        vocab_size=50,
    )
    cfg._attn_implementation = "eager"
    hf = transformers.LlamaForCausalLM(cfg).eval()
    bridge = build_bridge_from_module(hf, "LlamaForCausalLM", hf_config=hf.config)
    assert rb.RopeSpec.from_model(bridge).n_layers == 1
