"""Multi-hop Number / Letter tasks: reference solvers, equal hop shares, no shortcut, the
GPT-J style one-head-per-layer model, and a tiny run of the experiment."""

import json
import runpy
from pathlib import Path

import pandas as pd
import pytest
import torch

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.model.spec import RopeSpec
from rope_behavior.tasks import (
    IndexTask,
    ToyConfig,
    ToyRotaryTransformer,
    checkpoint_info,
    load_checkpoint,
    task_from_dict,
    task_to_dict,
)
from rope_behavior.tasks.multihop import LetterHopsTask, NumberHopsTask
from rope_behavior.tasks.multihop_experiment import (
    MultiHopConfig,
    multihop_model,
    run_multihop,
    tracker_prompts,
)
from rope_behavior.tracking import Tracker
from rope_behavior.viz.multihop_plots import multihop_training

TASKS = [NumberHopsTask(), LetterHopsTask(), NumberHopsTask(length=9, max_hops=2),
         LetterHopsTask(length=6, n_letters=7, max_hops=3)]  # fmt: skip
IDS = ["number", "letter", "number-small", "letter-small"]


def _with_hops(task, tokens: torch.Tensor, k: int) -> list[int]:
    """The same prompt read as a k-hop one (its hop token replaced)."""
    out = tokens.tolist()
    out[task.n_slots] = task.hop_token(k)
    return out


@pytest.mark.parametrize("task", TASKS, ids=IDS)
def test_layout_and_solver(task, generator):
    batch = task.sample(203, generator)
    assert batch.tokens.shape == (203, task.seq_len)
    assert task.seq_len == task.length + 1
    assert batch.query_position == task.length
    assert int(batch.tokens.min()) >= 0
    assert int(batch.tokens.max()) < task.d_vocab
    solved = [task.solve(t) for t in batch.tokens.tolist()]
    assert solved == batch.answer.tolist()  # the reference solver: 100%
    hops = batch.metadata["hops"]
    assert hops.tolist() == [i % task.max_hops + 1 for i in range(203)]
    assert batch.tokens[:, task.n_slots].tolist() == [task.hop_token(int(h)) for h in hops]


def test_default_sizes():
    number, letter = NumberHopsTask(), LetterHopsTask()
    assert number.seq_len == letter.seq_len == 17
    assert (number.n_slots, number.d_vocab) == (15, 19)
    assert (letter.n_slots, letter.d_vocab) == (15, 16 + 256 + 4)


@pytest.mark.parametrize("task", TASKS, ids=IDS)
def test_every_hop_is_needed(task, generator):
    """The k-hop reading of an h-hop prompt is never its answer (k != h): a 1-hop
    shortcut scores 0 on h >= 2, and a reading that ignores the hop token scores exactly
    the share of its own hop count."""
    batch = task.sample(360, generator)
    hops = batch.metadata["hops"].tolist()
    for k in range(1, task.max_hops + 1):
        reads = [task.solve(_with_hops(task, t, k)) for t in batch.tokens]
        hits = [r == a for r, a in zip(reads, batch.answer.tolist(), strict=True)]
        assert all(hit == (h == k) for hit, h in zip(hits, hops, strict=True))
        assert sum(hits) / len(hits) == pytest.approx(1 / task.max_hops)


@pytest.mark.parametrize("task", TASKS, ids=IDS)
def test_context_does_not_depend_on_hops(task):
    """One seed draws the same context for every hop count: only the hop token differs."""
    drawn = [task.sample(64, torch.Generator().manual_seed(5), hops=h) for h in (1, task.max_hops)]
    a, b = (d.tokens for d in drawn)
    other = [i for i in range(task.seq_len) if i != task.n_slots]
    assert torch.equal(a[:, other], b[:, other])
    assert not torch.equal(drawn[0].answer, drawn[1].answer)


@pytest.mark.parametrize("task", TASKS, ids=IDS)
def test_answer_position_is_the_last_hop(task, generator):
    for fixed in (None, 0, task.n_slots - 1):
        batch = task.sample(64, generator, answer_position=fixed)
        pos = batch.answer_position
        if fixed is not None:
            assert pos.eq(fixed).all()
        read = batch.tokens.gather(1, pos[:, None])[:, 0]
        if isinstance(task, NumberHopsTask):
            assert torch.equal(read, batch.answer)  # the last pointer read is the answer
        else:
            key = (read - task.n_letters) // task.n_letters
            value = (read - task.n_letters) % task.n_letters
            path, h = batch.metadata["path"], batch.metadata["hops"]
            assert torch.equal(value, batch.answer)
            assert torch.equal(key, path.gather(1, (h - 1)[:, None])[:, 0])
        assert [task.solve(t) for t in batch.tokens.tolist()] == batch.answer.tolist()


