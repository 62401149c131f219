"""The exact all-permutations score for a few blocks, beside the swap estimate
(``docs/method.md`` §8).

For the last query of a prompt take its ``k`` blocks nearest the query (end alignment,
:mod:`rope_behavior.scoring.geometry`), with block means ``d`` of the attention row. A
permutation ``pi`` of the blocks moves the key contents of block ``i`` to block
``pi(i)``'s positions (offsets within a block kept; keys mode: unrotated keys rotated at
their destination), giving the row ``D'`` and block means ``d'``. On the blocks it moves,
``M = {i : pi(i) != i}``::

    pos_pi = cos(d'_M, d_M)           (attention follows positions)
    sym_pi = cos(d'_M, (P_pi d)_M)    (attention follows contents: (P_pi d)_pi(i) = d_i)
    alpha  = softmax over pi != id of sum_i |d_i - (P_pi d)_i| / (2 tau)
    s_pos  = sum alpha * pos_pi       s_sym = sum alpha * sym_pi

For a transposition ``(a, c)`` this is the swap term of :func:`score_heads` exactly
(``M = {a, c}``, ``sum |d - P d| / 2 = |d_a - d_c|``): the swap score is this score
restricted to the ``k (k - 1) / 2`` transpositions, the exact score runs over all
``k! - 1`` permutations. Permutations whose moved blocks carry no attention are skipped
(as swaps are). Hooks at the key sites are refused (keys mode reproduces them; this
enumeration does not), and so is a soft-capped row whose every logit is masked.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations, permutations
from typing import Any

import torch
from einops import einsum
from jaxtyping import Bool, Float, Int
from torch import Tensor

from rope_behavior.errors import (
    RopeBehaviorError,
    as_count,
    check_indices,
    validates_inputs,
)
from rope_behavior.model.context import evaluating, resolve
from rope_behavior.model.spec import RopeSpec
from rope_behavior.qk.captured import LayerQK, validate_mask, validate_tokens
from rope_behavior.rope.pairs import rotate
from rope_behavior.scoring.blocks import prompt_blocks, refuse_unscorable, scorable_rows
from rope_behavior.scoring.geometry import excluded_keys, model_bos
from rope_behavior.scoring.key_chain import key_chains
from rope_behavior.scoring.results import HeadScores, paired_frame
from rope_behavior.scoring.rows import Finite, scaled
from rope_behavior.scoring.scorer import ScoreSettings, score_checked
from rope_behavior.scoring.sensitivity import capture_layers

__all__ = ["MAX_BLOCKS", "PermutationScores", "permutation_scores"]

MAX_BLOCKS = 7
"""Most blocks enumerated (7! - 1 = 5039 permutations per row)."""


@dataclass(frozen=True, eq=False)
class PermutationScores:
    """Exact all-permutations scores beside the swap estimate on the same blocks.

    ``s_pos`` / ``s_sym`` ``[prompt, layer, head]``: the exact score (module docstring);
    ``swap`` the :class:`HeadScores` of the same blocks with every block pair swapped
    (``swap.s_pos`` and so on). ``permutations[p]`` ``[perm, block]``: ``pi`` (block ``i``'s
    contents go to block ``permutations[p, i]``), every one but the identity, in
    lexicographic order; ``pos_perm`` / ``sym_perm`` / ``weight`` per permutation (NaN,
    resp. weight 0, where skipped). Blocks are numbered from the query back: block 0 holds
    the ``block_size`` keys before it.
    """

    layers: tuple[int, ...]
    n_heads: int
    block_size: int
    n_blocks: int
    tau: float
    permutations: Int[Tensor, "perm block"] = field(repr=False)
    s_pos: Float[Tensor, "prompt layer head"] = field(repr=False)
    s_sym: Float[Tensor, "prompt layer head"] = field(repr=False)
    pos_perm: Float[Tensor, "prompt layer head perm"] = field(repr=False)
    sym_perm: Float[Tensor, "prompt layer head perm"] = field(repr=False)
    weight: Float[Tensor, "prompt layer head perm"] = field(repr=False)
    swap: HeadScores = field(repr=False)

    @property
    def transpositions(self) -> Bool[Tensor, " perm"]:
        """The permutations that swap exactly two blocks."""
        return (self.permutations != torch.arange(self.n_blocks)).sum(-1) == 2

    def to_frame(self) -> Any:
        """Tidy DataFrame: one row per (prompt, layer, head) with the exact ``s_pos``,
        ``s_sym``, the swap estimate's (``swap_s_pos``, ``swap_s_sym``) and whether the
        row is identifiable (by the swap score's rule)."""
        return paired_frame(self.layers, self.s_pos, self.s_sym, self.swap, "swap")

    def __repr__(self) -> str:
        """A few lines within 80 columns."""
        gap = (self.s_pos - self.s_sym) - (self.swap.s_pos - self.swap.s_sym)
        return (
            f"PermutationScores: {self.s_pos.shape[0]} prompts x {len(self.layers)} layers x "
            f"{self.n_heads} heads\n"
            f"  {self.n_blocks} blocks of {self.block_size}: {len(self.permutations)} "
            f"permutations vs {int(self.transpositions.sum())} swaps, tau={self.tau:g}\n"
            f"  |exact - swap| of s_pos - s_sym: mean {float(gap.abs().nanmean()):.3g}, "
            f"max {float(gap.abs().nan_to_num(0.0).max()):.3g}"
        )


def _block_positions(
    tokens: Tensor, mask: Tensor | None, excluded: Tensor, b: int, n_blocks: int | None
) -> tuple[Tensor, Tensor, int]:
    """Each prompt's last query ``[B]``, the positions of its ``k`` blocks nearest the query
    ``[B, k, b]`` and ``k``."""
    pb = prompt_blocks(tokens, mask, excluded, b, "last", "end")
    refuse_unscorable(pb, scorable_rows(pb))
    have = int(pb.m[:, 0].min())
    k = min(have, MAX_BLOCKS) if n_blocks is None else as_count(n_blocks, "n_blocks", low=2)
    if k > have or k > MAX_BLOCKS:
        raise RopeBehaviorError(
            f"n_blocks={n_blocks}: the exact score enumerates all k! permutations and needs "
            f"2 <= k <= {MAX_BLOCKS} blocks that every prompt has before its last token "
            f"({have} here); pass a smaller n_blocks or a larger block_size"
        )
    pos = pb.starts[:, 0, :k, None] + torch.arange(b, device=tokens.device)
    return pb.qpos[:, 0], pos, k


def _layer_perm(
    lq: LayerQK,
    spec: RopeSpec,
    qpos: Tensor,
    pos: Tensor,
    allowed: Tensor,
    perms: Tensor,
    tau: float,
    finite: Finite,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-permutation ``pos``, ``sym`` and weight of every head of one layer:
    ``[B, H, perm]`` each."""
    layer, dt = lq.layer, torch.float64
    dev = lq.rot_q.device
    bsz, k, b = pos.shape
    bi = torch.arange(bsz, device=dev)
    kv = torch.tensor(spec.kv_map, device=dev)
    scale, cap = spec.attn_scales[layer], spec.logit_softcaps[layer]
    q = lq.rot_q[bi, qpos].to(dt)  # [B, H, D]
    n = lq.rot_k.shape[1]
    j = torch.arange(n, device=dev)
    ok = allowed & (j <= qpos[:, None])
    window = spec.sliding_windows[layer]
    if window is not None:
        ok = ok & (j > qpos[:, None] - window)
    l0 = scaled(einsum(q, lq.rot_k.to(dt)[:, :, kv], "b h d, b j h d -> b h j"), scale, cap,
                layer, finite).masked_fill(~ok[:, None], -math.inf)  # fmt: skip
    top = l0.amax(-1, keepdim=True)
    e0 = torch.exp(l0 - top)
    z0 = e0.sum(-1)  # [B, H]
    flat = pos.reshape(bsz, -1)
    e_blk = torch.gather(e0, 2, flat[:, None].expand(-1, e0.shape[1], -1)).unflatten(-1, (k, b))
    others = (z0 - e_blk.sum((-1, -2))).clamp_min(0.0)
    d = e_blk.mean(-1) / z0[..., None]  # [B, H, k]
    # content of block i (offset t) rotated at block j (offset t): logits [B, H, i, j, t]
    raw = lq.k.to(dt)[bi[:, None], flat].unflatten(1, (k, b))  # [B, i, t, KV, D]
    cos = lq.cos.to(dt)[bi[:, None], flat].unflatten(1, (k, b))  # [B, j, t, P]
    sin = lq.sin.to(dt)[bi[:, None], flat].unflatten(1, (k, b))
    x = raw[:, :, None].expand(-1, -1, k, -1, -1, -1)
    lead = x.shape[:4]
    rk = rotate(
        x.reshape(1, -1, *x.shape[-2:]),
        cos[:, None].expand(*lead, -1).reshape(-1, cos.shape[-1]),
        sin[:, None].expand(*lead, -1).reshape(-1, sin.shape[-1]),
        spec.pair_layout,
    ).reshape(*lead, *x.shape[-2:])[..., kv, :]
    table = scaled(einsum(q, rk, "b h d, b i j t h d -> b h i j t"), scale, cap, layer, finite)
    ok_blk = torch.gather(ok, 1, flat).reshape(bsz, 1, 1, k, b)
    inv = torch.argsort(perms, dim=-1)  # inv[p, j]: the block whose contents land at j
    pos_out, sym_out, w_out = [], [], []
    for chunk in torch.split(torch.arange(len(perms), device=dev), 512):
        ip = inv[chunk]  # [p, k]
        # new logits at block j, offset t: table[inv(j), j, t] -> [B, H, p, k, b]
        jj = torch.arange(k, device=dev).expand_as(ip)
        l_new = table[:, :, ip, jj].masked_fill(~ok_blk, -math.inf)
        shift = torch.maximum(top, l_new.amax((-1, -2)))  # [B, H, p]
        e_new = torch.exp(l_new - shift[..., None, None])
        z_new = others[..., None] * torch.exp(top - shift) + e_new.sum((-1, -2))
        d_new = e_new.mean(-1) / z_new[..., None]  # [B, H, p, k]
        target = d[:, :, ip]  # (P_pi d)_j = d_{inv(j)}
        moved = (ip != torch.arange(k, device=dev)).to(dt)  # [p, k]
        dm, nm, tm = d[:, :, None] * moved, d_new * moved, target * moved
        vn = dm.norm(dim=-1)
        den = vn * nm.norm(dim=-1)
        safe = torch.where(den > 0, den, 1.0)
        pos_out.append(torch.where(den > 0, (dm * nm).sum(-1) / safe, 0.0).clamp(0.0, 1.0))
        sym_out.append(torch.where(den > 0, (tm * nm).sum(-1) / safe, 0.0).clamp(0.0, 1.0))
        w_out.append(torch.where(vn > 0, (dm - tm).abs().sum(-1) / (2 * tau), -math.inf))
    logit_w = torch.cat(w_out, -1)
    has = torch.isfinite(logit_w).any(-1, keepdim=True)
    w = torch.where(has, torch.softmax(logit_w.masked_fill(~has, 0.0), -1), 0.0)
    w = torch.where(torch.isfinite(logit_w), w, 0.0)
    return torch.cat(pos_out, -1), torch.cat(sym_out, -1), w


@validates_inputs
def permutation_scores(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    *,
    block_size: int = 8,
    n_blocks: int | None = None,
    tau: float = 0.05,
    layers: int | Sequence[int] | None = None,
    exclude_keys: str | int | Sequence[int | str] = "auto",
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> PermutationScores:
    """The exact all-permutations score of every head over a prompt's ``n_blocks`` blocks
    nearest its last token, and the swap estimate (every block pair) on the same blocks,
    from one forward.

    Args:
        model: as for :func:`~rope_behavior.score_heads` (keys mode).
        tokens: ``[prompt, pos]`` token ids.
        block_size: keys per block.
        n_blocks: blocks enumerated, 2 to 7 (default: as many as every prompt has, at
            most 7); the keys before them do not move.
        tau: temperature of the permutation weights (module docstring).
        layers: layer indices (default: all).
        exclude_keys: as for :func:`~rope_behavior.score_heads`.
        attention_mask: ``[prompt, pos]`` 0/1 mask for prompts of different lengths.

    Returns:
        :class:`PermutationScores`.
    """
    settings = ScoreSettings(block_size=block_size, tau=tau, exclude_keys=exclude_keys)
    context = resolve(model)
    adapter, spec = context.adapter, context.spec
    tokens = validate_tokens(tokens, adapter)
    mask = validate_mask(attention_mask, tokens)
    chosen = check_indices(layers, spec.n_layers, "layer", f"{spec.n_layers} layers")
    if key_chains(adapter, spec, chosen):
        raise RopeBehaviorError(
            "hooks sit at the key sites of the layers scored; the exact permutation score "
            "rotates the model's keys without them. Remove the hooks, or use score_heads"
        )
    excluded = excluded_keys(tokens, settings.exclude_keys, model_bos(adapter))
    qpos, pos, k = _block_positions(tokens, mask, excluded, settings.block_size, n_blocks)
    allowed = ~excluded & (mask.bool() if mask is not None else torch.ones_like(excluded))
    perms = torch.tensor(list(permutations(range(k)))[1:], dtype=torch.long)
    pairs = list(combinations(range(k), 2))
    finite = Finite()
    out: list[tuple[Tensor, Tensor, Tensor]] = []
    with evaluating(context.model):
        captured = capture_layers(context, tokens, mask, chosen)
        swap_settings = ScoreSettings(
            block_size=settings.block_size, tau=settings.tau, exclude_keys=exclude_keys,
            swaps=pairs,
        )  # fmt: skip
        swap = score_checked(context, tokens, mask, chosen, swap_settings, captured=captured)
        for lq in captured:
            dev = lq.rot_q.device
            res = _layer_perm(
                lq, spec, qpos.to(dev), pos.to(dev), allowed.to(dev), perms.to(dev),
                settings.tau, finite,
            )  # fmt: skip
            out.append(tuple(r.cpu() for r in res))  # type: ignore[arg-type]
    finite.raise_if_any()
    pos_p, sym_p, w = (torch.stack([o[i] for o in out], 1) for i in range(3))
    nan = torch.tensor(math.nan, dtype=torch.float64)
    used = w > 0
    any_used = used.any(-1)
    return PermutationScores(
        layers=chosen,
        n_heads=spec.n_heads,
        block_size=settings.block_size,
        n_blocks=k,
        tau=settings.tau,
        permutations=perms,
        s_pos=torch.where(any_used, (w * pos_p).sum(-1), nan),
        s_sym=torch.where(any_used, (w * sym_p).sum(-1), nan),
        pos_perm=torch.where(used, pos_p, nan),
        sym_perm=torch.where(used, sym_p, nan),
        weight=w,
        swap=swap,
    )
