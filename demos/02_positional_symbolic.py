# %% [markdown]
# # Positional or symbolic? Scoring heads, and the positional–symbolic plane
#
# A head is **positional** when its attention follows positions (permuting the key
# contents leaves the logits where they were) and **symbolic** when it follows contents
# (the logits move with the contents). The two exclude each other unless attention is
# uniform (docs/method.md §4). `score_heads` turns every head into a point (s_POS, s_SYM).
#
# We score the three toy models that ship with rope_behavior — trained on the canonical
# Index (positional), Retrieval (symbolic) and Partial-induction (mixed) tasks under the
# frequency setting each task needs — and check the exclusion principle numerically.

# %%
import os

import pandas as pd
import torch

import rope_behavior as rb
from rope_behavior import plots
from rope_behavior.tasks import evaluate, load_pretrained

FAST = os.environ.get("RB_DEMO_FAST") == "1"
# figures (HTML) go to runs/demos/02_positional_symbolic (RB_DEMO_OUT overrides the folder)
OUT = os.environ.get("RB_DEMO_OUT") or os.path.join("runs", "demos", "02_positional_symbolic")
N = 64 if FAST else 512

# %% [markdown]
# ## The shipped models
# Each was trained (`scripts/train_checkpoints.py`) with one frequency setting, compiled
# from intervention values: Index with only the highest-frequency pair, Retrieval with
# every pair at angle 0 (NoPE), Partial induction with two angles (0 and 0.1 rad/token).

# %%
rows = []
for name in ("index", "retrieval", "partial_induction"):
    model, task, setting = load_pretrained(name)
    gen = torch.Generator().manual_seed(0)
    acc = evaluate(model, task, N, gen, fwd_hooks=setting.hooks)
    batch = task.sample(N, torch.Generator().manual_seed(1))
    # Score the model as it runs: under its setting's hooks. Tokens mode re-runs the
    # model on block-swapped prompts, so the hooks act on every variant.
    with model.hooks(fwd_hooks=setting.hooks(model)):
        scores = rb.score_heads(model, batch.tokens, mode="tokens", block_size=1, n_swaps=None)
    summary = scores.mean()
    rows.append(
        {
            "model": name,
            "setting": setting.name,
            "accuracy": round(acc, 3),
            "s_pos": float(summary.s_pos_mean[0, 0]),
            "s_sym": float(summary.s_sym_mean[0, 0]),
            "identifiable": float(summary.identifiable_fraction[0, 0]),
        }
    )
table = pd.DataFrame(rows)
print(table.round(3).to_string(index=False))

# %% [markdown]
# The Index head lands near (1, 0): positional. The Retrieval head near (0, 1): symbolic.
# The Partial-induction head needs both content and recency and lands in between.

# %%
frame = table.assign(layer=0, head=range(len(table)), identifiable=table["identifiable"] >= 0.5)
fig = plots.positional_symbolic_plane(frame, color=None)

# %% [markdown]
# ## The exclusion principle, checked exactly
# For a short context, `exclusion_check` evaluates the head's logits over *all*
# permutations of the key contents and verifies
# `Var_j(λ_j) <= (||δ_pos||² + ||δ_sym||²) / ((n-1)! (n-1))`.

# %%
model, task, setting = load_pretrained("index")
batch = task.sample(1, torch.Generator().manual_seed(2))
n_keys = 5 if FAST else 6
check = rb.exclusion_check(
    model, batch.tokens, layer=0, head=0, key_positions=list(range(16 - n_keys, 16))
)
print(check)
print(check.to_frame().round(4).to_string(index=False))

# %%
os.makedirs(OUT, exist_ok=True)
fig.write_html(os.path.join(OUT, "plane.html"))
print(f"wrote the figures to {OUT}")
