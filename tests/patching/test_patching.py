"""Patching sweeps: equal to a naive loop, resumable after a kill, clear errors."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import rope_behavior as rb
from rope_behavior import metrics
from rope_behavior.interventions.compile import run_with_interventions
from rope_behavior.interventions.values import FrequencyPatch
from rope_behavior.model.adapters import adapter_for
from rope_behavior.patching.sweep import frequency_patching_sweep
from tests.models import VOCAB, hook_count

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pair_of_runs(gen):
    clean = torch.randint(3, VOCAB, (2, 8), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 2:5] = torch.randint(3, VOCAB, (2, 3), generator=gen)
    return clean, corrupted


def ld_metric():
    return metrics.logit_diff(torch.tensor([5, 9]), torch.tensor([7, 11]))


@pytest.mark.parametrize("family", ["llama_gqa", "gpt_neox", "gptj", "falcon_mq", "gemma2", "qwen3"])
def test_resuming_from_a_cached_residual_is_exact_and_skips_the_layers_below(bridge_factory, family, tokens):
    model = bridge_factory(family)
    adapter = adapter_for(model)
    n = rb.RopeSpec.from_model(model).n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n)]
    with torch.no_grad():
        full, cache = model.run_with_cache(tokens, names_filter=names)
        fired = []
        spy = ("blocks.0.attn.hook_q", lambda x, hook: fired.append(1))
        for layer in range(1, n):
            for _ in range(2):  # the first call learns the blocks' output structure
                fired.clear()
                with adapter.hooked([spy]):
                    out = adapter.forward(cache[names[layer]], start_at_layer=layer)
                assert torch.equal(out, full)
            assert fired == []  # block 0 did not run
    assert hook_count(model) == 0


def naive(model, clean, corrupted, metric, result):
    """One full forward per condition through run_with_interventions."""
    base, source = (corrupted, clean) if result.direction == "denoising" else (clean, corrupted)
    out = torch.empty_like(result.values)
    for li, layer in enumerate(result.layers):
        for hi, head in enumerate(result.heads):
            heads = result.query_heads[hi] if result.target == "qk" else (head,)
            for bi, band in enumerate(result.bands):
                value = FrequencyPatch(layer=layer, heads=heads, pairs=band, target=result.target, source=source)
                with torch.no_grad():
                    out[li, hi, bi] = float(metric(run_with_interventions(model, base, value)))
    return out


@pytest.mark.parametrize(
    ("family", "target", "direction"),
    [("llama_gqa", "qk", "denoising"), ("llama_gqa", "q", "noising"), ("llama_gqa", "k", "denoising"),
     ("gpt_neox", "qk", "noising"), ("gptj", "qk", "denoising")],
)
def test_sweep_equals_a_naive_one_condition_at_a_time_loop(bridge_factory, pair_of_runs, family, target, direction):
    model = bridge_factory(family)
    clean, corrupted = pair_of_runs
    metric = ld_metric()
    result = frequency_patching_sweep(
        model, clean, corrupted, metric, bands=2, target=target, direction=direction, batch_conditions=3
    )
    assert hook_count(model) == 0
    spec = rb.RopeSpec.from_model(model)
    n_axis = spec.n_kv_heads if (target == "k" or (target == "qk" and spec.group_size > 1)) else spec.n_heads
    assert result.values.shape == (spec.n_layers, n_axis, 2)
    torch.testing.assert_close(result.values, naive(model, clean, corrupted, metric, result), atol=1e-5, rtol=0)
    assert result.values.std() > 1e-4  # the patches matter
    with torch.no_grad():
        assert result.clean_baseline == pytest.approx(float(metric(model(clean))), abs=1e-6)
        assert result.corrupted_baseline == pytest.approx(float(metric(model(corrupted))), abs=1e-6)


def test_sweep_on_a_native_toy_model_equals_the_naive_loop():
    toy = pytest.importorskip("rope_behavior.tasks.toy")
    model = toy.ToyRotaryTransformer(toy.ToyConfig(d_vocab=20, n_ctx=16, n_layers=2, n_heads=2, d_head=8)).eval()
    gen = torch.Generator().manual_seed(2)
    clean, corrupted = torch.randint(0, 20, (2, 6), generator=gen), torch.randint(0, 20, (2, 6), generator=gen)
    metric = metrics.logit_diff(3, 4)
    result = frequency_patching_sweep(model, clean, corrupted, metric, bands=2, batch_conditions=3)
    torch.testing.assert_close(result.values, naive(model, clean, corrupted, metric, result), atol=1e-5, rtol=0)
    assert hook_count(model) == 0


def test_gqa_sweep_labels_say_which_query_heads_are_reached(bridge_factory, pair_of_runs):
    model = bridge_factory("llama_gqa")
    result = frequency_patching_sweep(model, *pair_of_runs, ld_metric(), layers=[1], bands=["high", "low"])
    assert result.head_axis == "kv_head"
    assert result.query_heads == ((0, 1), (2, 3))
    frame = result.to_frame()
    assert list(frame.columns) == ["layer", "kv_head", "query_heads", "band", "pairs", "value", "normalized"]
    assert len(frame) == 1 * 2 * 2
    assert set(frame.band) == {"high", "low"}
    q = frequency_patching_sweep(model, *pair_of_runs, ld_metric(), layers=[1], heads=[3], bands=1, target="q")
    assert q.head_axis == "head"
    assert q.query_heads == ((3,),)
    k = frequency_patching_sweep(model, *pair_of_runs, ld_metric(), layers=[1], heads=[1], bands=1, target="k")
    assert k.query_heads == ((2, 3),)


def test_patching_between_identical_runs_changes_nothing(bridge_factory, pair_of_runs):
    model = bridge_factory("llama_gqa")
    clean, _ = pair_of_runs
    same = frequency_patching_sweep(model, clean, clean, ld_metric(), bands=1, direction="noising")
    torch.testing.assert_close(same.values, torch.full_like(same.values, same.clean_baseline), atol=1e-6, rtol=0)


def test_metric_helpers_known_values():
    logits = torch.randn(2, 4, 10, generator=torch.Generator().manual_seed(0))
    tokens = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    ld = metrics.logit_diff(torch.tensor([1, 2]), 3, position=-1)
    want = ((logits[0, -1, 1] - logits[0, -1, 3]) + (logits[1, -1, 2] - logits[1, -1, 3])) / 2
    assert float(ld(logits)) == pytest.approx(float(want), abs=1e-6)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 10), tokens[:, 1:].reshape(-1))
    assert float(metrics.loss(tokens)(logits)) == pytest.approx(float(ce), abs=1e-6)
    top = logits[:, -1].argmax(-1)
    assert float(metrics.accuracy(top)(logits)) == 1.0
    assert float(metrics.accuracy(top + 1)(logits)) == 0.0
    kl = metrics.kl_to_clean(logits, position=None)
    assert float(kl(logits)) == pytest.approx(0.0, abs=1e-12)
    assert float(kl(logits.flip(0))) > 0
    assert "answer=" in ld.name
    assert metrics.metric_name(lambda x: x).endswith("<lambda>")
    # metrics reading the last positions get (and accept) only those logits
    assert ld.last_positions == 1
    assert metrics.loss(tokens).__dict__.get("last_positions") is None
    kl_last = metrics.kl_to_clean(logits)
    assert kl_last.last_positions == 1
    assert float(kl_last(logits.flip(0)[:, -1:])) == pytest.approx(float(kl_last(logits.flip(0))), abs=1e-12)


def test_sweep_with_a_last_position_metric_equals_full_logits(bridge_factory, pair_of_runs):
    """``last_positions`` only changes how much of the unembedding is computed."""
    model = bridge_factory("llama_gqa")
    clean, corrupted = pair_of_runs
    with torch.no_grad():
        clean_logits = model(clean)
    kl = metrics.kl_to_clean(clean_logits)

    def full_kl(logits):
        assert logits.shape[1] == clean.shape[1]
        return kl(logits)

    fast = frequency_patching_sweep(model, clean, corrupted, kl, bands=2)
    slow = frequency_patching_sweep(model, clean, corrupted, full_kl, bands=2)
    torch.testing.assert_close(fast.values, slow.values, atol=1e-6, rtol=0)
    assert fast.clean_baseline == pytest.approx(0.0, abs=1e-9)


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(bands=[]), "bands is empty"),
        (dict(bands=[[]]), "pair is empty"),
        (dict(bands=[[0, 9]]), r"pair 9 is out of range: expected 0 <= pair <= 7"),
        (dict(bands=1, heads=[2]), r"kv_head 2 is out of range: expected 0 <= kv_head <= 1.*KV heads"),
        (dict(bands=1, heads=[4], target="q"), r"head 4 is out of range: expected 0 <= head <= 3"),
        (dict(bands=1, layers=[5]), r"layer 5 is out of range"),
        (dict(bands=1, direction="up"), r"direction='up' is not one of"),
        (dict(bands=1, batch_conditions=0), r"batch_conditions=0"),
    ],
)
def test_bad_sweep_arguments(bridge_factory, pair_of_runs, kwargs, match):
    model = bridge_factory("llama_gqa")
    with pytest.raises(rb.RopeBehaviorError, match=match):
        frequency_patching_sweep(model, *pair_of_runs, ld_metric(), **kwargs)
    assert hook_count(model) == 0


def test_non_scalar_metric_and_shape_mismatch_are_refused(bridge_factory, pair_of_runs):
    model = bridge_factory("llama_gqa")
    clean, corrupted = pair_of_runs
    model.train()
    try:
        with pytest.raises(rb.RopeBehaviorError, match=r"training mode.*model.eval\(\)"):
            frequency_patching_sweep(model, clean, corrupted, ld_metric(), bands=1)
    finally:
        model.eval()
    with pytest.raises(rb.RopeBehaviorError, match=r"tensor of shape \(2,\) for the clean run.*ONE number"):
        frequency_patching_sweep(model, clean, corrupted, lambda logits: logits[:, -1, 0], bands=1)
    class Odd:
        last_positions = 0

        def __call__(self, logits):
            return logits.mean()

    with pytest.raises(rb.RopeBehaviorError, match=r"last_positions=0; expected None or an int in \[1, 8\]"):
        frequency_patching_sweep(model, clean, corrupted, Odd(), bands=1)
    with pytest.raises(rb.RopeBehaviorError, match=r"clean_tokens has shape \(2, 8\) but corrupted_tokens has \(2, 7\)"):
        frequency_patching_sweep(model, clean, corrupted[:, :7], ld_metric(), bands=1)
    calls = []

    def late_failure(logits):
        calls.append(1)
        return logits.mean() if len(calls) < 4 else logits.mean(0)

    with pytest.raises(rb.RopeBehaviorError, match="layer 0, condition"):
        frequency_patching_sweep(model, clean, corrupted, late_failure, bands=1)
    assert hook_count(model) == 0


# -- resumable -------------------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    sys.path.insert(0, {root!r})
    from tests.models import make_bridge
    from rope_behavior.patching.sweep import frequency_patching_sweep
    model = make_bridge("llama_gqa")
    gen = torch.Generator().manual_seed(7)
    clean = torch.randint(3, 97, (2, 8), generator=gen)
    corrupted = torch.randint(3, 97, (2, 8), generator=gen)
    kill_after = int(os.environ.get("KILL_AFTER", "0"))
    calls = []

    def metric(logits):
        calls.append(1)
        if kill_after and len(calls) > kill_after:
            os._exit(17)  # a hard kill: no cleanup, no finally
        return logits[:, -1, 5].mean() - logits[:, -1, 7].mean()

    # the label vouches for the metric: its kill switch (a global) differs between runs
    result = frequency_patching_sweep(model, clean, corrupted, metric, bands=4, batch_conditions=3, out_dir=sys.argv[1], metric_label="logit 5 - logit 7")
    torch.save(result.values, sys.argv[2])
    print("CALLS", len(calls))
    """
)


