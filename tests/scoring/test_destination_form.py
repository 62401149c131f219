"""Keys mode's destination form (shared swaps, few positions) equals rotating each moved key.

``q . R(dst) k(src) == (R(dst)^T q) . k(src)``: the queries turned back once per destination
and multiplied with every raw key, then read at the swaps' (destination, source) pairs.
"""

import pytest
import torch

import rope_behavior.scoring.keys_mode as keys_mode
import rope_behavior.scoring.scorer as bh
from tests.models import VOCAB, hook_count, spy_calls
from tests.scoring.test_behavior_relative import _close


def _both(model, tokens, monkeypatch, **kw):
    """Scores by the destination form, then by rotating every moved key, and how many
    layers took the destination form."""
    taken = spy_calls(monkeypatch, keys_mode, "_destination_dots")
    dest = bh.score_heads(model, tokens, seed=1, **kw)
    monkeypatch.setattr(keys_mode, "DESTINATION_FORM", 0)  # never: every moved key rotated
    per_key = bh.score_heads(model, tokens, seed=1, **kw)
    return dest, per_key, len(taken)


@pytest.mark.parametrize(
    "which", ["llama_gqa", "llama_yarn", "gpt_neox", "phi", "gemma2", "cohere2", "gptj"]
)
def test_destination_form_equals_rotating_each_key(bridge_factory, which, gen, monkeypatch):
    # partial rotary (neox, phi), interleaved pairs (gptj), soft-capped logits (gemma2),
    # sliding windows (cohere2), scaled tables of magnitude != 1 (yarn), GQA
    model = bridge_factory(which)
    tokens = torch.randint(3, VOCAB, (2, 40), generator=gen)
    dest, per_key, taken = _both(model, tokens, monkeypatch, block_size=4, n_swaps=8)
    assert taken == model.cfg.n_layers  # one query per prompt: every layer took it
    _close(dest, per_key, 1e-6)
    assert hook_count(model) == 0


def test_destination_form_per_pair_padding_and_start_alignment(bridge_factory, gen, monkeypatch):
    model = bridge_factory("llama_gqa")
    tokens = torch.randint(3, VOCAB, (3, 40), generator=gen)
    left = torch.ones_like(tokens)
    left[1, :6] = 0  # per-prompt tables: prompt 1's positions start after its padding
    right = torch.ones_like(tokens)
    right[2, 33:] = 0  # prompt 2's last query is earlier than the others'
    default = keys_mode.DESTINATION_FORM
    for mask, align in ((left, "end"), (right, "end"), (None, "start")):
        kw = dict(block_size=4, n_swaps=8, per_pair=True, attention_mask=mask, align=align)
        dest, per_key, taken = _both(model, tokens, monkeypatch, **kw)
        assert taken
        _close(dest, per_key, 1e-6)
        monkeypatch.setattr(keys_mode, "DESTINATION_FORM", default)


def test_long_prompts_with_few_swaps_rotate_the_moved_keys(bridge_factory, gen, monkeypatch):
    # n^2 > 16 x the moved keys: the product over every (destination, source) would cost
    # more than moving the keys, so the moved keys are rotated
    model = bridge_factory("llama_gqa")
    tokens = torch.randint(3, VOCAB, (1, 64), generator=gen)
    _dest, _per_key, taken = _both(model, tokens, monkeypatch, block_size=2, n_swaps=2)
    assert taken == 0
