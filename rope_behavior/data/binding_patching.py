"""Clean / corrupted binding prompts tokenized for a model, with their metric.

:func:`binding_patching_inputs` returns what :func:`~rope_behavior.frequency_patching_sweep`
takes for the binding task of :mod:`rope_behavior.data.binding`: the clean tokens, the
corrupted tokens (:meth:`~rope_behavior.data.binding.BindingPrompts.corrupted`: the clean
answer and distractor swap roles) and ``logit_diff(answer, distractor)`` at the last
position.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from jaxtyping import Int
from torch import Tensor

from rope_behavior.data.binding import (
    Corruption,
    binding_prompts,
    check_corruption,
)
from rope_behavior.errors import RopeBehaviorError, validates_inputs
from rope_behavior.patching.metrics import LogitDiff, logit_diff

__all__ = ["BindingPatchingInputs", "binding_patching_inputs"]


class BindingPatchingInputs(NamedTuple):
    """What :func:`~rope_behavior.frequency_patching_sweep` takes: ``clean_tokens`` and
    ``corrupted_tokens`` (the model's tokens, BOS prepended as it does; on the CPU; one
    length throughout) and ``metric``, the clean answer's logit minus the clean
    distractor's at the last position (positive on clean prompts when the model binds,
    negative on corrupted ones)."""

    clean_tokens: Int[Tensor, "batch pos"]
    corrupted_tokens: Int[Tensor, "batch pos"]
    metric: LogitDiff


@validates_inputs
def binding_patching_inputs(
    model: Any,
    n: int,
    *,
    n_pairs: int = 4,
    seed: int | torch.Generator = 0,
    corruption: Corruption = "query",
    entities: Sequence[str] | None = None,
    attributes: Sequence[str] | None = None,
) -> BindingPatchingInputs:
    """Clean / corrupted binding prompts for ``model`` and the metric, ready for a sweep::

        clean, corrupted, metric = binding_patching_inputs(model, 16, seed=0)
        frequency_patching_sweep(model, clean, corrupted, metric, bands=4)

    The clean prompts are ``binding_prompts(n, n_pairs=..., seed=..., tokenizer=model,
    entities=..., attributes=...)``; the corrupted ones their
    :meth:`~rope_behavior.data.binding.BindingPrompts.corrupted` (``corruption``: ``"query"`` asks for the
    distractor's entity, ``"swap"`` exchanges the two attributes). Every clean and
    corrupted prompt has the same number of tokens (patching is position by position);
    a prompt longer than the model's context (``model.cfg.n_ctx``) is refused.
    """
    check_corruption(corruption)
    if getattr(model, "tokenizer", None) is None or not callable(getattr(model, "to_tokens", None)):
        raise RopeBehaviorError(
            f"model={type(model).__name__} has no tokenizer (model.tokenizer and "
            "model.to_tokens), so binding prompts cannot be tokenized for it; load a model "
            "folder that holds its tokenizer files"
        )
    prompts = binding_prompts(
        n, n_pairs=n_pairs, seed=seed, tokenizer=model, entities=entities, attributes=attributes
    )
    answer, distractor = prompts.answer_ids, prompts.distractor_ids
    if answer is None or distractor is None:  # not reached: the prompts had a tokenizer
        raise RopeBehaviorError("binding_prompts(tokenizer=model) returned no token ids")
    corrupted = prompts.corrupted(corruption)
    clean_rows, corrupted_rows = _rows(model, prompts.texts), _rows(model, corrupted.texts)
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    lengths = sorted({len(r) for r in clean_rows + corrupted_rows})
    if isinstance(n_ctx, int) and lengths[-1] > n_ctx:
        raise RopeBehaviorError(
            f"binding prompts of {len(prompts.entities[0])} pairs are {lengths[-1]} tokens, "
            f"longer than the model's context n_ctx={n_ctx}; lower n_pairs"
        )
    if len(lengths) > 1:
        bad = next(
            i
            for i, (c, k) in enumerate(zip(clean_rows, corrupted_rows, strict=True))
            if len(c) != len(k) or len(c) != len(clean_rows[0])
        )
        raise RopeBehaviorError(
            f"binding prompts of {lengths} tokens (patching is position by position and "
            f"needs one length): clean prompt {bad} {prompts.texts[bad]!r} is "
            f"{len(clean_rows[bad])} tokens and its corrupted prompt {corrupted.texts[bad]!r} "
            f"{len(corrupted_rows[bad])}, prompt 0 {len(clean_rows[0])}"
        )
    metric = logit_diff(answer, distractor, tokenizer=model)
    return BindingPatchingInputs(torch.stack(clean_rows), torch.stack(corrupted_rows), metric)


def _rows(model: Any, texts: Sequence[str]) -> list[Tensor]:
    return [model.to_tokens(text, truncate=False)[0].cpu() for text in texts]
