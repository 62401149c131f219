"""Named sets of RoPE pairs ("frequency bands"), validated against a model's spec.

Pair 0 is the highest frequency. Bands are plain values (:class:`PairSet`) that the
intervention and sweep code consume.

One naming scheme, and every name the library gives a band is read back by
:func:`band` (``band(spec, b.name).pairs == b.pairs``):

* ``"high"`` / ``"mid"`` / ``"low"``: the three equal thirds of the pairs by index
  (``high`` = the highest frequencies);
* ``"band:<i>/<k>"`` (also written ``"band<i>/<k>"``, as :func:`equal_bands` and the
  sweeps name them): the ``i``-th of ``k`` equal contiguous bands;
* ``"pair:<i>"``: one pair; ``"pairs[<i>, <j>, ...]"``: a set of pairs (how
  :func:`pair_set` names an unnamed set);
* ``"wavelength:<lo>-<hi>@<context>"`` (``":layer<l>"`` appended for a layer other than
  0): the pairs whose wavelength lies in ``[lo, hi)`` times ``context`` tokens
  (:func:`wavelength_bands`; ``hi = inf`` also holds pairs that do not rotate).
"""

import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rope_behavior.errors import (
    RopeBehaviorError,
    as_count,
    as_fraction,
    check_indices,
    validates_inputs,
)
from rope_behavior.model.spec import RopeSpec

__all__ = ["PairSet", "band", "equal_bands", "pair_set", "wavelength_bands"]

_NAMED = ("high", "mid", "low")
_OPTIONS = (
    "'high', 'mid', 'low' (thirds by pair index), 'band:<i>/<k>' (or 'band<i>/<k>'), "
    "'pair:<i>', 'pairs[<i>, <j>, ...]', 'wavelength:<lo>-<hi>@<context>[:layer<l>]'"
)
_NUM = r"(?:\d+(?:\.\d*)?(?:e[+-]?\d+)?|inf)"
_WAVELENGTH = re.compile(rf"wavelength:({_NUM})-({_NUM})@(\d+)(?::layer(\d+))?")
_EQUAL = re.compile(r"band:?(-?\d+)/(-?\d+)")
_PAIRS = re.compile(r"pairs\[([-\d,\s]*)\]")


@dataclass(frozen=True)
class PairSet:
    """A named, non-empty, sorted set of pair indices."""

    name: str
    pairs: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.pairs:
            raise RopeBehaviorError(f"frequency band {self.name!r} is empty: it selects no pair")
        if any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in self.pairs):
            raise RopeBehaviorError(
                f"frequency band {self.name!r} holds {self.pairs!r}; expected non-negative ints"
            )
        if tuple(sorted(set(self.pairs))) != self.pairs:
            object.__setattr__(self, "pairs", tuple(sorted(set(self.pairs))))

    def validate(self, spec: RopeSpec) -> "PairSet":
        """Raise if a pair is out of range for ``spec``; return self."""
        bad = [p for p in self.pairs if p >= spec.n_pairs]
        if bad:
            raise RopeBehaviorError(
                f"frequency band {self.name!r} holds pairs {bad} but {spec.architecture} has "
                f"{spec.n_pairs} pairs (valid: 0..{spec.n_pairs - 1})"
            )
        return self

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.pairs)


@validates_inputs
def pair_set(spec: RopeSpec, pairs: int | Iterable[int], name: str | None = None) -> PairSet:
    """An explicit set of pair indices, validated against ``spec``."""
    spec = _check_spec(spec, "pair_set")
    what = f"{name}: pairs" if name else "pairs"
    if isinstance(pairs, str) or not (
        (isinstance(pairs, int) and not isinstance(pairs, bool)) or isinstance(pairs, Iterable)
    ):
        raise RopeBehaviorError(
            f"{what}={pairs!r} ({type(pairs).__name__}): expected a pair index (int) or an "
            f"iterable of pair indices in [0, {spec.n_pairs - 1}]; named bands come from "
            f"band(spec, name) with name one of {_OPTIONS}"
        )
    try:
        chosen = check_indices(pairs, spec.n_pairs, "pair", f"{spec.n_pairs} pairs")
    except RopeBehaviorError as e:
        raise RopeBehaviorError(f"{what}={_show(pairs)}: {e}") from None
    return PairSet(name or f"pairs{list(chosen)}", chosen)


