"""rope_behavior on TransformerLens ``HookedTransformer`` (TransformerLens 2.x / 3.x).

Skipped where ``HookedTransformer`` does not exist (TransformerLens 4.x, the main
environment); ``scripts/ci_matrix.sh`` runs it under TransformerLens 3.9 and 2.x, and with
SAE-Lens's ``HookedSAETransformer``. Models are tiny, random, built offline from a
``HookedTransformerConfig``; where the same random Hugging Face weights can be wrapped both
as a HookedTransformer and as a TransformerBridge (TransformerLens 3.9 has both), the two
decompositions are compared.
"""

import tempfile
import warnings
from typing import Any

import pytest
import torch

import rope_behavior as rb
from rope_behavior.errors import NotRotaryModelError, UnsupportedArchitectureError
from rope_behavior.interventions.rope_edits import PRoPE, RopeScaling
from rope_behavior.interventions.values import AngleOverride
from rope_behavior.model.adapters import HookedTransformerAdapter, adapter_for
from rope_behavior.patching.sweep import frequency_patching_sweep

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformer_lens import HookedTransformer, HookedTransformerConfig
except ImportError:  # TransformerLens 4.x removed HookedTransformer
    HookedTransformer = HookedTransformerConfig = None

pytestmark = [
    pytest.mark.hooked,
    pytest.mark.skipif(
        HookedTransformer is None,
        reason="transformer_lens.HookedTransformer is not importable (TransformerLens 4.x has "
        "only the Bridge); run under TransformerLens 2.x/3.x: bash scripts/ci_matrix.sh",
    ),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

VOCAB = 97
BASE: dict[str, Any] = dict(
    n_layers=2, d_model=64, n_heads=4, d_head=16, n_ctx=64, d_vocab=VOCAB, d_mlp=128,
    positional_embedding_type="rotary", seed=None,
)
LLAMA: dict[str, Any] = dict(act_fn="silu", normalization_type="RMS", gated_mlp=True, final_rms=True, eps=1e-6)
# label -> HookedTransformerConfig kwargs (beyond BASE): every rotary family TransformerLens
# builds from a config, with its distinguishing RoPE facts.
HT_FAMILIES: dict[str, dict[str, Any]] = {
    "llama_gqa": dict(**LLAMA, n_key_value_heads=2, original_architecture="LlamaForCausalLM"),
    "llama_gqa_ungrouped": dict(**LLAMA, n_key_value_heads=2, ungroup_grouped_query_attention=True,
                                original_architecture="LlamaForCausalLM"),
    "mistral_local": dict(**LLAMA, n_key_value_heads=2, use_local_attn=True, window_size=4,
                          attn_types=["local", "local"], original_architecture="MistralForCausalLM"),
    "qwen2": dict(**LLAMA, n_key_value_heads=2, original_architecture="Qwen2ForCausalLM"),
    "gemma2": dict(act_fn="gelu_pytorch_tanh", normalization_type="RMS", gated_mlp=True, final_rms=True,
                   eps=1e-6, n_key_value_heads=2, use_local_attn=True, window_size=4,
                   attn_types=["local", "global"], attn_scores_soft_cap=5.0, output_logits_soft_cap=30.0,
                   attn_scale=24**0.5, use_normalization_before_and_after=True,
                   rotary_base=1_000_000, rotary_base_local=10_000,
                   original_architecture="Gemma2ForCausalLM"),
    "phi": dict(act_fn="gelu_new", normalization_type="LN", parallel_attn_mlp=True, rotary_dim=8,
                original_architecture="PhiForCausalLM"),
    "gpt_neox": dict(act_fn="gelu", normalization_type="LN", parallel_attn_mlp=True, rotary_dim=4,
                     original_architecture="GPTNeoXForCausalLM"),
    "gptj": dict(act_fn="gelu_new", normalization_type="LN", parallel_attn_mlp=True, rotary_dim=8,
                 rotary_adjacent_pairs=True, original_architecture="GPTJForCausalLM"),
}
# label -> (pair layout, rotary_dim, n_kv_heads in the hooks, sliding windows, soft-caps)
FACTS = {
    "llama_gqa": ("half", 16, 2, (None, None), (None, None)),
    "llama_gqa_ungrouped": ("half", 16, 4, (None, None), (None, None)),
    "mistral_local": ("half", 16, 2, (4, 4), (None, None)),
    "qwen2": ("half", 16, 2, (None, None), (None, None)),
    "gemma2": ("half", 16, 2, (4, None), (5.0, 5.0)),
    "phi": ("half", 8, 4, (None, None), (None, None)),
    "gpt_neox": ("half", 4, 4, (None, None), (None, None)),
    "gptj": ("interleaved", 8, 4, (None, None), (None, None)),
}


def _scale_qk(model: Any) -> Any:
    """Random init leaves q/k small; scale them so logits are O(1) and differences show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] in ("W_Q", "W_K", "_W_K"):
                p.mul_(4.0)
    return model


def make_hooked(label: str, *, cls: Any = None, seed: int = 0, **overrides: Any) -> Any:
    cfg = HookedTransformerConfig(**{**BASE, **HT_FAMILIES[label], **overrides})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = (cls or HookedTransformer)(cfg)
    return _scale_qk(model).eval()


_MODELS: dict[str, Any] = {}


@pytest.fixture
def hooked_factory():
    def get(label: str) -> Any:
        if label not in _MODELS:
            _MODELS[label] = make_hooked(label)
        return _MODELS[label]

    return get


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1234))


def hook_state(model: Any) -> dict[str, list[Any]]:
    """Every hook point's forward / pre / backward hooks, by identity, in firing order."""
    return {
        name: [*hp._forward_hooks.values(), *hp._forward_pre_hooks.values(), *hp._backward_hooks.values()]
        for name, hp in model.hook_dict.items()
    } | {
        f"{name}:module": list(m._forward_pre_hooks.values()) for name, m in model.named_modules()
    }


def model_scores(model: Any, tokens: torch.Tensor, layer: int, **kw: Any) -> torch.Tensor:
    name = f"blocks.{layer}.attn.hook_attn_scores"
    _, cache = model.run_with_cache(tokens, names_filter=[name], **kw)
    return cache[name]


def assert_pairs_sum_to_scores(model: Any, tokens: torch.Tensor, **kw: Any) -> float:
    cap = rb.capture(model, tokens, **kw)
    worst = 0.0
    for layer in range(model.cfg.n_layers):
        pl = rb.pair_logits(cap, layer)
        ref = model_scores(model, tokens, layer, **kw)
        mask = pl.mask[:, None].expand_as(ref)
        got = pl.scores()
        torch.testing.assert_close(got[mask], ref[mask], atol=1e-5, rtol=0)
        # our mask (causal, sliding window, padding) is exactly the model's
        assert torch.equal(mask, ref > torch.finfo(ref.dtype).min / 2)
        # the decomposition is not vacuous: several pairs contribute
        assert pl.per_pair.abs().amax(dim=(0, 1, 2, 3)).gt(1e-3).sum() >= 2
        worst = max(worst, float((got[mask] - ref[mask]).abs().max()))
    return worst


# -- the central identity ---------------------------------------------------------------------


@pytest.mark.parametrize("label", sorted(HT_FAMILIES))
def test_pairs_sum_to_hook_attn_scores(hooked_factory, label, tokens):
    model = hooked_factory(label)
    assert isinstance(adapter_for(model), HookedTransformerAdapter)
    assert_pairs_sum_to_scores(model, tokens)
    assert sum(len(hp._forward_hooks) for hp in model.hook_dict.values()) == 0


@pytest.mark.parametrize("label", ["llama_gqa", "gemma2", "gptj"])
def test_left_padding_uses_the_models_own_positions(hooked_factory, label, tokens):
    model = hooked_factory(label)
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0  # left padding: the first prompt's real tokens sit at 0, 1, ...
    assert_pairs_sum_to_scores(model, tokens, attention_mask=mask)
    cap = rb.capture(model, tokens, attention_mask=mask)
    spec = rb.RopeSpec.from_model(model)
    # the tables handed out are those of the positions the model used
    cos, sin = adapter_for(model).rotation_tables(1, torch.arange(8)[None], cap.cos[1])
    torch.testing.assert_close(cap.cos[1][0, 3:], cos[0], atol=0, rtol=0)
    torch.testing.assert_close(cap.sin[1][0, 3:], sin[0], atol=0, rtol=0)
    assert spec.n_pairs == cap.cos[1].shape[-1]


@pytest.mark.parametrize("label", sorted(FACTS))
def test_spec_reads_the_models_rope_facts(hooked_factory, label):
    model = hooked_factory(label)
    spec = rb.RopeSpec.from_model(model)
    layout, rotary_dim, n_kv, windows, caps = FACTS[label]
    assert spec.pair_layout == layout
    assert spec.rotary_dim == rotary_dim
    assert spec.n_kv_heads == n_kv
    assert spec.sliding_windows == windows
    assert spec.logit_softcaps == caps
    assert spec.reads_rotated_hooks
    expected_scale = 24**0.5 if label == "gemma2" else 4.0
    assert spec.attn_scales == pytest.approx((expected_scale, expected_scale))
    # omega from the layer's own table: TransformerLens's base ** (-2p / rotary_dim), or for
    # Gemma-2's local layer its local base.
    for layer in range(spec.n_layers):
        base = adapter_for(model)._rotary_base(layer)
        want = base ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
        torch.testing.assert_close(spec.omega[layer].double(), want, atol=2e-6, rtol=1e-5)
    if label == "gemma2":
        assert not torch.allclose(spec.omega[0], spec.omega[1])  # local 1e4 vs global 1e6


def test_positions_beyond_the_cached_table_come_from_the_layers_own_method(hooked_factory):
    model = hooked_factory("llama_gqa")
    attn = model.blocks[0].attn
    n_cached = attn.rotary_cos.shape[0]
    adapter = adapter_for(model)
    far = torch.tensor([[0, 1, n_cached + 5]])
    cos, sin = adapter.rotation_tables(0, far, torch.empty(0))
    assert attn.rotary_cos.shape[0] == n_cached  # the model's buffers are untouched
    sin_ref, cos_ref = attn.calculate_sin_cos_rotary(16, n_cached + 6, base=adapter._rotary_base(0))
    torch.testing.assert_close(cos[0, 2], cos_ref[n_cached + 5, :8], atol=0, rtol=0)
    torch.testing.assert_close(sin[0, 2], sin_ref[n_cached + 5, :8], atol=0, rtol=0)


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["standard", "shortformer", "alibi"])
def test_a_non_rotary_hooked_transformer_is_refused_naming_its_scheme(scheme):
    cfg = HookedTransformerConfig(**{**BASE, "positional_embedding_type": scheme, "act_fn": "gelu"})
    model = HookedTransformer(cfg).eval()
    with pytest.raises(NotRotaryModelError, match=f"positional_embedding_type='{scheme}'"):
        rb.RopeSpec.from_model(model)


