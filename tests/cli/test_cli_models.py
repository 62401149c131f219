"""The command line's prompt reader (cli/models.py load_prompts) on bad files: each is one
line naming the file and what is wrong, never a traceback or a silently different list."""

import json
import os
from pathlib import Path

import pytest

import rope_behavior as rb
from rope_behavior.cli.models import load_prompts


def refused(path) -> str:
    with pytest.raises(rb.RopeBehaviorError) as info:
        load_prompts(str(path))
    text = str(info.value)
    assert "\n" not in text
    return text


def test_text_and_jsonl_prompts_are_read(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("first prompt\n\n  \nsecond prompt\r\nthird\n")
    assert load_prompts(str(text)) == ["first prompt", "second prompt", "third"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"text": "a"}\n\n{"prompt": "b"}\n"c"\n')
    assert load_prompts(str(jsonl)) == ["a", "b", "c"]
    assert load_prompts(None) is None


def test_a_missing_file_a_folder_and_a_device_are_told_apart(tmp_path):
    assert refused(tmp_path / "missing.txt").endswith("missing.txt': no such file")
    assert refused(tmp_path).endswith("is a folder, not a file")
    if Path("/dev/null").exists():
        assert refused("/dev/null").endswith("is not a regular file")


def test_an_empty_path_and_an_unusable_one_are_refused(tmp_path):
    assert "expected the path of a text or JSONL file" in refused("")
    assert refused(str(tmp_path / "a\x00b")).endswith("': no such file")
    assert refused(str(tmp_path / ("x" * 5000))).endswith(
        ": not a usable path (File name too long)"
    )


@pytest.mark.parametrize("content", ["", "\n\n", "  \n\t\n", "\ufeff\n"])
def test_a_file_without_a_prompt_is_refused(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    assert "holds no prompt (it is empty or only blank lines)" in refused(path)


def test_a_file_that_is_not_utf8_is_named_with_the_byte(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    assert refused(path) == (
        f"prompts file '{path}' is not UTF-8 text (byte 0xe9 at offset 3); save it as UTF-8"
    )


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    path = tmp_path / "locked.txt"
    path.write_text("x\n")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert refused(path) == f"prompts file '{path}': cannot read it (Permission denied)"


def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_text("first\nsecond\n", encoding="utf-8-sig")
    assert load_prompts(str(path)) == ["first", "second"]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_text('{"text": "a"}\n', encoding="utf-8-sig")
    assert load_prompts(str(jsonl)) == ["a"]


def test_lines_end_at_newlines_only(tmp_path):
    # str.splitlines would also split at form feeds, U+2028 and other separators
    path = tmp_path / "ff.txt"
    path.write_text("def f():\f    return 1\nsecond\u2028half\n", encoding="utf-8")
    assert load_prompts(str(path)) == ["def f():\f    return 1", "second\u2028half"]
    jsonl = tmp_path / "sep.jsonl"
    jsonl.write_text(json.dumps({"text": "a\u2028b"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_prompts(str(jsonl)) == ["a\u2028b"]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (['{"text": "a"}', "{not json"], "line 2 is not JSON"),
        (['{"text": "a"}', "", "", "[1, 2]"], "line 4: expected a string or an object"),
        (
            ['{"text": 5}'],
            "line 1: expected a string or an object with a string 'text' or 'prompt'; got {\"text\": 5}",
        ),
        (['{"other": "a"}'], "line 1: expected a string"),
        (['{"text": null, "prompt": "b"}'], "line 1: expected a string"),
        (['{"text": ""}'], "line 1: the prompt is empty"),
        (['"   "'], "line 1: the prompt is empty"),
        (["NaN"], "line 1: expected a string"),
    ],
)
def test_bad_jsonl_lines_are_named_by_their_line_in_the_file(tmp_path, lines, expected):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert expected in refused(path)
    assert refused(path).startswith(f"prompts file '{path}'")


def test_the_jsonl_suffix_is_recognised_in_any_case(tmp_path):
    path = tmp_path / "P.JSONL"
    path.write_text('{"text": "a"}\n')
    assert load_prompts(str(path)) == ["a"]


def test_a_home_relative_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "p.txt").write_text("hello\n")
    assert load_prompts("~/p.txt") == ["hello"]
    assert os.path.expanduser("~") == str(tmp_path)
