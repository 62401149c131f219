"""Plotly figures from result objects. Pure: no model, no ``.show()``, no file writes.

Every function takes a result object (or a tidy DataFrame made from one) and returns a
``plotly.graph_objects.Figure``. Array properties are passed as plain Python lists (a
numpy array reaches plotly.js as a typed array, which some colour attributes reject).
The head figures (the positional–symbolic plane, per-pair score curves) live in
:mod:`rope_behavior.viz.head_plots` and :mod:`rope_behavior.viz.pair_curves`, re-exported here.
"""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.frequency.usage import FrequencyUsage
from rope_behavior.model.spec import RopeSpec
from rope_behavior.viz.head_plots import (
    extreme_heads,
    format_wavelength,
    pair_ticks,
    plane_frame,
    positional_symbolic_plane,
)
from rope_behavior.viz.pair_curves import pair_score_curves

__all__ = [
    "accuracy_by_position",
    "accuracy_vs_pair",
    "extreme_heads",
    "frequency_usage_heatmap",
    "omega_spectrum",
    "pair_score_curves",
    "plane_frame",
    "positional_symbolic_plane",
    "sweep_heatmap",
]

_PALETTE = tuple(qualitative.Dark24)
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def _layer_list(layers: Sequence[int]) -> str:
    return f"layer {layers[0]}" if len(layers) == 1 else f"layers {', '.join(map(str, layers))}"


def omega_spectrum(spec: RopeSpec) -> go.Figure:
    """Wavelength (tokens per turn, log scale) of every pair, one line per distinct layer
    table (named by the layers that share it)."""
    fig = go.Figure()
    tables: list[tuple[torch.Tensor, list[int]]] = []
    for layer in range(spec.n_layers):
        row = spec.wavelength[layer]
        for seen, members in tables:
            if torch.equal(row, seen):
                members.append(layer)
                break
        else:
            tables.append((row, [layer]))
    for row, members in tables:
        omega = (2 * math.pi / row).tolist()
        fig.add_trace(
            go.Scatter(
                x=list(range(spec.n_pairs)),
                y=row.tolist(),
                customdata=omega,
                mode="lines+markers",
                name=_layer_list(members),
                hovertemplate="pair %{x}<br>wavelength %{y:.4g} tokens<br>"
                "omega %{customdata:.4g} rad/token<extra>%{fullData.name}</extra>",
            )
        )
    fig.update_layout(
        title=f"{spec.architecture}: RoPE wavelengths ({spec.pair_layout} pairs)",
        xaxis_title="pair index (0 = highest frequency)",
        yaxis_title="wavelength (tokens)",
        yaxis_type="log",
    )
    return fig


def _usage_by_layer(
    usage: FrequencyUsage, values: torch.Tensor, wave: list, title: str
) -> go.Figure:
    """One layer's heads at a time, a slider choosing the layer: the page stays small and
    a browser can draw it for any number of layers x heads."""
    n_layers, n_heads, n_pairs = values.shape
    fig = go.Figure()
    for i, layer in enumerate(usage.layers):
        fig.add_trace(
            go.Heatmap(
                z=values[i].float().numpy(),
                x=list(range(n_pairs)),
                y=[f"H{h}" for h in range(n_heads)],
                colorscale="Viridis",
                zmin=0.0,
                zmax=float(values.max()),
                colorbar={"title": {"text": title}},
                visible=i == 0,
                name=f"layer {layer}",
                hovertemplate=f"L{layer}%{{y}}, pair %{{x}}<br>{title} %{{z:.3g}}<extra></extra>",
            )
        )
    steps = []
    for i, layer in enumerate(usage.layers):
        ticks = pair_ticks(wave[i], n_pairs)
        steps.append({
            "label": str(layer), "method": "update",
            "args": [{"visible": [j == i for j in range(n_layers)]},
                     {"title.text": f"Frequency usage ({title}), layer {layer} of {n_layers}",
                      "xaxis.ticktext": ticks["ticktext"], "xaxis.tickvals": ticks["tickvals"]}],
        })  # fmt: skip
    fig.update_layout(
        title=f"Frequency usage ({title}), layer {usage.layers[0]} of {n_layers}",
        xaxis={
            "title": {"text": "pair index (0 = highest frequency)<br>and its wavelength in tokens"},
            **pair_ticks(wave[0], n_pairs),
        },
        yaxis={"title": {"text": "head"}, "autorange": "reversed"},
        sliders=[
            {"active": 0, "currentvalue": {"prefix": "layer "}, "steps": steps, "pad": {"t": 70}}
        ],
        height=max(480, 14 * n_heads + 330),
    )
    return fig


