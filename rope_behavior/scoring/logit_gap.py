"""Discrepancy: how far a head's top attention logit stands above its second
(``docs/method.md`` §7).

For a query row ``i`` of a head, with ``K_i`` the keys it attends over (causal, inside its
sliding window, neither padding nor an excluded key), rank the keys by the logit
``l_ij = q~_i . k~_j / attn_scale`` (ties go to the later key): ``j1`` first, ``j2``
second. Then::

    gap             = cap(l_ij1) - cap(l_ij2)                    (>= 0)
    normalised_gap  = (q~_i . k~_j1 - q~_i . k~_j2) / (|q~_i| * max_{j in K_i} |k~_j|)

``cap`` is the model's soft-cap (``c * tanh(l / c)``, Gemma-2) where it has one, else the
identity: ``gap`` is the difference of the scores the softmax sees, so ``exp(gap)`` is the
ratio of the attention weights of the top two keys. ``normalised_gap`` lies in
``[0, 2]`` (Cauchy-Schwarz), does not change when a head scales its queries or keys, and
equals ``cos(q~_i, k~_j1) - cos(q~_i, k~_j2)`` wherever the keys have one norm (a
positional head reading content-free keys), the quantity the closed-form bound of §7
speaks about. Rows with fewer than two keys (the first token, a padding query) are NaN,
with ``top_key`` / ``second_key`` -1 where there is no such key; a zero query (or only zero
keys) makes ``normalised_gap`` NaN.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import einsum
from jaxtyping import Bool, Float, Int
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, check_indices, validates_inputs
from rope_behavior.frequency.decomposition import _check_finite
from rope_behavior.model.context import evaluating, resolve
from rope_behavior.model.spec import RopeSpec
from rope_behavior.qk.captured import (
    Captured,
    LayerQK,
    attended_entries,
    stream_checked,
    validate_mask,
    validate_tokens,
)
from rope_behavior.scoring.blocks import _query_rows, query_choice
from rope_behavior.scoring.geometry import excluded_keys, model_bos

__all__ = ["Discrepancy", "discrepancy", "top_two"]


@dataclass(frozen=True, eq=False)
class Discrepancy:
    """Top-versus-second logit gaps of heads, per prompt (module docstring, and
    ``docs/method.md`` §7).

    ``gap``, ``normalised_gap``, ``top_key`` and ``second_key`` are indexed ``[prompt,
    layer, head]`` (``layer`` indexes ``layers``, ``head`` indexes ``heads``), then
    ``query`` when ``query_positions`` was ``"all"`` or a sequence (``dims`` names the
    axes). ``n_keys`` ``[prompt, layer, (query)]``: the keys each row compared (it depends
    on the layer through sliding windows). ``query_pos[prompt, query]``: the query
    positions of each prompt (``"last"`` takes each prompt's last token, so under right
    padding they differ). ``top_key`` / ``second_key`` are key positions (-1: none).
    ``excluded[prompt, pos]``: the keys left out by ``exclude_keys``.
    """

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    has_query_axis: bool
    exclude_keys: tuple[int | str, ...]
    query_pos: Int[Tensor, "prompt query"] = field(repr=False)
    excluded: Bool[Tensor, "prompt pos"] = field(repr=False)
    gap: Float[Tensor, "prompt layer head *rest"] = field(repr=False)
    normalised_gap: Float[Tensor, "prompt layer head *rest"] = field(repr=False)
    top_key: Int[Tensor, "prompt layer head *rest"] = field(repr=False)
    second_key: Int[Tensor, "prompt layer head *rest"] = field(repr=False)
    n_keys: Int[Tensor, "prompt layer *rest"] = field(repr=False)

    @property
    def dims(self) -> tuple[str, ...]:
        """Names of the axes of ``gap`` and the other per-head tensors."""
        return ("prompt", "layer", "head", *(("query",) if self.has_query_axis else ()))

    def to_frame(self) -> Any:
        """Tidy DataFrame: one row per (prompt, layer, head, query) with ``query_pos``,
        ``n_keys``, ``top_key``, ``second_key``, ``gap`` and ``normalised_gap``."""
        import pandas as pd

        def q_axis(x: Tensor) -> Tensor:
            return x if self.has_query_axis else x[..., None]

        gap = q_axis(self.gap)
        n_p, n_l, n_h, n_q = gap.shape
        grids = torch.meshgrid(*[torch.arange(s) for s in gap.shape], indexing="ij")
        p, li, h, qi = (g.reshape(-1) for g in grids)
        n_keys = q_axis(self.n_keys)[:, :, None].expand(n_p, n_l, n_h, n_q)
        return pd.DataFrame(
            {
                "prompt": p.numpy(),
                "layer": torch.tensor(self.layers)[li].numpy(),
                "head": torch.tensor(self.heads)[h].numpy(),
                "query_pos": self.query_pos[p, qi].numpy(),
                "n_keys": n_keys.reshape(-1).numpy(),
                "top_key": q_axis(self.top_key).reshape(-1).numpy(),
                "second_key": q_axis(self.second_key).reshape(-1).numpy(),
                "gap": gap.reshape(-1).numpy(),
                "normalised_gap": q_axis(self.normalised_gap).reshape(-1).numpy(),
            }
        )

    def head_frame(self) -> Any:
        """One row per (layer, head): the mean ``gap`` and ``normalised_gap`` over the
        defined rows (prompts, and queries where there is a query axis) and their number."""
        df = self.to_frame().dropna(subset=["gap"])
        out = df.groupby(["layer", "head"], sort=True).agg(
            gap=("gap", "mean"),
            normalised_gap=("normalised_gap", "mean"),
            n_rows=("gap", "size"),
        )
        return out.reset_index()

    def __repr__(self) -> str:
        """A few lines within 80 columns (as the results :mod:`rope_behavior.display` shows)."""
        shape = " x ".join(f"{n} {d}" for d, n in zip(self.dims, self.gap.shape))
        return (
            f"Discrepancy: {shape}\n"
            f"  layers {_short(list(self.layers))}, heads {_short(list(self.heads))}\n"
            f"  mean gap {float(self.gap.nanmean()):.3g}, mean normalised gap "
            f"{float(self.normalised_gap.nanmean()):.3g} (in [0, 2])"
        )


def _short(values: list[int]) -> str:
    text = str(values)
    return text if len(text) <= 30 else text[:26] + "...]"


def top_two(
    logits: Float[Tensor, "batch head query key"],
    attended: Bool[Tensor, "batch query key"],
) -> tuple[Int[Tensor, "batch head query"], Int[Tensor, "batch head query"]]:
    """Positions of the largest and second-largest ``logits`` over ``attended`` keys, ties
    to the later key; -1 where a row has no such key."""
    n = logits.shape[-1]
    j = torch.arange(n, device=logits.device)
    ok = attended[:, None]
    s = logits.masked_fill(~ok, float("-inf"))
    top = s.amax(-1, keepdim=True)
    j1 = torch.where(ok & (s == top), j, -1).amax(-1)
    rest = ok & (j != j1[..., None])
    s2 = logits.masked_fill(~rest, float("-inf"))
    second = s2.amax(-1, keepdim=True)
    j2 = torch.where(rest & (s2 == second), j, -1).amax(-1)
    return j1, j2


def layer_discrepancy(
    rq: Float[Tensor, "batch pos head d_head"],
    rk: Float[Tensor, "batch pos kv_head d_head"],
    spec: RopeSpec,
    layer: int,
    heads: tuple[int, ...],
    qpos: Int[Tensor, "batch query"],
    attended: Bool[Tensor, "batch query pos"],
) -> dict[str, Tensor]:
    """Gap, normalised gap and the two keys ``[batch, chosen, query]`` of ``heads`` at the
    query rows ``qpos`` (keys through each head's KV head), in float32 (float64 for
    float64 models); ``attended`` are each row's keys."""
    dtype = torch.float64 if rq.dtype == torch.float64 else torch.float32
    dev = rq.device
    qpos, attended = qpos.to(dev), attended.to(dev)
    kv = [spec.kv_map[h] for h in heads]
    q_all = rq[:, :, list(heads)]
    idx = qpos[:, :, None, None].expand(-1, -1, *q_all.shape[2:])
    q = torch.gather(q_all, 1, idx).to(dtype)  # [b, query, chosen, d]
    k = rk[:, :, kv].to(dtype)  # [b, pos, chosen, d]
    dots = einsum(q, k, "b q h d, b j h d -> b h q j")
    j1, j2 = top_two(dots, attended)
    n_keys = attended.sum(-1)  # [b, query]
    two = (n_keys >= 2)[:, None].expand_as(j1)
    d1 = torch.gather(dots, -1, j1.clamp_min(0)[..., None])[..., 0]
    d2 = torch.gather(dots, -1, j2.clamp_min(0)[..., None])[..., 0]
    scale, cap = spec.attn_scales[layer], spec.logit_softcaps[layer]
    l1, l2 = d1 / scale, d2 / scale
    if cap is not None:
        l1, l2 = cap * torch.tanh(l1 / cap), cap * torch.tanh(l2 / cap)
    q_norm = q.norm(dim=-1).permute(0, 2, 1)  # [b, chosen, query]
    k_norm = k.norm(dim=-1).permute(0, 2, 1)[:, :, None, :]  # [b, chosen, 1, pos]
    k_max = torch.where(attended[:, None], k_norm, 0.0).amax(-1)  # [b, chosen, query]
    den = q_norm * k_max
    nan = torch.tensor(float("nan"), dtype=dtype, device=dev)
    return {
        "gap": torch.where(two, l1 - l2, nan),
        "normalised_gap": torch.where(
            two & (den > 0), (d1 - d2) / torch.where(den > 0, den, 1.0), nan
        ),
        "top_key": j1,
        "second_key": j2,
        "n_keys": n_keys,
    }