def test_a_qk_norm_before_rope_is_refused_with_the_bridge_as_the_way_out():
    model = make_hooked("llama_gqa", use_qk_norm=True, original_architecture="Qwen3ForCausalLM")
    with pytest.raises(UnsupportedArchitectureError, match=r"q/k norm.*TransformerBridge"):
        rb.RopeSpec.from_model(model)


# -- whole API calls leave the model's hooks as they found them ---------------------------------


def _user_hook(x, hook=None):
    return x


@pytest.mark.parametrize("label", ["llama_gqa", "gpt_neox", "gptj", "gemma2"])
def test_score_heads_and_a_sweep_run_and_leave_the_hooks_as_found(hooked_factory, label, tokens):
    model = hooked_factory(label)
    # a hook the user added before the call (on a site the calls do not read or edit)
    model.blocks[0].hook_mlp_out.add_hook(_user_hook)
    try:
        before = hook_state(model)
        hs = rb.score_heads(model, tokens, mode="keys", block_size=2, n_swaps=None,
                            seed=0)
        assert hook_state(model) == before
        assert hs.s_pos.shape[-1] == model.cfg.n_heads
        assert torch.isfinite(hs.s_pos).any()

        clean = tokens[:, :8]
        corrupted = clean.clone()
        corrupted[:, 2:5] = (corrupted[:, 2:5] + 7) % VOCAB
        metric = rb.metrics.logit_diff(torch.tensor([5, 9]), torch.tensor([7, 11]))
        result = frequency_patching_sweep(model, clean, corrupted, metric, bands=2, batch_conditions=3)
        assert hook_state(model) == before
        spec = rb.RopeSpec.from_model(model)
        n_axis = spec.n_kv_heads if spec.group_size > 1 else spec.n_heads
        assert result.values.shape == (spec.n_layers, n_axis, 2)
        assert result.values.std() > 1e-4  # the patches matter
        with torch.no_grad():
            assert result.clean_baseline == pytest.approx(float(metric(model(clean))), abs=1e-6)
        # a failing call leaves them too
        with pytest.raises(rb.RopeBehaviorError):
            rb.capture(model, tokens, layers=[7])
        assert hook_state(model) == before
    finally:
        model.reset_hooks(including_permanent=True)


