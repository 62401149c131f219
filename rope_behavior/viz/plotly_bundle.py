"""Which plotly.js a self-contained page inlines: the cartesian bundle when it draws them.

plotly's full bundle is 4.8 MB; the figures of this package use only trace types of the
cartesian bundle (1.5 MB, ``vendor/plotly-cartesian-<version>.min.js``, MIT licence in
``vendor/PLOTLY-LICENSE``). The smaller bundle is used only when its version equals the
installed plotly's own bundle and every trace on the page is of a type it holds; any other
page (a user's 3-D or map figure, another plotly version) gets the full bundle.
"""

import re
from collections.abc import Iterable
from importlib import resources

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from rope_behavior.errors import RopeBehaviorError

CARTESIAN_TRACES = frozenset(
    {"bar", "box", "contour", "heatmap", "histogram", "histogram2d", "histogram2dcontour",
     "image", "pie", "scatter", "scatterternary", "violin"}
)  # fmt: skip
VENDORED_VERSION = "4.1.1"
_VERSION = re.compile(r"plotly\.js(?: \([^)]*\))? v(\d+\.\d+\.\d+)")


def bundle_version(js: str) -> str | None:
    """The plotly.js version in a bundle's header comment."""
    found = _VERSION.search(js[:400])
    return found.group(1) if found else None


def _cartesian() -> str:
    path = (
        resources.files("rope_behavior.viz")
        / "vendor"
        / f"plotly-cartesian-{VENDORED_VERSION}.min.js"
    )
    return path.read_text(encoding="utf-8")


def plotly_js(figures: Iterable[go.Figure]) -> str:
    """The plotly.js source to inline in a page holding ``figures``."""
    full = get_plotlyjs()
    types = {trace.type or "scatter" for fig in figures for trace in fig.data}
    js = full
    if types <= CARTESIAN_TRACES and bundle_version(full) == VENDORED_VERSION:
        js = _cartesian()
    if "</script" in js.lower():  # never in plotly's bundles; guard the inline embedding
        raise RopeBehaviorError("the plotly.js bundle contains '</script'; cannot inline it")
    return js
