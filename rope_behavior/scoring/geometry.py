"""Where the blocks of a block-swap score lie: exclusions, alignment, swaps.

For a query at position ``n`` of prompt ``b`` the *movable* keys are the keys before it
that are neither padding nor excluded (the query's own key ``n`` never moves). They fall
into *runs* of consecutive movable positions (an excluded key or padding ends a run), and
each run is tiled by blocks of ``block_size`` keys; a block never straddles an excluded
key. Keys of a run that fill no whole block are *leftover* keys: they never move.

* ``align="end"`` (the default): blocks tile each run back from its end, the run holding
  ``n - 1`` being cut at ``n - 1``; block 0 is the block ending at ``n - 1`` (the keys
  nearest the query), block 1 the one before it, and so on. The leftover keys of a run are
  its earliest ones. A swap ``(a, c)`` thus names the same offsets from every query.
* ``align="start"``: blocks tile each run forward from its start; block 0 is the earliest,
  and a block counts for a query only when it ends before it. The keys nearest the query
  are then the leftover ones whenever ``n - start`` is not a multiple of ``block_size``.

Why end alignment is the default: a previous-token head puts nearly all of its attention
on key ``n - 1``. Under start alignment that key is a leftover key for most lengths, the
swaps move almost none of the head's attention, and its score says nothing about it (a
planted previous-token head at 66 tokens, block 8, carries 0.3% of its attention in the
swapped blocks: ``tests/scoring/test_behavior_mass.py``). Under end alignment the nearest keys
are always in block 0.

Swaps are one list for all prompts and query positions: explicit, or distinct block pairs
among the blocks every prompt has at its reference query (its last token for ``"last"``
and ``"all"``, the largest listed position otherwise; all of them when there are at most
:data:`AUTO_ALL_PAIRS`, otherwise that many drawn with the generator). A swap whose blocks
do not both exist for a row is skipped for that row. A prompt without two blocks there is
refused, by name (:mod:`rope_behavior.scoring.blocks`, the rule
:func:`~rope_behavior.scorable_prompts` applies).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, as_count, warn_user
from rope_behavior.scoring.blocks import (
    _tiling,
    prompt_blocks,
    refuse_unscorable,
    scorable_rows,
)
from rope_behavior.scoring.swap_scores import _check_swaps

__all__ = [
    "ALIGNS",
    "AUTO_ALL_PAIRS",
    "ExcludeKeysWarning",
    "Geometry",
    "UnstatedBos",
    "block_geometry",
    "excluded_keys",
    "model_bos",
]

ALIGNS = ("end", "start")
AUTO_ALL_PAIRS = 64
_EXCLUDE_OPTIONS = (
    "'auto' (the BOS token when the model's tokenizer prepends one), 'bos', 'none', "
    "key positions (ints), or a sequence mixing positions and 'bos'"
)


@dataclass(frozen=True, eq=False)
class Geometry:
    """Blocks and swaps of one call. ``G`` geometry groups: 1 for start alignment (blocks
    do not depend on the query), one per query for end alignment."""

    align: str
    block_size: int
    start: Tensor  # [B] first movable key
    qpos: Tensor  # [B, nq] query positions (per prompt: "last" under right padding)
    group: Tensor  # [nq] geometry group of each query
    swaps: Tensor  # [S, 2]
    n_block_pairs: int  # block pairs the swaps were drawn from
    valid: Tensor  # [B, nq, S] both blocks exist for the row
    dst: Tensor  # [B, G, S, 2b] positions of block a then block c
    src: Tensor  # [B, G, S, 2b] where each destination's content comes from
    in_block: Tensor  # [B, nq, N] keys inside some block of the row
    movable: Tensor  # [B, nq, N] keys that may move (before the query, allowed)
    allowed: Tensor  # [B, N] neither excluded nor padding
    excluded: Tensor  # [B, N] excluded keys (padding not included)
    has_query_axis: bool
    # [S, 2b] when every row's blocks sit at fixed offsets back from its query
    # (dst = qpos - offsets wherever the swap is valid; end alignment with unbroken runs),
    # else None. Keys mode then scores many queries in the relative form (swap_relative).
    offsets: Tensor | None = None

    @property
    def n_groups(self) -> int:
        return int(self.dst.shape[1])

    def rows_allowed(self, qi: Tensor, window: int | None) -> Tensor:
        """[B, q, N]: keys each query row attends over (causal, window, padding, exclusion),
        on the geometry's device (``qi`` may be on any device)."""
        n = self.allowed.shape[1]
        j = torch.arange(n, device=self.qpos.device)
        q = self.qpos[:, qi.to(self.qpos.device), None]  # [B, q, 1]
        ok = j <= q
        if window is not None:
            ok = ok & (j > q - window)
        return ok & self.allowed[:, None, :]


