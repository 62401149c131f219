"""Small random-weight rotary models of a few families, built offline from Hugging Face
configs (what ``rope-behavior inspect / scores --random FAMILY`` analyse)."""

from typing import Any

import torch

from rope_behavior.errors import RopeBehaviorError

__all__ = ["RANDOM_FAMILIES", "build_random_model"]

RANDOM_FAMILIES = ("llama", "qwen2", "gemma2", "phi", "gpt_neox", "gptj")


def _partial(fraction: float) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": fraction}


def build_random_model(family: str, *, seed: int = 0, n_layers: int = 4) -> Any:
    """A small random-weight bridge of ``family`` built offline from a Hugging Face config."""
    import transformers
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    common: dict[str, Any] = {"vocab_size": 1024, "max_position_embeddings": 512}
    dense: dict[str, Any] = {
        **common,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 8,
    }
    configs: dict[str, tuple[str, Any]] = {
        "llama": (
            "LlamaForCausalLM",
            lambda: transformers.LlamaConfig(**dense, num_key_value_heads=4),
        ),
        "qwen2": (
            "Qwen2ForCausalLM",
            lambda: transformers.Qwen2Config(**dense, num_key_value_heads=2),
        ),
        "gemma2": (
            "Gemma2ForCausalLM",
            lambda: transformers.Gemma2Config(**dense, num_key_value_heads=4, head_dim=32),
        ),
        "phi": (
            "PhiForCausalLM",
            lambda: transformers.PhiConfig(**dense, rope_parameters=_partial(0.5)),
        ),
        "gpt_neox": (
            "GPTNeoXForCausalLM",
            lambda: transformers.GPTNeoXConfig(**dense, rope_parameters=_partial(0.25)),
        ),
        "gptj": (
            "GPTJForCausalLM",
            lambda: transformers.GPTJConfig(
                vocab_size=1024,
                n_embd=256,
                n_layer=n_layers,
                n_head=8,
                rotary_dim=16,
                n_positions=512,
            ),
        ),
    }
    if family not in configs:
        raise RopeBehaviorError(f"--random {family!r}; options: {', '.join(RANDOM_FAMILIES)}")
    arch, make = configs[family]
    cfg = make()
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        hf = getattr(transformers, arch)(cfg).eval()
    return build_bridge_from_module(hf, arch, hf_config=cfg)
