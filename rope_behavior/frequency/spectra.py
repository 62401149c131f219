"""Per-pair spectral entropy (docs/method.md §9): how the norm of each RoPE pair of a
head's queries (and keys) varies along the positions of a prompt.

For one prompt and one (layer, head, pair), take the pair's norm ``x_t = ||q~_t^p||`` at
the prompt's real tokens in order (padding left out, and the first ``skip`` of them),
remove its mean (the DC term), and take the power spectrum ``P_k = |rfft(x - mean)|_k^2``
over the ``K = n // 2`` non-DC bins ``k = 1 .. n // 2`` (a rectangular window). The
normalised spectral entropy is

    H = - sum_k p_k log p_k / log K,     p_k = P_k / sum_k P_k,

in ``[0, 1]``: 0 when all the variation is at one frequency, 1 when it is spread evenly
(white noise). It is undefined (NaN) for a prompt of fewer than 4 tokens (``K < 2``) and
for a norm that does not vary (standard deviation at most ``1e-5`` times its mean, the
float32 rounding of a rotation): there is no spectrum to spread. The per-prompt values
are averaged over the prompts where they are defined.
"""

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, as_int, check_indices, validates_inputs
from rope_behavior.frequency.usage import FrequencyUsage
from rope_behavior.qk.captured import Captured
from rope_behavior.rope.pairs import split_pairs

__all__ = ["PairSpectra", "pair_spectra", "spectral_entropy"]

STILL_RTOL = 1e-5  # a norm whose std is at most this times its mean does not vary


