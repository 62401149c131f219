"""Named sets of RoPE pairs ("frequency bands"), validated against a model's spec.

Pair 0 is the highest frequency. Bands are plain values (:class:`PairSet`) that the
intervention and sweep code consume.
"""

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rope_behavior.errors import RopeBehaviorError, check_indices, validates_inputs
from rope_behavior.model.spec import RopeSpec

__all__ = ["PairSet", "band", "equal_bands", "pair_set", "wavelength_bands"]

_NAMED = ("high", "mid", "low")
_OPTIONS = "'high', 'mid', 'low', 'band:<i>/<k>', 'pair:<i>'"


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


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@validates_inputs
def equal_bands(spec: RopeSpec, k: int) -> tuple[PairSet, ...]:
    """Split the pairs into ``k`` contiguous bands of (nearly) equal size, highest first."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= spec.n_pairs:
        raise RopeBehaviorError(
            f"k={k!r} equal bands requested; expected an int in [1, n_pairs={spec.n_pairs}]"
        )
    bounds = [round(i * spec.n_pairs / k) for i in range(k + 1)]
    return tuple(PairSet(f"band{i}/{k}", tuple(range(bounds[i], bounds[i + 1]))) for i in range(k))


@validates_inputs
def band(spec: RopeSpec, name: str) -> PairSet:
    """``"high"`` / ``"mid"`` / ``"low"``: the three equal thirds of the pairs, or
    ``"band:<i>/<k>"`` for the i-th of k equal bands, or ``"pair:<i>"``."""
    if not isinstance(name, str):
        raise RopeBehaviorError(
            f"band name {name!r} ({type(name).__name__}) is not a string; options: {_OPTIONS} "
            "(pair indices go through pair_set(spec, pairs), k equal bands through "
            "equal_bands(spec, k))"
        )
    if name in _NAMED:
        thirds = equal_bands(spec, min(3, spec.n_pairs))
        idx = {"high": 0, "mid": len(thirds) // 2, "low": len(thirds) - 1}[name]
        return PairSet(name, thirds[idx].pairs)
    if name.startswith("band:"):
        try:
            i_s, k_s = name[5:].split("/")
            i, k = int(i_s), int(k_s)
        except ValueError:
            raise RopeBehaviorError(f"band name {name!r}: expected 'band:<i>/<k>'") from None
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
    raise RopeBehaviorError(f"unknown band name {name!r}; options: {_OPTIONS}")


@validates_inputs
def wavelength_bands(
    spec: RopeSpec,
    context_length: int,
    *,
    layer: int = 0,
    edges: Sequence[float] = (0.1, 1.0),
) -> tuple[PairSet, ...]:
    """Bands by wavelength relative to ``context_length`` at ``layer``.

    With the default ``edges=(0.1, 1.0)``: ``"high"`` pairs complete 10+ turns over the
    context (wavelength < 0.1·context), ``"mid"`` between one and ten turns, ``"low"`` less
    than one turn (wavelength >= context: such pairs cannot tell far positions apart by
    angle). A pair that does not rotate (``omega = 0``, infinite wavelength) completes no
    turn and joins the last band. Empty bands are left out. Other ``edges`` give bands
    named by their range.

    A layer without rotation (NoPE: every pair has ``omega = 0``) has no bands by
    wavelength: it raises, naming the layers that rotate.
    """
    layer = spec.check_layer(layer)
    if bool((spec.omega[layer] == 0).all()):
        rotary = [i for i in range(spec.n_layers) if not bool((spec.omega[i] == 0).all())]
        raise RopeBehaviorError(
            f"layer {layer} of {spec.architecture} does not rotate (NoPE: all {spec.n_pairs} "
            "pairs have omega = 0, wavelength inf), so it has no wavelength bands; expected "
            f"a rotary layer: pass layer= one of {rotary}, or split by pair index with "
            "equal_bands(spec, k) / band(spec, name)"
        )
    if (
        isinstance(context_length, bool)
        or not isinstance(context_length, int)
        or context_length < 2
    ):
        raise RopeBehaviorError(f"context_length={context_length!r}; expected an int >= 2")
    edges = tuple(float(e) for e in edges)
    if not edges or list(edges) != sorted(edges) or edges[0] <= 0:
        raise RopeBehaviorError(f"edges={edges!r}; expected increasing positive fractions")
    wl = spec.wavelength[layer].abs() / context_length
    bounds = (0.0, *edges, float("inf"))
    names = (
        ("high", "mid", "low")
        if len(edges) == 2
        else tuple(f"wavelength[{lo:g},{hi:g})xctx" for lo, hi in itertools.pairwise(bounds))
    )
    out = []
    wl_list = [float(w) for w in wl]
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        last = hi == float("inf")  # the last band also holds pairs that never turn
        pairs = tuple(p for p, w in enumerate(wl_list) if lo <= w < hi or (last and w == hi))
        if pairs:
            out.append(PairSet(name, pairs))
    return tuple(out)
