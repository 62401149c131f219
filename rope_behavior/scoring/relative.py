"""Keys mode for many queries: the swapped logits in RoPE's relative form.

Under end alignment the blocks of a swap lie at the same offsets back from every query
(``Geometry.offsets``), and RoPE is relative. Moving the key of position ``src`` to
``dst`` and rotating it there is the key the model already rotated at ``src``, turned on
by the angle ``theta(dst) - theta(src)``:

    q_n . R(dst) k(src) = (R(theta(dst) - theta(src))^T q_n) . R(src) k(src)

When the layer's table turns by a fixed angle per position (every RoPE variant's angle is
``omega * position``; checked per layer), that angle is the same for every key of a block
half and for every query. So each query is turned back once per (swap, half), and a run of
``Q`` consecutive queries reads one window of ``Q + b - 1`` of the model's rotated keys per
(swap, half): one small matrix product, where rotating each moved key gathers and rotates
``2b`` keys per query and swap (``[batch, query, swap, 2b, head, d_head]``).

It equals rotating each moved key to within the rounding of the model's own table and
rotated keys (read here at the two ends of the move rather than at the destination alone):
about ``eps * omega * position`` in angle (3e-5 rad for the fastest pair of an fp32 table at
position 256). Scores then agree within 1e-5 in float32; in low precision the two forms
differ by the model's own rounding (8 bits in bfloat16, 11 in float16): within 1e-2 in
bfloat16 and 2e-3 in float16. Measured on every family of ``tests/models.py`` (40
positions, block 4, every query; ``tests/scoring/test_behavior_relative.py``): at most
4.2e-7 in float32 (45 families), 5.1e-3 in bfloat16 and 7.2e-4 in float16 (41 families:
OLMo 1-3 and FlexOlmo do not run in half precision; granite_moe the largest, llama_gqa
6.1e-4 and 8.7e-5). A layer whose table is not a steady rotation to that precision (a jump
in its position ids, a non-rotation table) is scored the other way: :func:`relative_swaps`
returns ``None``.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from rope_behavior.model.spec import RopeSpec
from rope_behavior.qk.captured import LayerQK
from rope_behavior.rope.pairs import split_pairs
from rope_behavior.scoring.geometry import Geometry

__all__ = ["RelativeSwaps", "relative_dots", "relative_swaps"]

RUN = 16  # consecutive queries sharing one key window (the fastest of 4-128 in bench (b))


@dataclass(frozen=True, eq=False)
class RelativeSwaps:
    """One layer's moved keys in the relative form. ``C = 2 * n_swaps`` (swap, half)
    pairs: half 0 lands on block ``a`` (content from ``c``), half 1 on ``c``. The turn of
    each (swap, half) is stored per head dim: ``x -> x * cos + x[partner] * sin`` is the
    rotation of every pair (sign folded into ``sin``; dims outside the rotary slice keep
    ``cos = 1``, ``sin = 0``)."""

    keys: Tensor  # [B * H, N, D] the model's rotated keys, one row per (prompt, query head)
    cos: Tensor  # [B, C, D] the inverse turn of each (swap, half), for the queries
    sin: Tensor  # [B, C, D]
    partner: Tensor  # [D] the other dim of each dim's pair (itself outside the rotary slice)
    pair_dims: Tensor  # [P, 2] the two head dims of each pair
    src_off: Tensor  # [C, b] key positions read: query - src_off
    steps: tuple[bool, ...]  # query i follows query i - 1 by one position in every prompt


def _steady(cos: Tensor, sin: Tensor, used: Tensor, table_dtype: torch.dtype) -> bool:
    """Whether the table turns by a fixed angle per position, at a fixed magnitude, over
    the positions ``used`` [B, N] (to the rounding of a table of this dtype)."""
    mag = torch.sqrt(cos**2 + sin**2)
    c1, s1, c0, s0 = cos[:, 1:], sin[:, 1:], cos[:, :-1], sin[:, :-1]
    m = (mag[:, 1:] * mag[:, :-1]).clamp_min(1e-300)
    step_c, step_s = (c1 * c0 + s1 * s0) / m, (s1 * c0 - c1 * s0) / m  # [B, N - 1, P]
    pair = used[:, 1:] & used[:, :-1]
    if not bool(pair.any()):
        return True
    first = pair.int().argmax(1)
    bi = torch.arange(cos.shape[0], device=cos.device)
    ref_c, ref_s = step_c[bi, first][:, None], step_s[bi, first][:, None]
    ref_m = mag[bi, first][:, None]
    omega = torch.atan2(ref_s, ref_c).abs().amax()
    angle_eps = torch.finfo(torch.float64 if table_dtype == torch.float64 else torch.float32).eps
    tol = 8 * (angle_eps * float(omega) * cos.shape[1] + torch.finfo(table_dtype).eps)
    turn = torch.sqrt((step_c - ref_c) ** 2 + (step_s - ref_s) ** 2)
    size = (mag - ref_m).abs() / ref_m.clamp_min(1e-300)
    ok = (turn <= tol) | ~pair[..., None]
    return bool(ok.all()) and bool(((size <= tol) | ~used[..., None]).all())


def relative_swaps(
    lq: LayerQK, geo: Geometry, spec: RopeSpec, dt: torch.dtype
) -> RelativeSwaps | None:
    """The relative form of one layer's swaps, or ``None`` where it does not apply (blocks
    not at fixed offsets from the queries, or a table that is not a steady rotation)."""
    if geo.offsets is None:
        return None
    bsz, n = lq.rot_k.shape[:2]
    dev = lq.rot_k.device
    cos, sin = lq.cos.double(), lq.sin.double()  # [B, N, P]: each prompt's own tables
    qpos = geo.qpos.to(dev)
    if not _steady(cos, sin, geo.allowed.to(dev), lq.cos.dtype):  # the keys that may move
        return None
    b = geo.block_size
    dst_off = geo.offsets.to(dev)  # [S, 2b]
    src_off = torch.cat([dst_off[:, b:], dst_off[:, :b]], 1)
    top = qpos.amax(1)  # every swap is valid at each prompt's largest query
    d = (top[:, None, None] - dst_off[None, :, ::b]).clamp(0, n - 1)  # [B, S, 2]
    s = (top[:, None, None] - src_off[None, :, ::b]).clamp(0, n - 1)
    bi = torch.arange(bsz, device=dev)[:, None, None]
    cd, sd, cs, ss = cos[bi, d], sin[bi, d], cos[bi, s], sin[bi, s]  # [B, S, 2, P]
    m = (torch.sqrt(cd**2 + sd**2) * torch.sqrt(cs**2 + ss**2)).clamp_min(1e-300)
    turn_c, turn_s = (cd * cs + sd * ss) / m, (sd * cs - cd * ss) / m
    steps = (qpos[:, 1:] - qpos[:, :-1] == 1).all(0).tolist()
    d_head = lq.rot_k.shape[-1]
    dims = torch.arange(spec.rotary_dim, dtype=torch.float64, device=dev)
    pair_dims = split_pairs(dims, spec.pair_layout).long()  # [P, 2]
    partner = torch.arange(d_head, device=dev)
    partner[pair_dims[:, 0]], partner[pair_dims[:, 1]] = pair_dims[:, 1], pair_dims[:, 0]
    c_t, s_t = turn_c.flatten(1, 2), -turn_s.flatten(1, 2)  # the inverse turn, [B, C, P]
    cos_d = torch.ones(bsz, c_t.shape[1], d_head, dtype=torch.float64, device=dev)
    sin_d = torch.zeros_like(cos_d)
    for j in (0, 1):  # rotated pair: (x0 c - x1 s, x1 c + x0 s)
        cos_d[..., pair_dims[:, j]] = c_t
        sin_d[..., pair_dims[:, j]] = s_t if j == 1 else -s_t
    kv = torch.tensor(spec.kv_map, device=dev)
    keys = lq.rot_k.to(dt)[:, :, kv].transpose(1, 2).reshape(bsz * len(kv), n, d_head)
    return RelativeSwaps(
        keys=keys,
        cos=cos_d.to(dt),
        sin=sin_d.to(dt),
        partner=partner,
        pair_dims=pair_dims,
        src_off=src_off.unflatten(1, (2, b)).flatten(0, 1),
        steps=(False, *steps),
    )


def _runs(qi: list[int], steps: tuple[bool, ...], size: int) -> list[list[int]]:
    """``qi`` cut into runs of consecutive positions, each at most ``size`` long."""
    out: list[list[int]] = []
    for i in qi:
        if out and steps[i] and out[-1][-1] == i - 1 and len(out[-1]) < size:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def relative_dots(
    rs: RelativeSwaps,
    q: Tensor,
    qi: Tensor,
    qpos: Tensor,
    proj: int | None,
) -> Tensor:
    """``[B, H, q, S, 2b]`` dot products of the chunk's queries ``q`` [B, q, H, D]
    (query indices ``qi``, positions ``qpos`` [B, q]) with their moved keys; with ``proj``
    only pair ``proj`` counts."""
    bsz, nq, h, _ = q.shape
    c_n, b = rs.src_off.shape
    dev = q.device
    qh = q.transpose(1, 2)  # [B, H, q, D]
    keys, cos, sin, partner = rs.keys, rs.cos, rs.sin, rs.partner
    if proj is not None:  # only pair ``proj``: its two dims
        dims = rs.pair_dims[proj]
        qh, keys, cos, sin = qh[..., dims], keys[..., dims], cos[..., dims], sin[..., dims]
        partner = torch.tensor([1, 0], device=dev)
    cos, sin = cos[:, None, :, None], sin[:, None, :, None]  # [B, 1, C, 1, d]
    hi, lo = rs.src_off.amax(1), rs.src_off.amin(1)  # [C]
    span = int((hi - lo).max())
    size = RUN
    out = q.new_empty(bsz, h, c_n, nq, b)
    rows_of = (torch.arange(bsz, device=dev)[:, None] * h + torch.arange(h, device=dev))[
        :, :, None, None
    ]  # [B, H, 1, 1]: the row of rs.keys
    local = {int(i): r for r, i in enumerate(qi.tolist())}
    for run in _runs(list(local), rs.steps, size):
        r0, length = local[run[0]], len(run)
        p0 = qpos[:, r0]  # [B]
        q_run = qh[:, :, r0 : r0 + length]  # [B, H, r, d]
        turned = torch.addcmul(q_run[:, :, None] * cos, q_run[..., partner][:, :, None], sin)
        w = torch.arange(length + span, device=dev)
        where = (p0[:, None, None] - hi[None, :, None] + w).clamp(0, keys.shape[1] - 1)
        window = keys[rows_of, where[:, None]]  # [B, H, C, w, d]
        prod = torch.matmul(turned, window.transpose(-1, -2))  # [B, H, C, r, w]
        col = torch.arange(length, device=dev)[:, None] + (hi[:, None] - rs.src_off)[:, None]
        out[:, :, :, r0 : r0 + length] = torch.gather(
            prod, -1, col[None, None].expand(bsz, h, -1, -1, -1)
        )
    return out.transpose(2, 3).reshape(bsz, h, nq, c_n // 2, 2 * b)
