"""rope-behavior compare: the run folder's files, an edit that changes nothing, bad edits."""

import json

import pandas as pd

from rope_behavior.cli.app import main


def test_compare_writes_its_files(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--edit", "prope:0", "--edit", "linear:2", "--max-prompts", "4",
            "--batch-size", "4", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    names = {p.name for p in out.iterdir()}
    assert {"report.html", "compare.csv", "edits.csv", "summary.json", "run.json"} <= names
    heads = pd.read_csv(out / "compare.csv")
    assert set(heads["edit"]) == {"prope:0", "linear:2"}
    same = heads[heads["edit"] == "prope:0"]
    assert (same[["d_pos", "d_sym", "d_centroid_log_omega"]] == 0).all().all()
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["edit"]: r for r in summary["edits"]}
    assert rows["prope:0"]["d_loss"] == 0
    assert rows["linear:2"]["d_loss"] != 0
    assert 'id="edits"' in (out / "report.html").read_text()
    assert "EditComparison: 2 edits, 4 prompts" in capsys.readouterr().out


def test_bad_edits_exit_2_with_one_line(tmp_path, capsys):
    for edit, says in (("bogus:1", "--edit must be one of prope:<p>"),
                       ("prope:2", "edit 'prope:2': PRoPE: p=2.0")):  # fmt: skip
        assert main(["compare", "--edit", edit, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert says in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
