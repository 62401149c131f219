"""Training and evaluation: learning, determinism, hooks in scope, early stop, bad configs."""

import copy

import pytest
import torch

from rope_behavior.tasks import (
    IndexTask,
    PartialInductionTask,
    RetrievalTask,
    TrainConfig,
    accuracy_by_answer_position,
    evaluate,
    toy_model,
    train,
)

QUICK = {"progress": False, "eval_batch_size": 256}


def test_index_is_learned_quickly(n_hooks):
    task = IndexTask(length=8, n_symbols=8)
    model = toy_model(task, d_head=16, seed=0)
    result = train(
        model, task, TrainConfig(steps=400, eval_every=25, target_accuracy=0.97, **QUICK)
    )
    assert result.final_accuracy >= 0.97
    assert result.stopped_early
    assert result.steps == result.eval_steps[-1] < 400
    assert len(result.losses) == result.steps
    assert result.losses[-1] < result.losses[0]
    assert evaluate(model, task, 1000, torch.Generator().manual_seed(5)) >= 0.95
    assert n_hooks(model) == 0


def test_training_is_deterministic_and_leaves_global_rng_alone():
    task = RetrievalTask(length=6, n_symbols=6, n_attributes=4)
    config = TrainConfig(steps=15, batch_size=32, eval_every=5, target_accuracy=None, **QUICK)
    state = torch.get_rng_state()
    a = train(toy_model(task, d_head=8, seed=3), task, config)
    b = train(toy_model(task, d_head=8, seed=3), task, config)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.losses == b.losses
    assert a.eval_accuracy == b.eval_accuracy
    assert a.eval_steps == (5, 10, 15)
    assert not a.stopped_early
    c = train(
        toy_model(task, d_head=8, seed=3), task, TrainConfig(**{**config.__dict__, "seed": 1})
    )
    assert c.losses != a.losses


def test_fwd_hooks_act_in_training_and_evaluation_and_are_removed(n_hooks):
    task = PartialInductionTask(length=6, n_symbols=3, n_attributes=6)
    model = toy_model(task, d_head=8)
    calls = {"n": 0}

    def count(x, hook):
        calls["n"] += 1
        return x

    config = TrainConfig(steps=4, batch_size=8, eval_every=2, target_accuracy=None, **QUICK)
    train(model, task, config, fwd_hooks=[("blocks.0.attn.hook_rot_k", count)])
    assert calls["n"] == 4 + 2  # four training steps, two evaluations
    assert n_hooks(model) == 0

    built_for = []

    def hooks_for(m):
        built_for.append(m)
        return [("blocks.0.attn.hook_rot_q", count)]

    calls["n"] = 0
    evaluate(model, task, 10, torch.Generator().manual_seed(0), fwd_hooks=hooks_for, batch_size=4)
    assert built_for == [model]
    assert calls["n"] == 3
    assert n_hooks(model) == 0


def test_a_raising_hook_leaves_no_hooks_behind(n_hooks):
    task = IndexTask(length=4, n_symbols=4)
    model = toy_model(task, d_head=8)

    def boom(x, hook):
        raise RuntimeError("bad hook")

    config = TrainConfig(steps=3, batch_size=8, **QUICK)
    with pytest.raises(RuntimeError, match="bad hook"):
        train(model, task, config, fwd_hooks=[("blocks.0.attn.hook_pattern", boom)])
    assert n_hooks(model) == 0
    with pytest.raises(RuntimeError, match="bad hook"):
        evaluate(model, task, 8, torch.Generator(), fwd_hooks=[("hook_embed", boom)])
    assert n_hooks(model) == 0


def test_unrotating_hooks_equal_a_zero_omega_model(n_hooks):
    """fwd_hooks that hand back the un-rotated q/k give exactly the NoPE model."""
    task = IndexTask(length=5, n_symbols=4)
    model = toy_model(task, d_head=8, seed=1)
    nope = copy.deepcopy(model)
    with torch.no_grad():
        nope.rotary_omega.zero_()

    def stash(x, hook):
        hook.ctx["unrotated"] = x

    def unrotate(x, hook):
        return model.hook_dict[hook.name.replace("rot_", "")].ctx["unrotated"]

    hooks = [(f"blocks.0.attn.hook_{k}", stash) for k in "qk"]
    hooks += [(f"blocks.0.attn.hook_rot_{k}", unrotate) for k in "qk"]
    tokens = task.sample(6, torch.Generator().manual_seed(0)).tokens
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks, clear_contexts=True)
    torch.testing.assert_close(logits, nope(tokens), rtol=0, atol=1e-6)
    assert not torch.allclose(logits, model(tokens))
    assert n_hooks(model) == 0
    gen_a, gen_b = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert evaluate(model, task, 64, gen_a, fwd_hooks=hooks) == evaluate(nope, task, 64, gen_b)
    model.clear_contexts()


def test_accuracy_by_answer_position_covers_every_valid_position():
    task = PartialInductionTask(length=5, n_symbols=3, n_attributes=6, min_occurrences=2)
    model = toy_model(task, d_head=8)
    by_position = accuracy_by_answer_position(model, task, 16, torch.Generator().manual_seed(0))
    assert list(by_position) == [1, 2, 3, 4]
    assert all(0.0 <= v <= 1.0 for v in by_position.values())


def test_evaluate_with_fixed_answer_position_matches_manual_count():
    task = IndexTask(length=5, n_symbols=4)
    model = toy_model(task, d_head=8, seed=2)
    acc = evaluate(model, task, 50, torch.Generator().manual_seed(9), answer_position=2)
    batch = task.sample(50, torch.Generator().manual_seed(9), answer_position=2)
    with torch.no_grad():
        manual = (model(batch.tokens)[:, -1].argmax(-1) == batch.answer).float().mean()
    assert acc == pytest.approx(float(manual))
    with pytest.raises(ValueError, match=r"answer_position=7 is out of range"):
        evaluate(model, task, 5, torch.Generator(), answer_position=7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, r"steps must be an int >= 1; got 0"),
        ({"lr": 0.0}, r"lr must be a float > 0"),
        ({"target_accuracy": 1.5}, r"target_accuracy must be None .* in \(0, 1\]; got 1.5"),
        ({"weight_decay": -1.0}, r"weight_decay must be a float >= 0"),
        ({"device": "nonsense"}, r"device='nonsense' is not a torch device"),
    ],
)
def test_bad_train_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_task_model_mismatch_is_reported():
    small = IndexTask(length=4, n_symbols=4)
    model = toy_model(small, d_head=8)
    with pytest.raises(ValueError, match=r"task needs d_vocab >= 32 and n_ctx >= 17"):
        train(model, IndexTask(), TrainConfig(steps=1, **QUICK))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "nope", "low", "high"),
    [
        (IndexTask(), False, 0.95, 1.0),
        (IndexTask(), True, 0.0, 0.6),
        (RetrievalTask(), True, 0.95, 1.0),
        (PartialInductionTask(), False, 0.9, 1.0),
        (PartialInductionTask(), True, 0.0, 0.6),
    ],
)
def test_default_tasks_plain_rope_and_nope(task, nope, low, high):
    model = toy_model(task, seed=0)
    if nope:
        with torch.no_grad():
            model.rotary_omega.zero_()
    train(model, task, TrainConfig(progress=False))
    acc = evaluate(model, task, 2048, torch.Generator().manual_seed(11))
    assert low <= acc <= high
