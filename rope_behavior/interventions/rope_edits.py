"""RoPE edits as values: change how a model rotates its queries and keys, per layer or for
the whole model, in evaluation and in training.

* :class:`PRoPE` — the lowest fraction ``p`` of pairs (lowest ``omega``, longest
  wavelength) unrotated: NoPE there;
* :class:`NoPEBelow` — pair ``pair`` and every pair rotating no faster than it unrotated;
* :class:`RopeScaling` — context-extension scaling (``"linear"``, static NTK-aware
  ``"ntk"``, ``"yarn"``) applied at inference to a model trained without it.

Each is an angle override per layer (:meth:`RopeEdit.overrides`): the new angle of every
pair, read off the model's own ``spec.omega`` (never recomputed from a base), plus a
magnitude for YaRN's attention factor. They compile through
:func:`~rope_behavior.interventions.compile.compile_hooks` to the same hooks as
:class:`~rope_behavior.interventions.values.AngleOverride` (the model's rotation undone with
its own tables and redone at the new angle), so they work on every host ``AngleOverride``
works on and gradients flow through them. Queries and keys are edited together (a
relative position needs both at the same angle); ``heads`` are query heads, and under
grouped-query attention they must form whole KV groups. :meth:`RopeEdit.resolve` states,
per layer edited, the pairs whose angle or magnitude changes and the heads reached.
Layers that do not rotate (every ``omega`` 0) are left alone.
"""

import math
from abc import ABC, abstractmethod
from dataclasses import KW_ONLY, dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from rope_behavior.errors import (
    RopeBehaviorError,
    as_flag,
    as_fraction,
    as_int,
    check_indices,
    validates_inputs,
)
from rope_behavior.interventions.reach import Indices, Reach, _check_choice, _normalise
from rope_behavior.interventions.values import AngleOverride
from rope_behavior.model.spec import RopeSpec

__all__ = ["NoPEBelow", "PRoPE", "RopeEdit", "RopeScaling", "ScalingKind"]

ScalingKind = Literal["linear", "ntk", "yarn"]
_KINDS = ("linear", "ntk", "yarn")


def _positive(value: object, what: str) -> float:
    """A finite number > 0."""
    return as_fraction(value, what, high=math.inf, open_low=True, open_high=True)


def _reach_repr(layers: Any, heads: Any) -> str:
    """``", layers=[..], heads=[..]"`` for the ones given (``None``, all, is not shown)."""
    given = {"layers": layers, "heads": heads}
    return "".join(f", {k}={list(v)}" for k, v in given.items() if v is not None)


