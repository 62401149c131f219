"""The shipped naturally trained rotary LM: loads as hub models do, offline, and exactly."""

import hashlib
import json
import re
import shutil
import socket

import pytest
import torch

import rope_behavior as rb
from rope_behavior.data.shipped_lm import (
    LM_INFO_FILE,
    load_lm_folder,
    load_shipped_lm,
    shipped_lm_info,
    shipped_lm_path,
)
from rope_behavior.errors import NotRotaryModelError, RopeBehaviorError
from tests.models import hook_count

PROMPTS = [
    "def f(x):\n    return x + 1\n",
    "import os\nfor name in os.listdir(path):\n    print(name)\n",
    'class Spam:\n    """Eggs."""\n\n    def __init__(self, n):\n        self.n = n\n',
]


@pytest.fixture(scope="module")
def model():
    return load_shipped_lm()


@pytest.fixture(scope="module")
def code_tokens(model) -> torch.Tensor:
    text = "".join(PROMPTS) * 3
    return model.to_tokens(text)[:, :96]


def test_folder_is_a_small_hf_folder():
    path = shipped_lm_path()
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", LM_INFO_FILE} <= names
    assert sum(p.stat().st_size for p in path.iterdir()) <= 10 * 2**20


def test_boot_transformers_matches_plain_transformers():
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    path = str(shipped_lm_path())
    bridge = TransformerBridge.boot_transformers(path, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    assert not hf.training
    with torch.no_grad():
        for prompt in PROMPTS:
            tokens = bridge.to_tokens(prompt)
            torch.testing.assert_close(bridge(tokens), hf(tokens).logits, atol=1e-5, rtol=0)


def test_load_shipped_lm_is_eval_eager_float32(model):
    assert not model.training
    assert model.original_model.config._attn_implementation == "eager"
    assert next(model.parameters()).dtype == torch.float32
    assert str(next(model.parameters()).device) == "cpu"


def test_to_tokens_prepends_bos(model):
    tokens = model.to_tokens("def f(x):")
    bos = model.tokenizer.bos_token_id
    assert bos is not None
    assert tokens.shape[0] == 1
    assert int(tokens[0, 0]) == bos
    assert int(tokens[0, 1]) != bos  # prepended once, not twice
    assert model.to_string(tokens[0, 1:]) == "def f(x):"


def test_pair_decomposition_is_exact(model, code_tokens):
    spec = rb.RopeSpec.from_model(model)
    assert spec.n_pairs >= 16
    assert spec.n_kv_heads < spec.n_heads  # grouped-query attention
    cap = rb.capture(model, code_tokens)
    names = [f"blocks.{layer}.attn.hook_attn_scores" for layer in range(spec.n_layers)]
    _, cache = model.run_with_cache(code_tokens, names_filter=names)
    for layer, name in enumerate(names):
        pl = rb.pair_logits(cap, layer)
        ref = cache[name]
        mask = pl.mask[:, None].expand_as(ref)
        torch.testing.assert_close(pl.scores()[mask], ref[mask], atol=1e-5, rtol=0)
        assert torch.equal(mask, ref > torch.finfo(ref.dtype).min / 2)
        assert torch.count_nonzero(pl.passthrough) == 0  # full rotary
    assert hook_count(model) == 0


def test_json_records_training_and_measurements():
    info = shipped_lm_info()
    config = json.loads((shipped_lm_path() / "config.json").read_text())
    assert info["format"] == "rope_behavior_lm/1"
    t, m = info["training"], info["measured"]
    c = t["config"]
    assert (c["n_layers"], c["n_heads"], c["d_head"]) == (
        config["num_hidden_layers"],
        config["num_attention_heads"],
        config["head_dim"],
    )
    for key in ("corpus", "tokens_seen", "train_seconds", "history", "versions", "command"):
        assert key in t
    assert t["corpus"]["val_files"] > 0
    assert t["corpus"]["train_files"] > 0
    assert 0 < m["val"]["bits_per_byte"] < 8
    assert len(m["heads"]) == c["n_layers"] * c["n_heads"]
    for head in m["heads"]:
        for key in (
            "previous_token",
            "previous_token_no_bos",
            "induction",
            "s_pos",
            "s_sym",
            "identifiable_fraction",
        ):
            assert key in head
    for key in ("rho", "p_value", "n_heads", "n_heads_total", "caveat"):
        assert key in m["correspondence"]
    weights = (shipped_lm_path() / "model.safetensors").read_bytes()
    assert m["weights_sha256"] == hashlib.sha256(weights).hexdigest()


def test_head_scores_are_head_detectors():
    # the JSON's previous-token scores are TransformerLens head_detector's ("mul"), with
    # and without exclude_bos, averaged over prompts
    import importlib.util
    from pathlib import Path

    from transformer_lens.head_detector import compute_head_attention_similarity_score as tl

    path = Path(__file__).resolve().parents[2] / "scripts" / "lm_measure.py"
    spec = importlib.util.spec_from_file_location("lm_measure", path)
    lm_measure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lm_measure)
    n = 12
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    gen = torch.Generator().manual_seed(0)
    pattern = torch.randn(3, 2, n, n, generator=gen).masked_fill(~causal, float("-inf")).softmax(-1)
    detect = torch.zeros(n, n)
    detect[1:, :-1] = torch.eye(n - 1)
    for exclude_bos, ours in (
        (False, lm_measure.previous_token_score),
        (True, lm_measure.previous_token_score_no_bos),
    ):
        want = torch.tensor(
            [
                [
                    tl(
                        pattern[b, h].clone(),
                        detect,
                        exclude_bos=exclude_bos,
                        exclude_current_token=False,
                        error_measure="mul",
                    )
                    for h in range(2)
                ]
                for b in range(3)
            ]
        ).mean(0)
        torch.testing.assert_close(ours(pattern), want, atol=1e-6, rtol=0)


