"""A frequency patching sweep as shards, run where the model is (this process or a Ray
worker; :mod:`rope_behavior.runtime.executors`).

:class:`SweepJob` holds the sweep's inputs (tokens, metric, layers, heads, bands, ...).
``setup`` validates them against the model, runs it once on the clean and once on the
corrupted tokens, caching each patched layer's residual stream of the run being patched
(its ``hook_resid_pre``) and the edit-site queries / keys of the other run, and computes
the baselines. ``plan`` gives the :class:`SweepPlan`: the axes, the baselines, the store's
description (model and token fingerprints) and the shards — each layer's (head, band)
conditions cut into chunks of ``batch_conditions``, fixed in advance, so that a resumed
or distributed sweep runs exactly the chunks (and so the numbers) of a sweep run in one
go. ``run`` computes one shard: a forward restarted at its layer from the cached residual
(``start_at_layer``; the layers below are not run again), with the chunk's conditions
side by side along the batch (slice ``i`` carries condition ``i``'s patch), the metric
evaluated per slice.
"""

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, check_indices
from rope_behavior.interventions.compile import compile_hooks
from rope_behavior.interventions.edit_hooks import Record
from rope_behavior.interventions.sources import SiteActivations
from rope_behavior.interventions.values import BatchedFrequencyPatch
from rope_behavior.model.adapters import ModelAdapter
from rope_behavior.model.context import ModelContext, is_training, resolve
from rope_behavior.model.spec import RopeSpec
from rope_behavior.patching.metrics import as_scalar
from rope_behavior.qk.captured import validate_mask, validate_tokens
from rope_behavior.rope.bands import PairSet, band, equal_bands, pair_set
from rope_behavior.runtime.fingerprint import model_digest, tensor_digest

__all__ = ["Shard", "SweepJob", "SweepPlan"]


@dataclass(frozen=True)
class Shard:
    """Conditions ``(head_index, band_index)`` of one layer, computed in one forward."""

    layer: int
    conditions: tuple[tuple[int, int], ...]