class RopeEdit(ABC):
    """A change to the model's rotation on ``layers`` (``None``: all) and query ``heads``
    (``None``: all): a new angle per pair and a magnitude, per layer."""

    layers: Any
    heads: Any

    def _normalise_reach(self) -> None:
        object.__setattr__(self, "layers", _normalise(self.layers, "layers"))
        object.__setattr__(self, "heads", _normalise(self.heads, "heads"))

    @abstractmethod
    def layer_angles(self, spec: RopeSpec, layer: int) -> tuple[Float[Tensor, " pair"], float]:
        """The angle of every pair of ``layer`` after the edit (float64 ``[pair]``, radians
        per token) and the magnitude factor of the edited pairs."""

    def edited_layers(self, spec: RopeSpec) -> tuple[int, ...]:
        """The layers this edits on the model of ``spec`` (rotating layers among ``layers``)."""
        try:
            chosen = check_indices(
                self.layers,
                spec.n_layers,
                "layer",
                f"{spec.architecture} has {spec.n_layers} layers",
            )
        except RopeBehaviorError as e:
            raise RopeBehaviorError(f"{self!r}: {e}") from None
        omega = spec.omega
        return tuple(layer for layer in chosen if bool((omega[layer] != 0).any()))

    def overrides(self, spec: RopeSpec) -> tuple[AngleOverride, ...]:
        """The angle overrides this edit is, one per layer where it changes something: the
        pairs whose angle changes (every pair where the magnitude changes), at their new
        angles, on queries and keys (``target="qk"``)."""
        out = []
        for layer in self.edited_layers(spec):
            new, magnitude = self.layer_angles(spec, layer)
            changed = new != spec.omega[layer] if magnitude == 1.0 else torch.ones_like(new).bool()
            pairs = tuple(int(p) for p in changed.nonzero().flatten())
            if not pairs:
                continue
            value = AngleOverride(
                layer=layer,
                heads=self.heads,
                omega=tuple(float(new[p]) for p in pairs),
                pairs=pairs,
                target="qk",
                magnitude=magnitude,
            )
            try:
                value.resolve(spec)
            except RopeBehaviorError as e:
                raise RopeBehaviorError(f"{self!r} edits queries and keys together: {e}") from None
            out.append(value)
        return tuple(out)

    def resolve(self, spec: RopeSpec) -> tuple[Reach, ...]:
        """What this edits on the model of ``spec``: one :class:`Reach` per layer changed
        (its pairs, query heads, KV heads, and the query heads reached); ``()`` when it
        changes nothing (``PRoPE(0)``)."""
        return tuple(value.resolve(spec) for value in self.overrides(spec))

    def query_heads_reached(self, spec: RopeSpec) -> tuple[int, ...]:
        """The query heads whose attention scores this edit can change, on any layer."""
        return tuple(sorted({h for r in self.resolve(spec) for h in r.query_heads_reached}))


class _NoPEPairs(RopeEdit):
    """A RoPE edit that only stops some pairs rotating (``nope_pairs``), at their length."""

    @abstractmethod
    def nope_pairs(self, spec: RopeSpec, layer: int) -> tuple[int, ...]:
        """The pairs of ``layer`` made NoPE, sorted."""

    def layer_angles(self, spec: RopeSpec, layer: int) -> tuple[Float[Tensor, " pair"], float]:
        new = spec.omega[layer]
        new[list(self.nope_pairs(spec, layer))] = 0.0
        return new, 1.0


@validates_inputs
@dataclass(frozen=True, repr=False)
class PRoPE(_NoPEPairs):
    """p-RoPE: the lowest fraction ``p`` of each edited layer's pairs made NoPE (angle 0).

    "Lowest" is by the layer's own ``omega`` (the longest wavelengths; ties by pair index).
    The count is ``ceil(p * n_pairs)`` (at least the fraction ``p`` unrotated; computed with
    a 1e-9 tolerance so ``0.7 * 10`` counts 7), which is what transformers' proportional
    RoPE leaves unrotated when it rotates ``floor((1 - p) * n_pairs)`` pairs.
    ``PRoPE(0)`` changes nothing; ``PRoPE(1)`` is NoPE on every pair. Here ``p`` is the
    fraction *removed*; Barbero et al. (arXiv 2410.06205) write p-RoPE with ``p`` the fraction
    *kept* (their p is ``1 - p`` here).
    """

    p: float
    _: KW_ONLY
    layers: Indices = None
    heads: Indices = None

    def __post_init__(self) -> None:
        p = as_fraction(self.p, "PRoPE: p", hint="the fraction of pairs made NoPE")
        object.__setattr__(self, "p", p)
        self._normalise_reach()

    def n_nope(self, n_pairs: int) -> int:
        """Pairs made NoPE out of ``n_pairs``: ``ceil(p * n_pairs)``."""
        return min(n_pairs, math.ceil(self.p * n_pairs - 1e-9))

    def nope_pairs(self, spec: RopeSpec, layer: int) -> tuple[int, ...]:
        """The pairs of ``layer`` made NoPE: the ``n_nope`` of lowest ``omega``, sorted."""
        order = torch.sort(spec.omega[spec.check_layer(layer)], stable=True).indices
        return tuple(sorted(int(i) for i in order[: self.n_nope(spec.n_pairs)]))

    def __repr__(self) -> str:
        return (
            f"PRoPE(p={self.p:g}: ceil(p*n_pairs) lowest-omega pairs NoPE"
            f"{_reach_repr(self.layers, self.heads)})"
        )


