"""A griffe extension for the API reference (mkdocs.yml: mkdocstrings ``extensions``).

1. **Each object is documented once, where it is defined.** rope_behavior re-exports its
   names at several levels (``rope_behavior.score_heads`` is
   ``rope_behavior.scoring.score_heads`` is ``rope_behavior.scoring.scorer.score_heads``,
   defined in ``rope_behavior.scoring.scorer``); rendered as they are, the reference would
   show ``HeadScores`` four times. The extension drops the re-exports (griffe aliases of
   rope_behavior's own objects) from every module, so each object is rendered at its
   canonical path. The exported names of each package are listed, with links to those
   canonical entries, by the ``<!-- rb:exports MODULE -->`` tables that
   ``docs/hooks/api_exports.py`` writes.
2. **Sphinx roles read as code.** Docstrings cite objects the Sphinx way
   (``:func:`score_heads```); Markdown shows such a role literally, so it becomes a code
   span, and a paragraph ending in ``::`` (a reST literal block follows) ends in ``:``.

Nothing here edits the package: it changes what griffe hands to mkdocstrings.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const):`~?([^`]+)`")
_LITERAL = re.compile(r"::(\n\s*\n)")


def _clean(text: str) -> str:
    return _LITERAL.sub(r":\1", _ROLE.sub(r"`\1`", text))


class CanonicalOnly(griffe.Extension):
    """Drop re-exports of the package's own objects; rewrite Sphinx roles as code spans."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        root = pkg.path
        self._walk(pkg, root)

    def _walk(self, obj: griffe.Object, root: str) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _clean(obj.docstring.value)
        for name, member in list(obj.members.items()):
            if isinstance(member, griffe.Alias):
                target = member.target_path
                if target == root or target.startswith(root + "."):
                    del obj.members[name]
                continue
            if isinstance(
                member, griffe.Module | griffe.Class | griffe.Function | griffe.Attribute
            ):
                self._walk(member, root)
