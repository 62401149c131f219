"""Every number, seed and device the command line takes is checked where it enters, every
combination it cannot honour is refused, and every refusal is one line with exit code 2."""

import subprocess
import sys

import pytest

from rope_behavior.cli.app import main
from rope_behavior.cli.parsers import parser

CLI = [sys.executable, "-m", "rope_behavior.cli"]

# every numeric option of every command, and what it must be
NUMERIC = {
    "analyze": {"--max-prompts": "positive", "--context": "positive", "--batch-size": "positive",
                "--block-size": "positive", "--seed": "seed", "--workers": "positive"},
    "demo": {"--max-prompts": "positive", "--context": "positive", "--batch-size": "positive",
             "--block-size": "positive", "--seed": "seed"},
    "sweep": {"--max-prompts": "positive", "--context": "positive", "--seed": "seed",
              "--workers": "positive"},
    "inspect": {"--batch": "positive", "--length": "positive", "--seed": "seed"},
    "scores": {"--batch": "positive", "--length": "positive", "--seed": "seed",
               "--block-size": "positive"},
    "tasks": {"--seeds": "positive", "--workers": "positive", "--threads": "positive"},
    "compare": {"--max-prompts": "positive", "--context": "positive", "--batch-size": "positive",
                "--block-size": "positive", "--seed": "seed"},
}  # fmt: skip
BAD = {
    "positive": ["-1", "0", "1.5", "abc", "", "1e3"],
    "seed": ["-1", "1.5", "x", str(2**63), str(2**64)],
}
EXPECTED = {"positive": "a positive integer", "seed": "an integer seed in [0, 9223372036854775807]"}


def _err(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_every_numeric_option_is_listed():
    """NUMERIC covers every option of every command whose parser converts a number."""
    ap = parser("test")
    sub = next(a for a in ap._actions if a.dest == "command")
    for name, p in sub.choices.items():
        numeric = {a.option_strings[0] for a in p._actions
                   if a.option_strings and getattr(a.type, "__name__", "") in ("positive_int", "seed", "nonneg_int")}  # fmt: skip
        assert numeric == set(NUMERIC[name]), name


CASES = [
    (c, o, v, kind) for c, opts in NUMERIC.items() for o, kind in opts.items() for v in BAD[kind]
]


@pytest.mark.parametrize(("cmd", "option", "value", "kind"), CASES)
def test_bad_numbers_are_refused_naming_the_option(tmp_path, capsys, cmd, option, value, kind):
    out = tmp_path / "out"
    assert main([cmd, option, value, "--out", str(out)]) == 2
    line = _err(capsys)
    assert line == (
        f"rope-behavior {cmd}: error: {option} must be {EXPECTED[kind]}, got {value!r} "
        f"(see: rope-behavior {cmd} --help)"
    )
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # no staging folder, no lock


@pytest.mark.parametrize(("args", "match"), [
    (["scores", "--random", "llama", "--n-swaps", "-3"], "--n-swaps must be 'auto', 'all' or a positive number of swaps, got '-3'"),
    (["scores", "--random", "llama", "--n-swaps", "0"], "--n-swaps must be 'auto', 'all' or a positive number"),
    (["scores", "--random", "llama", "--exclude-keys", "-1"], "--exclude-keys must be 'auto', 'bos', 'none' or key positions"),
    (["scores", "--random", "llama", "--exclude-keys", "first"], "got 'first'"),
    (["sweep", "--task", "index", "--bands", "0"], "--bands must be a positive integer, got '0'"),
    (["sweep", "--task", "index", "--bands", "-2"], "--bands must be a number of equal bands (>= 1) or band names separated by commas"),
    (["sweep", "--task", "index", "--bands", "high,,low"], "got 'high,,low'"),
    (["sweep", "--task", "index", "--bands", "top"], "high, mid, low, band:<i>/<k>, pair:<i>"),
    (["inspect", "--device", "gpu"], "--device must be a torch device such as cpu, cuda, cuda:1 or mps, got 'gpu'"),
    (["analyze", "--dtype", "float8"], "--dtype: invalid choice: 'float8'"),
    (["inspect", "--random", "gpt2"], "--random: invalid choice: 'gpt2'"),
    (["tasks"], "the following arguments are required: --out"),
    (["analyze", "--bogus"], "unrecognized arguments: --bogus"),
    (["nosuch"], "invalid choice: 'nosuch'"),
    ([], "the following arguments are required: COMMAND"),
])  # fmt: skip
def test_parse_errors_are_one_line(tmp_path, monkeypatch, capsys, args, match):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    line = _err(capsys)
    assert line.startswith("rope-behavior")
    assert ": error: " in line
    assert match in line
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("args", "match"), [
    (["inspect", "--random", "llama", "--text", "hello"], "--text needs a tokenizer and --random models have none"),
    (["inspect", "--random", "llama", "--device", "cuda"], "--device 'cuda' applies to MODEL; --random builds its model on the CPU"),
    (["scores", "--random", "llama", "some/model"], "--random llama builds a random-weight model, and MODEL 'some/model'"),
    (["inspect", "--text", "hello", "--batch", "2"], "--batch and --length size random-token prompts"),
    (["scores", "--text", "hello", "--length", "9"], "--batch and --length size random-token prompts"),
    (["analyze", "a/b", "--model", "c/d"], "MODEL 'a/b' and --model 'c/d' differ"),
    (["analyze", "--workers", "2"], "--workers 2 sets the number of Ray workers: add --ray"),
    (["sweep", "--task", "index", "--workers", "2"], "--workers 2 sets the number of Ray workers"),
    (["analyze", "--ray", "--device", "cpu"], "with --ray every worker uses its own GPU (or CPU): drop --device"),
    (["sweep", "--task", "index", "--model", "x/y"], "--task index sweeps the shipped Index model on its own prompts; MODEL is for"),
    (["sweep", "--task", "index", "--context", "64", "--dtype", "bfloat16"], "--context, --dtype are for a sweep of your own model"),
    (["sweep", "--clean", "a.txt"], "sweep needs --task index, or --clean FILE and --corrupted FILE"),
    (["scores", "--random", "llama", "--exclude-keys", "auto", "0"], "--exclude-keys auto stands alone"),
    (["inspect", "--random", "llama", "--device", "meta"], "applies to MODEL"),
    (["inspect", "--device", "meta"], "--device 'meta'; options: cpu, cuda, cuda:N, mps"),
])  # fmt: skip
def test_combinations_that_cannot_be_honoured_are_refused(
    tmp_path, monkeypatch, capsys, args, match
):
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--out", "o"]) == 2
    assert match in _err(capsys)
    assert not list(tmp_path.iterdir())


