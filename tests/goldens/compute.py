"""The computations behind the golden set: recorded once from a frozen copy of the package
by ``scripts/record_goldens.py`` and recomputed by ``tests/test_goldens.py``.

Only top-level public names (``rope_behavior.<name>``, ``rope_behavior.metrics`` and
``rope_behavior.tasks``) and ``tests.models`` are used, so module moves inside the package
leave this file valid. Every group is a function ``() -> {key: float64 CPU tensor}``;
keys are ``"<group>/<case>/<field>"``. Results are flattened generically: every tensor,
number and (nested) tuple of numbers among a result's attributes (named below, as the
dataclass fields of the recorded code) becomes a tensor (``None`` -> NaN), and DataFrames
give their numeric columns. Seeds are fixed everywhere.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

import rope_behavior as rb
from rope_behavior import tasks
from tests.models import VOCAB, make_bridge

Goldens = dict[str, Tensor]

LM_PROMPTS = 32
LM_CONTEXT = 128


# -- flattening -------------------------------------------------------------------------


def _numeric(value: Any) -> Any:
    """``value`` as nested lists of floats, or None when it is not numeric."""
    if isinstance(value, bool | int | float | np.number | np.bool_):
        return float(value)
    if value is None:
        return float("nan")
    if isinstance(value, tuple | list):
        items = [_numeric(v) for v in value]
        return None if any(v is None for v in items) else items
    return None


def as_tensor(value: Any) -> Tensor | None:
    """A float64 CPU tensor of ``value`` (tensor, number, rectangular tuple), else None."""
    if isinstance(value, Tensor):
        return value.detach().cpu().to(torch.float64).clone()
    num = _numeric(value)
    if num is None:
        return None
    try:
        return torch.tensor(num, dtype=torch.float64)
    except (TypeError, ValueError):  # ragged
        return None


# The attributes recorded of each result type: today's numeric dataclass fields, named
# explicitly (and read with getattr) so a field that becomes a property still reads.
SPEC = (
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "d_head",
    "rotary_dim",
    "omega",
    "table_scale",
    "attn_scales",
    "logit_softcaps",
    "sliding_windows",
)
USAGE = (
    "layers",
    "attention_weighted",
    "q_norm",
    "k_norm",
    "norm_usage",
    "logit_abs",
    "logit_usage",
    "centroid",
    "centroid_log_omega",
    "omega",
    "n_tokens",
    "logit_weight",
)
HEAD_SCORES = (
    "layers",
    "n_heads",
    "query_positions",
    "has_query_axis",
    "per_pair",
    "swaps",
    "n_block_pairs",
    "block_size",
    "tau",
    "exclude_keys",
    "identifiability_threshold",
    "min_swapped_mass",
    "start",
    "query_pos",
    "excluded",
    "s_pos",
    "s_sym",
    "separation",
    "identifiable",
    "entropy",
    "distance_from_uniform",
    "block_mass",
    "leftover_mass",
    "swapped_mass",
    "mass_moved",
    "swap_weight",
    "swap_mass",
    "pos_swap",
    "sym_swap",
)
SUMMARY = (
    "layers",
    "query_positions",
    "per_pair",
    "n_swaps",
    "n_block_pairs",
    "n_boot",
    "level",
    "s_pos_mean",
    "s_pos_std",
    "s_pos_se",
    "s_pos_lo",
    "s_pos_hi",
    "s_sym_mean",
    "s_sym_std",
    "s_sym_se",
    "s_sym_lo",
    "s_sym_hi",
    "n_prompts",
    "identifiable_fraction",
    "swapped_mass",
    "leftover_mass",
)
CORRESPONDENCE = (
    "layers",
    "behavior",
    "centroid",
    "rho",
    "p_value",
    "n_heads",
    "n_permutations",
    "permutation_exact",
    "rho_ci",
    "confidence_level",
    "n_heads_total",
    "in_statistic",
    "identifiable_fraction",
    "uniform_corner",
    "pair_s_pos",
    "pair_s_sym",
    "pair_behavior",
    "pair_rho",
)
SWEEP = ("values", "layers", "heads", "query_heads", "clean_baseline", "corrupted_baseline")  # fmt: skip


# Fields renamed by the package since the goldens were recorded: new name -> old name (the
# goldens are recorded from the code before the change, under the new name).
RENAMED = {"n_heads": "heads"}  # HeadScores.heads (a count) became n_heads


def attrs(prefix: str, obj: Any, names: tuple[str, ...]) -> Goldens:
    """The numeric attributes ``names`` of ``obj``, as ``{prefix/name: tensor}``; a missing
    or non-numeric one (``exclude_keys=("auto",)``) is left out."""
    out: Goldens = {}
    for name in names:
        source = name if hasattr(obj, name) else RENAMED.get(name, name)
        t = as_tensor(getattr(obj, source, None)) if hasattr(obj, source) else None
        if t is not None:
            out[f"{prefix}/{name}"] = t
    return out


def frame(prefix: str, df: Any) -> Goldens:
    """The numeric (and boolean) columns of a DataFrame, as ``{prefix/column: tensor}``."""
    out: Goldens = {}
    for col in df.columns:
        kind = df[col].dtype.kind
        if kind in "biuf":
            out[f"{prefix}/{col}"] = torch.from_numpy(df[col].to_numpy(dtype=np.float64).copy())
    return out


# -- a. the shipped language model, analyze() ---------------------------------------------


def lm_analysis() -> Goldens:
    """``analyze`` of the shipped LM on held-out prompts, with per-pair scores."""
    model = rb.load_shipped_lm()
    texts = rb.heldout_texts(LM_PROMPTS)
    tokens, mask = rb.tokenize_prompts(model, texts, context=LM_CONTEXT)
    a = rb.analyze(model, tokens, attention_mask=mask, per_pair=True, seed=0)
    out: Goldens = {"lm/tokens": as_tensor(tokens), "lm/attention_mask": as_tensor(mask)}
    out["lm/n_prompts"] = as_tensor(a.n_prompts)
    out["lm/n_tokens"] = as_tensor(a.n_tokens)
    out |= attrs("lm/spec", a.spec, SPEC)
    out |= attrs("lm/usage", a.usage, USAGE)
    out |= frame("lm/usage_frame", a.usage.to_frame())
    out |= attrs("lm/scores", a.scores, HEAD_SCORES)
    out |= attrs("lm/summary", a.summary, SUMMARY)
    out |= frame("lm/summary_frame", a.summary.to_frame())
    assert a.pair_summary is not None
    out |= attrs("lm/pair_summary", a.pair_summary, SUMMARY)
    out |= frame("lm/pair_summary_frame", a.pair_summary.to_frame())
    out |= attrs("lm/correspondence", a.correspondence, CORRESPONDENCE)
    out |= frame("lm/correspondence_frame", a.correspondence.to_frame())
    out |= frame("lm/heads_frame", a.heads_frame())
    return out


# -- b. frequency patching sweeps -------------------------------------------------------


def _sweep(prefix: str, result: Any) -> Goldens:
    out = attrs(prefix, result, SWEEP)
    out[f"{prefix}/bands"] = torch.tensor(
        [p for b in result.bands for p in (*b.pairs, -1)], dtype=torch.float64
    )  # the pairs of each band, -1 after each
    if result.clean_baseline != result.corrupted_baseline:
        out[f"{prefix}/normalized"] = as_tensor(result.normalized())
    return out


def _index_prompts(task: Any, n: int, seed: int) -> tuple[Tensor, Tensor, Any]:
    """Clean / corrupted Index prompts (the corrupted ones query another position) and the
    logit difference clean answer - corrupted answer (what ``rope-behavior demo`` sweeps)."""
    gen = torch.Generator().manual_seed(seed)
    batch = task.sample(n, gen)
    clean = batch.tokens
    j = clean[:, -1] - task.n_symbols
    j_new = (j + 1 + torch.randint(0, task.length - 1, j.shape, generator=gen)) % task.length
    corrupted = clean.clone()
    corrupted[:, -1] = task.n_symbols + j_new
    wrong = clean[torch.arange(len(clean)), j_new]
    keep = batch.answer != wrong
    return clean[keep], corrupted[keep], rb.metrics.logit_diff(batch.answer[keep], wrong[keep])


def _tiny_runs(seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, VOCAB, (2, 8), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 2:5] = torch.randint(3, VOCAB, (2, 3), generator=gen)
    return clean, corrupted


def patching() -> Goldens:
    """Sweeps on the shipped toy-task checkpoints and on two tiny random bridges."""
    out: Goldens = {}
    model, task, _ = tasks.load_pretrained("index")
    clean, corrupted, metric = _index_prompts(task, 64, 0)
    out["patch/index/clean_tokens"] = as_tensor(clean)
    out["patch/index/corrupted_tokens"] = as_tensor(corrupted)
    with torch.no_grad():
        out["patch/index/clean_logits"] = as_tensor(model(clean)[:, -1])
    out |= _sweep(
        "patch/index/qk_denoising",
        rb.frequency_patching_sweep(model, clean, corrupted, metric, bands=4, target="qk"),
    )
    out |= _sweep(
        "patch/index/q_noising",
        rb.frequency_patching_sweep(
            model, clean, corrupted, metric, bands=[[0], [1, 2], [3]], target="q",
            direction="noising", batch_conditions=2,
        ),
    )  # fmt: skip

    # partial induction, swept under the frequency setting it was trained under
    model, task, setting = tasks.load_pretrained("partial_induction")
    gen = torch.Generator().manual_seed(1)
    a, b = task.sample(32, gen), task.sample(32, gen)
    metric = rb.metrics.logit_diff(a.answer, b.answer)
    with model.hooks(fwd_hooks=list(setting.hooks(model))):
        out |= _sweep(
            "patch/partial_induction/k_denoising",
            rb.frequency_patching_sweep(model, a.tokens, b.tokens, metric, bands=2, target="k"),
        )

    clean, corrupted = _tiny_runs(5)
    ld = rb.metrics.logit_diff(torch.tensor([5, 9]), torch.tensor([7, 11]))
    model = make_bridge("llama_gqa")
    out |= _sweep(
        "patch/llama_gqa/k_denoising",
        rb.frequency_patching_sweep(model, clean, corrupted, ld, bands=2, target="k"),
    )
    model = make_bridge("gpt_neox")
    with torch.no_grad():
        kl = rb.metrics.kl_to_clean(model(clean))
    out |= _sweep(
        "patch/gpt_neox/qk_noising",
        rb.frequency_patching_sweep(
            model, clean, corrupted, kl, bands=["high", "low"], direction="noising"
        ),
    )
    return out


# -- c. score_heads on tiny random bridges ----------------------------------------------


def _score_tokens(seed: int, n: int = 3, pos: int = 24) -> Tensor:
    return torch.randint(3, VOCAB, (n, pos), generator=torch.Generator().manual_seed(seed))


SCORE_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    # name -> (family, score_heads keyword arguments, added to SCORE_DEFAULTS); the swaps
    # are drawn by score_heads' default generator (seeded 0)
    "llama_gqa/keys": ("llama_gqa", dict(mode="keys")),
    "llama_gqa/tokens": ("llama_gqa", dict(mode="tokens")),
    "llama_gqa/keys_per_pair": ("llama_gqa", dict(mode="keys", per_pair=True)),
    "gpt_neox/keys": ("gpt_neox", dict(mode="keys")),
    "gpt_neox/tokens": ("gpt_neox", dict(mode="tokens")),
    "gpt_neox/keys_all_queries": ("gpt_neox", dict(mode="keys", query_positions="all")),
    "gemma2/keys": ("gemma2", dict(mode="keys")),
    "gemma2/tokens": ("gemma2", dict(mode="tokens")),
    "gemma2/tokens_per_pair_queries": (
        "gemma2", dict(mode="tokens", per_pair=True, query_positions=[15, 23]),
    ),
}  # fmt: skip
SCORE_DEFAULTS = dict(block_size=4, n_swaps=6)


def head_scores() -> Goldens:
    """``score_heads`` (keys and tokens modes) on three families, a padded batch, and one
    bootstrap summary."""
    out: Goldens = {}
    models: dict[str, Any] = {}
    tokens = _score_tokens(11)
    for name, (family, kw) in SCORE_CASES.items():
        model = models.setdefault(family, make_bridge(family))
        hs = rb.score_heads(model, tokens, **SCORE_DEFAULTS, **kw)
        out |= attrs(f"scores/{name}", hs, HEAD_SCORES)
        if name == "llama_gqa/keys_per_pair":
            out |= attrs(f"scores/{name}/mean", hs.mean(n_boot=200, seed=3), SUMMARY)
            out |= frame(f"scores/{name}/frame", hs.to_frame())
    # right padding, explicit swaps, blocks from the start, key 0 excluded
    mask = torch.ones_like(tokens)
    mask[0, 17:] = 0
    hs = rb.score_heads(
        models["llama_gqa"], tokens.masked_fill(mask == 0, 0), attention_mask=mask,
        block_size=3, swaps=[(0, 1), (0, 3), (2, 4)], align="start", exclude_keys=(0,),
    )  # fmt: skip
    out |= attrs("scores/llama_gqa/keys_padded_start", hs, HEAD_SCORES)
    return out


# -- d. frequency usage on padded batches -----------------------------------------------


def _padded(side: str, seed: int) -> tuple[Tensor, Tensor]:
    """Three prompts of 13 positions; rows 0 and 1 hold 6 and 10 real tokens."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, VOCAB, (3, 13), generator=gen)
    mask = torch.ones_like(tokens)
    for row, n in ((0, 6), (1, 10)):
        pad = slice(0, 13 - n) if side == "left" else slice(n, 13)
        mask[row, pad] = 0
    return tokens.masked_fill(mask == 0, 0), mask


