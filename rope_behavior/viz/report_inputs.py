"""What a report shows, read from result objects: ``report(analysis)``, ``report(sweep)``,
``report(analysis, sweep, experiment)`` fill the report's inputs from what each result holds."""

import os
from pathlib import Path
from typing import Any

from rope_behavior.analysis.main_job import Analysis
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.patching.sweep import FrequencyPatchingResult

__all__ = ["analysis_notes", "report_inputs"]


def analysis_notes(analysis: Analysis, source: str | None = None) -> list[str]:
    """The report's notes on how an :class:`Analysis` was measured."""
    s = analysis.scores
    prompts = f"Prompts: {analysis.n_prompts}" + (f" from {source}" if source else "")
    return [
        f"{prompts}; {analysis.n_tokens} tokens.",
        f"Scores: keys mode, block size {s.block_size}, blocks aligned to the query "
        f"({s.align}), {len(s.swaps)} of {s.n_block_pairs} block pairs; intervals: "
        "bootstrap over prompts and swaps.",
    ]


def report_inputs(results: tuple[Any, ...]) -> tuple[Path | None, dict[str, Any]]:
    """Split ``results`` into a path (a leading ``str`` / ``PathLike``, as in
    ``report("out.html", title=...)``) and the report's inputs: an :class:`Analysis` gives
    spec, usage, scores, per-pair scores, correspondence, title and notes; a
    :class:`FrequencyPatchingResult` (or ``(title, result)``) a sweep; an
    ``ExperimentResult`` the tasks section."""
    from rope_behavior.tasks.experiment import ExperimentResult

    path = None
    rest = list(results)
    if rest and isinstance(rest[0], str | os.PathLike):
        path = Path(rest.pop(0))
    inputs: dict[str, Any] = {"sweeps": [], "notes": []}
    for r in rest:
        if isinstance(r, Analysis):
            if "spec" in inputs:
                raise RopeBehaviorError("report takes one Analysis; got two")
            inputs.update(
                title=f"rope_behavior: {r.model_name}",
                spec=r.spec,
                usage=r.usage,
                scores=r.summary,
                pair_scores=r.pair_summary,
                correspondence=r.correspondence,
            )
            inputs["notes"] += analysis_notes(r)
        elif isinstance(r, FrequencyPatchingResult) or (
            isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], FrequencyPatchingResult)
        ):
            inputs["sweeps"].append(r)
        elif isinstance(r, ExperimentResult):
            inputs["tasks"] = r
        else:
            raise RopeBehaviorError(
                f"report got a {type(r).__name__}; expected results to show (an Analysis, a "
                "FrequencyPatchingResult or (title, result), an ExperimentResult), a path "
                "first, or keyword inputs (spec=, usage=, scores=, ...)"
            )
    return path, inputs