_GAPS, _KEYS = ("gap", "normalised_gap"), ("top_key", "second_key")


class _Buffers:
    """Result tensors ``[prompt, layer, head, query]`` filled layer by layer (on the CPU)."""

    def __init__(self, b: int, n_l: int, n_h: int, n_q: int) -> None:
        shape, nan = (b, n_l, n_h, n_q), float("nan")
        self.t = {name: torch.full(shape, nan, dtype=torch.float64) for name in _GAPS}
        self.t |= {name: torch.full(shape, -1, dtype=torch.long) for name in _KEYS}
        self.t["n_keys"] = torch.zeros(b, n_l, n_q, dtype=torch.long)

    def put(self, li: int, got: dict[str, Tensor]) -> None:
        for name, value in got.items():
            self.t[name][:, li] = value.detach().cpu().to(self.t[name].dtype)


def _check_qk(rq: Tensor, rk: Tensor, mask: Tensor | None, spec: RopeSpec, layer: int,
              heads: tuple[int, ...]) -> None:  # fmt: skip
    """Refuse NaN / inf queries or keys at token positions (as :func:`pair_logits` does)."""
    dev = rq.device
    b, n = rq.shape[:2]
    tokens = (mask.bool() if mask is not None else torch.ones(b, n, dtype=torch.bool)).to(dev)
    kv = tuple(sorted({spec.kv_map[h] for h in heads}))
    _check_finite(rq[:, :, list(heads)], tokens[:, :, None, None], layer, "queries",
                  "query head", heads)  # fmt: skip
    _check_finite(rk[:, :, list(kv)], tokens[:, :, None, None], layer, "keys", "KV head", kv)


