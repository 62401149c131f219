"""Adapter for TransformerLens ``HookedTransformer`` models (TransformerLens 2.x / 3.x).

Also covers subclasses such as SAE-Lens's ``HookedSAETransformer``. TransformerLens 4.x has
no ``HookedTransformer``; there the Bridge adapter is the only host adapter.

What the adapter relies on (read from transformer-lens 3.9's ``AbstractAttention`` /
``GroupedQueryAttention``):

* Every rotary attention fires ``hook_q`` / ``hook_k`` (projected, before rotation) and
  ``hook_rot_q`` / ``hook_rot_k`` (rotated), ``[batch, pos, head, d_head]``; under GQA the
  keys are per KV head (``n_key_value_heads``) and repeated to the query heads after the
  hook, unless ``cfg.ungroup_grouped_query_attention`` repeats them before it (then the
  hooks carry one key per query head). No table hooks exist.
* Each layer's attention holds its own ``rotary_cos`` / ``rotary_sin`` buffers
  ``[cached positions, rotary_dim]`` (local layers may use ``rotary_base_local``; YaRN and
  linear scaling are folded in). The pair layout is ``cfg.rotary_adjacent_pairs``
  (interleaved, GPT-J) or rotate-half; partial rotary rotates the first ``cfg.rotary_dim``
  dims. With an ``attention_mask`` the rotation uses ``cumsum(mask) - 1`` (clamped at 0)
  as position ids; without one, ``0..pos-1``.
* Scores are ``q·k / attn.attn_scale``, then ``cap * tanh(s / cap)`` when
  ``cfg.attn_scores_soft_cap > 0``, then the causal (and, for ``attn_type == "local"``,
  ``cfg.window_size``) mask; ``hook_attn_scores`` sees the masked scores.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from rope_behavior.errors import NotRotaryModelError, UnsupportedArchitectureError
from rope_behavior.model.adapters.base import (
    ConfigFacts,
    HookSites,
    ModelAdapter,
    PairLayout,
    PositionTap,
    standard_sites,
)

__all__ = ["HookedTransformerAdapter", "hooked_transformer_class"]

# Architectures whose attention normalises q and k between hook_q/hook_k and the rotation
# (applied on the flat projected vectors in TransformerLens 3.x).
_FLAT_QK_NORM_ARCHITECTURES = {"OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM"}


def hooked_transformer_class() -> type | None:
    """TransformerLens's ``HookedTransformer`` class, or ``None`` where it does not exist
    (TransformerLens 4.x removed it; importing it there raises ``ImportError``)."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError:
        return None
    return HookedTransformer if isinstance(HookedTransformer, type) else None


