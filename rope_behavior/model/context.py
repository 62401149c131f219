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
import os
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from rope_behavior.errors import NotAModelError
from rope_behavior.model.adapters import ModelAdapter, adapter_for
from rope_behavior.model.spec import RopeSpec

__all__ = ["ModelContext", "evaluating", "is_training", "resolve"]


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
    cannot be decomposed exactly, and :class:`~rope_behavior.errors.NotAModelError` (a
    ``RopeBehaviorError`` and a ``TypeError``) for something that is not a model it can run:
    a hub name or folder (load it first), a plain Hugging Face model (wrap it first), or
    anything else; the message says how.
    """
    if isinstance(model, ModelContext):
        return model
    _refuse_non_model(model)
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


def _every_module(model: Any) -> list[torch.nn.Module]:
    """Every module ``model`` can run: its ``modules()`` and the modules reachable only
    through plain attributes (a TransformerBridge keeps the wrapped Hugging Face model,
    whose dropout runs in the forward, in ``original_model``, outside ``modules()``)."""
    found: dict[int, torch.nn.Module] = {}
    todo = [model] if isinstance(model, torch.nn.Module) else []
    while todo:
        root = todo.pop()
        for mod in root.modules():
            if id(mod) in found:
                continue
            found[id(mod)] = mod
            todo += [
                v
                for v in vars(mod).values()
                if isinstance(v, torch.nn.Module)
                and not isinstance(v, weakref.ProxyTypes)
                and id(v) not in found
            ]
    return list(found.values())


def is_training(model: Any) -> bool:
    """Whether any module ``model`` can run is in training mode (dropout on), the wrapped
    Hugging Face model of a TransformerBridge included."""
    if isinstance(model, ModelContext):
        model = model.model
    return any(m.training for m in _every_module(model))


_LOAD = (
    "load it first: TransformerBridge.boot_transformers({name}) (from "
    "transformer_lens.model_bridge), or HookedTransformer.from_pretrained({name}) on "
    "TransformerLens 2.x / 3.x; the shipped language model is rope_behavior.load_shipped_lm(). "
    "Only analyze, score_corpus and frequency_patching_sweep also take a "
    "rope_behavior.ModelLoader({name}), which loads it where it runs"
)


def _refuse_non_model(model: Any) -> None:
    """Refuse, saying how to get a model, what is a name for one or a model without hooks."""
    if isinstance(model, str | bytes | os.PathLike):
        name = repr(os.fsdecode(model) if not isinstance(model, str) else model)
        kind = "the path" if isinstance(model, os.PathLike) else "the string"
        raise NotAModelError(f"expected a model, got {kind} {name}; " + _LOAD.format(name=name))
    if _is_plain_hf(model):
        arch = type(model).__name__
        raise NotAModelError(
            f"expected a TransformerLens model (TransformerBridge or HookedTransformer) or a "
            f"rope_behavior toy model; got a plain Hugging Face {arch}, which has no hook "
            "points. Load it wrapped: TransformerBridge.boot_transformers(name_or_folder) "
            "(from transformer_lens.model_bridge); or wrap this object (in place: the Bridge "
            "replaces its submodules) with transformer_lens.model_bridge.sources."
            f"_bridge_builder.build_bridge_from_module(model, {arch!r}, "
            "hf_config=model.config), built with config._attn_implementation='eager'"
        )


def _is_plain_hf(model: Any) -> bool:
    """A Hugging Face ``PreTrainedModel`` (checked by class, without importing transformers)."""
    return any(
        c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers.")
        for c in type(model).__mro__
    )


_EVALUATING = threading.local()  # ids of the models under an evaluating() block, per thread


@contextlib.contextmanager
def evaluating(model: Any) -> Iterator[None]:
    """Run the block with ``model`` in eval mode (dropout off: a score or a usage is a
    property of the weights), putting every module's training flag back afterwards, also
    on error or interruption. Every module the model can run is switched, the wrapped
    Hugging Face model of a TransformerBridge included. Nothing is changed for a model
    already in eval mode. Nested blocks on the same model (a corpus in eval mode around its
    shards) walk the modules once: the inner ones change nothing."""
    if isinstance(model, ModelContext):
        model = model.model
    active: set[int] = _EVALUATING.__dict__.setdefault("ids", set())
    if id(model) in active:  # an enclosing block of this thread already switched it
        yield
        return
    modules = _every_module(model)
    flags = [(m, m.training) for m in modules]
    active.add(id(model))
    try:
        if any(training for _, training in flags):
            model.eval()
            for m in modules:
                m.training = False
        yield
    finally:
        active.discard(id(model))
        for m, training in flags:
            if m.training != training:
                m.training = training
