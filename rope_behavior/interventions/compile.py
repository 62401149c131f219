"""Compile intervention values to scoped hooks — in one place — and run with them.

:func:`compile_hooks` is the only function that turns values into ``(hook_name, hook)``
pairs. Edits go to the host's rotated hooks (``hook_rot_q`` / ``hook_rot_k``) where they
fire; for families without them (GPT-NeoX, GPT-J, Phi-3, Falcon, PhiMoE) whole pairs are
edited in the pre-rotation hooks, which is exactly equivalent because a rotation acts
within each pair (an angle override there pre-rotates by the new angle minus the model's).
Hooks are installed only inside :func:`run_with_interventions` / :func:`intervened`
and removed on exit, also when something raises.
"""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, UnsupportedArchitectureError, validates_inputs
from rope_behavior.interventions.edit_hooks import (
    AdapterTables,
    ReanglePairs,
    ReplacePairs,
    ResamplePairs,
    SlicedPatch,
    TableTap,
    TappedTables,
    ZeroPairs,
    computed_tables,
    dim_mask,
    pair_mask,
)
from rope_behavior.interventions.reach import Reach
from rope_behavior.interventions.rope_edits import RopeEdit
from rope_behavior.interventions.sources import SiteActivations, site_activations
from rope_behavior.interventions.values import (
    AngleOverride,
    BatchedFrequencyPatch,
    FrequencyAblation,
    FrequencyPatch,
)
from rope_behavior.model.adapters import ModelAdapter, PositionTap
from rope_behavior.model.context import resolve
from rope_behavior.model.spec import RopeSpec
from rope_behavior.qk.captured import validate_tokens

__all__ = ["Intervention", "compile_hooks", "intervened", "run_with_interventions"]

Intervention = FrequencyAblation | FrequencyPatch | AngleOverride | BatchedFrequencyPatch | RopeEdit
_VALUE_TYPES = (FrequencyAblation, FrequencyPatch, AngleOverride, BatchedFrequencyPatch, RopeEdit)
Hooks = list[tuple[str, Any]]


def _as_values(interventions: Any) -> tuple[Any, ...]:
    if isinstance(interventions, _VALUE_TYPES):
        return (interventions,)
    if isinstance(interventions, (str, bytes, Tensor)) or not isinstance(interventions, Iterable):
        raise RopeBehaviorError(
            f"interventions={interventions!r}: expected an intervention value "
            "(FrequencyAblation, FrequencyPatch, AngleOverride, BatchedFrequencyPatch, a RoPE "
            "edit: PRoPE, NoPEBelow, RopeScaling) or a sequence of them ([] for none)"
        )
    values = tuple(interventions)
    for v in values:
        if not isinstance(v, _VALUE_TYPES):
            raise RopeBehaviorError(
                f"not an intervention: {v!r}; expected FrequencyAblation, FrequencyPatch, "
                "AngleOverride, PRoPE, NoPEBelow, RopeScaling (or a sequence of them)"
            )
    return values


def _site(spec: RopeSpec, layer: int, role: str) -> tuple[str, bool]:
    s = spec.sites[layer]
    q, k, rotated = s.edit_sites()
    name = q if role == "q" else k
    if not rotated and not s.pre_editable:
        raise UnsupportedArchitectureError(
            f"{spec.architecture} layer {layer}: no rotated hook fires and the pre-rotation "
            f"site {name} does not carry [batch, pos, head, d_head]; cannot edit pairs exactly"
        )
    return name, rotated


def _tables(
    spec: RopeSpec,
    layer: int,
    adapter: ModelAdapter | None,
    taps: dict[Any, Any],
    hooks: Hooks,
    rotated: bool = True,
) -> tuple[Any, PositionTap | None]:
    """Where an angle override at ``layer`` reads, in the same forward, the model's own
    table per prompt (the one it rotated with, at a ``rotated`` site; the one it will
    rotate with, at a pre-rotation site) and the position id the model gives each token
    (``None``: ``0..pos-1``, without a model)."""
    nope = spec.omega_source[layer] == "nope"
    if adapter is None:
        if nope:
            return computed_tables(omega=torch.zeros(spec.n_pairs, dtype=torch.float64)), None
        return computed_tables(omega=spec.omega[layer], scale=float(spec.table_scale[layer])), None
    positions = taps.setdefault(("positions", layer), PositionTap(layer))
    if nope:
        return computed_tables(omega=torch.zeros(spec.n_pairs, dtype=torch.float64)), positions
    s = spec.sites[layer]
    if rotated and s.cos is not None and s.sin is not None:  # the table hooks fired first
        key = ("tables", layer)
        if key not in taps:
            store: dict[str, Tensor] = {}
            hooks += [(s.cos, TableTap(store, "cos")), (s.sin, TableTap(store, "sin"))]
            taps[key] = TappedTables(layer=layer, store=store, convert=adapter.pair_tables)
        return taps[key], positions
    return AdapterTables(layer, adapter.rotation_tables, positions), positions


