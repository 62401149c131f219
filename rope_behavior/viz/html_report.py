"""One self-contained HTML report of an analysis: every figure, the numbers behind them.

:func:`report` writes a single file that opens offline: plotly.js is inlined once (from
the installed plotly package) and each figure is a ``<div>`` drawn by it. Sections appear
only for the inputs given: summary, RoPE spectrum, frequency usage, the
positional–symbolic plane, per-pair score curves, the behaviour–frequency correspondence,
patching sweeps, task figures, extra figures, and a table of heads. All text is escaped.
The file is written under a temporary name in the same folder and renamed at the end, so
an interrupted run leaves no half-written report (:mod:`rope_behavior.viz.page`).
:func:`~rope_behavior.viz.report_figures.figures_for` builds the figures alone (the
report's figure ``<div>`` ids are ``fig-<key>``).
"""

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rope_behavior.analysis.correspondence import FrequencyCorrespondence
from rope_behavior.errors import RopeBehaviorError, validates_inputs
from rope_behavior.frequency.usage import FrequencyUsage
from rope_behavior.model.spec import RopeSpec
from rope_behavior.scoring.head_classes import (
    PURE_SIDE,
    PURITY_NAMES,
    UNIFORM_CORNER,
    purity_counts,
)
from rope_behavior.scoring.results import HeadScores, ScoreSummary
from rope_behavior.viz import plots
from rope_behavior.viz.page import CSS, figure_div, write_atomic
from rope_behavior.viz.plotly_bundle import plotly_js
from rope_behavior.viz.report_figures import figures_for, summary_of
from rope_behavior.viz.report_inputs import report_inputs

__all__ = ["figures_for", "report"]

_COUNTED = (("sweeps", "frequency patching sweep(s)"), ("tasks", "task figure(s)"))
_TITLES = {
    "summary": "Summary", "spectrum": "RoPE spectrum", "usage": "Frequency usage",
    "plane": "Positional–symbolic plane", "pair-scores": "Per-pair score curves",
    "correspondence": "Behaviour–frequency correspondence",
    "sweeps": "Frequency patching sweeps", "tasks": "Task figures",
    "figures": "Further figures", "heads": "Heads",
}  # fmt: skip


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any, spec: str = ".3f") -> str:
    v = float(x) if isinstance(x, int | float) else math.nan
    return format(v, spec) if math.isfinite(v) else "n/a"


def _ul(label: str, items: Sequence[str]) -> str:
    lis = "".join(f"<li>{_e(m)}</li>" for m in items)
    return f"<p><strong>{_e(label)}:</strong></p><ul>{lis}</ul>" if items else ""


def _head_list(part: Any) -> str:
    if not len(part):
        return "none (no identifiable head off the uniform corner leans this way)"
    return ", ".join(
        f"L{r['layer']}H{r['head']} ({_num(r['s_pos'], '.2f')}, {_num(r['s_sym'], '.2f')})"
        for r in part.to_dict("records")
    )


def _layers_text(layers: Sequence[int]) -> str:
    """``layers 0–63`` / ``layers 0, 2, 5–7`` / ``layer 3``: runs of consecutive layers."""
    runs: list[list[int]] = []
    for layer in sorted(int(x) for x in layers):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    text = ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in runs)
    return f"layer {text}" if len(layers) == 1 else f"layers {text}"


def _measured(spec: Any, usage: Any, scores: Any, pair: Any, corr: Any, n: dict) -> list[str]:
    out = []
    if spec is not None:
        out.append(f"RoPE wavelengths of {spec.n_pairs} pairs in {spec.n_layers} layers")
    if usage is not None:
        how = "attention-weighted" if usage.attention_weighted else "unweighted"
        out.append(f"frequency usage ({how}) of heads in {_layers_text(usage.layers)}")
    if isinstance(scores, HeadScores):
        out.append(
            f"positional / symbolic scores ({scores.mode} mode, block_size "
            f"{scores.block_size}, {len(scores.swaps)} of {scores.n_block_pairs} block pairs, "
            f"{scores.s_pos.shape[0]} prompts) of {_layers_text(scores.layers)}"
        )
    elif isinstance(scores, ScoreSummary):
        out.append(
            f"positional / symbolic scores ({scores.n_swaps} of {scores.n_block_pairs} block "
            f"pairs, {scores.level:.0%} bootstrap intervals) of {_layers_text(scores.layers)}"
        )
    elif scores is not None:
        out.append(f"positional / symbolic scores of {len(scores)} heads (a frame)")
    if pair is not None:
        out.append("per-pair scores of single-pair projection heads")
    if corr is not None:
        out.append(f"behaviour–frequency rank correlation over {corr.n_heads} heads")
    out += [f"{n[k]} {label}" for k, label in _COUNTED if n[k]]
    return out


