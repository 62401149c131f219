"""Positional / symbolic scores of heads: the entry point, results, block geometry, rows,
keys mode (and its relative form), tokens mode, the exclusion bound, the discrepancy
(top-versus-second logit gap), and the score's sensitivity (block size and temperature,
all permutations, a logit-based score).
"""

from rope_behavior.scoring.exclusion import ExclusionCheck, exclusion_check
from rope_behavior.scoring.logit_gap import Discrepancy, discrepancy
from rope_behavior.scoring.logit_swaps import LogitScores, logit_scores
from rope_behavior.scoring.permutations import PermutationScores, permutation_scores
from rope_behavior.scoring.results import HeadScores, ScoreSummary
from rope_behavior.scoring.scorable import scorable_prompts
from rope_behavior.scoring.scorer import score_heads
from rope_behavior.scoring.sensitivity import ScoreSensitivity, score_sensitivity
from rope_behavior.scoring.swap_scores import SwapScores, block_swap_scores

__all__ = [
    "Discrepancy",
    "ExclusionCheck",
    "HeadScores",
    "LogitScores",
    "PermutationScores",
    "ScoreSensitivity",
    "ScoreSummary",
    "SwapScores",
    "block_swap_scores",
    "discrepancy",
    "exclusion_check",
    "logit_scores",
    "permutation_scores",
    "scorable_prompts",
    "score_heads",
    "score_sensitivity",
]
