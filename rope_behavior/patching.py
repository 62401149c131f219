"""Frequency-targeted activation patching sweeps over (layer, head, band).

``frequency_patching_sweep`` runs the model once on the clean and once on the corrupted
tokens, caching each patched layer's residual stream of the run being patched (its
``hook_resid_pre``) and the edit-site queries / keys of the other run. Each condition then
restarts the forward at its layer from the cached residual (``start_at_layer``; the
layers below are not run again) with several conditions side by side along the batch:
slice ``i`` of a chunk carries condition ``i``'s patch. The metric is evaluated per slice.

* ``direction="denoising"``: run on corrupted tokens, patch clean activations in;
* ``direction="noising"``: run on clean tokens, patch corrupted activations in.

Positions are assumed to be ``0..pos-1`` (no padding). Under grouped-query attention a
key patch acts on a KV head and so on its whole query group: with ``target="k"`` the head
axis holds KV heads, and with ``target="qk"`` it holds KV groups (queries of every head
of the group plus their shared keys); the result says which query heads each reaches.
"""

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from rope_behavior.adapters import BridgeAdapter, ModelAdapter, adapter_for
from rope_behavior.bands import PairSet, band, equal_bands, pair_set
from rope_behavior.capture import validate_tokens
from rope_behavior.errors import RopeBehaviorError, check_indices
from rope_behavior.fingerprint import metric_identity, model_digest, tensor_digest
from rope_behavior.hooks import compile_hooks
from rope_behavior.interventions import BatchedFrequencyPatch
from rope_behavior.metrics import as_scalar, metric_name
from rope_behavior.pair_edits import Record
from rope_behavior.patch_store import SweepStore
from rope_behavior.sources import SiteActivations
from rope_behavior.spec import RopeSpec

__all__ = ["Direction", "FrequencyPatchingResult", "frequency_patching_sweep"]

Direction = Literal["denoising", "noising"]


@dataclass(frozen=True, eq=False)
class FrequencyPatchingResult:
    """Metric after each patch, ``values[layer_index, head_index, band_index]``.

    ``heads`` index the ``head_axis`` (``"head"``: query heads; ``"kv_head"``: KV heads or
    KV groups, see the module docstring); ``query_heads[i]`` lists the query heads the
    patch of ``heads[i]`` reaches. ``clean_baseline`` / ``corrupted_baseline`` are the
    metric on the unpatched runs.
    """

    values: Float[Tensor, "layer head band"]
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    head_axis: str
    query_heads: tuple[tuple[int, ...], ...]
    bands: tuple[PairSet, ...]
    target: str
    direction: str
    clean_baseline: float
    corrupted_baseline: float
    metric: str = field(repr=False)

    def normalized(self) -> Float[Tensor, "layer head band"]:
        """``(value - corrupted) / (clean - corrupted)``: 1 = clean behaviour, 0 = corrupted."""
        span = self.clean_baseline - self.corrupted_baseline
        if span == 0:
            raise RopeBehaviorError(
                "clean and corrupted baselines are equal; nothing to normalise by"
            )
        return (self.values - self.corrupted_baseline) / span

    def to_frame(self) -> Any:
        """Tidy DataFrame: one row per (layer, head, band); ``attrs["metric"]`` names the
        metric (``normalized`` is NaN throughout when the baselines are equal)."""
        import pandas as pd

        norm = self.normalized() if self.clean_baseline != self.corrupted_baseline else None
        rows = []
        for li, layer in enumerate(self.layers):
            for hi, head in enumerate(self.heads):
                for bi, b in enumerate(self.bands):
                    rows.append(
                        {
                            "layer": layer,
                            self.head_axis: head,
                            "query_heads": self.query_heads[hi],
                            "band": b.name,
                            "pairs": b.pairs,
                            "value": float(self.values[li, hi, bi]),
                            "normalized": float(norm[li, hi, bi]) if norm is not None else math.nan,
                        }
                    )
        frame = pd.DataFrame(rows)
        frame.attrs["metric"] = self.metric
        return frame

    def __repr__(self) -> str:
        return (
            f"FrequencyPatchingResult({self.direction}, target={self.target!r}, "
            f"{len(self.layers)} layers x {len(self.heads)} {self.head_axis}s x "
            f"{len(self.bands)} bands, clean={self.clean_baseline:.4g}, "
            f"corrupted={self.corrupted_baseline:.4g}, metric={self.metric})"
        )


def _bands(spec: RopeSpec, bands: Any) -> tuple[PairSet, ...]:
    if isinstance(bands, int) and not isinstance(bands, bool):
        return equal_bands(spec, bands)
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
        else:
            out.append(pair_set(spec, b, name=f"band{i}"))
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
    s = spec.sites[layer]
    if s.rot_q is not None and s.rot_k is not None:
        return s.rot_q, s.rot_k, True
    return s.q, s.k, False


