"""The main job at the command line: analyze / demo / sweep, and errors a user can act on."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from rope_behavior.cli.app import main

CLI = [sys.executable, "-m", "rope_behavior.cli"]


def _run(args, tmp_path, timeout=300):
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze")
    code = main(["analyze", "--out", str(out), "--max-prompts", "8", "--batch-size", "4"])
    assert code == 0
    return out


def test_analyze_writes_the_report_and_tables(analyzed):
    for name in ("report.html", "heads.csv", "usage.csv", "correspondence.csv", "summary.json"):
        assert (analyzed / name).is_file(), name
    heads = pd.read_csv(analyzed / "heads.csv")
    assert {
        "layer",
        "head",
        "s_pos_mean",
        "s_pos_lo",
        "s_pos_hi",
        "s_sym_mean",
        "identifiable_fraction",
        "swapped_mass",
        "centroid",
    } <= set(heads.columns)
    summary = json.loads((analyzed / "summary.json").read_text())
    assert summary["prompts"] == 8
    corr = summary["correspondence"]
    assert {"rho", "p_value", "rho_interval", "disagreement", "heads", "caveat"} <= set(corr)
    assert corr["rho_interval_method"] in ("Fisher z (Bonett-Wright)", "")
    assert not list(analyzed.glob(".*.tmp"))
    assert not list(analyzed.glob("*.tmp"))


def test_analyze_csv_equals_the_python_api(analyzed):
    from rope_behavior.analysis.main_job import analyze, tokenize_prompts
    from rope_behavior.data.heldout import heldout_texts
    from rope_behavior.data.shipped_lm import load_shipped_lm

    model = load_shipped_lm()
    tokens, mask = tokenize_prompts(model, heldout_texts(), 128, 8)
    api = analyze(model, tokens, attention_mask=mask, batch_size=4).heads_frame()
    cli = pd.read_csv(analyzed / "heads.csv")
    for col in ("s_pos_mean", "s_sym_mean", "s_pos_lo", "identifiable_fraction", "centroid"):
        torch.testing.assert_close(
            torch.tensor(cli[col].to_numpy()),
            torch.tensor(api[col].to_numpy()),
            atol=1e-9,
            rtol=0,
            equal_nan=True,
        )


def _one_line_error(run):
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    lines = [line for line in run.stderr.splitlines() if line.strip() and "it/s" not in line]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["analyze", "./no/such/folder"], "no such model folder"),
        (["analyze", "meta-llama/Llama-3.2-1B"], "cannot reach the Hugging Face hub"),
        (["analyze", "--prompts", "missing.txt"], "no such file"),
        (["analyze", "--prompts", "empty.txt"], "holds no prompt"),
        (["analyze", "--prompts", "bad.jsonl"], "line 1 is not JSON"),
        (["analyze", "--out", "afile/sub"], "cannot be written"),
        (["sweep"], "sweep needs --task index"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_no_report(
    tmp_path, monkeypatch, capsys, args, match
):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert (
        main([*args, *(["--out", "out"] if "--out" not in args and args[0] == "analyze" else [])])
        == 2
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert match in err[0]
    assert not list(tmp_path.rglob("report.html"))


def test_an_error_in_a_fresh_process_prints_one_line_and_exits_2(tmp_path):
    line = _one_line_error(_run(["analyze", "./no/such/folder"], tmp_path, timeout=120))
    assert line.startswith("rope-behavior analyze: error: no such model folder")


def test_non_rotary_folder_is_refused(tmp_path, capsys):
    import transformers

    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=32)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    assert main(["analyze", str(tmp_path / "gpt2"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "gpt2" in err[0]


def test_debug_shows_the_traceback(tmp_path):
    run = _run(["--debug", "analyze", "./no/such/folder"], tmp_path, timeout=120)
    assert run.returncode != 0
    assert "Traceback" in run.stderr


def test_sweep_task_index_resumes(tmp_path):
    out = tmp_path / "sw"
    assert main(["sweep", "--task", "index", "--out", str(out), "--max-prompts", "16"]) == 0
    first = pd.read_csv(out / "sweep.csv")
    assert main(["sweep", "--task", "index", "--out", str(out), "--max-prompts", "16"]) == 0
    pd.testing.assert_frame_equal(first, pd.read_csv(out / "sweep.csv"))
    assert (out / "sweep.html").is_file()


def test_ray_without_ray_installed_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["sweep", "--task", "index", "--ray", "--out", str(tmp_path / "o")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1
    assert "pip install 'rope_behavior[ray]'" in err[0]


def test_a_bad_worker_count_is_refused_where_it_enters(tmp_path, capsys):
    args = ["sweep", "--task", "index", "--ray", "--workers", "0", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [
        "rope-behavior sweep: error: --workers must be a positive integer, got '0' "
        "(see: rope-behavior sweep --help)"
    ]
    assert not (tmp_path / "o").exists()


def test_the_demo_sweeps_the_shipped_lm_copying_a_token():
    """``demo``'s patching prompts: a snippet of held-out code repeated up to a token seen
    once; clean and corrupted differ in that last token only, and the shipped LM copies the
    token that followed it (the metric's sign flips between the runs)."""
    from rope_behavior.cli.models import copy_patching_prompts
    from rope_behavior.data.heldout import heldout_texts
    from rope_behavior.data.shipped_lm import load_shipped_lm

    model = load_shipped_lm()
    clean, corrupted, metric = copy_patching_prompts(model, heldout_texts(), 8, 0)
    assert clean.shape == corrupted.shape == (8, 27)  # BOS, 16 tokens, their first 10 again
    assert torch.equal(clean[:, :-1], corrupted[:, :-1])
    assert torch.equal(clean[:, 17:], clean[:, 1:11])
    for row, bad, answer, wrong in zip(clean, corrupted, metric.answer, metric.wrong):
        snippet = row[1:17]
        for last, follower in ((row[-1], answer), (bad[-1], wrong)):
            (at,) = (snippet == last).nonzero()[:, 0].tolist()  # occurs once in the snippet
            assert snippet[at + 1] == follower
    assert metric.name.startswith("logit_diff(position=-1, answer=8 tokens ('")
    with torch.no_grad():
        assert float(metric(model(clean))) > 5  # 10.7 on the demo's 16 prompts
        assert float(metric(model(corrupted))) < -5  # -8.9