def _describe(exclude_keys: Any) -> tuple[int | str, ...]:
    if exclude_keys is None:
        return ("none",)
    items = [exclude_keys] if isinstance(exclude_keys, str | int) else list(exclude_keys)
    return tuple(e if isinstance(e, str) else int(e) for e in items)


def _needs_model(exclude_keys: object) -> bool:
    """Whether ``exclude_keys`` names the BOS token, which only the model can say."""
    if isinstance(exclude_keys, str):
        return exclude_keys in ("auto", "bos")
    if isinstance(exclude_keys, Sequence | set | frozenset):
        return any(isinstance(e, str) and e in ("auto", "bos") for e in exclude_keys)
    return False


@validates_inputs
def discrepancy(
    model: Any,
    tokens: Int[Tensor, "batch pos"] | None = None,
    *,
    layers: int | Iterable[int] | None = None,
    heads: int | Iterable[int] | None = None,
    query_positions: str | int | Sequence[int] = "last",
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    exclude_keys: str | int | Sequence[int | str] = "none",
) -> Discrepancy:
    """The gap between the top and the second attention logit of every head, per prompt,
    raw and normalised by the query's and the largest key's norms (module docstring;
    ``docs/method.md`` §7).

    Args:
        model: a TransformerBridge, a HookedTransformer, a rope_behavior toy model or a
            resolved context (run in eval mode, one forward that stops after the last
            layer asked for); or what :func:`~rope_behavior.capture` returned (then
            ``tokens`` and ``attention_mask`` come from it and are not given again).
        tokens: ``[prompt, pos]`` token ids (required with a model).
        layers: layer indices (default: all; with a capture, the captured ones).
        heads: query heads (default: all).
        query_positions: ``"last"`` (each prompt's last token), ``"all"``, an int, or
            distinct ints (a sequence or a 1-D integer tensor).
        attention_mask: ``[prompt, pos]`` 0/1 mask for prompts of different lengths.
        exclude_keys: keys left out of the comparison besides padding, as in
            :func:`~rope_behavior.score_heads`: ``"none"`` (default: every attended key
            counts), ``"auto"`` / ``"bos"`` (the BOS token the model's tokenizer prepends,
            often an attention sink; needs the model, not a capture), key positions, or
            positions mixed with ``"bos"``.

    Returns:
        :class:`Discrepancy` (``dims``: ``prompt, layer, head`` then ``query`` where asked
        for); ``.to_frame()`` is a tidy table, ``.head_frame()`` the means per head.
    """
    if isinstance(model, Captured):
        return _from_captured(model, tokens, attention_mask, layers, heads, query_positions,
                              exclude_keys)  # fmt: skip
    if tokens is None:
        raise RopeBehaviorError(
            "discrepancy(model, tokens): tokens=None; expected [prompt, pos] token ids with a "
            "model (or pass what rope_behavior.capture(model, tokens) returned instead of "
            "the model)"
        )
    context = resolve(model)
    spec = context.spec
    tokens = validate_tokens(tokens, context.adapter)
    mask = validate_mask(attention_mask, tokens)
    chosen = check_indices(layers, spec.n_layers, "layer", f"{spec.n_layers} layers")
    head_set = check_indices(heads, spec.n_heads, "head", f"{spec.n_heads} query heads")
    excluded = excluded_keys(tokens, exclude_keys, model_bos(context.adapter))
    keep, qpos = _queries(query_positions, tokens, mask)
    buf = _Buffers(tokens.shape[0], len(chosen), len(head_set), qpos.shape[1])
    li_of = {layer: i for i, layer in enumerate(chosen)}

    def on_layer(lq: LayerQK) -> None:
        buf.put(li_of[lq.layer], _layer(lq.rot_q, lq.rot_k, spec, lq.layer, head_set, qpos,
                                        mask, excluded))  # fmt: skip

    with evaluating(context.model):
        stream_checked(context, tokens, mask, chosen, on_layer)
    return _result(buf, chosen, head_set, keep, qpos, excluded, exclude_keys)


