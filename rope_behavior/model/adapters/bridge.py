"""Adapter for TransformerLens ``TransformerBridge`` models (4.x, and 3.9's).

How the bridge positions padded prompts (measured on transformer-lens 4.3.0 with
transformers 5, for every family of the test suite's table, left and right padding):

* ``TransformerBridge.forward`` derives ``position_ids`` from a 2-D ``attention_mask``
  (``cumsum - 1``, padding slots before the first token set to 0), per row: a row whose mask
  moves a real token off ``0..pos-1`` (left padding, an interior gap) gets the derived ids,
  the other rows (unpadded, right-padded) keep ``0..pos-1``. Hugging Face hands the ids to
  every layer's attention as the ``position_ids`` keyword, ``[1, pos]`` when no row needed
  derived ids, else ``[batch, pos]`` — identical in every layer. A left-padded prompt's real
  tokens therefore sit at 0, 1, ... exactly as when the prompt runs alone, and its logits
  on real tokens equal the unpadded run's (to 3e-7 in fp32, in every family).
* ``hook_cos`` / ``hook_sin`` fire with the tables of those ids: ``[1, pos, width]`` when
  all rows share ``0..pos-1``, ``[batch, pos, width]`` (one table per prompt) otherwise.
  GPT-J and PhiMoE fire no table hooks; there the tables are recomputed from the model's
  own rotary table / module at the position ids recorded from the attention's keywords
  (:meth:`BridgeAdapter.positions_recorded`).
"""

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from typing import Any

import torch
from torch import Tensor

from rope_behavior.errors import (
    NotRotaryModelError,
    RopeBehaviorError,
    UnsupportedArchitectureError,
)
from rope_behavior.model.adapters.base import (
    ConfigFacts,
    HookSites,
    ModelAdapter,
    PairLayout,
    PositionTap,
)

__all__ = ["BridgeAdapter"]

# Per bridge: how many values its blocks return (0: a bare tensor), for skipped blocks.
_BLOCK_ARITY: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()
# Families whose pairs are adjacent dims (2p, 2p+1) even though the bridge config may say
# otherwise (GPT-J's bridge reports rotary_adjacent_pairs=False).
_INTERLEAVED_ARCHITECTURES = {"GPTJForCausalLM", "CodeGenForCausalLM"}
# Families whose attention applies RoPE in a way the decomposition cannot follow exactly.
_REFUSED_ARCHITECTURES: dict[str, str] = {
    "NanoChatForCausalLM": (
        "NanoChat normalises q and k after RoPE (and rotates with the opposite sign), so its "
        "attention logits are not a sum over rotated pairs; the per-pair decomposition would "
        "be wrong"
    ),
    "DeepseekV2ForCausalLM": (
        "DeepSeek-V2 uses multi-head latent attention: RoPE acts on a separate low-rank "
        "sub-head shared across heads, which the per-head pair decomposition does not model"
    ),
    "DeepseekV3ForCausalLM": (
        "DeepSeek-V3 uses multi-head latent attention: RoPE acts on a separate low-rank "
        "sub-head shared across heads, which the per-head pair decomposition does not model"
    ),
}