def test_loading_never_reaches_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted while loading a local model folder")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    model = load_shipped_lm()
    assert int(model.to_tokens("x")[0, 0]) == model.tokenizer.bos_token_id


# -- bad input ------------------------------------------------------------------------------


@pytest.fixture
def copy_folder(tmp_path):
    dest = tmp_path / "lm"
    shutil.copytree(shipped_lm_path(), dest)
    return dest


def test_missing_folder(tmp_path):
    path = tmp_path / "no_such_model"
    with pytest.raises(
        RopeBehaviorError, match=f"{re.escape(str(path))}.*does not exist.*config.json"
    ):
        load_lm_folder(path)


def test_folder_without_weights(copy_folder):
    (copy_folder / "model.safetensors").unlink()
    with pytest.raises(
        RopeBehaviorError, match=f"{re.escape(str(copy_folder))}.*lacks model.safetensors"
    ):
        load_lm_folder(copy_folder)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_weights(copy_folder, damage):
    weights = copy_folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x07" * 4096)
    with pytest.raises(
        RopeBehaviorError, match=f"{re.escape(str(weights))}.*corrupted or truncated"
    ):
        load_lm_folder(copy_folder)


def test_unreadable_config(copy_folder):
    (copy_folder / "config.json").write_text("{not json")
    with pytest.raises(RopeBehaviorError, match=re.escape(str(copy_folder / "config.json"))):
        load_lm_folder(copy_folder)


def test_non_rotary_folder(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    cfg = GPT2Config(vocab_size=2048, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(shipped_lm_path() / name, folder / name)
    with pytest.raises(NotRotaryModelError, match=f"{re.escape(str(folder))}.*not rotary"):
        load_lm_folder(folder)


@pytest.mark.parametrize("dtype", [torch.int8, torch.float64, "half precision", 16])
def test_unsupported_dtype(dtype):
    with pytest.raises(
        RopeBehaviorError,
        match=f"{re.escape(str(shipped_lm_path()))}.*expected one of torch.float32",
    ):
        load_shipped_lm(dtype=dtype)


def test_path_of_wrong_type():
    with pytest.raises(RopeBehaviorError, match=r"expected a str or os\.PathLike"):
        load_lm_folder(42)  # type: ignore[arg-type]


def test_bfloat16_load(model):
    low = load_shipped_lm(dtype="bfloat16")
    assert next(low.parameters()).dtype == torch.bfloat16
    tokens = model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        ref, got = model(tokens), low(tokens).float()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.8
