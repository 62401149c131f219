"""Keys mode under RoPE edits: where the edits at the key sites map each pair linearly at
its position (angle edits, zeroed pairs), the moved keys are read at their destinations
from that map, and equal re-running the whole chain once per swap."""

import pytest
import torch

import rope_behavior.scoring.key_chain as key_chain
import rope_behavior.scoring.scorer as bh
from rope_behavior.interventions.compile import intervened
from rope_behavior.interventions.rope_edits import NoPEBelow, PRoPE, RopeScaling
from rope_behavior.interventions.values import FrequencyAblation, FrequencyPatch
from tests.models import VOCAB, hook_count
from tests.scoring.test_behavior_relative import _close

EDITS = {
    "prope": lambda: PRoPE(0.5),
    "yarn": lambda: RopeScaling("yarn", 4, original_context=16),
    "nope_below": lambda: NoPEBelow(1),
    "ablation": lambda: FrequencyAblation(layer=0, heads=[0], pairs=[0, 1], target="k"),
}


def _both(model, tokens, edit, monkeypatch, **kw):
    """Scores read from the pairwise map, then from the chain re-run per swap, and how many
    layers took the map."""
    taken = []
    real = key_chain.chain_map

    def spy(*a, **k):
        out = real(*a, **k)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(key_chain, "chain_map", spy)
    with intervened(model, edit):
        fast = bh.score_heads(model, tokens, seed=1, **kw)
    monkeypatch.setattr(key_chain, "chain_map", lambda *a, **k: None)
    with intervened(model, edit):
        slow = bh.score_heads(model, tokens, seed=1, **kw)
    return fast, slow, sum(taken)


@pytest.mark.parametrize("which", ["llama_gqa", "gpt_neox", "gptj"])
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_pairwise_map_equals_the_chain_per_swap(bridge_factory, which, edit, gen, monkeypatch):
    # GQA with the edits at the rotated keys; partial rotary (neox) and interleaved pairs
    # (gptj) with them before rotation (hook_rot_k does not fire there)
    model = bridge_factory(which)
    tokens = torch.randint(3, VOCAB, (2, 40), generator=gen)
    kw = dict(block_size=4, n_swaps=None, exclude_keys="none")  # every pair: the moved keys
    fast, slow, taken = _both(model, tokens, EDITS[edit](), monkeypatch, **kw)
    assert taken >= 1
    _close(fast, slow, 1e-6)
    assert hook_count(model) == 0


def test_an_edit_that_is_not_a_pairwise_map_replays_the_chain(bridge_factory, gen, monkeypatch):
    # patched values replace pairs by other activations: affine, not linear -> the chain
    model = bridge_factory("llama_gqa")
    tokens = torch.randint(3, VOCAB, (2, 40), generator=gen)
    other = torch.randint(3, VOCAB, (2, 40), generator=gen)
    patch = FrequencyPatch(layer=0, pairs=[0], target="k", source=other)
    fast, slow, taken = _both(
        model, tokens, patch, monkeypatch, block_size=4, n_swaps=None, exclude_keys="none"
    )
    assert taken == 0
    _close(fast, slow, 0.0)
