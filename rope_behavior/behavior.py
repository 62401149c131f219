"""Positional / symbolic scores of attention heads (METHOD.md §4).

Block convention (pinned). For a query at position ``n`` of prompt ``b``, ``start`` is the
first key position that is neither excluded (``exclude_keys``) nor padding. The movable keys
are ``start .. n-1``; the query's own key ``n`` never moves. They are tiled by
``m = (n - start) // block_size`` blocks, block ``a`` covering positions
``start + a*block_size .. start + (a+1)*block_size - 1``; leftover keys stay put. A swap
``(a, c)`` moves the key contents of block ``a`` to block ``c``'s positions and vice versa.
The attention row ``D`` is the head's softmax over keys ``0..n`` (causal, sliding window and
padding masks as the model applies them), renormalised over non-excluded keys. With block
means ``d`` (original) and ``d'`` (swapped), ``v = (d_a, d_c)``, ``v' = (d'_a, d'_c)``::

    pos_swap = cos(v', v)      sym_swap = cos(v', (d_c, d_a))
    alpha    = softmax over swaps of |d_a - d_c| / tau        (original row's d)
    s_pos    = sum alpha * pos_swap        s_sym = sum alpha * sym_swap

Swaps are one list for all prompts and query positions (explicit, or ``n_swaps`` distinct
block pairs drawn among the blocks every prompt has at the largest query position). A swap
whose blocks do not all lie before a (smaller) query position, or whose ``v`` is zero (both
blocks carry no attention: masked by a sliding window / excluded), is skipped for that row
(``swap_weight`` 0, ``mass_moved`` NaN); a row with no usable swap scores NaN with
``identifiable=False``.

Modes: ``"keys"`` permutes the *unrotated* keys inside each layer and re-rotates them at
their destination with the layer's own cos/sin (queries and everything upstream
unchanged; one forward for all layers, memory bounded to one layer); ``"tokens"`` swaps
input token blocks and re-runs the model (variants batched along the batch axis).

Keys mode rebuilds the swapped keys from the unrotated keys with the model's own rotation,
so it scores the model as it is. To score a model running under hooks that edit q or k
(interventions, the toy tasks' frequency settings), install them around the call and use
``mode="tokens"``, which re-runs the hooked model on every swapped prompt.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from itertools import combinations
from typing import Any

import torch
from einops import einsum
from jaxtyping import Int
from torch import Tensor

from rope_behavior.adapters import adapter_for
from rope_behavior.capture import LayerQK, _validate_mask, stream_layers, validate_tokens
from rope_behavior.errors import RopeBehaviorError, check_indices
from rope_behavior.head_scores import (
    HeadScores,
    ScoreSummary,
    SwapScores,
    _check_pos_int,
    _check_swaps,
    _check_tau,
    _combine,
    block_swap_scores,
)
from rope_behavior.pairs import rotate, split_pairs
from rope_behavior.spec import RopeSpec

__all__ = ["HeadScores", "ScoreSummary", "SwapScores", "block_swap_scores", "score_heads"]

_MODES = ("keys", "tokens")
_QUERY_OPTIONS = "'last', 'all', an int position or a sequence of int positions"


# ----------------------------------------------------------------------------------------
# Geometry of blocks and swaps
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Geometry:
    start: Tensor  # [B] first movable key
    qpos: Tensor  # [nq]
    swaps: Tensor  # [S, 2]
    valid: Tensor  # [B, nq, S] both blocks before the query
    dst: Tensor  # [B, S, 2b] destination positions (block a then block c)
    src: Tensor  # [B, S, 2b] where each destination's content comes from
    blocks: Tensor  # [B, M*b] positions of all M blocks
    not_ac: Tensor  # [S, M] blocks other than a, c
    outside: Tensor  # [B, N] positions in no block
    allowed: Tensor  # [B, N] neither excluded nor padding
    has_query_axis: bool

    def rows_allowed(self, qi: Tensor, window: int | None) -> Tensor:
        """[B, nq, N]: keys each query row attends over (causal, window, padding, exclusion)."""
        n = self.allowed.shape[1]
        j = torch.arange(n, device=self.qpos.device)
        q = self.qpos[qi][:, None]
        ok = j[None] <= q
        if window is not None:
            ok = ok & (j[None] > q - window)
        return ok[None] & self.allowed[:, None, :]


def _geometry(
    tokens: Tensor,
    mask: Tensor | None,
    exclude_keys: object,
    block_size: int,
    query_positions: object,
    swaps: object,
    n_swaps: object,
    generator: torch.Generator | None,
) -> _Geometry:
    bsz, n = tokens.shape
    dev = tokens.device
    excluded = torch.zeros(n, dtype=torch.bool, device=dev)
    for e in (
        exclude_keys
        if isinstance(exclude_keys, Sequence | range | set | frozenset)
        else [exclude_keys]
    ):
        if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < n:
            raise RopeBehaviorError(
                f"exclude_keys holds {e!r}; expected key positions in [0, {n - 1}]"
            )
        excluded[e] = True
    tok_ok = mask.bool() if mask is not None else torch.ones(bsz, n, dtype=torch.bool, device=dev)
    allowed = ~excluded[None] & tok_ok
    if not bool(allowed.any(-1).all()):
        raise RopeBehaviorError(
            f"all keys excluded: exclude_keys={sorted(set(excluded.nonzero().flatten().tolist()))} "
            "(and padding) leave no key to attend over; exclude fewer keys"
        )
    start = allowed.int().argmax(-1)  # first allowed position per prompt
    m_of = lambda q: torch.div(q[None, :] - start[:, None], block_size, rounding_mode="floor")  # noqa: E731
    if isinstance(query_positions, str) and query_positions in ("last", "all"):
        keep = query_positions == "all"
        cand = torch.arange(n, device=dev) if keep else torch.tensor([n - 1], device=dev)
    elif isinstance(query_positions, int) and not isinstance(query_positions, bool):
        keep, cand = False, torch.tensor([query_positions], device=dev)
    elif (
        isinstance(query_positions, Sequence)
        and not isinstance(query_positions, str)
        and len(query_positions) > 0
    ):
        keep, cand = True, torch.tensor(list(query_positions), device=dev)
    else:
        raise RopeBehaviorError(f"query_positions={query_positions!r}; options: {_QUERY_OPTIONS}")
    if (
        cand.dtype.is_floating_point
        or cand.dtype == torch.bool
        or bool(((cand < 0) | (cand >= n)).any())
    ):
        raise RopeBehaviorError(
            f"query position(s) {query_positions!r} out of range: expected ints 0 <= n <= {n - 1} "
            f"for {n} positions (options: {_QUERY_OPTIONS})"
        )
    n_max = int(cand.max())
    n_blocks = int(m_of(cand.max()[None]).min())
    if n_blocks < 2:
        raise RopeBehaviorError(
            f"fewer than two blocks: the query at {n_max} has {max(n_blocks, 0)} block(s) of "
            f"block_size={block_size} after the first movable key (start="
            f"{int(start.max())}); need query - start >= 2*block_size; lower block_size or "
            "use longer prompts"
        )
    if swaps is not None:
        pairs = _check_swaps(swaps, n_blocks, f"the query at {n_max}")
    else:
        all_pairs = list(combinations(range(n_blocks), 2))
        if n_swaps is None:
            pairs = all_pairs
        else:
            k = _check_pos_int(n_swaps, "n_swaps")
            if k > len(all_pairs):
                raise RopeBehaviorError(
                    f"more swaps requested (n_swaps={k}) than block pairs exist: {n_blocks} blocks "
                    f"give {len(all_pairs)} pairs; lower n_swaps, pass n_swaps=None for all pairs, "
                    "or lower block_size"
                )
            g = generator if generator is not None else torch.Generator().manual_seed(0)
            pairs = [
                all_pairs[i]
                for i in sorted(torch.randperm(len(all_pairs), generator=g)[:k].tolist())
            ]
    sw = torch.tensor(pairs, device=dev)
    valid = sw.max(-1).values[None, None, :] < m_of(cand)[:, :, None]  # [B, nq, S]
    usable = valid.any(-1).all(0) & tok_ok[:, cand].all(0)
    if keep and query_positions == "all":
        cand, valid = cand[usable], valid[:, usable]
    else:
        for i, q in enumerate(cand.tolist()):
            if not bool(tok_ok[:, q].all()):
                raise RopeBehaviorError(
                    f"query position {q} is padding in some prompt; pick positions holding tokens"
                )
            if not bool(valid[:, i].any(-1).all()):
                raise RopeBehaviorError(
                    f"fewer than two blocks for the query at {q}: it has {int(m_of(cand)[:, i].min())} "
                    f"block(s) in some prompt, and none of the swaps {pairs} lies before it"
                )
    b = block_size
    t = torch.arange(b, device=dev)
    a_pos = sw[:, :1] * b + t  # [S, b]
    c_pos = sw[:, 1:] * b + t
    dst = start[:, None, None] + torch.cat([a_pos, c_pos], -1)[None]
    src = start[:, None, None] + torch.cat([c_pos, a_pos], -1)[None]
    blocks = start[:, None] + torch.arange(n_blocks * b, device=dev)[None]
    outside = torch.ones(bsz, n, dtype=torch.bool, device=dev).scatter(1, blocks, False)
    not_ac = torch.ones(len(pairs), n_blocks, dtype=torch.bool, device=dev)
    not_ac[torch.arange(len(pairs)), sw[:, 0]] = False
    not_ac[torch.arange(len(pairs)), sw[:, 1]] = False
    return _Geometry(
        start=start,
        qpos=cand,
        swaps=sw,
        valid=valid,
        dst=dst,
        src=src,
        blocks=blocks,
        not_ac=not_ac,
        outside=outside,
        allowed=allowed,
        has_query_axis=keep,
    )


# ----------------------------------------------------------------------------------------
# Rows, keys mode, tokens mode
# ----------------------------------------------------------------------------------------


def _project(x: Tensor, proj: int | None, spec: RopeSpec) -> Tensor:
    """The whole head (``None``) or the two dims of pair ``proj``."""
    if proj is None:
        return x
    return split_pairs(x[..., : spec.rotary_dim], spec.pair_layout)[..., proj, :]


class _Finite:
    """Records, per layer and on the logits' device, whether any logit was NaN/inf.

    Checked once when a call has finished (``raise_if_any``), not per layer: on a GPU a
    per-layer ``bool(...)`` would make the host wait for the device inside every layer
    callback. A non-finite logit still never yields a number: the call raises.
    """

    def __init__(self) -> None:
        self.bad: dict[int, Tensor] = {}

    def note(self, x: Tensor, layer: int) -> None:
        flag = ~torch.isfinite(x).all()
        self.bad[layer] = flag if layer not in self.bad else self.bad[layer] | flag

    def raise_if_any(self) -> None:
        bad = [layer for layer, flag in sorted(self.bad.items()) if bool(flag)]
        if bad:
            raise RopeBehaviorError(
                f"NaN/inf attention logits at layer {bad[0]}: the scores would be meaningless; "
                "check the model weights / dtype (fp16 overflow?) and the inputs"
            )


def _logits(
    q: Tensor,
    k: Tensor,
    pattern: str,
    scale: float,
    cap: float | None,
    layer: int,
    finite: _Finite,
) -> Tensor:
    x = einsum(q, k, pattern).double() / scale
    if cap is not None:
        x = cap * torch.tanh(x / cap)
    finite.note(x, layer)
    return x


def _row(logits: Tensor, ok: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Masked softmax pieces of ``logits`` [B, H, q, N]: (row max, exp, partition)."""
    x = logits.masked_fill(~ok[:, None], float("-inf"))
    top = x.amax(-1, keepdim=True)
    e = torch.exp(x - top)
    return top, e, e.sum(-1)


