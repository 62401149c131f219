"""The report of :func:`~rope_behavior.analysis.compare.compare_edits`: one section with a
figure of every head's score shift per edit (intervals as error bars) and the per-edit
table (loss, accuracy, metric, mean shifts of positional- and content-leaning heads).

:func:`edit_shift_figure` is pure (a result in, a Figure out); :func:`compare_report`
writes the self-contained page (plotly.js inlined once), atomically.
"""

import html
import math
import os
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from rope_behavior.analysis.compare import EditComparison
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.viz.html_report import _CSS, _figure_div, _write_atomic
from rope_behavior.viz.plotly_bundle import plotly_js

__all__ = ["compare_report", "edit_shift_figure"]


def _check(result: object) -> EditComparison:
    if not isinstance(result, EditComparison):
        raise RopeBehaviorError(
            f"expected the EditComparison compare_edits returns; got {type(result).__name__}"
        )
    return result


def edit_shift_figure(result: EditComparison) -> go.Figure:
    """Per head (x: ``L<layer>H<head>``) the shift of s_POS and s_SYM under each edit, with
    its bootstrap interval; one trace per edit and score."""
    result = _check(result)
    frame = result.to_frame()
    fig = go.Figure()
    for side, dash in (("pos", "circle"), ("sym", "diamond")):
        for name in result.edits:
            part = frame[frame["edit"] == name]
            x = [f"L{r.layer}H{r.head}" for r in part.itertuples()]
            d = part[f"d_{side}"]
            fig.add_trace(go.Scatter(
                x=x, y=d, mode="markers", name=f"{name}: d s_{side.upper()}",
                marker={"symbol": dash},
                error_y={"type": "data", "symmetric": False,
                         "array": part[f"d_{side}_hi"] - d, "arrayminus": d - part[f"d_{side}_lo"]},
            ))  # fmt: skip
    level = f"{result.confidence_level:.0%}"
    fig.update_layout(
        title=f"Score shift per head under each edit ({level} paired bootstrap over prompts)",
        xaxis_title="head",
        yaxis_title="shift (edited - unedited)",
    )
    return fig


def _cell(x: Any) -> str:
    if isinstance(x, float):
        return "" if math.isnan(x) else f"{x:.4f}"
    return html.escape(str(x))


def compare_report(
    result: EditComparison,
    path: str | os.PathLike[str],
    *,
    title: str = "rope_behavior: RoPE edits compared",
    notes: tuple[str, ...] = (),
) -> Path:
    """Write the one-section HTML report of ``result`` to ``path`` and return it."""
    result = _check(result)
    path = Path(path)
    if not path.parent.is_dir():
        raise RopeBehaviorError(f"report path {str(path)!r}: its folder does not exist")
    fig = edit_shift_figure(result)
    frame = result.edits_frame()
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    intro = (
        f"<p><strong>Model:</strong> {html.escape(result.model_name)}; {result.n_prompts} "
        f"prompts, {result.n_predictions} next-token predictions; intervals: "
        f"{result.confidence_level:.0%} percentile bootstrap over prompts of the paired mean "
        f"shift ({result.n_boot} resamples).</p>"
    )
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    section = (
        f'<section id="edits"><h2>RoPE edits</h2>{intro}'
        f"<table><tr>{head}</tr>{body}</table>{_figure_div('edits', fig)}"
        + (f"<ul>{notes_html}</ul>" if notes_html else "")
        + "</section>"
    )
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{plotly_js([fig])}</script></head>'
        f"<body><h1>{html.escape(title)}</h1>{section}</body></html>\n"
    )
    _write_atomic(path, page)
    return path
