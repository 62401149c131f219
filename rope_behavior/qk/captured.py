"""Scoped capture of rotated and unrotated queries and keys.

One forward pass with hooks that live only inside the call (removed on error too). Where
the host fires rotated hooks (``hook_rot_q`` / ``hook_rot_k``) they are read directly;
otherwise (GPT-NeoX/Pythia, GPT-J, Phi-3, Falcon) the pre-rotation ``hook_q`` / ``hook_k``
are captured and rotated with the model's own tables, per prompt (the ``hook_cos`` /
``hook_sin`` of that very forward, or the model's rotary table at the position ids its
attention received in that forward). Nothing above the last requested layer's q/k is run.
"""

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, as_flag, check_indices, validates_inputs
from rope_behavior.model.adapters import ModelAdapter, PositionTap
from rope_behavior.model.context import ModelContext, resolve
from rope_behavior.model.spec import RopeSpec
from rope_behavior.qk.validation import check_spec, validate_mask, validate_tokens
from rope_behavior.rope.pairs import rotate

__all__ = [
    "Captured",
    "LayerQK",
    "attended_entries",
    "capture",
    "check_spec",
    "stream_checked",
    "stream_layers",
    "validate_mask",
    "validate_tokens",
]  # check_spec / validate_*: re-exported from rope_behavior.qk.validation


@dataclass(frozen=True, eq=False)
class Captured:
    """Queries and keys of some layers from one forward pass.

    ``rot_q[layer]`` ``[batch, pos, head, d_head]`` and ``rot_k[layer]``
    ``[batch, pos, kv_head, d_head]`` are the rotated tensors the model multiplies;
    ``q`` / ``k`` the same before rotation; ``cos`` / ``sin`` ``[batch, pos, pair]`` the
    model's own per-pair tables of that forward, per prompt: row ``b`` holds prompt ``b``'s
    tables at the positions the model gives its tokens (under an attention mask that
    left-pads it, the Bridge counts its real tokens from 0, as when it runs alone; a view of
    one shared table when every prompt has positions ``0..pos-1``). Query head ``h`` reads
    keys of KV head ``kv_map[h]``. ``attention_mask`` is the ``[batch, pos]`` mask given to
    the model (``None``: all ones).

    Devices: each layer's tensors stay on the device of that layer (on a model split over
    devices, layers differ); ``tokens`` and ``attention_mask`` are the ones passed in.
    """

    spec: RopeSpec
    layers: tuple[int, ...]
    tokens: Int[Tensor, "batch pos"] = field(repr=False)
    attention_mask: Int[Tensor, "batch pos"] | None = field(repr=False)
    rot_q: Mapping[int, Float[Tensor, "batch pos head d_head"]] = field(repr=False)
    rot_k: Mapping[int, Float[Tensor, "batch pos kv_head d_head"]] = field(repr=False)
    q: Mapping[int, Float[Tensor, "batch pos head d_head"]] = field(repr=False)
    k: Mapping[int, Float[Tensor, "batch pos kv_head d_head"]] = field(repr=False)
    cos: Mapping[int, Float[Tensor, "batch pos pair"]] = field(repr=False)
    sin: Mapping[int, Float[Tensor, "batch pos pair"]] = field(repr=False)

    @property
    def kv_map(self) -> tuple[int, ...]:
        return self.spec.kv_map

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[1])

    @staticmethod
    def check(captured: object, what: str) -> "Captured":
        """``captured`` if it is a :class:`Captured`, else the error saying how to get one."""
        if not isinstance(captured, Captured):
            raise RopeBehaviorError(
                f"{what} takes what capture(model, tokens) returns; got "
                f"{type(captured).__name__}: run rope_behavior.capture(model, tokens) first"
            )
        return captured

    def check_layer(self, layer: object) -> int:
        layer = self.spec.check_layer(layer)
        if layer not in self.rot_q:
            raise RopeBehaviorError(
                f"layer {layer} was not captured; captured layers: {list(self.layers)} "
                "(pass layers=... to capture)"
            )
        return layer

    def key_mask(
        self, layer: int, device: torch.device | str | None = None
    ) -> Bool[Tensor, "batch dest src"]:
        """Entries ``layer`` attends over (:func:`attended_entries`), built on ``device``
        (default: the tokens' device); pass the layer's device
        (``self.rot_q[layer].device``) to combine it with that layer's tensors on a model
        split over devices."""
        device = self.tokens.device if device is None else torch.device(device)
        return attended_entries(self.spec, layer, self.attention_mask, self.batch_size,
                                self.n_pos, device)  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"Captured({self.spec.architecture}, layers={list(self.layers)}, "
            f"batch={self.batch_size}, pos={self.n_pos})"
        )


