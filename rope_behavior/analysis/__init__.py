"""The main job: corpus scoring, correspondence and its statistics, and ``analyze``."""

from rope_behavior.analysis.corpus import CorpusScores, score_corpus
from rope_behavior.analysis.correspondence import (
    FrequencyCorrespondence,
    behavior_frequency_correspondence,
    spearman,
)
from rope_behavior.analysis.main_job import Analysis, analyze, tokenize_prompts

__all__ = [
    "Analysis",
    "CorpusScores",
    "FrequencyCorrespondence",
    "analyze",
    "behavior_frequency_correspondence",
    "score_corpus",
    "spearman",
    "tokenize_prompts",
]
