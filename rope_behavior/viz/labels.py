"""Point labels that do not collide: a greedy placement in the figure's pixel space.

Each label is tried at offsets around its point (near first, then further out), and the
first place whose text box overlaps no placed label, no marker and stays inside the plot
is taken; a label with no free place takes the candidate that overlaps least. Pure: the
caller turns the offsets into plotly annotations.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

_CHAR_PX, _LINE_PX, _MARKER_PX = 6.6, 15.0, 7.0
_RADII = (26.0, 42.0, 62.0, 88.0, 120.0)
_ANGLES = tuple(math.radians(a) for a in (315, 225, 45, 135, 0, 180, 270, 90, 340, 200, 20, 160))


@dataclass(frozen=True)
class Placed:
    """A label's text and its offset from its point in pixels (plotly's ``ax`` / ``ay``:
    x to the right, y downwards)."""

    text: str
    ax: float
    ay: float


def _box(cx: float, cy: float, text: str) -> tuple[float, float, float, float]:
    w, h = _CHAR_PX * len(text) + 6, _LINE_PX
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    dx = min(a[2], b[2]) - max(a[0], b[0])
    dy = min(a[3], b[3]) - max(a[1], b[1])
    return dx * dy if dx > 0 and dy > 0 else 0.0


def place_labels(
    points: Sequence[tuple[float, float]],
    texts: Sequence[str],
    labelled: Sequence[int],
    *,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    size_px: tuple[float, float],
) -> list[tuple[int, Placed]]:
    """Offsets for the labels of ``points[i]`` for ``i`` in ``labelled`` (in that order:
    the first get the nearest places). ``points`` are data coordinates on axes spanning
    ``x_range`` / ``y_range`` drawn ``size_px`` = (width, height) pixels; every point is
    an obstacle, labelled or not."""
    w, h = size_px
    sx = w / (x_range[1] - x_range[0])
    sy = h / (y_range[1] - y_range[0])
    px = [((x - x_range[0]) * sx, (y_range[1] - y) * sy) for x, y in points]
    markers = [
        (x - _MARKER_PX, y - _MARKER_PX, x + _MARKER_PX, y + _MARKER_PX)
        for x, y in px
        if math.isfinite(x) and math.isfinite(y)
    ]
    taken: list[tuple[float, float, float, float]] = []
    out: list[tuple[int, Placed]] = []
    for i in labelled:
        x, y = px[i]
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        best: tuple[float, float, float, tuple[float, ...]] | None = None
        for r in _RADII:
            for a in _ANGLES:
                ax, ay = r * math.cos(a), -r * math.sin(a)
                box = _box(x + ax, y + ay, texts[i])
                outside = max(0.0, -box[0]) + max(0.0, box[2] - w)
                outside += max(0.0, -box[1]) + max(0.0, box[3] - h)
                cost = sum(_overlap(box, t) for t in taken)
                cost += sum(_overlap(box, m) for m in markers) + 50 * outside
                if best is None or cost < best[0]:
                    best = (cost, ax, ay, box)
                if cost == 0:
                    break
            if best is not None and best[0] == 0:
                break
        assert best is not None
        taken.append(best[3])  # type: ignore[arg-type]
        out.append((i, Placed(texts[i], best[1], best[2])))
    return out