def _row_diagnostics(d: Tensor, ok: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised entropy and normalised distance from uniform of rows ``d`` [B, H, q, N]."""
    k = ok.sum(-1)[:, None].double()  # [B, 1, q]
    ent = -torch.where(d > 0, d * torch.log(torch.where(d > 0, d, 1.0)), 0.0).sum(-1)
    uni = torch.where(ok[:, None], (d - 1.0 / k[..., None]).abs(), 0.0).sum(-1) / 2
    return ent / torch.log(k).clamp_min(1e-300), uni / (1 - 1 / k).clamp_min(1e-300)


class _Out:
    """Result buffers ``[B, L, H, nq, P', (S)]`` filled layer by layer."""

    names = ("s_pos", "s_sym", "separation", "entropy", "distance_from_uniform")

    def __init__(self, b: int, n_l: int, h: int, nq: int, n_p: int, s: int) -> None:
        self.t = {
            k: torch.full((b, n_l, h, nq, n_p), float("nan"), dtype=torch.float64)
            for k in self.names
        }
        self.t["mass_moved"] = torch.full(
            (b, n_l, h, nq, n_p, s), float("nan"), dtype=torch.float64
        )
        self.t["swap_weight"] = torch.zeros(b, n_l, h, nq, n_p, s, dtype=torch.float64)

    def put(self, li: int, qi: Tensor, pi: int, **vals: Tensor) -> None:
        for k, v in vals.items():  # v: [B, H, q, (S)]
            self.t[k][:, li, :, qi, pi] = v.detach().cpu().double()


def _put_scores(
    out: _Out,
    li: int,
    qi: Tensor,
    pi: int,
    d: Tensor,
    d_new: Tensor,
    valid: Tensor,
    tau: float,
    tv: Tensor,
    ent: Tensor,
    uni: Tensor,
) -> None:
    sc = _combine(d, d_new, valid, tau)
    used = sc.weight > 0
    out.put(
        li,
        qi,
        pi,
        s_pos=sc.s_pos,
        s_sym=sc.s_sym,
        separation=sc.separation,
        entropy=ent,
        distance_from_uniform=uni,
        swap_weight=sc.weight,
        mass_moved=torch.where(used, tv, float("nan")),
    )


def _chunks(nq: int, per_query: int, budget: int = 1 << 23) -> list[Tensor]:
    step = max(1, budget // max(per_query, 1))
    return [torch.arange(i, min(i + step, nq)) for i in range(0, nq, step)]


def _keys_layer(
    lq: LayerQK,
    li: int,
    geo: _Geometry,
    spec: RopeSpec,
    projs: list[int | None],
    tau: float,
    out: _Out,
    finite: _Finite,
) -> None:
    layer, b = lq.layer, geo.dst.shape[-1] // 2
    dt = torch.float64 if lq.rot_q.dtype == torch.float64 else torch.float32
    kv = torch.tensor(spec.kv_map, device=lq.k.device)
    bsz, n_s, t2 = geo.dst.shape
    bi = torch.arange(bsz, device=lq.k.device)[:, None, None]
    # unrotated keys moved to their destination, re-rotated there with the layer's own tables
    k_src = lq.k[bi, geo.src].to(dt)  # [B, S, 2b, KV, D]
    cs, sn = lq.cos[geo.dst].to(dt), lq.sin[geo.dst].to(dt)
    flat = k_src.reshape(1, bsz * n_s * t2, *k_src.shape[-2:])
    k_new = rotate(
        flat, cs.reshape(-1, cs.shape[-1]), sn.reshape(-1, sn.shape[-1]), spec.pair_layout
    )
    k_new = k_new.reshape(k_src.shape)[:, :, :, kv]  # [B, S, 2b, H, D]
    rot_k = lq.rot_k.to(dt)[:, :, kv]  # [B, N, H, D]
    n = rot_k.shape[1]
    scale, cap = spec.attn_scales[layer], spec.logit_softcaps[layer]
    idx_ac = geo.dst.reshape(bsz, 1, 1, -1)
    idx_bl = geo.blocks[:, None, None, :]
    for qi in _chunks(len(geo.qpos), bsz * spec.n_heads * (n + n_s * t2)):
        q = lq.rot_q[:, geo.qpos[qi]].to(dt)
        ok = geo.rows_allowed(qi, spec.sliding_windows[layer])  # [B, q, N]
        ok_new = torch.gather(ok, 2, geo.dst.reshape(bsz, 1, -1).expand(-1, len(qi), -1))
        ok_new = ok_new.reshape(bsz, 1, len(qi), n_s, t2)
        valid = geo.valid[:, None, qi]
        for pi, proj in enumerate(projs):
            c = cap if proj is None else None
            qf, kf, knf = (_project(x, proj, spec) for x in (q, rot_k, k_new))
            top, e, z = _row(
                _logits(qf, kf, "b q h f, b j h f -> b h q j", scale, c, layer, finite), ok
            )
            d_row = e / z[..., None]
            ent, uni = _row_diagnostics(d_row, ok)
            shp = (*e.shape[:3], n_s, t2)
            e_ac = torch.gather(e, -1, idx_ac.expand(*e.shape[:3], -1)).reshape(shp)
            e_bl = torch.gather(e, -1, idx_bl.expand(*e.shape[:3], -1))
            e_bl = e_bl.reshape(*e.shape[:3], -1, b).sum(-1)  # [B, H, q, M]
            others = (e * geo.outside[:, None, None]).sum(-1)[..., None] + einsum(
                e_bl, geo.not_ac.to(e_bl.dtype), "b h q m, s m -> b h q s"
            )
            l_new = _logits(qf, knf, "b q h f, b s t h f -> b h q s t", scale, c, layer, finite)
            l_new = l_new.masked_fill(~ok_new, float("-inf"))
            shift = torch.maximum(top, l_new.amax(-1))  # [B, H, q, S]
            e_new = torch.exp(l_new - shift[..., None])
            kept = others * torch.exp(top - shift)
            z_new = kept + e_new.sum(-1)
            d_ac, d_new = e_ac / z[..., None, None], e_new / z_new[..., None]
            ratio = z[..., None] * torch.exp(top - shift) / z_new
            tv = ((d_new - d_ac).abs().sum(-1) + others / z[..., None] * (ratio - 1).abs()) / 2
            _put_scores(
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
            )


def _token_rows(
    lq: LayerQK,
    qpos: Tensor,
    ok: Tensor,
    spec: RopeSpec,
    projs: list[int | None],
    finite: _Finite,
) -> list[Tensor]:
    """Full attention rows ``[B, H, q, N]`` per projection at the query positions."""
    dt = torch.float64 if lq.rot_q.dtype == torch.float64 else torch.float32
    rot_k = lq.rot_k.to(dt)[:, :, list(spec.kv_map)]
    q = lq.rot_q[:, qpos].to(dt)
    rows = []
    for proj in projs:
        cap = spec.logit_softcaps[lq.layer] if proj is None else None
        _, e, z = _row(
            _logits(
                _project(q, proj, spec),
                _project(rot_k, proj, spec),
                "b q h f, b j h f -> b h q j",
                spec.attn_scales[lq.layer],
                cap,
                lq.layer,
                finite,
            ),
            ok,
        )
        rows.append(e / z[..., None])
    return rows


def _tokens_mode(
    model: Any,
    tokens: Tensor,
    mask: Tensor | None,
    geo: _Geometry,
    spec: RopeSpec,
    layers: tuple[int, ...],
    projs: list[int | None],
    tau: float,
    out: _Out,
    batch_size: int,
    finite: _Finite,
) -> None:
    bsz, n = tokens.shape
    n_s, b = geo.swaps.shape[0], geo.dst.shape[-1] // 2
    qi_all = torch.arange(len(geo.qpos))
    ok_l = {layer: geo.rows_allowed(qi_all, spec.sliding_windows[layer]) for layer in layers}
    orig: dict[tuple[int, int], Tensor] = {}
    # sequence v < B is prompt v itself; v = B + s * B + p is prompt p with swap s applied.
    # The prompts come first, so a variant's original row is always known (computed in an
    # earlier forward, or earlier in the same layer callback) when the variant arrives.
    perm = torch.arange(n, device=tokens.device).repeat(n_s, bsz, 1)  # [S, B, N]
    perm.scatter_(2, geo.dst.transpose(0, 1), geo.src.transpose(0, 1))
    variants = torch.gather(tokens[None].expand(n_s, -1, -1), 2, perm).reshape(n_s * bsz, n)
    seqs = torch.cat([tokens, variants])
    h, nq, dev = spec.n_heads, len(geo.qpos), tokens.device
    # accumulated on the model's device: no host copies inside the layer callbacks
    d_new = {
        (layer, pi): torch.zeros(bsz, h, nq, n_s, 2, dtype=torch.float64, device=dev)
        for layer in layers
        for pi in range(len(projs))
    }
    tv = {k: torch.zeros(bsz, h, nq, n_s, dtype=torch.float64, device=dev) for k in d_new}

    def on_rows(lq: LayerQK, lo: int, prompt: Tensor, p: Tensor, s: Tensor, idx: Tensor) -> None:
        # sequences lo, lo + 1, ...: the first n_orig are prompts, the rest variants (p, s)
        n_orig = max(0, min(bsz - lo, prompt.shape[0]))
        ok = ok_l[lq.layer][prompt]
        for pi, d_rows in enumerate(_token_rows(lq, geo.qpos, ok, spec, projs, finite)):
            key = (lq.layer, pi)
            if n_orig:
                got = d_rows[:n_orig]
                orig[key] = torch.cat([orig[key], got]) if key in orig else got
            if len(p):
                d_row = d_rows[n_orig:]
                d_new[key][p, :, :, s] = (
                    torch.gather(d_row, -1, idx).unflatten(-1, (2, b)).mean(-1).double()
                )
                tv[key][p, :, :, s] = ((d_row - orig[key][p]).abs().sum(-1) / 2).double()

    for lo in range(0, seqs.shape[0], batch_size):
        sel = torch.arange(lo, min(lo + batch_size, seqs.shape[0]), device=dev)
        var = sel[max(0, bsz - lo) :] - bsz
        p, s = var % bsz, torch.div(var, bsz, rounding_mode="floor")
        stream_layers(
            model,
            seqs[sel],
            partial(
                on_rows,
                lo=lo,
                prompt=sel % bsz,
                p=p,
                s=s,
                idx=geo.dst[p, s][:, None, None, :].expand(-1, h, nq, -1),
            ),
            layers=layers,
            attention_mask=None if mask is None else mask[sel % bsz],
            spec=spec,
        )
    for li, layer in enumerate(layers):
        for pi in range(len(projs)):
            d_row = orig[(layer, pi)]
            idx = geo.dst.reshape(bsz, 1, 1, -1).expand(-1, h, nq, -1)
            d = torch.gather(d_row, -1, idx).reshape(bsz, h, nq, n_s, 2, b).mean(-1)
            ent, uni = _row_diagnostics(d_row, ok_l[layer])
            _put_scores(
                out,
                li,
                qi_all,
                pi,
                d.double().cpu(),
                d_new[(layer, pi)].cpu(),
                geo.valid[:, None].cpu(),
                tau,
                tv[(layer, pi)].cpu(),
                ent,
                uni,
            )


def score_heads(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    *,
    mode: str = "keys",
    block_size: int = 8,
    swaps: Sequence[tuple[int, int]] | None = None,
    n_swaps: int | None = 16,
    tau: float = 0.05,
    query_positions: str | int | Sequence[int] = "last",
    exclude_keys: Sequence[int] = (),
    per_pair: bool = False,
    layers: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    identifiability_threshold: float = 0.01,
    batch_size: int | None = None,
) -> HeadScores:
    """Positional / symbolic scores (s_pos, s_sym) of every head of ``layers``, per prompt.

    Args:
        model: a TransformerBridge or a rope_behavior toy model.
        tokens: ``[prompt, pos]`` token ids (one prompt per row).
        mode: ``"keys"`` (permute unrotated keys inside each layer, re-rotate at the
            destination; one forward) or ``"tokens"`` (swap input token blocks, re-run).
        block_size: keys per block; swaps: explicit block-index pairs ``(a, c)``;
            n_swaps: otherwise the number of distinct block pairs drawn with ``generator``
            (default: a generator seeded 0); ``None`` takes all pairs.
        tau: temperature of the swap weights ``softmax(|d_a - d_c| / tau)``.
        query_positions: ``"last"`` (default), ``"all"`` (every position at which at least
            one swap lies before the query in every prompt), an int, or a sequence of ints.
        exclude_keys: key positions (e.g. ``(0,)`` for BOS) left out of the row, which is
            renormalised over the others; padding is always excluded.
        per_pair: score each single-pair projection head (logits = that pair's
            contribution alone, no soft-cap) instead of the whole head.
        identifiability_threshold: rows whose separation is below it are flagged.
        batch_size: sequences per forward in tokens mode (the prompts with each swap
            applied, and the prompts themselves). Default: as many as fit the device's budget
            (``ModelAdapter.sequences_per_forward``): on a GPU usually all of them in one
            forward, on a CPU one forward per swap unless the model is small.

    Returns:
        :class:`HeadScores` (axis order in its docstring).
    """
    if mode not in _MODES:
        raise RopeBehaviorError(f"mode={mode!r}; options: {', '.join(map(repr, _MODES))}")
    adapter = adapter_for(model)
    spec = RopeSpec.from_model(adapter.model)
    tokens = validate_tokens(tokens, adapter)
    mask = _validate_mask(attention_mask, tokens)
    block_size = _check_pos_int(block_size, "block_size")
    tau = _check_tau(tau)
    batch_size = (
        adapter.sequences_per_forward(tokens.shape[1], tokens.shape[0])
        if batch_size is None
        else _check_pos_int(batch_size, "batch_size")
    )
    if not isinstance(per_pair, bool):
        raise RopeBehaviorError(f"per_pair={per_pair!r}; expected True or False")
    thr = float(identifiability_threshold)
    chosen = check_indices(layers, spec.n_layers, "layer", f"{spec.n_layers} layers")
    geo = _geometry(
        tokens, mask, exclude_keys, block_size, query_positions, swaps, n_swaps, generator
    )
    projs: list[int | None] = list(range(spec.n_pairs)) if per_pair else [None]
    out = _Out(
        tokens.shape[0], len(chosen), spec.n_heads, len(geo.qpos), len(projs), geo.swaps.shape[0]
    )
    finite = _Finite()
    if mode == "keys":
        li_of = {layer: i for i, layer in enumerate(chosen)}
        stream_layers(
            adapter.model,
            tokens,
            lambda lq: _keys_layer(lq, li_of[lq.layer], geo, spec, projs, tau, out, finite),
            layers=chosen,
            attention_mask=mask,
            spec=spec,
        )
    else:
        _tokens_mode(
            adapter.model, tokens, mask, geo, spec, chosen, projs, tau, out, batch_size, finite
        )
    finite.raise_if_any()
    t = out.t
    squeeze = [d for d, drop in ((4, not per_pair), (3, not geo.has_query_axis)) if drop]
    for k in t:
        for d in squeeze:
            t[k] = t[k].squeeze(d)
    return HeadScores(
        mode=mode,
        layers=chosen,
        heads=spec.n_heads,
        query_positions=tuple(geo.qpos.tolist()),
        has_query_axis=geo.has_query_axis,
        per_pair=per_pair,
        swaps=tuple((int(a), int(c)) for a, c in geo.swaps.tolist()),
        block_size=block_size,
        tau=tau,
        exclude_keys=tuple(
            sorted(
                {
                    int(e)
                    for e in (
                        exclude_keys
                        if isinstance(exclude_keys, Sequence | range)
                        else [exclude_keys]
                    )
                }
            )
        ),
        identifiability_threshold=thr,
        start=geo.start.cpu(),
        identifiable=t["separation"] >= thr,
        **t,
    )
