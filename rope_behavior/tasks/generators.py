"""The three canonical tasks of docs/method.md §5: Index, Retrieval and Partial induction.

Every task is a frozen, validated dataclass that is also its own configuration. Prompts
have ``length`` context tokens followed by one query token, so ``seq_len = length + 1``
and the query sits at position ``length`` (the last position). The model is scored on
its prediction at the query position only. All tasks use one shared vocabulary of size
``d_vocab`` for inputs and answers (answers occupy a documented sub-range).

Token layouts (``S = n_symbols``, ``A = n_attributes``, ``L = length``):

**Index** (positional). Context: ``L`` symbol tokens ``s_0 .. s_{L-1}``, each drawn
uniformly from ``[0, S)`` with replacement. Query: the position token ``S + j`` naming
position ``j``. Answer: ``s_j`` (a symbol id in ``[0, S)``); answer position ``j``.
``d_vocab = S + L``.

**Retrieval** (symbolic). An *item* is ONE token whose identity factorises into
(symbol, attribute): ``item(s, a) = S + s * A + a``. Context: ``L`` items whose symbols
are distinct within the prompt (a uniform random ``L``-subset of ``[0, S)`` in random
order) and whose attributes are i.i.d. uniform in ``[0, A)``. Query: the symbol token
``s`` (ids ``[0, S)``) of the item at position ``j``. Answer: the attribute token
``S + S * A + a_j``; answer position ``j``. ``d_vocab = S + S * A + A``.

**Partial induction** (mixed). Same vocabulary and item format as Retrieval, but symbols
are drawn with replacement so they recur. The answer position ``j`` is drawn uniformly
from ``[min_occurrences - 1, L)``; the query symbol ``q = s_j``; every later position
holds a symbol other than ``q`` (resampled uniformly among the others), and if fewer
than ``min_occurrences - 1`` earlier positions hold ``q``, random earlier positions are
set to ``q``. With ``distinct_attributes`` the occurrences of ``q`` carry pairwise
distinct attributes, so content alone cannot give the answer. Answer: the attribute
token of the item at ``j`` (the LAST occurrence of ``q``).
"""

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import torch

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.tasks.batch import (
    TaskBatch,
    check_answer_position,
    check_batch_request,
    check_int,
    check_prompt,
    draw_answer_positions,
)
from rope_behavior.tasks.multihop import LetterHopsTask, NumberHopsTask

__all__ = [
    "TASK_KINDS",
    "IndexTask",
    "PartialInductionTask",
    "RetrievalTask",
    "task_from_dict",
    "task_to_dict",
]

TaskKind = Literal["index", "retrieval", "partial_induction"]


@dataclass(frozen=True)
class IndexTask:
    """Positional task: the query names a position, the answer is the symbol there.

    Layout: ``[s_0, ..., s_{L-1}, S + j] -> s_j`` (see the module docstring).
    """

    length: int = 16
    n_symbols: int = 16
    answer_position: int | None = None
    kind: ClassVar[str] = "index"

    def __post_init__(self) -> None:
        check_int("IndexTask", "length", self.length, 1)
        check_int("IndexTask", "n_symbols", self.n_symbols, 2)
        check_answer_position(
            "IndexTask", self.answer_position, self.answer_positions, f"length={self.length}"
        )

    @property
    def seq_len(self) -> int:
        return self.length + 1

    @property
    def d_vocab(self) -> int:
        return self.n_symbols + self.length

    @property
    def answer_positions(self) -> range:
        return range(self.length)

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator,
        *,
        answer_position: int | None = None,
    ) -> TaskBatch:
        """Draw ``batch_size`` prompts; ``answer_position`` overrides the configured one."""
        check_batch_request("IndexTask", batch_size, generator)
        check_answer_position(
            "IndexTask", answer_position, self.answer_positions, f"length={self.length}"
        )
        fixed = self.answer_position if answer_position is None else answer_position
        dev = generator.device
        symbols = torch.randint(
            0, self.n_symbols, (batch_size, self.length), generator=generator, device=dev
        )
        position = draw_answer_positions(batch_size, generator, self.answer_positions, fixed)
        tokens = torch.cat([symbols, (self.n_symbols + position)[:, None]], dim=1)
        answer = symbols.gather(1, position[:, None])[:, 0]
        return TaskBatch(
            tokens=tokens,
            answer=answer,
            answer_position=position,
            query_position=self.length,
            metadata={"symbols": symbols},
        )

    def solve(self, tokens: Sequence[int]) -> int:
        """Reference solver: the symbol at the position named by the query token."""
        toks = check_prompt("IndexTask", tokens, self.seq_len, self.d_vocab)
        j = toks[-1] - self.n_symbols
        if not 0 <= j < self.length:
            raise RopeBehaviorError(
                f"IndexTask.solve: the last token {toks[-1]} is not a position token."
            )
        return toks[j]


