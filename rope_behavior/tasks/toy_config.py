"""The configuration of the toy rotary transformer (:mod:`rope_behavior.tasks.toy`),
checked when built."""

from dataclasses import dataclass, field

from rope_behavior.errors import RopeBehaviorError

__all__ = ["ToyConfig"]


@dataclass(frozen=True)
class ToyConfig:
    """Configuration of :class:`ToyRotaryTransformer` (``d_model`` defaults to ``n_heads *
    d_head``; ``attn_only=False`` gives GPT-J style blocks with a parallel MLP ``d_mlp``
    wide, default ``4 * d_model``)."""

    d_vocab: int
    n_ctx: int
    n_layers: int = 1
    n_heads: int = 2
    d_head: int = 32
    d_model: int = field(default=0)
    rope_base: float = 10000.0
    attn_only: bool = True
    final_layer_norm: bool = False
    d_mlp: int = field(default=0)

    def __post_init__(self) -> None:
        for name, low in [
            ("d_vocab", 2),
            ("n_ctx", 1),
            ("n_layers", 1),
            ("n_heads", 1),
            ("d_head", 2),
        ]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise RopeBehaviorError(
                    f"ToyConfig: {name} must be an int >= {low}; got {value!r}."
                )
        if self.d_head % 2:
            raise RopeBehaviorError(
                f"ToyConfig: d_head={self.d_head} must be even (RoPE rotates d_head/2 pairs)."
            )
        if self.d_model == 0:
            object.__setattr__(self, "d_model", self.n_heads * self.d_head)
        if isinstance(self.d_model, bool) or not isinstance(self.d_model, int) or self.d_model < 1:
            raise RopeBehaviorError(
                f"ToyConfig: d_model must be an int >= 1 (0 = n_heads * d_head); got {self.d_model!r}."
            )
        if not isinstance(self.rope_base, int | float) or not self.rope_base > 1.0:
            raise RopeBehaviorError(
                f"ToyConfig: rope_base must be a float > 1; got {self.rope_base!r}."
            )
        object.__setattr__(self, "rope_base", float(self.rope_base))
        if not isinstance(self.attn_only, bool):
            raise RopeBehaviorError(
                f"ToyConfig: attn_only must be a bool (True: attention only; False: GPT-J "
                f"style blocks with a parallel MLP); got {self.attn_only!r}."
            )
        if isinstance(self.d_mlp, bool) or not isinstance(self.d_mlp, int) or self.d_mlp < 0:
            raise RopeBehaviorError(
                f"ToyConfig: d_mlp must be an int >= 1 (0 = 4 * d_model); got {self.d_mlp!r}."
            )
        if self.attn_only and self.d_mlp:
            raise RopeBehaviorError(
                f"ToyConfig: d_mlp={self.d_mlp} needs attn_only=False (an attention-only "
                "model has no MLP); drop d_mlp or set attn_only=False."
            )
        if not self.attn_only and self.d_mlp == 0:
            object.__setattr__(self, "d_mlp", 4 * self.d_model)
        if not isinstance(self.final_layer_norm, bool):
            raise RopeBehaviorError(
                f"ToyConfig: final_layer_norm must be a bool; got {self.final_layer_norm!r}."
            )

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads

    @property
    def n_pairs(self) -> int:
        return self.d_head // 2

    @property
    def rotary_dim(self) -> int:
        return self.d_head
