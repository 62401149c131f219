"""Shared helpers for the benchmark scripts: a random Llama-style bridge and a timer.

Benchmarks print ratios measured side by side in one run (the machines are noisy).
"""

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import transformers
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module


def llama_bridge(
    *,
    d_model: int = 512,
    n_layers: int = 8,
    n_heads: int = 8,
    n_kv_heads: int | None = None,
    vocab: int = 32000,
    n_ctx: int = 4096,
    seed: int = 0,
    device: str | torch.device = "cpu",
    d_mlp: int | None = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """A random Llama (eager attention). ``d_mlp``: intermediate size (default 4 * d_model).
    ``dtype=None`` (default) initialises in the default dtype on the CPU and moves the model
    to ``device``; a ``dtype`` initialises the weights in it directly on ``device`` (faster
    for a large model on a GPU; the RoPE buffers stay fp32, as ``from_pretrained`` keeps them).
    """
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=d_mlp or 4 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads or n_heads,
        max_position_embeddings=n_ctx,
    )
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if dtype is None:
            hf = transformers.LlamaForCausalLM(cfg).eval()
        else:
            with torch.device(device):
                hf = transformers.LlamaForCausalLM._from_config(cfg, dtype=dtype).eval()
    return build_bridge_from_module(hf.to(device), "LlamaForCausalLM", hf_config=cfg)


def interleaved_timings(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call, running the candidates alternately (after one warm-up each)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