def _caveat(corr: FrequencyCorrespondence | None) -> str:
    if corr is None or not corr.caveat:
        return ""
    return f'<div class="caveat" role="alert"><strong>Caveat:</strong> {_e(corr.caveat)}</div>'


def _correspondence(corr: FrequencyCorrespondence) -> str:
    lo, hi = corr.rho_ci
    how = "exact over all" if corr.permutation_exact else "Monte Carlo over"
    p = f"{_num(corr.p_value, '.3g')} (two-sided, {how} {corr.n_permutations} permutations)"
    ci = f"[{_num(lo)}, {_num(hi)}] ({corr.rho_ci_method or 'undefined'})"
    items = [
        ("Spearman rho", _num(corr.rho)),
        ("p-value", p),
        (f"{corr.confidence_level:.0%} CI", ci),
        *([("note", corr.disagreement)] if corr.disagreement else []),
        ("heads", f"{corr.n_heads} of {corr.n_heads_total} enter the statistic"),
        ("layers", ", ".join(map(str, corr.layers))),
    ]
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    text = (
        '<p class="muted">rho relates each head\'s s_POS − s_SYM to its frequency centroid '
        "(pair index; 0 = highest frequency): negative means high-frequency heads are the "
        "positional ones.</p>"
    )
    return _caveat(corr) + f"<dl>{body}</dl>" + text


_CLASS_NOTE = (
    "Class (docs/method.md §4, from the intervals): pure positional when the s_POS interval "
    f"lies above {PURE_SIDE} and the s_SYM interval below it, pure symbolic the other way "
    f"round, uniform when both intervals lie at or above {UNIFORM_CORNER} (the uniform "
    "corner), unidentifiable when "
    "most of the head's rows are not identifiable (or an interval is undefined), mixed "
    "otherwise."
)


def _class_counts(summary: Any, usage: FrequencyUsage | None) -> str:
    """``Heads by class: 2 pure positional, ...`` (empty without the scores' intervals)."""
    frame = plots.plane_frame(summary, usage)
    if "purity" not in frame.columns:
        return ""
    counts = purity_counts(frame["purity"])
    text = ", ".join(f"{n} {PURITY_NAMES[c]}" for c, n in counts.items())
    return f"<p><strong>Heads by class</strong> (see Heads): {_e(text)}</p>"


def _heads_table(summary: Any, usage: FrequencyUsage | None) -> str:
    pos = sym = None
    if summary is not None:
        frame = plots.plane_frame(summary, usage)
        pos, sym = plots.extreme_heads(frame)
    elif usage is not None:
        frame = usage.head_frame()
    marks = {}
    for part, cls in ((pos, "pos"), (sym, "sym")):
        if part is not None:
            marks.update({(int(r.layer), int(r.head)): cls for r in part.itertuples()})
    cols = [("layer", "layer"), ("head", "head")]
    for key, name in (("s_pos", "s_POS"), ("s_sym", "s_SYM")):
        if key in frame.columns:
            cols.append((key, name + (" [lo, hi]" if f"{key}_lo" in frame.columns else "")))
    if "purity" in frame.columns:
        cols.append(("purity", "class"))
    for key, name in (
        ("identifiable_fraction", "identifiable fraction"),
        ("swapped_mass", "swapped mass"),
        ("centroid", "usage centroid (pair)"),
    ):
        if key in frame.columns:
            cols.append((key, name))
    head = "".join(f"<th>{_e(name)}</th>" for _, name in cols)
    rows = []
    for r in frame.to_dict("records"):
        cells = []
        for key, _ in cols:
            if key in ("layer", "head"):
                cells.append(str(int(r[key])))
            elif key == "purity":
                cells.append(PURITY_NAMES.get(r[key], str(r[key])))
            elif f"{key}_lo" in r:
                cells.append(f"{_num(r[key])} [{_num(r[key + '_lo'])}, {_num(r[key + '_hi'])}]")
            else:
                cells.append(_num(r[key], ".2f" if key == "centroid" else ".3f"))
        cls = marks.get((int(r["layer"]), int(r["head"])), "")
        tds = "".join(f"<td>{_e(c)}</td>" for c in cells)
        rows.append(f'<tr class="{cls}">{tds}</tr>' if cls else f"<tr>{tds}</tr>")
    legend = "Shaded: the most positional (blue) and most symbolic (red) identifiable heads."
    if "purity" in frame.columns:
        legend += " " + _CLASS_NOTE
    legend = f'<p class="muted">{legend}</p>' if summary is not None else ""
    return f"{legend}<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