def _check_spec(spec: object, fn: str) -> RopeSpec:
    """``spec`` if it is a :class:`RopeSpec`, else the error saying how to get one."""
    if not isinstance(spec, RopeSpec):
        raise RopeBehaviorError(
            f"{fn} takes the model's RopeSpec first; got {type(spec).__name__}: "
            f"{fn}(RopeSpec.from_model(model), ...)"
        )
    return spec


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@validates_inputs
def equal_bands(spec: RopeSpec, k: int) -> tuple[PairSet, ...]:
    """Split the pairs into ``k`` contiguous bands of (nearly) equal size, highest first."""
    spec = _check_spec(spec, "equal_bands")
    k = as_count(k, "k (equal bands)", high=spec.n_pairs, hint=f"n_pairs={spec.n_pairs}")
    bounds = [round(i * spec.n_pairs / k) for i in range(k + 1)]
    return tuple(PairSet(f"band{i}/{k}", tuple(range(bounds[i], bounds[i + 1]))) for i in range(k))


@validates_inputs
def band(spec: RopeSpec, name: str) -> PairSet:
    """The band named ``name`` on the model of ``spec`` (see the module docstring for the
    names): ``"high"`` / ``"mid"`` / ``"low"`` (thirds by pair index), ``"band:<i>/<k>"``
    or ``"band<i>/<k>"``, ``"pair:<i>"``, ``"pairs[<i>, ...]"``, or
    ``"wavelength:<lo>-<hi>@<context>[:layer<l>]"``. Every name a :class:`PairSet` of this
    library carries is accepted back: ``band(spec, b.name).pairs == b.pairs``."""
    spec = _check_spec(spec, "band")
    if not isinstance(name, str):
        raise RopeBehaviorError(
            f"band name {name!r} ({type(name).__name__}) is not a string; options: {_OPTIONS} "
            "(pair indices go through pair_set(spec, pairs), k equal bands through "
            "equal_bands(spec, k))"
        )
    name = name.strip()
    if name in _NAMED:
        thirds = equal_bands(spec, min(3, spec.n_pairs))
        idx = {"high": 0, "mid": len(thirds) // 2, "low": len(thirds) - 1}[name]
        return PairSet(name, thirds[idx].pairs)
    if name.startswith("band"):
        hit = _EQUAL.fullmatch(name)
        if hit is None:
            raise RopeBehaviorError(
                f"band name {name!r}: expected 'band:<i>/<k>' or 'band<i>/<k>' (the i-th of k "
                f"equal bands); options: {_OPTIONS}"
            )
        i, k = int(hit[1]), int(hit[2])
        bands = equal_bands(spec, k)
        if not 0 <= i < k:
            raise RopeBehaviorError(f"band name {name!r}: index {i} not in [0, {k - 1}]")
        return PairSet(name, bands[i].pairs)
    if name.startswith("pair:"):
        try:
            p = int(name[5:])
        except ValueError:
            raise RopeBehaviorError(f"band name {name!r}: expected 'pair:<int>'") from None
        return pair_set(spec, [p], name)
    if name.startswith("pairs["):
        hit = _PAIRS.fullmatch(name)
        items = [x.strip() for x in hit[1].split(",")] if hit else []
        if hit is None or not all(x.lstrip("-").isdigit() for x in items):
            raise RopeBehaviorError(f"band name {name!r}: expected 'pairs[<i>, <j>, ...]' (ints)")
        return pair_set(spec, [int(x) for x in items], name)
    if name.startswith("wavelength"):
        return _wavelength_band(spec, name)
    raise RopeBehaviorError(f"unknown band name {name!r}; options: {_OPTIONS}")


def _wavelength_band(spec: RopeSpec, name: str) -> PairSet:
    hit = _WAVELENGTH.fullmatch(name)
    if hit is None:
        raise RopeBehaviorError(
            f"band name {name!r}: expected 'wavelength:<lo>-<hi>@<context>' with an optional "
            "':layer<l>' (the pairs whose wavelength lies in [lo, hi) times context tokens, "
            "e.g. 'wavelength:0.1-1@128')"
        )
    lo, hi, ctx = float(hit[1]), float(hit[2]), int(hit[3])
    layer = int(hit[4]) if hit[4] is not None else 0
    if not 0 <= lo < hi:
        raise RopeBehaviorError(f"band name {name!r}: expected 0 <= lo < hi; got {lo:g}, {hi:g}")
    _check_rotates(spec, spec.check_layer(layer))
    ctx = as_count(ctx, f"band name {name!r}: context", low=2)
    return PairSet(name, _pairs_in(spec, layer, ctx, lo, hi))


def _pairs_in(
    spec: RopeSpec, layer: int, context_length: int, lo: float, hi: float
) -> tuple[int, ...]:
    """Pairs of ``layer`` whose wavelength over ``context_length`` lies in ``[lo, hi)``
    (``hi = inf`` also takes the pairs that do not rotate: infinite wavelength)."""
    wl = [float(w) for w in spec.wavelength[layer].abs() / context_length]
    last = hi == math.inf
    return tuple(p for p, w in enumerate(wl) if lo <= w < hi or (last and w == hi))


def _check_rotates(spec: RopeSpec, layer: int) -> None:
    if bool((spec.omega[layer] == 0).all()):
        rotary = [i for i in range(spec.n_layers) if not bool((spec.omega[i] == 0).all())]
        raise RopeBehaviorError(
            f"layer {layer} of {spec.architecture} does not rotate (NoPE: all {spec.n_pairs} "
            "pairs have omega = 0, wavelength inf), so it has no wavelength bands; expected "
            f"a rotary layer: pass layer= one of {rotary}, or split by pair index with "
            "equal_bands(spec, k) / band(spec, name)"
        )


@validates_inputs
def wavelength_bands(
    spec: RopeSpec,
    context_length: int,
    *,
    layer: int = 0,
    edges: Sequence[float] = (0.1, 1.0),
) -> tuple[PairSet, ...]:
    """Bands by wavelength relative to ``context_length`` at ``layer``, shortest first.

    With the default ``edges=(0.1, 1.0)``: ``"wavelength:0-0.1@<context>"`` pairs complete
    10+ turns over the context (wavelength < 0.1·context), ``"wavelength:0.1-1@<context>"``
    between one and ten turns, ``"wavelength:1-inf@<context>"`` less than one turn
    (wavelength >= context: such pairs cannot tell far positions apart by angle). A pair
    that does not rotate (``omega = 0``, infinite wavelength) completes no turn and joins
    the last band. Empty bands are left out. Layers other than 0 append ``":layer<l>"``.
    The names say what the band holds and :func:`band` reads them back; they are not
    ``"high"`` / ``"mid"`` / ``"low"``, which are thirds by pair index.

    A layer without rotation (NoPE: every pair has ``omega = 0``) has no bands by
    wavelength: it raises, naming the layers that rotate.
    """
    spec = _check_spec(spec, "wavelength_bands")
    layer = spec.check_layer(layer)
    _check_rotates(spec, layer)
    context_length = as_count(context_length, "context_length", low=2)
    if isinstance(edges, str | bytes) or not isinstance(edges, Iterable):
        raise RopeBehaviorError(f"edges={edges!r}; expected increasing positive fractions")
    edges = tuple(
        as_fraction(e, "edges", high=math.inf, open_low=True, open_high=True) for e in edges
    )
    if not edges or any(a >= b for a, b in itertools.pairwise(edges)):
        raise RopeBehaviorError(f"edges={edges!r}; expected increasing positive fractions")
    bounds = (0.0, *edges, math.inf)
    at = f"@{context_length}" + (f":layer{layer}" if layer else "")
    out = []
    for lo, hi in itertools.pairwise(bounds):
        pairs = _pairs_in(spec, layer, context_length, lo, hi)
        if pairs:
            out.append(PairSet(f"wavelength:{lo:g}-{hi:g}{at}", pairs))
    return tuple(out)
