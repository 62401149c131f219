"""What ``scripts/train_lm.py`` measures on the trained language model (see its docstring).

``quick_scores`` monitors training on the raw Hugging Face model; ``measure`` measures the
saved folder loaded as users load it (``rope_behavior.data.shipped_lm.load_lm_folder``);
``markdown_table`` renders the JSON's measurements for the README.
"""

import math
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPEAT_LEN = 64
"""Length of the random sequence ``r`` of the induction prompts ``BOS + r + r``."""
N_REPEAT = 32
REPEAT_SEED = 1234
N_SPECIAL = 3
BOS = 0
IDENTIFIABLE = 0.5
"""A head counts as identifiable when at least this share of its prompts' rows is (the
rule ``behavior_frequency_correspondence`` uses to let a head into its statistic)."""


def repeated_tokens(vocab_size: int, n: int = N_REPEAT, length: int = REPEAT_LEN) -> torch.Tensor:
    """``[n, 1 + 2 * length]``: BOS, then ``length`` random non-special tokens, twice."""
    gen = torch.Generator().manual_seed(REPEAT_SEED)
    r = torch.randint(N_SPECIAL, vocab_size, (n, length), generator=gen)
    return torch.cat([torch.full((n, 1), BOS), r, r], 1)


def previous_token_score(pattern: torch.Tensor) -> torch.Tensor:
    """``[batch, head, q, k]`` -> ``[head]``: ``head_detector``'s previous-token score
    (error measure "mul", nothing excluded): per prompt, the attention on key ``n - 1``
    summed over the rows, over the whole pattern's mass (one per row), then the mean over
    prompts."""
    return (pattern.diagonal(offset=-1, dim1=-2, dim2=-1).sum(-1) / pattern.shape[-2]).mean(0)


def previous_token_score_no_bos(pattern: torch.Tensor) -> torch.Tensor:
    """``[batch, head, q, k]`` -> ``[head]``: ``head_detector``'s previous-token score with
    ``exclude_bos=True`` (error measure "mul"): per prompt, the attention on key ``n - 1``
    over all the attention not paid to BOS (key 0 zeroed first), then the mean over
    prompts. A head that parks its spare attention on BOS (an attention sink) is measured
    on the rest."""
    on_prev = pattern.diagonal(offset=-1, dim1=-2, dim2=-1)[..., 1:].sum(-1)  # rows n >= 2
    off_bos = pattern[..., 1:].sum((-2, -1))
    return (on_prev / off_bos).mean(0)


def induction_score(pattern: torch.Tensor, length: int = REPEAT_LEN) -> torch.Tensor:
    """``[batch, head, q, k]`` on ``BOS + r + r`` -> ``[head]``: mean attention from the second
    copy's token ``1 + length + j`` to ``2 + j``, the token after its first occurrence."""
    diag = pattern.diagonal(offset=-(length - 1), dim1=-2, dim2=-1)  # rows length - 1 ..
    return diag[..., 2:].mean((0, -1))  # rows 1 + length .. 2 * length


def quick_scores(
    model: Any, windows: torch.Tensor, nbytes: torch.Tensor, vocab_size: int, device: str
) -> dict[str, float]:
    """Held-out bits/byte on ``windows`` and the best previous-token / induction scores
    (training monitor; raw HF model with eager attention)."""

    def logits(x: torch.Tensor) -> torch.Tensor:
        return model(input_ids=x.to(device)).logits

    with torch.no_grad():
        bpb = bits_per_byte(logits, windows, nbytes)["bits_per_byte"]
        att_text = model(input_ids=windows[:8].to(device), output_attentions=True).attentions
        att_rep = model(
            input_ids=repeated_tokens(vocab_size, n=8).to(device), output_attentions=True
        ).attentions
    prev = torch.stack([previous_token_score(a.float().cpu()) for a in att_text])
    ind = torch.stack([induction_score(a.float().cpu()) for a in att_rep])
    return {
        "val_bits_per_byte": bpb,
        "max_previous_token": float(prev.max()),
        "max_induction": float(ind.max()),
    }


def eval_windows(stream: torch.Tensor, context: int, limit: int | None = None) -> torch.Tensor:
    """Non-overlapping ``[n, context]`` windows of a stream (BOS + ``context - 1`` tokens):
    every stream token is predicted once (the tail shorter than a window is dropped)."""
    n = context - 1
    k = stream.numel() // n if limit is None else min(limit, stream.numel() // n)
    rows = stream[: k * n].view(k, n)
    return torch.cat([torch.full((k, 1), BOS), rows], 1)


