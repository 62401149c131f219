"""The ``rope-behavior`` argument parser: every command's options, each checked where it
enters (counts, sizes, seeds, bands, devices), and argparse's own errors as one line."""

import argparse
import re
import sys
import textwrap
from typing import Any, NoReturn

from rope_behavior.cli.random_models import RANDOM_FAMILIES

__all__ = [
    "DESCRIPTION",
    "OneLineParser",
    "bands",
    "device",
    "edit_name",
    "exclude_key",
    "n_swaps",
    "nonneg_int",
    "package_version",
    "parser",
    "positive_int",
    "ray_address",
    "seed",
]

DESCRIPTION = (
    "What each attention head of a rotary-position (RoPE) model does with position and "
    "with content. Every command prints a short summary and writes CSVs and HTML figures "
    "to --out, all at once (an interrupted run leaves the folder as it was). Bad input "
    "prints one line on stderr and exits with code 2 (--debug shows the traceback)."
)
EPILOG = """examples:
  rope-behavior demo                               offline: the main job on the shipped models
  rope-behavior analyze [MODEL] --out DIR          one report (default MODEL: the shipped LM)
  rope-behavior sweep --task index --out DIR       a frequency patching sweep, resumable
  rope-behavior compare --edit prope:0.25 --edit yarn:4 --out DIR   RoPE edits compared
  rope-behavior inspect --random llama --out DIR   rotary spec and frequency usage
  rope-behavior scores --random llama --out DIR    the positional-symbolic plane
  rope-behavior tasks --quick --out DIR            the canonical-task experiment
Each command's options: rope-behavior COMMAND --help."""

SEED_MAX = 2**63 - 1
_BAND_KINDS = ("high", "mid", "low", "band", "pair:", "pairs[", "wavelength:")
_DEVICE_HELP = "torch device: cpu, cuda, cuda:N or mps (default: cpu)"


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line on stderr (``PROG: error: MESSAGE``), exit 2."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        text = re.sub(r"^argument ([^:]+): (must )", r"\1 \2", text)
        text = re.sub(r"^argument ([^:]+): ", r"\1: ", text)
        sys.stderr.write(f"{self.prog}: error: {text} (see: {self.prog} --help)\n")
        sys.exit(2)


def _int(text: str, what: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts and sizes)."""
    return _int(text, "a positive integer", 1)


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    return _int(text, "a non-negative integer", 0)


def seed(text: str) -> int:
    """A random seed: an integer in [0, 2**63 - 1]."""
    return _int(text, f"an integer seed in [0, {SEED_MAX}]", 0, SEED_MAX)


def n_swaps(text: str) -> int | str | None:
    """``auto``, ``all`` (None: every pair of blocks) or a positive number of swaps."""
    if text in ("auto", "all"):
        return None if text == "all" else "auto"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be 'auto', 'all' or a positive number of swaps, got {text!r}"
        ) from None


def exclude_key(text: str) -> int | str:
    """One ``--exclude-keys`` value: ``auto``, ``none``, ``bos`` or a key position."""
    if text in ("auto", "none", "bos"):
        return text
    try:
        return nonneg_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be 'auto', 'bos', 'none' or key positions (integers >= 0), got {text!r}"
        ) from None


def bands(text: str) -> int | list[str]:
    """``--bands``: k equal bands, or band names separated by commas (commas inside
    ``pairs[...]`` belong to the name); the library reads each name against the model."""
    if text.strip().isdigit():
        return positive_int(text)
    names = [n.strip() for n in re.split(r",(?![^\[]*\])", text)]
    if not all(n.startswith(_BAND_KINDS) for n in names):
        raise argparse.ArgumentTypeError(
            "must be a number of equal bands (>= 1) or band names separated by commas: "
            f"high, mid, low, band:<i>/<k>, pair:<i>, pairs[<i>, ...], "
            f"wavelength:<lo>-<hi>@<context>; got {text!r}"
        )
    return names


def edit_name(text: str) -> str:
    """One ``--edit``: a RoPE edit's name (the forms of ``analysis.edit_names``); the
    factor / fraction itself is checked by the library against the model."""
    from rope_behavior.analysis.edit_names import EDIT_FORMS

    name = text.strip().lower()
    kind = name.partition(":")[0]
    kinds = {f.partition(":")[0] for f in EDIT_FORMS}
    if kind not in kinds or (kind != "nope-below-band") != (":" in name):
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(EDIT_FORMS)}, got {text!r}")
    return name


def ray_address(text: str) -> str:
    """``--ray ADDRESS``: a non-empty address (what it reaches is Ray's to say)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"must be 'auto', ray://host:port or host:port (or nothing: a local cluster), got {text!r}"
        )
    return text


