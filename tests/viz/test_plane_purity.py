"""The head classes (docs/method.md §4) on the plane's markers and in the report's table."""

import pandas as pd

from rope_behavior.viz import plots
from rope_behavior.viz.head_plots import PURITY_LEGEND, PURITY_SYMBOLS, UNIDENTIFIABLE_NAME
from rope_behavior.viz.html_report import report


def _frame():
    return pd.DataFrame(
        {
            "layer": [0, 0, 0, 1, 1],
            "head": [0, 1, 2, 0, 1],
            "s_pos": [0.95, 0.10, 0.97, 0.70, 0.50],
            "s_pos_lo": [0.90, 0.05, 0.95, 0.40, 0.40],
            "s_pos_hi": [0.99, 0.20, 0.99, 0.90, 0.60],
            "s_sym": [0.10, 0.95, 0.96, 0.60, 0.50],
            "s_sym_lo": [0.05, 0.90, 0.93, 0.40, 0.40],
            "s_sym_hi": [0.20, 0.99, 0.98, 0.80, 0.60],
            "identifiable": [True, True, True, True, False],
        }
    )


def test_plane_marks_each_class():
    frame = plots.plane_frame(_frame())
    assert list(frame["purity"]) == ["positional", "symbolic", "uniform", "mixed",
                                     "unidentifiable"]  # fmt: skip
    fig = plots.positional_symbolic_plane(frame, label_extremes=0)
    assert [t.name for t in fig.data] == [PURITY_LEGEND, UNIDENTIFIABLE_NAME]
    assert list(fig.data[0].marker.symbol) == [
        PURITY_SYMBOLS[c] for c in ("positional", "symbolic", "uniform", "mixed")
    ]
    assert fig.data[1].marker.symbol == "circle-open"
    assert "class: pure positional" in fig.data[0].hovertext[0]
    assert "class: unidentifiable" in fig.data[1].hovertext[0]


def test_plane_without_intervals_has_no_classes():
    frame = _frame().drop(columns=["s_sym_lo", "s_sym_hi"])
    assert "purity" not in plots.plane_frame(frame).columns
    fig = plots.positional_symbolic_plane(frame, label_extremes=0)
    assert fig.data[0].marker.symbol == "circle"


def test_report_heads_table_shows_the_class(tmp_path):
    page = report(tmp_path / "r.html", scores=_frame()).read_text()
    table = page[page.index('<section id="heads">') :]
    assert "<th>class</th>" in table
    for name in ("pure positional", "pure symbolic", "uniform", "mixed", "unidentifiable"):
        assert f"<td>{name}</td>" in table
    assert (
        "Heads by class</strong> (see Heads): 1 pure positional, 1 pure symbolic, 1 mixed, "
        "1 uniform, 1 unidentifiable" in page
    )
