"""Figures of heads, per pair: the per-pair score curves of chosen heads.

Pure, like :mod:`rope_behavior.viz.plots` (which re-exports it): result objects in, a
``plotly.graph_objects.Figure`` out; array properties are plain Python lists. The
positional–symbolic plane is in :mod:`rope_behavior.viz.head_plots`.
"""

import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.frequency.usage import FrequencyUsage
from rope_behavior.model.spec import RopeSpec
from rope_behavior.scoring.results import HeadScores, ScoreSummary
from rope_behavior.viz.head_plots import format_wavelength, pair_ticks

__all__ = ["pair_score_curves"]


def _summary_of(scores: Any) -> ScoreSummary:
    summary = scores.mean() if isinstance(scores, HeadScores) else scores
    if not isinstance(summary, ScoreSummary) or not summary.per_pair:
        raise RopeBehaviorError(
            f"pair_score_curves takes per-pair scores (score_heads(..., per_pair=True), or "
            f"its .mean()); got {type(scores).__name__}"
            + ("" if not isinstance(summary, ScoreSummary) else " without a pair axis")
        )
    if summary.query_positions is not None:
        raise RopeBehaviorError(
            "pair_score_curves takes scores at one query position; got a query axis "
            f"{list(summary.query_positions)} (score with query_positions='last' or an int)"
        )
    return summary


def _wavelengths(source: RopeSpec | FrequencyUsage | None) -> dict[int, list[float]]:
    """Wavelength table per layer from a spec or a usage (``{}`` without either)."""
    if isinstance(source, RopeSpec):
        return {layer: source.wavelength[layer].tolist() for layer in range(source.n_layers)}
    if isinstance(source, FrequencyUsage):
        wave = 2 * math.pi / source.omega.detach().cpu().double()
        return {layer: wave[i].tolist() for i, layer in enumerate(source.layers)}
    if source is None:
        return {}
    raise RopeBehaviorError(
        f"wavelengths from {type(source).__name__}; expected a RopeSpec, a FrequencyUsage or None"
    )


def _chosen_heads(
    s: ScoreSummary, heads: Sequence[tuple[int, int]] | None, top: int
) -> list[tuple[int, int, int]]:
    """``(layer index, layer, head)`` of the heads to draw (default the ``top`` separating)."""
    if heads is None:
        sep = (s.s_pos_mean - s.s_sym_mean).abs().nan_to_num(-1.0).amax(-1)  # [layer, head]
        order = torch.argsort(sep.flatten(), descending=True, stable=True)[:top].tolist()
        n_h = sep.shape[1]
        heads = [(s.layers[i // n_h], i % n_h) for i in order]
    chosen = []
    for layer, head in heads:
        if layer not in s.layers or not 0 <= head < s.s_pos_mean.shape[1]:
            raise RopeBehaviorError(
                f"head (layer {layer}, head {head}) is not in the per-pair scores: layers "
                f"{list(s.layers)}, heads 0..{s.s_pos_mean.shape[1] - 1}"
            )
        chosen.append((s.layers.index(layer), layer, head))
    if not chosen:
        raise RopeBehaviorError("heads is empty; expected at least one (layer, head)")
    return chosen


def _add_head_curves(
    fig: go.Figure,
    s: ScoreSummary,
    n: int,
    li: int,
    layer: int,
    head: int,
    wave: list[float] | None,
    cols: int,
) -> None:
    """The s_POS and s_SYM curves of one head in panel ``n``."""
    n_pairs = s.s_pos_mean.shape[-1]
    pairs = list(range(n_pairs))
    for key, name, tint, dash in (
        ("s_pos", "s_POS", "#1f77b4", "solid"),
        ("s_sym", "s_SYM", "#d62728", "dash"),
    ):
        mean = getattr(s, f"{key}_mean")[li, head].double()
        lo, hi = getattr(s, f"{key}_lo")[li, head], getattr(s, f"{key}_hi")[li, head]
        up = (hi - mean).clamp_min(0).nan_to_num(0.0)
        down = (mean - lo).clamp_min(0).nan_to_num(0.0)
        bars: dict[str, Any] = {"type": "data", "symmetric": False, "array": up.tolist()}
        bars.update(arrayminus=down.tolist(), thickness=1, width=2)
        fig.add_trace(
            go.Scatter(
                x=pairs,
                y=mean.tolist(),
                mode="lines+markers",
                name=name,
                legendgroup=name,
                showlegend=n == 0,
                line={"color": tint, "dash": dash},
                error_y=bars,
                customdata=[format_wavelength(w) for w in wave] if wave else ["n/a"] * n_pairs,
                hovertemplate=f"L{layer}H{head} {name} %{{y:.3f}}<br>pair %{{x}}, wavelength "
                "%{customdata} tokens<extra></extra>",
            ),
            row=n // cols + 1,
            col=n % cols + 1,
        )
    # two panels side by side: at most 5 labels each, so that they fit a narrow page too
    ticks = pair_ticks(wave, n_pairs, max_ticks=5 if cols > 1 else 8)
    fig.update_xaxes(**ticks, row=n // cols + 1, col=n % cols + 1)


def pair_score_curves(
    pair_scores: Any,
    rope: RopeSpec | FrequencyUsage | None = None,
    *,
    heads: Sequence[tuple[int, int]] | None = None,
    top: int = 4,
) -> go.Figure:
    """s_POS and s_SYM of single-pair projection heads against the pair index, one panel
    per head (``(layer, head)`` in ``heads``; default the ``top`` heads whose curves
    separate most, by the largest ``|s_pos - s_sym|`` over pairs).

    ``pair_scores``: ``score_heads(..., per_pair=True)`` or its ``.mean()``; error bars are
    its bootstrap interval. ``rope`` (a RopeSpec, or the FrequencyUsage) gives each pair's
    wavelength: under the pair index on the x axis and in the hover.
    """
    s = _summary_of(pair_scores)
    waves = _wavelengths(rope)
    chosen = _chosen_heads(s, heads, top)
    cols = min(2, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        shared_yaxes=True,
        vertical_spacing=0.3 / rows,
        subplot_titles=[f"L{layer}H{head}" for _, layer, head in chosen],
    )
    for n, (li, layer, head) in enumerate(chosen):
        _add_head_curves(fig, s, n, li, layer, head, waves.get(layer), cols)
    label = "pair index" + ("<br>(wavelength, tokens)" if waves else "")  # fits a narrow panel
    for c in range(1, cols + 1):
        fig.update_xaxes(title_text=label, row=rows, col=c)
    fig.update_yaxes(range=[-0.05, 1.05])
    fig.update_yaxes(title_text="score", col=1)
    fig.update_layout(
        title="Per-pair scores of single-pair projection heads",
        height=max(420, 330 * rows),
    )
    return fig
