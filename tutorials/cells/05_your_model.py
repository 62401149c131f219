"""05 On your model, in your notebook: a Bridge, a HookedTransformer (SAE-Lens), Ray."""

from _make import code, md

CELLS = [
    md(
        """
        # On your model, in your notebook

        How to bring `rope_behavior` to the model and the code you already have:

        1. **a `TransformerBridge`** (TransformerLens 4.x and 3.9) on any rotary Hugging Face
           model, a local checkpoint folder or a hub name, with your own prompts;
        2. rope_behavior **inside your own TransformerLens code**: interventions in your own
           `run_with_cache`, gradients through them, your hooks left as they were;
        3. **a `HookedTransformer`** (TransformerLens 2.x / 3.x, where SAE-Lens lives: its
           `HookedSAETransformer` is one) with the same calls and the same numbers;
        4. **a Ray cluster** for a sweep too big for one machine (shown, not run here).

        **Model:** a local Hugging Face folder stands in for your checkpoint: the folder of the
        language model that ships with rope_behavior (`rb.shipped_lm_path()`, real trained
        weights, notebook 01), so everything runs offline. Point `MODEL` at your own folder or
        at a hub name and the same cells run on your model. Cells that need the hub or a
        cluster are guarded by flags and not run in CI.
        """
    ),
    code(
        """
        import os
        from importlib.metadata import version

        import plotly.io as pio
        import torch
        import transformers

        import rope_behavior as rb

        transformers.utils.logging.disable_progress_bar()
        if os.environ.get("RB_FIGURES") == "png":  # the stored copy: static pictures for GitHub
            pio.renderers.default = "png"
            pio.defaults.mathjax = None
        print("transformer-lens", version("transformer-lens"), "| transformers", transformers.__version__,
              "| torch", torch.__version__.split("+")[0])
        """
    ),
    md(
        """
        ## 1. A TransformerBridge on your model

        `TransformerBridge.boot_transformers` takes a hub name or a local folder (config,
        weights, tokenizer), exactly as `transformers.AutoModelForCausalLM.from_pretrained`
        does. rope_behavior needs nothing else: it reads the rotary facts from the model.
        """
    ),
    code(
        """
        from transformer_lens.model_bridge import TransformerBridge

        MODEL = str(rb.shipped_lm_path())  # your checkpoint folder, or e.g. "Qwen/Qwen2.5-0.5B"
        model = TransformerBridge.boot_transformers(MODEL).eval()
        spec = rb.RopeSpec.from_model(model)
        print(spec)
        """
    ),
    md(
        """
        **Your prompts.** `tokenize_prompts` takes any list of strings (here a few lines of
        Python written for this notebook, each a repeated pattern so the induction heads have
        work) and returns right-padded tokens and the attention mask every call accepts.
        """
    ),
    code(
        """
        my_texts = [
            "def area(width, height):\\n    return width * height\\n\\n" * 3,
            "for item in items:\\n    total += item.price * item.count\\n" * 4,
            "import os\\nimport sys\\nimport json\\n" * 5,
            "class Point:\\n    def __init__(self, x, y):\\n        self.x = x\\n        self.y = y\\n" * 2,
        ]
        tokens, mask = rb.tokenize_prompts(model, my_texts, context=64)
        print(tokens.shape, "tokens;", mask.sum(1).tolist(), "real tokens per prompt")
        scores = rb.score_heads(model, tokens, attention_mask=mask, block_size=4)
        usage = rb.frequency_usage(rb.capture(model, tokens, attention_mask=mask))
        frame = scores.mean().to_frame().merge(usage.head_frame()[["layer", "head", "centroid"]])
        print(frame[["layer", "head", "s_pos_mean", "s_sym_mean", "identifiable_fraction",
                     "centroid"]].round(2).to_string(index=False))
        """
    ),
    md(
        """
        Four short prompts (blocks of 4 keys here, for the short context) give wide intervals,
        but the picture of notebook 01 is there: layer-1 heads symbolic on low frequencies,
        layers 0 and 2 positional on higher ones.

        ## 2. Inside your own TransformerLens code

        Interventions are values; `rb.intervened(model, [...])` installs their hooks for the
        duration of a `with` block and removes them afterwards, also when the block raises.
        Inside, the model is yours: `run_with_cache`, your own hooks, a backward pass.
        """
    ),
    code(
        """
        low = rb.band(spec, "low")  # the lowest third of the pairs
        ablate = rb.FrequencyAblation(layer=1, heads=(0, 1, 2, 3), pairs=low, target="q")
        print(ablate, "->", ablate.query_heads_reached(spec))


        def hooks_on(m):
            return sum(len(h.fwd_hooks) + len(h.bwd_hooks) for h in m.hook_dict.values())


        before = hooks_on(model)
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_pattern")
            with rb.intervened(model, [ablate]):
                _, cache_ablated = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_pattern")
        print("hooks on the model before / after:", before, "/", hooks_on(model))

        # what the ablation did to layer 1's attention: total variation per head, prompt 2
        p, q = cache["blocks.1.attn.hook_pattern"][2], cache_ablated["blocks.1.attn.hook_pattern"][2]
        print("attention moved by the ablation, per head of layer 1:",
              [round(float(x), 2) for x in 0.5 * (p - q).abs().sum(-1).mean(-1)])

        # gradients flow through interventions: here through an angle override on layer 0
        nope = rb.AngleOverride(layer=0, omega=0.0)  # layer 0 loses all position information
        with torch.no_grad():
            plain = float(model(tokens[:1, :40], return_type="loss"))
        with rb.intervened(model, [nope]):
            loss = model(tokens[:1, :40], return_type="loss")
            loss.backward()
        grad = model.blocks[0].attn.q.weight.grad  # a Bridge exposes the HF module's weights
        print(f"loss on prompt 0: {plain:.3f}, with layer 0 position-blind {float(loss.detach()):.3f};"
              f" |grad| of layer 0's W_Q: {float(grad.norm()):.3f}")
        model.zero_grad(set_to_none=True)
        """
    ),
    md(
        """
        ## 3. A HookedTransformer (TransformerLens 2.x / 3.x, and SAE-Lens)

        On TransformerLens 2.x and 3.x the model may be a `HookedTransformer`, and SAE-Lens's
        `HookedSAETransformer` is one (`pip install rope_behavior sae-lens` resolves to
        TransformerLens 3.9, where both classes exist). Every call above takes it unchanged.
        Usually you would write `HookedTransformer.from_pretrained("Qwen/Qwen2.5-0.5B")`; here
        the shipped model's weights are converted into one offline, and its per-pair logits
        compared with the Bridge's: the same weights decompose alike.

        TransformerLens 4.x has no `HookedTransformer`; there this cell says so and skips.
        (The stored copy of this notebook ran on the TransformerLens printed at the top.)
        """
    ),
    code(
        """
        try:
            from transformer_lens import HookedTransformer, HookedTransformerConfig
            from transformer_lens.loading_from_pretrained import get_pretrained_state_dict
        except ImportError:  # TransformerLens 4.x
            HookedTransformer = None
            print("TransformerLens", version("transformer-lens"), "has no HookedTransformer:",
                  "this section runs on 2.x / 3.x (e.g. next to SAE-Lens)")

        if HookedTransformer is not None:
            hf = transformers.AutoModelForCausalLM.from_pretrained(MODEL)
            c = hf.config
            cfg = HookedTransformerConfig(
                n_layers=c.num_hidden_layers, d_model=c.hidden_size, n_heads=c.num_attention_heads,
                d_head=c.hidden_size // c.num_attention_heads, n_key_value_heads=c.num_key_value_heads,
                d_mlp=c.intermediate_size, d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings,
                act_fn="silu", normalization_type="RMS", gated_mlp=True, final_rms=True,
                eps=c.rms_norm_eps, positional_embedding_type="rotary",
                rotary_base=c.rope_theta if hasattr(c, "rope_theta") else c.rope_parameters["rope_theta"],
                rotary_dim=c.hidden_size // c.num_attention_heads,
                original_architecture="LlamaForCausalLM",
            )
            hooked = HookedTransformer(cfg).eval()
            hooked.set_tokenizer(model.tokenizer)  # exclude_keys="auto" finds BOS through it
            os.makedirs("runs", exist_ok=True)  # a local path, so no hub name is looked up
            state = get_pretrained_state_dict("runs", cfg, hf_model=hf)
            hooked.load_and_process_state_dict(
                state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                fold_value_biases=False, refactor_factored_attn_matrices=False)
            print(type(hooked).__name__, rb.RopeSpec.from_model(hooked))

            hooked_scores = rb.score_heads(hooked, tokens, attention_mask=mask, block_size=4)
            diff = (hooked_scores.mean().s_pos_mean - scores.mean().s_pos_mean).abs().max()
            per_pair_h = rb.pair_logits(rb.capture(hooked, tokens, attention_mask=mask), layer=1)
            per_pair_b = rb.pair_logits(rb.capture(model, tokens, attention_mask=mask), layer=1)
            keep = per_pair_b.mask[:, None, :, :, None].expand_as(per_pair_b.per_pair)
            print("max |per-pair logit, HookedTransformer - Bridge|:",
                  f"{float((per_pair_h.per_pair - per_pair_b.per_pair)[keep].abs().max()):.1e};",
                  f"max |s_POS difference|: {float(diff):.1e}")
        """
    ),
    md(
        """
        On TransformerLens 3.9 this cell prints the HookedTransformer's `RopeSpec` (the same
        as the Bridge's) and `max |per-pair logit, HookedTransformer - Bridge|: 8.6e-06; max
        |s_POS difference|: 9.9e-08`: the two hosts decompose and score the same weights alike.
        (Give the HookedTransformer its tokenizer, as above: `exclude_keys="auto"` finds the
        BOS token through it, and without one no key is excluded and the scores differ by up
        to 0.03.)

        With SAE-Lens the model is a `HookedSAETransformer` and nothing else changes, for
        example (needs the hub; not run here):

        ```python
        from sae_lens import HookedSAETransformer
        model = HookedSAETransformer.from_pretrained("gemma-2-2b")
        scores = rb.score_heads(model, model.to_tokens(my_texts))
        ```

        ## 4. A big sweep on a Ray cluster

        A frequency patching sweep of a 7B model is 32 layers × 32 heads × 4 bands = 4,096
        conditions. `frequency_patching_sweep` and `analyze` cut their work into shards that
        run anywhere: give them a **`ModelLoader`** (how to build the model: a hub name or
        folder and `boot_transformers` keywords; every worker builds its own, a model is never
        pickled) and an **executor**. `rb.LocalExecutor()` runs the shards here, one after
        another; `RayExecutor()` (`pip install 'rope_behavior[ray]'`) runs them on the workers
        of a Ray cluster, one GPU each, and gives the same numbers. With `out_dir` either one
        resumes where it stopped. (A sweep restarts the forward pass at each patched layer,
        which TransformerLens 3.9's Bridge cannot do; there, sweep a `HookedTransformer`, or
        use the 4.x Bridge.)

        First the same call in this process, on a small sweep (the clean / corrupted prompts
        differ in one token, as in notebook 03):
        """
    ),
    code(
        """
        loader = rb.ModelLoader(MODEL)  # what a worker calls to build its model
        clean = tokens[:, :40]
        corrupted = clean.clone()
        corrupted[:, -1] = clean[:, 5]  # the last token replaced by an earlier one
        metric = rb.metrics.kl_to_clean(model(clean).detach())  # how far the prediction moves
        executor = rb.LocalExecutor()
        local = rb.frequency_patching_sweep(loader, clean, corrupted, metric, layers=[1], bands=2,
                                            target="q", direction="noising", executor=executor)
        print(f"{executor.stats.shards} shards on {executor.stats.workers} worker (this process)")
        frame = local.to_frame()
        print(frame.pivot_table(index="head", columns="band", values="value").round(3).to_string())
        """
    ),
    md(
        """
        The KL divergence from the clean prediction when the corrupted run's query pairs of
        one band are patched into the clean run: what each band of each layer-1 head carries
        about the last token. Now the same sweep on a cluster, at scale. **Not run here or in
        CI** (`RUN_RAY = False`): it needs Ray, and the 7B model needs GPUs and the hub.
        """
    ),
    code(
        """
        RUN_RAY = False  # a Ray cluster (and for the 7B model, GPUs and the hub): not run in CI
        if RUN_RAY:
            from rope_behavior.runtime.ray_cluster import RayExecutor

            big = rb.ModelLoader("meta-llama/Llama-2-7b-hf", dtype=torch.bfloat16)  # kwargs go to
            # boot_transformers; ModelLoader(name, n_devices=2) + RayExecutor(gpus_per_worker=2)
            # splits a model that does not fit one GPU
            with RayExecutor(address="auto") as ray_executor:  # RayExecutor(): a local cluster
                sweep = rb.frequency_patching_sweep(
                    big, clean_7b, corrupted_7b, metric_7b, bands=4, target="qk",
                    executor=ray_executor, out_dir="runs/llama7b-sweep",  # resumable
                )
                print(ray_executor.stats)  # shards computed, resumed, lost; worker restarts
                analysis = rb.analyze(big, tokens_7b, attention_mask=mask_7b,
                                      executor=ray_executor, out_dir="runs/llama7b-analysis")
        """
    ),
    md(
        """
        `clean_7b`, `corrupted_7b`, `metric_7b`, `tokens_7b` and `mask_7b` are your prompts and
        metric for that model, built as in sections 1 and 4 with the 7B model's tokenizer
        (`rb.tokenize_prompts(TransformerBridge.boot_transformers(name), texts)`). On the command
        line the same runs are `rope-behavior analyze MODEL --ray` and `rope-behavior sweep ...
        --ray`; the README's *Scaling out* section has the details.
        """
    ),
]
