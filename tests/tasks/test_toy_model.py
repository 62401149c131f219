"""The toy rotary transformer: hook names and shapes, exact RoPE and scores, omega override,
layer slicing, hook hygiene, input validation."""

import math

import pytest
import torch

from rope_behavior.tasks import IndexTask, ToyConfig, ToyRotaryTransformer, toy_model

PER_LAYER = [
    "hook_resid_pre",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_post",
]


def tokens_for(
    model: ToyRotaryTransformer, generator: torch.Generator, batch: int = 3, pos: int = 9
):
    return torch.randint(0, model.cfg.d_vocab, (batch, pos), generator=generator)


def test_exact_hook_names(tiny_model):
    expected = {"hook_embed"} | {
        f"blocks.{layer}.{name}" for layer in range(tiny_model.cfg.n_layers) for name in PER_LAYER
    }
    assert set(tiny_model.hook_dict) == expected


def test_hook_shapes(tiny_model, generator, n_hooks):
    cfg = tiny_model.cfg
    tokens = tokens_for(tiny_model, generator)
    b, p = tokens.shape
    _, cache = tiny_model.run_with_cache(tokens)
    assert n_hooks(tiny_model) == 0
    assert cache["hook_embed"].shape == (b, p, cfg.d_model)
    for layer in range(cfg.n_layers):
        pre = f"blocks.{layer}."
        for name in ["hook_resid_pre", "hook_attn_out", "hook_resid_post"]:
            assert cache[pre + name].shape == (b, p, cfg.d_model)
        for name in ["q", "rot_q", "z"]:
            assert cache[pre + f"attn.hook_{name}"].shape == (b, p, cfg.n_heads, cfg.d_head)
        for name in ["k", "v", "rot_k"]:
            assert cache[pre + f"attn.hook_{name}"].shape == (b, p, cfg.n_kv_heads, cfg.d_head)
        for name in ["attn_scores", "pattern"]:
            assert cache[pre + f"attn.hook_{name}"].shape == (b, cfg.n_heads, p, p)


