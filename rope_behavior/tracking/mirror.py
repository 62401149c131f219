"""Scoring a plain Hugging Face model while it trains: a TransformerBridge around a copy.

Wrapping a model in a ``TransformerBridge`` changes it in place (bridge components replace
its submodules), which a training loop should not have done to the model it trains. A
:class:`BridgeMirror` deep-copies the model once, wraps the copy
(``build_bridge_from_module``, eager attention) and, at each checkpoint, copies the
training model's parameters and buffers into it (``synced``). The copy costs one model's
memory; the sync is a memory copy. TransformerLens and transformers are imported here only.
"""

import copy
from typing import Any

import torch

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.model.context import ModelContext, resolve

__all__ = ["BridgeMirror", "is_plain_hf"]


def is_plain_hf(model: Any) -> bool:
    """Whether ``model`` is a Hugging Face ``PreTrainedModel`` without hook points."""
    import sys

    transformers = sys.modules.get("transformers")
    if transformers is None:  # not imported: the model cannot be one
        return False
    return isinstance(model, transformers.PreTrainedModel) and not hasattr(model, "hook_dict")


class BridgeMirror:
    """A TransformerBridge around a copy of ``model`` (module docstring)."""

    def __init__(self, model: Any, *, tokenizer: Any = None) -> None:
        from transformer_lens.model_bridge.sources._bridge_builder import (
            build_bridge_from_module,
        )

        architectures = getattr(model.config, "architectures", None) or [type(model).__name__]
        clone = copy.deepcopy(model)
        clone.requires_grad_(False)
        if hasattr(clone.config, "_attn_implementation"):
            clone.config._attn_implementation = "eager"
        # the copy's tensors by name, taken before the bridge rearranges its modules
        self._params = dict(clone.named_parameters())
        self._buffers = dict(clone.named_buffers())
        try:
            self.bridge = build_bridge_from_module(
                clone, architectures[0], hf_config=clone.config, tokenizer=tokenizer
            )
        except (KeyError, ValueError, TypeError, NotImplementedError) as err:
            if tokenizer is not None and "name_or_path" in str(err):
                raise RopeBehaviorError(
                    f"tokenizer={type(tokenizer).__name__} has no folder it was loaded from "
                    "(name_or_path), and TransformerLens reloads it from there; pass a "
                    "tokenizer loaded with from_pretrained(folder), or none and "
                    "exclude_keys=(0,) for prompts that hold BOS at position 0 only"
                ) from None
            raise RopeBehaviorError(
                f"cannot score a {type(model).__name__} while it trains: TransformerLens could "
                f"not wrap a copy of it as {architectures[0]!r} ({type(err).__name__}: {err}); "
                "pass a TransformerBridge or HookedTransformer instead"
            ) from None
        self.bridge.eval()
        self.context: ModelContext = resolve(self.bridge)

    def synced(self, model: Any) -> ModelContext:
        """The mirror's context, its weights now equal to ``model``'s."""
        params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
        missing = sorted((set(self._params) - set(params)) | (set(self._buffers) - set(buffers)))
        if missing:
            raise RopeBehaviorError(
                f"the model lacks {missing[:3]} that its mirror was built with; a Tracker "
                "follows one model (make another Tracker for another model)"
            )
        with torch.no_grad():
            for name, dst in self._params.items():
                dst.copy_(params[name])
            moved = [n for n, dst in self._buffers.items() if not torch.equal(dst, buffers[n])]
            for name in moved:  # rotary tables read again below when one changed
                self._buffers[name].copy_(buffers[name])
        if moved:
            self.context = resolve(self.bridge, refresh=True)
        return self.context
