"""Resumable sweeps never mix two sweeps: content fingerprints of the model and the
metric, one writer per folder, whole files, finite values only."""

import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import rope_behavior as rb
from rope_behavior import metrics
from rope_behavior.patching.sweep import frequency_patching_sweep
from rope_behavior.runtime.fingerprint import metric_identity, model_digest
from rope_behavior.runtime.store import SweepStore
from rope_behavior.tasks.toy import ToyConfig, ToyRotaryTransformer
from tests.models import hook_count

ROOT = Path(__file__).resolve().parents[2]
CFG = ToyConfig(d_vocab=20, n_ctx=16, n_layers=2, n_heads=2, d_head=8)


def toy() -> ToyRotaryTransformer:
    return ToyRotaryTransformer(CFG, seed=0).eval()


@pytest.fixture
def runs():
    gen = torch.Generator().manual_seed(2)
    return torch.randint(0, 20, (2, 6), generator=gen), torch.randint(0, 20, (2, 6), generator=gen)


def sweep(model, runs, metric, out_dir, **kw):
    kw.setdefault("bands", 2)
    return frequency_patching_sweep(model, *runs, metric, batch_conditions=3, out_dir=out_dir, **kw)


# -- model fingerprint -----------------------------------------------------------------


def test_model_digest_hashes_every_weight_and_buffer_by_content(bridge_factory):
    model = toy()
    digest = model_digest(model)
    assert model_digest(toy()) == digest  # same weights, same digest
    with torch.no_grad():
        w = model.blocks[0].attn.W_Q
        a, b = w[0, 0, 0].clone(), w[0, 0, 1].clone()
        w[0, 0, 0], w[0, 0, 1] = b, a  # a permutation: same sum and sum of squares
    flipped = model_digest(model)
    assert flipped != digest
    with torch.no_grad():
        w[0, 0, 0], w[0, 0, 1] = a, b
        assert model_digest(model) == digest
        model.rotary_omega[1, 2] *= 1.5  # a buffer
    assert model_digest(model) != digest

    bridge = bridge_factory("llama_gqa")
    inv_freq = dict(bridge.named_buffers())["rotary_emb._original_component.inv_freq"]
    before, saved = model_digest(bridge), inv_freq.clone()
    try:
        with torch.no_grad():
            inv_freq[3] *= 0.5
        assert model_digest(bridge) != before
    finally:
        with torch.no_grad():
            inv_freq.copy_(saved)
    assert model_digest(bridge) == before
    half = toy().to(torch.bfloat16)  # bf16 bytes are hashed as they are
    assert model_digest(half) == model_digest(toy().to(torch.bfloat16)) != model_digest(toy())


# -- metric identity -------------------------------------------------------------------


def make_metric(token):
    def metric(logits):
        return logits[:, -1, token].mean()

    return metric


@dataclasses.dataclass(frozen=True)
class Pick:
    token: int

    def __call__(self, logits):
        return logits[:, -1, self.token].mean()


def test_two_closures_with_one_qualname_are_two_metrics(runs, tmp_path):
    model = toy()
    a, b = make_metric(3), make_metric(4)
    assert metrics.metric_name(a) == metrics.metric_name(b)
    assert metric_identity(a).digest == metric_identity(make_metric(3)).digest
    assert metric_identity(a).digest != metric_identity(b).digest
    sweep(model, runs, a, tmp_path)
    with pytest.raises(
        rb.RopeBehaviorError,
        match=r"differs in: metric_identity, metric_parts\) \(the metric differs: the metric -> closure variable 'token'\)",
    ):
        sweep(model, runs, b, tmp_path)
    # partial arguments, dataclass fields and tensors by content count too
    ce = torch.nn.functional.cross_entropy
    assert (
        metric_identity(functools.partial(ce, reduction="sum")).digest
        != metric_identity(functools.partial(ce, reduction="mean")).digest
    )
    assert metric_identity(Pick(3)).digest != metric_identity(Pick(4)).digest
    ld = metrics.logit_diff(torch.tensor([5, 9]), 7)
    assert (
        metric_identity(ld).digest
        == metric_identity(metrics.logit_diff(torch.tensor([5, 9]), 7)).digest
    )
    assert (
        metric_identity(ld).digest
        != metric_identity(metrics.logit_diff(torch.tensor([5, 8]), 7)).digest
    )
    assert hook_count(model) == 0


