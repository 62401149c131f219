"""Prompts longer than a task was trained at, in the task's own vocabulary.

``LongPrompts(base, length)`` is a task (the :class:`~rope_behavior.tasks.batch.Task`
protocol) whose prompts hold ``length`` context tokens (``length >= base.length``) and
use only ``base``'s tokens, so a model trained on ``base`` can read them unchanged. Each
prompt is one prompt of ``base`` plus ``length - base.length`` extra context tokens drawn
from the base task's own context distribution, placed so that the answer is the base
prompt's answer:

* **Index** / **Number** (positional): the vocabulary names only the first
  ``base.length`` (Index) / ``base.n_slots`` (Number) positions, so the base context
  keeps its positions and the extra tokens (uniform symbols / uniform pointers into the
  named slots) sit between it and the query (Number: before the hop token). The answer
  position stays among the named ones while the query moves away to ``length``.
* **Retrieval** / **Letter** (symbolic): the extra items carry symbols other than the
  query symbol (Letter: keys other than the chain's keys), uniform attributes / values,
  and then every context slot is shuffled, so the bound item sits anywhere in the long
  context and the query symbol (each chain key) still occurs exactly once.

At ``length == base.length`` the prompts have the base task's distribution (Retrieval /
Letter: a uniform reordering of an already uniformly ordered context).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.tasks.batch import Task, TaskBatch, check_answer_position, check_prompt
from rope_behavior.tasks.generators import IndexTask, RetrievalTask
from rope_behavior.tasks.multihop import LetterHopsTask, NumberHopsTask

__all__ = ["LONG_KINDS", "LongPrompts"]

LONG_KINDS = ("index", "retrieval", "number_hops", "letter_hops")
BaseTask = IndexTask | RetrievalTask | NumberHopsTask | LetterHopsTask


def _other_than(
    excluded: Int[Tensor, "batch k"], n: int, n_values: int, generator: torch.Generator
) -> Int[Tensor, "batch n"]:
    """``n`` values per row, uniform over ``[0, n_values)`` minus that row's ``excluded``."""
    draw = torch.rand(excluded.shape[0], n, n_values, generator=generator, device=excluded.device)
    banned = torch.zeros(excluded.shape[0], n_values, dtype=torch.bool, device=excluded.device)
    banned = banned.scatter(1, excluded, True)
    return draw.masked_fill(banned[:, None, :], -1.0).argmax(dim=-1)


def _shuffle(
    context: Int[Tensor, "batch n"], position: Int[Tensor, " batch"], generator: torch.Generator
) -> tuple[Int[Tensor, "batch n"], Int[Tensor, " batch"]]:
    """Move slot ``i`` to slot ``perm[i]`` (a uniform permutation per row)."""
    perm = torch.rand(context.shape, generator=generator, device=context.device).argsort(dim=1)
    moved = torch.empty_like(context).scatter(1, perm, context)
    return moved, perm.gather(1, position[:, None])[:, 0]


@dataclass(frozen=True)
class LongPrompts:
    """``base``'s prompts lengthened to ``length`` context tokens (module docstring)."""

    base: Task  # one of BaseTask, checked in __post_init__
    length: int
    answer_position: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.base, BaseTask):
            raise RopeBehaviorError(
                f"LongPrompts: base={type(self.base).__name__} cannot be lengthened; expected "
                f"one of {', '.join(LONG_KINDS)} (IndexTask, RetrievalTask, NumberHopsTask, "
                "LetterHopsTask)."
            )
        if (
            isinstance(self.length, bool)
            or not isinstance(self.length, int)
            or self.length < self.base.length
        ):
            raise RopeBehaviorError(
                f"LongPrompts: length={self.length!r}; expected an int >= the base task's "
                f"length {self.base.length}."
            )
        if self.answer_position is not None:
            raise RopeBehaviorError(
                f"LongPrompts: answer_position={self.answer_position!r}; expected None (fix "
                "the base task's answer_position instead)."
            )

    @property
    def kind(self) -> str:
        return self.base.kind

    @property
    def seq_len(self) -> int:
        return self.length + 1

    @property
    def d_vocab(self) -> int:
        return self.base.d_vocab

    @property
    def answer_positions(self) -> range:
        if isinstance(self.base, IndexTask | NumberHopsTask):
            return self.base.answer_positions
        return range(self.length - (1 if isinstance(self.base, LetterHopsTask) else 0))

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator,
        *,
        answer_position: int | None = None,
    ) -> TaskBatch:
        """Draw ``batch_size`` prompts (``answer_position``: positional tasks only)."""
        base: BaseTask = self.base  # type: ignore[assignment]
        if answer_position is not None and not isinstance(base, IndexTask | NumberHopsTask):
            raise RopeBehaviorError(
                f"LongPrompts({base.kind}).sample: answer_position={answer_position!r}; the "
                "symbolic tasks shuffle the context, so expected None."
            )
        check_answer_position("LongPrompts", answer_position, self.answer_positions, "a slot")
        b = base.sample(batch_size, generator, answer_position=answer_position)
        extra, dev = self.length - base.length, generator.device
        n_ctx = base.length - (1 if isinstance(base, NumberHopsTask | LetterHopsTask) else 0)
        head, tail = b.tokens[:, :n_ctx], b.tokens[:, n_ctx:]
        position = b.answer_position
        if isinstance(base, IndexTask | NumberHopsTask):
            high = base.n_symbols if isinstance(base, IndexTask) else base.n_slots
            fill = torch.randint(0, high, (batch_size, extra), generator=generator, device=dev)
            context = torch.cat([head, fill], dim=1)
        elif isinstance(base, RetrievalTask):
            s, a = base.n_symbols, base.n_attributes
            symbols = _other_than(b.tokens[:, -1:], extra, s, generator)
            attrs = torch.randint(0, a, (batch_size, extra), generator=generator, device=dev)
            context, position = _shuffle(torch.cat([head, s + symbols * a + attrs], 1), position,
                                         generator)  # fmt: skip
        else:
            k, chain = base.n_letters, b.metadata["path"][:, : base.max_hops]
            keys = _other_than(chain, extra, k, generator)
            values = torch.randint(0, k, (batch_size, extra), generator=generator, device=dev)
            context, position = _shuffle(torch.cat([head, k + keys * k + values], 1), position,
                                         generator)  # fmt: skip
        return TaskBatch(
            tokens=torch.cat([context, tail], dim=1),
            answer=b.answer,
            answer_position=position,
            query_position=self.length,
            metadata=dict(b.metadata),
        )

    def solve(self, tokens: Sequence[int]) -> int:
        """Reference solver on a long prompt (the base task's rule)."""
        base: BaseTask = self.base  # type: ignore[assignment]
        toks = check_prompt("LongPrompts", tokens, self.seq_len, self.d_vocab)
        if isinstance(base, IndexTask):
            return toks[toks[-1] - base.n_symbols]
        if isinstance(base, NumberHopsTask):
            node = toks[-1]
            for _ in range(toks[-2] - base.n_slots + 1):
                node = toks[node]
            return node
        if isinstance(base, RetrievalTask):
            s, a = base.n_symbols, base.n_attributes
            bound = {(t - s) // a: (t - s) % a for t in toks[:-1]}
            return base.attribute_token(bound[toks[-1]])
        k = base.n_letters
        links = {(t - k) // k: (t - k) % k for t in toks[:-2]}
        node = toks[-1]
        for _ in range(toks[-2] - (k + k * k) + 1):
            node = links[node]
        return node
