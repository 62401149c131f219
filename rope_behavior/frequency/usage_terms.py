"""The per-pair logit terms of frequency usage at about the cost of the attention they
measure: one layer's mean ``|c^p_ij|`` per (head, pair) over the attended entries, without
materialising ``[batch, head, dest, src, pair]``.

Queries are taken in chunks of rows ``[a, e)`` against only the keys ``[lo, hi)`` those
rows can attend (causal: about half of the ``dest x src`` square; a sliding window raises
``lo``), all heads at once (query heads grouped by their KV head), so each chunk's
temporary ``|c|`` ``[b, kv, group, rows, keys, pair]`` stays about ``chunk_elems`` values.
The masked sum is a per-row ``[1, keys] @ |c| [keys, pair]`` product (attention weights in
place of the mask when ``attention_weighted``), accumulated over chunks in float64.

Exact: the terms are the products :func:`~rope_behavior.frequency.decomposition.logit_terms`
forms, summed in another order (equal to float32 rounding, tested against it). Non-finite
values are caught without a per-entry check: queries and keys at real tokens are checked,
and the logits themselves only where finite q and k could still overflow.
"""

import math
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.frequency.usage_kernel import masked_abs_sum_compiled

__all__ = ["layer_logit_abs", "layer_pair_norms"]