def _run(script, out_dir, values_path, kill_after=0):
    env = {**os.environ, "KILL_AFTER": str(kill_after), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(script), str(out_dir), str(values_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )


def test_a_killed_sweep_resumes_where_it_stopped_and_ends_equal(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    # 2 layers x 2 KV groups x 4 bands = 16 conditions in chunks of 3; 2 baseline calls.
    killed = _run(script, tmp_path / "run", tmp_path / "partial.pt", kill_after=2 + 7)
    assert killed.returncode == 17, killed.stderr
    chunks = sorted((tmp_path / "run" / "chunks").glob("L*.json"))
    assert len(chunks) == 2  # two whole chunks (6 conditions); the third died mid-way
    assert not json.loads((tmp_path / "run" / "manifest.json").read_text()).get("complete")
    resumed = _run(script, tmp_path / "run", tmp_path / "resumed.pt")
    assert resumed.returncode == 0, resumed.stderr
    assert "CALLS 12" in resumed.stdout  # 2 baselines + the 10 missing conditions only
    fresh = _run(script, tmp_path / "fresh", tmp_path / "fresh.pt")
    assert "CALLS 18" in fresh.stdout
    a, b = torch.load(tmp_path / "resumed.pt"), torch.load(tmp_path / "fresh.pt")
    assert not torch.isnan(a).any()
    assert torch.equal(a, b)
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["complete"] is True
    again = _run(script, tmp_path / "run", tmp_path / "again.pt")  # all done: nothing recomputed
    assert "CALLS 2" in again.stdout
    assert torch.equal(torch.load(tmp_path / "again.pt"), b)


def test_resuming_a_different_sweep_is_refused(bridge_factory, pair_of_runs, tmp_path):
    model = bridge_factory("llama_gqa")
    clean, corrupted = pair_of_runs
    first = frequency_patching_sweep(model, clean, corrupted, ld_metric(), layers=[1], bands=2, out_dir=tmp_path)
    again = frequency_patching_sweep(model, clean, corrupted, ld_metric(), layers=[1], bands=2, out_dir=tmp_path)
    assert torch.equal(first.values, again.values)
    with pytest.raises(rb.RopeBehaviorError, match=r"holds a different sweep \(differs in: bands\)"):
        frequency_patching_sweep(model, clean, corrupted, ld_metric(), layers=[1], bands=3, out_dir=tmp_path)
    with pytest.raises(rb.RopeBehaviorError, match=r"differs in: metric"):
        frequency_patching_sweep(
            model, clean, corrupted, metrics.logit_diff(1, 2), layers=[1], bands=2, out_dir=tmp_path
        )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(rb.RopeBehaviorError, match="not empty and holds no sweep manifest"):
        frequency_patching_sweep(model, clean, corrupted, ld_metric(), bands=2, out_dir=tmp_path / "other")
    assert hook_count(model) == 0
