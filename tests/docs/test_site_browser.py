"""The documentation site in a real browser: its pages render, with no errors.

The site is built in strict mode (``mkdocs build --strict``: a broken link, anchor or API
reference fails the build), or taken from ``RB_DOCS_SITE`` when .ci/run has built it
already, and served over HTTP on 127.0.0.1 by a small server that puts a probe script first
in every page's ``<head>`` and records every request it answers. Headless Chromium opens
the home page, an API reference page and a tutorial notebook page (``--dump-dom`` after a
virtual-time budget); the probe records console messages, uncaught errors, unhandled
rejections and resources that failed to load, then writes what the page shows into the
DOM as JSON. Chromium's own log (``--enable-logging=stderr``) is checked for console
messages too, and the server's log for requests it could not answer.

Skipped when the docs extra (``pip install -e '.[docs]'``) or Chromium is missing; with
``RB_DOCS_REQUIRED=1`` (as .ci/run sets) those are failures instead.
"""

import functools
import html
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.docs.conftest import ROOT, need

pytestmark = pytest.mark.docs

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

PROBE = """<script>(function () {
  var log = [];
  ["log", "info", "warn", "error", "debug", "trace"].forEach(function (level) {
    var orig = console[level];
    console[level] = function () {
      log.push(level + ": " + Array.prototype.map.call(arguments, String).join(" "));
      return orig.apply(console, arguments);
    };
  });
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) {
      log.push("failed to load: " + (t.src || t.href));
    } else {
      log.push("uncaught: " + e.message);
    }
  }, true);
  window.addEventListener("unhandledrejection", function (e) {
    log.push("unhandled rejection: " + String(e.reason));
  });
  window.addEventListener("load", function () {
    setTimeout(function () {
      var q = function (s) { return document.querySelectorAll(s); };
      var h1 = document.querySelector("article h1, .md-content h1");
      var out = document.createElement("pre");
      out.id = "rb-probe";
      out.textContent = JSON.stringify({
        messages: log,
        title: document.title,
        h1: h1 ? h1.textContent.replace("\u00b6", "").trim() : null,
        nav_links: q(".md-nav__link").length,
        text_chars: (document.querySelector(".md-content") || document.body).innerText.length,
        images: Array.prototype.map.call(q(".md-content img"), function (img) {
          return {src: img.getAttribute("src"), ok: img.complete && img.naturalWidth > 0};
        }),
        doc_objects: q(".md-content .doc-object").length,
        ids: Array.prototype.map.call(q(".md-content [id]"), function (e) { return e.id; }),
        nb_cells: q(".md-content .jp-Cell").length,
        nb_outputs: q(".md-content .jp-OutputArea-output").length
      });
      document.body.appendChild(out);
    }, 2000);
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
    "--virtual-time-budget=10000",
]


def _has_docs_extra() -> bool:
    return all(
        importlib.util.find_spec(m) is not None
        for m in (
            "mkdocs",
            "material",
            "mkdocstrings",
            "mkdocstrings_handlers.python",
            "mkdocs_jupyter",
        )
    )


def notebooks() -> list[Path]:
    return sorted(p for p in (ROOT / "tutorials").glob("*.ipynb") if not p.name.startswith("."))


@pytest.fixture(scope="module")
def chromium() -> str:
    need(
        Path(CHROMIUM).exists(),
        "headless Chromium is not installed (Debian package 'chromium': apt-get install -y "
        "--no-install-recommends chromium, as .ci/run does)",
    )
    return CHROMIUM


@pytest.fixture(scope="module")
def site(chromium, tmp_path_factory) -> Path:
    prebuilt = os.environ.get("RB_DOCS_SITE")
    if prebuilt:
        path = (ROOT / prebuilt).resolve()
        assert (path / "index.html").is_file(), f"RB_DOCS_SITE={prebuilt}: no index.html there"
        return path
    need(_has_docs_extra(), "the docs extra is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stderr[-4000:]}"
    return out


class _Handler(SimpleHTTPRequestHandler):
    """Serves the site with the probe first in every page's <head>; logs each request."""

    requests: list[tuple[int, str]]

    def send_head(self):  # type: ignore[override]
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            path = path / "index.html"
        if path.suffix != ".html" or not path.is_file():
            return super().send_head()
        text = path.read_text(encoding="utf-8")
        data = re.sub(r"<head>", "<head>" + PROBE, text, count=1).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return io.BytesIO(data)

    def log_request(self, code="-", size="-"):
        self.requests.append((int(code) if str(code).isdigit() else 0, self.path))

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(site) -> Iterator[tuple[str, list[tuple[int, str]]]]:
    log: list[tuple[int, str]] = []
    handler = type("Handler", (_Handler,), {"requests": log})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", log
    finally:
        httpd.shutdown()
        httpd.server_close()


