"""Figures of scores over training: traces, frames, slider, axis titles."""

import pandas as pd
import pytest

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.tracking import Trajectory
from rope_behavior.viz.training_plots import plane_trajectories, score_curves


def _trajectory(accuracy: bool = True) -> Trajectory:
    rows = []
    for step, t in ((0, 0.0), (10, 0.5), (20, 1.0)):
        for head, (pos, sym) in enumerate(((1 - 0.1 * t, 1 - 0.9 * t), (1 - 0.8 * t, 1 - 0.1 * t))):
            rows.append({
                "step": step, "layer": 0, "head": head, "s_pos_mean": pos, "s_sym_mean": sym,
                "s_pos_lo": pos - 0.05, "s_pos_hi": min(pos + 0.05, 1), "s_sym_lo": sym - 0.05,
                "s_sym_hi": min(sym + 0.05, 1), "identifiable": step > 0,
                "purity_gap": abs(pos - sym),
                "purity": "uniform" if step == 0 else ("positional", "symbolic")[head],
            })  # fmt: skip
    steps = pd.DataFrame({"step": [0, 10, 20], "seconds": [0.1, 0.1, 0.1]})
    if accuracy:
        steps["accuracy"] = [0.1, 0.6, 1.0]
    return Trajectory(pd.DataFrame(rows), pd.DataFrame({"step": []}), steps)


def test_plane_trajectories_has_a_path_per_head_and_a_frame_per_step():
    fig = plane_trajectories(_trajectory())
    paths = [t for t in fig.data if t.name.endswith("path")]
    assert [t.name for t in paths] == ["L0H0 path", "L0H1 path"]
    assert list(paths[0].x) == pytest.approx([1.0, 0.95, 0.9])
    assert [f.name for f in fig.frames] == ["0", "10", "20"]
    assert [s["label"] for s in fig.layout.sliders[0].steps] == ["0", "10", "20"]
    assert fig.layout.sliders[0].active == 2
    first = fig.frames[0].data[0]
    assert list(first.x) == [1.0, 1.0]
    assert list(first.marker.symbol) == ["circle-open"] * 2
    assert list(fig.frames[-1].data[0].customdata) == ["positional", "symbolic"]
    markers = fig.data[-1]  # the last step at first
    assert list(markers.x) == pytest.approx([0.9, 0.2])
    assert list(markers.text) == ["L0H0", "L0H1"]
    assert fig.layout.xaxis.title.text == "s_POS (positional score)"
    assert fig.layout.yaxis.title.text == "s_SYM (symbolic score)"


def test_score_curves_panels_and_accuracy():
    fig = score_curves(_trajectory())
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["s_POS (positional score)", "s_SYM (symbolic score)",
                      "purity gap |s_POS − s_SYM|", "accuracy (reported by the training loop)"]  # fmt: skip
    acc = [t for t in fig.data if t.name == "accuracy"]
    assert len(acc) == 1
    assert list(acc[0].y) == [0.1, 0.6, 1.0]
    assert fig.layout.xaxis4.title.text == "training step"
    assert len(score_curves(_trajectory(accuracy=False)).layout.annotations) == 3


def test_an_empty_trajectory_is_refused():
    with pytest.raises(RopeBehaviorError, match="holds no scored step"):
        plane_trajectories(Trajectory.empty())
    with pytest.raises(RopeBehaviorError, match=r"expected a rope_behavior\.tracking\.Trajectory"):
        score_curves(pd.DataFrame())
