"""Named frequency-control settings (docs/method.md §5), built from the intervention values.

A setting restricts which RoPE frequencies every head of every layer can use. It is a
frozen value that compiles, through :func:`rope_behavior.interventions.compile.compile_hooks`, to
``(hook_name, hook)`` pairs; the SAME hooks are installed for training and evaluation
(``train(..., fwd_hooks=setting.hooks)``, ``evaluate(..., fwd_hooks=setting.hooks)``),
so a model trained under a setting is always scored under it.

Names (pair 0 is the highest frequency; ``n_pairs = d_head / 2``):

========================  ===============================================================
``all``                   plain RoPE: no hooks.
``pair:<i>``              only pair ``i``: every other pair of the rotated queries AND
                          keys is zeroed (``FrequencyAblation(mode="zero", target="qk")``
                          on the complement), so the scores are exactly pair ``i``'s term.
``high``                  ``pair:0`` (highest frequency).
``low``                   ``pair:<n_pairs-1>`` (lowest frequency).
``band:<k>/<n>``          only the ``k``-th (0-based) of ``n`` equal contiguous bands of
                          pairs (:func:`rope_behavior.rope.bands.equal_bands`).
``nope``                  every pair rotated at angle 0 (``AngleOverride(omega=0)``): NoPE.
``angle:<theta>``         every pair rotated at ``theta`` radians per token.
``two_angle:<theta>``     ``TwoAngles(first=0, second=theta)``: the first half of the pairs
                          at angle 0 (content), the second half at ``theta`` (recency).
========================  ===============================================================

Masked pairs' weights still exist but receive no gradient through the attention scores
(their q/k entries are replaced by zeros), so they are simply unused.
"""

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.interventions.compile import compile_hooks
from rope_behavior.interventions.values import AngleOverride, FrequencyAblation, TwoAngles
from rope_behavior.model.context import resolve
from rope_behavior.model.spec import RopeSpec

__all__ = ["SETTING_FORMS", "FrequencySetting", "SettingKind", "parse_setting", "sweep_settings"]

SettingKind = Literal["all", "nope", "pair", "band", "angle", "two_angle"]
SETTING_FORMS = (
    "all",
    "nope",
    "high",
    "low",
    "pair:<i>",
    "band:<k>/<n>",
    "angle:<theta>",
    "two_angle:<theta>",
)
_KINDS = ("all", "nope", "pair", "band", "angle", "two_angle")


@dataclass(frozen=True)
class FrequencySetting:
    """One frequency-control setting for models with ``n_pairs`` RoPE pairs per head.

    Build it with :func:`parse_setting`. ``name`` is the name it was parsed from;
    ``pairs`` the allowed pairs (``pair``/``band``; every pair otherwise); ``theta`` the
    angle in radians per token (``angle``/``two_angle``).
    """

    name: str
    kind: SettingKind
    n_pairs: int
    pairs: tuple[int, ...]
    theta: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise RopeBehaviorError(
                f"FrequencySetting: kind={self.kind!r} is not one of {list(_KINDS)}."
            )
        if isinstance(self.n_pairs, bool) or not isinstance(self.n_pairs, int) or self.n_pairs < 1:
            raise RopeBehaviorError(
                f"FrequencySetting: n_pairs must be an int >= 1; got {self.n_pairs!r}."
            )
        bad = [p for p in self.pairs if not 0 <= p < self.n_pairs]
        if not self.pairs or bad:
            raise RopeBehaviorError(
                f"FrequencySetting {self.name!r}: pairs={self.pairs!r}; expected a non-empty "
                f"set of pair indices in [0, {self.n_pairs - 1}]."
            )
        needs_theta = self.kind in ("angle", "two_angle")
        if needs_theta != (self.theta is not None):
            raise RopeBehaviorError(
                f"FrequencySetting {self.name!r}: theta is "
                f"{'required' if needs_theta else 'not allowed'} for kind {self.kind!r}."
            )
        if self.theta is not None and not math.isfinite(self.theta):
            raise RopeBehaviorError(
                f"FrequencySetting {self.name!r}: theta={self.theta!r} must be finite."
            )

    @property
    def masked_pairs(self) -> tuple[int, ...]:
        """Pairs whose q and k entries are zeroed (empty unless ``pair``/``band``)."""
        return tuple(p for p in range(self.n_pairs) if p not in self.pairs)

    def interventions(self, spec: RopeSpec) -> tuple[FrequencyAblation | AngleOverride, ...]:
        """The intervention values for every layer of the model described by ``spec``."""
        if not isinstance(spec, RopeSpec):
            raise RopeBehaviorError(
                f"FrequencySetting.interventions: expected a RopeSpec; got {type(spec).__name__}."
            )
        if spec.n_pairs != self.n_pairs:
            raise RopeBehaviorError(
                f"setting {self.name!r} was parsed for n_pairs={self.n_pairs}, but the model "
                f"({spec.architecture}) has {spec.n_pairs} pairs; parse it again with "
                f"parse_setting({self.name!r}, {spec.n_pairs})."
            )
        layers = range(spec.n_layers)
        if self.kind in ("pair", "band"):
            masked = self.masked_pairs
            if not masked:
                return ()
            return tuple(
                FrequencyAblation(layer=layer, pairs=masked, target="qk", mode="zero")
                for layer in layers
            )
        if self.kind == "nope":
            return tuple(AngleOverride(layer=layer, omega=0.0, target="qk") for layer in layers)
        if self.kind == "angle":
            theta = float(self.theta)  # type: ignore[arg-type]
            return tuple(AngleOverride(layer=layer, omega=theta, target="qk") for layer in layers)
        if self.kind == "two_angle":
            omega = TwoAngles(first=0.0, second=float(self.theta))  # type: ignore[arg-type]
            return tuple(AngleOverride(layer=layer, omega=omega, target="qk") for layer in layers)
        return ()  # "all"

    def hooks(self, model: Any) -> list[tuple[str, Any]]:
        """Compiled ``(hook_name, hook)`` pairs for ``model`` (nothing is installed).

        Usable directly as ``train(model, task, config, fwd_hooks=setting.hooks)``.
        """
        spec = resolve(model).spec
        return compile_hooks(spec, self.interventions(spec), model=model)


