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
    bsz, n = tokens.shape
    dev = tokens.device
    n_g, n_s, _t2 = geo.dst.shape[1:]
    b = geo.block_size
    h, nq = spec.n_heads, geo.qpos.shape[1]
    dst, src = geo.dst.to(dev), geo.src.to(dev)
    qpos = geo.qpos.to(dev)
    qi_all = torch.arange(nq)
    ok_l = {
        layer: geo.rows_allowed(qi_all.to(dev), spec.sliding_windows[layer]).to(dev)
        for layer in layers
    }
    shared = n_g == 1
    # variant v = B + (g * S + s) * B + p: prompt p, geometry group g, swap s
    perm = torch.arange(n, device=dev).repeat(n_g, n_s, bsz, 1)  # [G, S, B, N]
    perm.scatter_(3, dst.permute(1, 2, 0, 3), src.permute(1, 2, 0, 3))
    variants = torch.gather(tokens[None, None].expand(n_g, n_s, -1, -1), 3, perm)
    seqs = torch.cat([tokens, variants.reshape(-1, n)])
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
            if not len(p):
                continue
            d_row = d_rows[n_orig:]  # [V, H, nq, N]
            if shared:  # every query of the variant reads its blocks
                idx = dst[p, g, s][:, None, None, :].expand(-1, h, nq, -1)
                d_new[key][p, :, :, s] = (
                    torch.gather(d_row, -1, idx).unflatten(-1, (2, b)).mean(-1).double()
                )
                tv[key][p, :, :, s] = ((d_row - orig[key][p]).abs().sum(-1) / 2).double()
            else:  # one query per geometry group (end alignment)
                v = torch.arange(len(p), device=dev)
                sel = d_row[v, :, g]  # [V, H, N]
                idx = dst[p, g, s][:, None, :].expand(-1, h, -1)
                d_new[key][p, :, g, s] = (
                    torch.gather(sel, -1, idx).unflatten(-1, (2, b)).mean(-1).double()
                )
                tv[key][p, :, g, s] = ((sel - orig[key][p, :, g]).abs().sum(-1) / 2).double()

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
    grp = geo.group.to(dev)
    for li, layer in enumerate(layers):
        for pi in range(len(projs)):
            d_row = orig[(layer, pi)]  # [B, H, nq, N]
            idx = dst[:, grp].reshape(bsz, 1, nq, -1).expand(-1, h, -1, -1)
            d_ac = torch.gather(d_row, -1, idx).reshape(bsz, h, nq, n_s, 2, b)
            ent, uni = row_diagnostics(d_row, ok_l[layer])
            blk, left = row_masses(d_row, geo.in_block.to(dev), geo.movable.to(dev))
            put_scores(
                out,
                li,
                qi_all,
                pi,
                d_ac.mean(-1).double(),
                d_new[(layer, pi)],
                geo.valid[:, None].to(dev),
                tau,
                tv[(layer, pi)],
                ent,
                uni,
                (blk, left, d_ac.sum((-1, -2))),
            )
