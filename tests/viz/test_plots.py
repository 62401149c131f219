"""Plots are pure functions of result objects: check traces and axis titles."""

import pandas as pd
import pytest
import torch

import rope_behavior as rb
from rope_behavior import plots
from rope_behavior.viz.head_plots import IDENTIFIABLE_NAME, UNIDENTIFIABLE_NAME


def test_omega_spectrum(bridge_factory):
    spec = rb.RopeSpec.from_model(bridge_factory("gemma3"))
    fig = plots.omega_spectrum(spec)
    # Gemma-3 mixes a local and a global base: two distinct tables
    assert len(fig.data) == 2
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.xaxis.title.text.startswith("pair index")
    assert list(fig.data[0].y) == pytest.approx(spec.wavelength[0].tolist())


def test_usage_heatmap(bridge_factory, tokens):
    usage = rb.frequency_usage(rb.capture(bridge_factory("llama_gqa"), tokens))
    fig = plots.frequency_usage_heatmap(usage)
    assert fig.data[0].z.shape == (8, 8)
    assert fig.data[0].y[0] == "L0H0"
    one = plots.frequency_usage_heatmap(usage, layer=1, kind="norm_usage")
    assert one.data[0].z.shape == (4, 8)
    assert one.data[0].z[2, 3] == pytest.approx(float(usage.norm_usage[1, 2, 3]))
    with pytest.raises(ValueError, match="kind="):
        plots.frequency_usage_heatmap(usage, kind="nope")


def test_plane_marks_unidentifiable_heads():
    frame = pd.DataFrame(
        {
            "layer": [0, 0, 1],
            "head": [0, 1, 0],
            "s_pos": [0.9, 0.2, 1.0],
            "s_sym": [0.1, 0.95, 1.0],
            "identifiable": [True, True, False],
            "centroid": [1.0, 6.0, 3.0],
        }
    )
    fig = plots.positional_symbolic_plane(frame)
    assert [t.name for t in fig.data] == [IDENTIFIABLE_NAME, UNIDENTIFIABLE_NAME]
    # the hollow points are heads whose swaps move too little attention, not only the
    # near-uniform ones: the legend names the cause, not one case of it
    assert UNIDENTIFIABLE_NAME.startswith("not identifiable")
    assert "near-uniform, or little mass in the swapped blocks" in UNIDENTIFIABLE_NAME
    assert list(fig.data[0].x) == [0.9, 0.2]
    assert fig.data[1].marker.symbol == "circle-open"
    assert fig.layout.xaxis.title.text.startswith("s_POS")
    with pytest.raises(ValueError, match="lacks column 's_sym'"):
        plots.positional_symbolic_plane(frame.drop(columns="s_sym"))


def test_sweep_heatmap():
    rows = [
        {"layer": l_, "head": h, "band": b, "value": l_ + h / 10}
        for b in ("high", "low")
        for l_ in range(2)
        for h in range(3)
    ]
    fig = plots.sweep_heatmap(pd.DataFrame(rows))
    assert len(fig.data) == 2
    assert fig.data[0].z.shape == (2, 3)
    assert fig.layout.annotations[1].text == "low"
    # cell text: one decimal count, two significant digits of the largest value (1.2)
    assert fig.data[0].texttemplate == "%{text}"
    assert [list(r) for r in fig.data[0].text] == [["0.0", "0.1", "0.2"], ["1.0", "1.1", "1.2"]]


