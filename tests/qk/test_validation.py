"""Input validation found by review: non-finite values, NoPE layers, angle/pair binding,
references fitted on another model, non-square exclusion tables, unclear errors."""

import dataclasses
import gc
import math

import pytest
import torch

import rope_behavior as rb
from rope_behavior.analysis.correspondence import behavior_frequency_correspondence
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.interventions.compile import compile_hooks, run_with_interventions
from rope_behavior.interventions.values import AngleOverride, FrequencyAblation, TwoAngles
from rope_behavior.patching.sweep import frequency_patching_sweep
from rope_behavior.scoring.exclusion import exclusion_check
from tests.models import VOCAB, hook_count, make_bridge

_ATTN = "model.layers.{}._original_component.self_attn._original_component.{}._original_component.weight"


@pytest.fixture(scope="module")
def toks() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def llama():
    return make_bridge("llama_gqa", seed=0)


@pytest.fixture(scope="module")
def llama_b():
    return make_bridge("llama_gqa", seed=1)


# -- 1. non-finite values -------------------------------------------------------------------


@pytest.mark.parametrize(("proj", "site"), [("q_proj", "queries"), ("k_proj", "keys")])
def test_nan_weights_raise_naming_layer_and_site(toks, proj, site):
    model = make_bridge("llama_gqa", seed=2)  # its own copy: the weights are edited
    with torch.no_grad():
        dict(model.named_parameters())[_ATTN.format(1, proj)][0, 0] = float("nan")
    cap = rb.capture(model, toks)
    rb.pair_logits(cap, 0)  # layer 0 is untouched and finite
    with pytest.raises(
        RopeBehaviorError, match=rf"non-finite values \(NaN\) at layer 1 in the {site}"
    ):
        rb.pair_logits(cap, 1)
    with pytest.raises(RopeBehaviorError, match=rf"layer 1 in the {site}"):
        rb.frequency_usage(cap)
    assert hook_count(model) == 0


def test_overflowing_logits_raise_naming_the_logits(llama, toks):
    cap = rb.capture(llama, toks, layers=[0])
    huge = dataclasses.replace(cap, rot_q={0: cap.rot_q[0] * 1e22}, rot_k={0: cap.rot_k[0] * 1e22})
    assert torch.isfinite(huge.rot_q[0]).all()
    assert torch.isfinite(huge.rot_k[0]).all()
    with pytest.raises(
        RopeBehaviorError, match=r"non-finite values \((NaN|inf)\) at layer 0 in the logits"
    ):
        rb.pair_logits(huge, 0)


def test_nan_at_padding_is_ignored(llama, toks):
    mask = torch.ones_like(toks)
    mask[0, :2] = 0
    cap = rb.capture(llama, toks, layers=[0], attention_mask=mask)
    q = cap.rot_q[0].clone()
    q[0, :2] = float("nan")  # only padded positions
    pl = rb.pair_logits(dataclasses.replace(cap, rot_q={0: q}), 0)
    assert torch.isfinite(pl.per_pair).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda: AngleOverride(layer=0, omega=float("nan")),
        lambda: AngleOverride(layer=0, omega=float("inf")),
        lambda: AngleOverride(layer=0, omega=[0.1, float("nan")], pairs=(0, 1)),
        lambda: AngleOverride(layer=0, omega=torch.tensor([0.1, -math.inf])),
        lambda: AngleOverride(layer=0, omega=torch.tensor(float("nan"))),
        lambda: TwoAngles(float("nan"), 0.1),
        lambda: TwoAngles(0.0, float("inf")),
        lambda: AngleOverride(layer=0, omega=TwoAngles(0.0, -math.inf)),
    ],
)
def test_non_finite_angles_are_refused_at_construction(make):
    with pytest.raises(RopeBehaviorError, match="expected a finite real angle"):
        make()


@pytest.fixture(scope="module")
def cohere2():
    return make_bridge("cohere2")  # layer 1 ("full_attention") has no rotation


