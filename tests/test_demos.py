"""Every demo runs end to end in its fast mode (RB_DEMO_FAST=1) and writes its figures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

DEMOS = sorted((Path(__file__).resolve().parents[1] / "demos").glob("*.py"))


@pytest.mark.parametrize("demo", DEMOS, ids=[d.stem for d in DEMOS])
def test_demo_runs(demo, tmp_path):
    env = {**os.environ, "RB_DEMO_FAST": "1", "RB_DEMO_OUT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(demo)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(tmp_path.glob("*.html")), "the demo wrote no figure"
