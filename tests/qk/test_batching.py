"""Default batch sizes (``ModelAdapter.sequences_per_forward``) and the early stop of
``stream_layers``: both change only speed, never a number."""

import pytest
import torch

import rope_behavior.scoring.scorer as bh
from rope_behavior import metrics
from rope_behavior.model.adapters import BridgeAdapter, adapter_for
from rope_behavior.model.spec import RopeSpec
from rope_behavior.patching.sweep import frequency_patching_sweep
from rope_behavior.qk.captured import capture, stream_layers
from tests.models import VOCAB, hook_count


def _per_seq(a, n):
    cfg = a.model.cfg
    return max(n * max(cfg.d_model, cfg.d_mlp), a.n_heads * n * n)


def test_cpu_budget_is_16_mib_of_elements_and_never_below_the_natural_batch(bridge_factory):
    a = adapter_for(bridge_factory("llama_mha"))
    assert a.sequences_per_forward(16, 2) == (1 << 22) // _per_seq(a, 16) > 2  # tiny model: many
    assert a.sequences_per_forward(4096, 3) == 3  # one sequence is over the budget


def test_accelerator_budget_is_1_gib_of_elements(bridge_factory, monkeypatch):
    a = adapter_for(bridge_factory("llama_mha"))
    monkeypatch.setattr(BridgeAdapter, "device", property(lambda self: torch.device("cuda")))
    assert a.sequences_per_forward(64, 1) == (1 << 28) // _per_seq(a, 64)
    assert a.sequences_per_forward(64, 10**9) == 10**9


def test_tokens_mode_default_batching_gives_the_same_scores(bridge_factory, gen):
    model = bridge_factory("llama_gqa")
    toks = torch.randint(0, VOCAB, (3, 25), generator=gen)
    args = dict(mode="tokens", block_size=4, n_swaps=6)
    default = bh.score_heads(model, toks, seed=0, **args)
    one = bh.score_heads(model, toks, seed=0, sequences_per_forward=1, **args)
    for name in ("s_pos", "s_sym", "mass_moved"):
        torch.testing.assert_close(getattr(default, name), getattr(one, name), atol=1e-6, rtol=0, equal_nan=True)
    assert hook_count(model) == 0


def test_sweep_default_batching_gives_the_same_values(bridge_factory, gen):
    model = bridge_factory("llama_gqa")
    clean = torch.randint(0, VOCAB, (2, 9), generator=gen)
    corrupted = torch.randint(0, VOCAB, (2, 9), generator=gen)
    metric = metrics.logit_diff(1, 2)
    default = frequency_patching_sweep(model, clean, corrupted, metric, bands=2)
    one = frequency_patching_sweep(model, clean, corrupted, metric, bands=2, batch_conditions=1)
    torch.testing.assert_close(default.values, one.values, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["llama_mha", "gpt_neox", "gptj"])
def test_stream_layers_stops_after_the_last_requested_layer(bridge_factory, tokens, family):
    model = bridge_factory(family)
    a = adapter_for(model)
    sites = a.sites(0)
    fired: list[str] = []
    probe = [(sites.pattern, lambda x, hook: fired.append("pattern") or x)]
    RopeSpec.from_model(model)  # its probe forward runs the whole model
    seen: list[int] = []
    # a plain torch hook (outside stream_layers' scope) on layer 0's attention pattern
    raw = a.hook_points()[sites.pattern].register_forward_hook(lambda m, i, o: fired.append("raw"))
    try:
        stream_layers(model, tokens, lambda lq: seen.append(lq.layer), layers=[0])
    finally:
        raw.remove()
    assert seen == [0]
    assert fired == []  # the forward stopped once layer 0's q/k were read
    # with extra hooks the layer runs to its top, so a hook after q/k still fires
    stream_layers(model, tokens, lambda lq: None, layers=[0], extra_hooks=probe)
    assert fired == ["pattern"]
    assert hook_count(model) == 0
    full = capture(model, tokens)
    low = capture(model, tokens, layers=[0])
    torch.testing.assert_close(low.rot_q[0], full.rot_q[0], atol=0, rtol=0)
    torch.testing.assert_close(low.rot_k[0], full.rot_k[0], atol=0, rtol=0)
