"""mkdocs hook: the command-line reference, generated from the argparse parser.

``<!-- rb:cli-reference -->`` in a page is replaced, at build time, by one section per
``rope-behavior`` command: its help line, usage, and a table of its arguments (flags
with their choices, help text with defaults expanded, default) walked from the parser the
CLI itself builds, so the page cannot drift from ``rope-behavior --help``. The builder is looked up
in the places it has lived (:data:`BUILDERS`, then any function of those modules whose name
mentions "parser"), given the arguments it requires by name (:data:`KNOWN_ARGUMENTS`); if
none gives an ``argparse.ArgumentParser`` the build fails, naming what was tried.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

_MARK = "<!-- rb:cli-reference -->"

# (module, function): where the parser builder has lived, most recent first.
BUILDERS: tuple[tuple[str, str], ...] = (
    ("rope_behavior.cli.parsers", "build_parser"),
    ("rope_behavior.cli.parsers", "parser"),
    ("rope_behavior.cli.parsers", "make_parser"),
    ("rope_behavior.cli.parsers", "_parser"),
    ("rope_behavior.cli.app", "build_parser"),
    ("rope_behavior.cli.app", "parser"),
    ("rope_behavior.cli.app", "_parser"),
)


class ParserNotFound(RuntimeError):
    """No known builder gives the CLI's ``argparse.ArgumentParser``."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rope_behavior")
    except PackageNotFoundError:
        import rope_behavior

        return str(rope_behavior.__version__)


# Arguments a builder may require, by name.
KNOWN_ARGUMENTS: dict[str, Callable[[], Any]] = {"version": _version}


def _build(builder: Callable[..., Any]) -> Any:
    """Call ``builder``, passing the :data:`KNOWN_ARGUMENTS` it requires; ``TypeError``
    naming an argument it requires that is not known."""
    kwargs = {}
    for name in _required_args(builder):
        if name not in KNOWN_ARGUMENTS:
            raise TypeError(f"requires an unknown argument {name!r}")
        kwargs[name] = KNOWN_ARGUMENTS[name]()
    return builder(**kwargs)


def find_builder() -> Callable[[], argparse.ArgumentParser]:
    """A function of no arguments that builds the ``rope-behavior`` parser (the builder
    found in :data:`BUILDERS`, with the :data:`KNOWN_ARGUMENTS` it requires bound)."""
    tried: list[str] = []
    for module_name, attr in BUILDERS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and module_name.startswith(e.name):
                tried.append(f"{module_name}.{attr} (no module)")
                continue
            raise
        builder = getattr(module, attr, None)
        if not inspect.isfunction(builder):
            tried.append(f"{module_name}.{attr} (no such function)")
            continue
        try:
            parser = _build(builder)
        except TypeError as e:
            tried.append(f"{module_name}.{attr} ({e})")
            continue
        if isinstance(parser, argparse.ArgumentParser):
            return functools.partial(_build, builder)
        tried.append(f"{module_name}.{attr} (returned {type(parser).__name__})")
    # A builder under a new name: a function of either module whose name mentions "parser"
    # and that returns the "rope-behavior" parser.
    for module_name in dict.fromkeys(m for m, _ in BUILDERS):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        for attr, fn in sorted(vars(module).items()):
            if "parser" not in attr.lower() or not inspect.isfunction(fn):
                continue
            if fn.__module__ != module.__name__:
                continue
            try:
                parser = _build(fn)
            except TypeError:
                continue
            if isinstance(parser, argparse.ArgumentParser) and parser.prog == "rope-behavior":
                return functools.partial(_build, fn)
    raise ParserNotFound(
        "the CLI reference cannot find the rope-behavior argparse parser; tried "
        + "; ".join(tried)
        + ". Add the builder's new location to BUILDERS in docs/hooks/cli_reference.py."
    )


def _required_args(fn: Callable[..., Any]) -> list[str]:
    return [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _help(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    """The help text as ``--help`` prints it (``%(default)s`` and the like expanded)."""
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    return parser._get_formatter()._expand_help(action)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return f"`{text}`"


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        flags = parser._get_formatter()._format_action_invocation(action)
        if not action.option_strings and action.nargs == "?":
            flags = f"[{flags}]"
        default = ""
        if action.required:
            default = "required"
        elif action.default not in (None, argparse.SUPPRESS) and action.nargs != 0:
            default = _code(action.default)
        rows.append(f"| `{_cell(flags)}` | {_cell(_help(action, parser))} | {default} |")
    if not rows:
        return ["No arguments."]
    return ["| argument | help | default |", "|---|---|---|", *rows]


def _subcommands(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _usage(parser: argparse.ArgumentParser) -> str:
    return parser.format_usage().strip()


def reference(parser: argparse.ArgumentParser | None = None, level: int = 2) -> str:
    """The Markdown reference of ``parser`` (default: the CLI's) and all its subcommands."""
    if parser is None:
        parser = find_builder()()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"  # usage lines wrap the same on every machine
    try:
        return "\n".join(_section(parser, level, parser.prog, ""))
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _section(parser: argparse.ArgumentParser, level: int, name: str, help_: str) -> list[str]:
    lines = [f"{'#' * level} `{name}`", ""]
    if help_:
        lines += [_cell(help_[:1].upper() + help_[1:]) + ".", ""]
    if parser.description and parser.description != help_:
        lines += [_cell(parser.description), ""]
    lines += ["```text", _usage(parser), "```", "", *_arguments(parser), ""]
    if parser.epilog:
        lines += ["```text", parser.epilog.strip("\n"), "```", ""]
    subs = list(_subcommands(parser))
    if subs:
        lines += ["Commands:", ""]
        lines += [f"* [`{n}`](#{_anchor(parser.prog, n)}): {_cell(h)}" for n, h, _ in subs]
        lines += [""]
    for _name, sub_help, sub in subs:
        lines += _section(sub, level + 1 if level < 3 else level, sub.prog, sub_help)
    return lines


def _anchor(prog: str, name: str) -> str:
    # Python-Markdown's toc slug of the heading "`rope-behavior analyze`".
    return re.sub(r"[^\w-]", "", f"{prog} {name}".replace(" ", "-")).lower()


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if _MARK not in markdown:
        return markdown
    from mkdocs.exceptions import PluginError

    try:
        text = reference()
    except ParserNotFound as e:
        raise PluginError(str(e)) from e
    return markdown.replace(_MARK, text)
