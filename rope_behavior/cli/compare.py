"""``rope-behavior compare``: the model unedited and under each ``--edit``, one analysis
each (:func:`~rope_behavior.analysis.compare.compare_edits`); report.html (one section),
compare.csv, edits.csv and summary.json written into ``--out`` all at once."""

import argparse
import json
import sys
import time
from pathlib import Path

from rope_behavior.cli.app import clamp_context, n_ctx
from rope_behavior.cli.outputs import run_folder_for
from rope_behavior.errors import RopeBehaviorError

__all__ = ["cmd_compare"]


def cmd_compare(args: argparse.Namespace) -> int:
    from rope_behavior.analysis.compare import compare_edits
    from rope_behavior.analysis.edit_names import parse_edit
    from rope_behavior.cli.main_job import _texts, binding_texts
    from rope_behavior.cli.models import load_model, scorable_tokens
    from rope_behavior.viz.compare_report import compare_report

    t0 = time.perf_counter()
    for e in args.edit:  # a bad factor or fraction fails before the model loads
        parse_edit(e, original_context=1)
    with run_folder_for(args) as out:
        assert out is not None  # --out has a default
        texts, source, _ = _texts(args)
        name = args.model or "the shipped language model (rope_behavior/lm)"
        model = load_model(args.model, device=args.device or "cpu", dtype=args.dtype)
        if texts is None:
            texts = binding_texts(model, args.max_prompts, args.seed)
        context = clamp_context(n_ctx(model), args.context, "--context")
        tokens, mask, kept, skipped, need = scorable_tokens(
            model, texts, context, args.max_prompts, args.block_size
        )
        if not kept:
            raise RopeBehaviorError(
                f"none of the prompts of {source} can be scored: each needs at least {need} "
                "tokens; raise --context or lower --block-size"
            )
        if skipped:
            print(f"skipped {len(skipped)} prompts shorter than {need} tokens", file=sys.stderr)
        task = None
        if args.task == "binding":
            from rope_behavior.data.binding_patching import binding_patching_inputs

            task = binding_patching_inputs(model, 16, seed=args.seed)
        result = compare_edits(
            model, tokens, args.edit, attention_mask=mask, task_metric=task,
            batch_size=args.batch_size, block_size=args.block_size, seed=args.seed, name=name,
        )  # fmt: skip
        out.write_csv("compare.csv", result.to_frame())
        out.write_csv("edits.csv", result.edits_frame())
        summary = {**result.summary_dict(), "source": source, "context": context,
                   "task": args.task}  # fmt: skip
        out.write_text("summary.json", json.dumps(summary, indent=2) + "\n")
        notes = (f"prompts: {source}, {context} tokens each", f"task metric: {args.task}")
        out.write("report.html", lambda path: compare_report(
            result, path, title=f"rope_behavior: RoPE edits on {name}", notes=notes))  # fmt: skip
    print(result)
    print(f"wrote {Path(args.out) / 'report.html'} and compare.csv, edits.csv, summary.json, "
          f"run.json in {args.out} ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    return 0
