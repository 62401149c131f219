"""03 Frequency ablations and patching on the shipped LM: bands of heads, a resumable sweep."""

from _make import code, md

CELLS = [
    md(
        """
        # Frequency ablations and patching: which bands of which heads carry a behaviour

        **Model:** the shipped language model (`rb.load_shipped_lm()`, real trained weights;
        3 layers × 4 heads, 16 RoPE pairs per head, 2 key/value heads). **Behaviour:**
        induction on real held-out source code. A passage of 24 tokens is repeated; at the
        16th token of the repeat the model should predict the 17th, which it can only know by
        finding the earlier occurrence of the current token (a *symbolic* lookup by content)
        and reading what followed it. The previous-token heads of layer 0 (positional) and the
        induction heads of layer 1 (symbolic) of notebook 01 are the suspects.

        We remove (ablate) or transplant (patch) **bands of RoPE pairs** in single heads and
        measure the effect on the model's prediction, then sweep every layer × head × band,
        in a sweep that can be interrupted and resumed. Runs offline on a CPU in about a minute.
        """
    ),
    code(
        """
        import os
        import shutil

        import pandas as pd
        import plotly.io as pio
        import torch
        import transformers

        import rope_behavior as rb
        from rope_behavior import plots

        transformers.utils.logging.disable_progress_bar()
        if os.environ.get("RB_FIGURES") == "png":  # the stored copy: static pictures for GitHub
            pio.renderers.default = "png"
            pio.defaults.mathjax = None

        model = rb.load_shipped_lm()
        spec = rb.RopeSpec.from_model(model)
        tok = model.to_string  # token ids -> text
        """
    ),
    md(
        """
        ## 1. Clean and corrupted prompts, on real tokens

        For each of 32 held-out passages: a run of 24 distinct tokens, then its first 16 again.
        **Clean**: the last token is the run's 16th, so the answer is its 17th. **Corrupted**:
        the same prompt with the last token replaced by another token of the run, so the
        induction answer becomes the token that followed *that* one. Everything before the last
        position is identical, so the two runs differ only in what the last query looks for.
        """
    ),
    code(
        """
        RUN, K = 24, 16
        gen = torch.Generator().manual_seed(0)
        clean, corrupted, answer, wrong = [], [], [], []
        for text in rb.heldout_texts(64):
            ids = model.to_tokens(text)[0]
            starts = range(0, len(ids) - 1 - RUN, 7)
            run = next((ids[1 + s : 1 + s + RUN] for s in starts
                        if len(set(ids[1 + s : 1 + s + RUN].tolist())) == RUN), None)
            if run is None:
                continue
            m = int(torch.randint(2, RUN - 2, (1,), generator=gen))
            m = m if m != K else K - 3
            prompt = torch.cat([ids[:1], run, run[:K]])  # BOS, the run, its first K tokens
            other = prompt.clone()
            other[-1] = run[m - 1]  # a token whose successor in the run is run[m]
            clean.append(prompt), corrupted.append(other), answer.append(run[K]), wrong.append(run[m])
            if len(clean) == 32:
                break
        clean, corrupted = torch.stack(clean), torch.stack(corrupted)
        answer, wrong = torch.stack(answer), torch.stack(wrong)

        examples = pd.DataFrame({
            "prompt ends with": [repr(tok(p[-12:-1])) for p in clean[:4]],
            "clean last": [repr(tok(t)) for t in clean[:4, -1]],
            "answer": [repr(tok(t)) for t in answer[:4]],
            "corrupted last": [repr(tok(t)) for t in corrupted[:4, -1]],
            "wrong": [repr(tok(t)) for t in wrong[:4]],
        })
        print(clean.shape, "prompts of", clean.shape[1], "tokens; the first four:")
        print(examples.to_string(index=False))
        """
    ),
    md(
        """
        **The metric** is the logit difference `logit(answer) − logit(wrong)` at the last
        position, averaged over the prompts: positive when the model predicts the clean
        answer, negative when it predicts the corrupted one. (`rb.metrics.logit_diff` takes one
        answer and one wrong token per prompt.)
        """
    ),
    code(
        """
        metric = rb.metrics.logit_diff(answer, wrong)
        with torch.no_grad():
            logits_clean, logits_corrupted = model(clean), model(corrupted)
        CLEAN, CORRUPTED = float(metric(logits_clean)), float(metric(logits_corrupted))
        print(f"logit diff: clean run {CLEAN:.2f}, corrupted run {CORRUPTED:.2f}")
        print(f"top-1 accuracy: clean predicts the answer "
              f"{float((logits_clean[:, -1].argmax(-1) == answer).float().mean()):.2f}, "
              f"corrupted predicts the wrong token "
              f"{float((logits_corrupted[:, -1].argmax(-1) == wrong).float().mean()):.2f}")
        """
    ),
    md(
        """
        The model does induction on real code: it predicts the continuation of the repeat
        nearly every time, in both runs.

        ## 2. Ablate a band of a head

        Four equal bands of four pairs each: `band0/4` holds pairs 0–3 (the highest
        frequencies), `band3/4` pairs 12–15 (the lowest). A `FrequencyAblation` zeroes those
        pairs of the rotated queries (`target="q"`) of the chosen heads, so those pairs add
        nothing to those heads' attention logits. (Keys are shared by two query heads here,
        grouped-query attention; zeroing the query side keeps the edit inside one head.)
        Ablations are values: `run_with_interventions` installs their hooks for one forward
        and removes them.
        """
    ),
    code(
        """
        bands = rb.equal_bands(spec, 4)
        print([f"{b.name}: pairs {b.pairs}" for b in bands])
        rows = []
        for layer, heads, who in [(0, (1, 2, 3), "L0 previous-token heads H1-H3"),
                                  (1, (0, 1, 2, 3), "L1 induction heads H0-H3"),
                                  (2, (0, 1, 2, 3), "L2 local heads H0-H3")]:
            row = {"heads": who}
            for b in bands:
                ablation = rb.FrequencyAblation(layer=layer, heads=heads, pairs=b, target="q")
                with torch.no_grad():
                    row[b.name] = float(metric(rb.run_with_interventions(model, clean, [ablation])))
            rows.append(row)
        print(f"logit diff on the clean prompts with one band ablated (none ablated: {CLEAN:.2f})")
        print(pd.DataFrame(rows).round(2).to_string(index=False))
        """
    ),
    md(
        """
        Reading it: induction needs **both** kinds of head, each in its own frequencies.
        Removing the **high** band (pairs 0–3) of the layer-0 previous-token heads hurts it
        most there: those heads find "the token before" by position, with fast-turning pairs,
        and the induction heads of layer 1 build on what they write. In the layer-1
        induction heads it is the **low** bands that matter: the content match runs on pairs
        that barely turn. Layer 2 comes after the lookup and matters little for it.

        ## 3. Patch a band from another run

        Patching asks the converse: run the **corrupted** prompts, and put back the **clean**
        values of some pairs of some heads (`FrequencyPatch`, `source=` the clean tokens). If
        the clean answer comes back, those pairs carry what the last query looks for. The
        normalised score is `(patched − corrupted) / (clean − corrupted)`: 0 = no effect, 1 =
        the clean behaviour restored.
        """
    ),
    code(
        """
        def normalised(value):
            return (value - CORRUPTED) / (CLEAN - CORRUPTED)

        for name, pairs in [("high half (pairs 0-7)", range(0, 8)), ("low half (pairs 8-15)", range(8, 16))]:
            patch = rb.FrequencyPatch(layer=1, heads=(0, 1, 2, 3), pairs=list(pairs), target="q",
                                      source=clean)
            with torch.no_grad():
                value = float(metric(rb.run_with_interventions(model, corrupted, [patch])))
            print(f"layer-1 queries, {name}, clean into corrupted: logit diff {value:6.2f}, "
                  f"normalised {normalised(value):.2f}")
        """
    ),
    md(
        """
        The low half of the layer-1 queries carries most of the answer: what the induction
        heads look for is encoded in the slowly turning pairs.

        ## 4. The sweep: layers × heads × bands

        `frequency_patching_sweep` does section 3 for every layer, head and band (3 × 4 × 4 =
        48 conditions), much faster than a loop: each condition restarts the forward pass at
        its layer from a cached residual stream, and several conditions share one forward.
        `direction="noising"` does the reverse (corrupted values into the clean run).
        """
    ),
    code(
        """
        sweep = rb.frequency_patching_sweep(model, clean, corrupted, metric, bands=bands,
                                            target="q", direction="denoising")
        print(f"{len(sweep.layers)} layers x {len(sweep.heads)} heads x {len(sweep.bands)} bands; "
              f"baselines: clean {sweep.clean_baseline:.2f}, corrupted {sweep.corrupted_baseline:.2f}")
        frame = sweep.to_frame()
        table = frame.pivot_table(index=["layer", "head"], columns="band", values="normalized")
        print(table.round(2).to_string())
        """
    ),
    code(
        """
        plots.sweep_heatmap(
            frame, value="normalized",
            title="Clean query pairs patched into the corrupted run (1 = clean answer restored)",
        ).update_layout(width=1150, height=460).show()
        """
    ),
    md(
        """
        Each cell patches one band of one head's queries. The effect sits in the layer-1
        induction heads, in the two low bands (pairs 8–15); no single head carries it alone
        (each restores 5–15%: the four induction heads share the work, and together the low
        half restored most of it in section 3). Layer 2 does nothing here. One more head
        stands out: L0H0, which attends to the current token, restores about 0.2 through its
        high bands; its query belongs to the one token that differs between the two runs
        (taking that apart is left as an exercise).

        ## 5. Resumable: interrupt the sweep and pick it up

        With `out_dir=...` every finished shard (a chunk of conditions) is written to disk as
        it completes; run the same sweep again with the same folder and it computes only the
        missing shards. A resume is refused unless the model, tokens, settings and metric are
        the same. Here we interrupt it on purpose after three shards (a progress callback that
        raises, standing in for a crash or a killed job), then run it again.
        """
    ),
    code(
        """
        OUT = "runs/03_sweep"
        shutil.rmtree(OUT, ignore_errors=True)  # start from nothing each time the notebook runs


        def interrupt_after(n):
            def progress(done, total):
                if done == n:
                    raise KeyboardInterrupt(f"stopped after {done} of {total} shards")
            return progress


        try:
            rb.frequency_patching_sweep(model, clean, corrupted, metric, bands=bands, target="q",
                                        out_dir=OUT, executor=rb.LocalExecutor(progress=interrupt_after(3)))
        except KeyboardInterrupt as stop:
            print("interrupted:", stop)

        executor = rb.LocalExecutor()
        resumed = rb.frequency_patching_sweep(model, clean, corrupted, metric, bands=bands,
                                              target="q", out_dir=OUT, executor=executor)
        print(f"second run: {executor.stats.shards} shards, {executor.stats.resumed} read back from "
              f"{OUT}, {executor.stats.computed} computed")
        print("equal to the uninterrupted sweep:", torch.equal(resumed.values, sweep.values))
        """
    ),
    md(
        """
        The same call scales out: pass `executor=RayExecutor()` and a `ModelLoader` instead of
        the model to run the shards on a Ray cluster (notebook 05), with the same folder, the
        same resume and the same numbers.
        """
    ),
]
