"""The text and the HTML card of each result class, read by attribute (the package imports
nothing else from rope_behavior, so every layer can call it)."""

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from rope_behavior.display import draw
from rope_behavior.display.draw import GREY, MAX_CELLS, POSITIONAL, SYMBOLIC, ints, num, pack

__all__ = ["RENDERERS"]

_LINES = ("#1f4e79", "#e8590c", "#2b8a3e", "#862e9c")
_PAIR_AXIS = "pair index (0 = highest frequency)"


def _shape(dims: Sequence[str], shape: Sequence[int]) -> str:
    return " × ".join(f"{n} {d}s" for d, n in zip(dims, shape))


def _behaviour_map(d: Tensor, layers: Sequence[int], title: str) -> str:
    """Heatmap of ``s_pos - s_sym`` [layer, head]: red symbolic, blue positional, the colour
    range symmetric about 0."""
    fin = d[~torch.isnan(d)]
    top = max(float(fin.abs().max()) if fin.numel() else 1.0, 1e-6)
    rows, cols = [f"L{layer}" for layer in layers], [str(h) for h in range(d.shape[1])]
    legend = (f"−{num(top, 2)} symbolic", f"+{num(top, 2)} positional")
    return draw.heatmap(d, rows, cols, lo=-top, hi=top, colour=draw.diverging, title=title,
                        legend=legend)  # fmt: skip


# -- RopeSpec -------------------------------------------------------------------------------


def _spec_facts(s: Any) -> list[tuple[str, str]]:
    """``(label, text)`` of the facts beyond the shapes."""
    w = s.wavelength
    fin = w[torch.isfinite(w) & (w > 0)]
    scales = sorted(set(s.attn_scales))
    caps = sorted({c for c in s.logit_softcaps if c is not None})
    windows = [x for x in s.sliding_windows if x is not None]
    nope = sum(src == "nope" for src in s.omega_source)
    scale = num(scales[0], 4) + (f"-{num(scales[-1], 4)} by layer" if len(scales) > 1 else "")
    facts = [
        ("wavelength", f"wavelength {num(fin.min())}-{num(fin.max())} tokens"
         if fin.numel() else "no pair rotates"),
        ("attention scale", f"attn_scale={scale}"),
        ("soft-cap", f"softcap={'/'.join(num(c, 4) for c in caps)}" if caps else ""),
        ("sliding window", f"sliding window {'/'.join(map(str, sorted(set(windows))))} on "
         f"{len(windows)} of {s.n_layers} layers" if windows else ""),
        ("NoPE", f"{nope} NoPE layers" if nope else ""),
        ("q, k read from", "read from " + ("rotated hooks" if s.reads_rotated_hooks
                                           else "pre-rotation hooks + model rotation")),
    ]  # fmt: skip
    return [(k, v) for k, v in facts if v]


def _spec_text(s: Any) -> str:
    head = [f"{s.architecture}: {s.n_layers} layers", f"{s.n_heads} heads / {s.n_kv_heads} kv",
            f"d_head={s.d_head}"]  # fmt: skip
    rotary = f"rotary_dim={s.rotary_dim} ({s.n_pairs} {s.pair_layout} pairs)"
    return pack("RopeSpec", [head, [rotary, *(v for _, v in _spec_facts(s))]])


