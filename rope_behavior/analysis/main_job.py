"""The main job in one call: every head's frequency usage, positional / symbolic scores
with intervals, and the correspondence between them, streamed over prompt batches.

:func:`analyze` takes token ids ``[prompt, pos]`` (with an attention mask for prompts of
different lengths, right-padded) and runs, batch by batch, :func:`~rope_behavior.qk.captured`
+ :func:`~rope_behavior.frequency_usage` (merged exactly over batches) and
:func:`~rope_behavior.score_heads` (whole heads, and per pair), then
:func:`~rope_behavior.behavior_frequency_correspondence` on the whole set. The swaps are
drawn once for the whole set, among the blocks every prompt has, so every batch uses the
same ones and the per-prompt scores concatenate into one :class:`HeadScores`
(:func:`~rope_behavior.analysis.corpus.score_corpus`; the batches run here, or on Ray
workers with ``executor=RayExecutor()``). Scoring
settings are score_heads' defaults: blocks tile back from each prompt's last token (its
nearest keys are scored), BOS excluded when the tokenizer prepends it, identifiability
needs moved attention, every block pair when there are at most 64.
"""

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from rope_behavior import display
from rope_behavior.analysis.corpus import concat_scores, score_corpus
from rope_behavior.analysis.correspondence import (
    FrequencyCorrespondence,
    behavior_frequency_correspondence,
)
from rope_behavior.errors import RopeBehaviorError, as_count, as_seed, validates_inputs
from rope_behavior.frequency.usage import FrequencyUsage
from rope_behavior.model.context import ModelContext
from rope_behavior.model.spec import RopeSpec
from rope_behavior.scoring.head_classes import (
    extreme_heads,
    head_purity,
    is_identifiable,
    purity_counts,
)
from rope_behavior.scoring.results import HeadScores, ScoreSummary

__all__ = ["Analysis", "analyze", "concat_scores", "tokenize_prompts"]


