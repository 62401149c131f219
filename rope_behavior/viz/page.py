"""What every page the project writes shares: its style sheet, one figure as a ``<div>``
drawn by the page's one inlined plotly.js, and writing the file atomically (a temporary
file in the same folder, renamed at the end, so an interrupted run leaves no half-written
page)."""

import contextlib
import os
import tempfile
from pathlib import Path

import plotly.graph_objects as go

__all__ = ["CSS", "figure_div", "write_atomic"]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1280px;
padding:0 24px 48px;color:#1d1d1f;line-height:1.45}
h1{margin:24px 0 4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}
nav a{margin-right:14px}section{margin-bottom:12px}.figure{margin:12px 0}
.caveat{background:#fff4e5;border-left:6px solid #e8590c;padding:10px 14px;margin:12px 0}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 10px;text-align:right;
border-bottom:1px solid #eee}th{background:#f6f6f6;position:sticky;top:0}
tr.pos td{background:#eaf2fb}tr.sym td{background:#fbeaea}
.muted{color:#666}dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px}
dt{font-weight:600}dd{margin:0}
"""
_HTML = {  # each figure a div drawn by the one inlined plotly.js
    "full_html": False, "include_plotlyjs": False, "default_height": "500px",
    "config": {"displaylogo": False, "responsive": True},
}  # fmt: skip


def figure_div(key: str, fig: go.Figure) -> str:
    """``fig`` as a ``<div id="fig-<key>">`` for a page that inlines plotly.js once."""
    div = fig.to_html(div_id=f"fig-{key}", **_HTML)
    return f'<div class="figure">{div}</div>'


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it onto ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
