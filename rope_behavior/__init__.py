"""rope_behavior: what each attention head does with position, and what with content.

A TransformerLens 4.x plugin for rotary position embeddings (RoPE): exact per-frequency
decomposition of attention logits, frequency usage, positional / symbolic head scores,
frequency-targeted interventions and patching sweeps, and the canonical toy tasks.
"""

from rope_behavior.adapters import HookSites, PairLayout
from rope_behavior.bands import PairSet, band, equal_bands, pair_set, wavelength_bands
from rope_behavior.capture import Captured, capture
from rope_behavior.errors import (
    NotRotaryModelError,
    RopeBehaviorError,
    UnsupportedArchitectureError,
)
from rope_behavior.frequency import FrequencyUsage, PairLogits, frequency_usage, pair_logits
from rope_behavior.pairs import merge_pairs, rotate, split_pairs
from rope_behavior.spec import RopeSpec

__version__ = "0.1.0"

__all__ = [
    "Captured",
    "FrequencyUsage",
    "HookSites",
    "NotRotaryModelError",
    "PairLayout",
    "PairLogits",
    "PairSet",
    "RopeBehaviorError",
    "RopeSpec",
    "UnsupportedArchitectureError",
    "band",
    "capture",
    "equal_bands",
    "frequency_usage",
    "merge_pairs",
    "pair_logits",
    "pair_set",
    "rotate",
    "split_pairs",
    "wavelength_bands",
]
