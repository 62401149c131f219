"""Frequency-targeted interventions as values.

An intervention names a layer, heads, RoPE pairs and what to do to them:

* :class:`FrequencyAblation` — zero the pairs, or replace them by their mean / by a
  resampled reference row (``mode="zero" | "mean" | "resample"``);
* :class:`FrequencyPatch` — replace the pairs by those of another run (``source``);
* :class:`AngleOverride` — rotate the pairs at chosen angles instead of the model's
  (``omega=0`` removes position from those pairs: NoPE).

``target`` says which side is edited: ``"q"`` (``heads`` are query heads), ``"k"``
(``heads`` are KV heads: under grouped-query attention a key edit reaches every query
head of the group) or ``"qk"`` (``heads`` are query heads; under GQA they must form whole
KV groups, because their keys are shared). :meth:`resolve` returns a :class:`Reach`
stating what is edited and which query heads are reached.

Values compile to hooks in ONE function, :func:`rope_behavior.interventions.compile.compile_hooks`;
:func:`~rope_behavior.interventions.compile.run_with_interventions` and
:func:`~rope_behavior.interventions.compile.intervened` install them for a scoped forward.
"""

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from numbers import Real
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from rope_behavior.errors import (
    RopeBehaviorError,
    as_flag,
    as_fraction,
    as_int,
    as_seed,
    validates_inputs,
)
from rope_behavior.interventions.reach import (
    _MODES,
    _TARGETS,
    AblationMode,
    Indices,
    PairsArg,
    Reach,
    Target,
    _check_choice,
    _finite_angle,
    _index_list,
    _normalise,
    resolve_target,
)
from rope_behavior.interventions.sources import (
    ReferenceActivations,
    SiteActivations,
    fit_reference,
    site_activations,
)
from rope_behavior.model.context import resolve
from rope_behavior.model.spec import RopeSpec
from rope_behavior.rope.bands import PairSet

__all__ = [
    "AblationMode",
    "AngleOverride",
    "BatchedFrequencyPatch",
    "FrequencyAblation",
    "FrequencyPatch",
    "Reach",
    "Target",
    "TwoAngles",
    "resolve_target",
]


def keyword_fields(cls: type) -> type:
    """Make a frozen dataclass take its fields by keyword only, refusing a positional call
    with the field names (a positional ``AngleOverride(1, 0, [2, 3])`` would silently read
    ``[2, 3]`` as angles, where ``FrequencyAblation`` reads the third value as pairs)."""
    init = cls.__init__  # type: ignore[misc]
    names = [f.name for f in fields(cls) if f.init and not f.name.startswith("_")]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if args:
            raise RopeBehaviorError(
                f"{cls.__name__} takes its fields by keyword: {cls.__name__}("
                + ", ".join(f"{n}=..." for n in names)
                + f"); got {len(args)} positional value(s) {', '.join(map(repr, args))}"
                + (f", e.g. {cls.__name__}(layer={args[0]!r}, ...)" if names[0] == "layer" else "")
            )
        init(self, **kwargs)

    cls.__init__ = __init__  # type: ignore[misc]
    return cls