def _check_item_vocab(owner: str, n_symbols: int, n_attributes: int) -> None:
    check_int(owner, "n_symbols", n_symbols, 2)
    check_int(owner, "n_attributes", n_attributes, 2)


@dataclass(frozen=True)
class RetrievalTask:
    """Symbolic task: items bind a symbol to an attribute; the query asks for a symbol's.

    Layout: ``[item(s_0, a_0), ..., item(s_{L-1}, a_{L-1}), s_j] -> attr(a_j)`` with
    distinct symbols (see the module docstring).
    """

    length: int = 16
    n_symbols: int = 16
    n_attributes: int = 16
    answer_position: int | None = None
    kind: ClassVar[str] = "retrieval"

    def __post_init__(self) -> None:
        check_int("RetrievalTask", "length", self.length, 1)
        _check_item_vocab("RetrievalTask", self.n_symbols, self.n_attributes)
        if self.n_symbols < self.length:
            raise RopeBehaviorError(
                f"RetrievalTask: n_symbols={self.n_symbols} is too small for length="
                f"{self.length}; symbols are distinct within a prompt, so n_symbols must be "
                f">= length. Increase n_symbols or decrease length."
            )
        check_answer_position(
            "RetrievalTask", self.answer_position, self.answer_positions, f"length={self.length}"
        )

    @property
    def seq_len(self) -> int:
        return self.length + 1

    @property
    def d_vocab(self) -> int:
        return self.n_symbols + self.n_symbols * self.n_attributes + self.n_attributes

    @property
    def answer_positions(self) -> range:
        return range(self.length)

    def item_token(self, symbol: int, attribute: int) -> int:
        return self.n_symbols + symbol * self.n_attributes + attribute

    def attribute_token(self, attribute: int) -> int:
        return self.n_symbols + self.n_symbols * self.n_attributes + attribute

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator,
        *,
        answer_position: int | None = None,
    ) -> TaskBatch:
        """Draw ``batch_size`` prompts; ``answer_position`` overrides the configured one."""
        check_batch_request("RetrievalTask", batch_size, generator)
        check_answer_position(
            "RetrievalTask", answer_position, self.answer_positions, f"length={self.length}"
        )
        fixed = self.answer_position if answer_position is None else answer_position
        dev = generator.device
        order = torch.rand(batch_size, self.n_symbols, generator=generator, device=dev)
        symbols = order.argsort(dim=1)[:, : self.length]
        attributes = torch.randint(
            0, self.n_attributes, (batch_size, self.length), generator=generator, device=dev
        )
        position = draw_answer_positions(batch_size, generator, self.answer_positions, fixed)
        return _item_batch(self.n_symbols, self.n_attributes, symbols, attributes, position)

    def solve(self, tokens: Sequence[int]) -> int:
        """Reference solver: the attribute of the (unique) item carrying the query symbol."""
        toks = check_prompt("RetrievalTask", tokens, self.seq_len, self.d_vocab)
        items = _decode_items("RetrievalTask", toks, self.n_symbols, self.n_attributes)
        matches = [a for s, a in items if s == toks[-1]]
        if len(matches) != 1:
            raise RopeBehaviorError(
                f"RetrievalTask.solve: query symbol {toks[-1]} occurs {len(matches)} times; "
                "expected exactly once."
            )
        return self.attribute_token(matches[0])