def frequency_usage_heatmap(
    usage: FrequencyUsage,
    *,
    kind: str = "logit_usage",
    layer: int | None = None,
    max_rows: int = 256,
) -> go.Figure:
    """Heatmap of usage over (head, pair): one layer, or all layers stacked as rows.

    The hover gives each cell's wavelength (tokens per turn, from the usage's ``omega``);
    when the rows share one wavelength table the x ticks show it under the pair index.
    When all layers would make more than ``max_rows`` rows (e.g. 64 layers x 64 heads),
    the figure shows one layer at a time with a slider choosing it (one colour scale for
    all layers), so that the page stays small and drawable.
    """
    if kind not in ("logit_usage", "norm_usage"):
        raise RopeBehaviorError(f"kind={kind!r}; expected 'logit_usage' or 'norm_usage'")
    values = getattr(usage, kind).detach().cpu().double()
    wave = (2 * math.pi / usage.omega.detach().cpu().double()).tolist()  # [layer, pair]
    if layer is not None:
        if layer not in usage.layers:
            raise RopeBehaviorError(
                f"layer {layer} is not in the usage's layers {list(usage.layers)}"
            )
        idx = [usage.layers.index(layer)]
    else:
        idx = list(range(len(usage.layers)))
    n_heads, n_pairs = values.shape[1], values.shape[2]
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise RopeBehaviorError(f"max_rows={max_rows!r}; expected a positive integer")
    if layer is None and len(idx) * n_heads > max_rows:
        return _usage_by_layer(usage, values, wave, kind.replace("_", " "))
    z = values[idx].reshape(-1, n_pairs)
    labels = [f"L{usage.layers[i]}H{h}" for i in idx for h in range(n_heads)]
    rows_wave = [wave[i] for i in idx for _ in range(n_heads)]
    shared = all(w == rows_wave[0] for w in rows_wave)
    title = kind.replace("_", " ")
    fig = go.Figure(
        go.Heatmap(
            z=z.numpy(),
            x=list(range(n_pairs)),
            y=labels,
            customdata=[[format_wavelength(w) for w in row] for row in rows_wave],
            colorscale="Viridis",
            colorbar={"title": {"text": title}},
            hovertemplate="%{y}, pair %{x}<br>wavelength %{customdata} tokens<br>"
            f"{title} %{{z:.3g}}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Frequency usage ({title})",
        xaxis={
            "title": {
                "text": "pair index (0 = highest frequency)"
                + ("<br>and its wavelength in tokens" if shared else "")
            },
            **pair_ticks(rows_wave[0] if shared else None, n_pairs),
        },
        yaxis_title="head",
        yaxis_autorange="reversed",
        height=max(420, 16 * len(labels) + 200),
    )
    return fig


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


def accuracy_vs_pair(frame: Any) -> go.Figure:
    """Accuracy against the single allowed pair index, one line per task.

    ``frame``: rows ``task, setting, seed, accuracy`` (e.g. the experiment's results.csv);
    settings ``pair:<i>`` give the x axis. Error bars: the standard deviation over seeds.
    """
    for col in ("task", "setting", "accuracy"):
        if col not in frame.columns:
            raise RopeBehaviorError(f"frame lacks column {col!r}; has {list(frame.columns)}")
    fig = go.Figure()
    for i, (task, part) in enumerate(frame.groupby("task", sort=False)):
        pairs = part[part["setting"].str.startswith("pair:")].copy()
        pairs["pair"] = pairs["setting"].str.slice(5).astype(int)
        agg = pairs.groupby("pair")["accuracy"].agg(["mean", "std"]).reset_index()
        fig.add_trace(
            go.Scatter(
                x=agg["pair"].tolist(),
                y=agg["mean"].tolist(),
                error_y={"type": "data", "array": agg["std"].fillna(0).tolist()},
                mode="lines+markers",
                line={"color": _PALETTE[i % len(_PALETTE)]},
                name=str(task),
            )
        )
    fig.update_layout(
        title="Accuracy when every head may use only one RoPE pair",
        xaxis_title="allowed pair index (0 = highest frequency)",
        yaxis_title="accuracy",
        yaxis_range=[0, 1.02],
    )
    return fig


def _line_styles(keys: list[tuple[Any, Any]]) -> list[tuple[str, str]]:
    """A distinct (colour, dash) per (task, setting) line: colour by setting and dash by
    task when that fits the palette, else colours then dashes in turn (144 distinct)."""
    tasks = list(dict.fromkeys(t for t, _ in keys))
    settings = list(dict.fromkeys(s for _, s in keys))
    if len(settings) <= len(_PALETTE) and len(tasks) <= len(_DASHES):
        return [(_PALETTE[settings.index(s)], _DASHES[tasks.index(t)]) for t, s in keys]
    n = len(_PALETTE)
    return [(_PALETTE[i % n], _DASHES[(i // n) % len(_DASHES)]) for i in range(len(keys))]


def accuracy_by_position(frame: Any, *, task: str | None = None) -> go.Figure:
    """Accuracy against the answer position, one line per setting (``by_position.csv``);
    no two lines share both colour and dash style (colour: setting, dash: task)."""
    for col in ("task", "setting", "answer_position", "accuracy"):
        if col not in frame.columns:
            raise RopeBehaviorError(f"frame lacks column {col!r}; has {list(frame.columns)}")
    part = frame if task is None else frame[frame["task"] == task]
    if task is not None and not len(part):
        raise RopeBehaviorError(
            f"task={task!r} has no rows; tasks in the frame: {list(dict.fromkeys(frame['task']))}"
        )
    groups = list(part.groupby(["task", "setting"], sort=False))
    styles = _line_styles([key for key, _ in groups])
    fig = go.Figure()
    for ((t, setting), g), (tint, dash) in zip(groups, styles):
        g = g.groupby("answer_position")["accuracy"].mean().reset_index()
        fig.add_trace(
            go.Scatter(
                x=g["answer_position"].tolist(),
                y=g["accuracy"].tolist(),
                mode="lines+markers",
                line={"color": tint, "dash": dash},
                marker={"size": 5},
                name=f"{t} · {setting}" if task is None else str(setting),
            )
        )
    fig.update_layout(
        height=max(450, 21 * len(groups) + 220),  # the legend fits without scrolling
        title="Accuracy by answer position" + (f" ({task})" if task else ""),
        xaxis_title="answer position in the context",
        yaxis_title="accuracy",
        yaxis_range=[0, 1.02],
    )
    return fig
