"""The ``rope-behavior`` command line.

    rope-behavior inspect --model meta-llama/Llama-3.2-1B --text "..." --out DIR
    rope-behavior inspect --random llama --out DIR          # offline: random weights
    rope-behavior scores  --random llama --out DIR        # the positional-symbolic plane
    rope-behavior tasks [--quick] --out DIR                  # the canonical-task experiment
    rope-behavior analyze [MODEL] --out DIR      # the main job: one report (default: shipped LM)
    rope-behavior demo --out DIR                 # offline: the main job on the shipped models
    rope-behavior sweep --task index --out DIR   # a frequency patching sweep, resumable

Every command prints a short summary and writes tidy CSVs and HTML figures to ``--out``.
Errors print one line on stderr and exit with code 2 (``--debug`` shows the traceback).
"""

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rope_behavior.cli.random_models import RANDOM_FAMILIES, build_random_model
from rope_behavior.errors import RopeBehaviorError

__all__ = ["build_random_model", "main"]  # build_random_model: from .random_models


def _load_model(args: argparse.Namespace) -> Any:
    if args.random:
        return build_random_model(args.random, seed=args.seed)
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(args.model, device=args.device)


def _tokens(model: Any, args: argparse.Namespace) -> torch.Tensor:
    if args.text and not args.random:
        return model.to_tokens(args.text)
    from rope_behavior.model.context import resolve

    vocab = resolve(model).adapter.vocab_size()
    if vocab is None:
        raise RopeBehaviorError(
            "the model states no vocabulary size; pass --text to score real text"
        )
    gen = torch.Generator().manual_seed(args.seed)
    return torch.randint(0, vocab, (args.batch, args.length), generator=gen)


def _cmd_inspect(args: argparse.Namespace) -> int:
    import rope_behavior as rb
    from rope_behavior.viz import plots

    model = _load_model(args)
    spec = rb.RopeSpec.from_model(model)
    print(spec)
    tokens = _tokens(model, args)
    usage = rb.frequency_usage(rb.capture(model, tokens))
    heads = usage.head_frame()
    print(heads.round(3).to_string(index=False))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        spec.to_frame().to_csv(out / "spec.csv", index=False)
        usage.to_frame().to_csv(out / "usage.csv", index=False)
        plots.omega_spectrum(spec).write_html(out / "wavelengths.html")
        plots.frequency_usage_heatmap(usage).write_html(out / "usage.html")
        print(f"wrote {out}/spec.csv, usage.csv, wavelengths.html, usage.html")
    return 0


def _cmd_scores(args: argparse.Namespace) -> int:
    import rope_behavior as rb
    from rope_behavior.viz import plots

    model = _load_model(args)
    tokens = _tokens(model, args)
    gen = torch.Generator().manual_seed(args.seed)
    scores = rb.score_heads(
        model,
        tokens,
        mode=args.mode,
        block_size=args.block_size,
        align=args.align,
        n_swaps=_n_swaps(args.n_swaps),
        exclude_keys=_exclusions(args.exclude_keys),
        seed=gen,
    )
    usage = rb.frequency_usage(rb.capture(model, tokens))
    corr = rb.behavior_frequency_correspondence(scores, usage, seed=gen)
    summary = scores.mean().to_frame()
    print(summary.round(3).to_string(index=False))
    print(corr)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        scores.to_frame().to_csv(out / "scores.csv", index=False)
        summary.to_csv(out / "plane.csv", index=False)
        corr.to_frame().to_csv(out / "correspondence.csv", index=False)
        plots.positional_symbolic_plane(scores, usage).write_html(out / "plane.html")
        print(f"wrote {out}/scores.csv, plane.csv, correspondence.csv, plane.html")
    return 0


def _n_swaps(value: str) -> int | str | None:
    if value in ("auto", "all"):
        return None if value == "all" else "auto"
    try:
        return int(value)
    except ValueError:
        raise RopeBehaviorError(
            f"--n-swaps {value!r}; expected 'auto', 'all' or a number of swaps"
        ) from None


