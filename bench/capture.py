"""capture() of all layers vs a plain forward pass on the same batch.

    python bench/capture.py            # d_model 512, 8 layers, 8 heads, batch 16 x 256 (CPU)
    python bench/capture.py --quick    # a small smoke run

Target (issue 2): ratio <= 1.3.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_timings, llama_bridge

import rope_behavior as rb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.quick:
        model = llama_bridge(d_model=64, n_layers=2, n_heads=4, vocab=500, n_ctx=64)
        tokens = torch.randint(0, 500, (2, 32))
        repeats = 2
    else:
        model = llama_bridge()
        tokens = torch.randint(0, 32000, (16, 256), generator=torch.Generator().manual_seed(0))
        repeats = args.repeats
    rb.RopeSpec.from_model(model)  # read once (cached), as in a notebook session

    def plain() -> None:
        with torch.no_grad():
            model(tokens)

    def cap() -> None:
        rb.capture(model, tokens)

    t = interleaved_timings({"forward": plain, "capture": cap}, repeats)
    ratio = t["capture"] / t["forward"]
    print(f"torch threads: {torch.get_num_threads()}  batch: {tuple(tokens.shape)}")
    print(f"plain forward : {t['forward'] * 1e3:8.1f} ms")
    print(f"capture (all) : {t['capture'] * 1e3:8.1f} ms")
    print(f"ratio capture/forward = {ratio:.3f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
