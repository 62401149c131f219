"""Known answers for frequency-targeted interventions (values -> hooks -> model)."""

import pytest
import torch

import rope_behavior as rb
from rope_behavior.interventions.compile import compile_hooks, intervened, run_with_interventions
from rope_behavior.interventions.values import (
    AngleOverride,
    FrequencyAblation,
    FrequencyPatch,
    TwoAngles,
)
from tests.models import VOCAB, hook_count

# llama_gqa: GQA, rotated hooks; gpt_neox: partial rotary, pre-rotation edits;
# gptj: interleaved pairs, pre-rotation edits, hook_attn_scores carries the pattern.
FAMILIES = ["llama_gqa", "gpt_neox", "gptj"]


@pytest.fixture
def toks(gen):
    return torch.randint(3, VOCAB, (2, 9), generator=gen)


@pytest.fixture
def other(gen):
    return torch.randint(3, VOCAB, (2, 9), generator=gen)


def scores_under(model, tokens, layer, interventions):
    """The model's hook_attn_scores at ``layer`` with ``interventions`` installed."""
    name = rb.RopeSpec.from_model(model).sites[layer].scores
    with torch.no_grad(), intervened(model, interventions):
        _, cache = model.run_with_cache(tokens, names_filter=[name])
    assert hook_count(model) == 0
    return cache[name]


def expected_scores(pl, logits, family):
    """Scores (or, for GPT-J, the pattern) the model should produce for ``logits``."""
    masked = logits.masked_fill(~pl.mask[:, None], float("-inf"))
    return masked.softmax(-1) if family == "gptj" else masked


