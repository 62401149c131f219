"""Per-frequency decomposition of attention logits (:mod:`.decomposition`) and frequency
usage of heads (:mod:`.usage`)."""

from rope_behavior.frequency.decomposition import PairLogits, pair_logits
from rope_behavior.frequency.usage import FrequencyUsage, frequency_usage

__all__ = ["FrequencyUsage", "PairLogits", "frequency_usage", "pair_logits"]