def test_resuming_from_a_cached_residual_is_exact(hooked_factory, tokens):
    model = hooked_factory("llama_gqa")
    adapter = adapter_for(model)
    with torch.no_grad():
        full, cache = model.run_with_cache(tokens, names_filter=["blocks.1.hook_resid_pre"])
        out = adapter.forward(cache["blocks.1.hook_resid_pre"], start_at_layer=1)
    torch.testing.assert_close(out, full, atol=0, rtol=0)


# -- SAE-Lens ---------------------------------------------------------------------------------


def test_hooked_sae_transformer_works_like_hooked_transformer(tokens):
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed")
    model = make_hooked("llama_gqa", cls=sae_lens.HookedSAETransformer)
    assert isinstance(adapter_for(model), HookedTransformerAdapter)
    assert_pairs_sum_to_scores(model, tokens)
    before = hook_state(model)
    rb.score_heads(model, tokens, mode="keys", block_size=2, n_swaps=None,
                   seed=0)
    assert hook_state(model) == before


# -- the same weights as a HookedTransformer and as a Bridge (TransformerLens 3.9) -----------------

# Bridge family label (tests/models.py) -> HookedTransformerConfig kwargs matching it.
BRIDGE_PAIRS: dict[str, dict[str, Any]] = {
    "llama_gqa": dict(**LLAMA, n_key_value_heads=2, original_architecture="LlamaForCausalLM"),
    "mistral": dict(**LLAMA, n_key_value_heads=2, original_architecture="MistralForCausalLM"),
    "qwen2": dict(**LLAMA, n_key_value_heads=2, original_architecture="Qwen2ForCausalLM"),
    "gemma2": dict(HT_FAMILIES["gemma2"], rotary_base=10_000, rotary_base_local=None),
    "phi": dict(act_fn="gelu_new", normalization_type="LN", parallel_attn_mlp=True, rotary_dim=8,
                eps=1e-5, original_architecture="PhiForCausalLM"),
    "gpt_neox": dict(act_fn="gelu", normalization_type="LN", parallel_attn_mlp=True, rotary_dim=4,
                     eps=1e-5, original_architecture="GPTNeoXForCausalLM"),
    "gptj": dict(act_fn="gelu_new", normalization_type="LN", parallel_attn_mlp=True, rotary_dim=8,
                 rotary_adjacent_pairs=True, eps=1e-5, d_mlp=256, original_architecture="GPTJForCausalLM"),
}


