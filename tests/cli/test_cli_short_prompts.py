"""``analyze`` skips the prompts too short to score, naming their lines in the file, and
analyses the rest exactly as it would the file without them."""

import json
import pickle
import re
from argparse import Namespace

import pytest

from rope_behavior.cli.app import main
from rope_behavior.cli.models import load_prompt_lines, scorable_tokens, skipped_note

# lines of Python (the shipped LM's held-out text is Python), each well over the 18 tokens a
# prompt needs with --block-size 8 (BOS included)
LONG = [
    "def add(a, b):  return a + b  # the sum of two numbers, returned to the caller here",
    "import os, sys, json, time, pathlib, subprocess, collections, functools, itertools",
    'for i in range(10): print(i, i * i, i ** 3, "done", end="\\n", file=sys.stderr)',
    "class Point:  x: int = 0; y: int = 0; z: int = 0  # a point in three dimensions",
    "with open(path, encoding='utf-8') as f:  lines = [line.rstrip() for line in f]",
]
SHORT = "x = 1"
FAST = ["--context", "24", "--max-prompts", "4", "--batch-size", "4"]
TABLES = ("heads.csv", "usage.csv", "correspondence.csv")


def _analyze(tmp_path, name, lines, capsys, *extra):
    path = tmp_path / f"{name}.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / f"out-{name}"
    capsys.readouterr()
    code = main(["analyze", "--prompts", str(path), "--out", str(out), *FAST, *extra])
    return code, out, capsys.readouterr().err


def _summary(out):
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("seconds")
    return summary


def test_a_short_line_is_skipped_by_its_line_number_and_the_rest_analysed_as_without_it(
    tmp_path, capsys
):
    # line 2 is blank (not a prompt), line 3 the short one; --max-prompts 4 takes the first
    # four prompts that can be scored, as it does of the file without line 3
    with_short = [LONG[0], "", SHORT, *LONG[1:]]
    code, out, err = _analyze(tmp_path, "with", with_short, capsys)
    assert code == 0, err
    skipped = [line for line in err.splitlines() if line.startswith("skipped")]
    assert skipped == [
        "skipped 1 of 5 prompts too short to score (line 3): a prompt needs at least 18 "
        "tokens with --block-size 8"
    ]
    code, without, err = _analyze(tmp_path, "without", [LONG[0], "", *LONG[1:]], capsys)
    assert code == 0, err
    assert "skipped" not in err
    for name in TABLES:
        assert (out / name).read_bytes() == (without / name).read_bytes(), name
    assert _summary(out) == _summary(without)
    assert _summary(out)["prompts"] == 4
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "too short to score (line 3)" in report


def test_no_prompt_left_is_one_line_exit_2_and_no_folder(tmp_path, capsys):
    code, out, err = _analyze(tmp_path, "short", [SHORT, "", "y = 2"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0, err
    assert re.fullmatch(
        r"rope-behavior analyze: error: none of the 2 prompts of \S+short\.txt can be scored: "
        r"a prompt needs at least 18 tokens with --block-size 8; use longer prompts or lower "
        r"--block-size\n",
        err,
    ), err
    assert not out.exists()


def test_a_context_too_short_for_any_prompt_says_to_raise_it(tmp_path, capsys):
    code, out, err = _analyze(tmp_path, "ctx", LONG, capsys, "--context", "17")
    assert code == 2
    assert "--context 17 keeps at most 17; raise --context to 18 or lower --block-size" in err
    assert not out.exists()


def test_line_numbers_are_the_files_own(tmp_path):
    text = tmp_path / "p.txt"
    text.write_bytes(b"\xef\xbb\xbfa\r\n\r\n  \nb\n\nc")  # BOM, CRLF, blank and space-only lines
    assert load_prompt_lines(str(text)) == [(1, "a"), (4, "b"), (6, "c")]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('"a"\n\n{"text": "b"}\n{"prompt": "c"}\n', encoding="utf-8")
    assert load_prompt_lines(str(jsonl)) == [(1, "a"), (3, "b"), (4, "c")]
    assert load_prompt_lines(None) is None


def test_the_note_lists_ten_lines_then_a_count():
    lines = list(range(2, 60, 2))  # prompt i is on line 2 * (i + 1)
    note = skipped_note(list(range(12)), 20, lines, 18, 8)
    assert note.startswith(
        "skipped 12 of 20 prompts too short to score "
        "(lines 2, 4, 6, 8, 10, 12, 14, 16, 18, 20 and 2 more): "
    )
    assert "(prompts 1, 3)" in skipped_note([0, 2], 5, None, 18, 8)  # built-in text: numbers


@pytest.fixture(scope="module")
def lm():
    from rope_behavior.data.shipped_lm import load_shipped_lm

    return load_shipped_lm()


def test_where_the_model_is_the_kept_prompts_are_tokenized_as_alone(lm):
    """What a Ray worker runs (``scorable_tokens``) pickles, and its tokens equal those of
    the scorable prompts tokenized alone."""
    from rope_behavior.analysis.main_job import tokenize_prompts

    assert pickle.loads(pickle.dumps(scorable_tokens)) is scorable_tokens
    texts = [SHORT, LONG[0], "y = 2", LONG[1], LONG[2]]
    tokens, mask, kept, skipped, need = scorable_tokens(lm, texts, 24, 2, 8)
    assert (kept, skipped, need) == ([1, 3], [0, 2], 18)
    alone, alone_mask = tokenize_prompts(lm, [LONG[0], LONG[1]], 24)
    assert tokens.equal(alone)
    assert mask.equal(alone_mask)
    assert pickle.loads(pickle.dumps((tokens, mask, kept, skipped, need)))[2] == kept


def test_the_executor_path_skips_the_same_prompts(lm, capsys):
    """``_analysis`` with an executor (as with --ray) tokenizes through ``call_with_model``."""
    from rope_behavior.cli.main_job import _analysis
    from rope_behavior.runtime.executors import LocalExecutor

    args = Namespace(context=24, max_prompts=3, block_size=8, batch_size=4, seed=0)
    texts = ([LONG[0], SHORT, LONG[1], LONG[2]], "p.txt", [1, 3, 4, 5])
    here, source = _analysis(lm, args, "lm", texts)
    there, source_there = _analysis(lm, args, "lm", texts, LocalExecutor())
    err = capsys.readouterr().err
    assert err.count("skipped 1 of 4 prompts too short to score (line 3)") == 2
    assert source == source_there
    assert source.startswith("p.txt; skipped 1 of 4")
    assert here.heads_frame().equals(there.heads_frame())
    assert here.n_prompts == 3
