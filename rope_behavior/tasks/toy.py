"""A tiny attention-only rotary transformer with TransformerLens hook names.

``ToyRotaryTransformer`` is the model the canonical tasks are trained on. It has a token
embedding and NO absolute positional embedding; position enters only through RoPE.
Per layer: attention with RoPE in the rotate-half ("half") layout over the full
``d_head`` (pair ``p`` = dims ``p`` and ``p + d_head/2``), added to the residual stream.
Then an optional final LayerNorm and the unembedding.

With ``attn_only=False`` every block is GPT-J style instead: one LayerNorm feeds the
attention and an MLP (``d_mlp`` wide, GELU with the tanh approximation) in parallel,
``resid + attn(ln1(resid)) + mlp(ln1(resid))``; the attention is the same rotary
attention, so every hook below keeps its meaning. (GPT-J itself pairs dims in the
interleaved layout and rotates a quarter of each head; the toy rotates the whole head in
the half layout: the layout is a fixed permutation of the dims and changes no function
the model can learn.)

Rotation (as HF Llama): ``q~ = q * cos(n * omega) + rotate_half(q) * sin(n * omega)`` at
position ``n``, with ``rotate_half([x1, x2]) = [-x2, x1]`` and ``omega_p =
rope_base ** (-2p / d_head)`` radians per token. The angles are computed at every forward
from the buffer ``rotary_omega`` ``[layer, pair]``, so overriding it changes the model
(zeros give NoPE). Scores are ``q~ . k~ / attn_scale`` with ``attn_scale = sqrt(d_head)``;
causal-masked (and padding-masked) entries hold ``torch.finfo(dtype).min`` as in the
TransformerLens Bridge.

Hook points (exactly these): ``hook_embed``; per layer ``l``:
``blocks.l.hook_resid_pre`` [batch pos d_model], ``blocks.l.attn.hook_q`` /
``hook_k`` / ``hook_v`` [batch pos head d_head] (un-rotated), ``blocks.l.attn.hook_rot_q``
/ ``hook_rot_k`` (rotated), ``blocks.l.attn.hook_attn_scores`` / ``hook_pattern`` [batch
head dest src], ``blocks.l.attn.hook_z`` [batch pos head d_head], ``blocks.l.hook_attn_out``
and ``blocks.l.hook_resid_post`` [batch pos d_model]; with MLPs also
``blocks.l.mlp.hook_post`` [batch pos d_mlp] and ``blocks.l.hook_mlp_out`` [batch pos
d_model].
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.tasks.batch import Task
from rope_behavior.tasks.toy_config import ToyConfig

__all__ = ["ToyConfig", "ToyRotaryTransformer", "rotate_half", "toy_model"]


def rotate_half(x: Float[Tensor, "... d_head"]) -> Float[Tensor, "... d_head"]:
    """``[x1, x2] -> [-x2, x1]`` on the last axis (the "half" pair layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class ToyAttention(nn.Module):
    """Multi-head causal attention with rotate-half RoPE; angles come from the parent's buffer."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        h, d, m = cfg.n_heads, cfg.d_head, cfg.d_model
        self.W_Q = nn.Parameter(torch.empty(h, m, d))
        self.W_K = nn.Parameter(torch.empty(h, m, d))
        self.W_V = nn.Parameter(torch.empty(h, m, d))
        self.W_O = nn.Parameter(torch.empty(h, d, m))
        self.b_Q = nn.Parameter(torch.zeros(h, d))
        self.b_K = nn.Parameter(torch.zeros(h, d))
        self.b_V = nn.Parameter(torch.zeros(h, d))
        self.b_O = nn.Parameter(torch.zeros(m))
        self.attn_scale = math.sqrt(d)
        self.hook_q = HookPoint()  # [batch pos head d_head], before rotation
        self.hook_k = HookPoint()  # [batch pos kv_head d_head], before rotation
        self.hook_v = HookPoint()  # [batch pos kv_head d_head]
        self.hook_rot_q = HookPoint()  # [batch pos head d_head], after rotation
        self.hook_rot_k = HookPoint()  # [batch pos kv_head d_head], after rotation
        self.hook_attn_scores = HookPoint()  # [batch head dest src], masked, / attn_scale
        self.hook_pattern = HookPoint()  # [batch head dest src]
        self.hook_z = HookPoint()  # [batch pos head d_head]

    def forward(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        omega: Float[Tensor, " pair"],
        key_mask: Tensor | None,
    ) -> Float[Tensor, "batch pos d_model"]:
        q = self.hook_q(torch.einsum("bpm,hmd->bphd", resid, self.W_Q) + self.b_Q)
        k = self.hook_k(torch.einsum("bpm,hmd->bphd", resid, self.W_K) + self.b_K)
        v = self.hook_v(torch.einsum("bpm,hmd->bphd", resid, self.W_V) + self.b_V)
        n_pos = resid.shape[1]
        angle = torch.arange(n_pos, device=resid.device, dtype=omega.dtype)[:, None] * omega
        cos = torch.cat([angle.cos(), angle.cos()], dim=-1)[:, None, :].to(q.dtype)
        sin = torch.cat([angle.sin(), angle.sin()], dim=-1)[:, None, :].to(q.dtype)
        rot_q = self.hook_rot_q(q * cos + rotate_half(q) * sin)
        rot_k = self.hook_rot_k(k * cos + rotate_half(k) * sin)
        scores = torch.einsum("bqhd,bkhd->bhqk", rot_q, rot_k) / self.attn_scale
        allowed = torch.ones(n_pos, n_pos, dtype=torch.bool, device=resid.device).tril()
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, :]
        scores = self.hook_attn_scores(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min))
        pattern = self.hook_pattern(scores.softmax(dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        return torch.einsum("bqhd,hdm->bqm", z, self.W_O) + self.b_O


class ToyMLP(nn.Module):
    """GPT-J's MLP: ``gelu_tanh(x W_in + b_in) W_out + b_out``."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_post = HookPoint()  # [batch pos d_mlp], after the GELU

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        post = self.hook_post(F.gelu(x @ self.W_in + self.b_in, approximate="tanh"))
        return post @ self.W_out + self.b_out


class ToyBlock(nn.Module):
    """One residual block: attention only, or GPT-J style (shared LayerNorm, parallel MLP)."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.attn = ToyAttention(cfg)
        self.ln1 = None if cfg.attn_only else nn.LayerNorm(cfg.d_model)
        self.mlp = None if cfg.attn_only else ToyMLP(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_mlp_out = None if cfg.attn_only else HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        omega: Float[Tensor, " pair"],
        key_mask: Tensor | None,
    ) -> Float[Tensor, "batch pos d_model"]:
        resid = self.hook_resid_pre(resid)
        if self.ln1 is None or self.mlp is None or self.hook_mlp_out is None:
            attn_out = self.hook_attn_out(self.attn(resid, omega, key_mask))
            return self.hook_resid_post(resid + attn_out)
        normed = self.ln1(resid)
        attn_out = self.hook_attn_out(self.attn(normed, omega, key_mask))
        mlp_out = self.hook_mlp_out(self.mlp(normed))
        return self.hook_resid_post(resid + attn_out + mlp_out)


class ToyRotaryTransformer(HookedRootModule):
    """Attention-only rotary transformer exposing TransformerLens hook names.

    Rotary facts for the plugin's adapter: ``rotary_omega`` (buffer ``[layer, pair]``,
    radians per token), ``rotary_pair_layout = "half"``, ``attn_scale = sqrt(d_head)``,
    and ``cfg`` (a :class:`ToyConfig`). Parameters are initialised from ``seed`` with a
    local generator; the global RNG is untouched.
    """

    rotary_pair_layout = "half"
    rotary_omega: Tensor

    def __init__(self, cfg: ToyConfig, *, seed: int = 0):
        super().__init__()
        if not isinstance(cfg, ToyConfig):
            raise RopeBehaviorError(
                f"ToyRotaryTransformer: cfg must be a ToyConfig; got {type(cfg).__name__}."
            )
        self.cfg = cfg
        self.attn_scale = math.sqrt(cfg.d_head)
        pair = torch.arange(cfg.n_pairs, dtype=torch.float32)
        omega = cfg.rope_base ** (-2.0 * pair / cfg.d_head)
        self.register_buffer("rotary_omega", omega.repeat(cfg.n_layers, 1))
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.hook_embed = HookPoint()
        self.blocks: list[ToyBlock] = nn.ModuleList(  # type: ignore[assignment]
            [ToyBlock(cfg) for _ in range(cfg.n_layers)]
        )
        self.ln_final = nn.LayerNorm(cfg.d_model) if cfg.final_layer_norm else None
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        self._init_weights(seed)
        self.setup()

    def _init_weights(self, seed: int) -> None:
        """TransformerLens's default (GPT-2 style) init: every weight matrix ~ N(0, s^2) with
        ``s = 0.8 / sqrt(d_model)`` (``initializer_range``), biases zero; drawn from a local
        generator seeded with ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        std = 0.8 / math.sqrt(self.cfg.d_model)
        weights = [self.W_E, self.W_U]
        for block in self.blocks:
            weights += [block.attn.W_Q, block.attn.W_K, block.attn.W_V, block.attn.W_O]
        for block in self.blocks:  # after the attention: attention-only draws stay as they were
            if block.mlp is not None:
                weights += [block.mlp.W_in, block.mlp.W_out]
        with torch.no_grad():
            for w in weights:
                w.copy_(torch.randn(w.shape, generator=gen) * std)

    @property
    def device(self) -> torch.device:
        return self.W_E.device

    def forward(
        self,
        tokens: Tensor,
        *,
        attention_mask: Tensor | None = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
    ) -> Float[Tensor, "batch pos _d_out"]:
        """Run the model.

        Args:
            tokens: token ids ``[batch, pos]`` (integer dtype); with ``start_at_layer``, the
                residual stream ``[batch, pos, d_model]`` before that layer instead.
            attention_mask: optional ``[batch, pos]`` (1/True = attend, 0/False = padding
                key). Positions are always ``0 .. pos-1``.
            start_at_layer: first block to run (TransformerLens semantics, negative allowed).
            stop_at_layer: block to stop before; then the residual stream before that
                block is returned instead of logits.

        Returns:
            logits ``[batch, pos, d_vocab]``, or the residual stream ``[batch, pos,
            d_model]`` when ``stop_at_layer`` is given.
        """
        n = self.cfg.n_layers
        start = self._layer_index("start_at_layer", start_at_layer, 0)
        stop = self._layer_index("stop_at_layer", stop_at_layer, n)
        if start_at_layer is None:
            resid = self.hook_embed(self.W_E[self._check_tokens(tokens)])
        else:
            resid = self._check_resid(tokens)
        key_mask = self._check_mask(attention_mask, resid.shape[:2])
        for layer in range(start, stop):
            resid = self.blocks[layer](resid, self.rotary_omega[layer], key_mask)
        if stop_at_layer is not None:
            return resid
        if self.ln_final is not None:
            resid = self.ln_final(resid)
        return resid @ self.W_U + self.b_U

    def _layer_index(self, name: str, value: int | None, default: int) -> int:
        if value is None:
            return default
        n = self.cfg.n_layers
        if isinstance(value, bool) or not isinstance(value, int) or not -n <= value <= n:
            raise RopeBehaviorError(
                f"{name}={value!r} is out of range; expected an int in [{-n}, {n}] or None."
            )
        return value % n if value < 0 else value

    def _check_tokens(self, tokens: object) -> Int[Tensor, "batch pos"]:
        if not isinstance(tokens, Tensor):
            raise RopeBehaviorError(
                f"tokens must be a torch.Tensor of token ids; got {type(tokens).__name__}."
            )
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise RopeBehaviorError(
                f"tokens must be an integer tensor (torch.long) of token ids [batch, pos]; got "
                f"dtype {tokens.dtype}. To feed a residual stream, pass start_at_layer."
            )
        if tokens.ndim != 2:
            raise RopeBehaviorError(
                f"tokens must have rank 2 [batch, pos]; got shape {tuple(tokens.shape)} "
                "(use tokens[None] for a single prompt)."
            )
        if tokens.shape[1] > self.cfg.n_ctx:
            raise RopeBehaviorError(
                f"sequence length {tokens.shape[1]} exceeds n_ctx={self.cfg.n_ctx}; use shorter "
                "prompts or a model with a larger n_ctx."
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.d_vocab):
            raise RopeBehaviorError(
                f"token ids must lie in [0, d_vocab={self.cfg.d_vocab}); got min="
                f"{int(tokens.min())}, max={int(tokens.max())}."
            )
        return tokens.long()

    def _check_resid(self, resid: object) -> Float[Tensor, "batch pos d_model"]:
        d = self.cfg.d_model
        if (
            not isinstance(resid, Tensor)
            or not resid.dtype.is_floating_point
            or resid.ndim != 3
            or resid.shape[-1] != d
        ):
            got = (
                f"shape {tuple(resid.shape)}, dtype {resid.dtype}"
                if isinstance(resid, Tensor)
                else type(resid).__name__
            )
            raise RopeBehaviorError(
                f"with start_at_layer, the input must be a float residual stream [batch, pos, "
                f"d_model={d}]; got {got}."
            )
        if resid.shape[1] > self.cfg.n_ctx:
            raise RopeBehaviorError(
                f"sequence length {resid.shape[1]} exceeds n_ctx={self.cfg.n_ctx}."
            )
        return resid

    def _check_mask(self, mask: Tensor | None, batch_pos: torch.Size) -> Tensor | None:
        if mask is None:
            return None
        if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(batch_pos):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise RopeBehaviorError(
                f"attention_mask must have shape [batch, pos]={tuple(batch_pos)}; got {got}."
            )
        return mask.to(device=self.device).bool()