def test_nope_layer_has_nan_log_omega_centroid(cohere2, toks):
    spec = rb.RopeSpec.from_model(cohere2)
    assert spec.omega_source == ("inv_freq", "nope")
    usage = rb.frequency_usage(rb.capture(cohere2, toks))
    assert torch.isfinite(usage.centroid_log_omega[0]).all()
    assert torch.isnan(usage.centroid_log_omega[1]).all()
    assert torch.isfinite(usage.centroid).all()  # a pair index stays defined
    frame = usage.head_frame()
    assert frame[frame.layer == 1].centroid_log_omega.isna().all()


def test_nope_layer_has_no_wavelength_bands(cohere2):
    spec = rb.RopeSpec.from_model(cohere2)
    with pytest.raises(RopeBehaviorError, match=r"layer 1 .* does not rotate \(NoPE.*one of \[0\]"):
        rb.wavelength_bands(spec, 16, layer=1)
    assert rb.wavelength_bands(spec, 16, layer=0)


def test_a_still_pair_joins_the_last_wavelength_band(llama):
    spec = rb.RopeSpec.from_model(llama)
    omega = spec.omega.clone()
    omega[0, 7] = 0.0
    still = dataclasses.replace(spec, _omega=omega)
    bands = {b.name: b.pairs for b in rb.wavelength_bands(still, 64)}
    assert 7 in bands["wavelength:1-inf@64"]
    assert sorted(p for ps in bands.values() for p in ps) == list(range(8))


# -- 2. pairs and angles stay together ---------------------------------------------------------


@pytest.mark.parametrize("pairs", [[2, 1], (2, 1), torch.tensor([2, 1])])
def test_angles_follow_their_pairs(llama, pairs):
    spec = rb.RopeSpec.from_model(llama)
    angles = AngleOverride(layer=0, omega=[0.1, 0.2], pairs=pairs).angles(spec)
    assert float(angles[2]) == pytest.approx(0.1)
    assert float(angles[1]) == pytest.approx(0.2)
    others = [p for p in range(spec.n_pairs) if p not in (1, 2)]
    torch.testing.assert_close(angles[others], spec.omega[0, others].double())


def test_listed_order_reaches_the_model(llama, toks):
    a = run_with_interventions(llama, toks, AngleOverride(layer=1, omega=[0.3, 0.05], pairs=[3, 0]))
    b = run_with_interventions(llama, toks, AngleOverride(layer=1, omega=[0.05, 0.3], pairs=[0, 3]))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_duplicate_pairs_with_per_pair_angles_are_refused(llama):
    with pytest.raises(
        RopeBehaviorError,
        match=r"pairs=\[2, 1, 2\] lists pair\(s\) \[2\] more than once, with 3 per-pair angles "
        r"\(pair 2: \[0.1, 0.3\]\); expected each pair once",
    ):
        AngleOverride(layer=0, omega=[0.1, 0.2, 0.3], pairs=[2, 1, 2])
    with pytest.raises(RopeBehaviorError, match=r"lists pair\(s\) \[2\] more than once"):
        AngleOverride(layer=0, omega=[0.1, 0.1, 0.2], pairs=[2, 2, 1])  # even with one angle
    with pytest.raises(RopeBehaviorError, match=r"lists pair\(s\) \[1, 2\] more than once, with 2"):
        AngleOverride(layer=0, omega=[0.1, 0.2], pairs=torch.tensor([2, 1, 2, 1]))
    spec = rb.RopeSpec.from_model(llama)  # one angle for all: duplicates are harmless
    assert float(AngleOverride(layer=0, omega=0.1, pairs=[2, 2]).angles(spec)[2]) == pytest.approx(
        0.1
    )


def test_full_length_omega_is_indexed_by_pair(llama):
    spec = rb.RopeSpec.from_model(llama)
    full = torch.linspace(0.01, 0.08, spec.n_pairs)
    angles = AngleOverride(layer=0, omega=full, pairs=[5, 2]).angles(spec)
    assert float(angles[5]) == pytest.approx(float(full[5]))
    assert float(angles[2]) == pytest.approx(float(full[2]))


