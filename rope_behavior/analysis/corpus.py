"""Scoring a corpus: :func:`~rope_behavior.score_heads` + :func:`~rope_behavior.frequency_usage`
over many prompt batches, as shards that an executor runs here or on Ray workers.

The prompts are cut into batches of ``batch_size`` (the shards). The swaps are drawn once
for the whole corpus, among the blocks every prompt has, so every shard uses the same ones
and the per-prompt scores of the shards concatenate into one :class:`HeadScores`; usage
merges exactly (:meth:`FrequencyUsage.merge`). The merge follows the prompts' order,
whichever shard finished first, so the result does not depend on where the shards ran.
With ``out_dir`` each finished shard is one file of a resumable store (the sweep's,
:class:`~rope_behavior.runtime.store.SweepStore`).
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from rope_behavior.analysis.next_token import NextToken, next_token_sums
from rope_behavior.errors import (
    RopeBehaviorError,
    as_count,
    as_flag,
    as_folder,
    as_seed,
    validates_inputs,
)
from rope_behavior.frequency.usage import FrequencyUsage, UsageAccumulator
from rope_behavior.model.context import ModelContext, evaluating, resolve
from rope_behavior.model.devices import fields_to
from rope_behavior.model.spec import RopeSpec
from rope_behavior.qk.captured import validate_mask, validate_tokens
from rope_behavior.runtime.driver import run_sharded
from rope_behavior.runtime.executors import crosses_processes
from rope_behavior.runtime.fingerprint import model_digest, tensor_digest
from rope_behavior.runtime.store import SweepStore
from rope_behavior.scoring.geometry import AUTO_ALL_PAIRS, block_geometry, excluded_keys, model_bos
from rope_behavior.scoring.results import HeadScores
from rope_behavior.scoring.scorer import ScoreSettings, score_checked

__all__ = ["CorpusScores", "concat_scores", "score_corpus"]


@dataclass(frozen=True, eq=False)
class CorpusScores:
    """What :func:`score_corpus` measured: per-prompt ``scores`` (whole heads), per-pair
    ``pair_scores`` on the first ``pair_prompts`` prompts (or ``None``), the merged
    ``usage``, the model's ``spec``, and (``next_token=True``) the model's next-token loss
    and accuracy on the prompts from the same forwards (else ``None``)."""

    spec: RopeSpec
    scores: HeadScores = field(repr=False)
    usage: FrequencyUsage = field(repr=False)
    pair_scores: HeadScores | None = field(repr=False)
    n_prompts: int
    n_tokens: int
    next_token: NextToken | None = None


def concat_scores(parts: Sequence[HeadScores]) -> HeadScores:
    """Join per-prompt scores of several batches scored with the same settings and swaps.

    Every summary field describes the joined prompts, not the first batch:
    ``n_block_pairs`` is the fewest of the parts (the block pairs every prompt has: each
    part counts those of its own prompts) and ``query_positions`` the largest per query."""
    parts = list(parts)
    if not parts:
        raise RopeBehaviorError("concat_scores needs at least one HeadScores")
    first = parts[0]
    same = ("mode", "layers", "heads", "has_query_axis", "per_pair", "swaps", "block_size",
            "align", "tau", "identifiability_threshold", "min_swapped_mass")  # fmt: skip
    for p in parts[1:]:
        diff = [k for k in same if getattr(p, k) != getattr(first, k)]
        if diff or (first.has_query_axis and p.query_positions != first.query_positions):
            raise RopeBehaviorError(
                f"concat_scores: the parts were scored differently ({', '.join(diff) or 'query_positions'})"
            )
    tensors = {
        f.name: torch.cat([getattr(p, f.name) for p in parts])
        for f in dataclasses.fields(HeadScores)
        if isinstance(getattr(first, f.name), Tensor)
    }
    qp = tuple(max(v) for v in zip(*(p.query_positions for p in parts)))
    pairs = min(p.n_block_pairs for p in parts)
    return dataclasses.replace(first, query_positions=qp, n_block_pairs=pairs, **tensors)  # type: ignore[arg-type]


def common_swaps(
    adapter: Any, tokens: Tensor, mask: Tensor | None, block_size: int, seed: int
) -> tuple[list[tuple[int, int]], int]:
    """Block pairs every prompt has (at its last token): all if few, else drawn; and how
    many there are (the corpus's ``n_block_pairs``). Refuses a corpus holding a prompt too
    short to score, naming it (its index in the whole corpus)."""
    excl = excluded_keys(tokens, "auto", model_bos(adapter))
    geo = block_geometry(tokens, mask, excl, block_size, "last", None, None, None, "end")
    pairs = [tuple(p) for p in geo.swaps.tolist()]
    if len(pairs) > AUTO_ALL_PAIRS:
        g = torch.Generator().manual_seed(seed)
        idx = sorted(torch.randperm(len(pairs), generator=g)[:AUTO_ALL_PAIRS].tolist())
        pairs = [pairs[i] for i in idx]
    return [(int(a), int(c)) for a, c in pairs], geo.n_block_pairs


@dataclass(frozen=True, eq=False)
class CorpusPlan:
    spec: RopeSpec
    description: dict[str, Any]
    shards: tuple[tuple[int, int], ...]  # prompt ranges [lo, hi)
    n_block_pairs: int = 0  # block pairs every prompt of the corpus has

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.description, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class CorpusJob:
    tokens: Tensor
    mask: Tensor | None
    batch_size: int
    block_size: int
    per_pair: bool
    pair_prompts: int | None
    seed: int
    fingerprint: bool
    compiled: bool = False  # the usage kernel (not in the description: same numbers)
    next_token: bool = False  # the forwards run to the logits: loss and accuracy too

    def setup(
        self, model: Any
    ) -> tuple[ModelContext, Tensor, Tensor | None, list[tuple[int, int]], CorpusPlan]:
        context = resolve(model)
        adapter, spec = context.adapter, context.spec
        tokens = validate_tokens(self.tokens, adapter)
        mask = validate_mask(self.mask, tokens)
        swaps, n_block_pairs = common_swaps(adapter, tokens, mask, self.block_size, self.seed)
        n = tokens.shape[0]
        description = {
            "kind": "corpus scores",
            "architecture": spec.architecture,
            "model": model_digest(adapter.model) if self.fingerprint else "",
            "tokens": tensor_digest(tokens),
            "attention_mask": tensor_digest(mask) if mask is not None else None,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "per_pair": self.per_pair,
            "pair_prompts": self.pair_prompts,
            "seed": self.seed,
            "swaps": swaps,
        }
        if self.next_token:  # a store of shards without them must not be resumed
            description["next_token"] = True
        shards = tuple((lo, min(lo + self.batch_size, n)) for lo in range(0, n, self.batch_size))
        plan = CorpusPlan(fields_to(spec, "cpu"), description, shards, n_block_pairs)
        return context, tokens, mask, swaps, plan

    def plan(self, state: Any) -> CorpusPlan:
        return state[-1]

    def run(self, state: Any, shard: tuple[int, int]) -> dict[str, Any]:
        """Score one shard: usage and whole-head scores from one forward (usage measured on
        the queries and keys the scoring forward streams; with ``next_token`` the forward
        runs on to the logits, and their loss and hits are summed), per-pair scores from a
        second forward over the shard's first prompts when asked for. In eval mode
        throughout."""
        context, tokens, mask, swaps, _ = state
        lo, hi = shard
        t, m = tokens[lo:hi], None if mask is None else mask[lo:hi]
        layers = tuple(range(context.spec.n_layers))
        settings = ScoreSettings(block_size=self.block_size, swaps=swaps)
        usage = UsageAccumulator(context.spec, m, tuple(t.shape), t.device, compiled=self.compiled)
        predicted: list[NextToken] = []

        def on_logits(logits: Tensor) -> None:
            predicted.append(next_token_sums(logits, t, m))

        with evaluating(context.model):
            scores = score_checked(
                context,
                t,
                m,
                layers,
                settings,
                also=lambda lq: usage.add(lq.layer, lq.rot_q, lq.rot_k),
                on_logits=on_logits if self.next_token else None,
            )
            out: dict[str, Any] = {  # on the CPU: what a worker hands back to the driver
                "usage": fields_to(usage.result(), "cpu"),
                "n_tokens": int(m.sum()) if m is not None else int(t.numel()),
                "scores": fields_to(scores, "cpu"),
                "pairs": None,
                "next_token": predicted[0] if predicted else None,
            }
            if self.per_pair and (self.pair_prompts is None or lo < self.pair_prompts):
                k = hi - lo if self.pair_prompts is None else min(hi, self.pair_prompts) - lo
                per_pair = ScoreSettings(block_size=self.block_size, swaps=swaps, per_pair=True)
                pairs = score_checked(
                    context, t[:k], None if m is None else m[:k], layers, per_pair
                )
                out["pairs"] = fields_to(pairs, "cpu")
        return out


def _to_payload(result: dict[str, Any]) -> dict[str, Any]:
    """Plain containers and tensors (what ``torch.load(weights_only=True)`` reads)."""

    def fields(x: Any) -> Any:
        return None if x is None else {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}

    return {
        "usage": fields(result["usage"]),
        "scores": fields(result["scores"]),
        "pairs": fields(result["pairs"]),
        "n_tokens": result["n_tokens"],
        "next_token": fields(result.get("next_token")),
    }


def _from_payload(payload: dict[str, Any]) -> dict[str, Any]:
    nt = payload.get("next_token")
    return {
        "usage": FrequencyUsage(**payload["usage"]),
        "scores": HeadScores(**payload["scores"]),
        "pairs": None if payload["pairs"] is None else HeadScores(**payload["pairs"]),
        "n_tokens": int(payload["n_tokens"]),
        "next_token": None if nt is None else NextToken(**nt),
    }


@dataclass(eq=False)
class _CorpusShards:
    """Finished shards by prompt range; the store keeps one payload file per shard."""

    results: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)

    def restore(self, store: SweepStore) -> None:
        for name, payload in store.load_payloads().items():
            lo, hi = (int(x) for x in name.split("-"))
            self.results[(lo, hi)] = _from_payload(payload)

    def pending(self, plan: CorpusPlan) -> list[tuple[int, int]]:
        return [s for s in plan.shards if s not in self.results]

    def keep(self, shard: tuple[int, int], got: dict[str, Any]) -> None:
        self.results[shard] = got

    def save(self, store: SweepStore, shard: tuple[int, int], got: dict[str, Any]) -> None:
        store.write_payload(f"{shard[0]:07d}-{shard[1]:07d}", _to_payload(got))

    def summary(self, plan: CorpusPlan) -> dict[str, Any]:
        return {"shards": len(plan.shards)}


@validates_inputs
def score_corpus(
    model: Any,
    tokens: Int[Tensor, "prompt pos"],
    *,
    attention_mask: Int[Tensor, "prompt pos"] | None = None,
    batch_size: int = 8,
    block_size: int = 8,
    per_pair: bool = False,
    pair_prompts: int | None = 16,
    seed: int | torch.Generator = 0,
    executor: Any = None,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool | Callable[[int, int], None] = False,
    compiled: bool = False,
    next_token: bool = False,
) -> CorpusScores:
    """Every head's scores and frequency usage over a corpus of prompts, in shards of
    ``batch_size`` prompts (see the module docstring).

    Args:
        model: a model, or a :class:`~rope_behavior.runtime.executors.ModelLoader` (what a
            ``RayExecutor`` needs: each worker builds its own model).
        tokens: prompts ``[prompt, pos]``; prompts of different lengths are padded (right
            or left) with ``attention_mask`` (0 = padding); each is scored at its last token
            (:func:`~rope_behavior.scorable_prompts` says which prompts are long enough).
        batch_size: prompts per shard (one forward each).
        block_size: keys per block of the swap score.
        per_pair: also score every single-pair projection head on the first
            ``pair_prompts`` prompts (``None``: all).
        seed: draws the swaps when there are more than 64 block pairs.
        executor: where the shards run (default here; ``RayExecutor`` for Ray workers).
        out_dir: a folder to keep finished shards in; rerunning with it resumes.
        progress: ``True`` for a progress bar over shards (in-process), or a function.
        compiled: measure usage with the compiled kernel (see
            :func:`~rope_behavior.frequency_usage`).
        next_token: also the model's next-token loss and accuracy on the prompts
            (:class:`~rope_behavior.analysis.next_token.NextToken`), from the scoring
            forwards run on to the logits.
    """
    batch_size = as_count(batch_size, "batch_size")
    block_size = as_count(block_size, "block_size")
    if pair_prompts is not None:
        pair_prompts = as_count(pair_prompts, "pair_prompts", hint="or None for all prompts")
    per_pair = as_flag(per_pair, "per_pair")
    compiled = as_flag(compiled, "compiled")
    next_token = as_flag(next_token, "next_token")
    out_dir = as_folder(out_dir, "out_dir")
    if not (isinstance(progress, bool) or callable(progress)):
        raise RopeBehaviorError(
            f"progress={progress!r} ({type(progress).__name__}); expected True (a progress "
            "bar), False, or a function progress(done_shards, total_shards)"
        )
    if not isinstance(tokens, Tensor):
        raise RopeBehaviorError(
            f"tokens must be a tensor of token ids [prompt, pos]; got {type(tokens).__name__}"
        )
    seed = as_seed(seed)
    job = CorpusJob(
        tokens=tokens.cpu(),
        mask=attention_mask.cpu() if isinstance(attention_mask, Tensor) else attention_mask,
        batch_size=batch_size,
        block_size=block_size,
        per_pair=per_pair,
        pair_prompts=pair_prompts,
        seed=seed,
        fingerprint=crosses_processes(executor, out_dir),
        compiled=compiled,
        next_token=next_token,
    )
    shards = _CorpusShards()
    with evaluating(model):  # once for every in-process shard (a loader: each worker's own)
        plan: CorpusPlan = run_sharded(
            model, job, shards, executor=executor, out_dir=out_dir, progress=progress,
            desc="scoring prompts",
        )  # fmt: skip
    parts = [shards.results[s] for s in plan.shards]
    pairs = [p["pairs"] for p in parts if p["pairs"] is not None]

    def whole(scores: HeadScores) -> HeadScores:
        # the swaps were drawn among the block pairs of the whole corpus: say so, whatever
        # prompts these scores cover (per-pair scores cover the first pair_prompts)
        return dataclasses.replace(scores, n_block_pairs=plan.n_block_pairs)

    return CorpusScores(
        spec=plan.spec,
        scores=whole(concat_scores([p["scores"] for p in parts])),
        usage=FrequencyUsage.merge([p["usage"] for p in parts]),
        pair_scores=whole(concat_scores(pairs)) if per_pair else None,
        n_prompts=int(tokens.shape[0]),
        n_tokens=sum(p["n_tokens"] for p in parts),
        next_token=sum((p["next_token"] for p in parts), NextToken(0.0, 0, 0))
        if next_token
        else None,
    )