_HINT = (
    "; per-pair logits of non-finite values are meaningless. Check the model weights, its "
    "dtype (fp16 overflow? try float32) and any hook that edited this layer"
)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _split(x: Tensor, rotary_dim: int, layout: str) -> tuple[Tensor, Tensor]:
    """``[..., d_head]`` -> the pairs' first and second coordinates ``[..., pair]`` (views)."""
    r = x[..., :rotary_dim]
    if layout == "half":
        return r[..., : rotary_dim // 2], r[..., rotary_dim // 2 :]
    if layout == "interleaved":
        return r[..., 0::2], r[..., 1::2]
    raise ValueError(f"pair layout {layout!r} is not one of ['half', 'interleaved']")


def _abs_pl(q0: Tensor, q1: Tensor, k0: Tensor, k1: Tensor) -> Tensor:
    c = q0[:, :, :, :, None, :] * k0[:, :, None, None, :, :]  # [b, kv, g, n, m, p]
    c.addcmul_(q1[:, :, :, :, None, :], k1[:, :, None, None, :, :])
    return c.abs_()


def _masked_abs_sum(q0: Tensor, q1: Tensor, k0: Tensor, k1: Tensor, m_: Tensor) -> Tensor:
    """``sum_ij m_[..., i, j] |c_ij^p|`` for a chunk: per query row the weighted key sum as
    ``[1, keys] @ |c| [keys, pair]`` (a chain of ``keys`` terms only), then a cascade
    ``.sum`` over rows. ``q*`` ``[b, kv, group, rows, pair]``, ``k*`` ``[b, kv, keys, pair]``,
    ``m_`` ``[b, 1 or kv, 1 or group, rows, keys]`` -> ``[b, kv, group, pair]``."""
    c = _abs_pl(q0, q1, k0, k1)
    return torch.matmul(m_[..., None, :], c).sum((-3, -2))


def layer_pair_norms(
    rq: Float[Tensor, "batch pos head d_head"],
    rk: Float[Tensor, "batch pos kv_head d_head"],
    token_mask: Bool[Tensor, "batch pos"],
    rotary_dim: int,
    layout: str,
) -> tuple[Float[Tensor, "head pair"], Float[Tensor, "kv_head pair"]]:
    """Mean per-pair norms of rotated queries / keys over real tokens (``q_norm``,
    ``k_norm`` of ``frequency_usage`` before the KV map), by ``hypot`` of the two
    coordinates: ``split_pairs(x).norm(dim=-1)`` on the strided size-2 axis costs about
    half a forward of the shipped LM by itself."""
    dtype = _compute_dtype(rq)
    w = token_mask.to(rq.device, dtype)[:, :, None, None]
    n_tok = token_mask.sum().clamp_min(1).to(rq.device)
    out = []
    for x in (rq, rk):
        x0, x1 = _split(x.to(dtype), rotary_dim, layout)
        out.append((torch.hypot(x0, x1) * w).sum((0, 1)) / n_tok)
    return out[0], out[1]


def _blocks(
    n_batch: int, n_pos: int, per_entry: int, target: int, min_rows: int
) -> tuple[int, int]:
    """(prompts, query rows) per chunk so that ``prompts * rows * n_pos * per_entry`` (an
    upper bound of the chunk's terms) stays near ``target``; at least ``min_rows`` rows, and
    at most a quarter of the positions: a chunk of rows reads only the keys they attend, so
    four row chunks compute 5/8 of the causal square where one computes all of it (the
    shipped LM's usage: 1.6 ms a layer and batch instead of 2.3)."""
    quarter = max(min_rows, -(-n_pos // 4))
    rows = int(min(n_pos, quarter, max(min_rows, target // max(1, per_entry * n_pos))))
    bb = int(min(n_batch, max(1, target // max(1, per_entry * n_pos * rows))))
    return bb, rows


def layer_logit_abs(
    rq: Float[Tensor, "batch pos head d_head"],
    rk: Float[Tensor, "batch pos kv_head d_head"],
    mask: Bool[Tensor, "batch dest src"],
    kv_map: Sequence[int],
    rotary_dim: int,
    layout: str,
    attn_scale: float,
    attention_weighted: bool,
    logit_softcap: float | None,
    *,
    chunk_elems: int = 1 << 21,
    min_rows: int = 8,
    compiled: bool = False,
) -> tuple[Float[Tensor, "head pair"], Float[Tensor, " head"]]:
    """One layer's ``(logit_abs [head, pair], weight [head])`` as ``frequency_usage``
    computes them (see the module docstring); ``mask`` is ``captured.key_mask(layer)``.
    ``compiled``: sum the terms with the fused kernel of
    :mod:`~rope_behavior.frequency.usage_kernel` (no ``|c|`` in memory, so a chunk counts
    ``[rows, keys, head]`` entries against ``chunk_elems`` instead of ``[..., pair]``)."""
    dtype = _compute_dtype(rq)
    dev = rq.device
    b, n, h, d = rq.shape
    kvh = rk.shape[2]
    if h % kvh:
        raise ValueError(f"{h} query heads do not group over {kvh} KV heads")
    g = h // kvh
    kv_map = tuple(int(x) for x in kv_map)
    grouped = kv_map == tuple(i // g for i in range(h))
    rq = rq.to(dtype)
    rk = rk.to(dtype)
    if not grouped:  # an unusual head -> KV map: expand keys per query head
        rk = rk[:, :, list(kv_map)]
        kvh, g = h, 1
    mask = mask.to(dev)
    # cheap finiteness: queries / keys at real tokens (the mask's diagonal is the token mask)
    real = torch.diagonal(mask, dim1=-2, dim2=-1)  # [batch, pos]
    for x, site in ((rq, "queries"), (rk, "keys")):
        if bool(torch.isfinite(x.sum())):  # all finite (an overflowing sum: checked below)
            continue
        bad = ~torch.isfinite(x) & real[:, :, None, None]
        if bool(bad.any()):
            raise RopeBehaviorError(f"non-finite rotated {site} at an attended position" + _HINT)
    # padding slots take no part (their values may be anything, NaN included): zero them
    if not bool(real.all()):
        rq = torch.where(real[:, :, None, None], rq, 0.0)
        rk = torch.where(real[:, :, None, None], rk, 0.0)

    q0, q1 = _split(rq, rotary_dim, layout)  # [b, n, h, p]
    k0, k1 = _split(rk, rotary_dim, layout)  # [b, n, kv, p]
    p = q0.shape[-1]
    # [b, kv, g, n, p] and [b, kv, n, p]: pairs last, contiguous
    q0 = q0.permute(0, 2, 1, 3).reshape(b, kvh, g, n, p).contiguous()
    q1 = q1.permute(0, 2, 1, 3).reshape(b, kvh, g, n, p).contiguous()
    k0 = k0.permute(0, 2, 1, 3).contiguous()
    k1 = k1.permute(0, 2, 1, 3).contiguous()
    # running totals over chunks in float64 (thousands of chunks: no long float32 chain)
    acc = torch.zeros(b, kvh, g, p, dtype=torch.float64, device=dev)
    wsum = torch.zeros(b, kvh, g, dtype=torch.float64, device=dev)
    # could a logit overflow though q and k are finite? (|q.k| <= max|q| max|k| d_head)
    bound = float(rq.abs().amax()) * float(rk.abs().amax()) * d / attn_scale
    check_logits = not math.isfinite(bound) or bound >= torch.finfo(dtype).max / 4
    if attention_weighted or check_logits:
        # full head dims (passthrough included) for the logits, divided by the scale once
        qf = (rq / attn_scale).permute(0, 2, 1, 3).reshape(b, kvh, g, n, d)
        kf = rk.permute(0, 2, 1, 3)  # [b, kv, n, d]
    bb, rows = _blocks(b, n, h if compiled else h * p, chunk_elems, min_rows)
    kernel = masked_abs_sum_compiled if compiled else _masked_abs_sum
    for b0 in range(0, b, bb):
        b1 = min(b, b0 + bb)
        first_key, end_key = _key_span(mask[b0:b1])  # [n] each, over these prompts
        a = 0
        while a < n:
            e = min(n, a + rows)
            # the rows [a, e) attend keys [lo, hi) only (causal: hi <= e; a sliding window
            # raises lo): read from the mask itself, so any mask is handled exactly
            lo, hi = int(first_key[a:e].min()), int(end_key[a:e].max())
            if hi <= lo:  # no attended entry in these rows
                a = e
                continue
            mk = mask[b0:b1, a:e, lo:hi]  # [bb, rows, keys]
            if attention_weighted or check_logits:
                s = torch.matmul(qf[b0:b1, :, :, a:e], kf[b0:b1, :, None, lo:hi].transpose(-1, -2))
                if check_logits and bool((~torch.isfinite(s) & mk[:, None, None]).any()):
                    raise RopeBehaviorError(
                        "non-finite attention logits among the attended entries" + _HINT
                    )
            if attention_weighted:  # the chunk's rows of the attention pattern
                if logit_softcap is not None:
                    s.div_(logit_softcap).tanh_().mul_(logit_softcap)
                off = ~mk[:, None, None]
                s.masked_fill_(off, float("-inf"))
                w = torch.softmax(s, dim=-1)
                w.masked_fill_(off, 0.0)  # rows with no attended key: NaN -> 0
                wsum[b0:b1] += w.sum((-2, -1), dtype=torch.float64)
                m_ = w
            else:
                m_ = mk[:, None, None].to(dtype)
            acc[b0:b1] += kernel(
                q0[b0:b1, :, :, a:e],
                q1[b0:b1, :, :, a:e],
                k0[b0:b1, :, lo:hi],
                k1[b0:b1, :, lo:hi],
                m_,
            )
            a = e
    acc = acc.sum(0).reshape(h, p) / attn_scale
    if attention_weighted:
        weight = wsum.sum(0).reshape(h)
        logit_abs = acc / weight.clamp_min(1e-30)[:, None]
    else:
        count = mask.sum()
        weight = count.to(torch.float64).expand(h).clone()
        logit_abs = acc / count.clamp_min(1)
    logit_abs, weight = logit_abs.to(dtype), weight.to(dtype)
    if not bool(torch.isfinite(logit_abs).all()) or not bool(torch.isfinite(weight).all()):
        raise RopeBehaviorError("non-finite attention logits among the attended entries" + _HINT)
    return logit_abs, weight


def _key_span(mask: Tensor) -> tuple[Tensor, Tensor]:
    """``[dest]`` twice: the smallest and one past the largest key index any prompt attends
    from row ``i`` (``(i, i)``: none)."""
    n = mask.shape[-1]
    idx = torch.arange(n, device=mask.device)
    m = mask.any(0)  # [dest, src]
    has = m.any(-1)
    first = torch.where(has, m.to(torch.uint8).argmax(-1), idx)
    last = torch.where(has, n - m.flip(-1).to(torch.uint8).argmax(-1), idx)
    return first, last
