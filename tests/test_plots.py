"""Plots are pure functions of result objects: check traces and axis titles."""

import pandas as pd
import pytest
import torch

import rope_behavior as rb
from rope_behavior import plots


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
    assert [t.name for t in fig.data] == ["identifiable", "near-uniform (unidentifiable)"]
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
