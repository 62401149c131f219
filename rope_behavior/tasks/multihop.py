"""Multi-hop tasks of the follow-up study (arXiv 2605.31558): Number and Letter, 1-4 hops.

The follow-up's text is not reachable here; its third-party summaries give the setting
(17-token sequences, 1-4 hops in equal shares, loss on the last token; a positional
**Number** task that follows position pointers and a symbolic **Letter** task that follows
contents). The token formats below are this project's choice.

Both tasks keep the canonical layout: ``length`` tokens before the query, the query last
(``seq_len = length + 1``, query position ``length``). The ``n = length - 1`` context
slots come first, then one **hop token** naming the hop count ``h``, then the query (the
start). With the defaults, ``length = 16``: 15 slots + the hop token + the start = 17.

**Number** (positional). Slot ``i`` holds a number token ``x_i`` in ``[0, n)``, read as a
pointer to slot ``x_i``. Start: a number ``p_0``. Answer: follow ``h`` pointers,
``p_{k+1} = x_{p_k}``, and answer the number ``p_h``. One hop is the Index task. Ids:
numbers ``[0, n)``, hop tokens ``n + h - 1``; ``d_vocab = n + max_hops``.

**Letter** (symbolic). Slot ``i`` holds one item token binding a key letter to a value
letter, ``item(u, v) = K + u * K + v`` (``K = n_letters``), keys distinct within a prompt.
Start: a letter ``a_0`` (ids ``[0, K)``). Answer: follow ``h`` links by content,
``a_{k+1}`` = the value of the item whose key is ``a_k``, and answer the letter ``a_h``.
One hop is the Retrieval task. Hop tokens ``K + K^2 + h - 1``; ``d_vocab = K + K^2 +
max_hops``.

**Sampling (both).** Every prompt holds a chain of ``max_hops + 1`` DISTINCT nodes
(slots for Number, letters for Letter), drawn uniformly, whatever its hop count: slot
``p_k`` points to ``p_{k+1}`` (Number), an item binds ``a_k`` to ``a_{k+1}`` (Letter),
``k < max_hops``. The other slots are random (Number: uniform pointers; Letter: keys
distinct from the chain's first ``max_hops`` letters, values uniform), and Letter items
sit in a random order. The hop count only picks which chain node is the answer, so the
context is drawn without regard to ``h`` (one seed gives the same context for every
``hops``) and the ``k``-hop reading of a prompt (``k != h``) is never its answer: no
shorter chain, and no reading that ignores the hop token, beats ``1 / max_hops``.
Hop counts come in equal shares: prompt ``i`` of a batch has ``h = i % max_hops + 1``
(unless ``hops`` fixes it). ``answer_position`` is the slot the last hop reads (Number:
``p_{h-1}``; Letter: the item keyed ``a_{h-1}``).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Int
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.tasks.batch import (
    TaskBatch,
    check_answer_position,
    check_batch_request,
    check_int,
    check_prompt,
)

__all__ = ["LetterHopsTask", "NumberHopsTask"]


def _check_hops(owner: str, hops: int | None, max_hops: int) -> None:
    if hops is not None:
        check_int(owner, "hops", hops, 1, max_hops)


def _hop_counts(
    batch_size: int, max_hops: int, hops: int | None, device: torch.device
) -> Int[Tensor, " batch"]:
    """Prompt ``i`` gets ``i % max_hops + 1`` hops (equal shares), or ``hops`` for all."""
    if hops is not None:
        return torch.full((batch_size,), hops, dtype=torch.long, device=device)
    return torch.arange(batch_size, device=device) % max_hops + 1


def _put(
    perm: Int[Tensor, "batch n"], index: Int[Tensor, " batch"], value: int
) -> Int[Tensor, "batch n"]:
    """Swap entries of each row of a permutation so that ``perm[b, index[b]] == value``."""
    at = (perm == value).long().argmax(dim=1, keepdim=True)
    moved = perm.gather(1, index[:, None])
    perm = perm.scatter(1, at, moved)
    return perm.scatter(1, index[:, None], torch.full_like(moved, value))


def _random_perm(batch_size: int, n: int, generator: torch.Generator) -> Int[Tensor, "batch n"]:
    return torch.rand(batch_size, n, generator=generator, device=generator.device).argsort(dim=1)


def _hop_count(owner: str, token: int, first: int, max_hops: int) -> int:
    h = token - first + 1
    if not 1 <= h <= max_hops:
        raise RopeBehaviorError(
            f"{owner}.solve: the token before the query, {token}, is not a hop token "
            f"(ids {first} to {first + max_hops - 1})."
        )
    return h


class _HopsLayout:
    """The layout both multi-hop tasks share: ``length - 1`` context slots, the hop token,
    the query (``length + 1`` tokens)."""

    length: int

    @property
    def n_slots(self) -> int:
        return self.length - 1

    @property
    def seq_len(self) -> int:
        return self.length + 1


@dataclass(frozen=True)
class NumberHopsTask(_HopsLayout):
    """Positional multi-hop task: follow ``h`` position pointers from the start.

    Layout: ``[x_0, ..., x_{n-1}, HOP_h, p_0] -> p_h`` with ``p_{k+1} = x_{p_k}``
    (see the module docstring).
    """

    length: int = 16
    max_hops: int = 4
    hops: int | None = None
    answer_position: int | None = None
    kind: ClassVar[str] = "number_hops"

    def __post_init__(self) -> None:
        owner = "NumberHopsTask"
        check_int(owner, "max_hops", self.max_hops, 1)
        check_int(owner, "length", self.length, self.max_hops + 2)
        _check_hops(owner, self.hops, self.max_hops)
        check_answer_position(
            owner, self.answer_position, self.answer_positions, f"length - 1 = {self.n_slots} slots"
        )

    @property
    def d_vocab(self) -> int:
        return self.n_slots + self.max_hops

    @property
    def answer_positions(self) -> range:
        return range(self.n_slots)

    def hop_token(self, hops: int) -> int:
        return self.n_slots + hops - 1

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator,
        *,
        answer_position: int | None = None,
        hops: int | None = None,
    ) -> TaskBatch:
        """Draw ``batch_size`` prompts; ``answer_position`` / ``hops`` override the configured."""
        owner = "NumberHopsTask"
        check_batch_request(owner, batch_size, generator)
        check_answer_position(owner, answer_position, self.answer_positions, "a slot")
        _check_hops(owner, hops, self.max_hops)
        fixed = self.answer_position if answer_position is None else answer_position
        n, dev = self.n_slots, generator.device
        h = _hop_counts(batch_size, self.max_hops, self.hops if hops is None else hops, dev)
        perm = _random_perm(batch_size, n, generator)
        pointers = torch.randint(0, n, (batch_size, n), generator=generator, device=dev)
        if fixed is not None:
            perm = _put(perm, h - 1, fixed)
        path = perm[:, : self.max_hops + 1]  # p_0 .. p_max, distinct slots
        pointers = pointers.scatter(1, path[:, :-1], path[:, 1:])
        tokens = torch.cat([pointers, (n + h - 1)[:, None], path[:, :1]], dim=1)
        return TaskBatch(
            tokens=tokens,
            answer=path.gather(1, h[:, None])[:, 0],
            answer_position=path.gather(1, (h - 1)[:, None])[:, 0],
            query_position=self.length,
            metadata={"hops": h, "path": path},
        )

    def solve(self, tokens: Sequence[int]) -> int:
        """Reference solver: follow the pointers ``h`` times from the start."""
        toks = check_prompt("NumberHopsTask", tokens, self.seq_len, self.d_vocab)
        n = self.n_slots
        h = _hop_count("NumberHopsTask", toks[n], n, self.max_hops)
        pointers, node = toks[:n], toks[-1]
        for value in [*pointers, node]:
            if not 0 <= value < n:
                raise RopeBehaviorError(
                    f"NumberHopsTask.solve: token {value} is not a number (ids 0 to {n - 1})."
                )
        for _ in range(h):
            node = pointers[node]
        return node


@dataclass(frozen=True)
class LetterHopsTask(_HopsLayout):
    """Symbolic multi-hop task: follow ``h`` key-to-value links by content from the start.

    Layout: ``[item(u_0, v_0), ..., item(u_{n-1}, v_{n-1}), HOP_h, a_0] -> a_h`` where
    ``a_{k+1}`` is the value bound to the key ``a_k`` (see the module docstring).
    """

    length: int = 16
    n_letters: int = 16
    max_hops: int = 4
    hops: int | None = None
    answer_position: int | None = None
    kind: ClassVar[str] = "letter_hops"

    def __post_init__(self) -> None:
        owner = "LetterHopsTask"
        check_int(owner, "max_hops", self.max_hops, 1)
        check_int(owner, "length", self.length, self.max_hops + 1)
        check_int(owner, "n_letters", self.n_letters, self.max_hops + 1)
        if self.n_letters < self.n_slots:
            raise RopeBehaviorError(
                f"LetterHopsTask: n_letters={self.n_letters} is too small for length="
                f"{self.length}; keys are distinct within a prompt, so n_letters must be >= "
                f"length - 1 = {self.n_slots}. Increase n_letters or decrease length."
            )
        _check_hops(owner, self.hops, self.max_hops)
        check_answer_position(
            owner, self.answer_position, self.answer_positions, f"length - 1 = {self.n_slots} slots"
        )

    @property
    def d_vocab(self) -> int:
        return self.n_letters + self.n_letters**2 + self.max_hops

    @property
    def answer_positions(self) -> range:
        return range(self.n_slots)

    def item_token(self, key: int, value: int) -> int:
        return self.n_letters + key * self.n_letters + value

    def hop_token(self, hops: int) -> int:
        return self.n_letters + self.n_letters**2 + hops - 1

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator,
        *,
        answer_position: int | None = None,
        hops: int | None = None,
    ) -> TaskBatch:
        """Draw ``batch_size`` prompts; ``answer_position`` / ``hops`` override the configured."""
        owner = "LetterHopsTask"
        check_batch_request(owner, batch_size, generator)
        check_answer_position(owner, answer_position, self.answer_positions, "a slot")
        _check_hops(owner, hops, self.max_hops)
        fixed = self.answer_position if answer_position is None else answer_position
        n, m, k, dev = self.n_slots, self.max_hops, self.n_letters, generator.device
        h = _hop_counts(batch_size, m, self.hops if hops is None else hops, dev)
        letters = _random_perm(batch_size, k, generator)
        path = letters[:, : m + 1]  # a_0 .. a_max, distinct letters
        # Filler keys: n - m of the letters that key no chain item (a_max among them).
        rest = letters[:, m:].gather(1, _random_perm(batch_size, k - m, generator))
        keys = torch.cat([path[:, :m], rest[:, : n - m]], dim=1)
        filler = torch.randint(0, k, (batch_size, n - m), generator=generator, device=dev)
        values = torch.cat([path[:, 1:], filler], dim=1)
        slot_of_item = _random_perm(batch_size, n, generator)  # item i sits in that slot
        if fixed is not None:
            slot_of_item = _put(slot_of_item, h - 1, fixed)
        items = k + keys * k + values
        context = torch.empty_like(items).scatter(1, slot_of_item, items)
        tokens = torch.cat([context, (k + k * k + h - 1)[:, None], path[:, :1]], dim=1)
        return TaskBatch(
            tokens=tokens,
            answer=path.gather(1, h[:, None])[:, 0],
            answer_position=slot_of_item.gather(1, (h - 1)[:, None])[:, 0],
            query_position=self.length,
            metadata={"hops": h, "path": path},
        )

    def solve(self, tokens: Sequence[int]) -> int:
        """Reference solver: from the start letter, follow the key-to-value links ``h`` times."""
        owner = "LetterHopsTask"
        toks = check_prompt(owner, tokens, self.seq_len, self.d_vocab)
        n, k = self.n_slots, self.n_letters
        h = _hop_count(owner, toks[n], k + k * k, self.max_hops)
        links: dict[int, int] = {}
        for t in toks[:n]:
            if not k <= t < k + k * k:
                raise RopeBehaviorError(f"{owner}.solve: context token {t} is not an item token.")
            key, value = divmod(t - k, k)
            if key in links:
                raise RopeBehaviorError(f"{owner}.solve: key letter {key} is bound twice.")
            links[key] = value
        node = toks[-1]
        if not 0 <= node < k:
            raise RopeBehaviorError(f"{owner}.solve: the query {node} is not a letter token.")
        for hop in range(h):
            if node not in links:
                raise RopeBehaviorError(
                    f"{owner}.solve: hop {hop + 1} of {h}: letter {node} is bound to nothing."
                )
            node = links[node]
        return node