def _bridge_and_hooked(label: str) -> tuple[Any, Any]:
    models = pytest.importorskip("tests.models", reason="this TransformerLens has no Bridge builder")
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict

    bridge = models.make_bridge(label)
    hf = bridge.original_model
    cfg = HookedTransformerConfig(**{**BASE, **BRIDGE_PAIRS[label]})
    hooked = HookedTransformer(cfg, move_to_device=False)
    with tempfile.TemporaryDirectory() as folder:  # a local path: no hub name is looked up
        state = get_pretrained_state_dict(folder, cfg, hf_model=hf)
    hooked.load_and_process_state_dict(
        state, fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False, refactor_factored_attn_matrices=False,
    )
    return bridge, hooked.eval()


@pytest.mark.parametrize("label", sorted(BRIDGE_PAIRS))
def test_hooked_transformer_and_bridge_decompose_the_same_weights_alike(label, tokens):
    bridge, hooked = _bridge_and_hooked(label)
    with torch.no_grad():
        torch.testing.assert_close(hooked(tokens), bridge(tokens), atol=1e-4, rtol=0)
    cap_h, cap_b = rb.capture(hooked, tokens), rb.capture(bridge, tokens)
    spec_h, spec_b = rb.RopeSpec.from_model(hooked), rb.RopeSpec.from_model(bridge)
    assert (spec_h.pair_layout, spec_h.rotary_dim, spec_h.n_kv_heads) == (
        spec_b.pair_layout, spec_b.rotary_dim, spec_b.n_kv_heads)
    torch.testing.assert_close(spec_h.omega.double(), spec_b.omega.double(), atol=1e-6, rtol=1e-5)
    for layer in range(spec_h.n_layers):
        ph, pb = rb.pair_logits(cap_h, layer), rb.pair_logits(cap_b, layer)
        assert torch.equal(ph.mask, pb.mask)
        keep = ph.mask[:, None, :, :, None].expand_as(ph.per_pair)
        torch.testing.assert_close(ph.per_pair[keep], pb.per_pair[keep], atol=1e-5, rtol=0)


