"""frequency_patching_sweep vs a naive loop of run_with_hooks calls (one full forward per
condition), on the same conditions, checking that both give the same numbers.

    python bench/sweep.py                 # Llama-style, 8 layers, 8 heads, d_model 512,
                                          # vocab 32000, batch 16 x 128, 8 x 8 x 4 bands (CPU)
    python bench/sweep.py --quick         # a small smoke run
    python bench/sweep.py --device cuda --repeat 3   # on a GPU
    python bench/sweep.py --naive-subset 32   # time the naive loop on 32 evenly spaced
                                          # conditions only and extrapolate (printed as such)

Target (issue 4): ratio naive/sweep >= 5. Where the time goes: the naive loop runs all
n_layers blocks plus the whole unembedding for every condition; the sweep restarts at the
patched layer, so a condition at layer l runs n_layers - l blocks, and unembeds only the
positions the metric reads. On a compute-bound device (a CPU) that bounds the ratio by
FLOPs (printed); on a GPU batching conditions along the batch pays beyond it.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import llama_bridge

import rope_behavior as rb
from rope_behavior import metrics
from rope_behavior.interventions.compile import compile_hooks
from rope_behavior.interventions.sources import site_activations
from rope_behavior.interventions.values import FrequencyPatch
from rope_behavior.model.adapters import adapter_for
from rope_behavior.patching.sweep import frequency_patching_sweep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch-conditions", type=int, default=None, help="default: the library's")
    ap.add_argument("--repeat", type=int, default=1, help="timed rounds (sweep, naive), median")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--naive-subset", type=int, default=0, help="0: run the whole naive loop")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    if args.quick:
        vocab, shape = 500, (2, 32)
        model = llama_bridge(d_model=64, n_layers=2, n_heads=4, vocab=vocab, n_ctx=64, device=args.device)
    else:
        vocab, shape = 32000, (16, 128)
        model = llama_bridge(vocab=vocab, device=args.device)
    clean = torch.randint(0, vocab, shape, generator=gen)
    corrupted = torch.where(torch.rand(shape, generator=gen) < 0.2, torch.randint(0, vocab, shape, generator=gen), clean)
    clean, corrupted = clean.to(args.device), corrupted.to(args.device)
    metric = metrics.logit_diff(
        torch.randint(0, vocab, (shape[0],), generator=gen), torch.randint(0, vocab, (shape[0],), generator=gen)
    )
    spec = rb.RopeSpec.from_model(model)
    bands = rb.equal_bands(spec, 4)
    with torch.no_grad():  # warm-up (CUDA context, kernels) outside both timings
        model(clean)

    def run_sweep():
        return frequency_patching_sweep(
            model, clean, corrupted, metric, bands=bands, target="qk", batch_conditions=args.batch_conditions
        )

    conditions = [(li, hi, bi) for li in range(spec.n_layers) for hi in range(spec.n_heads) for bi in range(4)]
    if args.naive_subset:
        step = max(1, len(conditions) // args.naive_subset)
        chosen = conditions[::step][: args.naive_subset]
    else:
        chosen = conditions

    def run_naive():
        with torch.no_grad():
            sources = {layer: site_activations(clean, spec, layer, model=model) for layer in range(spec.n_layers)}
            naive = {}
            for li, hi, bi in chosen:
                value = FrequencyPatch(layer=li, heads=hi, pairs=bands[bi], target="qk", source=sources[li])
                logits = model.run_with_hooks(corrupted, fwd_hooks=compile_hooks(spec, value))
                naive[(li, hi, bi)] = float(metric(logits))
        return naive

    sweep_times, naive_times = [], []
    for _ in range(args.repeat):  # rounds alternate the two candidates
        t0 = time.perf_counter()
        result = run_sweep()
        sweep_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        naive = run_naive()
        naive_times.append(time.perf_counter() - t0)
    t_sweep, t_naive = statistics.median(sweep_times), statistics.median(naive_times)
    if args.naive_subset:
        t_naive *= len(conditions) / len(chosen)

    got = torch.tensor([float(result.values[c]) for c in chosen], dtype=torch.float64)
    want = torch.tensor([naive[c] for c in chosen], dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    n = spec.n_layers
    cfg = model.cfg  # multiply-adds per token: a block's projections + MLP, and the unembedding
    block = 4 * cfg.d_model**2 + 3 * cfg.d_model * cfg.d_mlp
    unembed = cfg.d_model * vocab
    keep = metric.last_positions or shape[1]
    naive_cost = n * block + unembed
    sweep_cost = sum((n - layer) * block for layer in range(n)) / n + unembed * keep / shape[1]
    bound = naive_cost / sweep_cost
    dev = torch.device(args.device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; batch: {tuple(shape)}  vocab: {vocab}")
    per_forward = min(spec.n_heads * 4, args.batch_conditions or max(  # a chunk holds one layer's
        1, adapter_for(model).sequences_per_forward(shape[1], 4 * shape[0]) // shape[0]))
    print(f"conditions: {len(conditions)} ({n} layers x {spec.n_heads} heads x 4 bands), "
          f"{per_forward} per forward" + ("" if args.batch_conditions else " (the library's default here)")
          + f"; median of {args.repeat} round(s)")
    print(f"max |sweep - naive| = {float((got - want).abs().max()):.2e} over {len(chosen)} conditions")
    print(f"sweep : {t_sweep:8.3f} s")
    print(f"naive : {t_naive:8.3f} s" + (f"  (extrapolated from {len(chosen)})" if args.naive_subset else ""))
    print(f"ratio naive/sweep = {t_naive / t_sweep:.2f}  (target >= 5)")
    print(f"FLOP bound of restarting at the patched layer (projections, MLP, unembedding; binds "
          f"where a forward is compute-bound, as on a CPU): {bound:.2f}")


if __name__ == "__main__":
    main()
