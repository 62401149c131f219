"""The numbers of docs/method.md §9 on the shipped LM (about 30 s on 2 CPU cores).

High-norm bands measured on 32 held-out prompts, the loss with NoPE below them on 32
others, the same loss with NoPE on the bands themselves, on every pair and on the pairs
that turn less than once over the context (for scale), and the pairs' spectral entropy.

    .venv/bin/python scripts/band_analysis.py
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rope_behavior as rb

CONTEXT = 128


def main() -> None:
    model = rb.load_shipped_lm()
    spec = rb.RopeSpec.from_model(model)
    texts = rb.heldout_texts(n=64)
    half = len(texts) // 2
    fit, fit_mask = rb.tokenize_prompts(model, texts[:half], context=CONTEXT)
    held, held_mask = rb.tokenize_prompts(model, texts[half:], context=CONTEXT)
    captured = rb.capture(model, fit, attention_mask=fit_mask)
    usage = rb.frequency_usage(captured)
    bands = rb.high_norm_bands(usage)
    print(bands)
    print(bands.to_frame().to_string())
    ablation = rb.nope_below_band(model, held, bands, attention_mask=held_mask)
    print(ablation)

    def loss(values: list[rb.AngleOverride]) -> float:
        with torch.no_grad():
            logits = rb.run_with_interventions(model, held, values, attention_mask=held_mask)
        valid = (held_mask[:, 1:] * held_mask[:, :-1]).bool()
        pred, target = logits[:, :-1].double()[valid], held[:, 1:][valid]
        return float(torch.nn.functional.cross_entropy(pred, target))

    on_band = []  # the bands themselves: under GQA the union over a KV group's heads
    for i, layer in enumerate(bands.layers):
        for g in range(spec.n_kv_heads):
            heads = spec.query_heads_of(g)
            pairs = torch.nonzero(bands.in_band[i, list(heads)].any(0)).flatten().tolist()
            if pairs:
                on_band.append(rb.AngleOverride(layer=layer, heads=heads, pairs=pairs, omega=0.0))
    slow = spec.slow_pairs(CONTEXT)
    on_slow = [
        rb.AngleOverride(layer=layer, pairs=torch.nonzero(slow[layer]).flatten().tolist())
        for layer in range(spec.n_layers)
        if bool(slow[layer].any())
    ]
    every = [rb.AngleOverride(layer=layer) for layer in range(spec.n_layers)]
    print(f"slow pairs over {CONTEXT} tokens: {torch.nonzero(slow[0]).flatten().tolist()}")
    print(f"loss, NoPE on the bands: {loss(on_band):.4f}")
    print(f"loss, NoPE on the slow pairs: {loss(on_slow):.4f}")
    print(f"loss, NoPE on every pair: {loss(every):.4f}")
    spectra = rb.pair_spectra(captured, skip=1)
    print(spectra)
    frame = spectra.to_frame(usage)
    print(frame.groupby("pair")[["q_entropy", "k_entropy", "logit_usage"]].mean().to_string())
    rho = frame[["q_entropy", "logit_usage"]].corr(method="spearman").iloc[0, 1]
    print(f"Spearman q_entropy vs logit_usage over head pairs: {rho:.3f}")


if __name__ == "__main__":
    main()
