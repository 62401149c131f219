"""Compare RoPE edits in one call: per head the shift of s_POS / s_SYM and of frequency
usage, and the model's loss, next-token accuracy and (optionally) a task metric.

:func:`compare_edits` scores the prompts as :func:`~rope_behavior.analyze` does (whole
heads, ``per_pair=False``: :func:`~rope_behavior.analysis.corpus.score_corpus`, scores and
frequency usage from one forward per batch) once on the unedited model and once per edit
with the edit installed for that pass (:func:`~rope_behavior.intervened`); each pass's
forwards run on to the logits, which give the loss and accuracy, so an edit costs one
pass. Keys-mode scoring scores the edited model: the edits compile to angle-override and
zeroing hooks, which keys mode reads as one linear map per position (checked against the
keys the model used) and scores in its destination form, as fast as the unedited model
(:mod:`rope_behavior.scoring.key_chain`). The same prompts and seed give the same swaps,
so every score is paired with the unedited one of the same prompt and swap set.

Intervals: the shift of a head's score is the mean over prompts of the per-prompt
difference (edited - unedited); its interval is a percentile bootstrap over prompts of
that mean (paired: prompts resampled together; ``n_boot`` resamples, ``seed``). The swaps
are the same on both sides, so they are not resampled. Usage shift: the change of each
head's usage centroid in log omega (usage-weighted mean of the model's own log omega).
Loss and accuracy: mean next-token cross-entropy (nats) and top-1 accuracy over every
prediction of a real token from a real token of ``tokens``
(:mod:`rope_behavior.analysis.next_token`). The task metric, where given, is one more
forward of its own prompts per edit.
"""

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from rope_behavior import display
from rope_behavior.analysis.band_ablation import band_values
from rope_behavior.analysis.corpus import CorpusScores, score_corpus
from rope_behavior.analysis.edit_names import NoPEBelowBand, edit_label, parse_edit
from rope_behavior.analysis.next_token import NextToken
from rope_behavior.errors import (
    RopeBehaviorError,
    as_count,
    as_fraction,
    as_seed,
    validates_inputs,
)
from rope_behavior.frequency.norm_bands import high_norm_bands
from rope_behavior.interventions.compile import intervened, run_with_interventions
from rope_behavior.interventions.rope_edits import RopeEdit
from rope_behavior.model.context import ModelContext, evaluating, resolve
from rope_behavior.qk.captured import validate_tokens
from rope_behavior.scoring.head_classes import head_purity

__all__ = ["EditComparison", "compare_edits"]

Shift = Float[Tensor, "edit layer head"]


