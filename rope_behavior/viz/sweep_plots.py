"""The frequency patching sweep as heatmaps: one panel per band, layers x heads, each
cell the patched metric (normalised where the baselines differ).

Pure, like :mod:`rope_behavior.viz.plots` (which re-exports it): a sweep's tidy frame in, a
``plotly.graph_objects.Figure`` out; array properties are plain Python lists.
"""

import math
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from rope_behavior.errors import RopeBehaviorError

__all__ = ["sweep_heatmap"]


def _colorbar_title(frame: Any, value: str) -> str:
    metric = getattr(frame, "attrs", {}).get("metric")
    if value == "normalized":
        return "normalized<br>(1 = clean, 0 = corrupted)"
    if value == "value":
        return f"{metric} (raw)" if metric else "metric (raw)"
    return value


def _sweep_values(frame: Any, axis: str, value: str) -> Any:
    """The ``value`` column as floats; raises on a missing column, a non-finite value or a
    repeated (layer, head, band) row."""
    for col in ("layer", axis, "band", value):
        if col not in frame.columns:
            raise RopeBehaviorError(
                f"frame lacks column {col!r}; has {list(frame.columns)} (expected a "
                "sweep's to_frame(): layer, head or kv_head, band, value)"
            )
    vals = frame[value].astype(float)
    bad = frame[~np.isfinite(vals.to_numpy())]
    if len(bad):
        rows = ", ".join(
            f"(layer {r['layer']}, {axis} {r[axis]}, band {r['band']!r})"
            for _, r in bad.head(3).iterrows()
        )
        why = (
            " normalized is NaN when the clean and corrupted baselines are equal: plot "
            "value='value'."
            if value == "normalized"
            else ""
        )
        raise RopeBehaviorError(
            f"sweep_heatmap: column {value!r} holds {len(bad)} non-finite values of "
            f"{len(frame)}, e.g. {rows}; drop or recompute those rows.{why}"
        )
    dup = frame.duplicated(["layer", axis, "band"])
    if dup.any():
        r = frame[dup].iloc[0]
        raise RopeBehaviorError(
            f"sweep_heatmap: the frame has {int(dup.sum())} repeated (layer, {axis}, band) "
            f"rows, e.g. ({r['layer']}, {r[axis]}, {r['band']!r}); plot one sweep at a time"
        )
    return vals


def _sweep_hover(
    z: Any, value: str, n_layers: int, heads: list[int], reaches: dict[int, tuple[Any, ...]]
) -> list[list[str]]:
    """Hover text of one band's cells: the value (or a blank-cell note) and the query heads."""
    return [
        [
            (
                f"{value} = {z[li, hi]:.4g}"
                if np.isfinite(z[li, hi])
                else "no row in the frame (blank)"
            )
            + (f"<br>query heads {list(reaches[h])}" if h in reaches else "")
            for hi, h in enumerate(heads)
        ]
        for li in range(n_layers)
    ]


_CELL_TEXT_MAX = 64
_CELL_TEXT_PX = 550.0  # the heatmaps' drawing width in a ~950 px figure, shared by the bands
_CELL_FONTS = ((12, 7.0), (10, 6.0))  # font size (px) and the width of one character at it


def _cell_text(z: Any, vmax: float) -> list[list[str]]:
    """Cell values at two significant digits of the largest ``|value|``, all with one count
    of decimals (digits line up; a value far below the largest reads ``0.00``, never
    ``-0.00``); ``""`` for a blank cell. The hover keeps four significant digits."""
    digits = min(8, max(0, 1 - math.floor(math.log10(vmax)))) if vmax > 0 else 2

    def one(v: float) -> str:
        if not math.isfinite(v):
            return ""
        text = f"{v:.{digits}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text

    return [[one(float(v)) for v in row] for row in z]


def _cell_font(texts: list[list[list[str]]], n_bands: int, n_heads: int) -> int | None:
    """The largest font size at which the longest cell text fits its cell in a report-wide
    figure, or ``None`` when none does (the cells then show colour only)."""
    longest = max((len(t) for band in texts for row in band for t in row), default=0)
    cell = _CELL_TEXT_PX / (n_bands * n_heads)
    return next((size for size, char in _CELL_FONTS if cell >= char * longest + 4), None)


