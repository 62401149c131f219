"""The task x setting x seed experiment: files, columns, errors, the CLI, and (slow) the
headline effects of docs/method.md §5 on the quick sweep."""

import pandas as pd
import pytest

from rope_behavior import cli
from rope_behavior.tasks import IndexTask, RetrievalTask, TrainConfig, run_experiment
from rope_behavior.tasks import experiment as experiment_module

TINY_TASKS = {
    "index": IndexTask(length=6, n_symbols=4),
    "retrieval": RetrievalTask(length=6, n_symbols=6, n_attributes=3),
}
TINY = {
    "tasks": TINY_TASKS,
    "seeds": 1,
    "train_config": TrainConfig(steps=4, batch_size=16, eval_every=2, eval_batch_size=32, progress=False),
    "n_eval": 32,
    "n_per_position": 4,
    "n_plane": 8,
    "model_options": {"d_head": 8},
}


def test_tiny_experiment_writes_the_csvs(tmp_path):
    lines: list[str] = []
    result = run_experiment(
        settings=["all", "pair:1", "nope"], out_dir=tmp_path, progress=lines.append, **TINY
    )
    assert len(lines) == 6
    assert [f.name for f in result.files] == ["results.csv", "by_position.csv", "plane.csv"]
    results = pd.read_csv(tmp_path / "results.csv")
    assert list(results.columns) == [
        "task", "setting", "pair", "seed", "accuracy", "train_accuracy", "steps",
        "stopped_early", "seconds", "final_loss",
    ]
    assert list(results["task"]) == ["index"] * 3 + ["retrieval"] * 3
    assert list(results["setting"]) == ["all", "pair:1", "nope"] * 2
    assert results["pair"].isna().tolist() == [True, False, True] * 2
    assert results["pair"][1] == 1
    assert results["accuracy"].between(0, 1).all()
    assert (results["steps"] == 4).all()
    positions = pd.read_csv(tmp_path / "by_position.csv")
    assert list(positions.columns) == ["task", "setting", "seed", "answer_position", "accuracy"]
    assert len(positions) == 2 * 3 * 6
    assert sorted(set(positions["answer_position"])) == list(range(6))
    plane = pd.read_csv(tmp_path / "plane.csv")
    assert {"task", "setting", "layer", "head", "s_pos", "s_sym", "answer_attention"} <= set(plane.columns)
    assert list(plane["setting"]) == ["all"] * 4  # 2 tasks x 2 heads, trained under 'all' only
    assert result.summary().shape == (2, 3)


def test_runs_are_deterministic():
    a = run_experiment(settings=["pair:0"], progress=False, **TINY).results
    b = run_experiment(settings=["pair:0"], progress=False, **TINY).results
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": ["index", "copy"]}, r"unknown task 'copy'; options: index, retrieval, partial_induction"),
        ({"settings": ["pair:99"]}, r"pair 99 is out of range"),
        ({"settings": ["rope"]}, r"unknown frequency setting 'rope'; options:"),
        ({"settings": []}, r"settings is empty"),
        ({"seeds": 0}, r"seeds=0; expected a count >= 1"),
        ({"workers": 0}, r"workers must be an int >= 1; got 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_experiment(**{**TINY, **kwargs})


def test_cli_tasks_writes_csvs_and_figures(tmp_path, monkeypatch, capsys):
    real = experiment_module.run_experiment

    def tiny(**kwargs):
        assert kwargs["quick"] is True
        assert kwargs["workers"] == 1
        return real(**{**kwargs, **TINY, "settings": ["pair:0", "all"], "progress": False})

    monkeypatch.setattr(experiment_module, "run_experiment", tiny)
    assert cli.main(["tasks", "--quick", "--out", str(tmp_path), "--workers", "1"]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {
        "results.csv", "by_position.csv", "plane.csv",
        "accuracy_vs_pair.html", "accuracy_by_position.html", "plane.html", "run.json",
    }
    assert "4 runs in" in capsys.readouterr().out
    html = (tmp_path / "plane.html").read_text()
    tasks = set(pd.read_csv(tmp_path / "plane.csv")["task"])
    assert len(tasks) >= 2
    for task in tasks:  # every task's heads are drawn (the first one's too)
        assert f'"name":"{task} \\u00b7 ' in html, task


def _mean(results, task, setting):
    part = results[(results["task"] == task) & (results["setting"] == setting)]
    assert len(part), (task, setting)
    return float(part["accuracy"].mean())


@pytest.mark.slow
def test_quick_sweep_shows_the_headline_effects(tmp_path):
    """The bar of issue 5 on the quick sweep (pairs 0, 8, 15 of 16; one seed; 2 workers)."""
    result = run_experiment(quick=True, out_dir=tmp_path, workers=2, progress=False)
    r = result.results
    high, mid, low = "pair:0", "pair:8", "pair:15"
    assert _mean(r, "index", high) >= 0.95
    assert _mean(r, "index", "all") >= 0.95
    assert _mean(r, "index", low) <= 0.60
    assert _mean(r, "index", "nope") <= 0.60
    assert _mean(r, "retrieval", low) >= 0.95
    assert _mean(r, "retrieval", "nope") >= 0.95
    assert _mean(r, "retrieval", high) <= 0.60
    assert _mean(r, "partial_induction", "two_angle:0.1") >= 0.90
    assert _mean(r, "partial_induction", "nope") <= 0.60
    assert _mean(r, "partial_induction", high) <= 0.60
    # accuracy vs allowed pair: falling for Index, rising for Retrieval (pairs 0 -> 15)
    assert _mean(r, "index", high) > _mean(r, "index", mid) >= _mean(r, "index", low) - 0.05
    assert _mean(r, "retrieval", high) < _mean(r, "retrieval", mid) <= _mean(r, "retrieval", low) + 0.05
    # U-shape under the middle pair: both end positions above the middle half by >= 0.2
    pos = result.by_position
    curve = pos[(pos["task"] == "index") & (pos["setting"] == mid)].groupby("answer_position")["accuracy"].mean()
    n = len(curve)
    middle = float(curve.iloc[n // 4 : n - n // 4].mean())
    assert float(curve.iloc[0]) >= middle + 0.2
    assert float(curve.iloc[-1]) >= middle + 0.2
    # the plane: Index heads positional, Retrieval heads symbolic (heads doing the work)
    plane = result.plane[result.plane["identifiable"]]
    for task, axis in (("index", "s_pos"), ("retrieval", "s_sym")):
        heads = plane[plane["task"] == task]
        assert len(heads)
        assert (heads[axis] >= 0.8).all(), heads
