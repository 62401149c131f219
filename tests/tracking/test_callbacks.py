"""The tracker as a transformers.TrainerCallback, driven the way Trainer.train calls it."""

from types import SimpleNamespace

import pytest
import torch

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.tasks import IndexTask, toy_model
from rope_behavior.tracking import Tracker, trainer_callback

TASK = IndexTask(length=8, n_symbols=8)


def test_trainer_callback_scores_due_steps_with_the_numbers_logged_at_them():
    from transformers import TrainerCallback

    model = toy_model(TASK, d_head=8, seed=0)
    tokens = TASK.sample(8, torch.Generator().manual_seed(0)).tokens
    tracker = Tracker(tokens, every=2, block_size=1, n_swaps=None, n_boot=20)
    cb = trainer_callback(tracker)
    assert isinstance(cb, TrainerCallback)
    state = SimpleNamespace(global_step=0, max_steps=5, log_history=[], is_world_process_zero=True)
    cb.on_train_begin(None, state, None, model=model)
    for step in range(1, 6):
        cb.on_step_begin(None, state, None, model=model)  # scores the step before, if due
        with torch.no_grad():
            model.W_E.add_(0.01)  # "the optimiser step"
        state.global_step = step
        cb.on_step_end(None, state, None, model=model)
        state.log_history.append({"loss": 1.0 / step, "step": step, "epoch": 0.1})  # then the log
        if step == 4:
            state.log_history.append({"eval_accuracy": 0.75, "step": step})
    cb.on_train_end(None, state, None, model=model)
    traj = tracker.trajectory()
    assert traj.step_list == (0, 2, 4, 5)  # every 2nd step, and the last
    by_step = traj.steps.set_index("step")
    assert by_step.loc[2, "loss"] == 0.5
    assert by_step.loc[4, "eval_accuracy"] == 0.75
    assert by_step.loc[5, "loss"] == 0.2
    assert "epoch" not in by_step.columns


def test_trainer_callback_on_another_process_scores_nothing():
    model = toy_model(TASK, d_head=8, seed=0)
    tracker = Tracker(TASK.sample(4, torch.Generator().manual_seed(0)).tokens, every=1,
                      block_size=1, n_boot=20)  # fmt: skip
    cb = trainer_callback(tracker)
    state = SimpleNamespace(global_step=0, max_steps=1, log_history=[], is_world_process_zero=False)
    cb.on_train_begin(None, state, None, model=model)
    cb.on_step_end(None, state, None, model=model)
    cb.on_train_end(None, state, None, model=model)
    assert tracker.stored_steps == frozenset()


def test_trainer_callback_needs_a_tracker():
    with pytest.raises(RopeBehaviorError, match=r"expected a rope_behavior.tracking.Tracker"):
        trainer_callback("runs/track")


@pytest.mark.slow
def test_a_real_trainer_runs_the_tracker(tmp_path):
    """transformers.Trainer on a tiny random Llama (about 10 s: the Trainer's start-up)."""
    import transformers as T

    cfg = T.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = T.LlamaForCausalLM(cfg)
    kinds = [type(m).__name__ for m in model.modules()]
    gen = torch.Generator().manual_seed(2)
    data = [
        {"input_ids": ids, "labels": ids} for ids in torch.randint(1, 50, (48, 24), generator=gen)
    ]
    tokens = torch.randint(1, 50, (8, 24), generator=torch.Generator().manual_seed(1))
    tracker = Tracker(tokens, every=3, block_size=4, n_boot=20, exclude_keys="none")
    args = T.TrainingArguments(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=8,
                               logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                               disable_tqdm=True)  # fmt: skip
    T.Trainer(
        model=model, args=args, train_dataset=data, callbacks=[trainer_callback(tracker)]
    ).train()
    traj = tracker.trajectory()
    assert traj.step_list == (0, 3, 5)
    assert traj.steps.set_index("step")["loss"].notna().tolist() == [False, True, True]
    assert [type(m).__name__ for m in model.modules()] == kinds  # the trained model not wrapped
