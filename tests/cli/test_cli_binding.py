"""``analyze --prompts binding`` draws the built-in binding prompts with the model's
tokenizer, and ``--compiled`` reaches the analysis."""

import json

import rope_behavior.analysis.main_job as main_job
from rope_behavior.cli.app import main
from rope_behavior.data.binding import binding_prompts
from rope_behavior.data.shipped_lm import load_shipped_lm

FAST = ["--max-prompts", "4", "--batch-size", "4", "--context", "64"]


def test_analyze_on_the_binding_prompts(tmp_path, capsys):
    out = tmp_path / "bind"
    assert main(["analyze", "--prompts", "binding", "--seed", "3", "--out", str(out), *FAST]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"] == 4
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "built-in binding prompts (seed 3" in report
    # the prompts analysed are the generator's for that seed and the model's tokenizer: the
    # same analysis as of those texts given as a file
    texts = binding_prompts(4, seed=3, tokenizer=load_shipped_lm()).texts
    path = tmp_path / "binding.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    again = tmp_path / "file"
    assert main(["analyze", "--prompts", str(path), "--seed", "3", "--out", str(again), *FAST]) == 0
    for table in ("heads.csv", "usage.csv"):
        assert (out / table).read_bytes() == (again / table).read_bytes()


def test_compiled_reaches_analyze(tmp_path, monkeypatch, capsys):
    seen = {}
    real = main_job.analyze

    def spy(*a, **kw):
        seen["compiled"] = kw.get("compiled")
        return real(*a, **{**kw, "compiled": False})  # the kernel itself: tests/frequency

    monkeypatch.setattr(main_job, "analyze", spy)
    out = tmp_path / "c"
    assert main(["analyze", "--compiled", "--out", str(out), *FAST]) == 0
    assert seen == {"compiled": True}
