"""The main job at the command line: ``analyze``, ``demo`` and ``sweep``.

Each writes its whole set of files into a staging folder and swaps it into ``--out`` at
the end (:mod:`.outputs`: an interrupted run leaves ``--out`` as it was), and prints a
short summary. ``sweep`` keeps its resumable store in ``--out/store`` while it runs.
"""

import argparse
import contextlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rope_behavior.cli.app import clamp_context, n_ctx
from rope_behavior.cli.outputs import RunFolder, run_folder_for
from rope_behavior.errors import RopeBehaviorError

__all__ = ["cmd_analyze", "cmd_demo", "cmd_sweep", "index_patching_prompts"]


def _texts(args: argparse.Namespace) -> tuple[list[str] | None, str, list[int] | None]:
    """The prompts' text, where they come from, and their line numbers in the file (read
    before any model is loaded, so a bad file fails fast)."""
    from rope_behavior.cli.models import load_prompt_lines
    from rope_behavior.data.heldout import heldout_texts

    if args.prompts == BINDING:  # drawn where the model is: its tokenizer picks the words
        return None, f"built-in binding prompts (seed {args.seed}, 4 pairs each)", None
    numbered = load_prompt_lines(args.prompts)
    if numbered is None:
        return heldout_texts(), "built-in held-out text (Python standard library source)", None
    return [text for _, text in numbered], str(args.prompts), [i for i, _ in numbered]


BINDING = "binding"  # --prompts binding: the built-in entity-attribute binding prompts


def binding_texts(model: Any, n: int, seed: int) -> list[str]:
    """``n`` binding prompts whose answers are single tokens of ``model``'s tokenizer."""
    from rope_behavior.data.binding import binding_prompts

    return list(binding_prompts(n, seed=seed, tokenizer=model).texts)


def _executor(args: argparse.Namespace) -> Any:
    """``--ray [ADDRESS]``: a RayExecutor (a local cluster when no address), else None."""
    if getattr(args, "ray", None) is None:
        return None
    from rope_behavior.runtime.ray_cluster import RayExecutor

    return RayExecutor(num_workers=args.workers, address=None if args.ray == "local" else args.ray)


def _tokenized(model: Any, texts: list[str], context: int, max_prompts: int | None) -> Any:
    from rope_behavior.analysis.main_job import tokenize_prompts

    tokens, mask = tokenize_prompts(model, texts, context, max_prompts)
    return tokens.cpu(), mask.cpu()


def _analysis(
    model: Any, args: argparse.Namespace, name: str, texts: Any, executor: Any = None
) -> Any:
    """The analysis of the prompts that can be scored (the others are skipped, saying so on
    stderr), and the prompts' source for the report."""
    from rope_behavior.analysis.main_job import analyze
    from rope_behavior.cli.models import scorable_tokens, skipped_note
    from rope_behavior.runtime.executors import call_with_model

    texts, source, lines = texts
    if texts is None:  # --prompts binding
        texts = call_with_model(executor, model, binding_texts, args.max_prompts or 32, args.seed)
    limit = n_ctx(model) if executor is None else call_with_model(executor, model, n_ctx)
    context = clamp_context(limit, args.context, "--context")
    # the tokenizer is the model's: tokenize where the model is (on a worker with --ray)
    inputs = (texts, context, args.max_prompts, args.block_size)
    tokens, mask, kept, skipped, need = call_with_model(executor, model, scorable_tokens, *inputs)
    if not kept:
        short = context < need  # every prompt is cut to --context tokens
        raise RopeBehaviorError(
            f"none of the {len(skipped)} prompts of {source} can be scored: a prompt needs at "
            f"least {need} tokens with --block-size {args.block_size}"
            + (
                f" and --context {context} keeps at most {context}; raise --context to {need}"
                if short
                else "; use longer prompts"
            )
            + " or lower --block-size"
        )
    if skipped:
        note = skipped_note(skipped, len(kept) + len(skipped), lines, need, args.block_size)
        print(note, file=sys.stderr)
        source = f"{source}; {note}"
    analysis = analyze(
        model,
        tokens,
        attention_mask=mask,
        batch_size=args.batch_size,
        block_size=args.block_size,
        seed=args.seed,
        name=name,
        progress=True,
        executor=executor,
        compiled=getattr(args, "compiled", False),
    )
    return analysis, source


