"""The tutorial notebooks (tutorials/*.ipynb) as stored: what a reader sees on a code host.

Executing them is the notebook runner's job in CI (``pytest --nbmake tutorials/``); these
checks read the stored files only (no kernel, well under a second):

* the first cell is markdown with an "Open in Colab" badge pointing at the notebook's own
  path in the repository;
* the first code cell installs rope_behavior in Colab only, from the repository and
  nothing else;
* every code cell that prints or draws something has its stored output, and no stored
  output is an error or a traceback;
* cells that need the hub, a cluster or a long run are guarded by a flag that is off;
* each file is small and matches what ``tutorials/build.py`` writes from its cell sources
  (outputs aside), so the sources and the notebooks cannot drift apart.
"""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
REPO = "rope-behavior/rope-behavior"
BADGE = (
    "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    f"(https://colab.research.google.com/github/{REPO}/blob/main/tutorials/{{name}})"
)
INSTALL = f'%pip install -q "rope_behavior @ git+https://github.com/{REPO}"'
# a call that prints or draws: its cell must have stored output
SHOWS = re.compile(r"(^|[^\w.])print\(|\.show\(")
# flags that guard cells which need the hub, a cluster or a long run
GUARDS = {"RUN_HUB": ("False", "IN_COLAB"), "RUN_RAY": ("False",), "RUN_SWEEP": ("False",)}
NAMES = (
    "01_start_here",
    "02_inside_one_head",
    "03_ablations_and_patching",
    "04_the_causal_result",
    "05_your_model",
)


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    text = cell["source"]
    return text if isinstance(text, str) else "".join(text)


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_the_tutorials_are_all_there():
    assert [p.stem for p in NOTEBOOKS] == list(NAMES)


@pytest.fixture(params=NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def notebook(request) -> tuple[Path, dict]:
    return request.param, load(request.param)


def test_first_cell_has_the_colab_badge_of_its_own_path(notebook):
    path, nb = notebook
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown"
    text = source(first)
    assert text.startswith("# "), "the first cell starts with the title"
    assert BADGE.format(name=path.name) in text
    assert text.count("colab.research.google.com/github/") == 1


def test_setup_cell_installs_only_from_the_repository_and_only_in_colab(notebook):
    _, nb = notebook
    setup = source(code_cells(nb)[0])
    assert 'IN_COLAB = "google.colab" in sys.modules' in setup
    lines = [
        ln.strip() for ln in setup.splitlines() if ln.strip() and not ln.strip().startswith("#")
    ]
    assert lines == [
        "import sys",
        'IN_COLAB = "google.colab" in sys.modules',
        "if IN_COLAB:",
        INSTALL,
    ]
    for nb_cell in code_cells(nb)[1:]:
        text = source(nb_cell)
        assert not re.search(r"^\s*[%!]\s*(pip|uv|conda|apt|git|wget|curl)\b", text, re.M), (
            "only the setup cell installs anything"
        )
    urls = set(re.findall(r"https?://[^\s\"')]+", json.dumps([source(c) for c in code_cells(nb)])))
    assert all(
        u.startswith(("https://github.com/" + REPO, f"https://raw.githubusercontent.com/{REPO}/"))
        for u in urls
    ), f"code cells reach only the repository; found {sorted(urls)}"


def test_cells_that_print_or_draw_have_stored_output(notebook):
    _, nb = notebook
    missing = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        text = source(cell)
        guarded = re.search(r"^if (RUN_\w+|IN_COLAB):", text, re.M)
        top_level_show = any(
            SHOWS.search(ln) for ln in text.splitlines() if not ln.startswith((" ", "#"))
        )
        if top_level_show and not guarded and not cell.get("outputs"):
            missing.append(i)
        assert cell.get("execution_count") is not None, f"cell {i} was not executed"
    assert not missing, f"cells {missing} print or draw but hold no stored output"


def test_no_stored_output_is_an_error(notebook):
    _, nb = notebook
    for i, cell in enumerate(code_cells(nb)):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"code cell {i}: {out.get('ename')}"
            text = out.get("text", "")
            text = text if isinstance(text, str) else "".join(text)
            assert "Traceback" not in text, f"code cell {i} stored a traceback: {text[:300]}"
            assert "Error" not in text.split("\n")[0], (
                f"code cell {i} stored an error: {text[:300]}"
            )


def test_figures_are_stored_as_pictures_a_code_host_shows(notebook):
    _, nb = notebook
    for i, cell in enumerate(code_cells(nb)):
        if ".show(" not in source(cell) or re.search(r"^if RUN_\w+:", source(cell), re.M):
            continue
        kinds = {k for out in cell.get("outputs", []) for k in out.get("data", {})}
        assert "image/png" in kinds, f"code cell {i} shows a figure but stored no PNG: {kinds}"


def test_guarded_cells_are_off(notebook):
    _, nb = notebook
    for cell in code_cells(nb):
        text = source(cell)
        for flag, allowed in GUARDS.items():
            for value in re.findall(rf"^{flag} = (\w+)", text, re.M):
                assert value in allowed, f"{flag} = {value}: must be off in the stored notebook"
            if re.search(rf"^if {flag}:", text, re.M):
                assert re.search(rf"^{flag} = ", text, re.M), f"{flag} is set in its own cell"


def test_stored_outputs_vary_with_nothing_but_the_code(notebook):
    """No absolute paths of the machine that ran them, no timing, no progress bars."""
    _, nb = notebook
    for i, cell in enumerate(code_cells(nb)):
        assert "execution" not in cell.get("metadata", {}), f"cell {i} stores its timing"
        for out in cell.get("outputs", []):
            text = out.get("text", "") or out.get("data", {}).get("text/plain", "")
            text = text if isinstance(text, str) else "".join(text)
            for local in ("/work/", "/home/", "/tmp/", "/root/"):
                assert local not in text, f"cell {i} prints a local path: {text[:200]}"
            for bar in ("it/s]", "\r"):
                assert bar not in text, f"cell {i} stores a progress bar"
            assert "seconds=" not in text, f"cell {i} prints a timing"


def test_files_are_small(notebook):
    path, _ = notebook
    assert path.stat().st_size < 1_000_000, f"{path.name} is {path.stat().st_size} bytes"


def test_notebooks_match_their_sources(notebook):
    """tutorials/build.py writes the same cells (sources, ids, order) from tutorials/cells/."""
    path, nb = notebook
    pytest.importorskip("nbformat", reason="tutorials/build.py needs nbformat (the dev extra)")
    spec = importlib.util.spec_from_file_location("tutorials_build", TUTORIALS / "build.py")
    assert spec is not None
    assert spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    sys.path.insert(0, str(TUTORIALS / "cells"))
    try:
        fresh = build.notebook(path.stem)
    finally:
        sys.path.remove(str(TUTORIALS / "cells"))
    stored = [(c["cell_type"], c.get("id"), source(c)) for c in nb["cells"]]
    built = [(c["cell_type"], c.get("id"), source(c)) for c in fresh.cells]
    assert stored == built, (
        f"{path.name} differs from its source tutorials/cells/{path.stem}.py: rebuild it with "
        f"`.venv/bin/python tutorials/build.py --execute {path.stem[:2]}` (after a markdown-only "
        f"edit, `--keep {path.stem[:2]}` keeps the stored outputs)"
    )