def _site_values(source: Any, spec: RopeSpec, layer: int, role: str, what: str) -> Tensor:
    if not isinstance(source, SiteActivations):
        source = site_activations(source, spec, layer)
    values = source.q if role == "q" else source.k
    n_heads = spec.n_heads if role == "q" else spec.n_kv_heads
    if values.ndim != 4 or tuple(values.shape[2:]) != (n_heads, spec.d_head):
        raise RopeBehaviorError(
            f"{what}: source {role} has shape {tuple(values.shape)}; expected [batch, pos, "
            f"{n_heads}, {spec.d_head}]"
        )
    return values


def _dim_mask(
    spec: RopeSpec, n_heads: int, heads: tuple[int, ...], pairs: tuple[int, ...]
) -> Bool[Tensor, "head d_head"]:
    """Dimensions of ``pairs`` in ``heads`` at a site with ``n_heads`` heads."""
    return dim_mask(n_heads, spec.d_head, heads, pairs, spec.rotary_dim, spec.pair_layout)


def _ablation_hook(
    value: FrequencyAblation,
    spec: RopeSpec,
    model: Any,
    site: tuple[str, bool],
    reach: Reach,
    role: str,
    heads: tuple[int, ...],
    mask: Bool[Tensor, "head d_head"],
) -> Any:
    """The hook of a frequency ablation (zero, mean or resample) at one site."""
    name, rotated = site
    ref = value.reference
    if value.mode == "zero":
        return ZeroPairs(name, heads, reach.pairs, mask)
    if ref is None:
        raise RopeBehaviorError(
            f"{value!r}: mode={value.mode!r} needs reference statistics; use "
            "value.fit(model, reference_tokens) first"
        )
    ref.check_fits(spec, model, what=repr(value))
    if ref.layer != reach.layer or ref.samples.rotated != rotated:
        raise RopeBehaviorError(
            f"{value!r}: its reference was fitted for layer {ref.layer} of another "
            "model or site; refit it on this model"
        )
    if value.mode == "mean":
        mean = ref.mean_q if role == "q" else ref.mean_k
        kind = "mean per position" if ref.per_position else "mean over positions"
        any_pos = not ref.per_position and rotated
        return ReplacePairs(name, heads, reach.pairs, kind, mask, mean[None], any_pos)
    donors = ref.samples.q if role == "q" else ref.samples.k
    return ResamplePairs(name, heads, reach.pairs, ref.seed, mask, donors)


def _site_hook(
    value: Any,
    spec: RopeSpec,
    model: Any,
    adapter: ModelAdapter | None,
    taps: dict[Any, Any],
    hooks: Hooks,
    reaches: tuple[Reach, ...],
    role: str,
) -> tuple[str, Any] | None:
    """The ``(hook_name, hook)`` of ``value`` at its ``role`` site (``None``: no heads there)."""
    layer = reaches[0].layer
    heads_of = [r.q_heads if role == "q" else r.kv_heads for r in reaches]
    if not any(heads_of):
        return None
    name, rotated = _site(spec, layer, role)
    n_heads = spec.n_heads if role == "q" else spec.n_kv_heads
    r = reaches[0]
    heads = heads_of[0]
    if isinstance(value, BatchedFrequencyPatch):
        masks = torch.stack(
            [_dim_mask(spec, n_heads, h, rr.pairs) for h, rr in zip(heads_of, reaches)]
        )
        vals = _site_values(value.source, spec, layer, role, repr(value))
        conds = tuple((h, rr.pairs) for h, rr in zip(heads_of, reaches))
        return name, SlicedPatch(name, conds, masks, vals)
    if isinstance(value, FrequencyPatch):
        vals = _site_values(value.source, spec, layer, role, repr(value))
        mask = _dim_mask(spec, n_heads, heads, r.pairs)
        return name, ReplacePairs(name, heads, r.pairs, "patch", mask, vals)
    if isinstance(value, FrequencyAblation):
        mask = _dim_mask(spec, n_heads, heads, r.pairs)
        return name, _ablation_hook(value, spec, model, (name, rotated), r, role, heads, mask)
    # AngleOverride: the new angle is omega_new * position_id, per prompt
    omega = tuple(float(v) for v in value.angles(spec))
    pm = pair_mask(n_heads, spec.n_pairs, heads, r.pairs)
    tables, positions = _tables(spec, layer, adapter, taps, hooks, rotated)
    hook = ReanglePairs(
        name, heads, r.pairs, omega, spec.pair_layout, tables, pm, positions, value.magnitude
    )
    return name, hook


