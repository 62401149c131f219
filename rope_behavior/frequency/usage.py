"""Frequency usage of heads: how much each head uses each RoPE pair, by the per-pair norms
of its rotated queries and keys and by the mean size of its per-pair logit terms
(:mod:`rope_behavior.frequency.decomposition`).

On a model split over devices, :class:`FrequencyUsage` is on the device of the captured
tokens (per-layer results are gathered there).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from rope_behavior import display
from rope_behavior.errors import RopeBehaviorError, as_flag, check_indices, validates_inputs
from rope_behavior.frequency.decomposition import (
    _check_finite,
)
from rope_behavior.frequency.usage_terms import layer_logit_abs, layer_pair_norms
from rope_behavior.model.devices import stack_on
from rope_behavior.model.spec import RopeSpec, turns_over
from rope_behavior.qk.captured import Captured, attended_entries

__all__ = ["FrequencyUsage", "UsageAccumulator", "frequency_usage"]


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

    def to_frame(self, context: int | None = None) -> Any:
        """Tidy DataFrame: one row per (layer, head, pair). Given ``context`` (tokens per
        prompt), also ``turns``, the turns each pair's angle makes over it, and ``slow``,
        whether that is under one (:meth:`~rope_behavior.RopeSpec.slow_pairs`)."""
        import pandas as pd

        n_l, n_h, n_p = self.logit_usage.shape
        idx = torch.cartesian_prod(torch.arange(n_l), torch.arange(n_h), torch.arange(n_p))
        li, hi, pi = idx.unbind(-1)

        def col(t: Tensor) -> Any:
            return t.detach().cpu().double().reshape(-1).numpy()

        frame = pd.DataFrame(
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
        if context is not None:
            turns = turns_over(self.omega.double().cpu(), context)[li, pi]
            frame["turns"], frame["slow"] = turns.numpy(), (turns < 1).numpy()
        return frame

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

    def __repr__(self) -> str:
        return display.text(self)

    def _repr_html_(self) -> str:
        return display.html(self)


def _normalise(x: Tensor) -> Tensor:
    total = x.sum(-1, keepdim=True)
    return torch.where(total > 0, x / total.clamp_min(torch.finfo(x.dtype).tiny), 1.0 / x.shape[-1])


class UsageAccumulator:
    """Frequency usage built layer by layer from the queries and keys of one forward
    (:class:`~rope_behavior.qk.captured.LayerQK` as :func:`~rope_behavior.stream_layers`
    hands them over, or a :class:`Captured`'s layers), so usage can be measured on the same
    forward as the scores. ``result()`` gathers the layers on the tokens' device."""

    def __init__(
        self,
        spec: RopeSpec,
        attention_mask: Tensor | None,
        shape: tuple[int, int],
        device: torch.device,
        attention_weighted: bool = False,
        compiled: bool = False,
    ) -> None:
        self.spec, self.attention_weighted = spec, attention_weighted
        self.compiled = compiled
        self.attention_mask, self.shape, self.device = attention_mask, shape, device
        self.token_mask = (
            attention_mask.bool().to(device)
            if attention_mask is not None
            else torch.ones(shape, dtype=torch.bool, device=device)
        )
        self.n_tok = self.token_mask.sum().clamp_min(1)
        self.parts: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def add(self, layer: int, rq: Tensor, rk: Tensor) -> None:
        """Measure ``layer`` from its rotated queries ``[batch, pos, head, d_head]`` and keys
        ``[batch, pos, kv_head, d_head]`` (on the layer's device)."""
        spec = self.spec
        dev = rq.device  # the layer's device
        tokens = self.token_mask.to(dev)
        _check_finite(rq, tokens[:, :, None, None], layer, "queries", "query head",
                      tuple(range(spec.n_heads)))  # fmt: skip
        _check_finite(rk, tokens[:, :, None, None], layer, "keys", "KV head",
                      tuple(range(spec.n_kv_heads)))  # fmt: skip
        q_norm, k_norm = layer_pair_norms(rq, rk, tokens, spec.rotary_dim, spec.pair_layout)
        batch, n_pos = self.shape
        mask = attended_entries(spec, layer, self.attention_mask, batch, n_pos, dev)
        la, lw = layer_logit_abs(
            rq, rk, mask, spec.kv_map, spec.rotary_dim, spec.pair_layout,
            spec.attn_scales[layer], self.attention_weighted, spec.logit_softcaps[layer],
            compiled=self.compiled,
        )  # fmt: skip
        self.parts[layer] = (q_norm, k_norm[list(spec.kv_map)], la, lw)

    def result(self) -> "FrequencyUsage":
        layers = tuple(sorted(self.parts))
        if not layers:
            raise RopeBehaviorError("no layer was measured")
        cols = [stack_on([self.parts[layer][i] for layer in layers], self.device) for i in range(4)]
        q_norm, k_norm, logit_abs, weight = cols
        if not bool(torch.isfinite(logit_abs).all()):
            raise RopeBehaviorError(
                "non-finite attention logits (NaN/inf) in the captured layers; check the model "
                "weights / dtype (fp16 overflow?) before measuring usage"
            )
        return _usage(
            layers,
            self.attention_weighted,
            q_norm,
            k_norm,
            logit_abs,
            self.spec.omega[list(layers)],
            self.n_tok.double(),
            weight.double(),
        )


@validates_inputs
def frequency_usage(
    captured: Captured,
    *,
    layers: int | Iterable[int] | None = None,
    attention_weighted: bool = False,
    compiled: bool = False,
) -> FrequencyUsage:
    """Norm usage, logit usage and frequency centroid of every head of ``layers``.

    Each layer is measured on its own device; the results are on the device of
    ``captured.tokens``. ``compiled=True`` sums the per-pair terms with a kernel built by
    ``torch.compile`` (:mod:`~rope_behavior.frequency.usage_kernel`): the same numbers to
    float32 rounding, several times faster once compiled; the first call compiles (seconds).
    """
    captured = Captured.check(captured, "frequency_usage")
    spec = captured.spec
    chosen = (
        captured.layers
        if layers is None
        else tuple(
            captured.check_layer(layer) for layer in check_indices(layers, spec.n_layers, "layer")
        )
    )
    as_flag(attention_weighted, "attention_weighted")
    as_flag(compiled, "compiled")
    acc = UsageAccumulator(
        spec,
        captured.attention_mask,
        (captured.batch_size, captured.n_pos),
        captured.tokens.device,
        attention_weighted,
        compiled,
    )
    for layer in chosen:
        acc.add(layer, captured.rot_q[layer], captured.rot_k[layer])
    return acc.result()


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
