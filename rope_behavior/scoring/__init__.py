"""Positional / symbolic scores of heads: the entry point, results, block geometry, rows,
keys mode (and its relative form), tokens mode, the exclusion bound, and the discrepancy
(top-versus-second logit gap).
"""

from rope_behavior.scoring.exclusion import ExclusionCheck, exclusion_check
from rope_behavior.scoring.logit_gap import Discrepancy, discrepancy
from rope_behavior.scoring.results import HeadScores, ScoreSummary, SwapScores, block_swap_scores
from rope_behavior.scoring.scorable import scorable_prompts
from rope_behavior.scoring.scorer import score_heads

__all__ = [
    "Discrepancy",
    "ExclusionCheck",
    "HeadScores",
    "ScoreSummary",
    "SwapScores",
    "block_swap_scores",
    "discrepancy",
    "exclusion_check",
    "scorable_prompts",
    "score_heads",
]
