"""Plotly figures from result objects. Pure: no model, no ``.show()``, no file writes.

Every function takes a result object (or a tidy DataFrame made from one) and returns a
``plotly.graph_objects.Figure``.
"""

from typing import Any

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from rope_behavior.frequency import FrequencyUsage
from rope_behavior.head_scores import HeadScores, ScoreSummary
from rope_behavior.spec import RopeSpec

__all__ = [
    "accuracy_by_position",
    "accuracy_vs_pair",
    "frequency_usage_heatmap",
    "omega_spectrum",
    "positional_symbolic_plane",
    "sweep_heatmap",
]


def omega_spectrum(spec: RopeSpec) -> go.Figure:
    """Wavelength (tokens per turn, log scale) of every pair, one line per distinct layer table."""
    fig = go.Figure()
    seen: list[torch.Tensor] = []
    for layer in range(spec.n_layers):
        row = spec.wavelength[layer]
        if any(torch.equal(row, s) for s in seen):
            continue
        seen.append(row)
        fig.add_trace(
            go.Scatter(
                x=list(range(spec.n_pairs)),
                y=row.tolist(),
                mode="lines+markers",
                name=f"layer {layer}",
            )
        )
    fig.update_layout(
        title=f"{spec.architecture}: RoPE wavelengths ({spec.pair_layout} pairs)",
        xaxis_title="pair index (0 = highest frequency)",
        yaxis_title="wavelength (tokens)",
        yaxis_type="log",
    )
    return fig


def frequency_usage_heatmap(
    usage: FrequencyUsage, *, kind: str = "logit_usage", layer: int | None = None
) -> go.Figure:
    """Heatmap of usage over (head, pair): one layer, or all layers stacked as rows."""
    if kind not in ("logit_usage", "norm_usage"):
        raise ValueError(f"kind={kind!r}; expected 'logit_usage' or 'norm_usage'")
    values = getattr(usage, kind).detach().cpu().double()
    if layer is not None:
        if layer not in usage.layers:
            raise ValueError(f"layer {layer} not in the usage's layers {list(usage.layers)}")
        idx = usage.layers.index(layer)
        z = values[idx]
        labels = [f"L{layer}H{h}" for h in range(z.shape[0])]
    else:
        z = values.reshape(-1, values.shape[-1])
        labels = [f"L{layer_}H{h}" for layer_ in usage.layers for h in range(values.shape[1])]
    fig = go.Figure(
        go.Heatmap(
            z=z.numpy(),
            x=list(range(z.shape[-1])),
            y=labels,
            colorscale="Viridis",
            colorbar={"title": kind.replace("_", " ")},
        )
    )
    fig.update_layout(
        title=f"Frequency usage ({kind.replace('_', ' ')})",
        xaxis_title="pair index (0 = highest frequency)",
        yaxis_title="head",
        yaxis_autorange="reversed",
    )
    return fig


def _plane_frame(scores: Any, usage: FrequencyUsage | None) -> Any:
    """Per-head frame (layer, head, s_pos, s_sym, [*_std], identifiable, [centroid])."""
    import pandas as pd

    if isinstance(scores, HeadScores):
        scores = scores.mean()
    if isinstance(scores, ScoreSummary):
        if scores.per_pair or scores.query_positions is not None:
            raise ValueError(
                "the plane takes whole-head scores at one query position; got a summary with "
                "a pair or query axis (score with per_pair=False and one query position)"
            )
        rows = []
        for i, layer in enumerate(scores.layers):
            for h in range(scores.s_pos_mean.shape[1]):
                rows.append(
                    {
                        "layer": layer,
                        "head": h,
                        "s_pos": float(scores.s_pos_mean[i, h]),
                        "s_sym": float(scores.s_sym_mean[i, h]),
                        "s_pos_std": float(scores.s_pos_std[i, h]),
                        "s_sym_std": float(scores.s_sym_std[i, h]),
                        "identifiable": bool(scores.identifiable_fraction[i, h] >= 0.5),
                    }
                )
        frame = pd.DataFrame(rows)
    else:
        frame = scores
    for col in ("layer", "head", "s_pos", "s_sym"):
        if col not in frame.columns:
            raise ValueError(f"frame lacks column {col!r}; has {list(frame.columns)}")
    if usage is not None:
        cent = usage.head_frame()[["layer", "head", "centroid"]]
        frame = frame.drop(columns=["centroid"], errors="ignore").merge(
            cent, on=["layer", "head"], how="left"
        )
    return frame


