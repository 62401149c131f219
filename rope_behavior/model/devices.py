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

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["fields_to", "stack_on"]


def stack_on(tensors: Iterable[Tensor], device: torch.device | str, dim: int = 0) -> Tensor:
    """``torch.stack`` of ``tensors`` (e.g. one per layer, each on its layer's device) on
    ``device``: each is moved there first (a no-op for those already on it)."""
    items = [t.to(device) for t in tensors]
    if not items:
        raise ValueError("stack_on needs at least one tensor")
    return torch.stack(items, dim)


def fields_to(obj: Any, device: torch.device | str) -> Any:
    """A copy of the frozen dataclass ``obj`` with its tensor fields on ``device`` (what a
    worker hands back: a driver without the worker's GPU cannot unpickle CUDA tensors)."""
    if obj is None or not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return obj
    moved = {
        f.name: getattr(obj, f.name).to(device)
        for f in dataclasses.fields(obj)
        if f.init and isinstance(getattr(obj, f.name), Tensor)
    }
    return dataclasses.replace(obj, **moved) if moved else obj
