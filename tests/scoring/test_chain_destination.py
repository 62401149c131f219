"""Keys mode under the RoPE edits compare_edits makes: the chain read as one map per
position (scoring/key_chain.py) and used in the destination form (each query turned back
by the map's transpose) or on the moved keys equals re-running the whole chain once per
swap, to float32 rounding; hooks it does not know still raise."""

import pytest
import torch

import rope_behavior as rb
import rope_behavior.scoring.key_chain as key_chain
import rope_behavior.scoring.keys_mode as keys_mode
import rope_behavior.scoring.scorer as bh
from rope_behavior.analysis.band_ablation import band_values
from rope_behavior.analysis.edit_names import parse_edit
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.interventions.compile import intervened
from rope_behavior.model.context import resolve
from tests.models import VOCAB, hook_count, spy_calls
from tests.scoring.test_behavior_relative import _close

# every form compare_edits takes (nope-below-band: the bands measured on the model)
EDITS = ["prope:0.25", "prope:0.5", "nope-below:1", "linear:2", "ntk:4", "yarn:4", "band"]


def _values(model, tokens, name):
    if name == "band":
        usage = rb.frequency_usage(rb.capture(model, tokens))
        return band_values(rb.high_norm_bands(usage, ratio=1.2), model)
    return (parse_edit(name, original_context=16),)


def _three(model, tokens, values, monkeypatch, **kw):
    """Scores by the destination form with the map, by the map on the moved keys, by the
    chain replayed per swap; and how many layers turned their queries back by a map."""
    turned = spy_calls(monkeypatch, keys_mode, "turned_back")  # by the map itself
    rotations: list[int] = []  # by the map's tables, where it is a scaled rotation
    real_tables = keys_mode.rotation_tables

    def tables_spy(columns):
        got = real_tables(columns)
        rotations.extend([] if got is None else [1])
        return got

    monkeypatch.setattr(keys_mode, "rotation_tables", tables_spy)
    out, context = [], resolve(model)
    with intervened(model, values):
        layers = tuple(range(model.cfg.n_layers))
        hooked = len(key_chain.key_chains(context.adapter, context.spec, layers))
    for form, read in ((keys_mode.DESTINATION_FORM, True), (0, True), (0, False)):
        monkeypatch.setattr(keys_mode, "DESTINATION_FORM", form)
        if not read:
            monkeypatch.setattr(key_chain, "chain_map", lambda *a, **k: None)
        with intervened(model, values):
            out.append(bh.score_heads(model, tokens, seed=1, **kw))
    return (*out, len(turned) + len(rotations), hooked, len(rotations))


@pytest.mark.parametrize("which", ["llama_gqa", "gpt_neox", "gptj"])
@pytest.mark.parametrize("edit", EDITS)
def test_map_equals_the_chain_replayed_per_swap(bridge_factory, which, edit, gen, monkeypatch):
    # GQA (edits at the rotated keys); partial rotary (neox) and interleaved pairs (gptj),
    # the edits before rotation there
    model = bridge_factory(which)
    tokens = torch.randint(3, VOCAB, (2, 40), generator=gen)
    values = _values(model, tokens, edit)
    kw = dict(block_size=4, n_swaps=8, exclude_keys="none")
    dest, mapped, replay, turned, hooked, rotations = _three(model, tokens, values, monkeypatch, **kw)
    assert turned == hooked >= 1  # one query per prompt: every hooked layer took the form
    if edit != "band":  # the same angles in every head: turned back by the map's tables
        assert rotations == hooked
    _close(dest, replay, 1e-6)
    _close(mapped, replay, 1e-6)
    assert hook_count(model) == 0


def test_per_pair_and_padding_through_the_map(bridge_factory, gen, monkeypatch):
    model = bridge_factory("llama_gqa")
    tokens = torch.randint(3, VOCAB, (3, 40), generator=gen)
    mask = torch.ones_like(tokens)
    mask[1, :6] = 0  # left padding: per-prompt tables and positions
    values = _values(model, tokens, "yarn:4")
    kw = dict(block_size=4, n_swaps=8, per_pair=True, attention_mask=mask, exclude_keys="none")
    dest, mapped, replay, turned, _, _ = _three(model, tokens, values, monkeypatch, **kw)
    assert turned
    _close(dest, replay, 1e-6)
    _close(mapped, replay, 1e-6)


def test_a_map_that_differs_between_heads_turns_queries_back_by_itself(
    bridge_factory, gen, monkeypatch
):
    """An angle edit of one KV head's queries and keys: no shared rotation, so each query is
    turned back by the map's transpose (the general form), equal to the replay."""
    model = bridge_factory("llama_gqa")
    spec = rb.RopeSpec.from_model(model)
    tokens = torch.randint(3, VOCAB, (2, 40), generator=gen)
    values = [rb.AngleOverride(layer=1, heads=(0, 1), omega=[0.3] * spec.n_pairs)]
    kw = dict(block_size=4, n_swaps=8, exclude_keys="none")
    dest, mapped, replay, turned, hooked, rotations = _three(model, tokens, values, monkeypatch, **kw)
    assert (hooked, turned, rotations) == (1, 1, 0)
    _close(dest, replay, 1e-6)
    _close(mapped, replay, 1e-6)


def test_an_unknown_hook_beside_a_mapped_edit_still_raises(bridge_factory, gen):
    model = bridge_factory("llama_gqa")
    tokens = torch.randint(3, VOCAB, (2, 40), generator=gen)
    site = rb.RopeSpec.from_model(model).sites[0].rot_k

    def doubled(x, hook=None):
        return x * 2

    refused = pytest.raises(RopeBehaviorError, match=r"cannot reproduce the keys layer 0.*doubled")
    with intervened(model, [rb.PRoPE(0.5)]), model.hooks(fwd_hooks=[(site, doubled)]), refused:
        bh.score_heads(model, tokens, seed=1, block_size=4, n_swaps=8, exclude_keys="none")
    assert hook_count(model) == 0


def test_one_prompt_is_probed_where_every_prompt_shares_the_table(bridge_factory, gen, monkeypatch):
    model = bridge_factory("llama_gqa")
    tokens = torch.randint(3, VOCAB, (3, 40), generator=gen)
    left = torch.ones_like(tokens)
    left[1, :6] = 0  # per-prompt positions: every prompt probed
    seen = []
    real = key_chain._probed

    def spy(chain, x, *a):
        seen.append(x.shape[0])
        return real(chain, x, *a)

    monkeypatch.setattr(key_chain, "_probed", spy)
    kw = dict(seed=1, block_size=4, n_swaps=8, exclude_keys="none")
    with intervened(model, [rb.PRoPE(0.5)]):
        bh.score_heads(model, tokens, **kw)
        assert set(seen) == {1}
        seen.clear()
        bh.score_heads(model, tokens, attention_mask=left, **kw)
        assert 3 in seen