def attended_entries(
    spec: RopeSpec,
    layer: int,
    attention_mask: Tensor | None,
    batch: int,
    n_pos: int,
    device: torch.device,
) -> Bool[Tensor, "batch dest src"]:
    """Entries ``layer`` attends over: causal, inside its sliding window if it has one,
    and, with an attention mask, between real tokens (neither the key nor the query is
    padding: a padding slot's query row is not part of any prompt)."""
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=device).tril()
    window = spec.sliding_windows[layer]
    if window is not None:
        causal = causal & ~torch.ones(n_pos, n_pos, dtype=torch.bool, device=device).tril(-window)
    mask = causal[None].expand(batch, n_pos, n_pos)
    if attention_mask is not None:
        real = attention_mask.to(device).bool()
        mask = mask & real[:, None, :] & real[:, :, None]
    return mask


@dataclass(frozen=True, eq=False)
class LayerQK:
    """Queries, keys and tables of one layer (what :func:`stream_layers` hands over).

    ``cos`` / ``sin`` ``[batch, pos, pair]`` are each prompt's own tables, as in
    :class:`Captured`. ``k_raw`` (only with ``raw_keys=True``, else ``None``) holds the
    pre-rotation keys at the layer's k site exactly as the host computed them, before any
    forward hook at that hook point edited them; ``k`` is what the hooks there left.
    All of them are on the device of the layer's queries (the layer's device).
    """

    layer: int
    rot_q: Float[Tensor, "batch pos head d_head"]
    rot_k: Float[Tensor, "batch pos kv_head d_head"]
    q: Float[Tensor, "batch pos head d_head"]
    k: Float[Tensor, "batch pos kv_head d_head"]
    cos: Float[Tensor, "batch pos pair"]
    sin: Float[Tensor, "batch pos pair"]
    k_raw: Float[Tensor, "batch pos kv_head d_head"] | None = None


@dataclass(frozen=True, eq=False)
class _LayerCollector:
    """Hook storing one role of one layer; calls ``on_layer`` once the layer is complete."""

    pending: dict[int, dict[str, Tensor]]
    layer: int
    role: str
    finish: Callable[[int], None]
    n_roles: int

    def __call__(self, x: Tensor, hook: Any = None) -> Tensor:
        roles = self.pending.setdefault(self.layer, {})
        roles[self.role] = x
        if len(roles) == self.n_roles:
            self.finish(self.layer)
        return x


class _Done(Exception):
    """Raised by the last requested layer's collector: nothing above it is needed."""


def _layer_roles(spec: RopeSpec, layer: int) -> dict[str, str]:
    s = spec.sites[layer]
    roles = {"q": s.q, "k": s.k, "rot_q": s.rot_q, "rot_k": s.rot_k, "cos": s.cos, "sin": s.sin}
    return {role: name for role, name in roles.items() if name}


