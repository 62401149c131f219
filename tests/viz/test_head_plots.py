"""Head figures (rope_behavior.viz.head_plots): the plane and per-pair curves, on traces/layout."""

import math

import pandas as pd
import pytest
import torch

import rope_behavior as rb
from rope_behavior import plots
from rope_behavior.viz.head_plots import CORNER_TEXT, format_wavelength, pair_ticks


@pytest.fixture(scope="module")
def measured():
    from tests.models import make_bridge

    model = make_bridge("llama_gqa")  # 2 layers x 4 heads, 8 pairs
    toks = torch.randint(3, 97, (3, 33), generator=torch.Generator().manual_seed(0))
    return {
        "spec": rb.RopeSpec.from_model(model),
        "usage": rb.frequency_usage(rb.capture(model, toks)),
        "summary": rb.score_heads(model, toks, block_size=4, n_swaps=4).mean(n_boot=200),
        "pairs": rb.score_heads(model, toks, block_size=4, n_swaps=4, per_pair=True).mean(
            n_boot=200
        ),
    }


def _frame() -> pd.DataFrame:
    """Eight heads: three positional, two symbolic, one at the corner, two unidentifiable."""
    pos = [0.95, 0.90, 0.80, 0.70, 0.10, 0.20, 0.97, 0.99, 0.05]
    sym = [0.05, 0.10, 0.25, 0.30, 0.90, 0.60, 0.98, 0.02, 0.95]
    return pd.DataFrame(
        {
            "layer": [0, 0, 0, 0, 1, 1, 1, 1, 1],
            "head": [0, 1, 2, 3, 0, 1, 2, 3, 4],
            "s_pos": pos,
            "s_sym": sym,
            "identifiable": [True] * 7 + [False, False],
        }
    )


def _no_typed_arrays(fig) -> bool:
    return "bdata" not in fig.to_json()  # numpy arrays would travel as typed arrays


def test_plane_hover_lists_scores_intervals_and_diagnostics(measured):
    s, usage = measured["summary"], measured["usage"]
    fig = plots.positional_symbolic_plane(s, usage)
    trace = fig.data[0]
    first = trace.hovertext[0]
    layer, head = 0, 0
    assert first.startswith(f"<b>L{layer}H{head}</b>")
    lo, hi = float(s.s_pos_lo[0, 0]), float(s.s_pos_hi[0, 0])
    assert f"s_POS = {float(s.s_pos_mean[0, 0]):.3f} [{lo:.3f}, {hi:.3f}] (95% CI)" in first
    assert f"[{float(s.s_sym_lo[0, 0]):.3f}, {float(s.s_sym_hi[0, 0]):.3f}]" in first
    assert f"identifiable fraction {float(s.identifiable_fraction[0, 0]):.0%}" in first
    assert f"swapped mass {float(s.swapped_mass[0, 0]):.3f}" in first
    assert f"frequency centroid: pair {float(usage.centroid[0, 0]):.2f}" in first
    assert trace.hovertemplate == "%{hovertext}<extra></extra>"
    # error bars are the bootstrap interval, with an explicit colour (see _errors)
    assert trace.error_x.arrayminus[0] == pytest.approx(float(s.s_pos_mean[0, 0]) - lo)
    assert trace.error_x.color is not None
    assert _no_typed_arrays(fig)


def test_plane_colour_by_layer_or_centroid(measured):
    s, usage = measured["summary"], measured["usage"]
    by_centroid = plots.positional_symbolic_plane(s, usage)  # auto: centroid with usage
    xs = [x for t in by_centroid.data for x in t.marker.color]
    assert sorted(xs) == pytest.approx(sorted(usage.centroid.flatten().tolist()))
    assert by_centroid.data[0].marker.colorbar.title.text.startswith("frequency")
    by_layer = plots.positional_symbolic_plane(s, usage, color="layer")
    assert sorted(c for t in by_layer.data for c in t.marker.color) == [0.0] * 4 + [1.0] * 4
    assert by_layer.data[0].marker.colorbar.title.text == "layer"
    assert plots.positional_symbolic_plane(s).data[0].marker.colorbar.title.text == "layer"
    assert plots.positional_symbolic_plane(s, color=None).data[0].marker.color is None
    with pytest.raises(rb.RopeBehaviorError, match=r"color='centroid' .* pass usage="):
        plots.positional_symbolic_plane(s, color="centroid")
    with pytest.raises(rb.RopeBehaviorError, match=r"color='head'; expected one of"):
        plots.positional_symbolic_plane(s, color="head")


