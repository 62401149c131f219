"""Cost of the main job, as ratios to a plain forward over the same batches, measured side by
side in one run (machines are noisy: each repeat times the forward and every job back to
back, and each figure is the median over --repeat repeats of that repeat's ratio).

    python bench/analyze.py              # both models at the issue's sizes (minutes, 2 cores)
    python bench/analyze.py --only lm    # the shipped LM only
    python bench/analyze.py --quick      # a tiny smoke version

Models: (lm) the shipped language model (rope_behavior/lm), 64 held-out prompts of 128
tokens, right-padded, in batches of 8 (analyze's default); (llama) a random Llama-style
TransformerBridge (d_model 512, 8 layers, 8 heads, intermediate 1376, vocab 4096, fp32),
16 random prompts of 1024 tokens in batches of 4.

Printed per model, each over the same batches:
  capture / forward                       (one scoped forward that keeps q and k)
  frequency_usage / forward               target <= 1.0  (usage of the captured batches)
  analyze(per_pair=False) / forward       target <= 2.0  (scores + usage, one forward a batch)
and the same two with compiled=True (usage summed by the kernel torch.compile builds; the
compilation itself runs in the warm-up, before anything is timed), and the FLOP bound of
frequency usage: the arithmetic of the per-pair terms on attended entries (2 multiplies,
an add, an abs and an accumulate per pair) over the forward's.
"""

import argparse
import statistics
import time

import torch

import rope_behavior as rb


def build_llama(d_model: int, n_layers: int, n_heads: int, vocab: int, n_ctx: int) -> object:
    import transformers as T
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    cfg = T.LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=int(d_model * 2.6875),
                        num_hidden_layers=n_layers, num_attention_heads=n_heads,
                        num_key_value_heads=n_heads, max_position_embeddings=n_ctx,
                        tie_word_embeddings=False)  # fmt: skip
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = T.LlamaForCausalLM(cfg).eval()
    return build_bridge_from_module(hf, "LlamaForCausalLM", hf_config=hf.config)


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def flops(model: object, spec: rb.RopeSpec, mask: torch.Tensor) -> tuple[float, float]:
    """(forward FLOPs, frequency-usage FLOPs) over the batches of ``mask`` [prompt, pos]."""
    cfg = model.cfg
    d, hd, heads = cfg.d_model, spec.d_head, spec.n_heads
    kv = spec.n_kv_heads
    d_mlp = getattr(cfg, "d_mlp", None) or 4 * d
    tokens = float(mask.sum())
    lengths = mask.sum(1).double()
    attended = float((lengths * (lengths + 1) / 2).sum())  # causal entries, every prompt
    per_token = spec.n_layers * (2 * d * heads * hd + 2 * d * kv * hd + 3 * d * d_mlp)
    per_token += d * cfg.d_vocab
    forward = 2 * (tokens * per_token + spec.n_layers * 2 * heads * hd * attended)
    usage = spec.n_layers * heads * attended * spec.n_pairs * 5
    return forward, usage


def bench(name: str, model: object, tokens: torch.Tensor, mask: torch.Tensor, batch: int,
          repeat: int) -> dict[str, float]:  # fmt: skip
    spec = rb.RopeSpec.from_model(model)
    batches = [(tokens[i : i + batch], mask[i : i + batch]) for i in range(0, len(tokens), batch)]

    def forward() -> None:
        with torch.no_grad():
            for t, m in batches:
                model(t, attention_mask=m)

    def capture_all() -> list:
        return [rb.capture(model, t, attention_mask=m) for t, m in batches]

    def usage_of(caps: list) -> object:
        return rb.FrequencyUsage.merge([rb.frequency_usage(c) for c in caps])

    def usage_compiled(caps: list) -> object:
        return rb.FrequencyUsage.merge([rb.frequency_usage(c, compiled=True) for c in caps])

    def analyze(compiled: bool = False) -> object:
        return rb.analyze(model, tokens, attention_mask=mask, batch_size=batch, per_pair=False,
                          compiled=compiled)  # fmt: skip

    forward()  # warm-up: first-call costs (the adapter's probe, allocator) are not measured
    analyze()
    t0 = time.perf_counter()
    analyze(compiled=True)  # compiles the usage kernel (once per process and shape family)
    t_compile = time.perf_counter() - t0
    usage_compiled(capture_all())  # captured tensors have other strides: their own compile
    # interleaved: each repeat times the forward and every job back to back, and the ratio
    # of each repeat is taken before the median (a slow spell hits both sides of a ratio)
    ratios: dict[str, list[float]] = {k: [] for k in ("cap", "use", "ana", "usec", "anac")}
    fwd_times = []
    for _ in range(repeat):
        t_fwd, _ = timed(forward, 1)
        t_cap, caps = timed(capture_all, 1)
        t_use, _ = timed(lambda caps=caps: usage_of(caps), 1)
        t_ana, _ = timed(analyze, 1)
        t_usec, _ = timed(lambda caps=caps: usage_compiled(caps), 1)
        t_anac, _ = timed(lambda: analyze(compiled=True), 1)
        fwd_times.append(t_fwd)
        pairs = (("cap", t_cap), ("use", t_use), ("ana", t_ana), ("usec", t_usec), ("anac", t_anac))
        for key, t in pairs:
            ratios[key].append(t / t_fwd)
    t_fwd = statistics.median(fwd_times)
    f_fwd, f_use = flops(model, spec, mask)
    print(f"\n{name}: {len(tokens)} prompts x {tokens.shape[1]} tokens in batches of {batch}; "
          f"plain forward {t_fwd:.3f} s")  # fmt: skip
    rows = {
        "capture / forward": statistics.median(ratios["cap"]),
        "frequency_usage / forward (target <= 1.0)": statistics.median(ratios["use"]),
        "analyze(per_pair=False) / forward (target <= 2.0)": statistics.median(ratios["ana"]),
        "frequency_usage(compiled=True) / forward": statistics.median(ratios["usec"]),
        "analyze(per_pair=False, compiled=True) / forward": statistics.median(ratios["anac"]),
    }
    for label, ratio in rows.items():
        print(f"  {label:52s} {ratio:6.2f}")
    print(f"  FLOP bound of frequency usage (its arithmetic / the forward's)  {f_use / f_fwd:6.3f}")
    print(f"  (first analyze(compiled=True), compiling the kernel: {t_compile:.1f} s)")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["lm", "llama"])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, repeat {args.repeat} (medians)")
    if args.only in (None, "lm"):
        model = rb.load_shipped_lm()
        n, ctx = (8, 32) if args.quick else (64, 128)
        tokens, mask = rb.tokenize_prompts(model, rb.heldout_texts()[:n], context=ctx)
        bench("shipped LM", model, tokens, mask, 8, args.repeat)
    if args.only in (None, "llama"):
        if args.quick:
            model, (n, pos, batch) = build_llama(128, 2, 4, 512, 128), (4, 128, 2)
        else:
            model, (n, pos, batch) = build_llama(512, 8, 8, 4096, 1024), (16, 1024, 4)
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(3, model.cfg.d_vocab, (n, pos), generator=g)
        bench("random Llama", model, tokens, torch.ones_like(tokens), batch, args.repeat)


if __name__ == "__main__":
    main()