def _exclusions(values: list[str]) -> Any:
    if len(values) == 1 and values[0] in ("auto", "none", "bos"):
        return values[0]
    out: list[int | str] = []
    for v in values:
        if v == "bos":
            out.append(v)
            continue
        try:
            out.append(int(v))
        except ValueError:
            raise RopeBehaviorError(
                f"--exclude-keys {v!r}; expected 'auto', 'bos', 'none' or key positions"
            ) from None
    return out


def _add_model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--model", help="hub name or local folder (TransformerBridge.boot_transformers)"
    )
    src.add_argument("--random", choices=RANDOM_FAMILIES, help="offline random-weight model")
    p.add_argument("--text", nargs="*", help="prompts (with --model); default: random tokens")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="folder for CSVs and figures")


def _cmd_tasks(args: argparse.Namespace) -> int:
    from rope_behavior.tasks.experiment import run_experiment
    from rope_behavior.tasks.training import TrainConfig
    from rope_behavior.viz import plots

    torch.set_num_threads(args.threads)
    result = run_experiment(
        quick=args.quick,
        seeds=args.seeds,
        out_dir=args.out,
        train_config=TrainConfig(progress=False, device=args.device),
        workers=args.workers,
        threads=args.threads,
    )
    out = Path(args.out)
    figures = {
        "accuracy_vs_pair.html": plots.accuracy_vs_pair(result.results),
        "accuracy_by_position.html": plots.accuracy_by_position(result.by_position),
    }
    if len(result.plane):  # one trace group per task, in one figure
        parts = [
            (task, plots.positional_symbolic_plane(part, color=None, label_extremes=0))
            for task, part in result.plane.groupby("task", sort=False)
        ]
        traces = [(task, trace) for task, fig in parts for trace in fig.data]
        plane = parts[0][1]
        plane.data = ()  # the traces of every task (the first's included) were kept above
        for task, trace in traces:
            trace.name = f"{task} · {trace.name}"
            plane.add_trace(trace)
        plane.update_layout(title="Positional–symbolic plane of heads trained under 'all'")
        figures["plane.html"] = plane
    for name, fig in figures.items():
        fig.write_html(out / name)
    print(result.summary().round(3).to_string())
    print(
        f"{len(result.records)} runs in {result.seconds:.0f} s; wrote {out}/results.csv, "
        f"by_position.csv, plane.csv, {', '.join(figures)}"
    )
    return 0


def _add_tasks_parser(sub: Any) -> None:
    p = sub.add_parser(
        "tasks", help="canonical tasks x frequency settings x seeds (docs/method.md 5)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="pairs {0, n/2, last} + all/nope/two_angle, one seed (<= 3 min on 2 cores)",
    )
    p.add_argument("--out", required=True, help="folder for CSVs and figures")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; quick 1)")
    p.add_argument("--workers", type=int, default=2, help="parallel training processes (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--device", default="cpu", help="torch device for training (e.g. cuda)")
    p.set_defaults(func=_cmd_tasks)


def _add_scoring_args(p: argparse.ArgumentParser, out: str) -> None:
    """Output folder, prompts, context, batching, block size and seed of a scoring command."""
    p.add_argument("--out", default=out, help="output folder (default: %(default)s)")
    p.add_argument("--prompts", help="text file (one prompt per line) or .jsonl ('text')")
    p.add_argument("--max-prompts", type=int, default=32, help="(default: %(default)s)")
    p.add_argument(
        "--context", type=int, default=128, help="tokens per prompt (default: %(default)s)"
    )
    p.add_argument(
        "--batch-size", type=int, default=8, help="prompts per forward (default: %(default)s)"
    )
    p.add_argument(
        "--block-size", type=int, default=8, help="keys per block (default: %(default)s)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="swap draws and bootstrap (default: %(default)s)"
    )


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    """``--ray`` and ``--workers``: run the work on Ray workers."""
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the work on Ray workers, each loading the model on its own GPU "
                   "(or CPU): a local cluster without ADDRESS, 'auto' for the one running "
                   "here, or ray://host:port (needs pip install 'rope_behavior[ray]')")  # fmt: skip
    p.add_argument("--workers", type=int, default=None,
                   help="Ray workers (default: one per GPU, or per CPU without GPUs)")  # fmt: skip


