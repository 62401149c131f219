"""The training tracker: inside the toy trainer, equal to score_heads on saved weights,
resuming from its folder, in a plain loop (eval mode, no hooks, no grads, RNG untouched)."""

import json

import numpy as np
import pytest
import torch

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.scoring.head_classes import head_purity
from rope_behavior.scoring.scorer import score_heads
from rope_behavior.tasks import IndexTask, TrainConfig, toy_model, train
from rope_behavior.tasks.checkpoints import load_checkpoint, save_checkpoint
from rope_behavior.tracking import Tracker, load_trajectory
from tests.models import hook_count

TASK = IndexTask(length=8, n_symbols=8)
CONFIG = TrainConfig(steps=40, eval_every=20, target_accuracy=None, progress=False,
                     eval_batch_size=128)  # fmt: skip
SCORING = {"block_size": 1, "n_swaps": None, "n_boot": 50}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _prompts(n: int = 24) -> torch.Tensor:
    return TASK.sample(n, torch.Generator().manual_seed(7)).tokens


def test_toy_trainer_runs_the_tracker_at_its_steps_and_rows_equal_score_heads_on_saved_weights(
    tmp_path,
):
    model = toy_model(TASK, d_head=16, seed=0)
    tokens = _prompts()
    tracker = Tracker(tokens, steps=(0, 20, 40), out_dir=tmp_path / "track", **SCORING)
    seen = []

    def save_and_check(info):  # after the tracker: the weights it scored, the flags it restored
        seen.append((info.step, info.model.training, hook_count(info.model)))
        if info.step in (0, 20):
            save_checkpoint(info.model, tmp_path / f"step{info.step}.safetensors")

    state = torch.get_rng_state()
    result = train(model, TASK, CONFIG, callbacks=[tracker, save_and_check])
    assert torch.equal(torch.get_rng_state(), state)
    assert [s for s, _, _ in seen] == list(range(41))
    assert all(training and n == 0 for _, training, n in seen)  # train mode back, no hook left

    # the tracker did not change training: same losses as a run without it
    plain = train(toy_model(TASK, d_head=16, seed=0), TASK, CONFIG)
    assert plain.losses == result.losses

    traj = load_trajectory(tmp_path / "track")
    assert traj.step_list == (0, 20, 40)
    assert len(traj.heads) == 3 * model.cfg.n_layers * model.cfg.n_heads
    assert len(traj.usage) == len(traj.heads) * model.cfg.n_pairs
    assert traj.steps["accuracy"].between(0, 1).all()
    assert np.isnan(traj.steps["loss"].iloc[0])
    assert traj.steps["loss"].iloc[1:].notna().all()
    assert (traj.steps["seconds"] > 0).all()

    for step in (0, 20):
        saved = load_checkpoint(tmp_path / f"step{step}.safetensors")
        summary = score_heads(saved, tokens, block_size=1, swaps=tracker.swaps).mean(
            n_boot=50, level=0.95, seed=0
        )
        expect = summary.to_frame()
        got = traj.at(step)
        assert got["purity"].tolist() == head_purity(summary).tolist()
        assert len(got) == len(expect)
        for col in expect.columns:
            np.testing.assert_allclose(
                got[col].to_numpy(dtype=float), expect[col].to_numpy(dtype=float),
                rtol=1e-12, atol=1e-12, err_msg=f"step {step}, {col}",
            )  # fmt: skip


def _manual_run(tracker, model, steps, opt):
    for step in steps:
        if step:
            loss = model(TASK.sample(32, torch.Generator().manual_seed(step)).tokens).logsumexp(-1)
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
        tracker.step(model, step, metrics={"step_squared": step**2})


