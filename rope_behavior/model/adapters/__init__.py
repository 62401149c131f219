"""The only code that knows a host library's hook names and module layout.

Everything else in rope_behavior talks to a :class:`ModelAdapter`: hook names per role,
head counts, the model's own rotary tables, its attention scale and soft-cap, a scoped
forward, and a hook count. Three adapters exist:

* :class:`BridgeAdapter` for TransformerLens ``TransformerBridge`` models (3.9, 4.x);
* :class:`HookedTransformerAdapter` for TransformerLens 2.x / 3.x ``HookedTransformer``
  models and subclasses (SAE-Lens's ``HookedSAETransformer``); TransformerLens 4.x has no
  ``HookedTransformer``, so there it is never picked;
* :class:`NativeAdapter` for models that implement TransformerLens hook names themselves
  and state their rotary facts as attributes (``rotary_omega`` ``[layer, pair]``,
  ``rotary_pair_layout``, ``attn_scale``) — the project's toy models.
"""

from typing import Any

from rope_behavior.errors import NotAModelError, NotRotaryModelError, UnsupportedArchitectureError
from rope_behavior.model.adapters.base import (
    FwdHooks,
    HookFn,
    HookSites,
    ModelAdapter,
    OpaqueHook,
    PairLayout,
    PositionTap,
)
from rope_behavior.model.adapters.bridge import BridgeAdapter
from rope_behavior.model.adapters.hooked import HookedTransformerAdapter, hooked_transformer_class
from rope_behavior.model.adapters.native import NativeAdapter

__all__ = [
    "BridgeAdapter",
    "FwdHooks",
    "HookFn",
    "HookSites",
    "HookedTransformerAdapter",
    "ModelAdapter",
    "NativeAdapter",
    "OpaqueHook",
    "PairLayout",
    "PositionTap",
    "adapter_for",
]


def adapter_for(model: Any) -> ModelAdapter:
    """Pick the adapter for ``model``; raise a clear error for anything else."""
    if isinstance(model, ModelAdapter):
        return model
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # pragma: no cover - TransformerLens 2.x has no Bridge
        pass
    else:
        if isinstance(model, TransformerBridge):
            return BridgeAdapter(model)
    hooked = hooked_transformer_class()  # None on TransformerLens 4.x
    if hooked is not None and isinstance(model, hooked):
        return HookedTransformerAdapter(model)
    if hasattr(model, "rotary_omega") and hasattr(model, "hook_dict") and hasattr(model, "cfg"):
        return NativeAdapter(model)
    if hasattr(model, "hook_dict") and hasattr(model, "cfg"):
        pe = getattr(model.cfg, "positional_embedding_type", None)
        if pe is not None and pe != "rotary":
            raise NotRotaryModelError(
                f"{type(model).__name__} uses positional_embedding_type={pe!r}, not rotary "
                "position embeddings"
            )
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} is a hooked model rope_behavior has no adapter for; "
            "supported: transformer_lens TransformerBridge, HookedTransformer (TransformerLens "
            "2.x / 3.x) and native hooked models exposing rotary_omega / rotary_pair_layout / "
            "attn_scale"
        )
    loader = (
        "; a ModelLoader builds a model where analyze, score_corpus or "
        "frequency_patching_sweep run (pass it there, or call it: loader() builds the model)"
        if type(model).__name__ == "ModelLoader"
        else ""
    )
    raise NotAModelError(
        f"expected a TransformerLens TransformerBridge or HookedTransformer (or a rope_behavior "
        f"toy model); got {type(model).__name__}. Load a hub model or folder with "
        "TransformerBridge.boot_transformers(name) (from transformer_lens.model_bridge)" + loader
    )
