"""The ``rope-behavior`` command line: ``main``, the checks that span options, and the small
commands ``inspect``, ``scores`` and ``tasks`` (the main job's are in :mod:`.main_job`, the
parser in :mod:`.parsers`, the all-at-once output folders in :mod:`.outputs`).

    rope-behavior inspect [MODEL] [--text ...] --out DIR     # spec and frequency usage
    rope-behavior inspect --random llama --out DIR           # offline: random weights
    rope-behavior scores  --random llama --out DIR           # the positional-symbolic plane
    rope-behavior tasks [--quick] --out DIR                  # the canonical-task experiment
    rope-behavior analyze [MODEL] --out DIR      # the main job: one report (default: shipped LM)
    rope-behavior demo --out DIR                 # offline: the main job on the shipped models
    rope-behavior sweep --task index --out DIR   # a frequency patching sweep, resumable

Errors print one line on stderr and exit with code 2 (``--debug`` shows the traceback).
"""

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from rope_behavior.cli.outputs import run_folder_for
from rope_behavior.cli.parsers import parser
from rope_behavior.cli.random_models import build_random_model
from rope_behavior.errors import RopeBehaviorError

__all__ = [
    "build_random_model",
    "check_args",
    "clamp_context",
    "main",
    "n_ctx",
]

INDEX_PROMPTS_MAX = 65536  # sweep --task index: prompts in its one batch (~30 kB each)  # build_random_model: from .random_models


def _load_model(args: argparse.Namespace) -> Any:
    if args.random:
        return build_random_model(args.random, seed=args.seed)
    from rope_behavior.cli.models import load_model

    return load_model(args.model, device=args.device or "cpu")