@dataclass(frozen=True, eq=False)
class EditComparison:
    """What :func:`compare_edits` measured. Per head (``[edit, layer, head]``): ``d_pos``,
    ``d_sym`` the mean shift of s_POS / s_SYM over prompts with intervals ``*_lo`` /
    ``*_hi``, ``d_centroid`` the usage centroid's shift (log omega). Per edit, the
    unedited model first (``[1 + edit]``): ``loss``, ``accuracy``, ``metric`` (NaN
    without a task metric), ``pass_seconds`` (each scoring pass). ``purity``: each
    head's class on the unedited model."""

    model_name: str
    edits: tuple[str, ...]
    layers: tuple[int, ...]
    n_heads: int
    purity: tuple[str, ...] = field(repr=False)
    base_pos: Float[Tensor, "layer head"] = field(repr=False)
    base_sym: Float[Tensor, "layer head"] = field(repr=False)
    d_pos: Shift = field(repr=False)
    d_pos_lo: Shift = field(repr=False)
    d_pos_hi: Shift = field(repr=False)
    d_sym: Shift = field(repr=False)
    d_sym_lo: Shift = field(repr=False)
    d_sym_hi: Shift = field(repr=False)
    d_centroid: Shift = field(repr=False)
    loss: tuple[float, ...]
    accuracy: tuple[float, ...]
    metric: tuple[float, ...]
    n_prompts: int
    n_predictions: int
    confidence_level: float
    n_boot: int
    pass_seconds: tuple[float, ...]
    seconds: float
    values: tuple[tuple[Any, ...], ...] = field(repr=False, default=())

    def to_frame(self) -> Any:
        """Tidy: one row per (edit, layer, head) with the unedited scores, the head's class
        and the shifts with their intervals."""
        import pandas as pd

        rows = []
        for e, name in enumerate(self.edits):
            for li, layer in enumerate(self.layers):
                for h in range(self.n_heads):
                    rows.append({
                        "edit": name, "layer": layer, "head": h,
                        "purity": self.purity[li * self.n_heads + h],
                        "s_pos": float(self.base_pos[li, h]),
                        "s_sym": float(self.base_sym[li, h]),
                        "d_pos": float(self.d_pos[e, li, h]),
                        "d_pos_lo": float(self.d_pos_lo[e, li, h]),
                        "d_pos_hi": float(self.d_pos_hi[e, li, h]),
                        "d_sym": float(self.d_sym[e, li, h]),
                        "d_sym_lo": float(self.d_sym_lo[e, li, h]),
                        "d_sym_hi": float(self.d_sym_hi[e, li, h]),
                        "d_centroid_log_omega": float(self.d_centroid[e, li, h]),
                    })  # fmt: skip
        return pd.DataFrame(rows)

    def edits_frame(self) -> Any:
        """One row per edit (the unedited model first, as ``none``): loss, accuracy and
        metric with their shifts, and the mean |shift| of the scores
        (``(|d_pos| + |d_sym|) / 2``) over the positional-leaning heads (s_POS > s_SYM on
        the unedited model) and over the content-leaning ones (s_SYM > s_POS), both among
        heads neither unidentifiable nor at the uniform corner (``n_*``: how many)."""
        import pandas as pd

        usable = torch.tensor([p not in ("unidentifiable", "uniform") for p in self.purity])
        lean = (self.base_pos - self.base_sym).flatten()
        groups = {"pos_leaning": usable & (lean > 0), "sym_leaning": usable & (lean < 0)}
        rows = []
        for i, name in enumerate(("none", *self.edits)):
            row = {
                "edit": name,
                "loss": self.loss[i], "d_loss": self.loss[i] - self.loss[0],
                "accuracy": self.accuracy[i], "d_accuracy": self.accuracy[i] - self.accuracy[0],
                "metric": self.metric[i], "d_metric": self.metric[i] - self.metric[0],
            }  # fmt: skip
            for g, pick in groups.items():
                if i == 0 or not bool(pick.any()):
                    row[f"shift_{g}"] = 0.0 if i == 0 else math.nan
                else:
                    size = ((self.d_pos[i - 1].abs() + self.d_sym[i - 1].abs()) / 2).flatten()
                    row[f"shift_{g}"] = float(size[pick].nanmean())
                row[f"n_{g}"] = int(pick.sum())
            rows.append(row)
        return pd.DataFrame(rows)

    def summary_dict(self) -> dict[str, Any]:
        """JSON-ready: settings and the per-edit table (what ``rope-behavior compare``
        writes to summary.json)."""
        frame = self.edits_frame()
        return {
            "model": self.model_name,
            "prompts": self.n_prompts,
            "predictions": self.n_predictions,
            "confidence_level": self.confidence_level,
            "bootstrap": self.n_boot,
            "interval": "percentile bootstrap over prompts of the paired mean shift",
            "seconds": round(self.seconds, 2),
            "pass_seconds": [round(s, 2) for s in self.pass_seconds],
            "edits": [
                {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                for r in frame.to_dict("records")
            ],
        }

    def __repr__(self) -> str:
        return display.text(self)

    def _repr_html_(self) -> str:
        return display.html(self)


def _named(edits: Any, original_context: int | None) -> list[tuple[str, Any]]:
    if isinstance(edits, (str, RopeEdit, NoPEBelowBand)) or not isinstance(edits, Sequence):
        raise RopeBehaviorError(
            f"edits={edits!r}: expected a list of edits (names like 'prope:0.25', or PRoPE / "
            "NoPEBelow / RopeScaling / NoPEBelowBand values)"
        )
    if not edits:
        raise RopeBehaviorError("edits=[]: expected at least one edit to compare")
    out = []
    for e in edits:
        if isinstance(e, str):
            out.append((e.strip().lower(), parse_edit(e, original_context=original_context)))
        elif isinstance(e, (RopeEdit, NoPEBelowBand)):
            out.append((edit_label(e), e))
        else:
            raise RopeBehaviorError(
                f"edit {e!r} ({type(e).__name__}); expected a name ('prope:0.25', ...) or a "
                "PRoPE / NoPEBelow / RopeScaling / NoPEBelowBand value"
            )
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RopeBehaviorError(f"edits {dup} are given twice; give each edit once")
    return out


def _task(task_metric: Any, context: ModelContext) -> tuple[Tensor, Any] | None:
    if task_metric is None:
        return None
    if hasattr(task_metric, "clean_tokens") and hasattr(task_metric, "metric"):
        tokens, metric = task_metric.clean_tokens, task_metric.metric
    elif isinstance(task_metric, tuple) and len(task_metric) == 2:
        tokens, metric = task_metric
    else:
        raise RopeBehaviorError(
            f"task_metric={type(task_metric).__name__}; expected (tokens, metric) with "
            "metric(logits) -> a number, or binding_patching_inputs(model, n), or None"
        )
    if not callable(metric):
        raise RopeBehaviorError(f"task_metric: metric {metric!r} is not callable")
    return validate_tokens(tokens, context.adapter), metric


def _metric(
    context: ModelContext, values: tuple[Any, ...], task: tuple[Tensor, Any] | None
) -> float:
    """The task metric with ``values`` installed (NaN without a task)."""
    if task is None:
        return math.nan
    with torch.no_grad(), evaluating(context.model):
        return float(task[1](run_with_interventions(context, task[0], values)))


def _paired(
    edited: Tensor, base: Tensor, n_boot: int, level: float, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean over prompts of ``edited - base`` ``[prompt, layer, head]`` and its percentile
    bootstrap interval over prompts."""
    diff = (edited - base).double()
    idx = torch.randint(0, diff.shape[0], (n_boot, diff.shape[0]), generator=gen)
    boot = diff[idx].nanmean(1).flatten(1)  # [boot, layer*head]
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = boot.nanquantile(q, dim=0).unflatten(-1, diff.shape[1:])
    return diff.nanmean(0), lo, hi


def _centroids(a: CorpusScores) -> Tensor:
    frame = a.usage.head_frame()
    return torch.tensor(frame["centroid_log_omega"].to_numpy(dtype=float)).view(
        len(a.scores.layers), a.scores.n_heads
    )


def _scored(
    context: ModelContext, tokens: Tensor, settings: dict[str, Any]
) -> tuple[CorpusScores, NextToken, float]:
    """One pass: scores, usage and next-token loss from one forward per batch, and its
    seconds."""
    t0 = time.perf_counter()
    out = score_corpus(context, tokens, per_pair=False, next_token=True, **settings)
    if out.next_token is None:
        raise RopeBehaviorError("score_corpus(next_token=True) gave no next-token loss")
    return out, out.next_token, time.perf_counter() - t0


@validates_inputs
def compare_edits(
    model: Any,
    tokens: Int[Tensor, "prompt pos"],
    edits: Sequence[Any],
    *,
    attention_mask: Int[Tensor, "prompt pos"] | None = None,
    task_metric: Any = None,
    batch_size: int = 8,
    block_size: int = 8,
    seed: int = 0,
    n_boot: int = 1000,
    confidence_level: float = 0.95,
    name: str | None = None,
) -> EditComparison:
    """Compare ``edits`` of ``model`` against the unedited model on ``tokens`` (see the
    module docstring for what is measured and how the intervals are drawn).

    Args:
        model: a TransformerBridge, a HookedTransformer, a toy model or a resolved context.
        tokens: prompts ``[prompt, pos]`` (held-out text: scored, and the loss is theirs),
            right-padded with ``attention_mask`` (0 = padding) when of different lengths.
        edits: names (``"prope:0.25"``, ``"nope-below:4"``, ``"linear:2"``, ``"ntk:2"``,
            ``"yarn:4"``, ``"nope-below-band"``) or values (``PRoPE``, ``NoPEBelow``,
            ``RopeScaling``, :class:`~rope_behavior.analysis.edit_names.NoPEBelowBand`).
            ``yarn:<f>`` takes the model's ``cfg.n_ctx`` as its original context.
        task_metric: ``None``, ``(tokens, metric)`` with ``metric(logits)`` a number, or
            ``binding_patching_inputs(model, n)`` (its clean prompts and logit difference).
        batch_size: prompts per forward, as :func:`~rope_behavior.analyze`.
        block_size: keys per block of the swap score, as :func:`~rope_behavior.analyze`.
        seed: draws the swaps (as :func:`~rope_behavior.analyze`) and the bootstrap.
        n_boot: bootstrap resamples of the prompts.
        confidence_level: of the intervals.
        name: the model's name in the result (default: its architecture).
    """
    t0 = time.perf_counter()
    context = resolve(model)
    n_boot = as_count(n_boot, "n_boot", hint="bootstrap resamples")
    level = as_fraction(confidence_level, "confidence_level", open_low=True, open_high=True)
    seed = as_seed(seed)
    if name is not None and not isinstance(name, str):
        raise RopeBehaviorError(
            f"name={name!r} ({type(name).__name__}); expected a str or None (the model's name "
            "in the result; None: its architecture)"
        )
    n_ctx = getattr(getattr(context.model, "cfg", None), "n_ctx", None)
    named = _named(edits, n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None)
    task = _task(task_metric, context)
    tokens = validate_tokens(tokens, context.adapter, min_len=2)
    settings: dict[str, Any] = {
        "attention_mask": attention_mask, "batch_size": batch_size, "block_size": block_size,
        "seed": seed,
    }  # fmt: skip
    passes = [_scored(context, tokens, settings)]
    metrics = [_metric(context, (), task)]
    values = []
    for _, edit in named:
        if isinstance(edit, NoPEBelowBand):
            vals: tuple[Any, ...] = band_values(
                high_norm_bands(passes[0][0].usage, ratio=edit.ratio), context
            )
        else:
            edit.overrides(context.spec)  # refuses a model it cannot edit, before scoring
            vals = (edit,)
        values.append(vals)
        with intervened(context, vals):
            passes.append(_scored(context, tokens, settings))
        metrics.append(_metric(context, vals, task))
    analyses = [a for a, _, _ in passes]
    predicted = [p for _, p, _ in passes]
    base = analyses[0]
    gen = torch.Generator().manual_seed(seed)
    shifts: dict[str, list[Tensor]] = {
        k: [] for k in ("pos", "pos_lo", "pos_hi", "sym", "sym_lo", "sym_hi", "cent")
    }
    for a in analyses[1:]:
        for side in ("pos", "sym"):
            got = _paired(
                getattr(a.scores, f"s_{side}"),
                getattr(base.scores, f"s_{side}"),
                n_boot,
                level,
                gen,
            )
            for key, t in zip((side, f"{side}_lo", f"{side}_hi"), got):
                shifts[key].append(t)
        shifts["cent"].append(_centroids(a) - _centroids(base))
    summary = base.scores.mean(seed=seed).to_frame()  # analyze's summary
    purity = head_purity(
        summary, s_pos="s_pos_mean", s_sym="s_sym_mean", identifiable="identifiable_fraction"
    )
    shape = (len(base.scores.layers), base.scores.n_heads)
    return EditComparison(
        model_name=name or base.spec.architecture,
        edits=tuple(n for n, _ in named),
        layers=tuple(base.scores.layers),
        n_heads=base.scores.n_heads,
        purity=tuple(str(p) for p in purity),
        base_pos=torch.tensor(summary["s_pos_mean"].to_numpy(dtype=float)).view(shape),
        base_sym=torch.tensor(summary["s_sym_mean"].to_numpy(dtype=float)).view(shape),
        d_pos=torch.stack(shifts["pos"]),
        d_pos_lo=torch.stack(shifts["pos_lo"]),
        d_pos_hi=torch.stack(shifts["pos_hi"]),
        d_sym=torch.stack(shifts["sym"]),
        d_sym_lo=torch.stack(shifts["sym_lo"]),
        d_sym_hi=torch.stack(shifts["sym_hi"]),
        d_centroid=torch.stack(shifts["cent"]),
        loss=tuple(p.loss for p in predicted),
        accuracy=tuple(p.accuracy for p in predicted),
        metric=tuple(metrics),
        n_prompts=base.n_prompts,
        n_predictions=predicted[0].n_predictions,
        confidence_level=level,
        n_boot=n_boot,
        pass_seconds=tuple(t for _, _, t in passes),
        seconds=time.perf_counter() - t0,
        values=tuple(values),
    )