@dataclass(frozen=True, eq=False)
class Analysis:
    """What :func:`analyze` measured. ``summary`` / ``pair_summary`` are the whole-head
    and per-pair :class:`ScoreSummary` (bootstrap intervals over prompts and swaps)."""

    model_name: str
    spec: RopeSpec
    usage: FrequencyUsage = field(repr=False)
    scores: HeadScores = field(repr=False)
    summary: ScoreSummary = field(repr=False)
    pair_summary: ScoreSummary | None = field(repr=False)
    correspondence: FrequencyCorrespondence
    n_prompts: int
    n_tokens: int
    seconds: float

    def heads_frame(self) -> Any:
        """One row per head: scores with intervals, ``behavior`` (``s_pos - s_sym``), the
        head's ``purity`` class (:func:`~rope_behavior.scoring.head_classes.head_purity`,
        docs/method.md §4), identifiability, masses, centroids."""
        df = self.summary.to_frame()
        cent = self.usage.head_frame()
        keep = [c for c in cent.columns if c in ("layer", "head") or c.startswith("centroid")]
        df = df.merge(cent[keep], on=["layer", "head"], how="left")
        df.insert(2, "behavior", df["s_pos_mean"] - df["s_sym_mean"])
        purity = head_purity(
            df, s_pos="s_pos_mean", s_sym="s_sym_mean", identifiable="identifiable_fraction"
        )
        df.insert(3, "purity", purity)
        return df

    def extremes(self, k: int = 3) -> tuple[Any, Any]:
        """The ``k`` most positional (s_POS - s_SYM > 0) and most symbolic (< 0) heads
        among the identifiable ones off the uniform corner (where the difference is noise)."""
        return extreme_heads(
            self.heads_frame(),
            k=k,
            s_pos="s_pos_mean",
            s_sym="s_sym_mean",
            identifiable="identifiable_fraction",
        )

    def summary_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``rope-behavior analyze`` writes to summary.json)."""
        c = self.correspondence
        pos, sym = self.extremes()

        def heads(df: Any) -> list[dict[str, Any]]:
            return [
                {
                    "layer": int(r.layer),
                    "head": int(r.head),
                    "s_pos": _num(r.s_pos_mean),
                    "s_pos_interval": [_num(r.s_pos_lo), _num(r.s_pos_hi)],
                    "s_sym": _num(r.s_sym_mean),
                    "s_sym_interval": [_num(r.s_sym_lo), _num(r.s_sym_hi)],
                    "identifiable_fraction": _num(r.identifiable_fraction),
                    "purity": str(r.purity),
                }
                for r in df.itertuples()
            ]

        return {
            "model": self.model_name,
            "architecture": self.spec.architecture,
            "layers": self.spec.n_layers,
            "heads": self.spec.n_heads,
            "pairs": self.spec.n_pairs,
            "prompts": self.n_prompts,
            "tokens": self.n_tokens,
            "seconds": round(self.seconds, 2),
            "block_size": self.scores.block_size,
            "align": self.scores.align,
            "swaps": len(self.scores.swaps),
            "block_pairs": self.scores.n_block_pairs,
            "identifiable_heads": int(is_identifiable(self.summary.identifiable_fraction).sum()),
            "head_classes": purity_counts(self.heads_frame()["purity"]),
            "most_positional": heads(pos),
            "most_symbolic": heads(sym),
            "correspondence": {
                "rho": _num(c.rho),
                "p_value": _num(c.p_value),
                "rho_interval": [_num(x) for x in c.rho_ci],
                "rho_interval_method": c.rho_ci_method,
                "confidence_level": c.confidence_level,
                "disagreement": c.disagreement,
                "heads": int(c.n_heads),
                "heads_total": int(c.n_heads_total),
                "caveat": c.caveat,
            },
        }

    def __repr__(self) -> str:
        return display.text(self)

    def _repr_html_(self) -> str:
        return display.html(self)


def _n_ctx(model: Any) -> int | None:
    """The longest context the model's position table covers, when it states one."""
    n = getattr(getattr(model, "cfg", None), "n_ctx", None)
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _num(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


@validates_inputs
def analyze(
    model: Any,
    tokens: Int[Tensor, "prompt pos"],
    *,
    attention_mask: Int[Tensor, "prompt pos"] | None = None,
    batch_size: int = 8,
    block_size: int = 8,
    per_pair: bool = True,
    pair_prompts: int | None = 16,
    seed: int | torch.Generator = 0,
    name: str | None = None,
    progress: Callable[[int, int], None] | bool = False,
    executor: Any = None,
    out_dir: str | os.PathLike[str] | None = None,
    compiled: bool = False,
) -> Analysis:
    """Analyse every head of ``model`` on ``tokens`` (see the module docstring).

    Args:
        model: a model, or a :class:`~rope_behavior.runtime.executors.ModelLoader` (for an
            ``executor`` that builds the model on its workers).
        tokens: prompts ``[prompt, pos]``; prompts of different lengths are padded (right
            or left) with ``attention_mask`` (0 = padding); each is scored at its last
            token, which needs two blocks of ``block_size`` keys before it (18 tokens with
            BOS at the defaults): a shorter prompt stops the call naming it, and
            :func:`~rope_behavior.scorable_prompts` picks the ones that pass beforehand.
        batch_size: prompts per forward (one shard).
        block_size: keys per block of the swap score.
        per_pair: also score every single-pair projection head (per-pair curves), on the
            first ``pair_prompts`` prompts (``None``: all; per-pair scoring costs about
            ``n_pairs`` times the whole-head scoring).
        seed: an int or a ``torch.Generator``: draws the swaps when there are more than 64
            block pairs, the bootstrap of the scores and the permutation test.
        progress: ``True`` for a progress bar, or ``progress(done_shards, total_shards)``
            called after each batch.
        executor: where the batches run (:func:`~rope_behavior.analysis.corpus.score_corpus`):
            here by default, or a ``rope_behavior.runtime.ray_cluster.RayExecutor``.
        out_dir: keep finished batches there; rerunning with it resumes.
        compiled: measure frequency usage with the kernel ``torch.compile`` builds (same
            numbers to float32 rounding; the first call compiles, for seconds; see
            :func:`~rope_behavior.frequency_usage`).
    """
    t0 = time.perf_counter()
    if name is not None and not isinstance(name, str):
        raise RopeBehaviorError(
            f"name={name!r} ({type(name).__name__}); expected a str or None (the model's name "
            "in the report; None: its architecture)"
        )
    seed = as_seed(seed)
    corpus = score_corpus(
        model,
        tokens,
        attention_mask=attention_mask,
        batch_size=batch_size,
        block_size=block_size,
        per_pair=per_pair,
        pair_prompts=pair_prompts,
        seed=seed,
        executor=executor,
        out_dir=out_dir,
        progress=progress,
        compiled=compiled,
    )
    scores, usage, pair_scores = corpus.scores, corpus.usage, corpus.pair_scores
    return Analysis(
        model_name=name or corpus.spec.architecture,
        spec=corpus.spec,
        usage=usage,
        scores=scores,
        summary=scores.mean(seed=seed),
        pair_summary=pair_scores.mean(seed=seed) if pair_scores is not None else None,
        correspondence=behavior_frequency_correspondence(
            scores, usage, pair_scores=pair_scores, seed=seed
        ),
        n_prompts=corpus.n_prompts,
        n_tokens=corpus.n_tokens,
        seconds=time.perf_counter() - t0,
    )


@validates_inputs
def tokenize_prompts(
    model: Any, texts: Sequence[str], context: int = 128, max_prompts: int | None = None
) -> tuple[Int[Tensor, "prompt pos"], Int[Tensor, "prompt pos"]]:
    """Token ids ``[prompt, pos]`` of ``texts`` with the model's tokenizer (BOS prepended
    as the model does), each cut to ``context`` tokens and right-padded, and the
    attention mask (0 = padding): what :func:`analyze` and ``score_heads`` take.

    Args:
        model: a model with a tokenizer (``model.to_tokens``), or its resolved context.
        texts: the prompts, a non-empty sequence of strings.
        context: tokens kept per prompt, BOS included: an int in ``[1, n_ctx]``, where
            ``n_ctx`` is the length the model's position table covers (``model.cfg.n_ctx``).
        max_prompts: keep only the first ``max_prompts`` texts (an int >= 1), or ``None``
            for all of them.

    Prompts too short to score (see :func:`~rope_behavior.scoring.scorable_prompts`) are
    kept: filter them with that predicate.
    """
    if isinstance(model, ModelContext):
        model = model.model
    if (
        isinstance(texts, str)
        or not isinstance(texts, Sequence)
        or not texts
        or not all(isinstance(t, str) for t in texts)
    ):
        raise RopeBehaviorError(f"texts must be a non-empty list of strings; got {_brief(texts)}")
    n_ctx = _n_ctx(model)
    limit = f"the model's position table covers n_ctx={n_ctx} tokens" if n_ctx else ""
    context = as_count(context, "context", high=n_ctx, hint=limit)
    if max_prompts is not None:
        max_prompts = as_count(max_prompts, "max_prompts", hint="or None for all texts")
    if getattr(model, "tokenizer", None) is None or not hasattr(model, "to_tokens"):
        raise RopeBehaviorError(
            "the model has no tokenizer, so text prompts cannot be tokenized; load a model "
            "folder that holds its tokenizer files"
        )
    rows = []
    for i, text in enumerate(texts[:max_prompts]):
        ids = model.to_tokens(text, truncate=True)[0, :context]
        if ids.numel() == 0:
            raise RopeBehaviorError(
                f"texts[{i}]={_brief(text)} gives no token (the tokenizer prepends no BOS); "
                "drop empty texts"
            )
        rows.append(ids)
    n = max(len(r) for r in rows)
    tokens = torch.zeros(len(rows), n, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)], mask[i, : len(r)] = r.cpu(), 1
    return tokens, mask