@validates_inputs
def compile_hooks(spec: RopeSpec, interventions: Any, *, model: Any = None) -> Hooks:
    """Compile intervention values to ``(hook_name, hook)`` pairs (nothing is installed).

    ``model`` (optional) lets angle overrides undo the rotation with the model's own
    tables of each forward, per prompt, and set the new angle ``omega_new * position_id``
    at each token's position id as the model counts it in that forward (recorded when
    the hooks are installed through :func:`intervened` / :func:`run_with_interventions` /
    ``ModelAdapter.hooked``); without a model they use ``spec.omega`` (exact to rounding)
    and positions ``0..pos-1``. Hooks installed with a plain ``model.hooks(...)`` record
    no positions and assume ``0..pos-1`` too; where the model's table hooks show prompts
    at different positions they raise instead.
    Token-sourced patches must be resolved first (``value.resolved(model)``; the run
    functions do it).
    """
    if not isinstance(spec, RopeSpec):
        raise RopeBehaviorError(
            f"compile_hooks takes the model's RopeSpec first; got {type(spec).__name__}: "
            "compile_hooks(RopeSpec.from_model(model), interventions, model=model)"
        )
    adapter = resolve(model).adapter if model is not None else None
    hooks: Hooks = []
    taps: dict[Any, Any] = {}
    values = tuple(  # a RoPE edit is angle overrides, one per layer it changes
        o
        for v in _as_values(interventions)
        for o in (v.overrides(spec) if isinstance(v, RopeEdit) else (v,))
    )
    for value in values:
        reaches = (
            value.resolve_all(spec)
            if isinstance(value, BatchedFrequencyPatch)
            else (value.resolve(spec),)
        )
        for role in ("q", "k"):
            hook = _site_hook(value, spec, model, adapter, taps, hooks, reaches, role)
            if hook is not None:
                hooks.append(hook)
    return hooks


def _prepared(values: tuple[Any, ...], model: Any, spec: RopeSpec) -> tuple[Any, ...]:
    """Run token sources on the model (values are immutable: copies are returned)."""
    out = []
    for v in values:
        if isinstance(v, FrequencyPatch) and not isinstance(v.source, SiteActivations):
            v.resolve(spec)
            v = v.resolved(model)
        out.append(v)
    return tuple(out)


@contextmanager
def intervened(model: Any, interventions: Any) -> Iterator[Hooks]:
    """Within the block every forward of ``model`` runs with ``interventions``; yields the
    compiled ``(hook_name, hook)`` list. Hooks are removed on exit, also on error."""
    context = resolve(model)
    spec = context.spec
    values = _prepared(_as_values(interventions), context, spec)
    hooks = compile_hooks(spec, values, model=context)
    with context.adapter.hooked(hooks):
        yield hooks


@validates_inputs
def run_with_interventions(
    model: Any, tokens: Tensor, interventions: Any, **forward_kwargs: Any
) -> Any:
    """One forward of ``model`` on ``tokens`` with ``interventions`` installed.

    ``forward_kwargs`` go to the model (``attention_mask``, ``start_at_layer``, ...).
    Gradients flow (no ``no_grad`` here): masks and overrides are differentiable.
    ``tokens`` must be integer ids ``[batch, pos]`` with ``1 <= pos <= n_ctx`` and ids in
    the vocabulary (with ``start_at_layer`` they are the residual stream, passed as is).
    """
    context = resolve(model)
    if forward_kwargs.get("start_at_layer") is None:
        tokens = validate_tokens(tokens, context.adapter)
    with intervened(context, interventions):
        return context.adapter.forward(tokens, **forward_kwargs)
