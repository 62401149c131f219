"""Tiny random-weight rotary models built offline from Hugging Face configs.

``make_bridge(name)`` builds a TransformerBridge around a freshly initialised HF model
(seeded, eager attention, eval mode). Nothing is downloaded. The family table covers the
rotary architectures TransformerLens 4.3's bridge supports (decoder-only text models).
"""

import weakref
from typing import Any

import torch
import transformers as T
from torch.utils.hooks import RemovableHandle
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

V = VOCAB = 97
BASE = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64, pad_token_id=0,
            bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
GQA = dict(num_key_value_heads=2)
MOE = dict(num_local_experts=4, num_experts_per_tok=2)

# label -> (arch name for the bridge, HF model class, HF config class, config kwargs)
F = {}
def fam(label, arch, model, cfgcls, **kw):
    F[label] = (arch, model, cfgcls, kw)

fam("llama_mha", "LlamaForCausalLM", "LlamaForCausalLM", "LlamaConfig", **BASE, num_key_value_heads=4)
fam("llama_gqa", "LlamaForCausalLM", "LlamaForCausalLM", "LlamaConfig", **BASE, **GQA)
fam("llama3_rope", "LlamaForCausalLM", "LlamaForCausalLM", "LlamaConfig", **BASE, **GQA,
    rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, original_max_position_embeddings=16))
fam("llama_yarn", "LlamaForCausalLM", "LlamaForCausalLM", "LlamaConfig", **BASE, **GQA,
    rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                         original_max_position_embeddings=16))
fam("mistral", "MistralForCausalLM", "MistralForCausalLM", "MistralConfig", **BASE, **GQA, sliding_window=None)
fam("mixtral", "MixtralForCausalLM", "MixtralForCausalLM", "MixtralConfig", **BASE, **GQA, **MOE, sliding_window=None)
fam("qwen2", "Qwen2ForCausalLM", "Qwen2ForCausalLM", "Qwen2Config", **BASE, **GQA)
fam("qwen3", "Qwen3ForCausalLM", "Qwen3ForCausalLM", "Qwen3Config", **BASE, **GQA, head_dim=16)
fam("gemma", "GemmaForCausalLM", "GemmaForCausalLM", "GemmaConfig", **BASE, **GQA, head_dim=16)
fam("gemma2", "Gemma2ForCausalLM", "Gemma2ForCausalLM", "Gemma2Config", **BASE, **GQA, head_dim=16,
    sliding_window=4, attn_logit_softcapping=5.0, final_logit_softcapping=30.0, query_pre_attn_scalar=24)
fam("gemma3", "Gemma3ForCausalLM", "Gemma3ForCausalLM", "Gemma3TextConfig", **BASE, **GQA, head_dim=16,
    sliding_window=4, query_pre_attn_scalar=16, layer_types=["sliding_attention", "full_attention"])
fam("phi", "PhiForCausalLM", "PhiForCausalLM", "PhiConfig", **BASE, partial_rotary_factor=0.5)
fam("phi3", "Phi3ForCausalLM", "Phi3ForCausalLM", "Phi3Config", **BASE, **GQA)
fam("stablelm", "StableLmForCausalLM", "StableLmForCausalLM", "StableLmConfig", **BASE, num_key_value_heads=4,
    partial_rotary_factor=0.25)
fam("stablelm_qknorm", "StableLmForCausalLM", "StableLmForCausalLM", "StableLmConfig", **BASE, num_key_value_heads=4,
    partial_rotary_factor=0.25, qk_layernorm=True)
