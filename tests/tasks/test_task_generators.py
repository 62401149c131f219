"""Task generators: determinism, reference-solver agreement, layout invariants, bad configs."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rope_behavior.tasks import (
    IndexTask,
    PartialInductionTask,
    RetrievalTask,
    TaskBatch,
    task_from_dict,
    task_to_dict,
)

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def index_tasks(draw: st.DrawFn) -> IndexTask:
    length = draw(st.integers(1, 10))
    return IndexTask(length=length, n_symbols=draw(st.integers(2, 12)))


@st.composite
def retrieval_tasks(draw: st.DrawFn) -> RetrievalTask:
    length = draw(st.integers(1, 10))
    return RetrievalTask(
        length=length,
        n_symbols=draw(st.integers(max(2, length), 14)),
        n_attributes=draw(st.integers(2, 6)),
    )


@st.composite
def partial_tasks(draw: st.DrawFn) -> PartialInductionTask:
    length = draw(st.integers(1, 10))
    distinct = draw(st.booleans())
    return PartialInductionTask(
        length=length,
        n_symbols=draw(st.integers(2, 6)),
        n_attributes=draw(st.integers(max(2, length), 12) if distinct else st.integers(2, 5)),
        min_occurrences=draw(st.integers(1, length)),
        distinct_attributes=distinct,
    )


any_task = st.one_of(index_tasks(), retrieval_tasks(), partial_tasks())


def check_common(task, batch: TaskBatch, batch_size: int) -> None:
    assert batch.tokens.shape == (batch_size, task.seq_len)
    assert batch.tokens.dtype == torch.long
    assert batch.query_position == task.seq_len - 1 == task.length
    assert int(batch.tokens.min()) >= 0
    assert int(batch.tokens.max()) < task.d_vocab
    for tokens, answer, position in zip(
        batch.tokens.tolist(), batch.answer.tolist(), batch.answer_position.tolist()
    ):
        assert task.solve(tokens) == answer
        assert position in task.answer_positions


@SETTINGS
@given(task=any_task, seed=st.integers(0, 2**31 - 1), batch_size=st.integers(1, 40))
def test_every_answer_matches_the_reference_solver(task, seed, batch_size):
    batch = task.sample(batch_size, torch.Generator().manual_seed(seed))
    check_common(task, batch, batch_size)


@SETTINGS
@given(task=any_task, seed=st.integers(0, 2**31 - 1))
def test_sampling_is_deterministic_per_seed(task, seed):
    a = task.sample(16, torch.Generator().manual_seed(seed))
    b = task.sample(16, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(a.tokens, b.tokens, rtol=0, atol=0)
    torch.testing.assert_close(a.answer, b.answer, rtol=0, atol=0)
    torch.testing.assert_close(a.answer_position, b.answer_position, rtol=0, atol=0)


def test_different_seeds_give_different_batches():
    task = IndexTask()
    a = task.sample(32, torch.Generator().manual_seed(0))
    b = task.sample(32, torch.Generator().manual_seed(1))
    assert not torch.equal(a.tokens, b.tokens)


@SETTINGS
@given(task=index_tasks(), seed=st.integers(0, 2**31 - 1))
def test_index_layout(task, seed):
    batch = task.sample(20, torch.Generator().manual_seed(seed))
    for tokens, position in zip(batch.tokens.tolist(), batch.answer_position.tolist()):
        assert all(t < task.n_symbols for t in tokens[:-1])
        assert tokens[-1] == task.n_symbols + position


@SETTINGS
@given(task=retrieval_tasks(), seed=st.integers(0, 2**31 - 1))
def test_retrieval_symbols_are_distinct_and_query_is_at_answer_position(task, seed):
    batch = task.sample(20, torch.Generator().manual_seed(seed))
    for tokens, position, answer in zip(
        batch.tokens.tolist(), batch.answer_position.tolist(), batch.answer.tolist()
    ):
        decoded = [divmod(t - task.n_symbols, task.n_attributes) for t in tokens[:-1]]
        symbols = [s for s, _ in decoded]
        assert len(set(symbols)) == len(symbols)
        assert symbols[position] == tokens[-1]
        assert answer == task.attribute_token(decoded[position][1])
        assert tokens[position] == task.item_token(*decoded[position])


@SETTINGS
@given(task=partial_tasks(), seed=st.integers(0, 2**31 - 1))
def test_partial_induction_answer_is_the_last_of_enough_occurrences(task, seed):
    batch = task.sample(20, torch.Generator().manual_seed(seed))
    for tokens, position in zip(batch.tokens.tolist(), batch.answer_position.tolist()):
        decoded = [divmod(t - task.n_symbols, task.n_attributes) for t in tokens[:-1]]
        hits = [i for i, (s, _) in enumerate(decoded) if s == tokens[-1]]
        assert hits[-1] == position
        assert len(hits) >= task.min_occurrences
        if task.distinct_attributes:
            attributes = [decoded[i][1] for i in hits]
            assert len(set(attributes)) == len(attributes)


@pytest.mark.parametrize(
    "task", [IndexTask(length=6), RetrievalTask(length=6), PartialInductionTask(length=6)]
)
def test_fixed_answer_position(task, generator):
    for position in task.answer_positions:
        batch = task.sample(8, generator, answer_position=position)
        assert batch.answer_position.tolist() == [position] * 8
        check_common(task, batch, 8)
    configured = dataclasses.replace(task, answer_position=3)
    assert configured.sample(5, generator).answer_position.tolist() == [3] * 5


def test_partial_induction_is_not_solvable_by_content_alone(generator):
    task = PartialInductionTask()
    batch = task.sample(256, generator)
    query = batch.metadata["query_symbol"][:, None]
    occurrences = (batch.metadata["symbols"] == query).sum(dim=1)
    assert int(occurrences.min()) >= 2


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: IndexTask(length=0), r"length=0 is out of range; expected >= 1"),
        (lambda: IndexTask(n_symbols=1), r"n_symbols=1 is out of range"),
        (lambda: IndexTask(length=4, answer_position=4), r"answer_position=4 .*\[0, 3\]"),
        (lambda: IndexTask(answer_position=-1), r"answer_position=-1 is out of range"),
        (lambda: RetrievalTask(length=16, n_symbols=8), r"n_symbols=8 is too small for length=16"),
        (lambda: RetrievalTask(n_attributes=1), r"n_attributes=1 is out of range"),
        (lambda: PartialInductionTask(length=16, n_attributes=8), r"n_attributes=8 is too small"),
        (
            lambda: PartialInductionTask(length=4, min_occurrences=5),
            r"min_occurrences=5 .*\[1, 4\]",
        ),
        (
            lambda: PartialInductionTask(min_occurrences=3, answer_position=1),
            r"answer_position=1 .*\[2, 15\]",
        ),
    ],
)
def test_bad_configs_raise_with_clear_messages(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_wrongly_typed_config_field_is_rejected():
    # Under the jaxtyping import hook the annotation check fires first (a TypeError);
    # without it __post_init__ raises a ValueError. Both name the field.
    with pytest.raises((ValueError, TypeError), match=r"length"):
        IndexTask(length=3.0)


def test_bad_sample_requests(generator):
    task = IndexTask(length=4)
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1"):
        task.sample(0, generator)
    with pytest.raises((ValueError, TypeError), match=r"generator"):
        task.sample(4, 0)
    with pytest.raises(ValueError, match=r"answer_position=9 is out of range"):
        task.sample(4, generator, answer_position=9)


def test_solvers_reject_malformed_prompts():
    with pytest.raises(ValueError, match=r"expected a prompt of 17 tokens; got 3"):
        IndexTask().solve([1, 2, 3])
    with pytest.raises(ValueError, match=r"not a query symbol token"):
        RetrievalTask(length=2, n_symbols=2, n_attributes=2).solve([2, 3, 7])
    with pytest.raises(ValueError, match=r"occurs 0 times"):
        RetrievalTask(length=2, n_symbols=2, n_attributes=2).solve([2, 3, 1])


@pytest.mark.parametrize(
    "task", [IndexTask(length=5), RetrievalTask(), PartialInductionTask(n_symbols=3)]
)
def test_task_dict_round_trip(task):
    assert task_from_dict(task_to_dict(task)) == task


def test_task_from_dict_rejects_unknown_kind():
    with pytest.raises(ValueError, match=r"Unknown task kind 'copy'; expected one of"):
        task_from_dict({"kind": "copy"})