class HookedTransformerAdapter(ConfigFacts, ModelAdapter):
    """Adapter for TransformerLens 2.x / 3.x ``HookedTransformer`` (and subclasses)."""

    def __init__(self, model: Any) -> None:
        cfg = model.cfg
        self.model = model
        self.architecture = str(
            getattr(cfg, "original_architecture", None)
            or getattr(cfg, "model_name", None)
            or type(model).__name__
        )
        pe = getattr(cfg, "positional_embedding_type", None)
        if pe != "rotary":
            raise NotRotaryModelError(
                f"{type(model).__name__} ({self.architecture}) uses "
                f"positional_embedding_type={pe!r}, not rotary position embeddings; "
                "rope_behavior analyses RoPE models only (e.g. Llama, Mistral, Qwen, Gemma, "
                "Phi, GPT-NeoX/Pythia, GPT-J)"
            )
        between = []
        if (
            bool(getattr(cfg, "use_qk_norm", False))
            or self.architecture in _FLAT_QK_NORM_ARCHITECTURES
        ):
            between.append("a q/k norm")
        if getattr(cfg, "clip_qkv", None) is not None:
            between.append(f"a clamp to ±{cfg.clip_qkv} (clip_qkv)")
        if between:
            raise UnsupportedArchitectureError(
                f"{self.architecture}: HookedTransformer applies {' and '.join(between)} between "
                "hook_q/hook_k and the rotation and exposes no hook after it, so the unrotated "
                "queries and keys rope_behavior reads and edits are not the ones that are "
                "rotated; load this model as a TransformerBridge instead "
                "(TransformerBridge.boot_transformers)"
            )
        if bool(getattr(cfg, "use_logn_attn", False)):
            raise UnsupportedArchitectureError(
                f"{self.architecture}: HookedTransformer scales queries after hook_rot_q "
                "(use_logn_attn, Qwen-1's log-n attention), so the scores are not a sum over "
                "the rotated pairs the hooks carry; the per-pair decomposition would be wrong"
            )
        self.n_layers = int(cfg.n_layers)
        self.n_heads = int(cfg.n_heads)
        grouped = getattr(cfg, "n_key_value_heads", None)
        ungrouped = bool(getattr(cfg, "ungroup_grouped_query_attention", False))
        # The hooks carry one key per KV head, or per query head when ungrouped.
        self.n_kv_heads = int(grouped) if grouped and not ungrouped else self.n_heads
        self.d_head = int(cfg.d_head)
        self.rotary_dim = int(cfg.rotary_dim or cfg.d_head)
        self._attn = [blk.attn for blk in model.blocks]

    # -- hook names --------------------------------------------------------------------
    def sites(self, layer: int) -> HookSites:
        return standard_sites(layer)

    def hook_points(self) -> dict[str, Any]:
        return dict(self.model.hook_dict)

    # -- numbers -----------------------------------------------------------------------
    def attn_scale(self, layer: int) -> float:
        v = self._attn[layer].attn_scale
        return float(v.item() if isinstance(v, Tensor) else v)

    def logit_softcap(self, layer: int) -> float | None:
        v = getattr(self.model.cfg, "attn_scores_soft_cap", None)
        return float(v) if v is not None and float(v) > 0 else None

    def sliding_window(self, layer: int) -> int | None:
        if getattr(self._attn[layer], "attn_type", "global") != "local":
            return None
        return int(self.model.cfg.window_size)

    def pair_layout(self) -> PairLayout:
        return "interleaved" if bool(self.model.cfg.rotary_adjacent_pairs) else "half"

    def _pairs(self, table: Tensor) -> Tensor:
        """One column per pair of a ``[..., rotary_dim]`` table (each frequency is stored
        twice: ``(d 2)`` interleaved, ``(2 d)`` rotate-half)."""
        if self.pair_layout() == "interleaved":
            return table[..., 0::2]
        return table[..., : self.rotary_dim // 2]

    def _tables(self, layer: int, n_pos: int) -> tuple[Tensor, Tensor]:
        """The layer's ``(cos, sin)`` ``[>= n_pos, rotary_dim]``: its own buffers, or, past
        their cached length, a longer table built by the layer's own method (without
        touching the model's buffers, as the model would extend them)."""
        attn = self._attn[layer]
        cos, sin = attn.rotary_cos, attn.rotary_sin
        if n_pos <= cos.shape[0]:
            return cos, sin
        sin, cos = attn.calculate_sin_cos_rotary(
            self.rotary_dim, n_pos, base=self._rotary_base(layer), dtype=self.model.cfg.dtype
        )
        return cos.to(attn.rotary_cos.device), sin.to(attn.rotary_sin.device)

    def _rotary_base(self, layer: int) -> float:
        """The base the layer's table was built with (``rotary_base_local`` on local layers
        where set; TransformerLens 3.x has ``_rotary_base()``, 2.x chooses inline)."""
        attn = self._attn[layer]
        own = getattr(attn, "_rotary_base", None)
        if callable(own):
            return float(own())
        cfg = self.model.cfg
        local = getattr(cfg, "rotary_base_local", None)
        if local is not None and getattr(attn, "attn_type", "global") == "local":
            return float(local)
        return float(cfg.rotary_base)

    def rotation_tables(self, layer: int, positions: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """Per-pair ``(cos, sin)`` ``[b, pos, pair]`` at ``positions`` ``[b, pos]``, indexed
        from the layer's own ``rotary_cos`` / ``rotary_sin`` as the model indexes them."""
        positions = positions.long()
        top = int(positions.max()) + 1 if positions.numel() else 1
        cos, sin = self._tables(layer, top)
        ids = positions.to(cos.device)
        return self._pairs(cos[ids]).to(like.dtype), self._pairs(sin[ids]).to(like.dtype)

    def probe_pair_tables(self, n_pos: int) -> list[tuple[Tensor, Tensor]]:
        out = []
        for layer in range(self.n_layers):
            cos, sin = self._tables(layer, n_pos)
            out.append((self._pairs(cos[:n_pos]).double(), self._pairs(sin[:n_pos]).double()))
        return out

    @contextmanager
    def positions_recorded(self, taps: Sequence[PositionTap]) -> Iterator[None]:
        """Record, per tap, the position ids the layer's rotation uses in each forward:
        ``cumsum(attention_mask) - 1`` clamped at 0 when the attention receives a mask,
        else ``0..pos-1`` (a torch forward pre-hook on the attention module, removed on
        exit, also on error)."""
        handles = []
        try:
            for tap in taps:
                handles.append(
                    self._attn[tap.layer].register_forward_pre_hook(
                        _MaskPositionRecorder(tap.store), with_kwargs=True
                    )
                )
            yield
        finally:
            for h in handles:
                h.remove()

    def hook_count(self) -> int:
        """Hooks on the hook points plus forward pre-hooks on the attention modules."""
        return super().hook_count() + sum(len(a._forward_pre_hooks) for a in self._attn)

    def forward(
        self,
        tokens: Tensor,
        *,
        attention_mask: Tensor | None = None,
        stop_at_layer: int | None = None,
        start_at_layer: int | None = None,
        keep_last: int | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """``model(tokens, ...)``; with ``start_at_layer``, ``tokens`` is the residual stream
        ``[batch, pos, d_model]`` entering that block (HookedTransformer skips the blocks
        below it)."""
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if stop_at_layer is not None:
            kwargs["stop_at_layer"] = stop_at_layer
        if start_at_layer is not None:
            kwargs["start_at_layer"] = start_at_layer
        return self.model(tokens, **kwargs)


@dataclass(frozen=True, eq=False)
class _MaskPositionRecorder:
    """Forward pre-hook of a HookedTransformer attention module storing the position ids
    its rotation derives from the ``attention_mask`` keyword."""

    store: dict[str, Tensor]

    def __call__(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if isinstance(mask, Tensor):
            ids = mask.long().cumsum(dim=1) - 1
            self.store["position_ids"] = ids.clamp(min=0).detach()
        else:  # the model counts 0..pos-1
            self.store.pop("position_ids", None)
