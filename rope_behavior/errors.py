"""Exception types and small validation helpers shared by every module.

Errors say what was wrong, what was expected and the options.
"""

import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

__all__ = [
    "NotAModelError",
    "NotRotaryModelError",
    "RopeBehaviorError",
    "UnsupportedArchitectureError",
    "as_count",
    "as_flag",
    "as_folder",
    "as_fraction",
    "as_generator",
    "as_int",
    "as_seed",
    "check_index",
    "check_indices",
    "check_shapes",
    "integer_or_none",
    "validates_inputs",
    "warn_user",
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


class NotAModelError(RopeBehaviorError, TypeError):
    """Something given as the model is not one rope_behavior can run: a hub name or path
    (a string), a plain Hugging Face model, or another object. The message says how to load
    or wrap it. Also a ``TypeError``, as the call got the wrong kind of object."""


# -- the one validation layer: numbers that enter public calls ---------------------------
# Every count, size, seed, fraction and flag a public function takes goes through one of
# these at the door, so bad values are refused the same way everywhere: the value, what
# was expected, and a hint with the options.

SEED_LIMIT = 2**63
"""Seeds are ints in ``[0, SEED_LIMIT)`` (what every generator the library seeds accepts)."""


def integer_or_none(value: object) -> int | None:
    """``value`` as an int when it is an integer (an int, a numpy integer, a one-element
    integer tensor), else ``None``; ``bool`` is not an integer here."""
    import numbers

    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if type(value).__module__.startswith("torch") and hasattr(value, "numel"):
        v: Any = value
        integral = not (v.is_floating_point() or v.is_complex() or str(v.dtype) == "torch.bool")
        if v.numel() == 1 and integral:
            return int(v.item())
    return None


def _suffix(hint: str) -> str:
    return f" ({hint})" if hint else ""


def as_int(
    value: object, what: str, *, low: int | None = None, high: int | None = None, hint: str = ""
) -> int:
    """``value`` as an int in ``[low, high]`` (either bound optional); ``bool``, floats
    (even ``2.0``), strings and ``None`` are refused, naming ``what``, the value, the range
    expected and ``hint`` (the options)."""
    got = integer_or_none(value)
    if low is not None and high is not None:
        expected = f"an int in [{low}, {high}]"
    elif low is not None:
        expected = f"an int >= {low}"
    elif high is not None:
        expected = f"an int <= {high}"
    else:
        expected = "an int"
    if got is None:
        kind = type(value).__name__
        raise RopeBehaviorError(f"{what}={value!r} ({kind}); expected {expected}{_suffix(hint)}")
    if (low is not None and got < low) or (high is not None and got > high):
        raise RopeBehaviorError(f"{what}={value!r}; expected {expected}{_suffix(hint)}")
    return got


def as_count(
    value: object, what: str, *, low: int = 1, high: int | None = None, hint: str = ""
) -> int:
    """A count or size: an int ``>= low`` (1 by default), at most ``high`` when given."""
    return as_int(value, what, low=low, high=high, hint=hint)


def as_fraction(
    value: object,
    what: str,
    *,
    low: float = 0.0,
    high: float = 1.0,
    open_low: bool = False,
    open_high: bool = False,
    hint: str = "",
) -> float:
    """A real number in ``[low, high]`` (``open_low`` / ``open_high`` exclude the ends);
    NaN, inf, ``bool`` and non-numbers are refused."""
    import math
    import numbers

    lb, rb = "(" if open_low else "[", ")" if open_high else "]"
    expected = f"a number in {lb}{low:g}, {high:g}{rb}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = type(value).__name__
        raise RopeBehaviorError(f"{what}={value!r} ({kind}); expected {expected}{_suffix(hint)}")
    x = float(value)
    ok = (
        math.isfinite(x)
        and (x > low if open_low else x >= low)
        and (x < high if open_high else x <= high)
    )
    if not ok:
        raise RopeBehaviorError(f"{what}={value!r}; expected {expected}{_suffix(hint)}")
    return x


def as_folder(value: object, what: str) -> "str | None":
    """A folder given as a str or ``os.PathLike`` (returned as a str), or ``None``."""
    import os

    if value is None:
        return None
    if isinstance(value, str | os.PathLike) and os.fspath(value):
        return os.fspath(value)  # type: ignore[return-value]
    raise RopeBehaviorError(
        f"{what}={value!r} ({type(value).__name__}); expected a folder path (a str or "
        "pathlib.Path) or None"
    )


def as_flag(value: object, what: str) -> bool:
    """A ``bool`` (``True`` / ``False`` only: ``"no"``, ``0`` or ``None`` are refused, as
    ``bool("no")`` would silently be ``True``)."""
    if not isinstance(value, bool):
        raise RopeBehaviorError(
            f"{what}={value!r} ({type(value).__name__}); expected True or False"
        )
    return value


@validates_inputs
def check_index(value: object, size: int, what: str, hint: str = "") -> int:
    """Validate one index in ``range(size)`` (negative indices are refused: they hide bugs)."""
    got = integer_or_none(value)
    if got is None:
        raise RopeBehaviorError(
            f"{what} must be an int in [0, {size - 1}]; got {value!r} of type {type(value).__name__}"
        )
    if not 0 <= got < size:
        extra = f" ({hint})" if hint else ""
        raise RopeBehaviorError(
            f"{what} {got} is out of range: expected 0 <= {what} <= {size - 1}{extra}"
        )
    return got


@validates_inputs
def check_indices(
    values: int | Iterable[int] | None, size: int, what: str, hint: str = ""
) -> tuple[int, ...]:
    """Validate a collection of indices; ``None`` means all of ``range(size)``.

    Returns a sorted tuple without duplicates. An empty collection is an error, and so is
    anything that is neither an index nor a collection of them (a float, a string).
    """
    if values is None:
        return tuple(range(size))
    single = integer_or_none(values)
    if single is not None:
        return (check_index(single, size, what, hint),)
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        extra = f"; {hint}" if hint else ""
        raise RopeBehaviorError(
            f"{what}={values!r} ({type(values).__name__}); expected an int in [0, {size - 1}], "
            f"a collection of such ints, or None for all{extra}"
        )
    seq: Sequence[object] = list(values)
    if len(seq) == 0:
        raise RopeBehaviorError(f"{what} is empty: expected at least one index in [0, {size - 1}]")
    return tuple(sorted({check_index(v, size, what, hint) for v in seq}))


def as_generator(seed: object, what: str = "seed") -> "torch.Generator":
    """The one way randomness enters: ``seed`` is an int (a fresh CPU generator seeded
    with it) or a ``torch.Generator`` (used as it is, so draws continue its stream)."""
    import torch

    if isinstance(seed, torch.Generator):
        return seed
    value = integer_or_none(seed)
    if value is None or not 0 <= value < SEED_LIMIT:
        raise RopeBehaviorError(
            f"{what}={seed!r}; expected a non-negative int below 2**63 or a torch.Generator"
        )
    return torch.Generator().manual_seed(value)


def as_seed(seed: object, what: str = "seed") -> int:
    """An int seed from ``seed`` (an int, or one draw from a ``torch.Generator``): for
    code that needs several independent streams (swaps, bootstrap) from one argument."""
    import torch

    if isinstance(seed, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=seed))
    return int(as_generator(seed, what).initial_seed())


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_WRAPPERS = (f"{os.sep}jaxtyping{os.sep}", f"{os.sep}beartype{os.sep}", f"{os.sep}functools.py")


def warn_user(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` at the user's line: the first frame outside rope_behavior and the
    checkers wrapping its entry points (jaxtyping, beartype), however deep the call."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE)
        or any(w in frame.f_code.co_filename for w in _WRAPPERS)
    ):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    warnings.warn(message, category, stacklevel=level)
