"""The command-line reference of the docs (docs/hooks/cli_reference.py) finds the CLI's
parser and documents every command and every argument of it."""

import argparse
import importlib.util
import sys

import pytest

from tests.docs.conftest import ROOT


@pytest.fixture(scope="module")
def hook():
    path = ROOT / "docs" / "hooks" / "cli_reference.py"
    spec = importlib.util.spec_from_file_location("rb_docs_cli_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _walk(parser, found):
    found.append(parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _walk(sub, found)
    return found


def test_every_command_and_argument_is_documented(hook):
    parser = hook.find_builder()()
    assert parser.prog == "rope-behavior"
    text = hook.reference()
    parsers = _walk(parser, [])
    assert len(parsers) > 5  # the root and its commands
    for p in parsers:
        assert f"`{p.prog}`" in text, p.prog
        for action in p._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            for flag in action.option_strings or [action.metavar or action.dest]:
                assert flag in text, (p.prog, flag)
            if action.help and "%(default)" in action.help:
                assert "%(default)" not in text


def test_the_build_fails_when_no_parser_is_found(hook, monkeypatch):
    monkeypatch.setattr(hook, "BUILDERS", (("rope_behavior.cli.no_such_module", "build"),))
    with pytest.raises(hook.ParserNotFound, match="no_such_module"):
        hook.find_builder()
