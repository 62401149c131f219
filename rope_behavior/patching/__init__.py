"""Frequency-targeted activation patching: the sweep, its shards, and metrics."""

from rope_behavior.patching.metrics import accuracy, kl_to_clean, logit_diff, loss
from rope_behavior.patching.sweep import FrequencyPatchingResult, frequency_patching_sweep

__all__ = [
    "FrequencyPatchingResult",
    "accuracy",
    "frequency_patching_sweep",
    "kl_to_clean",
    "logit_diff",
    "loss",
]
