"""The exclusion principle: Var(lambda) <= (||delta_pos||^2 + ||delta_sym||^2) / (K! K)."""

import math
from functools import cache

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.rope.pairs import rotate
from rope_behavior.scoring.exclusion import exclusion_check
from tests.models import VOCAB, hook_count, make_bridge


@cache
def bridge(family: str, seed: int):
    return make_bridge(family, seed=seed)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(2, 6), seed=st.integers(0, 2**31 - 1))
def test_bound_holds_for_any_logit_table(k, seed):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(k, k, generator=g, dtype=torch.float64) * torch.rand(1, generator=g, dtype=torch.float64) * 10
    r = exclusion_check(table)
    assert r.holds
    assert r.variance <= r.bound * (1 + 1e-9)
    assert r.delta_pos.shape == (math.factorial(k), k)


@settings(max_examples=40, deadline=None)
@given(k=st.integers(2, 6), n_pairs=st.integers(1, 4), seed=st.integers(0, 2**31 - 1),
       layout=st.sampled_from(["half", "interleaved"]))
def test_bound_holds_for_random_rotary_heads(k, n_pairs, seed, layout):
    g = torch.Generator().manual_seed(seed)
    omega = torch.rand(n_pairs, generator=g, dtype=torch.float64) * 3
    pos = torch.arange(k + 1, dtype=torch.float64)
    cos, sin = (pos[:, None] * omega).cos(), (pos[:, None] * omega).sin()
    q = torch.randn(1, k + 1, 1, 2 * n_pairs, generator=g, dtype=torch.float64)
    keys = torch.randn(k, 2 * n_pairs, generator=g, dtype=torch.float64)
    rq = rotate(q, cos, sin, layout)[0, k, 0]

    def logit_fn(content, position):
        rk = rotate(keys[content.reshape(-1)][None, :, None], cos[position.reshape(-1)], sin[position.reshape(-1)], layout)
        return (rk[0, :, 0] @ rq).reshape(content.shape)

    r = exclusion_check(logit_fn, n_keys=k)
    assert r.holds


@settings(max_examples=12, deadline=None)
@given(family=st.sampled_from(["llama_gqa", "gemma2", "phi"]), seed=st.integers(0, 2),
       layer=st.integers(0, 1), head=st.integers(0, 3), n=st.integers(3, 7),
       tok_seed=st.integers(0, 10_000))
def test_bound_holds_on_random_heads_of_random_models(family, seed, layer, head, n, tok_seed):
    model = bridge(family, seed)
    tokens = torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(tok_seed))
    r = exclusion_check(model, tokens, layer=layer, head=head)
    assert r.holds
    assert r.n_keys == n - 1
    assert r.query_position == n - 1
    assert hook_count(model) == 0


def test_table_matches_model_logits(bridge_factory):
    # the diagonal of the table is the model's own logits (keys at their own positions)
    import rope_behavior as rb

    model = bridge_factory("llama_gqa")
    tokens = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    r = exclusion_check(model, tokens, layer=1, head=3, prompt=1)
    pl = rb.pair_logits(rb.capture(model, tokens, layers=[1]), 1, heads=3)
    torch.testing.assert_close(r.logits, pl.scores()[1, 0, 5, :5].double(), atol=1e-5, rtol=0)


def test_positional_symbolic_and_uniform_known_answers():
    k = 5
    pos_only = torch.arange(k, dtype=torch.float64)[None].expand(k, k)  # depends on position only
    r = exclusion_check(pos_only)
    assert r.delta_pos_sq == 0
    assert r.delta_sym_sq > 0
    assert r.holds
    sym_only = pos_only.T  # depends on content only
    r = exclusion_check(sym_only)
    assert r.delta_sym_sq == 0
    assert r.delta_pos_sq > 0
    both = torch.full((k, k), 3.0, dtype=torch.float64)  # positional and symbolic: uniform
    r = exclusion_check(both)
    assert r.variance == 0
    assert r.bound == 0
    assert r.holds
    assert r.to_frame().loc[0, "n_keys"] == k


def test_identical_keys_in_a_model_are_positional(bridge_factory):
    model = bridge_factory("llama_gqa")
    tokens = torch.full((1, 6), 7)
    r = exclusion_check(model, tokens, layer=0, head=1)
    assert r.positional_residual < 1e-12
    assert r.symbolic_residual > 1e-6


@pytest.mark.parametrize(("args", "kw", "match"), [
    ((torch.zeros(9, 9),), {}, r"2 <= K <= 8"),
    ((torch.zeros(3, 4),), {}, "square"),
    ((lambda c, p: c * 1.0,), {}, "n_keys"),
    ((torch.full((3, 3), float("nan")),), {}, "NaN"),
])
def test_bad_input(args, kw, match):
    with pytest.raises(RopeBehaviorError, match=match):
        exclusion_check(*args, **kw)


def test_bad_model_input(bridge_factory):
    model = bridge_factory("llama_gqa")
    tokens = torch.randint(0, VOCAB, (1, 12))
    with pytest.raises(RopeBehaviorError, match=r"2 <= K <= 8"):
        exclusion_check(model, tokens)
    with pytest.raises(RopeBehaviorError, match="out of range"):
        exclusion_check(model, tokens, query_position=12)
    with pytest.raises(RopeBehaviorError, match="head 4 is out of range"):
        exclusion_check(model, tokens, head=4, query_position=4)
    with pytest.raises(RopeBehaviorError, match="key_positions"):
        exclusion_check(model, tokens, query_position=4, key_positions=[1, 4])
    assert hook_count(model) == 0
