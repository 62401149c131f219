"""Pure RoPE maths: splitting heads into pairs, rotating them, and naming pair sets (bands)."""

from rope_behavior.rope.bands import PairSet, band, equal_bands, pair_set, wavelength_bands
from rope_behavior.rope.pairs import merge_pairs, rotate, split_pairs

__all__ = [
    "PairSet",
    "band",
    "equal_bands",
    "merge_pairs",
    "pair_set",
    "rotate",
    "split_pairs",
    "wavelength_bands",
]
