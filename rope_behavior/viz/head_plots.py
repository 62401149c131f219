"""Figures of heads: the positional–symbolic plane (the per-pair score curves are in
:mod:`rope_behavior.viz.pair_curves`).

Pure, like :mod:`rope_behavior.viz.plots` (which re-exports them): result objects in, a
``plotly.graph_objects.Figure`` out; array properties are plain Python lists.
"""

import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.frequency.usage import FrequencyUsage
from rope_behavior.scoring import head_classes
from rope_behavior.scoring.head_classes import is_identifiable
from rope_behavior.scoring.results import HeadScores, ScoreSummary
from rope_behavior.viz.labels import place_labels

__all__ = [
    "extreme_heads",
    "format_wavelength",
    "pair_ticks",
    "plane_frame",
    "positional_symbolic_plane",
]

_COLOR_OPTIONS = ("auto", "layer", "centroid", None)
_AXIS_RANGE = (-0.05, 1.08)
CORNER_TEXT = "uniform attention scores (1, 1),<br>whatever the head does"
"""The note at the uniform corner: a uniform row scores (1, 1), so a point there says nothing."""
IDENTIFIABLE_NAME = "identifiable head"
UNIDENTIFIABLE_NAME = (
    "not identifiable: in most of its rows the swaps move too little attention<br>"
    "to tell s_POS from s_SYM (near-uniform, or little mass in the swapped blocks)"
)
"""Legend names of the filled and hollow points (``identifiable`` column true / false)."""
PURITY_SYMBOLS = {"positional": "triangle-right", "symbolic": "triangle-up", "mixed": "circle",
                  "uniform": "square", "unidentifiable": "circle-open"}  # fmt: skip
"""Marker of each head class (``purity`` column, docs/method.md §4)."""
PURITY_LEGEND = (
    "identifiable head: ▶ pure positional, ▲ pure symbolic, ● mixed, ■ uniform<br>"
    "(by the scores' intervals; docs/method.md §4)"
)
"""Legend name of the filled points when the frame has a ``purity`` column."""
_CORNER_NOTE = dict(x=1, y=1, text=CORNER_TEXT, showarrow=True, arrowcolor="grey",
                    ax=-90, ay=-26, font={"color": "grey", "size": 11})  # fmt: skip


def _num(x: Any, spec: str = ".3f") -> str:
    """``x`` formatted, or ``n/a`` for a missing / non-finite value."""
    return format(float(x), spec) if x is not None and math.isfinite(float(x)) else "n/a"


def format_wavelength(w: float | None) -> str:
    """A wavelength in tokens, short: ``6.28``, ``628``, ``2k``, ``20k``, ``∞`` (no rotation)."""
    if w is None or math.isnan(w):
        return "n/a"
    if math.isinf(w):
        return "∞"
    for scale, unit in ((1e6, "M"), (1e3, "k")):
        if abs(w) >= scale:
            return f"{w / scale:.3g}{unit}"
    return f"{w:.3g}"


_TICK_STEPS = sorted({m * 10**k for k in range(7) for m in (1, 2, 5)} | {2**k for k in range(21)})


def _tick_step(n_pairs: int, max_ticks: int) -> int:
    """The smallest round step (1, 2, 4, 5, 8, 10, 16, 20, 32, 50, 64, 100, ...) that labels
    at most ``max_ticks`` of ``n_pairs`` pairs."""
    return next((s for s in _TICK_STEPS if math.ceil(n_pairs / s) <= max_ticks), max(1, n_pairs))


def pair_ticks(
    wavelengths: Sequence[float] | None, n_pairs: int, *, max_ticks: int = 10
) -> dict[str, Any]:
    """x-axis ticks ``pair<br>wavelength``: at most ``max_ticks`` labelled pairs, at a
    round step, and never rotated (plotly rotates crowded labels, and a rotated two-line
    label reads as another pair's)."""
    step = _tick_step(n_pairs, max_ticks)
    vals = list(range(0, n_pairs, step))
    text = [
        f"{p}<br>{format_wavelength(wavelengths[p])}" if wavelengths is not None else str(p)
        for p in vals
    ]
    return {"tickmode": "array", "tickvals": vals, "ticktext": text, "tickangle": 0}


