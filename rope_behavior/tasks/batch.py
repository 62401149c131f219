"""The value every task generator returns, the protocol tasks follow, and shared checks.

A :class:`TaskBatch` holds a batch of prompts of one fixed length. The model reads the
whole prompt and is trained / scored on its prediction at the **last** position (the
query position) only: ``logits[:, batch.query_position]`` against ``batch.answer``.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Int
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError

__all__ = ["Task", "TaskBatch"]


@dataclass(frozen=True)
class TaskBatch:
    """A batch of task prompts.

    Attributes:
        tokens: prompt token ids, ``[batch, pos]`` (``torch.long``).
        answer: the token the model must predict at the query position, ``[batch]``.
        answer_position: the context position whose token determines the answer
            (the symbol at ``j`` for Index, the bound item for Retrieval, the last
            occurrence of the query symbol for Partial induction), ``[batch]``.
        query_position: index of the query token, always the last position.
        metadata: task-specific per-example tensors (e.g. ``"symbols"``,
            ``"attributes"``, ``"query_symbol"``), each with a leading batch axis.
    """

    tokens: Int[Tensor, "batch pos"]
    answer: Int[Tensor, " batch"]
    answer_position: Int[Tensor, " batch"]
    query_position: int
    metadata: Mapping[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    def to(self, device: torch.device | str) -> "TaskBatch":
        """Return a copy with every tensor moved to ``device``."""
        return TaskBatch(
            tokens=self.tokens.to(device),
            answer=self.answer.to(device),
            answer_position=self.answer_position.to(device),
            query_position=self.query_position,
            metadata={k: v.to(device) for k, v in self.metadata.items()},
        )


@runtime_checkable
class Task(Protocol):
    """What training, evaluation and checkpoints need from a task."""

    kind: str
    length: int
    answer_position: int | None

    @property
    def d_vocab(self) -> int: ...

    @property
    def seq_len(self) -> int: ...

    @property
    def answer_positions(self) -> range: ...

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator,
        *,
        answer_position: int | None = None,
    ) -> TaskBatch: ...

    def solve(self, tokens: Sequence[int]) -> int: ...


def check_int(owner: str, name: str, value: object, low: int, high: int | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is an int in ``[low, high]`` (``high=None``: no cap)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RopeBehaviorError(
            f"{owner}: {name} must be an int; got {value!r} ({type(value).__name__})."
        )
    if value < low or (high is not None and value > high):
        expected = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise RopeBehaviorError(f"{owner}: {name}={value} is out of range; expected {expected}.")


def check_answer_position(owner: str, value: int | None, valid: range, why: str) -> None:
    """Validate an optional fixed answer position against the task's valid positions."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value not in valid:
        raise RopeBehaviorError(
            f"{owner}: answer_position={value!r} is out of range; expected None (uniformly "
            f"random) or an int in [{valid.start}, {valid.stop - 1}] ({why})."
        )


def check_batch_request(owner: str, batch_size: object, generator: object) -> None:
    """Validate the arguments of ``sample``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RopeBehaviorError(
            f"{owner}.sample: batch_size must be an int >= 1; got {batch_size!r}."
        )
    if not isinstance(generator, torch.Generator):
        raise RopeBehaviorError(
            f"{owner}.sample: generator must be a torch.Generator (e.g. "
            f"torch.Generator().manual_seed(0)); got {type(generator).__name__}."
        )


def draw_answer_positions(
    batch_size: int, generator: torch.Generator, valid: range, fixed: int | None
) -> Int[Tensor, " batch"]:
    """Uniform positions in ``valid``, or ``fixed`` for every example."""
    if fixed is not None:
        return torch.full((batch_size,), fixed, dtype=torch.long, device=generator.device)
    return torch.randint(
        valid.start, valid.stop, (batch_size,), generator=generator, device=generator.device
    )


def check_prompt(owner: str, tokens: Sequence[int], seq_len: int, d_vocab: int) -> list[int]:
    """Plain-Python check used by the reference solvers."""
    toks = [int(t) for t in tokens]
    if len(toks) != seq_len:
        raise RopeBehaviorError(
            f"{owner}.solve: expected a prompt of {seq_len} tokens; got {len(toks)}."
        )
    bad = [t for t in toks if not 0 <= t < d_vocab]
    if bad:
        raise RopeBehaviorError(
            f"{owner}.solve: token ids must lie in [0, {d_vocab}); got {bad[:5]}."
        )
    return toks
