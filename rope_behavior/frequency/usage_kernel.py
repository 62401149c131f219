"""The opt-in compiled kernel of frequency usage (``compiled=True``).

The eager path (:mod:`~rope_behavior.frequency.usage_terms`) forms each chunk's ``|c|``
``[b, kv, group, rows, keys, pair]`` in memory and reads it back: on a small model that
traffic, not the arithmetic, is the cost (the shipped LM: about 4.6 ms per layer of 8
prompts x 128 tokens, for 0.5 ms of arithmetic). ``torch.compile`` fuses the product, the
``abs``, the mask and the sum into one loop that never stores ``|c|``, so a chunk may hold
``pair`` times more entries and the usage of the shipped LM costs about a tenth as much
(``bench/analyze.py --compiled`` prints both, side by side).

The same terms are summed in another order: results equal the eager path to float32
rounding (tested). The first call compiles (seconds, needs a C++ compiler on the CPU, or
Triton on a GPU); later calls and later processes reuse the compiled code (PyTorch's
compile cache). A machine where compilation fails gets a :class:`RopeBehaviorError` saying
so, with ``compiled=False`` as the way on.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError

__all__ = ["masked_abs_sum_compiled"]

_KERNEL: list[Callable[..., Tensor]] = []  # built on first use, once per process


def _masked_abs_sum(q0: Tensor, q1: Tensor, k0: Tensor, k1: Tensor, m_: Tensor) -> Tensor:
    # the same contraction as usage_terms._masked_abs_sum, written for the fuser: one
    # elementwise expression reduced over (rows, keys), nothing of size `pair x keys` stored
    c = q0[:, :, :, :, None, :] * k0[:, :, None, None, :, :]
    c = c + q1[:, :, :, :, None, :] * k1[:, :, None, None, :, :]
    return (c.abs() * m_[..., None]).sum((-3, -2))


def masked_abs_sum_compiled(q0: Tensor, q1: Tensor, k0: Tensor, k1: Tensor, m_: Tensor) -> Tensor:
    """``sum_ij m_[..., i, j] |c_ij^p|`` by one compiled kernel (shapes as
    ``usage_terms._masked_abs_sum``): ``q*`` ``[b, kv, group, rows, pair]``, ``k*``
    ``[b, kv, keys, pair]``, ``m_`` ``[b, 1 or kv, 1 or group, rows, keys]`` ->
    ``[b, kv, group, pair]``."""
    if not _KERNEL:
        _KERNEL.append(torch.compile(_masked_abs_sum, dynamic=True))
    try:
        return _KERNEL[0](q0, q1, k0, k1, m_)
    except Exception as e:  # the compiler's own failure (no C++ compiler, no Triton, ...)
        if isinstance(e, RopeBehaviorError):
            raise
        raise RopeBehaviorError(
            f"compiled=True: torch.compile could not build the usage kernel on "
            f"{q0.device.type} ({type(e).__name__}: {_first_line(e)}); it needs a C++ "
            "compiler on the CPU or Triton on a GPU. Pass compiled=False (the eager path, "
            "same numbers)"
        ) from e


def _first_line(e: Any) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else "no message"