def _write_tables(analysis: Any, out: RunFolder) -> None:
    out.write_csv("heads.csv", analysis.heads_frame())
    out.write_csv("usage.csv", analysis.usage.to_frame())
    out.write_csv("correspondence.csv", analysis.correspondence.to_frame())
    out.write_text("summary.json", json.dumps(analysis.summary_dict(), indent=2) + "\n")


def _print_summary(analysis: Any) -> None:
    pos, sym = analysis.extremes()

    def line(df: Any) -> str:
        return (
            ", ".join(
                f"L{r.layer}H{r.head} ({r.s_pos_mean:.2f}, {r.s_sym_mean:.2f})"
                for r in df.itertuples()
            )
            or "none (no identifiable head off the uniform corner leans this way)"
        )

    c = analysis.correspondence
    print(
        f"{analysis.model_name}: {analysis.spec.n_layers} layers x {analysis.spec.n_heads} heads, "
        f"{analysis.n_prompts} prompts ({analysis.n_tokens} tokens) in {analysis.seconds:.1f} s"
    )
    print(f"most positional (s_POS, s_SYM): {line(pos)}")
    print(f"most symbolic   (s_POS, s_SYM): {line(sym)}")
    print(
        f"correspondence s_POS - s_SYM vs frequency centroid: rho={c.rho:+.3f}, "
        f"permutation p={c.p_value:.3g}, {c.confidence_level:.0%} interval "
        f"[{c.rho_ci[0]:+.3f}, {c.rho_ci[1]:+.3f}], on {c.n_heads} of {c.n_heads_total} heads"
        + (f"\nnote: {c.disagreement}" if c.disagreement else "")
        + (f"\ncaveat: {c.caveat}" if c.caveat else "")
    )


def _report(out: RunFolder, title: str, analysis: Any, source: str, **extra: Any) -> None:
    """The command's report: the analysis's own sections, its notes naming the prompts'
    source, and whatever ``extra`` adds (sweeps, tasks, notes)."""
    from rope_behavior.viz.html_report import report
    from rope_behavior.viz.report_inputs import analysis_notes

    notes = [*analysis_notes(analysis, source), *extra.pop("notes", [])]
    out.write("report.html", lambda path: report(
        path=path,
        title=title,
        spec=analysis.spec,
        usage=analysis.usage,
        scores=analysis.summary,
        pair_scores=analysis.pair_summary,
        correspondence=analysis.correspondence,
        notes=notes,
        **extra,
    ))  # fmt: skip


