"""Exception types and small validation helpers shared by every module.

Errors say what was wrong, what was expected and the options.
"""

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

__all__ = [
    "NotRotaryModelError",
    "RopeBehaviorError",
    "UnsupportedArchitectureError",
    "as_generator",
    "as_seed",
    "check_index",
    "check_indices",
    "check_shapes",
    "validates_inputs",
]

F = TypeVar("F", bound=Callable[..., object])


_SHAPE_CHECKS = {"on": False}


def check_shapes(on: bool = True) -> None:
    """Turn the annotation checks of public entry points on or off (the test suite turns
    them on, next to jaxtyping's import hook; off by default: they cost time)."""
    _SHAPE_CHECKS["on"] = bool(on)


def validates_inputs(fn: F) -> F:
    """Mark a public entry point that validates its user inputs itself.

    A user passing a wrong value gets the function's own :class:`RopeBehaviorError` (what
    was wrong, what was expected, the options), not a type checker's dump: jaxtyping's
    import hook skips the function. Its annotations are still checked: with
    :func:`check_shapes` on (the test suite), every call that returns is followed by a
    check of its arguments and its result against the annotations, dimensions consistent
    across them (jaxtyping + beartype), and a mismatch raises ``TypeError`` — the function
    accepted or returned something its signature does not state. A dataclass is marked
    only (its ``__post_init__`` validates).
    """
    fn.__no_type_check__ = True  # type: ignore[attr-defined]
    if isinstance(fn, type):
        return fn

    @functools.wraps(fn)
    def door(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        if _SHAPE_CHECKS["on"]:
            _check_annotations(fn, args, kwargs, out)
        return out

    door.__no_type_check__ = True  # type: ignore[attr-defined]
    return door  # type: ignore[return-value]


def _check_annotations(fn: Callable[..., Any], args: Any, kwargs: Any, out: Any) -> None:
    import inspect
    import typing

    from beartype.door import is_bearable
    from jaxtyping import jaxtyped

    hints = typing.get_type_hints(fn, include_extras=True)
    sig = inspect.signature(fn)
    bound = sig.bind(*args, **kwargs)
    values = [
        (name, value)
        for name, value in bound.arguments.items()
        if sig.parameters[name].kind
        not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    with jaxtyped("context"):  # type: ignore[arg-type]
        for name, value in [*values, ("return", out)]:
            hint = hints.get(name)
            if hint is not None and hint is not Any and not is_bearable(value, hint):
                what = "returned" if name == "return" else f"accepted {name}="
                raise TypeError(
                    f"{fn.__qualname__} {what}{_brief(value)}, which its annotation {hint} "
                    "does not cover (dimensions are shared across the arguments and result)"
                )


def _brief(value: Any) -> str:
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None:
        return f"<{type(value).__name__} {dtype} {tuple(shape)}>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class RopeBehaviorError(ValueError):
    """Base class for rope_behavior's input errors (a ``ValueError``)."""


class NotRotaryModelError(RopeBehaviorError):
    """The model does not use rotary position embeddings (GPT-2, ALiBi, NoPE, ...)."""


class UnsupportedArchitectureError(RopeBehaviorError):
    """A rotary model whose attention cannot be decomposed exactly (the message says why)."""


@validates_inputs
def check_index(value: object, size: int, what: str, hint: str = "") -> int:
    """Validate one index in ``range(size)`` (negative indices are refused: they hide bugs)."""
    import torch

    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, int):
        raise RopeBehaviorError(
            f"{what} must be an int in [0, {size - 1}]; got {value!r} of type {type(value).__name__}"
        )
    if not 0 <= value < size:
        extra = f" ({hint})" if hint else ""
        raise RopeBehaviorError(
            f"{what} {value} is out of range: expected 0 <= {what} <= {size - 1}{extra}"
        )
    return value


@validates_inputs
def check_indices(
    values: int | Iterable[int] | None, size: int, what: str, hint: str = ""
) -> tuple[int, ...]:
    """Validate a collection of indices; ``None`` means all of ``range(size)``.

    Returns a sorted tuple without duplicates. An empty collection is an error.
    """
    if values is None:
        return tuple(range(size))
    seq: Sequence[object] = [values] if isinstance(values, int) else list(values)
    if len(seq) == 0:
        raise RopeBehaviorError(f"{what} is empty: expected at least one index in [0, {size - 1}]")
    return tuple(sorted({check_index(v, size, what, hint) for v in seq}))


def as_generator(seed: object, what: str = "seed") -> "torch.Generator":
    """The one way randomness enters: ``seed`` is an int (a fresh CPU generator seeded
    with it) or a ``torch.Generator`` (used as it is, so draws continue its stream)."""
    import torch

    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise RopeBehaviorError(
            f"{what}={seed!r}; expected a non-negative int or a torch.Generator"
        )
    return torch.Generator().manual_seed(seed)


def as_seed(seed: object, what: str = "seed") -> int:
    """An int seed from ``seed`` (an int, or one draw from a ``torch.Generator``): for
    code that needs several independent streams (swaps, bootstrap) from one argument."""
    import torch

    if isinstance(seed, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=seed))
    return int(as_generator(seed, what).initial_seed())