def test_a_metric_without_a_derivable_identity_needs_a_label(runs, tmp_path):
    model = toy()
    gen = torch.Generator().manual_seed(0)

    def noisy(logits):  # its value depends on a generator's hidden state
        return logits[:, -1, 3].mean() + 0 * torch.rand((), generator=gen)

    with pytest.raises(
        rb.RopeBehaviorError, match=r"closure variable 'gen' is a torch._C.Generator.*metric_label="
    ):
        sweep(model, runs, noisy, tmp_path)
    assert not any(tmp_path.iterdir())  # refused before the folder was touched
    first = sweep(model, runs, noisy, tmp_path, metric_label="last logit of token 3")
    again = sweep(model, runs, noisy, tmp_path, metric_label="last logit of token 3")
    assert torch.equal(first.values, again.values)
    assert first.metric == "last logit of token 3"
    assert hook_count(model) == 0


# -- one writer per folder -------------------------------------------------------------


def test_a_second_sweep_on_a_folder_in_use_is_refused_at_once(runs, tmp_path):
    model = toy()
    ld = metrics.logit_diff(3, 4)
    seen = {}

    def metric(logits):
        chunks = list((tmp_path / "chunks").glob("*")) if (tmp_path / "chunks").exists() else []
        if chunks:  # the manifest is written before any chunk
            seen.setdefault("manifest", []).append((tmp_path / "manifest.json").exists())
        if not seen:  # the first call (a baseline): the folder is locked already, no chunk yet
            seen["chunks"] = chunks
            start = time.perf_counter()
            with pytest.raises(
                rb.RopeBehaviorError, match=r"out_dir '.*' is in use by another sweep"
            ):
                sweep(model, runs, ld, tmp_path, bands=3)  # a different sweep, same folder
            seen["seconds"] = time.perf_counter() - start
        return ld(logits)

    first = sweep(model, runs, metric, tmp_path, metric_label="ld(3, 4)")
    assert seen["manifest"]
    assert all(seen["manifest"])
    assert seen["chunks"] == []
    assert seen["seconds"] < 5  # refused at once, not after waiting for the lock
    again = sweep(model, runs, ld, tmp_path, metric_label="ld(3, 4)")  # the lock is free again
    assert torch.equal(again.values, first.values)
    store = SweepStore(tmp_path / "s", {"x": 1})
    with store, pytest.raises(rb.RopeBehaviorError, match="in use by another sweep"):
        SweepStore(tmp_path / "s", {"x": 1}).__enter__()
    with SweepStore(tmp_path / "s", {"x": 1}) as reopened:
        assert reopened.load() == {}
    with pytest.raises(rb.RopeBehaviorError, match="not open; use it as a context manager"):
        store.load()
    assert hook_count(model) == 0


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_the_lock_is_released_when_a_sweep_fails(runs, tmp_path, error):
    model = toy()
    ld = metrics.logit_diff(3, 4)
    calls = []

    def metric(logits):
        calls.append(1)
        if len(calls) == 6:  # after the baselines and one whole chunk of 3
            raise error("stop")
        return ld(logits)

    with pytest.raises(error):
        sweep(model, runs, metric, tmp_path, metric_label="ld")
    assert len(list((tmp_path / "chunks").glob("L*.json"))) == 1
    resumed = sweep(model, runs, ld, tmp_path, metric_label="ld")
    fresh = sweep(model, runs, ld, tmp_path / "fresh", metric_label="ld")
    assert torch.equal(resumed.values, fresh.values)
    assert hook_count(model) == 0


HOLDER = textwrap.dedent(
    """
    import sys, time, torch
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from rope_behavior import metrics
    from rope_behavior.patching.sweep import frequency_patching_sweep
    from rope_behavior.runtime.fingerprint import metric_identity
    from tests.runtime.test_resume_integrity import make_metric, runs_of, toy

    print("IDENTITY", metric_identity(make_metric(3)).digest, flush=True)
    ld, release = metrics.logit_diff(3, 4), Path(sys.argv[2])

    def metric(logits):
        if not release.exists():
            print("HOLDING", flush=True)
            while not release.exists():
                time.sleep(0.05)
        return ld(logits)

    result = frequency_patching_sweep(
        toy(), *runs_of(), metric, bands=2, batch_conditions=3, out_dir=sys.argv[1], metric_label="ld"
    )
    torch.save(result.values, sys.argv[3])
    """
)


def runs_of():
    gen = torch.Generator().manual_seed(2)
    return torch.randint(0, 20, (2, 6), generator=gen), torch.randint(0, 20, (2, 6), generator=gen)


