"""Known answers for RoPE edits as values (PRoPE, NoPEBelow, RopeScaling).

The central ones: ``PRoPE(0)`` is the unedited model exactly, ``PRoPE(1)`` is
``AngleOverride(omega=0)`` on every pair, NoPE pairs equal a model whose ``inv_freq`` is
zeroed there, and ``RopeScaling`` equals the same weights rebuilt by transformers from a
config with that scaling (``"linear"``, ``"yarn"``; ``"ntk"`` against transformers'
``"dynamic"`` past its ``max_position_embeddings``), logits and gradients.
"""

import math

import pytest
import torch

import rope_behavior as rb
from rope_behavior.interventions.compile import compile_hooks, intervened, run_with_interventions
from rope_behavior.interventions.rope_edits import NoPEBelow, PRoPE, RopeScaling
from rope_behavior.interventions.values import AngleOverride
from tests.models import VOCAB, hook_count, make_bridge

# llama_gqa: GQA, rotated hooks; gpt_neox: partial rotary, pre-rotation edits;
# gptj: interleaved pairs, pre-rotation edits.
FAMILIES = ["llama_gqa", "gpt_neox", "gptj"]
THETA = 10000.0


@pytest.fixture
def toks(gen):
    return torch.randint(3, VOCAB, (2, 12), generator=gen)


def logits_of(model, toks, edits):
    with torch.no_grad():
        out = run_with_interventions(model, toks, edits)
    assert hook_count(model) == 0
    return out


def with_unrotated(family, pairs):
    """The same random weights with the host's own angles zeroed at ``pairs`` (``inv_freq``,
    or GPT-J's ``[pos, sin | cos]`` table): NoPE there, by the host itself."""
    model = make_bridge(family)
    sel = list(pairs)
    found = 0
    with torch.no_grad():
        for mod in model.original_model.modules():
            for name in ("inv_freq", "original_inv_freq"):
                buf = getattr(mod, name, None)
                if isinstance(buf, torch.Tensor):
                    buf[sel] = 0.0
                    found += 1
            table = getattr(mod, "embed_positions", None)
            if isinstance(table, torch.Tensor):
                half = table.shape[-1] // 2
                table[:, sel] = 0.0  # sin
                table[:, [half + p for p in sel]] = 1.0  # cos
                found += 1
    assert found
    return model


# -- PRoPE / NoPEBelow ---------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_prope_zero_is_the_unedited_model_exactly(bridge_factory, family, toks):
    model = bridge_factory(family)
    spec = rb.RopeSpec.from_model(model)
    assert PRoPE(0).resolve(spec) == ()
    assert compile_hooks(spec, PRoPE(0), model=model) == []
    with torch.no_grad():
        assert torch.equal(logits_of(model, toks, PRoPE(0)), model(toks))


@pytest.mark.parametrize("family", FAMILIES)
def test_prope_one_is_angle_zero_on_every_pair(bridge_factory, family, toks):
    model = bridge_factory(family)
    spec = rb.RopeSpec.from_model(model)
    reaches = PRoPE(1).resolve(spec)
    assert [r.layer for r in reaches] == list(range(spec.n_layers))
    assert all(r.pairs == tuple(range(spec.n_pairs)) for r in reaches)
    assert all(r.query_heads_reached == tuple(range(spec.n_heads)) for r in reaches)
    nope = [AngleOverride(layer=layer, omega=0.0) for layer in range(spec.n_layers)]
    got, want = logits_of(model, toks, PRoPE(1)), logits_of(model, toks, nope)
    assert torch.equal(got, want)
    with torch.no_grad():
        assert (got - model(toks)).abs().max() > 1e-3  # not vacuous


@pytest.mark.parametrize(
    ("family", "p", "n_nope"),
    [("llama_gqa", 0.25, 2), ("llama_gqa", 0.3, 3), ("gpt_neox", 0.5, 1), ("gptj", 0.7, 3)],
)
def test_prope_unrotates_the_lowest_pairs_as_a_model_without_them(
    bridge_factory, family, p, n_nope, toks
):
    """The ceil(p * n_pairs) slowest pairs; the host with those inv_freq zeroed agrees."""
    model = bridge_factory(family)
    spec = rb.RopeSpec.from_model(model)
    value = PRoPE(p)
    assert value.n_nope(spec.n_pairs) == n_nope == math.ceil(p * spec.n_pairs - 1e-9)
    slowest = tuple(range(spec.n_pairs - n_nope, spec.n_pairs))  # omega falls with the index
    assert [r.pairs for r in value.resolve(spec)] == [slowest] * spec.n_layers
    want = logits_of(with_unrotated(family, slowest), toks, [])
    torch.testing.assert_close(logits_of(model, toks, value), want, atol=1e-5, rtol=0)
    # NoPEBelow(first of them) is the same edit on a monotone spectrum
    below = NoPEBelow(slowest[0])
    assert below.resolve(spec) == value.resolve(spec)
    assert torch.equal(logits_of(model, toks, below), logits_of(model, toks, value))