def test_plane_colour_bar_and_legend_do_not_overlap(measured):
    fig = plots.positional_symbolic_plane(measured["summary"], measured["usage"])
    assert fig.layout.legend.orientation == "h"
    assert fig.layout.legend.y < 0  # below the plot
    assert fig.data[0].marker.colorbar.x >= 1  # right of the plot, fixed
    assert fig.data[0].marker.showscale  # one colour bar, on the first trace
    assert all(t.showlegend for t in fig.data)
    two = plots.positional_symbolic_plane(_frame())  # two traces, one shared scale
    assert [t.marker.showscale for t in two.data] == [True, False]
    assert (two.data[0].marker.cmin, two.data[0].marker.cmax) == (0, 1)
    assert (two.data[1].marker.cmin, two.data[1].marker.cmax) == (0, 1)
    one_layer = plots.positional_symbolic_plane(_frame().assign(layer=0), color="layer")
    assert one_layer.data[0].marker.showscale is False  # one value: no scale to read


def test_plane_marks_the_uniform_corner_and_labels_extreme_heads():
    fig = plots.positional_symbolic_plane(_frame(), label_extremes=3, label_all=0)
    notes = {a.text: a for a in fig.layout.annotations}
    corner = notes.pop(CORNER_TEXT)
    assert (corner.x, corner.y) == (1, 1)
    assert CORNER_TEXT.startswith("uniform attention scores (1, 1)")  # what lands there
    assert any(s.type == "circle" and s.x0 < 1 < s.x1 for s in fig.layout.shapes)
    # the three most positional and the two symbolic identifiable heads off the corner
    assert set(notes) == {"L0H0", "L0H1", "L0H2", "L1H0", "L1H1"}
    assert (notes["L0H0"].x, notes["L0H0"].y) == (0.95, 0.05)
    pos, sym = plots.extreme_heads(_frame(), k=3)
    assert list(zip(pos["layer"], pos["head"])) == [(0, 0), (0, 1), (0, 2)]
    assert list(zip(sym["layer"], sym["head"])) == [(1, 0), (1, 1)]
    assert len(plots.positional_symbolic_plane(_frame(), label_extremes=0).layout.annotations) == 1


def test_pair_score_curves_of_chosen_and_default_heads(measured):
    s, spec = measured["pairs"], measured["spec"]
    fig = plots.pair_score_curves(s, spec, heads=[(0, 1), (1, 2)])
    assert [t.name for t in fig.data] == ["s_POS", "s_SYM", "s_POS", "s_SYM"]
    assert [a.text for a in fig.layout.annotations] == ["L0H1", "L1H2"]
    assert list(fig.data[0].x) == list(range(spec.n_pairs))
    assert list(fig.data[3].y) == pytest.approx(s.s_sym_mean[1, 2].tolist())
    assert fig.data[0].customdata[0] == format_wavelength(float(spec.wavelength[0, 0])) == "6.28"
    assert "wavelength %{customdata} tokens" in fig.data[0].hovertemplate
    assert fig.layout.xaxis.ticktext[0] == "0<br>6.28"
    assert fig.layout.xaxis.title.text.startswith("pair index")
    assert fig.data[0].showlegend
    assert not fig.data[2].showlegend
    assert _no_typed_arrays(fig)
    # default: the heads whose curves separate most
    sep = (s.s_pos_mean - s.s_sym_mean).abs().amax(-1)
    best = int(sep.flatten().argmax())
    auto = plots.pair_score_curves(s, measured["usage"], top=2)
    assert auto.layout.annotations[0].text == f"L{best // 4}H{best % 4}"
    assert len(auto.data) == 4
    bare = plots.pair_score_curves(s, heads=[(0, 0)])  # no wavelengths: pair index only
    assert bare.layout.xaxis.ticktext[0] == "0"


def test_pair_score_curve_ticks_do_not_collide(measured):
    s, spec = measured["pairs"], measured["spec"]
    two = plots.pair_score_curves(s, spec, heads=[(0, 1), (1, 2), (1, 3)])  # 2 columns
    for axis in (two.layout.xaxis, two.layout.xaxis2, two.layout.xaxis3):
        assert axis.tickangle == 0  # never rotated: a turned two-line label misreads
        assert len(axis.tickvals) <= 5
        assert list(axis.tickvals) == [0, 2, 4, 6]  # 8 pairs, a round step
    assert "<br>(wavelength, tokens)" in two.layout.xaxis3.title.text  # fits a narrow panel
    one = plots.pair_score_curves(s, spec, heads=[(0, 1)])  # one wide panel: up to 8
    assert list(one.layout.xaxis.tickvals) == list(range(8))


