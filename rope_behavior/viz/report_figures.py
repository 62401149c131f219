"""The figures of the one-file report, by key: :func:`figures_for` (the report's figure
``<div>`` ids are ``fig-<key>``), and the checks of its inputs that the report shares."""

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from rope_behavior.errors import RopeBehaviorError, validates_inputs
from rope_behavior.frequency.usage import FrequencyUsage
from rope_behavior.model.spec import RopeSpec
from rope_behavior.patching.sweep import FrequencyPatchingResult
from rope_behavior.scoring.results import HeadScores, ScoreSummary
from rope_behavior.viz import plots

__all__ = ["figures_for", "summary_of"]


def summary_of(scores: Any, per_pair: bool) -> Any:
    """Averaged scores (a HeadScores is averaged once here); checks the pair axis."""
    if scores is None:
        return None
    what = "pair_scores" if per_pair else "scores"
    if isinstance(scores, HeadScores):
        scores = scores.mean()
    if isinstance(scores, ScoreSummary):
        if scores.per_pair != per_pair:
            raise RopeBehaviorError(
                f"{what} {'lack' if per_pair else 'have'} a pair axis; expected "
                f"score_heads(..., per_pair={per_pair}) (or its .mean())"
            )
        return scores
    if not per_pair and hasattr(scores, "columns"):
        return scores  # a per-head frame (plots.plane_frame)
    raise RopeBehaviorError(
        f"{what} is a {type(scores).__name__}; expected HeadScores or ScoreSummary"
        + ("" if per_pair else " or a per-head DataFrame (layer, head, s_pos, s_sym)")
    )


def _task_frames(tasks: Any) -> tuple[Any, Any]:
    if isinstance(tasks, Mapping):
        return tasks.get("results"), tasks.get("by_position")
    if hasattr(tasks, "results") and hasattr(tasks, "by_position"):
        return tasks.results, tasks.by_position
    raise RopeBehaviorError(
        f"tasks is a {type(tasks).__name__}; expected an ExperimentResult (run_experiment) "
        "or a mapping with 'results' and / or 'by_position' frames"
    )


def _titled(items: Sequence[Any], kind: Any, what: str) -> list[tuple[str | None, Any]]:
    """``items`` as (title or None, object) pairs, each object an instance of ``kind``."""
    out: list[tuple[str | None, Any]] = []
    for i, item in enumerate(items):
        title, obj = item if isinstance(item, tuple) and len(item) == 2 else (None, item)
        if not isinstance(obj, kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise RopeBehaviorError(
                f"{what}[{i}] is a {type(obj).__name__}; expected a {names} or a "
                f"(title, {names}) pair"
            )
        out.append((None if title is None else str(title), obj))
    return out


def _sweep_figure(title: str | None, sweep: Any) -> go.Figure:
    if isinstance(sweep, FrequencyPatchingResult):
        same = sweep.clean_baseline == sweep.corrupted_baseline
        value = "value" if same else "normalized"
        title = title or f"{sweep.direction} patching of {sweep.target} ({value})"
        return plots.sweep_heatmap(sweep.to_frame(), value=value, title=title)
    return plots.sweep_heatmap(sweep, title=title)


@validates_inputs
def figures_for(
    *,
    spec: RopeSpec | None = None,
    usage: FrequencyUsage | None = None,
    scores: Any = None,
    pair_scores: Any = None,
    sweeps: Sequence[Any] = (),
    tasks: Any = None,
    extra_figures: Sequence[Any] = (),
) -> dict[str, go.Figure]:
    """The report's figures by key (``spectrum``, ``usage``, ``plane``, ``pair-scores``,
    ``sweep-<i>``, ``task-accuracy-vs-pair``, ``task-by-position-<i>``, ``extra-<i>``),
    only those whose inputs are given; see :func:`report` for the inputs."""
    import pandas as pd

    for what, obj, kind in (("spec", spec, RopeSpec), ("usage", usage, FrequencyUsage)):
        if obj is not None and not isinstance(obj, kind):
            raise RopeBehaviorError(
                f"{what} is a {type(obj).__name__}; expected a {kind.__name__} or None"
            )
    figs: dict[str, go.Figure] = {}
    summary, pair_summary = summary_of(scores, False), summary_of(pair_scores, True)
    if spec is not None:
        figs["spectrum"] = plots.omega_spectrum(spec)
    if usage is not None:
        figs["usage"] = plots.frequency_usage_heatmap(usage)
    if summary is not None:
        figs["plane"] = plots.positional_symbolic_plane(summary, usage)
    if pair_summary is not None:
        heads = None
        if summary is not None:
            pos, sym = plots.extreme_heads(summary, k=2)
            chosen = [*zip(pos["layer"], pos["head"]), *zip(sym["layer"], sym["head"])]
            heads = [(int(la), int(h)) for la, h in chosen if la in pair_summary.layers] or None
        figs["pair-scores"] = plots.pair_score_curves(
            pair_summary, spec if spec is not None else usage, heads=heads
        )
    for i, (title, sweep) in enumerate(
        _titled(sweeps, (FrequencyPatchingResult, pd.DataFrame), "sweeps")
    ):
        figs[f"sweep-{i}"] = _sweep_figure(title, sweep)
    if tasks is not None:
        results, by_position = _task_frames(tasks)
        if results is not None and results["setting"].str.startswith("pair:").any():
            figs["task-accuracy-vs-pair"] = plots.accuracy_vs_pair(results)
        if by_position is not None:
            for i, task in enumerate(dict.fromkeys(by_position["task"])):
                figs[f"task-by-position-{i}"] = plots.accuracy_by_position(by_position, task=task)
    for i, (title, fig) in enumerate(_titled(extra_figures, go.Figure, "extra_figures")):
        if title is not None:
            fig = go.Figure(fig).update_layout(title=title)
        figs[f"extra-{i}"] = fig
    return figs