def test_prope_counts_round_up_and_say_so():
    assert [PRoPE(p).n_nope(10) for p in (0.0, 0.01, 0.1, 0.7, 0.71, 0.99, 1.0)] == [
        0,
        1,
        1,
        7,
        8,
        10,
        10,
    ]
    assert [PRoPE(p).n_nope(8) for p in (0.125, 0.2, 0.5)] == [1, 2, 4]
    text = repr(PRoPE(0.3, layers=[1], heads=(0, 1)))
    assert "ceil(p*n_pairs) lowest-omega pairs NoPE" in text
    assert "layers=[1]" in text
    assert len(text) <= 80


def test_per_layer_and_per_head_edits_reach_only_what_they_say(bridge_factory, toks):
    model = bridge_factory("llama_gqa")  # 4 query heads in KV groups (0, 1), (2, 3)
    spec = rb.RopeSpec.from_model(model)
    value = PRoPE(0.5, layers=1, heads=(2, 3))
    (reach,) = value.resolve(spec)
    assert (reach.layer, reach.q_heads, reach.kv_heads, reach.pairs) == (
        1,
        (2, 3),
        (1,),
        (4, 5, 6, 7),
    )
    assert value.query_heads_reached(spec) == (2, 3)
    name = spec.sites[1].scores
    with torch.no_grad():
        _, clean = model.run_with_cache(toks, names_filter=[name])
        with intervened(model, value):
            _, edited = model.run_with_cache(toks, names_filter=[name])
    assert hook_count(model) == 0
    a, b = clean[name], edited[name]
    assert torch.equal(a[:, :2], b[:, :2])
    assert (a[:, 2:] - b[:, 2:]).nan_to_num(posinf=0, neginf=0).abs().max() > 1e-3
    with pytest.raises(
        rb.RopeBehaviorError, match=r"edits queries and keys together.*whole groups"
    ):
        run_with_interventions(model, toks, NoPEBelow(4, heads=[0]))
    assert hook_count(model) == 0


# -- RopeScaling against transformers' own ---------------------------------------------


def scaled(family, **rope):
    return make_bridge(family, rope_parameters=dict(rope_theta=THETA, **rope))


@pytest.mark.parametrize("family", ["llama_gqa", "gpt_neox", "phi"])
def test_linear_scaling_equals_the_model_rebuilt_with_it(bridge_factory, family, toks):
    model = bridge_factory(family)
    own = model.original_model.config.rope_parameters  # keeps partial rotary (gpt_neox, phi)
    extra = {k: own[k] for k in ("partial_rotary_factor",) if k in own}
    want = logits_of(scaled(family, rope_type="linear", factor=2.0, **extra), toks, [])
    value = RopeScaling("linear", 2)
    got = logits_of(model, toks, value)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - logits_of(model, toks, [])).abs().max() > 1e-3
    spec = rb.RopeSpec.from_model(model)
    assert [r.pairs for r in value.resolve(spec)] == [tuple(range(spec.n_pairs))] * spec.n_layers


def test_ntk_equals_transformers_dynamic_past_its_context(bridge_factory, toks):
    """transformers' 'dynamic' raises the base as static NTK does with factor
    f * n / max_position_embeddings - (f - 1) once a forward holds n > max positions."""
    model = bridge_factory("llama_gqa")
    f, n_max, n = 4.0, 8, toks.shape[1]
    ref = make_bridge(
        "llama_gqa",
        max_position_embeddings=n_max,
        rope_parameters=dict(rope_type="dynamic", rope_theta=THETA, factor=f),
    )
    with torch.no_grad():
        want = ref.original_model(toks).logits
    alpha = f * n / n_max - (f - 1)  # 3.0
    got = logits_of(model, toks, RopeScaling("ntk", alpha))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - logits_of(model, toks, [])).abs().max() > 1e-3  # not vacuous
    spec = rb.RopeSpec.from_model(model)
    new, _ = RopeScaling("ntk", alpha).layer_angles(spec, 0)
    base = THETA * alpha ** (spec.rotary_dim / (spec.rotary_dim - 2))
    torch.testing.assert_close(
        new,
        base ** (-torch.arange(0, spec.rotary_dim, 2).double() / spec.rotary_dim),
        rtol=1e-6,
        atol=0,
    )


