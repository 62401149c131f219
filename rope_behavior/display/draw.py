"""Pure builders of the result cards: numbers and 80-column text, HTML tables and boxes,
and small inline SVG figures (heatmaps, scatter and line charts) with no JavaScript.

Everything is escaped here; sizes are capped (:data:`MAX_ROWS` table rows,
:data:`MAX_CELLS` heatmap cells, scatter points drawn once per pixel).
"""

import math
import textwrap
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

import torch
from torch import Tensor

WIDTH = 80
MAX_ROWS = 12
MAX_CELLS = 4096
POSITIONAL, SYMBOLIC, GREY = "#2166ac", "#b2182b", "#999999"
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
Real = float | int
_CELL = "padding:1px 8px;text-align:right;border-bottom:1px solid #eee;white-space:nowrap"


# -- numbers and text ---------------------------------------------------------------------


def num(x: Any, digits: int = 3) -> str:
    """A number in ``digits`` significant figures (``nan`` / ``inf`` spelled out)."""
    x = float(x)
    return f"{x:.{digits}g}" if math.isfinite(x) else str(x)


def cell(x: Any, digits: int = 3) -> str:
    """A table cell: text and integers as they are, other numbers in ``digits``
    significant figures, NaN and None as an en dash."""
    if isinstance(x, str | int):
        return str(x)
    return "–" if x is None or math.isnan(float(x)) else num(x, digits)


def ints(values: Sequence[int], limit: int = 40) -> str:
    """``[0..63]`` for a run, ``[0, 2, 5..9]`` otherwise; shortened past ``limit`` chars."""
    parts: list[str] = []
    vals = sorted(values)
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts += [f"{vals[i]}..{vals[j]}"] if j - i >= 2 else [str(v) for v in vals[i : j + 1]]
        i = j + 1
    out = "[" + ", ".join(parts) + "]"
    if len(out) > limit:
        out = "[" + ", ".join(parts[:3]) + ", ..., " + parts[-1] + f"] ({len(vals)})"
    return out


def pack(name: str, groups: Sequence[Sequence[str]]) -> str:
    """``name(`` and the items of each group, a group per new line (items kept whole
    where they fit), every line at most :data:`WIDTH` columns, then ``)``."""
    lines: list[str] = []
    cur = name + "("
    for gi, items in enumerate(groups):
        if gi:
            lines.append(cur.rstrip())
            cur = "    "
        for ii, item in enumerate(items):
            last = gi == len(groups) - 1 and ii == len(items) - 1
            piece = item + (")" if last else ", ")
            if len(cur) + len(piece.rstrip()) > WIDTH and cur.strip():
                lines.append(cur.rstrip())
                cur = "    "
            if len(cur) + len(piece.rstrip()) > WIDTH:  # an item longer than a line
                wrapped = textwrap.wrap(piece, WIDTH - 8, break_on_hyphens=False)
                lines += [cur + wrapped[0], *("        " + w for w in wrapped[1:-1])]
                cur = "        " + wrapped[-1] + " "
            else:
                cur += piece
    return "\n".join([*lines, cur.rstrip()])


def nanmean(x: Tensor, keep: int = 0) -> Tensor:
    """NaN-aware mean over every axis but the first ``keep`` (float64, CPU)."""
    x = x.detach().double().cpu().flatten(keep)
    ok = ~torch.isnan(x)
    n = ok.sum(-1)
    return torch.where(n > 0, torch.where(ok, x, 0.0).sum(-1) / n.clamp_min(1), math.nan)


# -- HTML pieces ----------------------------------------------------------------------------