def test_a_sweep_in_another_process_holds_the_folder(tmp_path):
    script, release, values = tmp_path / "hold.py", tmp_path / "release", tmp_path / "values.pt"
    script.write_text(HOLDER.format(root=str(ROOT)))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), str(release), str(values)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        identity = proc.stdout.readline().split()
        assert identity == ["IDENTITY", metric_identity(make_metric(3)).digest], proc.stderr.read()
        assert proc.stdout.readline().strip() == "HOLDING", proc.stderr.read()
        model, ld = toy(), metrics.logit_diff(3, 4)
        with pytest.raises(
            rb.RopeBehaviorError, match=rf"out_dir '{out}' is in use by another sweep"
        ):
            sweep(model, runs_of(), ld, out, metric_label="ld")
        release.touch()
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    resumed = sweep(model, runs_of(), ld, out, metric_label="ld")  # same sweep: resumed
    assert torch.equal(resumed.values, torch.load(values))
    assert json.loads((out / "manifest.json").read_text())["complete"] is True


# -- damaged files ---------------------------------------------------------------------


def test_a_damaged_chunk_or_manifest_names_the_file_and_the_fix(runs, tmp_path):
    model, ld = toy(), metrics.logit_diff(3, 4)
    first = sweep(model, runs, ld, tmp_path)
    chunk = sorted((tmp_path / "chunks").glob("L*.json"))[1]
    text = chunk.read_text()
    chunk.write_text(text[: len(text) // 2])  # truncated
    with pytest.raises(
        rb.RopeBehaviorError,
        match=rf"{chunk} is not valid JSON .*delete this file to recompute its chunk",
    ):
        sweep(model, runs, ld, tmp_path)
    chunk.write_text(json.dumps({"layer": 0, "conditions": [[0, 0]], "values": []}))
    with pytest.raises(
        rb.RopeBehaviorError,
        match=rf"chunk file {chunk} is not a valid chunk .*1 conditions but 0 values",
    ):
        sweep(model, runs, ld, tmp_path)
    chunk.unlink()  # as the message says: the chunk is recomputed
    assert torch.equal(sweep(model, runs, ld, tmp_path).values, first.values)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    with pytest.raises(
        rb.RopeBehaviorError, match=rf"{manifest} is not valid JSON .*delete out_dir"
    ):
        sweep(model, runs, ld, tmp_path)
    assert hook_count(model) == 0


# -- non-finite values -----------------------------------------------------------------


def test_nan_weights_and_nan_metric_values_are_refused_with_where(runs, tmp_path):
    model, ld = toy(), metrics.logit_diff(3, 4)
    with torch.no_grad():
        model.blocks[0].attn.W_Q[0, 0, 0] = math.nan  # spreads to every logit
    with pytest.raises(
        rb.RopeBehaviorError, match=r"returned nan for the clean run; a sweep needs finite values"
    ):
        frequency_patching_sweep(model, *runs, ld, bands=2)
    model = toy()
    calls = []

    def late_nan(logits):
        calls.append(1)
        return ld(logits) + (math.inf if len(calls) == 2 + 5 else 0.0)

    with pytest.raises(
        rb.RopeBehaviorError,
        match=r"returned inf for layer 1, condition \(0, 0\) \(head 0, band 'band0/2', pairs \[0, 1\]\)",
    ):
        frequency_patching_sweep(model, *runs, late_nan, bands=2, batch_conditions=1)
    chunk = tmp_path / "chunks" / "L000-0000-0000.json"
    sweep(model, runs, ld, tmp_path)
    data = json.loads(chunk.read_text())
    chunk.write_text(json.dumps({**data, "values": [math.nan] * len(data["values"])}))
    with pytest.raises(
        rb.RopeBehaviorError,
        match=r"is not a valid chunk \(ValueError: non-finite value nan\); delete this file",
    ):
        sweep(model, runs, ld, tmp_path)
    assert hook_count(model) == 0


def test_token_ids_outside_the_vocabulary_are_named():
    logits = torch.randn(2, 4, 10)
    with pytest.raises(
        rb.RopeBehaviorError,
        match=r"logit_diff answer: token ids \[12\] are outside the vocabulary of the logits \(size 10",
    ):
        metrics.logit_diff(torch.tensor([1, 12]), 3)(logits)
    with pytest.raises(
        rb.RopeBehaviorError, match=r"logit_diff wrong: token ids \[10\] .*valid ids are 0..9"
    ):
        metrics.logit_diff(1, 10)(logits)
    with pytest.raises(rb.RopeBehaviorError, match=r"accuracy answer: token ids \[99\]"):
        metrics.accuracy(99)(logits)
    with pytest.raises(rb.RopeBehaviorError, match=r"loss tokens: token ids \[11\]"):
        metrics.loss(torch.tensor([[1, 2, 3, 11], [1, 2, 3, 4]]))(logits)
    with pytest.raises(rb.RopeBehaviorError, match=r"answer holds negative token ids \[-1\]"):
        metrics.logit_diff(-1, 3)