@validates_inputs
@dataclass(frozen=True, repr=False)
class NoPEBelow(_NoPEPairs):
    """NoPE from pair ``pair`` down: pair ``pair`` and every pair of the layer rotating no
    faster (``omega <= omega[pair]``; pair 0 is the highest frequency, so on a monotone
    spectrum these are pairs ``pair .. n_pairs - 1``). ``NoPEBelow(0)`` is NoPE on every
    pair."""

    pair: int
    _: KW_ONLY
    layers: Indices = None
    heads: Indices = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pair", as_int(self.pair, "NoPEBelow: pair", low=0))
        self._normalise_reach()

    def nope_pairs(self, spec: RopeSpec, layer: int) -> tuple[int, ...]:
        """The pairs of ``layer`` made NoPE, sorted."""
        try:
            pair = spec.check_pair(self.pair)
        except RopeBehaviorError as e:
            raise RopeBehaviorError(f"{self!r}: {e}") from None
        omega = spec.omega[spec.check_layer(layer)]
        return tuple(int(i) for i in (omega <= omega[pair]).nonzero().flatten())

    def __repr__(self) -> str:
        return (
            f"NoPEBelow(pair={self.pair}: it and slower pairs NoPE"
            f"{_reach_repr(self.layers, self.heads)})"
        )


