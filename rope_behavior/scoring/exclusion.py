"""The exclusion principle, checked exactly over all permutations.

Notation. A head's logit for the query at position ``n`` with key content ``x_i`` placed at
key position ``j`` is ``L(x_n, n, x_i, j)``; ``table[i, j]`` holds it for the ``K`` keys
under study (content index ``i``, position index ``j``, both into ``key_positions``).
``lambda_j = table[j, j]`` are the actual logits. Over all ``K!`` permutations ``pi``::

    delta_pos(pi, j) = table[pi(j), j] - table[j, j]     content moved, position fixed
    delta_sym(pi, j) = table[j, pi(j)] - table[j, j]     content fixed, position moved

and the bound (population variance over the ``K`` keys)::

    Var_j(lambda_j) <= (||delta_pos||^2 + ||delta_sym||^2) / (K! * K)

With one-indexed positions, the query at ``n`` and ``K = n - 1`` keys, the divisor reads
``(n-1)! (n-1)``. Proof sketch: ``lambda_{pi(j)} - lambda_j = delta_pos(pi, j) -
delta_sym(pi^-1, pi(j))``; square, sum over ``(pi, j)`` (each ordered key pair is hit
``(K-1)!`` times) and use ``(a - b)^2 <= 2a^2 + 2b^2``.

For a model, the table is built with the keys-mode mechanism: the *unrotated* key of
position ``key_positions[i]`` is rotated at position ``key_positions[j]`` with the layer's
own cos/sin and dotted with the (unchanged) rotated query, divided by the attention scale
and soft-capped as the model does.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import permutations
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, validates_inputs
from rope_behavior.model.context import resolve
from rope_behavior.model.spec import RopeSpec
from rope_behavior.qk.captured import LayerQK, stream_layers
from rope_behavior.rope.pairs import rotate

__all__ = ["MAX_KEYS", "ExclusionCheck", "exclusion_check"]

MAX_KEYS = 8
"""Largest number of keys checked (8! * 8 = 322,560 logit differences)."""


@dataclass(frozen=True, eq=False)
class ExclusionCheck:
    """Exact exclusion-principle numbers for one head, one query, ``K`` keys (float64).

    ``positional_residual = ||delta_pos||^2 / (K! K)`` and ``symbolic_residual`` likewise:
    the mean squared departure from a purely positional / symbolic head (0 when it is one).
    ``holds`` is ``variance <= bound`` up to float64 rounding (``1e-9`` relative).
    """

    layer: int | None
    head: int | None
    query_position: int | None
    key_positions: tuple[int, ...]
    table: Float[Tensor, "content position"] = field(repr=False)
    logits: Float[Tensor, " key"] = field(repr=False)
    permutations: Int[Tensor, "perm key"] = field(repr=False)
    delta_pos: Float[Tensor, "perm key"] = field(repr=False)
    delta_sym: Float[Tensor, "perm key"] = field(repr=False)
    variance: float
    delta_pos_sq: float
    delta_sym_sq: float
    bound: float
    holds: bool

    @property
    def n_keys(self) -> int:
        return len(self.key_positions)

    @property
    def positional_residual(self) -> float:
        return self.delta_pos_sq / (math.factorial(self.n_keys) * self.n_keys)

    @property
    def symbolic_residual(self) -> float:
        return self.delta_sym_sq / (math.factorial(self.n_keys) * self.n_keys)

    def to_frame(self) -> Any:
        """One-row DataFrame of the scalar results."""
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "layer": self.layer,
                    "head": self.head,
                    "query_position": self.query_position,
                    "n_keys": self.n_keys,
                    "variance": self.variance,
                    "delta_pos_sq": self.delta_pos_sq,
                    "delta_sym_sq": self.delta_sym_sq,
                    "bound": self.bound,
                    "holds": self.holds,
                    "positional_residual": self.positional_residual,
                    "symbolic_residual": self.symbolic_residual,
                }
            ]
        )


def _from_table(table: Tensor, **meta: Any) -> ExclusionCheck:
    k = table.shape[0]
    table = table.detach().double().cpu()
    if not bool(torch.isfinite(table).all()):
        raise RopeBehaviorError(
            "the logit table holds NaN/inf; the exclusion check needs finite logits"
        )
    perms = torch.tensor(list(permutations(range(k))), dtype=torch.long)  # [K!, K]
    j = torch.arange(k)
    lam = table[j, j]
    d_pos = table[perms, j] - lam
    d_sym = table[j, perms] - lam
    var = float(lam.var(unbiased=False))
    pos_sq, sym_sq = float((d_pos**2).sum()), float((d_sym**2).sum())
    bound = (pos_sq + sym_sq) / (math.factorial(k) * k)
    holds = var <= bound * (1 + 1e-9) + 1e-300
    return ExclusionCheck(
        table=table,
        logits=lam,
        permutations=perms,
        delta_pos=d_pos,
        delta_sym=d_sym,
        variance=var,
        delta_pos_sq=pos_sq,
        delta_sym_sq=sym_sq,
        bound=bound,
        holds=holds,
        **meta,
    )


def _fn_table(out: object, k: int) -> Tensor:
    """The ``[K, K]`` table a logit function returned, or an error naming what it returned."""
    try:
        table = torch.as_tensor(out)
    except (TypeError, ValueError, RuntimeError) as e:
        raise RopeBehaviorError(
            f"the logit function returned {type(out).__name__}, not a [K, K] = [{k}, {k}] table "
            f"of logits ({e})"
        ) from None
    if tuple(table.shape) != (k, k) or table.is_complex() or table.dtype == torch.bool:
        raise RopeBehaviorError(
            f"the logit function returned a table of shape {tuple(table.shape)} and dtype "
            f"{table.dtype}; expected real logits of shape ({k}, {k}) = [content, position] "
            f"for n_keys={k}: fn(content, position) is called with two [{k}, {k}] long index "
            "tensors (torch.meshgrid(..., indexing='ij')) and must return one logit per entry"
        )
    return table


def _check_k(k: int) -> None:
    if not 2 <= k <= MAX_KEYS:
        raise RopeBehaviorError(
            f"{k} key(s) given; the exact check runs over all K! permutations and needs "
            f"2 <= K <= {MAX_KEYS} keys (pick a short context or pass key_positions=...)"
        )


def _table_check(t: Tensor) -> ExclusionCheck:
    """The check of a logit table given as a square ``[K, K]`` tensor."""
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise RopeBehaviorError(f"a logit table must be square [K, K]; got shape {tuple(t.shape)}")
    _check_k(t.shape[0])
    return _from_table(
        t, layer=None, head=None, query_position=None, key_positions=tuple(range(t.shape[0]))
    )


def _fn_check(fn: Callable[[Tensor, Tensor], Tensor], n_keys: int | None) -> ExclusionCheck:
    """The check of a logit function ``fn(content, position)`` over ``n_keys`` keys."""
    if isinstance(n_keys, bool) or not isinstance(n_keys, int):
        raise RopeBehaviorError(f"n_keys={n_keys!r}: a logit function needs n_keys=K (an int)")
    _check_k(n_keys)
    ci, pj = torch.meshgrid(torch.arange(n_keys), torch.arange(n_keys), indexing="ij")
    return _from_table(
        _fn_table(fn(ci, pj), n_keys),
        layer=None,
        head=None,
        query_position=None,
        key_positions=tuple(range(n_keys)),
    )


def _prompt_query_keys(
    tokens: object, prompt: object, query_position: object, key_positions: Sequence[int] | None
) -> tuple[Int[Tensor, "1 pos"], int, tuple[int, ...]]:
    """The prompt's tokens up to the query, the query position and the keys, all checked."""
    if tokens is None:
        raise RopeBehaviorError("tokens are required when checking a model's head")
    if not isinstance(tokens, Tensor) or tokens.ndim != 2:
        raise RopeBehaviorError(
            f"tokens must be a [batch, pos] tensor; got {type(tokens).__name__}"
        )
    if isinstance(prompt, bool) or not isinstance(prompt, int) or not 0 <= prompt < tokens.shape[0]:
        raise RopeBehaviorError(f"prompt={prompt!r}; expected an int in [0, {tokens.shape[0] - 1}]")
    n = tokens.shape[1]
    qp = n - 1 if query_position is None else query_position
    if isinstance(qp, bool) or not isinstance(qp, int) or not 0 <= qp < n:
        raise RopeBehaviorError(
            f"query_position={query_position!r} out of range: expected 0 <= n <= {n - 1}"
        )
    keys = tuple(range(qp)) if key_positions is None else tuple(key_positions)
    if any(isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < qp for j in keys) or len(
        set(keys)
    ) != len(keys):
        raise RopeBehaviorError(
            f"key_positions={key_positions!r}: expected distinct ints in [0, {qp - 1}] (keys before the query)"
        )
    _check_k(len(keys))
    return tokens[prompt : prompt + 1, : qp + 1], qp, keys