@dataclass(frozen=True)
class PartialInductionTask:
    """Mixed task: symbols recur; the answer is bound at the query symbol's LAST occurrence.

    Same item format as :class:`RetrievalTask`; see the module docstring for sampling.
    """

    length: int = 16
    n_symbols: int = 4
    n_attributes: int = 16
    min_occurrences: int = 2
    distinct_attributes: bool = True
    answer_position: int | None = None
    kind: ClassVar[str] = "partial_induction"

    def __post_init__(self) -> None:
        owner = "PartialInductionTask"
        check_int(owner, "length", self.length, 1)
        _check_item_vocab(owner, self.n_symbols, self.n_attributes)
        check_int(owner, "min_occurrences", self.min_occurrences, 1, self.length)
        if not isinstance(self.distinct_attributes, bool):
            raise RopeBehaviorError(
                f"{owner}: distinct_attributes must be a bool; got {self.distinct_attributes!r}."
            )
        if self.distinct_attributes and self.n_attributes < self.length:
            raise RopeBehaviorError(
                f"{owner}: n_attributes={self.n_attributes} is too small for length="
                f"{self.length} with distinct_attributes=True (the query symbol may occur up "
                f"to length times, each with its own attribute); need n_attributes >= length, "
                f"or set distinct_attributes=False."
            )
        check_answer_position(
            owner,
            self.answer_position,
            self.answer_positions,
            f"length={self.length}; the query symbol must occur min_occurrences="
            f"{self.min_occurrences} times up to and including the answer position",
        )

    @property
    def seq_len(self) -> int:
        return self.length + 1

    @property
    def d_vocab(self) -> int:
        return self.n_symbols + self.n_symbols * self.n_attributes + self.n_attributes

    @property
    def answer_positions(self) -> range:
        return range(self.min_occurrences - 1, self.length)

    def item_token(self, symbol: int, attribute: int) -> int:
        return self.n_symbols + symbol * self.n_attributes + attribute

    def attribute_token(self, attribute: int) -> int:
        return self.n_symbols + self.n_symbols * self.n_attributes + attribute

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator,
        *,
        answer_position: int | None = None,
    ) -> TaskBatch:
        """Draw ``batch_size`` prompts; ``answer_position`` overrides the configured one."""
        owner = "PartialInductionTask"
        check_batch_request(owner, batch_size, generator)
        check_answer_position(
            owner, answer_position, self.answer_positions, f"min_occurrences={self.min_occurrences}"
        )
        fixed = self.answer_position if answer_position is None else answer_position
        dev, n, length = generator.device, batch_size, self.length
        position = draw_answer_positions(n, generator, self.answer_positions, fixed)
        symbols = torch.randint(0, self.n_symbols, (n, length), generator=generator, device=dev)
        query = symbols.gather(1, position[:, None])  # [batch, 1]
        index = torch.arange(length, device=dev)[None, :]
        # Later positions never hold the query symbol: replace it uniformly by another one.
        other = (
            query + torch.randint(1, self.n_symbols, (n, length), generator=generator, device=dev)
        ) % self.n_symbols
        symbols = torch.where((index > position[:, None]) & (symbols == query), other, symbols)
        # At least min_occurrences - 1 earlier occurrences: keep existing ones, plant the rest.
        n_plant = self.min_occurrences - 1
        if n_plant > 0:
            priority = torch.rand(n, length, generator=generator, device=dev) + 2.0 * (
                symbols == query
            )
            priority = priority.masked_fill(index >= position[:, None], -1.0)
            chosen = priority.topk(n_plant, dim=1).indices
            symbols = symbols.scatter(1, chosen, query.expand(n, n_plant))
        attributes = torch.randint(
            0, self.n_attributes, (n, length), generator=generator, device=dev
        )
        if self.distinct_attributes:
            is_query = symbols == query
            rank = (is_query.long().cumsum(dim=1) - 1).clamp(min=0)
            perm = torch.rand(n, self.n_attributes, generator=generator, device=dev).argsort(dim=1)
            attributes = torch.where(is_query, perm.gather(1, rank), attributes)
        return _item_batch(self.n_symbols, self.n_attributes, symbols, attributes, position)

    def solve(self, tokens: Sequence[int]) -> int:
        """Reference solver: the attribute of the last item carrying the query symbol."""
        toks = check_prompt("PartialInductionTask", tokens, self.seq_len, self.d_vocab)
        items = _decode_items("PartialInductionTask", toks, self.n_symbols, self.n_attributes)
        matches = [a for s, a in items if s == toks[-1]]
        if not matches:
            raise RopeBehaviorError(
                f"PartialInductionTask.solve: query symbol {toks[-1]} does not occur."
            )
        return self.attribute_token(matches[-1])