def _record_run(
    adapter: ModelAdapter,
    spec: RopeSpec,
    tokens: Tensor,
    layers: tuple[int, ...],
    *,
    sites: bool,
    resid: bool,
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
        logits = adapter.forward(tokens)
    return logits, store


def frequency_patching_sweep(
    model: Any,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "_batch _pos"],
    metric: Any,
    *,
    layers: Any = None,
    heads: Any = None,
    bands: Any,
    target: str = "qk",
    direction: str = "denoising",
    batch_conditions: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    metric_label: str | None = None,
) -> FrequencyPatchingResult:
    """Patch every (layer, head, band) from one run into the other and record ``metric``.

    Args:
        model: a TransformerBridge or native hooked rotary model.
        clean_tokens, corrupted_tokens: token ids of the same shape ``[batch, pos]``.
        metric: ``logits [batch, pos, vocab] -> scalar`` (see ``rope_behavior.metrics``),
            called once per condition on that condition's batch slice (only the
            last ``metric.last_positions`` positions when the metric sets it).
        layers: layers to patch (default all); heads: indices of the head axis (default all).
        bands: PairSets, band names (``"high"``, ``"band:0/4"``, ...), pair lists, or an int
            ``k`` for ``k`` equal bands.
        target: a :data:`~rope_behavior.interventions.Target`: ``"q"``, ``"k"`` or ``"qk"``
            (see the module docstring for GQA).
        direction: a :data:`Direction`: ``"denoising"`` or ``"noising"``.
        batch_conditions: conditions run side by side in one forward. Default: as many as
            fit the device's budget (``ModelAdapter.sequences_per_forward``), and at least
            4 (``bench/sweep.py`` on an H200: with all 32 conditions of a layer in one
            forward the sweep ran 1.2-1.4x faster than with 4).
        out_dir: folder to write results as they are computed; rerunning the same sweep
            with it resumes where an interrupted one stopped. The sweep holds the folder's
            lock while it runs: a second sweep on the same folder is refused at once.
        metric_label: how the metric is identified in ``out_dir``. Default: a hash of its
            code and captured values (:func:`~rope_behavior.fingerprint.metric_identity`);
            where that cannot be derived, ``out_dir`` needs an explicit label, which is
            then trusted to name exactly this metric.

    Raises a :class:`RopeBehaviorError` when the metric returns a non-finite value (for a
    baseline or a condition, named in the message): NaN/inf weights would otherwise give
    an all-NaN result.
    """
    adapter = adapter_for(model)
    spec = RopeSpec.from_model(adapter.model)
    clean = validate_tokens(clean_tokens, adapter, what="clean_tokens")
    corrupted = validate_tokens(corrupted_tokens, adapter, what="corrupted_tokens")
    if clean.shape != corrupted.shape:
        raise RopeBehaviorError(
            f"clean_tokens has shape {tuple(clean.shape)} but corrupted_tokens has "
            f"{tuple(corrupted.shape)}; patching is position by position, so both must be "
            "[batch, pos] of the same shape"
        )
    if target not in ("q", "k", "qk"):
        raise RopeBehaviorError(f"target={target!r} is not one of ['q', 'k', 'qk']")
    if direction not in ("denoising", "noising"):
        raise RopeBehaviorError(f"direction={direction!r} is not one of ['denoising', 'noising']")
    if batch_conditions is None:
        b, n = clean.shape
        batch_conditions = max(1, adapter.sequences_per_forward(n, 4 * b) // b)
    if (
        isinstance(batch_conditions, bool)
        or not isinstance(batch_conditions, int)
        or batch_conditions < 1
    ):
        raise RopeBehaviorError(f"batch_conditions={batch_conditions!r}; expected an int >= 1")
    if getattr(adapter.model, "training", False):
        raise RopeBehaviorError(
            "the model is in training mode (dropout would make every condition random); "
            "call model.eval() before a patching sweep"
        )
    if not callable(metric):
        raise RopeBehaviorError(
            f"metric must be callable (logits -> scalar); got {type(metric).__name__}"
        )
    _last_positions(metric, clean.shape[1])
    chosen_layers = check_indices(layers, spec.n_layers, "layer", f"{spec.n_layers} layers")
    band_list = _bands(spec, bands)
    axis, head_list, head_sets = _head_axis(spec, target, heads)
    reached = tuple(spec.query_heads_of(hs[0]) if target == "k" else hs for hs in head_sets)
    if metric_label is not None and (not isinstance(metric_label, str) or not metric_label):
        raise RopeBehaviorError(f"metric_label={metric_label!r}; expected a non-empty str")
    label = metric_label or metric_name(metric)
    description: dict[str, Any] | None = None
    if out_dir is not None:
        description = {
            "architecture": spec.architecture,
            "model": model_digest(adapter.model),
            "clean_tokens": tensor_digest(clean),
            "corrupted_tokens": tensor_digest(corrupted),
            "layers": list(chosen_layers),
            "head_axis": axis,
            "heads": list(head_list),
            "bands": [[b.name, list(b.pairs)] for b in band_list],
            "target": target,
            "direction": direction,
            "metric": label,
        }
        if metric_label:  # the caller vouches for the label
            description.update(metric_identity=f"label:{metric_label}", metric_parts={})
        else:
            ident = metric_identity(metric)
            description.update(metric_identity=ident.digest, metric_parts=ident.parts)
    with contextlib.ExitStack() as stack:  # the store's lock is released however we leave
        store = None
        if out_dir is not None and description is not None:
            store = stack.enter_context(SweepStore(out_dir, description))
        base, source = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
        with torch.no_grad():
            source_logits, source_acts = _record_run(
                adapter, spec, source, chosen_layers, sites=True, resid=False
            )
            base_logits, base_acts = _record_run(
                adapter, spec, base, chosen_layers, sites=False, resid=True
            )
            clean_logits, corrupted_logits = (
                (source_logits, base_logits)
                if direction == "denoising"
                else (base_logits, source_logits)
            )
            clean_value = as_scalar(metric(clean_logits), "the clean run")
            corrupted_value = as_scalar(metric(corrupted_logits), "the corrupted run")
            del source_logits, base_logits, clean_logits, corrupted_logits
            done = store.load() if store is not None else {}
            values = torch.full(
                (len(chosen_layers), len(head_list), len(band_list)), math.nan, dtype=torch.float64
            )
            for li, layer in enumerate(chosen_layers):
                q_name, k_name, rotated = _site_names(spec, layer)
                src = SiteActivations(layer, source_acts[q_name], source_acts[k_name], rotated)
                todo = []
                for hi in range(len(head_list)):
                    for bi in range(len(band_list)):
                        if (layer, hi, bi) in done:
                            values[li, hi, bi] = done[(layer, hi, bi)]
                        else:
                            todo.append((hi, bi))
                resid = base_acts[spec.sites[layer].resid_pre]
                for start in range(0, len(todo), batch_conditions):
                    chunk = todo[start : start + batch_conditions]
                    where = [
                        f"layer {layer}, condition {(hi, bi)} ({axis} {head_list[hi]}, band "
                        f"{band_list[bi].name!r}, pairs {list(band_list[bi].pairs)})"
                        for hi, bi in chunk
                    ]
                    got = _run_chunk(
                        adapter,
                        spec,
                        layer,
                        target,
                        chunk,
                        head_sets,
                        band_list,
                        src,
                        resid,
                        metric,
                        where,
                    )
                    for (hi, bi), v in zip(chunk, got):
                        values[li, hi, bi] = v
                    if store is not None:
                        store.write(layer, chunk, got)
        result = FrequencyPatchingResult(
            values=values,
            layers=chosen_layers,
            heads=head_list,
            head_axis=axis,
            query_heads=reached,
            bands=band_list,
            target=target,
            direction=direction,
            clean_baseline=clean_value,
            corrupted_baseline=corrupted_value,
            metric=label,
        )
        if store is not None:
            store.finish({"clean_baseline": clean_value, "corrupted_baseline": corrupted_value})
    return result


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
    adapter: ModelAdapter,
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
) -> list[float]:
    """One forward from ``layer`` with ``len(chunk)`` conditions along the batch."""
    k, b = len(chunk), resid.shape[0]
    value = BatchedFrequencyPatch(
        layer=layer,
        target=target,
        conditions=tuple((head_sets[hi], bands[bi].pairs) for hi, bi in chunk),
        source=source,
    )
    hooks = compile_hooks(spec, [value], model=adapter.model)
    stacked = resid.expand(k, *resid.shape).reshape(k * b, *resid.shape[1:])
    keep = _last_positions(metric, resid.shape[1])
    kwargs: dict[str, Any] = {}
    if keep and isinstance(
        adapter, BridgeAdapter
    ):  # HF's logits_to_keep skips most of the unembedding
        kwargs["logits_to_keep"] = keep
    with adapter.hooked(hooks):
        logits = adapter.forward(stacked, start_at_layer=layer, **kwargs)
    if keep:
        logits = logits[:, -keep:]
    return [as_scalar(metric(logits[i * b : (i + 1) * b]), where[i]) for i in range(k)]
