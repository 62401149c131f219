"""Frequency settings: parsing, validation, and what the compiled hooks do to the toy model."""

import pytest
import torch

import rope_behavior as rb
from rope_behavior.interventions.values import AngleOverride, FrequencyAblation, TwoAngles
from rope_behavior.tasks import IndexTask, TrainConfig, toy_model, train
from rope_behavior.tasks.settings import FrequencySetting, parse_setting, sweep_settings


@pytest.fixture
def model():
    return toy_model(d_vocab=20, n_ctx=10, n_layers=2, n_heads=2, d_head=16, seed=3)


@pytest.fixture
def tokens(generator):
    return torch.randint(0, 20, (4, 10), generator=generator)


@pytest.mark.parametrize(
    ("name", "kind", "pairs", "theta"),
    [
        ("all", "all", tuple(range(8)), None),
        ("nope", "nope", tuple(range(8)), None),
        ("high", "pair", (0,), None),
        ("low", "pair", (7,), None),
        ("pair:3", "pair", (3,), None),
        ("band:1/4", "band", (2, 3), None),
        ("band:2/3", "band", (5, 6, 7), None),
        ("angle:0.25", "angle", tuple(range(8)), 0.25),
        ("two_angle:0.1", "two_angle", tuple(range(8)), 0.1),
    ],
)
def test_parse(name, kind, pairs, theta):
    s = parse_setting(name, 8)
    assert (s.name, s.kind, s.pairs, s.theta, s.n_pairs) == (name, kind, pairs, theta, 8)
    assert s.masked_pairs == tuple(p for p in range(8) if p not in pairs)


def test_band_boundaries_match_equal_bands(model):
    spec = rb.RopeSpec.from_model(model)
    for n in (1, 3, 5, 8):
        for k, expected in enumerate(rb.equal_bands(spec, n)):
            assert parse_setting(f"band:{k}/{n}", spec.n_pairs).pairs == expected.pairs


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("rope", r"unknown frequency setting 'rope'; options: all, nope, high, low, pair:<i>"),
        ("pair:8", r"pair 8 is out of range; the model has 8 pairs \(valid: 0..7\)"),
        ("pair:-1", r"pair index '-1' is not a non-negative int"),
        ("pair:x", r"pair index 'x' is not a non-negative int"),
        ("angle:fast", r"theta 'fast' is not a number"),
        ("two_angle:inf", r"theta must be finite"),
        ("band:3/3", r"need 1 <= n <= n_pairs=8 bands and 0 <= k < n; got k=3, n=3"),
        ("band:0/9", r"got k=0, n=9"),
        ("band:1", r"expected 'band:<k>/<n>'"),
    ],
)
def test_bad_names_are_clear_errors(name, message):
    with pytest.raises(ValueError, match=message):
        parse_setting(name, 8)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"n_pairs must be an int >= 1; got 0"):
        parse_setting("all", 0)
    with pytest.raises(ValueError, match=r"theta is required for kind 'angle'"):
        FrequencySetting("x", "angle", 4, (0, 1, 2, 3))
    with pytest.raises(ValueError, match=r"pairs=\(5,\); expected a non-empty set"):
        FrequencySetting("x", "pair", 4, (5,))


def test_interventions_are_values(model):
    spec = rb.RopeSpec.from_model(model)
    assert parse_setting("all", 8).interventions(spec) == ()
    assert parse_setting("pair:3", 8).interventions(spec) == tuple(
        FrequencyAblation(layer=layer, pairs=(0, 1, 2, 4, 5, 6, 7), target="qk", mode="zero")
        for layer in (0, 1)
    )
    assert parse_setting("two_angle:0.1", 8).interventions(spec) == tuple(
        AngleOverride(layer=layer, omega=TwoAngles(0.0, 0.1)) for layer in (0, 1)
    )
    assert parse_setting("pair:0", 1).interventions(
        rb.RopeSpec.from_model(toy_model(d_vocab=5, n_ctx=4, d_head=2))
    ) == ()


def test_setting_for_another_model_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"parsed for n_pairs=16, but the model .* has 8 pairs"):
        parse_setting("pair:12", 16).hooks(model)


def test_all_installs_no_hooks(model, tokens, n_hooks):
    assert parse_setting("all", 8).hooks(model) == []


def test_pair_setting_leaves_exactly_that_pairs_logits(model, tokens, n_hooks):
    setting = parse_setting("pair:3", 8)
    with model.hooks(fwd_hooks=setting.hooks(model)):
        captured = rb.capture(model, tokens)
        _, cache = model.run_with_cache(
            tokens, names_filter=lambda n: n.endswith("hook_attn_scores")
        )
    assert n_hooks(model) == 0
    for layer in (0, 1):
        logits = rb.pair_logits(captured, layer)
        mask = logits.mask[:, None]
        scores = cache[f"blocks.{layer}.attn.hook_attn_scores"]
        torch.testing.assert_close(
            torch.where(mask, scores, 0.0), logits.per_pair[..., 3], rtol=1e-5, atol=1e-6
        )
        others = logits.per_pair[..., [p for p in range(8) if p != 3]]
        assert bool((others == 0).all())


def test_masked_pairs_get_no_gradient(model, tokens):
    setting = parse_setting("pair:3", 8)
    with model.hooks(fwd_hooks=setting.hooks(model)):
        model(tokens).logsumexp(-1).sum().backward()
    kept_dims = [3, 3 + 8]  # "half" layout: pair p = dims p and p + d_head/2
    for w in (model.blocks[0].attn.W_Q, model.blocks[0].attn.W_K):
        grad = w.grad.clone()
        assert grad[..., kept_dims].abs().sum() > 0
        grad[..., kept_dims] = 0
        assert bool((grad == 0).all())


@pytest.mark.parametrize(
    ("name", "omega"),
    [
        ("nope", [0.0] * 8),
        ("angle:0.3", [0.3] * 8),
        ("two_angle:0.1", [0.0] * 4 + [0.1] * 4),
    ],
)
def test_angle_settings_equal_the_model_with_those_angles(model, tokens, name, omega):
    setting = parse_setting(name, 8)
    with model.hooks(fwd_hooks=setting.hooks(model)):
        hooked = model(tokens)
    reference = toy_model(d_vocab=20, n_ctx=10, n_layers=2, n_heads=2, d_head=16, seed=3)
    with torch.no_grad():
        reference.rotary_omega.copy_(torch.tensor([omega, omega]))
    torch.testing.assert_close(hooked, reference(tokens), rtol=1e-5, atol=1e-5)


def test_train_with_setting_hooks_is_scoped(n_hooks):
    task = IndexTask(length=5, n_symbols=4)
    model = toy_model(task, d_head=8, seed=0)
    setting = parse_setting("high", model.cfg.n_pairs)
    result = train(model, task, TrainConfig(steps=3, progress=False), fwd_hooks=setting.hooks)
    assert result.steps == 3
    assert n_hooks(model) == 0


def test_sweep_settings():
    assert sweep_settings(4) == ("pair:0", "pair:1", "pair:2", "pair:3", "all", "nope", "two_angle:0.1")
    assert sweep_settings(16, pairs=[15, 0, 8], theta=0.2) == (
        "pair:0", "pair:8", "pair:15", "all", "nope", "two_angle:0.2"
    )
    with pytest.raises(ValueError, match=r"pair 16 is out of range"):
        sweep_settings(16, pairs=[16])
