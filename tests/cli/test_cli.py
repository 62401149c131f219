"""The command line on offline random models."""

import pandas as pd

from rope_behavior import cli


def test_inspect_writes_spec_usage_and_figures(tmp_path, capsys):
    rc = cli.main(
        [
            "inspect",
            "--random",
            "gpt_neox",
            "--batch",
            "2",
            "--length",
            "24",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    assert "GPTNeoXForCausalLM" in capsys.readouterr().out
    spec = pd.read_csv(tmp_path / "spec.csv")
    assert set(spec["layer"]) == {0, 1, 2, 3}
    usage = pd.read_csv(tmp_path / "usage.csv")
    assert usage.groupby(["layer", "head"])["logit_usage"].sum().round(6).eq(1).all()
    assert (tmp_path / "usage.html").stat().st_size > 0


def test_scores_writes_the_plane(tmp_path):
    rc = cli.main(
        [
            "scores",
            "--random",
            "llama",
            "--batch",
            "2",
            "--length",
            "33",
            "--block-size",
            "4",
            "--n-swaps",
            "4",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    plane = pd.read_csv(tmp_path / "plane.csv")
    assert len(plane) == 4 * 8
    assert plane["s_pos_mean"].between(0, 1).all()
    assert (tmp_path / "plane.html").exists()


def test_unknown_family_is_refused(capsys):
    assert cli.main(["inspect", "--random", "gpt2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "--random: invalid choice: 'gpt2'" in err[0]
    assert "llama" in err[0]
