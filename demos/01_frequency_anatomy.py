# %% [markdown]
# # Frequency anatomy of a rotary model
#
# What does each attention head do with each RoPE frequency? This tutorial reads a model's
# rotary facts from the model itself, decomposes every attention logit exactly into
# per-frequency-pair contributions, and measures which frequencies each head uses.
#
# Runs offline: the model is a small random-weight Llama built from a Hugging Face config
# (the same code works on `TransformerBridge.boot_transformers("meta-llama/Llama-3.2-1B")`
# where the hub is reachable). Set `RB_DEMO_FAST=1` for a seconds-long smoke run.

# %%
import os

import torch
import transformers
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

import rope_behavior as rb
from rope_behavior import plots

FAST = os.environ.get("RB_DEMO_FAST") == "1"
# figures (HTML) go to runs/demos/01_frequency_anatomy (RB_DEMO_OUT overrides the folder)
OUT = os.environ.get("RB_DEMO_OUT") or os.path.join("runs", "demos", "01_frequency_anatomy")

cfg = transformers.LlamaConfig(
    vocab_size=512,
    hidden_size=128 if FAST else 256,
    intermediate_size=256 if FAST else 512,
    num_hidden_layers=2 if FAST else 4,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA: keys live per KV head
    max_position_embeddings=256,
    rope_parameters={  # Llama-3.1-style NTK-by-parts scaling: not a plain base any more
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
)
cfg._attn_implementation = "eager"
torch.manual_seed(0)
model = build_bridge_from_module(
    transformers.LlamaForCausalLM(cfg).eval(), "LlamaForCausalLM", hf_config=cfg
)

# %% [markdown]
# ## 1. The rotary facts, read from the model
# `RopeSpec` reads every layer's frequencies from the model's own sin/cos tables (and the
# exact `inv_freq` buffer when it matches), so the Llama-3.1 rescaling is already in `omega`.

# %%
spec = rb.RopeSpec.from_model(model)
print(spec)
print(spec.to_frame().head(8).to_string(index=False))

# %% [markdown]
# ## 2. Exact per-pair logits
# The attention score of every (query, key) is the sum of one term per pair (plus the
# unrotated dims for partial rotary). The identity is exact: compare with the model's own
# `hook_attn_scores`.

# %%
tokens = torch.randint(0, 512, (4, 32 if FAST else 128), generator=torch.Generator().manual_seed(0))
captured = rb.capture(model, tokens)
pl = rb.pair_logits(captured, layer=1)
_, cache = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_attn_scores")
ref = cache["blocks.1.attn.hook_attn_scores"]
mask = pl.mask[:, None].expand_as(ref)
print(
    "per_pair",
    tuple(pl.per_pair.shape),
    "max |sum - model| =",
    float((pl.scores() - ref)[mask].abs().max()),
)

# %% [markdown]
# ## 3. Which frequencies does each head use?
# Three views (docs/method.md §3): norm usage, logit usage, and the usage-weighted centroid.

# %%
usage = rb.frequency_usage(captured)
print(usage.head_frame().round(3).to_string(index=False))
fig_usage = plots.frequency_usage_heatmap(usage)
fig_spec = plots.omega_spectrum(spec)

# %% [markdown]
# ## 4. Frequency bands
# Name pair sets for ablations: thirds, k equal bands, or by wavelength relative to the
# context length.

# %%
for b in rb.wavelength_bands(spec, context_length=tokens.shape[1]):
    print(f"{b.name:>5}: pairs {b.pairs}")
print([b.pairs for b in rb.equal_bands(spec, 4)])

# %%
os.makedirs(OUT, exist_ok=True)
fig_usage.write_html(os.path.join(OUT, "usage.html"))
fig_spec.write_html(os.path.join(OUT, "wavelengths.html"))
print(f"wrote the figures to {OUT}")

# %% [markdown]
# ## The same analysis on a HookedTransformer
# On TransformerLens 2.x / 3.x (where SAE-Lens and most course material live) the same
# calls take a `HookedTransformer`: built offline from a `HookedTransformerConfig` here,
# or `HookedTransformer.from_pretrained("meta-llama/Llama-3.2-1B")` with hub access.
# TransformerLens 4.x has no HookedTransformer, so this cell is skipped there.

# %%
try:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
except ImportError:
    HookedTransformer = None
if HookedTransformer is None:
    print(
        "TransformerLens 4.x: no HookedTransformer here (scripts/ci_matrix.sh runs this on 2.x/3.9)"
    )
else:
    ht_cfg = HookedTransformerConfig(
        d_model=128, d_head=32, n_layers=2, n_heads=4, n_key_value_heads=2, d_mlp=256,
        d_vocab=512, n_ctx=256, act_fn="silu", normalization_type="RMS",
        positional_embedding_type="rotary", rotary_dim=32, gated_mlp=True,
    )  # fmt: skip
    ht = HookedTransformer(ht_cfg).eval()
    ht_captured = rb.capture(ht, tokens)
    print(rb.RopeSpec.from_model(ht))
    print(rb.frequency_usage(ht_captured).head_frame().round(3).to_string(index=False))
