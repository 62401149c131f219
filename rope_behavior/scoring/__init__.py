"""Positional / symbolic scores of heads: the entry point, results, block geometry, rows,
keys mode (and its relative form), tokens mode, and the exclusion bound.
"""

from rope_behavior.scoring.exclusion import ExclusionCheck, exclusion_check
from rope_behavior.scoring.results import HeadScores, ScoreSummary, SwapScores, block_swap_scores
from rope_behavior.scoring.scorable import scorable_prompts
from rope_behavior.scoring.scorer import score_heads

__all__ = [
    "ExclusionCheck",
    "HeadScores",
    "ScoreSummary",
    "SwapScores",
    "block_swap_scores",
    "exclusion_check",
    "scorable_prompts",
    "score_heads",
]
