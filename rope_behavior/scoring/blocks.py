"""Which prompts can be scored: the blocks each prompt has before its query, and the one
rule that says whether that is enough (:func:`scorable_rows`).

A block-swap score (:mod:`rope_behavior.scoring.geometry`) needs, at every query it
scores, at least two whole blocks of ``block_size`` movable keys before the query (keys
that are neither padding nor excluded). A prompt too short for that cannot be scored: the
public predicate :func:`~rope_behavior.scoring.scorable_prompts` applies this rule to a
batch, and scoring refuses a batch holding such a prompt with :func:`refuse_unscorable`,
naming it. Both read :func:`prompt_blocks`, so they cannot disagree.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, integer_or_none

__all__ = ["PromptBlocks", "prompt_blocks", "refuse_unscorable", "scorable_rows"]

_QUERY_OPTIONS = "'last', 'all', an int position or a sequence of int positions"
MIN_BLOCKS = 2
"""Blocks a query needs before it: a swap moves two of them."""


def query_choice(query_positions: object) -> str | int | tuple[int, ...]:
    """``query_positions`` as ``"last"``, ``"all"``, an int or a tuple of distinct ints (an
    integer tensor or numpy ints are read as ints); anything else is refused."""
    what = f"query_positions={_short(query_positions)}"
    if isinstance(query_positions, str):
        if query_positions not in ("last", "all"):
            raise RopeBehaviorError(f"{what}; options: {_QUERY_OPTIONS}")
        return query_positions
    if isinstance(query_positions, Tensor) and query_positions.ndim == 1:
        query_positions = list(query_positions)
    single = integer_or_none(query_positions)
    if single is not None:
        return single
    if isinstance(query_positions, Sequence) and len(query_positions) > 0:
        items = [integer_or_none(q) for q in query_positions]
        if all(q is not None for q in items):
            ints = [int(q) for q in items if q is not None]
            twice = sorted({q for q in ints if ints.count(q) > 1})
            if twice:
                raise RopeBehaviorError(
                    f"{what} lists position(s) {twice} more than once; expected distinct "
                    "positions (each would be scored, and weighted in summaries, twice)"
                )
            return tuple(ints)
    raise RopeBehaviorError(f"{what}; options: {_QUERY_OPTIONS}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _queries(query_positions: object, n: int, dev: torch.device) -> tuple[bool, Tensor]:
    query_positions = query_choice(query_positions)
    if isinstance(query_positions, str) and query_positions in ("last", "all"):
        keep = query_positions == "all"
        return keep, torch.arange(n, device=dev) if keep else torch.tensor([n - 1], device=dev)
    if isinstance(query_positions, int):
        keep, cand = False, torch.tensor([query_positions], device=dev)
    else:
        keep, cand = True, torch.tensor(list(query_positions), device=dev)
    if bool(((cand < 0) | (cand >= n)).any()):
        raise RopeBehaviorError(
            f"query position(s) {query_positions!r} out of range: expected ints 0 <= n <= {n - 1} "
            f"for {n} positions (options: {_QUERY_OPTIONS})"
        )
    return keep, cand


def _runs(allowed: Tensor) -> tuple[Tensor, Tensor]:
    """Per key, the first and last position of its run of allowed keys ([B, N] each)."""
    bsz, n = allowed.shape
    j = torch.arange(n, device=allowed.device).expand(bsz, n)
    prev = torch.cat([torch.zeros_like(allowed[:, :1]), allowed[:, :-1]], 1)
    nxt = torch.cat([allowed[:, 1:], torch.zeros_like(allowed[:, :1])], 1)
    first = torch.where(allowed & ~prev, j, -1).cummax(1).values
    last = torch.where(allowed & ~nxt, j, n).flip(1).cummin(1).values.flip(1)
    return first, last


def _tiling(allowed: Tensor, b: int, qpos: Tensor, align: str) -> tuple[Tensor, Tensor, Tensor]:
    """Per (prompt, query): block count ``m`` [B, nq], block start positions ``[B, nq, K]``
    (block index order, -1 past ``m``) and in-block mask ``[B, nq, N]``."""
    _bsz, n = allowed.shape
    dev = allowed.device
    j = torch.arange(n, device=dev)
    first, last = _runs(allowed)
    q = qpos[:, :, None]  # [B, nq, 1]
    jj = j[None, None, :]
    before = allowed[:, None, :] & (jj < q)  # movable keys of each row
    if align == "start":
        off = j[None] - first
        length = last - first + 1
        member = allowed & (off < (length // b) * b)
        block_end = first + (off // b + 1) * b - 1
        in_block = member[:, None, :] & (block_end[:, None, :] < q)
        is_start = member & (off % b == 0)
        starts_all = torch.where(is_start, j[None], n)  # [B, N]
        starts_all = starts_all.sort(1).values
        ends = starts_all + b - 1
        ok = (starts_all < n)[:, None, :] & (ends[:, None, :] < q)
        m = ok.sum(-1)
        starts = torch.where(ok, starts_all[:, None, :], -1)
        return m, starts, in_block
    # end alignment: a run's end is min(its last key, n - 1) for the row of query n
    end = torch.minimum(last[:, None, :], q - 1)  # [B, nq, N]
    off = end - jj
    length = end - first[:, None, :] + 1
    member = before & (off < (length // b) * b)
    is_start = member & (off % b == b - 1)  # the lowest position of each block
    starts_desc = torch.where(is_start, jj, -1).sort(-1, descending=True).values
    m = is_start.sum(-1)
    return m, starts_desc, member


def _query_rows(
    query_positions: object, tok_ok: Bool[Tensor, "batch pos"]
) -> tuple[bool, Int[Tensor, " _cand"], Int[Tensor, "batch query"]]:
    """Whether the query axis is kept, the candidate positions and each prompt's query rows."""
    bsz, n = tok_ok.shape
    keep, cand = _queries(query_positions, n, tok_ok.device)
    qpos = cand[None].expand(bsz, -1).clone()
    if isinstance(query_positions, str) and query_positions == "last":
        # each prompt's last token (right padding puts it before the end)
        qpos = (n - 1 - tok_ok.long().flip(1).argmax(1))[:, None]
    return keep, cand, qpos


