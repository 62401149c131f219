"""Train the one-head-per-layer GPT-J style model on the multi-hop Number and Letter tasks
and write the accuracy and head trajectories with their figures.

    python scripts/train_multihop.py --out results/multihop            # CPU (2 cores)
    python scripts/train_multihop.py --out results/multihop --device cuda --steps 10000
    python scripts/train_multihop.py --out /tmp/mh --smoke             # seconds: a check

Every ``--record-every`` steps (step 0 and the last included) each task's run records the
held-out accuracy per hop count, saves a checkpoint, and a ``rope_behavior.tracking.
Tracker`` scores every head on ``--n-score`` fixed prompts (keys mode, one-token blocks,
every swap, no key excluded: the toy model has no BOS).

Writes to ``--out``: ``accuracy.csv`` (task, step, loss, hops, accuracy, n), ``heads.csv``
(task + the tracker's head rows), ``layers.csv`` (the heads at the last step with their
``purity`` class: positional / symbolic / mixed / uniform / unidentifiable, read with
``rope_behavior.scoring.head_classes.head_purity``), ``<task>.html`` (accuracy over steps
| s_POS - s_SYM per layer over steps | the last step's scores), ``<task>_plane.html`` (the
tracker's plane trajectories), ``track/<task>/`` (the tracker's store) and
``checkpoints/<task>/step_<N>.safetensors``. The method: ``python -m pydoc
rope_behavior.tasks.multihop_experiment``; the tasks: ``rope_behavior.tasks.multihop``.
"""

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from rope_behavior.scoring.head_classes import head_purity
from rope_behavior.tasks.multihop_experiment import MultiHopConfig, run_multihop, tracker_prompts
from rope_behavior.tracking import Tracker
from rope_behavior.viz.multihop_plots import multihop_training
from rope_behavior.viz.training_plots import plane_trajectories

SMOKE = {"steps": 4, "batch_size": 8, "n_layers": 2, "d_model": 16, "record_every": 2,
         "n_eval": 32, "n_score": 8}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    defaults = MultiHopConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--steps", type=int, default=defaults.steps)
    ap.add_argument("--batch-size", type=int, default=defaults.batch_size)
    ap.add_argument("--lr", type=float, default=defaults.lr)
    ap.add_argument("--n-layers", type=int, default=defaults.n_layers)
    ap.add_argument("--d-model", type=int, default=defaults.d_model)
    ap.add_argument("--record-every", type=int, default=defaults.record_every)
    ap.add_argument("--n-eval", type=int, default=defaults.n_eval)
    ap.add_argument("--n-score", type=int, default=defaults.n_score)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--smoke", action="store_true", help=f"a tiny configuration: {SMOKE}")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    options = {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "n_layers": args.n_layers, "d_model": args.d_model, "record_every": args.record_every,
        "n_eval": args.n_eval, "n_score": args.n_score, "seed": args.seed,
        "device": args.device, **(SMOKE if args.smoke else {}),
    }  # fmt: skip
    config = MultiHopConfig(**options)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def tracker(name: str, task: object) -> Tracker:
        return Tracker(
            tracker_prompts(task, config),  # type: ignore[arg-type]
            every=config.record_every,
            out_dir=out / "track" / name,
            block_size=1,
            n_swaps=None,
            exclude_keys="none",
            seed=config.seed,
        )

    result = run_multihop(config, out_dir=out, trackers=tracker)
    heads = pd.concat(
        [t.trajectory().heads.assign(task=name) for name, t in result.tracked.items()],
        ignore_index=True,
    )
    last = heads[heads["step"] == heads.groupby("task")["step"].transform("max")].copy()
    last["purity"] = head_purity(last, s_pos="s_pos_mean", s_sym="s_sym_mean")
    result.accuracy.to_csv(out / "accuracy.csv", index=False)
    heads.to_csv(out / "heads.csv", index=False)
    last.to_csv(out / "layers.csv", index=False)
    marked = heads.merge(last[["task", "step", "layer", "head", "purity"]], how="left")
    for name, t in result.tracked.items():
        multihop_training(result.accuracy, marked, task=name).write_html(out / f"{name}.html")
        plane_trajectories(t.trajectory(), title=f"{name}: heads over training").write_html(
            out / f"{name}_plane.html"
        )
    run = {"config": asdict(config), "seconds": result.seconds,
           "seconds_per_step": dict(result.seconds_per_step)}  # fmt: skip
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    print(result)
    for name, part in last.groupby("task", sort=False):
        print(f"{name}: layers 0..{len(part) - 1} end " + ", ".join(part["purity"].astype(str)))
    print(
        "seconds per step: "
        + ", ".join(f"{k} {v:.3f}" for k, v in result.seconds_per_step.items())
        + f"; {result.seconds:.0f} s in all; wrote {out}"
    )


if __name__ == "__main__":
    main()