def card(title: str, facts: Sequence[str], blocks: Sequence[str], notes: Sequence[str] = ()) -> str:
    """A titled box on white (so it reads in dark themes too): lines of facts, warning
    notes, then the blocks side by side where they fit."""
    warn = "".join(
        '<div style="background:#fff4e5;border-left:4px solid #e8590c;padding:3px 8px;'
        f'margin:4px 0">{escape(n)}</div>'
        for n in notes
    )
    row = "".join(
        f'<div style="display:inline-block;vertical-align:top;margin:4px 18px 4px 0">{b}</div>'
        for b in blocks
    )
    facts_html = "".join(f'<div style="color:#444">{escape(f)}</div>' for f in facts)
    return (
        "<div style=\"font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:12px;"
        'line-height:1.35;background:#fff;color:#1d1d1f;padding:6px 8px;max-width:900px">'
        f'<div style="font-weight:600;font-size:13px">{escape(title)}</div>'
        f"{facts_html}{warn}<div>{row}</div></div>"
    )


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    note: str = "",
    shade: Sequence[str] = (),
    cut_at: int = -1,
    cut: str = "",
    label_column: bool = False,
) -> str:
    """A compact table of cells (:func:`cell`); ``shade[i]`` is row ``i``'s background, a
    row saying ``cut`` goes before row ``cut_at``, ``label_column`` left-aligns the first
    column (a table of named values), and blank ``columns`` leave out the header."""

    def td(v: Any, j: int, bg: str) -> str:
        align = ";text-align:left" if label_column and j == 0 else ""
        return f'<td style="{_CELL}{align}{bg}">{escape(cell(v))}</td>'

    head = "".join(f'<th style="{_CELL};background:#f4f4f4">{escape(c)}</th>' for c in columns)
    head = f"<thead><tr>{head}</tr></thead>" if any(columns) else ""
    body = []
    for i, r in enumerate(rows):
        if i == cut_at:
            body.append(
                f'<tr><td colspan="{len(columns)}" style="{_CELL};text-align:center;color:#777">'
                f"{escape(cut)}</td></tr>"
            )
        bg = f";background:{shade[i]}" if i < len(shade) and shade[i] else ""
        body.append("<tr>" + "".join(td(v, j, bg) for j, v in enumerate(r)) + "</tr>")
    caption = f'<div style="color:#666">{escape(note)}</div>' if note else ""
    return (
        '<table style="border-collapse:collapse;margin:2px 0;font-size:12px">'
        f"{head}<tbody>{''.join(body)}</tbody></table>{caption}"
    )


def capped(n: int, keep: int = MAX_ROWS) -> tuple[list[int], int, str]:
    """Which of ``n`` rows a table shows (at most ``keep``: the first and the last half),
    where the cut goes in that list (-1: none) and what the cut row says."""
    if n <= keep:
        return list(range(n)), -1, ""
    half = keep // 2
    return [*range(half), *range(n - half, n)], half, f"… {n - 2 * half} more rows …"


# -- SVG figures ----------------------------------------------------------------------------


def viridis(t: float) -> str:
    """Viridis at ``t`` in [0, 1]."""
    t = min(1.0, max(0.0, t)) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
    return "#" + "".join(f"{round(a[k] + (t - i) * (b[k] - a[k])):02x}" for k in range(3))


def diverging(t: float) -> str:
    """Red (``t`` = 0) through white (0.5) to blue (1), as :data:`SYMBOLIC` /
    :data:`POSITIONAL`."""
    end = (178, 24, 43) if t < 0.5 else (33, 102, 172)
    f = min(1.0, abs(2 * t - 1))
    return "#" + "".join(f"{round(255 + f * (c - 255)):02x}" for c in end)


def _svg(width: Real, height: Real, title: str, body: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'font-size="10" font-family="sans-serif"><text x="0" y="11" font-weight="600">'
        f"{escape(title)}</text>{body}</svg>"
    )


def _text_px(text: str) -> float:
    return 6.0 * len(text)