# -- 3. a reference belongs to the model it was fitted on --------------------------------------


@pytest.mark.parametrize("mode", ["mean", "resample"])
def test_reference_fitted_on_another_model_is_refused(llama, llama_b, toks, mode):
    fitted = FrequencyAblation(layer=1, pairs=(0, 1), mode=mode).fit(llama, toks)
    run_with_interventions(llama, toks, fitted)  # its own model: fine
    with pytest.raises(
        RopeBehaviorError, match=r"fitted on another model object.*Refit on this model"
    ):
        run_with_interventions(llama_b, toks, fitted)
    assert hook_count(llama_b) == 0
    spec_b = rb.RopeSpec.from_model(llama_b)
    with pytest.raises(RopeBehaviorError, match="another model object"):
        compile_hooks(spec_b, fitted, model=llama_b)
    compile_hooks(spec_b, fitted)  # no model given: shapes agree, nothing to tell apart
    with pytest.raises(RopeBehaviorError, match="fitted for layer 1"):  # the old check stays
        compile_hooks(spec_b, dataclasses.replace(fitted, layer=0), model=llama)


def test_reference_of_another_architecture_is_refused(llama, toks):
    fitted = FrequencyAblation(layer=0, mode="mean").fit(llama, toks)
    mha = rb.RopeSpec.from_model(make_bridge("llama_mha"))
    with pytest.raises(
        RopeBehaviorError,
        match=r"fitted on LlamaForCausalLM \(2 layers, 4 heads / 2 kv.*4 heads / 4 kv",
    ):
        compile_hooks(mha, fitted)


def test_reference_of_a_deleted_model_is_refused(llama, toks):
    gone = make_bridge("llama_gqa", seed=5)
    fitted = FrequencyAblation(layer=0, mode="mean").fit(gone, toks)
    del gone
    gc.collect()
    if fitted.reference.model_ref() is not None:  # pragma: no cover - kept alive elsewhere
        pytest.skip("the model was not collected")
    with pytest.raises(RopeBehaviorError, match="no longer exists"):
        run_with_interventions(llama, toks, fitted)


# -- 4. exclusion tables from a function must be square ----------------------------------------


def test_logit_function_must_return_a_square_table():
    with pytest.raises(
        RopeBehaviorError, match=r"shape \(3, 4\).*expected real logits of shape \(3, 3\)"
    ):
        exclusion_check(lambda c, p: torch.zeros(3, 4), n_keys=3)
    with pytest.raises(RopeBehaviorError, match=r"shape \(\).*\(3, 3\)"):
        exclusion_check(lambda c, p: torch.tensor(1.0), n_keys=3)
    with pytest.raises(RopeBehaviorError, match="returned str"):
        exclusion_check(lambda c, p: "logits", n_keys=3)
    ok = exclusion_check(lambda c, p: (c - p).double() ** 2, n_keys=3)
    assert ok.holds


# -- 5. clear errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "match"),
    [
        (torch.rand(2, 9), "integer token ids; got dtype torch.float32"),
        (torch.zeros(1, 0, dtype=torch.long), r"shape \(1, 0\) is too short"),
        (torch.ones(1, 65, dtype=torch.long), "65 positions .* n_ctx=64"),
        (torch.full((1, 4), VOCAB), r"expected ids in \[0, 96\]"),
    ],
)
def test_run_with_interventions_validates_tokens(llama, tokens, match):
    with pytest.raises(RopeBehaviorError, match=match):
        run_with_interventions(llama, tokens, [])
    assert hook_count(llama) == 0


