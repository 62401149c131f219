"""Models whose layers sit on different devices (docs/multi_device.md).

Without two GPUs a layer on another device cannot be faked in a real forward, so the CPU
tests check the pieces that move things between devices, with the ``meta`` device standing
in for "another device" (it refuses to mix with CPU tensors as two GPUs refuse to mix),
and the boot-with-a-device-map harness on an all-CPU map. The two-GPU test boots a
random Llama split over ``cuda:0`` / ``cuda:1`` and checks every public call against the
same weights on one GPU.
"""

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as T
from transformer_lens.model_bridge import TransformerBridge

import rope_behavior as rb
from rope_behavior.interventions.compile import compile_hooks
from rope_behavior.interventions.values import BatchedFrequencyPatch
from rope_behavior.model.adapters import adapter_for
from rope_behavior.model.devices import stack_on
from rope_behavior.qk.captured import _assemble, _layer_roles
from rope_behavior.scoring.geometry import block_geometry, excluded_keys
from tests.models import VOCAB

META = torch.device("meta")


# -- stack_on ---------------------------------------------------------------------------


def test_stack_on_gathers_on_the_given_device():
    parts = [torch.full((2, 3), float(i)) for i in range(3)]
    got = stack_on(parts, "cpu")
    assert got.device.type == "cpu"
    assert torch.equal(got, torch.stack(parts))
    assert torch.equal(stack_on(parts, torch.device("cpu"), dim=1), torch.stack(parts, 1))
    # parts on different devices (CPU and meta) are gathered on the one asked for
    mixed = stack_on([parts[0], parts[1].to(META)], META)
    assert mixed.device == META
    assert tuple(mixed.shape) == (2, 2, 3)
    assert mixed.dtype == parts[0].dtype


def test_stack_on_needs_a_tensor():
    with pytest.raises(ValueError, match="at least one tensor"):
        stack_on([], "cpu")


# -- tables follow the layer ----------------------------------------------------------


def _raw_layer(model: Any, layer: int, toks: torch.Tensor) -> tuple[Any, Any, dict]:
    """The raw hook values ``_assemble`` combines for ``layer`` (one CPU forward)."""
    adapter = adapter_for(model)
    spec = rb.RopeSpec.from_model(model)
    got: dict[str, torch.Tensor] = {}

    def keep(role: str):
        def hook(x, hook=None):
            got[role] = x.detach()
            return x

        return hook

    hooks = [(name, keep(role)) for role, name in _layer_roles(spec, layer).items()]
    with torch.no_grad(), adapter.hooked(hooks):
        model(toks)
    return adapter, spec, got


@pytest.mark.parametrize("family", ["llama_gqa", "gpt_neox"])
def test_tables_are_moved_to_the_device_of_the_layer(bridge_factory, tokens, family):
    """A layer whose q / k sit on another device than the table its hooks report (a
    model-level rotary module on the first device) is rotated on the layer's device: the
    tables go there (GPT-NeoX fires no rotated hooks, so capture rotates q / k itself)."""
    model = bridge_factory(family)
    layer, n = 1, tokens.shape[1]
    adapter, spec, got = _raw_layer(model, layer, tokens)
    assert "cos" in got  # both families fire table hooks
    on_cpu = _assemble(adapter, spec, layer, got, n)
    cap = rb.capture(model, tokens, layers=[layer])
    torch.testing.assert_close(on_cpu.rot_q, cap.rot_q[layer], rtol=0, atol=0)
    torch.testing.assert_close(on_cpu.cos, cap.cos[layer], rtol=0, atol=0)
    # the layer "elsewhere": activations on meta, the tables still on the CPU
    moved = {r: v if r in ("cos", "sin") else v.to(META) for r, v in got.items()}
    lq = _assemble(adapter, spec, layer, moved, n)
    for t in (lq.rot_q, lq.rot_k, lq.q, lq.k, lq.cos, lq.sin):
        assert t.device == META
    assert lq.cos.shape == on_cpu.cos.shape
    assert lq.rot_q.shape == on_cpu.rot_q.shape


# -- masks on the layer's device --------------------------------------------------------


def test_key_mask_is_built_where_it_is_asked_for(bridge_factory, tokens):
    model = bridge_factory("llama_gqa")
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0  # left padding
    cap = rb.capture(model, tokens, attention_mask=mask)
    default = cap.key_mask(1)
    assert default.device == tokens.device
    assert torch.equal(cap.key_mask(1, device="cpu"), default)
    elsewhere = cap.key_mask(1, device=META)
    assert elsewhere.device == META
    assert elsewhere.shape == default.shape
    # the pair logits' mask sits with the layer's tensors
    pl = rb.pair_logits(cap, 1)
    assert pl.mask.device == cap.rot_q[1].device == pl.per_pair.device
    usage = rb.frequency_usage(cap)
    assert usage.logit_usage.device == tokens.device


