"""Cost of compare_edits with k edits against one analyze(per_pair=False) of the same
prompts, measured side by side (interleaved, median over --repeat repeats).

    python bench/compare.py                  # shipped LM, 32 held-out prompts of 128 tokens
    python bench/compare.py --quick          # 8 prompts, 1 repeat

Target (issue 23): compare_edits(k edits) / analyze <= (k + 1) x 1.1. compare_edits runs
k + 1 analyses plus k + 1 loss forwards and k + 1 bootstraps; the analyses under an edit
score keys mode through the edit's hooks (the moved keys re-rotated by the hooked chain).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved_timings

import rope_behavior as rb
from rope_behavior.analysis.compare import compare_edits

EDITS = ("prope:0.25", "ntk:2", "yarn:4")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    n, repeats = (8, 1) if args.quick else (32, args.repeat)
    model = rb.load_shipped_lm()
    tokens, mask = rb.tokenize_prompts(model, rb.heldout_texts(), context=128, max_prompts=n)
    k = len(EDITS)
    t = interleaved_timings({
        "analyze": lambda: rb.analyze(model, tokens, attention_mask=mask, per_pair=False),
        "compare": lambda: compare_edits(model, tokens, list(EDITS), attention_mask=mask),
    }, repeats)  # fmt: skip
    ratio = t["compare"] / t["analyze"]
    print(f"shipped LM, {n} prompts x 128 tokens, edits {', '.join(EDITS)} (k={k})")
    print(f"analyze(per_pair=False): {t['analyze']:.2f} s; compare_edits: {t['compare']:.2f} s")
    print(f"compare / analyze = {ratio:.2f}  target <= (k + 1) x 1.1 = {(k + 1) * 1.1:.2f}"
          f"  -> {'met' if ratio <= (k + 1) * 1.1 else 'NOT met'}")  # fmt: skip


if __name__ == "__main__":
    main()
