"""Positional / symbolic scores of attention heads (``docs/method.md``, section 4).

For a query at position ``n`` the movable keys before it are tiled by blocks
(:mod:`rope_behavior.scoring.geometry`: exclusions, ``align``, which swaps). A swap
``(a, c)`` moves the key contents of block ``a`` to block ``c``'s positions and vice versa.
The attention row ``D`` is the head's softmax over keys ``0..n`` (causal, sliding window
and padding masks as the model applies them), renormalised over non-excluded keys. With
block means ``d`` (original) and ``d'`` (swapped), ``v = (d_a, d_c)``, ``v' = (d'_a, d'_c)``::

    pos_swap = cos(v', v)      sym_swap = cos(v', (d_c, d_a))
    alpha    = softmax over swaps of |d_a - d_c| / tau        (original row's d)
    s_pos    = sum alpha * pos_swap        s_sym = sum alpha * sym_swap

A swap whose blocks do not both exist for a row, or whose ``v`` is zero (both blocks
carry no attention: masked by a sliding window), is skipped for that row (``swap_weight``
0, per-swap values NaN); a row with no usable swap scores NaN with ``identifiable=False``.

Identifiability. The score of a row is a statement about the attention its swaps move. A
row is ``identifiable`` when (1) its ``separation`` (how far apart ``pos_swap`` and
``sym_swap`` can be; 0 for a uniform row, which scores (1, 1) whatever the head does) is
at least ``identifiability_threshold`` and (2) its ``swapped_mass`` (the alpha-weighted
share of the row's attention inside the two swapped blocks) is at least
``min_swapped_mass``: separation alone is scale-free, so a head whose attention lies
almost entirely outside the blocks (on leftover keys, or on excluded ones) would
otherwise be called identifiable on the shape of a 1e-4 remainder.

Modes: ``"keys"`` (:mod:`rope_behavior.scoring.keys_mode`; one forward, the model's own hooks on
its keys reproduced or refused) and ``"tokens"`` (:mod:`rope_behavior.scoring.tokens_mode`; swap
input tokens and re-run the model with whatever hooks are installed).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from rope_behavior.errors import (
    RopeBehaviorError,
    as_count,
    as_flag,
    as_fraction,
    as_generator,
    check_indices,
    validates_inputs,
)
from rope_behavior.model.context import ModelContext, evaluating, resolve
from rope_behavior.qk.captured import LayerQK, stream_checked, validate_mask, validate_tokens
from rope_behavior.scoring.blocks import query_choice
from rope_behavior.scoring.geometry import (
    ALIGNS,
    AUTO_ALL_PAIRS,
    block_geometry,
    excluded_keys,
    model_bos,
)
from rope_behavior.scoring.key_chain import key_chains
from rope_behavior.scoring.keys_mode import keys_layer
from rope_behavior.scoring.results import HeadScores, ScoreSummary
from rope_behavior.scoring.rows import Finite, Out
from rope_behavior.scoring.swap_scores import SwapScores, _check_tau, block_swap_scores
from rope_behavior.scoring.tokens_mode import run_tokens_mode

__all__ = [
    "HeadScores",
    "ScoreSettings",
    "ScoreSummary",
    "SwapScores",
    "block_swap_scores",
    "score_checked",
    "score_heads",
]

_MODES = ("keys", "tokens")


@validates_inputs
@dataclass(frozen=True)
class ScoreSettings:
    """How :func:`score_heads` scores, validated when built (see its arguments).

    Settings that depend on the prompts (``query_positions``, ``align`` against the blocks,
    ``swaps`` against the number of blocks, ``exclude_keys`` against the tokenizer) are
    checked again when the block geometry is drawn.
    """

    mode: str = "keys"
    block_size: int = 8
    align: str = "end"
    swaps: Sequence[tuple[int, int]] | None = None
    n_swaps: int | str | None = "auto"
    tau: float = 0.05
    query_positions: str | int | Sequence[int] = "last"
    exclude_keys: str | int | Sequence[int | str] = "auto"
    per_pair: bool = False
    identifiability_threshold: float = 0.01
    min_swapped_mass: float = 0.05
    sequences_per_forward: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise RopeBehaviorError(f"mode={self.mode!r}; options: {', '.join(map(repr, _MODES))}")
        object.__setattr__(self, "block_size", as_count(self.block_size, "block_size"))
        object.__setattr__(self, "query_positions", query_choice(self.query_positions))
        if self.align not in ALIGNS:
            raise RopeBehaviorError(
                f"align={self.align!r}; options: {', '.join(map(repr, ALIGNS))}"
            )
        object.__setattr__(self, "tau", _check_tau(self.tau))
        for name in ("identifiability_threshold", "min_swapped_mass"):
            object.__setattr__(self, name, as_fraction(getattr(self, name), name))
        as_flag(self.per_pair, "per_pair")
        swaps_hint = f"options: 'auto' (all pairs up to {AUTO_ALL_PAIRS}), an int >= 1, None (all)"
        if isinstance(self.n_swaps, str):
            if self.n_swaps != "auto":
                raise RopeBehaviorError(f"n_swaps={self.n_swaps!r}; {swaps_hint}")
        elif self.n_swaps is not None:
            object.__setattr__(self, "n_swaps", as_count(self.n_swaps, "n_swaps", hint=swaps_hint))
        if self.sequences_per_forward is not None:
            object.__setattr__(
                self,
                "sequences_per_forward",
                as_count(self.sequences_per_forward, "sequences_per_forward"),
            )


@validates_inputs
def score_heads(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    *,
    mode: str = "keys",
    block_size: int = 8,
    align: str = "end",
    swaps: Sequence[tuple[int, int]] | None = None,
    n_swaps: int | str | None = "auto",
    tau: float = 0.05,
    query_positions: str | int | Sequence[int] = "last",
    exclude_keys: str | int | Sequence[int | str] = "auto",
    per_pair: bool = False,
    layers: int | Sequence[int] | None = None,
    seed: int | torch.Generator = 0,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    identifiability_threshold: float = 0.01,
    min_swapped_mass: float = 0.05,
    sequences_per_forward: int | None = None,
) -> HeadScores:
    """Positional / symbolic scores (s_pos, s_sym) of every head of ``layers``, per prompt.

    Args:
        model: a TransformerBridge, a HookedTransformer, a rope_behavior toy model, or a
            resolved context (scored in eval mode: a model in training mode is switched to
            eval for the call and back after).
        tokens: ``[prompt, pos]`` token ids (one prompt per row).
        mode: ``"keys"`` (permute unrotated keys inside each layer, re-rotate at the
            destination; one forward) or ``"tokens"`` (swap input token blocks, re-run).
        block_size: keys per block.
        align: ``"end"`` (blocks tile back from the query: the nearest keys are always
            scored) or ``"start"`` (blocks tile from the first movable key).
        swaps: explicit block-index pairs ``(a, c)``, or ``None`` (chosen by ``n_swaps``).
        n_swaps: without ``swaps``: ``"auto"`` (every block pair when there are at most
            64, else 64 drawn), an int (that many drawn with ``seed``) or ``None`` (every
            pair).
        tau: temperature of the swap weights ``softmax(|d_a - d_c| / tau)``.
        query_positions: ``"last"`` (default), ``"all"`` (every position at which at least
            one swap exists in every prompt), an int, or distinct ints (a sequence or a 1-D
            integer tensor). Every prompt needs two blocks before its query: a batch
            holding a prompt too short is refused naming it;
            :func:`~rope_behavior.scorable_prompts` says which prompts pass beforehand.
        exclude_keys: keys left out of the row (renormalised over the others; padding is
            always excluded; blocks never straddle an excluded key): ``"auto"`` (default:
            every key holding the BOS token when the model's tokenizer prepends one),
            ``"bos"``, ``"none"``, key positions, or positions mixed with ``"bos"``.
        per_pair: score each single-pair projection head (logits = that pair's
            contribution alone, no soft-cap) instead of the whole head.
        layers: layer indices (default: all).
        seed: an int or a ``torch.Generator``: draws the swaps when ``n_swaps`` asks for
            fewer than there are.
        attention_mask: ``[prompt, pos]`` 0/1 mask for prompts of different lengths.
        identifiability_threshold: a row is identifiable when its separation reaches
            this and its swapped mass reaches ``min_swapped_mass`` (module docstring).
        min_swapped_mass: the share of a row's attention (alpha-weighted) that must lie
            in the swapped blocks for the row to be identifiable.
        sequences_per_forward: sequences per forward in tokens mode (the swapped copies
            of the prompts). Default: as many as fit the device's budget
            (``ModelAdapter.sequences_per_forward``).

    Returns:
        :class:`HeadScores`; its ``dims`` name the axes of the scores (``prompt, layer,
        head``, then ``query`` and ``pair`` where asked for). ``.mean()`` summarises over
        prompts with bootstrap intervals over prompts and swaps.
    """
    settings = ScoreSettings(
        mode=mode, block_size=block_size, align=align, swaps=swaps, n_swaps=n_swaps, tau=tau,
        query_positions=query_positions, exclude_keys=exclude_keys, per_pair=per_pair,
        identifiability_threshold=identifiability_threshold,
        min_swapped_mass=min_swapped_mass, sequences_per_forward=sequences_per_forward,
    )  # fmt: skip
    context = resolve(model)
    generator = as_generator(seed)
    tokens = validate_tokens(tokens, context.adapter)
    mask = validate_mask(attention_mask, tokens)
    n_layers = context.spec.n_layers
    chosen = check_indices(layers, n_layers, "layer", f"{n_layers} layers")
    with evaluating(context.model):
        return score_checked(context, tokens, mask, chosen, settings, generator)


def score_checked(
    context: ModelContext,
    tokens: Int[Tensor, "batch pos"],
    mask: Int[Tensor, "batch pos"] | None,
    layers: tuple[int, ...],
    settings: ScoreSettings,
    generator: torch.Generator | None = None,
    also: Callable[[LayerQK], None] | None = None,
    captured: Sequence[LayerQK] | None = None,
    on_logits: Callable[[Tensor], None] | None = None,
) -> HeadScores:
    """:func:`score_heads` on validated inputs and a resolved context (the model already in
    eval mode). ``also`` (keys mode only) is called with every layer's queries and keys
    of the same forward, so a caller can measure something else (frequency usage) on it.
    ``captured`` (keys mode only): the layers of ``layers``, in order, already streamed
    from one forward of ``tokens`` (with ``raw_keys`` where hooks sit at key sites):
    scored without running the model again, so several settings share one forward.
    ``on_logits`` (keys mode, not with ``captured``): the forward runs to the end and its
    logits are handed to it (the model's predictions from the scoring forward)."""
    adapter, spec, s = context.adapter, context.spec, settings
    if s.mode != "keys" and any(x is not None for x in (also, captured, on_logits)):
        raise RopeBehaviorError("a second consumer of the forward needs mode='keys'")
    if captured is not None and on_logits is not None:
        raise RopeBehaviorError("on_logits needs a forward: it cannot be given with captured")
    excluded = excluded_keys(tokens, s.exclude_keys, model_bos(adapter))
    geo = block_geometry(
        tokens, mask, excluded, s.block_size, s.query_positions, s.swaps, s.n_swaps,
        generator, s.align,
    )  # fmt: skip
    projs: list[int | None] = list(range(spec.n_pairs)) if s.per_pair else [None]
    n_q, n_s = geo.qpos.shape[1], geo.swaps.shape[0]
    out = Out(tokens.shape[0], len(layers), spec.n_heads, n_q, len(projs), n_s)
    finite = Finite()
    if s.mode == "keys":
        li_of = {layer: i for i, layer in enumerate(layers)}
        chains = key_chains(adapter, spec, layers)

        def on_layer(lq: LayerQK) -> None:
            chain = chains.get(lq.layer)
            keys_layer(lq, li_of[lq.layer], geo, spec, projs, s.tau, out, finite, chain)
            if also is not None:
                also(lq)

        if captured is None:
            stream_checked(
                context, tokens, mask, layers, on_layer, raw_keys=bool(chains),
                on_logits=on_logits,
            )  # fmt: skip
        else:
            for lq in captured:
                on_layer(lq)
    else:
        per_forward = (
            adapter.sequences_per_forward(tokens.shape[1], tokens.shape[0])
            if s.sequences_per_forward is None
            else s.sequences_per_forward
        )
        run_tokens_mode(
            context, tokens, mask, geo, spec, layers, projs, s.tau, out, per_forward, finite
        )
    finite.raise_if_any()
    t = out.t
    squeeze = [d for d, drop in ((4, not s.per_pair), (3, not geo.has_query_axis)) if drop]
    for k in t:
        for d in squeeze:
            t[k] = t[k].squeeze(d)
    identifiable = (t["separation"] >= s.identifiability_threshold) & (
        t["swapped_mass"] >= s.min_swapped_mass
    )
    return HeadScores(
        mode=s.mode,
        layers=layers,
        n_heads=spec.n_heads,
        query_positions=tuple(geo.qpos.max(0).values.tolist()),
        query_pos=geo.qpos.cpu(),
        has_query_axis=geo.has_query_axis,
        per_pair=s.per_pair,
        swaps=tuple((int(a), int(c)) for a, c in geo.swaps.tolist()),
        n_block_pairs=geo.n_block_pairs,
        block_size=s.block_size,
        align=geo.align,
        tau=s.tau,
        exclude_keys=_describe(s.exclude_keys),
        excluded=geo.excluded.cpu(),
        identifiability_threshold=s.identifiability_threshold,
        min_swapped_mass=s.min_swapped_mass,
        start=geo.start.cpu(),
        identifiable=identifiable,
        **t,
    )


def _describe(exclude_keys: object) -> tuple[int | str, ...]:
    if exclude_keys is None:
        return ("none",)
    if isinstance(exclude_keys, str | int):
        return (exclude_keys,)
    return tuple(int(e) if isinstance(e, int | Tensor) else str(e) for e in exclude_keys)  # type: ignore[attr-defined]
