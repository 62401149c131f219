"""The compiled usage kernel (``compiled=True``) gives the eager path's numbers, on padded
batches, grouped KV heads, sliding windows, attention weighting and partial rotary, and a
machine where compilation fails gets the library's error with the way on."""

import shutil

import pytest
import torch

import rope_behavior as rb
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.frequency import usage_kernel
from tests.models import VOCAB, hook_count

needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="torch.compile on the CPU needs a C++ compiler (.ci/run installs g++)",
)


def _padded(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, VOCAB, (3, 13), generator=gen)
    mask = torch.ones_like(tokens)
    mask[1, 9:] = 0  # right padding
    mask[2, :4] = 0  # left padding
    return tokens, mask


@needs_compiler
@pytest.mark.parametrize("family", ["llama_gqa", "gemma2", "gpt_neox"])
@pytest.mark.parametrize("weighted", [False, True])
def test_compiled_usage_equals_the_eager_path(bridge_factory, family, weighted):
    model = bridge_factory(family)
    tokens, mask = _padded(torch.Generator().manual_seed(3))
    cap = rb.capture(model, tokens, attention_mask=mask)
    eager = rb.frequency_usage(cap, attention_weighted=weighted)
    fused = rb.frequency_usage(cap, attention_weighted=weighted, compiled=True)
    assert usage_kernel._KERNEL  # the compiled kernel ran, not the eager path
    for field in ("logit_abs", "logit_usage", "norm_usage", "centroid"):
        a, b = getattr(fused, field, None), getattr(eager, field, None)
        if isinstance(b, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-6)
    assert hook_count(model) == 0


@needs_compiler
def test_analyze_compiled_equals_analyze():
    model = rb.load_shipped_lm()
    tokens, mask = rb.tokenize_prompts(model, rb.heldout_texts()[:6], context=48)
    a = rb.analyze(model, tokens, attention_mask=mask, per_pair=False, batch_size=3)
    b = rb.analyze(model, tokens, attention_mask=mask, per_pair=False, batch_size=3, compiled=True)
    torch.testing.assert_close(b.usage.logit_abs, a.usage.logit_abs, rtol=2e-5, atol=1e-6)
    assert torch.equal(b.scores.s_pos, a.scores.s_pos)  # scoring does not use the kernel


def test_a_failed_compilation_is_named_with_the_way_on(monkeypatch, bridge_factory, tokens):
    def no_compiler(fn, **kw):
        def run(*a):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore")

        return run

    monkeypatch.setattr(usage_kernel, "_KERNEL", [])
    monkeypatch.setattr(torch, "compile", no_compiler)
    model = bridge_factory("llama_gqa")
    cap = rb.capture(model, tokens)
    with pytest.raises(RopeBehaviorError, match=r"compiled=True.*C\+\+ compiler.*compiled=False"):
        rb.frequency_usage(cap, compiled=True)
    with pytest.raises(RopeBehaviorError, match="compiled="):
        rb.frequency_usage(cap, compiled="yes")