def heatmap(
    z: Tensor,
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    lo: Real,
    hi: Real,
    colour: Callable[[float], str],
    title: str,
    legend: tuple[str, str],
    width: int = 300,
    levels: int = 11,
) -> str:
    """``z`` [row, col] as an SVG heatmap: colours in ``levels`` steps over ``[lo, hi]``
    (values outside take the end colours, NaN light grey), one path per colour, and a
    colour bar between the ``legend`` texts. Past :data:`MAX_CELLS` cells, consecutive rows
    are averaged in groups, and the title says so."""
    z = z.detach().double().cpu()
    n_r, n_c = z.shape
    group = max(1, math.ceil(n_r * n_c / MAX_CELLS))
    if group > 1:
        pad = torch.full((-n_r % group, n_c), math.nan, dtype=torch.float64)
        z = nanmean(torch.cat([z, pad]).view(-1, group, n_c).transpose(1, 2), 2)
        rows = [f"{rows[i]}–{rows[min(i + group, n_r) - 1]}" for i in range(0, n_r, group)]
        title += f" (rows: means of {group})"
        n_r = z.shape[0]
    left, top = max(_text_px(max(rows, key=len)), 12) + 6, 18
    cw = max(1.0, (width - left - 4) / n_c)
    ch = max(0.5, min(16.0, 300 / n_r))
    scaled = ((z - lo) / (hi - lo or 1) * levels).floor().clamp(0, levels - 1)
    q = torch.where(torch.isnan(z), -1, scaled).long().tolist()
    paths: dict[str, list[str]] = {}
    for r in range(n_r):  # one rectangle per run of equal colour along a row
        c = 0
        while c < n_c:
            k = c
            while k + 1 < n_c and q[r][k + 1] == q[r][c]:
                k += 1
            fill = "#dddddd" if q[r][c] < 0 else colour((q[r][c] + 0.5) / levels)
            paths.setdefault(fill, []).append(f"M{c} {r}h{k - c + 1}v1h{c - k - 1}z")
            c = k + 1
    h = top + ch * n_r
    out = [
        f'<svg x="{left:.0f}" y="{top}" width="{cw * n_c:.1f}" height="{ch * n_r:.1f}" '
        f'viewBox="0 0 {n_c} {n_r}" preserveAspectRatio="none" shape-rendering="crispEdges">',
        *(f'<path fill="{f}" d="{"".join(d)}"/>' for f, d in paths.items()),
        "</svg>",
    ]
    out += [
        f'<text x="{left - 3:.0f}" y="{top + (r + 0.5) * ch + 3.5:.1f}" text-anchor="end">'
        f"{escape(rows[r])}</text>"
        for r in range(0, n_r, math.ceil(11 / ch))
    ]
    out += [
        f'<text x="{left + (c + 0.5) * cw:.1f}" y="{h + 11:.1f}" text-anchor="middle">'
        f"{escape(cols[c])}</text>"
        for c in range(0, n_c, math.ceil((_text_px(max(cols, key=len)) + 6) / cw))
    ]
    x = _text_px(legend[0]) + 4
    out.append(f'<text x="0" y="{h + 30:.0f}">{escape(legend[0])}</text>')
    out += [
        f'<rect x="{x + i * 10:.0f}" y="{h + 22:.0f}" width="10" height="10" '
        f'fill="{colour((i + 0.5) / levels)}"/>'
        for i in range(levels)
    ]
    out.append(
        f'<rect x="{x:.0f}" y="{h + 22:.0f}" width="{levels * 10}" height="10" fill="none" '
        'stroke="#999" stroke-width="0.5"/>'
    )
    end = legend[1] + ("   grey: no value" if "#dddddd" in paths else "")
    out.append(f'<text x="{x + levels * 10 + 4:.0f}" y="{h + 30:.0f}">{escape(end)}</text>')
    right = max(left + cw * n_c, x + levels * 10 + 8 + _text_px(end), _text_px(title))
    return _svg(right + 4, h + 38, title, "".join(out))


def _dots(points: Sequence[tuple[int, int]]) -> str:
    """A path of zero-length strokes, one per pixel, row by row in relative moves (a round
    cap draws each as a dot: about 6 bytes a point)."""
    out, (x0, y0) = ["M0 0"], (0, 0)
    for x, y in sorted(set(points), key=lambda p: (p[1], p[0])):
        out.append(f"m{x - x0} {y - y0}h0")
        x0, y0 = x, y
    return "".join(out) if len(out) > 1 else ""


