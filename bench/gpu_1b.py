"""The GPU benchmarks at a realistic size: a random ~1B-parameter Llama in bfloat16, every
number a ratio measured side by side in one run.

    python bench/gpu_1b.py --device cuda          # on a GPU (bench/gpu.sh runs it)
    python bench/gpu_1b.py --small --device cpu   # a tiny smoke version (seconds)

Model: a random Llama-style TransformerBridge (bench/common.llama_bridge, eager attention):
d_model 2048, 16 layers, 32 query / 8 KV heads (d_head 64), intermediate 8192 (--d-mlp
5632 for the smaller MLP), vocab 32000, bfloat16 (1.10B parameters with 8192: printed);
tokens 16 x 2048 (random ids, seed 0). Each time is the median of --repeat rounds (default
3) after a warm-up, the candidates alternating, with torch.cuda.synchronize() around every
call; the peak memory (torch.cuda.max_memory_allocated) of each call is printed.

(1) rope_behavior.capture(model, tokens), all layers / plain forward       target <= 1.3
(2) score_heads(mode="keys", n_swaps=16, query_positions="last"), all heads
    / plain forward                                                          target <= 1.5
(3) frequency_patching_sweep (target "qk") over layers 0, 8, 15 x all 8 KV groups x 4
    bands on tokens 4 x 512, against bench/sweep.py's naive loop (one full run_with_hooks
    forward per condition): naive/sweep; issue 4's target >= 5 was set for the full grid,
    so the FLOP bound of restarting at these layers (2.05) is printed beside it.

Memory (estimated from the shapes and printed before each measurement; bf16, 16 x 2048):
weights 2.1 GiB; one layer's eager attention scores are 16*32*2048*2048 elements, 4 GiB in
bf16, and with the fp32 softmax and its bf16 copy ~16 GiB live at once; logits 2 GiB;
capture keeps q, k, rot_q, rot_k of all 16 layers, 5 GiB (cos / sin are views of one
table). Estimated peaks: forward 18.6 GiB, capture 23.6 GiB, keys mode 18.8 GiB; (3): naive
2.4 GiB, sweep 4.5 GiB (8 conditions x 4 prompts per forward). All fit an H200 (~139 GiB).
Where capture's estimate exceeds 90% of the free memory (or a call runs out of memory) the
batch of (1) and (2) is halved until it fits, and the batch that ran is printed.

Runtime on an H200 (estimate): imports, CUDA start-up and building the model on the GPU
~20-30 s; a forward at 16 x 2048 is ~7.7e13 FLOPs (~0.15 s) plus the eager softmax's
~50 GiB of memory traffic per layer (~0.2 s): ~0.3-0.5 s, so (1) and (2) (a warm-up and 3
rounds of 3 candidates) ~5-10 s; (3): 96 naive forwards at 4 x 512 (~30-50 ms each, mostly
the Bridge's per-call overhead) per round, 4 rounds with the warm-up, ~15-25 s. Total
~1 minute, well inside bench/gpu.sh's 300 s.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_timings, llama_bridge

import rope_behavior as rb
from rope_behavior import metrics
from rope_behavior.interventions.compile import compile_hooks
from rope_behavior.interventions.sources import site_activations
from rope_behavior.interventions.values import FrequencyPatch
from rope_behavior.model.adapters import adapter_for

GiB = 1 << 30
N_SWAPS = 16


def gib(n_bytes: float) -> str:
    if n_bytes < GiB:
        return f"{n_bytes / (1 << 20):6.1f} MiB"
    return f"{n_bytes / GiB:6.2f} GiB"


class Device:
    """Synchronisation and peak-memory bookkeeping of one device (no-ops on a CPU)."""

    def __init__(self, name: str) -> None:
        self.dev = torch.device(name)
        self.cuda = self.dev.type == "cuda"
        self.peaks: dict[str, int] = {}

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.dev)

    def available(self) -> int | None:
        """Bytes the process can still allocate (free + what its allocator holds)."""
        if not self.cuda:
            return None
        free, _ = torch.cuda.mem_get_info(self.dev)
        return free + torch.cuda.memory_reserved(self.dev)

    def timed(self, name: str, fn):
        """``fn`` between two synchronisations, recording its peak allocated memory."""

        def call() -> None:
            self.sync()
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.dev)
            out = fn()
            self.sync()
            if self.cuda:
                peak = torch.cuda.max_memory_allocated(self.dev)
                self.peaks[name] = max(self.peaks.get(name, 0), peak)
            del out

        return call

    def peak(self, name: str) -> str:
        return gib(self.peaks[name]) if name in self.peaks else "   n/a (not a GPU)"


def shapes(model, vocab: int) -> dict[str, int]:
    cfg = model.cfg
    n_heads = cfg.n_heads
    return {
        "d": cfg.d_model,
        "d_mlp": cfg.d_mlp,
        "layers": cfg.n_layers,
        "heads": n_heads,
        "kv": getattr(cfg, "n_key_value_heads", None) or n_heads,
        "dh": cfg.d_head,
        "vocab": vocab,
    }


def estimates(s: dict[str, int], batch: int, n_pos: int, elt: int, weights: int) -> dict[str, int]:
    """Peak bytes of each call at ``batch x n_pos``, from the shapes (an estimate)."""
    tokens = batch * n_pos
    scores = batch * s["heads"] * n_pos * n_pos  # one layer's attention scores
    attn = scores * (2 * elt + 4)  # scores and probabilities in the dtype, the fp32 softmax
    mlp = tokens * s["d_mlp"] * 3 * elt  # gate, up and their product
    layer = max(attn, mlp) + 4 * tokens * s["d"] * elt  # plus the residual stream around it
    logits = tokens * s["vocab"] * elt
    qk = s["layers"] * tokens * (2 * s["heads"] + 2 * s["kv"]) * s["dh"] * elt
    keys_scratch = 4 * batch * s["heads"] * (N_SWAPS + 2) * n_pos * 4  # one layer's rows, fp32
    return {
        "forward": weights + max(layer, logits + tokens * s["d"] * elt),
        "capture": weights + layer + qk,
        "keys": weights + layer + keys_scratch,
    }


def sweep_estimates(
    s: dict[str, int],
    batch: int,
    n_pos: int,
    elt: int,
    weights: int,
    n_layers: int,
    per_forward: int,
) -> dict[str, int]:
    tokens = batch * n_pos
    naive = estimates(s, batch, n_pos, elt, weights)["forward"]
    site = tokens * (s["heads"] + s["kv"]) * s["dh"] * elt  # one layer's q / k of a run
    cached = n_layers * (tokens * s["d"] * elt + 2 * site)  # resid_pre and sites per layer
    chunk = estimates(s, batch * per_forward, n_pos, elt, 0)["keys"]  # no full-length logits
    return {"naive": naive + n_layers * site, "sweep": weights + cached + chunk}


def measure_vs_forward(model, tokens, dev: Device, repeat: int) -> dict[str, float]:
    def forward():
        with torch.no_grad():
            return model(tokens)

    return interleaved_timings(
        {
            "forward": dev.timed("forward", forward),
            "capture": dev.timed("capture", lambda: rb.capture(model, tokens)),
            "keys": dev.timed(
                "keys",
                lambda: rb.score_heads(
                    model, tokens, mode="keys", n_swaps=N_SWAPS, query_positions="last"
                ),
            ),
        },
        repeat,
    )


def verdict(name: str, ratio: float, op: str, target: float, note: str = "") -> str:
    ok = ratio <= target if op == "<=" else ratio >= target
    return f"{name} {ratio:.2f} (target {op} {target}{note}) {'PASS' if ok else 'FAIL'}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--small", action="store_true", help="tiny fp32 model, a CPU smoke run")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeat", type=int, default=None, help="timed rounds, median (3; small 1)")
    ap.add_argument("--d-mlp", type=int, default=None, help="intermediate size (default 8192)")
    ap.add_argument("--batch", type=int, default=None, help="(1), (2): prompts (default 16)")
    ap.add_argument("--n-pos", type=int, default=None, help="(1), (2): tokens (default 2048)")
    args = ap.parse_args()
    dev = Device(args.device)
    if args.small:
        arch = dict(d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab=1000, n_ctx=128)
        arch["d_mlp"], dtype = args.d_mlp or 4 * 128, torch.float32
        batch, n_pos, sweep_shape, n_bands, repeat = 2, 64, (2, 32), 2, 1
    else:
        arch = dict(d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab=32000, n_ctx=2048)
        arch["d_mlp"], dtype = args.d_mlp or 8192, torch.bfloat16
        batch, n_pos, sweep_shape, n_bands, repeat = 16, 2048, (4, 512), 4, 3
    batch, n_pos, repeat = args.batch or batch, args.n_pos or n_pos, args.repeat or repeat
    arch["n_ctx"] = max(arch["n_ctx"], n_pos)
    vocab = arch["vocab"]
    where = (
        torch.cuda.get_device_name(dev.dev)
        if dev.cuda
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"torch {torch.__version__}, {where}")
    model = llama_bridge(**arch, dtype=dtype, device=dev.dev)
    n_params = sum(p.numel() for p in model.parameters())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    elt = torch.empty((), dtype=dtype).element_size()
    s = shapes(model, vocab)
    print(
        f"model: random Llama, d_model {s['d']}, {s['layers']} layers, {s['heads']} query / "
        f"{s['kv']} KV heads (d_head {s['dh']}), intermediate {s['d_mlp']}, vocab {vocab}, "
        f"{dtype}, attention {model.original_model.config._attn_implementation!r}: "
        f"{n_params / 1e9:.3f}B parameters ({gib(weights).strip()})"
    )
    spec = rb.RopeSpec.from_model(model)  # read once (cached), as in a notebook session
    gen = torch.Generator().manual_seed(0)
    all_tokens = torch.randint(0, vocab, (batch, n_pos), generator=gen).to(dev.dev)

    # (1), (2): capture and keys mode against a plain forward, at the largest batch that fits.
    avail = dev.available()
    if avail is not None:
        print(f"available GPU memory: {gib(avail).strip()} (free + this process's allocator)")
    b = batch
    while True:
        est = estimates(s, b, n_pos, elt, weights)
        print(
            f"estimated peak at {b} x {n_pos}: "
            + ", ".join(f"{k} {gib(v).strip()}" for k, v in est.items())
        )
        if avail is not None and max(est.values()) > 0.9 * avail and b > 1:
            print(f"  does not fit 90% of {gib(avail).strip()}: batch halved to {b // 2}")
            b //= 2
            continue
        try:
            dev.peaks.clear()
            t = measure_vs_forward(model, all_tokens[:b], dev, repeat)
            break
        except torch.cuda.OutOfMemoryError:
            if b == 1:
                raise
            dev.peaks.clear()
            torch.cuda.empty_cache()
            print(f"  ran out of memory at {b} x {n_pos}: batch halved to {b // 2}")
            b //= 2
    ran = f"{b} x {n_pos}" + ("" if b == batch else f" (fallback from {batch} x {n_pos})")
    print(f"(1), (2) ran on tokens {ran}; median of {repeat} round(s) after a warm-up")
    r_cap, r_keys = t["capture"] / t["forward"], t["keys"] / t["forward"]
    print(f"plain forward          {t['forward'] * 1e3:9.1f} ms   peak {dev.peak('forward')}")
    print(
        f"(1) capture, all layers {t['capture'] * 1e3:8.1f} ms   peak {dev.peak('capture')}"
        f"   ratio {r_cap:5.2f} (target <= 1.3)"
    )
    print(
        f"(2) keys mode, all heads {t['keys'] * 1e3:7.1f} ms   peak {dev.peak('keys')}"
        f"   ratio {r_keys:5.2f} (target <= 1.5)"
    )

    # (3): the sweep over a subset of layers against one full forward per condition.
    sb, sp = sweep_shape
    clean = torch.randint(0, vocab, sweep_shape, generator=gen)
    swapped = torch.rand(sweep_shape, generator=gen) < 0.2
    corrupted = torch.where(swapped, torch.randint(0, vocab, sweep_shape, generator=gen), clean)
    clean, corrupted = clean.to(dev.dev), corrupted.to(dev.dev)
    metric = metrics.logit_diff(
        torch.randint(0, vocab, (sb,), generator=gen), torch.randint(0, vocab, (sb,), generator=gen)
    )
    n = spec.n_layers
    layers = sorted({0, n // 2, n - 1})
    bands = rb.equal_bands(spec, n_bands)
    if spec.group_size == 1:  # the sweep's head axis: query heads, or KV groups under GQA
        axis = [(h, (h,)) for h in range(spec.n_heads)]
    else:
        axis = [(g, spec.query_heads_of(g)) for g in range(spec.n_kv_heads)]
    conditions = [
        (li, hi, bi)
        for li in range(len(layers))
        for hi in range(len(axis))
        for bi in range(n_bands)
    ]
    per_forward = min(
        len(axis) * n_bands,
        max(1, adapter_for(model).sequences_per_forward(sp, 4 * sb) // sb),
    )
    est = sweep_estimates(s, sb, sp, elt, weights, len(layers), per_forward)
    print(
        f"(3) sweep on tokens {sb} x {sp}, layers {layers} x {len(axis)} "
        f"{'KV groups' if spec.group_size > 1 else 'heads'} x {n_bands} bands = "
        f"{len(conditions)} conditions, {per_forward} per forward (the library's default); "
        f"estimated peak: naive {gib(est['naive']).strip()}, sweep {gib(est['sweep']).strip()}"
    )

    def run_sweep():
        return rb.frequency_patching_sweep(
            model, clean, corrupted, metric, layers=layers, bands=bands, target="qk"
        )

    def run_naive():
        with torch.no_grad():
            sources = {layer: site_activations(clean, spec, layer, model=model) for layer in layers}
            naive = {}
            for li, hi, bi in conditions:
                layer = layers[li]
                value = FrequencyPatch(
                    layer=layer, heads=axis[hi][1], pairs=bands[bi], target="qk", source=sources[layer]
                )
                logits = model.run_with_hooks(corrupted, fwd_hooks=compile_hooks(spec, value))
                naive[(li, hi, bi)] = float(metric(logits))
        return naive

    got_sweep, got_naive = [], []

    def keep(store, fn):
        return lambda: store.append(fn())

    ts = interleaved_timings(
        {
            "sweep": dev.timed("sweep", keep(got_sweep, run_sweep)),
            "naive": dev.timed("naive", keep(got_naive, run_naive)),
        },
        repeat,
    )
    result, naive = got_sweep[-1], got_naive[-1]
    assert result.layers == tuple(layers)
    assert result.heads == tuple(h for h, _ in axis)
    got = torch.tensor([float(result.values[c]) for c in conditions], dtype=torch.float64)
    want = torch.tensor([naive[c] for c in conditions], dtype=torch.float64)
    diff = float((got - want).abs().max())
    spread = float(want.max() - want.min())
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    cfg = model.cfg  # multiply-adds per token: a block's projections + MLP, the unembedding
    q_w, kv_w = s["heads"] * s["dh"], s["kv"] * s["dh"]
    block = 2 * s["d"] * q_w + 2 * s["d"] * kv_w + 3 * s["d"] * cfg.d_mlp
    unembed = s["d"] * vocab
    last = metric.last_positions or sp
    bound = (n * block + unembed) / (
        sum((n - layer) * block for layer in layers) / len(layers) + unembed * last / sp
    )
    r_sweep = ts["naive"] / ts["sweep"]
    print(
        f"max |sweep - naive| = {diff:.2e} over {len(conditions)} conditions "
        f"(values span {spread:.2e}; {dtype})"
    )
    print(f"sweep  {ts['sweep']:8.3f} s   peak {dev.peak('sweep')}")
    print(
        f"naive  {ts['naive']:8.3f} s   peak {dev.peak('naive')}   ratio naive/sweep {r_sweep:5.2f}"
    )
    print(
        f"FLOP bound of restarting at layers {layers} (projections, MLP, unembedding; binds "
        f"where a forward is compute-bound): {bound:.2f}"
    )
    print(verdict("capture/forward", r_cap, "<=", 1.3))
    print(verdict("keys/forward", r_keys, "<=", 1.5))
    print(
        verdict(
            "naive/sweep",
            r_sweep,
            ">=",
            5,
            f", issue 4's, for the full grid; FLOP bound here {bound:.2f}",
        )
    )


if __name__ == "__main__":
    main()