USAGE_CASES: dict[str, tuple[str, str, bool]] = {
    # name -> (family, padding side, attention_weighted)
    "llama_gqa/left": ("llama_gqa", "left", False),
    "llama_gqa/left_weighted": ("llama_gqa", "left", True),
    "gpt_neox/right": ("gpt_neox", "right", False),
    "gemma2/right_weighted": ("gemma2", "right", True),
}


def usage() -> Goldens:
    out: Goldens = {}
    models: dict[str, Any] = {}
    for name, (family, side, weighted) in USAGE_CASES.items():
        model = models.setdefault(family, make_bridge(family))
        tokens, mask = _padded(side, 21)
        captured = rb.capture(model, tokens, attention_mask=mask)
        out |= attrs(
            f"usage/{name}", rb.frequency_usage(captured, attention_weighted=weighted), USAGE
        )
    return out


# -- interventions ----------------------------------------------------------------------


def interventions() -> Goldens:
    """Logits under a frequency ablation (and an angle override) on tiny bridges."""
    tokens = _score_tokens(31, n=2, pos=11)
    out: Goldens = {}
    model = make_bridge("llama_gqa")
    spec = rb.RopeSpec.from_model(model)
    abl = rb.FrequencyAblation(layer=1, heads=(2, 3), pairs=rb.band(spec, "high"), mode="zero")
    with torch.no_grad():
        out["interventions/llama_gqa/ablation_high"] = as_tensor(
            rb.run_with_interventions(model, tokens, [abl])
        )
    model = make_bridge("gpt_neox")
    two = rb.AngleOverride(layer=0, omega=rb.TwoAngles(first=0.0, second=0.1))
    with torch.no_grad():
        out["interventions/gpt_neox/two_angles"] = as_tensor(
            rb.run_with_interventions(model, tokens, [two])
        )
    return out


GROUPS: dict[str, Callable[[], Goldens]] = {
    "lm": lm_analysis,
    "patch": patching,
    "scores": head_scores,
    "usage": usage,
    "interventions": interventions,
}


def group_of(key: str) -> str:
    return key.split("/", 1)[0]


def compute_all() -> Goldens:
    out: Goldens = {}
    for fn in GROUPS.values():
        out |= fn()
    return out
