"""Train the one-head-per-layer GPT-J style model on the multi-hop Number and Letter tasks
and write the accuracy and head trajectories with their figures.

    python scripts/train_multihop.py --out results/multihop            # CPU (2 cores)
    python scripts/train_multihop.py --out mh --preset paper --device cuda --steps 20000
    python scripts/train_multihop.py --out /tmp/mh --smoke             # seconds: a check

Presets (any flag given overrides its value):
  cpu (default)  6 layers x width 64, 1-2 hops, 4,000 steps of 128 prompts, lr 3e-3: Number
                 to 1.00 on both hop counts, Letter to 1.00 / 0.66 (1 / 2 hops); 38 minutes
                 measured on 2 cores while other jobs ran (0.24 / 0.32 s a step).
  paper          the follow-up's model, 12 layers x width 128, 1-4 hops, 2,500 steps of 64
                 prompts, lr 1e-3 (``MultiHopConfig``'s defaults): on a CPU those 2,500
                 steps are too few (Number 0.19, Letter about 0.15 accuracy when measured);
                 meant for a GPU with more steps.

Every ``--record-every`` steps (step 0 and the last included) each task's run prints a line
(step, loss, seconds so far), records the
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
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from rope_behavior.scoring.head_classes import head_purity
from rope_behavior.tasks.multihop import LetterHopsTask, NumberHopsTask
from rope_behavior.tasks.multihop_experiment import MultiHopConfig, run_multihop, tracker_prompts
from rope_behavior.tracking import Tracker
from rope_behavior.viz.multihop_plots import multihop_training
from rope_behavior.viz.training_plots import plane_trajectories

SMOKE = {"steps": 4, "batch_size": 8, "n_layers": 2, "d_model": 16, "record_every": 2,
         "n_eval": 32, "n_score": 8}  # fmt: skip
PAPER = MultiHopConfig()
PRESETS = {
    "cpu": {"steps": 4000, "batch_size": 128, "lr": 3e-3, "n_layers": 6, "d_model": 64,
            "record_every": 250, "max_hops": 2},
    "paper": {"steps": PAPER.steps, "batch_size": PAPER.batch_size, "lr": PAPER.lr,
              "n_layers": PAPER.n_layers, "d_model": PAPER.d_model,
              "record_every": PAPER.record_every, "max_hops": 4},
}  # fmt: skip


class _Said(Tracker):
    """The tracker, and one line at each record step (a long run is not silent)."""

    def __init__(self, name: str, config: MultiHopConfig, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.name, self.config, self.start = name, config, time.perf_counter()

    def __call__(self, state: object) -> object:
        out = super().__call__(state)  # type: ignore[arg-type]
        step, final = state.step, state.final  # type: ignore[attr-defined]
        if step % self.config.record_every == 0 or final:
            loss = state.loss  # type: ignore[attr-defined]
            said = "untrained" if loss is None else f"loss {loss:.3f}"
            seconds = time.perf_counter() - self.start
            print(
                f"{self.name} step {step}/{self.config.steps}: {said}, {seconds:.0f} s", flush=True
            )
        return out


def main(argv: list[str] | None = None) -> None:
    defaults = MultiHopConfig()
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:3]),
    )  # fmt: skip
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                    help="sizes and schedule (default cpu; see below)")  # fmt: skip
    for flag, kind in (("steps", int), ("batch-size", int), ("lr", float), ("n-layers", int),
                       ("d-model", int), ("record-every", int), ("max-hops", int)):  # fmt: skip
        ap.add_argument(f"--{flag}", type=kind, default=None, help="default: the preset's")
    ap.add_argument("--n-eval", type=int, default=defaults.n_eval)
    ap.add_argument("--n-score", type=int, default=defaults.n_score)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--smoke", action="store_true", help=f"a tiny configuration: {SMOKE}")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = dict(PRESETS[args.preset])
    for key in chosen:
        if getattr(args, key) is not None:
            chosen[key] = getattr(args, key)
    max_hops = chosen.pop("max_hops")
    options = {
        **chosen, "n_eval": args.n_eval, "n_score": args.n_score, "seed": args.seed,
        "device": args.device, **(SMOKE if args.smoke else {}),
    }  # fmt: skip
    config = MultiHopConfig(**options)
    tasks = {
        "number": NumberHopsTask(max_hops=max_hops),
        "letter": LetterHopsTask(max_hops=max_hops),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def tracker(name: str, task: object) -> Tracker:
        return _Said(
            name,
            config,
            tracker_prompts(task, config),  # type: ignore[arg-type]
            every=config.record_every,
            out_dir=out / "track" / name,
            block_size=1,
            n_swaps=None,
            exclude_keys="none",
            seed=config.seed,
        )

    result = run_multihop(config, tasks=tasks, out_dir=out, trackers=tracker)
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
    run = {"config": asdict(config), "preset": args.preset, "max_hops": max_hops,
           "seconds": result.seconds,
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