def test_rows_allowed_takes_query_indices_from_any_device(tokens):
    excl = excluded_keys(tokens, "none", None)
    geo = block_geometry(tokens, None, excl, 2, "all", None, None, None, "end")
    qi = torch.arange(geo.qpos.shape[1])
    want = geo.rows_allowed(qi, None)
    on_meta = dataclasses.replace(geo, qpos=geo.qpos.to(META), allowed=geo.allowed.to(META))
    got = on_meta.rows_allowed(qi, 4)  # CPU indices, geometry elsewhere
    assert got.device == META
    assert got.shape == want.shape


# -- edits bring what they insert to the hook's device ----------------------------------


def test_compiled_edits_move_values_and_masks_to_the_activation(bridge_factory, tokens):
    """Patch sources, reference values and masks are stored where they were made; a hook
    of a layer on another device moves them to that layer's activation."""
    model = bridge_factory("llama_gqa")
    spec = rb.RopeSpec.from_model(model)
    layer = 1
    source = rb.capture(model, tokens, layers=[layer])
    src = rb.SiteActivations(layer, source.rot_q[layer], source.rot_k[layer], rotated=True)
    values = [
        rb.FrequencyPatch(layer=layer, heads=(0, 1), pairs=(0, 3), source=src),
        rb.FrequencyAblation(layer=layer, heads=(0, 1), pairs=(2,)),
        BatchedFrequencyPatch(layer=layer, target="qk", conditions=(((0, 1), (0,)), ((2, 3), (1, 2))), source=src),
    ]
    for value in values:
        for name, hook in compile_hooks(spec, [value]):
            x = source.rot_q[layer] if name.endswith("rot_q") else source.rot_k[layer]
            if isinstance(value, BatchedFrequencyPatch):
                x = torch.cat([x, x])
            out = hook(x.to(META))
            assert out.device == META, (value, name)
            assert out.shape == x.shape


# -- a real model over a device map -----------------------------------------------------


def _save_llama(folder: Path, n_layers: int = 4) -> None:
    """A random GQA Llama with a word-level tokenizer, saved as a Hugging Face folder."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    cfg = T.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        hf = T.LlamaForCausalLM(cfg).eval()
        with torch.no_grad():  # logits O(1), as tests/models.py does
            for name, p in hf.named_parameters():
                if "q_proj" in name or "k_proj" in name:
                    p.mul_(4.0)
    hf.save_pretrained(folder)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, VOCAB)})
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    fast = T.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.save_pretrained(folder)


def _boot(folder: Path, **placement: Any) -> Any:
    model = TransformerBridge.boot_transformers(str(folder), dtype=torch.float32, **placement)
    return model.eval()


def _layer_devices(model: Any) -> list[torch.device]:
    return [next(blk.parameters()).device for blk in model.blocks]


def _close(a: Any, b: Any, what: str) -> None:
    torch.testing.assert_close(
        a.detach().cpu(), b.detach().cpu(), rtol=1e-5, atol=1e-5, equal_nan=True, msg=what
    )


def _check_same_results(one: Any, split: Any, toks: torch.Tensor, mask: torch.Tensor) -> None:
    """Every public call on ``split`` equals the same call on ``one`` (same weights), and
    the results lie where the docs say."""
    n_layers = one.cfg.n_layers
    for t, m in ((toks, None), (toks, mask)):
        a, b = rb.capture(one, t, attention_mask=m), rb.capture(split, t, attention_mask=m)
        for layer in range(n_layers):
            for role in ("rot_q", "rot_k", "q", "k", "cos", "sin"):
                x, y = getattr(a, role)[layer], getattr(b, role)[layer]
                _close(x, y, f"capture {role} layer {layer}")
            pa, pb = rb.pair_logits(a, layer), rb.pair_logits(b, layer)
            assert pb.per_pair.device == b.rot_q[layer].device
            _close(pa.per_pair, pb.per_pair, f"pair_logits layer {layer}")
            _close(pa.scores(), pb.scores(), f"pair_logits scores layer {layer}")
        ua, ub = rb.frequency_usage(a), rb.frequency_usage(b)
        assert ub.logit_usage.device == t.device
        _close(ua.logit_usage, ub.logit_usage, "frequency_usage")
        _close(ua.q_norm, ub.q_norm, "frequency_usage q_norm")
        for mode in ("keys", "tokens"):
            kw: dict[str, Any] = dict(mode=mode, block_size=2, n_swaps=None, attention_mask=m)
            sa, sb = rb.score_heads(one, t, **kw), rb.score_heads(split, t, **kw)
            _close(sa.s_pos, sb.s_pos, f"score_heads {mode} s_pos")
            _close(sa.s_sym, sb.s_sym, f"score_heads {mode} s_sym")
        kw = dict(block_size=2, per_pair=True, attention_mask=m)
        pa_, pb_ = rb.score_heads(one, t, **kw), rb.score_heads(split, t, **kw)
        _close(pa_.s_pos, pb_.s_pos, "score_heads per_pair")
    last = n_layers - 1
    values = [
        rb.FrequencyAblation(layer=last, heads=(0, 1), pairs=(0, 1, 2)),
        rb.AngleOverride(layer=last - 1, heads=(2, 3), omega=0.0),
        rb.FrequencyPatch(layer=0, heads=(0, 1), pairs=(3, 4), source=toks.flip(0)),
        rb.FrequencyAblation(layer=1, heads=(0, 1), pairs=(5,), mode="mean").fit(one, toks.flip(1)),
        # activations stored from ``one`` (its device) patched into the last layer of both
        rb.FrequencyPatch(layer=last, heads=(2, 3), pairs=(1,), source=rb.capture(one, toks.flip(0))),
    ]
    split_values = [*values[:3], values[3].fit(split, toks.flip(1)), values[4]]
    for m in (None, mask):
        la = rb.run_with_interventions(one, toks, values, attention_mask=m)
        lb = rb.run_with_interventions(split, toks, split_values, attention_mask=m)
        _close(la, lb, "run_with_interventions")
    # keys mode rebuilds keys through the edits installed at their sites, per layer
    with rb.intervened(one, values[:2]):
        ka = rb.score_heads(one, toks, block_size=2)
    with rb.intervened(split, split_values[:2]):
        kb = rb.score_heads(split, toks, block_size=2)
    _close(ka.s_pos, kb.s_pos, "score_heads keys under interventions")
    ex_a = rb.exclusion_check(one, toks, layer=last, head=1, query_position=5)
    ex_b = rb.exclusion_check(split, toks, layer=last, head=1, query_position=5)
    _close(ex_a.table, ex_b.table, "exclusion_check")


def _split_map(first: int | str, second: int | str) -> dict[str, int | str]:
    """Layers 0-1 (and the embedding, the rotary module) on ``first``; layers 2-3, the
    final norm and the head on ``second``: a 4-layer Llama's Hugging Face module names."""
    return {
        "model.embed_tokens": first,
        "model.rotary_emb": first,
        "model.layers.0": first,
        "model.layers.1": first,
        "model.layers.2": second,
        "model.layers.3": second,
        "model.norm": second,
        "lm_head": second,
    }