def test_seeded_and_round_trip():
    for task in (NumberHopsTask(hops=2), LetterHopsTask(answer_position=3)):
        a, b = (task.sample(32, torch.Generator().manual_seed(9)) for _ in range(2))
        assert torch.equal(a.tokens, b.tokens)
        assert task_from_dict(task_to_dict(task)) == task


def test_bad_configs_and_prompts():
    with pytest.raises(RopeBehaviorError, match="length=5 is out of range"):
        NumberHopsTask(length=5)
    with pytest.raises(RopeBehaviorError, match="n_letters=10 is too small"):
        LetterHopsTask(n_letters=10)
    with pytest.raises(RopeBehaviorError, match=r"hops=5 is out of range; expected \[1, 4\]"):
        NumberHopsTask(hops=5)
    with pytest.raises(RopeBehaviorError, match="answer_position=15 is out of range"):
        LetterHopsTask().sample(2, torch.Generator(), answer_position=15)
    task = NumberHopsTask()
    prompt = task.sample(1, torch.Generator().manual_seed(0)).tokens[0].tolist()
    prompt[task.n_slots] = 3
    with pytest.raises(RopeBehaviorError, match="is not a hop token"):
        task.solve(prompt)
    letter = LetterHopsTask()
    prompt = letter.sample(1, torch.Generator().manual_seed(0)).tokens[0].tolist()
    prompt[1] = prompt[0]
    with pytest.raises(RopeBehaviorError, match="is bound twice"):
        letter.solve(prompt)


def test_gptj_style_blocks():
    """attn_only=False: one LayerNorm feeds attention and MLP in parallel; the attention
    draws the same weights as the attention-only model of the same seed."""
    cfg = ToyConfig(d_vocab=19, n_ctx=17, n_layers=2, n_heads=1, d_head=16, attn_only=False)
    assert cfg.d_mlp == 64
    model, plain = (
        ToyRotaryTransformer(cfg, seed=3),
        ToyRotaryTransformer(
            ToyConfig(d_vocab=19, n_ctx=17, n_layers=2, n_heads=1, d_head=16), seed=3
        ),
    )
    assert torch.equal(model.blocks[1].attn.W_Q, plain.blocks[1].attn.W_Q)
    assert plain.blocks[0].mlp is None
    tokens = torch.randint(0, 19, (3, 17), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    for layer in range(2):
        expected = (
            cache[f"blocks.{layer}.hook_resid_pre"]
            + cache[f"blocks.{layer}.hook_attn_out"]
            + cache[f"blocks.{layer}.hook_mlp_out"]
        )
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], expected)
    with pytest.raises(RopeBehaviorError, match="d_mlp=8 needs attn_only=False"):
        ToyConfig(d_vocab=4, n_ctx=4, d_mlp=8)


def test_multihop_model_shape(n_hooks):
    model = multihop_model(LetterHopsTask())
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model, cfg.d_mlp) == (12, 1, 128, 128, 512)
    assert cfg.final_layer_norm
    assert not cfg.attn_only
    assert cfg.d_vocab == 276
    assert cfg.n_ctx == 17
    spec = RopeSpec.from_model(model)
    assert spec.n_layers == 12
    assert spec.n_pairs == 64
    assert n_hooks(model) == 0


def _tracker(name, task, config):
    return Tracker(tracker_prompts(task, config), every=config.record_every, block_size=1,
                   n_swaps=None, exclude_keys="none", n_boot=20)  # fmt: skip


