"""RopeSpec: every rotary fact about a model, read once, from the model itself.

Frequencies are never recomputed from a base: ``omega`` is read per layer from the model's
own rotary tables (``atan2(sin, cos)`` at position 1) and, where one of the model's rotary
modules holds an ``inv_freq`` vector equal to that reading, the exact stored vector is used
instead (so bf16 tables do not cost precision). Linear / NTK-by-parts (Llama-3.1) / YaRN
scaling and per-layer bases (Gemma-3) are therefore handled by construction.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from rope_behavior import display
from rope_behavior.errors import (
    RopeBehaviorError,
    UnsupportedArchitectureError,
    as_count,
    check_index,
    validates_inputs,
)
from rope_behavior.model.adapters import HookSites, ModelAdapter, PairLayout

__all__ = ["PairLayout", "RopeSpec"]

OmegaSource = Literal["inv_freq", "atan2", "nope"]


@validates_inputs
def turns_over(omega: Float[Tensor, "*shape"], context: int) -> Float[Tensor, "*shape"]:
    """Full turns of angles of ``omega`` radians per token between the first and the last
    of ``context`` positions: ``omega * (context - 1) / 2π``. Under one turn (a pair that
    does not rotate included) the angle never wraps over the context."""
    context = as_count(context, "context", hint="the number of positions in a prompt")
    return omega * (context - 1) / (2 * math.pi)


@dataclass(frozen=True, eq=False)
class RopeSpec:
    """Rotary facts of one model.

    Attributes:
        architecture: the host's architecture name (e.g. ``"LlamaForCausalLM"``).
        n_layers, n_heads, n_kv_heads, d_head: shapes; keys live per KV head.
        rotary_dim: number of rotated dims per head (``< d_head`` for partial rotary).
        n_pairs: ``rotary_dim // 2``; pair 0 is the highest frequency.
        pair_layout: ``"half"`` (dims ``p``, ``p + rotary_dim/2``) or ``"interleaved"``
            (dims ``2p``, ``2p+1``).
        omega: radians per token, float64 ``[layer, pair]``.
        table_scale: magnitude the model folds into its cos/sin tables, per layer
            (1 except YaRN's attention factor).
        attn_scales: per layer, the divisor of ``q·k`` in the attention scores.
        logit_softcaps: per layer, the soft-cap ``c`` of ``c·tanh(s/c)`` or ``None``.
        sliding_windows: per layer, the local-attention window (keys ``j > i - window``)
            or ``None`` for global attention.
        sites: per layer, the hook names rope_behavior reads (rotated hooks where the
            host fires them, otherwise pre-rotation hooks plus the model's own rotation).
        omega_source: per layer, where ``omega`` came from.
    """

    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    rotary_dim: int
    pair_layout: PairLayout
    _omega: Float[Tensor, "layer pair"] = field(repr=False)
    _table_scale: Float[Tensor, " layer"] = field(repr=False)
    attn_scales: tuple[float, ...]
    logit_softcaps: tuple[float | None, ...]
    sliding_windows: tuple[int | None, ...]
    sites: tuple[HookSites, ...] = field(repr=False)
    omega_source: tuple[OmegaSource, ...] = field(repr=False)

    def __post_init__(self) -> None:
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.d_head:
            raise RopeBehaviorError(
                f"rotary_dim={self.rotary_dim} must be even and in (0, d_head={self.d_head}]"
            )
        if self.n_heads % self.n_kv_heads:
            raise RopeBehaviorError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if tuple(self._omega.shape) != (self.n_layers, self.n_pairs):
            raise RopeBehaviorError(
                f"omega has shape {tuple(self._omega.shape)}; expected ({self.n_layers}, {self.n_pairs})"
            )

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: Any, *, refresh: bool = False) -> "RopeSpec":
        """The spec of ``model`` (a TransformerBridge, a HookedTransformer, a native hooked
        rotary model, or a resolved context).

        Read once per model and cached (:func:`rope_behavior.model.context.resolve`); the cache
        follows in-place edits of the model's rotary buffers, and ``refresh=True`` reads it
        again regardless. Raises :class:`~rope_behavior.NotRotaryModelError` for non-rotary
        models.
        """
        from rope_behavior.model.context import resolve

        return resolve(model, refresh=refresh).spec

    @classmethod
    def read(cls, adapter: ModelAdapter) -> "RopeSpec":
        """Read the spec through ``adapter`` (a short probe forward for the tables). Not
        cached: public code resolves a model once with
        :func:`~rope_behavior.model.context.resolve` (or :meth:`from_model`)."""
        tables = adapter.probe_pair_tables(2)
        widths = {c.shape[-1] for c, _ in tables}
        if len(widths) != 1:
            raise UnsupportedArchitectureError(
                f"{adapter.architecture}: layers rotate different numbers of pairs "
                f"({sorted(widths)}); rope_behavior needs one rotary width per model"
            )
        n_pairs = widths.pop()
        candidates = [
            c.double().cpu() for c in adapter.inv_freq_candidates() if c.numel() == n_pairs
        ]
        tol = 1e-5 if adapter.dtype in (torch.float32, torch.float64) else 2e-2
        omegas, sources, scales = [], [], []
        for cos, sin in tables:
            cos, sin = cos.double().cpu(), sin.double().cpu()
            scale = float(torch.hypot(cos[0], sin[0]).mean())
            reading = torch.atan2(sin[1], cos[1])
            best, best_err = None, math.inf
            for cand in candidates:
                err = float((cand - reading).abs().max())
                if err < best_err:
                    best, best_err = cand, err
            if bool((reading == 0).all()):
                omegas.append(reading.abs())
                sources.append("nope")
            elif best is not None and best_err <= tol * max(1.0, float(reading.abs().max())):
                omegas.append(best.clone())
                sources.append("inv_freq")
            else:
                omegas.append(reading)
                sources.append("atan2")
            scales.append(scale)
        return cls(
            architecture=adapter.architecture,
            n_layers=adapter.n_layers,
            n_heads=adapter.n_heads,
            n_kv_heads=adapter.n_kv_heads,
            d_head=adapter.d_head,
            rotary_dim=2 * n_pairs,
            pair_layout=adapter.pair_layout(),
            _omega=torch.stack(omegas),
            _table_scale=torch.tensor(scales, dtype=torch.float64),
            attn_scales=tuple(adapter.attn_scale(layer) for layer in range(adapter.n_layers)),
            logit_softcaps=tuple(adapter.logit_softcap(layer) for layer in range(adapter.n_layers)),
            sliding_windows=tuple(
                adapter.sliding_window(layer) for layer in range(adapter.n_layers)
            ),
            sites=tuple(adapter.sites(layer) for layer in range(adapter.n_layers)),
            omega_source=tuple(sources),  # type: ignore[arg-type]
        )

    # -- derived -----------------------------------------------------------------------
    @property
    def omega(self) -> Float[Tensor, "layer pair"]:
        """Radians per token, float64 ``[layer, pair]`` (a copy: editing it changes nothing
        here, so a cached spec cannot be corrupted from a notebook)."""
        return self._omega.clone()

    @property
    def table_scale(self) -> Float[Tensor, " layer"]:
        """Magnitude the model folds into its cos/sin tables, per layer (a copy)."""
        return self._table_scale.clone()

    @property
    def n_pairs(self) -> int:
        return self.rotary_dim // 2

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 without GQA)."""
        return self.n_heads // self.n_kv_heads

    @property
    def wavelength(self) -> Float[Tensor, "layer pair"]:
        """Tokens per full turn, ``2π/omega`` (``inf`` for a pair that does not rotate)."""
        return (2 * math.pi) / self.omega

    @validates_inputs
    def turns(self, context: int) -> Float[Tensor, "layer pair"]:
        """Full turns each pair's angle makes between the first and the last of ``context``
        positions, ``omega * (context - 1) / 2π``, float64 ``[layer, pair]``."""
        return turns_over(self.omega, context)

    @validates_inputs
    def slow_pairs(self, context: int) -> Bool[Tensor, "layer pair"]:
        """Pairs whose angle completes less than one full turn over ``context`` positions
        (``omega * (context - 1) < 2π``; pairs that do not rotate included): over such a
        context a pair's angle is an offset feature, never aliased (arXiv 2503.01832)."""
        return turns_over(self.omega, context) < 1

    @property
    def attn_scale(self) -> float:
        """The attention scale shared by all layers (raises if layers differ)."""
        if len(set(self.attn_scales)) != 1:
            raise RopeBehaviorError(
                f"layers use different attention scales {sorted(set(self.attn_scales))}; "
                "read spec.attn_scales[layer]"
            )
        return self.attn_scales[0]

    @property
    def reads_rotated_hooks(self) -> bool:
        """Whether rotated q/k come from the host's rotated hooks (else: pre-rotation + rotation)."""
        return all(s.rot_q is not None for s in self.sites)

    def kv_head_of(self, head: int) -> int:
        """The KV head a query head reads its keys from."""
        return self.check_head(head) // self.group_size

    def query_heads_of(self, kv_head: int) -> tuple[int, ...]:
        """The query heads that share ``kv_head``'s keys."""
        kv_head = check_index(kv_head, self.n_kv_heads, "kv_head")
        g = self.group_size
        return tuple(range(kv_head * g, (kv_head + 1) * g))

    @property
    def kv_map(self) -> tuple[int, ...]:
        """``kv_map[h]`` is the KV head of query head ``h``."""
        return tuple(h // self.group_size for h in range(self.n_heads))

    # -- validation ----------------------------------------------------------------------
    def check_layer(self, layer: object) -> int:
        return check_index(
            layer, self.n_layers, "layer", f"{self.architecture} has {self.n_layers} layers"
        )

    def check_head(self, head: object) -> int:
        return check_index(head, self.n_heads, "head", f"{self.n_heads} query heads")

    def check_pair(self, pair: object) -> int:
        return check_index(
            pair, self.n_pairs, "pair", f"rotary_dim={self.rotary_dim} gives {self.n_pairs} pairs"
        )

    def to_frame(self) -> Any:
        """Tidy table: one row per (layer, pair) with omega and wavelength."""
        import pandas as pd

        rows = [
            {
                "layer": layer,
                "pair": p,
                "omega": float(self.omega[layer, p]),
                "wavelength": float(self.wavelength[layer, p]),
                "omega_source": self.omega_source[layer],
            }
            for layer in range(self.n_layers)
            for p in range(self.n_pairs)
        ]
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return display.text(self)

    def _repr_html_(self) -> str:
        return display.html(self)
