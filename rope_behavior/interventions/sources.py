"""What interventions read: patch sources and reference statistics, in site space.

A *site* is where the compiled hooks edit queries and keys: the host's rotated hooks
(``hook_rot_q`` / ``hook_rot_k``) where they fire, else the pre-rotation hooks (GPT-NeoX,
GPT-J, Phi-3, Falcon, PhiMoE). Source activations are kept in the space of the site, so a
patch replaces exactly what the model would have computed there.
"""

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, as_flag, as_seed
from rope_behavior.model.context import resolve
from rope_behavior.model.spec import RopeSpec
from rope_behavior.qk.captured import Captured, capture
from rope_behavior.rope.pairs import rotate

__all__ = ["ReferenceActivations", "SiteActivations", "fit_reference", "site_activations"]


@dataclass(frozen=True, eq=False)
class SiteActivations:
    """Queries ``[batch, pos, head, d_head]`` and keys ``[batch, pos, kv_head, d_head]`` of
    one layer at its edit sites: rotated (``rotated=True``) or just before rotation."""

    layer: int
    q: Float[Tensor, "batch pos head d_head"] = field(repr=False)
    k: Float[Tensor, "batch pos kv_head d_head"] = field(repr=False)
    rotated: bool

    def __repr__(self) -> str:
        b, n = self.q.shape[:2]
        where = "rotated" if self.rotated else "pre-rotation"
        return f"SiteActivations(layer={self.layer}, batch={b}, pos={n}, {where})"


def _from_captured(cap: Captured, layer: int) -> SiteActivations:
    layer = cap.check_layer(layer)
    rotated = cap.spec.sites[layer].edits_rotated
    q = cap.rot_q[layer] if rotated else cap.q[layer]
    k = cap.rot_k[layer] if rotated else cap.k[layer]
    return SiteActivations(layer=layer, q=q, k=k, rotated=rotated)


def site_activations(
    source: Any, spec: RopeSpec, layer: int, *, model: Any = None
) -> SiteActivations:
    """Site activations of ``layer`` from ``source``: token ids ``[batch, pos]`` (run on
    ``model``), a :class:`~rope_behavior.Captured`, an ``ActivationCache`` / mapping keyed
    by hook name holding the site hooks, or a :class:`SiteActivations`."""
    layer = spec.check_layer(layer)
    if isinstance(source, SiteActivations):
        if source.layer != layer:
            raise RopeBehaviorError(
                f"source activations are of layer {source.layer}; the intervention acts on layer {layer}"
            )
        return source
    if isinstance(source, Captured):
        return _from_captured(source, layer)
    if isinstance(source, Tensor):
        if source.is_floating_point():
            raise RopeBehaviorError(
                f"a tensor source must hold token ids [batch, pos]; got dtype {source.dtype}. "
                "Pass activations as a Captured (rope_behavior.qk.captured) or an ActivationCache"
            )
        if model is None:
            raise RopeBehaviorError(
                "a token source needs the model to run on: use run_with_interventions / "
                "intervened, or value.resolved(model)"
            )
        return _from_captured(capture(model, source, layers=[layer], spec=spec), layer)
    if isinstance(source, Mapping) or (hasattr(source, "keys") and hasattr(source, "__getitem__")):
        q_site, k_site, rotated = spec.sites[layer].edit_sites()
        names = (q_site, k_site)
        keys = set(source.keys())
        missing = [n for n in names if n not in keys]
        if missing:
            raise RopeBehaviorError(
                f"the activation cache holds no {missing}; cache the hooks interventions edit "
                f"at layer {layer}: {list(names)}"
            )
        return SiteActivations(layer=layer, q=source[names[0]], k=source[names[1]], rotated=rotated)
    raise RopeBehaviorError(
        f"source of type {type(source).__name__} not understood; expected token ids [batch, "
        "pos], a Captured, an ActivationCache (or dict keyed by hook name) or SiteActivations"
    )