def test_tiny_run(tmp_path, n_hooks):
    """The experiment's plumbing on a 2-layer, width-16 model: 3 steps, record every 2nd."""
    config = MultiHopConfig(steps=3, batch_size=8, n_layers=2, d_model=16, record_every=2,
                            n_eval=16, n_score=8)  # fmt: skip
    tasks = {"number": NumberHopsTask(), "letter": LetterHopsTask()}
    result = run_multihop(
        config, tasks=tasks, out_dir=tmp_path, trackers=lambda n, t: _tracker(n, t, config)
    )
    acc = result.accuracy
    assert sorted(acc["step"].unique()) == [0, 2, 3]  # step 0, every 2nd, the last
    assert set(acc["hops"]) == {"all", "1", "2", "3", "4"}
    assert acc[acc["hops"] != "all"]["n"].eq(4).all()
    assert len(result.checkpoints) == 6
    assert all(p.exists() for p in result.checkpoints)
    info = checkpoint_info(tmp_path / "checkpoints" / "letter" / "step_000003.safetensors")
    assert info.task == tasks["letter"]
    assert info.extra["step"] == 3
    model = load_checkpoint(result.checkpoints[-1])
    assert not model.cfg.attn_only
    assert n_hooks(model) == 0
    assert set(result.seconds_per_step) == {"number", "letter"}
    assert all(len(line) <= 80 for line in repr(result).splitlines())
    heads = pd.concat(
        [t.trajectory().heads.assign(task=n) for n, t in result.tracked.items()], ignore_index=True
    )
    assert len(heads) == 2 * 3 * 2  # tasks x tracked steps (0, 2, final 3) x layers
    fig = multihop_training(result.accuracy, heads, task="number")
    assert [t.type for t in fig.data] == ["scatter"] * 5 + ["heatmap"] + ["scatter"] * 2
    assert fig.layout.xaxis2.title.text == "step"
    assert fig.layout.yaxis2.title.text == "layer"
    with pytest.raises(RopeBehaviorError, match="no rows for task 'nope'"):
        multihop_training(result.accuracy, heads, task="nope")


@pytest.mark.slow
def test_script_full_size_smoke(tmp_path, capsys):
    """scripts/train_multihop.py end to end on the full-size model (12 layers x 1 head,
    width 128): 4 steps per task, tracked at 0, 2, 4 (about 30-60 s on 2 busy cores)."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "train_multihop.py"
    module = runpy.run_path(str(script))
    module["main"](["--out", str(tmp_path), "--preset", "paper", "--steps", "4",
                    "--record-every", "2", "--n-eval", "64", "--n-score", "16",
                    "--threads", "1"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "seconds per step: number" in printed
    layers = pd.read_csv(tmp_path / "layers.csv")
    assert sorted(layers["layer"].unique()) == list(range(12))
    assert set(layers["task"]) == {"number", "letter"}
    assert set(layers["purity"]) <= {"positional", "symbolic", "mixed", "uniform", "unidentifiable"}
    for name in ("accuracy.csv", "heads.csv", "number.html", "letter_plane.html", "run.json"):
        assert (tmp_path / name).exists()
    assert len(list((tmp_path / "checkpoints" / "number").glob("*.safetensors"))) == 3
    run = json.loads((tmp_path / "run.json").read_text())
    assert (run["preset"], run["max_hops"], run["config"]["d_model"]) == ("paper", 4, 128)
    assert set(pd.read_csv(tmp_path / "accuracy.csv")["hops"].astype(str)) == {"1", "2", "3", "4", "all"}


def test_script_cpu_preset_and_overrides(tmp_path, capsys):
    """The default preset is the CPU one (6 x 64, 1-2 hops); a flag overrides its value."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "train_multihop.py"
    module = runpy.run_path(str(script))
    module["main"](["--out", str(tmp_path), "--steps", "2", "--record-every", "2",
                    "--n-layers", "2", "--n-eval", "16", "--n-score", "8",
                    "--threads", "1"])  # fmt: skip
    run = json.loads((tmp_path / "run.json").read_text())
    assert (run["preset"], run["max_hops"]) == ("cpu", 2)
    assert (run["config"]["n_layers"], run["config"]["d_model"]) == (2, 64)
    assert (run["config"]["batch_size"], run["config"]["lr"]) == (128, 3e-3)
    assert set(pd.read_csv(tmp_path / "accuracy.csv")["hops"].astype(str)) == {"1", "2", "all"}


def test_bad_experiment_inputs():
    with pytest.raises(RopeBehaviorError, match=r"d_model=15.*expected an even int"):
        MultiHopConfig(d_model=15)
    with pytest.raises(RopeBehaviorError, match=r"MultiHopConfig.steps=0"):
        MultiHopConfig(steps=0)
    with pytest.raises(RopeBehaviorError, match=r"tasks=.*expected None \(Number and Letter"):
        run_multihop(MultiHopConfig(steps=1), tasks={"index": IndexTask()})
