"""What turns a layer's raw keys into the keys the model multiplies, under hooks.

Keys mode (:mod:`rope_behavior.scoring.keys_mode`) rebuilds a moved key as the model
would have used it at its destination. With hooks at the key sites that is the model's
whole chain: the raw pre-rotation key (read before any hook edits it), the hooks at the
pre-rotation site, the rotation with the model's table of that very forward, then the
hooks at the rotated site. rope_behavior knows the semantics of its own edit hooks
(:class:`KeyChain` holds them); a hook it does not know is named in ``unknown``, and the
chain applied to the unpermuted raw keys must reproduce the keys the model used, or the
call raises (:func:`check_chain`).

Where every edit of the chain maps each pair linearly at its position (angle edits:
PRoPE, NoPE-below, RoPE scaling; zeroed pairs: frequency ablations), the chain *is* one
``2 x 2`` map per (prompt, position, KV head, pair): :func:`chain_map` reads it once by
running the chain on the pairs' two unit vectors, and checks it on the raw keys against
the keys the model used. A moved key is then that map at its destination applied to the
raw key of its source (:func:`moved_keys`), and keys mode's destination form turns each
query back by the map's transpose (``q . M(dst) k == (M(dst)^T q) . k``), as it turns
it back by the rotation's without hooks; where the map is exactly a scaled rotation shared
by the KV heads (every angle edit), by that rotation's own tables
(:func:`rotation_tables`). Other edits (patched or resampled values,
affine rather than linear) replay the chain over every position once per swap.
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

__all__ = [
    "ChainMap",
    "KeyChain",
    "chain_map",
    "check_chain",
    "key_chains",
    "moved_keys",
    "read_chain",
    "rotation_tables",
    "turned_back",
]

_EDITS = (ZeroPairs, ReplacePairs, ResamplePairs, SlicedPatch, ReanglePairs)
_PASSIVE = (Record, TableTap)
_LINEAR = (ZeroPairs, ReanglePairs)  # edits that map each pair linearly, per position

# the images of a pair's two unit vectors, each [B, N, KV, P, 2]: the map's columns
ChainMap = tuple[Tensor, Tensor]


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


def _tolerance(want: Tensor) -> float:
    scale = max(1.0, float(want.abs().max()))
    return (1e-4 if want.dtype in (torch.float32, torch.float64) else 3e-2) * scale


def check_chain(chain: KeyChain, lq: LayerQK, spec: RopeSpec) -> None:
    """Raise unless ``chain`` applied to the layer's raw keys gives the keys it used."""
    if lq.k_raw is None:
        raise RopeBehaviorError(
            f"layer {lq.layer}: hooks sit at its key sites but the raw keys were not captured"
        )
    got = _apply(chain, lq.k_raw, lq.cos, lq.sin, spec)
    want = lq.rot_k
    err = float((got.to(want.dtype) - want).abs().max())
    if not err <= _tolerance(want):
        names = ", ".join(chain.unknown) or "the installed rope_behavior edits"
        raise RopeBehaviorError(
            f"keys mode cannot reproduce the keys layer {lq.layer} uses: hooks at its key "
            f"sites ({names}) edit them in a way rope_behavior does not know (max difference "
            f"{err:.3g}); keys mode would score a different model. Use mode='tokens', which "
            "re-runs the hooked model on every swapped prompt, or remove the hooks"
        )


def _mapped(columns: ChainMap, x: Tensor, spec: RopeSpec) -> Tensor:
    """Keys ``x`` ``[..., KV, D]`` through the per-pair map ``columns`` (same leading
    shape); dims outside the rotary slice pass through."""
    r, layout = spec.rotary_dim, spec.pair_layout
    xp = split_pairs(x[..., :r], layout)
    out = merge_pairs(columns[0] * xp[..., 0:1] + columns[1] * xp[..., 1:2], layout)
    return torch.cat([out, x[..., r:]], -1) if r < x.shape[-1] else out


