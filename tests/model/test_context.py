"""A public call resolves its model once (adapter + spec), at the door, and runs the forwards
it needs and no more; the cached context follows edits of the model's rotary buffers."""

import contextlib
import importlib
import pkgutil
import types

import pytest
import torch

import rope_behavior as rb
from rope_behavior.model import context as ctx_module
from rope_behavior.model.adapters import BridgeAdapter
from rope_behavior.model.context import ModelContext, resolve
from rope_behavior.model.spec import RopeSpec
from tests.models import VOCAB, make_bridge


class Counts:
    def __init__(self) -> None:
        self.builds = self.reads = self.lookups = self.forwards = 0


@contextlib.contextmanager
def counting(monkeypatch):
    """Count adapter builds, spec reads, cache look-ups (``rotary_state`` calls: one per
    resolution of a model that is not already a context) and forwards."""
    n = Counts()
    build, read = ctx_module.adapter_for, RopeSpec.read.__func__
    state, forward = BridgeAdapter.rotary_state, BridgeAdapter.forward

    def count_build(model):
        n.builds += 1
        return build(model)

    def count_read(cls, adapter):
        n.reads += 1
        return read(cls, adapter)

    def count_state(self):
        n.lookups += 1
        return state(self)

    def count_forward(self, *a, **k):
        n.forwards += 1
        return forward(self, *a, **k)

    monkeypatch.setattr(ctx_module, "adapter_for", count_build)
    monkeypatch.setattr(RopeSpec, "read", classmethod(count_read))
    monkeypatch.setattr(BridgeAdapter, "rotary_state", count_state)
    monkeypatch.setattr(BridgeAdapter, "forward", count_forward)
    yield n


@pytest.fixture
def fresh():
    """A model no call has resolved yet (a cold cache)."""
    return make_bridge("llama_gqa")


def toks(n=4, pos=20, seed=0):
    return torch.randint(3, VOCAB, (n, pos), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "call",
    [
        lambda m: rb.capture(m, toks()),
        lambda m: rb.score_heads(m, toks()),
        lambda m: rb.score_heads(m, toks(), mode="tokens", block_size=4, n_swaps=3),
        lambda m: rb.stream_layers(m, toks(), lambda lq: None),
        lambda m: rb.exclusion_check(m, layer=0, head=0, tokens=toks(1, 6)),
    ],
    ids=["capture", "score_heads", "score_heads_tokens", "stream_layers", "exclusion_check"],
)
def test_a_public_call_resolves_once(monkeypatch, fresh, call):
    with counting(monkeypatch) as n:
        call(fresh)
    assert (n.builds, n.reads, n.lookups) == (1, 1, 1)  # cold: built, read, stored once
    with counting(monkeypatch) as n:
        call(fresh)
    assert (n.builds, n.reads, n.lookups) == (0, 0, 1)  # warm: one look-up at the door


def test_capture_and_score_heads_run_one_forward(monkeypatch, fresh):
    with counting(monkeypatch) as n:
        rb.capture(fresh, toks())
    assert n.forwards == 1
    with counting(monkeypatch) as n:
        rb.score_heads(fresh, toks())
    assert n.forwards == 1


def test_frequency_usage_needs_no_model(monkeypatch, fresh):
    captured = rb.capture(fresh, toks())
    with counting(monkeypatch) as n:
        rb.frequency_usage(captured)
    assert (n.builds, n.reads, n.lookups, n.forwards) == (0, 0, 0, 0)


def test_a_sweep_resolves_once(monkeypatch, fresh):
    clean, corrupted = toks(2, 8, 1), toks(2, 8, 2)
    metric = rb.metrics.logit_diff(torch.tensor([5, 9]), torch.tensor([7, 11]))
    with counting(monkeypatch) as n:
        rb.frequency_patching_sweep(fresh, clean, corrupted, metric, bands=2, batch_conditions=4)
    assert (n.builds, n.reads, n.lookups) == (1, 1, 1)
    # two recording runs, then one forward per shard: 2 layers x (2 kv heads x 2 bands) / 4
    assert n.forwards == 2 + 2


@pytest.mark.parametrize(("per_pair", "extra"), [(False, 0), (True, 1)])
def test_analyze_resolves_once_and_runs_one_forward_per_batch(monkeypatch, fresh, per_pair, extra):
    with counting(monkeypatch) as n:
        rb.analyze(fresh, toks(4), batch_size=2, per_pair=per_pair, pair_prompts=2)
    assert (n.builds, n.reads, n.lookups) == (1, 1, 1)
    assert n.forwards == 2 + extra  # one per batch; per-pair curves: one for the first 2


