"""Record the golden set: numbers of today's code that a refactor must not change.

Run it on a frozen copy of the code, so the package that computes the goldens is the one
being frozen, not a tree mid-refactor::

    git worktree add /tmp/golden-src HEAD
    cd /tmp/golden-src && PYTHONPATH=/tmp/golden-src \\
        /work/main/.venv/bin/python /work/main/scripts/record_goldens.py --expect-src /tmp/golden-src

The computations live in ``tests/goldens/compute.py`` (beside this script's repository),
loaded here by file path; they import ``rope_behavior`` and ``tests.models`` from
``sys.path`` (so from the frozen copy above). The result, ``{key: float64 tensor}``, is
written to ``tests/goldens/goldens.pt``; ``tests/test_goldens.py`` recomputes every key
with the current package and compares. ``--check FILE`` recomputes and compares with
FILE to 0.0 instead of writing (a determinism check).
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMPUTE = ROOT / "tests" / "goldens" / "compute.py"
OUT = ROOT / "tests" / "goldens" / "goldens.pt"


def _load_compute():
    spec = importlib.util.spec_from_file_location("golden_compute", COMPUTE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument(
        "--expect-src",
        type=Path,
        default=None,
        help="refuse unless rope_behavior and tests.models are imported from here",
    )
    p.add_argument(
        "--check",
        type=Path,
        default=None,
        help="recompute and compare with this goldens file to 0.0; write nothing",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: several times faster for these small "
        "models on a shared 2-core box; 1 and 2 gave equal numbers)",
    )
    args = p.parse_args()  # fmt: skip
    torch.set_num_threads(args.threads)

    import rope_behavior
    import tests.models

    print(f"rope_behavior from {rope_behavior.__file__}")
    print(f"tests.models  from {tests.models.__file__}")
    if args.expect_src is not None:
        src = str(args.expect_src.resolve())
        for mod in (rope_behavior, tests.models):
            if not str(Path(mod.__file__).resolve()).startswith(src):
                print(f"error: {mod.__name__} is not imported from {src}", file=sys.stderr)
                return 1
    compute = _load_compute()
    goldens: dict[str, torch.Tensor] = {}
    t_all = time.perf_counter()
    for name, fn in compute.GROUPS.items():
        t0 = time.perf_counter()
        got = fn()
        goldens |= got
        print(f"{name:14s} {len(got):4d} keys  {time.perf_counter() - t0:6.1f} s")
    print(f"total          {len(goldens):4d} keys  {time.perf_counter() - t_all:6.1f} s")
    bad = [k for k, v in goldens.items() if v.dtype != torch.float64 or v.device.type != "cpu"]
    assert not bad, bad

    if args.check is not None:
        old = torch.load(args.check, weights_only=True)
        diff = sorted(set(old) ^ set(goldens))
        worst = 0.0
        for k in sorted(set(old) & set(goldens)):
            a, b = old[k], goldens[k]
            if a.shape != b.shape or not torch.equal(torch.isnan(a), torch.isnan(b)):
                diff.append(k)
                continue
            ok = ~torch.isnan(a)
            d = float((a[ok] - b[ok]).abs().max()) if ok.any() else 0.0
            if d > 0:
                diff.append(f"{k} (max |diff| {d:.3g})")
            worst = max(worst, d)
        print(f"check against {args.check}: max |diff| {worst!r}; differing keys: {diff or 'none'}")
        return 1 if diff else 0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(goldens, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