def test_sweep_heatmap_cell_text_is_short_and_hidden_when_cells_are_narrow():
    def frame(n_layers, n_heads, n_bands, values):
        rows = [
            {"layer": la, "head": h, "band": f"b{b}", "value": next(values)}
            for b in range(n_bands)
            for la in range(n_layers)
            for h in range(n_heads)
        ]
        return pd.DataFrame(rows)

    small = [0.1234, -0.000435, 0.0566, -0.149, -0.0042, 0.19, 0.0, 1e-9]
    fig = plots.sweep_heatmap(frame(2, 2, 2, iter(small)))
    texts = [t for trace in fig.data for row in trace.text for t in row]
    assert texts == ["0.12", "0.00", "0.06", "-0.15", "0.00", "0.19", "0.00", "0.00"]
    assert all(len(t) <= 5 for t in texts)  # never "-0.000435" (it was %{z:.3g})
    assert "-0.00" not in texts  # a value that rounds to zero has no sign
    assert "%{customdata}" in fig.data[0].hovertemplate  # the hover keeps the precise value
    assert fig.data[0].customdata[0][1] == "value = -0.000435"
    raw = plots.sweep_heatmap(frame(1, 2, 1, iter([12.3, -0.4])))
    assert list(raw.data[0].text[0]) == ["12", "0"]  # -0.4 rounds to 0 at this scale
    assert fig.data[0].textfont.size == 12  # 4 cells a band: room for the larger font
    # 4 bands x 4 heads: a ~34 px cell holds "-0.15" at 10 px only
    narrow = plots.sweep_heatmap(frame(1, 4, 4, iter([(-1) ** i * 0.15 for i in range(16)])))
    assert narrow.data[0].texttemplate == "%{text}"
    assert narrow.data[0].textfont.size == 10
    # 4 bands x 8 heads: a cell is ~17 px, too narrow for "-0.15": colour and hover only
    values = iter([(-1) ** i * 0.15 for i in range(2 * 8 * 4)])
    crowded = plots.sweep_heatmap(frame(2, 8, 4, values))
    assert all(t.texttemplate is None and t.text is None for t in crowded.data)
    many = plots.sweep_heatmap(frame(9, 8, 1, iter([0.5] * 72)))  # over 64 cells
    assert many.data[0].texttemplate is None


def test_accuracy_figures():
    res = pd.DataFrame(
        {
            "task": ["index"] * 3 + ["retrieval"] * 3,
            "setting": ["pair:0", "pair:1", "nope"] * 2,
            "seed": [0] * 6,
            "accuracy": [0.99, 0.5, 0.2, 0.3, 0.9, 0.98],
        }
    )
    fig = plots.accuracy_vs_pair(res)
    assert [t.name for t in fig.data] == ["index", "retrieval"]
    assert list(fig.data[0].x) == [0, 1]
    assert list(fig.data[0].y) == [0.99, 0.5]
    pos = pd.DataFrame(
        {
            "task": ["index"] * 4,
            "setting": ["pair:4"] * 4,
            "answer_position": [0, 1, 2, 3],
            "accuracy": [1.0, 0.3, 0.2, 0.9],
        }
    )
    fig2 = plots.accuracy_by_position(pos, task="index")
    assert list(fig2.data[0].y) == [1.0, 0.3, 0.2, 0.9]
    assert fig2.layout.xaxis.title.text == "answer position in the context"


def test_plane_from_score_objects(bridge_factory, tokens):
    model = bridge_factory("llama_gqa")
    gen = torch.Generator().manual_seed(0)
    toks = torch.randint(0, 97, (3, 33), generator=gen)
    scores = rb.score_heads(model, toks, block_size=4, n_swaps=4)
    usage = rb.frequency_usage(rb.capture(model, toks))
    fig = plots.positional_symbolic_plane(scores, usage)
    n_points = sum(len(t.x) for t in fig.data)
    assert n_points == 2 * 4
    summary = scores.mean()
    xs = sorted(x for t in fig.data for x in t.x)
    assert xs == pytest.approx(sorted(summary.s_pos_mean.flatten().tolist()))
    per_pair = rb.score_heads(model, toks, block_size=4, n_swaps=4, per_pair=True, layers=[0])
    with pytest.raises(ValueError, match="pair or query axis"):
        plots.positional_symbolic_plane(per_pair)