def test_a_context_passes_through_unresolved(monkeypatch, fresh):
    context = resolve(fresh)
    assert isinstance(context, ModelContext)
    assert resolve(context) is context
    with counting(monkeypatch) as n:
        rb.score_heads(context, toks())
    assert (n.builds, n.reads, n.lookups) == (0, 0, 0)


def test_the_cache_follows_an_edit_of_the_rotary_buffers(fresh):
    before = rb.RopeSpec.from_model(fresh)
    assert rb.RopeSpec.from_model(fresh) is before  # cached
    inv_freq = BridgeAdapter(fresh).inv_freq_candidates()[0]
    with torch.no_grad():
        inv_freq.mul_(0.5)  # in place: the version counter moves
    after = rb.RopeSpec.from_model(fresh)
    assert after is not before
    torch.testing.assert_close(after.omega, before.omega * 0.5)
    assert rb.RopeSpec.from_model(fresh, refresh=True) is not after


def test_the_cache_follows_a_dtype_change():
    model = make_bridge("llama_gqa")
    before = resolve(model)
    model.to(torch.float64)
    assert resolve(model) is not before


def test_the_spec_cannot_be_corrupted_from_outside(fresh):
    spec = rb.RopeSpec.from_model(fresh)
    omega = spec.omega.clone()
    spec.omega[0] *= 2  # edits a copy
    spec.table_scale[0] = 7.0
    torch.testing.assert_close(rb.RopeSpec.from_model(fresh).omega, omega)
    torch.testing.assert_close(spec.omega, omega)


def test_every_module_is_reachable_as_a_module():
    """No exported function shadows the module it lives in (``import rope_behavior.x.y``
    then ``rope_behavior.x.y.Name`` works for every module)."""
    seen = 0
    for info in pkgutil.walk_packages(rb.__path__, "rope_behavior."):
        if info.name.endswith("ray_cluster"):
            continue  # needs the optional Ray extra
        module = importlib.import_module(info.name)
        parent, _, leaf = info.name.rpartition(".")
        attr = getattr(importlib.import_module(parent), leaf)
        assert isinstance(attr, types.ModuleType), f"{info.name} is shadowed by {attr!r}"
        assert attr is module
        seen += 1
    assert seen >= 60


@pytest.mark.parametrize(
    "make",
    [
        lambda: rb.AngleOverride(1, 0, [2, 3]),
        lambda: rb.FrequencyAblation(1, 0, [2, 3]),
        lambda: rb.FrequencyPatch(0, source=toks(1, 4)),
    ],
)
def test_intervention_values_take_fields_by_keyword(make):
    with pytest.raises(
        rb.RopeBehaviorError, match=r"takes its fields by keyword: \w+\(layer=\.\.\., heads=\.\.\."
    ):
        make()


def test_keyword_values_still_work():
    a = rb.AngleOverride(layer=1, heads=0, pairs=[2, 3], omega=0.0)
    assert (a.layer, a.heads, a.pairs) == (1, (0,), (2, 3))
    f = rb.FrequencyAblation(layer=1, heads=0, pairs=[2, 3])
    assert (f.heads, f.pairs) == ((0,), (2, 3))


def test_results_name_their_axes(bridge_factory):
    model = bridge_factory("llama_gqa")
    t = toks(2, 20)
    plain = rb.score_heads(model, t, block_size=4)
    assert plain.dims == ("prompt", "layer", "head")
    assert plain.s_pos.ndim == len(plain.dims)
    assert plain.mean().dims == ("layer", "head")
    both = rb.score_heads(model, t, block_size=4, query_positions=[15, 19], per_pair=True)
    assert both.dims == ("prompt", "layer", "head", "query", "pair")
    assert both.s_pos.ndim == len(both.dims)
    assert both.mean().s_pos_mean.ndim == len(both.mean().dims)
    assert plain.heads == tuple(range(plain.n_heads))


def test_nested_evaluating_walks_the_modules_once_and_restores(monkeypatch):
    """analyze puts the model in eval mode once around all its shards: the shards' own
    blocks change nothing, and every flag is back afterwards, also after an error."""
    model = make_bridge("llama_gqa")
    model.train()
    walks = []
    walk = ctx_module._every_module
    monkeypatch.setattr(ctx_module, "_every_module", lambda m: walks.append(1) or walk(m))

    def shards() -> None:
        with ctx_module.evaluating(model):
            for _ in range(3):
                with ctx_module.evaluating(model):
                    assert not any(m.training for m in walk(model))
            raise KeyError("interrupted")

    with pytest.raises(KeyError):
        shards()
    assert len(walks) == 1
    assert all(m.training for m in walk(model))
    with ctx_module.evaluating(model):  # the outer block left no trace: a new one walks again
        pass
    assert len(walks) == 2
