"""The resolved model: what a public call turns its ``model`` argument into, once, at the door.

A :class:`ModelContext` holds the model's :class:`~rope_behavior.model.adapters.ModelAdapter`
(hook names, tables, a scoped forward) and its :class:`~rope_behavior.model.spec.RopeSpec`
(every rotary fact, read from the model's own tables). Every public function accepts a model
or a context; :func:`resolve` returns a context unchanged, so a call that hands its context
down never looks the model up again.

Contexts are cached per model object. The cache entry is dropped when anything the spec was
read from changes: a rotary buffer edited in place (its version counter moves), replaced or
moved (``model.to(...)``), or the weights' dtype or device (:meth:`ModelAdapter.rotary_state`).
"""

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from rope_behavior.model.adapters import ModelAdapter, adapter_for
from rope_behavior.model.spec import RopeSpec

__all__ = ["ModelContext", "evaluating", "resolve"]


@dataclass(frozen=True, eq=False)
class ModelContext:
    """A model resolved once: its adapter and its RoPE spec."""

    adapter: ModelAdapter
    spec: RopeSpec

    @property
    def model(self) -> Any:
        """The host model (a TransformerBridge, a HookedTransformer, a toy model)."""
        return self.adapter.model

    @property
    def device(self) -> torch.device:
        """Where token ids go (the input embedding's device)."""
        return self.adapter.device

    def __repr__(self) -> str:
        return f"ModelContext({type(self.adapter).__name__}, {self.spec!r})"


_CACHE: "weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], ModelContext]]" = (
    weakref.WeakKeyDictionary()
)


def resolve(model: Any, *, refresh: bool = False) -> ModelContext:
    """The :class:`ModelContext` of ``model`` (a model, an adapter, or a context, returned as
    it is). Cached per model; ``refresh=True`` reads the spec again whatever the cache says.

    Raises :class:`~rope_behavior.NotRotaryModelError` for a model without rotary position
    embeddings, :class:`~rope_behavior.UnsupportedArchitectureError` for a rotary model that
    cannot be decomposed exactly, and ``TypeError`` for something that is not a hooked model.
    """
    if isinstance(model, ModelContext):
        return model
    raw = model.model if isinstance(model, ModelAdapter) else model
    entry = None
    with contextlib.suppress(TypeError):  # an unhashable model is simply not cached
        entry = _CACHE.get(raw)
    if entry is not None and not refresh and entry[1].adapter.rotary_state() == entry[0]:
        return entry[1]
    adapter = model if isinstance(model, ModelAdapter) else adapter_for(model)
    context = ModelContext(adapter=adapter, spec=RopeSpec.read(adapter))
    with contextlib.suppress(TypeError):
        _CACHE[raw] = (adapter.rotary_state(), context)
    return context


@contextlib.contextmanager
def evaluating(model: Any) -> Iterator[None]:
    """Run the block with ``model`` in eval mode (dropout off: a score or a usage is a
    property of the weights), putting every module's training flag back afterwards, also
    on error. Nothing is changed for a model already in eval mode."""
    modules = list(model.modules()) if hasattr(model, "modules") else []
    flags = [(m, m.training) for m in modules]
    if not any(training for _, training in flags):
        yield
        return
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training
