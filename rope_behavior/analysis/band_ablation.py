"""NoPE below the high-norm band (docs/method.md §9): the model's loss on held-out text
with the pairs below each head's high-norm band made non-rotating.

The edit is :class:`~rope_behavior.interventions.values.AngleOverride` with ``omega=0`` on
the queries and keys of those pairs (``target="qk"``), compiled and installed for one
scoped forward by :func:`~rope_behavior.interventions.compile.run_with_interventions`. A
key is shared by the query heads of its KV group (grouped-query attention), so a group's
keys can only lose their rotation on pairs below the band of *every* head of the group:
the edit takes the intersection (a head without a band blocks its group's edit). ``nope``
says which pairs of which heads were edited.
"""

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, validates_inputs
from rope_behavior.frequency.norm_bands import NormBands
from rope_behavior.interventions.compile import run_with_interventions
from rope_behavior.interventions.values import AngleOverride
from rope_behavior.model.context import resolve
from rope_behavior.model.spec import RopeSpec
from rope_behavior.qk.captured import validate_tokens

__all__ = ["BandAblation", "band_values", "nope_below_band"]


@dataclass(frozen=True, eq=False)
class BandAblation:
    """Next-token loss (mean cross-entropy over the predicted real tokens, nats) before and
    after making the pairs below each head's high-norm band non-rotating.

    ``nope`` ``[layer_index, head, pair]`` (over ``layers``): the pairs edited;
    ``interventions``: the values installed; ``n_predictions``: the predictions averaged.
    """

    layers: tuple[int, ...]
    loss_before: float
    loss_after: float
    n_predictions: int
    nope: Bool[Tensor, "layer head pair"] = field(repr=False)
    interventions: tuple[AngleOverride, ...] = field(repr=False)

    @property
    def delta(self) -> float:
        """``loss_after - loss_before``."""
        return self.loss_after - self.loss_before

    def to_frame(self) -> Any:
        """Tidy DataFrame: one row per (layer, head) with the number of pairs made NoPE
        and the lowest-index one (missing where none)."""
        import pandas as pd

        rows = []
        for i, layer in enumerate(self.layers):
            for h in range(self.nope.shape[1]):
                pairs = torch.nonzero(self.nope[i, h]).flatten().tolist()
                rows.append(
                    {
                        "layer": layer,
                        "head": h,
                        "n_nope": len(pairs),
                        "first_nope_pair": pairs[0] if pairs else pd.NA,
                    }
                )
        return pd.DataFrame(rows).astype({"first_nope_pair": "Int64"})

    def __repr__(self) -> str:
        n_l, n_h, n_p = self.nope.shape
        edited = int(self.nope.any(-1).sum())
        return (
            f"BandAblation: NoPE below the high-norm band, {n_l} layers x {n_h} heads\n"
            f"  {edited} heads edited, {int(self.nope.sum())} head pairs of "
            f"{n_l * n_h * n_p}\n"
            f"  loss {self.loss_before:.4f} -> {self.loss_after:.4f} nats "
            f"({self.delta:+.4f}) over {self.n_predictions} predictions"
        )


def _check_bands(bands: object, spec: RopeSpec) -> None:
    if not isinstance(bands, NormBands):
        raise RopeBehaviorError(
            f"bands={type(bands).__name__}; expected the NormBands high_norm_bands returns"
        )
    _, n_h, n_p = bands.in_band.shape
    layers_ok = all(0 <= la < spec.n_layers for la in bands.layers)
    if (
        n_h != spec.n_heads
        or n_p != spec.n_pairs
        or not layers_ok
        or not torch.allclose(
            bands.omega.cpu(), spec.omega[list(bands.layers)], rtol=1e-6, atol=0.0
        )
    ):
        raise RopeBehaviorError(
            f"bands of layers {list(bands.layers)}, {n_h} heads x {n_p} pairs were not "
            f"measured on this model ({spec.architecture}: {spec.n_layers} layers, "
            f"{spec.n_heads} heads, {spec.n_pairs} pairs, its own omega); measure them on it"
        )


def _values(bands: NormBands, spec: RopeSpec) -> tuple[tuple[AngleOverride, ...], Tensor]:
    """The AngleOverride values and the ``[layer_index, head, pair]`` mask they edit."""
    below = bands.below.cpu()
    nope = torch.zeros_like(below)
    values = []
    for i, layer in enumerate(bands.layers):
        for g in range(spec.n_kv_heads):
            heads = spec.query_heads_of(g)
            common = below[i, list(heads)].all(0)
            if bool(common.any()):
                pairs = tuple(torch.nonzero(common).flatten().tolist())
                values.append(
                    AngleOverride(layer=layer, heads=heads, pairs=pairs, omega=0.0, target="qk")
                )
                nope[i, list(heads)] = common
    return tuple(values), nope


def band_values(bands: NormBands, model: Any) -> tuple[AngleOverride, ...]:
    """The AngleOverride values :func:`nope_below_band` installs for ``bands`` (measured on
    ``model``, a model or its resolved context): per KV group, omega 0 on the pairs below
    the band of every head of the group."""
    spec = resolve(model).spec
    _check_bands(bands, spec)
    return _values(bands, spec)[0]


def _loss(logits: Tensor, tokens: Tensor, mask: Tensor) -> tuple[float, int]:
    """Mean next-token cross-entropy over predictions from a real token of a real token."""
    valid = (mask[:, 1:] & mask[:, :-1]).reshape(-1).to(logits.device)
    pred = logits[:, :-1].double().reshape(-1, logits.shape[-1])[valid]
    target = tokens[:, 1:].reshape(-1).to(logits.device)[valid]
    return float(torch.nn.functional.cross_entropy(pred, target)), int(valid.sum())


@validates_inputs
def nope_below_band(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    bands: NormBands,
    *,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> BandAblation:
    """The model's next-token loss on ``tokens`` before and after making the pairs below
    each head's high-norm band non-rotating (docs/method.md §9).

    Args:
        model: a TransformerBridge, a HookedTransformer, a toy model or a resolved context.
        tokens: integer ids ``[batch, pos]`` of held-out text.
        bands: the :class:`~rope_behavior.frequency.norm_bands.NormBands` of this model
            (:func:`~rope_behavior.frequency.norm_bands.high_norm_bands`).
        attention_mask: ``[batch, pos]`` 0/1 (0: padding, left out of the loss), or None.
    """
    context = resolve(model)
    spec = context.spec
    _check_bands(bands, spec)
    tokens = validate_tokens(tokens, context.adapter, min_len=2)
    if attention_mask is not None and (
        not isinstance(attention_mask, Tensor) or attention_mask.shape != tokens.shape
    ):
        raise RopeBehaviorError(
            f"attention_mask must be a [batch, pos] tensor like tokens {tuple(tokens.shape)}"
        )
    mask = (
        torch.ones_like(tokens, dtype=torch.bool)
        if attention_mask is None
        else attention_mask.bool().to(tokens.device)
    )
    values, nope = _values(bands, spec)
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    with torch.no_grad():
        before, n = _loss(run_with_interventions(context, tokens, [], **kwargs), tokens, mask)
        after, _ = _loss(run_with_interventions(context, tokens, values, **kwargs), tokens, mask)
    if n == 0:
        raise RopeBehaviorError("no prediction of a real token from a real token in tokens")
    return BandAblation(
        layers=bands.layers,
        loss_before=before,
        loss_after=after,
        n_predictions=n,
        nope=nope,
        interventions=values,
    )