def compare(got, want, pl, family):
    if family == "gptj":
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    else:
        m = pl.mask[:, None].expand_as(got)
        torch.testing.assert_close(got[m], want[m], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_interventions_is_a_plain_forward(bridge_factory, family, toks):
    model = bridge_factory(family)
    with torch.no_grad():
        ref = model(toks)
        assert torch.equal(run_with_interventions(model, toks, []), ref)
        with intervened(model, []) as hooks:
            assert hooks == []
            assert torch.equal(model(toks), ref)
    assert hook_count(model) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_zeroing_query_pairs_moves_scores_by_their_contributions(bridge_factory, family, toks):
    model = bridge_factory(family)
    spec = rb.RopeSpec.from_model(model)
    layer, head = 1, 2
    pairs = (0, spec.n_pairs - 1)
    pl = rb.pair_logits(rb.capture(model, toks, layers=[layer]), layer)
    value = FrequencyAblation(layer=layer, heads=head, pairs=pairs, target="q")
    assert value.query_heads_reached(spec) == (head,)
    got = scores_under(model, toks, layer, value)
    logits = pl.logits().clone()
    logits[:, head] -= pl.per_pair[:, head][..., list(pairs)].sum(-1)
    compare(got, expected_scores(pl, logits, family), pl, family)
    assert pl.per_pair[:, head][..., list(pairs)].abs().max() > 1e-3  # not vacuous


def test_key_ablation_under_gqa_reaches_the_whole_group(bridge_factory, toks):
    model = bridge_factory("llama_gqa")
    spec = rb.RopeSpec.from_model(model)
    layer, kv, pairs = 0, 1, rb.band(spec, "high")
    value = FrequencyAblation(layer=layer, heads=kv, pairs=pairs, target="k")
    assert value.query_heads_reached(spec) == (2, 3)
    pl = rb.pair_logits(rb.capture(model, toks, layers=[layer]), layer)
    logits = pl.logits().clone()
    for h in (2, 3):
        logits[:, h] -= pl.per_pair[:, h][..., list(pairs.pairs)].sum(-1)
    compare(scores_under(model, toks, layer, value), expected_scores(pl, logits, "llama"), pl, "llama")


@pytest.mark.parametrize("family", ["llama_gqa", "gpt_neox"])
def test_denoising_every_pair_of_a_layer_restores_its_clean_q_and_k(bridge_factory, family, toks, other):
    """Every pair = the rotary dims; pass-through dims (partial rotary) are not pairs."""
    model = bridge_factory(family)
    layer, rd = 1, rb.RopeSpec.from_model(model).rotary_dim
    clean = rb.capture(model, toks, layers=[layer])
    base = rb.capture(model, other, layers=[layer])
    with intervened(model, FrequencyPatch(layer=layer, source=toks)):
        patched = rb.capture(model, other, layers=[layer])
    assert hook_count(model) == 0
    for role in ("rot_q", "rot_k"):
        got, want, before = (getattr(c, role)[layer] for c in (patched, clean, base))
        torch.testing.assert_close(got[..., :rd], want[..., :rd], atol=1e-6, rtol=0)
        assert torch.equal(got[..., rd:], before[..., rd:])
    # a Captured or an ActivationCache source gives the same
    _, cache = model.run_with_cache(toks)
    for source in (clean, cache):
        with intervened(model, FrequencyPatch(layer=layer, source=source)):
            again = rb.capture(model, other, layers=[layer])
        assert torch.equal(again.rot_q[layer], patched.rot_q[layer])
    with pytest.raises(rb.RopeBehaviorError, match="the activation cache holds no"):
        run_with_interventions(model, other, FrequencyPatch(layer=layer, source={"x": toks}))
    assert hook_count(model) == 0


@pytest.mark.parametrize("family", ["llama_gqa", "llama_yarn", "gpt_neox", "gptj", "cohere2"])
def test_angle_override_with_the_models_own_angles_is_the_identity(bridge_factory, family, toks):
    model = bridge_factory(family)
    spec = rb.RopeSpec.from_model(model)
    with torch.no_grad():
        ref = model(toks)
        for layer in range(spec.n_layers):
            out = run_with_interventions(model, toks, AngleOverride(layer=layer, omega=spec.omega[layer]))
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert hook_count(model) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_angle_zero_gives_the_unrotated_scores(bridge_factory, family, toks):
    model = bridge_factory(family)
    spec = rb.RopeSpec.from_model(model)
    layer = 1
    cap = rb.capture(model, toks, layers=[layer])
    q, k = cap.q[layer], cap.k[layer][:, :, list(spec.kv_map)]
    logits = torch.einsum("bihd,bjhd->bhij", q, k) / spec.attn_scales[layer]
    pl = rb.pair_logits(cap, layer)
    got = scores_under(model, toks, layer, AngleOverride(layer=layer, omega=0.0))
    compare(got, expected_scores(pl, logits, family), pl, family)


@pytest.mark.parametrize("family", ["llama_gqa", "gpt_neox"])
def test_two_angles_rotate_each_half_at_its_angle(bridge_factory, family, toks):
    model = bridge_factory(family)
    spec = rb.RopeSpec.from_model(model)
    layer, theta = 1, 0.7
    value = AngleOverride(layer=layer, heads=None, omega=TwoAngles(first=0.0, second=theta))
    angles = value.angles(spec)
    half = spec.n_pairs // 2
    assert angles[:half].eq(0).all()
    assert angles[half:].eq(theta).all()
    cap = rb.capture(model, toks, layers=[layer])
    n = torch.arange(toks.shape[1], dtype=torch.float64)[:, None] * angles[None]
    cos, sin = n.cos().float(), n.sin().float()
    rq = rb.rotate(cap.q[layer], cos, sin, spec.pair_layout)
    rk = rb.rotate(cap.k[layer], cos, sin, spec.pair_layout)[:, :, list(spec.kv_map)]
    logits = torch.einsum("bihd,bjhd->bhij", rq, rk) / spec.attn_scales[layer]
    pl = rb.pair_logits(cap, layer)
    compare(scores_under(model, toks, layer, value), expected_scores(pl, logits, family), pl, family)


def test_angle_override_on_some_pairs_keeps_the_others(bridge_factory, toks):
    model = bridge_factory("llama_gqa")
    spec = rb.RopeSpec.from_model(model)
    layer = 0
    value = AngleOverride(layer=layer, heads=(0, 1), omega=[0.5, 0.25], pairs=(1, 3))
    angles = value.angles(spec)
    expected = spec.omega[layer].clone()
    expected[1], expected[3] = 0.5, 0.25
    torch.testing.assert_close(angles, expected)
    with pytest.raises(rb.RopeBehaviorError, match="omega has 3 angles"):
        AngleOverride(layer=layer, omega=[0.1, 0.2, 0.3]).angles(spec)
    with pytest.raises(rb.RopeBehaviorError, match="split"):
        AngleOverride(layer=layer, omega=TwoAngles(0.0, 1.0, split=99)).angles(spec)


@pytest.mark.parametrize("family", ["llama_gqa", "gpt_neox"])
def test_angle_override_of_some_pairs_in_every_head_leaves_the_others_bit_for_bit(
    bridge_factory, family, toks
):
    """Every head, some pairs (the identity folded into the hook's tables instead of a
    select): the other pairs' rotated q and k are the unedited ones exactly."""
    model = bridge_factory(family)
    spec = rb.RopeSpec.from_model(model)
    layer, pairs = 1, (spec.n_pairs - 1,)  # gpt_neox's test model rotates 2 pairs
    value = AngleOverride(layer=layer, omega=[0.5], pairs=pairs)
    base = rb.capture(model, toks, layers=[layer])
    with intervened(model, value):
        got = rb.capture(model, toks, layers=[layer])
    dims = rb.split_pairs(torch.arange(spec.rotary_dim).double(), spec.pair_layout).long()
    others = dims[[p for p in range(spec.n_pairs) if p not in pairs]].reshape(-1)
    edited = dims[list(pairs)].reshape(-1)
    for side in ("rot_q", "rot_k"):
        before, after = getattr(base, side)[layer], getattr(got, side)[layer]
        assert torch.equal(after[..., others], before[..., others])
        assert not torch.allclose(after[:, 1:][..., edited], before[:, 1:][..., edited])


@pytest.mark.parametrize("family", ["llama_gqa", "gpt_neox"])
@pytest.mark.parametrize("per_position", [True, False])
def test_mean_ablation_replaces_rotated_pairs_by_the_reference_mean(
    bridge_factory, family, per_position, toks, other
):
    """Per-position means edited before rotation equal the rotated means (linearity);
    pooled means are the mean of the rotated vectors over batch and positions."""
    model = bridge_factory(family)
    spec = rb.RopeSpec.from_model(model)
    layer, head, pairs = 1, 1, (0,)
    value = FrequencyAblation(layer=layer, heads=head, pairs=pairs, target="q", mode="mean")
    value = value.fit(model, other, per_position=per_position)
    ref = rb.capture(model, other, layers=[layer]).rot_q[layer]
    mean = ref.mean(0, keepdim=True) if per_position else ref.mean((0, 1), keepdim=True)
    with intervened(model, value):
        got = rb.capture(model, toks, layers=[layer]).rot_q[layer]
    want = rb.capture(model, toks, layers=[layer]).rot_q[layer].clone()
    dims = rb.split_pairs(torch.arange(spec.rotary_dim).double(), spec.pair_layout)[list(pairs)].long().reshape(-1)
    want[:, :, head, dims] = mean.expand_as(want)[:, :, head, dims]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_resample_ablation_takes_pairs_from_reference_rows(bridge_factory, toks, other):
    model = bridge_factory("llama_gqa")
    layer, pairs = 1, (2, 3)
    value = FrequencyAblation(layer=layer, heads=0, pairs=pairs, target="k", mode="resample").fit(model, other, seed=3)
    ref = rb.capture(model, other, layers=[layer]).rot_k[layer]
    with intervened(model, value):
        got = rb.capture(model, toks, layers=[layer]).rot_k[layer]
        again = rb.capture(model, toks, layers=[layer]).rot_k[layer]
    assert torch.equal(got, again)  # the same donors on every call
    dims = [2, 3, 10, 11]  # half layout, 8 pairs: pair p -> dims p, p + 8
    for b in range(toks.shape[0]):
        assert any(torch.equal(got[b, :, 0, dims], ref[r, :, 0, dims]) for r in range(ref.shape[0]))


def test_gradients_flow_through_masks_and_overrides(bridge_factory, toks):
    model = bridge_factory("llama_gqa")
    layer, d = 1, rb.RopeSpec.from_model(model).d_head
    w_q = model.original_model.model.layers[layer].self_attn.q_proj.weight
    model.zero_grad()
    logits = run_with_interventions(model, toks, FrequencyAblation(layer=layer, heads=0, target="q"))
    logits.logsumexp(-1).mean().backward()
    assert w_q.grad is not None
    assert torch.count_nonzero(w_q.grad[:d]) == 0  # head 0's queries are all zeroed
    assert w_q.grad[d:].abs().max() > 0
    model.zero_grad()
    logits = run_with_interventions(model, toks, AngleOverride(layer=layer, heads=(0, 1), omega=0.3))
    logits.logsumexp(-1).mean().backward()
    assert torch.isfinite(w_q.grad).all()
    assert w_q.grad[:d].abs().max() > 0
    model.zero_grad()
    assert hook_count(model) == 0


def test_values_and_compiled_hooks_have_readable_reprs(bridge_factory):
    model = bridge_factory("llama_gqa")
    spec = rb.RopeSpec.from_model(model)
    value = FrequencyAblation(layer=1, heads=(2, 3), pairs=rb.band(spec, "high"), target="qk")
    assert "FrequencyAblation(layer=1, heads=(2, 3), pairs=PairSet(name='high'" in repr(value)
    hooks = compile_hooks(spec, value)
    assert [name for name, _ in hooks] == ["blocks.1.attn.hook_rot_q", "blocks.1.attn.hook_rot_k"]
    assert repr(hooks[1][1]) == "ZeroPairs(site='blocks.1.attn.hook_rot_k', heads=(1,), pairs=(0, 1, 2))"
    assert value == FrequencyAblation(layer=1, heads=[3, 2], pairs=rb.band(spec, "high"))
    assert "source=tokens[2, 9]" in repr(FrequencyPatch(layer=0, source=torch.zeros(2, 9, dtype=torch.long)))
    assert value.resolve(spec).kv_heads == (1,)


def test_toy_model_goes_through_the_native_adapter():
    toy = pytest.importorskip("rope_behavior.tasks.toy")
    model = toy.ToyRotaryTransformer(toy.ToyConfig(d_vocab=20, n_ctx=16, n_layers=2, n_heads=2, d_head=8))
    spec = rb.RopeSpec.from_model(model)
    tokens = torch.randint(0, 20, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(tokens)
        same = run_with_interventions(model, tokens, AngleOverride(layer=1, omega=spec.omega[1]))
        zeroed = run_with_interventions(model, tokens, FrequencyAblation(layer=1, pairs=(0, 1)))
    torch.testing.assert_close(same, ref, atol=1e-5, rtol=0)
    assert (zeroed - ref).abs().max() > 1e-4
    assert hook_count(model) == 0


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (FrequencyAblation(layer=1, heads=0, pairs=8), r"pair 8 is out of range: expected 0 <= pair <= 7"),
        (FrequencyAblation(layer=1, heads=4, target="q"), r"head 4 is out of range: expected 0 <= head <= 3"),
        (FrequencyAblation(layer=2, heads=0), r"layer 2 is out of range"),
        (FrequencyAblation(layer=1, heads=3, target="k"), r"name KV heads.*2 KV heads \(valid: 0..1\).*KV heads \[1\]"),
        (FrequencyAblation(layer=1, heads=(0, 2), target="qk"), r"grouped-query attention.*query heads \[1, 3\].*heads=\[0, 1, 2, 3\]"),
        (FrequencyAblation(layer=1, heads=0, target="q", mode="mean"), r"needs reference statistics.*fit"),
        (AngleOverride(layer=1, heads=1, omega=0.0), r"target='qk'.*query heads \[0\]"),
    ],
)
def test_bad_interventions_are_refused_with_the_valid_range(bridge_factory, toks, value, match):
    model = bridge_factory("llama_gqa")
    with pytest.raises(rb.RopeBehaviorError, match=match):
        run_with_interventions(model, toks, value)
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(pairs=[]), "pairs is empty"),
        (dict(heads=[-1]), "non-negative int"),
        (dict(target="v"), r"target='v' is not one of \['q', 'k', 'qk'\]"),
        (dict(mode="noise"), r"mode='noise' is not one of"),
        (dict(pairs=torch.tensor([0.5])), "integer indices"),
    ],
)
def test_bad_values_fail_at_construction(kwargs, match):
    with pytest.raises(rb.RopeBehaviorError, match=match):
        FrequencyAblation(layer=0, **kwargs)


def test_empty_band_and_missing_source():
    with pytest.raises(rb.RopeBehaviorError, match="empty"):
        rb.PairSet("none", ())
    with pytest.raises(rb.RopeBehaviorError, match="needs source"):
        FrequencyPatch(layer=0)


def test_source_batch_mismatch_raises_inside_the_forward_and_leaves_no_hook(bridge_factory, toks):
    model = bridge_factory("llama_gqa")
    three = torch.randint(3, VOCAB, (3, 9), generator=torch.Generator().manual_seed(1))
    with pytest.raises(rb.RopeBehaviorError, match="source has batch 3 but the run has batch 2"):
        run_with_interventions(model, toks, FrequencyPatch(layer=0, pairs=0, source=three))
    assert hook_count(model) == 0
    with pytest.raises(rb.RopeBehaviorError, match="not an intervention"):
        run_with_interventions(model, toks, ["zero"])
    assert hook_count(model) == 0