def _add_device_args(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype`` of the loaded model."""
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="load the weights in this dtype (default: the folder's)")  # fmt: skip


def _add_sweep_parser(sub: Any, cmd_sweep: Callable[[argparse.Namespace], int]) -> None:
    """The ``sweep`` command: a resumable frequency patching sweep."""
    p = sub.add_parser(
        "sweep", help="a frequency patching sweep (layers x heads x bands), resumable"
    )
    p.add_argument(
        "--task", choices=("index",), help="built-in: the shipped Index model and prompts"
    )
    p.add_argument(
        "--model", default=None, help="hub name or local folder (with --clean/--corrupted)"
    )
    p.add_argument("--clean", help="clean prompts, one per line")
    p.add_argument("--corrupted", help="corrupted prompts, one per line (same token lengths)")
    p.add_argument(
        "--bands", default="4", help="k equal bands, or names like high,mid,low (default: 4)"
    )
    p.add_argument(
        "--target", choices=("q", "k", "qk"), default="qk", help="(default: %(default)s)"
    )
    p.add_argument("--direction", choices=("denoising", "noising"), default="denoising",
                   help="(default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--out",
        default="rope-behavior-sweep",
        help="output folder; rerun to resume (default: %(default)s)",
    )
    p.add_argument("--max-prompts", type=int, default=None, help="(default: all / 64 for --task)")
    p.add_argument(
        "--context", type=int, default=128, help="tokens per prompt (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    _add_device_args(p)
    _add_ray_args(p)
    p.set_defaults(func=cmd_sweep)


def _add_main_job_parsers(sub: Any) -> None:
    from rope_behavior.cli.main_job import cmd_analyze, cmd_demo, cmd_sweep

    p = sub.add_parser(
        "analyze",
        help="the main job: frequency usage, positional/symbolic scores and their correspondence",
        description="Analyse every head of MODEL and write report.html, heads.csv, usage.csv, "
        "correspondence.csv and summary.json.",
    )
    p.add_argument("model", nargs="?", default=None,
                   help="hub name (org/model) or local Hugging Face folder; default: the shipped LM")  # fmt: skip
    _add_device_args(p)
    _add_ray_args(p)
    _add_scoring_args(p, "rope-behavior-analyze")
    p.set_defaults(func=cmd_analyze)
    p = sub.add_parser(
        "demo",
        help="offline: analyze the shipped LM, the toy-task plane and a patching sweep, one report",
    )
    _add_scoring_args(p, "rope-behavior-demo")
    p.set_defaults(func=cmd_demo, prompts=None, device="cpu", dtype=None)
    _add_sweep_parser(sub, cmd_sweep)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rope-behavior", description=__doc__.split("\n\n")[0])
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True)
    _add_main_job_parsers(sub)
    p = sub.add_parser("inspect", help="rotary spec and frequency usage of every head")
    _add_model_args(p)
    p.set_defaults(func=_cmd_inspect)
    p = sub.add_parser("scores", help="positional / symbolic scores of every head (the plane)")
    _add_model_args(p)
    p.add_argument(
        "--mode", choices=("keys", "tokens"), default="keys", help="(default: %(default)s)"
    )
    p.add_argument("--block-size", type=int, default=8, help="keys per block (default: 8)")
    p.add_argument(
        "--align",
        choices=("end", "start"),
        default="end",
        help="blocks tile back from the query (end, default) or from the first key (start)",
    )
    p.add_argument(
        "--n-swaps",
        default="auto",
        help="block pairs swapped: 'auto' (all up to 64, else 64 drawn; default), 'all', or N",
    )
    p.add_argument(
        "--exclude-keys",
        nargs="*",
        default=["auto"],
        help="keys left out: 'auto' (the tokenizer's BOS; default), 'bos', 'none', or positions",
    )
    p.set_defaults(func=_cmd_scores)
    _add_tasks_parser(sub)
    return ap


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line. Errors a user can act on print one line on stderr and exit 2
    (``--debug`` shows the traceback); Ctrl-C exits 130."""
    args = _parser().parse_args(argv)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # no weight-loading bars in a terminal
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("rope-behavior: interrupted", file=sys.stderr)
        return 130
    except (RopeBehaviorError, OSError, ImportError) as e:
        if args.debug:
            raise
        kind = "" if isinstance(e, RopeBehaviorError) else f"{type(e).__name__}: "
        print(f"rope-behavior {args.command}: error: {kind}{_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