@validates_inputs
def report(
    *results: Any,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
    spec: RopeSpec | None = None,
    usage: FrequencyUsage | None = None,
    scores: Any = None,
    pair_scores: Any = None,
    correspondence: FrequencyCorrespondence | None = None,
    sweeps: Sequence[Any] = (),
    tasks: Any = None,
    extra_figures: Sequence[Any] = (),
    notes: Sequence[str] = (),
) -> Path:
    """Write one self-contained HTML report to ``path`` (default ``report.html`` in the
    working folder) and return it.

    ``results`` are what to show: ``report(analysis)``, ``report(sweep)``,
    ``report(analysis, sweep, experiment)`` (an :class:`~rope_behavior.Analysis`, a
    ``FrequencyPatchingResult`` or ``(title, result)``, an ``ExperimentResult``); a path
    may come first (``report("out.html", analysis)``). Keyword inputs add to them or
    replace them:

    Inputs (each optional; a section appears only for those given): ``spec`` (a
    :class:`~rope_behavior.RopeSpec`), ``usage`` (:class:`~rope_behavior.FrequencyUsage`),
    ``scores`` (whole-head :class:`~rope_behavior.HeadScores` or its ``ScoreSummary``, or a
    per-head frame), ``pair_scores`` (per-pair scores, ``per_pair=True``),
    ``correspondence`` (:class:`~rope_behavior.FrequencyCorrespondence`; its caveat is
    shown prominently), ``sweeps`` (``FrequencyPatchingResult`` or ``(title, result)``),
    ``tasks`` (an ``ExperimentResult`` or ``{"results": ..., "by_position": ...}``),
    ``extra_figures`` (Figures or ``(title, Figure)``) and ``notes`` (lines of text).
    """
    given_path, found = report_inputs(results)
    path = Path(path if path is not None else given_path or "report.html")
    title = title or found.get("title") or "rope_behavior report"
    spec = spec if spec is not None else found.get("spec")
    usage = usage if usage is not None else found.get("usage")
    scores = scores if scores is not None else found.get("scores")
    pair_scores = pair_scores if pair_scores is not None else found.get("pair_scores")
    if correspondence is None:
        correspondence = found.get("correspondence")
    tasks = tasks if tasks is not None else found.get("tasks")
    sweeps = [*found["sweeps"], *sweeps]
    notes = [*found["notes"], *([notes] if isinstance(notes, str) else notes)]
    if not path.parent.is_dir():
        raise RopeBehaviorError(
            f"report path {str(path)!r}: folder {str(path.parent)!r} does not exist"
        )
    if correspondence is not None and not isinstance(correspondence, FrequencyCorrespondence):
        raise RopeBehaviorError(
            f"correspondence is a {type(correspondence).__name__}; expected a "
            "FrequencyCorrespondence (behavior_frequency_correspondence) or None"
        )
    if isinstance(notes, str):
        notes = [notes]
    summary = summary_of(scores, False)
    figs = figures_for(
        spec=spec,
        usage=usage,
        scores=summary,
        pair_scores=pair_scores,
        sweeps=sweeps,
        tasks=tasks,
        extra_figures=extra_figures,
    )
    by_prefix = {p: [k for k in figs if k.startswith(p)] for p in ("sweep-", "task-", "extra-")}
    counts = {"sweeps": len(by_prefix["sweep-"]), "tasks": len(by_prefix["task-"])}
    parts: dict[str, str] = {}
    lines = [f"<p><strong>Model:</strong> {_e(spec if spec is not None else 'not given')}</p>"]
    lines.append(
        _ul("Measured", _measured(spec, usage, scores, pair_scores, correspondence, counts))
    )
    if summary is not None:
        pos, sym = plots.extreme_heads(summary, usage)
        lines.append(
            f"<p><strong>Most positional heads</strong> (s_POS, s_SYM): {_e(_head_list(pos))}<br>"
            f"<strong>Most symbolic heads</strong> (s_POS, s_SYM): {_e(_head_list(sym))}</p>"
        )
        lines.append(_class_counts(summary, usage))
    parts["summary"] = "".join([*lines, _caveat(correspondence), _ul("Notes", notes)])
    for key in ("spectrum", "usage", "plane", "pair-scores"):
        if key in figs:
            parts[key] = figure_div(key, figs[key])
    if correspondence is not None:
        parts["correspondence"] = _correspondence(correspondence)
    for section, prefix in (("sweeps", "sweep-"), ("tasks", "task-"), ("figures", "extra-")):
        if by_prefix[prefix]:
            parts[section] = "".join(figure_div(k, figs[k]) for k in by_prefix[prefix])
    if summary is not None or usage is not None:
        parts["heads"] = _heads_table(summary, usage)
    nav = "".join(f'<a href="#{k}">{_e(_TITLES[k])}</a>' for k in parts)
    body = "".join(
        f'<section id="{k}"><h2>{_e(_TITLES[k])}</h2>{v}</section>' for k, v in parts.items()
    )
    js = plotly_js(figs.values())
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{CSS}</style>"
        f'<script type="text/javascript">{js}</script></head>'
        f"<body><h1>{_e(title)}</h1><nav>{nav}</nav>{body}</body></html>\n"
    )
    write_atomic(path, page)
    return path
