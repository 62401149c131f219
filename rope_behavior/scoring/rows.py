"""Attention rows and the result buffers shared by keys mode and tokens mode."""

import torch
from einops import einsum
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.model.devices import stack_on
from rope_behavior.model.spec import RopeSpec
from rope_behavior.rope.pairs import split_pairs
from rope_behavior.scoring.swap_scores import _combine

__all__ = [
    "Finite",
    "Out",
    "chunks",
    "logits",
    "project",
    "put_scores",
    "row",
    "row_diagnostics",
    "scaled",
]


def project(x: Tensor, proj: int | None, spec: RopeSpec) -> Tensor:
    """The whole head (``None``) or the two dims of pair ``proj``."""
    if proj is None:
        return x
    return split_pairs(x[..., : spec.rotary_dim], spec.pair_layout)[..., proj, :]


class Finite:
    """Records, per layer and on the logits' device, whether any logit was NaN/inf.

    Checked once when a call has finished (``raise_if_any``), not per layer: on a GPU a
    per-layer ``bool(...)`` would make the host wait for the device inside every layer
    callback. A non-finite logit still never yields a number: the call raises.
    """

    def __init__(self) -> None:
        self.bad: dict[int, Tensor] = {}

    def note(self, x: Tensor, layer: int) -> None:
        flag = ~torch.isfinite(x).all()
        self.bad[layer] = flag if layer not in self.bad else self.bad[layer] | flag

    def raise_if_any(self) -> None:
        if not self.bad:
            return
        layers = sorted(self.bad)
        # one flag per layer, each on its layer's device: gathered, then one host copy
        first = self.bad[layers[0]].device
        flags = stack_on([self.bad[layer] for layer in layers], first).cpu()
        bad = [layer for layer, flag in zip(layers, flags.tolist()) if flag]
        if bad:
            raise RopeBehaviorError(
                f"NaN/inf attention logits at layer {bad[0]}: the scores would be meaningless; "
                "check the model weights / dtype (fp16 overflow?) and the inputs"
            )


def logits(
    q: Tensor,
    k: Tensor,
    pattern: str,
    scale: float,
    cap: float | None,
    layer: int,
    finite: Finite,
) -> Tensor:
    return scaled(einsum(q, k, pattern), scale, cap, layer, finite)


def scaled(dots: Tensor, scale: float, cap: float | None, layer: int, finite: Finite) -> Tensor:
    """Logits from query-key dot products: in float64, scaled, soft-capped, noted."""
    x = dots.double() / scale
    if cap is not None:
        x = cap * torch.tanh(x / cap)
    finite.note(x, layer)
    return x


def row(lg: Tensor, ok: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Masked softmax pieces of logits ``[B, H, q, N]``: (row max, exp, partition)."""
    x = lg.masked_fill(~ok[:, None], float("-inf"))
    top = x.amax(-1, keepdim=True)
    e = torch.exp(x - top)
    return top, e, e.sum(-1)


def row_diagnostics(d: Tensor, ok: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised entropy and normalised distance from uniform of rows ``d`` [B, H, q, N]."""
    k = ok.sum(-1)[:, None].double()  # [B, 1, q]
    ent = -torch.where(d > 0, d * torch.log(torch.where(d > 0, d, 1.0)), 0.0).sum(-1)
    uni = torch.where(ok[:, None], (d - 1.0 / k[..., None]).abs(), 0.0).sum(-1) / 2
    return ent / torch.log(k).clamp_min(1e-300), uni / (1 - 1 / k).clamp_min(1e-300)


def row_masses(d: Tensor, in_block: Tensor, movable: Tensor) -> tuple[Tensor, Tensor]:
    """Row mass inside blocks and on leftover keys (movable, in no block): ``[B, H, q]``."""
    blk = (d * in_block[:, None].to(d.dtype)).sum(-1)
    left = (d * (movable & ~in_block)[:, None].to(d.dtype)).sum(-1)
    return blk, left


class Out:
    """Result buffers ``[B, L, H, nq, P', (S)]`` filled layer by layer."""

    rows = (
        "s_pos",
        "s_sym",
        "separation",
        "entropy",
        "distance_from_uniform",
        "block_mass",
        "leftover_mass",
        "swapped_mass",
    )
    per_swap = ("mass_moved", "swap_mass", "pos_swap", "sym_swap")

    def __init__(self, b: int, n_l: int, h: int, nq: int, n_p: int, s: int) -> None:
        nan = float("nan")
        self.t = {k: torch.full((b, n_l, h, nq, n_p), nan, dtype=torch.float64) for k in self.rows}
        for k in self.per_swap:
            self.t[k] = torch.full((b, n_l, h, nq, n_p, s), nan, dtype=torch.float64)
        self.t["swap_weight"] = torch.zeros(b, n_l, h, nq, n_p, s, dtype=torch.float64)

    def put(self, li: int, qi: Tensor, pi: int, **vals: Tensor) -> None:
        # query chunks are aranges (``chunks``): written through a slice, not an index
        at: slice | Tensor = qi
        if len(qi) and int(qi[-1]) - int(qi[0]) + 1 == len(qi):
            at = slice(int(qi[0]), int(qi[-1]) + 1)
        for k, v in vals.items():  # v: [B, H, q, (S)]
            self.t[k][:, li, :, at, pi] = v.detach().cpu().double()


def put_scores(
    out: Out,
    li: int,
    qi: Tensor,
    pi: int,
    d: Tensor,
    d_new: Tensor,
    valid: Tensor,
    tau: float,
    tv: Tensor,
    ent: Tensor,
    uni: Tensor,
    masses: tuple[Tensor, Tensor, Tensor],
) -> None:
    """``masses``: (row mass in blocks, on leftover keys, per swap in blocks a and c)."""
    sc = _combine(d, d_new, valid, tau)
    used = sc.weight > 0
    blk, left, swap_mass = masses
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=d.device)
    swap_mass = torch.where(valid, swap_mass.double(), nan)
    any_used = used.any(-1)
    out.put(
        li,
        qi,
        pi,
        s_pos=sc.s_pos,
        s_sym=sc.s_sym,
        separation=sc.separation,
        entropy=ent,
        distance_from_uniform=uni,
        block_mass=blk,
        leftover_mass=left,
        swapped_mass=torch.where(
            any_used, (sc.weight * torch.where(used, swap_mass, 0.0)).sum(-1), nan
        ),
        swap_weight=sc.weight,
        mass_moved=torch.where(used, tv, nan),
        swap_mass=swap_mass,
        pos_swap=torch.where(used, sc.pos_swap, nan),
        sym_swap=torch.where(used, sc.sym_swap, nan),
    )


def chunks(nq: int, per_query: int, budget: int = 1 << 23) -> list[Tensor]:
    step = max(1, budget // max(per_query, 1))
    return [torch.arange(i, min(i + step, nq)) for i in range(0, nq, step)]
