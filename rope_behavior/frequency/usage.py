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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import einsum
from jaxtyping import Bool, Float
from torch import Tensor

from rope_behavior.capture import Captured
from rope_behavior.devices import stack_on
from rope_behavior.errors import RopeBehaviorError, check_indices
from rope_behavior.pairs import split_pairs

__all__ = ["FrequencyUsage", "PairLogits", "frequency_usage", "pair_logits"]


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
    kv = [spec.kv_map[h] for h in chosen]
    rq = captured.rot_q[layer][:, :, list(chosen)]
    rk = captured.rot_k[layer][:, :, kv]
    dtype = _compute_dtype(rq)
    rq, rk = rq.to(dtype), rk.to(dtype)
    tokens = _token_mask(captured).to(rq.device)[:, :, None, None]
    _check_finite(rq, tokens, layer, "queries", "query head", chosen)
    _check_finite(rk, tokens, layer, "keys", "KV head", tuple(kv))
    qp, q_pass = _pairs_and_pass(rq, spec.rotary_dim, spec.pair_layout)
    kp, k_pass = _pairs_and_pass(rk, spec.rotary_dim, spec.pair_layout)
    scale = spec.attn_scales[layer]
    per_pair = einsum(qp, kp, "b i h p t, b j h p t -> b h i j p") / scale
    if q_pass.shape[-1]:
        passthrough = einsum(q_pass, k_pass, "b i h d, b j h d -> b h i j") / scale
    else:
        passthrough = per_pair.new_zeros(per_pair.shape[:-1])
    mask = captured.key_mask(layer, device=per_pair.device)
    per_pair = torch.where(mask[:, None, :, :, None], per_pair, 0.0)
    passthrough = torch.where(mask[:, None], passthrough, 0.0)
    _check_finite(per_pair.movedim(1, -1), None, layer, "logits", "query head", chosen)
    _check_finite(passthrough.movedim(1, -1), None, layer, "logits", "query head", chosen)
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
    """How much each head uses each RoPE pair, three ways.

    All tensors are indexed ``[layer_index, head, pair]`` where ``layer_index`` runs over
    ``layers``. ``q_norm`` / ``k_norm``: mean per-pair norm of rotated queries / keys over
    attended positions (keys through the query head's KV head); ``norm_usage``: their
    product normalised over pairs; ``logit_abs``: mean ``|c^p_ij|`` over attended entries
    (attention-weighted when ``attention_weighted``); ``logit_usage``: that normalised over
    pairs; ``centroid``: the logit-usage-weighted mean pair index, ``centroid_log_omega``
    the same weights over ``log(omega)`` (``[layer_index, head]``).

    ``centroid_log_omega`` is NaN for a head that puts usage on a pair without a positive
    ``omega`` (``omega = 0``: the pair does not rotate, as every pair of a NoPE layer,
    ``spec.omega_source[layer] == "nope"``): ``log(0) = -inf``, so the mean log-frequency
    has no value there. ``centroid`` stays
    defined (a pair index), but on such layers it is not a frequency.
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
    n_tokens: Float[Tensor, ""] = field(default_factory=lambda: torch.tensor(0.0), repr=False)
    logit_weight: Float[Tensor, "layer head"] = field(
        default_factory=lambda: torch.zeros(0, 0), repr=False
    )

    @classmethod
    def merge(cls, parts: "Sequence[FrequencyUsage]") -> "FrequencyUsage":
        """The usage of the union of the batches ``parts`` were measured on (exact: the
        means are re-weighted by the tokens and attended entries each part averaged over,
        then normalised and centred again)."""
        parts = list(parts)
        if not parts:
            raise RopeBehaviorError("FrequencyUsage.merge needs at least one part")
        first = parts[0]
        for p in parts[1:]:
            if p.layers != first.layers or p.attention_weighted != first.attention_weighted:
                raise RopeBehaviorError(
                    "FrequencyUsage.merge: parts measure different layers or weightings "
                    f"({p.layers}, attention_weighted={p.attention_weighted} vs "
                    f"{first.layers}, {first.attention_weighted})"
                )
        n = torch.stack([p.n_tokens.double() for p in parts])  # [k]
        w = torch.stack([p.logit_weight.double() for p in parts])  # [k, layer, head]
        q = (torch.stack([p.q_norm.double() for p in parts]) * n[:, None, None, None]).sum(0)
        k = (torch.stack([p.k_norm.double() for p in parts]) * n[:, None, None, None]).sum(0)
        la = (torch.stack([p.logit_abs.double() for p in parts]) * w[..., None]).sum(0)
        return _usage(
            first.layers,
            first.attention_weighted,
            q / n.sum().clamp_min(1),
            k / n.sum().clamp_min(1),
            la / w.sum(0).clamp_min(1e-30)[..., None],
            first.omega,
            n.sum(),
            w.sum(0),
        )

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
    Each layer is measured on its own device; the results are on the device of
    ``captured.tokens``.
    """
    spec = captured.spec
    chosen = (
        captured.layers
        if layers is None
        else tuple(
            captured.check_layer(layer) for layer in check_indices(layers, spec.n_layers, "layer")
        )
    )
    token_mask = _token_mask(captured)
    n_tok = token_mask.sum().clamp_min(1)
    qn, kn, la, lw = [], [], [], []
    for layer in chosen:
        rq = captured.rot_q[layer]
        rk = captured.rot_k[layer]
        dtype, dev = _compute_dtype(rq), rq.device  # the layer's device
        qp = split_pairs(rq[..., : spec.rotary_dim].to(dtype), spec.pair_layout)
        kp = split_pairs(rk[..., : spec.rotary_dim].to(dtype), spec.pair_layout)
        w = token_mask[:, :, None, None].to(dev, dtype)
        n_tok_l = n_tok.to(dev)
        q_norm = (qp.norm(dim=-1) * w).sum((0, 1)) / n_tok_l  # [head, pair]
        k_norm = (kp.norm(dim=-1) * w).sum((0, 1)) / n_tok_l  # [kv_head, pair]
        qn.append(q_norm)
        kn.append(k_norm[list(spec.kv_map)])
        per_head, weight = [], []
        mask = captured.key_mask(layer, device=dev)
        for h in range(spec.n_heads):
            pl = pair_logits(captured, layer, heads=h)
            c = pl.per_pair[:, 0].abs()  # [batch, dest, src, pair]
            if attention_weighted:
                weights = pl.pattern()[:, 0]
                weights = torch.where(mask, weights, 0.0)
                per_head.append(
                    (c * weights[..., None]).sum((0, 1, 2)) / weights.sum().clamp_min(1e-30)
                )
                weight.append(weights.sum())
            else:
                per_head.append(c.sum((0, 1, 2)) / mask.sum().clamp_min(1))
                weight.append(mask.sum().to(c.dtype))
        la.append(torch.stack(per_head))
        lw.append(torch.stack(weight))
    # per-layer results (each on its layer's device) gathered on the tokens' device
    out_dev = token_mask.device
    q_norm_t, k_norm_t = stack_on(qn, out_dev), stack_on(kn, out_dev)
    logit_abs = stack_on(la, out_dev)
    if not bool(torch.isfinite(logit_abs).all()):
        raise RopeBehaviorError(
            "non-finite attention logits (NaN/inf) in the captured layers; check the model "
            "weights / dtype (fp16 overflow?) before measuring usage"
        )
    return _usage(
        chosen,
        attention_weighted,
        q_norm_t,
        k_norm_t,
        logit_abs,
        spec.omega[list(chosen)],
        n_tok.double(),
        stack_on(lw, out_dev).double(),
    )


