"""Which prompts can be scored: the public predicate over a batch of prompts.

:func:`scorable_prompts` applies the one rule of :mod:`rope_behavior.scoring.blocks` (the
rule :func:`~rope_behavior.score_heads`, :func:`~rope_behavior.score_corpus` and
:func:`~rope_behavior.analyze` refuse a batch by), so a caller can drop the prompts that
would stop a run before running it.
"""

from collections.abc import Sequence
from typing import Any

from jaxtyping import Bool, Int
from torch import Tensor

from rope_behavior.errors import validates_inputs
from rope_behavior.model.context import resolve
from rope_behavior.qk.validation import validate_mask, validate_tokens
from rope_behavior.scoring.blocks import MIN_BLOCKS, prompt_blocks, scorable_rows
from rope_behavior.scoring.geometry import excluded_keys, model_bos
from rope_behavior.scoring.scorer import ScoreSettings

__all__ = ["MIN_BLOCKS", "scorable_prompts"]


@validates_inputs
def scorable_prompts(
    model: Any,
    tokens: Int[Tensor, "prompt pos"],
    attention_mask: Int[Tensor, "prompt pos"] | None = None,
    *,
    block_size: int = 8,
    query_positions: str | int | Sequence[int] = "last",
    exclude_keys: str | int | Sequence[int | str] = "auto",
    align: str = "end",
) -> Bool[Tensor, " prompt"]:
    """Which prompts :func:`~rope_behavior.score_heads` (and :func:`~rope_behavior.analyze`,
    :func:`~rope_behavior.score_corpus`) can score with these settings: ``True`` where a
    prompt can be scored, on the CPU, one entry per row of ``tokens``.

    ``scorable_prompts(model, tokens, attention_mask=None, *, block_size=8,
    query_positions="last", exclude_keys="auto", align="end") -> Bool[Tensor, "prompt"]``

    A prompt can be scored when the query it is scored at has at least two whole blocks of
    ``block_size`` movable keys before it (keys that are neither padding nor excluded; with
    ``exclude_keys="auto"`` every key holding the BOS token the model's tokenizer prepends).
    With the defaults (the settings of ``analyze`` and ``rope-behavior analyze``) a prompt
    of ``n`` real tokens starting with BOS and holding no other BOS can be scored exactly
    when ``n >= 2 * block_size + 2`` (18 for block_size 8); without a prepended BOS,
    ``n >= 2 * block_size + 1``. Left and right padding are both read from
    ``attention_mask``; a row that is all padding is not scorable (``False``, not an error).

    The rule is the one scoring applies (the same code): a batch whose prompts are all
    ``True`` passes the length check of ``score_heads`` with the same settings, and one
    holding a ``False`` prompt is refused naming it. So ``keep = scorable_prompts(model,
    tokens, mask)`` then ``analyze(model, tokens[keep], attention_mask=mask[keep])``.

    Args:
        model: the model (or its resolved context): it says which token is BOS and checks
            the token ids.
        tokens: token ids ``[prompt, pos]``.
        attention_mask: ``[prompt, pos]`` 0/1 (0 = padding), or ``None`` (no padding).
        block_size: keys per block, as in ``score_heads``.
        query_positions: as in ``score_heads``. With ``"last"`` (default) or ``"all"`` a
            prompt is judged at its last token; with listed positions, at every one of them
            (each must hold a token of the prompt). Where more than 64 block pairs exist
            and swaps are drawn, a listed position can still find none of the drawn swaps:
            ``score_heads`` then says so.
        exclude_keys: as in ``score_heads``. ``"auto"`` on a TransformerLens model without
            a tokenizer (which cannot say which token is BOS) excludes no key and warns
            (:class:`~rope_behavior.scoring.geometry.ExcludeKeysWarning`).
        align: as in ``score_heads``: ``"end"`` or ``"start"``.

    Returns:
        ``Bool[Tensor, "prompt"]`` on the CPU.
    """
    # the settings are validated as score_heads validates them
    s = ScoreSettings(
        block_size=block_size, query_positions=query_positions, exclude_keys=exclude_keys,
        align=align,
    )  # fmt: skip
    adapter = resolve(model).adapter
    tokens = validate_tokens(tokens, adapter)
    mask = validate_mask(attention_mask, tokens, allow_empty_rows=True)
    excluded = excluded_keys(tokens, s.exclude_keys, model_bos(adapter))
    pb = prompt_blocks(tokens, mask, excluded, s.block_size, s.query_positions, s.align)
    return scorable_rows(pb).cpu()