def _options(n_pairs: int) -> str:
    return (
        f"options: {', '.join(SETTING_FORMS)} (n_pairs={n_pairs}: pair indices 0..{n_pairs - 1}, "
        "0 = highest frequency; theta in radians per token)"
    )


def _pair_index(name: str, text: str, n_pairs: int) -> int:
    if not re.fullmatch(r"\d+", text):
        raise RopeBehaviorError(
            f"setting {name!r}: pair index {text!r} is not a non-negative int; {_options(n_pairs)}."
        )
    index = int(text)
    if index >= n_pairs:
        raise RopeBehaviorError(
            f"setting {name!r}: pair {index} is out of range; the model has {n_pairs} pairs "
            f"(valid: 0..{n_pairs - 1})."
        )
    return index


def _theta(name: str, text: str, n_pairs: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RopeBehaviorError(
            f"setting {name!r}: theta {text!r} is not a number; {_options(n_pairs)}."
        ) from None
    if not math.isfinite(value):
        raise RopeBehaviorError(f"setting {name!r}: theta must be finite; got {text!r}.")
    return value


def parse_setting(name: str, n_pairs: int) -> FrequencySetting:
    """Parse a setting name (see the module docstring) for models with ``n_pairs`` pairs."""
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 1:
        raise RopeBehaviorError(f"parse_setting: n_pairs must be an int >= 1; got {n_pairs!r}.")
    if not isinstance(name, str):
        raise RopeBehaviorError(
            f"parse_setting: name must be a str; got {type(name).__name__}. {_options(n_pairs)}."
        )
    every = tuple(range(n_pairs))
    text = name.strip()
    head, sep, arg = text.partition(":")
    if not sep:
        if text in ("all", "nope"):
            return FrequencySetting(name, text, n_pairs, every)  # type: ignore[arg-type]
        if text in ("high", "low"):
            pair = 0 if text == "high" else n_pairs - 1
            return FrequencySetting(name, "pair", n_pairs, (pair,))
    elif head == "pair":
        return FrequencySetting(name, "pair", n_pairs, (_pair_index(name, arg, n_pairs),))
    elif head in ("angle", "two_angle"):
        return FrequencySetting(name, head, n_pairs, every, _theta(name, arg, n_pairs))  # type: ignore[arg-type]
    elif head == "band":
        match = re.fullmatch(r"(\d+)/(\d+)", arg)
        if match is None:
            raise RopeBehaviorError(
                f"setting {name!r}: expected 'band:<k>/<n>' with ints (k-th of n equal bands, "
                f"0-based); {_options(n_pairs)}."
            )
        k, n = int(match.group(1)), int(match.group(2))
        if not 1 <= n <= n_pairs or not 0 <= k < n:
            raise RopeBehaviorError(
                f"setting {name!r}: need 1 <= n <= n_pairs={n_pairs} bands and 0 <= k < n; "
                f"got k={k}, n={n}."
            )
        bounds = [round(i * n_pairs / n) for i in range(n + 1)]  # as bands.equal_bands
        return FrequencySetting(name, "band", n_pairs, tuple(range(bounds[k], bounds[k + 1])))
    raise RopeBehaviorError(f"unknown frequency setting {name!r}; {_options(n_pairs)}.")


def sweep_settings(n_pairs: int, *, pairs: Any = None, theta: float = 0.1) -> tuple[str, ...]:
    """The experiment's setting names: ``pair:<i>`` for ``pairs`` (default every pair),
    then ``all``, ``nope`` and ``two_angle:<theta>``."""
    chosen = range(n_pairs) if pairs is None else sorted(set(pairs))
    names = (*(f"pair:{p}" for p in chosen), "all", "nope", f"two_angle:{theta:g}")
    for n in names:
        parse_setting(n, n_pairs)
    return names
