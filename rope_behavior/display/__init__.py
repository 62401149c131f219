"""How result objects show themselves: a text ``repr`` of a few lines within 80 columns,
and for notebooks a compact HTML card (a table and a small inline SVG figure).

Pure string builders with no plotting library and no JavaScript, so a stored notebook
shows the card wherever it is read (Jupyter, VS Code, GitHub, nbviewer). Sizes are capped
(table rows, heatmap cells, scatter points), so a 64-layer x 64-head model's card stays
well under 100 KB. The result classes delegate ``__repr__`` / ``_repr_html_`` to
:func:`text` and :func:`html`, which find the renderer by class name: this package sits
below every layer and imports nothing else from rope_behavior. Interactive figures are in
:mod:`rope_behavior.viz`.
"""

from collections.abc import Callable
from typing import Any

from rope_behavior.display import cards, study_cards

RENDERERS = {**cards.RENDERERS, **study_cards.RENDERERS}

__all__ = ["html", "text"]


def text(obj: Any) -> str:
    """The ``repr`` of a result object: a few lines, each at most 80 columns."""
    return _renderer(obj)[0](obj)


def html(obj: Any) -> str:
    """The HTML card of a result object (its ``_repr_html_``)."""
    return _renderer(obj)[1](obj)


def _renderer(obj: Any) -> tuple[Callable[[Any], str], Callable[[Any], str]]:
    for cls in type(obj).__mro__:
        if cls.__name__ in RENDERERS:
            return RENDERERS[cls.__name__]
    raise TypeError(
        f"rope_behavior.display has no renderer for {type(obj).__name__}; it shows "
        f"{sorted(RENDERERS)}"
    )