class _Targeted:
    """Shared resolution of (layer, heads, pairs, target)."""

    layer: int
    heads: Any
    pairs: Any
    target: str

    def _normalise_fields(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise RopeBehaviorError(f"layer must be an int; got {self.layer!r}")
        object.__setattr__(self, "heads", _normalise(self.heads, "heads"))
        object.__setattr__(self, "pairs", _normalise(self.pairs, "pairs"))
        _check_choice(self.target, _TARGETS, f"{type(self).__name__}: target")

    def resolve(self, spec: RopeSpec) -> Reach:
        """What this edits on the model of ``spec`` (raises on out-of-range indices)."""
        return resolve_target(spec, self.layer, self.heads, self.pairs, self.target, repr(self))

    def query_heads_reached(self, spec: RopeSpec) -> tuple[int, ...]:
        """The query heads whose attention scores this intervention can change."""
        return self.resolve(spec).query_heads_reached


@keyword_fields
@validates_inputs
@dataclass(frozen=True)
class FrequencyAblation(_Targeted):
    """Ablate ``pairs`` of ``heads`` at ``layer``: ``mode="zero"`` sets them to 0;
    ``"mean"`` / ``"resample"`` replace them by the reference mean / a random reference
    row, from :meth:`fit` (see :class:`~rope_behavior.interventions.sources.ReferenceActivations` for
    per-position versus pooled means). ``heads``/``pairs`` ``None`` mean all."""

    layer: int
    heads: Indices = None
    pairs: PairsArg = None
    target: str = "qk"
    mode: str = "zero"
    reference: ReferenceActivations | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self._normalise_fields()
        _check_choice(self.mode, _MODES, "FrequencyAblation: mode")

    @validates_inputs
    def fit(
        self,
        model: Any,
        reference_tokens: Int[Tensor, "batch pos"],
        *,
        per_position: bool = True,
        seed: int | torch.Generator = 0,
    ) -> "FrequencyAblation":
        """A copy holding the statistics of ``reference_tokens``.

        ``per_position=True`` (default): means over the reference batch at each position —
        exact at pre-rotation sites too, since the rotation at a fixed position is linear;
        runs may be at most as long as the reference. ``per_position=False``: one mean of
        the rotated vectors over batch and positions. Resampling replaces row ``b`` of a
        run by reference row ``donor[b]`` (queries and keys from the same donor), donors
        drawn from a generator seeded with ``seed``.
        """
        per_position = as_flag(per_position, "per_position")
        seed = as_seed(seed)
        model = resolve(model)
        spec = model.spec
        self.resolve(spec)
        ref = fit_reference(
            model, reference_tokens, spec, self.layer, per_position=per_position, seed=seed
        )
        return replace(self, reference=ref)


@keyword_fields
@validates_inputs
@dataclass(frozen=True)
class FrequencyPatch(_Targeted):
    """Replace ``pairs`` of ``heads`` at ``layer`` by their values in another run:
    ``source`` is token ids ``[batch, pos]`` (run on the model when compiled through
    :func:`run_with_interventions` / :func:`intervened`), a ``Captured``, an
    ``ActivationCache`` holding the edit-site hooks, or ``SiteActivations``. The source's
    batch must equal the run's (or be 1) and its positions must cover the run's."""

    layer: int
    heads: Indices = None
    pairs: PairsArg = None
    target: str = "qk"
    source: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self._normalise_fields()
        if self.source is None:
            raise RopeBehaviorError(
                "FrequencyPatch needs source=: token ids, a Captured, an ActivationCache or SiteActivations"
            )

    def resolved(self, model: Any) -> "FrequencyPatch":
        """A copy whose source is the site activations of this layer (runs a token source)."""
        model = resolve(model)
        spec = model.spec
        self.resolve(spec)
        return replace(self, source=site_activations(self.source, spec, self.layer, model=model))

    def __repr__(self) -> str:
        src = self.source
        if isinstance(src, Tensor):
            src_repr = f"tokens{list(src.shape)}"
        else:
            src_repr = type(src).__name__ if not isinstance(src, SiteActivations) else repr(src)
        return (
            f"FrequencyPatch(layer={self.layer}, heads={self.heads}, pairs={self.pairs}, "
            f"target={self.target!r}, source={src_repr})"
        )


@validates_inputs
@dataclass(frozen=True)
class TwoAngles:
    """Two angles over the pairs: pairs ``0 .. split-1`` (the model's highest
    frequencies) rotate at ``first`` radians per token, the rest at ``second``;
    ``split=None`` cuts in half. ``TwoAngles(first=0.0, second=theta)``: half the pairs
    NoPE, half at ``theta``."""

    first: float
    second: float
    split: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "first", _finite_angle(self.first, "TwoAngles: first"))
        object.__setattr__(self, "second", _finite_angle(self.second, "TwoAngles: second"))
        if self.split is not None:
            split = as_int(self.split, "TwoAngles split", low=0, hint="or None: half the pairs")
            object.__setattr__(self, "split", split)

    def per_pair(self, n_pairs: int) -> Float[Tensor, " pair"]:
        split = n_pairs // 2 if self.split is None else self.split
        if isinstance(split, bool) or not isinstance(split, int) or not 0 <= split <= n_pairs:
            raise RopeBehaviorError(
                f"TwoAngles split={self.split!r}; expected an int in [0, {n_pairs}]"
            )
        out = torch.full((n_pairs,), float(self.second), dtype=torch.float64)
        out[:split] = float(self.first)
        return out


