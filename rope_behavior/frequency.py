"""Exact per-pair decomposition of attention logits, and frequency usage of heads.

For rotated query ``q~_i`` and key ``k~_j`` of a head::

    score_ij = ( sum_p <q~_i^p, k~_j^p> + <q_i^pass, k_j^pass> ) / attn_scale

``pair_logits`` returns the terms ``c^p_ij`` (``per_pair``) and the pass-through part; their
sum equals the model's ``hook_attn_scores`` on attended entries (after the model's
soft-cap, where it has one: see :meth:`PairLogits.scores`). Computation is in float32 (or
float64 for float64 models) whatever the model's dtype.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import einsum
from jaxtyping import Bool, Float
from torch import Tensor

from rope_behavior.capture import Captured
from rope_behavior.errors import RopeBehaviorError, check_indices
from rope_behavior.pairs import split_pairs

__all__ = ["FrequencyUsage", "PairLogits", "frequency_usage", "pair_logits"]


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@dataclass(frozen=True, eq=False)
class PairLogits:
    """Per-pair logit contributions of some heads of one layer.

    ``per_pair[b, h, i, j, p]`` is pair ``p``'s contribution to head ``heads[h]``'s logit of
    query ``i`` on key ``j``, already divided by the attention scale; ``passthrough`` is the
    unrotated dims' part (zeros for full rotary). Entries the model does not attend
    (``~mask``: future keys, padding) are 0.
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
        x = self.logits()
        if self.logit_softcap is not None:
            x = self.logit_softcap * torch.tanh(x / self.logit_softcap)
        return x.masked_fill(~self.mask[:, None], float("-inf"))

    def pattern(self) -> Float[Tensor, "batch head dest src"]:
        """The attention pattern ``softmax(scores)`` over attended keys."""
        return torch.softmax(self.scores(), dim=-1)

    def __repr__(self) -> str:
        b, _h, n, _, p = self.per_pair.shape
        return f"PairLogits(layer={self.layer}, heads={list(self.heads)}, batch={b}, pos={n}, pairs={p})"


def _pairs_and_pass(
    x: Tensor, rotary_dim: int, layout: Any
) -> tuple[Float[Tensor, "*shape pair 2"], Float[Tensor, "*shape rest"]]:
    return split_pairs(x[..., :rotary_dim], layout), x[..., rotary_dim:]


def pair_logits(
    captured: Captured,
    layer: int,
    *,
    heads: int | Iterable[int] | None = None,
) -> PairLogits:
    """Decompose the attention logits of ``heads`` (default: all) at ``layer`` into pairs."""
    layer = captured.check_layer(layer)
    spec = captured.spec
    chosen = check_indices(heads, spec.n_heads, "head", f"{spec.n_heads} query heads")
    rq = captured.rot_q[layer][:, :, list(chosen)]
    rk = captured.rot_k[layer][:, :, [spec.kv_map[h] for h in chosen]]
    dtype = _compute_dtype(rq)
    rq, rk = rq.to(dtype), rk.to(dtype)
    qp, q_pass = _pairs_and_pass(rq, spec.rotary_dim, spec.pair_layout)
    kp, k_pass = _pairs_and_pass(rk, spec.rotary_dim, spec.pair_layout)
    scale = spec.attn_scales[layer]
    per_pair = einsum(qp, kp, "b i h p t, b j h p t -> b h i j p") / scale
    if q_pass.shape[-1]:
        passthrough = einsum(q_pass, k_pass, "b i h d, b j h d -> b h i j") / scale
    else:
        passthrough = per_pair.new_zeros(per_pair.shape[:-1])
    mask = captured.key_mask(layer)
    per_pair = torch.where(mask[:, None, :, :, None], per_pair, 0.0)
    passthrough = torch.where(mask[:, None], passthrough, 0.0)
    return PairLogits(
        layer=layer,
        heads=chosen,
        per_pair=per_pair,
        passthrough=passthrough,
        mask=mask,
        attn_scale=scale,
        logit_softcap=spec.logit_softcaps[layer],
    )


