"""Tiny random-weight rotary models built offline from Hugging Face configs.

``make_bridge(name)`` builds a TransformerBridge around a freshly initialised HF model
(seeded, eager attention, eval mode). Nothing is downloaded. The family table covers the
rotary architectures TransformerLens 4.3's bridge supports (decoder-only text models).
"""

from typing import Any

import torch
import transformers as T
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


# Families the adapter refuses with a reason (see rope_behavior.adapters).
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


def hook_count(model: Any) -> int:
    seen: set[int] = set()
    total = 0
    for hp in model.hook_dict.values():
        if id(hp) not in seen:
            seen.add(id(hp))
            total += len(hp._forward_hooks) + len(hp._backward_hooks)
    return total
