"""The length sweep's figure: accuracy and discrepancy against the length multiple.

Pure: it takes :class:`~rope_behavior.tasks.length_sweep.LengthSweep` (or its
``to_frame()`` table, or the CSV written from it) and returns a figure: one column per
task, rows accuracy / raw gap / normalised gap, log-x, one line per setting (the mean
over seeds)."""

from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from rope_behavior.errors import RopeBehaviorError

__all__ = ["length_sweep_figure"]

_COLUMNS = ("task", "setting", "multiple", "accuracy", "gap", "normalised_gap")
_ROWS = (("accuracy", "accuracy"), ("gap", "top-second logit gap"),
         ("normalised_gap", "normalised gap"))  # fmt: skip


def length_sweep_figure(sweep: Any) -> go.Figure:
    """Accuracy, gap and normalised gap vs length multiple (log-x), facets per task."""
    frame = sweep.to_frame() if hasattr(sweep, "to_frame") else sweep
    missing = [c for c in _COLUMNS if c not in getattr(frame, "columns", ())]
    if missing:
        raise RopeBehaviorError(
            f"length_sweep_figure: the table lacks columns {missing}; expected a LengthSweep "
            f"or its to_frame() with {list(_COLUMNS)}."
        )
    tasks = list(dict.fromkeys(frame["task"]))
    settings = list(dict.fromkeys(frame["setting"]))
    fig = make_subplots(rows=len(_ROWS), cols=len(tasks), column_titles=tasks,
                        shared_xaxes=True, horizontal_spacing=0.08, vertical_spacing=0.06)  # fmt: skip
    palette = qualitative.Plotly
    shown: set[str] = set()
    means = (
        frame.groupby(["task", "setting", "multiple"], sort=False)[[name for name, _ in _ROWS]]
        .mean()
        .reset_index()
    )
    for ci, task in enumerate(tasks, start=1):
        for si, setting in enumerate(settings):
            part = means[(means["task"] == task) & (means["setting"] == setting)]
            if part.empty:
                continue
            shown_now = setting in shown
            for ri, (name, _) in enumerate(_ROWS, start=1):
                fig.add_trace(
                    go.Scatter(x=part["multiple"], y=part[name], mode="lines+markers",
                               name=setting, legendgroup=setting,
                               showlegend=ri == 1 and not shown_now,
                               line={"color": palette[si % len(palette)]}),
                    row=ri, col=ci,
                )  # fmt: skip
            shown.add(setting)
    for ri, (_, title) in enumerate(_ROWS, start=1):
        fig.update_yaxes(title_text=title, row=ri, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1)
    fig.update_xaxes(type="log")
    fig.update_xaxes(title_text="length / training length", row=len(_ROWS))
    fig.update_layout(title="Length sweep: accuracy and discrepancy",
                      legend_title_text="setting", height=260 * len(_ROWS),
                      width=max(520, 420 * len(tasks)))  # fmt: skip
    return fig
