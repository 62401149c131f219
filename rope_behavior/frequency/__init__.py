"""Per-frequency decomposition of attention logits (:mod:`.decomposition`), frequency
usage of heads (:mod:`.usage`), their high-norm bands (:mod:`.norm_bands`) and per-pair
spectral entropy (:mod:`.spectra`)."""

from rope_behavior.frequency.decomposition import PairLogits, pair_logits
from rope_behavior.frequency.norm_bands import NormBands, high_norm_bands
from rope_behavior.frequency.spectra import PairSpectra, pair_spectra, spectral_entropy
from rope_behavior.frequency.usage import FrequencyUsage, frequency_usage

__all__ = [
    "FrequencyUsage",
    "NormBands",
    "PairLogits",
    "PairSpectra",
    "frequency_usage",
    "high_norm_bands",
    "pair_logits",
    "pair_spectra",
    "spectral_entropy",
]
