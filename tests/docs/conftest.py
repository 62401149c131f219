"""Tests of the documentation: the README, the generated CLI reference, the built site."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# .ci/run sets RB_DOCS_REQUIRED=1 where the docs extra and Chromium are installed: there a
# test that would skip for a missing tool fails instead, so CI cannot pass by skipping.
REQUIRED = os.environ.get("RB_DOCS_REQUIRED") == "1"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "docs: builds the documentation site and opens it in headless Chromium "
        "(needs the docs extra: pip install -e '.[docs]'; .ci/run runs it with -m docs)",
    )


def need(condition: object, reason: str) -> None:
    """Skip with ``reason`` unless ``condition``; fail instead under RB_DOCS_REQUIRED=1."""
    if condition:
        return
    if REQUIRED:
        pytest.fail(f"RB_DOCS_REQUIRED=1 but {reason}", pytrace=False)
    pytest.skip(reason)
