# %% [markdown]
# # Analyse a language model: which heads are positional, which symbolic, and which
# # frequencies do they use?
#
# The main job of rope_behavior in a notebook. It runs offline on the language model the
# project trains and ships (a small Llama-architecture model trained on the Python
# standard library's source, `rope_behavior/lm`), and the same code runs on any rotary
# model of the hub: set `MODEL` to its name (for example `"meta-llama/Llama-3.2-1B"`).
# `RB_DEMO_FAST=1` makes a seconds-long smoke run.

# %%
import os

import rope_behavior as rb
from rope_behavior.analysis.main_job import analyze, tokenize_prompts
from rope_behavior.cli.models import load_model
from rope_behavior.data.heldout import heldout_texts
from rope_behavior.viz.html_report import report

FAST = os.environ.get("RB_DEMO_FAST") == "1"
OUT = os.environ.get("RB_DEMO_OUT") or os.path.join("runs", "demos", "04_analyze_a_language_model")
MODEL = os.environ.get("RB_DEMO_MODEL")  # None: the shipped LM; or a hub name / local folder

model = load_model(MODEL)  # a TransformerBridge, like TransformerBridge.boot_transformers(...)
spec = rb.RopeSpec.from_model(model)
print(spec)

# %% [markdown]
# ## Prompts
# Held-out text the model never saw in training, cut into prompts of 128 tokens.

# %%
tokens, mask = tokenize_prompts(model, heldout_texts(), context=128, max_prompts=8 if FAST else 32)
print(tokens.shape, "first prompt:", repr(model.to_string(tokens[0, 1:40])))

# %% [markdown]
# ## Usage, scores, correspondence
# `analyze` streams the prompts in batches: frequency usage of every head, positional /
# symbolic scores with bootstrap intervals (prompts and swaps resampled), per-pair scores,
# and the correspondence between behaviour and frequency.

# %%
result = analyze(model, tokens, attention_mask=mask, batch_size=8, pair_prompts=8 if FAST else 16)
heads = result.heads_frame()
print(
    heads[
        [
            "layer",
            "head",
            "s_pos_mean",
            "s_pos_lo",
            "s_pos_hi",
            "s_sym_mean",
            "identifiable_fraction",
            "swapped_mass",
            "centroid",
        ]
    ]
    .round(3)
    .to_string(index=False)
)
most_positional, most_symbolic = result.extremes()
print("most positional:", [(int(r.layer), int(r.head)) for r in most_positional.itertuples()])
print("most symbolic:  ", [(int(r.layer), int(r.head)) for r in most_symbolic.itertuples()])
print(result.correspondence)

# %% [markdown]
# ## One report
# Every figure and the numbers behind them in one self-contained HTML file (open it in a
# browser; it needs no network).

# %%
os.makedirs(OUT, exist_ok=True)
path = report(result, path=os.path.join(OUT, "report.html"))
print(f"wrote {path}")