def cmd_analyze(args: argparse.Namespace) -> int:
    from rope_behavior.cli.models import load_model
    from rope_behavior.runtime.executors import ModelLoader

    t0 = time.perf_counter()
    with run_folder_for(args) as out:
        assert out is not None  # --out has a default
        texts = _texts(args)
        executor = _executor(args)
        name = args.model or "the shipped language model (rope_behavior/lm)"
        if executor is None:
            model = load_model(args.model, device=args.device or "cpu", dtype=args.dtype)
            analysis, source = _analysis(model, args, name, texts)
        else:  # each worker loads the model itself, on its GPU or CPU
            with executor:
                loader = ModelLoader(load_model, args.model, dtype=args.dtype)
                analysis, source = _analysis(loader, args, name, texts, executor)
        _write_tables(analysis, out)
        _report(out, f"rope_behavior: {name}", analysis, source)
    _print_summary(analysis)
    print(f"wrote {Path(args.out) / 'report.html'} and heads.csv, usage.csv, correspondence.csv, "
          f"summary.json, run.json in {args.out} ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    return 0


def index_patching_prompts(task: Any, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Clean / corrupted Index prompts (same symbols, another queried position) and the
    logit difference between the clean and the corrupted answer at the last position."""
    from rope_behavior.patching import metrics

    gen = torch.Generator().manual_seed(seed)
    batch = task.sample(n, gen)
    clean = batch.tokens
    j = clean[:, -1] - task.n_symbols
    j_new = (j + 1 + torch.randint(0, task.length - 1, j.shape, generator=gen)) % task.length
    corrupted = clean.clone()
    corrupted[:, -1] = task.n_symbols + j_new
    wrong = clean[torch.arange(len(clean)), j_new]
    keep = batch.answer != wrong
    return clean[keep], corrupted[keep], metrics.logit_diff(batch.answer[keep], wrong[keep])


def _toy_plane() -> tuple[Any, list[str]]:
    """Every shipped toy model's heads, scored under their own frequency settings."""
    import pandas as pd

    from rope_behavior.scoring.head_classes import is_identifiable
    from rope_behavior.scoring.scorer import score_heads
    from rope_behavior.tasks import load_pretrained

    rows, notes = [], []
    for name in ("index", "retrieval", "partial_induction"):
        model, task, setting = load_pretrained(name)
        batch = task.sample(256, torch.Generator().manual_seed(1))
        with model.hooks(fwd_hooks=list(setting.hooks(model))):  # type: ignore[arg-type]
            s = score_heads(model, batch.tokens, block_size=1, n_swaps=None).mean()
        for h in range(s.s_pos_mean.shape[1]):
            rows.append({
                "layer": 0, "head": h, "task": name, "label": f"{name} H{h}",
                "s_pos": float(s.s_pos_mean[0, h]), "s_sym": float(s.s_sym_mean[0, h]),
                "s_pos_lo": float(s.s_pos_lo[0, h]), "s_pos_hi": float(s.s_pos_hi[0, h]),
                "s_sym_lo": float(s.s_sym_lo[0, h]), "s_sym_hi": float(s.s_sym_hi[0, h]),
                "identifiable": bool(is_identifiable(s.identifiable_fraction[0, h])),
            })  # fmt: skip
        notes.append(f"Toy {name} model (trained under '{setting.name}'): scored under it.")
    return pd.DataFrame(rows), notes


def cmd_demo(args: argparse.Namespace) -> int:
    from rope_behavior.cli.models import copy_patching_prompts
    from rope_behavior.data.heldout import heldout_texts
    from rope_behavior.data.shipped_lm import load_shipped_lm
    from rope_behavior.patching.sweep import frequency_patching_sweep
    from rope_behavior.viz import plots

    t0 = time.perf_counter()
    with run_folder_for(args) as out:
        assert out is not None  # --out has a default
        texts = _texts(args)
        model = load_shipped_lm()
        analysis, source = _analysis(
            model, args, "the shipped language model (rope_behavior/lm)", texts
        )
        _write_tables(analysis, out)
        plane, notes = _toy_plane()
        out.write_csv("toy_plane.csv", plane)
        toy_fig = plots.positional_symbolic_plane(plane, color=None)
        toy_fig.update_layout(title="Toy task models (Index, Retrieval, Partial induction)")
        length, repeat = 16, 10  # 16 prompts of 27 tokens: a sweep of a few seconds
        clean, corrupted, metric = copy_patching_prompts(
            model, heldout_texts(), 16, args.seed, length=length, repeat=repeat
        )
        sweep = frequency_patching_sweep(model, clean, corrupted, metric, bands=4, target="q")
        out.write_csv("sweep.csv", sweep.to_frame())
        notes.append(
            f"Patching sweep: the shipped language model on {len(clean)} prompts of held-out "
            f"code, each a {length}-token snippet followed by its first {repeat} tokens again. "
            "Clean: the last token occurs once in the snippet, so the model copies the token "
            "that followed it; corrupted: the last token is another token of the snippet, "
            "whose follower it copies instead. Metric: the logit of the clean answer minus "
            "that of the corrupted answer at the last token "
            f"({sweep.clean_baseline:.2f} clean, {sweep.corrupted_baseline:.2f} corrupted). "
            "Each cell puts the clean queries of one head in one frequency band into the "
            "corrupted run (denoising): 1 = the clean logit difference restored, 0 = none."
        )
        _report(
            out, "rope_behavior demo", analysis, source,
            sweeps=[("Shipped LM copying a token: denoising one frequency band of one head's "
                     "queries", sweep)],
            extra_figures=[("Toy task models in the positional–symbolic plane", toy_fig)],
            notes=notes,
        )  # fmt: skip
    _print_summary(analysis)
    print(f"wrote {Path(args.out) / 'report.html'} ({time.perf_counter() - t0:.1f} s)")
    return 0


def index_model() -> Any:
    """The shipped Index model (what ``sweep --task index --ray`` workers load)."""
    from rope_behavior.tasks import load_pretrained

    return load_pretrained("index")[0]


def _sweep_inputs(
    model: Any, texts: list[list[str]], context: int, max_prompts: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean and corrupted token ids (one equal length) and the clean run's logits."""
    (clean, cm), (corrupted, km) = (_tokenized(model, t, context, max_prompts) for t in texts)
    lengths = [(name, i + 1, int(n)) for name, m in (("--clean", cm), ("--corrupted", km))
               for i, n in enumerate(m.sum(1))]  # fmt: skip
    first = lengths[0]
    odd = next((x for x in lengths if x[2] != first[2]), None)
    if odd is not None or len(clean) != len(corrupted):
        what = (
            f"{odd[0]} prompt {odd[1]} has {odd[2]} tokens but {first[0]} prompt {first[1]} "
            f"has {first[2]}" if odd else
            f"--clean has {len(clean)} prompts and --corrupted {len(corrupted)}"
        )  # fmt: skip
        raise RopeBehaviorError(
            f"{what}: every prompt of --clean and --corrupted must have the same number of "
            "tokens, and the files as many prompts (patching is position by position, "
            "prompt by prompt)"
        )
    from rope_behavior.model.context import resolve

    with torch.no_grad():
        logits = model(clean.to(resolve(model).device)).cpu()
    return clean, corrupted, logits


def _sweep_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What makes one sweep another (recorded in run.json; a rerun with other settings is
    refused rather than resumed)."""
    files = {k: str(Path(v).expanduser().resolve()) if v else None
             for k, v in (("clean", args.clean), ("corrupted", args.corrupted))}  # fmt: skip
    keys = (
        "task",
        "model",
        "bands",
        "target",
        "direction",
        "max_prompts",
        "context",
        "seed",
        "dtype",
    )
    return {**{k: getattr(args, k) for k in keys}, **files}


def _sweep_model(args: argparse.Namespace, executor: Any) -> tuple[Any, Any, Any, Any]:
    """The model (or its loader), clean and corrupted tokens, and the metric."""
    from rope_behavior.cli.models import load_model, load_prompts
    from rope_behavior.patching import metrics
    from rope_behavior.runtime.executors import ModelLoader, call_with_model
    from rope_behavior.tasks import load_pretrained

    model: Any
    if args.task:
        _, task, _ = load_pretrained("index")
        model = index_model() if executor is None else ModelLoader(index_model)
        clean, corrupted, metric = index_patching_prompts(task, args.max_prompts or 64, args.seed)
        return model, clean, corrupted, metric
    texts = [load_prompts(args.clean) or [], load_prompts(args.corrupted) or []]
    if executor is None:
        model = load_model(args.model, device=args.device or "cpu", dtype=args.dtype)
        limit = n_ctx(model)
    else:  # tokenizer and clean run where the model is: on a worker
        model = ModelLoader(load_model, args.model, dtype=args.dtype)
        limit = call_with_model(executor, model, n_ctx)
    context = clamp_context(limit, args.context or 128, "--context", args.context is None)
    inputs = (texts, context, args.max_prompts)
    if executor is None:
        clean, corrupted, logits = _sweep_inputs(model, *inputs)
    else:
        clean, corrupted, logits = call_with_model(executor, model, _sweep_inputs, *inputs)
    return model, clean, corrupted, metrics.kl_to_clean(logits)


def cmd_sweep(args: argparse.Namespace) -> int:
    from rope_behavior.patching.sweep import frequency_patching_sweep
    from rope_behavior.viz import plots

    with run_folder_for(args, settings=_sweep_settings(args), keep=("store",)) as out:
        assert out is not None  # --out has a default
        executor = _executor(args)
        with executor or contextlib.nullcontext():
            model, clean, corrupted, metric = _sweep_model(args, executor)
            store = out.kept("store")
            try:
                result = frequency_patching_sweep(
                    model, clean, corrupted, metric, bands=args.bands, target=args.target,
                    direction=args.direction, out_dir=store,
                    metric_label=f"cli:{args.task or 'kl_to_clean'}", executor=executor,
                    progress=True,
                )  # fmt: skip
            except RopeBehaviorError as e:  # the store's words are the library's: say ours
                why = re.match(
                    rf"out_dir {re.escape(repr(str(store)))} holds a different sweep (\(.*?\))",
                    str(e),
                )
                if why is None:
                    raise
                raise RopeBehaviorError(
                    f"--out {args.out!r} holds a sweep of other inputs {why[1]}; pass "
                    "--overwrite to replace it with this one, or choose another --out"
                ) from None
        frame = result.to_frame()
        out.write_csv("sweep.csv", frame)
        out.write_html(
            "sweep.html", plots.sweep_heatmap(frame, value="normalized" if args.task else "value")
        )
    print(result)
    print(f"wrote {args.out}/sweep.csv, sweep.html, run.json (resumable store: {args.out}/store)")
    return 0
