"""Length sweep: long prompts in the trained vocabulary, the extended context, the sweep
table on tiny trained models (canonical and multi-hop), and its figure."""

import json
import runpy
from importlib.util import find_spec
from pathlib import Path

import pandas as pd
import pytest
import torch

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.tasks.checkpoints import save_checkpoint
from rope_behavior.tasks.generators import IndexTask, PartialInductionTask, RetrievalTask
from rope_behavior.tasks.length_sweep import (
    SweepModel,
    chance_accuracy,
    checkpoints_in,
    extend_context,
    length_sweep,
)
from rope_behavior.tasks.long_prompts import LongPrompts
from rope_behavior.tasks.multihop import LetterHopsTask, NumberHopsTask
from rope_behavior.tasks.settings import parse_setting
from rope_behavior.tasks.toy import toy_model
from rope_behavior.tasks.training import TrainConfig, evaluate, train
from rope_behavior.viz.length_plots import length_sweep_figure

BASES = [
    IndexTask(length=6, n_symbols=5),
    RetrievalTask(length=6, n_symbols=6, n_attributes=4),
    NumberHopsTask(length=8, max_hops=2),
    LetterHopsTask(length=8, n_letters=8, max_hops=2),
]


@pytest.mark.parametrize("base", BASES, ids=lambda t: t.kind)
@pytest.mark.parametrize("multiple", [1, 4])
def test_long_prompts_are_solvable_in_the_base_vocabulary(base, multiple, generator):
    task = LongPrompts(base, multiple * base.length)
    batch = task.sample(64, generator)
    assert batch.tokens.shape == (64, task.seq_len)
    assert int(batch.tokens.max()) < base.d_vocab
    assert task.d_vocab == base.d_vocab
    assert batch.query_position == task.length
    for i in range(64):
        assert task.solve(batch.tokens[i].tolist()) == int(batch.answer[i])
    assert all(int(p) in task.answer_positions for p in batch.answer_position)


def test_long_retrieval_binds_the_query_symbol_once_at_the_answer_position(generator):
    base = RetrievalTask(length=6, n_symbols=6, n_attributes=4)
    batch = LongPrompts(base, 30).sample(128, generator)
    symbols = (batch.tokens[:, :-1] - base.n_symbols) // base.n_attributes
    hits = symbols == batch.tokens[:, -1:]
    assert torch.equal(hits.sum(1), torch.ones(128, dtype=torch.long))
    assert torch.equal(hits.int().argmax(1), batch.answer_position)
    assert int(batch.answer_position.max()) >= base.length  # the item moves into the long part


def test_long_index_keeps_the_base_prompt_in_front(generator):
    base = IndexTask(length=6, n_symbols=5)
    long_batch = LongPrompts(base, 24).sample(16, torch.Generator().manual_seed(3))
    short = base.sample(16, torch.Generator().manual_seed(3))
    assert torch.equal(long_batch.tokens[:, :6], short.tokens[:, :6])
    assert torch.equal(long_batch.tokens[:, -1], short.tokens[:, -1])
    assert torch.equal(long_batch.answer, short.answer)


def test_long_prompts_reject_bad_input():
    with pytest.raises(RopeBehaviorError, match=r"length=3.*>= the base task's length 6"):
        LongPrompts(IndexTask(length=6, n_symbols=5), 3)
    with pytest.raises(RopeBehaviorError, match="PartialInductionTask cannot be lengthened"):
        LongPrompts(PartialInductionTask(), 32)
    task = LongPrompts(RetrievalTask(length=6, n_symbols=6, n_attributes=4), 12)
    with pytest.raises(RopeBehaviorError, match=r"answer_position=2.*expected None"):
        task.sample(2, torch.Generator(), answer_position=2)


def test_extend_context_keeps_the_function_and_accepts_longer_prompts(tiny_model, generator):
    tokens = torch.randint(0, 20, (3, 12), generator=generator)
    longer = extend_context(tiny_model, 40)
    assert longer.cfg.n_ctx == 40
    assert longer is not tiny_model
    torch.testing.assert_close(longer(tokens), tiny_model(tokens), rtol=0, atol=0)
    assert longer(torch.randint(0, 20, (2, 40), generator=generator)).shape == (2, 40, 20)
    with pytest.raises(
        RopeBehaviorError, match=r"n_ctx=5; expected an int >= the model's n_ctx 12"
    ):
        extend_context(tiny_model, 5)