def _tokens(device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    toks = torch.randint(4, VOCAB, (2, 14), generator=g)
    mask = torch.ones_like(toks)
    mask[1, :3] = 0  # left padding: the bridge counts that prompt's tokens from 0
    return toks.to(device), mask.to(device)


def test_device_map_boot_matches_a_plain_boot_on_cpu(tmp_path):
    """The harness of the two-GPU test on an all-CPU device map: the same results as a
    plain ``device="cpu"`` boot. (transformers loads an all-CPU map without dispatch
    hooks, so this checks the harness and the map's module names, not a split.)"""
    _save_llama(tmp_path, n_layers=4)
    one = _boot(tmp_path, device="cpu")
    hf = one.original_model
    names = [n for n, _ in hf.named_parameters()] + [n for n, _ in hf.named_buffers()]
    keys = _split_map(0, 1)
    assert names
    assert all(any(n.startswith(k + ".") for k in keys) for n in names)  # the map covers all
    mapped = _boot(tmp_path, device_map=_split_map("cpu", "cpu"))
    assert {d.type for d in _layer_devices(mapped)} == {"cpu"}
    toks, mask = _tokens("cpu")
    _check_same_results(one, mapped, toks, mask)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_model_split_over_two_gpus_matches_one_gpu(tmp_path):
    """A 4-layer Llama with layers 0-1 on cuda:0 and 2-3 (and the head) on cuda:1, booted
    the way a large model is (``device_map``), against the same folder on cuda:0 alone.
    The tokens go where the model takes them: the device of its embedding, cuda:0."""
    _save_llama(tmp_path, n_layers=4)
    split = _boot(tmp_path, device_map=_split_map(0, 1))
    assert [d.index for d in _layer_devices(split)] == [0, 0, 1, 1]
    assert split.cfg.n_devices == 2
    cap = rb.capture(split, _tokens("cuda:0")[0])
    assert [cap.rot_q[layer].device.index for layer in range(4)] == [0, 0, 1, 1]
    one = _boot(tmp_path, device="cuda:0")
    toks, mask = _tokens("cuda:0")
    _check_same_results(one, split, toks, mask)
