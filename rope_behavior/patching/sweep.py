"""Frequency-targeted activation patching sweeps over (layer, head, band).

``frequency_patching_sweep`` runs the model once on the clean and once on the corrupted
tokens, caching each patched layer's residual stream of the run being patched (its
``hook_resid_pre``) and the edit-site queries / keys of the other run. Each condition then
restarts the forward at its layer from the cached residual (``start_at_layer``; the
layers below are not run again) with several conditions side by side along the batch:
slice ``i`` of a chunk carries condition ``i``'s patch. The metric is evaluated per slice.
Each chunk is a shard (:mod:`rope_behavior.patching.shards`), fixed in advance; an executor
runs the shards here (the default) or on Ray workers (:mod:`rope_behavior.runtime.ray_cluster`),
and with ``out_dir`` each finished shard is one file of a resumable store
(:mod:`rope_behavior.runtime.store`).

* ``direction="denoising"``: run on corrupted tokens, patch clean activations in;
* ``direction="noising"``: run on clean tokens, patch corrupted activations in.

Positions are assumed to be ``0..pos-1`` (no padding). Under grouped-query attention a
key patch acts on a KV head and so on its whole query group: with ``target="k"`` the head
axis holds KV heads, and with ``target="qk"`` it holds KV groups (queries of every head
of the group plus their shared keys); the result says which query heads each reaches.
"""

import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from rope_behavior import display
from rope_behavior.errors import RopeBehaviorError, as_count, as_folder, validates_inputs
from rope_behavior.patching.metrics import metric_name
from rope_behavior.patching.shards import Shard, SweepJob, SweepPlan
from rope_behavior.rope.bands import PairSet
from rope_behavior.runtime.driver import run_sharded
from rope_behavior.runtime.executors import crosses_processes
from rope_behavior.runtime.fingerprint import metric_identity
from rope_behavior.runtime.store import SweepStore

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
        return display.text(self)

    def _repr_html_(self) -> str:
        return display.html(self)


@validates_inputs
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
    executor: Any = None,
    progress: bool | Any = False,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> FrequencyPatchingResult:
    """Patch every (layer, head, band) from one run into the other and record ``metric``.

    Args:
        model: a TransformerBridge, HookedTransformer or native hooked rotary model, or a
            :class:`~rope_behavior.runtime.executors.ModelLoader` that builds one (what a
            distributed ``executor`` needs: each worker builds its own model).
        clean_tokens: token ids ``[batch, pos]`` of the clean run.
        corrupted_tokens: token ids of the corrupted run, shaped like ``clean_tokens``.
        metric: ``logits [batch, pos, vocab] -> scalar`` (see ``rope_behavior.patching.metrics``),
            called once per condition on that condition's batch slice (only the
            last ``metric.last_positions`` positions when the metric sets it).
        layers: layers to patch (default all).
        heads: indices of the head axis (default all).
        bands: PairSets, band names (``"high"``, ``"band:0/4"``, ...), pair lists, or an int
            ``k`` for ``k`` equal bands.
        target: a :data:`~rope_behavior.interventions.values.Target`: ``"q"``, ``"k"`` or ``"qk"``
            (see the module docstring for GQA).
        direction: a :data:`Direction`: ``"denoising"`` or ``"noising"``.
        batch_conditions: conditions run side by side in one forward (one shard). Default:
            as many as fit the device's budget (``ModelAdapter.sequences_per_forward``), and
            at least 4 (``bench/sweep.py`` on an H200: with all 32 conditions of a layer in
            one forward the sweep ran 1.2-1.4x faster than with 4).
        out_dir: folder to write results as they are computed (one file per shard);
            rerunning the same sweep with it resumes where an interrupted one stopped. The
            sweep holds the folder's lock while it runs: a second sweep on the same folder
            is refused at once.
        metric_label: how the metric is identified in ``out_dir``. Default: a hash of its
            code and captured values (:func:`~rope_behavior.runtime.fingerprint.metric_identity`);
            where that cannot be derived, ``out_dir`` needs an explicit label, which is
            then trusted to name exactly this metric.
        executor: where the shards run: this process (default,
            :class:`~rope_behavior.runtime.executors.LocalExecutor`) or
            :class:`rope_behavior.runtime.ray_cluster.RayExecutor` (workers build the model from a
            ``ModelLoader``; results equal this process's to 0.0 on the same device).
        attention_mask: ``[batch, pos]`` 0/1 mask for prompts of different lengths, shared
            by the clean and the corrupted run (they are patched position by position).
        progress: ``True`` for a progress bar over shards (in-process; a ``RayExecutor``
            has its own), or a function ``progress(done, total)``.

    Raises a :class:`RopeBehaviorError` when the metric returns a non-finite value (for a
    baseline or a condition, named in the message): NaN/inf weights would otherwise give
    an all-NaN result.
    """
    if target not in ("q", "k", "qk"):
        raise RopeBehaviorError(f"target={target!r} is not one of ['q', 'k', 'qk']")
    if direction not in ("denoising", "noising"):
        raise RopeBehaviorError(f"direction={direction!r} is not one of ['denoising', 'noising']")
    if batch_conditions is not None:
        batch_conditions = as_count(
            batch_conditions, "batch_conditions", hint="or None: as many as fit the device"
        )
    out_dir = as_folder(out_dir, "out_dir")
    if not callable(metric):
        raise RopeBehaviorError(
            f"metric must be callable (logits -> scalar); got {type(metric).__name__}"
        )
    if metric_label is not None and (not isinstance(metric_label, str) or not metric_label):
        raise RopeBehaviorError(f"metric_label={metric_label!r}; expected a non-empty str")
    for name, toks in (("clean_tokens", clean_tokens), ("corrupted_tokens", corrupted_tokens)):
        if not isinstance(toks, Tensor):
            raise RopeBehaviorError(
                f"{name} must be a tensor of token ids [batch, pos]; got {type(toks).__name__}"
            )
    if metric_label:  # the caller vouches for the label
        ident, parts = f"label:{metric_label}", {}
    elif out_dir is not None:
        identity = metric_identity(metric)
        ident, parts = identity.digest, identity.parts
    else:  # nothing persisted: no identity needed
        ident, parts = "", {}
    job = SweepJob(
        clean=clean_tokens,
        corrupted=corrupted_tokens,
        metric=metric,
        metric_label=metric_label or metric_name(metric),
        metric_identity=ident,
        metric_parts=parts,
        layers=layers,
        heads=heads,
        bands=bands,
        target=target,
        direction=direction,
        batch_conditions=batch_conditions,
        fingerprint=crosses_processes(executor, out_dir),
        mask=attention_mask,
    )
    values = _SweepValues()
    plan: SweepPlan = run_sharded(
        model, job, values, executor=executor, out_dir=out_dir, progress=progress,
        desc="patching sweep",
    )  # fmt: skip
    return values.result(plan, job.metric_label, target, direction)