# -- attacks on the HookedTransformer adapter: bad input, interruption, padding -------------

_T = torch.randint(3, VOCAB, (3, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: rb.capture(m, _T.float()), r"integer token ids; got dtype torch.float32"),
        (lambda m: rb.capture(m, _T + 100), r"expected ids in \[0, 96\]"),
        (lambda m: rb.capture(m, torch.randint(3, VOCAB, (1, 65))), r"65 positions .* n_ctx=64"),
        (lambda m: rb.score_heads(m, _T, attention_mask=torch.tensor([[1] * 24, [0] * 24, [1] * 24])),
         r"1 row\(s\) with no tokens \(all padding\): prompts \[1\]"),
        (lambda m: rb.capture(m, _T, layers=[2]), r"layer 2 is out of range"),
        (lambda m: rb.pair_logits(rb.capture(m, _T), 0, heads=1.0), r"head=1.0 \(float\)"),
        (lambda m: rb.score_heads(m, _T[:, :10]), r"3 of 3 prompts too short to score: prompt 0 \(10 tokens, needs 17\)"),
        (lambda m: rb.run_with_interventions(m, _T, AngleOverride(layer=0, omega=[0.1, 0.2], pairs=[1, 1])),
         r"lists pair\(s\) \[1\] more than once"),
    ],
)
def test_bad_input_on_a_hooked_transformer(hooked_factory, call, match):
    model = hooked_factory("llama_gqa")
    before = hook_state(model)
    with pytest.raises(rb.RopeBehaviorError, match=match):
        call(model)
    assert hook_state(model) == before