def test_rotary_facts(tiny_model):
    cfg = tiny_model.cfg
    assert tiny_model.rotary_pair_layout == "half"
    assert tiny_model.attn_scale == math.sqrt(cfg.d_head)
    assert tiny_model.rotary_omega.shape == (cfg.n_layers, cfg.d_head // 2)
    pair = torch.arange(cfg.d_head // 2, dtype=torch.float64)
    expected = (cfg.rope_base ** (-2 * pair / cfg.d_head)).float()
    for layer in range(cfg.n_layers):
        torch.testing.assert_close(tiny_model.rotary_omega[layer], expected)
    assert cfg.n_kv_heads == cfg.n_heads


def test_rotation_is_rope_in_the_half_layout(tiny_model, generator):
    """Pair p = (x_p, x_{p+d/2}) as a complex number turns by n * omega_p at position n."""
    tokens = tokens_for(tiny_model, generator)
    _, cache = tiny_model.run_with_cache(tokens)
    half = tiny_model.cfg.d_head // 2
    for layer in range(tiny_model.cfg.n_layers):
        omega = tiny_model.rotary_omega[layer].double()
        turn = torch.polar(
            torch.ones_like(omega), torch.arange(tokens.shape[1]).double()[:, None] * omega
        )
        for kind in ["q", "k"]:
            x = cache[f"blocks.{layer}.attn.hook_{kind}"].double()
            rotated = cache[f"blocks.{layer}.attn.hook_rot_{kind}"].double()
            z = torch.complex(x[..., :half], x[..., half:]) * turn[None, :, None, :]
            expected = torch.cat([z.real, z.imag], dim=-1)
            torch.testing.assert_close(rotated, expected, rtol=1e-5, atol=1e-5)


def test_scores_are_rotated_dot_products_over_attn_scale(tiny_model, generator):
    tokens = tokens_for(tiny_model, generator)
    _, cache = tiny_model.run_with_cache(tokens)
    p = tokens.shape[1]
    causal = torch.ones(p, p, dtype=torch.bool).tril()
    for layer in range(tiny_model.cfg.n_layers):
        rot_q = cache[f"blocks.{layer}.attn.hook_rot_q"]
        rot_k = cache[f"blocks.{layer}.attn.hook_rot_k"]
        scores = cache[f"blocks.{layer}.attn.hook_attn_scores"]
        expected = torch.einsum("bqhd,bkhd->bhqk", rot_q, rot_k) / tiny_model.attn_scale
        torch.testing.assert_close(scores[..., causal], expected[..., causal], rtol=0, atol=1e-6)
        assert torch.all(scores[..., ~causal] == torch.finfo(scores.dtype).min)
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        torch.testing.assert_close(pattern, scores.softmax(dim=-1))


def test_overriding_omega_changes_the_model_and_zero_is_nope(generator):
    model = ToyRotaryTransformer(ToyConfig(d_vocab=20, n_ctx=12, d_head=8), seed=3)
    tokens = tokens_for(model, generator)
    before = model(tokens)
    with torch.no_grad():
        model.rotary_omega.mul_(0.5)
    assert not torch.allclose(model(tokens), before)
    with torch.no_grad():
        model.rotary_omega.zero_()
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(
        cache["blocks.0.attn.hook_rot_q"], cache["blocks.0.attn.hook_q"], rtol=0, atol=0
    )
    # NoPE: the last position's output does not depend on the order of the earlier tokens.
    perm = torch.randperm(tokens.shape[1] - 1, generator=generator)
    shuffled = torch.cat([tokens[:, :-1][:, perm], tokens[:, -1:]], dim=1)
    torch.testing.assert_close(model(shuffled)[:, -1], model(tokens)[:, -1], rtol=1e-5, atol=1e-5)


def test_start_and_stop_at_layer_round_trip(tiny_model, generator):
    tokens = tokens_for(tiny_model, generator)
    logits = tiny_model(tokens)
    torch.testing.assert_close(tiny_model(tokens, stop_at_layer=0), tiny_model.W_E[tokens])
    for layer in range(tiny_model.cfg.n_layers + 1):
        resid = tiny_model(tokens, stop_at_layer=layer)
        assert resid.shape == (*tokens.shape, tiny_model.cfg.d_model)
        torch.testing.assert_close(tiny_model(resid, start_at_layer=layer), logits)
    n = tiny_model.cfg.n_layers
    resid = tiny_model(tokens, stop_at_layer=-1)
    torch.testing.assert_close(tiny_model(resid, start_at_layer=-1), logits)
    torch.testing.assert_close(resid, tiny_model(tokens, stop_at_layer=n - 1))


def test_padding_keys_get_no_attention(generator):
    model = ToyRotaryTransformer(ToyConfig(d_vocab=20, n_ctx=12, d_head=8))
    tokens = tokens_for(model, generator, batch=2, pos=6)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :2] = 0
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert torch.all(pattern[0, :, 2:, :2] == 0)
    torch.testing.assert_close(pattern.sum(-1)[:, :, 2:], torch.ones(2, 2, 4))


def test_no_hook_leaks_including_failing_hooks(tiny_model, generator, n_hooks):
    tokens = tokens_for(tiny_model, generator)
    seen = []
    tiny_model.run_with_hooks(
        tokens, fwd_hooks=[("blocks.0.attn.hook_rot_k", lambda x, hook: seen.append(hook.name))]
    )
    assert seen == ["blocks.0.attn.hook_rot_k"]
    assert n_hooks(tiny_model) == 0

    def boom(x, hook):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", boom)])
    assert n_hooks(tiny_model) == 0
    with (
        pytest.raises(RuntimeError, match="hook failed"),
        tiny_model.hooks(fwd_hooks=[(lambda name: name.endswith("hook_q"), boom)]),
    ):
        tiny_model(tokens)
    assert n_hooks(tiny_model) == 0
    with pytest.raises(ValueError, match="token ids must lie in"):
        tiny_model.run_with_cache(tokens + tiny_model.cfg.d_vocab)  # caching hooks, failing forward
    assert n_hooks(tiny_model) == 0


def test_hooks_can_edit_rotated_keys(generator, n_hooks):
    model = ToyRotaryTransformer(ToyConfig(d_vocab=20, n_ctx=12, d_head=8))
    tokens = tokens_for(model, generator)
    edited = model.run_with_hooks(
        tokens, fwd_hooks=[("blocks.0.attn.hook_rot_k", lambda x, hook: torch.zeros_like(x))]
    )
    assert not torch.allclose(edited, model(tokens))
    assert n_hooks(model) == 0


def test_init_is_seeded_and_leaves_global_rng_alone():
    cfg = ToyConfig(d_vocab=20, n_ctx=12, d_head=8)
    state = torch.get_rng_state()
    a, b, c = (ToyRotaryTransformer(cfg, seed=s) for s in (1, 1, 2))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.W_E, b.W_E)
    assert not torch.equal(a.W_E, c.W_E)