def plane_frame(scores: Any, usage: FrequencyUsage | None = None) -> Any:
    """Per-head frame for the plane: ``layer, head, s_pos, s_sym`` and, from a summary,
    ``*_std``, ``*_lo`` / ``*_hi`` (``attrs["level"]``), ``identifiable_fraction``,
    ``identifiable`` (:func:`~rope_behavior.scoring.head_classes.is_identifiable`), ``swapped_mass``, ``leftover_mass``; with
    ``usage``, ``centroid``; where the intervals are known, ``purity``
    (:func:`~rope_behavior.scoring.head_classes.head_purity`). ``scores``: HeadScores,
    ScoreSummary or such a frame."""
    import pandas as pd

    if isinstance(scores, HeadScores):
        scores = scores.mean()
    if isinstance(scores, ScoreSummary):
        if scores.per_pair or scores.query_positions is not None:
            raise RopeBehaviorError(
                "the plane takes whole-head scores at one query position; got a summary with "
                "a pair or query axis (score with per_pair=False and one query position)"
            )
        cols = [f"{s}_{k}" for s in ("s_pos", "s_sym") for k in ("std", "lo", "hi")]
        cols += ["identifiable_fraction", "swapped_mass", "leftover_mass"]
        rows = []
        for i, layer in enumerate(scores.layers):
            for h in range(scores.s_pos_mean.shape[1]):
                row: dict[str, Any] = {"layer": layer, "head": h}
                row["s_pos"] = float(scores.s_pos_mean[i, h])
                row["s_sym"] = float(scores.s_sym_mean[i, h])
                row.update({c: float(getattr(scores, c)[i, h]) for c in cols})
                row["identifiable"] = is_identifiable(row["identifiable_fraction"])
                rows.append(row)
        frame = pd.DataFrame(rows)
        frame.attrs["level"] = scores.level
    else:
        frame = scores
    for col in ("layer", "head", "s_pos", "s_sym"):
        if col not in frame.columns:
            raise RopeBehaviorError(
                f"frame lacks column {col!r}; has {list(frame.columns)} (expected one row per "
                "head with layer, head, s_pos, s_sym)"
            )
    if usage is not None:
        cent = usage.head_frame()[["layer", "head", "centroid"]]
        attrs = dict(frame.attrs)
        frame = frame.drop(columns=["centroid"], errors="ignore").merge(
            cent, on=["layer", "head"], how="left"
        )
        frame.attrs.update(attrs)
    bounds = {f"{k}_{e}" for k in ("s_pos", "s_sym") for e in ("lo", "hi")}
    if "purity" not in frame.columns and bounds <= set(frame.columns):
        attrs = dict(frame.attrs)
        frame = frame.assign(purity=head_classes.head_purity(frame))
        frame.attrs.update(attrs)
    return frame


def extreme_heads(scores: Any, usage: FrequencyUsage | None = None, *, k: int = 3) -> tuple:
    """``(positional, symbolic)``: frames of the ``k`` heads with the largest
    ``s_pos - s_sym`` (> 0) and the ``k`` with the smallest (< 0), among identifiable heads
    off the uniform corner (both scores >= ``UNIFORM_CORNER``: those carry nothing)."""
    return head_classes.extreme_heads(plane_frame(scores, usage), k=k)


def _plane_hover(row: dict[str, Any], level: float | None) -> str:
    lines = [f"<b>{head_label(row)}</b>"]
    for key, name in (("s_pos", "s_POS"), ("s_sym", "s_SYM")):
        text = f"{name} = {_num(row[key])}"
        if f"{key}_lo" in row:
            ci = f" ({level:.0%} CI)" if level else ""
            text += f" [{_num(row[f'{key}_lo'])}, {_num(row[f'{key}_hi'])}]{ci}"
        elif f"{key}_std" in row:
            text += f" ± {_num(row[f'{key}_std'])} (std)"
        lines.append(text)
    if "purity" in row:
        lines.append(f"class: {head_classes.PURITY_NAMES.get(row['purity'], row['purity'])}")
    if "identifiable_fraction" in row:
        lines.append(f"identifiable fraction {_num(row['identifiable_fraction'], '.0%')}")
    elif "identifiable" in row:
        lines.append(f"identifiable: {'yes' if row['identifiable'] else 'no'}")
    for key, name in (("swapped_mass", "swapped mass"), ("leftover_mass", "leftover mass")):
        if key in row:
            lines.append(f"{name} {_num(row[key])}")
    if "centroid" in row:
        lines.append(f"frequency centroid: pair {_num(row['centroid'], '.2f')}")
    return "<br>".join(lines)


