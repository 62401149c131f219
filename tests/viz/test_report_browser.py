"""The report in a real browser: headless Chromium draws every figure, with no errors.

Chromium loads a copy of the report with a small probe script put first in ``<head>``: it
records every console message, uncaught error and unhandled rejection, and after the
page has loaded (and plotly has drawn) writes what each figure ``<div>`` holds into the
DOM as JSON; ``--dump-dom`` returns it after a virtual-time budget. Console messages in
Chromium's own log (``--enable-logging=stderr``) are checked as well. A screenshot of the
unmodified report is saved under the test's ``tmp_path``.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rope_behavior.viz.html_report import figures_for, report
from tests.viz.test_report import report_inputs

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="headless Chromium is not installed (/usr/bin/chromium; Debian package "
    "'chromium': apt-get install -y --no-install-recommends chromium, as .ci/run does)",
)

PROBE = """<script>(function () {
  var log = [];
  ["log", "info", "warn", "error", "debug", "trace"].forEach(function (level) {
    var orig = console[level];
    console[level] = function () {
      log.push(level + ": " + Array.prototype.map.call(arguments, String).join(" "));
      return orig.apply(console, arguments);
    };
  });
  window.addEventListener("error", function (e) { log.push("uncaught: " + e.message); });
  window.addEventListener("unhandledrejection", function (e) {
    log.push("unhandled rejection: " + String(e.reason));
  });
  window.addEventListener("load", function () {
    setTimeout(function () {
      var figures = Array.prototype.map.call(
        document.querySelectorAll(".plotly-graph-div"), function (gd) {
          return {
            id: gd.id,
            plotted: gd.classList.contains("js-plotly-plot"),
            main_svg: gd.querySelectorAll(".main-svg").length,
            traces: (gd.data || []).length,
            drawn: (gd._fullData || []).filter(function (t) { return t.visible === true; }).length,
            scatter_nodes: gd.querySelectorAll(".scatterlayer .trace").length,
            heatmap_nodes: gd.querySelectorAll(".heatmaplayer .hm image").length,
            points: gd.querySelectorAll(".scatterlayer .point").length,
            types: (gd._fullData || []).map(function (t) { return t.type; })
          };
        });
      var out = document.createElement("pre");
      out.id = "rb-probe";
      out.textContent = JSON.stringify({messages: log, figures: figures});
      document.body.appendChild(out);
    }, 3000);
  });
})();</script>"""

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=20000",
]


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_every_figure_renders_without_errors(tmp_path):
    inputs = report_inputs()
    page = report(tmp_path / "report.html", title="Report in a browser", **inputs)
    expected = [
        f"fig-{k}"
        for k in figures_for(**{k: v for k, v in inputs.items() if k != "correspondence"})
    ]
    points = {  # markers each figure should draw
        f"fig-{k}": sum(len(t.x) for t in f.data if t.type == "scatter" and "markers" in t.mode)
        for k, f in figures_for(
            **{k: v for k, v in inputs.items() if k != "correspondence"}
        ).items()
    }
    text = page.read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace('<meta charset="utf-8">', '<meta charset="utf-8">' + PROBE, 1))

    run = _chromium(["--dump-dom", probed.as_uri()], tmp_path / "profile")
    assert run.returncode == 0, run.stderr[-2000:]
    found = re.search(r'<pre id="rb-probe">(.*?)</pre>', run.stdout, re.S)
    assert found, f"the probe never reported (page did not finish loading?): {run.stderr[-2000:]}"
    probe = json.loads(
        found.group(1)
        .replace("&quot;", '"')
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
    )
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert probe["messages"] == [], probe["messages"]
    assert console == [], console
    figures = {f["id"]: f for f in probe["figures"]}
    assert list(figures) == expected
    for fid, fig in figures.items():
        assert fig["plotted"], fid
        assert fig["main_svg"] >= 1, fid
        assert fig["traces"] >= 1, fid
        n_scatter = sum(t == "scatter" for t in fig["types"])
        n_heatmap = sum(t == "heatmap" for t in fig["types"])
        assert fig["scatter_nodes"] == n_scatter, (fid, fig)
        assert fig["heatmap_nodes"] == n_heatmap, (fid, fig)
        assert fig["points"] == points[fid], (fid, fig)  # every marker drawn

    shot = tmp_path / "report.png"
    run = _chromium(
        [f"--screenshot={shot}", "--window-size=1400,3000", page.as_uri()], tmp_path / "profile2"
    )
    assert run.returncode == 0, run.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 50_000  # a drawn page, not a blank one
    print(f"\nscreenshot: {shot}")