def _assemble(
    adapter: ModelAdapter,
    spec: RopeSpec,
    layer: int,
    got: dict[str, Tensor],
    n_pos: int,
    k_raw: Tensor | None = None,
    tap: PositionTap | None = None,
) -> LayerQK:
    s = spec.sites[layer]
    q, k = adapter.read(s.q, got["q"]), adapter.read(s.k, got["k"])
    batch = q.shape[0]
    if "cos" in got:
        cos, sin = adapter.pair_tables(got["cos"], got["sin"], layer)
    elif spec.omega_source[layer] == "nope":  # a layer without RoPE in a rotary model
        cos = q.new_ones(1, n_pos, spec.n_pairs)
        sin = q.new_zeros(1, n_pos, spec.n_pairs)
    else:  # no table hook: the model's tables at the position ids it gave this layer
        positions = (tap or PositionTap(layer)).positions(n_pos, q.device)
        cos, sin = adapter.rotation_tables(layer, positions, q)
    # The tables may come from another device than this layer's (a model-level rotary
    # module, a table buffer): they are used with the layer's q / k, so they go there.
    cos, sin = cos.to(q.device), sin.to(q.device)
    if cos.shape[-2] < n_pos or cos.shape[0] not in (1, batch):
        raise RopeBehaviorError(
            f"layer {layer}: the model's rotary tables have shape {tuple(cos.shape)}; "
            f"expected [1 or {batch} prompts, {n_pos} positions, {spec.n_pairs} pairs]"
        )
    cos = cos[:, -n_pos:].expand(batch, n_pos, cos.shape[-1])
    sin = sin[:, -n_pos:].expand(batch, n_pos, sin.shape[-1])
    if "rot_q" in got:
        rot_q, rot_k = got["rot_q"], got["rot_k"]
    else:
        rot_q = rotate(q, cos, sin, spec.pair_layout)
        rot_k = rotate(k, cos, sin, spec.pair_layout)
    return LayerQK(layer=layer, rot_q=rot_q, rot_k=rot_k, q=q, k=k, cos=cos, sin=sin, k_raw=k_raw)


@validates_inputs
def stream_layers(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    on_layer: Callable[[LayerQK], None],
    *,
    layers: int | Iterable[int] | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    spec: RopeSpec | None = None,
    grad: bool = False,
    extra_hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
    raw_keys: bool = False,
) -> tuple[RopeSpec, tuple[int, ...], Tensor, Tensor | None]:
    """One scoped forward pass calling ``on_layer(LayerQK)`` as soon as each layer's q/k are
    available, so a consumer can work layer by layer and drop each layer's tensors.

    Returns ``(spec, layers, tokens, attention_mask)`` as validated. Nothing after the last
    requested layer's q/k is run (the forward stops there), unless ``extra_hooks`` are given:
    they are installed in the same scope and the forward then runs to the top of that layer.
    ``raw_keys=True`` also hands over ``LayerQK.k_raw``: the keys at the layer's k site as
    the host computed them, before any forward hook there (the caller's included) edited
    them. A ``spec`` of another model raises a :class:`RopeBehaviorError`.
    """
    context = check_spec(spec, resolve(model))
    if not callable(on_layer):
        raise RopeBehaviorError(
            f"on_layer={on_layer!r} is not callable; expected a function on_layer(LayerQK)"
        )
    as_flag(raw_keys, "raw_keys")
    as_flag(grad, "grad")
    tokens = validate_tokens(tokens, context.adapter)
    mask = validate_mask(attention_mask, tokens)
    n_layers = context.spec.n_layers
    chosen = check_indices(layers, n_layers, "layer", f"{n_layers} layers")
    stream_checked(
        context, tokens, mask, chosen, on_layer, grad=grad, extra_hooks=extra_hooks,
        raw_keys=raw_keys,
    )  # fmt: skip
    return context.spec, chosen, tokens, mask


