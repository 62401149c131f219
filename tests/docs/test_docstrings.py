"""Every ``Args:`` entry of the package's docstrings names one parameter of its signature.

What ``mkdocs build --strict`` checks with griffe's ``warn_unknown_params`` and
``warn_missing_types`` (mkdocs.yml), run on the package alone (no site build): an entry
documenting two parameters at once (``a, b: ...``, ``a / b: ...``) reads as one unknown
name, so each parameter gets its own entry.
"""

import importlib.util
import logging

import pytest
import yaml

from tests.docs.conftest import ROOT, need

OPTIONS = {"warn_unknown_params": True, "warn_missing_types": True}


def test_mkdocs_keeps_griffes_parameter_warnings_on():
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *a: None)  # material's
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)
    plugin = next(
        p["mkdocstrings"] for p in config["plugins"] if isinstance(p, dict) and "mkdocstrings" in p
    )
    options = plugin["handlers"]["python"]["options"]
    assert options["docstring_style"] == "google"
    assert options.get("docstring_options", {}).items() >= OPTIONS.items()


def _objects(obj, seen):
    """Every function and class defined in the package, once."""
    for member in obj.members.values():
        if member.is_alias or id(member) in seen:
            continue
        seen.add(id(member))
        if member.is_function or member.is_class:
            yield member
        if member.is_module or member.is_class:
            yield from _objects(member, seen)


def test_every_args_entry_names_one_parameter(caplog):
    need(importlib.util.find_spec("griffe"), "griffe is not installed (pip install -e '.[docs]')")
    import griffe

    package = griffe.load(
        "rope_behavior", search_paths=[str(ROOT)], docstring_parser="google",
        docstring_options=OPTIONS,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="griffe"):
        for obj in _objects(package, set()):
            if obj.docstring is not None:
                obj.docstring.parse("google", **OPTIONS)
    problems = sorted({r.getMessage() for r in caplog.records if r.name.startswith("griffe")})
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("a, b: two at once.", "Parameter 'a, b' does not appear in the function signature"),
        ("a / b: two at once.", "Parameter 'a / b' does not appear in the function signature"),
    ],
)
def test_the_check_catches_a_multi_parameter_entry(caplog, entry, message):
    need(importlib.util.find_spec("griffe"), "griffe is not installed (pip install -e '.[docs]')")
    import griffe

    func = griffe.Function(
        "f",
        parameters=griffe.Parameters(
            griffe.Parameter("a", annotation="int"), griffe.Parameter("b", annotation="int")
        ),
    )
    doc = griffe.Docstring(f"Summary.\n\nArgs:\n    {entry}\n", parent=func)
    with caplog.at_level(logging.WARNING, logger="griffe"):
        doc.parse("google", **OPTIONS)
    assert any(message in r.getMessage() for r in caplog.records)