def _interrupt(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
    raise KeyboardInterrupt


@pytest.mark.parametrize("site", ["blocks.0.attn.hook_rot_k", "blocks.1.attn.hook_q"])
@pytest.mark.parametrize(
    "call",
    [
        lambda m: rb.capture(m, _T),
        lambda m: rb.score_heads(m, _T, block_size=4),
        lambda m: rb.score_heads(m, _T, block_size=4, mode="tokens"),
        lambda m: rb.run_with_interventions(m, _T, [AngleOverride(layer=1, omega=0.0)]),
        lambda m: rb.frequency_patching_sweep(m, _T, _T.flip(1), lambda x: x[:, -1, 3].mean(), bands=2),
    ],
)
def test_keyboard_interrupt_on_a_hooked_transformer_leaves_no_hook(hooked_factory, site, call):
    model = hooked_factory("llama_gqa")
    before = hook_state(model)
    with model.hooks(fwd_hooks=[(site, _interrupt)]), pytest.raises(KeyboardInterrupt):
        call(model)
    assert hook_state(model) == before


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_on_a_hooked_transformer_scores_each_prompt_as_if_alone(hooked_factory, side):
    model = hooked_factory("llama_gqa")
    mask = torch.ones_like(_T)
    for row, n in ((1, 9), (2, 4)):
        if side == "left":
            mask[row, :n] = 0
        else:
            mask[row, -n:] = 0
    toks = _T.masked_fill(mask == 0, 0)
    swaps = [(0, 1), (0, 2)]
    whole = rb.score_heads(model, toks, attention_mask=mask, block_size=4, swaps=swaps)
    assert rb.scorable_prompts(model, toks, mask, block_size=4).tolist() == [True, True, True]
    for i in range(3):
        one = rb.score_heads(model, toks[i, mask[i].bool()][None], block_size=4, swaps=swaps)
        torch.testing.assert_close(whole.s_pos[i], one.s_pos[0], rtol=0, atol=1e-5, equal_nan=True)


# -- RoPE edits (PRoPE, RopeScaling) on a HookedTransformer --------------------------------
# llama_gqa: GQA, half layout; phi: partial rotary; gptj: interleaved pairs.


@pytest.mark.parametrize("label", ["llama_gqa", "phi", "gptj"])
def test_prope_zero_is_the_unedited_hooked_transformer_exactly(hooked_factory, label, tokens):
    model = hooked_factory(label)
    spec = rb.RopeSpec.from_model(model)
    before = hook_state(model)
    assert PRoPE(0).resolve(spec) == ()
    assert rb.compile_hooks(spec, PRoPE(0), model=model) == []
    with torch.no_grad():
        assert torch.equal(rb.run_with_interventions(model, tokens, PRoPE(0)), model(tokens))
    assert hook_state(model) == before


@pytest.mark.parametrize("label", ["llama_gqa", "phi", "gptj"])
def test_prope_one_is_angle_zero_on_every_pair_of_a_hooked_transformer(hooked_factory, label, tokens):
    model = hooked_factory(label)
    spec = rb.RopeSpec.from_model(model)
    before = hook_state(model)
    assert all(r.pairs == tuple(range(spec.n_pairs)) for r in PRoPE(1).resolve(spec))
    nope = [AngleOverride(layer=layer, omega=0.0) for layer in range(spec.n_layers)]
    with torch.no_grad():
        got = rb.run_with_interventions(model, tokens, PRoPE(1))
        assert torch.equal(got, rb.run_with_interventions(model, tokens, nope))
        assert (got - model(tokens)).abs().max() > 1e-3  # not vacuous
    assert hook_state(model) == before


def test_rope_scaling_on_a_hooked_transformer_is_differentiable(tokens):
    model = make_hooked("llama_gqa")
    before = hook_state(model)
    with rb.intervened(model, RopeScaling("yarn", 4, original_context=16)):
        loss = model(tokens, return_type="loss")
    loss.backward()
    assert hook_state(model) == before
    grads = [p.grad for n, p in model.named_parameters() if n.endswith(("W_Q", "W_K"))]
    assert grads
    assert all(g is not None and torch.isfinite(g).all() and g.abs().max() > 0 for g in grads)
