"""mkdocs hook: the notebooks in ``tutorials/*.ipynb`` become pages of the "Tutorials" section.

The notebooks live at the repository root (``tutorials/``), outside ``docs/``; this hook
adds each one to the site's files as ``tutorials/<name>.ipynb`` (mkdocs-jupyter renders it
from its stored outputs, without running it) and appends it, titled by its first ``# ``
heading (up to a colon), to the nav section named :data:`SECTION`, in file-name order. A
new notebook appears on the next build with no change to mkdocs.yml.

mkdocs-jupyter (0.25, 0.26) writes ``<script src=""></script>`` where MathJax would load
when ``custom_mathjax_url`` is not set: a browser requests the page itself as a script and
reports the error. The tutorials use no LaTeX, so that empty tag is removed from every
notebook page (:func:`on_post_page`) instead of loading MathJax from a CDN.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
FOLDER = "tutorials"
SECTION = "Tutorials"


def notebooks(root: Path = ROOT) -> list[Path]:
    """The tutorial notebooks, in file-name order (checkpoint copies left out)."""
    return sorted(p for p in (root / FOLDER).glob("*.ipynb") if not p.name.startswith("."))


def title(path: Path) -> str:
    """The notebook's nav title: its first Markdown ``# `` heading up to a colon ("Start
    here: which heads are positional, ..." is "Start here"), else its file name."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PluginError(f"tutorials: {path} is not a readable notebook: {e}") from e
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        source = cell.get("source", "")
        lines = source if isinstance(source, list) else source.splitlines()
        for line in "".join(lines).splitlines():
            if line.startswith("# "):
                return line[2:].split(": ", 1)[0].strip()
    return path.stem.replace("_", " ")


def on_config(config: Any) -> Any:
    nav = config.nav
    section = next((item for item in nav or [] if isinstance(item, dict) and SECTION in item), None)
    if section is None:
        raise PluginError(f"tutorials: mkdocs.yml's nav has no '{SECTION}' section")
    entries = section[SECTION]
    listed = {str(v) for e in entries for v in (e.values() if isinstance(e, dict) else [e])}
    for path in notebooks():
        src = f"{FOLDER}/{path.name}"
        if src not in listed:
            entries.append({title(path): src})
    if (ROOT / FOLDER).is_dir():
        config.watch.append(str(ROOT / FOLDER))  # mkdocs serve rebuilds when one changes
    return config


@event_priority(100)  # before mkdocs-jupyter wraps notebook files into pages
def on_files(files: Files, config: Any) -> Files:
    for path in notebooks():
        src = f"{FOLDER}/{path.name}"
        if files.get_file_from_path(src) is not None:
            continue
        files.append(
            File(
                src,
                src_dir=str(ROOT),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    return files


_EMPTY_SCRIPT = re.compile(r"<script src=\"\">\s*</script>")


def on_post_page(output: str, page: Any, config: Any) -> str:
    if page.file.src_uri.startswith(f"{FOLDER}/") and page.file.src_uri.endswith(".ipynb"):
        return _EMPTY_SCRIPT.sub("", output)
    return output
