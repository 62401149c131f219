"""The text and the HTML card of the studies' results (:class:`EditComparison` of
``compare_edits``), read by attribute like :mod:`rope_behavior.display.cards`."""

import math
from collections.abc import Callable
from typing import Any

from rope_behavior.display import draw
from rope_behavior.display.draw import num

__all__ = ["RENDERERS"]


def _compare_text(c: Any) -> str:
    lines = [
        f"EditComparison: {len(c.edits)} edits, {c.n_prompts} prompts, "
        f"{len(c.layers)} layers x {c.n_heads} heads",
        f"  {'edit':<18}{'loss':>8}{'d_loss':>9}{'acc':>7}{'d_acc':>8}"
        f"{'|ds| pos':>10}{'|ds| sym':>10}",
    ]
    for r in c.edits_frame().itertuples():  # |ds|: heads leaning positional / symbolic
        lines.append(
            f"  {str(r.edit)[:17]:<18}{r.loss:>8.4f}{r.d_loss:>+9.4f}{r.accuracy:>7.3f}"
            f"{r.d_accuracy:>+8.3f}{r.shift_pos_leaning:>10.4f}{r.shift_sym_leaning:>10.4f}"
        )
    return "\n".join(lines)


def _compare_html(c: Any) -> str:
    frame = c.edits_frame()
    has_metric = not all(math.isnan(float(m)) for m in c.metric)
    columns = ["edit", "loss", "d loss", "accuracy", "d acc"]
    columns += ["metric", "d metric"] if has_metric else []
    columns += ["|ds| pos-leaning", "|ds| content-leaning"]
    rows = []
    for r in frame.itertuples():
        row = [r.edit, r.loss, r.d_loss, r.accuracy, r.d_accuracy]
        row += [r.metric, r.d_metric] if has_metric else []
        rows.append([*row, r.shift_pos_leaning, r.shift_sym_leaning])
    n_pos, n_sym = int(frame["n_pos_leaning"][0]), int(frame["n_sym_leaning"][0])
    table = draw.table(
        columns,
        rows,
        note=f"|ds|: mean of (|d s_POS| + |d s_SYM|) / 2 over the {n_pos} positional- and "
        f"{n_sym} content-leaning identifiable heads",
    )
    # per edit and head, the shift of s_POS - s_SYM: > 0 moves the head toward positional
    lean = (c.d_pos - c.d_sym).flatten(1)
    heads = [f"L{layer}H{h}" for layer in c.layers for h in range(c.n_heads)]
    finite = lean[lean.isfinite()]
    top = float(finite.abs().max()) if finite.numel() else 1.0
    top = top if top > 0 else 1.0
    heat = draw.heatmap(
        lean,
        list(c.edits),
        heads,
        lo=-top,
        hi=top,
        colour=draw.diverging,
        title="shift of s_POS − s_SYM per head (blue: toward positional)",
        legend=(num(-top), num(top)),
    )
    facts = [
        f"{c.model_name}: {len(c.edits)} edits, {c.n_prompts} prompts, {c.n_predictions} "
        f"next-token predictions",
        f"shifts: paired means over prompts, {c.confidence_level:.0%} percentile bootstrap "
        f"intervals ({c.n_boot} resamples) in the frame (to_frame())",
    ]
    return draw.card("EditComparison", facts, [table, heat])


RENDERERS: dict[str, tuple[Callable[[Any], str], Callable[[Any], str]]] = {
    "EditComparison": (_compare_text, _compare_html),
}
