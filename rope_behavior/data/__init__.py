"""Data shipped with the package: held-out text, binding prompts and the trained language
model."""

from rope_behavior.data.binding import BindingPrompts, binding_prompts
from rope_behavior.data.binding_patching import BindingPatchingInputs, binding_patching_inputs
from rope_behavior.data.heldout import heldout_texts
from rope_behavior.data.shipped_lm import load_shipped_lm, shipped_lm_path

__all__ = [
    "BindingPatchingInputs",
    "BindingPrompts",
    "binding_patching_inputs",
    "binding_prompts",
    "heldout_texts",
    "load_shipped_lm",
    "shipped_lm_path",
]
