"""Validation of what enters a capture: token ids, attention masks, and a spec given for a
model (it must describe that model)."""

import torch
from jaxtyping import Int
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, validates_inputs
from rope_behavior.model.adapters import ModelAdapter
from rope_behavior.model.context import ModelContext
from rope_behavior.model.spec import RopeSpec

__all__ = ["check_spec", "validate_mask", "validate_tokens"]


@validates_inputs
def validate_tokens(
    tokens: object, adapter: ModelAdapter, *, min_len: int = 1, what: str = "tokens"
) -> Int[Tensor, "batch pos"]:
    """Check a token tensor: integer dtype, ``[batch, pos]``, ids and length in range."""
    if not isinstance(tokens, Tensor):
        raise RopeBehaviorError(
            f"{what} must be a torch.Tensor of token ids [batch, pos]; got {type(tokens).__name__} "
            "(tokenize strings first, e.g. model.to_tokens(text))"
        )
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise RopeBehaviorError(f"{what} must hold integer token ids; got dtype {tokens.dtype}")
    if tokens.ndim != 2:
        hint = " (add a batch axis: tokens[None])" if tokens.ndim == 1 else ""
        raise RopeBehaviorError(
            f"{what} must have shape [batch, pos]; got rank {tokens.ndim} shape {tuple(tokens.shape)}{hint}"
        )
    if tokens.shape[0] == 0 or tokens.shape[1] < min_len:
        raise RopeBehaviorError(
            f"{what} of shape {tuple(tokens.shape)} is too short: need batch >= 1 and at least "
            f"{min_len} position(s)"
        )
    n_ctx = adapter.n_ctx()
    if n_ctx is not None and tokens.shape[1] > n_ctx:
        raise RopeBehaviorError(
            f"{what} has {tokens.shape[1]} positions but the model's rotary table covers "
            f"n_ctx={n_ctx}; truncate the context or use a model configured for longer ones"
        )
    vocab = adapter.vocab_size()
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or (vocab is not None and hi >= vocab):
        raise RopeBehaviorError(
            f"{what} holds ids in [{lo}, {hi}]; expected ids in [0, {(vocab or 0) - 1}]"
        )
    return tokens.long().to(adapter.device)  # where token ids go (the input embedding's)


def validate_mask(mask: object, tokens: Tensor, *, allow_empty_rows: bool = False) -> Tensor | None:
    """Check an attention mask: shaped like ``tokens``, 0/1 only, and (unless
    ``allow_empty_rows``) a token in every row. Returned as long, on the tokens' device."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(tokens.shape):
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise RopeBehaviorError(
            f"attention_mask must be a tensor shaped like tokens {tuple(tokens.shape)}; got {shape}"
        )
    if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
        raise RopeBehaviorError(
            f"attention_mask must hold only 0 (padding) and 1 (token); got dtype {mask.dtype} "
            "with other values"
        )
    empty = (~mask.bool().any(-1)).nonzero().flatten().tolist()
    if empty and not allow_empty_rows:
        shown = empty[:8] + (["..."] if len(empty) > 8 else [])
        raise RopeBehaviorError(
            f"attention_mask has {len(empty)} row(s) with no tokens (all padding): prompts "
            f"{shown}; drop them"
        )
    return mask.long().to(tokens.device)


_SPEC_FIELDS = (
    "architecture",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "d_head",
    "rotary_dim",
    "pair_layout",
    "attn_scales",
    "logit_softcaps",
    "sliding_windows",
    "omega_source",
    "sites",
)


def _short(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def check_spec(spec: object, context: ModelContext) -> ModelContext:
    """``context``, with ``spec`` if it describes the context's model (else a
    :class:`RopeBehaviorError` naming the fields that differ); ``None`` keeps the model's
    own spec."""
    own = context.spec
    if spec is None or spec is own:
        return context
    if not isinstance(spec, RopeSpec):
        raise RopeBehaviorError(
            f"spec must be a RopeSpec (RopeSpec.from_model(model)) or None; got "
            f"{type(spec).__name__}"
        )
    diffs = [
        f"{name}={_short(getattr(spec, name))} (the model: {_short(getattr(own, name))})"
        for name in _SPEC_FIELDS
        if getattr(spec, name) != getattr(own, name)
    ]
    for name in ("omega", "table_scale"):
        a, b = getattr(spec, name), getattr(own, name)
        if a.shape != b.shape or not torch.allclose(
            a.double().cpu(), b.double().cpu(), rtol=1e-6, atol=1e-12
        ):
            diffs.append(f"{name} differs")
    if diffs:
        raise RopeBehaviorError(
            f"spec describes another model than the one given ({own.architecture}): "
            + "; ".join(diffs[:4])
            + ("; ..." if len(diffs) > 4 else "")
            + ". Pass spec=RopeSpec.from_model(model), or omit spec"
        )
    return ModelContext(adapter=context.adapter, spec=spec)
