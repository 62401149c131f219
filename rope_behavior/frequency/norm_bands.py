"""The high-norm band of every head (docs/method.md §9): the contiguous run of RoPE pairs
whose per-pair query / key norms stand far above the head's typical pair.

Read from the mean per-pair norms of :class:`~rope_behavior.frequency.usage.FrequencyUsage`
(``q_norm``, ``k_norm``: ``[layer, head, pair]``). Per (layer, head), with ``s_p`` the
pair's norm score (``measure="qk"``: ``q_norm * k_norm``, the bound on the pair's logit
term; ``"q"`` / ``"k"``: one side):

1. the threshold is ``ratio * median_p(s_p)`` over the head's pairs;
2. the band is the longest run of consecutive pair indices, every one above the
   threshold, that holds the pair of largest ``s_p``;
3. a head whose largest ``s_p`` is not above the threshold has no band.

The pairs *below* the band are those rotating slower than every pair of it
(``omega < min omega over the band``; pair 0 is the highest frequency), NoPE pairs
(``omega = 0``) included. This is not :mod:`rope_behavior.rope.bands` (named sets of
pairs, the same for every head): a high-norm band is measured, per head.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, as_fraction, validates_inputs
from rope_behavior.frequency.usage import FrequencyUsage, frequency_usage
from rope_behavior.qk.captured import Captured

__all__ = ["NormBands", "high_norm_bands"]

NormMeasure = Literal["qk", "q", "k"]
_MEASURES = ("qk", "q", "k")


@dataclass(frozen=True, eq=False)
class NormBands:
    """The high-norm band of each head of ``layers`` (docs/method.md §9).

    Tensors are indexed ``[layer_index, head, pair]`` / ``[layer_index, head]`` with
    ``layer_index`` running over ``layers``. ``in_band``: the band's pairs (none where the
    head has no band); ``below``: pairs rotating slower than every pair of the band (none
    without a band); ``score``: the per-pair norm score ``s_p`` the band was found on;
    ``share``: the band's part of the head's total score (NaN without a band);
    ``peak_ratio``: the head's largest score over its median (a band needs it ``> ratio``).
    """

    layers: tuple[int, ...]
    measure: str
    ratio: float
    in_band: Bool[Tensor, "layer head pair"] = field(repr=False)
    below: Bool[Tensor, "layer head pair"] = field(repr=False)
    score: Float[Tensor, "layer head pair"] = field(repr=False)
    share: Float[Tensor, "layer head"] = field(repr=False)
    peak_ratio: Float[Tensor, "layer head"] = field(repr=False)
    omega: Float[Tensor, "layer pair"] = field(repr=False)

    @property
    def found(self) -> Bool[Tensor, "layer head"]:
        """Whether each head has a band."""
        return self.in_band.any(-1)

    def band(self, layer: int, head: int) -> tuple[int, int] | None:
        """``(first, last)`` pair of the band of ``head`` at ``layer`` (inclusive), or None."""
        if layer not in self.layers:
            raise RopeBehaviorError(
                f"layer={layer!r} has no bands here; layers: {list(self.layers)}"
            )
        n_heads = self.in_band.shape[1]
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < n_heads:
            raise RopeBehaviorError(f"head={head!r}; expected an int in [0, {n_heads - 1}]")
        pairs = torch.nonzero(self.in_band[self.layers.index(layer), head]).flatten().tolist()
        return (pairs[0], pairs[-1]) if pairs else None

    def to_frame(self) -> Any:
        """Tidy DataFrame: one row per (layer, head) with the band's first and last pair
        (inclusive; missing without a band), its pair count, wavelength range in tokens, the
        score share inside it, the peak ratio and the number of pairs below it."""
        import pandas as pd

        rows = []
        wavelength = (2 * math.pi) / self.omega.double()
        for i, layer in enumerate(self.layers):
            for h in range(self.in_band.shape[1]):
                b = self.band(layer, h)
                lam = wavelength[i, b[0] : b[1] + 1] if b else None
                rows.append(
                    {
                        "layer": layer,
                        "head": h,
                        "found": b is not None,
                        "first_pair": b[0] if b else pd.NA,
                        "last_pair": b[1] if b else pd.NA,
                        "n_pairs": int(self.in_band[i, h].sum()),
                        "wavelength_min": float(lam.min()) if lam is not None else math.nan,
                        "wavelength_max": float(lam.max()) if lam is not None else math.nan,
                        "share": float(self.share[i, h]),
                        "peak_ratio": float(self.peak_ratio[i, h]),
                        "n_below": int(self.below[i, h].sum()),
                    }
                )
        frame = pd.DataFrame(rows)
        return frame.astype({"first_pair": "Int64", "last_pair": "Int64"})

    def __repr__(self) -> str:
        n_l, n_h, n_p = self.in_band.shape
        found = int(self.found.sum())
        widths = self.in_band.sum(-1)[self.found].double()
        width = f"{float(widths.mean()):.3g}" if found else "-"
        share = f"{float(self.share[self.found].mean()):.3g}" if found else "-"
        return (
            f"NormBands: {n_l} layers x {n_h} heads x {n_p} pairs\n"
            f"  measure {self.measure!r}, threshold {self.ratio:g} x median\n"
            f"  {found} of {n_l * n_h} heads have a band; mean width {width} pairs,\n"
            f"  mean score share inside {share}"
        )


def _run_through(above: Tensor, peak: int) -> Tensor:
    """The run of consecutive ``True`` in ``above`` ``[pair]`` holding index ``peak``."""
    keep = torch.zeros_like(above)
    if not bool(above[peak]):
        return keep
    lo = peak
    while lo > 0 and bool(above[lo - 1]):
        lo -= 1
    hi = peak
    while hi + 1 < above.shape[0] and bool(above[hi + 1]):
        hi += 1
    keep[lo : hi + 1] = True
    return keep


@validates_inputs
def high_norm_bands(
    usage: FrequencyUsage | Captured,
    *,
    ratio: float = 2.0,
    measure: str = "qk",
) -> NormBands:
    """The high-norm band of every head (docs/method.md §9).

    Args:
        usage: a :class:`FrequencyUsage` (its ``q_norm`` / ``k_norm``), or a
            :class:`Captured` (its usage is measured first, all captured layers).
        ratio: a pair is high-norm when its score exceeds ``ratio`` times the head's median
            score; a number > 1 (default 2: at least twice the typical pair's bound on its
            logit term).
        measure: the per-pair score: ``"qk"`` (``q_norm * k_norm``, default), ``"q"``
            (``q_norm``) or ``"k"`` (``k_norm``, keys through the query head's KV head).
    """
    if isinstance(usage, Captured):
        usage = frequency_usage(usage)
    if not isinstance(usage, FrequencyUsage):
        raise RopeBehaviorError(
            f"high_norm_bands takes a FrequencyUsage or a Captured; got {type(usage).__name__}"
            ": run rope_behavior.frequency_usage(rope_behavior.capture(model, tokens)) first"
        )
    ratio = as_fraction(ratio, "ratio", low=1.0, high=math.inf, open_low=True, open_high=True,
                        hint="a threshold as a multiple of the median score")  # fmt: skip
    if measure not in _MEASURES:
        raise RopeBehaviorError(f"measure={measure!r}; expected one of {list(_MEASURES)}")
    q, k = usage.q_norm.double(), usage.k_norm.double()
    score = {"qk": q * k, "q": q, "k": k}[measure]
    if not bool(torch.isfinite(score).all()) or bool((score < 0).any()):
        raise RopeBehaviorError("the usage's norms are not finite non-negative numbers")
    n_l, n_h, _ = score.shape
    median = score.median(-1).values  # lower median for an even count of pairs
    peak = score.argmax(-1)
    above = score > ratio * median[..., None]
    in_band = torch.zeros_like(above)
    for i in range(n_l):
        for h in range(n_h):
            in_band[i, h] = _run_through(above[i, h], int(peak[i, h]))
    omega = usage.omega.double().to(score.device)  # [layer, pair]
    band_low = torch.where(in_band, omega[:, None, :], math.inf).amin(-1)  # [layer, head]
    below = omega[:, None, :] < band_low[..., None]
    found = in_band.any(-1)
    total = score.sum(-1)
    share = torch.where(found, (score * in_band).sum(-1) / total.clamp_min(1e-300), math.nan)
    peak_ratio = score.amax(-1) / median.clamp_min(1e-300)
    return NormBands(
        layers=usage.layers,
        measure=measure,
        ratio=ratio,
        in_band=in_band,
        below=below & found[..., None],
        score=score,
        share=share,
        peak_ratio=peak_ratio,
        omega=usage.omega.double(),
    )
