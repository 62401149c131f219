"""mkdocs hook: the generated parts of the API reference pages.

``<!-- rb:modules rope_behavior.scoring -->`` becomes one ``::: module`` block (rendered by
mkdocstrings) per submodule of the package, so a module added to the package appears in
the reference without editing a page.

A page holding ``<!-- rb:exports rope_behavior.scoring -->`` gets, in its place, one row per
name in that module's ``__all__``: the name, linked to the object's canonical entry in the
API reference (``docs/hooks/griffe_canonical.py`` renders every object once, where it is
defined), what it is, and the first sentence of its docstring. The links are mkdocs-autorefs
references, so a name whose canonical entry is rendered on no page fails the strict build.
The package is read statically by griffe (nothing is imported).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import griffe
from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
_MARK = re.compile(r"<!--\s*rb:exports\s+([\w.]+)\s*-->")
_MODULES = re.compile(r"<!--\s*rb:modules\s+([\w.]+)\s*-->")
_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const):`~?([^`]+)`")


@cache
def _package() -> griffe.Module:
    pkg = griffe.load(
        "rope_behavior",
        search_paths=[str(ROOT)],
        resolve_aliases=True,
        resolve_external=False,
        docstring_parser=griffe.Parser.google,
    )
    assert isinstance(pkg, griffe.Module)
    return pkg


def _summary(obj: griffe.Object) -> str:
    if obj.docstring is None:
        return ""
    first = obj.docstring.value.strip().split("\n\n")[0]
    text = " ".join(_ROLE.sub(r"`\1`", first).split())
    end = re.search(r"(?<=[.:;])\s", text)
    if len(text) > 160 and end:
        text = text[: end.start()]
    return _pipes(text)


def exports_table(module_path: str) -> str:
    """The Markdown table of ``module_path``'s ``__all__``, one autorefs link a row."""
    module = _module(module_path)
    names = [str(n) for n in (module.exports or [])]
    if not names:
        raise PluginError(f"rb:exports: {module_path} declares no __all__")
    rows = ["| name | kind | what it is |", "|---|---|---|"]
    for name in names:
        try:
            target = module[name].final_target
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError) as e:
            raise PluginError(f"rb:exports: {module_path}.{name} cannot be resolved: {e}") from e
        kind = target.kind.value
        if target.docstring is None and isinstance(target, griffe.Attribute):
            # mkdocstrings renders no entry for an undocumented constant or type alias:
            # show its definition here instead of linking to nothing.
            value = " ".join(str(target.value).split()) if target.value is not None else ""
            what = f"`{name} = {value}`" if value else ""
            if target.parent is not None:
                what += f" (in `{target.parent.path}`)"
            rows.append(f"| `{name}` | {kind} | {_pipes(what)} |")
            continue
        rows.append(f"| [`{name}`][{target.path}] | {kind} | {_summary(target)} |")
    return "\n".join(rows)


def _pipes(text: str) -> str:
    # A "|" ends a table cell even inside a code span; U+2223 looks the same.
    return text.replace("|", "\u2223")


def _module(module_path: str) -> griffe.Module:
    pkg = _package()
    try:
        module = pkg if module_path == pkg.path else pkg[module_path.removeprefix("rope_behavior.")]
    except KeyError as e:
        raise PluginError(f"rb: no module {module_path}") from e
    if not isinstance(module, griffe.Module):
        raise PluginError(f"rb: {module_path} is not a module")
    return module


def module_blocks(module_path: str) -> str:
    """One mkdocstrings block per submodule of ``module_path`` (each renders its own
    submodules), in name order, so a new module appears without editing the page."""
    subs = sorted(
        m.path
        for m in _module(module_path).modules.values()
        if not m.is_alias and not m.name.startswith("_")
    )
    if not subs:
        raise PluginError(f"rb:modules: {module_path} has no submodules")
    return "\n\n".join(f"::: {path}" for path in subs)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    markdown = _MARK.sub(lambda m: exports_table(m.group(1)), markdown)
    return _MODULES.sub(lambda m: module_blocks(m.group(1)), markdown)