@dataclass(frozen=True, eq=False)
class SweepPlan:
    layers: tuple[int, ...]
    head_axis: str
    heads: tuple[int, ...]
    query_heads: tuple[tuple[int, ...], ...]
    bands: tuple[PairSet, ...]
    clean_baseline: float
    corrupted_baseline: float
    description: dict[str, Any]
    shards: tuple[Shard, ...]

    @property
    def digest(self) -> str:
        """What every worker's plan must agree on (model weights included)."""
        payload = {**self.description, "shards": [[s.layer, s.conditions] for s in self.shards]}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class SweepJob:
    """The inputs of one sweep (see ``frequency_patching_sweep`` for each)."""

    clean: Tensor
    corrupted: Tensor
    metric: Any
    metric_label: str
    metric_identity: str
    metric_parts: dict[str, Any]
    layers: Any
    heads: Any
    bands: Any
    target: str
    direction: str
    batch_conditions: int | None
    fingerprint: bool = True  # the model's content hash in the plan (for a store / workers)
    mask: Tensor | None = None  # one attention mask for both runs (same shape)

    def setup(self, model: Any) -> "_SweepState":
        context = resolve(model)
        adapter, spec = context.adapter, context.spec
        clean = validate_tokens(self.clean, adapter, what="clean_tokens")
        corrupted = validate_tokens(self.corrupted, adapter, what="corrupted_tokens")
        if clean.shape != corrupted.shape:
            raise RopeBehaviorError(
                f"clean_tokens has shape {tuple(clean.shape)} but corrupted_tokens has "
                f"{tuple(corrupted.shape)}; patching is position by position, so both must be "
                "[batch, pos] of the same shape"
            )
        mask = validate_mask(self.mask, clean)
        per_forward = self.batch_conditions
        if per_forward is None:
            b, n = clean.shape
            per_forward = max(1, adapter.sequences_per_forward(n, 4 * b) // b)
        if is_training(adapter.model):
            raise RopeBehaviorError(
                "the model is in training mode (dropout would make every condition random); "
                "call model.eval() before a patching sweep"
            )
        _last_positions(self.metric, clean.shape[1])
        layers = check_indices(self.layers, spec.n_layers, "layer", f"{spec.n_layers} layers")
        bands = _bands(spec, self.bands)
        axis, head_list, head_sets = _head_axis(spec, self.target, self.heads)
        reached = tuple(
            spec.query_heads_of(hs[0]) if self.target == "k" else hs for hs in head_sets
        )
        description = {
            "architecture": spec.architecture,
            "model": model_digest(adapter.model) if self.fingerprint else "",
            "clean_tokens": tensor_digest(clean),
            "corrupted_tokens": tensor_digest(corrupted),
            "attention_mask": tensor_digest(mask) if mask is not None else None,
            "layers": list(layers),
            "head_axis": axis,
            "heads": list(head_list),
            "bands": [[b.name, list(b.pairs)] for b in bands],
            "target": self.target,
            "direction": self.direction,
            "metric": self.metric_label,
            "metric_identity": self.metric_identity,
            "metric_parts": self.metric_parts,
        }
        conditions = [(hi, bi) for hi in range(len(head_list)) for bi in range(len(bands))]
        shards = tuple(
            Shard(layer, tuple(conditions[i : i + per_forward]))
            for layer in layers
            for i in range(0, len(conditions), per_forward)
        )
        base, source = (corrupted, clean) if self.direction == "denoising" else (clean, corrupted)
        with torch.no_grad():
            source_logits, source_acts = _record_run(
                adapter, spec, source, layers, sites=True, resid=False, mask=mask
            )
            base_logits, base_acts = _record_run(
                adapter, spec, base, layers, sites=False, resid=True, mask=mask
            )
            clean_logits, corrupted_logits = (
                (source_logits, base_logits)
                if self.direction == "denoising"
                else (base_logits, source_logits)
            )
            clean_value = as_scalar(self.metric(clean_logits), "the clean run")
            corrupted_value = as_scalar(self.metric(corrupted_logits), "the corrupted run")
        plan = SweepPlan(
            layers=layers,
            head_axis=axis,
            heads=head_list,
            query_heads=reached,
            bands=bands,
            clean_baseline=clean_value,
            corrupted_baseline=corrupted_value,
            description=description,
            shards=shards,
        )
        return _SweepState(context, spec, plan, head_sets, source_acts, base_acts, mask)

    def plan(self, state: "_SweepState") -> SweepPlan:
        return state.plan

    def run(self, state: "_SweepState", shard: Shard) -> list[float]:
        spec, plan, layer = state.spec, state.plan, shard.layer
        q_name, k_name, rotated = _site_names(spec, layer)
        src = SiteActivations(layer, state.source_acts[q_name], state.source_acts[k_name], rotated)
        where = [
            f"layer {layer}, condition {(hi, bi)} ({plan.head_axis} {plan.heads[hi]}, band "
            f"{plan.bands[bi].name!r}, pairs {list(plan.bands[bi].pairs)})"
            for hi, bi in shard.conditions
        ]
        with torch.no_grad():
            return _run_chunk(
                state.context,
                spec,
                layer,
                self.target,
                list(shard.conditions),
                state.head_sets,
                plan.bands,
                src,
                state.base_acts[spec.sites[layer].resid_pre],
                self.metric,
                where,
                state.mask,
            )


@dataclass(eq=False)
class _SweepState:
    context: ModelContext
    spec: RopeSpec
    plan: SweepPlan
    head_sets: list[tuple[int, ...]]
    source_acts: dict[str, Tensor]
    base_acts: dict[str, Tensor]
    mask: Tensor | None = None


def _bands(spec: RopeSpec, bands: Any) -> tuple[PairSet, ...]:
    if isinstance(bands, int) and not isinstance(bands, bool):
        try:
            return equal_bands(spec, bands)
        except RopeBehaviorError as e:
            raise RopeBehaviorError(f"bands={bands!r} equal bands: {e}") from None
    if isinstance(bands, (str, PairSet)) or bands is None:
        bands = [bands]
    out = []
    for i, b in enumerate(bands):
        if isinstance(b, PairSet):
            out.append(b.validate(spec))
        elif isinstance(b, str):
            out.append(band(spec, b))
        elif b is None:
            raise RopeBehaviorError("bands: expected PairSets, band names, pair lists or an int k")
        else:  # named by its pairs ("pairs[0, 1]"), which band() reads back
            try:
                out.append(pair_set(spec, b))
            except RopeBehaviorError as e:
                raise RopeBehaviorError(f"bands[{i}]: {e}") from None
    if not out:
        raise RopeBehaviorError(
            "bands is empty: give at least one band (e.g. bands=4 for four equal bands)"
        )
    return tuple(out)


def _head_axis(
    spec: RopeSpec, target: str, heads: Any
) -> tuple[str, tuple[int, ...], list[tuple[int, ...]]]:
    """(axis name, axis indices, per index the heads a FrequencyPatch of ``target`` takes)."""
    if target == "q" or (target == "qk" and spec.group_size == 1):
        chosen = check_indices(heads, spec.n_heads, "head", f"{spec.n_heads} query heads")
        return "head", chosen, [(h,) for h in chosen]
    hint = f"target={target!r}: heads index the model's {spec.n_kv_heads} KV heads" + (
        " (query heads are patched by whole KV groups)" if target == "qk" else ""
    )
    chosen = check_indices(heads, spec.n_kv_heads, "kv_head", hint)
    if target == "k":
        return "kv_head", chosen, [(h,) for h in chosen]
    return "kv_head", chosen, [spec.query_heads_of(h) for h in chosen]


def _site_names(spec: RopeSpec, layer: int) -> tuple[str, str, bool]:
    """The hooks patches edit at ``layer`` (rotated where they fire) and whether rotated."""
    return spec.sites[layer].edit_sites()


def _record_run(
    adapter: ModelAdapter,
    spec: RopeSpec,
    tokens: Tensor,
    layers: tuple[int, ...],
    *,
    sites: bool,
    resid: bool,
    mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    store: dict[str, Tensor] = {}
    hooks: list[tuple[str, Any]] = []
    for layer in layers:
        if sites:
            hooks += [(n, Record(store, n)) for n in _site_names(spec, layer)[:2]]
        if resid:
            name = spec.sites[layer].resid_pre
            hooks.append((name, Record(store, name)))
    with adapter.hooked(hooks):
        logits = adapter.forward(tokens, attention_mask=mask)
    return logits, store


def _last_positions(metric: Any, n_pos: int) -> int | None:
    """The metric's ``last_positions`` (it reads only the last k positions), validated."""
    k = getattr(metric, "last_positions", None)
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_pos:
        raise RopeBehaviorError(
            f"metric.last_positions={k!r}; expected None or an int in [1, {n_pos}] (positions)"
        )
    return k if k < n_pos else None


def _run_chunk(
    context: ModelContext,
    spec: RopeSpec,
    layer: int,
    target: str,
    chunk: list[tuple[int, int]],
    head_sets: list[tuple[int, ...]],
    bands: tuple[PairSet, ...],
    source: SiteActivations,
    resid: Tensor,
    metric: Any,
    where: list[str],
    mask: Tensor | None = None,
) -> list[float]:
    """One forward from ``layer`` with ``len(chunk)`` conditions along the batch."""
    k, b = len(chunk), resid.shape[0]
    value = BatchedFrequencyPatch(
        layer=layer,
        target=target,
        conditions=tuple((head_sets[hi], bands[bi].pairs) for hi, bi in chunk),
        source=source,
    )
    adapter = context.adapter
    hooks = compile_hooks(spec, [value], model=context)
    stacked = resid.expand(k, *resid.shape).reshape(k * b, *resid.shape[1:])
    keep = _last_positions(metric, resid.shape[1])
    with adapter.hooked(hooks):
        logits = adapter.forward(
            stacked,
            start_at_layer=layer,
            keep_last=keep or None,
            attention_mask=None if mask is None else mask.repeat(k, 1),
        )
    if keep:
        logits = logits[:, -keep:]
    return [as_scalar(metric(logits[i * b : (i + 1) * b]), where[i]) for i in range(k)]
