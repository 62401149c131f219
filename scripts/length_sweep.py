"""Length sweep of the canonical tasks (and, given a finished multi-hop run, the multi-hop
tasks): accuracy and discrepancy from the training length to 50x it, per frequency setting.

    python scripts/length_sweep.py --out results/length --threads 1     # Index, Retrieval
    python scripts/length_sweep.py --out /tmp/ls --multihop results/multihop

Trains one toy model per (task, setting, seed) with the recorded experiment's
configuration (``rope_behavior.tasks.experiment``: ``toy_model(task, seed=seed)``, two
heads, d_head 32, ``TrainConfig(progress=False)``: AdamW lr 3e-3, batch 128, 1500 steps
at most, early stop at 99% held-out accuracy), trained and evaluated under the setting.
``--multihop`` adds the last checkpoint of each task of a finished
``scripts/train_multihop.py`` run (its ``--out`` folder or that folder's ``checkpoints/``;
refused without the ``run.json`` the script writes when it ends, unless
``--allow-unfinished``), read under plain RoPE. Then
``rope_behavior.tasks.length_sweep.length_sweep``. Arguments are checked before any
training. Writes to ``--out``: ``length.csv`` (task, setting, seed, multiple, length,
accuracy, chance, gap, normalised_gap, n_prompts, plus train_accuracy, train_steps and
train_seconds), ``length_heads.csv`` (per head), ``length.html`` and ``length.png``
(where kaleido is installed), ``meta.json`` (arguments, seconds, the machine's load).
"""

import argparse
import json
import os
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import pandas as pd
import torch

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.tasks.generators import IndexTask, RetrievalTask
from rope_behavior.tasks.length_sweep import SweepModel, checkpoints_in, length_sweep
from rope_behavior.tasks.settings import parse_setting
from rope_behavior.tasks.toy import toy_model
from rope_behavior.tasks.training import TrainConfig, train
from rope_behavior.viz.length_plots import length_sweep_figure

SETTINGS = ("all", "pair:0", "pair:8", "pair:15", "nope")
TASKS = {"index": IndexTask(), "retrieval": RetrievalTask()}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1; got {text}")
    return value


def multihop_checkpoints(folder: str, allow_unfinished: bool) -> list[Path]:
    """The last checkpoint of each task of a ``train_multihop.py`` run (module docstring)."""
    root = Path(folder)
    if not root.is_dir():
        raise RopeBehaviorError(f"--multihop {folder!r} is not a folder; expected the --out "
                                "folder of scripts/train_multihop.py.")  # fmt: skip
    finished = (root / "run.json").is_file() or (root.parent / "run.json").is_file()
    if not finished and not allow_unfinished:
        raise RopeBehaviorError(
            f"--multihop {folder!r}: no run.json in it or its parent, so "
            "scripts/train_multihop.py has not finished there and its last checkpoints are "
            "not the trained models; expected a finished run (or pass --allow-unfinished)."
        )
    return checkpoints_in(root / "checkpoints" if (root / "checkpoints").is_dir() else root)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS))
    ap.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--multiples", nargs="+", type=_positive, default=[1, 2, 5, 10, 20, 50])
    ap.add_argument("--n-prompts", type=_positive, default=256)
    ap.add_argument("--steps", type=_positive, default=1500)
    ap.add_argument("--multihop", default=None, help="a finished train_multihop.py run")
    ap.add_argument("--allow-unfinished", action="store_true")
    ap.add_argument("--threads", type=_positive, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    try:
        n_pairs = toy_model(IndexTask()).cfg.n_pairs
        settings = [parse_setting(name, n_pairs) for name in args.settings]
        extra = multihop_checkpoints(args.multihop, args.allow_unfinished) if args.multihop else []
        if any(s < 0 for s in args.seeds):
            raise RopeBehaviorError(f"--seeds {args.seeds}; expected ints >= 0.")
        if not args.tasks and not extra:
            raise RopeBehaviorError("--tasks is empty and no --multihop: nothing to sweep.")
    except RopeBehaviorError as err:
        sys.exit(f"length_sweep.py: {err}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs, trained = [], []
    for name in args.tasks:
        task = TASKS[name]
        for setting in settings:
            for seed in args.seeds:
                model = toy_model(task, seed=seed)
                config = TrainConfig(steps=args.steps, seed=seed, progress=False)
                result = train(model, task, config, fwd_hooks=setting.hooks)
                runs.append(SweepModel(model.eval(), task, setting, seed))
                trained.append({"task": task.kind, "setting": setting.name, "seed": seed,
                                "train_accuracy": result.final_accuracy,
                                "train_steps": result.steps,
                                "train_seconds": result.seconds})  # fmt: skip
                print(f"trained {name} {setting.name} seed {seed}: {result.final_accuracy:.3f} "
                      f"({result.steps} steps, {result.seconds:.0f} s)", flush=True)  # fmt: skip
    train_seconds = time.perf_counter() - start
    sweep = length_sweep([*runs, *extra], multiples=args.multiples, n_prompts=args.n_prompts)
    print(sweep)
    frame = sweep.to_frame()
    if trained:
        frame = frame.merge(pd.DataFrame(trained), on=["task", "setting", "seed"], how="left")
    frame.to_csv(out / "length.csv", index=False)
    sweep.head_frame().to_csv(out / "length_heads.csv", index=False)
    fig = length_sweep_figure(sweep)
    fig.write_html(out / "length.html")  # plotly.js inlined: it opens offline
    if find_spec("kaleido") is not None:  # static images need kaleido (not a dependency)
        fig.write_image(out / "length.png", scale=1)
    else:
        print("length.png not written: static images need kaleido (pip install kaleido); "
              "length.html holds the figure")  # fmt: skip
    seconds = time.perf_counter() - start
    meta = {**vars(args), "multihop_checkpoints": [str(p) for p in extra],
            "train_seconds": train_seconds, "sweep_seconds": sweep.seconds,
            "seconds": seconds, "load_average": os.getloadavg(),
            "cpus": os.cpu_count()}  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {out} in {seconds:.0f} s (training {train_seconds:.0f} s, sweep "
          f"{sweep.seconds:.0f} s; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores)")  # fmt: skip


if __name__ == "__main__":
    main()
