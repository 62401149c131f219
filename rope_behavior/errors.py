"""Exception types and small validation helpers shared by every module.

Errors say what was wrong, what was expected and the options.
"""

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

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
    "validates_inputs",
]

F = TypeVar("F", bound=Callable[..., object])


def validates_inputs(fn: F) -> F:
    """Mark a public entry point that validates its user inputs itself.

    Its annotations document the expected shapes, but runtime type checkers (the test
    suite runs jaxtyping + beartype over the package) skip it, so a user passing a wrong
    value gets the function's own explicit :class:`RopeBehaviorError` (what was wrong,
    what was expected, the options) rather than a generic type-check dump. Everything the
    entry point calls stays checked.
    """
    fn.__no_type_check__ = True  # type: ignore[attr-defined]
    return fn


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
