"""RoPE edits by name, in one place: what ``compare_edits`` and ``rope-behavior compare
--edit`` take.

* ``prope:<p>`` — :class:`~rope_behavior.PRoPE` ``(p)``, the lowest fraction ``p`` of pairs NoPE;
* ``nope-below:<pair>`` — :class:`~rope_behavior.NoPEBelow` ``(pair)``;
* ``linear:<factor>``, ``ntk:<factor>``, ``yarn:<factor>`` —
  :class:`~rope_behavior.RopeScaling` (YaRN with ``original_context`` the model's context);
* ``nope-below-band`` — :class:`NoPEBelowBand`: NoPE below each head's high-norm band
  (docs/method.md §9), the bands measured on the unedited model over the same prompts.
"""

import math
from dataclasses import dataclass
from typing import Any

from rope_behavior.errors import RopeBehaviorError, as_fraction
from rope_behavior.interventions.rope_edits import NoPEBelow, PRoPE, RopeEdit, RopeScaling

__all__ = ["EDIT_FORMS", "NoPEBelowBand", "edit_label", "parse_edit"]

EDIT_FORMS = (
    "prope:<p>",
    "nope-below:<pair>",
    "linear:<factor>",
    "ntk:<factor>",
    "yarn:<factor>",
    "nope-below-band",
)
_FORMS = ", ".join(EDIT_FORMS)


@dataclass(frozen=True, repr=False)
class NoPEBelowBand:
    """NoPE below each head's high-norm band: resolved on the model, from the unedited
    model's frequency usage on the compared prompts (``high_norm_bands(usage, ratio=...)``
    then :func:`~rope_behavior.analysis.band_ablation.band_values`)."""

    ratio: float = 2.0

    def __post_init__(self) -> None:
        ratio = as_fraction(self.ratio, "NoPEBelowBand: ratio", low=1.0, high=math.inf,
                            open_low=True, open_high=True, hint="a multiple of the median")  # fmt: skip
        object.__setattr__(self, "ratio", ratio)

    def __repr__(self) -> str:
        return f"NoPEBelowBand(ratio={self.ratio:g})"


def _number(text: str, arg: str, kind: str) -> float:
    try:
        value = float(arg)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise RopeBehaviorError(
            f"edit {text!r}: {arg!r} is not a number; {kind} takes one (e.g. {kind}:2); "
            f"edits: {_FORMS}"
        )
    return value


def parse_edit(text: object, *, original_context: int | None = None) -> RopeEdit | NoPEBelowBand:
    """The edit ``text`` names (forms: the module docstring; ``EDIT_FORMS``).

    ``original_context``: the context the model was trained on, needed by ``yarn:<f>``.
    """
    if not isinstance(text, str):
        raise RopeBehaviorError(f"edit {text!r} ({type(text).__name__}); expected a name: {_FORMS}")
    name = text.strip().lower()
    if name == "nope-below-band":
        return NoPEBelowBand()
    kind, sep, arg = name.partition(":")
    if not sep or kind not in ("prope", "nope-below", "linear", "ntk", "yarn") or not arg:
        raise RopeBehaviorError(f"edit {text!r} is not one of the forms: {_FORMS}")
    try:
        if kind == "prope":
            return PRoPE(_number(text, arg, kind))
        if kind == "nope-below":
            if not arg.isdigit():
                raise RopeBehaviorError(
                    f"edit {text!r}: {arg!r} is not a pair index (an integer >= 0); edits: {_FORMS}"
                )
            return NoPEBelow(int(arg))
        factor = _number(text, arg, kind)
        if kind == "yarn":
            if original_context is None:
                raise RopeBehaviorError(
                    f"edit {text!r}: YaRN needs the model's original context, and the model "
                    "states none (cfg.n_ctx); use RopeScaling('yarn', f, original_context=n)"
                )
            return RopeScaling("yarn", factor, original_context=original_context)
        return RopeScaling(kind, factor)  # type: ignore[arg-type]
    except RopeBehaviorError as e:
        if str(e).startswith(f"edit {text!r}"):
            raise
        raise RopeBehaviorError(f"edit {text!r}: {e}") from None


def edit_label(edit: Any) -> str:
    """The short name of an edit value (the form :func:`parse_edit` reads back)."""
    if isinstance(edit, PRoPE) and edit.layers is None and edit.heads is None:
        return f"prope:{edit.p:g}"
    if isinstance(edit, NoPEBelow) and edit.layers is None and edit.heads is None:
        return f"nope-below:{edit.pair}"
    if isinstance(edit, RopeScaling) and edit.layers is None and edit.heads is None:
        return f"{edit.kind}:{edit.factor:g}"
    if isinstance(edit, NoPEBelowBand):
        return "nope-below-band" if edit.ratio == 2.0 else f"nope-below-band(ratio={edit.ratio:g})"
    return repr(edit)