def _errors(part: Any) -> dict[str, Any]:
    """Error bars: the bootstrap interval of the mean, else the standard deviation."""
    out: dict[str, Any] = {}
    for axis, k in (("error_x", "s_pos"), ("error_y", "s_sym")):
        if {f"{k}_lo", f"{k}_hi"} <= set(part.columns):
            up = (part[f"{k}_hi"] - part[k]).clip(lower=0).fillna(0).tolist()
            down = (part[k] - part[f"{k}_lo"]).clip(lower=0).fillna(0).tolist()
            out[axis] = {"type": "data", "symmetric": False, "array": up, "arrayminus": down}
        elif f"{k}_std" in part.columns:
            out[axis] = {"type": "data", "array": part[f"{k}_std"].fillna(0).tolist()}
        if axis in out:
            # an explicit colour: the default (the marker colour) is invalid for a colour array
            out[axis].update(thickness=1, width=0, color="rgba(90, 90, 90, 0.55)")
    return out


def _plane_color(color: str | None, frame: Any) -> str | None:
    """The colour column (``"auto"`` resolved); raises when the frame lacks it."""
    if color == "auto":
        has_centroid = "centroid" in frame.columns and frame["centroid"].notna().any()
        color = "centroid" if has_centroid else "layer"
    if color is not None and color not in frame.columns:
        raise RopeBehaviorError(
            f"color={color!r} but the scores have no {color!r} column; pass usage="
            "frequency_usage(...) for the centroid, or color='layer' / None"
        )
    return color


def _color_scale(frame: Any, color: str) -> dict[str, Any]:
    """Marker colour scale of the ``color`` column, shared by every trace."""
    vals = frame[color].astype(float)
    lo, hi = float(vals.min()), float(vals.max())
    varies = math.isfinite(lo) and hi > lo
    if not varies:
        lo, hi = (lo - 0.5, lo + 0.5) if math.isfinite(lo) else (0.0, 1.0)
    title = "layer" if color == "layer" else "frequency<br>centroid<br>(pair index)"
    bar: dict[str, Any] = {"title": {"text": title}, "x": 1.02, "xanchor": "left"}
    bar.update({"len": 0.8, "y": 0.55}, **({"dtick": 1} if color == "layer" else {}))
    scale: dict[str, Any] = {"colorscale": "Viridis" if color == "layer" else "Plasma", "cmin": lo}
    scale.update(cmax=hi, colorbar=bar, showscale=varies)  # one value: nothing to scale
    return scale


def _add_plane_heads(fig: go.Figure, frame: Any, color: str | None, scale: dict[str, Any]) -> None:
    """One scatter trace of identifiable heads (filled), one of the others (hollow)."""
    level = frame.attrs.get("level")
    groups = [(True, frame)]
    if "identifiable" in frame.columns:
        ident_mask = frame["identifiable"].astype(bool)
        groups = [(True, frame[ident_mask]), (False, frame[~ident_mask])]
    for ident, part in groups:
        if len(part) == 0:
            continue
        size = 10 if len(frame) <= 200 else 6 if len(frame) <= 1000 else 4  # crowds: smaller
        marker: dict[str, Any] = {"size": size, "symbol": "circle" if ident else "circle-open"}
        marker["line"] = {"width": 0.5 if ident else 1.5}
        name = IDENTIFIABLE_NAME if ident else UNIDENTIFIABLE_NAME
        if ident and "purity" in part.columns:  # the class's shape (circle-open: NaN interval)
            marker["symbol"] = [PURITY_SYMBOLS.get(c, "circle") for c in part["purity"]]
            name = PURITY_LEGEND
        if color is not None:
            marker.update(color=part[color].astype(float).tolist(), **scale)
            scale["showscale"] = False  # the colour bar once, on the first trace
        fig.add_trace(
            go.Scatter(
                x=part["s_pos"].astype(float).tolist(),
                y=part["s_sym"].astype(float).tolist(),
                mode="markers",
                marker=marker,
                text=[head_label(r) for r in part.to_dict("records")],
                hovertext=[_plane_hover(r, level) for r in part.to_dict("records")],
                hovertemplate="%{hovertext}<extra></extra>",
                name=name,
                showlegend=True,
                **_errors(part),
            )
        )


def head_label(row: dict[str, Any]) -> str:
    """A head's name on a figure: the frame's ``label`` where it has one (e.g. a toy
    task's name), else ``L{layer}H{head}``."""
    label = row.get("label")
    if isinstance(label, str) and label:
        return label
    return f"L{row['layer']}H{row['head']}"


