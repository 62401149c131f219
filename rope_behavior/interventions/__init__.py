"""Interventions as values (ablations, patches, angle overrides), their sources, the edit
hooks they compile to, and the one place that compiles them.
"""

from rope_behavior.interventions.compile import compile_hooks, intervened, run_with_interventions
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
    "Reach",
    "ReferenceActivations",
    "SiteActivations",
    "TwoAngles",
    "compile_hooks",
    "intervened",
    "run_with_interventions",
]
