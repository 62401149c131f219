"""Cost of compare_edits with k edits against one analyze(per_pair=False) of the same
prompts, measured side by side (interleaved, after one warm-up each).

    python bench/compare.py                  # shipped LM, 32 held-out prompts x 128, 9 edits
    python bench/compare.py --quick          # 8 prompts, 3 edits, 3 repeats
    python bench/compare.py --edit ntk:2 --edit yarn:4   # other edits

Target (issue 23): compare_edits(k edits) / analyze <= (k + 1) x 1.1. compare_edits runs
k + 1 scoring passes (scores, usage and the next-token loss from one forward per batch);
one unedited pass (score_corpus with next_token=True) is timed beside them, and the floor
it sets, (k + 1) x pass / analyze, is printed: the loss (the forward's last layer, the
unembedding and the log-softmax over every token) is work analyze never does;
under an edit keys mode reads the edit's hooks as one map per position and scores in the
destination form, as on the unedited model. On a shared machine one repeat can take many
times another (other jobs' bursts): the ratio of the medians and of the fastest repeats
are both printed, with the load average, and the same for CPU seconds of this process
(``time.process_time``: all torch threads; less sensitive to other jobs' bursts).
``--threads 1`` keeps torch's threads from spinning while another job holds a core.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

import rope_behavior as rb
from rope_behavior.analysis.compare import compare_edits
from rope_behavior.analysis.corpus import score_corpus

# the table of docs/capabilities/interventions.md
EDITS = ("prope:0.25", "prope:0.5", "linear:2", "linear:4", "ntk:2", "ntk:4", "yarn:2",
         "yarn:4", "nope-below-band")  # fmt: skip
QUICK = ("prope:0.25", "ntk:2", "yarn:4")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--edit", action="append", default=None,
                    help="an edit name (repeat it); default: the 9 of the docs table")  # fmt: skip
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, edits, repeats = (8, QUICK, 3) if args.quick else (32, EDITS, args.repeat)
    edits = tuple(args.edit) if args.edit else edits
    model = rb.load_shipped_lm()
    tokens, mask = rb.tokenize_prompts(model, rb.heldout_texts(), context=128, max_prompts=n)
    k = len(edits)
    fns = {
        "analyze": lambda: rb.analyze(model, tokens, attention_mask=mask, per_pair=False),
        # one unedited pass of compare_edits: analyze's scoring and usage, and the forward
        # run on to the logits for the loss and accuracy (which analyze does not compute)
        "pass": lambda: score_corpus(
            model, tokens, attention_mask=mask, per_pair=False, next_token=True
        ),
        "compare": lambda: compare_edits(model, tokens, list(edits), attention_mask=mask),
    }
    load0 = os.getloadavg()[0]
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    passes = []
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            if name == "compare":
                passes.append(out.pass_seconds)
    load1 = os.getloadavg()[0]
    target = (k + 1) * 1.1
    print(f"shipped LM, {n} prompts x 128 tokens, {k} edits: {', '.join(edits)}")
    print(f"{repeats} repeats, {torch.get_num_threads()} torch threads on {os.cpu_count()} cores,"
          f" load average {load0:.2f} -> {load1:.2f}")  # fmt: skip
    for clock, times in (("wall", wall), ("cpu", cpu)):
        for label, pick in (("median", statistics.median), ("fastest", min)):
            t = {name: pick(v) for name, v in times.items()}
            ratio = t["compare"] / t["analyze"]
            print(f"{clock} {label:>7}: analyze(per_pair=False) {t['analyze']:.3f} s, "
                  f"compare_edits {t['compare']:.3f} s; compare / analyze = {ratio:.2f}, "
                  f"target <= (k + 1) x 1.1 = {target:.2f} -> "
                  f"{'met' if ratio <= target else 'NOT met'}")  # fmt: skip
    fastest = min(passes, key=sum)
    print("passes of the fastest compare (s): " + ", ".join(f"{s:.3f}" for s in fastest))
    # the floor: k + 1 passes that each cost what the unedited pass with the loss costs
    t = {name: statistics.median(v) for name, v in wall.items()}
    per_pass = t["pass"] / t["analyze"]
    floor = (k + 1) * per_pass
    edited = statistics.median(statistics.mean(p[1:]) / p[0] for p in passes)
    print(f"one pass with the loss / analyze = {per_pass:.2f} (wall medians): the loss alone "
          f"costs {per_pass - 1:+.0%} of an analyze, so k + 1 passes cost at least "
          f"{floor:.2f} analyses against the target's {target:.2f}; compare / that floor = "
          f"{t['compare'] / t['analyze'] / floor:.2f}; an edited pass / the unedited pass = "
          f"{edited:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