Series = tuple[str, str, Sequence[tuple[Real, Real]], str]


def chart(
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    x_range: tuple[Real, Real],
    y_range: tuple[Real, Real],
    title: str,
    guides: Sequence[str] = (),
    y_ticks: Sequence[tuple[Real, str]] = (),
    size: tuple[int, int] = (300, 210),
) -> str:
    """An SVG chart of ``series``: ``(kind, colour, points, legend)`` with ``kind``
    ``"line"``, ``"dot"`` (filled) or ``"ring"`` (hollow); dots are drawn once per pixel.
    ``guides``: ``"diagonal"`` (y = x), ``"zero"`` (y = 0, labelled). Legends go below."""
    (w, h), (x0, x1), (y0, y1) = size, x_range, y_range
    left, right, top, bottom = 44, w - 8, 18, h - 30

    def px(x: Real, y: Real) -> tuple[int, int]:
        return (
            round(left + (x - x0) / (x1 - x0 or 1) * (right - left)),
            round(bottom - (y - y0) / (y1 - y0 or 1) * (bottom - top)),
        )

    out = [
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        'fill="#f7f7f9" stroke="#bbb"/>'
    ]
    line = '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#999" stroke-dasharray="3,3"/>'
    y_ticks = list(y_ticks or [(y0, num(y0)), (y1, num(y1))])
    if "diagonal" in guides:
        out.append(line.format(*px(x0, y0), *px(x1, y1)))
    if "zero" in guides and y0 < 0 < y1:
        out.append(line.format(*px(x0, 0), *px(x1, 0)))
        y_ticks.append((0.0, "0"))
    out += [
        f'<text x="{px(v, y0)[0]}" y="{bottom + 11}" text-anchor="middle">{escape(num(v))}</text>'
        for v in (x0, x1)
    ]
    out += [
        f'<text x="{left - 3}" y="{px(x0, v)[1] + 3}" text-anchor="end">{escape(t)}</text>'
        for v, t in y_ticks
    ]
    mid = (top + bottom) / 2
    out.append(
        f'<text x="{(left + right) / 2}" y="{bottom + 24}" text-anchor="middle">'
        f'{escape(x_label)}</text><text x="10" y="{mid}" text-anchor="middle" '
        f'transform="rotate(-90 10 {mid})">{escape(y_label)}</text>'
    )
    n_legend = 0
    for kind, colour, points, legend in series:
        pts = list(dict.fromkeys(px(x, y) for x, y in points if math.isfinite(x + y)))
        dots = _dots(pts)
        if kind == "line":
            d = "M" + "L".join(f"{x} {y}" for x, y in pts) if pts else ""
            out.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        else:
            out.append(
                f'<path d="{dots}" stroke="{colour}" stroke-width="6" stroke-linecap="round"/>'
            )
        if kind == "ring":
            out.append(
                f'<path d="{dots}" stroke="#f7f7f9" stroke-width="3.6" stroke-linecap="round"/>'
            )
        if legend:
            y = h + 9 + 12 * n_legend
            mark = (
                f'<line x1="{left}" y1="{y - 3}" x2="{left + 12}" y2="{y - 3}" stroke="{colour}" '
                'stroke-width="1.5"/>'
                if kind == "line"
                else f'<circle cx="{left + 6}" cy="{y - 3}" r="3" stroke="{colour}" '
                f'stroke-width="{1.2 if kind == "ring" else 0}" fill="'
                f'{"none" if kind == "ring" else colour}"/>'
            )
            out.append(f'{mark}<text x="{left + 17}" y="{y}">{escape(legend)}</text>')
            n_legend += 1
    return _svg(max(w, _text_px(title)), h + 12 * n_legend + 4, title, "".join(out))
