"""What an intervention reaches: its field values checked (indices, angles, choices) and
resolved on a model's spec to a :class:`Reach` (the layer, query heads, KV heads and pairs
edited, and the query heads whose attention can change)."""

import math
from collections.abc import Iterable
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Literal

import torch
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, check_indices
from rope_behavior.model.spec import RopeSpec
from rope_behavior.rope.bands import PairSet

__all__ = ["AblationMode", "Indices", "PairsArg", "Reach", "Target", "resolve_target"]

Target = Literal["q", "k", "qk"]
AblationMode = Literal["zero", "mean", "resample"]
Indices = int | Iterable[int] | Tensor | None
PairsArg = int | Iterable[int] | Tensor | PairSet | None
_TARGETS = ("q", "k", "qk")
_MODES = ("zero", "mean", "resample")


def _index_list(value: Any, what: str) -> list[int]:
    """The indices of ``value`` in the order given (an int, an iterable or an int tensor)."""
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise RopeBehaviorError(
                f"{what} must hold integer indices; got a {value.dtype} tensor (expected an "
                "int, an iterable of ints, an integer tensor or None for all)"
            )
        value = value.reshape(-1).tolist()
    if isinstance(value, Integral) and not isinstance(value, bool):
        items: list[Any] = [value]
    elif isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise RopeBehaviorError(
            f"{what}={value!r} ({type(value).__name__}); expected an int index, an iterable "
            "of int indices, an integer tensor or None (all)"
        )
    else:
        items = list(value)
    if not items:
        raise RopeBehaviorError(f"{what} is empty: select at least one index (None means all)")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, Integral) or v < 0:
            raise RopeBehaviorError(
                f"{what} holds {v!r} ({type(v).__name__}); expected non-negative int indices"
            )
    return [int(v) for v in items]


def _normalise(value: Any, what: str) -> Any:
    """ints / iterables / int tensors -> sorted tuple; ``None`` and PairSet kept."""
    if value is None or isinstance(value, PairSet):
        return value
    return tuple(sorted(set(_index_list(value, what))))


def _finite_angle(value: Any, what: str) -> float:
    """A finite angle in radians per token (NaN / inf / bool / non-numbers refused)."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise RopeBehaviorError(
            f"{what}={value!r}: expected a finite real angle in radians per token (e.g. 0.0 "
            "for NoPE, or one of the model's spec.omega[layer])"
        )
    return float(value)


def _check_choice(value: object, options: tuple[str, ...], what: str) -> None:
    if value not in options:
        raise RopeBehaviorError(f"{what}={value!r} is not one of {list(options)}")


@dataclass(frozen=True)
class Reach:
    """A resolved intervention: query heads whose queries are edited, KV heads whose keys
    are edited, the pairs, and every query head whose attention scores can change."""

    layer: int
    q_heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    pairs: tuple[int, ...]
    query_heads_reached: tuple[int, ...]


def _resolve_pairs(spec: RopeSpec, pairs: Any) -> tuple[int, ...]:
    if isinstance(pairs, PairSet):
        return pairs.validate(spec).pairs
    return check_indices(
        pairs, spec.n_pairs, "pair", f"rotary_dim={spec.rotary_dim} gives {spec.n_pairs} pairs"
    )


def _kv_heads(spec: RopeSpec, heads: Any) -> tuple[int, ...]:
    chosen = tuple(range(spec.n_kv_heads)) if heads is None else heads
    bad = [h for h in chosen if h >= spec.n_kv_heads]
    if bad:
        hint = ""
        if all(h < spec.n_heads for h in bad):
            hint = (
                f"; if you meant query heads {bad}, their keys live in KV heads "
                f"{[spec.kv_map[h] for h in bad]} (pass those), or use target='q' for queries"
            )
        raise RopeBehaviorError(
            f"heads={list(chosen)} with target='k' name KV heads, and {spec.architecture} has "
            f"{spec.n_kv_heads} KV heads (valid: 0..{spec.n_kv_heads - 1}); KV head {bad[0]} "
            f"does not exist. Query heads 0..{spec.n_heads - 1} read KV heads "
            f"{list(spec.kv_map)}{hint}"
        )
    return tuple(chosen)


def resolve_target(
    spec: RopeSpec, layer: int, heads: Any, pairs: Any, target: str, owner: str = "intervention"
) -> Reach:
    """Validate (layer, heads, pairs, target) against ``spec``; see the module docstring."""
    _check_choice(target, _TARGETS, f"{owner}: target")
    try:
        layer = spec.check_layer(layer)
        chosen_pairs = _resolve_pairs(spec, pairs)
        if target == "k":
            kv = _kv_heads(spec, heads)
            reached = tuple(h for kvh in kv for h in spec.query_heads_of(kvh))
            return Reach(layer, (), kv, chosen_pairs, reached)
        q = check_indices(heads, spec.n_heads, "head", f"{spec.n_heads} query heads")
    except RopeBehaviorError as e:
        raise RopeBehaviorError(f"{owner}: {e}") from None
    if target == "q":
        return Reach(layer, q, (), chosen_pairs, q)
    kv = tuple(sorted({spec.kv_map[h] for h in q}))
    group = tuple(h for kvh in kv for h in spec.query_heads_of(kvh))
    missing = sorted(set(group) - set(q))
    if missing:
        groups = [spec.query_heads_of(g) for g in range(spec.n_kv_heads)]
        raise RopeBehaviorError(
            f"{owner}: target='qk' with heads={list(q)} under grouped-query attention "
            f"({spec.n_heads} query heads share {spec.n_kv_heads} KV heads in groups {groups}): "
            f"editing the keys of KV heads {list(kv)} also changes query heads {missing}, "
            f"which are not in heads. Pass whole groups (heads={list(group)}), or edit "
            f"separately: target='q' with query heads {list(q)} and target='k' with KV heads {list(kv)}"
        )
    return Reach(layer, q, kv, chosen_pairs, q)
