"""Positional / symbolic scores of attention heads (``docs/method.md``, section 4).

For a query at position ``n`` the movable keys before it are tiled by blocks
(:mod:`rope_behavior.swap_geometry`: exclusions, ``align``, which swaps). A swap
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

Modes: ``"keys"`` (:mod:`rope_behavior.swap_keys`; one forward, the model's own hooks on
its keys reproduced or refused) and ``"tokens"`` (:mod:`rope_behavior.swap_tokens`; swap
input tokens and re-run the model with whatever hooks are installed).
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from rope_behavior.adapters import adapter_for
from rope_behavior.capture import _validate_mask, stream_layers, validate_tokens
from rope_behavior.errors import RopeBehaviorError, check_indices, validates_inputs
from rope_behavior.head_scores import (
    HeadScores,
    ScoreSummary,
    SwapScores,
    _check_pos_int,
    _check_tau,
    block_swap_scores,
)
from rope_behavior.spec import RopeSpec
from rope_behavior.swap_geometry import AUTO_ALL_PAIRS, excluded_keys, geometry
from rope_behavior.swap_keys import key_chains, keys_layer
from rope_behavior.swap_rows import Finite, Out
from rope_behavior.swap_tokens import tokens_mode

__all__ = ["HeadScores", "ScoreSummary", "SwapScores", "block_swap_scores", "score_heads"]

_MODES = ("keys", "tokens")


def _fraction(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise RopeBehaviorError(f"{what}={value!r}; expected a number in [0, 1]")
    return float(value)


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
    generator: torch.Generator | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    identifiability_threshold: float = 0.01,
    min_swapped_mass: float = 0.05,
    batch_size: int | None = None,
) -> HeadScores:
    """Positional / symbolic scores (s_pos, s_sym) of every head of ``layers``, per prompt.

    Args:
        model: a TransformerBridge or a rope_behavior toy model (scored in eval mode:
            a model in training mode is switched to eval for the call and back after).
        tokens: ``[prompt, pos]`` token ids (one prompt per row).
        mode: ``"keys"`` (permute unrotated keys inside each layer, re-rotate at the
            destination; one forward) or ``"tokens"`` (swap input token blocks, re-run).
        block_size: keys per block.
        align: ``"end"`` (blocks tile back from the query: the nearest keys are always
            scored) or ``"start"`` (blocks tile from the first movable key).
        swaps: explicit block-index pairs ``(a, c)``; n_swaps: otherwise ``"auto"`` (every
            block pair when there are at most 64, else 64 drawn), an int (that many drawn
            with ``generator``, default seeded 0) or ``None`` (every pair).
        tau: temperature of the swap weights ``softmax(|d_a - d_c| / tau)``.
        query_positions: ``"last"`` (default), ``"all"`` (every position at which at least
            one swap exists in every prompt), an int, or a sequence of ints.
        exclude_keys: keys left out of the row (renormalised over the others; padding is
            always excluded; blocks never straddle an excluded key): ``"auto"`` (default:
            every key holding the BOS token when the model's tokenizer prepends one),
            ``"bos"``, ``"none"``, key positions, or positions mixed with ``"bos"``.
        per_pair: score each single-pair projection head (logits = that pair's
            contribution alone, no soft-cap) instead of the whole head.
        identifiability_threshold, min_swapped_mass: a row is identifiable when its
            separation and its swapped mass reach them (module docstring).
        batch_size: sequences per forward in tokens mode. Default: as many as fit the
            device's budget (``ModelAdapter.sequences_per_forward``).

    Returns:
        :class:`HeadScores` (axis order in its docstring); ``.mean()`` summarises over
        prompts with bootstrap intervals over prompts and swaps.
    """
    if mode not in _MODES:
        raise RopeBehaviorError(f"mode={mode!r}; options: {', '.join(map(repr, _MODES))}")
    adapter = adapter_for(model)
    with _eval_mode(adapter.model):
        return _score_heads(
            adapter,
            tokens,
            mode,
            block_size,
            align,
            swaps,
            n_swaps,
            tau,
            query_positions,
            exclude_keys,
            per_pair,
            layers,
            generator,
            attention_mask,
            identifiability_threshold,
            min_swapped_mass,
            batch_size,
        )


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Score the model in eval mode (dropout off: a score is a property of the weights),
    putting every module's training flag back afterwards, also on error."""
    flags = [(m, m.training) for m in model.modules()] if hasattr(model, "modules") else []
    if not any(t for _, t in flags):
        yield
        return
    model.eval()
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t


def _score_heads(
    adapter: Any,
    tokens: Any,
    mode: str,
    block_size: Any,
    align: Any,
    swaps: Any,
    n_swaps: Any,
    tau: Any,
    query_positions: Any,
    exclude_keys: Any,
    per_pair: Any,
    layers: Any,
    generator: Any,
    attention_mask: Any,
    identifiability_threshold: Any,
    min_swapped_mass: Any,
    batch_size: Any,
) -> HeadScores:
    spec = RopeSpec.from_model(adapter.model)
    tokens = validate_tokens(tokens, adapter)
    mask = _validate_mask(attention_mask, tokens)
    block_size = _check_pos_int(block_size, "block_size")
    tau = _check_tau(tau)
    thr = _fraction(identifiability_threshold, "identifiability_threshold")
    min_mass = _fraction(min_swapped_mass, "min_swapped_mass")
    batch_size = (
        adapter.sequences_per_forward(tokens.shape[1], tokens.shape[0])
        if batch_size is None
        else _check_pos_int(batch_size, "batch_size")
    )
    if not isinstance(per_pair, bool):
        raise RopeBehaviorError(f"per_pair={per_pair!r}; expected True or False")
    if isinstance(n_swaps, str) and n_swaps != "auto":
        raise RopeBehaviorError(
            f"n_swaps={n_swaps!r}; options: 'auto' (all pairs up to {AUTO_ALL_PAIRS}), an int, None"
        )
    chosen = check_indices(layers, spec.n_layers, "layer", f"{spec.n_layers} layers")
    excluded = excluded_keys(tokens, exclude_keys, adapter.prepended_bos_id())
    geo = geometry(
        tokens, mask, excluded, block_size, query_positions, swaps, n_swaps, generator, align
    )
    projs: list[int | None] = list(range(spec.n_pairs)) if per_pair else [None]
    out = Out(
        tokens.shape[0],
        len(chosen),
        spec.n_heads,
        geo.qpos.shape[1],
        len(projs),
        geo.swaps.shape[0],
    )
    finite = Finite()
    if mode == "keys":
        li_of = {layer: i for i, layer in enumerate(chosen)}
        chains = key_chains(adapter, spec, chosen)
        stream_layers(
            adapter.model,
            tokens,
            lambda lq: keys_layer(
                lq, li_of[lq.layer], geo, spec, projs, tau, out, finite, chains.get(lq.layer)
            ),
            layers=chosen,
            attention_mask=mask,
            spec=spec,
            raw_keys=bool(chains),
        )
    else:
        tokens_mode(
            adapter.model, tokens, mask, geo, spec, chosen, projs, tau, out, batch_size, finite
        )
    finite.raise_if_any()
    t = out.t
    squeeze = [d for d, drop in ((4, not per_pair), (3, not geo.has_query_axis)) if drop]
    for k in t:
        for d in squeeze:
            t[k] = t[k].squeeze(d)
    identifiable = (t["separation"] >= thr) & (t["swapped_mass"] >= min_mass)
    return HeadScores(
        mode=mode,
        layers=chosen,
        heads=spec.n_heads,
        query_positions=tuple(geo.qpos.max(0).values.tolist()),
        query_pos=geo.qpos.cpu(),
        has_query_axis=geo.has_query_axis,
        per_pair=per_pair,
        swaps=tuple((int(a), int(c)) for a, c in geo.swaps.tolist()),
        n_block_pairs=geo.n_block_pairs,
        block_size=block_size,
        align=geo.align,
        tau=tau,
        exclude_keys=_describe(exclude_keys),
        excluded=geo.excluded.cpu(),
        identifiability_threshold=thr,
        min_swapped_mass=min_mass,
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
