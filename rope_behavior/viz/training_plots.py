"""Figures of scores over training, from a :class:`~rope_behavior.tracking.Trajectory`.

* :func:`plane_trajectories`: every head's path through the positional–symbolic plane,
  with a slider (and a play button) over the scored steps moving each head's marker;
* :func:`score_curves`: ``s_POS``, ``s_SYM`` (with their bootstrap intervals), the purity
  gap ``|s_POS - s_SYM|`` and the accuracy the training loop reported, over steps.
"""

from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from rope_behavior.errors import RopeBehaviorError, validates_inputs
from rope_behavior.tracking.trajectory import Trajectory

__all__ = ["plane_trajectories", "score_curves"]

_PALETTE = tuple(qualitative.Dark24)
_RANGE = [-0.03, 1.05]


def _checked(trajectory: object) -> Trajectory:
    if not isinstance(trajectory, Trajectory):
        raise RopeBehaviorError(
            f"trajectory={type(trajectory).__name__}; expected a rope_behavior.tracking."
            "Trajectory (tracker.trajectory() or load_trajectory(folder))"
        )
    if not trajectory.step_list:
        raise RopeBehaviorError("the trajectory holds no scored step; nothing to draw")
    return trajectory


def _heads(frame: Any) -> list[tuple[int, int]]:
    pairs = frame[["layer", "head"]].drop_duplicates().sort_values(["layer", "head"])
    return [(int(a), int(b)) for a, b in pairs.itertuples(index=False)]


def _marker_state(rows: Any) -> dict[str, Any]:
    """Marker, position and interval bars of heads at one step (hollow: not identifiable)."""
    ident = rows["identifiable"].astype(bool).tolist()
    return {
        "x": rows["s_pos_mean"].astype(float).tolist(),
        "y": rows["s_sym_mean"].astype(float).tolist(),
        "marker.symbol": ["circle" if i else "circle-open" for i in ident],
        "customdata": rows["purity"].astype(str).tolist()
        if "purity" in rows.columns
        else [""] * len(rows),
        "error_x.array": (rows["s_pos_hi"] - rows["s_pos_mean"]).clip(lower=0).tolist(),
        "error_x.arrayminus": (rows["s_pos_mean"] - rows["s_pos_lo"]).clip(lower=0).tolist(),
        "error_y.array": (rows["s_sym_hi"] - rows["s_sym_mean"]).clip(lower=0).tolist(),
        "error_y.arrayminus": (rows["s_sym_mean"] - rows["s_sym_lo"]).clip(lower=0).tolist(),
    }


def _frame_trace(state: dict[str, Any]) -> go.Scatter:
    return go.Scatter(
        x=state["x"],
        y=state["y"],
        marker={"symbol": state["marker.symbol"]},
        customdata=state["customdata"],
        error_x={"array": state["error_x.array"], "arrayminus": state["error_x.arrayminus"]},
        error_y={"array": state["error_y.array"], "arrayminus": state["error_y.arrayminus"]},
    )


@validates_inputs
def plane_trajectories(trajectory: Trajectory, *, title: str | None = None) -> go.Figure:
    """Heads moving through the positional–symbolic plane over training.

    One faint line per head traces its path (its mean scores at every scored step, small
    dots at the steps); the markers show the step the slider points at (the last one at
    first), with their bootstrap intervals as bars and their class (``purity``) in the
    hover; a hollow marker is a head not identifiable at that step (near-uniform attention, or little of it moved by the
    swaps). The dotted diagonal and the dashed circle at the uniform corner (1, 1) are
    drawn as in :func:`~rope_behavior.viz.head_plots.positional_symbolic_plane`."""
    trajectory = _checked(trajectory)
    heads_frame = trajectory.heads
    steps = trajectory.step_list
    heads = _heads(heads_frame)
    fig = go.Figure()
    for i, (layer, head) in enumerate(heads):
        path = heads_frame[(heads_frame["layer"] == layer) & (heads_frame["head"] == head)]
        path = path.sort_values("step")
        fig.add_trace(
            go.Scatter(
                x=path["s_pos_mean"].astype(float).tolist(),
                y=path["s_sym_mean"].astype(float).tolist(),
                mode="lines+markers",
                line={"color": _PALETTE[i % len(_PALETTE)], "width": 1},
                marker={"size": 4},
                opacity=0.45,
                customdata=path["step"].tolist(),
                hovertemplate=f"L{layer}H{head} step %{{customdata}}<br>s_POS %{{x:.3f}}<br>"
                "s_SYM %{y:.3f}<extra></extra>",
                name=f"L{layer}H{head} path",
                legendgroup=f"L{layer}H{head}",
                showlegend=False,
            )
        )
    last = trajectory.at(steps[-1]).sort_values(["layer", "head"])
    state = _marker_state(last)
    colours = [_PALETTE[i % len(_PALETTE)] for i in range(len(heads))]
    fig.add_trace(
        go.Scatter(
            x=state["x"],
            y=state["y"],
            mode="markers+text",
            text=[f"L{layer}H{head}" for layer, head in heads],
            textposition="top center",
            marker={"size": 12, "color": colours, "symbol": state["marker.symbol"]},
            error_x={
                "array": state["error_x.array"],
                "arrayminus": state["error_x.arrayminus"],
                "thickness": 1,
                "width": 0,
            },
            error_y={
                "array": state["error_y.array"],
                "arrayminus": state["error_y.arrayminus"],
                "thickness": 1,
                "width": 0,
            },
            customdata=state["customdata"],
            hovertemplate="%{text} %{customdata}<br>s_POS %{x:.3f}<br>s_SYM %{y:.3f}"
            "<extra></extra>",
            name="heads at the step",
            showlegend=False,
        )
    )
    moving = len(heads)  # the index of the markers' trace
    fig.frames = [
        go.Frame(
            name=str(step),
            data=[_frame_trace(_marker_state(trajectory.at(step).sort_values(["layer", "head"])))],
            traces=[moving],
        )
        for step in steps
    ]
    slider_steps = [
        {
            "label": str(step),
            "method": "animate",
            "args": [
                [str(step)],
                {
                    "mode": "immediate",
                    "frame": {"duration": 0, "redraw": True},
                    "transition": {"duration": 0},
                },
            ],
        }
        for step in steps
    ]
    fig.update_layout(
        title=title or "Heads in the positional–symbolic plane over training",
        xaxis={"range": _RANGE, "title": {"text": "s_POS (positional score)"}},
        yaxis={"range": _RANGE, "title": {"text": "s_SYM (symbolic score)"}, "scaleanchor": "x"},
        width=640,
        height=700,
        sliders=[
            {
                "active": len(steps) - 1,
                "currentvalue": {"prefix": "training step "},
                "pad": {"t": 40},
                "steps": slider_steps,
            }
        ],
        updatemenus=[
            {
                "type": "buttons",
                "showactive": False,
                "x": 0.0,
                "y": -0.12,
                "xanchor": "left",
                "buttons": [
                    {
                        "label": "play",
                        "method": "animate",
                        "args": [
                            None,
                            {
                                "frame": {"duration": 400, "redraw": True},
                                "fromcurrent": False,
                                "transition": {"duration": 0},
                            },
                        ],
                    },
                ],
            }
        ],
    )
    fig.add_shape(type="line", x0=0, y0=1, x1=1, y1=0, line={"dash": "dot", "color": "grey"})
    fig.add_shape(
        type="circle", x0=0.96, y0=0.96, x1=1.04, y1=1.04, line={"color": "grey", "dash": "dash"}
    )
    return fig