@validates_inputs
def spectral_entropy(x: Float[Tensor, "*shape pos"]) -> Float[Tensor, "*shape"]:
    """Normalised entropy of the power spectrum of ``x`` along its last axis, mean removed
    (module docstring); NaN where ``x`` has fewer than 4 positions or does not vary."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise RopeBehaviorError(
            f"spectral_entropy takes a float tensor [..., pos]; got {type(x).__name__}"
            + (f" of dtype {x.dtype}, shape {tuple(x.shape)}" if isinstance(x, Tensor) else "")
        )
    x = x.double()
    n = x.shape[-1]
    if n < 4:
        return torch.full(x.shape[:-1], math.nan, dtype=torch.float64, device=x.device)
    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    power = torch.fft.rfft(centred, dim=-1).abs().square()[..., 1 : n // 2 + 1]
    total = power.sum(-1, keepdim=True)
    p = power / total.clamp_min(1e-300)
    ent = -(p * torch.log(p.clamp_min(1e-300))).sum(-1) / math.log(n // 2)
    still = centred.std(-1) <= STILL_RTOL * mean.squeeze(-1).abs()
    return torch.where(still | (total.squeeze(-1) <= 0), math.nan, ent)


@dataclass(frozen=True, eq=False)
class PairSpectra:
    """Spectral entropy of each pair's query and key norm along positions (method §9).

    ``q_entropy`` / ``k_entropy`` ``[layer_index, head, pair]`` (keys through the query
    head's KV head), averaged over ``n_prompts`` prompts of up to ``context`` tokens;
    ``turns``: ``omega * (context - 1) / 2 pi`` per ``[layer_index, pair]``, the turns a
    pair's angle makes over the context, and ``slow`` where it is under one
    (:meth:`~rope_behavior.RopeSpec.slow_pairs`).
    """

    layers: tuple[int, ...]
    skip: int
    context: int
    n_prompts: int
    q_entropy: Float[Tensor, "layer head pair"] = field(repr=False)
    k_entropy: Float[Tensor, "layer head pair"] = field(repr=False)
    omega: Float[Tensor, "layer pair"] = field(repr=False)
    turns: Float[Tensor, "layer pair"] = field(repr=False)
    slow: Bool[Tensor, "layer pair"] = field(repr=False)

    def to_frame(self, usage: FrequencyUsage | None = None) -> Any:
        """Tidy DataFrame: one row per (layer, head, pair) with omega, turns, slow and the
        two entropies; given the :class:`FrequencyUsage` of the same layers, its norms and
        usages beside them (``q_norm``, ``k_norm``, ``norm_usage``, ``logit_usage``)."""
        import pandas as pd

        n_l, n_h, n_p = self.q_entropy.shape
        idx = torch.cartesian_prod(torch.arange(n_l), torch.arange(n_h), torch.arange(n_p))
        li, hi, pi = idx.unbind(-1)

        def col(t: Tensor) -> Any:
            return t.detach().cpu().double().reshape(-1).numpy()

        data = {
            "layer": [self.layers[i] for i in li.tolist()],
            "head": hi.numpy(),
            "pair": pi.numpy(),
            "omega": self.omega[li, pi].double().numpy(),
            "turns": self.turns[li, pi].double().numpy(),
            "slow": self.slow[li, pi].numpy(),
            "q_entropy": col(self.q_entropy),
            "k_entropy": col(self.k_entropy),
        }
        if usage is not None:
            if not isinstance(usage, FrequencyUsage) or usage.q_norm.shape != self.q_entropy.shape:
                raise RopeBehaviorError(
                    "to_frame(usage=...) takes the FrequencyUsage of the same layers "
                    f"{list(self.layers)} ([layer, head, pair] {tuple(self.q_entropy.shape)})"
                )
            if usage.layers != self.layers:
                raise RopeBehaviorError(
                    f"usage measures layers {list(usage.layers)}; these spectra {list(self.layers)}"
                )
            for name in ("q_norm", "k_norm", "norm_usage", "logit_usage"):
                data[name] = col(getattr(usage, name))
        return pd.DataFrame(data)

    def __repr__(self) -> str:
        n_l, n_h, n_p = self.q_entropy.shape
        return (
            f"PairSpectra: {n_l} layers x {n_h} heads x {n_p} pairs, {self.n_prompts} "
            f"prompts\n  context {self.context} tokens ({self.skip} skipped per prompt); "
            f"{int(self.slow.sum())} of {n_l * n_p} layer pairs\n  turn less than once; "
            f"mean entropy q {float(self.q_entropy.nanmean()):.3g}, "
            f"k {float(self.k_entropy.nanmean()):.3g}"
        )


def _norms(x: Tensor, rotary_dim: int, layout: str) -> Tensor:
    """Per-pair norms ``[batch, pos, head, pair]`` of ``x`` ``[batch, pos, head, d_head]``."""
    pairs = split_pairs(x[..., :rotary_dim].double(), layout)  # type: ignore[arg-type]
    return torch.hypot(pairs[..., 0], pairs[..., 1])


@validates_inputs
def pair_spectra(captured: Captured, *, layers: Any = None, skip: int = 0) -> PairSpectra:
    """Spectral entropy of every pair's query and key norm along positions (method §9).

    Args:
        captured: what :func:`~rope_behavior.capture` returns.
        layers: captured layers to measure (default: all captured).
        skip: real tokens left out at the start of each prompt (``1`` leaves out a BOS,
            whose norms often differ from every other token's).
    """
    captured = Captured.check(captured, "pair_spectra")
    spec = captured.spec
    chosen = (
        captured.layers
        if layers is None
        else tuple(captured.check_layer(la) for la in check_indices(layers, spec.n_layers, "layer"))
    )
    skip = as_int(skip, "skip", low=0, hint="real tokens left out at the start of each prompt")
    mask = (
        captured.attention_mask.bool()
        if captured.attention_mask is not None
        else torch.ones(captured.batch_size, captured.n_pos, dtype=torch.bool)
    )
    lengths = mask.sum(-1) - skip
    usable = [b for b in range(captured.batch_size) if int(lengths[b]) >= 4]
    if not usable:
        raise RopeBehaviorError(
            f"pair_spectra needs a prompt of at least {4 + skip} real tokens (4 after "
            f"skip={skip}); the longest has {int(mask.sum(-1).max())}"
        )
    q_out, k_out = [], []
    for layer in chosen:
        qn = _norms(captured.rot_q[layer], spec.rotary_dim, spec.pair_layout)
        kn = _norms(captured.rot_k[layer], spec.rotary_dim, spec.pair_layout)
        per_q, per_k = [], []
        for b in usable:
            keep = mask[b].to(qn.device).nonzero().flatten()[skip:]
            per_q.append(spectral_entropy(qn[b, keep].movedim(0, -1)))  # [head, pair]
            per_k.append(spectral_entropy(kn[b, keep].movedim(0, -1)))  # [kv_head, pair]
        q_out.append(torch.stack(per_q).nanmean(0))
        k_out.append(torch.stack(per_k).nanmean(0)[list(spec.kv_map)].to(q_out[-1].device))
    dev = captured.tokens.device
    omega = spec.omega[list(chosen)]
    context = captured.n_pos
    return PairSpectra(
        layers=chosen,
        skip=skip,
        context=context,
        n_prompts=len(usable),
        q_entropy=torch.stack([t.to(dev) for t in q_out]),
        k_entropy=torch.stack([t.to(dev) for t in k_out]),
        omega=omega,
        turns=spec.turns(context)[list(chosen)],
        slow=spec.slow_pairs(context)[list(chosen)],
    )
