"""Keys mode: permute a layer's unrotated keys, re-rotate them where they land.

Inside each layer's forward, the keys of a swap's two blocks trade places *before*
rotation and are rotated at their destination exactly as the model rotates keys there;
queries, the query's own key and everything upstream stay as the model computed them. One
forward serves every layer and swap, and memory stays bounded to one layer.

Scoring the model as it runs. The keys the model multiplies may come from hooks: the
frequency interventions rope_behavior compiles (``intervened``, the toy tasks' frequency
settings) or a user's own. Keys mode therefore rebuilds a moved key by the model's whole
chain: the raw pre-rotation key (read before any hook edits it), the hooks installed at
the pre-rotation site, the rotation with the model's table of that very forward, then the
hooks at the rotated site (:mod:`rope_behavior.scoring.key_chain`). rope_behavior knows the
semantics of its own edit hooks and applies them to the permuted keys; before scoring a
layer it checks that the chain applied to the unpermuted raw keys reproduces the keys the
model used. A hook it does not know that edits keys makes that check fail, and the call
raises (use ``mode="tokens"``, which re-runs the hooked model on swapped tokens); a hook
that only reads passes. Where the chain's edits map each pair linearly at its position
(PRoPE, NoPE-below, RoPE scaling, zeroed pairs: what ``compare_edits`` installs), it is
read once as that map, and a moved key is the map at its destination applied to its raw
key; other edits replay the chain over every position once per swap.

Many queries under end alignment (``query_positions="all"``): every query tiles its own
blocks, and rotating each moved key per query and swap would gather
``[batch, query, swap, 2b, head, d_head]`` keys. Where no hook sits at the key sites,
the swapped logits are computed in RoPE's relative form instead (:mod:`rope_behavior.scoring.relative`): the
query turned back by the angle of the move, dotted with the keys the model rotated.

One query per prompt (``query_positions="last"``, what ``analyze`` scores) with swaps shared
by every query, on short prompts: ``q . R(dst) k(src) == (R(dst)^T q) . k(src)``, so each
query is turned back once per position and multiplied with every raw key in one matrix
product per (prompt, head), and the swaps' logits are read from it at their (destination,
source) pairs (the destination form). It equals rotating each moved key to float32 rounding
(tests/scoring/test_destination_form.py: within 1e-6 on seven families) and is taken where
it is cheaper (``DESTINATION_FORM``). Under a chain read as a map ``M`` the query is turned
back by ``M(dst)^T`` instead and multiplied with the raw keys (equal to replaying the chain
per swap within 1e-6: tests/scoring/test_chain_destination.py).
"""

import torch
from einops import einsum
from torch import Tensor

from rope_behavior.model.spec import RopeSpec
from rope_behavior.qk.captured import LayerQK
from rope_behavior.rope.pairs import rotate
from rope_behavior.scoring.geometry import Geometry
from rope_behavior.scoring.key_chain import (
    KeyChain,
    moved_keys,
    read_chain,
    rotation_tables,
    turned_back,
)
from rope_behavior.scoring.relative import relative_dots, relative_swaps
from rope_behavior.scoring.rows import (
    Finite,
    Out,
    chunks,
    logits,
    project,
    put_scores,
    row,
    row_diagnostics,
    row_masses,
    scaled,
)

__all__ = ["keys_layer"]

# one query per prompt, shared swaps: the destination form where n_pos^2 <= this x the moved
# keys of a prompt (swaps x 2b); measured with bench/keys_forms.py (2 cores: it wins to 0.44x
# at 16, ties about 32-128 at short prompts, loses 1.1-1.4x beyond 64 at 256+ positions)
DESTINATION_FORM = 32


def _turned_back(
    q: Tensor, tables: tuple[Tensor, Tensor], spec: RopeSpec, dt: torch.dtype
) -> Tensor:
    """Each query turned back by the rotation of every destination, ``[B, q, N, H, D]``:
    ``q . R(j) k == (R(j)^T q) . k``, and ``R(j)^T`` is ``rotate`` with ``sin -> -sin``
    (a transpose, exact at any table magnitude); ``tables``: ``(cos, sin)`` ``[B, N, P]``."""
    bsz, nq, h, d = q.shape
    n = tables[0].shape[1]
    x = q[:, :, None].expand(bsz, nq, n, h, d).reshape(bsz, nq * n, h, d)
    cos, sin = (t.to(dt)[:, None].expand(bsz, nq, n, -1).reshape(bsz, nq * n, -1) for t in tables)
    return rotate(x, cos, -sin, spec.pair_layout).reshape(bsz, nq, n, h, d)


def _destination_dots(
    turned: Tensor, raw: Tensor, d_q: Tensor, s_q: Tensor, proj: int | None, spec: RopeSpec
) -> Tensor:
    """``[B, H, q, S, 2b]`` dots of the queries with their moved keys, read from every
    (destination, source) product of the turned-back queries ``turned`` ``[B, q, N, H, D]``
    and the raw keys ``raw`` ``[B, N, H, D]``: one matrix product per (prompt, head), then
    a gather at the swaps' ``(d_q, s_q)`` ``[B, q, S, 2b]``."""
    bsz, nq, n, h = turned.shape[:4]
    every = einsum(
        project(turned, proj, spec), project(raw, proj, spec), "b q j h f, b i h f -> b h q j i"
    ).reshape(bsz, h, nq, n * n)
    at = (d_q * n + s_q).reshape(bsz, 1, nq, -1).expand(-1, h, -1, -1)
    return torch.gather(every, -1, at).reshape(bsz, h, nq, *d_q.shape[2:])


