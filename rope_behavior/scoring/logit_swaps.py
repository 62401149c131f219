"""A logit-based positional / symbolic score (``docs/method.md`` §8).

The swap construction of :func:`~rope_behavior.score_heads` (keys mode, each prompt's
last token), with the outcome of a swap read on the attention *logits* (the scores the
softmax sees: scaled, soft-capped where the model caps) instead of the attention weights.
For a swap ``(a, c)`` of two blocks of ``b`` keys, ``u = (l_a, l_c)`` holds the ``2b``
original logits of the keys of blocks ``a`` and ``c``, ``u'`` the logits at the same
positions after the swap, and ``u^f = (l_c, l_a)`` the original logits with the blocks
traded (what a purely symbolic head would give: each content keeps its logit). Then::

    delta_pos = |u' - u|      the logits' change, positions fixed, contents moved
    delta_sym = |u' - u^f|    each content's change when moved, content fixed
    sep       = |u - u^f|     how far apart the two hypotheses are
    pos_swap  = max(0, 1 - delta_pos / sep)     sym_swap = max(0, 1 - delta_sym / sep)

``delta_pos`` and ``delta_sym`` are the exclusion principle's residuals restricted to one
swap (:mod:`rope_behavior.scoring.exclusion`), and the triangle inequality ``sep <=
delta_pos + delta_sym`` gives ``pos_swap + sym_swap <= 1``: no head is both unless the two
blocks' logits are equal. A purely positional head scores ``(1, 0)``, a purely symbolic
one ``(0, 1)``, a head whose logits follow neither ``(0, 0)``; ``pos_swap - sym_swap`` has
the sign of ``delta_sym - delta_pos`` (0 when both reach ``sep``). Distances are unchanged
by a constant added to every logit of the row, which the softmax ignores, and ``sep``
makes them free of the head's logit scale. The swap weights are the softmax score's
(``alpha``, from the attention's block means), so the two scores weigh the same swaps and
differ only in what a swap's outcome is measured on. Keys that are not attended at both
of their positions (sliding window) are left out; a swap with ``sep = 0`` is skipped.

Two options bring it toward what the softmax score reads. ``weighting="attention"``
weighs each key's squared logit change by the mean of the original attention at its
position and at its content's source (to first order the attention moves by
``D_j (eps_j - sum_k D_k eps_k)`` for logit changes ``eps``: keys the head ignores do not
move it). ``resolution="block"`` compares each block's (weighted) mean logit, the 2-vectors
the softmax score compares in attention. The defaults (``"uniform"``, ``"key"``) read every
key's logit alike: the theory's quantity (``docs/method.md`` §8 has the shipped LM's
comparison).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from einops import einsum
from jaxtyping import Float, Int
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, as_generator, check_indices, validates_inputs
from rope_behavior.model.context import evaluating, resolve
from rope_behavior.model.spec import RopeSpec
from rope_behavior.qk.captured import LayerQK, validate_mask, validate_tokens
from rope_behavior.scoring.geometry import Geometry, block_geometry, excluded_keys, model_bos
from rope_behavior.scoring.head_classes import is_identifiable
from rope_behavior.scoring.key_chain import KeyChain, key_chains, moved_keys, read_chain
from rope_behavior.scoring.results import HeadScores, paired_frame
from rope_behavior.scoring.rows import Finite, scaled
from rope_behavior.scoring.scorer import ScoreSettings, score_checked
from rope_behavior.scoring.sensitivity import capture_layers

__all__ = ["LogitScores", "logit_scores"]

_WEIGHTINGS = ("uniform", "attention")
_RESOLUTIONS = ("key", "block")


@dataclass(frozen=True, eq=False)
class LogitScores:
    """Logit-based scores per prompt, beside the softmax scores of the same swaps.

    ``s_pos`` / ``s_sym`` ``[prompt, layer, head]`` (module docstring); per swap
    ``pos_swap``, ``sym_swap``, ``delta_pos``, ``delta_sym``, ``separation`` (``sep``, in
    logit units) and ``weight`` (the softmax score's ``alpha``, renormalised over the
    swaps used; 0 for a skipped swap). ``softmax``: the :class:`HeadScores` of
    ``score_heads`` at the same settings (its ``identifiable`` rows are the ones the
    comparison in :meth:`head_frame` trusts).
    """

    layers: tuple[int, ...]
    n_heads: int
    block_size: int
    tau: float
    weighting: str
    resolution: str
    swaps: tuple[tuple[int, int], ...]
    s_pos: Float[Tensor, "prompt layer head"] = field(repr=False)
    s_sym: Float[Tensor, "prompt layer head"] = field(repr=False)
    pos_swap: Float[Tensor, "prompt layer head swap"] = field(repr=False)
    sym_swap: Float[Tensor, "prompt layer head swap"] = field(repr=False)
    delta_pos: Float[Tensor, "prompt layer head swap"] = field(repr=False)
    delta_sym: Float[Tensor, "prompt layer head swap"] = field(repr=False)
    separation: Float[Tensor, "prompt layer head swap"] = field(repr=False)
    weight: Float[Tensor, "prompt layer head swap"] = field(repr=False)
    softmax: HeadScores = field(repr=False)

    def to_frame(self) -> Any:
        """Tidy DataFrame: one row per (prompt, layer, head): the logit ``s_pos``,
        ``s_sym``, the softmax ones (``softmax_s_pos``, ``softmax_s_sym``) and
        ``identifiable`` (the softmax row's)."""
        return paired_frame(self.layers, self.s_pos, self.s_sym, self.softmax, "softmax")

    def head_frame(self) -> Any:
        """One row per (layer, head): means over prompts of the logit and softmax
        ``s_pos - s_sym`` (``logit_difference``, ``softmax_difference``), the softmax
        rows' ``identifiable_fraction``, ``identifiable`` (at least half of them) and
        ``same_sign`` (the two differences have one sign)."""
        df = self.to_frame()
        df["logit_difference"] = df["s_pos"] - df["s_sym"]
        df["softmax_difference"] = df["softmax_s_pos"] - df["softmax_s_sym"]
        out = (
            df.groupby(["layer", "head"], sort=True)
            .agg(
                logit_difference=("logit_difference", "mean"),
                softmax_difference=("softmax_difference", "mean"),
                identifiable_fraction=("identifiable", "mean"),
            )
            .reset_index()
        )
        out["identifiable"] = is_identifiable(out["identifiable_fraction"])
        out["same_sign"] = np.sign(out["logit_difference"]) == np.sign(out["softmax_difference"])
        return out

    def __repr__(self) -> str:
        """A few lines within 80 columns."""
        hf = self.head_frame()
        ident = hf[hf["identifiable"]]
        return (
            f"LogitScores: {self.s_pos.shape[0]} prompts x {len(self.layers)} layers x "
            f"{self.n_heads} heads\n"
            f"  block_size={self.block_size}, tau={self.tau:g}, {len(self.swaps)} swaps, "
            f"weighting={self.weighting!r}, resolution={self.resolution!r}\n"
            f"  sign of s_pos - s_sym as the softmax score's: {int(ident['same_sign'].sum())} "
            f"of {len(ident)} identifiable heads"
        )


def _layer_logits(
    lq: LayerQK,
    geo: Geometry,
    spec: RopeSpec,
    chain: KeyChain | None,
    finite: Finite,
    weighting: str,
    resolution: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """``delta_pos``, ``delta_sym`` and ``sep`` of every head and swap: ``[B, H, S]``."""
    layer = lq.layer
    dt = torch.float64 if lq.rot_q.dtype == torch.float64 else torch.float32
    dev = lq.rot_q.device
    kv = torch.tensor(spec.kv_map, device=dev)
    scale, cap = spec.attn_scales[layer], spec.logit_softcaps[layer]
    bsz = lq.rot_q.shape[0]
    bi = torch.arange(bsz, device=dev)
    q = lq.rot_q[bi, geo.qpos[:, 0].to(dev)].to(dt)  # [B, H, D]
    l0 = scaled(einsum(q, lq.rot_k.to(dt)[:, :, kv], "b h d, b j h d -> b h j"), scale, cap,
                layer, finite)  # fmt: skip
    dst, src = geo.dst[:, 0].to(dev), geo.src[:, 0].to(dev)  # [B, S, 2b]
    n_h = l0.shape[1]

    def at(x: Tensor, idx: Tensor) -> Tensor:
        flat = idx.reshape(bsz, 1, -1).expand(-1, n_h, -1)
        return torch.gather(x, 2, flat).reshape(bsz, n_h, *idx.shape[1:])

    u, u_f = at(l0, dst), at(l0, src)
    columns = None if chain is None else read_chain(chain, lq, spec)
    k_new = moved_keys(lq, geo, spec, chain, dt, columns)[:, 0][..., kv, :]  # [B, S, 2b, H, D]
    u_new = scaled(einsum(q, k_new, "b h d, b s t h d -> b h s t"), scale, cap, layer, finite)
    ok = geo.rows_allowed(torch.zeros(1, dtype=torch.long), spec.sliding_windows[layer])
    ok = ok[:, 0].to(dev)  # [B, N]
    both = torch.gather(ok, 1, dst.flatten(1)) & torch.gather(ok, 1, src.flatten(1))
    wk = both.reshape(bsz, 1, *dst.shape[1:]).to(u.dtype)  # [B, 1, S, 2b] key weights
    if weighting == "attention":  # attention of the key's position and of its content's source
        att = torch.softmax(l0.masked_fill(~ok[:, None], -math.inf), -1)
        wk = wk * (at(att, dst) + at(att, src)) / 2
    if resolution == "block":  # (weighted) mean logit of each block: 2-vectors, equal weights
        b = geo.block_size
        tot = wk.unflatten(-1, (2, b)).sum(-1)
        safe = torch.where(tot > 0, tot, 1.0)
        u, u_f, u_new = ((x * wk).unflatten(-1, (2, b)).sum(-1) / safe for x in (u, u_f, u_new))
        wk = (tot > 0).to(u.dtype)
    r = wk.sqrt()
    return (
        ((u_new - u) * r).norm(dim=-1),
        ((u_new - u_f) * r).norm(dim=-1),
        ((u - u_f) * r).norm(dim=-1),
    )


@validates_inputs
def logit_scores(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    *,
    block_size: int = 8,
    tau: float = 0.05,
    n_swaps: int | str | None = "auto",
    layers: int | Sequence[int] | None = None,
    exclude_keys: str | int | Sequence[int | str] = "auto",
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    seed: int | torch.Generator = 0,
    weighting: str = "uniform",
    resolution: str = "key",
) -> LogitScores:
    """Logit-based positional / symbolic scores of every head (module docstring), with
    the softmax scores of the same swaps, from one forward.

    Args:
        model: as for :func:`~rope_behavior.score_heads` (keys mode, each prompt's last
            token).
        tokens: ``[prompt, pos]`` token ids.
        block_size: keys per block.
        tau: temperature of the swap weights (the softmax score's ``alpha``).
        n_swaps: as for :func:`~rope_behavior.score_heads`.
        layers: layer indices (default: all).
        exclude_keys: as for :func:`~rope_behavior.score_heads`.
        attention_mask: ``[prompt, pos]`` 0/1 mask for prompts of different lengths.
        seed: an int or a ``torch.Generator``: draws the swaps where ``n_swaps`` asks for
            fewer than there are.
        weighting: ``"uniform"`` (every key of the two blocks counts alike) or
            ``"attention"`` (each key's squared logit change weighted by the mean of the
            original attention at its position and at its content's source position).
        resolution: ``"key"`` (the ``2b`` logits of the two blocks) or ``"block"`` (each
            block's mean logit, weighted as ``weighting`` says: the 2-vectors the softmax
            score compares, in logits).

    Returns:
        :class:`LogitScores`.
    """
    settings = ScoreSettings(block_size=block_size, tau=tau, n_swaps=n_swaps,
                             exclude_keys=exclude_keys)  # fmt: skip
    for name, value, options in (("weighting", weighting, _WEIGHTINGS),
                                 ("resolution", resolution, _RESOLUTIONS)):  # fmt: skip
        if value not in options:
            raise RopeBehaviorError(f"{name}={value!r}; options: {', '.join(map(repr, options))}")
    context = resolve(model)
    adapter, spec = context.adapter, context.spec
    generator = as_generator(seed)
    tokens = validate_tokens(tokens, adapter)
    mask = validate_mask(attention_mask, tokens)
    chosen = check_indices(layers, spec.n_layers, "layer", f"{spec.n_layers} layers")
    finite = Finite()
    with evaluating(context.model):
        captured = capture_layers(context, tokens, mask, chosen)
        soft = score_checked(context, tokens, mask, chosen, settings, generator, captured=captured)
        excluded = excluded_keys(tokens, settings.exclude_keys, model_bos(adapter))
        geo = block_geometry(tokens, mask, excluded, settings.block_size, "last", soft.swaps,
                             None, None, "end")  # fmt: skip
        chains = key_chains(adapter, spec, chosen)
        per_layer = [
            tuple(
                x.double().cpu()
                for x in _layer_logits(
                    lq, geo, spec, chains.get(lq.layer), finite, weighting, resolution
                )
            )
            for lq in captured
        ]
    finite.raise_if_any()
    d_pos, d_sym, sep = (torch.stack([r[i] for r in per_layer], 1) for i in range(3))
    used = (soft.swap_weight > 0) & (sep > 0)
    w = torch.where(used, soft.swap_weight, 0.0)
    total = w.sum(-1, keepdim=True)
    w = torch.where(total > 0, w / torch.where(total > 0, total, 1.0), 0.0)
    safe = torch.where(sep > 0, sep, 1.0)
    nan = torch.tensor(math.nan, dtype=torch.float64)
    pos = torch.where(used, (1 - d_pos / safe).clamp_min(0.0), nan)
    sym = torch.where(used, (1 - d_sym / safe).clamp_min(0.0), nan)
    any_used = used.any(-1)
    return LogitScores(
        layers=chosen,
        n_heads=spec.n_heads,
        block_size=settings.block_size,
        tau=settings.tau,
        weighting=weighting,
        resolution=resolution,
        swaps=soft.swaps,
        s_pos=torch.where(any_used, (w * pos.nan_to_num(0.0)).sum(-1), nan),
        s_sym=torch.where(any_used, (w * sym.nan_to_num(0.0)).sum(-1), nan),
        pos_swap=pos,
        sym_swap=sym,
        delta_pos=d_pos,
        delta_sym=d_sym,
        separation=sep,
        weight=w,
        softmax=soft,
    )
