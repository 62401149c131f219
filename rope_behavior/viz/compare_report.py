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
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from rope_behavior.analysis.compare import EditComparison
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.viz.page import CSS, figure_div, write_atomic
from rope_behavior.viz.plotly_bundle import plotly_js

__all__ = ["compare_report", "edit_shift_figure"]


def _check(result: object) -> EditComparison:
    if not isinstance(result, EditComparison):
        raise RopeBehaviorError(
            f"expected the EditComparison compare_edits returns; got {type(result).__name__}"
        )
    return result


_SHORT = {"positional": "pos", "symbolic": "sym", "mixed": "mixed", "uniform": "uniform",
          "unidentifiable": "unident."}  # fmt: skip


def edit_shift_figure(result: EditComparison) -> go.Figure:
    """Per head the shift of s_POS (top) and s_SYM (bottom) under each edit, with its
    bootstrap interval as an error bar: one colour per edit, the same in both rows, edits
    side by side within each head; under each head its class on the unedited model."""
    result = _check(result)
    frame = result.to_frame()
    names = list(result.edits)
    palette = qualitative.Plotly if len(names) <= 10 else qualitative.Alphabet
    width = 0.8 / max(len(names), 1)  # the edits of one head share 0.8 of its slot
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06,
        subplot_titles=("shift of s_POS", "shift of s_SYM"),
    )  # fmt: skip
    heads: list[str] = []
    for i, name in enumerate(names):
        part = frame[frame["edit"] == name]
        heads = [f"L{r.layer}H{r.head}" for r in part.itertuples()]
        x = [h + (i - (len(names) - 1) / 2) * width for h in range(len(heads))]
        colour = palette[i % len(palette)]
        for row, side in ((1, "pos"), (2, "sym")):
            d = part[f"d_{side}"]
            fig.add_trace(go.Scatter(
                x=x, y=d, mode="markers", name=name, legendgroup=name, showlegend=row == 1,
                marker={"color": colour, "size": 6},
                customdata=heads,
                hovertemplate=f"{name}<br>%{{customdata}}: d s_{side.upper()} %{{y:.4f}}"
                              "<extra></extra>",
                error_y={"type": "data", "symmetric": False, "color": colour, "thickness": 1,
                         "array": part[f"d_{side}_hi"] - d, "arrayminus": d - part[f"d_{side}_lo"]},
            ), row=row, col=1)  # fmt: skip
    classes = [_SHORT.get(c, c) for c in result.purity]
    ticks = [f"{h}<br>{c}" for h, c in zip(heads, classes)]
    for row in (1, 2):
        fig.add_hline(y=0, line={"color": "grey", "width": 1}, row=row, col=1)
        fig.update_yaxes(title_text="edited - unedited", row=row, col=1)
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(heads))), ticktext=ticks)
    fig.update_xaxes(title_text="head (its class on the unedited model)", row=2, col=1)
    level = f"{result.confidence_level:.0%}"
    fig.update_layout(
        title=f"Score shift per head under each edit ({level} paired bootstrap over prompts)",
        legend_title_text="edit",
        height=640,
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
        f"<table><tr>{head}</tr>{body}</table>{figure_div('edits', fig)}"
        + (f"<ul>{notes_html}</ul>" if notes_html else "")
        + "</section>"
    )
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style>"
        f'<script type="text/javascript">{plotly_js([fig])}</script></head>'
        f"<body><h1>{html.escape(title)}</h1>{section}</body></html>\n"
    )
    write_atomic(path, page)
    return path