def test_sweep_heatmap_of_a_gqa_key_sweep(bridge_factory, gen):
    from rope_behavior import metrics
    from rope_behavior.patching.sweep import frequency_patching_sweep

    model = bridge_factory("llama_gqa")  # 4 query heads in 2 KV groups
    clean = torch.randint(3, 97, (2, 8), generator=gen)
    corrupted = torch.randint(3, 97, (2, 8), generator=gen)
    ld = metrics.logit_diff(5, 7)
    result = frequency_patching_sweep(model, clean, corrupted, ld, bands=2, target="k")
    frame = result.to_frame()
    assert "kv_head" in frame.columns
    assert "head" not in frame.columns
    fig = plots.sweep_heatmap(frame)
    assert len(fig.data) == 2
    assert fig.data[0].z.shape == (2, 2)
    assert fig.data[1].z[1, 0] == pytest.approx(float(result.values[1, 0, 1]))
    assert list(fig.data[0].x) == [0, 1]
    assert list(fig.data[0].y) == [0, 1]
    assert fig.layout.xaxis.title.text == "KV head"
    assert fig.layout.xaxis2.title.text == "KV head"
    assert fig.layout.yaxis.title.text == "layer"
    for axis in (fig.layout.xaxis, fig.layout.xaxis2, fig.layout.yaxis, fig.layout.yaxis2):
        assert axis.tickmode == "array"
        assert all(isinstance(v, int) for v in axis.tickvals)
    assert fig.layout.yaxis2.autorange == "reversed"  # every panel reads top-down alike
    assert fig.data[0].colorbar.title.text == f"{ld.name} (raw)"
    assert "query heads [2, 3]" in fig.data[0].customdata[0][1]
    norm = plots.sweep_heatmap(frame, value="normalized")
    assert norm.data[0].colorbar.title.text.startswith("normalized")


def test_sweep_heatmap_refuses_non_finite_values_and_marks_missing_cells():
    rows = [
        {"layer": l_, "head": h, "band": "high", "value": float(l_ + h), "normalized": float("nan")}
        for l_ in range(2)
        for h in range(3)
    ]
    frame = pd.DataFrame(rows)
    with pytest.raises(
        rb.RopeBehaviorError,
        match=r"column 'normalized' holds 6 non-finite values of 6, e.g. \(layer 0, head 0, band 'high'\).*baselines are equal",
    ):
        plots.sweep_heatmap(frame, value="normalized")
    broken = frame.copy()
    broken.loc[4, "value"] = float("inf")
    with pytest.raises(
        rb.RopeBehaviorError, match=r"holds 1 non-finite values of 6, e.g. \(layer 1, head 1"
    ):
        plots.sweep_heatmap(broken)
    with pytest.raises(rb.RopeBehaviorError, match=r"repeated \(layer, head, band\) rows"):
        plots.sweep_heatmap(pd.concat([frame, frame]))
    fig = plots.sweep_heatmap(frame.drop(index=5))  # layer 1, head 2 absent: a blank cell
    assert fig.data[0].customdata[1][2] == "no row in the frame (blank)"
    assert fig.data[0].customdata[0][0] == "value = 0"
    assert fig.data[0].colorbar.title.text == "metric (raw)"
    assert fig.layout.xaxis.title.text == "head"


def test_usage_heatmap_has_a_wavelength_axis(bridge_factory, tokens):
    usage = rb.frequency_usage(rb.capture(bridge_factory("llama_gqa"), tokens))
    fig = plots.frequency_usage_heatmap(usage)
    assert fig.layout.xaxis.ticktext[0] == "0<br>6.28"  # pair index over wavelength
    assert "wavelength" in fig.layout.xaxis.title.text
    assert fig.data[0].customdata[0][0] == "6.28"
    assert "wavelength %{customdata} tokens" in fig.data[0].hovertemplate


def test_accuracy_by_position_lines_never_share_colour_and_dash():
    settings = [f"pair:{p}" for p in range(16)] + ["all", "nope", "two_angle:0.1"]
    frame = pd.DataFrame(
        [
            {"task": t, "setting": s, "answer_position": p, "accuracy": 0.5}
            for t in ("index", "retrieval", "partial_induction")
            for s in settings
            for p in range(3)
        ]
    )
    one = plots.accuracy_by_position(frame, task="index")
    assert len(one.data) == 19
    assert len({t.line.color for t in one.data}) == 19  # one task: colours alone differ
    every = plots.accuracy_by_position(frame)
    assert len({(t.line.color, t.line.dash) for t in every.data}) == 57
    assert {t.line.dash for t in every.data} == {"solid", "dash", "dot"}  # dash: task
    assert isinstance(every.data[0].x, tuple)  # plain lists, not typed arrays
    with pytest.raises(rb.RopeBehaviorError, match="task='copy' has no rows"):
        plots.accuracy_by_position(frame, task="copy")


def test_omega_spectrum_names_the_layers_sharing_a_table(bridge_factory):
    spec = rb.RopeSpec.from_model(bridge_factory("llama_gqa"))
    fig = plots.omega_spectrum(spec)
    assert [t.name for t in fig.data] == ["layers 0, 1"]
    assert "bdata" not in fig.to_json()