@dataclass(frozen=True, eq=False)
class ReferenceActivations:
    """Statistics of one layer's queries and keys over a reference batch, in site space.

    ``samples`` are the reference batch's own site activations (donors for resampling);
    ``mean_q`` / ``mean_k`` ``[pos or 1, head, d_head]`` the means replacing ablated pairs.

    * ``per_position=True``: the mean over the batch at each position. The rotation at a
      fixed position is linear, so this mean edited before rotation equals the rotated
      mean edited after it: exact at both kinds of site.
    * ``per_position=False``: one mean over batch and positions of the ROTATED vectors
      (what attention multiplies). At pre-rotation sites it is stored un-rotated per
      position with the reference's own tables, so it is exact there too; runs may then
      be at most as long as the reference.
    """

    layer: int
    per_position: bool
    seed: int
    samples: SiteActivations
    mean_q: Float[Tensor, "vpos head d_head"] = field(repr=False)
    mean_k: Float[Tensor, "vpos kv_head d_head"] = field(repr=False)
    model_ref: weakref.ReferenceType[Any] | None = field(default=None, repr=False)
    """A weak reference to the model the statistics came from (None: not recorded)."""
    model_shape: tuple[Any, ...] | None = field(default=None, repr=False)
    """That model's ``(architecture, n_layers, n_heads, n_kv_heads, d_head, rotary_dim)``."""

    def check_fits(self, spec: RopeSpec, model: Any = None, *, what: str = "reference") -> None:
        """Raise unless these statistics can stand in for ``model`` (described by ``spec``).

        The architecture and shapes must equal ``spec``'s; given ``model``, it must also be
        the very model object they were fitted on (two models of one architecture differ in
        their weights, so one's means are not the other's).
        """
        if self.model_shape is not None and self.model_shape != _shape_of(spec):
            raise RopeBehaviorError(
                f"{what}: the reference statistics were fitted on {_describe(self.model_shape)}; "
                f"this model is {_describe(_shape_of(spec))}. Refit on this model: "
                "value.fit(model, reference_tokens)"
            )
        if model is None or self.model_ref is None:
            return
        fitted_on = self.model_ref()
        if fitted_on is None:
            raise RopeBehaviorError(
                f"{what}: the model the reference statistics were fitted on no longer exists, "
                "so they cannot be matched to this one; refit on this model: "
                "value.fit(model, reference_tokens)"
            )
        if fitted_on is not _host(model):
            raise RopeBehaviorError(
                f"{what}: the reference statistics were fitted on another model object "
                f"({type(fitted_on).__name__} at {id(fitted_on):#x}) than the one it is applied "
                f"to ({type(_host(model)).__name__} at {id(_host(model)):#x}), although both are "
                f"{_describe(_shape_of(spec))}; means and donor rows are weight-specific. "
                "Refit on this model: value.fit(model, reference_tokens)"
            )

    def __repr__(self) -> str:
        b, n = self.samples.q.shape[:2]
        return (
            f"ReferenceActivations(layer={self.layer}, batch={b}, pos={n}, "
            f"per_position={self.per_position}, seed={self.seed})"
        )


def _host(model: Any) -> Any:
    """The model object itself (an adapter's or a context's wrapped model)."""
    return resolve(model).model


def _shape_of(spec: RopeSpec) -> tuple[Any, ...]:
    return (
        spec.architecture,
        spec.n_layers,
        spec.n_heads,
        spec.n_kv_heads,
        spec.d_head,
        spec.rotary_dim,
    )


def _describe(shape: tuple[Any, ...]) -> str:
    arch, n_layers, n_heads, n_kv, d_head, rotary_dim = shape
    return (
        f"{arch} ({n_layers} layers, {n_heads} heads / {n_kv} kv, d_head={d_head}, "
        f"rotary_dim={rotary_dim})"
    )


def fit_reference(
    model: Any,
    reference_tokens: Int[Tensor, "batch pos"],
    spec: RopeSpec,
    layer: int,
    *,
    per_position: bool = True,
    seed: int | torch.Generator = 0,
) -> ReferenceActivations:
    """Run ``model`` on ``reference_tokens`` and compute :class:`ReferenceActivations`."""
    as_flag(per_position, "per_position")
    seed = as_seed(seed)
    cap = capture(model, reference_tokens, layers=[layer], spec=spec)
    samples = _from_captured(cap, layer)
    if per_position:
        mean_q, mean_k = samples.q.mean(0), samples.k.mean(0)
    else:
        pooled_q = cap.rot_q[layer].mean((0, 1), keepdim=True)
        pooled_k = cap.rot_k[layer].mean((0, 1), keepdim=True)
        if samples.rotated:
            mean_q, mean_k = pooled_q[0], pooled_k[0]
        else:
            cos, sin = cap.cos[layer].to(torch.float64), cap.sin[layer].to(torch.float64)
            mag2 = cos * cos + sin * sin
            n = cap.n_pos

            def unrotate(x: Tensor) -> Tensor:
                x = x.expand(1, n, *x.shape[2:]).to(torch.float64)
                return rotate(x, cos / mag2, -sin / mag2, spec.pair_layout)[0]

            mean_q = unrotate(pooled_q).to(samples.q.dtype)
            mean_k = unrotate(pooled_k).to(samples.k.dtype)
    try:
        model_ref: weakref.ReferenceType[Any] | None = weakref.ref(_host(model))
    except TypeError:  # pragma: no cover - a model without weak references: shapes only
        model_ref = None
    return ReferenceActivations(
        layer=samples.layer,
        per_position=per_position,
        seed=seed,
        samples=samples,
        mean_q=mean_q,
        mean_k=mean_k,
        model_ref=model_ref,
        model_shape=_shape_of(spec),
    )
