"""Train the small toy models shipped in ``rope_behavior/checkpoints``.

    python scripts/train_checkpoints.py [--out rope_behavior/checkpoints] [--threads 1]

Each model is the smallest configuration tried (one head; d_head 8, 16, 32; two heads)
that reaches >= 98% under its setting, chosen to show the task's frequency story:

* ``index``: Index task, setting ``high`` (only pair 0): a positional head.
* ``retrieval``: Retrieval task, setting ``nope`` (angle 0 on every pair): a symbolic head.
* ``partial_induction``: Partial induction, setting ``two_angle:0.1``: content + recency.

The metadata (``checkpoint_info(path).extra``) records the setting, the model and
training configuration, the seed and the accuracy measured on ``N_EVAL`` fresh prompts
(generator seed ``EVAL_SEED``) under the setting.
"""

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from rope_behavior.tasks import (
    IndexTask,
    PartialInductionTask,
    RetrievalTask,
    TrainConfig,
    evaluate,
    save_checkpoint,
    toy_model,
    train,
)
from rope_behavior.tasks.settings import parse_setting

N_EVAL = 4096
EVAL_SEED = 12345

_CONFIG = TrainConfig(steps=3000, target_accuracy=0.995, progress=False)
MODELS = {
    "index": (IndexTask(), "high", {"n_heads": 1, "d_head": 8}, _CONFIG),
    "retrieval": (RetrievalTask(), "nope", {"n_heads": 1, "d_head": 16}, _CONFIG),
    "partial_induction": (
        PartialInductionTask(),
        "two_angle:0.1",
        {"n_heads": 1, "d_head": 8},
        _CONFIG,
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "rope_behavior" / "checkpoints")
    )
    ap.add_argument("--only", nargs="*", choices=list(MODELS), help="train only these")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.only or MODELS:
        task, setting_name, options, config = MODELS[name]
        model = toy_model(task, seed=args.seed, **options)
        setting = parse_setting(setting_name, model.cfg.n_pairs)
        start = time.perf_counter()
        result = train(
            model,
            task,
            TrainConfig(**{**asdict(config), "seed": args.seed}),
            fwd_hooks=setting.hooks,
        )
        gen = torch.Generator().manual_seed(EVAL_SEED)
        accuracy = evaluate(model, task, N_EVAL, gen, fwd_hooks=setting.hooks)
        extra = {
            "setting": setting_name,
            "accuracy": accuracy,
            "n_eval": N_EVAL,
            "eval_seed": EVAL_SEED,
            "seed": args.seed,
            "steps": result.steps,
            "train_config": {**asdict(config), "seed": args.seed, "progress": False},
            "model_options": options,
        }
        path = save_checkpoint(model, out / f"{name}.safetensors", task=task, extra=extra)
        print(
            f"{name}: {setting_name} acc {accuracy:.4f} after {result.steps} steps "
            f"({time.perf_counter() - start:.1f} s) -> {path} ({path.stat().st_size / 1024:.0f} KB)"
        )
        print("  " + json.dumps({k: extra[k] for k in ("setting", "accuracy", "steps")}))


if __name__ == "__main__":
    main()
