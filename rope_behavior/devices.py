"""Models whose layers sit on different devices.

A model may be split over devices (``TransformerBridge.boot_transformers(...,
n_devices=N)`` or ``device_map=...``, Hugging Face ``device_map="auto"``, TransformerLens
2.x / 3.x ``HookedTransformer`` with ``n_devices``): each layer's activations then live on
that layer's device. rope_behavior never assumes one device:

* whatever is combined with a layer's activations (rotary tables, masks, position ids,
  patch values and reference statistics) is moved to the device of those activations
  where they meet (a no-op on one device);
* per-layer results are gathered onto one stated device before they are stacked
  (:func:`stack_on`): the device of the tokens passed in, unless a function says otherwise.
"""

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["stack_on"]


def stack_on(tensors: Iterable[Tensor], device: torch.device | str, dim: int = 0) -> Tensor:
    """``torch.stack`` of ``tensors`` (e.g. one per layer, each on its layer's device) on
    ``device``: each is moved there first (a no-op for those already on it)."""
    items = [t.to(device) for t in tensors]
    if not items:
        raise ValueError("stack_on needs at least one tensor")
    return torch.stack(items, dim)