def _usage(
    layers: tuple[int, ...],
    attention_weighted: bool,
    q_norm: Tensor,
    k_norm: Tensor,
    logit_abs: Tensor,
    omega_l: Tensor,
    n_tokens: Tensor,
    logit_weight: Tensor,
) -> FrequencyUsage:
    """Normalised usages and centroids from the mean norms and mean |contributions|."""
    logit_usage = _normalise(logit_abs)
    omega = omega_l.to(logit_usage.dtype).to(logit_usage.device)
    pair_idx = torch.arange(omega.shape[-1], dtype=logit_usage.dtype, device=logit_usage.device)
    centroid = (logit_usage * pair_idx).sum(-1)
    rotating = omega > 0  # [layer, pair]; omega = 0: the pair does not rotate (NoPE)
    log_omega = torch.log(torch.where(rotating, omega, 1.0))
    centroid_log_omega = (logit_usage * log_omega[:, None, :]).sum(-1)
    on_still = (logit_usage * (~rotating[:, None, :]).to(logit_usage.dtype)).sum(-1) > 0
    centroid_log_omega = centroid_log_omega.masked_fill(on_still, float("nan"))
    return FrequencyUsage(
        layers=layers,
        attention_weighted=attention_weighted,
        q_norm=q_norm,
        k_norm=k_norm,
        norm_usage=_normalise(q_norm * k_norm),
        logit_abs=logit_abs,
        logit_usage=logit_usage,
        centroid=centroid,
        centroid_log_omega=centroid_log_omega,
        omega=omega_l,
        n_tokens=n_tokens,
        logit_weight=logit_weight,
    )
