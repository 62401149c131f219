"""Keys mode: permute a layer's unrotated keys, re-rotate them where they land.

Inside each layer's forward, the keys of a swap's two blocks trade places *before*
rotation and are rotated at their destination exactly as the model rotates keys there;
queries, the query's own key and everything upstream stay as the model computed them. One
forward serves every layer and swap, and memory stays bounded to one layer.

Scoring the model as it runs. The keys the model multiplies may come from hooks: the
frequency interventions rope_behavior compiles (``intervened``, the toy tasks' frequency
settings) or a user's own. Keys mode therefore rebuilds a moved key by the model's whole
chain: the raw pre-rotation key (read before any hook edits it), the hooks installed at
the pre-rotation site, the rotation with the model's table of that very forward, then the
hooks at the rotated site. rope_behavior knows the semantics of its own edit hooks and
applies them to the permuted keys; before scoring a layer it checks that the chain applied
to the unpermuted raw keys reproduces the keys the model used. A hook it does not know
that edits keys makes that check fail, and the call raises (use ``mode="tokens"``, which
re-runs the hooked model on swapped tokens); a hook that only reads passes.

Many queries under end alignment (``query_positions="all"``): every query tiles its own
blocks, and rotating each moved key per query and swap would gather
``[batch, query, swap, 2b, head, d_head]`` keys. Where no hook sits at the key sites,
the swapped logits are computed in RoPE's relative form instead (:mod:`rope_behavior.scoring.relative`): the
query turned back by the angle of the move, dotted with the keys the model rotated.

One query per prompt (``query_positions="last"``, what ``analyze`` scores) with swaps shared
by every query, on short prompts: ``q . R(dst) k(src) == (R(dst)^T q) . k(src)``, so each
query is turned back once per position and multiplied with every raw key in one matrix
product per (prompt, head), and the swaps' logits are read from it at their (destination,
source) pairs (the destination form). It equals rotating each moved key to float32 rounding
(tests/scoring/test_destination_form.py: within 1e-6 on seven families) and is taken where
it is cheaper (``DESTINATION_FORM``).
"""

from dataclasses import dataclass
from typing import Any

import torch
from einops import einsum
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.interventions.edit_hooks import (
    ReanglePairs,
    Record,
    ReplacePairs,
    ResamplePairs,
    SlicedPatch,
    TableTap,
    ZeroPairs,
)
from rope_behavior.model.adapters import ModelAdapter
from rope_behavior.model.spec import RopeSpec
from rope_behavior.qk.captured import LayerQK
from rope_behavior.rope.pairs import merge_pairs, rotate, split_pairs
from rope_behavior.scoring.geometry import Geometry
from rope_behavior.scoring.relative import relative_dots, relative_swaps
from rope_behavior.scoring.rows import (
    Finite,
    Out,
    chunks,
    logits,
    project,
    put_scores,
    row,
    row_diagnostics,
    row_masses,
    scaled,
)

__all__ = ["KeyChain", "key_chains", "keys_layer"]

# one query per prompt, shared swaps: the destination form where n_pos^2 <= this x the moved
# keys of a prompt (swaps x 2b); measured with bench/keys_forms.py (2 cores: it wins to 0.44x
# at 16, ties about 32-128 at short prompts, loses 1.1-1.4x beyond 64 at 256+ positions)
DESTINATION_FORM = 32
_EDITS = (ZeroPairs, ReplacePairs, ResamplePairs, SlicedPatch, ReanglePairs)
_PASSIVE = (Record, TableTap)


@dataclass(frozen=True)
class KeyChain:
    """What turns a layer's raw pre-rotation keys into the keys the model multiplies:
    the edit hooks at the pre-rotation site, then (where the host fires one) at the rotated
    site; ``unknown`` names hooks rope_behavior does not know (checked numerically)."""

    layer: int
    pre: tuple[Any, ...]
    rot: tuple[Any, ...]
    unknown: tuple[str, ...]


def key_chains(
    adapter: ModelAdapter, spec: RopeSpec, layers: tuple[int, ...]
) -> dict[int, KeyChain]:
    """The hooks installed now at each layer's key sites (layers with none are left out)."""
    out = {}
    for layer in layers:
        s = spec.sites[layer]
        pre = list(adapter.hook_fns(s.k))
        rot = list(adapter.hook_fns(s.rot_k)) if s.rot_k is not None else []
        if not pre and not rot:
            continue
        unknown = tuple(repr(f) for f in pre + rot if not isinstance(f, _EDITS + _PASSIVE))
        out[layer] = KeyChain(
            layer=layer,
            pre=tuple(f for f in pre if isinstance(f, _EDITS)),
            rot=tuple(f for f in rot if isinstance(f, _EDITS)),
            unknown=unknown,
        )
    return out


