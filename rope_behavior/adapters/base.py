"""The adapter interface: what the rest of rope_behavior may ask of a model."""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from rope_behavior.errors import UnsupportedArchitectureError

__all__ = ["FwdHooks", "HookFn", "HookSites", "ModelAdapter", "PairLayout"]

PairLayout = Literal["half", "interleaved"]
HookFn = Callable[..., Any]
FwdHooks = Sequence[tuple[str, HookFn]]


@dataclass(frozen=True)
class HookSites:
    """Hook names of one layer, by role.

    ``q`` / ``k`` carry the queries and keys immediately before rotation (after any q/k
    norm that precedes RoPE); ``rot_q`` / ``rot_k`` the rotated ones, or ``None`` when the
    host does not fire a rotated hook for this family (then the rotation is reproduced from
    ``cos`` / ``sin`` or the model's own table). ``cos`` / ``sin`` are ``None`` when the host
    exposes no table hook.
    """

    q: str
    k: str
    rot_q: str | None
    rot_k: str | None
    cos: str | None
    sin: str | None
    scores: str
    pattern: str
    resid_pre: str


class ModelAdapter(ABC):
    """Uniform access to a rotary model. Subclasses know one host library."""

    model: Any
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int

    @abstractmethod
    def sites(self, layer: int) -> HookSites: ...

    @abstractmethod
    def attn_scale(self, layer: int) -> float:
        """Divisor of q·k in the model's attention scores."""

    def sliding_window(self, layer: int) -> int | None:
        """Keys further than ``window - 1`` positions back are masked, if set."""
        return None

    def logit_softcap(self, layer: int) -> float | None:
        """Soft-cap ``c`` of ``c * tanh(scores / c)`` applied before the mask, if any."""
        return None

    @abstractmethod
    def pair_layout(self) -> PairLayout: ...

    @abstractmethod
    def probe_pair_tables(self, n_pos: int) -> list[tuple[Tensor, Tensor]]:
        """Per layer, the model's own ``(cos, sin)`` per pair, float64 ``[n_pos, pair]``.

        Includes any attention factor the model folds into its tables (YaRN).
        """

    def inv_freq_candidates(self) -> list[Tensor]:
        """Exact ``inv_freq`` vectors held by the model's rotary modules (may be empty)."""
        return []

    def pair_tables(self, cos: Tensor, sin: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """Turn a table captured at ``sites(layer).cos``/``.sin`` into per-pair ``[pos, pair]``."""
        raise UnsupportedArchitectureError(
            f"{type(self).__name__} declares no cos/sin table hooks, so there is no captured "
            "table to read; its sites(layer).cos must be None"
        )

    def rotation_tables(self, layer: int, n_pos: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """Per-pair ``(cos, sin)`` ``[n_pos, pair]`` for layers whose tables have no hook."""
        raise UnsupportedArchitectureError(
            f"{type(self).__name__} cannot reproduce the model's rotation tables; it must "
            "fire rotated hooks or table hooks for every layer"
        )

    @abstractmethod
    def hook_points(self) -> dict[str, Any]:
        """Every hook point of the model by name."""

    def read(self, name: str, x: Tensor) -> Tensor:
        """Bring the activation captured at hook ``name`` to ``[batch, pos, head, d_head]``."""
        return x

    def hook_count(self) -> int:
        """Number of forward and backward hooks attached to the model's hook points."""
        seen: set[int] = set()
        total = 0
        for hp in self.hook_points().values():
            if id(hp) in seen:
                continue
            seen.add(id(hp))
            total += len(hp._forward_hooks) + len(hp._backward_hooks)
        return total

    @contextmanager
    def hooked(self, fwd_hooks: FwdHooks) -> Iterator[None]:
        """Install hooks for the duration of the block; they are removed even on error."""
        with self.model.hooks(fwd_hooks=list(fwd_hooks)):
            yield

    @abstractmethod
    def forward(
        self,
        tokens: Tensor,
        *,
        attention_mask: Tensor | None = None,
        stop_at_layer: int | None = None,
        start_at_layer: int | None = None,
        **kwargs: Any,
    ) -> Tensor: ...

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def n_ctx(self) -> int | None:
        """Longest context the rotary table is built for, when the model states one."""
        return None

    def sequences_per_forward(self, n_pos: int, natural: int) -> int:
        """How many sequences of ``n_pos`` tokens to run in one forward when a caller may
        batch freely (tokens-mode scoring, patching conditions); ``natural`` is the
        caller's own batch, and the answer is never below it.

        As many as keep one activation (``pos x max(d_model, d_mlp)``) and one layer's
        attention scores (``heads x pos x pos``) under a budget of elements each: 2**28
        (1 GiB in fp32) on an accelerator, where larger batches use the device better;
        2**22 (16 MiB) on a CPU, where a forward of that size is already compute-bound and
        larger batches only add memory traffic (``bench/scores.py`` (c): 4x the batch ran
        at 0.63-0.67x), while small models still gain from fewer, larger forwards.
        """
        budget = 1 << (22 if self.device.type == "cpu" else 28)
        cfg = getattr(self.model, "cfg", None)
        d_model = int(getattr(cfg, "d_model", 0) or 0)
        d_mlp = int(getattr(cfg, "d_mlp", 0) or 0) or 4 * d_model  # unstated: the usual 4x
        width = max(d_model, d_mlp, 1)
        per_seq = max(n_pos * width, self.n_heads * n_pos * n_pos, 1)
        return max(natural, budget // per_seq)

    def vocab_size(self) -> int | None:
        return None
