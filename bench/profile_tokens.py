"""Where tokens-mode scoring spends its time: the batched call against its parts
(a plain forward of all sequences, stream_layers alone), then the top operators under
torch.profiler.

    python bench/profile_tokens.py [--device cuda] [--quick]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scores import build

from rope_behavior import RopeSpec
from rope_behavior.qk.captured import stream_layers
from rope_behavior.scoring.scorer import score_heads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    dev = torch.device(a.device)
    d_model, n_layers, n_heads, vocab, batch, n_pos = (
        (64, 2, 4, 256, 4, 64) if a.quick else (512, 8, 8, 4096, 16, 256)
    )
    model = build(d_model, n_layers, n_heads, vocab, n_pos, device=dev)
    RopeSpec.from_model(model)
    tokens = torch.randint(0, vocab, (batch, n_pos), generator=torch.Generator().manual_seed(0)).to(dev)
    seqs = tokens.repeat(17, 1)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def timed(fn, repeat=3):
        fn()
        sync()
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    def plain():
        with torch.no_grad():
            model(seqs)

    def stream():
        stream_layers(model, seqs, lambda lq: None)

    def scores():
        score_heads(model, tokens, mode="tokens", sequences_per_forward=seqs.shape[0], block_size=8, n_swaps=16)

    for name, fn in (("plain forward, 17x batch", plain), ("stream_layers, 17x batch", stream),
                     ("score_heads tokens, batched", scores)):
        print(f"{name:30s} {timed(fn) * 1e3:9.1f} ms")
    acts = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        scores()
        sync()
    key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=22, max_name_column_width=50))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50))


if __name__ == "__main__":
    main()
