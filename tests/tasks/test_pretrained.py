"""The shipped checkpoints: one-call loading, recorded accuracy reproduced, clear errors."""

import pytest
import torch

from rope_behavior.tasks import (
    PRETRAINED,
    IndexTask,
    checkpoint_info,
    evaluate,
    load_pretrained,
    load_trained,
    save_checkpoint,
    toy_model,
)
from rope_behavior.tasks.pretrained import pretrained_path

EXPECTED = {
    "index": ("index", "high"),
    "retrieval": ("retrieval", "nope"),
    "partial_induction": ("partial_induction", "two_angle:0.1"),
}


@pytest.mark.parametrize("name", PRETRAINED)
def test_shipped_model_reaches_its_recorded_accuracy(name, n_hooks):
    model, task, setting = load_pretrained(name)
    assert (task.kind, setting.name) == EXPECTED[name]
    extra = checkpoint_info(pretrained_path(name)).extra
    assert extra["setting"] == setting.name
    assert extra["accuracy"] >= 0.98
    fresh = torch.Generator().manual_seed(2024)  # not the recorded evaluation seed
    accuracy = evaluate(model, task, 2048, fresh, fwd_hooks=setting.hooks)
    assert accuracy >= extra["accuracy"] - 0.02
    assert n_hooks(model) == 0


def test_shipped_checkpoints_are_small():
    assert sum(pretrained_path(n).stat().st_size for n in PRETRAINED) < 300 * 1024


def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown pretrained model 'copy'; options: index, retrieval, partial_induction"):
        load_pretrained("copy")


def test_checkpoint_from_another_config_is_a_clear_error(tmp_path):
    task = IndexTask(length=6, n_symbols=4)
    model = toy_model(task, d_head=8)  # 4 pairs
    bare = save_checkpoint(model, tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match=r"lacks task and setting in its metadata"):
        load_trained(bare)
    wide = save_checkpoint(model, tmp_path / "wide.safetensors", task=task, extra={"setting": "pair:12"})
    with pytest.raises(ValueError, match=r"its setting does not fit its model \(n_pairs=4\).*pair 12 is out of range"):
        load_trained(wide)
    big = save_checkpoint(model, tmp_path / "big.safetensors", task=IndexTask(length=12), extra={"setting": "high"})
    with pytest.raises(ValueError, match=r"cannot read its task .* the metadata belongs to another config"):
        load_trained(big)
