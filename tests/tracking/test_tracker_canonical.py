"""The known answer: the path of the canonical toy models' heads over training.

The first checkpoint (the initial weights) sits at the uniform corner and no head is pure
(head_purity: pure positional is identifiable, the s_POS interval above 1/2 and the s_SYM
interval below it; pure symbolic the other way round);
at the end the Index model has a pure positional head and no pure symbolic one, the
Retrieval model the other way round (the canonical tasks' end points,
tests/tasks/test_experiment.py; here with the path between). Both models train with the
canonical defaults (``TrainConfig()``: at most 1,500 steps, early stop at 99%), scored on
64 fresh prompts every 100 steps and at the last step, single-token blocks, every swap.
"""

import pytest
import torch

from rope_behavior.tasks import IndexTask, RetrievalTask, TrainConfig, toy_model, train
from rope_behavior.tracking import Tracker


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "pure"), [(IndexTask(), "positional"), (RetrievalTask(), "symbolic")]
)
def test_heads_start_at_the_uniform_corner_and_end_pure(task, pure):
    torch.set_num_threads(1)
    tokens = task.sample(64, torch.Generator().manual_seed(99)).tokens
    tracker = Tracker(tokens, every=100, block_size=1, n_swaps=None, n_boot=200)
    result = train(toy_model(task, seed=0), task, TrainConfig(progress=False), callbacks=[tracker])
    traj = tracker.trajectory()
    print(traj)
    print(traj.to_frame()[["step", "head", "s_pos_mean", "s_pos_lo", "s_sym_mean", "s_sym_hi",
                           "identifiable_fraction", "purity", "accuracy"]].to_string())  # fmt: skip
    assert result.final_accuracy >= 0.99
    steps = traj.step_list
    assert steps[0] == 0
    assert steps[-1] == result.steps
    assert len(steps) >= 3
    first, last = traj.at(steps[0]), traj.at(steps[-1])
    assert first["uniform_corner"].all()
    assert not first["purity"].isin(["positional", "symbolic"]).any()
    other = {"positional": "symbolic", "symbolic": "positional"}[pure]
    assert (last["purity"] == pure).any()
    assert not (last["purity"] == other).any()