class ExcludeKeysWarning(UserWarning):
    """``exclude_keys="auto"`` could not tell which token is BOS, so it excluded no key."""


@dataclass(frozen=True)
class UnstatedBos:
    """The model cannot say which token its tokenizer prepends as BOS: ``why``."""

    why: str


def model_bos(adapter: Any) -> int | UnstatedBos | None:
    """The BOS id ``exclude_keys="auto"`` / ``"bos"`` go by: the id the model's tokenizer
    prepends, ``None`` when the model states it prepends none (a tokenizer without one,
    ``default_prepend_bos=False``, a toy model without ``bos_token_id``), or
    :class:`UnstatedBos` when a TransformerLens model has no tokenizer to say (e.g. one
    built from a config)."""
    from rope_behavior.model.adapters.base import ConfigFacts

    bos = adapter.prepended_bos_id()
    model = getattr(adapter, "model", None)
    if (
        bos is None
        and isinstance(adapter, ConfigFacts)
        and getattr(model, "tokenizer", None) is None
    ):
        arch = getattr(adapter, "architecture", None) or type(model).__name__
        return UnstatedBos(f"the model ({arch}) has no tokenizer")
    return bos


def excluded_keys(tokens: Tensor, exclude_keys: object, bos_id: int | UnstatedBos | None) -> Tensor:
    """``[B, N]`` keys left out of every row: positions, and every key holding the BOS id.

    ``bos_id``: :func:`model_bos` (or the bare ``prepended_bos_id()``). With
    ``exclude_keys="auto"`` and an :class:`UnstatedBos` no key is excluded and an
    :class:`ExcludeKeysWarning` names the ways to say what the prompts hold: the answer
    would differ if they start with a BOS. ``"bos"`` is then refused."""
    bsz, n = tokens.shape
    out = torch.zeros(bsz, n, dtype=torch.bool, device=tokens.device)
    if exclude_keys is None or (isinstance(exclude_keys, str) and exclude_keys == "none"):
        return out
    if isinstance(exclude_keys, str) and exclude_keys == "auto":
        if isinstance(bos_id, UnstatedBos):
            warn_user(
                f"exclude_keys='auto' excludes no key: {bos_id.why}, so which token it "
                "prepends as BOS is unknown. Say what the prompts hold: exclude_keys='none' "
                "(no BOS), exclude_keys=(0,) (each starts with one; a BOS attention sink "
                "changes the scores) or other key positions",
                ExcludeKeysWarning,
            )
            return out
        return out if bos_id is None else out | (tokens == bos_id)
    items = (
        [exclude_keys]
        if isinstance(exclude_keys, int | str)
        else list(exclude_keys)
        if isinstance(exclude_keys, Sequence | range | set | frozenset | Tensor)
        else None
    )
    if items is None:
        raise RopeBehaviorError(f"exclude_keys={exclude_keys!r}; options: {_EXCLUDE_OPTIONS}")
    for e in items:
        if isinstance(e, Tensor) and e.numel() == 1 and not e.is_floating_point():
            e = int(e.item())
        if isinstance(e, str) and e == "bos":
            if bos_id is None or isinstance(bos_id, UnstatedBos):
                why = (
                    bos_id.why
                    if bos_id is not None
                    else "the model states no BOS token its tokenizer prepends"
                )
                raise RopeBehaviorError(
                    f"exclude_keys='bos' but {why}; exclude positions instead (e.g. "
                    "exclude_keys=(0,))"
                )
            out |= tokens == bos_id
        elif isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < n:
            raise RopeBehaviorError(
                f"exclude_keys holds {e!r}; expected key positions in [0, {n - 1}] or 'bos' "
                f"(options: {_EXCLUDE_OPTIONS})"
            )
        else:
            out[:, e] = True
    return out