def keys_layer(
    lq: LayerQK,
    li: int,
    geo: Geometry,
    spec: RopeSpec,
    projs: list[int | None],
    tau: float,
    out: Out,
    finite: Finite,
    chain: KeyChain | None,
) -> None:
    """Score every head of one layer in keys mode into ``out[:, li]``."""
    layer, b = lq.layer, geo.block_size
    dt = torch.float64 if lq.rot_q.dtype == torch.float64 else torch.float32
    dev = lq.rot_q.device
    kv = torch.tensor(spec.kv_map, device=dev)
    shared = geo.n_groups == 1
    # many queries, blocks at fixed offsets from them: the relative form (scoring/relative.py)
    rel = relative_swaps(lq, geo, spec, dt) if chain is None and not shared else None
    # hooks at the key sites: read as one map per position where they are linear ones
    # (scoring/key_chain.py), else checked and replayed per swap
    columns = None if chain is None else read_chain(chain, lq, spec)
    rot_k = lq.rot_k.to(dt)[:, :, kv]  # [B, N, H, D]
    bsz, n = rot_k.shape[:2]
    n_s, t2 = geo.dst.shape[2:]
    # shared swaps, few positions: every (destination, source) product beats moving keys
    linear = chain is None or columns is not None
    dest = linear and shared and n * n <= DESTINATION_FORM * n_s * t2
    moved = rel is not None or dest
    k_new = None if moved else moved_keys(lq, geo, spec, chain, dt, columns)[..., kv, :]
    raw = None
    # the rotation's tables, or the chain's where its map is one (a scaled rotation shared
    # by the KV heads: angle edits), so queries turn back as without hooks
    tables = None
    if dest:
        tables = (lq.cos, lq.sin) if columns is None else rotation_tables(columns)
    if dest:
        keys = lq.k if chain is None else lq.k_raw
        assert keys is not None  # read_chain has read the raw keys
        raw = keys.to(dt)[:, :, kv]
    scale, cap = spec.attn_scales[layer], spec.logit_softcaps[layer]
    dst, src, valid_all = geo.dst.to(dev), geo.src.to(dev), geo.valid.to(dev)
    in_block, movable = geo.in_block.to(dev), geo.movable.to(dev)
    per_query = bsz * spec.n_heads * (n + n_s * t2 * (1 if shared else 2) + n * n * dest)
    bq = torch.arange(bsz, device=dev)[:, None]
    for qi in chunks(geo.qpos.shape[1], per_query):
        qi_d = qi.to(dev)
        qpos = geo.qpos.to(dev)[:, qi_d]  # [B, q]
        q = lq.rot_q[bq, qpos].to(dt)
        ok = geo.rows_allowed(qi_d, spec.sliding_windows[layer]).to(dev)  # [B, q, N]
        grp = geo.group.to(dev)[qi_d]
        d_q = dst[:, grp]  # [B, q, S, 2b]
        ok_new = torch.gather(ok, 2, d_q.reshape(bsz, len(qi), -1)).reshape(
            bsz, 1, len(qi), n_s, t2
        )
        valid = valid_all[:, None, qi_d]
        kn = k_new if shared or k_new is None else k_new[:, grp]
        turned = None
        if dest and tables is not None:
            turned = _turned_back(q, tables, spec, dt)
        elif dest:
            assert columns is not None  # dest needs a linear chain: read as a map
            turned = turned_back(q, columns, kv, spec)
        for pi, proj in enumerate(projs):
            c = cap if proj is None else None
            qf, kf = project(q, proj, spec), project(rot_k, proj, spec)
            top, e, z = row(
                logits(qf, kf, "b q h f, b j h f -> b h q j", scale, c, layer, finite), ok
            )
            d_row = e / z[..., None]
            ent, uni = row_diagnostics(d_row, ok)
            blk, left = row_masses(d_row, in_block[:, qi_d], movable[:, qi_d])
            idx = d_q.reshape(bsz, 1, len(qi), -1).expand(-1, e.shape[1], -1, -1)
            e_ac = torch.gather(e, -1, idx).reshape(*e.shape[:3], n_s, t2)
            pattern = (
                "b q h f, b g s t h f -> b h q s t"
                if shared
                else "b q h f, b q s t h f -> b h q s t"
            )
            if rel is not None:
                dots = relative_dots(rel, q, qi, qpos, proj)
                l_new = scaled(dots, scale, c, layer, finite)
            elif turned is not None:
                assert raw is not None
                dots = _destination_dots(turned, raw, d_q, src[:, grp], proj, spec)
                l_new = scaled(dots, scale, c, layer, finite)
            else:
                assert kn is not None
                l_new = logits(qf, project(kn, proj, spec), pattern, scale, c, layer, finite)
            l_new = l_new.masked_fill(~ok_new, float("-inf"))
            shift = torch.maximum(top, l_new.amax(-1))  # [B, H, q, S]
            e_new = torch.exp(l_new - shift[..., None])
            others = (z[..., None] - e_ac.sum(-1)).clamp_min(0.0)  # keys outside blocks a, c
            z_new = others * torch.exp(top - shift) + e_new.sum(-1)
            d_ac, d_new = e_ac / z[..., None, None], e_new / z_new[..., None]
            ratio = z[..., None] * torch.exp(top - shift) / z_new
            tv = ((d_new - d_ac).abs().sum(-1) + others / z[..., None] * (ratio - 1).abs()) / 2
            put_scores(
                out,
                li,
                qi,
                pi,
                d_ac.unflatten(-1, (2, b)).mean(-1),
                d_new.unflatten(-1, (2, b)).mean(-1),
                valid,
                tau,
                tv,
                ent,
                uni,
                (blk, left, d_ac.sum(-1)),
            )