def device(text: str) -> str:
    """A torch device string (whether the machine has it is checked after parsing)."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"must be a torch device such as cpu, cuda, cuda:1 or mps, got {text!r}"
        ) from None
    return text


def _overwrite(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds an earlier run (a folder holding other files "
                   f"is never replaced){what}")  # fmt: skip


def _model(p: argparse.ArgumentParser, default: str) -> None:
    """MODEL as a positional and as ``--model`` (the same value; give one)."""
    p.add_argument("model_arg", nargs="?", default=None, metavar="MODEL",
                   help=f"hub name (org/model) or local Hugging Face folder; default: {default}")  # fmt: skip
    p.add_argument("--model", default=None, help="the same as MODEL")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """inspect / scores: a model (or random weights) and random tokens or --text."""
    _model(p, "the shipped language model")
    p.add_argument("--random", choices=RANDOM_FAMILIES, metavar="FAMILY",
                   help=f"offline random-weight model instead of MODEL: {', '.join(RANDOM_FAMILIES)}")  # fmt: skip
    p.add_argument("--text", nargs="+", help="prompts to score (needs a model with a tokenizer: "
                   "MODEL or the shipped LM); default: random tokens")  # fmt: skip
    p.add_argument("--batch", type=positive_int, default=None,
                   help="random-token prompts (default: 8; not with --text)")  # fmt: skip
    p.add_argument("--length", type=positive_int, default=None,
                   help="tokens per random prompt, at most the model's context (default: 128; "
                   "not with --text)")  # fmt: skip
    p.add_argument("--seed", type=seed, default=0,
                   help="random weights, tokens and draws (default: %(default)s)")  # fmt: skip
    p.add_argument("--device", type=device, default=None, help=f"{_DEVICE_HELP}; not with --random")
    p.add_argument("--out", help="folder for CSVs and figures (default: print only)")
    _overwrite(p)


def _add_scores_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("keys", "tokens"), default="keys",
                   help="swap key blocks (keys) or token blocks (tokens) (default: %(default)s)")  # fmt: skip
    p.add_argument("--block-size", type=positive_int, default=8, help="keys per block (default: 8)")
    p.add_argument("--align", choices=("end", "start"), default="end",
                   help="blocks tile back from the query (end, default) or from the first key (start)")  # fmt: skip
    p.add_argument("--n-swaps", type=n_swaps, default="auto",
                   help="block pairs swapped: 'auto' (all up to 64, else 64 drawn; default), 'all', or N")  # fmt: skip
    p.add_argument("--exclude-keys", type=exclude_key, nargs="*", default=["auto"],
                   help="keys left out: 'auto' (the tokenizer's BOS; default), 'bos', 'none', or positions")  # fmt: skip


def _add_tasks_parser(sub: Any) -> None:
    help_ = "canonical toy tasks x frequency settings x seeds: train, then measure accuracy"
    p = sub.add_parser("tasks", help=help_, description=(
        "Train a fresh toy rotary model on each canonical task (Index, Retrieval, Partial "
        "induction) under each frequency setting (one pair, all pairs, no position, two "
        "angles) and seed, and measure accuracy overall and per answer position, plus the "
        "positional-symbolic plane of the 'all' models. The method in full: python -m pydoc "
        "rope_behavior.tasks.experiment."))  # fmt: skip
    p.add_argument("--quick", action="store_true",
                   help="pairs {0, n/2, last} + all/nope/two_angle, one seed (<= 3 min on 2 cores)")  # fmt: skip
    p.add_argument("--out", required=True, help="folder for CSVs and figures")
    p.add_argument(
        "--seeds", type=positive_int, default=None, help="number of seeds (default 3; quick 1)"
    )
    p.add_argument("--workers", type=positive_int, default=2,
                   help="parallel training processes, at most the CPU count (default 2)")  # fmt: skip
    p.add_argument(
        "--threads", type=positive_int, default=1, help="torch threads per process (default 1)"
    )
    p.add_argument("--device", type=device, default=None, help=f"training {_DEVICE_HELP}")
    _overwrite(p)


def _add_scoring_args(p: argparse.ArgumentParser, out: str) -> None:
    """Output folder, prompts, context, batching, block size and seed of a scoring command."""
    p.add_argument("--out", default=out, help="output folder (default: %(default)s)")
    _overwrite(p)
    p.add_argument("--prompts", help="text file (one prompt per line) or .jsonl ('text'), "
                   "or 'binding': built-in entity-attribute binding prompts ('The box holds "
                   "the apple. ... The box holds the'; a file named binding: ./binding)")  # fmt: skip
    p.add_argument("--max-prompts", type=positive_int, default=32,
                   help="prompts analysed, the first N (default: %(default)s)")  # fmt: skip
    p.add_argument("--context", type=positive_int, default=128,
                   help="tokens per prompt, at most the model's context (default: %(default)s)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="prompts per forward (default: %(default)s)")  # fmt: skip
    p.add_argument("--block-size", type=positive_int, default=8,
                   help="keys per block (default: %(default)s)")  # fmt: skip
    p.add_argument("--seed", type=seed, default=0,
                   help="swap draws and bootstrap (default: %(default)s)")  # fmt: skip


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    """``--ray`` and ``--workers``: run the work on Ray workers."""
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS", type=ray_address,
                   help="run the work on Ray workers, each loading the model on its own GPU "
                   "(or CPU): a local cluster without ADDRESS, 'auto' for the one running "
                   "here, or ray://host:port (needs pip install 'rope_behavior[ray]')")  # fmt: skip
    p.add_argument("--workers", type=positive_int, default=None,
                   help="Ray workers, with --ray (default: one per GPU, or per CPU without GPUs)")  # fmt: skip


def _add_device_args(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype`` of the loaded model."""
    p.add_argument("--device", type=device, default=None, help=f"{_DEVICE_HELP}; not with --ray")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="load the weights in this dtype (default: the folder's)")  # fmt: skip