def _item_batch(
    n_symbols: int,
    n_attributes: int,
    symbols: torch.Tensor,
    attributes: torch.Tensor,
    position: torch.Tensor,
) -> TaskBatch:
    """Assemble item tokens, the query symbol token and the answer attribute token."""
    items = n_symbols + symbols * n_attributes + attributes
    query = symbols.gather(1, position[:, None])
    tokens = torch.cat([items, query], dim=1)
    answer = n_symbols + n_symbols * n_attributes + attributes.gather(1, position[:, None])[:, 0]
    return TaskBatch(
        tokens=tokens,
        answer=answer,
        answer_position=position,
        query_position=symbols.shape[1],
        metadata={"symbols": symbols, "attributes": attributes, "query_symbol": query[:, 0]},
    )


def _decode_items(
    owner: str, toks: list[int], n_symbols: int, n_attributes: int
) -> list[tuple[int, int]]:
    if not 0 <= toks[-1] < n_symbols:
        raise RopeBehaviorError(
            f"{owner}.solve: the last token {toks[-1]} is not a query symbol token."
        )
    items = []
    for t in toks[:-1]:
        offset = t - n_symbols
        if not 0 <= offset < n_symbols * n_attributes:
            raise RopeBehaviorError(f"{owner}.solve: context token {t} is not an item token.")
        items.append(divmod(offset, n_attributes))
    return items


TASK_KINDS: Mapping[str, type] = {
    "index": IndexTask,
    "retrieval": RetrievalTask,
    "partial_induction": PartialInductionTask,
    "number_hops": NumberHopsTask,
    "letter_hops": LetterHopsTask,
}


def task_to_dict(
    task: IndexTask | RetrievalTask | PartialInductionTask | NumberHopsTask | LetterHopsTask,
) -> dict[str, Any]:
    """A JSON-ready description of a task: ``{"kind": ..., **fields}``."""
    return {"kind": task.kind, **asdict(task)}


def task_from_dict(
    data: Mapping[str, Any],
) -> IndexTask | RetrievalTask | PartialInductionTask | NumberHopsTask | LetterHopsTask:
    """Inverse of :func:`task_to_dict`."""
    fields = dict(data)
    kind = fields.pop("kind", None)
    if kind not in TASK_KINDS:
        raise RopeBehaviorError(
            f"Unknown task kind {kind!r}; expected one of {sorted(TASK_KINDS)}."
        )
    try:
        return TASK_KINDS[kind](**fields)
    except TypeError as err:
        raise RopeBehaviorError(f"Cannot build a {kind} task from {fields}: {err}") from None