def _rotate_b(x: Tensor, cos: Tensor, sin: Tensor, spec: RopeSpec) -> Tensor:
    """Rotate ``x`` ``[*lead, KV, D]`` with tables ``[*lead, P]`` (any leading shape)."""
    lead = x.shape[:-2]
    flat = x.reshape(1, -1, *x.shape[-2:])
    out = rotate(
        flat, cos.reshape(-1, cos.shape[-1]), sin.reshape(-1, sin.shape[-1]), spec.pair_layout
    )
    return out.reshape(*lead, *x.shape[-2:])


def _apply(chain: KeyChain, x: Tensor, cos: Tensor, sin: Tensor, spec: RopeSpec) -> Tensor:
    for f in chain.pre:
        x = f(x)
    x = _rotate_b(x, cos.to(x.dtype), sin.to(x.dtype), spec)
    for f in chain.rot:
        x = f(x)
    return x


def _check_chain(chain: KeyChain, lq: LayerQK, cos: Tensor, sin: Tensor, spec: RopeSpec) -> None:
    if lq.k_raw is None:
        raise RopeBehaviorError(
            f"layer {lq.layer}: hooks sit at its key sites but the raw keys were not captured"
        )
    got = _apply(chain, lq.k_raw, cos, sin, spec)
    want = lq.rot_k
    tol = (1e-4 if want.dtype in (torch.float32, torch.float64) else 3e-2) * max(
        1.0, float(want.abs().max())
    )
    err = float((got.to(want.dtype) - want).abs().max())
    if not err <= tol:
        names = ", ".join(chain.unknown) or "the installed rope_behavior edits"
        raise RopeBehaviorError(
            f"keys mode cannot reproduce the keys layer {lq.layer} uses: hooks at its key "
            f"sites ({names}) edit them in a way rope_behavior does not know (max difference "
            f"{err:.3g}); keys mode would score a different model. Use mode='tokens', which "
            "re-runs the hooked model on every swapped prompt, or remove the hooks"
        )


_LINEAR = (ZeroPairs, ReanglePairs)  # edits that map each pair linearly, per position


