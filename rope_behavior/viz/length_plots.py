"""The length sweep's figure: accuracy and discrepancy against the length multiple.

Pure: it takes :class:`~rope_behavior.tasks.length_sweep.LengthSweep` (or its
``to_frame()`` table, or the CSV written from it) and returns a figure: one column per
task (titled with its training length where the table has ``length``), rows accuracy /
raw gap / normalised gap with one y scale per row (so the tasks compare at a glance),
log-x with a tick at every measured multiple, one line per setting (the mean over seeds),
and in the accuracy row a dotted grey line at chance where the table has a ``chance``
column."""

from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from rope_behavior.errors import RopeBehaviorError

__all__ = ["length_sweep_figure"]

_COLUMNS = ("task", "setting", "multiple", "accuracy", "gap", "normalised_gap")
_ROWS = (("accuracy", "accuracy"), ("gap", "gap (top − second logit)"),
         ("normalised_gap", "normalised gap"))  # fmt: skip
_CHANCE = {"color": "grey", "dash": "dot", "width": 1.5}


def _column_title(frame: Any, task: str) -> str:
    """``"index (trained at 16 tokens)"`` where the table has ``length``, else the task."""
    if "length" not in frame.columns:
        return task
    part = frame[frame["task"] == task]
    trained = sorted(set((part["length"] // part["multiple"]).astype(int)))
    return f"{task} (trained at {', '.join(map(str, trained))} tokens)"


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
    multiples = sorted(set(frame["multiple"]))
    titles = [_column_title(frame, task) for task in tasks]
    fig = make_subplots(rows=len(_ROWS), cols=len(tasks), column_titles=titles,
                        shared_xaxes=True, horizontal_spacing=0.06,
                        vertical_spacing=0.06)  # fmt: skip
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
        if "chance" in frame.columns:
            level = float(frame.loc[frame["task"] == task, "chance"].iloc[0])
            fig.add_trace(
                go.Scatter(x=[multiples[0], multiples[-1]], y=[level, level], mode="lines",
                           name="chance", legendgroup="chance", showlegend=ci == 1,
                           line=_CHANCE, hoverinfo="name+y"),
                row=1, col=ci,
            )  # fmt: skip
    for ri, (_, title) in enumerate(_ROWS, start=1):
        fig.update_yaxes(title_text=title, row=ri, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1)
    for ri, (name, _) in enumerate(_ROWS[1:], start=2):  # explicit scales
        # raw gaps are in each model's own logit units: one scale per task (a shared one
        # flattened the canonical tasks' curves under the multi-hop models' larger logits);
        # normalised gaps are comparable across tasks: one scale for the row
        groups: list[tuple[int | None, Any]] = [(None, means)]
        if name == "gap":
            groups = [(c, means[means["task"] == t]) for c, t in enumerate(tasks, start=1)]
        for col, part in groups:
            top = float(part[name].max()) if part[name].notna().any() else 1.0
            fig.update_yaxes(range=[0, 1.05 * top if top > 0 else 1.0], row=ri, col=col)
    fig.update_xaxes(type="log", tickvals=multiples, ticktext=[f"{m}×" for m in multiples])
    fig.update_xaxes(title_text="prompt length / training length", row=len(_ROWS))
    fig.update_layout(title="Length sweep: accuracy and discrepancy at the query, mean over heads",
                      legend_title_text="setting", height=260 * len(_ROWS),
                      width=max(560, 440 * len(tasks)), template="plotly_white")  # fmt: skip
    return fig