def _probed(chain: KeyChain, x: Tensor, cos: Tensor, sin: Tensor, spec: RopeSpec) -> ChainMap:
    """The chain's images of each pair's two unit vectors at the shape of ``x`` (for one
    prompt, both units in one batch of two: the hooks see a batch that a table shared by
    every prompt broadcasts over)."""
    r, layout = spec.rotary_dim, spec.pair_layout
    if x.shape[0] == 1:
        unit = x.new_zeros(2, *x.shape[1:-1], r // 2, 2)
        unit[0, ..., 0] = 1.0
        unit[1, ..., 1] = 1.0
        probe = merge_pairs(unit, layout)
        if r < x.shape[-1]:
            probe = torch.cat([probe, x.new_zeros(2, *x.shape[1:-1], x.shape[-1] - r)], -1)
        two = (cos.expand(2, *cos.shape[1:]), sin.expand(2, *sin.shape[1:]))
        image = split_pairs(_apply(chain, probe, *two, spec)[..., :r], layout)
        return image[:1], image[1:]
    columns = []
    for j in (0, 1):
        unit = x.new_zeros(*x.shape[:-1], r // 2, 2)
        unit[..., j] = 1.0
        probe = merge_pairs(unit, layout)
        if r < x.shape[-1]:
            probe = torch.cat([probe, x.new_zeros(*x.shape[:-1], x.shape[-1] - r)], -1)
        columns.append(split_pairs(_apply(chain, probe, cos, sin, spec)[..., :r], layout))
    return columns[0], columns[1]


def chain_map(chain: KeyChain, lq: LayerQK, spec: RopeSpec) -> ChainMap | None:
    """The chain as a linear map of each (prompt, position, KV head, pair), read by running
    it on the pairs' two unit vectors: the columns ``[B, N, KV, P, 2]``, or ``None`` where
    it holds other edits or hooks rope_behavior does not know, or does not reproduce the
    model's keys that way (the raw keys' image is checked against the keys the model used,
    the check :func:`check_chain` makes). Dims outside the rotary slice pass through
    (checked with the rest)."""
    if chain.unknown or not all(isinstance(f, _LINEAR) for f in chain.pre + chain.rot):
        return None
    if lq.k_raw is None:
        return None
    x = lq.k_raw
    out = None
    if x.shape[0] > 1 and lq.cos.stride(0) == 0 and lq.sin.stride(0) == 0:
        # one table for every prompt (no per-prompt positions): probe one prompt, and
        # check the map on all of them below; hooks holding per-prompt tables refuse a
        # batch of one, and then every prompt is probed
        try:
            one = _probed(chain, x[:1], lq.cos[:1], lq.sin[:1], spec)
            out = (one[0].expand(*x.shape[:-1], -1, 2), one[1].expand(*x.shape[:-1], -1, 2))
        except RopeBehaviorError:
            out = None
    if out is None:
        out = _probed(chain, x, lq.cos, lq.sin, spec)
    want = lq.rot_k
    if not float((_mapped(out, x, spec).to(want.dtype) - want).abs().max()) <= _tolerance(want):
        return None
    return out


def turned_back(q: Tensor, columns: ChainMap, kv: Tensor, spec: RopeSpec) -> Tensor:
    """Queries ``q`` ``[B, q, H, D]`` turned back by the map of every destination,
    ``[B, q, N, H, D]``: ``q . M(j) k == (M(j)^T q) . k``, pair by pair (``M(j)^T q``
    holds the query's dot with each column); ``kv`` maps query heads to KV heads."""
    r, layout, dt = spec.rotary_dim, spec.pair_layout, q.dtype
    qp = split_pairs(q[..., :r], layout)
    dots = [einsum(qp, c[:, :, kv].to(dt), "b q h p t, b j h p t -> b q j h p") for c in columns]
    out = merge_pairs(torch.stack(dots, -1), layout)
    if r == q.shape[-1]:
        return out
    rest = q[:, :, None, :, r:].expand(-1, -1, out.shape[2], -1, -1)
    return torch.cat([out, rest], -1)


def rotation_tables(columns: ChainMap) -> tuple[Tensor, Tensor] | None:
    """``(cos, sin)`` ``[B, N, P]`` where the map is, exactly, a scaled rotation of each pair
    shared by the KV heads (``M = m R(theta)``: columns ``m (cos, sin)`` and ``m (-sin,
    cos)``, as angle edits give), so keys mode turns queries back as with the model's own
    table; else ``None`` (the map is used as it is)."""
    c0, c1 = columns
    if not (torch.equal(c1[..., 0], -c0[..., 1]) and torch.equal(c1[..., 1], c0[..., 0])):
        return None
    if c0.shape[2] > 1 and not torch.equal(c0, c0[:, :, :1].expand_as(c0)):
        return None
    return c0[:, :, 0, :, 0], c0[:, :, 0, :, 1]


def read_chain(chain: KeyChain, lq: LayerQK, spec: RopeSpec) -> ChainMap | None:
    """The chain's map (:func:`chain_map`) where it is one; else ``None``, the chain checked
    (:func:`check_chain` raises where it does not reproduce the keys the model used)."""
    columns = chain_map(chain, lq, spec)
    if columns is None:
        check_chain(chain, lq, spec)
    return columns


def moved_keys(
    lq: LayerQK,
    geo: Geometry,
    spec: RopeSpec,
    chain: KeyChain | None,
    dt: torch.dtype,
    columns: ChainMap | None,
) -> Tensor:
    """Keys at the destinations of every swap, as the model would use them:
    ``[B, G, S, 2b, KV, D]``. With a ``chain``, ``columns`` is what :func:`read_chain`
    gave for it: its map, or ``None`` (checked: replayed once per swap)."""
    bsz = lq.k.shape[0]
    cos, sin = lq.cos, lq.sin  # per-prompt tables [B, N, P]
    dev = lq.k.device
    dst, src = geo.dst.to(dev), geo.src.to(dev)
    bi = torch.arange(bsz, device=dev)[:, None, None, None]
    if chain is None:  # no hook at the key sites: rotate the moved raw keys directly
        k_src = lq.k[bi, src].to(dt)
        return _rotate_b(k_src, cos[bi, dst].to(dt), sin[bi, dst].to(dt), spec)
    assert lq.k_raw is not None  # read_chain raised without it
    if columns is not None:  # the chain maps each pair linearly at its position: read it there
        c0, c1 = (c[bi, dst].to(dt) for c in columns)
        return _mapped((c0, c1), lq.k_raw[bi, src].to(dt), spec)
    n = lq.k_raw.shape[1]
    g_n, s_n, t2 = dst.shape[1:]
    out = lq.k_raw.new_empty(bsz, g_n, s_n, t2, *lq.k_raw.shape[2:], dtype=dt)
    b1 = bi[:, 0, 0]
    base = torch.arange(n, device=dev).expand(bsz, n)
    for g in range(g_n):
        for s in range(s_n):
            perm = base.scatter(1, dst[:, g, s], src[:, g, s])
            keys = _apply(chain, lq.k_raw[b1, perm], cos, sin, spec)
            out[:, g, s] = keys[b1, dst[:, g, s]].to(dt)
    return out