def _pairwise_map(chain: KeyChain, lq: LayerQK, spec: RopeSpec) -> tuple[Tensor, Tensor] | None:
    """The chain as a linear map of each (prompt, position, KV head, pair), read by running
    it on the pairs' two unit vectors: the columns ``[B, N, KV, P, 2]``, or ``None`` where
    it holds other edits or does not reproduce the model's keys that way (the raw keys'
    image is checked against the keys the model used). PRoPE, NoPE-below, RoPE scaling and
    frequency ablations are such maps (angle edits and zeroed pairs); with them the moved
    keys are read at their destinations directly instead of re-running the chain per swap.
    Dims outside the rotary slice pass through (checked with the rest)."""
    if chain.unknown or not all(isinstance(f, _LINEAR) for f in chain.pre + chain.rot):
        return None
    assert lq.k_raw is not None
    x, r, layout = lq.k_raw, spec.rotary_dim, spec.pair_layout
    columns = []
    for j in (0, 1):
        unit = x.new_zeros(*x.shape[:-1], r // 2, 2)
        unit[..., j] = 1.0
        probe = merge_pairs(unit, layout)
        if r < x.shape[-1]:
            probe = torch.cat([probe, x.new_zeros(*x.shape[:-1], x.shape[-1] - r)], -1)
        columns.append(split_pairs(_apply(chain, probe, lq.cos, lq.sin, spec)[..., :r], layout))
    xp = split_pairs(x[..., :r], layout)
    got = merge_pairs(columns[0] * xp[..., 0:1] + columns[1] * xp[..., 1:2], layout)
    if r < x.shape[-1]:
        got = torch.cat([got, x[..., r:]], -1)
    want = lq.rot_k
    tol = (1e-4 if want.dtype in (torch.float32, torch.float64) else 3e-2) * max(
        1.0, float(want.abs().max())
    )
    if not float((got.to(want.dtype) - want).abs().max()) <= tol:
        return None
    return columns[0], columns[1]


def _moved_keys(
    lq: LayerQK, geo: Geometry, spec: RopeSpec, chain: KeyChain | None, dt: torch.dtype
) -> Tensor:
    """Keys at the destinations of every swap, as the model would use them:
    ``[B, G, S, 2b, KV, D]``."""
    bsz = lq.k.shape[0]
    cos, sin = lq.cos, lq.sin  # per-prompt tables [B, N, P]
    dev = lq.k.device
    dst, src = geo.dst.to(dev), geo.src.to(dev)
    bi = torch.arange(bsz, device=dev)
    if chain is None:  # no hook at the key sites: rotate the moved raw keys directly
        k_src = lq.k[bi[:, None, None, None], src].to(dt)
        cs = cos[bi[:, None, None, None], dst].to(dt)
        sn = sin[bi[:, None, None, None], dst].to(dt)
        return _rotate_b(k_src, cs, sn, spec)
    _check_chain(chain, lq, cos, sin, spec)
    assert lq.k_raw is not None
    columns = _pairwise_map(chain, lq, spec)
    if columns is not None:  # the chain maps each pair linearly at its position: read it there
        c0, c1 = (c[bi[:, None, None, None], dst].to(dt) for c in columns)
        k_src = lq.k_raw[bi[:, None, None, None], src].to(dt)
        r = spec.rotary_dim
        kp = split_pairs(k_src[..., :r], spec.pair_layout)
        moved = merge_pairs(c0 * kp[..., 0:1] + c1 * kp[..., 1:2], spec.pair_layout)
        return torch.cat([moved, k_src[..., r:]], -1) if r < k_src.shape[-1] else moved
    n = lq.k_raw.shape[1]
    g_n, s_n, t2 = dst.shape[1:]
    out = lq.k_raw.new_empty(bsz, g_n, s_n, t2, *lq.k_raw.shape[2:], dtype=dt)
    base = torch.arange(n, device=dev).expand(bsz, n)
    for g in range(g_n):
        for s in range(s_n):
            perm = base.scatter(1, dst[:, g, s], src[:, g, s])
            keys = _apply(chain, lq.k_raw[bi[:, None], perm], cos, sin, spec)
            out[:, g, s] = keys[bi[:, None], dst[:, g, s]].to(dt)
    return out


def _turned_back(q: Tensor, lq: LayerQK, spec: RopeSpec, dt: torch.dtype) -> Tensor:
    """Each query turned back by the rotation of every destination, ``[B, q, N, H, D]``:
    ``q . R(j) k == (R(j)^T q) . k``, and ``R(j)^T`` is ``rotate`` with ``sin -> -sin``
    (a transpose, exact at any table magnitude)."""
    bsz, nq, h, d = q.shape
    n = lq.cos.shape[1]
    x = q[:, :, None].expand(bsz, nq, n, h, d).reshape(bsz, nq * n, h, d)
    cos = lq.cos.to(dt)[:, None].expand(bsz, nq, n, -1).reshape(bsz, nq * n, -1)
    sin = lq.sin.to(dt)[:, None].expand(bsz, nq, n, -1).reshape(bsz, nq * n, -1)
    return rotate(x, cos, -sin, spec.pair_layout).reshape(bsz, nq, n, h, d)


def _destination_dots(
    turned: Tensor, raw: Tensor, d_q: Tensor, s_q: Tensor, proj: int | None, spec: RopeSpec
) -> Tensor:
    """``[B, H, q, S, 2b]`` dots of the queries with their moved keys, read from every
    (destination, source) product of the turned-back queries ``turned`` ``[B, q, N, H, D]``
    and the raw keys ``raw`` ``[B, N, H, D]``: one matrix product per (prompt, head), then
    a gather at the swaps' ``(d_q, s_q)`` ``[B, q, S, 2b]``."""
    bsz, nq, n, h = turned.shape[:4]
    every = einsum(
        project(turned, proj, spec), project(raw, proj, spec), "b q j h f, b i h f -> b h q j i"
    ).reshape(bsz, h, nq, n * n)
    at = (d_q * n + s_q).reshape(bsz, 1, nq, -1).expand(-1, h, -1, -1)
    return torch.gather(every, -1, at).reshape(bsz, h, nq, *d_q.shape[2:])


def keys_layer(
    lq: LayerQK,
    li: int,
    geo: Geometry,
    spec: RopeSpec,
    projs: list[int | None],
    tau: float,
    out: Out,
    finite: Finite,
    chain: KeyChain | None,
) -> None:
    """Score every head of one layer in keys mode into ``out[:, li]``."""
    layer, b = lq.layer, geo.block_size
    dt = torch.float64 if lq.rot_q.dtype == torch.float64 else torch.float32
    dev = lq.rot_q.device
    kv = torch.tensor(spec.kv_map, device=dev)
    shared = geo.n_groups == 1
    # many queries, blocks at fixed offsets from them: the relative form (scoring/relative.py)
    rel = relative_swaps(lq, geo, spec, dt) if chain is None and not shared else None
    rot_k = lq.rot_k.to(dt)[:, :, kv]  # [B, N, H, D]
    bsz, n = rot_k.shape[:2]
    n_s, t2 = geo.dst.shape[2:]
    # shared swaps, few positions: every (destination, source) product beats moving keys
    dest = chain is None and shared and n * n <= DESTINATION_FORM * n_s * t2
    moved = rel is not None or dest
    k_new = None if moved else _moved_keys(lq, geo, spec, chain, dt)[..., kv, :]
    raw = lq.k.to(dt)[:, :, kv] if dest else None
    scale, cap = spec.attn_scales[layer], spec.logit_softcaps[layer]
    dst, src, valid_all = geo.dst.to(dev), geo.src.to(dev), geo.valid.to(dev)
    in_block, movable = geo.in_block.to(dev), geo.movable.to(dev)
    per_query = bsz * spec.n_heads * (n + n_s * t2 * (1 if shared else 2) + n * n * dest)
    bq = torch.arange(bsz, device=dev)[:, None]
    for qi in chunks(geo.qpos.shape[1], per_query):
        qi_d = qi.to(dev)
        qpos = geo.qpos.to(dev)[:, qi_d]  # [B, q]
        q = lq.rot_q[bq, qpos].to(dt)
        ok = geo.rows_allowed(qi_d, spec.sliding_windows[layer]).to(dev)  # [B, q, N]
        grp = geo.group.to(dev)[qi_d]
        d_q = dst[:, grp]  # [B, q, S, 2b]
        ok_new = torch.gather(ok, 2, d_q.reshape(bsz, len(qi), -1)).reshape(
            bsz, 1, len(qi), n_s, t2
        )
        valid = valid_all[:, None, qi_d]
        kn = k_new if shared or k_new is None else k_new[:, grp]
        turned = _turned_back(q, lq, spec, dt) if dest else None
        for pi, proj in enumerate(projs):
            c = cap if proj is None else None
            qf, kf = project(q, proj, spec), project(rot_k, proj, spec)
            top, e, z = row(
                logits(qf, kf, "b q h f, b j h f -> b h q j", scale, c, layer, finite), ok
            )
            d_row = e / z[..., None]
            ent, uni = row_diagnostics(d_row, ok)
            blk, left = row_masses(d_row, in_block[:, qi_d], movable[:, qi_d])
            idx = d_q.reshape(bsz, 1, len(qi), -1).expand(-1, e.shape[1], -1, -1)
            e_ac = torch.gather(e, -1, idx).reshape(*e.shape[:3], n_s, t2)
            pattern = (
                "b q h f, b g s t h f -> b h q s t"
                if shared
                else "b q h f, b q s t h f -> b h q s t"
            )
            if rel is not None:
                dots = relative_dots(rel, q, qi, qpos, proj)
                l_new = scaled(dots, scale, c, layer, finite)
            elif turned is not None:
                assert raw is not None
                dots = _destination_dots(turned, raw, d_q, src[:, grp], proj, spec)
                l_new = scaled(dots, scale, c, layer, finite)
            else:
                assert kn is not None
                l_new = logits(qf, project(kn, proj, spec), pattern, scale, c, layer, finite)
            l_new = l_new.masked_fill(~ok_new, float("-inf"))
            shift = torch.maximum(top, l_new.amax(-1))  # [B, H, q, S]
            e_new = torch.exp(l_new - shift[..., None])
            others = (z[..., None] - e_ac.sum(-1)).clamp_min(0.0)  # keys outside blocks a, c
            z_new = others * torch.exp(top - shift) + e_new.sum(-1)
            d_ac, d_new = e_ac / z[..., None, None], e_new / z_new[..., None]
            ratio = z[..., None] * torch.exp(top - shift) / z_new
            tv = ((d_new - d_ac).abs().sum(-1) + others / z[..., None] * (ratio - 1).abs()) / 2
            put_scores(
                out,
                li,
                qi,
                pi,
                d_ac.unflatten(-1, (2, b)).mean(-1),
                d_new.unflatten(-1, (2, b)).mean(-1),
                valid,
                tau,
                tv,
                ent,
                uni,
                (blk, left, d_ac.sum(-1)),
            )