def _tokens(model: Any, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids to score and their attention mask (None: no padding): ``--text`` (each
    prompt with its BOS, right-padded and masked), else random tokens."""
    if args.text:
        from rope_behavior.analysis.main_job import tokenize_prompts

        if getattr(model, "tokenizer", None) is None:
            raise RopeBehaviorError(
                "--text needs the model's tokenizer and this model has none; drop --text "
                "to score random tokens"
            )
        tokens, mask = tokenize_prompts(model, list(args.text), n_ctx(model) or 2**31)
        return tokens, None if bool((mask == 1).all()) else mask
    from rope_behavior.model.context import resolve

    vocab = resolve(model).adapter.vocab_size()
    if vocab is None:
        raise RopeBehaviorError(
            "the model states no vocabulary size; pass --text to score real text"
        )
    length = clamp_context(n_ctx(model), args.length or 128, "--length", args.length is None)
    gen = torch.Generator().manual_seed(args.seed)
    return torch.randint(0, vocab, (args.batch or 8, length), generator=gen), None


def n_ctx(model: Any) -> int | None:
    """The model's position table (``cfg.n_ctx``), if it states one."""
    value = getattr(getattr(model, "cfg", None), "n_ctx", None)
    return value if isinstance(value, int) and value > 0 else None


def clamp_context(limit: int | None, n: int, option: str, default: bool = False) -> int:
    """``n`` tokens, or the model's position table ``limit`` when shorter (saying so)."""
    if limit is not None and limit < n:
        given = f"{option} {n}" + (" (the default)" if default else "")
        print(f"{given} is beyond the model's {limit} positions (cfg.n_ctx): using {limit}")
        return limit
    return n


def _cmd_inspect(args: argparse.Namespace) -> int:
    import rope_behavior as rb
    from rope_behavior.viz import plots

    with run_folder_for(args) as out:
        model = _load_model(args)
        spec = rb.RopeSpec.from_model(model)
        print(spec)
        tokens, mask = _tokens(model, args)
        usage = rb.frequency_usage(rb.capture(model, tokens, attention_mask=mask))
        print(usage.head_frame().round(3).to_string(index=False))
        if out is not None:
            out.write_csv("spec.csv", spec.to_frame())
            out.write_csv("usage.csv", usage.to_frame())
            out.write_html("wavelengths.html", plots.omega_spectrum(spec))
            out.write_html("usage.html", plots.frequency_usage_heatmap(usage))
    if args.out is not None:
        print(f"wrote {args.out}/spec.csv, usage.csv, wavelengths.html, usage.html")
    return 0


def _cmd_scores(args: argparse.Namespace) -> int:
    import rope_behavior as rb
    from rope_behavior.viz import plots

    with run_folder_for(args) as out:
        model = _load_model(args)
        tokens, mask = _tokens(model, args)
        gen = torch.Generator().manual_seed(args.seed)
        keys = args.exclude_keys
        scores = rb.score_heads(
            model,
            tokens,
            attention_mask=mask,
            mode=args.mode,
            block_size=args.block_size,
            align=args.align,
            n_swaps=args.n_swaps,
            exclude_keys=keys[0] if len(keys) == 1 and keys[0] in ("auto", "none") else keys,
            seed=gen,
        )
        usage = rb.frequency_usage(rb.capture(model, tokens, attention_mask=mask))
        corr = rb.behavior_frequency_correspondence(scores, usage, seed=gen)
        summary = scores.mean().to_frame()
        print(summary.round(3).to_string(index=False))
        print(corr)
        if out is not None:
            out.write_csv("scores.csv", scores.to_frame())
            out.write_csv("plane.csv", summary)
            out.write_csv("correspondence.csv", corr.to_frame())
            out.write_html("plane.html", plots.positional_symbolic_plane(scores, usage))
    if args.out is not None:
        print(f"wrote {args.out}/scores.csv, plane.csv, correspondence.csv, plane.html")
    return 0


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cmd_tasks(args: argparse.Namespace) -> int:
    from rope_behavior.tasks.experiment import run_experiment
    from rope_behavior.tasks.training import TrainConfig
    from rope_behavior.viz import plots

    workers = args.workers
    if workers > _cpus():
        print(f"--workers {workers} is more than the {_cpus()} CPUs here: using {_cpus()}")
        workers = _cpus()
    with run_folder_for(args) as out:
        assert out is not None  # --out is required
        torch.set_num_threads(args.threads)
        result = run_experiment(
            quick=args.quick,
            seeds=args.seeds,
            train_config=TrainConfig(progress=False, device=args.device or "cpu"),
            workers=workers,
            threads=args.threads,
        )
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
        out.write_csv("results.csv", result.results)
        out.write_csv("by_position.csv", result.by_position)
        out.write_csv("plane.csv", result.plane)
        for name, fig in figures.items():
            out.write_html(name, fig)
    print(result.summary().round(3).to_string())
    print(
        f"{len(result.records)} runs in {result.seconds:.0f} s; wrote {args.out}/results.csv, "
        f"by_position.csv, plane.csv, {', '.join(figures)}"
    )
    return 0


def _check_device(name: str | None) -> None:
    """A device this machine has (its syntax was checked by the parser)."""
    if name is None:
        return
    dev = torch.device(name)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise RopeBehaviorError(f"--device {name!r}: torch sees no CUDA device here; use cpu")
        if dev.index is not None and dev.index >= n:
            raise RopeBehaviorError(
                f"--device {name!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise RopeBehaviorError(f"--device {name!r}: MPS is not available here; use cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise RopeBehaviorError(f"--device {name!r}; options: cpu, cuda, cuda:N, mps")


def _refuse(pairs: Sequence[tuple[bool, str]]) -> None:
    for bad, message in pairs:
        if bad:
            raise RopeBehaviorError(message)


def check_args(args: argparse.Namespace) -> None:
    """Refuse options that cannot go together (rather than ignore one); settle MODEL."""
    if hasattr(args, "model_arg"):
        _refuse([(bool(args.model_arg and args.model and args.model_arg != args.model),
                  f"MODEL {args.model_arg!r} and --model {args.model!r} differ; give the model once")])  # fmt: skip
        args.model = args.model_arg if args.model_arg is not None else args.model
    cmd = args.command
    if cmd in ("inspect", "scores"):
        _refuse([
            (bool(args.random and args.model),
             f"--random {args.random} builds a random-weight model, and MODEL {args.model!r} "
             "names another: give one of them"),
            (bool(args.random and args.text),
             "--text needs a tokenizer and --random models have none: drop --text to score "
             "random tokens, or give MODEL (default: the shipped LM, which has one)"),
            (bool(args.random) and args.device not in (None, "cpu"),
             f"--device {args.device!r} applies to MODEL; --random builds its model on the CPU: "
             "drop --device"),
            (bool(args.text) and (args.batch is not None or args.length is not None),
             "--batch and --length size random-token prompts; --text gives the prompts "
             "themselves: drop --batch/--length, or --text"),
        ])  # fmt: skip
    if cmd == "scores" and len(args.exclude_keys) > 1:
        alone = [k for k in args.exclude_keys if k in ("auto", "none")]
        _refuse([(bool(alone), f"--exclude-keys {alone[0] if alone else ''!s} stands alone; "
                  f"got {' '.join(map(str, args.exclude_keys))} (combine only 'bos' and positions)")])  # fmt: skip
    if cmd in ("analyze", "sweep"):
        _refuse([
            (args.workers is not None and args.ray is None,
             f"--workers {args.workers} sets the number of Ray workers: add --ray, or drop --workers"),
            (args.ray is not None and args.device is not None,
             f"--device {args.device!r} is for a run here; with --ray every worker uses its own "
             "GPU (or CPU): drop --device"),
        ])  # fmt: skip
    _refuse([(cmd == "sweep" and not args.task and not (args.clean and args.corrupted),
              "sweep needs --task index, or --clean FILE and --corrupted FILE (with MODEL)")])  # fmt: skip
    if cmd in ("analyze", "demo", "scores", "compare"):
        option, n = ("--context", args.context) if cmd != "scores" else ("--length", args.length)
        n = None if cmd == "scores" and args.text else (n or 128)
        b, need = args.block_size, 2 * args.block_size + 1
        _refuse([(n is not None and n < need,
                  f"{option} {n} is too short for --block-size {b}: the scores swap two blocks "
                  f"of keys before the query, so a prompt needs at least 2 x {b} + 1 = {need} "
                  f"tokens; raise {option} or lower --block-size")])  # fmt: skip
    if cmd == "sweep" and args.task:
        _refuse([(args.max_prompts is not None and args.max_prompts > INDEX_PROMPTS_MAX,
                  f"--max-prompts {args.max_prompts} with --task index: at most "
                  f"{INDEX_PROMPTS_MAX} (the sweep runs every prompt in one batch, about 30 kB "
                  "each)")])  # fmt: skip
        given = [name for name, value in (
            ("MODEL", args.model), ("--clean", args.clean), ("--corrupted", args.corrupted),
            ("--context", args.context), ("--device", args.device), ("--dtype", args.dtype),
        ) if value is not None]  # fmt: skip
        _refuse([(bool(given), f"--task {args.task} sweeps the shipped Index model on its own "
                  f"prompts; {', '.join(given)} {'is' if len(given) == 1 else 'are'} for a sweep "
                  "of your own model (--clean/--corrupted, no --task): drop "
                  f"{'it' if len(given) == 1 else 'them'}")])  # fmt: skip
    _check_device(getattr(args, "device", None))


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    if name == "compare":
        from rope_behavior.cli.compare import cmd_compare

        return cmd_compare
    if name in ("analyze", "demo", "sweep"):
        from rope_behavior.cli import main_job

        return getattr(main_job, f"cmd_{name}")  # type: ignore[no-any-return]
    return {"inspect": _cmd_inspect, "scores": _cmd_scores, "tasks": _cmd_tasks}[name]


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C (the staging folder is removed, --out left as it was)."""
    if sys.platform == "win32" or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is stop:  # not if something (Ray) set its own
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, MemoryError) or any(
        s in text for s in ("out of memory", "can't allocate memory", "not enough memory")
    )


_SMALLER = {  # what to turn down when memory runs out
    "analyze": "lower --batch-size (or --max-prompts / --context)",
    "demo": "lower --batch-size (or --max-prompts / --context)",
    "sweep": "lower --max-prompts (or --context)",
    "compare": "lower --batch-size (or --max-prompts / --context)",
    "inspect": "lower --batch or --length",
    "scores": "lower --batch or --length",
    "tasks": "lower --workers",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line. Errors a user can act on print one line on stderr and exit 2
    (``--debug`` shows the traceback); Ctrl-C (or SIGTERM) exits 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a one-line parse error (2)
        return e.code if isinstance(e.code, int) else 2
    args.argv = argv
    import transformers

    transformers.utils.logging.disable_progress_bar()  # no weight-loading bars in a terminal
    try:
        with _sigterm_exits():
            check_args(args)
            return int(_command(args.command)(args))
    except KeyboardInterrupt:
        print("rope-behavior: interrupted", file=sys.stderr)
        return 130
    except (RopeBehaviorError, OSError, ImportError, MemoryError, RuntimeError) as e:
        ours = isinstance(e, RopeBehaviorError)
        if args.debug or (not ours and isinstance(e, RuntimeError) and not _out_of_memory(e)):
            raise
        kind = "" if ours else f"{type(e).__name__}: "
        text = _one_line(e)
        if not ours and _out_of_memory(e):
            text = f"{text[:200]}{'...' if len(text) > 200 else ''}; {_SMALLER[args.command]}"
        print(f"rope-behavior {args.command}: error: {kind}{text}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