def _add_sweep_parser(sub: Any) -> None:
    """The ``sweep`` command: a resumable frequency patching sweep."""
    help_ = "a frequency patching sweep (layers x heads x bands), resumable"
    p = sub.add_parser("sweep", help=help_, description=(
        "Patch one frequency band of one head at a time from a clean run into a corrupted "
        "one (or back) and measure the effect: on the shipped Index model (--task index) or "
        "on MODEL with --clean and --corrupted prompt files of equal token lengths (metric: "
        "KL divergence to the clean run). Every finished shard is stored in --out/store: "
        "rerun the same command to resume."))  # fmt: skip
    p.add_argument(
        "--task", choices=("index",), help="built-in: the shipped Index model and prompts"
    )
    _model(p, "the shipped language model (with --clean/--corrupted)")
    p.add_argument("--clean", help="clean prompts, one per line")
    p.add_argument("--corrupted", help="corrupted prompts, one per line (same token lengths)")
    p.add_argument("--bands", type=bands, default=4,
                   help="k equal bands, or names like high,mid,low (default: 4)")  # fmt: skip
    p.add_argument("--target", choices=("q", "k", "qk"), default="qk",
                   help="patch queries, keys or both (default: %(default)s)")  # fmt: skip
    p.add_argument("--direction", choices=("denoising", "noising"), default="denoising",
                   help="clean into corrupted (denoising) or back (default: %(default)s)")  # fmt: skip
    p.add_argument("--out", default="rope-behavior-sweep",
                   help="output folder; rerun to resume (default: %(default)s)")  # fmt: skip
    _overwrite(p, "; start afresh rather than resume")
    p.add_argument("--max-prompts", type=positive_int, default=None,
                   help="prompt pairs used, the first N (default: all / 64 for --task)")  # fmt: skip
    p.add_argument("--context", type=positive_int, default=None,
                   help="tokens per prompt, at most the model's context (default: 128; not with --task)")  # fmt: skip
    p.add_argument(
        "--seed", type=seed, default=0, help="--task index prompts (default: %(default)s)"
    )
    _add_device_args(p)
    _add_ray_args(p)


