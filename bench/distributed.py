"""frequency_patching_sweep on Ray workers vs in this process: the sweep of bench/sweep.py
(Llama-style, 8 layers x 8 heads, d_model 512, vocab 32000, batch 16 x 128, 8 x 8 x 4 =
256 conditions), both in one run, same numbers checked.

    python bench/distributed.py                    # CPU: 2 Ray workers vs one process
    python bench/distributed.py --quick            # a small smoke run
    python bench/distributed.py --device cuda      # N GPUs: N workers vs one process on one GPU

Timed: the in-process sweep (the model already built, as a user's notebook has it); the
Ray sweep cold (workers start, import, build the model from a ModelLoader, record the
clean and corrupted runs, then the shards) and warm (the workers are up: a second sweep).
The cluster itself is started before the timings (``ray.init``, printed separately).

Targets (issue 14): on a 2-core CPU machine with 2 workers, ray/in-process <= 1.3 (the
overhead of building and feeding the model per worker; the two workers share the cores
that one process used, so no speed-up is possible there); on N GPUs, the speed-up over
one GPU is printed.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import llama_bridge

import rope_behavior as rb
from rope_behavior import metrics
from rope_behavior.patching.sweep import frequency_patching_sweep
from rope_behavior.runtime.executors import ModelLoader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=None, help="default: GPUs, or 2 on a CPU")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import ray

    from rope_behavior.runtime.ray_cluster import RayExecutor

    gen = torch.Generator().manual_seed(0)
    if args.quick:
        vocab, shape = 500, (2, 32)
        build = dict(d_model=64, n_layers=2, n_heads=4, vocab=vocab, n_ctx=64)
    else:
        vocab, shape = 32000, (16, 128)
        build = dict(vocab=vocab)
    clean = torch.randint(0, vocab, shape, generator=gen)
    corrupted = torch.where(torch.rand(shape, generator=gen) < 0.2, torch.randint(0, vocab, shape, generator=gen), clean)
    metric = metrics.logit_diff(
        torch.randint(0, vocab, (shape[0],), generator=gen), torch.randint(0, vocab, (shape[0],), generator=gen)
    )
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    workers = args.workers or (gpus if gpus else 2)
    t0 = time.perf_counter()
    ray.init(num_cpus=max(workers, 2) if not gpus else None, include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t0

    model = llama_bridge(**build, device=args.device)
    spec = rb.RopeSpec.from_model(model)
    bands = rb.equal_bands(spec, 4)
    kw = dict(bands=bands, target="qk")
    with torch.no_grad():
        model(clean.to(args.device))  # warm-up outside the timing
    t0 = time.perf_counter()
    local = frequency_patching_sweep(model, clean.to(args.device), corrupted.to(args.device), metric, **kw)
    t_local = time.perf_counter() - t0
    del model

    loader = ModelLoader(llama_bridge, **build)
    ex = RayExecutor(num_workers=workers, progress=False)
    t0 = time.perf_counter()
    cold = frequency_patching_sweep(loader, clean, corrupted, metric, executor=ex, **kw)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = frequency_patching_sweep(loader, clean, corrupted, metric, executor=ex, **kw)
    t_warm = time.perf_counter() - t0
    st = ex.stats
    ex.shutdown()
    ray.shutdown()

    diff = max(float((cold.values - local.values).abs().max()), float((warm.values - local.values).abs().max()))
    where = torch.cuda.get_device_name(0) if gpus else f"CPU, {torch.get_num_threads()} threads in-process"
    print(f"torch {torch.__version__}, ray {ray.__version__}, {where}; batch {tuple(shape)}, vocab {vocab}")
    print(f"conditions: {local.values.numel()} in {st.shards} shards; {workers} Ray workers "
          f"({'1 GPU' if gpus else '1 CPU'} each)")
    print(f"max |ray - in-process| = {diff:.2e}")
    print(f"ray.init           : {t_init:8.2f} s (not in the ratios)")
    print(f"in-process sweep   : {t_local:8.2f} s")
    print(f"ray sweep, cold    : {t_cold:8.2f} s (workers start, build the model, record runs)")
    print(f"ray sweep, warm    : {t_warm:8.2f} s (workers up)")
    if gpus:
        print(f"speed-up over one GPU: cold {t_local / t_cold:.2f}x, warm {t_local / t_warm:.2f}x with {workers} GPUs")
    else:
        print(f"ratio ray/in-process: cold {t_cold / t_local:.2f} (target <= 1.3), warm {t_warm / t_local:.2f}")


if __name__ == "__main__":
    main()