def _from_captured(
    captured: Captured,
    tokens: object,
    attention_mask: object,
    layers: object,
    heads: object,
    query_positions: object,
    exclude_keys: object,
) -> Discrepancy:
    for name, value in (("tokens", tokens), ("attention_mask", attention_mask)):
        if value is not None:
            raise RopeBehaviorError(
                f"discrepancy(captured, {name}=...): a capture carries its own {name}; "
                f"expected {name}=None (options: discrepancy(captured) or "
                "discrepancy(model, tokens, attention_mask=...))"
            )
    if _needs_model(exclude_keys):
        raise RopeBehaviorError(
            f"exclude_keys={exclude_keys!r} names the BOS token, which only the model can "
            "tell; a capture cannot. Options: discrepancy(model, tokens, exclude_keys=...), "
            "or key positions (e.g. exclude_keys=(0,))"
        )
    spec = captured.spec
    chosen = (
        captured.layers
        if layers is None
        else tuple(
            captured.check_layer(layer)
            for layer in check_indices(layers, spec.n_layers, "layer")  # type: ignore[arg-type]
        )
    )
    head_set = check_indices(heads, spec.n_heads, "head", f"{spec.n_heads} query heads")  # type: ignore[arg-type]
    toks, mask = captured.tokens, captured.attention_mask
    excluded = excluded_keys(toks, exclude_keys, None)
    keep, qpos = _queries(query_positions, toks, mask)
    buf = _Buffers(toks.shape[0], len(chosen), len(head_set), qpos.shape[1])
    for li, layer in enumerate(chosen):
        got = _layer(captured.rot_q[layer], captured.rot_k[layer], spec, layer, head_set, qpos,
                     mask, excluded)  # fmt: skip
        buf.put(li, got)
    return _result(buf, chosen, head_set, keep, qpos, excluded, exclude_keys)


def _queries(query_positions: object, tokens: Tensor, mask: Tensor | None) -> tuple[bool, Tensor]:
    """Whether the query axis is kept, and each prompt's query positions ``[B, nq]``."""
    choice = query_choice(query_positions)
    tok_ok = (
        mask.bool()
        if mask is not None
        else torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
    )
    keep, _, qpos = _query_rows(choice, tok_ok)
    return keep, qpos


def _layer(
    rq: Tensor,
    rk: Tensor,
    spec: RopeSpec,
    layer: int,
    heads: tuple[int, ...],
    qpos: Tensor,
    mask: Tensor | None,
    excluded: Tensor,
) -> dict[str, Tensor]:
    """One layer's gaps: the attended keys of each query row, less the excluded ones."""
    _check_qk(rq, rk, mask, spec, layer, heads)
    dev = rq.device
    b, n = rq.shape[:2]
    entries = attended_entries(spec, layer, mask, b, n, dev)  # [b, dest, src]
    rows = torch.gather(entries, 1, qpos.to(dev)[:, :, None].expand(-1, -1, n))
    attended = rows & ~excluded.to(dev)[:, None, :]
    return layer_discrepancy(rq, rk, spec, layer, heads, qpos, attended)


def _result(
    buf: _Buffers,
    layers: tuple[int, ...],
    heads: tuple[int, ...],
    keep: bool,
    qpos: Tensor,
    excluded: Tensor,
    exclude_keys: object,
) -> Discrepancy:
    t = buf.t
    if not keep:
        t = {k: v.squeeze(-1) for k, v in t.items()}
    return Discrepancy(
        layers=layers,
        heads=heads,
        has_query_axis=keep,
        exclude_keys=_describe(exclude_keys),
        query_pos=qpos.cpu(),
        excluded=excluded.cpu(),
        **t,
    )