def test_toy_model_sizes_itself_from_a_task():
    task = IndexTask(length=8, n_symbols=5)
    model = toy_model(task, n_heads=3, d_head=6, rope_base=500.0)
    assert (model.cfg.d_vocab, model.cfg.n_ctx, model.cfg.d_model) == (13, 9, 18)
    with pytest.raises(ValueError, match=r"pass a task, or both d_vocab and n_ctx"):
        toy_model()


@pytest.mark.parametrize(
    ("tokens", "kwargs", "match"),
    [
        (torch.zeros(2, 5), {}, r"integer tensor .* got dtype torch.float32"),
        (torch.zeros(5, dtype=torch.long), {}, r"rank 2 \[batch, pos\]; got shape \(5,\)"),
        (torch.zeros(1, 13, dtype=torch.long), {}, r"sequence length 13 exceeds n_ctx=12"),
        (
            torch.tensor([[0, 20]]),
            {},
            r"token ids must lie in \[0, d_vocab=20\); got min=0, max=20",
        ),
        (torch.tensor([[-1, 2]]), {}, r"got min=-1"),
        (
            torch.zeros(1, 3, dtype=torch.long),
            {"stop_at_layer": 5},
            r"stop_at_layer=5 is out of range",
        ),
        (torch.zeros(1, 3, dtype=torch.long), {"start_at_layer": 0}, r"float residual stream"),
        (
            torch.zeros(1, 3, dtype=torch.long),
            {"attention_mask": torch.ones(1, 4)},
            r"attention_mask must have shape \[batch, pos\]=\(1, 3\)",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(tokens, kwargs, match, n_hooks):
    model = ToyRotaryTransformer(ToyConfig(d_vocab=20, n_ctx=12, d_head=8))
    with pytest.raises(ValueError, match=match):
        model(tokens, **kwargs)
    assert n_hooks(model) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d_head": 7}, r"d_head=7 must be even"),
        ({"n_heads": 0}, r"n_heads must be an int >= 1; got 0"),
        ({"rope_base": 1.0}, r"rope_base must be a float > 1"),
        ({"d_mlp": 8}, r"d_mlp=8 needs attn_only=False"),
        ({"attn_only": False, "d_mlp": -1}, r"d_mlp must be an int >= 1 \(0 = 4 \* d_model\)"),
        ({"d_vocab": 1}, r"d_vocab must be an int >= 2"),
    ],
)
def test_bad_toy_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ToyConfig(**{"d_vocab": 20, "n_ctx": 12, **kwargs})


def test_d_model_defaults_to_heads_times_d_head():
    assert ToyConfig(d_vocab=4, n_ctx=4, n_heads=3, d_head=10).d_model == 30
    assert ToyConfig(d_vocab=4, n_ctx=4, d_model=16).d_model == 16
