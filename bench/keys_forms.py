"""Keys mode's two ways of scoring one query per prompt against shared swaps, side by side:
rotating every moved key at its destination, or turning the query back once per
destination and reading every (destination, source) product (the destination form).
``rope_behavior.scoring.keys_mode.DESTINATION_FORM`` picks the second where
``n_pos^2 <= DESTINATION_FORM * n_swaps * 2 * block_size``; this prints where it pays.

    python bench/keys_forms.py            # a random Llama (d_model 128, 2 layers), 8 prompts

Each line: prompt length, swaps, n^2 / moved keys, the whole ``score_heads`` time each way
(best of two interleaved medians of 3), and their ratio (below 1: the destination form is
faster).
"""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from analyze import build_llama

import rope_behavior as rb
import rope_behavior.scoring.keys_mode as km


def main() -> None:
    torch.set_num_threads(2)
    model = build_llama(128, 2, 4, 512, 1024)
    g = torch.Generator().manual_seed(0)
    never, always = 0, 10**9
    for n in (64, 128, 256, 512, 1024):
        toks = torch.randint(3, 512, (8, n), generator=g)
        n_blocks = (n - 2) // 8
        pairs = n_blocks * (n_blocks - 1) // 2
        for ns in sorted({min(8, pairs), min(64, pairs), min(256, pairs)}):
            res: dict[int, list[float]] = {}
            for form in (never, always, never, always):
                km.DESTINATION_FORM = form

                def run(ns: int = ns, toks: torch.Tensor = toks) -> object:
                    return rb.score_heads(model, toks, block_size=8, n_swaps=ns, exclude_keys="none")

                run()
                ts = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    run()
                    ts.append(time.perf_counter() - t0)
                res.setdefault(form, []).append(statistics.median(ts))
            m, d = min(res[never]), min(res[always])
            print(f"n {n:4d} swaps {ns:3d} n^2/(S*2b) {n * n / (ns * 16):7.1f}  moved keys "
                  f"{m * 1000:7.1f} ms  destination {d * 1000:7.1f} ms  ratio {d / m:.2f}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