@validates_inputs
@dataclass(frozen=True, repr=False)
class RopeScaling(RopeEdit):
    """Context-extension scaling of the model's own rotation, applied at inference (or in
    training) to a model trained without it, as transformers' ``rope_parameters`` would
    build it (for a model with the default spectrum ``omega_i = base**(-2i/rotary_dim)``):

    * ``"linear"``: every ``omega`` divided by ``factor`` (transformers ``"linear"``).
    * ``"ntk"``: static NTK-aware scaling, the base raised to ``base * factor**(d/(d-2))``
      (``d = rotary_dim``): ``omega_i * factor**(-i / (n_pairs - 1))``, pair 0 kept, the
      slowest divided by ``factor``. transformers has no static NTK: its ``"dynamic"`` is
      this formula with ``factor' = factor * n / max_position_embeddings - (factor - 1)``
      for a forward of ``n > max_position_embeddings`` positions, and no change below.
    * ``"yarn"``: transformers ``"yarn"``: pairs making more than ``beta_fast`` turns over
      ``original_context`` tokens keep their angle, those making fewer than ``beta_slow``
      are divided by ``factor``, a linear ramp over the pair index between (the correction
      range, floored / ceiled when ``truncate``), and every pair's length multiplied by
      ``attention_factor`` (default ``0.1 ln(factor) + 1``, 1 for ``factor <= 1``), on
      queries and keys: the rotary part of the logits scales by its square. The range is
      read from the model's spectrum, which must be geometric (refused otherwise);
      DeepSeek's ``mscale`` / ``mscale_all_dim`` are not modelled (pass
      ``attention_factor``; ``mscale_all_dim`` also scales non-rotary dims, not done here).

    ``"linear"`` and ``"ntk"`` act on any spectrum (a model already scaled is scaled again).
    """

    kind: str
    factor: float
    _: KW_ONLY
    layers: Indices = None
    heads: Indices = None
    original_context: int | None = None
    attention_factor: float | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True

    def __post_init__(self) -> None:
        _check_choice(self.kind, _KINDS, "RopeScaling: kind")
        object.__setattr__(self, "factor", _positive(self.factor, "RopeScaling: factor"))
        self._normalise_reach()
        yarn_only = dict(
            original_context=None,
            attention_factor=None,
            beta_fast=32.0,
            beta_slow=1.0,
            truncate=True,
        )
        if self.kind != "yarn":
            set_ = [k for k, v in yarn_only.items() if getattr(self, k) != v]
            if set_:
                raise RopeBehaviorError(
                    f"RopeScaling(kind={self.kind!r}): {', '.join(set_)} belong to kind='yarn' "
                    f"only; expected them unset with kind={self.kind!r} (options: {list(_KINDS)})"
                )
            return
        if self.original_context is None:
            raise RopeBehaviorError(
                "RopeScaling(kind='yarn') needs original_context=: the context length the model "
                "was trained at (transformers' original_max_position_embeddings)"
            )
        n = as_int(self.original_context, "RopeScaling: original_context", low=1)
        object.__setattr__(self, "original_context", n)
        if self.attention_factor is not None:
            a = _positive(self.attention_factor, "RopeScaling: attention_factor")
            object.__setattr__(self, "attention_factor", a)
        for name in ("beta_fast", "beta_slow"):
            object.__setattr__(self, name, _positive(getattr(self, name), f"RopeScaling: {name}"))
        as_flag(self.truncate, "RopeScaling: truncate")

    @property
    def magnitude(self) -> float:
        """The length factor of every edited pair (YaRN's attention factor; else 1)."""
        if self.kind != "yarn":
            return 1.0
        if self.attention_factor is not None:
            return self.attention_factor
        return 1.0 if self.factor <= 1 else 0.1 * math.log(self.factor) + 1.0

    def layer_angles(self, spec: RopeSpec, layer: int) -> tuple[Float[Tensor, " pair"], float]:
        omega = spec.omega[layer]
        n = spec.n_pairs
        if self.kind == "linear":
            return omega / self.factor, 1.0
        if n < 2:
            raise RopeBehaviorError(
                f"{self!r}: the model rotates {n} pair; kind={self.kind!r} needs at least 2 "
                "(use kind='linear')"
            )
        index = torch.arange(n, dtype=torch.float64)
        if self.kind == "ntk":
            return omega * self.factor ** (-index / (n - 1)), 1.0
        ramp = self._yarn_ramp(spec, layer, omega)
        return omega * (ramp / self.factor + (1 - ramp)), self.magnitude

    def _yarn_ramp(
        self, spec: RopeSpec, layer: int, omega: Float[Tensor, " pair"]
    ) -> Float[Tensor, " pair"]:
        """0 where a pair keeps its angle, 1 where it is divided by ``factor``."""
        n = omega.shape[0]
        ratio = float(omega[-1] / omega[0]) ** (1 / (n - 1)) if float(omega[0]) > 0 else 0.0
        geometric = omega[0] * ratio ** torch.arange(n, dtype=torch.float64)
        if not 0 < ratio < 1 or float(((omega - geometric) / geometric).abs().max()) > 1e-3:
            raise RopeBehaviorError(
                f"{self!r}: layer {layer}'s frequencies are not geometric (omega_i = "
                f"base**(-2i/rotary_dim)), so YaRN's correction range is undefined there "
                "(a model already scaled, e.g. Llama-3?); use kind='linear' or 'ntk'"
            )
        context = self.original_context
        if context is None:  # pragma: no cover - refused in __post_init__
            raise RopeBehaviorError(f"{self!r} needs original_context")

        def correction_pair(turns: float) -> float:  # the pair making `turns` turns
            length = context * float(omega[0]) / (2 * math.pi * turns)
            return math.log(length) / -math.log(ratio)

        low, high = correction_pair(self.beta_fast), correction_pair(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, spec.rotary_dim - 1)  # transformers' bounds
        if low == high:
            high += 0.001
        return ((torch.arange(n, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)

    def __repr__(self) -> str:
        extra = ""
        if self.kind == "yarn":
            extra = (
                f", original_context={self.original_context}, "
                f"attention_factor={self.magnitude:.4g}"
                + (f", beta_fast={self.beta_fast:g}" if self.beta_fast != 32 else "")
                + (f", beta_slow={self.beta_slow:g}" if self.beta_slow != 1 else "")
                + ("" if self.truncate else ", truncate=False")
            )
        return (
            f"RopeScaling({self.kind!r}, factor={self.factor:g}{extra}"
            f"{_reach_repr(self.layers, self.heads)})"
        )