def bits_per_byte(
    logits_fn: Any, windows: torch.Tensor, nbytes: torch.Tensor, batch_size: int = 32
) -> dict[str, float]:
    """Summed next-token loss over every non-BOS token, divided by ln 2 and by the bytes
    those tokens stand for."""
    nats, n_tok, n_bytes = 0.0, 0, 0
    with torch.no_grad():
        for i in range(0, windows.shape[0], batch_size):
            x = windows[i : i + batch_size]
            logits = logits_fn(x)[:, :-1].float()
            target = x[:, 1:].to(logits.device)
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
            )
            nats += float(nll)
            n_tok += target.numel()
            n_bytes += int(nbytes[x[:, 1:]].sum())
    return {
        "bits_per_byte": nats / math.log(2) / max(n_bytes, 1),
        "nats_per_token": nats / max(n_tok, 1),
        "tokens": n_tok,
        "bytes": n_bytes,
    }


def _patterns(bridge: Any, tokens: torch.Tensor, batch_size: int = 16) -> list[torch.Tensor]:
    n_layers = bridge.cfg.n_layers
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    parts: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    with torch.no_grad():
        for i in range(0, tokens.shape[0], batch_size):
            _, cache = bridge.run_with_cache(tokens[i : i + batch_size], names_filter=names)
            for layer, name in enumerate(names):
                parts[layer].append(cache[name].float().cpu())
    return [torch.cat(p) for p in parts]


def held_out_prompts(val_stream: torch.Tensor, context: int, n: int) -> torch.Tensor:
    """``n`` of the non-overlapping held-out windows (BOS + ``context - 1`` tokens), evenly
    spaced over the held-out stream."""
    windows = eval_windows(val_stream, context)
    idx = torch.linspace(0, windows.shape[0] - 1, n).round().long()
    return windows[idx]


def _f(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else round(x, 4)


def measure(
    folder: Path, val_stream: torch.Tensor, nbytes: torch.Tensor, cfg: Any, device: str, n: int
) -> dict[str, Any]:
    import rope_behavior as rb
    from rope_behavior.data.shipped_lm import load_lm_folder

    bridge = load_lm_folder(folder, device=device)
    windows = eval_windows(val_stream, cfg.context)
    val = bits_per_byte(lambda x: bridge(x.to(device)), windows, nbytes)
    prompts = held_out_prompts(val_stream, cfg.context, n).to(device)
    patterns = _patterns(bridge, prompts)
    prev = torch.stack([previous_token_score(p) for p in patterns])
    prev_nb = torch.stack([previous_token_score_no_bos(p) for p in patterns])
    rep = repeated_tokens(cfg.vocab_size).to(device)
    ind = torch.stack([induction_score(p) for p in _patterns(bridge, rep)])
    scores = rb.score_heads(bridge, prompts)
    summary = scores.mean()
    usage = rb.frequency_usage(rb.capture(bridge, prompts))
    corr = rb.behavior_frequency_correspondence(scores, usage)
    heads = []
    for li, layer in enumerate(summary.layers):
        for h in range(prev.shape[1]):
            heads.append(
                {
                    "layer": layer,
                    "head": h,
                    "previous_token": _f(prev[layer, h]),
                    "previous_token_no_bos": _f(prev_nb[layer, h]),
                    "induction": _f(ind[layer, h]),
                    "s_pos": _f(summary.s_pos_mean[li, h]),
                    "s_pos_ci": [_f(summary.s_pos_lo[li, h]), _f(summary.s_pos_hi[li, h])],
                    "s_sym": _f(summary.s_sym_mean[li, h]),
                    "s_sym_ci": [_f(summary.s_sym_lo[li, h]), _f(summary.s_sym_hi[li, h])],
                    "identifiable_fraction": _f(summary.identifiable_fraction[li, h]),
                    "swapped_mass": _f(summary.swapped_mass[li, h]),
                    "centroid": _f(usage.centroid[usage.layers.index(layer), h]),
                }
            )
    lo, hi = getattr(corr, "rho_ci", (math.nan, math.nan))
    return {
        "val": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in val.items()},
        "prompts": {
            "n": int(prompts.shape[0]),
            "tokens": int(prompts.shape[1]),
            "source": "held-out windows, evenly spaced",
        },
        "induction_prompts": {
            "n": int(rep.shape[0]),
            "repeat_len": REPEAT_LEN,
            "seed": REPEAT_SEED,
        },
        "score_heads": {
            "call": "score_heads(model, prompts) with its defaults; .mean()",
            "level": summary.level,
            "n_swaps": summary.n_swaps,
            "n_block_pairs": summary.n_block_pairs,
        },
        "heads": heads,
        "correspondence": {
            "call": "behavior_frequency_correspondence(scores, frequency_usage(capture(model, prompts)))",
            "rho": _f(corr.rho),
            "p_value": _f(corr.p_value),
            "rho_ci": [_f(lo), _f(hi)],
            "n_heads": int(corr.n_heads),
            "n_heads_total": int(getattr(corr, "n_heads_total", len(heads))),
            "caveat": str(getattr(corr, "caveat", "")),
        },
        "findings": findings(heads),
    }


