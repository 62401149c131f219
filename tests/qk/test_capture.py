"""capture(): contents, bad input, and hook hygiene."""

import pytest
import torch

import rope_behavior as rb
from tests.models import VOCAB, hook_count


@pytest.fixture
def llama(bridge_factory):
    return bridge_factory("llama_gqa")


def test_capture_shapes_and_contents(llama, tokens):
    cap = rb.capture(llama, tokens, layers=[1])
    assert cap.layers == (1,)
    assert tuple(cap.rot_q[1].shape) == (2, 11, 4, 16)
    assert tuple(cap.rot_k[1].shape) == (2, 11, 2, 16)
    assert tuple(cap.cos[1].shape) == (2, 11, 8)  # per prompt
    assert cap.kv_map == (0, 0, 1, 1)
    # the rotated tensors are the unrotated ones turned by the model's own tables
    again = rb.rotate(cap.q[1], cap.cos[1], cap.sin[1], cap.spec.pair_layout)
    torch.testing.assert_close(again, cap.rot_q[1], atol=1e-6, rtol=0)
    with pytest.raises(
        rb.RopeBehaviorError, match=r"layer 0 was not captured; captured layers: \[1\]"
    ):
        rb.pair_logits(cap, 0)


def test_capture_does_not_run_layers_above_the_last_requested(llama, tokens):
    ran = []

    def spy(x, hook):
        ran.append(1)
        return x

    with llama.hooks(fwd_hooks=[("blocks.1.attn.hook_q", spy)]):
        rb.capture(llama, tokens, layers=[0])
    assert ran == []


def test_capture_grad_keeps_graph(llama, tokens):
    cap = rb.capture(llama, tokens, layers=[0], grad=True)
    assert cap.rot_q[0].requires_grad
    assert not rb.capture(llama, tokens, layers=[0]).rot_q[0].requires_grad


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.zeros(2, 5), "integer token ids"),
        (torch.zeros(5, dtype=torch.long), r"shape \[batch, pos\].*tokens\[None\]"),
        (torch.zeros(1, 2, 3, dtype=torch.long), "rank 3"),
        (torch.zeros(2, 0, dtype=torch.long), "too short"),
        (torch.zeros(1, 65, dtype=torch.long), "n_ctx=64"),
        (torch.full((1, 4), VOCAB, dtype=torch.long), rf"expected ids in \[0, {VOCAB - 1}\]"),
        ([[1, 2, 3]], "torch.Tensor"),
    ],
)
def test_bad_tokens(llama, bad, match):
    with pytest.raises(rb.RopeBehaviorError, match=match):
        rb.capture(llama, bad)
    assert hook_count(llama) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layers": [2]}, r"layer 2 is out of range: expected 0 <= layer <= 1"),
        ({"layers": []}, "layer is empty"),
        ({"layers": ["a"]}, "layer must be an int"),
        ({"attention_mask": torch.ones(3, 3)}, "shaped like tokens"),
        ({"attention_mask": torch.full((2, 11), 2)}, "only 0"),
        ({"attention_mask": torch.zeros(2, 11)}, "all padding"),
    ],
)
def test_bad_arguments(llama, tokens, kwargs, match):
    with pytest.raises(rb.RopeBehaviorError, match=match):
        rb.capture(llama, tokens, **kwargs)
    assert hook_count(llama) == 0


def test_bad_heads_in_pair_logits(llama, tokens):
    cap = rb.capture(llama, tokens, layers=[0])
    with pytest.raises(rb.RopeBehaviorError, match=r"head 4 is out of range.*4 query heads"):
        rb.pair_logits(cap, 0, heads=[4])
    with pytest.raises(rb.RopeBehaviorError, match="layer 5 is out of range"):
        rb.pair_logits(cap, 5)


def test_no_hook_left_when_the_forward_raises(llama, tokens):
    def boom(x, hook):
        raise RuntimeError("boom")

    with (
        pytest.raises(RuntimeError, match="boom"),
        llama.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", boom)]),
    ):
        rb.capture(llama, tokens)
    assert hook_count(llama) == 0


def test_users_own_hooks_are_left_alone(llama, tokens):
    seen = []

    def spy(x, hook):
        seen.append(1)
        return x

    with llama.hooks(fwd_hooks=[("blocks.0.attn.hook_rot_q", spy)]):
        rb.capture(llama, tokens, layers=[0])
        assert hook_count(llama) == 1
    assert seen == [1]
    assert hook_count(llama) == 0


def test_nan_logits_are_reported(llama, tokens):
    def nan(x, hook):
        return torch.full_like(x, float("nan"))

    with llama.hooks(fwd_hooks=[("blocks.0.attn.hook_rot_k", nan)]):
        cap = rb.capture(llama, tokens, layers=[0])
    with pytest.raises(rb.RopeBehaviorError, match="non-finite"):
        rb.frequency_usage(cap)
    assert hook_count(llama) == 0