def test_interventions_argument_must_be_values(llama, toks):
    with pytest.raises(RopeBehaviorError, match=r"interventions=3: expected an intervention value"):
        run_with_interventions(llama, toks, 3)
    with pytest.raises(RopeBehaviorError, match="interventions='zero'"):
        run_with_interventions(llama, toks, "zero")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: FrequencyAblation(layer=0, heads=1.0),
            r"heads=1\.0 \(float\); expected an int index",
        ),
        (lambda: FrequencyAblation(layer=0, pairs="01"), r"pairs='01' \(str\)"),
        (lambda: FrequencyAblation(layer=0, heads=[0, 1.0]), r"heads holds 1\.0 \(float\)"),
        (lambda: FrequencyAblation(layer=0, heads=torch.tensor([0.0])), "torch.float32 tensor"),
    ],
)
def test_index_arguments(make, match):
    with pytest.raises(RopeBehaviorError, match=match):
        make()


def test_band_arguments(llama):
    spec = rb.RopeSpec.from_model(llama)
    with pytest.raises(
        RopeBehaviorError, match=r"band name 3 \(int\) is not a string; options: 'high'"
    ):
        rb.band(spec, 3)
    with pytest.raises(
        RopeBehaviorError, match=r"pairs=1\.5 \(float\): expected a pair index .* \[0, 7\]"
    ):
        rb.pair_set(spec, 1.5)
    with pytest.raises(RopeBehaviorError, match=r"pairs=\[1\.5\]: pair must be an int"):
        rb.pair_set(spec, [1.5])


def test_sweep_band_list_with_a_float(llama, toks):
    with pytest.raises(RopeBehaviorError, match=r"bands\[0\]: pairs=1\.5 \(float\)"):
        frequency_patching_sweep(llama, toks, toks, lambda logits: logits.sum(), bands=[1.5])
    assert hook_count(llama) == 0


@pytest.fixture(scope="module")
def scored(llama):
    tokens = torch.randint(3, VOCAB, (2, 21), generator=torch.Generator().manual_seed(1))
    return (
        rb.score_heads(llama, tokens, block_size=4, n_swaps=3, layers=[0]),
        rb.frequency_usage(rb.capture(llama, tokens)),
        tokens,
    )


def test_correspondence_needs_matching_heads_and_layers(llama, scored):
    hs, usage, tokens = scored
    wide = make_bridge("llama_gqa", num_attention_heads=8, num_key_value_heads=2)
    wide_usage = rb.frequency_usage(rb.capture(wide, tokens))
    with pytest.raises(
        RopeBehaviorError, match="scores cover 4 heads per layer but usage covers 8"
    ):
        behavior_frequency_correspondence(hs, wide_usage)
    only_1 = rb.frequency_usage(rb.capture(llama, tokens, layers=[1]))
    with pytest.raises(
        RopeBehaviorError,
        match=r"scores cover layers \[0\] and usage covers \[1\]: no layer in common",
    ):
        behavior_frequency_correspondence(hs, only_1)
    with pytest.raises(
        RopeBehaviorError, match=r"include='some' is not one of \['identifiable', 'all'\]"
    ):
        behavior_frequency_correspondence(hs, usage, include="some")


def test_the_finiteness_fast_path_sends_an_overflowing_sum_to_the_full_check():
    """One reduction clears a finite tensor; a finite tensor whose sum overflows (float16)
    is checked entry by entry and passes, and a NaN anywhere attended is still found."""
    from rope_behavior.frequency.decomposition import _check_finite

    big = torch.full((1, 4, 1, 2), 60000.0, dtype=torch.float16)
    assert not torch.isfinite(big.sum())
    _check_finite(big, None, 0, "queries", "query head", (0,))  # no error: all finite
    big[0, 2, 0, 1] = float("nan")
    valid = torch.ones(1, 4, 1, 1, dtype=torch.bool)
    with pytest.raises(RopeBehaviorError, match="position 2"):
        _check_finite(big, valid, 0, "queries", "query head", (0,))
    valid[0, 2] = False  # the NaN sits at padding: ignored
    _check_finite(big, valid, 0, "queries", "query head", (0,))