def _identifiable(h: dict[str, Any]) -> bool:
    return (h["identifiable_fraction"] or 0.0) >= IDENTIFIABLE and h["s_pos"] is not None


def findings(heads: list[dict[str, Any]]) -> dict[str, Any]:
    """The best previous-token head and the most content-driven identifiable head, and
    whether they meet the bars stated in the training brief (reported, never tuned)."""
    ok = [h for h in heads if _identifiable(h)]
    prev = max(heads, key=lambda h: h["previous_token"] or 0.0)
    ind = max(heads, key=lambda h: h["induction"] or 0.0)
    content = max(ok, key=lambda h: h["s_sym"] - h["s_pos"], default=None)
    name = lambda h: None if h is None else f"L{h['layer']}H{h['head']}"  # noqa: E731
    return {
        "identifiable_heads": len(ok),
        "best_previous_token_head": name(prev),
        "best_induction_head": name(ind),
        "most_symbolic_identifiable_head": name(content),
        "positional_head_found": any(
            (h["previous_token"] or 0) >= 0.5 and h["s_pos"] >= 0.8 for h in ok
        ),
        "positional_head_found_bos_excluded": any(
            (h.get("previous_token_no_bos") or 0) >= 0.5 and h["s_pos"] >= 0.8 for h in ok
        ),
        "content_head_found": content is not None
        and content["s_sym_ci"][0] is not None
        and content["s_pos_ci"][1] is not None
        and content["s_sym_ci"][0] > content["s_pos_ci"][1],
    }


def markdown_table(info: dict[str, Any]) -> str:
    """The README table of a ``rope_behavior_lm.json``: one row per head, then the totals."""
    m, t = info["measured"], info["training"]
    c = t["config"]
    lines = [
        f"Shipped model: {c['n_layers']} layers, d_model {c['d_model']}, {c['n_heads']} heads "
        f"({c['n_kv_heads']} KV heads) of d_head {c['d_head']}, context {c['context']}, "
        f"BPE vocabulary {c['vocab_size']}; {t['tokens_seen']:,} training tokens in "
        f"{t['train_seconds'] / 60:.1f} min ({c['threads']} CPU thread(s)).",
        "",
        f"Held-out validation: **{m['val']['bits_per_byte']:.3f} bits per byte** "
        f"({m['val']['bytes']:,} bytes).",
        "",
        "| head | previous-token | … BOS excluded | induction | s_POS [95% CI] | s_SYM [95% CI] "
        "| identifiable | centroid |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ci(v: Any, b: list[Any]) -> str:
        return "n/a" if v is None else f"{v:.2f} [{b[0]:.2f}, {b[1]:.2f}]"

    for h in m["heads"]:
        lines.append(
            f"| L{h['layer']}H{h['head']} | {h['previous_token']:.2f} | "
            f"{h['previous_token_no_bos']:.2f} | {h['induction']:.2f} | "
            f"{ci(h['s_pos'], h['s_pos_ci'])} | {ci(h['s_sym'], h['s_sym_ci'])} | "
            f"{h['identifiable_fraction']:.2f} | {h['centroid']:.2f} |"
        )
    k = m["correspondence"]
    p = m["prompts"]
    lines += [
        "",
        f"Scores on {p['n']} held-out prompts of {p['tokens']} tokens (query: the last token; "
        f"BOS excluded; identifiable = share of prompts whose row is). Correspondence of "
        f"s_POS - s_SYM with the frequency centroid: rho = {k['rho']}, permutation "
        f"p = {k['p_value']}, on {k['n_heads']} of {k['n_heads_total']} heads"
        + (f" (caveat: {k['caveat']})" if k["caveat"] else "")
        + ".",
    ]
    return "\n".join(lines)