def _allowed_keys(
    tokens: Int[Tensor, "batch pos"], mask: Tensor | None, excluded: Bool[Tensor, "batch pos"]
) -> tuple[Bool[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """Keys holding tokens, and keys neither excluded nor padding."""
    bsz, n = tokens.shape
    dev = tokens.device
    tok_ok = mask.bool() if mask is not None else torch.ones(bsz, n, dtype=torch.bool, device=dev)
    return tok_ok, ~excluded & tok_ok


@dataclass(frozen=True, eq=False)
class PromptBlocks:
    """The blocks of every prompt at its queries (what :func:`prompt_blocks` finds).

    ``kind``: ``"last"`` (one query row: each prompt's last token), ``"all"`` (row ``i``
    is position ``i``) or ``"listed"`` (the positions given). ``qpos`` ``[B, nq]``: the
    query positions; ``m`` ``[B, nq]``: whole blocks among the movable keys before each;
    ``starts`` / ``in_block``: where they lie (``_tiling``); ``ref`` ``[B]``: the row each
    prompt is judged at (its last token; the largest listed position); ``required``
    ``[nq]``: the rows that must be scorable in every prompt (every listed position)."""

    kind: str
    block_size: int
    align: str
    tok_ok: Tensor
    allowed: Tensor
    excluded: Tensor
    keep: bool
    cand: Tensor
    qpos: Tensor
    m: Tensor
    starts: Tensor
    in_block: Tensor
    ref: Tensor
    required: Tensor

    def at_ref(self, x: Tensor) -> Tensor:
        """``x`` ``[B, nq]`` at each prompt's reference row: ``[B]``."""
        return torch.gather(x, 1, self.ref[:, None])[:, 0]

    @property
    def holds_token(self) -> Bool[Tensor, "batch query"]:
        return torch.gather(self.tok_ok, 1, self.qpos)


def prompt_blocks(
    tokens: Int[Tensor, "batch pos"],
    mask: Tensor | None,
    excluded: Bool[Tensor, "batch pos"],
    block_size: int,
    query_positions: object,
    align: str,
) -> PromptBlocks:
    """Tile every prompt's movable keys into blocks at each of its queries (no judgement)."""
    tok_ok, allowed = _allowed_keys(tokens, mask, excluded)
    keep, cand, qpos = _query_rows(query_positions, tok_ok)
    m, starts, in_block = _tiling(allowed, block_size, qpos, align)
    bsz, n = tok_ok.shape
    dev = qpos.device
    kind = (
        query_positions
        if isinstance(query_positions, str) and query_positions in ("last", "all")
        else "listed"
    )
    if kind == "all":  # row i is position i: each prompt's last token
        ref = n - 1 - tok_ok.long().flip(1).argmax(1)
    else:
        ref = torch.full((bsz,), int(cand.argmax()), dtype=torch.long, device=dev)
    required = torch.full((qpos.shape[1],), kind == "listed", dtype=torch.bool, device=dev)
    return PromptBlocks(
        kind, block_size, align, tok_ok, allowed, excluded, keep, cand, qpos, m, starts,
        in_block, ref, required,
    )  # fmt: skip


def scorable_rows(pb: PromptBlocks) -> Bool[Tensor, " batch"]:
    """THE rule: a prompt can be scored when its reference query, and every listed query,
    holds a token and has at least :data:`MIN_BLOCKS` whole blocks of movable keys before
    it."""
    fine = (pb.m >= MIN_BLOCKS) & pb.holds_token  # [B, nq]
    ok = pb.at_ref(fine)
    if bool(pb.required.any()):
        ok = ok & fine[:, pb.required].all(1)
    return ok


def _excluded_before(pb: PromptBlocks, q: Tensor) -> Tensor:
    """Per prompt, the excluded real tokens before its query position ``q`` [B]."""
    j = torch.arange(pb.tok_ok.shape[1], device=q.device)[None]
    return (pb.excluded & pb.tok_ok & (j < q[:, None])).sum(1)


def _largest_block_sizes(pb: PromptBlocks, rows: Tensor, q: Tensor) -> list[int]:
    """Per prompt of ``rows``, the largest block size under which it would have two blocks
    before its query ``q[row]`` (0: none would, it has fewer than two movable keys)."""
    allowed, qpos = pb.allowed[rows], q[rows][:, None]
    best = torch.zeros(len(rows), dtype=torch.long, device=allowed.device)
    for b in range(1, pb.block_size):
        m, _, _ = _tiling(allowed, b, qpos, pb.align)
        best = torch.where(m[:, 0] >= MIN_BLOCKS, b, best)
    return best.tolist()


def _describe(values: list[str], limit: int = 6) -> str:
    shown = ", ".join(values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _why(pb: PromptBlocks, i: int, n_tok: int, excl: int) -> str:
    """Why prompt row ``i`` cannot be scored, in words."""
    b = pb.block_size
    if not bool(pb.allowed[i].any()):
        return f"{n_tok} tokens, all keys excluded: exclusions and padding leave none"
    if pb.kind != "listed":
        return f"{n_tok} tokens, needs {MIN_BLOCKS * b + 1 + excl}"
    rows = [r for r in range(pb.qpos.shape[1]) if bool(pb.required[r]) or r == int(pb.ref[i])]
    pad = [int(pb.qpos[i, r]) for r in rows if not bool(pb.holds_token[i, r])]
    short = [
        int(pb.qpos[i, r])
        for r in rows
        if bool(pb.holds_token[i, r]) and int(pb.m[i, r]) < MIN_BLOCKS
    ]
    why = []
    if pad:
        why.append(f"query position(s) {pad} are padding in its {n_tok} tokens")
    if short:
        why.append(f"fewer than {MIN_BLOCKS * b} keys that can move before position(s) {short}")
    return "; ".join(why)


def refuse_unscorable(pb: PromptBlocks, ok: Tensor) -> None:
    """Raise naming the prompts ``ok`` rejects, their length, the length they need, and
    the ways on; return when every prompt is fine."""
    if bool(ok.all()):
        return
    bad = (~ok).nonzero().flatten()
    b = pb.block_size
    n_tok = pb.tok_ok.sum(1)
    q_ref = pb.at_ref(pb.qpos)
    excl = _excluded_before(pb, q_ref)
    parts = [f"prompt {i} ({_why(pb, i, int(n_tok[i]), int(excl[i]))})" for i in bad.tolist()]
    at = "the positions listed" if pb.kind == "listed" else "its last token"
    text = (
        f"{len(parts)} of {len(ok)} prompt{'s' if len(ok) > 1 else ''} too short to score: "
        f"{_describe(parts)}. A "
        f"prompt is scored at {at}, which needs two blocks of block_size={b} keys before "
        "it that can move (keys neither padding nor excluded, like BOS)"
    )
    if pb.kind != "listed":
        text += f": at least {MIN_BLOCKS * b + 1} tokens, plus one per excluded key"
    best = dict(zip(bad.tolist(), _largest_block_sizes(pb, bad, q_ref)))
    way = (
        f"Drop them, or keep only the scorable ones with rope_behavior.scorable_prompts("
        f"model, tokens, attention_mask=mask, block_size={b})"
    )
    helped = [x for x in best.values() if x]
    if len(helped) == len(best):
        way += f", or use block_size={min(helped)} (the largest that scores them)"
    else:
        hopeless = [i for i, x in best.items() if not x]
        way += (
            f"; no block_size scores prompt{'s' if len(hopeless) > 1 else ''} "
            f"{_describe([str(i) for i in hopeless])} (fewer than two keys that can move)"
        )
    raise RopeBehaviorError(f"{text}. {way}")