def test_extend_context_keeps_dtype_and_the_rotary_buffer(tiny_model, generator):
    model = tiny_model.double()
    with torch.no_grad():
        model.rotary_omega.mul_(1.5)  # an overridden table travels with the weights
    longer = extend_context(model, 30)
    assert longer.W_E.dtype == torch.float64
    assert torch.equal(longer.rotary_omega, model.rotary_omega)
    tokens = torch.randint(0, 20, (2, 12), generator=generator)
    torch.testing.assert_close(longer(tokens), model(tokens), rtol=0, atol=0)


@pytest.fixture(scope="module")
def trained_index():
    task = IndexTask(length=6, n_symbols=5)
    model = toy_model(task, n_heads=1, d_head=8, seed=0)
    setting = parse_setting("all", model.cfg.n_pairs)
    train(model, task, TrainConfig(steps=400, lr=1e-2, progress=False), fwd_hooks=setting.hooks)
    return model.eval(), task, setting


def test_length_sweep_table(trained_index, n_hooks):
    model, task, setting = trained_index
    sweep = length_sweep([(model, task, "all", 3)], multiples=(4, 1), n_prompts=200)
    frame = sweep.to_frame()
    assert list(frame["multiple"]) == [1, 4]
    assert list(frame["length"]) == [6, 24]
    assert list(frame["chance"]) == [1 / 5, 1 / 5]
    assert set(frame["seed"]) == {3}
    assert set(frame["setting"]) == {"all"}
    acc_1x = evaluate(model, task, 400, torch.Generator().manual_seed(9), fwd_hooks=setting.hooks)
    assert abs(frame["accuracy"].iloc[0] - acc_1x) < 0.1  # the 1x row is the task itself
    heads = sweep.head_frame()
    assert len(heads) == 2 * model.cfg.n_heads
    assert torch.allclose(
        torch.tensor(heads.groupby("multiple")["gap"].mean().to_numpy()),
        torch.tensor(frame["gap"].to_numpy(), dtype=torch.float64),
    )
    assert ((frame["normalised_gap"] >= 0) & (frame["normalised_gap"] <= 2)).all()
    assert n_hooks(model) == 0
    assert len(max(repr(sweep).splitlines(), key=len)) <= 80


def test_length_sweep_setting_changes_the_gaps_and_leaves_no_hooks(trained_index, n_hooks):
    model, task, _ = trained_index
    sweep = length_sweep([(model, task, "all"), (model, task, "nope")], multiples=(1,),
                         n_prompts=64)  # fmt: skip
    frame = sweep.to_frame().set_index("setting")
    assert frame.loc["all", "gap"] != frame.loc["nope", "gap"]
    with pytest.raises(RopeBehaviorError, match=r"multiples=\(0,\).*ints >= 1"):
        length_sweep([(model, task, "all")], multiples=(0,))
    with pytest.raises(RopeBehaviorError, match="cannot read 42 as a model"):
        length_sweep([42])
    assert n_hooks(model) == 0


def test_sweep_model_rejects_mismatched_inputs(trained_index):
    model, task, setting = trained_index
    with pytest.raises(RopeBehaviorError, match=r"model must be a ToyRotaryTransformer; got str"):
        SweepModel.of(("model", task, "all"))
    with pytest.raises(RopeBehaviorError, match=r"PartialInductionTask cannot be lengthened"):
        SweepModel.of((model, PartialInductionTask(), "all"))
    with pytest.raises(RopeBehaviorError, match=r"retrieval task \(d_vocab 27, seq_len 7\).*"
                       r"d_vocab 11, n_ctx 7"):  # fmt: skip
        SweepModel.of((model, RetrievalTask(length=6, n_symbols=6, n_attributes=3), "all"))
    with pytest.raises(RopeBehaviorError, match=r"unknown frequency setting 'pairs:1'"):
        SweepModel.of((model, task, "pairs:1"))
    with pytest.raises(RopeBehaviorError, match=r"setting=3; expected a FrequencySetting"):
        SweepModel.of((model, task, 3))
    with pytest.raises(RopeBehaviorError, match=r"parsed for n_pairs=16; the model has 4 pairs"):
        SweepModel.of((model, task, parse_setting("all", 16)))
    with pytest.raises(RopeBehaviorError, match=r"seed must be an int >= 0; got -1"):
        SweepModel.of((model, task, setting, -1))


def test_chance_accuracy_per_task():
    assert [chance_accuracy(t) for t in BASES] == [1 / 5, 1 / 4, 1 / 7, 1 / 8]
    assert chance_accuracy(LongPrompts(BASES[0], 12)) == 1 / 5
    with pytest.raises(RopeBehaviorError, match=r"PartialInductionTask; expected one of index"):
        chance_accuracy(PartialInductionTask())