OmegaArg = float | int | Sequence[float] | Tensor | TwoAngles


@keyword_fields
@validates_inputs
@dataclass(frozen=True)
class AngleOverride(_Targeted):
    """Rotate ``pairs`` (default all) of ``heads`` at ``layer`` by ``omega`` radians per
    token instead of the model's angles; other pairs keep the model's rotation.

    ``omega``: one angle for every selected pair (``0.0``: NoPE); a sequence / 1-D tensor
    with one angle per entry of ``pairs``, in the order ``pairs`` lists them
    (``pairs=[2, 1], omega=[0.1, 0.2]``: pair 2 at 0.1, pair 1 at 0.2; with per-pair angles
    a pair may be listed only once), or, when its length differs from ``pairs``'s (or
    ``pairs`` is None), of length ``n_pairs`` indexed by pair; or :class:`TwoAngles`. Angles must be
    finite. The model's own rotation is undone exactly with its own tables of the same
    forward and its magnitude (YaRN's factor) kept, per prompt. The new angle at a token is
    ``omega * position_id``, its position id as the model counts it in that forward (under
    an attention mask the Bridge counts a left-padded prompt's real tokens from 0, as when
    it runs alone).

    ``magnitude`` (default 1, a finite number > 0) multiplies the length of the selected
    pairs on top of the model's own magnitude: on both sides (``target="qk"``) their
    logits scale by ``magnitude**2``, as YaRN's attention factor does (see
    :class:`~rope_behavior.interventions.rope_edits.RopeScaling`).
    """

    layer: int
    heads: Indices = None
    omega: OmegaArg = 0.0
    pairs: PairsArg = None
    target: str = "qk"
    magnitude: float = 1.0
    # True when ``omega`` holds one angle per selected pair (sorted like ``pairs``).
    _per_selected: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        raw_pairs = self.pairs
        self._normalise_fields()
        om = self.omega
        if isinstance(om, Tensor):
            if om.ndim > 1:
                raise RopeBehaviorError(
                    f"omega tensor must be 0-D or 1-D [pair]; got shape {tuple(om.shape)}"
                )
            if om.is_complex() or om.dtype == torch.bool:
                raise RopeBehaviorError(
                    f"omega tensor of dtype {om.dtype}; expected real angles (radians per token)"
                )
            values = om.detach().double().cpu().reshape(-1).tolist()
            om = values[0] if om.ndim == 0 else tuple(values)
        if isinstance(om, Real) and not isinstance(om, bool):
            om = _finite_angle(om, "AngleOverride: omega")
        elif isinstance(om, Sequence) and not isinstance(om, str):
            om = tuple(_finite_angle(v, f"AngleOverride: omega[{i}]") for i, v in enumerate(om))
            om = self._bind_to_pairs(om, raw_pairs)
        elif not isinstance(om, TwoAngles):
            raise RopeBehaviorError(
                f"omega={om!r}; expected a finite float, a per-pair sequence/tensor or TwoAngles"
            )
        object.__setattr__(self, "omega", om)
        magnitude = as_fraction(
            self.magnitude,
            "AngleOverride: magnitude",
            high=math.inf,
            open_low=True,
            open_high=True,
            hint="1.0 keeps the model's magnitude",
        )
        object.__setattr__(self, "magnitude", magnitude)

    def __repr__(self) -> str:
        shown = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if f.repr and not (f.name == "magnitude" and self.magnitude == 1.0)
        ]  # magnitude shown only where it is not the default 1
        return f"AngleOverride({', '.join(shown)})"

    def _bind_to_pairs(self, om: tuple[float, ...], raw_pairs: Any) -> tuple[float, ...]:
        """Reorder per-entry angles like the sorted ``pairs``, refusing conflicting duplicates."""
        if raw_pairs is None:
            return om
        listed = (
            list(raw_pairs.pairs)
            if isinstance(raw_pairs, PairSet)
            else _index_list(raw_pairs, "pairs")
        )
        twice = sorted({p for p in listed if listed.count(p) > 1})
        if twice:  # which of a pair's angles is meant?
            angles = (
                {p: [a for q, a in zip(listed, om) if q == p] for p in twice}
                if len(om) == len(listed)
                else {}
            )
            raise RopeBehaviorError(
                f"AngleOverride: pairs={listed} lists pair(s) {twice} more than once, with "
                f"{len(om)} per-pair angles"
                + (f" ({', '.join(f'pair {p}: {a}' for p, a in angles.items())})" if angles else "")
                + "; expected each pair once, with one angle per pair listed (or omega of "
                "length n_pairs, indexed by pair)"
            )
        if len(om) != len(listed):
            return om  # indexed by pair (length n_pairs), checked in angles()
        object.__setattr__(self, "_per_selected", True)
        return tuple(a for _, a in sorted(zip(listed, om)))

    def angles(self, spec: RopeSpec) -> Float[Tensor, " pair"]:
        """The angle of every pair of this layer after the override, float64 ``[pair]``."""
        reach = self.resolve(spec)
        out = spec.omega[reach.layer].clone().double()
        sel = list(reach.pairs)
        om = self.omega
        if isinstance(om, float):
            out[sel] = om
            return out
        if isinstance(om, TwoAngles):
            new = om.per_pair(spec.n_pairs)
            out[sel] = new[sel]
            return out
        if not isinstance(om, tuple):  # pragma: no cover - normalised in __post_init__
            raise RopeBehaviorError(f"omega={om!r} was not normalised")
        values = torch.tensor(om, dtype=torch.float64)
        if self._per_selected:
            out[sel] = values  # one per selected pair, sorted with the pairs at construction
        elif len(om) == spec.n_pairs:
            out[sel] = values[sel]
        else:
            raise RopeBehaviorError(
                f"{self!r}: omega has {len(om)} angles; expected one per pair "
                f"(n_pairs={spec.n_pairs}) or one per entry of pairs ({len(sel)}); for "
                "two angles over halves use TwoAngles(first, second)"
            )
        return out


@keyword_fields
@dataclass(frozen=True, eq=False)
class BatchedFrequencyPatch:
    """Sweep conditions along the batch: batch slice ``i`` of the run (the run's batch is
    ``len(conditions) * B``) gets ``conditions[i] = (heads, pairs)`` patched from
    ``source`` (``B`` rows). ``heads`` follow ``target`` as in :class:`FrequencyPatch`."""

    layer: int
    target: str
    conditions: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    source: SiteActivations = field(repr=False)

    def __post_init__(self) -> None:
        _check_choice(self.target, _TARGETS, "BatchedFrequencyPatch: target")
        if not self.conditions:
            raise RopeBehaviorError("BatchedFrequencyPatch needs at least one condition")

    def resolve_all(self, spec: RopeSpec) -> tuple[Reach, ...]:
        return tuple(
            resolve_target(spec, self.layer, h, p, self.target, f"condition {i}")
            for i, (h, p) in enumerate(self.conditions)
        )