def test_a_missing_cuda_device_is_refused(tmp_path, capsys):
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert main(["inspect", "--device", f"cuda:{n}", "--out", str(tmp_path / "o")]) == 2
    line = _err(capsys)
    assert f"--device 'cuda:{n}'" in line
    assert ("no CUDA device" in line) if n == 0 else (f"has {n} CUDA device(s)" in line)


def test_argparse_errors_in_a_fresh_process_are_one_line(tmp_path):
    run = subprocess.run([*CLI, "inspect", "--batch", "-1"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "rope-behavior inspect: error: --batch must be a positive integer, got '-1' "
        "(see: rope-behavior inspect --help)"
    ]
    run = subprocess.run([*CLI, "tasks", "--threads", "0", "--out", "t"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 2
    assert len(run.stderr.splitlines()) == 1
    assert "--threads must be a positive integer, got '0'" in run.stderr


def test_context_beyond_the_position_table_is_clamped_out_loud(tmp_path, capsys):
    args = ["--random", "gpt_neox", "--batch", "1", "--length", "100000"]
    assert main(["inspect", *args, "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "--length 100000 is beyond the model's 512 positions (cfg.n_ctx): using 512" in out
    import pandas as pd

    assert len(pd.read_csv(tmp_path / "o" / "usage.csv"))


def test_analyze_context_beyond_the_shipped_lm_is_clamped_out_loud(tmp_path, capsys):
    out = tmp_path / "o"
    args = ["analyze", "--max-prompts", "2", "--batch-size", "2", "--context", "100000"]
    assert main([*args, "--out", str(out)]) == 0
    assert "--context 100000 is beyond the model's 128 positions (cfg.n_ctx): using 128" in (
        capsys.readouterr().out
    )
    import json

    assert json.loads((out / "summary.json").read_text())["prompts"] == 2


def test_help_is_plain_text_and_every_option_has_help(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert "``" not in top
    assert "What each attention head" in top
    ap = parser("test")
    sub = next(a for a in ap._actions if a.dest == "command")
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, p in sub.choices.items():
        assert helps[name], name
        assert p.description, name
        assert "``" not in p.description, name
        assert "docs/" not in p.description + str(helps[name]), name
        for action in p._actions:
            assert action.help, (name, action.dest)
            assert "docs/method.md" not in action.help
    for name in sub.choices:
        assert main([name, "--help"]) == 0
        text = capsys.readouterr().out
        assert "``" not in text
        assert "docs/method.md" not in text


def test_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rope-behavior {version('rope-behavior')}"


def test_model_is_accepted_positionally_and_as_an_option_everywhere():
    ap = parser("test")
    for cmd in ("analyze", "inspect", "scores", "sweep"):
        for args in (["x/y"], ["--model", "x/y"], ["x/y", "--model", "x/y"]):
            ns = ap.parse_args([cmd, *args])
            assert "x/y" in (ns.model, ns.model_arg), (cmd, args)
    assert ap.parse_args(["analyze"]).model is None  # the shipped LM
    assert ap.parse_args(["inspect"]).random is None


def test_inspect_takes_the_model_positionally(tmp_path, capsys):
    """inspect MODEL (a local folder) is the same model as inspect --model MODEL."""
    from rope_behavior.data.shipped_lm import shipped_lm_path

    lm = str(shipped_lm_path())
    printed = []
    for how in ([lm], ["--model", lm]):
        assert main(["inspect", *how, "--batch", "1", "--length", "8"]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1]
    assert "layer" in printed[0]


def test_scripts_and_readme_invocations_still_parse():
    """The command lines the README and the scripts use parse as before."""
    ap = parser("test")
    for line in (
        "analyze meta-llama/Llama-3.2-1B --out runs/llama",
        "analyze ./my-checkpoint --prompts prompts.txt",
        "analyze",
        "demo --out x",
        "sweep --task index --out DIR",
        "sweep --model M --clean a.txt --corrupted b.txt --bands 4 --out DIR",
        "inspect --random llama --out runs/inspect",
        "scores --random llama --out runs/scores",
        "tasks --quick --out runs/tasks-quick",
        "inspect --model meta-llama/Llama-3.2-1B --text hello world --out DIR",
    ):
        ap.parse_args(line.split())
    assert ap.parse_args(["sweep", "--task", "index"]).bands == 4
    assert ap.parse_args(["sweep", "--bands", "high,mid"]).bands == ["high", "mid"]


def test_debug_is_taken_after_the_command_too(tmp_path):
    from rope_behavior.errors import RopeBehaviorError

    with pytest.raises(RopeBehaviorError, match="no such model folder"):
        main(["analyze", str(tmp_path / "no" / "such"), "--debug", "--out", str(tmp_path / "o")])
    assert parser().parse_args(["inspect", "--random", "llama"]).debug is False


@pytest.mark.parametrize(("args", "match"), [
    (["analyze", "--context", "16"], "--context 16 is too short for --block-size 8: the scores swap two blocks of keys before the query, so a prompt needs at least 2 x 8 + 1 = 17 tokens"),
    (["demo", "--context", "40", "--block-size", "20"], "--context 40 is too short for --block-size 20"),
    (["scores", "--random", "llama", "--length", "16"], "--length 16 is too short for --block-size 8"),
    (["scores", "--random", "llama", "--block-size", "64"], "--length 128 is too short for --block-size 64"),
    (["sweep", "--task", "index", "--max-prompts", "3000000"], "--max-prompts 3000000 with --task index: at most 65536"),
])  # fmt: skip
def test_sizes_that_cannot_work_together_are_refused_before_any_work(tmp_path, capsys, args, match):
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    assert match in _err(capsys)
    assert not list(tmp_path.iterdir())


def test_tasks_workers_beyond_the_cpus_are_capped_out_loud(tmp_path, monkeypatch, capsys):
    from rope_behavior.cli import app
    from rope_behavior.tasks import experiment

    seen = {}

    def fake(**kwargs):  # stands in for the training: records what it was asked, then stops
        seen.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "run_experiment", fake)
    monkeypatch.setattr(app, "_cpus", lambda: 3)
    out = tmp_path / "t"
    assert (
        main(["tasks", "--quick", "--workers", "1000", "--threads", "2", "--out", str(out)]) == 130
    )
    assert "--workers 1000 is more than the 3 CPUs here: using 3" in capsys.readouterr().out
    assert (seen["workers"], seen["threads"], seen["quick"]) == (3, 2, True)
    assert not list(tmp_path.iterdir())  # interrupted: nothing written, no staging folder left
