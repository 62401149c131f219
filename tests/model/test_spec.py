import math

import pytest
import torch
import transformers

import rope_behavior as rb
from tests.models import make_bridge


def test_omega_plain_rope(bridge_factory):
    spec = rb.RopeSpec.from_model(bridge_factory("llama_mha"))
    p = torch.arange(spec.n_pairs, dtype=torch.float64)
    expected = 10000.0 ** (-2 * p / spec.rotary_dim)
    torch.testing.assert_close(spec.omega[0], expected, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(spec.wavelength, 2 * math.pi / spec.omega)
    assert spec.omega_source == ("inv_freq", "inv_freq")


def llama3_reference(base, dim, factor, low_ff, high_ff, old_ctx):
    """Llama-3.1 NTK-by-parts frequencies, written out from the published recipe."""
    inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    out = []
    for w in inv.tolist():
        wavelen = 2 * math.pi / w
        if wavelen < old_ctx / high_ff:
            out.append(w)
        elif wavelen > old_ctx / low_ff:
            out.append(w / factor)
        else:
            smooth = (old_ctx / wavelen - low_ff) / (high_ff - low_ff)
            out.append((1 - smooth) * w / factor + smooth * w)
    return torch.tensor(out, dtype=torch.float64)


def test_omega_follows_llama31_scaling_not_the_config_base(bridge_factory):
    bridge = bridge_factory("llama31_scaling")
    spec = rb.RopeSpec.from_model(bridge)
    expected = llama3_reference(500000.0, spec.rotary_dim, 8.0, 1.0, 4.0, 16)
    torch.testing.assert_close(spec.omega[1], expected, rtol=1e-6, atol=0)
    plain = 500000.0 ** (-2 * torch.arange(spec.n_pairs, dtype=torch.float64) / spec.rotary_dim)
    assert float(spec.omega[0, -1]) == pytest.approx(float(plain[-1]) / 8, rel=1e-6)


def test_yarn_attention_factor_is_read_from_the_tables(bridge_factory):
    spec = rb.RopeSpec.from_model(bridge_factory("llama_yarn"))
    assert float(spec.table_scale[0]) > 1.0  # YaRN folds mscale into cos/sin
    assert float(spec.omega[0, 0]) == pytest.approx(1.0, rel=1e-6)


def test_partial_rotary_dims(bridge_factory):
    assert rb.RopeSpec.from_model(bridge_factory("phi")).rotary_dim == 8
    neox = rb.RopeSpec.from_model(bridge_factory("gpt_neox"))
    assert (neox.rotary_dim, neox.n_pairs, neox.d_head) == (4, 2, 16)


def test_gemma2_scale_and_softcap(bridge_factory):
    spec = rb.RopeSpec.from_model(bridge_factory("gemma2"))
    assert spec.attn_scale == pytest.approx(math.sqrt(24))
    assert spec.logit_softcaps == (5.0, 5.0)
    assert spec.sliding_windows[0] == 4
    assert spec.sliding_windows[1] is None


def test_spec_is_cached_per_model(bridge_factory):
    b = bridge_factory("llama_mha")
    assert rb.RopeSpec.from_model(b) is rb.RopeSpec.from_model(b)


def test_non_rotary_model_raises_naming_its_scheme():
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=2, n_positions=16)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    bridge = build_bridge_from_module(hf, "GPT2LMHeadModel", hf_config=cfg)
    with pytest.raises(rb.NotRotaryModelError, match="standard"):
        rb.RopeSpec.from_model(bridge)
    with pytest.raises(rb.NotRotaryModelError):
        rb.capture(bridge, torch.zeros(1, 4, dtype=torch.long))


def test_not_a_model_raises():
    # the library's error (a RopeBehaviorError), and still a TypeError for older callers
    with pytest.raises(rb.RopeBehaviorError, match="TransformerBridge") as err:
        rb.RopeSpec.from_model(torch.nn.Linear(2, 2))
    assert isinstance(err.value, TypeError)


def test_validation_messages(bridge_factory):
    spec = rb.RopeSpec.from_model(bridge_factory("llama_gqa"))
    with pytest.raises(rb.RopeBehaviorError, match=r"layer 7 is out of range.*<= 1"):
        spec.check_layer(7)
    with pytest.raises(rb.RopeBehaviorError, match=r"head 4 is out of range"):
        spec.check_head(4)
    with pytest.raises(rb.RopeBehaviorError, match=r"pair 8 is out of range.*8 pairs"):
        spec.check_pair(8)
    with pytest.raises(rb.RopeBehaviorError, match="kv_head 2 is out of range"):
        spec.query_heads_of(2)


def test_to_frame(bridge_factory):
    df = rb.RopeSpec.from_model(bridge_factory("llama_gqa")).to_frame()
    assert list(df.columns) == ["layer", "pair", "omega", "wavelength", "omega_source"]
    assert len(df) == 2 * 8


def test_bf16_model_reads_exact_inv_freq():
    spec = rb.RopeSpec.from_model(make_bridge("llama_mha", dtype=torch.bfloat16))
    assert spec.omega_source[0] == "inv_freq"
    assert spec.omega.dtype == torch.float64


@pytest.mark.parametrize(
    ("family", "match"),
    [
        ("hunyuan_dense", "normalises q and k after RoPE"),
        ("nanochat", "normalises q and k after RoPE"),
        ("deepseek_v2", "multi-head latent attention"),
    ],
)
def test_refused_families_say_why(family, match):
    from tests.models import hook_count

    bridge = make_bridge(family)
    with pytest.raises(rb.UnsupportedArchitectureError, match=match):
        rb.capture(bridge, torch.zeros(1, 4, dtype=torch.long))
    assert hook_count(bridge) == 0
