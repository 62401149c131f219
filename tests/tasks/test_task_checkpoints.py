"""Checkpoints: identical logits after a round trip, config and task stored, clear errors."""

import pytest
import torch

from rope_behavior.tasks import (
    IndexTask,
    RetrievalTask,
    ToyConfig,
    ToyRotaryTransformer,
    checkpoint_info,
    load_checkpoint,
    save_checkpoint,
    toy_model,
)


def test_round_trip_gives_identical_logits(tmp_path, generator):
    task = RetrievalTask(length=4, n_symbols=5, n_attributes=3)
    model = toy_model(task, d_head=8, n_layers=2, final_layer_norm=True, seed=4)
    with torch.no_grad():
        model.rotary_omega[1].zero_()  # a NoPE layer must survive the round trip
        model.W_U.add_(1.0)
    path = save_checkpoint(
        model, tmp_path / "m.safetensors", task=task, extra={"setting": "nope@1"}
    )
    loaded = load_checkpoint(path)
    tokens = task.sample(8, generator).tokens
    torch.testing.assert_close(loaded(tokens), model(tokens), rtol=0, atol=0)
    torch.testing.assert_close(loaded.rotary_omega, model.rotary_omega, rtol=0, atol=0)
    info = checkpoint_info(path)
    assert info.config == model.cfg
    assert info.task == task
    assert info.extra == {"setting": "nope@1"}


def test_load_into_a_matching_model(tmp_path):
    cfg = ToyConfig(d_vocab=10, n_ctx=6, d_head=8)
    path = save_checkpoint(ToyRotaryTransformer(cfg, seed=1), tmp_path / "m.safetensors")
    target = ToyRotaryTransformer(cfg, seed=2)
    assert load_checkpoint(path, into=target) is target
    assert torch.equal(target.W_E, ToyRotaryTransformer(cfg, seed=1).W_E)
    assert checkpoint_info(path).task is None


def test_mismatched_config_is_a_clear_error(tmp_path):
    path = save_checkpoint(
        ToyRotaryTransformer(ToyConfig(d_vocab=10, n_ctx=6, d_head=8)), tmp_path / "m.safetensors"
    )
    other = ToyRotaryTransformer(ToyConfig(d_vocab=12, n_ctx=6, d_head=8))
    with pytest.raises(
        ValueError, match=r"does not match the model's config: d_vocab: checkpoint 10 vs model 12"
    ):
        load_checkpoint(path, into=other)


def test_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"Cannot read checkpoint"):
        load_checkpoint(bogus)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(ValueError, match=r"is not a rope_behavior toy checkpoint"):
        checkpoint_info(plain)


def test_extra_must_be_json(tmp_path):
    model = toy_model(IndexTask(length=3, n_symbols=3), d_head=4)
    with pytest.raises(ValueError, match=r"extra must be JSON-serialisable"):
        save_checkpoint(model, tmp_path / "m.safetensors", extra={"x": object()})
