"""rope_behavior: what each attention head does with position, and what with content.

A TransformerLens plugin (the 4.x / 3.9 TransformerBridge, and HookedTransformer of 2.x /
3.x) for rotary position embeddings (RoPE): exact per-frequency decomposition of attention
logits, frequency usage, positional / symbolic head scores, frequency-targeted
interventions and patching sweeps, the canonical toy tasks, a small trained language
model to analyse offline, and one-call analysis with an HTML report.
"""

from rope_behavior.analysis.band_ablation import BandAblation, nope_below_band
from rope_behavior.analysis.compare import EditComparison, compare_edits
from rope_behavior.analysis.corpus import CorpusScores, score_corpus
from rope_behavior.analysis.correspondence import (
    FrequencyCorrespondence,
    behavior_frequency_correspondence,
    spearman,
)
from rope_behavior.analysis.edit_names import NoPEBelowBand, parse_edit
from rope_behavior.analysis.main_job import Analysis, analyze, tokenize_prompts
from rope_behavior.data.binding import BindingPrompts, binding_prompts
from rope_behavior.data.binding_patching import BindingPatchingInputs, binding_patching_inputs
from rope_behavior.data.heldout import heldout_texts
from rope_behavior.data.shipped_lm import load_shipped_lm, shipped_lm_path
from rope_behavior.errors import (
    NotRotaryModelError,
    RopeBehaviorError,
    UnsupportedArchitectureError,
)
from rope_behavior.frequency import (
    FrequencyUsage,
    NormBands,
    PairLogits,
    PairSpectra,
    frequency_usage,
    high_norm_bands,
    pair_logits,
    pair_spectra,
)
from rope_behavior.interventions.compile import compile_hooks, intervened, run_with_interventions
from rope_behavior.interventions.rope_edits import NoPEBelow, PRoPE, RopeScaling
from rope_behavior.interventions.sources import ReferenceActivations, SiteActivations
from rope_behavior.interventions.values import (
    AngleOverride,
    FrequencyAblation,
    FrequencyPatch,
    Reach,
    TwoAngles,
)
from rope_behavior.model.adapters import HookSites, PairLayout
from rope_behavior.model.spec import RopeSpec
from rope_behavior.patching import metrics
from rope_behavior.patching.sweep import FrequencyPatchingResult, frequency_patching_sweep
from rope_behavior.qk.captured import Captured, LayerQK, capture, stream_layers
from rope_behavior.rope.bands import PairSet, band, equal_bands, pair_set, wavelength_bands
from rope_behavior.rope.pairs import merge_pairs, rotate, split_pairs
from rope_behavior.runtime.executors import LocalExecutor, ModelLoader
from rope_behavior.scoring.exclusion import ExclusionCheck, exclusion_check
from rope_behavior.scoring.logit_gap import Discrepancy, discrepancy
from rope_behavior.scoring.logit_swaps import LogitScores, logit_scores
from rope_behavior.scoring.permutations import PermutationScores, permutation_scores
from rope_behavior.scoring.results import HeadScores, ScoreSummary
from rope_behavior.scoring.scorable import scorable_prompts
from rope_behavior.scoring.scorer import score_heads
from rope_behavior.scoring.sensitivity import ScoreSensitivity, score_sensitivity
from rope_behavior.scoring.swap_scores import SwapScores, block_swap_scores
from rope_behavior.tracking import Tracker, Trajectory, load_trajectory, trainer_callback
from rope_behavior.viz import plots
from rope_behavior.viz.html_report import report

__version__ = "0.1.0"

__all__ = [
    "Analysis",
    "AngleOverride",
    "BandAblation",
    "BindingPatchingInputs",
    "BindingPrompts",
    "Captured",
    "CorpusScores",
    "Discrepancy",
    "EditComparison",
    "ExclusionCheck",
    "FrequencyAblation",
    "FrequencyCorrespondence",
    "FrequencyPatch",
    "FrequencyPatchingResult",
    "FrequencyUsage",
    "HeadScores",
    "HookSites",
    "LayerQK",
    "LocalExecutor",
    "LogitScores",
    "ModelLoader",
    "NoPEBelow",
    "NoPEBelowBand",
    "NormBands",
    "NotRotaryModelError",
    "PRoPE",
    "PairLayout",
    "PairLogits",
    "PairSet",
    "PairSpectra",
    "PermutationScores",
    "Reach",
    "ReferenceActivations",
    "RopeBehaviorError",
    "RopeScaling",
    "RopeSpec",
    "ScoreSensitivity",
    "ScoreSummary",
    "SiteActivations",
    "SwapScores",
    "Tracker",
    "Trajectory",
    "TwoAngles",
    "UnsupportedArchitectureError",
    "analyze",
    "band",
    "behavior_frequency_correspondence",
    "binding_patching_inputs",
    "binding_prompts",
    "block_swap_scores",
    "capture",
    "compare_edits",
    "compile_hooks",
    "discrepancy",
    "equal_bands",
    "exclusion_check",
    "frequency_patching_sweep",
    "frequency_usage",
    "heldout_texts",
    "high_norm_bands",
    "intervened",
    "load_shipped_lm",
    "load_trajectory",
    "logit_scores",
    "merge_pairs",
    "metrics",
    "nope_below_band",
    "pair_logits",
    "pair_set",
    "pair_spectra",
    "parse_edit",
    "permutation_scores",
    "plots",
    "report",
    "rotate",
    "run_with_interventions",
    "scorable_prompts",
    "score_corpus",
    "score_heads",
    "score_sensitivity",
    "shipped_lm_path",
    "spearman",
    "split_pairs",
    "stream_layers",
    "tokenize_prompts",
    "trainer_callback",
    "wavelength_bands",
]
