"""Speed and memory of rope_behavior.score_heads, as ratios measured side by side in one run.

    python bench/scores.py            # the issue's sizes (minutes on a 2-core CPU)
    python bench/scores.py --quick    # a tiny smoke version
    python bench/scores.py --device cuda   # on a GPU ((d) is a CPU RSS measurement: skipped)

Model: a random Llama-style TransformerBridge (d_model 512, 8 layers, 8 heads, MHA,
intermediate 1376, vocab 4096, eager attention, fp32, CPU), batch 16 x 256.
(a) keys mode, all heads, last-token query, 16 swaps / plain forward      target <= 1.5
(b) the same with query_positions="all" / plain forward                    target <= 4
(c) tokens mode, one forward per swap / batched (same results)            target >= 3
    also printed: its FLOP bounds from the swaps drawn (batching runs the same FLOPs;
    reusing each variant's unchanged prefix would cut them), and whether the Bridge's own
    KV cache reuses a prefix (the route such a reuse would take)
(d) peak memory (RSS growth, fresh subprocess each) of keys mode at 4096 tokens / plain
    forward at 4096 tokens, on a smaller model (d_model 256, 2 layers, 4 heads, batch 1)
                                                                            target <= 1.5
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def build(d_model, n_layers, n_heads, vocab, n_ctx, seed=0, device="cpu"):
    import transformers as T
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    cfg = T.LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=int(d_model * 2.6875),
                        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_heads,
                        max_position_embeddings=n_ctx, tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    hf = T.LlamaForCausalLM(cfg).eval()
    return build_bridge_from_module(hf.to(device), "LlamaForCausalLM", hf_config=hf.config)


def stream_macs(cfg, n_pos, first=0):
    """Multiply-adds of one sequence's forward up to the last layer's q/k (what tokens mode
    runs: blocks 0..L-2 whole, then the q/k/v projections of block L-1), counting only the
    positions first..n_pos-1 (a prefix that is already known need not be recomputed)."""
    d, hd = cfg.d_model, cfg.d_head
    q_w, kv_w = cfg.n_heads * hd, (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads) * hd
    proj = 2 * d * q_w + 2 * d * kv_w + 3 * d * cfg.d_mlp  # q, o, k, v, gated MLP per token
    attn = 2 * q_w * sum(i + 1 for i in range(first, n_pos))  # scores and weighted values
    new = n_pos - first
    return (cfg.n_layers - 1) * (proj * new + attn) + d * (q_w + 2 * kv_w) * new


def prefix_reuse_bound(cfg, n_pos, hs):
    """FLOP bound of (c), from the swaps actually drawn. Batching runs exactly the FLOPs of
    one forward per swap, so where a forward is compute-bound it cannot beat 1.0x; reusing
    each variant's unchanged prefix (everything before its first swapped block) would cut
    the recomputed positions, and bounds what any exact tokens mode could reach there."""
    full = stream_macs(cfg, n_pos)
    starts = [int(x) for x in hs.start.reshape(-1)]
    per_swap = len(starts) * full * (len(hs.swaps) + 1)
    reuse = sum(full + sum(stream_macs(cfg, n_pos, st + hs.block_size * min(a, c)) for a, c in hs.swaps)
                for st in starts)
    return per_swap / reuse


def bridge_cache_reuses_prefix(model, tokens):
    """Whether the host's own KV-cache entry point (prefix with
    ``return_type="logits_and_cache"``, then the suffix with ``past_key_values``) gives the
    logits of the whole sequence: the route a prefix reuse would take through the Bridge.
    Returns (works, max |difference|, cached positions after the prefix)."""
    import warnings

    p = tokens.shape[1] // 2
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' past_key_values -> cache rename
        full = model(tokens)
        _, cache = model(tokens[:, :p], return_type="logits_and_cache")
        cached = cache.get_seq_length() if cache is not None else 0
        suffix = model(tokens[:, p:], past_key_values=cache)
    diff = float((suffix - full[:, p:]).abs().max())
    return diff < 1e-4, diff, cached


def timed(fn, repeat):
    out, times = None, []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (resource.getpagesize() // 1024)


def memory_child(kind, n_pos, quick):
    from rope_behavior import RopeSpec
    from rope_behavior.scoring.scorer import score_heads

    model = build(64 if quick else 256, 2, 4, 512, n_pos)
    RopeSpec.from_model(model)  # the spec's probe forward is not part of the measurement
    tokens = torch.randint(0, 512, (1, n_pos), generator=torch.Generator().manual_seed(0))
    import threading

    before, peak_seen, done = _rss_kib(), [0], threading.Event()

    def sample():  # current RSS sampled every millisecond while the call runs
        while not done.is_set():
            peak_seen[0] = max(peak_seen[0], _rss_kib())
            time.sleep(0.001)

    th = threading.Thread(target=sample)
    th.start()
    with torch.no_grad():
        if kind == "plain":
            model(tokens)
        else:
            score_heads(model, tokens, block_size=8, n_swaps=16)
    done.set()
    th.join()
    print(json.dumps({"peak_kib": max(peak_seen[0], _rss_kib()) - before}))


def peak(kind, n_pos, quick):
    args = [sys.executable, __file__, "--memory-child", kind, "--n-pos", str(n_pos)] + (["--quick"] if quick else [])
    res = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_kib"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke version")
    ap.add_argument("--memory-child", choices=["plain", "keys"], help=argparse.SUPPRESS)
    ap.add_argument("--n-pos", type=int, default=4096, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help="torch device (cuda: (d) is skipped)")
    ap.add_argument("--repeat", type=int, default=None, help="timings per call (default 3; quick 1)")
    ap.add_argument("--only-ab", action="store_true", help="measure (a) and (b) only")
    a = ap.parse_args()
    if a.memory_child:
        memory_child(a.memory_child, a.n_pos, a.quick)
        return
    from common import interleaved_timings

    from rope_behavior import RopeSpec
    from rope_behavior.model.adapters import adapter_for
    from rope_behavior.scoring.scorer import score_heads

    q = a.quick
    d_model, n_layers, n_heads, vocab = (64, 2, 4, 256) if q else (512, 8, 8, 4096)
    batch, n_pos, repeat = (4, 64, 1) if q else (16, 256, 3)
    dev = torch.device(a.device)
    repeat_c = repeat if dev.type != "cpu" else 1  # (c) takes minutes per call on a CPU
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; model d_model={d_model} "
          f"layers={n_layers} heads={n_heads} vocab={vocab}; tokens {batch}x{n_pos}")
    model = build(d_model, n_layers, n_heads, vocab, max(n_pos, 64), device=dev)
    RopeSpec.from_model(model)
    tokens = torch.randint(0, vocab, (batch, n_pos), generator=torch.Generator().manual_seed(0)).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    kw = dict(block_size=8, n_swaps=16, seed=0)

    def plain():
        with torch.no_grad():
            out = model(tokens)
        sync()
        return out

    t = interleaved_timings({
        "plain": plain,
        "keys": lambda: score_heads(model, tokens, **kw),
        "all": lambda: score_heads(model, tokens, query_positions="all", **kw),
        "all_start": lambda: score_heads(model, tokens, query_positions="all", align="start", **kw),
    }, a.repeat or repeat)
    t_plain, t_keys, t_all = t["plain"], t["keys"], t["all"]
    print(f"plain forward            {t_plain:8.3f} s")
    print(f"(a) keys, last query     {t_keys:8.3f} s   ratio {t_keys / t_plain:6.2f}  (target <= 1.5)")
    print(f"(b) keys, all queries    {t_all:8.3f} s   ratio {t_all / t_plain:6.2f}  (target <= 4; "
          "blocks aligned to each query: a tiling per query)")
    print(f"    align='start'        {t['all_start']:8.3f} s   ratio {t['all_start'] / t_plain:6.2f}  "
          "(one tiling for all queries)")
    if a.only_ab:
        return
    n_seq = batch * (kw["n_swaps"] + 1)
    auto = adapter_for(model).sequences_per_forward(n_pos, batch)
    t_single, hs = timed(lambda: score_heads(model, tokens, mode="tokens", sequences_per_forward=batch, **kw), repeat_c)
    print(f"(c) tokens, one forward per swap ({batch} seq/forward): {t_single:8.3f} s  "
          f"[the default here: {auto} seq/forward]")
    for bs in sorted({64, min(auto, n_seq), n_seq} - {batch}):
        t_b, hb = timed(lambda bs=bs: score_heads(model, tokens, mode="tokens", sequences_per_forward=bs, **kw), repeat_c)
        diff = max(float((getattr(hb, k) - getattr(hs, k)).nan_to_num().abs().max())
                   for k in ("s_pos", "s_sym", "mass_moved"))
        same = all(torch.allclose(getattr(hb, k), getattr(hs, k), atol=1e-5, equal_nan=True)
                   for k in ("s_pos", "s_sym", "mass_moved"))
        print(f"    batched, {bs:4d} seq/forward: {t_b:8.3f} s; speed-up {t_single / t_b:5.2f}x "
              f"(target >= 3); same results: {same} (max difference {diff:.1e})")
    print(f"    one-forward-per-swap / plain forward: {t_single / t_plain:5.2f} "
          f"(floor: {kw['n_swaps'] + 1} forwards of the batch)")
    reuse = prefix_reuse_bound(model.cfg, n_pos, hs)
    print(f"    FLOP bounds where a forward is compute-bound (as on a CPU): batching 1.00x "
          f"(it runs the same FLOPs); reusing each variant's unchanged prefix (not built) {reuse:.2f}x")
    works, diff, cached = bridge_cache_reuses_prefix(model, tokens[:2])
    print(f"    the Bridge's KV cache reuses a prefix: {works} (cached positions after the prefix: "
          f"{cached}; max |suffix logits - whole-sequence logits| = {diff:.1e})")
    if dev.type != "cpu":
        print("(d) skipped: it measures CPU RSS")
        return
    mem_pos = 512 if q else 4096
    p_plain, p_keys = peak("plain", mem_pos, q), peak("keys", mem_pos, q)
    print(f"(d) peak RSS growth at {mem_pos} tokens: plain {p_plain / 1024:.1f} MiB, keys "
          f"{p_keys / 1024:.1f} MiB, ratio {p_keys / max(p_plain, 1):5.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
