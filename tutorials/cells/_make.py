"""The two kinds of cell the notebook sources are written in (tutorials/build.py)."""

import textwrap


def md(text: str) -> tuple[str, str]:
    """A markdown cell (dedented, stripped)."""
    return ("markdown", textwrap.dedent(text).strip())


def code(text: str) -> tuple[str, str]:
    """A code cell (dedented, stripped)."""
    return ("code", textwrap.dedent(text).strip())