def _pick_swaps(
    swaps: object,
    n_swaps: object,
    generator: torch.Generator | None,
    n_blocks: int,
    where: str,
) -> tuple[list[tuple[int, int]], int]:
    """The swaps (explicit, all block pairs or a drawn subset) and the number of block pairs."""
    all_pairs = list(combinations(range(n_blocks), 2))
    if swaps is not None:
        return _check_swaps(swaps, n_blocks, where), len(all_pairs)
    if isinstance(n_swaps, str) and n_swaps == "auto":
        k = min(len(all_pairs), AUTO_ALL_PAIRS)
    elif n_swaps is None:
        k = len(all_pairs)
    else:
        k = as_count(n_swaps, "n_swaps")
        if k > len(all_pairs):
            raise RopeBehaviorError(
                f"more swaps requested (n_swaps={k}) than block pairs exist: {n_blocks} blocks "
                f"give {len(all_pairs)} pairs; lower n_swaps, pass n_swaps=None for all pairs, "
                "or lower block_size"
            )
    if k == len(all_pairs):
        return all_pairs, len(all_pairs)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    chosen = sorted(torch.randperm(len(all_pairs), generator=g)[:k].tolist())
    return [all_pairs[i] for i in chosen], len(all_pairs)


def _usable_queries(
    all_queries: bool,
    qpos: Int[Tensor, "batch query"],
    tok_ok: Bool[Tensor, "batch pos"],
    valid: Bool[Tensor, "batch query swap"],
    starts: Int[Tensor, "batch query pos"],
    in_block: Bool[Tensor, "batch query pos"],
    m: Int[Tensor, "batch query"],
    pairs: list[tuple[int, int]],
) -> tuple[
    Int[Tensor, "batch _q"],
    Bool[Tensor, "batch _q swap"],
    Int[Tensor, "batch _q pos"],
    Bool[Tensor, "batch _q pos"],
]:
    """Keeps the usable query rows (``all_queries``), else raises on an unusable one."""
    holds_token = torch.gather(tok_ok, 1, qpos)  # [B, nq]
    usable = valid.any(-1).all(0) & holds_token.all(0)
    if all_queries:
        sel = usable.nonzero().flatten()
        if sel.numel() == 0:
            raise RopeBehaviorError(
                "query_positions='all': no position holds a token with a usable swap in every "
                "prompt (each prompt alone can be scored, but not at a position they share: "
                "keys excluded inside some prompts break their blocks there); score those "
                "prompts apart, or use query_positions='last'"
            )
        return qpos[:, sel], valid[:, sel], starts[:, sel], in_block[:, sel]
    for i, qp in enumerate(qpos[0].tolist()):
        if not bool(holds_token[:, i].all()):
            raise RopeBehaviorError(
                f"query position {qp} is padding in some prompt; pick positions holding tokens"
            )
        if not bool(valid[:, i].any(-1).all()):
            raise RopeBehaviorError(
                f"fewer than two blocks for the query at {qp}: it has {int(m[:, i].min())} "
                f"block(s) in some prompt, and none of the swaps {pairs} has both blocks there"
            )
    return qpos, valid, starts, in_block