def _open(chromium: str, url: str, profile: Path) -> tuple[dict, list[str]]:
    run = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    found = re.search(r'<pre id="rb-probe">(.*?)</pre>', run.stdout, re.S)
    assert found, f"the probe never reported (did {url} finish loading?): {run.stderr[-2000:]}"
    probe = json.loads(html.unescape(found.group(1)))
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    return probe, console


def _check_page(chromium, server, tmp_path, page: str) -> dict:
    base, log = server
    start = len(log)
    probe, console = _open(chromium, base + page, tmp_path / "profile")
    # Resources of other origins (the tutorials' "Open in Colab" badge) may not load where
    # the test runs (CI machines and sandboxes without network): listed, not failed.
    external = [m for m in probe["messages"] if _is_external(m, base)]
    console = [c for c in console if not _is_external(c, base)]
    if external:
        print(f"\n{page}: resources of other origins that did not load here: {external}")
    problems = [
        m
        for m in probe["messages"]
        if m not in external and not m.startswith(("log:", "info:", "debug:"))
    ]
    assert problems == [], problems
    assert [c for c in console if "error" in c.lower() or "warn" in c.lower()] == [], console
    failed = [(code, path) for code, path in log[start:] if code >= 400]
    assert failed == [], f"requests the site could not answer: {failed}"
    assert probe["h1"], f"{page}: no <h1>"
    assert probe["nav_links"] > 10, f"{page}: the navigation did not render"
    assert probe["text_chars"] > 500, f"{page}: almost no text ({probe['text_chars']} chars)"
    for image in probe["images"]:
        if not image["src"].startswith(("http://", "https://")):
            assert image["ok"], f"{page}: image {image['src']} did not load"
    return probe


def _is_external(message: str, base: str) -> bool:
    """A failed load of a resource that the site does not serve itself."""
    if message.startswith("failed to load: "):
        return not message.removeprefix("failed to load: ").startswith(base)
    failed = re.search(r"Failed to load resource: net::ERR_\w+.*source: (\S+)", message)
    return failed is not None and not failed.group(1).startswith(base)


def test_home_page(chromium, server, tmp_path):
    probe = _check_page(chromium, server, tmp_path, "")
    assert probe["h1"] == "rope_behavior"
    assert any(img["src"].endswith("report.png") for img in probe["images"])


def test_api_page(chromium, server, tmp_path):
    probe = _check_page(chromium, server, tmp_path, "api/scoring/")
    assert probe["doc_objects"] > 10, probe["doc_objects"]
    for anchor in (
        "rope_behavior.scoring.scorer.score_heads",
        "rope_behavior.scoring.results.HeadScores",
    ):
        assert anchor in probe["ids"], f"no entry {anchor} on the API page"


def test_tutorial_page(chromium, site, server, tmp_path):
    pages = sorted(p.parent.name for p in site.glob("tutorials/*/index.html"))
    missing = [nb.name for nb in notebooks() if nb.stem not in pages]
    assert missing == [], f"notebooks with no page on the site: {missing}"
    need(pages, "the site has no tutorial page (no notebook in tutorials/*.ipynb)")
    probe = _check_page(chromium, server, tmp_path, f"tutorials/{pages[0]}/")
    assert probe["nb_cells"] > 0, "the notebook rendered no cells"
    assert probe["nb_outputs"] > 0, "the notebook page shows none of its stored outputs"