@validates_inputs
def score_curves(trajectory: Trajectory, *, title: str | None = None) -> go.Figure:
    """``s_POS``, ``s_SYM`` (lines with their bootstrap-interval bands), the purity gap
    ``|s_POS - s_SYM|`` (dotted where the head is not identifiable at that step) and,
    where the loop reported it, ``accuracy``, against the training step; one colour per
    head, shared by every panel (click a legend entry to hide a head everywhere)."""
    trajectory = _checked(trajectory)
    frame = trajectory.heads
    has_acc = "accuracy" in trajectory.steps.columns
    titles = ["s_POS (positional score)", "s_SYM (symbolic score)", "purity gap |s_POS − s_SYM|"]
    if has_acc:
        titles.append("accuracy (reported by the training loop)")
    fig = make_subplots(rows=len(titles), cols=1, shared_xaxes=True, subplot_titles=titles,
                        vertical_spacing=0.06)  # fmt: skip
    for i, (layer, head) in enumerate(_heads(frame)):
        colour = _PALETTE[i % len(_PALETTE)]
        rows = frame[(frame["layer"] == layer) & (frame["head"] == head)].sort_values("step")
        x = rows["step"].tolist()
        name = f"L{layer}H{head}"
        for r, col in enumerate(("s_pos", "s_sym"), start=1):
            lo, hi = rows[f"{col}_lo"].astype(float).tolist(), rows[f"{col}_hi"].astype(float)
            fig.add_trace(
                go.Scatter(x=x + x[::-1], y=hi.tolist() + lo[::-1], fill="toself",
                           fillcolor=colour, opacity=0.15, line={"width": 0},
                           hoverinfo="skip", legendgroup=name, showlegend=False),
                row=r, col=1,
            )  # fmt: skip
            fig.add_trace(
                go.Scatter(x=x, y=rows[f"{col}_mean"].astype(float).tolist(), mode="lines",
                           line={"color": colour}, name=name, legendgroup=name,
                           showlegend=r == 1,
                           hovertemplate=f"{name} step %{{x}}<br>{col} %{{y:.3f}}<extra></extra>"),
                row=r, col=1,
            )  # fmt: skip
        gap = rows["purity_gap"].astype(float)
        ident = rows["identifiable"].astype(bool)
        fig.add_trace(
            go.Scatter(x=x, y=gap.where(ident).tolist(), mode="lines+markers",
                       line={"color": colour}, marker={"size": 4}, legendgroup=name,
                       showlegend=False, name=name,
                       hovertemplate=f"{name} step %{{x}}<br>gap %{{y:.3f}}<extra></extra>"),
            row=3, col=1,
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(x=x, y=gap.tolist(), mode="lines", line={"color": colour, "dash": "dot",
                       "width": 1}, legendgroup=name, showlegend=False, hoverinfo="skip"),
            row=3, col=1,
        )  # fmt: skip
    if has_acc:
        steps = trajectory.steps.sort_values("step")
        fig.add_trace(
            go.Scatter(x=steps["step"].tolist(), y=steps["accuracy"].astype(float).tolist(),
                       mode="lines+markers", line={"color": "black"}, name="accuracy"),
            row=len(titles), col=1,
        )  # fmt: skip
    for r in range(1, len(titles) + 1):
        fig.update_yaxes(range=_RANGE, row=r, col=1)
    fig.update_xaxes(title_text="training step", row=len(titles), col=1)
    fig.update_layout(
        title=title or "Scores over training", height=220 * len(titles) + 80, width=820
    )
    return fig
