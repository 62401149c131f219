"""Plotly figures from result objects. Pure: no model, no ``.show()``, no file writes.

Every function takes a result object (or a tidy DataFrame made from one) and returns a
``plotly.graph_objects.Figure``. Array properties are passed as plain Python lists (a
numpy array reaches plotly.js as a typed array, which some colour attributes reject).
The head figures (the positional–symbolic plane, per-pair score curves) live in
:mod:`rope_behavior.viz.head_plots` and :mod:`rope_behavior.viz.pair_curves`, the sweep
heatmap in :mod:`rope_behavior.viz.sweep_plots`; all are re-exported here.
"""

import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
import torch
from plotly.colors import qualitative

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
from rope_behavior.viz.sweep_plots import sweep_heatmap

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