def _label_heads(fig: go.Figure, frame: Any, k: int, label_all: int) -> None:
    """Labels every head when there are at most ``label_all``, else the ``k`` most
    positional and the ``k`` most symbolic; placed so that no two labels collide
    (:func:`~rope_behavior.viz.labels.place_labels`). Extremes are coloured (blue:
    positional, red: symbolic) and placed first."""
    rows = frame.reset_index(drop=True)
    pos, sym = extreme_heads(rows, k=k)
    tint: dict[int, str] = {}
    for part, colour in ((pos, "#1f4e79"), (sym, "#8b1a1a")):
        for i in part.index:  # extreme_heads keeps the frame's index
            tint.setdefault(int(i), colour)
    rest = [i for i in range(len(rows)) if i not in tint] if len(rows) <= label_all else []
    order = list(tint) + rest
    texts = [head_label(r) for r in rows.to_dict("records")]
    points = list(zip(rows["s_pos"].astype(float), rows["s_sym"].astype(float)))
    placed = place_labels(points, texts, order, x_range=_AXIS_RANGE, y_range=_AXIS_RANGE,
                          size_px=(560.0, 560.0))  # fmt: skip
    for i, p in placed:
        colour = tint.get(i, "#444444")
        fig.add_annotation(x=points[i][0], y=points[i][1], text=p.text, showarrow=True,
                           arrowwidth=1, arrowcolor=colour, font={"color": colour, "size": 11},
                           ax=p.ax, ay=p.ay)  # fmt: skip


def positional_symbolic_plane(
    scores: Any,
    usage: FrequencyUsage | None = None,
    *,
    color: str | None = "auto",
    label_extremes: int = 3,
    label_all: int = 40,
) -> go.Figure:
    """Scatter of heads in the positional–symbolic plane.

    ``scores``: a :class:`~rope_behavior.HeadScores` (averaged over prompts), its
    :class:`~rope_behavior.ScoreSummary`, or a tidy DataFrame with columns
    ``layer, head, s_pos, s_sym`` (one row per head; see :func:`plane_frame`).
    ``color``: ``"centroid"`` (each head's frequency centroid, a pair index: needs ``usage``
    or a ``centroid`` column), ``"layer"``, ``"auto"`` (centroid when known, else layer) or
    ``None``. Heads whose rows are mostly not identifiable (near-uniform, or with little
    attention in the swapped blocks) are drawn hollow; the uniform corner (1, 1), where
    any near-uniform head lands, is marked. Error bars: the bootstrap interval of the mean
    over prompts and swaps, or the standard deviation for a frame with only ``*_std``. The
    hover lists the scores, intervals and diagnostics. Labels (a frame's ``label`` column,
    else ``L{layer}H{head}``; placed so that they do not collide): every head when there
    are at most ``label_all``, else the ``label_extremes`` most positional and most
    symbolic heads (:func:`extreme_heads`, coloured); ``label_extremes=0``: no labels.
    Where the intervals are known, each identifiable head's marker shows its class
    (:func:`~rope_behavior.scoring.head_classes.head_purity`): a right triangle pure
    positional, an up triangle pure symbolic, a circle mixed, a square uniform.
    """
    if color not in _COLOR_OPTIONS:
        raise RopeBehaviorError(f"color={color!r}; expected one of {list(_COLOR_OPTIONS)}")
    frame = plane_frame(scores, usage)
    color = _plane_color(color, frame)
    scale = _color_scale(frame, color) if color is not None else {}
    fig = go.Figure()
    _add_plane_heads(fig, frame, color, scale)
    fig.add_shape(type="line", x0=0, y0=1, x1=1, y1=0, line={"dash": "dot", "color": "grey"})
    fig.add_shape(
        type="circle", x0=0.96, y0=0.96, x1=1.04, y1=1.04, line={"color": "grey", "dash": "dash"}
    )
    fig.add_annotation(**_CORNER_NOTE)
    if label_extremes:
        _label_heads(fig, frame, label_extremes, label_all)
    axis = {"range": list(_AXIS_RANGE), "constrain": "domain"}
    fig.update_layout(
        title="Positional–symbolic plane",
        xaxis={**axis, "title": {"text": "s_POS (positional score)"}},
        # square axes: the corner mark is a circle and the diagonal at 45°
        yaxis={**axis, "title": {"text": "s_SYM (symbolic score)"}, "scaleanchor": "x"},
        legend={"orientation": "h", "x": 0, "y": -0.15, "yanchor": "top"},
        width=800,
        height=780,
        margin={"b": 110},
    )
    return fig