def _pair_range(pairs: Any) -> str:
    """``pair 3`` / ``pairs 0–3`` / ``pairs 0, 2, 5`` from a band's pair tuple."""
    p = sorted(int(x) for x in pairs)
    if len(p) == 1:
        return f"pair {p[0]}"
    if p == list(range(p[0], p[-1] + 1)):
        return f"pairs {p[0]}–{p[-1]}"
    return "pairs " + ", ".join(map(str, p)) if len(p) <= 4 else f"{len(p)} pairs {p[0]}–{p[-1]}"


def _band_titles(frame: Any, bands: list[Any]) -> list[str]:
    """Subplot titles: the band's name and, when the frame has a ``pairs`` column, which
    pairs it holds."""
    if "pairs" not in frame.columns:
        return [str(b) for b in bands]
    first = frame.drop_duplicates("band").set_index("band")["pairs"]
    return [f"{b}<br><sup>{_pair_range(first[b])}</sup>" for b in bands]


def sweep_heatmap(frame: Any, *, value: str = "value", title: str | None = None) -> go.Figure:
    """One heatmap per band of a patching sweep's tidy frame (``layer``, ``head`` or
    ``kv_head``, ``band``, ``value``), e.g. ``FrequencyPatchingResult.to_frame()``.

    The head axis is ``kv_head`` for key or grouped query+key patches under grouped-query
    attention (the hover then lists the query heads each reaches). Layer and head ticks
    are the integers present. NaN or infinite values are refused: a finished sweep never
    holds one (it refuses non-finite metric values), so one means a broken frame, or
    ``normalized`` with equal baselines. A (layer, head) that has no row in a band is
    drawn as a blank cell, and its hover says so. Each subplot is titled with its band and
    the pairs it holds (a ``pairs`` column). With at most 64 (layer, head) cells, each
    wide enough for its text in a ~950 px figure (at 12 px, else 10 px), each cell also
    shows its value, at two significant digits of the largest value (the hover has four).
    """
    axis = "kv_head" if "kv_head" in frame.columns and "head" not in frame.columns else "head"
    vals = _sweep_values(frame, axis, value)
    axis_title = "KV head" if axis == "kv_head" else "head"
    bands = list(dict.fromkeys(frame["band"]))
    layers = sorted(int(v) for v in frame["layer"].unique())
    heads = sorted(int(v) for v in frame[axis].unique())
    reaches = {}
    if axis == "kv_head" and "query_heads" in frame.columns:
        reaches = {int(h): tuple(q) for h, q in zip(frame[axis], frame["query_heads"])}
    fig = make_subplots(rows=1, cols=len(bands), subplot_titles=_band_titles(frame, bands))
    vmax = float(vals.abs().max()) if len(vals) else 1.0
    vmax = vmax or 1.0
    zs = []
    for b in bands:
        part = frame[frame["band"] == b].pivot(index="layer", columns=axis, values=value)
        zs.append(part.reindex(index=layers, columns=heads).to_numpy(dtype=float))
    # few cells, wide enough for their text: each shows its value (numbers, not only colours)
    texts = [_cell_text(z, vmax) for z in zs]
    font = _cell_font(texts, len(bands), len(heads))
    cell_text = len(layers) * len(heads) <= _CELL_TEXT_MAX and font is not None
    for i, (b, z) in enumerate(zip(bands, zs)):
        hover = _sweep_hover(z, value, len(layers), heads, reaches)
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=heads,
                y=layers,
                zmin=-vmax,
                zmax=vmax,
                colorscale="RdBu",
                showscale=i == 0,
                colorbar={"title": {"text": _colorbar_title(frame, value)}},
                customdata=hover,
                hovertemplate=(
                    f"band {b}<br>layer %{{y}}, {axis_title} %{{x}}<br>%{{customdata}}"
                    "<extra></extra>"
                ),
                name=str(b),
                **(
                    {"text": texts[i], "texttemplate": "%{text}", "textfont": {"size": font}}
                    if cell_text
                    else {}
                ),
            ),
            row=1,
            col=i + 1,
        )
        fig.update_xaxes(title_text=axis_title, tickmode="array", tickvals=heads, row=1, col=i + 1)
    fig.update_yaxes(tickmode="array", tickvals=layers, autorange="reversed")
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_layout(title=title or f"Frequency patching sweep ({value})")
    return fig
