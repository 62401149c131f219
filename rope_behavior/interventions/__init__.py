"""Interventions as values (ablations, patches, angle overrides, RoPE edits), their
sources, the edit hooks they compile to, and the one place that compiles them.
"""

from rope_behavior.interventions.compile import compile_hooks, intervened, run_with_interventions
from rope_behavior.interventions.rope_edits import NoPEBelow, PRoPE, RopeEdit, RopeScaling
from rope_behavior.interventions.sources import ReferenceActivations, SiteActivations
from rope_behavior.interventions.values import (
    AngleOverride,
    FrequencyAblation,
    FrequencyPatch,
    Reach,
    TwoAngles,
)

__all__ = [
    "AngleOverride",
    "FrequencyAblation",
    "FrequencyPatch",
    "NoPEBelow",
    "PRoPE",
    "Reach",
    "ReferenceActivations",
    "RopeEdit",
    "RopeScaling",
    "SiteActivations",
    "TwoAngles",
    "compile_hooks",
    "intervened",
    "run_with_interventions",
]