def test_a_new_tracker_on_the_folder_resumes_and_drops_uncommitted_rows(tmp_path):
    tokens = _prompts(16)
    model = toy_model(TASK, d_head=16, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = Tracker(tokens, every=2, out_dir=tmp_path, **SCORING)
    _manual_run(first, model, range(0, 5), opt)  # steps 0, 2, 4 scored
    before = load_trajectory(tmp_path)
    assert before.step_list == (0, 2, 4)

    # a run killed mid-checkpoint: rows of step 6 without its steps.jsonl line, a torn line
    with open(tmp_path / "heads.csv", "a") as f:
        f.write(
            before.heads[before.heads["step"] == 4].assign(step=6).to_csv(header=False, index=False)
        )
        f.write("8,0,1,0.5")  # torn
    with open(tmp_path / "steps.jsonl", "a") as f:
        f.write('{"step": 8, "seco')
    assert load_trajectory(tmp_path).step_list == (0, 2, 4)  # reading leaves them out

    again = Tracker(tokens, every=2, out_dir=tmp_path, **SCORING)
    assert again.step(model, 4) is None  # stored: skipped
    assert again.stored_steps == {0, 2, 4}
    _manual_run(again, model, range(5, 9), opt)
    after = load_trajectory(tmp_path)
    assert after.step_list == (0, 2, 4, 6, 8)
    assert len(after.heads) == 5 * model.cfg.n_heads
    kept = after.heads[after.heads["step"] <= 4].reset_index(drop=True)
    assert kept.equals(before.heads)
    assert after.steps.set_index("step")["step_squared"].to_dict() == {
        0: 0,
        2: 4,
        4: 16,
        6: 36,
        8: 64,
    }
    lines = (tmp_path / "steps.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 2, 4, 6, 8]

    with pytest.raises(RopeBehaviorError, match=r"other settings \(block_size, swaps differ\)"):
        Tracker(tokens, every=2, out_dir=tmp_path, block_size=2, n_swaps=None, n_boot=50).step(
            model, 10
        )


def test_plain_loop_on_a_bridge_in_train_mode(bridge_factory):
    model = bridge_factory("llama_gqa")
    tokens = torch.randint(3, 97, (6, 20), generator=torch.Generator().manual_seed(0))
    tracker = Tracker(tokens, every=5, block_size=4, n_boot=20, exclude_keys="none")
    model.train()
    try:
        for p in model.parameters():
            p.grad = None
        state = torch.get_rng_state()
        assert tracker.step(model, 3) is None  # off the schedule
        rows = tracker.step(model, 5, metrics={"loss": 1.5})
        assert torch.equal(torch.get_rng_state(), state)
        assert all(p.grad is None for p in model.parameters())
        assert model.training
        assert hook_count(model) == 0
    finally:
        model.eval()
    assert len(rows) == 2 * 4
    assert list(rows["step"].unique()) == [5]
    traj = tracker.trajectory()
    assert traj.step_list == (5,)
    assert traj.steps["loss"].tolist() == [1.5]
    assert "Trajectory: 1 steps (5..5), 8 heads" in repr(traj)
    assert all(len(line) <= 80 for line in repr(traj).splitlines())


def test_a_plain_hugging_face_model_is_scored_through_a_mirror_left_apart():
    import transformers as T

    cfg = T.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        hf = T.LlamaForCausalLM(cfg)
    kinds = [type(m).__name__ for m in hf.modules()]
    tokens = torch.randint(1, 50, (4, 24), generator=torch.Generator().manual_seed(1))
    tracker = Tracker(tokens, steps=(0, 1), block_size=4, n_boot=20, exclude_keys="none")
    first = tracker.step(hf, 0)
    with torch.no_grad():
        for p in hf.parameters():
            p.mul_(3.0)
    second = tracker.step(hf, 1)
    assert [type(m).__name__ for m in hf.modules()] == kinds  # the trained model is untouched
    fresh = Tracker(tokens, steps=(1,), block_size=4, n_boot=20, exclude_keys="none").step(
        hf, 1
    )  # a new mirror
    cols = ["s_pos_mean", "s_sym_mean", "s_pos_lo", "s_sym_hi", "centroid"]
    np.testing.assert_allclose(second[cols].to_numpy(float), fresh[cols].to_numpy(float), rtol=1e-6)
    assert not np.allclose(first["s_pos_mean"], second["s_pos_mean"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, r"Tracker needs a schedule: every=N"),
        ({"every": 0}, r"every=0; expected an int >= 1"),
        ({"steps": [-1]}, r"steps\[i\]=-1; expected an int >= 0"),
        ({"every": 5, "n_boot": 1}, r"n_boot=1; expected an int >= 2"),
        ({"every": 5, "block_size": 0}, r"block_size=0"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(RopeBehaviorError, match=match):
        Tracker(_prompts(4), **kwargs)


def test_trajectory_at_an_unscored_step_names_the_scored_ones():
    model = toy_model(TASK, d_head=8, seed=0)
    tracker = Tracker(_prompts(8), steps=(0,), **SCORING)
    tracker.step(model, 0)
    with pytest.raises(RopeBehaviorError, match=r"step=3 was not scored; scored steps: \[0\]"):
        tracker.trajectory().at(3)
