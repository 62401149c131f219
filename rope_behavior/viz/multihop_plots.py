"""The multi-hop experiment's figure: accuracy over training beside the heads' trajectories
in the positional-symbolic plane, and where each layer ends.

Pure: it takes the experiment's tables (``MultiHopResult.accuracy`` of
:mod:`rope_behavior.tasks.multihop_experiment`, and a tracker's head rows,
``Trajectory.heads`` of :mod:`rope_behavior.tracking`, with a ``task`` column; or the
CSVs written from them) and returns a figure."""

from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from rope_behavior.errors import RopeBehaviorError

__all__ = ["multihop_training"]

_ACCURACY = ("task", "step", "hops", "accuracy")
_HEADS = ("task", "step", "layer", "s_pos_mean", "s_sym_mean", "identifiable")


def _check(frame: Any, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise RopeBehaviorError(
            f"multihop_training: {what} lacks columns {missing}; has {list(frame.columns)}."
        )


def multihop_training(accuracy: Any, heads: Any, *, task: str) -> go.Figure:
    """Three panels for ``task``: accuracy against step (pooled and per hop count);
    ``s_pos - s_sym`` of every layer's head against step (blank where the head is not
    identifiable); each layer's mean ``s_pos`` and ``s_sym`` at the last tracked step
    (hover: the head's ``purity`` class where the frame has one)."""
    _check(accuracy, _ACCURACY, "accuracy")
    _check(heads, _HEADS, "heads")
    acc = accuracy[accuracy["task"] == task]
    hd = heads[heads["task"] == task]
    if acc.empty or hd.empty:
        have = sorted(set(accuracy["task"]) & set(heads["task"]))
        raise RopeBehaviorError(f"multihop_training: no rows for task {task!r}; tasks: {have}.")
    fig = make_subplots(
        rows=1,
        cols=3,
        column_widths=[0.34, 0.38, 0.28],
        horizontal_spacing=0.1,
        subplot_titles=(
            "accuracy (held-out)",
            "s_POS − s_SYM of each layer's head",
            f"last step ({int(hd['step'].max())})",
        ),
    )
    for i, (hops, part) in enumerate(acc.groupby("hops", sort=True)):
        pooled = str(hops) == "all"
        fig.add_trace(
            go.Scatter(
                x=part["step"].tolist(),
                y=part["accuracy"].tolist(),
                mode="lines+markers",
                name="all hops" if pooled else f"{hops} hop{'s' if str(hops) != '1' else ''}",
                line={
                    "color": "black" if pooled else qualitative.Plotly[i % 10],
                    "width": 3 if pooled else 1.5,
                },
            ),
            row=1,
            col=1,
        )
    grid = hd.assign(diff=hd["s_pos_mean"] - hd["s_sym_mean"]).pivot_table(
        index="layer", columns="step", values="diff", aggfunc="mean"
    )
    shown = hd.pivot_table(index="layer", columns="step", values="identifiable", aggfunc="all")
    z = grid.where(shown.reindex_like(grid).fillna(False).astype(bool))
    fig.add_trace(
        go.Heatmap(
            x=[str(s) for s in grid.columns],
            y=grid.index.tolist(),
            z=z.values.tolist(),
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            # at the far right: between the panels it covered the last panel's axis
            colorbar={"title": "s_POS − s_SYM", "x": 1.01, "len": 0.9, "thickness": 14},
            hovertemplate="step %{x}<br>layer %{y}<br>s_POS − s_SYM %{z:.2f}<extra></extra>",
            showlegend=False,
        ),
        row=1,
        col=2,
    )
    last = hd[hd["step"] == hd["step"].max()].sort_values("layer")
    classes = last["purity"].tolist() if "purity" in last.columns else ["?"] * len(last)
    for column, colour, symbol in (
        ("s_pos_mean", "#d62728", "circle"),
        ("s_sym_mean", "#1f77b4", "diamond"),
    ):
        fig.add_trace(
            go.Scatter(
                x=last[column].tolist(),
                y=last["layer"].tolist(),
                mode="markers",
                marker={"color": colour, "symbol": symbol, "size": 9},
                name=f"{'s_POS' if column == 's_pos_mean' else 's_SYM'} (last step)",
                customdata=classes,
                hovertemplate="layer %{y}: %{x:.3f} (%{customdata})<extra></extra>",
            ),
            row=1,
            col=3,
        )
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02], row=1, col=1)
    fig.update_xaxes(title_text="step", type="category", row=1, col=2)
    fig.update_yaxes(title_text="layer", dtick=1, row=1, col=2)
    fig.update_xaxes(title_text="score", range=[-0.02, 1.02], row=1, col=3)
    # each layer's class (head_purity) on its tick, so a static image shows it too
    fig.update_yaxes(
        tickmode="array",
        tickvals=last["layer"].tolist(),
        ticktext=[f"{layer} {c}" for layer, c in zip(last["layer"].tolist(), classes)],
        row=1,
        col=3,
    )
    fig.update_layout(
        title=f"{task}: accuracy and heads over training (one head per layer)",
        height=460,
        width=1250,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig
