"""Tokens mode: swap input token blocks and re-run the model (hooks and all).

Sequence ``v < B`` of the stream is prompt ``v`` itself; the rest are the swapped
variants, one per (geometry group, swap, prompt). The prompts come first, so a variant's
original row is always known (computed in an earlier forward, or earlier in the same layer
callback) when the variant arrives. Everything is accumulated on the tokens' device (the
model's, when the tokens are where the model takes them: no host copies inside the layer
callbacks); on a model split over devices each layer's rows are computed on that layer's
device and then moved there.
"""

from functools import partial

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from rope_behavior.model.context import ModelContext
from rope_behavior.model.spec import RopeSpec
from rope_behavior.qk.captured import LayerQK, stream_checked
from rope_behavior.scoring.geometry import Geometry
from rope_behavior.scoring.rows import (
    Finite,
    Out,
    logits,
    project,
    put_scores,
    row,
    row_diagnostics,
    row_masses,
)

__all__ = ["run_tokens_mode"]


def _token_rows(
    lq: LayerQK,
    qpos: Tensor,
    ok: Tensor,
    spec: RopeSpec,
    projs: list[int | None],
    finite: Finite,
) -> list[Tensor]:
    """Full attention rows ``[V, H, q, N]`` per projection at the query positions
    ``qpos`` ``[V, q]``, on the layer's device (``qpos`` and ``ok`` are moved there)."""
    dt = torch.float64 if lq.rot_q.dtype == torch.float64 else torch.float32
    dev = lq.rot_q.device
    qpos, ok = qpos.to(dev), ok.to(dev)
    rot_k = lq.rot_k.to(dt)[:, :, list(spec.kv_map)]
    v = torch.arange(qpos.shape[0], device=dev)[:, None]
    q = lq.rot_q[v, qpos].to(dt)
    rows = []
    for proj in projs:
        cap = spec.logit_softcaps[lq.layer] if proj is None else None
        lg = logits(
            project(q, proj, spec),
            project(rot_k, proj, spec),
            "b q h f, b j h f -> b h q j",
            spec.attn_scales[lq.layer],
            cap,
            lq.layer,
            finite,
        )
        _, e, z = row(lg, ok)
        rows.append(e / z[..., None])
    return rows


def _variant_tokens(
    tokens: Int[Tensor, "batch pos"],
    dst: Int[Tensor, "batch _group swap _slot"],
    src: Int[Tensor, "batch _group swap _slot"],
) -> Int[Tensor, "_seq pos"]:
    """The prompts, then every swapped variant (variant ``B + (g * S + s) * B + p``)."""
    bsz, n = tokens.shape
    n_g, n_s = dst.shape[1], dst.shape[2]
    # variant v = B + (g * S + s) * B + p: prompt p, geometry group g, swap s
    perm = torch.arange(n, device=tokens.device).repeat(n_g, n_s, bsz, 1)  # [G, S, B, N]
    perm.scatter_(3, dst.permute(1, 2, 0, 3), src.permute(1, 2, 0, 3))
    variants = torch.gather(tokens[None, None].expand(n_g, n_s, -1, -1), 3, perm)
    return torch.cat([tokens, variants.reshape(-1, n)])


def _add_variant_rows(
    d_row: Float[Tensor, "_v head query pos"],
    orig: Float[Tensor, "_seen head query pos"],
    d_new: Float[Tensor, "batch head query swap 2"],
    tv: Float[Tensor, "batch head query swap"],
    dst: Int[Tensor, "batch _group swap _slot"],
    p: Int[Tensor, " _v"],
    g: Int[Tensor, " _v"],
    s: Int[Tensor, " _v"],
    shared: bool,
) -> None:
    """Writes the variants' mean block attention and row distance into the accumulators."""
    _v, h, nq, _n = d_row.shape
    b = dst.shape[-1] // 2
    if shared:  # every query of the variant reads its blocks
        idx = dst[p, g, s][:, None, None, :].expand(-1, h, nq, -1)
        d_new[p, :, :, s] = torch.gather(d_row, -1, idx).unflatten(-1, (2, b)).mean(-1).double()
        tv[p, :, :, s] = ((d_row - orig[p]).abs().sum(-1) / 2).double()
    else:  # one query per geometry group (end alignment)
        v = torch.arange(len(p), device=d_row.device)
        sel = d_row[v, :, g]  # [V, H, N]
        idx = dst[p, g, s][:, None, :].expand(-1, h, -1)
        d_new[p, :, g, s] = torch.gather(sel, -1, idx).unflatten(-1, (2, b)).mean(-1).double()
        tv[p, :, g, s] = ((sel - orig[p, :, g]).abs().sum(-1) / 2).double()


def _put_layer_scores(
    out: Out,
    li: int,
    pi: int,
    d_row: Float[Tensor, "batch head query pos"],
    d_new: Float[Tensor, "batch head query swap 2"],
    tv: Float[Tensor, "batch head query swap"],
    ok: Bool[Tensor, "batch query pos"],
    geo: Geometry,
    tau: float,
) -> None:
    """Scores one layer and projection from the prompts' rows and the variants' accumulators."""
    bsz, h, nq, _n = d_row.shape
    dev = d_row.device
    n_s, b = d_new.shape[3], geo.block_size
    dst, grp = geo.dst.to(dev), geo.group.to(dev)
    idx = dst[:, grp].reshape(bsz, 1, nq, -1).expand(-1, h, -1, -1)
    d_ac = torch.gather(d_row, -1, idx).reshape(bsz, h, nq, n_s, 2, b)
    ent, uni = row_diagnostics(d_row, ok)
    blk, left = row_masses(d_row, geo.in_block.to(dev), geo.movable.to(dev))
    put_scores(
        out,
        li,
        torch.arange(nq),
        pi,
        d_ac.mean(-1).double(),
        d_new,
        geo.valid[:, None].to(dev),
        tau,
        tv,
        ent,
        uni,
        (blk, left, d_ac.sum((-1, -2))),
    )


def run_tokens_mode(
    context: ModelContext,
    tokens: Tensor,
    mask: Tensor | None,
    geo: Geometry,
    spec: RopeSpec,
    layers: tuple[int, ...],
    projs: list[int | None],
    tau: float,
    out: Out,
    batch_size: int,
    finite: Finite,
) -> None:
    bsz = tokens.shape[0]
    dev = tokens.device
    n_g, n_s, _t2 = geo.dst.shape[1:]
    h, nq = spec.n_heads, geo.qpos.shape[1]
    dst = geo.dst.to(dev)
    qpos = geo.qpos.to(dev)
    qi_all = torch.arange(nq)
    ok_l = {
        layer: geo.rows_allowed(qi_all.to(dev), spec.sliding_windows[layer]).to(dev)
        for layer in layers
    }
    shared = n_g == 1
    seqs = _variant_tokens(tokens, dst, geo.src.to(dev))
    orig: dict[tuple[int, int], Tensor] = {}
    d_new = {
        (layer, pi): torch.zeros(bsz, h, nq, n_s, 2, dtype=torch.float64, device=dev)
        for layer in layers
        for pi in range(len(projs))
    }
    tv = {k: torch.zeros(bsz, h, nq, n_s, dtype=torch.float64, device=dev) for k in d_new}

    def on_rows(lq: LayerQK, lo: int, prompt: Tensor, p: Tensor, g: Tensor, s: Tensor) -> None:
        n_orig = max(0, min(bsz - lo, prompt.shape[0]))
        ok = ok_l[lq.layer][prompt]
        # rows of this layer (on its device) gathered on the accumulators' device
        rows = [r.to(dev) for r in _token_rows(lq, qpos[prompt], ok, spec, projs, finite)]
        for pi, d_rows in enumerate(rows):
            key = (lq.layer, pi)
            if n_orig:
                got = d_rows[:n_orig]
                orig[key] = torch.cat([orig[key], got]) if key in orig else got
            if len(p):
                d_row = d_rows[n_orig:]  # [V, H, nq, N]
                _add_variant_rows(d_row, orig[key], d_new[key], tv[key], dst, p, g, s, shared)

    for lo in range(0, seqs.shape[0], batch_size):
        sel = torch.arange(lo, min(lo + batch_size, seqs.shape[0]), device=dev)
        var = sel[max(0, bsz - lo) :] - bsz
        p = var % bsz
        gs = torch.div(var, bsz, rounding_mode="floor")
        g, s = torch.div(gs, n_s, rounding_mode="floor"), gs % n_s
        stream_checked(
            context,
            seqs[sel],
            None if mask is None else mask[sel % bsz],
            layers,
            partial(on_rows, lo=lo, prompt=sel % bsz, p=p, g=g, s=s),
        )
    for li, layer in enumerate(layers):
        for pi in range(len(projs)):
            key = (layer, pi)
            _put_layer_scores(out, li, pi, orig[key], d_new[key], tv[key], ok_l[layer], geo, tau)