@dataclass(frozen=True, eq=False)
class FrequencyUsage:
    """How much each head uses each RoPE pair, three ways (METHOD.md §3).

    All tensors are indexed ``[layer_index, head, pair]`` where ``layer_index`` runs over
    ``layers``. ``q_norm`` / ``k_norm``: mean per-pair norm of rotated queries / keys over
    attended positions (keys through the query head's KV head); ``norm_usage``: their
    product normalised over pairs; ``logit_abs``: mean ``|c^p_ij|`` over attended entries
    (attention-weighted when ``attention_weighted``); ``logit_usage``: that normalised over
    pairs; ``centroid``: the logit-usage-weighted mean pair index, ``centroid_omega`` the
    same weights over ``log(omega)`` (``[layer_index, head]``).
    """

    layers: tuple[int, ...]
    attention_weighted: bool
    q_norm: Float[Tensor, "layer head pair"] = field(repr=False)
    k_norm: Float[Tensor, "layer head pair"] = field(repr=False)
    norm_usage: Float[Tensor, "layer head pair"] = field(repr=False)
    logit_abs: Float[Tensor, "layer head pair"] = field(repr=False)
    logit_usage: Float[Tensor, "layer head pair"] = field(repr=False)
    centroid: Float[Tensor, "layer head"] = field(repr=False)
    centroid_log_omega: Float[Tensor, "layer head"] = field(repr=False)
    omega: Float[Tensor, "layer pair"] = field(repr=False)

    def to_frame(self) -> Any:
        """Tidy DataFrame: one row per (layer, head, pair)."""
        import pandas as pd

        n_l, n_h, n_p = self.logit_usage.shape
        idx = torch.cartesian_prod(torch.arange(n_l), torch.arange(n_h), torch.arange(n_p))
        li, hi, pi = idx.unbind(-1)

        def col(t: Tensor) -> Any:
            return t.detach().cpu().double().reshape(-1).numpy()

        return pd.DataFrame(
            {
                "layer": [self.layers[i] for i in li.tolist()],
                "head": hi.numpy(),
                "pair": pi.numpy(),
                "omega": self.omega[li, pi].double().numpy(),
                "q_norm": col(self.q_norm),
                "k_norm": col(self.k_norm),
                "norm_usage": col(self.norm_usage),
                "logit_abs": col(self.logit_abs),
                "logit_usage": col(self.logit_usage),
                "centroid": col(self.centroid[:, :, None].expand(n_l, n_h, n_p)),
            }
        )

    def head_frame(self) -> Any:
        """Tidy DataFrame: one row per (layer, head) with the frequency centroids."""
        import pandas as pd

        rows = [
            {
                "layer": layer,
                "head": h,
                "centroid": float(self.centroid[i, h]),
                "centroid_log_omega": float(self.centroid_log_omega[i, h]),
            }
            for i, layer in enumerate(self.layers)
            for h in range(self.centroid.shape[1])
        ]
        return pd.DataFrame(rows)


def _normalise(x: Tensor) -> Tensor:
    total = x.sum(-1, keepdim=True)
    return torch.where(total > 0, x / total.clamp_min(torch.finfo(x.dtype).tiny), 1.0 / x.shape[-1])


def frequency_usage(
    captured: Captured,
    *,
    layers: int | Iterable[int] | None = None,
    attention_weighted: bool = False,
) -> FrequencyUsage:
    """Norm usage, logit usage and frequency centroid of every head of ``layers``.

    Memory is bounded by one head's ``[batch, dest, src, pair]`` contributions at a time.
    """
    spec = captured.spec
    chosen = (
        captured.layers
        if layers is None
        else tuple(
            captured.check_layer(layer) for layer in check_indices(layers, spec.n_layers, "layer")
        )
    )
    token_mask = (
        captured.attention_mask.bool()
        if captured.attention_mask is not None
        else torch.ones(captured.tokens.shape, dtype=torch.bool, device=captured.tokens.device)
    )
    n_tok = token_mask.sum().clamp_min(1)
    qn, kn, la = [], [], []
    for layer in chosen:
        rq = captured.rot_q[layer]
        rk = captured.rot_k[layer]
        dtype = _compute_dtype(rq)
        qp = split_pairs(rq[..., : spec.rotary_dim].to(dtype), spec.pair_layout)
        kp = split_pairs(rk[..., : spec.rotary_dim].to(dtype), spec.pair_layout)
        w = token_mask[:, :, None, None].to(dtype)
        q_norm = (qp.norm(dim=-1) * w).sum((0, 1)) / n_tok  # [head, pair]
        k_norm = (kp.norm(dim=-1) * w).sum((0, 1)) / n_tok  # [kv_head, pair]
        qn.append(q_norm)
        kn.append(k_norm[list(spec.kv_map)])
        per_head = []
        mask = captured.key_mask(layer)
        for h in range(spec.n_heads):
            pl = pair_logits(captured, layer, heads=h)
            c = pl.per_pair[:, 0].abs()  # [batch, dest, src, pair]
            if attention_weighted:
                weights = pl.pattern()[:, 0]
                weights = torch.where(mask, weights, 0.0)
                per_head.append(
                    (c * weights[..., None]).sum((0, 1, 2)) / weights.sum().clamp_min(1e-30)
                )
            else:
                per_head.append(c.sum((0, 1, 2)) / mask.sum().clamp_min(1))
        la.append(torch.stack(per_head))
    q_norm_t, k_norm_t, logit_abs = torch.stack(qn), torch.stack(kn), torch.stack(la)
    if not bool(torch.isfinite(logit_abs).all()):
        raise RopeBehaviorError(
            "non-finite attention logits (NaN/inf) in the captured layers; check the model "
            "weights / dtype (fp16 overflow?) before measuring usage"
        )
    logit_usage = _normalise(logit_abs)
    omega = spec.omega[list(chosen)].to(logit_usage.dtype).to(logit_usage.device)
    pair_idx = torch.arange(spec.n_pairs, dtype=logit_usage.dtype, device=logit_usage.device)
    centroid = (logit_usage * pair_idx).sum(-1)
    log_omega = torch.log(omega.clamp_min(1e-30))
    centroid_log_omega = (logit_usage * log_omega[:, None, :]).sum(-1)
    return FrequencyUsage(
        layers=chosen,
        attention_weighted=attention_weighted,
        q_norm=q_norm_t,
        k_norm=k_norm_t,
        norm_usage=_normalise(q_norm_t * k_norm_t),
        logit_abs=logit_abs,
        logit_usage=logit_usage,
        centroid=centroid,
        centroid_log_omega=centroid_log_omega,
        omega=spec.omega[list(chosen)],
    )
