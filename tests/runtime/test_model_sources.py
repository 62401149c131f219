"""One cause, one message: what a model name means is decided once
(rope_behavior.runtime.sources.model_source) for both doors, a ModelLoader and the command
line's load_model; a ModelLoader refuses a source or arguments it cannot use at once."""

import functools
import os
from pathlib import Path

import pytest
import torch

import rope_behavior as rb
from rope_behavior.cli.models import load_model
from rope_behavior.runtime import sources
from rope_behavior.runtime.executors import LocalExecutor, ModelLoader, call_with_model
from tests.models import make_bridge


def message(fn):
    with pytest.raises(rb.RopeBehaviorError) as info:
        fn()
    text = str(info.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/no/such/folder", "no such model folder: '/no/such/folder' (a hub name has the form"),
        ("./no/such", "no such model folder: 'no/such' ("),
        ("a/b/c", "no such model folder: 'a/b/c' ("),
        ("trailing/", "no such model folder: 'trailing' ("),
        ("not a hub name", "no such model folder: 'not a hub name' ("),
        ("org/mo..del", "no such model folder: 'org/mo..del' ("),
        ("", "model name '' is empty"),
        ("   ", "is empty"),
    ],
)
def test_both_doors_say_the_same_for_a_name_that_names_nothing(name, expected):
    here = message(lambda: load_model(name))
    assert expected in here
    if name.strip():
        assert message(lambda: ModelLoader(name)()) == here
        assert message(lambda: call_with_model(LocalExecutor(), ModelLoader(name), len)) == here


def test_a_name_too_long_for_a_path_is_one_line_at_both_doors():
    name = "x" * 5000
    here = message(lambda: load_model(name))
    assert here.startswith(f"no such model folder: '{'x' * 100}'... (File name too long;")
    assert message(lambda: ModelLoader(name)()) == here


def test_a_file_is_not_a_model_folder_at_either_door(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    here = message(lambda: load_model(str(weights)))
    assert here.startswith(f"model folder '{weights}' is a file, not a folder")
    assert message(lambda: ModelLoader(str(weights))()) == here
    assert message(lambda: ModelLoader(weights)()) == here  # a Path works as a str does


def test_a_folder_without_config_is_named(tmp_path):
    assert "lacks config.json" in message(lambda: ModelLoader(str(tmp_path))())
    assert "lacks config.json" in message(lambda: load_model(str(tmp_path)))


@pytest.fixture
def offline(monkeypatch):
    """A hub name not in the cache, and a hub that cannot be reached."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(sources, "hub_reachable", lambda: (False, "huggingface.co: no network"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_a_hub_name_offline_is_one_line_at_both_doors(offline):
    here = message(lambda: load_model("org/model"))
    assert here.startswith(
        "cannot reach the Hugging Face hub to download 'org/model' (huggingface.co: no "
        "network), and no folder of that name exists here; offline, pass a local Hugging "
        "Face folder instead"
    )
    assert message(lambda: ModelLoader("org/model", dtype=torch.float32)()) == here
    assert message(lambda: load_model("gpt2")) == here.replace("org/model", "gpt2")


def test_hf_hub_offline_is_said_without_trying_the_network(offline, monkeypatch):
    def no_network():
        raise AssertionError("the network was tried")

    monkeypatch.setattr(sources, "hub_reachable", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "(HF_HUB_OFFLINE is set)" in message(lambda: ModelLoader("org/model")())


def test_a_cached_hub_model_loads_offline_and_the_environment_is_restored(monkeypatch):
    import huggingface_hub
    from transformer_lens.model_bridge import TransformerBridge

    seen = {}

    def boot(name, *args, **kwargs):
        seen.update(name=name, offline=os.environ.get("HF_HUB_OFFLINE"), kwargs=kwargs)
        raise OSError("org/model is a gated repo.\nAsk for access on its page.")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/cache/c")
    monkeypatch.setattr(TransformerBridge, "boot_transformers", boot)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    text = message(lambda: ModelLoader("org/model", dtype=torch.float16)("cpu"))
    assert text == "cannot load 'org/model' from the hub: org/model is a gated repo."
    assert seen == {
        "name": "org/model",
        "offline": "1",
        "kwargs": {"dtype": torch.float16, "device": "cpu"},
    }
    assert os.environ["HF_HUB_OFFLINE"] == "0"
    assert message(lambda: load_model("org/model")) == text


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (5, "ModelLoader source=5 of type int; expected a hub name or folder"),
        (None, "ModelLoader source=None of type NoneType"),
        (b"org/model", "of type bytes"),
        (["org/model"], "of type list"),
        ("", "ModelLoader source='' is empty"),
        ("  ", "is empty"),
    ],
)
def test_a_source_that_is_neither_a_name_nor_a_function_is_refused(source, expected):
    assert expected in message(lambda: ModelLoader(source))


def test_arguments_that_do_not_fit_the_source_are_refused_at_once():
    text = message(lambda: ModelLoader(make_bridge, "llama_gqa", 1, 2, 3))
    assert "the arguments do not fit tests.models.make_bridge(name, seed=..., " in text
    assert "too many positional arguments" in text
    assert "missing a required argument: 'name'" in message(lambda: ModelLoader(make_bridge))
    text = message(lambda: ModelLoader("org/model", dtyp=torch.float16))
    assert "TransformerBridge.boot_transformers(model_name, hf_config_overrides=..." in text
    assert "unexpected keyword argument 'dtyp'" in text
    ModelLoader("org/model", dtype=torch.float16, revision="main")  # these fit
    ModelLoader(torch.nn.Linear, 2, 3)  # a class is a function returning a model
    assert isinstance(ModelLoader(torch.nn.Linear, 2, 3)(), torch.nn.Linear)


def test_a_source_that_carries_a_model_is_refused(bridge_factory):
    model = bridge_factory("llama_gqa")
    for source in (model, functools.partial(lambda m: m, model), model.to):
        assert "a model is never pickled" in message(lambda s=source: ModelLoader(s))


def test_a_loader_that_returns_no_model_says_so():
    assert "returned int, not a model" in message(lambda: ModelLoader(lambda: 3)())
    assert "returned NoneType, not a model" in message(lambda: ModelLoader(lambda: None)())


def test_a_loader_is_hashable_and_equal_by_value():
    a = ModelLoader(make_bridge, "llama_gqa", seed=0)
    b = ModelLoader(make_bridge, "llama_gqa", seed=0)
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert ModelLoader(Path("/x")) == ModelLoader("/x")


def test_a_function_s_own_error_passes_through_a_local_executor_unchanged():
    def fails():
        raise ValueError("bad config")

    with pytest.raises(ValueError, match="bad config"):
        call_with_model(LocalExecutor(), ModelLoader(fails), len)
