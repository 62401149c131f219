"""Exact per-pair decomposition of attention logits, and frequency usage of heads.

For rotated query ``q~_i`` and key ``k~_j`` of a head::

    score_ij = ( sum_p <q~_i^p, k~_j^p> + <q_i^pass, k_j^pass> ) / attn_scale

``pair_logits`` returns the terms ``c^p_ij`` (``per_pair``) and the pass-through part; their
sum equals the model's ``hook_attn_scores`` on attended entries (after the model's
soft-cap, where it has one: see :meth:`PairLogits.scores`). Computation is in float32 (or
float64 for float64 models) whatever the model's dtype.

On a model split over devices, :class:`PairLogits` are on the device of their layer and
:class:`FrequencyUsage` on the device of the captured tokens (per-layer results are
gathered there).
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import einsum
from jaxtyping import Bool, Float
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, check_indices, validates_inputs
from rope_behavior.model.spec import RopeSpec
from rope_behavior.qk.captured import Captured
from rope_behavior.rope.pairs import split_pairs

__all__ = ["PairLogits", "logit_terms", "pair_logits", "pattern", "scores"]


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _token_mask(captured: Captured) -> Bool[Tensor, "batch pos"]:
    """Positions the model attends from / to (all, or the attention mask's ones)."""
    if captured.attention_mask is not None:
        return captured.attention_mask.bool()
    return torch.ones(captured.tokens.shape, dtype=torch.bool, device=captured.tokens.device)


def _check_finite(
    x: Tensor,
    valid: Tensor | None,
    layer: int,
    site: str,
    head_kind: str,
    heads: tuple[int, ...],
) -> None:
    """Raise where ``x`` (``[batch, pos, ..., head]`` after ``movedim`` for logits, or
    ``[batch, pos, head, d]``) holds NaN / inf at an attended place (``valid``)."""
    if bool(torch.isfinite(x.sum())):  # one reduction: a NaN / inf anywhere makes it non-finite
        return  # (a finite tensor whose sum overflows takes the full check below)
    bad = ~torch.isfinite(x)
    if valid is not None:
        bad = bad & valid
    if not bool(bad.any()):
        return
    first = [int(i) for i in bad.nonzero()[0]]
    kind = "NaN" if bool(torch.isnan(x[tuple(first)])) else "inf"
    if site == "logits":  # [batch, dest, src, (pair,) head]
        where = f"prompt {first[0]}, query {first[1]}, key {first[2]}"
        head = heads[first[-1]]
    else:  # [batch, pos, head, d]
        where = f"prompt {first[0]}, position {first[1]}"
        head = heads[first[2]]
    raise RopeBehaviorError(
        f"non-finite values ({kind}) at layer {layer} in the {site}: first at {head_kind} "
        f"{head} ({where}); per-pair logits of non-finite {site} are meaningless. Expected "
        "finite rotated queries and keys: check the model weights, its dtype (fp16 overflow? "
        "try float32) and any hook that edited this layer"
    )


@dataclass(frozen=True, eq=False)
class PairLogits:
    """Per-pair logit contributions of some heads of one layer.

    ``per_pair[b, h, i, j, p]`` is pair ``p``'s contribution to head ``heads[h]``'s logit of
    query ``i`` on key ``j``, already divided by the attention scale; ``passthrough`` is the
    unrotated dims' part (zeros for full rotary). Entries the model does not attend
    (``~mask``: future keys, padding) are 0. All tensors are on the device of the layer's
    captured queries.
    """

    layer: int
    heads: tuple[int, ...]
    per_pair: Float[Tensor, "batch head dest src pair"] = field(repr=False)
    passthrough: Float[Tensor, "batch head dest src"] = field(repr=False)
    mask: Bool[Tensor, "batch dest src"] = field(repr=False)
    attn_scale: float
    logit_softcap: float | None

    def logits(self) -> Float[Tensor, "batch head dest src"]:
        """``per_pair.sum(-1) + passthrough``: the logits before any soft-cap."""
        return self.per_pair.sum(-1) + self.passthrough

    def scores(self) -> Float[Tensor, "batch head dest src"]:
        """The model's attention scores: soft-capped logits, ``-inf`` where not attended."""
        return scores(self.logits(), self.mask, self.logit_softcap)

    def pattern(self) -> Float[Tensor, "batch head dest src"]:
        """The attention pattern ``softmax(scores)`` over attended keys."""
        return pattern(self.logits(), self.mask, self.logit_softcap)

    def __repr__(self) -> str:
        b, _h, n, _, p = self.per_pair.shape
        return f"PairLogits(layer={self.layer}, heads={list(self.heads)}, batch={b}, pos={n}, pairs={p})"


def _pairs_and_pass(
    x: Tensor, rotary_dim: int, layout: Any
) -> tuple[Float[Tensor, "*shape pair 2"], Float[Tensor, "*shape rest"]]:
    return split_pairs(x[..., :rotary_dim], layout), x[..., rotary_dim:]


def logit_terms(
    rq: Float[Tensor, "batch pos head d_head"],
    rk: Float[Tensor, "batch pos kv_head d_head"],
    spec: RopeSpec,
    layer: int,
    heads: tuple[int, ...],
    mask: Bool[Tensor, "batch dest src"],
) -> tuple[Float[Tensor, "batch chosen dest src pair"], Float[Tensor, "batch chosen dest src"]]:
    """Per-pair terms and the pass-through part of the logits of query ``heads`` (the
    ``chosen`` axis follows their order) (keys
    through each head's KV head), divided by the attention scale, in float32 (float64 for
    float64 models), 0 where ``mask`` is False."""
    kv = [spec.kv_map[h] for h in heads]
    dtype = _compute_dtype(rq)
    q, k = rq[:, :, list(heads)].to(dtype), rk[:, :, kv].to(dtype)
    qp, q_pass = _pairs_and_pass(q, spec.rotary_dim, spec.pair_layout)
    kp, k_pass = _pairs_and_pass(k, spec.rotary_dim, spec.pair_layout)
    scale = spec.attn_scales[layer]
    per_pair = einsum(qp, kp, "b i h p t, b j h p t -> b h i j p") / scale
    if q_pass.shape[-1]:
        passthrough = einsum(q_pass, k_pass, "b i h d, b j h d -> b h i j") / scale
    else:
        passthrough = per_pair.new_zeros(per_pair.shape[:-1])
    per_pair = torch.where(mask[:, None, :, :, None], per_pair, 0.0)
    passthrough = torch.where(mask[:, None], passthrough, 0.0)
    return per_pair, passthrough


def pattern(
    logits: Float[Tensor, "batch head dest src"],
    mask: Bool[Tensor, "batch dest src"],
    logit_softcap: float | None,
) -> Float[Tensor, "batch head dest src"]:
    """The attention pattern of ``logits``: soft-capped where the model caps, softmax over
    the attended keys (NaN in rows with no attended key)."""
    return torch.softmax(scores(logits, mask, logit_softcap), dim=-1)


def scores(
    logits: Float[Tensor, "batch head dest src"],
    mask: Bool[Tensor, "batch dest src"],
    logit_softcap: float | None,
) -> Float[Tensor, "batch head dest src"]:
    """The model's attention scores: soft-capped logits, ``-inf`` where not attended."""
    if logit_softcap is not None:
        logits = logit_softcap * torch.tanh(logits / logit_softcap)
    return logits.masked_fill(~mask[:, None], float("-inf"))


@validates_inputs
def pair_logits(
    captured: Captured,
    layer: int,
    *,
    heads: int | Iterable[int] | None = None,
) -> PairLogits:
    """Decompose the attention logits of ``heads`` (default: all) at ``layer`` into pairs."""
    captured = Captured.check(captured, "pair_logits")
    layer = captured.check_layer(layer)
    spec = captured.spec
    chosen = check_indices(heads, spec.n_heads, "head", f"{spec.n_heads} query heads")
    kv = tuple(spec.kv_map[h] for h in chosen)
    rq, rk = captured.rot_q[layer], captured.rot_k[layer]
    tokens = _token_mask(captured).to(rq.device)[:, :, None, None]
    _check_finite(rq[:, :, list(chosen)], tokens, layer, "queries", "query head", chosen)
    _check_finite(rk[:, :, list(kv)], tokens, layer, "keys", "KV head", kv)
    mask = captured.key_mask(layer, device=rq.device)
    per_pair, passthrough = logit_terms(rq, rk, spec, layer, chosen, mask)
    _check_finite(per_pair.movedim(1, -1), None, layer, "logits", "query head", chosen)
    _check_finite(passthrough.movedim(1, -1), None, layer, "logits", "query head", chosen)
    return PairLogits(
        layer=layer,
        heads=chosen,
        per_pair=per_pair,
        passthrough=passthrough,
        mask=mask,
        attn_scale=spec.attn_scales[layer],
        logit_softcap=spec.logit_softcaps[layer],
    )