def _add_main_job_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "analyze",
        help="the main job: frequency usage, positional/symbolic scores and their correspondence",
        description="Analyse every head of MODEL and write report.html, heads.csv, usage.csv, "
        "correspondence.csv and summary.json (and run.json, listing them) to --out.",
    )
    _model(p, "the shipped language model")
    _add_device_args(p)
    _add_ray_args(p)
    _add_scoring_args(p, "rope-behavior-analyze")
    p.add_argument("--compiled", action="store_true",
                   help="measure frequency usage with a kernel torch.compile builds (needs a "
                   "C++ compiler, or Triton on a GPU; the first batch compiles for seconds; "
                   "same numbers to float32 rounding)")  # fmt: skip
    help_ = "offline: analyze the shipped LM, the toy-task plane and a patching sweep, one report"
    p = sub.add_parser("demo", help=help_, description=(
        "Offline, about a minute on 2 CPU cores: the main job on the shipped language model, "
        "the shipped toy-task models in the positional-symbolic plane and a frequency patching "
        "sweep of the language model's copying, in one report.html (with heads.csv, usage.csv, "
        "correspondence.csv, summary.json, toy_plane.csv, sweep.csv)."))  # fmt: skip
    _add_scoring_args(p, "rope-behavior-demo")
    p.set_defaults(prompts=None, device=None, dtype=None)
    _add_sweep_parser(sub)
    p = sub.add_parser("compare", help="RoPE edits compared: head score shifts, usage, loss",
                       description=(
        "Analyse MODEL unedited and under each --edit (one analysis each) and write "
        "report.html (one section), compare.csv (one row per edit and head), edits.csv and "
        "summary.json to --out. Edits: prope:<p>, nope-below:<pair>, linear:<f>, ntk:<f>, "
        "yarn:<f>, nope-below-band."))  # fmt: skip
    _model(p, "the shipped language model")
    _add_device_args(p)
    _add_scoring_args(p, "rope-behavior-compare")
    p.add_argument("--edit", type=edit_name, action="append", required=True,
                   help="a RoPE edit to compare (repeat the option for more)")  # fmt: skip
    p.add_argument("--task", choices=("none", "binding"), default="none",
                   help="task metric: binding (logit difference on 16 binding prompts; "
                   "default: none)")  # fmt: skip


def package_version() -> str:
    """The installed distribution's version (``rope_behavior.__version__`` without one)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rope-behavior")
    except PackageNotFoundError:
        import rope_behavior

        return str(getattr(rope_behavior, "__version__", "unknown"))


def parser(version: str | None = None) -> OneLineParser:
    """The whole command line (``--version`` prints ``version``, default the installed
    one); each command's ``args.command`` names it."""
    ap = OneLineParser(prog="rope-behavior", description=textwrap.fill(DESCRIPTION, 79), epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument(
        "--version", action="version", version=f"%(prog)s {version or package_version()}"
    )
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND",
                            parser_class=OneLineParser)  # fmt: skip
    _add_main_job_parsers(sub)
    help_ = "rotary spec and frequency usage of every head"
    p = sub.add_parser("inspect", help=help_, description=(
        "Print the model's rotary spec (pairs, frequencies, wavelengths) and how much of each "
        "head's attention logits each frequency pair carries; with --out write spec.csv, "
        "usage.csv, wavelengths.html and usage.html. MODEL, --model or --random FAMILY."))  # fmt: skip
    _add_model_args(p)
    help_ = "positional / symbolic scores of every head (the plane)"
    p = sub.add_parser("scores", help=help_, description=(
        "Score every head as positional (attention follows positions when key blocks are "
        "swapped) or symbolic (it follows the content), with bootstrap intervals, and their "
        "correspondence with frequency usage; with --out write scores.csv, plane.csv, "
        "correspondence.csv and plane.html."))  # fmt: skip
    _add_model_args(p)
    _add_scores_args(p)
    _add_tasks_parser(sub)
    for p in sub.choices.values():  # --debug also after the command (rope-behavior analyze --debug)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")  # fmt: skip
    return ap