@dataclass(eq=False)
class _SweepValues:
    """The sweep's results by condition ``(layer, head index, band index)``; its store keeps
    one file per (layer, finished conditions)."""

    values: dict[tuple[int, int, int], float] = field(default_factory=dict)

    def restore(self, store: SweepStore) -> None:
        self.values.update(store.load())

    def pending(self, plan: SweepPlan) -> list[Shard]:
        todo = []
        for shard in plan.shards:
            missing = tuple(c for c in shard.conditions if (shard.layer, *c) not in self.values)
            if missing:
                todo.append(Shard(shard.layer, missing))
        return todo

    def keep(self, shard: Shard, got: list[float]) -> None:
        for (hi, bi), v in zip(shard.conditions, got):
            self.values[(shard.layer, hi, bi)] = v

    def save(self, store: SweepStore, shard: Shard, got: list[float]) -> None:
        store.write(shard.layer, list(shard.conditions), got)

    def summary(self, plan: SweepPlan) -> dict[str, Any]:
        return {
            "clean_baseline": plan.clean_baseline,
            "corrupted_baseline": plan.corrupted_baseline,
        }

    def result(
        self, plan: SweepPlan, metric: str, target: str, direction: str
    ) -> FrequencyPatchingResult:
        grid = torch.full(
            (len(plan.layers), len(plan.heads), len(plan.bands)), math.nan, dtype=torch.float64
        )
        for li, layer in enumerate(plan.layers):
            for hi in range(len(plan.heads)):
                for bi in range(len(plan.bands)):
                    grid[li, hi, bi] = self.values[(layer, hi, bi)]
        return FrequencyPatchingResult(
            values=grid,
            layers=plan.layers,
            heads=plan.heads,
            head_axis=plan.head_axis,
            query_heads=plan.query_heads,
            bands=plan.bands,
            target=target,
            direction=direction,
            clean_baseline=plan.clean_baseline,
            corrupted_baseline=plan.corrupted_baseline,
            metric=metric,
        )
