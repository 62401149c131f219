"""Checkpoints carry a content hash that loading verifies; the shipped ones too. Also:
pretrained models come back ready for sweeps, and experiments check out_dir first."""

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rope_behavior import metrics
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.patching.sweep import frequency_patching_sweep
from rope_behavior.tasks import (
    PRETRAINED,
    IndexTask,
    TrainConfig,
    checkpoint_info,
    load_checkpoint,
    load_pretrained,
    load_trained,
    run_experiment,
    save_checkpoint,
    toy_model,
)
from rope_behavior.tasks import checkpoints as ckpt
from rope_behavior.tasks import experiment as experiment_module
from rope_behavior.tasks.pretrained import pretrained_path

ROOT = Path(__file__).resolve().parents[2]
TASK = IndexTask(length=6, n_symbols=4)


def small(tmp_path, name="m.safetensors"):
    model = toy_model(TASK, d_head=8, seed=3)
    return model, save_checkpoint(model, tmp_path / name, task=TASK, extra={"setting": "all"})


def flip_a_tensor_byte(path):
    raw = bytearray(path.read_bytes())
    header = struct.unpack("<Q", raw[:8])[0]
    raw[8 + header + 37] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(raw))


def test_a_flipped_tensor_byte_is_refused_naming_file_and_hashes(tmp_path):
    model, path = small(tmp_path)
    recorded = checkpoint_info(path).sha256
    assert recorded == ckpt.state_hash(model.state_dict())
    flip_a_tensor_byte(path)
    target = toy_model(TASK, d_head=8, seed=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(
        RopeBehaviorError,
        match=rf"Checkpoint '{path}' is damaged: its tensors hash to [0-9a-f]{{64}}, but the file records {recorded}",
    ):
        load_checkpoint(path, into=target)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # untouched
    with pytest.raises(RopeBehaviorError, match="is damaged"):
        load_trained(path)
    with pytest.raises(RopeBehaviorError, match="do not rehash it"):
        ckpt.rehash_checkpoint(path)
    load_checkpoint(path, verify=False)  # the explicit escape


def test_shipped_checkpoints_record_a_hash_and_verify():
    for name in PRETRAINED:
        path = pretrained_path(name)
        recorded = checkpoint_info(path).sha256
        assert recorded is not None
        assert len(recorded) == 64
        assert recorded == ckpt.state_hash(load_file(str(path)))
        model, _, _ = load_pretrained(name)  # verifies
        assert not model.training  # ready for evaluation and patching sweeps


def test_a_pretrained_model_goes_straight_into_a_sweep():
    model, task, _ = load_pretrained("index")
    gen = torch.Generator().manual_seed(0)
    clean, corrupted = task.sample(2, gen).tokens, task.sample(2, gen).tokens
    result = frequency_patching_sweep(model, clean, corrupted, metrics.logit_diff(1, 2), bands=1)
    assert torch.isfinite(result.values).all()


def test_a_checkpoint_without_a_hash_is_refused_until_rehashed(tmp_path):
    model, path = small(tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    legacy = tmp_path / "legacy.safetensors"
    save_file(
        tensors, str(legacy), metadata={k: v for k, v in metadata.items() if k != ckpt._HASH_KEY}
    )
    with pytest.raises(
        RopeBehaviorError,
        match=rf"'{legacy}' stores no content hash .*--rehash {legacy}.*verify=False",
    ):
        load_checkpoint(legacy)
    assert checkpoint_info(legacy).sha256 is None
    load_checkpoint(legacy, verify=False)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "rope_behavior.tasks.checkpoints", "--rehash", str(legacy)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert checkpoint_info(legacy).sha256 == checkpoint_info(path).sha256
    after = load_file(str(legacy))
    assert sorted(after) == sorted(tensors)
    assert all(
        torch.equal(after[k].view(torch.uint8), tensors[k].view(torch.uint8)) for k in tensors
    )
    with safe_open(str(legacy), framework="pt") as handle:
        assert handle.metadata() == metadata  # the rest of the metadata is unchanged
    loaded = load_checkpoint(legacy)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert ckpt.rehash_checkpoint(legacy) == checkpoint_info(path).sha256  # idempotent


def test_non_json_metadata_names_the_file(tmp_path):
    _, path = small(tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    bad = tmp_path / "bad.safetensors"
    save_file(
        load_file(str(path)), str(bad), metadata={**metadata, ckpt._EXTRA_KEY: '{"setting": '}
    )
    with pytest.raises(
        RopeBehaviorError,
        match=rf"Checkpoint '{bad}': its metadata 'rope_behavior.extra' is not valid JSON",
    ):
        checkpoint_info(bad)
    save_file(
        load_file(str(path)),
        str(bad),
        metadata={**metadata, ckpt._TASK_KEY: json.dumps({"kind": "copy"})},
    )
    with pytest.raises(
        RopeBehaviorError,
        match=rf"Checkpoint '{bad}': its stored configuration is invalid: Unknown task kind",
    ):
        load_checkpoint(bad)
    truncated = tmp_path / "truncated.safetensors"
    shutil.copy(path, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(RopeBehaviorError, match=rf"'{truncated}'"):
        load_checkpoint(truncated)


def test_save_errors_name_the_target_and_leave_no_temporary_file(tmp_path, monkeypatch):
    model = toy_model(TASK, d_head=8)
    missing = tmp_path / "no" / "such" / "m.safetensors"
    with pytest.raises(
        RopeBehaviorError,
        match=rf"cannot write checkpoint '{missing}': its folder .* does not exist",
    ):
        save_checkpoint(model, missing)
    with pytest.raises(
        RopeBehaviorError, match=rf"cannot write checkpoint '{tmp_path}': it is a folder"
    ):
        save_checkpoint(model, tmp_path)

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device", filename)

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    target = tmp_path / "m.safetensors"
    with pytest.raises(
        RopeBehaviorError, match=rf"cannot write checkpoint '{target}': No space left on device\.$"
    ) as info:
        save_checkpoint(model, target)
    assert ".tmp" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file


def test_unwritable_out_dir_fails_before_any_training(tmp_path, monkeypatch):
    def no_training(job):
        raise AssertionError("trained before checking out_dir")

    monkeypatch.setattr(experiment_module, "_run_job", no_training)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    config = TrainConfig(steps=2, batch_size=4, eval_every=1, eval_batch_size=4, progress=False)
    for out_dir in (blocker / "results", blocker):  # under a regular file; a regular file
        with pytest.raises(
            RopeBehaviorError,
            match=rf"out_dir '{out_dir}' is not a writable folder .*no run was lost",
        ):
            run_experiment(
                tasks={"index": TASK},
                settings=["all"],
                seeds=1,
                train_config=config,
                out_dir=out_dir,
                progress=False,
                model_options={"d_head": 8},
            )