def test_pair_ticks_take_a_round_step():
    assert pair_ticks(None, 16)["tickvals"] == list(range(0, 16, 2))
    assert pair_ticks(None, 16, max_ticks=5)["tickvals"] == [0, 4, 8, 12]
    assert pair_ticks(None, 64, max_ticks=5)["tickvals"] == [0, 16, 32, 48]
    assert pair_ticks(None, 100)["tickvals"] == list(range(0, 100, 10))
    assert pair_ticks(None, 1)["tickvals"] == [0]
    assert pair_ticks([6.2832] * 64, 64, max_ticks=5)["ticktext"][1] == "16<br>6.28"
    assert pair_ticks(None, 8)["tickangle"] == 0


def test_pair_score_curves_refuse_bad_inputs(measured):
    with pytest.raises(rb.RopeBehaviorError, match=r"takes per-pair scores .* without a pair axis"):
        plots.pair_score_curves(measured["summary"])
    with pytest.raises(
        rb.RopeBehaviorError, match=r"\(layer 5, head 0\) is not in .* layers \[0, 1\]"
    ):
        plots.pair_score_curves(measured["pairs"], heads=[(5, 0)])
    with pytest.raises(rb.RopeBehaviorError, match="heads is empty"):
        plots.pair_score_curves(measured["pairs"], heads=[])


def test_format_wavelength():
    assert [format_wavelength(w) for w in (6.2832, 628.3, 19_900.0, 2.5e6)] == [
        "6.28",
        "628",
        "19.9k",
        "2.5M",
    ]
    assert format_wavelength(math.inf) == "∞"  # a pair that does not rotate
    assert format_wavelength(math.nan) == "n/a"


def _label_boxes(fig, size=560.0, lo=-0.05, hi=1.08):
    """Pixel boxes of the head labels, as the placement computed them."""
    from rope_behavior.viz.labels import _box

    scale = size / (hi - lo)
    return [
        _box((a.x - lo) * scale + a.ax, (hi - a.y) * scale + a.ay, a.text)
        for a in fig.layout.annotations
        if a.text != CORNER_TEXT
    ]


def test_plane_labels_every_head_of_a_small_model_without_collisions():
    from rope_behavior.viz.labels import _overlap

    # a crowded cluster: 12 heads within 0.05 of each other
    g = torch.Generator().manual_seed(0)
    rows = [
        {"layer": i // 4, "head": i % 4, "s_pos": 0.45 + 0.05 * float(torch.rand(1, generator=g)),
         "s_sym": 0.85 + 0.05 * float(torch.rand(1, generator=g)), "identifiable": True}
        for i in range(12)
    ]  # fmt: skip
    fig = plots.positional_symbolic_plane(pd.DataFrame(rows), color=None)
    texts = [a.text for a in fig.layout.annotations if a.text != CORNER_TEXT]
    assert sorted(texts) == sorted(f"L{r['layer']}H{r['head']}" for r in rows)
    boxes = _label_boxes(fig)
    assert all(_overlap(a, b) == 0 for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    many = [dict(r, layer=i) for i, r in enumerate(rows * 5)]  # 60 heads: extremes only
    big = plots.positional_symbolic_plane(pd.DataFrame(many), color=None, label_extremes=2)
    assert len(big.layout.annotations) == 1 + 2  # the corner and 2 symbolic extremes


def test_plane_uses_a_label_column_for_text_hover_and_annotations():
    toy = pd.DataFrame(
        [
            {"layer": 0, "head": 0, "label": "index", "s_pos": 1.0, "s_sym": 0.01},
            {"layer": 0, "head": 0, "label": "retrieval", "s_pos": 0.01, "s_sym": 1.0},
            {"layer": 0, "head": 0, "label": "partial induction", "s_pos": 0.12, "s_sym": 0.88},
        ]
    )
    fig = plots.positional_symbolic_plane(toy, color=None)
    notes = {a.text for a in fig.layout.annotations}
    assert {"index", "retrieval", "partial induction"} <= notes
    assert "L0H0" not in notes
    assert [t.split("<br>")[0] for t in fig.data[0].hovertext] == [
        "<b>index</b>", "<b>retrieval</b>", "<b>partial induction</b>"
    ]  # fmt: skip