fam("olmo", "OlmoForCausalLM", "OlmoForCausalLM", "OlmoConfig", **BASE)
fam("olmo2", "Olmo2ForCausalLM", "Olmo2ForCausalLM", "Olmo2Config", **BASE)
fam("olmoe", "OlmoeForCausalLM", "OlmoeForCausalLM", "OlmoeConfig", **BASE, num_experts=4, num_experts_per_tok=2)
fam("gpt_neox", "GPTNeoXForCausalLM", "GPTNeoXForCausalLM", "GPTNeoXConfig", **BASE, partial_rotary_factor=0.25)
fam("gptj", "GPTJForCausalLM", "GPTJForCausalLM", "GPTJConfig", vocab_size=V, n_embd=64, n_layer=2, n_head=4,
    n_positions=64, rotary_dim=8, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
fam("falcon_new", "FalconForCausalLM", "FalconForCausalLM", "FalconConfig", vocab_size=V, hidden_size=64,
    num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2, new_decoder_architecture=True,
    alibi=False, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
fam("falcon_new_kv2_mqFalse", "FalconForCausalLM", "FalconForCausalLM", "FalconConfig", vocab_size=V, hidden_size=64,
    num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2, new_decoder_architecture=True, multi_query=False,
    alibi=False, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
fam("falcon_new_kv1", "FalconForCausalLM", "FalconForCausalLM", "FalconConfig", vocab_size=V, hidden_size=64,
    num_hidden_layers=2, num_attention_heads=4, num_kv_heads=1, new_decoder_architecture=True,
    alibi=False, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
fam("falcon_mq", "FalconForCausalLM", "FalconForCausalLM", "FalconConfig", vocab_size=V, hidden_size=64,
    num_hidden_layers=2, num_attention_heads=4, multi_query=True, new_decoder_architecture=False,
    parallel_attn=True, alibi=False, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
    tie_word_embeddings=False)
fam("granite", "GraniteForCausalLM", "GraniteForCausalLM", "GraniteConfig", **BASE, **GQA, attention_multiplier=0.3)
fam("starcoder2", "Starcoder2ForCausalLM", "Starcoder2ForCausalLM", "Starcoder2Config", **BASE, **GQA, sliding_window=None)
fam("cohere", "CohereForCausalLM", "CohereForCausalLM", "CohereConfig", **BASE, **GQA, use_qk_norm=True)
fam("cohere2", "Cohere2ForCausalLM", "Cohere2ForCausalLM", "Cohere2Config", **BASE, **GQA, sliding_window=4,
    layer_types=["sliding_attention", "full_attention"])
fam("glm", "GlmForCausalLM", "GlmForCausalLM", "GlmConfig", **BASE, **GQA, head_dim=16)
fam("glm4", "Glm4ForCausalLM", "Glm4ForCausalLM", "Glm4Config", **BASE, **GQA, head_dim=16)
fam("gpt_oss", "GptOssForCausalLM", "GptOssForCausalLM", "GptOssConfig", **BASE, **GQA, head_dim=16,
    num_local_experts=4, num_experts_per_tok=2, sliding_window=4, layer_types=["sliding_attention", "full_attention"])
fam("apertus", "ApertusForCausalLM", "ApertusForCausalLM", "ApertusConfig", **BASE, **GQA)
fam("arcee", "ArceeForCausalLM", "ArceeForCausalLM", "ArceeConfig", **BASE, **GQA)
fam("exaone4", "Exaone4ForCausalLM", "Exaone4ForCausalLM", "Exaone4Config", **BASE, **GQA, sliding_window=4)
fam("smollm3", "SmolLM3ForCausalLM", "SmolLM3ForCausalLM", "SmolLM3Config", **BASE, **GQA)
fam("seed_oss", "SeedOssForCausalLM", "SeedOssForCausalLM", "SeedOssConfig", **BASE, **GQA, head_dim=16)
fam("ernie4_5", "Ernie4_5ForCausalLM", "Ernie4_5ForCausalLM", "Ernie4_5Config", **BASE, **GQA, head_dim=16)
fam("hunyuan_dense", "HunYuanDenseV1ForCausalLM", "HunYuanDenseV1ForCausalLM", "HunYuanDenseV1Config", **BASE, **GQA, head_dim=16)
fam("nemotron", "NemotronForCausalLM", "NemotronForCausalLM", "NemotronConfig", **BASE, **GQA, partial_rotary_factor=0.5)
fam("olmo3", "Olmo3ForCausalLM", "Olmo3ForCausalLM", "Olmo3Config", **BASE, sliding_window=4,
    layer_types=["sliding_attention", "full_attention"])
fam("qwen2_moe", "Qwen2MoeForCausalLM", "Qwen2MoeForCausalLM", "Qwen2MoeConfig", **BASE, **GQA, num_experts=4,
    num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)
fam("qwen3_moe", "Qwen3MoeForCausalLM", "Qwen3MoeForCausalLM", "Qwen3MoeConfig", **BASE, **GQA, head_dim=16,
    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
fam("granite_moe", "GraniteMoeForCausalLM", "GraniteMoeForCausalLM", "GraniteMoeConfig", **BASE, **GQA, num_local_experts=4, num_experts_per_tok=2)
fam("ministral3", "Ministral3ForCausalLM", "Ministral3ForCausalLM", "Ministral3Config", **BASE, **GQA, head_dim=16)
fam("phimoe", "PhiMoEForCausalLM", "PhimoeForCausalLM", "PhimoeConfig", **BASE, **GQA, **MOE)
fam("jais2", "Jais2ForCausalLM", "Jais2ForCausalLM", "Jais2Config", **BASE, **GQA)
fam("flex_olmo", "FlexOlmoForCausalLM", "FlexOlmoForCausalLM", "FlexOlmoConfig", **BASE, num_experts=4, num_experts_per_tok=2)
fam("vaultgemma", "VaultGemmaForCausalLM", "VaultGemmaForCausalLM", "VaultGemmaConfig", **BASE, **GQA, head_dim=16,
    sliding_window=4, query_pre_attn_scalar=16)
fam("bitnet", "BitNetForCausalLM", "BitNetForCausalLM", "BitNetConfig", **BASE, **GQA)
fam("nanochat", "NanoChatForCausalLM", "NanoChatForCausalLM", "NanoChatConfig", **BASE)
fam("deepseek_v2", "DeepseekV2ForCausalLM", "DeepseekV2ForCausalLM", "DeepseekV2Config", **BASE, q_lora_rank=None,
    kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=4,
    num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=1)


# Families the adapter refuses with a reason (see rope_behavior.model.adapters).
REFUSED = {"hunyuan_dense", "nanochat", "deepseek_v2"}
# TransformerLens 4.3 itself fails to wrap this config (Falcon new_decoder_architecture with
# multi_query=True, as Falcon-40B ships) - not ours to fix; kept out of the table.
F.pop("falcon_new", None)
FAMILIES = {k: v for k, v in F.items() if k not in REFUSED}
# Where the bridge's hook_attn_scores carries the softmaxed pattern (plain AttentionBridge).
SOFTMAXED_SCORES = {"gptj", "phimoe"}
# Common aliases used across the tests.
F["llama31_scaling"] = F["llama3_rope"]


def make_bridge(name: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any) -> Any:
    arch, model_cls, cfg_cls, kw = F[name]
    cfg = getattr(T, cfg_cls)(**{**kw, **overrides})
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        hf = getattr(T, model_cls)(cfg).eval().to(dtype)
        # Random init leaves q/k small; scale them so logits are O(1) and differences show.
        with torch.no_grad():
            for n, p in hf.named_parameters():
                if any(s in n for s in ("q_proj", "k_proj", "query_key_value", "qkv_proj", "Wqkv")):
                    p.mul_(4.0)
    return build_bridge_from_module(hf, arch, hf_config=hf.config)


# -- hook census ------------------------------------------------------------------------
# ``hook_count(model) == 0`` is the tests' leak check: after a library call returns (or
# raises) nothing it installed may stay behind. It counts every torch module hook that
# would run: forward pre-hooks (with or without kwargs), forward hooks, backward pre-hooks
# and backward hooks on every module the model can run - its ``modules()``, plus modules
# reachable only through plain attributes (a TransformerBridge keeps the wrapped Hugging
# Face root ``original_model`` and its inner ``*Model`` outside ``modules()``) and every
# hook point in ``hook_dict`` - and torch's global module hooks, which run on every module
# of every model. TransformerLens ``LensHandle`` bookkeeping whose torch hook is gone
# (``handle.hook.remove()`` without ``remove_hooks``) is counted as well: such an entry
# does not run, but keeps the user's hook, and what it closes over, alive.
#
# Hooks the host installs on itself, permanently and by design, are not leaks and are not
# counted. They appear lazily on a model's first forward, so a baseline taken when the
# model is built would miss them and one taken on "first sight" would absorb a leak that
# happened before it; they are excluded by identity instead:
# * TransformerLens bridge components keep the handles of their own capture hooks in
#   lists on the module (``BlockBridge._capture_hook_handles``, LLaDA's
#   ``_llada_container_hook_handles``): a hook whose handle such a list holds is the host's.
# * Hugging Face installs output-capture forward hooks (``output_hidden_states`` /
#   ``output_attentions``) once per model, defined in ``transformers.utils.output_capturing``.
#   Only that module is excused: any other hook defined in ``transformers`` still counts.
# Anything unrecognised counts, so a host that starts installing new hooks of its own
# makes the leak tests fail loudly (extend the two rules) rather than hide a real leak.

_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
_GLOBAL_HOOK_DICTS = tuple(f"_global{d}" for d in _HOOK_DICTS)
_HOST_HOOK_MODULES = ("transformers.utils.output_capturing",)


def _run_modules(model: Any) -> dict[int, tuple[str, torch.nn.Module]]:
    """Every module ``model`` can run, by id, with a dotted path for messages."""
    found: dict[int, tuple[str, torch.nn.Module]] = {}
    todo: list[tuple[str, Any]] = [("", model)]
    todo += [(f"hook_dict[{n!r}]", hp) for n, hp in (getattr(model, "hook_dict", None) or {}).items()]
    for prefix, root in todo:  # grows while walked
        if not isinstance(root, torch.nn.Module) or isinstance(root, weakref.ProxyTypes):
            continue
        for name, mod in root.named_modules(prefix=prefix):
            if id(mod) in found:
                continue
            found[id(mod)] = (name or "<model>", mod)
            for attr, value in vars(mod).items():  # modules held as plain attributes
                if (
                    isinstance(value, torch.nn.Module)
                    and not isinstance(value, weakref.ProxyTypes)
                    and id(value) not in found
                ):
                    todo.append((f"{name}.{attr}" if name else attr, value))
    return found


def _host_handles(modules: Any) -> set[tuple[int, int]]:
    """``(id(hook dict), hook id)`` of the hooks whose handles a module keeps in a list
    attribute (TransformerLens bridge components' own capture hooks)."""
    out: set[tuple[int, int]] = set()
    for _, mod in modules:
        for value in vars(mod).values():
            if isinstance(value, list | tuple):
                for h in value:
                    if isinstance(h, RemovableHandle):
                        d = h.hooks_dict_ref()
                        if d is not None:
                            out.add((id(d), h.id))
    return out


def hook_census(model: Any) -> list[tuple[str, str, Any]]:
    """``(where, kind, hook)`` for every hook ``hook_count`` counts (see above)."""
    modules = list(_run_modules(model).values())
    host = _host_handles(modules)
    out: list[tuple[str, str, Any]] = []
    for name, mod in modules:
        for kind in _HOOK_DICTS:
            hooks = getattr(mod, kind, None) or {}
            for key, fn in hooks.items():
                if (id(hooks), key) in host:
                    continue
                if getattr(fn, "__module__", None) in _HOST_HOOK_MODULES:
                    continue
                out.append((name, kind, fn))
        for kind in ("fwd_hooks", "bwd_hooks"):  # stale TransformerLens bookkeeping
            for lens in getattr(mod, kind, None) or ():
                handle = getattr(lens, "hook", None)
                d = handle.hooks_dict_ref() if isinstance(handle, RemovableHandle) else None
                if d is None or handle.id not in d:
                    out.append((name, f"{kind} (stale LensHandle)", getattr(lens, "user_hook", lens)))
    for kind in _GLOBAL_HOOK_DICTS:
        for fn in getattr(torch.nn.modules.module, kind).values():
            out.append(("<torch global>", kind, fn))
    return out


def spy_calls(monkeypatch: Any, module: Any, name: str) -> list[int]:
    """Replace ``module.name`` by a wrapper that appends 1 to the returned list per call."""
    calls: list[int] = []
    real = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def hook_count(model: Any) -> int:
    """Number of hooks on ``model`` (and torch's global module hooks) that are not the
    host's own; 0 means nothing leaked. ``hook_census`` lists them."""
    return len(hook_census(model))
