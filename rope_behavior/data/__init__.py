"""Data shipped with the package: held-out text and the trained language model."""

from rope_behavior.data.heldout import heldout_texts
from rope_behavior.data.shipped_lm import load_shipped_lm, shipped_lm_path

__all__ = ["heldout_texts", "load_shipped_lm", "shipped_lm_path"]