def _head_table(
    lq: LayerQK, spec: RopeSpec, head: int, qp: int, keys: tuple[int, ...]
) -> Float[Tensor, "content position"]:
    """Logits of each key's content rotated at each key position, against the query."""
    layer = lq.layer
    dt = torch.float64
    kp = torch.tensor(keys)
    q = lq.rot_q[0, qp, head].to(dt)  # [D]
    k = lq.k[0, kp, spec.kv_map[head]].to(dt)  # [K, D] unrotated
    # k[i] rotated at every key position j: [K(content), K(position), D]
    rep = k[:, None, :].expand(-1, len(keys), -1).reshape(1, -1, 1, k.shape[-1])
    cos = lq.cos[0, kp].to(dt).repeat(len(keys), 1)
    sin = lq.sin[0, kp].to(dt).repeat(len(keys), 1)
    rk = rotate(rep, cos, sin, spec.pair_layout).reshape(len(keys), len(keys), -1)
    table = (rk @ q) / spec.attn_scales[layer]
    cap = spec.logit_softcaps[layer]
    if cap is not None:
        table = cap * torch.tanh(table / cap)
    return table


@validates_inputs
def exclusion_check(
    model_or_logit_fn: Any,
    tokens: Int[Tensor, "batch pos"] | None = None,
    *,
    layer: int = 0,
    head: int = 0,
    prompt: int = 0,
    query_position: int | None = None,
    key_positions: Sequence[int] | None = None,
    n_keys: int | None = None,
) -> ExclusionCheck:
    """Check ``Var_j(lambda_j) <= (||delta_pos||^2 + ||delta_sym||^2) / (K! K)`` exactly.

    ``model_or_logit_fn`` is one of:

    * a model (TransformerBridge / toy) with ``tokens``: head ``head`` of ``layer`` for the
      query at ``query_position`` (default: last) of prompt ``prompt``, keys at
      ``key_positions`` (default: every position before the query; 2..8 keys);
    * a ``[K, K]`` tensor ``table[content, position]`` of logits;
    * a callable ``fn(content, position) -> logits`` taking two equal-shape long tensors
      of indices in ``range(n_keys)`` (``n_keys`` required).
    """
    if isinstance(model_or_logit_fn, Tensor):
        return _table_check(model_or_logit_fn)
    is_model = hasattr(model_or_logit_fn, "hook_dict") or not callable(model_or_logit_fn)
    if not is_model:
        return _fn_check(model_or_logit_fn, n_keys)
    context = resolve(model_or_logit_fn)
    spec = context.spec
    layer, head = spec.check_layer(layer), spec.check_head(head)
    row, qp, keys = _prompt_query_keys(tokens, prompt, query_position, key_positions)
    got: dict[str, LayerQK] = {}
    stream_layers(context, row, lambda lq: got.__setitem__("qk", lq), layers=[layer], spec=spec)
    table = _head_table(got["qk"], spec, head, qp, keys)
    return _from_table(table, layer=layer, head=head, query_position=qp, key_positions=keys)