@pytest.mark.parametrize(
    "extra",
    [
        dict(original_max_position_embeddings=16),
        dict(original_max_position_embeddings=48),
        dict(original_max_position_embeddings=48, truncate=False),
        dict(
            original_max_position_embeddings=32, attention_factor=1.3, beta_fast=16.0, beta_slow=2.0
        ),
    ],
)
def test_yarn_equals_the_model_rebuilt_with_it(bridge_factory, extra, toks):
    model = bridge_factory("llama_gqa")
    ref = scaled("llama_gqa", rope_type="yarn", factor=4.0, **extra)
    want = logits_of(ref, toks, [])
    kw = {
        {"original_max_position_embeddings": "original_context"}.get(k, k): v
        for k, v in extra.items()
    }
    value = RopeScaling("yarn", 4, **kw)
    got = logits_of(model, toks, value)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # the magnitude is transformers' attention scaling, every pair edited
    spec = rb.RopeSpec.from_model(model)
    assert value.magnitude == pytest.approx(
        float(rb.RopeSpec.from_model(ref).table_scale[0]), rel=1e-6
    )
    assert all(r.pairs == tuple(range(spec.n_pairs)) for r in value.resolve(spec))
    # the angles are transformers' inv_freq
    new, _ = value.layer_angles(spec, 0)
    torch.testing.assert_close(new, rb.RopeSpec.from_model(ref).omega[0], rtol=1e-6, atol=0)


def test_scaling_trains_as_the_rebuilt_model_does(bridge_factory, toks):
    """Gradients flow through the edit, and equal those of the rebuilt model."""
    grads = []
    for model, edits in (
        (make_bridge("llama_gqa"), RopeScaling("yarn", 4, original_context=48)),
        (
            scaled("llama_gqa", rope_type="yarn", factor=4.0, original_max_position_embeddings=48),
            [],
        ),
    ):
        with intervened(model, edits):
            loss = model(toks, return_type="loss")
        loss.backward()
        assert hook_count(model) == 0
        grads.append({n: p.grad for n, p in model.original_model.named_parameters() if "proj" in n})
    assert all(g is not None and g.abs().max() > 0 for g in grads[0].values())
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_prope_trains_as_a_model_without_those_pairs(toks):
    """Pre-rotation edits (GPT-NeoX, partial rotary) carry the same gradients as the host
    with the slowest pair's inv_freq zeroed."""
    grads = []
    for model, edits in (
        (make_bridge("gpt_neox"), PRoPE(0.5)),
        (with_unrotated("gpt_neox", [1]), []),
    ):
        with intervened(model, edits):
            loss = model(toks, return_type="loss")
        loss.backward()
        assert hook_count(model) == 0
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    qk = [n for n in grads[0] if ".attention.q" in n or ".attention.k" in n]
    assert qk
    assert all(grads[0][n].abs().max() > 0 for n in qk)
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_magnitude_scales_the_pairs_logits_by_its_square(bridge_factory, toks):
    model = bridge_factory("llama_gqa")  # every dim rotary
    name = rb.RopeSpec.from_model(model).sites[0].scores
    with torch.no_grad():
        _, clean = model.run_with_cache(toks, names_filter=[name])
        with intervened(
            model,
            [AngleOverride(layer=0, omega=rb.RopeSpec.from_model(model).omega[0], magnitude=1.5)],
        ):
            _, edited = model.run_with_cache(toks, names_filter=[name])
    m = clean[name] > -1e30  # not masked
    torch.testing.assert_close(edited[name][m], 2.25 * clean[name][m], atol=1e-4, rtol=1e-5)
    assert "magnitude" not in repr(AngleOverride(layer=0))
    assert "magnitude=1.5" in repr(AngleOverride(layer=0, magnitude=1.5))


# -- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: PRoPE(1.5), r"PRoPE: p=1.5; expected a number in \[0, 1\]"),
        (lambda: PRoPE(True), r"PRoPE: p=True"),
        (lambda: NoPEBelow(-1), r"NoPEBelow: pair=-1; expected an int >= 0"),
        (
            lambda: RopeScaling("dynamic", 2),
            r"kind='dynamic' is not one of \['linear', 'ntk', 'yarn'\]",
        ),
        (lambda: RopeScaling("linear", 0), r"factor=0; expected a number in \(0, inf\)"),
        (lambda: RopeScaling("yarn", 4), r"needs original_context="),
        (
            lambda: RopeScaling("linear", 2, original_context=16),
            r"original_context belong to kind='yarn'",
        ),
        (
            lambda: AngleOverride(layer=0, magnitude=0.0),
            r"magnitude=0.0; expected a number in \(0, inf\)",
        ),
        (lambda: PRoPE(0.5, layers="all"), r"layers='all'"),
    ],
)
def test_bad_values_are_refused_naming_what_was_expected(make, match):
    with pytest.raises(rb.RopeBehaviorError, match=match):
        make()


@pytest.mark.parametrize(
    ("family", "value", "match"),
    [
        ("llama_gqa", NoPEBelow(8), r"pair 8 .*8 pairs|pair=8"),
        ("llama_gqa", PRoPE(0.5, layers=[5]), r"layer"),
        (
            "llama3_rope",
            RopeScaling("yarn", 2, original_context=16),
            r"not geometric.*kind='linear' or 'ntk'",
        ),
    ],
)
def test_edits_that_do_not_fit_the_model_are_refused(bridge_factory, family, value, match, toks):
    model = bridge_factory(family)
    with pytest.raises(rb.RopeBehaviorError, match=match):
        run_with_interventions(model, toks, value)
    assert hook_count(model) == 0