def stream_checked(
    context: ModelContext,
    tokens: Int[Tensor, "batch pos"],
    mask: Int[Tensor, "batch pos"] | None,
    chosen: tuple[int, ...],
    on_layer: Callable[[LayerQK], None],
    *,
    grad: bool = False,
    extra_hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
    raw_keys: bool = False,
    on_logits: Callable[[Tensor], None] | None = None,
) -> None:
    """:func:`stream_layers` on inputs already validated (``validate_tokens``,
    ``validate_mask``, checked layer indices) and a resolved context: what the library's own
    callers use, so one public call validates and resolves once. ``on_logits``: the forward
    runs to the end and its output (the logits) is handed to it, so the same forward also
    gives the model's predictions."""
    adapter, spec = context.adapter, context.spec
    pending: dict[int, dict[str, Tensor]] = {}
    raw: dict[str, Tensor] = {}
    raw_names = [spec.sites[layer].k for layer in chosen] if raw_keys else []
    n_pos = tokens.shape[1]

    stop = max(chosen) + 1
    stop_early = not extra_hooks and on_logits is None

    # Layers without table hooks rotate with the model's tables at its own position ids.
    taps = {
        layer: PositionTap(layer)
        for layer in chosen
        if spec.sites[layer].cos is None and spec.omega_source[layer] != "nope"
    }

    def finish(layer: int) -> None:
        k_raw = raw.pop(spec.sites[layer].k, None) if raw_keys else None
        if raw_keys and k_raw is None:
            raise RopeBehaviorError(
                f"layer {layer}: the keys at {spec.sites[layer].k} were not seen before its "
                "hooks fired, so raw_keys cannot be given"
            )
        lq = _assemble(adapter, spec, layer, pending.pop(layer), n_pos, k_raw, taps.get(layer))
        on_layer(lq)
        if stop_early and layer == stop - 1:
            raise _Done

    hooks: list[tuple[str, Callable[..., Any]]] = []
    for layer in chosen:
        roles = _layer_roles(spec, layer)
        hooks += [
            (name, _LayerCollector(pending, layer, role, finish, len(roles)))
            for role, name in roles.items()
        ]
    hooks += list(extra_hooks)
    with (
        torch.set_grad_enabled(grad),
        adapter.inputs_recorded(raw_names, raw),
        adapter.positions_recorded(list(taps.values())),
        adapter.hooked(hooks),
        contextlib.suppress(_Done),
    ):
        out = adapter.forward(
            tokens, attention_mask=mask, stop_at_layer=None if on_logits else stop
        )
        if on_logits is not None:
            on_logits(out)
    if pending:
        raise RopeBehaviorError(
            f"layers {sorted(pending)} did not fire all of their hooks "
            f"({ {layer: sorted(r) for layer, r in pending.items()} }); the model's forward "
            "skipped them"
        )


@validates_inputs
def capture(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    *,
    layers: int | Iterable[int] | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    spec: RopeSpec | None = None,
    grad: bool = False,
) -> Captured:
    """Run one forward pass and capture rotated / unrotated q and k of ``layers``.

    Args:
        model: a TransformerBridge, a HookedTransformer (TransformerLens 2.x / 3.x), a
            rope_behavior toy model, or a resolved context (:func:`~rope_behavior.model.context.resolve`).
        tokens: integer ids ``[batch, pos]``.
        layers: layer indices (default: all).
        attention_mask: ``[batch, pos]`` 0/1 mask passed to the model (left and right
            padding are supported; positions are counted as the model counts them: the
            Bridge counts a left-padded prompt's real tokens from 0, as when it runs alone,
            while native toy models count ``0..pos-1`` padding included).
        spec: a precomputed :class:`RopeSpec` of this model (default: read from the model,
            cached); one describing another model raises :class:`RopeBehaviorError`.
        grad: keep the autograd graph (default: run under ``torch.no_grad``).
    """
    got: dict[int, LayerQK] = {}
    spec, chosen, tokens, mask = stream_layers(
        model,
        tokens,
        lambda lq: got.__setitem__(lq.layer, lq),
        layers=layers,
        attention_mask=attention_mask,
        spec=spec,
        grad=grad,
    )  # resolves the model and validates the inputs once
    roles = ("rot_q", "rot_k", "q", "k", "cos", "sin")
    return Captured(
        spec=spec,
        layers=chosen,
        tokens=tokens,
        attention_mask=mask,
        **{  # type: ignore[arg-type]
            role: MappingProxyType({layer: getattr(got[layer], role) for layer in chosen})
            for role in roles
        },
    )