def toy_model(
    task: Task | None = None,
    *,
    d_vocab: int | None = None,
    n_ctx: int | None = None,
    n_layers: int = 1,
    n_heads: int = 2,
    d_head: int = 32,
    rope_base: float = 10000.0,
    final_layer_norm: bool = False,
    attn_only: bool = True,
    d_mlp: int = 0,
    d_model: int = 0,
    seed: int = 0,
) -> ToyRotaryTransformer:
    """A fresh toy model sized for ``task`` (``d_vocab``/``n_ctx`` from it unless given);
    ``attn_only=False`` gives GPT-J style blocks (see :class:`ToyConfig`)."""
    if task is None and (d_vocab is None or n_ctx is None):
        raise RopeBehaviorError("toy_model: pass a task, or both d_vocab and n_ctx.")
    cfg = ToyConfig(
        d_vocab=d_vocab if d_vocab is not None else task.d_vocab,  # type: ignore[union-attr]
        n_ctx=n_ctx if n_ctx is not None else task.seq_len,  # type: ignore[union-attr]
        n_layers=n_layers,
        n_heads=n_heads,
        d_head=d_head,
        rope_base=rope_base,
        final_layer_norm=final_layer_norm,
        attn_only=attn_only,
        d_mlp=d_mlp,
        d_model=d_model,
    )
    return ToyRotaryTransformer(cfg, seed=seed)
