"""Pair split / merge and the RoPE rotation in pair coordinates: pure tensor functions.

The split of a head's rotary slice into frequency pairs is written once, here, as an einops
pattern per layout: ``"... (two pair) -> ... pair two"`` ("half", GPT-NeoX / Llama) or
``"... (pair two) -> ... pair two"`` ("interleaved", GPT-J).
"""

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from rope_behavior.model.adapters import PairLayout

__all__ = ["merge_pairs", "rotate", "rotate_pairs", "split_pairs"]

_PATTERNS: dict[str, str] = {"half": "(two pair)", "interleaved": "(pair two)"}


def _pattern(layout: PairLayout) -> str:
    try:
        return _PATTERNS[layout]
    except KeyError:
        raise ValueError(f"pair layout {layout!r} is not one of {sorted(_PATTERNS)}") from None


def split_pairs(
    x: Float[Tensor, "*shape rotary_dim"], layout: PairLayout
) -> Float[Tensor, "*shape pair 2"]:
    """View the last axis (the rotary slice of a head) as ``[pair, 2]``."""
    return rearrange(x, f"... {_pattern(layout)} -> ... pair two", two=2)


def merge_pairs(
    x: Float[Tensor, "*shape pair 2"], layout: PairLayout
) -> Float[Tensor, "*shape rotary_dim"]:
    """Inverse of :func:`split_pairs`."""
    return rearrange(x, f"... pair two -> ... {_pattern(layout)}", two=2)


def _per_prompt(table: Tensor) -> Tensor:
    """A ``[pos, pair]`` table shared by all prompts as ``[1, pos, pair]``."""
    return table[None] if table.ndim == 2 else table


def rotate_pairs(
    x: Float[Tensor, "#batch pos head pair 2"],
    cos: Float[Tensor, "pos pair"] | Float[Tensor, "#batch pos pair"],
    sin: Float[Tensor, "pos pair"] | Float[Tensor, "#batch pos pair"],
) -> Float[Tensor, "batch pos head pair 2"]:
    """Rotate each pair by its angle: ``(x1 c - x2 s, x2 c + x1 s)``.

    Tables are per prompt, ``[batch, pos, pair]`` (each prompt at its own positions), or
    one ``[pos, pair]`` / ``[1, pos, pair]`` table shared by every prompt; a batch-1 side
    broadcasts. The same arithmetic as Hugging Face's ``x * cos + rotate_half(x) * sin``;
    use ``sin -> -sin`` for the inverse rotation (with tables of unit magnitude).
    """
    c = _per_prompt(cos)[:, :, None, :]
    s = _per_prompt(sin)[:, :, None, :]
    x1, x2 = x[..., 0], x[..., 1]
    return torch.stack((x1 * c + (-x2) * s, x2 * c + x1 * s), dim=-1)


def rotate(
    x: Float[Tensor, "#batch pos head d_head"],
    cos: Float[Tensor, "pos pair"] | Float[Tensor, "#batch pos pair"],
    sin: Float[Tensor, "pos pair"] | Float[Tensor, "#batch pos pair"],
    layout: PairLayout,
) -> Float[Tensor, "batch pos head d_head"]:
    """Apply RoPE to the first ``2 * n_pairs`` dims of each head; the rest pass through.

    ``cos`` / ``sin`` as in :func:`rotate_pairs`: per prompt ``[batch, pos, pair]`` or one
    shared ``[pos, pair]`` table.
    """
    rotary_dim = 2 * cos.shape[-1]
    rotated = merge_pairs(rotate_pairs(split_pairs(x[..., :rotary_dim], layout), cos, sin), layout)
    if rotary_dim == x.shape[-1]:
        return rotated
    rest = x[..., rotary_dim:]
    return torch.cat([rotated, rest.expand(*rotated.shape[:-1], rest.shape[-1])], dim=-1)
