"""Adapter for native hooked rotary models (the project's toy models and alikes)."""

from typing import Any

import torch
from torch import Tensor

from rope_behavior.errors import UnsupportedArchitectureError
from rope_behavior.model.adapters.base import HookSites, ModelAdapter, PairLayout, standard_sites

__all__ = ["NativeAdapter"]


class NativeAdapter(ModelAdapter):
    """Adapter for HookedRootModules that state their rotary facts as attributes."""

    def __init__(self, model: Any) -> None:
        cfg = model.cfg
        self.model = model
        self.architecture = type(model).__name__
        self.n_layers = int(cfg.n_layers)
        self.n_heads = int(cfg.n_heads)
        self.n_kv_heads = int(getattr(cfg, "n_kv_heads", None) or cfg.n_heads)
        self.d_head = int(cfg.d_head)

    def sites(self, layer: int) -> HookSites:
        return standard_sites(layer)

    def hook_points(self) -> dict[str, Any]:
        return dict(self.model.hook_dict)

    def attn_scale(self, layer: int) -> float:
        return float(self.model.attn_scale)

    def pair_layout(self) -> PairLayout:
        layout = self.model.rotary_pair_layout
        if layout not in ("half", "interleaved"):
            raise UnsupportedArchitectureError(
                f"{self.architecture}.rotary_pair_layout={layout!r}; expected 'half' or 'interleaved'"
            )
        return layout  # type: ignore[no-any-return]

    def rotation_tables(self, layer: int, positions: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``cos / sin(position * omega)`` ``[b, pos, pair]``. Native models count positions
        ``0..pos-1`` for every prompt, padding or not (their ``positions_recorded`` records
        nothing, so the positions asked for are those)."""
        omega = self.model.rotary_omega[layer]
        angle = positions.to(omega.device, omega.dtype)[..., None] * omega
        return angle.cos().to(like.dtype), angle.sin().to(like.dtype)

    def probe_pair_tables(self, n_pos: int) -> list[tuple[Tensor, Tensor]]:
        like = torch.empty(0, dtype=torch.float64)
        positions = torch.arange(n_pos)[None]
        out = []
        for layer in range(self.n_layers):
            cos, sin = self.rotation_tables(layer, positions, like)
            out.append((cos[0], sin[0]))
        return out

    def inv_freq_candidates(self) -> list[Tensor]:
        return [row.detach() for row in self.model.rotary_omega]

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
        return self.model(
            tokens,
            attention_mask=attention_mask,
            stop_at_layer=stop_at_layer,
            start_at_layer=start_at_layer,
            **kwargs,
        )

    def n_ctx(self) -> int | None:
        return int(self.model.cfg.n_ctx)

    def vocab_size(self) -> int | None:
        return int(self.model.cfg.d_vocab)

    def prepended_bos_id(self) -> int | None:
        bos = getattr(self.model, "bos_token_id", None)
        return int(bos) if isinstance(bos, int) and not isinstance(bos, bool) else None