def positional_symbolic_plane(
    scores: Any, usage: FrequencyUsage | None = None, *, color: str | None = "centroid"
) -> go.Figure:
    """Scatter of heads in the positional–symbolic plane.

    ``scores``: a :class:`~rope_behavior.HeadScores` (averaged over prompts), its
    :class:`~rope_behavior.ScoreSummary`, or a tidy DataFrame with columns
    ``layer, head, s_pos, s_sym`` (one row per head). With ``usage``, points are coloured by
    each head's frequency centroid (pair index). Heads whose rows are mostly near-uniform
    (``identifiable`` False) are drawn hollow: their scores sit near (1, 1) whatever they do.
    """
    frame = _plane_frame(scores, usage)
    fig = go.Figure()
    groups = [(True, frame)]
    if "identifiable" in frame.columns:
        ident_mask = frame["identifiable"].astype(bool)
        groups = [(True, frame[ident_mask]), (False, frame[~ident_mask])]
    for ident, part in groups:
        if len(part) == 0:
            continue
        marker: dict[str, Any] = {"size": 9, "symbol": "circle" if ident else "circle-open"}
        if color and color in part.columns:
            marker.update(
                color=part[color], colorscale="Plasma", showscale=ident, colorbar={"title": color}
            )
        errors: dict[str, Any] = {}
        if "s_pos_std" in part.columns:
            errors = {
                "error_x": {"type": "data", "array": part["s_pos_std"].fillna(0), "thickness": 1},
                "error_y": {"type": "data", "array": part["s_sym_std"].fillna(0), "thickness": 1},
            }
        fig.add_trace(
            go.Scatter(
                x=part["s_pos"],
                y=part["s_sym"],
                mode="markers",
                marker=marker,
                text=[f"L{layer}H{h}" for layer, h in zip(part["layer"], part["head"])],
                name="identifiable" if ident else "near-uniform (unidentifiable)",
                **errors,
            )
        )
    fig.add_shape(type="line", x0=0, y0=1, x1=1, y1=0, line={"dash": "dot", "color": "grey"})
    fig.update_layout(
        title="Positional–symbolic plane",
        xaxis_title="s_POS (positional score)",
        yaxis_title="s_SYM (symbolic score)",
        xaxis_range=[-0.02, 1.02],
        yaxis_range=[-0.02, 1.02],
    )
    return fig


def sweep_heatmap(frame: Any, *, value: str = "value", title: str | None = None) -> go.Figure:
    """One heatmap per band of a patching sweep's tidy frame (``layer, head, band, value``)."""
    for col in ("layer", "head", "band", value):
        if col not in frame.columns:
            raise ValueError(f"frame lacks column {col!r}; has {list(frame.columns)}")
    bands = list(dict.fromkeys(frame["band"]))
    fig = make_subplots(rows=1, cols=len(bands), subplot_titles=[str(b) for b in bands])
    vmax = float(frame[value].abs().max()) or 1.0
    for i, b in enumerate(bands):
        part = frame[frame["band"] == b].pivot(index="layer", columns="head", values=value)
        fig.add_trace(
            go.Heatmap(
                z=part.to_numpy(),
                x=list(part.columns),
                y=list(part.index),
                zmin=-vmax,
                zmax=vmax,
                colorscale="RdBu",
                showscale=i == 0,
            ),
            row=1,
            col=i + 1,
        )
        fig.update_xaxes(title_text="head", row=1, col=i + 1)
    fig.update_yaxes(title_text="layer", autorange="reversed", row=1, col=1)
    fig.update_layout(title=title or f"Frequency patching sweep ({value})")
    return fig


def accuracy_vs_pair(frame: Any) -> go.Figure:
    """Accuracy against the single allowed pair index, one line per task.

    ``frame``: rows ``task, setting, seed, accuracy`` (e.g. the experiment's results.csv);
    settings ``pair:<i>`` give the x axis, other settings are drawn as horizontal lines.
    """
    for col in ("task", "setting", "accuracy"):
        if col not in frame.columns:
            raise ValueError(f"frame lacks column {col!r}; has {list(frame.columns)}")
    fig = go.Figure()
    for task, part in frame.groupby("task", sort=False):
        pairs = part[part["setting"].str.startswith("pair:")].copy()
        pairs["pair"] = pairs["setting"].str.slice(5).astype(int)
        agg = pairs.groupby("pair")["accuracy"].agg(["mean", "std", "count"]).reset_index()
        fig.add_trace(
            go.Scatter(
                x=agg["pair"],
                y=agg["mean"],
                error_y={"type": "data", "array": agg["std"].fillna(0)},
                mode="lines+markers",
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


def accuracy_by_position(frame: Any, *, task: str | None = None) -> go.Figure:
    """Accuracy against the answer position, one line per setting (``by_position.csv``)."""
    for col in ("task", "setting", "answer_position", "accuracy"):
        if col not in frame.columns:
            raise ValueError(f"frame lacks column {col!r}; has {list(frame.columns)}")
    part = frame if task is None else frame[frame["task"] == task]
    fig = go.Figure()
    for (t, setting), g in part.groupby(["task", "setting"], sort=False):
        g = g.groupby("answer_position")["accuracy"].mean().reset_index()
        fig.add_trace(
            go.Scatter(
                x=g["answer_position"],
                y=g["accuracy"],
                mode="lines+markers",
                name=f"{t} · {setting}" if task is None else str(setting),
            )
        )
    fig.update_layout(
        title="Accuracy by answer position" + (f" ({task})" if task else ""),
        xaxis_title="answer position in the context",
        yaxis_title="accuracy",
        yaxis_range=[0, 1.02],
    )
    return fig