class BridgeAdapter(ConfigFacts, ModelAdapter):
    """Adapter for TransformerLens ``TransformerBridge`` (4.x and 3.9; 3.9's forward has
    no ``start_at_layer``, so :meth:`forward` resumes a run from a residual itself)."""

    def __init__(self, model: Any) -> None:
        cfg = model.cfg
        self.model = model
        self.architecture = str(getattr(cfg, "architecture", type(model).__name__))
        pe = getattr(cfg, "positional_embedding_type", None)
        if pe != "rotary":
            raise NotRotaryModelError(
                f"{self.architecture} uses positional_embedding_type={pe!r}, not rotary "
                "position embeddings; rope_behavior analyses RoPE models only (e.g. Llama, "
                "Mistral, Qwen, Gemma, Phi, GPT-NeoX/Pythia, GPT-J)"
            )
        if self.architecture in _REFUSED_ARCHITECTURES:
            raise UnsupportedArchitectureError(_REFUSED_ARCHITECTURES[self.architecture])
        if bool(getattr(cfg, "qk_norm_after_rope", False)):
            raise UnsupportedArchitectureError(
                f"{self.architecture} normalises q and k after RoPE, so the attention logits "
                "are not a sum over rotated pairs; the per-pair decomposition would be wrong"
            )
        self.n_layers = int(cfg.n_layers)
        self.n_heads = int(cfg.n_heads)
        self.n_kv_heads = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
        self.d_head = int(cfg.d_head)
        self._attn = [blk.attn for blk in model.blocks]
        self._fired: dict[str, bool] | None = None

    # -- hook names --------------------------------------------------------------------
    def sites(self, layer: int) -> HookSites:
        fired = self._probe_fired()
        a = f"blocks.{layer}.attn"
        hd = self.hook_points()
        q, k = f"{a}.hook_q", f"{a}.hook_k"
        # A q/k norm between projection and rotation: the pre-rotation tensors are the normed ones.
        if f"{a}.hook_q_normed" in hd and fired.get(f"{a}.hook_q_normed", False):
            q = f"{a}.hook_q_normed"
        if f"{a}.hook_k_normed" in hd and fired.get(f"{a}.hook_k_normed", False):
            k = f"{a}.hook_k_normed"
        rot_fires = fired.get(f"{a}.hook_rot_q", False) and fired.get(f"{a}.hook_rot_k", False)
        cos_fires = fired.get(f"{a}.hook_cos", False)
        return HookSites(
            q=q,
            k=k,
            rot_q=f"{a}.hook_rot_q" if rot_fires else None,
            rot_k=f"{a}.hook_rot_k" if rot_fires else None,
            cos=f"{a}.hook_cos" if cos_fires else None,
            sin=f"{a}.hook_sin" if cos_fires else None,
            scores=f"{a}.hook_attn_scores",
            pattern=f"{a}.hook_pattern",
            resid_pre=f"blocks.{layer}.hook_resid_pre",
            pre_editable=not (q.endswith("_normed") or k.endswith("_normed")),
        )

    def hook_points(self) -> dict[str, Any]:
        return dict(self.model.hook_dict)

    def read(self, name: str, x: Tensor) -> Tensor:
        """Bring a captured q/k activation to ``[batch, pos, head, d_head]``.

        The bridge's q/k-norm hooks fire on ``[batch, head, pos, d_head]`` (post-reshape
        norms: Qwen3, Gemma-3, Cohere) or on flat ``[batch, pos, head*d_head]`` (OLMo-2).
        """
        if not name.endswith("_normed"):
            return x
        if x.ndim == 3:
            return x.view(*x.shape[:2], -1, self.d_head)
        layer = int(name.split(".")[1])
        if getattr(self._attn[layer], "_qk_norm_phase", None) == "post_reshape":
            return x.transpose(1, 2)
        return x

    def _probe_fired(self) -> dict[str, bool]:
        """Which per-layer hooks fire (measured once on a two-token forward)."""
        if self._fired is None:
            self._run_probe(2)
        assert self._fired is not None
        return self._fired

    def _run_probe(self, n_pos: int) -> dict[str, Tensor]:
        roles = (
            "hook_q",
            "hook_k",
            "hook_q_normed",
            "hook_k_normed",
            "hook_rot_q",
            "hook_rot_k",
            "hook_cos",
            "hook_sin",
        )
        hd = self.hook_points()
        names = [f"blocks.{i}.attn.{r}" for i in range(self.n_layers) for r in roles]
        names = [n for n in names if n in hd]
        seen: dict[str, Tensor] = {}
        tokens = torch.zeros(1, n_pos, dtype=torch.long, device=self.device)
        with torch.no_grad(), self.hooked([(n, _Recorder(seen, n)) for n in names]):
            self.model(tokens)
        self._fired = {n: n in seen for n in names}
        widths = [v.shape[-1] for n, v in seen.items() if n.endswith("hook_cos")]
        self._table_width = widths[0] if widths else 0
        return seen

    # -- numbers -----------------------------------------------------------------------
    def attn_scale(self, layer: int) -> float:
        hf = self._attn[layer].original_component
        for attr in ("scaling", "inv_norm_factor", "scale_attn", "norm_factor"):
            v = getattr(hf, attr, None)
            if v is None:
                continue
            v = float(v.item() if isinstance(v, Tensor) else v)
            # ``scaling`` / ``inv_norm_factor`` multiply; ``scale_attn`` / ``norm_factor`` divide.
            return 1.0 / v if attr in ("scaling", "inv_norm_factor") else v
        return float(self.d_head) ** 0.5

    def logit_softcap(self, layer: int) -> float | None:
        v = getattr(self._attn[layer].original_component, "attn_logit_softcapping", None)
        return None if v is None else float(v)

    def pair_layout(self) -> PairLayout:
        cfg = self.model.cfg
        if self.architecture in _INTERLEAVED_ARCHITECTURES:
            return "interleaved"
        if getattr(cfg, "rotary_adjacent_pairs", False) or getattr(
            cfg, "rotary_interleaved_cos_sin", False
        ):
            return "interleaved"
        return "half"

    def _table_columns(self, width: int) -> tuple[str, int]:
        """How a captured table of ``width`` columns stores the pairs."""
        cfg = self.model.cfg
        if getattr(cfg, "rotary_interleaved_cos_sin", False):
            return "every_other", width // 2  # Cohere: c0 c0 c1 c1 ...
        if 2 * width == self.d_head and self._rotary_pct() == 1.0:
            return "undup", width  # GPT-OSS: half-width tables, one column per pair
        return "first_half", width // 2  # HF default: c0..c_{P-1} c0..c_{P-1}

    def _rotary_pct(self) -> float:
        from transformer_lens.utilities.hf_utils import get_rotary_pct_from_config

        return float(get_rotary_pct_from_config(self.model.cfg))

    def pair_tables(self, cos: Tensor, sin: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """Per-pair ``[b, pos, pair]`` from the bridge's ``[b, pos, width]`` tables (``b`` is 1
        or the batch: one table per prompt when the prompts' positions differ)."""
        kind, n_pairs = self._table_columns(cos.shape[-1])
        cos, sin = cos.reshape(-1, *cos.shape[-2:]), sin.reshape(-1, *sin.shape[-2:])
        if kind == "every_other":
            return cos[..., 0::2], sin[..., 0::2]
        return cos[..., :n_pairs], sin[..., :n_pairs]

    def probe_pair_tables(self, n_pos: int) -> list[tuple[Tensor, Tensor]]:
        seen = self._run_probe(n_pos)
        out = []
        for layer in range(self.n_layers):
            s = self.sites(layer)
            if s.cos is not None and s.sin is not None:
                c, si = self.pair_tables(seen[s.cos], seen[s.sin], layer)
            elif self._is_nope_layer(layer):
                width = self._nope_width()
                c, si = torch.ones(1, n_pos, width), torch.zeros(1, n_pos, width)
            else:
                positions = torch.arange(n_pos, device=self.device)[None]
                c, si = self.rotation_tables(layer, positions, torch.empty(0))
            out.append((c[0].double(), si[0].double()))
        return out

    def _is_nope_layer(self, layer: int) -> bool:
        """A layer of a rotary model that applies no RoPE (Cohere2 / SmolLM3 / EXAONE-4
        full-attention layers): rotated hooks fire but the table hooks never do."""
        fired = self._probe_fired()
        a = f"blocks.{layer}.attn"
        others_have_tables = any(
            fired.get(f"blocks.{i}.attn.hook_cos", False) for i in range(self.n_layers)
        )
        return (
            fired.get(f"{a}.hook_rot_q", False)
            and not fired.get(f"{a}.hook_cos", False)
            and others_have_tables
        )

    def rotation_tables(self, layer: int, positions: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """Tables of families without table hooks at the position ids ``[b, pos]``, computed
        as the model computes them: GPT-J indexes its rotary module's ``embed_positions``
        buffer (``[max_pos, rotary_dim]`` = ``[sin | cos]``) and casts to the activations'
        dtype; the others (PhiMoE) call the model-level Hugging Face rotary module with the
        ids (its long-context switch reads their maximum, as in the model)."""
        positions = positions.long()
        hf = self._attn[layer].original_component
        table = getattr(hf, "embed_positions", None)
        if not isinstance(table, Tensor):
            found = [b for n, b in self.model.named_buffers() if n.endswith("embed_positions")]
            table = found[0] if len(found) == 1 else None
        if isinstance(table, Tensor):
            top = int(positions.max()) if positions.numel() else -1
            if top >= table.shape[0]:
                raise UnsupportedArchitectureError(
                    f"{self.architecture}: position {top} is beyond the model's rotary table "
                    f"of {table.shape[0]} positions"
                )
            sincos = table[positions.to(table.device)]
            sin, cos = torch.split(sincos, table.shape[-1] // 2, dim=-1)
            return cos.to(like.dtype), sin.to(like.dtype)
        rotary = self._hf_rotary_module()
        if rotary is not None:
            # The model-level HF rotary module (PhiMoE): call it as the model does.
            ids = positions.to(rotary.inv_freq.device)
            dummy = torch.zeros(1, ids.shape[-1], 1, device=ids.device, dtype=self.dtype)
            cos, sin = rotary(dummy, ids)
            cos, sin = self.pair_tables(cos, sin, layer)
            return cos.to(like.dtype), sin.to(like.dtype)
        raise UnsupportedArchitectureError(
            f"{self.architecture}: the bridge fires neither hook_rot_q/hook_rot_k nor "
            "hook_cos/hook_sin for this family and the model holds no rotary table "
            "rope_behavior knows how to read, so the rotation cannot be reproduced exactly"
        )

    @contextmanager
    def positions_recorded(self, taps: Sequence[PositionTap]) -> Iterator[None]:
        """Record, per tap, the ``position_ids`` keyword the layer's attention receives in
        each forward (a torch forward pre-hook on the attention module, removed on exit)."""
        handles = []
        try:
            for tap in taps:
                handles.append(
                    self._attn[tap.layer].register_forward_pre_hook(
                        _PositionRecorder(tap.store), with_kwargs=True
                    )
                )
            yield
        finally:
            for h in handles:
                h.remove()

    def hook_count(self) -> int:
        """Hooks on the hook points plus forward pre-hooks on the attention modules."""
        return super().hook_count() + sum(len(a._forward_pre_hooks) for a in self._attn)

    def _hf_rotary_module(self) -> Any:
        """The model-level Hugging Face rotary module (``*RotaryEmbedding`` with ``inv_freq``)."""
        root = getattr(self.model, "original_model", None) or self.model
        for _, module in root.named_modules():
            name = type(module).__name__
            if (
                "Rotary" in name
                and "Bridge" not in name
                and isinstance(getattr(module, "inv_freq", None), Tensor)
            ):
                return module
        return None

    def _nope_width(self) -> int:
        fired = self._probe_fired()
        for i in range(self.n_layers):
            if fired.get(f"blocks.{i}.attn.hook_cos", False):
                return self._table_columns(self._table_width)[1]
        raise UnsupportedArchitectureError(f"{self.architecture}: no layer applies RoPE")

    def sliding_window(self, layer: int) -> int | None:
        hf = self._attn[layer].original_component
        if getattr(hf, "is_sliding", None) is False:
            return None
        v = getattr(hf, "sliding_window", None)
        return int(v) if v else None

    def inv_freq_candidates(self) -> list[Tensor]:
        out = []
        for name, buf in self.model.named_buffers():
            if name.rsplit(".", 1)[-1].endswith("inv_freq") and buf.ndim == 1:
                out.append(buf.detach())
        return out

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
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if stop_at_layer is not None:
            kwargs["stop_at_layer"] = stop_at_layer
        if keep_last:  # HF's logits_to_keep skips most of the unembedding
            kwargs["logits_to_keep"] = keep_last
        if start_at_layer is not None:
            if not _bridge_takes_start_at_layer():
                return self._resumed_forward(tokens, start_at_layer, kwargs)
            kwargs["start_at_layer"] = start_at_layer
            with self._blocks_skipped_below(start_at_layer):
                return self.model(tokens, **kwargs)
        return self.model(tokens, **kwargs)

    def _resumed_forward(self, resid: Tensor, start: int, kwargs: dict[str, Any]) -> Tensor:
        """``start_at_layer`` on a bridge whose forward lacks it (TransformerLens 3.9 raises
        ``NotImplementedError``): a full forward on placeholder token ids shaped like
        ``resid``, the blocks below ``start`` passed through (their hooks do not fire), and
        block ``start``'s incoming hidden states replaced by ``resid`` before its
        ``hook_resid_pre`` fires, as TransformerLens 4.x's ``start_at_layer`` does. The
        position ids and attention mask are derived from the shape and ``attention_mask``
        exactly as in the token run ``resid`` was cached from, so the logits are those of
        resuming that run at ``start``."""
        blocks = list(self.model.blocks)
        layer = start + len(blocks) if start < 0 else start
        if not 0 <= layer < len(blocks):
            raise RopeBehaviorError(
                f"start_at_layer={start} is out of range for {len(blocks)} blocks"
            )
        if not (resid.is_floating_point() and resid.ndim == 3):
            raise RopeBehaviorError(
                "with start_at_layer, the input is the residual stream entering that block, "
                f"[batch, pos, d_model] floats; got {resid.dtype} of shape {tuple(resid.shape)}"
            )
        placeholder = torch.zeros(resid.shape[:2], dtype=torch.long, device=self.device)
        handle = blocks[layer].register_forward_pre_hook(_Resume(resid), with_kwargs=True)
        try:
            with self._blocks_skipped_below(layer):
                return self.model(placeholder, **kwargs)
        finally:
            handle.remove()

    @contextmanager
    def _blocks_skipped_below(self, start: int) -> Iterator[None]:
        """Make blocks ``0..start-1`` pass their input through for the duration.

        The bridge's own ``start_at_layer`` still runs the blocks below ``start`` on the
        injected residual (and discards their output), so resuming from a cached residual
        would cost a full forward. Skipped blocks' hooks do not fire. The pass-through
        returns the structure the block returns (a tensor, or a tuple led by it), learnt
        on the first ``start_at_layer`` call of each model, which runs unskipped.
        """
        blocks = list(self.model.blocks)
        start = start + len(blocks) if start < 0 else start
        try:
            arity = _BLOCK_ARITY.get(self.model)
        except TypeError:  # pragma: no cover - unhashable model
            arity = None
        if arity is None:
            seen: list[int] = []

            def record(_m: Any, _a: Any, out: Any) -> None:
                seen.append(len(out) if isinstance(out, tuple) else 0)

            handle = blocks[0].register_forward_hook(record)
            try:
                yield
            finally:
                handle.remove()
                if seen:
                    with suppress(TypeError):  # an unhashable model relearns every call
                        _BLOCK_ARITY[self.model] = seen[0]
            return
        skipped = []
        try:
            for blk in blocks[:start]:
                if "forward" in blk.__dict__:  # someone else's override: leave it alone
                    continue
                blk.__dict__["forward"] = _PassThrough(arity)
                skipped.append(blk)
            yield
        finally:
            for blk in skipped:
                blk.__dict__.pop("forward", None)


@cache
def _bridge_takes_start_at_layer() -> bool:
    """Whether ``TransformerBridge.forward`` resumes from a residual (``start_at_layer``):
    TransformerLens 4.x does; 3.9's raises ``NotImplementedError``."""
    try:
        major = metadata.version("transformer-lens").split(".")[0]
    except metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        return True
    return not major.isdigit() or int(major) >= 4


@dataclass(frozen=True, eq=False)
class _Resume:
    """Forward pre-hook of block ``start_at_layer``: its incoming hidden states become the
    cached residual (:meth:`BridgeAdapter._resumed_forward`)."""

    resid: Tensor

    def __call__(
        self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args:
            return (self.resid, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self.resid}


@dataclass(frozen=True)
class _PassThrough:
    """Stand-in ``forward`` of a skipped block: returns its hidden states unchanged."""

    arity: int

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) + (None,) * (self.arity - 1) if self.arity else hidden


@dataclass(frozen=True, eq=False)
class _PositionRecorder:
    """Forward pre-hook of an attention module storing its ``position_ids`` keyword."""

    store: dict[str, Tensor]

    def __call__(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("position_ids")
        if isinstance(ids, Tensor):
            self.store["position_ids"] = ids.detach()
        else:  # the model counts 0..pos-1
            self.store.pop("position_ids", None)


@dataclass(frozen=True)
class _Recorder:
    """Hook that stores a detached reference to the activation under ``name``."""

    store: dict[str, Tensor]
    name: str

    def __call__(self, x: Tensor, hook: Any = None) -> Tensor:
        self.store[self.name] = x.detach()
        return x
