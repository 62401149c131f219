"""The README is the package's front page, on GitHub and on a package index page.

* Every link in it is absolute (a package index page has no repository to resolve a
  relative link against) or an anchor of the README itself.
* Links into the repository use the one repository address of ``pyproject.toml``
  (``[project.urls]``), and name files that exist; links to the documentation site use its
  address and name pages that ``docs/`` builds.
* The two set-up commands and the test command are the ones ``.ci/run`` runs, and the docs'
  Getting started page shows the same block.
* ``mkdocs.yml`` declares the same two addresses as ``pyproject.toml``.
"""

import re
import sys

import pytest

from tests.docs.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

README = (ROOT / "README.md").read_text(encoding="utf-8")
URLS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["urls"]
REPO = URLS["Repository"].rstrip("/")
SITE = URLS["Documentation"].rstrip("/") + "/"
OWNER_NAME = REPO.removeprefix("https://github.com/")
RAW = f"https://raw.githubusercontent.com/{OWNER_NAME}/"
SETUP_COMMANDS = ["bash scripts/setup.sh", ".venv/bin/python -m pytest"]


def _links(text: str) -> list[str]:
    """Every link target of a Markdown text: inline links and images, reference
    definitions, autolinks and HTML href / src."""
    found = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    found += re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, re.M)
    found += re.findall(r"<(https?://[^>\s]+)>", text)
    found += re.findall(r"""(?:href|src)\s*=\s*["']([^"']+)["']""", text)
    return found


def _without_code(text: str) -> str:
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


def _commands(block: str) -> list[str]:
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


LINKS = _links(_without_code(README))


def test_readme_has_links():
    assert len(LINKS) >= 10  # the parser found them (the docs table alone has 10)


@pytest.mark.parametrize("url", LINKS)
def test_every_link_is_absolute_or_an_anchor(url):
    assert url.startswith(("https://", "#")), (
        f"README link {url!r} is relative: it breaks on a package index page; use "
        f"{REPO}/blob/main/<path>, {RAW}main/<path> for an image, or a page under {SITE}"
    )


def test_anchors_exist():
    slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", _without_code(README), re.M)}
    for url in LINKS:
        if url.startswith("#"):
            assert url[1:] in slugs, f"README anchor {url} matches no heading"


def test_repository_links_name_existing_files():
    for url in LINKS:
        if "github" not in url:
            continue
        if url.startswith(RAW):
            path = url.removeprefix(RAW).split("/", 1)[1]
        elif url.startswith(REPO + "/"):
            parts = url.removeprefix(REPO + "/").split("/", 2)
            if parts[0] not in ("blob", "tree", "raw"):
                continue  # issues, pulls, ...
            path = parts[2] if len(parts) > 2 else ""
        elif url.startswith(SITE):
            continue
        else:
            pytest.fail(f"README link {url} points at another repository than {REPO}")
        assert (ROOT / path.split("#")[0]).exists(), f"{url}: no {path} in the repository"


def test_site_links_name_built_pages():
    site_links = [u for u in LINKS if u.startswith(SITE)]
    assert site_links, f"the README does not say where the docs are ({SITE})"
    for url in site_links:
        page = url.removeprefix(SITE).split("#")[0].strip("/")
        candidates = [ROOT / "docs" / f"{page}.md", ROOT / "docs" / page / "index.md"]
        if not page:
            candidates = [ROOT / "docs" / "index.md"]
        assert any(p.exists() for p in candidates), f"{url}: no page for it in docs/"


def test_image_is_the_report_picture():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert f"{RAW}main/docs/report.png" in images


def test_setup_and_test_commands_are_what_ci_runs():
    block = _code_blocks(_section(README, "Set up and test"), "bash")[0]
    assert _commands(block) == SETUP_COMMANDS
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in SETUP_COMMANDS:
        assert command in ci, f".ci/run does not run the README's {command!r} as written"
    getting_started = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    assert block in _code_blocks(getting_started, "bash"), (
        "docs/getting-started.md shows other set-up commands than the README"
    )


def test_main_job_commands_are_in_the_docs():
    docs = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    readme_job = _section(README, "The main job, in one command")
    for block in _code_blocks(readme_job, "bash"):
        assert block in _code_blocks(docs, "bash"), block


def test_mkdocs_declares_the_same_addresses():
    mkdocs = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    site_url = re.search(r"^site_url:\s*(\S+)", mkdocs, re.M)
    repo_url = re.search(r"^repo_url:\s*(\S+)", mkdocs, re.M)
    assert site_url, "mkdocs.yml declares no site_url"
    assert repo_url, "mkdocs.yml declares no repo_url"
    assert site_url.group(1) == URLS["Documentation"]
    assert repo_url.group(1) == REPO
    assert URLS["Homepage"] == REPO
    assert URLS["Issues"] == f"{REPO}/issues"