def test_length_sweep_reads_multihop_checkpoints(tmp_path):
    task = NumberHopsTask(length=8, max_hops=2)
    model = toy_model(task, n_heads=1, d_head=8, seed=0)
    train(model, task, TrainConfig(steps=20, progress=False))
    folder = tmp_path / "checkpoints" / "number"
    folder.mkdir(parents=True)
    for step in (20, 100):  # unpadded names: step_100 is the last one, not step_20
        save_checkpoint(model, folder / f"step_{step}.safetensors", task=task,
                        extra={"step": step})  # fmt: skip
    paths = checkpoints_in(tmp_path)
    assert [p.name for p in paths] == ["step_100.safetensors"]
    frame = length_sweep(paths, multiples=(1, 3), n_prompts=32).to_frame()
    assert list(frame["task"]) == ["number_hops"] * 2
    assert list(frame["length"]) == [8, 24]
    assert set(frame["setting"]) == {"all"}


def frame_max(sweep, column):
    return float(sweep.to_frame()[column].max())


def test_length_sweep_figure(trained_index):
    model, task, _ = trained_index
    sweep = length_sweep([(model, task, "all"), (model, task, "nope")], multiples=(1, 2),
                         n_prompts=16)  # fmt: skip
    fig = length_sweep_figure(sweep)
    assert len(fig.data) == 2 * 3 + 1
    assert {t.name for t in fig.data} == {"all", "nope", "chance"}
    chance = next(t for t in fig.data if t.name == "chance")
    assert (tuple(chance.x), tuple(chance.y)) == ((1, 2), (0.2, 0.2))
    assert {fig.layout[f"xaxis{i}"].type for i in ("", 2, 3)} == {"log"}
    assert tuple(fig.layout.xaxis3.tickvals) == (1, 2)
    assert fig.layout.annotations[0].text == "index (trained at 6 tokens)"
    assert tuple(fig.layout.yaxis.range) == (0, 1.02)
    assert fig.layout.yaxis2.range[0] == 0
    assert fig.layout.yaxis2.range[1] >= frame_max(sweep, "gap")
    assert fig.layout.xaxis3.title.text == "prompt length / training length"
    assert fig.layout.yaxis.title.text == "accuracy"
    assert len(length_sweep_figure(sweep.to_frame().drop(columns=["chance"])).data) == 6
    with pytest.raises(RopeBehaviorError, match=r"lacks columns \['gap'"):
        length_sweep_figure(sweep.to_frame().drop(columns=["gap"]))


SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "length_sweep.py"


def test_script_checks_its_arguments_before_training(tmp_path):
    main = runpy.run_path(str(SCRIPT))["main"]
    with pytest.raises(SystemExit, match=r"unknown frequency setting 'pair:x'|pair index 'x'"):
        main(["--out", str(tmp_path / "a"), "--settings", "all", "pair:x"])
    unfinished = tmp_path / "mh"
    (unfinished / "checkpoints" / "number").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"no run.json.*has not finished there"):
        main(["--out", str(tmp_path / "a"), "--multihop", str(unfinished)])
    with pytest.raises(SystemExit, match=r"is not a folder"):
        main(["--out", str(tmp_path / "a"), "--multihop", str(tmp_path / "none")])
    assert not (tmp_path / "a").exists()  # nothing trained, nothing written


@pytest.mark.slow
def test_script_end_to_end(tmp_path, capsys):
    """A tiny run of the full command: one task, two settings, 30 steps (a few seconds,
    most of it kaleido writing the PNG)."""
    main = runpy.run_path(str(SCRIPT))["main"]
    main(["--out", str(tmp_path), "--tasks", "index", "--settings", "all", "pair:0",
          "--steps", "30", "--multiples", "1", "3", "--n-prompts", "16"])  # fmt: skip
    frame = pd.read_csv(tmp_path / "length.csv")
    assert list(frame["setting"]) == ["all", "all", "pair:0", "pair:0"]
    assert list(frame["length"]) == [16, 48, 16, 48]
    assert set(frame["train_steps"]) <= set(range(1, 31))
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["threads"] == 1
    assert meta["seconds"] > 0
    for name in ("length_heads.csv", "length.html"):
        assert (tmp_path / name).stat().st_size > 0
    printed = capsys.readouterr().out
    if find_spec("kaleido") is not None:  # static images need kaleido (not a dependency)
        assert (tmp_path / "length.png").stat().st_size > 0
    else:
        assert not (tmp_path / "length.png").exists()
        assert "length.png not written: static images need kaleido" in printed
    assert "wrote" in printed
