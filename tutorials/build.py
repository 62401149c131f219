"""Write the tutorial notebooks from the cell lists in tutorials/cells/, and store their outputs.

    .venv/bin/python tutorials/build.py              # write every .ipynb (no outputs)
    .venv/bin/python tutorials/build.py --execute    # ... then run each top to bottom here
                                                     #     and store its outputs
    .venv/bin/python tutorials/build.py --execute 03 # only the notebooks whose name has "03"
    .venv/bin/python tutorials/build.py --keep 02    # after editing markdown only: keep the
                                                     #     stored outputs of unchanged code cells

Each notebook is one module of tutorials/cells/ holding ``CELLS``, a list of ``md(...)`` and
``code(...)`` cells. The first markdown cell carries the "Open in Colab" badge of the
notebook's own path and the first code cell is SETUP (below): in Colab it installs
rope_behavior from its repository, elsewhere it does nothing.

Outputs are stored with figures as static PNG (``RB_FIGURES=png``: plotly + kaleido, which
drives a local Chrome / Chromium), so the notebooks read on a code host that runs no
JavaScript; run interactively, the same cells show interactive figures. Storing strips
what varies from run to run and says nothing (cell timing metadata, tqdm's warning that ipywidgets is missing) and checks that no
cell failed. ``--execute`` prints each notebook's wall time and CPU time.
"""

import argparse
import importlib.util
import os
import resource
import sys
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
REPO_URL = "https://github.com/rope-behavior/rope-behavior"
COLAB = "https://colab.research.google.com/github/rope-behavior/rope-behavior/blob/main/tutorials"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
INSTALL = f'%pip install -q "rope_behavior @ git+{REPO_URL}"'

SETUP = f"""\
# In Colab: install rope_behavior from its repository (nothing else is downloaded).
# Anywhere else this cell does nothing: install the project first (README: scripts/setup.sh).
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    {INSTALL}"""

NOTEBOOKS = (
    "01_start_here",
    "02_inside_one_head",
    "03_ablations_and_patching",
    "04_the_causal_result",
    "05_your_model",
)


def badge(name: str) -> str:
    """The Colab badge of ``tutorials/<name>.ipynb``."""
    return f"[![Open In Colab]({BADGE})]({COLAB}/{name}.ipynb)"


def _cells(name: str) -> list[tuple[str, str]]:
    spec = importlib.util.spec_from_file_location(f"cells_{name}", HERE / "cells" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.CELLS)


def notebook(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` without outputs: title + badge, SETUP, then its cells."""
    cells = _cells(name)
    kind, first = cells[0]
    assert kind == "markdown", f"{name}: the first cell must be the markdown title"
    title, _, rest = first.partition("\n")
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(f"{title}\n\n{badge(name)}\n{rest}".rstrip()))
    nb.cells.append(nbformat.v4.new_code_cell(SETUP))
    for kind, source in cells[1:]:
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(make(source))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:2]}-{i:02d}"  # stable ids: rebuilding changes no line
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    return nb


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def execute(nb: nbformat.NotebookNode) -> tuple[float, float]:
    """Run ``nb`` in place (cwd tutorials/, as the notebook test runner does); return the
    wall and CPU seconds its kernel took (the kernel is this process's child)."""
    from nbclient import NotebookClient

    os.environ["RB_FIGURES"] = "png"
    t0, c0 = time.perf_counter(), _cpu_children()
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(HERE)}},
        record_timing=False,
    )
    client.execute()
    return time.perf_counter() - t0, _cpu_children() - c0


NOISE = ("TqdmWarning: IProgress not found",)  # tqdm.auto in a kernel without ipywidgets


def sanitise(nb: nbformat.NotebookNode) -> None:
    """Drop stderr that says nothing about the tutorial (NOISE) and cell timing metadata."""
    for cell in nb.cells:
        cell.get("metadata", {}).pop("execution", None)
        if "outputs" in cell:
            cell["outputs"] = [
                o
                for o in cell["outputs"]
                if not (o.get("name") == "stderr" and any(n in o.get("text", "") for n in NOISE))
            ]


def check_outputs(name: str, nb: nbformat.NotebookNode) -> None:
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" or "Traceback" in str(out.get("text", "")):
                raise SystemExit(f"{name}: cell {i} failed:\n{out}")
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                print(f"  note: {name} cell {i} wrote to stderr: {out['text'][:300]!r}")


def keep_outputs(name: str, nb: nbformat.NotebookNode, path: Path) -> None:
    """Copy the stored outputs of ``path`` into ``nb``; refuse when a code cell changed
    (its outputs would no longer be what the code produces: run --execute)."""
    old = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    new = [c for c in nb.cells if c.cell_type == "code"]
    if [c.source for c in old] != [c.source for c in new]:
        raise SystemExit(f"{name}: code cells changed since its outputs were stored; use --execute")
    for o, n in zip(old, new):
        n.outputs, n.execution_count = o.outputs, o.execution_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--execute", action="store_true", help="run and store outputs")
    parser.add_argument("--keep", action="store_true", help="keep stored outputs (markdown edits)")
    parser.add_argument("only", nargs="*", help="substrings of notebook names to build")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE / "cells"))  # cells/*.py import md / code from _make.py
    names = [n for n in NOTEBOOKS if not args.only or any(s in n for s in args.only)]
    for name in names:
        nb = notebook(name)
        path = HERE / f"{name}.ipynb"
        if args.execute:
            wall, cpu = execute(nb)
            sanitise(nb)
            check_outputs(name, nb)
            size = len(nbformat.writes(nb).encode())
            print(f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU, {size / 1024:.0f} KiB")
        elif args.keep:
            keep_outputs(name, nb, path)
        nbformat.validate(nb)
        nbformat.write(nb, path)


if __name__ == "__main__":
    main()