def _spec_html(s: Any) -> str:
    groups: dict[tuple[float, ...], list[int]] = {}  # layers with the same frequencies
    for layer, om in enumerate(s.omega.tolist()):
        groups.setdefault(tuple(om), []).append(layer)
    series, logs = [], []
    for colour, (om, layers) in zip(_LINES, groups.items()):
        pts = [(p, math.log10(2 * math.pi / o)) for p, o in enumerate(om) if o > 0]
        logs += [y for _, y in pts]
        name = "every layer" if len(groups) == 1 else f"layers {ints(layers, 30)}"
        series.append(("line", colour, pts, name))
    lo, hi = (math.floor(min(logs)), math.ceil(max(logs))) if logs else (0, 1)
    ticks = [(float(k), str(10**k) if 0 <= k < 4 else f"1e{k}")
             for k in range(lo, hi + 1, max(1, (hi - lo) // 4))]  # fmt: skip
    more = f" ({len(groups) - len(_LINES)} more layer groups)" if len(groups) > len(_LINES) else ""
    chart = draw.chart(series, x_label=_PAIR_AXIS, y_label="wavelength (tokens, log)",
                       x_range=(0, max(1, s.n_pairs - 1)), y_range=(lo, max(hi, lo + 1)),
                       y_ticks=ticks, title="wavelength of each pair" + more)  # fmt: skip
    rows = [["layers", s.n_layers], ["query / KV heads", f"{s.n_heads} / {s.n_kv_heads}"],
            ["d_head", s.d_head], ["rotary_dim", s.rotary_dim],
            ["pairs", f"{s.n_pairs} ({s.pair_layout} layout)"],
            *([k, v.split("=")[-1].removeprefix(k + " ").removeprefix("read from ")]
              for k, v in _spec_facts(s))]  # fmt: skip
    table = draw.table(["", ""], rows, label_column=True)
    return draw.card(f"RopeSpec · {s.architecture}", [], [table, chart])


# -- HeadScores and ScoreSummary ------------------------------------------------------------


def _scores_text(hs: Any) -> str:
    return pack("HeadScores", [
        [f"mode={hs.mode!r}", f"dims={hs.dims}", f"shape={tuple(hs.s_pos.shape)}"],
        [f"layers={ints(hs.layers)}", f"swaps={len(hs.swaps)} of {hs.n_block_pairs} block pairs",
         f"block_size={hs.block_size}", f"align={hs.align!r}"],
        [f"mean s_pos={num(draw.nanmean(hs.s_pos))}", f"s_sym={num(draw.nanmean(hs.s_sym))}",
         f"identifiable={num(draw.nanmean(hs.identifiable), 2)}"],
    ])  # fmt: skip


def _scores_html(hs: Any) -> str:
    facts = [f"{_shape(hs.dims, hs.s_pos.shape)}; mode {hs.mode!r}",
             f"swaps {len(hs.swaps)} of {hs.n_block_pairs} block pairs, block_size "
             f"{hs.block_size}, align {hs.align!r}, tau {num(hs.tau)}, exclude_keys "
             f"{list(hs.exclude_keys)}",
             f"a row is identifiable when separation ≥ {num(hs.identifiability_threshold)} and "
             f"swapped mass ≥ {num(hs.min_swapped_mass)}"]  # fmt: skip

    def per_layer(x: Tensor) -> Tensor:
        return draw.nanmean(x.double().movedim(1, 0), 1)

    pos, sym, ident = per_layer(hs.s_pos), per_layer(hs.s_sym), per_layer(hs.identifiable)
    nan = per_layer(torch.isnan(hs.s_pos))
    rows = [[layer, float(pos[i]), float(sym[i]), float(ident[i]), float(nan[i])]
            for i, layer in enumerate(hs.layers)]  # fmt: skip
    keep, at, cut = draw.capped(len(rows))
    rows = [rows[i] for i in keep]
    note = "identifiable, NaN: shares of score rows"
    columns = ["layer", "mean s_pos", "mean s_sym", "identifiable", "NaN"]
    table = draw.table(columns, rows, cut_at=at, cut=cut, note=note)
    d = draw.nanmean((hs.s_pos.double() - hs.s_sym.double()).movedim(0, -1), 2)
    title = "mean s_pos − s_sym (rows: layer, columns: head)"
    return draw.card("HeadScores", facts, [table, _behaviour_map(d, hs.layers, title)])


def _summary_text(sm: Any) -> str:
    prompts = int(sm.n_prompts.max()) if sm.n_prompts.numel() else 0
    return pack("ScoreSummary", [
        [f"dims={sm.dims}", f"shape={tuple(sm.s_pos_mean.shape)}", f"layers={ints(sm.layers)}"],
        [f"prompts={prompts}", f"swaps={sm.n_swaps} of {sm.n_block_pairs} block pairs",
         f"{sm.n_boot} bootstrap draws", f"{sm.level:.0%} intervals"],
        [f"mean s_pos={num(draw.nanmean(sm.s_pos_mean))}",
         f"s_sym={num(draw.nanmean(sm.s_sym_mean))}",
         f"identifiable={num(draw.nanmean(sm.identifiable_fraction), 2)}"],
    ])  # fmt: skip


def _plane(sm: Any) -> str:
    """The positional–symbolic plane, a point per head (per query / pair when few)."""
    pos, sym = sm.s_pos_mean.double(), sm.s_sym_mean.double()
    title = "heads in the positional–symbolic plane"
    if pos.numel() > MAX_CELLS:  # one point per (layer, head): mean over query / pair
        pos, sym = draw.nanmean(pos, 2), draw.nanmean(sym, 2)
        title += f" (mean over {', '.join(sm.dims[2:])})"
    pts = list(zip(pos.flatten().tolist(), sym.flatten().tolist()))
    series = [
        ("dot", POSITIONAL, [p for p in pts if p[0] > p[1]], "s_pos > s_sym: positional"),
        ("dot", SYMBOLIC, [p for p in pts if p[0] <= p[1]], "s_sym ≥ s_pos: symbolic"),
    ]
    return draw.chart(series, x_label="s_POS", y_label="s_SYM", x_range=(0, 1), y_range=(0, 1),
                      guides=("diagonal",), title=title, size=(260, 250))  # fmt: skip


def _interval(mean: Any, lo: Any, hi: Any) -> str:
    return f"{draw.cell(mean)} [{draw.cell(lo, 2)}, {draw.cell(hi, 2)}]"


def _summary_html(sm: Any) -> str:
    df = sm.to_frame()
    df = df.assign(behavior=df["s_pos_mean"] - df["s_sym_mean"])
    ok = df[df["behavior"].notna()].sort_values("behavior", ascending=False, kind="stable")
    keep, at, cut = draw.capped(len(ok))
    lead = [c for c in ("layer", "head", "query_pos", "pair") if c in df.columns]
    rows = [[*(int(getattr(r, c)) for c in lead), _interval(r.s_pos_mean, r.s_pos_lo, r.s_pos_hi),
             _interval(r.s_sym_mean, r.s_sym_lo, r.s_sym_hi), r.behavior,
             r.identifiable_fraction, int(r.n_prompts)]
            for r in ok.iloc[keep].itertuples()]  # fmt: skip
    n_nan = len(df) - len(ok)
    note = (f"most positional first; [{sm.level:.0%} interval]; identifiable: share of prompts"
            + (f"; {n_nan} rows without a finite score" if n_nan else ""))  # fmt: skip
    shade = ["#eaf2fb" if r[len(lead) + 2] > 0 else "#fbeaea" for r in rows]
    columns = [*lead, "s_pos", "s_sym", "s_pos − s_sym", "identifiable", "prompts"]
    table = draw.table(columns, rows, note=note, shade=shade, cut_at=at, cut=cut)
    facts = [f"{_shape(sm.dims, sm.s_pos_mean.shape)}; swaps {sm.n_swaps} of "
             f"{sm.n_block_pairs} block pairs; {sm.n_boot} bootstrap draws over prompts and "
             "swaps"]  # fmt: skip
    return draw.card("ScoreSummary", facts, [table, _plane(sm)])


# -- FrequencyUsage -------------------------------------------------------------------------


def _usage_text(u: Any) -> str:
    c = u.centroid.double()
    _, n_h, n_p = u.logit_usage.shape
    lo, hi = num(c.nan_to_num(math.inf).min()), num(c.nan_to_num(-math.inf).max())
    return pack("FrequencyUsage", [
        [f"layers={ints(u.layers)}", f"{n_h} heads", f"{n_p} pairs", f"tokens={int(u.n_tokens)}"],
        [f"centroid (pair index) mean {num(draw.nanmean(c))}, range {lo}-{hi}",
         f"attention_weighted={u.attention_weighted}"],
    ])  # fmt: skip


def _usage_html(u: Any) -> str:
    n_l, n_h, n_p = u.logit_usage.shape
    c = u.centroid.detach().double().cpu()
    heat = draw.heatmap(c, [f"L{layer}" for layer in u.layers], [str(h) for h in range(n_h)],
                        lo=0, hi=max(1, n_p - 1), colour=draw.viridis,
                        title="frequency centroid (rows: layer, columns: head)",
                        legend=("pair 0 (high frequency)", f"pair {n_p - 1} (low)"))  # fmt: skip
    per_layer = u.logit_usage.detach().double().cpu().mean(1)  # [layer, pair]
    lines = ([("line", colour, list(enumerate(per_layer[i].tolist())), f"layer {layer}")
              for i, (colour, layer) in enumerate(zip(_LINES, u.layers))] if n_l <= len(_LINES)
             else [("line", _LINES[0], list(enumerate(per_layer.mean(0).tolist())),
                    f"mean over {n_l} layers")])  # fmt: skip
    chart = draw.chart(lines, x_label=_PAIR_AXIS, y_label="logit usage",
                       x_range=(0, max(1, n_p - 1)), y_range=(0, max(1e-9, float(per_layer.max()))),
                       title="logit usage of each pair, mean over heads")  # fmt: skip
    rows = [[layer, float(draw.nanmean(c[i])), float(c[i].min()), float(c[i].max()),
             int(per_layer[i].argmax())] for i, layer in enumerate(u.layers)]  # fmt: skip
    keep, at, cut = draw.capped(len(rows))
    rows = [rows[i] for i in keep]
    note = "centroid: usage-weighted mean pair index"
    columns = ["layer", "mean centroid", "min", "max", "most used pair"]
    table = draw.table(columns, rows, cut_at=at, cut=cut, note=note)
    facts = [f"{n_l} layers × {n_h} heads × {n_p} pairs, {int(u.n_tokens)} tokens, "
             f"attention_weighted={u.attention_weighted}"]  # fmt: skip
    return draw.card("FrequencyUsage", facts, [table, heat, chart])


# -- FrequencyCorrespondence ----------------------------------------------------------------


def _notes(c: Any) -> list[str]:
    """A disagreement between the test and the interval, and the caveat, where there are."""
    notes = [("note", getattr(c, "disagreement", "")), ("caveat", c.caveat)]
    return [f"{k}: {v}" for k, v in notes if v]


def _rho_items(c: Any) -> list[list[str]]:
    lo, hi = c.rho_ci
    how = "exact, all" if c.permutation_exact else "over"
    method = f" by {c.rho_ci_method}" if c.rho_ci_method else ""
    return [[f"rho={num(c.rho)}", f"p={num(c.p_value)} ({how} {c.n_permutations} permutations)"],
            [f"{c.confidence_level:.0%} CI [{num(lo)}, {num(hi)}]{method}",
             f"on {c.n_heads} of {c.n_heads_total} heads"], *([n] for n in _notes(c))]  # fmt: skip


def _corr_text(c: Any) -> str:
    first, *rest = _rho_items(c)
    return pack("FrequencyCorrespondence", [[f"layers={ints(c.layers)}", *first], *rest])


def _corr_blocks(c: Any) -> list[str]:
    lo, hi = c.rho_ci
    rows = [["Spearman rho", c.rho], ["p-value", c.p_value],
            ["permutations", f"{'all ' if c.permutation_exact else ''}{c.n_permutations}"],
            [f"{c.confidence_level:.0%} interval", f"[{num(lo)}, {num(hi)}]"],
            ["interval by", c.rho_ci_method or "–"],
            ["heads in the statistic", f"{c.n_heads} of {c.n_heads_total}"]]  # fmt: skip
    if c.pair_rho is not None:
        rows.append(["per-pair rho, median of heads", float(c.pair_rho.double().nanmedian())])
    blocks = [draw.table(["behaviour vs frequency", ""], rows, label_column=True)]
    if c.behavior is not None:
        b, x = c.behavior.double().flatten(), c.centroid.double().flatten()
        used = torch.zeros_like(b, dtype=torch.bool) if c.in_statistic is None else c.in_statistic
        used = used.flatten().tolist()
        pts = list(zip(x.tolist(), b.tolist()))
        fin = [v for v in x.tolist() if math.isfinite(v)] or [0.0]
        top = max([abs(v) for v in b.tolist() if math.isfinite(v)] + [1e-6])
        series = [("dot", _LINES[0], [p for p, u in zip(pts, used) if u],
                   f"in the statistic ({used.count(True)})"),
                  ("ring", GREY, [p for p, u in zip(pts, used) if not u],
                   f"left out of the statistic ({used.count(False)})")]  # fmt: skip
        blocks.append(draw.chart(series, x_label="frequency centroid (pair index)",
                                 y_label="s_pos − s_sym", guides=("zero",),
                                 x_range=(math.floor(min(fin)), math.ceil(max(fin))),
                                 y_range=(-top, top), size=(300, 250),
                                 title="behaviour vs frequency centroid, per head"))  # fmt: skip
    elif c.pair_rho is not None:
        rows_, cols = [f"L{layer}" for layer in c.layers], map(str, range(c.pair_rho.shape[1]))
        title = "rho of each head's pair curve with the pair index"
        blocks.append(draw.heatmap(c.pair_rho, rows_, list(cols), lo=-1, hi=1, title=title,
                                   colour=draw.diverging, legend=("rho −1", "+1")))  # fmt: skip
    return blocks


def _corr_html(c: Any) -> str:
    facts = [f"layers {ints(c.layers)}: each head's s_pos − s_sym against its frequency "
             "centroid (rho < 0: the high-frequency heads are the positional ones)"]  # fmt: skip
    return draw.card("FrequencyCorrespondence", facts, _corr_blocks(c), _notes(c))


# -- Analysis -------------------------------------------------------------------------------


def _analysis_text(a: Any) -> str:
    s, d = a.spec, a.summary_dict()
    n_all = a.summary.identifiable_fraction.numel()
    model = "" if a.model_name == s.architecture else f"{s.architecture}: "
    return pack("Analysis", [
        [repr(a.model_name), f"{model}{s.n_layers} layers x {s.n_heads} heads "
         f"({s.n_kv_heads} kv), {s.n_pairs} pairs"],
        [f"{a.n_prompts} prompts", f"{a.n_tokens} tokens", f"{a.seconds:.1f} s",
         f"swaps={d['swaps']} of {d['block_pairs']} block pairs",
         f"identifiable heads {d['identifiable_heads']} of {n_all}"],
        *_rho_items(a.correspondence),
    ])  # fmt: skip


def _analysis_html(a: Any) -> str:
    s, c, d = a.spec, a.correspondence, a.summary_dict()
    facts = [f"{s.architecture}: {s.n_layers} layers × {s.n_heads} heads ({s.n_kv_heads} KV), "
             f"{s.n_pairs} {s.pair_layout} pairs",
             f"{a.n_prompts} prompts, {a.n_tokens} tokens, {a.seconds:.1f} s; swaps "
             f"{d['swaps']} of {d['block_pairs']} block pairs, block_size {d['block_size']}; "
             f"identifiable heads {d['identifiable_heads']} of "
             f"{a.summary.identifiable_fraction.numel()}",
             "head classes (docs/method.md §4): " + ", ".join(
                 f"{n} {'pure ' if c in ('positional', 'symbolic') else ''}{c}"
                 for c, n in d["head_classes"].items())]  # fmt: skip
    rows, shade = [], []
    for kind, colour in (("positional", "#eaf2fb"), ("symbolic", "#fbeaea")):
        for h in d[f"most_{kind}"]:
            iv = [_interval(h[k], *h[k + "_interval"]) for k in ("s_pos", "s_sym")]
            rows.append([kind, h["layer"], h["head"], *iv, h["identifiable_fraction"],
                         h["purity"]])  # fmt: skip
            shade.append(colour)
    note = (f"most positional / symbolic identifiable heads off the uniform corner; "
            f"[{a.summary.level:.0%} interval]" if rows
            else "no identifiable head off the uniform corner")  # fmt: skip
    heads = draw.table(["", "layer", "head", "s_pos", "s_sym", "identifiable", "class"], rows,
                       shade=shade, note=note)  # fmt: skip
    blocks = _corr_blocks(c)
    return draw.card(f"Analysis · {a.model_name}", facts,
                     [*blocks, heads, _plane(a.summary)], _notes(c))  # fmt: skip


# -- FrequencyPatchingResult ----------------------------------------------------------------


def _patch_effect(r: Any) -> tuple[Tensor, str]:
    """Per condition, how far the patch moves the metric toward the run patched in (the
    normalised value when denoising, 1 minus it when noising; the raw value when the
    baselines are equal), and which of ``"normalized"`` / ``"value"`` it is read from."""
    if r.clean_baseline == r.corrupted_baseline:
        return r.values.double(), "value"
    n = r.normalized().double()
    return (n if r.direction == "denoising" else 1 - n), "normalized"


def _patch_text(r: Any) -> str:
    effect, kind = _patch_effect(r)
    flat = int(effect.flatten().nan_to_num(-math.inf).argmax())
    li, hi, bi = (int(i) for i in torch.unravel_index(torch.tensor(flat), effect.shape))
    norm = [f"normalized={num(r.normalized()[li, hi, bi])}"] if kind == "normalized" else []
    toward = "clean" if r.direction == "denoising" else "corrupted"
    return pack("FrequencyPatchingResult", [
        [r.direction, f"target={r.target!r}",
         f"{len(r.layers)} layers x {len(r.heads)} {r.head_axis}s x {len(r.bands)} bands"],
        [f"metric={r.metric}", f"clean={num(r.clean_baseline, 4)}",
         f"corrupted={num(r.corrupted_baseline, 4)}"],
        [f"most toward {toward}: layer {r.layers[li]} {r.head_axis} {r.heads[hi]} band "
         f"{r.bands[bi].name!r}", f"value={num(r.values[li, hi, bi], 4)}", *norm],
    ])  # fmt: skip


def _patch_html(r: Any) -> str:
    effect, kind = _patch_effect(r)
    shown = (r.normalized() if kind == "normalized" else r.values).double()
    fin = shown[torch.isfinite(shown)]
    lo, hi = (float(fin.min()), float(fin.max())) if fin.numel() else (0.0, 1.0)
    if kind == "normalized":  # keep 0 (corrupted) and 1 (clean) on the colour scale
        lo, hi = min(lo, 0.0), max(hi, 1.0)
    title = ("normalized: 0 = corrupted run, 1 = clean run" if kind == "normalized"
             else "metric (equal baselines: not normalized)")  # fmt: skip
    short = "H" if r.head_axis == "head" else "KV"
    names = [f"L{layer} {short}{h}" for layer in r.layers for h in r.heads]
    heat = draw.heatmap(shown.flatten(0, 1), names, [b.name for b in r.bands], lo=lo, hi=hi,
                        colour=draw.viridis, title=title, legend=(num(lo), num(hi)))  # fmt: skip
    rows = []
    for i in torch.argsort(effect.flatten().nan_to_num(-math.inf), descending=True)[:8].tolist():
        li, h, bi = (int(j) for j in torch.unravel_index(torch.tensor(i), effect.shape))
        b = r.bands[bi]
        rows.append([r.layers[li], r.heads[h], ints(r.query_heads[h], 16), b.name, len(b.pairs),
                     float(r.values[li, h, bi]), float(shown[li, h, bi])])  # fmt: skip
    toward = "clean" if r.direction == "denoising" else "corrupted"
    note = f"{len(rows)} of {effect.numel()} patches; most toward the {toward} run first"
    table = draw.table(["layer", r.head_axis, "query heads", "band", "pairs", "value", kind],
                       rows, note=note)  # fmt: skip
    what = ("run on corrupted tokens, clean activations patched in" if r.direction == "denoising"
            else "run on clean tokens, corrupted activations patched in")  # fmt: skip
    facts = [f"{r.direction} ({what}), target {r.target!r}; {len(r.layers)} layers × "
             f"{len(r.heads)} {r.head_axis}s × {len(r.bands)} bands",
             f"metric {r.metric}: clean {num(r.clean_baseline, 4)}, corrupted "
             f"{num(r.corrupted_baseline, 4)}"]  # fmt: skip
    return draw.card("FrequencyPatchingResult", facts, [table, heat])


RENDERERS: dict[str, tuple[Callable[[Any], str], Callable[[Any], str]]] = {
    "RopeSpec": (_spec_text, _spec_html),
    "HeadScores": (_scores_text, _scores_html),
    "ScoreSummary": (_summary_text, _summary_html),
    "FrequencyUsage": (_usage_text, _usage_html),
    "FrequencyCorrespondence": (_corr_text, _corr_html),
    "Analysis": (_analysis_text, _analysis_html),
    "FrequencyPatchingResult": (_patch_text, _patch_html),
}
