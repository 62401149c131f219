"""04 The causal result: canonical tasks, frequency control, the U-shape by position."""

from _make import code, md

CELLS = [
    md(
        """
        # The causal result: which frequencies a task needs

        Notebooks 01–03 *observed* that positional heads use high RoPE frequencies and
        symbolic heads low ones. Here the arrow is causal: train tiny models on tasks that
        need one kind of attention, **allow them only some frequencies**, and see which tasks
        can still be solved.

        **Models:** one-layer, attention-only rotary transformers (`rope_behavior.tasks`) on
        three canonical tasks, with **real trained weights**: the three checkpoints that ship
        inside the package (section 2–3, seconds), the recorded sweep of 171 trained models
        committed to the repository (section 4), and one model trained here from scratch
        (section 5, seconds), with the whole sweep as an optional last cell.
        """
    ),
    code(
        """
        import os
        from pathlib import Path

        import pandas as pd
        import plotly.io as pio
        import torch

        import rope_behavior as rb
        from rope_behavior import plots
        from rope_behavior.tasks import (IndexTask, PartialInductionTask, RetrievalTask, TrainConfig,
                                         accuracy_by_answer_position, evaluate, load_pretrained,
                                         parse_setting, toy_model, train)

        if os.environ.get("RB_FIGURES") == "png":  # the stored copy: static pictures for GitHub
            pio.renderers.default = "png"
            pio.defaults.mathjax = None
        """
    ),
    md(
        """
        ## 1. Three tasks

        Each prompt is 16 context tokens and a query; the model answers at the query.

        * **Index** (positional): 16 random symbols, then a token naming a position `j`; the
          answer is the symbol at `j`. Contents cannot help: only the position tells.
        * **Retrieval** (symbolic): 16 items, each one token binding a symbol to an attribute
          (`s3:a7`), then a query symbol; the answer is its attribute. Positions cannot help:
          the items are in random order.
        * **Partial induction** (mixed): symbols recur with different attributes; the answer is
          the attribute at the query symbol's **last** occurrence: content *and* recency.
        """
    ),
    code(
        """
        def show(task, tokens):
            \"\"\"A prompt as readable tokens: sN symbols, posN positions, sN:aM items, aM attributes.\"\"\"
            S = task.n_symbols
            words = []
            for t in tokens.tolist():
                if isinstance(task, IndexTask):
                    words.append(f"s{t}" if t < S else f"pos{t - S}")
                elif t < S:
                    words.append(f"s{t}")
                elif t < S + S * task.n_attributes:
                    words.append("s{}:a{}".format(*divmod(t - S, task.n_attributes)))
                else:
                    words.append(f"a{t - S - S * task.n_attributes}")
            return " ".join(words)


        for task in (IndexTask(), RetrievalTask(), PartialInductionTask()):
            batch = task.sample(1, torch.Generator().manual_seed(3))
            print(f"{type(task).__name__}:\\n  prompt {show(task, batch.tokens[0])}\\n  answer "
                  f"{show(task, batch.answer)} (from position {int(batch.answer_position[0])})")
        """
    ),
    md(
        """
        ## 2. The shipped models, each under its frequency setting

        `load_pretrained` returns a trained one-head model, its task and the **frequency
        setting** it was trained under, applied in training and evaluation alike by scoped
        hooks: Index with only its highest-frequency pair (`high`), Retrieval with every pair
        at angle 0 (`nope`, no position information at all), Partial induction with two
        angles (`two_angle:0.1`: half the pairs at 0, half turning 0.1 rad per token). The
        accuracy is measured on 2,048 fresh prompts (chance: 1/16).
        """
    ),
    code(
        """
        def accuracy(model, task, hooks, n=2048):
            return evaluate(model, task, n, torch.Generator().manual_seed(0), fwd_hooks=hooks)


        shipped = {name: load_pretrained(name) for name in ("index", "retrieval", "partial_induction")}
        rows = []
        for name, (model, task, setting) in shipped.items():
            batch = task.sample(256, torch.Generator().manual_seed(1))
            with model.hooks(fwd_hooks=setting.hooks(model)):  # score the model as it runs
                summary = rb.score_heads(model, batch.tokens, mode="tokens", block_size=1,
                                         n_swaps=None).mean()
            rows.append({"task": name, "setting": setting.name,
                         "pairs": rb.RopeSpec.from_model(model).n_pairs,
                         "accuracy": accuracy(model, task, setting.hooks),
                         "s_pos": float(summary.s_pos_mean[0, 0]),
                         "s_sym": float(summary.s_sym_mean[0, 0])})
        print(pd.DataFrame(rows).round(3).to_string(index=False))
        """
    ),
    md(
        """
        Each model solves its task, and its head lands where the task says in the
        positional–symbolic plane of notebook 01 (scored in tokens mode with one-token blocks,
        under the model's setting): the Index head is positional (s_POS ≈ 1, s_SYM ≈ 0), the
        Retrieval head symbolic (the reverse), the Partial-induction head mostly symbolic
        with a positional part (recency).

        ## 3. Take the frequencies away from the trained models

        Interventions on top of each model's setting, at evaluation only:

        * **Index**: stop its one pair from turning (`AngleOverride(omega=0)` on pair 0):
          without rotation the head cannot tell positions apart.
        * **Retrieval** (trained without rotation): give the rotation back to the **high**
          half of its pairs, or to the **low** half. Fast-turning pairs scramble the content
          match across positions; slow ones barely move it.
        * **Partial induction**: remove every angle (NoPE): content is left, recency is gone.
        """
    ),
    code(
        """
        def with_values(values):
            \"\"\"fwd_hooks for evaluate(): the intervention values compiled for that model.\"\"\"
            return lambda m: rb.compile_hooks(rb.RopeSpec.from_model(m), values, model=m)


        model, task, setting = shipped["index"]
        spec = rb.RopeSpec.from_model(model)
        index_rows = [("index", "as trained (high: pair 0 only)", accuracy(model, task, setting.hooks)),
                      ("index", "pair 0 does not turn", accuracy(model, task, with_values(
                          [*setting.interventions(spec), rb.AngleOverride(layer=0, pairs=0, omega=0.0)])))]

        model, task, setting = shipped["retrieval"]
        spec = rb.RopeSpec.from_model(model)
        half = spec.n_pairs // 2
        retrieval_rows = [("retrieval", "as trained (nope)", accuracy(model, task, setting.hooks))]
        for label, turning in (("high", range(half)), ("low", range(half, spec.n_pairs))):
            still = [p for p in range(spec.n_pairs) if p not in turning]
            retrieval_rows.append(("retrieval", f"{label} half (pairs {turning.start}-{turning.stop - 1}) turns",
                                   accuracy(model, task, with_values([rb.AngleOverride(layer=0, pairs=still, omega=0.0)]))))

        model, task, setting = shipped["partial_induction"]
        induction_rows = [("partial_induction", "as trained (two_angle:0.1)", accuracy(model, task, setting.hooks)),
                          ("partial_induction", "no pair turns (NoPE)", accuracy(model, task, with_values(
                              [rb.AngleOverride(layer=0, omega=0.0)])))]
        table = pd.DataFrame(index_rows + retrieval_rows + induction_rows,
                             columns=["task", "evaluated with", "accuracy"])
        print(table.round(3).to_string(index=False))
        """
    ),
    md(
        """
        These are interventions on models trained *with* their frequencies; the stronger test
        trains under each restriction from the start.

        ## 4. The recorded experiment: 171 models, each trained under one restriction

        `rope-behavior tasks` trained every task × setting × seed: the three tasks, each under
        every single pair alone (`pair:0` … `pair:15`, on a 2-head toy model with 16 pairs per
        head), plain RoPE (`all`), NoPE and two angles, 3 seeds each (22 minutes on 2 CPU
        cores). Its CSVs are committed to the repository in `results/tasks-full/`; run from a
        clone, this cell reads them there (in Colab, from the repository).
        """
    ),
    code(
        """
        RESULTS = next((p for p in (Path("../results/tasks-full"), Path("results/tasks-full"))
                        if p.is_dir()), None)
        if RESULTS is None:  # not in a clone (Colab): read the committed CSVs from the repository
            RESULTS = "https://raw.githubusercontent.com/rope-behavior/rope-behavior/main/results/tasks-full"
        results = pd.read_csv(f"{RESULTS}/results.csv")
        by_position = pd.read_csv(f"{RESULTS}/by_position.csv")
        mean = results.pivot_table(index="task", columns="setting", values="accuracy")
        print("mean accuracy over 3 seeds:")
        print(mean[["all", "pair:0", "pair:4", "pair:8", "pair:12", "pair:15", "nope",
                    "two_angle:0.1"]].round(2).to_string())
        plots.accuracy_vs_pair(results).show()
        """
    ),
    md(
        """
        **The causal result.** *Index* is solved only with the high frequencies (pairs 0–3)
        and falls to 0.2–0.3 as the allowed pair slows down. *Retrieval* is the mirror
        image: it fails with the fastest pairs and is solved by slow ones, or by no rotation at
        all. *Partial induction* needs content and recency: it fails with NoPE (no recency)
        and with the fastest pairs (no content match), and is solved by two angles, and also
        by a single middle pair (5–9) that turns slowly enough to match contents and fast
        enough to prefer the recent occurrence.

        **The U-shape.** Under a middle pair, Index accuracy by answer position is high at both
        ends of the context and near chance in the middle: a pair that turns only 0.16 rad
        over 16 tokens cannot tell neighbouring positions apart, except at the edges, where
        the extreme angles stand out.
        """
    ),
    code(
        """
        index_by_position = by_position[(by_position.task == "index")
                                        & by_position.setting.isin(["pair:0", "pair:4", "pair:8", "pair:15"])]
        plots.accuracy_by_position(index_by_position, task="index").show()
        """
    ),
    md(
        """
        ## 5. Train one from scratch

        A fresh 2-head toy model (16 pairs per head, the recorded runs' configuration) trained
        on Index under a frequency setting: the setting's hooks zero every other pair of its
        queries and keys, in training and evaluation alike. Under `pair:0` it reaches 99% in a
        few hundred steps (seconds on a CPU) and is right at every answer position. Set
        `SETTING = "pair:8"` to reproduce the U of section 4: it never reaches 99%, so it
        trains all 1,500 steps (about half a minute on two idle CPU cores).
        """
    ),
    code(
        """
        SETTING = "pair:0"  # "pair:8": the U-shape (1,500 steps)
        task = IndexTask()
        model = toy_model(task, seed=0)
        setting = parse_setting(SETTING, model.cfg.n_pairs)
        run = train(model, task, TrainConfig(seed=0, progress=False), fwd_hooks=setting.hooks)
        print(f"{SETTING}: {run.steps} steps, accuracy {run.final_accuracy:.3f} on held-out prompts")
        by_pos = accuracy_by_answer_position(model, task, 256, torch.Generator().manual_seed(0),
                                             fwd_hooks=setting.hooks)
        print("by answer position:", " ".join(f"{a:.2f}" for a in by_pos.values()))
        """
    ),
    md(
        """
        ## The whole sweep, optionally

        `run_experiment` trains task × setting × seed and writes the CSVs and figures read in
        section 4. `quick=True` (pairs 0, 8, 15 with `all`, `nope` and `two_angle:0.1`, one
        seed: 18 models) takes about 2 minutes on 2 CPU cores; the full sweep
        (`rope-behavior tasks --out DIR` on the command line) about 20. Not run here or in CI:
        set `RUN_SWEEP = True`.
        """
    ),
    code(
        """
        RUN_SWEEP = False  # about 2 minutes; not run in CI or in the stored copy
        if RUN_SWEEP:
            from rope_behavior.tasks import run_experiment

            sweep = run_experiment(quick=True, out_dir="runs/04_tasks_quick", progress=False)
            print(sweep.summary().round(3).to_string())
        """
    ),
]
