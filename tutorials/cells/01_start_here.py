"""01 Start here: the shipped LM's heads, positional or symbolic, and their frequencies."""

from _make import code, md

CELLS = [
    md(
        """
        # Start here: which heads are positional, which symbolic, and which frequencies they use

        **Model:** the small language model that ships inside `rope_behavior`
        (`rope_behavior/lm`, 3.5 MB): a Llama-architecture causal LM with rotary position
        embeddings (RoPE), 3 layers × 4 heads (2 key/value heads), 16 RoPE pairs per head,
        context 128, trained on the Python standard library's source. Real trained weights,
        no download: everything below runs offline, on a CPU, in about a minute.

        **The question:** for every attention head, does its attention follow **positions**
        (*positional*: "look 2 tokens back") or **contents** (*symbolic*: "look at the token
        after the last `self`")? And which RoPE **frequencies** does it use to do it? The
        method is Urrutia et al., *Decoupling Positional and Symbolic Attention Behavior in
        Transformers* (ICLR 2026), written out in `docs/method.md`. The paper's finding, which
        we check here: positional heads use **high** frequencies, symbolic heads **low** ones.

        The main job takes ten cells; the last cell shows the same code on a model of the
        Hugging Face hub.
        """
    ),
    code(
        """
        import os

        import plotly.io as pio
        import transformers

        import rope_behavior as rb
        from rope_behavior import plots

        transformers.utils.logging.disable_progress_bar()  # no weight-loading bar
        if os.environ.get("RB_FIGURES") == "png":  # how the stored copy was made: static
            pio.renderers.default = "png"  # pictures that show on GitHub (needs kaleido)
            pio.defaults.mathjax = None  # and no MathJax download
        """
    ),
    md(
        """
        ## 1. The model and its rotary facts

        `load_shipped_lm()` returns a TransformerLens `TransformerBridge`, exactly what
        `TransformerBridge.boot_transformers(...)` gives for a hub model. `RopeSpec` reads every
        rotary fact from the model itself (its own sin/cos tables): the frequency `omega` of each
        pair (radians per token; pair 0 turns fastest), the layout of the pairs inside a head,
        grouped-query attention, the attention scale.
        """
    ),
    code(
        """
        model = rb.load_shipped_lm()
        spec = rb.RopeSpec.from_model(model)
        print(spec)
        print(spec.to_frame().iloc[[0, 1, 4, 8, 12, 15]].round(4).to_string(index=False))
        """
    ),
    md(
        """
        Pair 0 turns by 1 radian per token (a wavelength of 6.3 tokens); pair 15 by 1.8e-4
        (about 35,000 tokens, far longer than the 128-token context: within the context it
        barely turns at all).

        ## 2. Prompts

        Held-out text: passages of standard-library source the model never saw in training,
        cut to 128 tokens (BOS prepended, as the model was trained).
        """
    ),
    code(
        """
        tokens, mask = rb.tokenize_prompts(model, rb.heldout_texts(), context=128, max_prompts=32)
        print(tokens.shape, "tokens; the first prompt begins:")
        print(model.to_string(tokens[0, 1:60]))
        """
    ),
    md(
        """
        ## 3. Analyse every head

        `analyze` streams the prompts in batches of 8 and, for every head, measures

        * **frequency usage**: how much of the head's attention logits each RoPE pair
          contributes (the logits are an exact sum over pairs), summarised as the
          **centroid**, the usage-weighted mean pair index (0 = highest frequency, 15 = lowest);
        * **s_POS and s_SYM**: swap the contents of two blocks of 8 keys (queried from the last
          token) and see where the attention goes. s_POS = 1 when the attention stays with the
          positions, s_SYM = 1 when it moves with the contents; the two exclude each other
          except for a uniform head, which scores (1, 1). Each comes with a 95% bootstrap
          interval over prompts and swaps;
        * **identifiable**: the share of prompts whose swaps actually moved attention (a
          near-uniform row says nothing about the head);
        * the same scores for every single pair ("per-pair curves", on the first 8 prompts).
        """
    ),
    code(
        """
        result = rb.analyze(model, tokens, attention_mask=mask, pair_prompts=8)
        print(f"{result.n_prompts} prompts, {result.n_tokens} tokens, {spec.n_layers * spec.n_heads} heads,",
              f"{len(result.scores.swaps)} block swaps per prompt")
        """
    ),
    md(
        """
        ## 4. One row per head
        """
    ),
    code(
        """
        heads = result.heads_frame()
        columns = ["layer", "head", "s_pos_mean", "s_pos_lo", "s_pos_hi", "s_sym_mean",
                   "s_sym_lo", "s_sym_hi", "identifiable_fraction", "centroid"]
        print(heads[columns].round(2).to_string(index=False))
        """
    ),
    md(
        """
        How to read it: **layer 1** heads score s_SYM 0.84–0.91 against s_POS 0.43–0.53:
        they are **symbolic** (these are the model's induction heads: they look for an earlier
        occurrence of the current token and attend to what followed it), and their centroids
        sit near pair 10, the **low** frequencies. **Layers 0 and 2** score s_POS 0.82–0.97 against s_SYM 0.31–0.60:
        **positional** heads (previous-token and local heads), with centroids 3.1–7.3, the
        **higher** frequencies. L0H0 has identifiable fraction 0: it attends to the
        current token itself, which no swap of earlier keys moves, so its scores say nothing.

        ## 5. The positional–symbolic plane

        One point per head with its intervals, coloured by its frequency centroid; hollow
        points are heads whose swaps rarely moved attention.
        """
    ),
    code(
        """
        plots.positional_symbolic_plane(result.summary, result.usage).show()
        """
    ),
    md(
        """
        ## 6. Which frequencies each head uses

        Logit usage: the share of each head's attention logits (mean |contribution| over the
        attended entries) carried by each pair. The x axis gives each pair's wavelength in tokens.
        """
    ),
    code(
        """
        plots.frequency_usage_heatmap(result.usage).show()
        """
    ),
    md(
        """
        ## 7. The correspondence

        Across the identifiable heads: Spearman's rank correlation between how positional a
        head is (s_POS − s_SYM) and its frequency centroid, with a permutation p-value and a
        95% interval (Fisher z; near the 5% line the two can disagree, and the result then
        says so). A **negative** rho is the paper's direction: the more positional
        the head, the lower its centroid, i.e. the higher its frequencies.
        """
    ),
    code(
        """
        print(result.correspondence)
        most_positional, most_symbolic = result.extremes()
        print("most positional:", [f"L{r.layer}H{r.head}" for r in most_positional.itertuples()])
        print("most symbolic:  ", [f"L{r.layer}H{r.head}" for r in most_symbolic.itertuples()])
        """
    ),
    md(
        """
        With 11 identifiable heads the interval is wide (it rests on few heads, and says so),
        but the direction and the permutation test agree with the paper, and with the table
        in the README (64 prompts: rho = −0.70, p = 0.015). The held-out text is read from the
        Python standard library of the machine, so on another Python version (Colab's) the
        prompts, and the last digits, differ slightly.

        ## 8. Everything in one page

        `report` writes every figure and the numbers behind them into one self-contained HTML
        file (it needs no network to open). The per-pair curves, the exclusion principle and
        the frequency ablations come next, in notebooks 02 and 03.
        """
    ),
    code(
        """
        os.makedirs("runs", exist_ok=True)
        path = rb.report(result, path="runs/01_report.html")
        print("wrote", os.path.relpath(path))
        """
    ),
    md(
        """
        ## The same code on a hub model

        Any rotary model of the Hugging Face hub (Llama, Mistral, Qwen, Gemma, Phi, OLMo,
        Pythia, ...) goes through the same calls. This cell needs hub access and a few GB of
        memory, so it is **not run** here or in CI (`RUN_HUB = False`); in Colab it runs by
        default. The numbers then mean the same thing, on that model.
        """
    ),
    code(
        """
        RUN_HUB = IN_COLAB  # needs the hub: off in CI and in the stored copy of this notebook
        if RUN_HUB:
            from transformer_lens.model_bridge import TransformerBridge

            hub_model = TransformerBridge.boot_transformers("Qwen/Qwen2.5-0.5B")  # or any rotary LM
            hub_tokens, hub_mask = rb.tokenize_prompts(
                hub_model, rb.heldout_texts(), context=256, max_prompts=32
            )
            hub_result = rb.analyze(hub_model, hub_tokens, attention_mask=hub_mask, pair_prompts=4)
            print(hub_result.heads_frame()[columns].round(2).to_string(index=False))
            print(hub_result.correspondence)
            plots.positional_symbolic_plane(hub_result.summary, hub_result.usage).show()
        # On TransformerLens 2.x / 3.x the model may be a HookedTransformer instead:
        # HookedTransformer.from_pretrained("Qwen/Qwen2.5-0.5B") (notebook 05).
        """
    ),
]
