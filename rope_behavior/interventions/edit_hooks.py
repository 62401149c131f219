"""Hook callables that edit the RoPE pairs of queries or keys.

Each callable is a small frozen dataclass whose ``repr`` says what it does, installed on
one hook point by :func:`rope_behavior.interventions.compile.compile_hooks`. It receives the
activation ``[batch, pos, head, d_head]`` of that hook (``head`` = query heads at a q
site, KV heads at a k site) and returns a NEW tensor (``torch.where`` and out-of-place
arithmetic): cached tensors are never mutated and gradients flow through every entry
that is kept and through replacement values.

Sites are either the host's rotated hooks (``hook_rot_q`` / ``hook_rot_k``) or, for
families whose bridge fires none, the pre-rotation hooks: a rotation acts within each
pair, so replacing whole pairs before it is the same as replacing them after it.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.model.adapters import PairLayout, PositionTap
from rope_behavior.rope.pairs import merge_pairs, rotate_pairs, split_pairs

__all__ = [
    "AdapterTables",
    "ReanglePairs",
    "Record",
    "ReplacePairs",
    "ResamplePairs",
    "SlicedPatch",
    "TableTap",
    "TappedTables",
    "ZeroPairs",
    "computed_tables",
    "dim_mask",
    "pair_mask",
]

# ``tables(n_pos, like) -> (cos, sin)`` ``[b, pos, pair]``: one table per prompt (``b`` the
# batch) or one shared by all (``b`` = 1).
Tables = Callable[[int, Tensor], tuple[Tensor, Tensor]]


def pair_mask(
    n_heads: int, n_pairs: int, heads: tuple[int, ...], pairs: tuple[int, ...]
) -> Bool[Tensor, "head pair"]:
    """``True`` at ``(h, p)`` for every ``h`` in ``heads`` and ``p`` in ``pairs``."""
    rows = torch.zeros(n_heads, 1, dtype=torch.bool)
    cols = torch.zeros(1, n_pairs, dtype=torch.bool)
    rows[list(heads)] = True
    cols[:, list(pairs)] = True
    return rows & cols


def dim_mask(
    n_heads: int,
    d_head: int,
    heads: tuple[int, ...],
    pairs: tuple[int, ...],
    rotary_dim: int,
    layout: PairLayout,
) -> Bool[Tensor, "head d_head"]:
    """``True`` on both dims of every selected pair of every selected head."""
    dims = split_pairs(torch.arange(rotary_dim, dtype=torch.float64), layout).long()  # [pair, 2]
    cols = torch.zeros(d_head, dtype=torch.bool)
    cols[dims[list(pairs)].reshape(-1)] = True
    rows = torch.zeros(n_heads, dtype=torch.bool)
    rows[list(heads)] = True
    return rows[:, None] & cols[None, :]


def _check_site(x: Tensor, n_heads: int, d_head: int, what: str) -> None:
    if x.ndim != 4 or tuple(x.shape[-2:]) != (n_heads, d_head):
        raise RopeBehaviorError(
            f"{what}: the hook fired with shape {tuple(x.shape)}; expected [batch, pos, "
            f"{n_heads} heads, {d_head}] (was the intervention compiled for another model?)"
        )


def _aligned(values: Tensor, x: Tensor, what: str, any_pos: bool = False) -> Tensor:
    """``values`` ``[b or 1, pos >= n, head, d_head]`` cut to ``x``'s positions, on its
    device (``any_pos``: one position's values broadcast over all positions)."""
    n = x.shape[1]
    if any_pos:
        values = values.expand(values.shape[0], n, *values.shape[2:])
    if values.shape[1] < n:
        raise RopeBehaviorError(
            f"{what}: the source covers {values.shape[1]} positions but the run has {n}"
        )
    if values.shape[0] not in (1, x.shape[0]):
        raise RopeBehaviorError(
            f"{what}: the source has batch {values.shape[0]} but the run has batch "
            f"{x.shape[0]} (expected the same batch, or 1 to broadcast)"
        )
    return values[:, :n].to(device=x.device, dtype=x.dtype)


@dataclass(frozen=True, eq=False)
class ZeroPairs:
    """Set the selected pairs of the selected heads to zero."""

    site: str
    heads: tuple[int, ...]
    pairs: tuple[int, ...]
    mask: Bool[Tensor, "head d_head"] = field(repr=False)

    def __call__(self, x: Tensor, hook: Any = None) -> Tensor:
        _check_site(x, self.mask.shape[0], self.mask.shape[1], self.site)
        return torch.where(self.mask.to(x.device), x.new_zeros(()), x)


@dataclass(frozen=True, eq=False)
class ReplacePairs:
    """Replace the selected pairs with ``values`` ``[batch or 1, pos, head, d_head]``
    (positions beyond the run's are ignored; ``any_pos``: ``[.., 1, ..]`` values used at
    every position); ``source`` says where the values come from."""

    site: str
    heads: tuple[int, ...]
    pairs: tuple[int, ...]
    source: str
    mask: Bool[Tensor, "head d_head"] = field(repr=False)
    values: Float[Tensor, "vbatch vpos head d_head"] = field(repr=False)
    any_pos: bool = field(default=False, repr=False)

    def __call__(self, x: Tensor, hook: Any = None) -> Tensor:
        _check_site(x, self.mask.shape[0], self.mask.shape[1], self.site)
        values = _aligned(self.values, x, self.site, self.any_pos)
        return torch.where(self.mask.to(x.device), values, x)


@dataclass(frozen=True, eq=False)
class ResamplePairs:
    """Replace the selected pairs of row ``b`` with those of reference row ``donor[b]``,
    donors drawn from a generator seeded with ``seed`` (the same rows on every call)."""

    site: str
    heads: tuple[int, ...]
    pairs: tuple[int, ...]
    seed: int
    mask: Bool[Tensor, "head d_head"] = field(repr=False)
    donors: Float[Tensor, "ref vpos head d_head"] = field(repr=False)

    def __call__(self, x: Tensor, hook: Any = None) -> Tensor:
        _check_site(x, self.mask.shape[0], self.mask.shape[1], self.site)
        gen = torch.Generator().manual_seed(self.seed)
        rows = torch.randint(self.donors.shape[0], (x.shape[0],), generator=gen)
        values = _aligned(self.donors[rows.to(self.donors.device)], x, self.site)
        return torch.where(self.mask.to(x.device), values, x)


@dataclass(frozen=True, eq=False)
class SlicedPatch:
    """Batched conditions: batch slice ``i`` (rows ``i*B .. (i+1)*B - 1``) gets condition
    ``i``'s pairs replaced by ``values`` ``[B, pos, head, d_head]``."""

    site: str
    conditions: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    masks: Bool[Tensor, "cond head d_head"] = field(repr=False)
    values: Float[Tensor, "vbatch vpos head d_head"] = field(repr=False)

    def __call__(self, x: Tensor, hook: Any = None) -> Tensor:
        _check_site(x, self.masks.shape[1], self.masks.shape[2], self.site)
        k, b = self.masks.shape[0], self.values.shape[0]
        if x.shape[0] != k * b:
            raise RopeBehaviorError(
                f"{self.site}: batched patch of {k} conditions x batch {b} needs batch "
                f"{k * b}; the hook fired with batch {x.shape[0]}"
            )
        xs = x.reshape(k, b, *x.shape[1:])
        values = _aligned(self.values, xs[0], self.site)
        out = torch.where(self.masks.to(x.device)[:, None, None], values[None], xs)
        return out.reshape(x.shape)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _angle_tables(
    positions: Tensor, omega: Tensor, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``cos / sin(position * omega)`` ``[b, pos, pair]`` at position ids ``[b, pos]``
    (computed in float64)."""
    angle = positions.double().cpu()[..., None] * omega.double().cpu()
    return angle.cos().to(device, dtype), angle.sin().to(device, dtype)


def _default_positions(n_pos: int, device: torch.device) -> Tensor:
    return torch.arange(n_pos, device=device)[None]


def _taps(*sources: object) -> tuple[PositionTap, ...]:
    out: list[PositionTap] = []
    for src in sources:
        if isinstance(src, PositionTap):
            out.append(src)
        out += [t for t in getattr(src, "position_taps", ()) if isinstance(t, PositionTap)]
    return tuple(dict.fromkeys(out))


def _reangled(
    x: Tensor,
    omega: tuple[float, ...],
    layout: PairLayout,
    tables: Tables,
    positions: PositionTap | None,
    mask: Tensor,
    site: str,
    magnitude: float = 1.0,
) -> Tensor:
    """Rotate the selected pairs of ``x`` by ``omega * position_id - the model's angle``
    (the model's angle and magnitude read from its table ``tables``, per prompt) and
    multiply their length by ``magnitude``."""
    n_pairs, n, batch = len(omega), x.shape[1], x.shape[0]
    _check_site(x, mask.shape[0], x.shape[-1], site)
    dt = _compute_dtype(x)
    xp = split_pairs(x[..., : 2 * n_pairs].to(dt), layout)
    cos, sin = tables(n, x)
    cos, sin = cos.to(x.device, dt), sin.to(x.device, dt)
    if positions is None:
        ids = _default_positions(n, x.device)
    else:
        ids = positions.positions(n, x.device)
        if not positions.recorded and cos.shape[0] > 1 and not bool((cos == cos[:1]).all()):
            raise RopeBehaviorError(
                f"{site}: the model gives these prompts different positions (an attention "
                "mask with left padding?) but the angle override was installed without "
                "recording them; install it with rope_behavior.intervened(...) / "
                "run_with_interventions(...) (or ModelAdapter.hooked), not model.hooks(...)"
            )
    for what, b in (("tables", cos.shape[0]), ("position ids", ids.shape[0])):
        if b not in (1, batch):
            raise RopeBehaviorError(
                f"{site}: the model's {what} of this forward cover {b} prompts but the hook "
                f"fired with batch {batch} (expected 1 shared or {batch})"
            )
    new_cos, new_sin = _angle_tables(ids, torch.tensor(omega), x.device, dt)
    # One rotation by (new - old) on the small [b, pos, pair] tables: undoing the model's
    # rotation (magnitude m, angle old) and applying m * R(new) compose to R(new - old).
    mag = torch.sqrt(cos * cos + sin * sin)
    delta_cos = magnitude * (new_cos * cos + new_sin * sin) / mag
    delta_sin = magnitude * (new_sin * cos - new_cos * sin) / mag
    if not bool(mask.all()) and bool((mask == mask[:1]).all()):
        # the same pairs in every head: the others get the identity on the small tables
        # (x * 1 - y * 0 == x for finite values) instead of a select over the whole site
        keep = ~mask[0].to(x.device)
        delta_cos = delta_cos.masked_fill(keep, 1.0)
        delta_sin = delta_sin.masked_fill(keep, 0.0)
        mask = mask.new_ones(())
    rotated = rotate_pairs(xp, delta_cos, delta_sin).expand(*xp.shape)
    if bool(mask.all()):
        return _merge(rotated, x, layout)
    out = torch.where(mask.to(x.device)[:, :, None], rotated, xp)
    return _merge(out, x, layout)


@dataclass(frozen=True, eq=False)
class ReanglePairs:
    """Give the selected pairs the angle ``omega[p] * position_id`` (keeping the table's
    magnitude, e.g. YaRN's attention factor), with the layer's own table of this forward,
    per prompt (``tables``): one rotation by the new angle minus the model's own angle.
    At a rotated hook that replaces the model's rotation by the new one; at a pre-rotation
    hook the model's rotation afterwards completes it to the new one: the same operation
    at both sites. ``position_id`` is each token's position
    as the model counts it in this forward (``positions``, recorded from the model;
    ``None``: ``0..pos-1``). ``magnitude`` multiplies the selected pairs' length (1: the
    model's own)."""

    site: str
    heads: tuple[int, ...]
    pairs: tuple[int, ...]
    omega: tuple[float, ...]
    layout: PairLayout
    tables: Tables = field(repr=False)
    mask: Bool[Tensor, "head pair"] = field(repr=False)
    positions: PositionTap | None = field(default=None, repr=False)
    magnitude: float = 1.0

    @property
    def position_taps(self) -> tuple[PositionTap, ...]:
        return _taps(self.positions, self.tables)

    def __call__(self, x: Tensor, hook: Any = None) -> Tensor:
        return _reangled(
            x,
            self.omega,
            self.layout,
            self.tables,
            self.positions,
            self.mask,
            self.site,
            self.magnitude,
        )


def _merge(pairs: Tensor, x: Tensor, layout: PairLayout) -> Tensor:
    rotary = merge_pairs(pairs, layout).to(x.dtype)
    if rotary.shape[-1] == x.shape[-1]:
        return rotary
    return torch.cat([rotary, x[..., rotary.shape[-1] :]], dim=-1)


# -- the model's own rotation tables, read during the same forward ------------------------


@dataclass(frozen=True, eq=False)
class TableTap:
    """Hook on a ``hook_cos`` / ``hook_sin`` point storing the table for a later hook of
    the same forward (the tables fire before the rotated q and k)."""

    store: dict[str, Tensor] = field(repr=False)
    key: str

    def __call__(self, x: Tensor, hook: Any = None) -> Tensor:
        self.store[self.key] = x
        return x


@dataclass(frozen=True, eq=False)
class TappedTables:
    """Per-pair ``(cos, sin)`` ``[b, pos, pair]`` of ``layer`` (one table per prompt, or one
    shared by all) from the tables a :class:`TableTap` stored in this forward, converted by
    the model's adapter."""

    layer: int
    store: dict[str, Tensor] = field(repr=False)
    convert: Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]] = field(repr=False)

    def __call__(self, n_pos: int, like: Tensor) -> tuple[Tensor, Tensor]:
        if "cos" not in self.store or "sin" not in self.store:
            raise RopeBehaviorError(
                f"layer {self.layer}: the rotary table hooks did not fire before the rotated "
                "query/key hook, so the model's rotation cannot be undone exactly"
            )
        cos, sin = self.convert(self.store["cos"], self.store["sin"], self.layer)
        return cos[:, -n_pos:], sin[:, -n_pos:]


@dataclass(frozen=True, eq=False)
class AdapterTables:
    """The tables ``[b, pos, pair]`` the model computes itself for ``layer`` at the
    position ids it gives the tokens in this forward (hosts without table hooks)."""

    layer: int
    rotation_tables: Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]] = field(repr=False)
    positions: PositionTap | None = field(default=None, repr=False)

    @property
    def position_taps(self) -> tuple[PositionTap, ...]:
        return _taps(self.positions)

    def __call__(self, n_pos: int, like: Tensor) -> tuple[Tensor, Tensor]:
        ids = (
            _default_positions(n_pos, like.device)
            if self.positions is None
            else self.positions.positions(n_pos, like.device)
        )
        return self.rotation_tables(self.layer, ids, like)


@dataclass(frozen=True, eq=False)
class computed_tables:
    """``(scale cos(n omega), scale sin(n omega))`` ``[1, pos, pair]`` at ``n = 0..pos-1``
    from stated angles: for layers whose host exposes no table hook (native toy models,
    NoPE layers, whose tables do not depend on the position) or when no model is given."""

    omega: Float[Tensor, " pair"] = field(repr=False)
    scale: float = 1.0

    def __call__(self, n_pos: int, like: Tensor) -> tuple[Tensor, Tensor]:
        ids = _default_positions(n_pos, like.device)
        cos, sin = _angle_tables(ids, self.omega, like.device, torch.float64)
        return self.scale * cos, self.scale * sin


@dataclass(frozen=True, eq=False)
class Record:
    """Hook storing the activation it sees under ``key`` (no copy, no edit)."""

    store: dict[str, Tensor] = field(repr=False)
    key: str

    def __call__(self, x: Tensor, hook: Any = None) -> Tensor:
        self.store[self.key] = x
        return x