def _swap_positions(
    starts: Int[Tensor, "batch _group _block"], sw: Int[Tensor, "swap 2"], b: int
) -> tuple[Int[Tensor, "batch _group swap _slot"], Int[Tensor, "batch _group swap _slot"]]:
    """Destinations (block a then block c) and the source of each destination's content."""
    bsz = starts.shape[0]
    t = torch.arange(b, device=starts.device)
    sa = torch.gather(starts, 2, sw[:, 0][None, None].expand(bsz, starts.shape[1], -1))
    sc = torch.gather(starts, 2, sw[:, 1][None, None].expand(bsz, starts.shape[1], -1))
    pos_a = sa[..., None] + t  # [B, G, S, b]
    pos_c = sc[..., None] + t
    # a skipped swap (block missing for a row) points at key 0 and is masked by ``valid``
    pos_a, pos_c = pos_a.clamp_min(0), pos_c.clamp_min(0)
    dst = torch.cat([pos_a, pos_c], -1)
    src = torch.cat([pos_c, pos_a], -1)
    return dst, src


def block_geometry(
    tokens: Tensor,
    mask: Tensor | None,
    excluded: Tensor,
    block_size: int,
    query_positions: object,
    swaps: object,
    n_swaps: object,
    generator: torch.Generator | None,
    align: object,
) -> Geometry:
    if align not in ALIGNS:
        raise RopeBehaviorError(f"align={align!r}; options: {', '.join(map(repr, ALIGNS))}")
    bsz, n = tokens.shape
    dev = tokens.device
    b = block_size
    pb = prompt_blocks(tokens, mask, excluded, b, query_positions, str(align))
    refuse_unscorable(pb, scorable_rows(pb))  # the one rule, naming the prompts it rejects
    tok_ok, allowed, keep, qpos, m = pb.tok_ok, pb.allowed, pb.keep, pb.qpos, pb.m
    starts, in_block = pb.starts, pb.in_block
    start = allowed.int().argmax(-1)
    ref_blocks = pb.at_ref(m)
    fewest = int(ref_blocks.argmin())
    n_blocks = int(ref_blocks[fewest])  # blocks every prompt has at its reference query
    where = f"prompt {fewest} at position {int(pb.at_ref(qpos)[fewest])}"
    pairs, n_block_pairs = _pick_swaps(swaps, n_swaps, generator, n_blocks, where)
    sw = torch.tensor(pairs, device=dev)
    valid = sw.max(-1).values[None, None, :] < m[:, :, None]  # [B, nq, S]
    qpos, valid, starts, in_block = _usable_queries(
        pb.kind == "all", qpos, tok_ok, valid, starts, in_block, m, pairs
    )
    nq = qpos.shape[1]
    if align == "start":  # the blocks do not depend on the query: one group
        _, starts, _ = _tiling(allowed, b, torch.full((bsz, 1), n, device=dev), "start")
        group = torch.zeros(nq, dtype=torch.long, device=dev)
    else:
        group = torch.arange(nq, device=dev)
    dst, src = _swap_positions(starts, sw, b)
    jj = torch.arange(n, device=dev)[None, None, :]
    movable = allowed[:, None, :] & (jj < qpos[:, :, None])
    offsets = _fixed_offsets(dst, qpos, group, valid) if align == "end" else None
    return Geometry(
        align=str(align),
        block_size=b,
        start=start,
        qpos=qpos,
        group=group,
        swaps=sw,
        n_block_pairs=n_block_pairs,
        valid=valid,
        dst=dst,
        src=src,
        in_block=in_block,
        movable=movable,
        allowed=allowed,
        excluded=excluded,
        has_query_axis=keep,
        offsets=offsets,
    )


def _fixed_offsets(dst: Tensor, qpos: Tensor, group: Tensor, valid: Tensor) -> Tensor | None:
    """``[S, 2b]`` offsets of the swapped positions back from the query when they are the
    same for every prompt and query where the swap is valid, else ``None``."""
    off = qpos[:, :, None, None] - dst[:, group]  # [B, nq, S, 2b]
    ok = valid[..., None].expand_as(off)
    big = torch.iinfo(off.dtype).max
    lo = torch.where(ok, off, big).amin((0, 1))
    hi = torch.where(ok, off, -big).amax((0, 1))
    return lo if bool((lo == hi).all()) else None
