"""The adapter interface: what the rest of rope_behavior may ask of a model."""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, UnsupportedArchitectureError

__all__ = [
    "FwdHooks",
    "HookFn",
    "HookSites",
    "ModelAdapter",
    "OpaqueHook",
    "PairLayout",
    "PositionTap",
]

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
    pre_editable: bool = True

    @property
    def edits_rotated(self) -> bool:
        """Whether interventions edit this layer's rotated q/k (both rotated hooks fire)."""
        return self.rot_q is not None and self.rot_k is not None

    def edit_sites(self) -> tuple[str, str, bool]:
        """The hooks interventions edit at this layer, ``(q, k, rotated)``: the rotated
        hooks where both fire, else the pre-rotation ones (whole pairs there, rotated by the
        model afterwards). The one place that decides where an edit goes."""
        if self.edits_rotated:
            return self.rot_q, self.rot_k, True  # type: ignore[return-value]
        return self.q, self.k, False


@dataclass(frozen=True, eq=False)
class PositionTap:
    """The position ids ``[b, pos]`` (``b`` 1 or the batch) the model gives the tokens of
    ``layer``'s attention in the current forward, as the model counts them (e.g. a
    left-padded prompt's real tokens from 0 under an attention mask).

    Filled by :meth:`ModelAdapter.positions_recorded` (which :meth:`ModelAdapter.hooked`
    installs for hooks declaring ``position_taps``); while unfilled it reports ``0..pos-1``
    for every prompt (``recorded`` is then False).
    """

    layer: int
    store: dict[str, Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def recorded(self) -> bool:
        return "position_ids" in self.store

    def positions(self, n_pos: int, device: torch.device) -> Tensor:
        """The last ``n_pos`` position ids ``[b, n_pos]`` of the latest forward."""
        got = self.store.get("position_ids")
        if got is None:
            return torch.arange(n_pos, device=device)[None]
        return got[..., -n_pos:].to(device)


@dataclass(frozen=True, eq=False)
class OpaqueHook:
    """A forward hook at a hook point that is not a wrapped TransformerLens user hook
    (``fn`` is the raw torch hook ``fn(module, input, output)``)."""

    fn: Any

    def __repr__(self) -> str:
        return f"OpaqueHook({getattr(self.fn, '__qualname__', type(self.fn).__name__)})"


@dataclass(frozen=True, eq=False)
class _InputTap:
    """Forward pre-hook storing a hook point's incoming (unedited) value under ``name``."""

    adapter: "ModelAdapter"
    name: str
    store: dict[str, Tensor]

    def __call__(self, module: Any, args: tuple[Any, ...]) -> None:
        x = args[0]
        conversion = getattr(module, "hook_conversion", None)
        if conversion is not None:  # hooks at this point see the converted layout
            x = conversion.convert(x)
        self.store[self.name] = self.adapter.read(self.name, x)


def _unwrap_hook(fn: Any) -> Any:
    """The user function inside TransformerLens's ``full_hook`` closure, else opaque."""
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None)
    if code is not None and cells:
        for var, cell in zip(code.co_freevars, cells):
            if var == "hook":
                try:
                    return cell.cell_contents
                except ValueError:  # an empty cell
                    break
    return OpaqueHook(fn)


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

    def rotary_tensors(self) -> list[Tensor]:
        """The tensors the model's rotation is computed from: its rotary modules' ``inv_freq``
        and every buffer named like a rotary table (``rotary``, ``inv_freq``, ``cos``, ``sin``)."""
        named = [
            t
            for name, t in self.model.named_buffers()
            if any(key in name.rsplit(".", 1)[-1] for key in ("rotary", "inv_freq", "cos", "sin"))
        ]
        return self.inv_freq_candidates() + named

    def rotary_state(self) -> tuple[Any, ...]:
        """A fingerprint of what the spec is read from, cheap to take: the identity, version
        counter, shape, dtype and device of every :meth:`rotary_tensors` tensor, and the
        weights' dtype and device. An in-place edit, a replaced buffer or ``model.to(...)``
        changes it (what :func:`~rope_behavior.model.context.resolve` checks)."""
        tensors = tuple(
            (t.data_ptr(), t._version, tuple(t.shape), t.dtype, str(t.device))
            for t in self.rotary_tensors()
        )
        return (*tensors, self.dtype, str(self.device))

    def pair_tables(self, cos: Tensor, sin: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """Turn a table captured at ``sites(layer).cos``/``.sin`` (``[b, pos, width]``, ``b``
        1 or the batch) into per-pair ``[b, pos, pair]``."""
        raise UnsupportedArchitectureError(
            f"{type(self).__name__} declares no cos/sin table hooks, so there is no captured "
            "table to read; its sites(layer).cos must be None"
        )

    def rotation_tables(self, layer: int, positions: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """Per-pair ``(cos, sin)`` ``[b, pos, pair]`` at integer ``positions`` ``[b, pos]``
        (the model's own position ids), for layers whose tables have no hook; computed as
        the model computes them and cast to ``like``'s dtype."""
        raise UnsupportedArchitectureError(
            f"{type(self).__name__} cannot reproduce the model's rotation tables; it must "
            "fire rotated hooks or table hooks for every layer"
        )

    @contextmanager
    def positions_recorded(self, taps: Sequence["PositionTap"]) -> Iterator[None]:
        """Within the block, every forward fills each tap with the position ids the model
        gives its layer's tokens (hooks removed on exit, also on error).

        The default records nothing: a model whose adapter does not override this counts
        positions ``0..pos-1`` for every prompt, which is what an empty tap reports.
        """
        yield

    @abstractmethod
    def hook_points(self) -> dict[str, Any]:
        """Every hook point of the model by name."""

    def read(self, name: str, x: Tensor) -> Tensor:
        """Bring the activation captured at hook ``name`` to ``[batch, pos, head, d_head]``."""
        return x

    def hook_count(self) -> int:
        """Number of forward (pre-)hooks and backward hooks attached to the model's hook points."""
        seen: set[int] = set()
        total = 0
        for hp in self.hook_points().values():
            if id(hp) in seen:
                continue
            seen.add(id(hp))
            total += len(hp._forward_hooks) + len(hp._forward_pre_hooks) + len(hp._backward_hooks)
        return total

    def hook_fns(self, name: str) -> list[Any]:
        """The user-level callables attached as forward hooks at hook point ``name``, in the
        order they fire.

        TransformerLens's ``HookPoint.add_hook`` wraps each user function in a closure
        (``full_hook``); the function handed to ``add_hook`` is returned (read from the
        hook's ``LensHandle`` or from the closure cell named ``hook``). A hook that cannot be
        unwrapped (e.g. a plain ``register_forward_hook`` callable) comes back as an
        :class:`OpaqueHook` wrapping it.
        """
        points = self.hook_points()
        if name not in points:
            near = sorted(n for n in points if n.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1])
            hint = f"; hook points with that suffix: {near[:6]}" if near else ""
            raise RopeBehaviorError(
                f"{name!r} is not a hook point of {self.architecture}; expected one of the "
                f"model's hook names (adapter.hook_points()){hint}"
            )
        hp = points[name]
        by_id = {
            h.hook.id: h.user_hook
            for h in getattr(hp, "fwd_hooks", ())
            if getattr(h, "user_hook", None) is not None and hasattr(h.hook, "id")
        }
        return [
            by_id[hid] if hid in by_id else _unwrap_hook(fn)
            for hid, fn in hp._forward_hooks.items()
        ]

    @contextmanager
    def inputs_recorded(self, names: Sequence[str], store: dict[str, Tensor]) -> Iterator[None]:
        """Within the block, every forward sets ``store[name]`` to the value arriving at hook
        point ``name`` BEFORE any forward hook there edits it, in the layout its hooks see,
        brought to ``[batch, pos, head, d_head]`` by :meth:`read` (a torch forward pre-hook
        on the hook point, removed on exit, also on error)."""
        points = self.hook_points()
        handles = []
        try:
            for name in names:
                handles.append(points[name].register_forward_pre_hook(_InputTap(self, name, store)))
            yield
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def hooked(self, fwd_hooks: FwdHooks) -> Iterator[None]:
        """Install hooks for the duration of the block; they are removed even on error.

        A hook callable that declares ``position_taps`` (rope_behavior's angle overrides)
        gets them filled during every forward in the block (:meth:`positions_recorded`).
        """
        fwd_hooks = list(fwd_hooks)
        taps = {id(t): t for _, fn in fwd_hooks for t in getattr(fn, "position_taps", ())}
        with self.positions_recorded(list(taps.values())), self.model.hooks(fwd_hooks=fwd_hooks):
            yield

    @abstractmethod
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
        """The model's logits for ``tokens``, run within the caller's hook scope.

        ``stop_at_layer`` / ``start_at_layer`` run part of the model (with
        ``start_at_layer`` ``tokens`` is the residual stream entering that block);
        ``keep_last=n`` says only the last ``n`` positions' logits are needed (an adapter
        whose host can skip the others does; the result still has every position's row or
        only the last ``n``: read ``logits[:, -n:]``)."""

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (its input embedding, for the hosts
        supported): where token ids go. On a model split over devices, layers may sit on
        others: tensors combined with a layer's activations are moved to their device."""
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

    def prepended_bos_id(self) -> int | None:
        """The BOS token id the model's own tokenizer prepends to every prompt, or ``None``
        when it prepends none (or the model has no tokenizer)."""
        return None


def standard_sites(layer: int) -> HookSites:
    """TransformerLens's standard hook names of one layer, rotated hooks included (the
    toy models and HookedTransformer; the Bridge probes which of them fire)."""
    a = f"blocks.{layer}.attn"
    return HookSites(
        q=f"{a}.hook_q",
        k=f"{a}.hook_k",
        rot_q=f"{a}.hook_rot_q",
        rot_k=f"{a}.hook_rot_k",
        cos=None,
        sin=None,
        scores=f"{a}.hook_attn_scores",
        pattern=f"{a}.hook_pattern",
        resid_pre=f"blocks.{layer}.hook_resid_pre",
    )


class ConfigFacts:
    """Context length, vocabulary and BOS as a TransformerLens model states them
    (``model.cfg.n_ctx`` / ``d_vocab`` / ``default_prepend_bos`` and its tokenizer)."""

    model: Any

    def n_ctx(self) -> int | None:
        v = getattr(self.model.cfg, "n_ctx", None)
        return int(v) if v else None

    def vocab_size(self) -> int | None:
        v = getattr(self.model.cfg, "d_vocab", None)
        return int(v) if v else None

    def prepended_bos_id(self) -> int | None:
        tok = getattr(self.model, "tokenizer", None)
        if tok is None or not bool(getattr(self.model.cfg, "default_prepend_bos", True)):
            return None
        bos = getattr(tok, "bos_token_id", None)
        return int(bos) if bos is not None else None
