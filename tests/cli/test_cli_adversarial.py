"""Cases found by attacking the command line: each failed (silently or with a traceback)
before it was fixed."""

import pandas as pd
import torch

from rope_behavior.cli.app import main

TEXTS = ["def f(x):", "for i in range(10):\n    total += i * i  # squares"]


def test_prompts_of_different_lengths_are_masked_not_scored_as_padding(tmp_path):
    """inspect --text with prompts of unequal length used to score the padding tokens."""
    import rope_behavior as rb
    from rope_behavior.data.shipped_lm import load_shipped_lm

    assert main(["inspect", "--text", *TEXTS, "--out", str(tmp_path / "o")]) == 0
    cli = pd.read_csv(tmp_path / "o" / "usage.csv")
    model = load_shipped_lm()
    tokens, mask = rb.tokenize_prompts(model, TEXTS, 128)
    assert not bool(mask.all())  # the short prompt is padded
    masked = rb.frequency_usage(rb.capture(model, tokens, attention_mask=mask)).to_frame()
    padded = rb.frequency_usage(rb.capture(model, model.to_tokens(TEXTS))).to_frame()
    for col in ("norm_usage", "logit_usage"):
        torch.testing.assert_close(
            torch.tensor(cli[col].to_numpy()), torch.tensor(masked[col].to_numpy())
        )
        assert not torch.allclose(
            torch.tensor(cli[col].to_numpy()), torch.tensor(padded[col].to_numpy())
        )


def _one_line(capsys):
    err = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.strip() and "shard/s" not in line
    ]
    assert len(err) == 1, err
    return err[0]


def test_sweep_names_the_prompt_whose_length_differs(tmp_path, capsys):
    """The message used to print two equal shapes and 'or unequal lengths inside a file'."""
    (tmp_path / "clean.txt").write_text("x = 1 + 2\nprint(x)\n")
    (tmp_path / "corrupted.txt").write_text("y = 1 + 2\nprint(y)\n")
    (tmp_path / "two.txt").write_text("x = 1\ny = 2\n")
    (tmp_path / "one.txt").write_text("y = 1\n")
    files = ["--clean", str(tmp_path / "clean.txt"), "--corrupted"]
    assert (
        main(["sweep", *files, str(tmp_path / "corrupted.txt"), "--out", str(tmp_path / "o")]) == 2
    )
    assert (
        "error: --clean prompt 2 has 5 tokens but --clean prompt 1 has 6: every prompt"
        in _one_line(capsys)
    )
    two = ["--clean", str(tmp_path / "two.txt"), "--corrupted", str(tmp_path / "one.txt")]
    assert main(["sweep", *two, "--out", str(tmp_path / "o")]) == 2
    assert "error: --clean has 2 prompts and --corrupted 1: every prompt" in _one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clean.txt",
        "corrupted.txt",
        "one.txt",
        "two.txt",
    ]


def test_sweep_of_changed_prompt_files_is_refused_in_the_command_lines_words(tmp_path, capsys):
    """The store's refusal named out_dir and said 'delete this one'; the command line's
    names --out and --overwrite."""
    clean, corrupted, out = tmp_path / "c.txt", tmp_path / "k.txt", tmp_path / "o"
    clean.write_text("x = 3\ny = 4\n")
    corrupted.write_text("y = 1\nx = 2\n")
    args = ["sweep", "--clean", str(clean), "--corrupted", str(corrupted), "--out", str(out)]
    assert main(args) == 0
    assert pd.read_csv(out / "sweep.csv")["value"].notna().all()
    clean.write_text("x = 1\ny = 2\n")  # same file name, other prompts
    capsys.readouterr()
    assert main(args) == 2
    assert _one_line(capsys) == (
        f"rope-behavior sweep: error: --out {str(out)!r} holds a sweep of other inputs "
        "(differs in: clean_tokens); pass --overwrite to replace it with this one, or choose "
        "another --out"
    )
    assert main([*args, "--overwrite"]) == 0


def test_an_empty_model_name_is_refused_not_taken_for_the_shipped_lm(tmp_path, capsys):
    """analyze '' used to analyse the shipped LM (the empty name read as 'no MODEL')."""
    for cmd in ("analyze", "inspect"):
        assert main([cmd, "", "--out", str(tmp_path / "o")]) == 2
        assert "model name '' is empty" in _one_line(capsys)
    assert not list(tmp_path.iterdir())


def test_an_empty_ray_address_is_refused(tmp_path, capsys):
    assert main(["analyze", "--ray", "", "--out", str(tmp_path / "o")]) == 2
    assert "--ray must be 'auto', ray://host:port or host:port" in _one_line(capsys)


def test_running_out_of_memory_is_one_line_naming_what_to_lower(tmp_path, capsys):
    """10**15 random prompts cannot be allocated anywhere (10**18 bytes)."""
    args = ["inspect", "--random", "llama", "--batch", str(10**15), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    line = _one_line(capsys)
    assert line.startswith("rope-behavior inspect: error: RuntimeError: ")
    assert "can't allocate memory" in line
    assert line.endswith("; lower --batch or --length")
    assert not list(tmp_path.iterdir())


def test_sweep_takes_the_band_names_the_library_prints(tmp_path, capsys):
    """'pairs[1, 2]' holds commas (the command line used to split it in two), and
    'band0/4' is how a sweep names its bands."""
    out = tmp_path / "o"
    args = [
        "sweep",
        "--task",
        "index",
        "--max-prompts",
        "8",
        "--bands",
        "band0/4,pairs[1, 2],pair:3",
    ]
    assert main([*args, "--out", str(out)]) == 0
    frame = pd.read_csv(out / "sweep.csv")
    assert list(dict.fromkeys(frame["band"])) == ["band0/4", "pairs[1, 2]", "pair:3"]
    capsys.readouterr()
    assert main([*args[:-1], "highx", "--out", str(tmp_path / "p")]) == 2
    assert "unknown band name 'highx'" in _one_line(capsys)
