"""Length sweep of the canonical tasks (and, given checkpoints, the multi-hop tasks):
accuracy and discrepancy from the training length to 50x it, per frequency setting.

    python scripts/length_sweep.py --out results/length            # Index, Retrieval
    python scripts/length_sweep.py --out /tmp/ls --multihop results/multihop/checkpoints

Trains one toy model per (task, setting, seed) with the recorded experiment's
configuration (``rope_behavior.tasks.experiment``: ``toy_model(task, seed=seed)``, two
heads, d_head 32, ``TrainConfig(progress=False)``: 1500 steps at most, early stop at 99%
held-out accuracy), trained and evaluated under the setting; ``--multihop`` adds the last
checkpoint of every folder below it (``scripts/train_multihop.py``, plain RoPE). Then
``rope_behavior.tasks.length_sweep.length_sweep``. Writes to ``--out``: ``length.csv``
(task, setting, seed, multiple, length, accuracy, gap, normalised_gap, n_prompts, plus
train_accuracy and train_seconds), ``length_heads.csv`` (per head), ``length.html`` and
``length.png`` (kaleido), ``meta.json`` (arguments and seconds).
"""

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from rope_behavior.tasks.generators import IndexTask, RetrievalTask
from rope_behavior.tasks.length_sweep import SweepModel, checkpoints_in, length_sweep
from rope_behavior.tasks.settings import parse_setting
from rope_behavior.tasks.toy import toy_model
from rope_behavior.tasks.training import TrainConfig, train
from rope_behavior.viz.length_plots import length_sweep_figure

SETTINGS = ("all", "pair:0", "pair:8", "pair:15", "nope")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS))
    ap.add_argument("--tasks", nargs="+", default=["index", "retrieval"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--multiples", nargs="+", type=int, default=[1, 2, 5, 10, 20, 50])
    ap.add_argument("--n-prompts", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--multihop", default=None, help="folder of multi-hop checkpoints")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tasks = {"index": IndexTask(), "retrieval": RetrievalTask()}
    runs, trained = [], []
    for name in args.tasks:
        task = tasks[name]
        for setting_name in args.settings:
            for seed in args.seeds:
                model = toy_model(task, seed=seed)
                setting = parse_setting(setting_name, model.cfg.n_pairs)
                config = TrainConfig(steps=args.steps, seed=seed, progress=False)
                result = train(model, task, config, fwd_hooks=setting.hooks)
                runs.append(SweepModel(model.eval(), task, setting, seed))
                trained.append({"task": task.kind, "setting": setting.name, "seed": seed,
                                "train_accuracy": result.final_accuracy,
                                "train_seconds": result.seconds})  # fmt: skip
                print(f"trained {name} {setting_name} seed {seed}: "
                      f"{result.final_accuracy:.3f} in {result.seconds:.0f} s", flush=True)  # fmt: skip
    items: list[object] = list(runs)
    if args.multihop:
        items += checkpoints_in(args.multihop)
    train_seconds = time.perf_counter() - start
    sweep = length_sweep(items, multiples=args.multiples, n_prompts=args.n_prompts)
    print(sweep)
    frame = sweep.to_frame()
    if trained:
        frame = frame.merge(pd.DataFrame(trained), on=["task", "setting", "seed"], how="left")
    frame.to_csv(out / "length.csv", index=False)
    sweep.head_frame().to_csv(out / "length_heads.csv", index=False)
    fig = length_sweep_figure(sweep)
    fig.write_html(out / "length.html", include_plotlyjs="cdn")
    fig.write_image(out / "length.png", scale=1)
    seconds = time.perf_counter() - start
    meta = {**vars(args), "train_seconds": train_seconds, "sweep_seconds": sweep.seconds,
            "seconds": seconds}  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {out} in {seconds:.0f} s (training {train_seconds:.0f} s, sweep "
          f"{sweep.seconds:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
