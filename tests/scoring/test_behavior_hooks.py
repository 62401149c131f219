"""Keys mode scores the model as it runs: rope_behavior's own edits are reproduced on the
moved keys, any other key-editing hook is refused."""

import pytest
import torch

import rope_behavior.scoring.scorer as bh
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.interventions.compile import intervened
from rope_behavior.interventions.values import AngleOverride, FrequencyAblation, TwoAngles
from rope_behavior.tasks.toy import toy_model
from tests.models import VOCAB, hook_count


@pytest.fixture
def toks():
    return torch.randint(3, VOCAB, (3, 33), generator=torch.Generator().manual_seed(7))


def toy():
    model = toy_model(d_vocab=VOCAB, n_ctx=64, n_layers=2, n_heads=2, d_head=8, seed=0).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.mul_(4.0)
            block.attn.W_K.mul_(4.0)
    return model


def _agree(model, toks, **kw):
    args = dict(block_size=4, n_swaps=10, layers=[0], seed=3, **kw)
    k = bh.score_heads(model, toks, mode="keys", **args)
    args["seed"] = 3
    t = bh.score_heads(model, toks, mode="tokens", sequences_per_forward=11, **args)
    for name in ("s_pos", "s_sym", "separation", "mass_moved", "swap_weight", "swapped_mass"):
        torch.testing.assert_close(getattr(k, name), getattr(t, name), atol=1e-5, rtol=0, equal_nan=True)
    return k


EDITS = {
    "nope": lambda: [AngleOverride(layer=0, omega=0.0)],
    "two_angles": lambda: [AngleOverride(layer=0, omega=TwoAngles(0.0, 0.7))],
    "zero_high": lambda: [FrequencyAblation(layer=0, pairs=[0, 1], mode="zero", target="k")],
    "q_only": lambda: [AngleOverride(layer=0, omega=0.3, target="q")],
}


@pytest.mark.parametrize("edit", sorted(EDITS))
@pytest.mark.parametrize("which", ["toy", "llama_gqa", "gpt_neox", "gptj", "qwen3"])
@pytest.mark.parametrize("align", ["end", "start"])
def test_keys_equals_tokens_at_layer_zero_under_interventions(bridge_factory, toks, edit, which, align):
    model = toy() if which == "toy" else bridge_factory(which)
    plain = bh.score_heads(model, toks, block_size=4, n_swaps=10, layers=[0], align=align,
                           seed=3)
    with intervened(model, EDITS[edit]()):
        k = _agree(model, toks, align=align)
    assert hook_count(model) == 0
    if edit != "q_only":  # the key edits changed the scores: not the bare model's numbers
        assert float((k.s_pos - plain.s_pos).abs().max()) > 1e-3


def test_retrieval_toy_under_its_nope_setting(toks):
    from rope_behavior.tasks.pretrained import load_pretrained
    from rope_behavior.tasks.settings import parse_setting

    model, task, _ = load_pretrained("retrieval")
    model.eval()
    gen = torch.Generator().manual_seed(0)
    batch = task.sample(16, gen)
    spec_pairs = model.cfg.d_head // 2
    setting = parse_setting("nope", spec_pairs)
    with model.hooks(setting.hooks(model)):
        args = dict(block_size=1, n_swaps=None, layers=[0])
        k = bh.score_heads(model, batch.tokens, mode="keys", **args)
        t = bh.score_heads(model, batch.tokens, mode="tokens", **args)
    torch.testing.assert_close(k.s_pos, t.s_pos, atol=1e-5, rtol=0, equal_nan=True)
    assert hook_count(model) == 0


def test_an_unknown_key_editing_hook_is_refused(toks):
    model = toy()

    def double_keys(x, hook=None):
        return 2 * x

    with model.hooks([("blocks.0.attn.hook_rot_k", double_keys)]):
        with pytest.raises(RopeBehaviorError, match=r"keys mode cannot reproduce the keys layer 0.*mode='tokens'"):
            bh.score_heads(model, toks, block_size=4)
        # tokens mode re-runs the hooked model: fine
        bh.score_heads(model, toks, block_size=4, mode="tokens")
    assert hook_count(model) == 0


def test_a_hook_that_only_reads_keys_is_fine(toks):
    model = toy()
    seen = []

    def look(x, hook=None):
        seen.append(x.shape)

    plain = bh.score_heads(model, toks, block_size=4)
    with model.hooks([("blocks.0.attn.hook_k", look), ("blocks.1.attn.hook_rot_k", look)]):
        hooked = bh.score_heads(model, toks, block_size=4)
    # under a hook the moved keys are rebuilt and rotated; without, the plain run reads the
    # destination form (scoring/keys_mode.py): the same dots, equal to float32 rounding
    torch.testing.assert_close(hooked.s_pos, plain.s_pos, atol=1e-7, rtol=0)
    assert seen
    assert hook_count(model) == 0


def test_constant_keys_from_weights_are_exactly_positional(toks):
    # content-free keys (no hook): every layer scores positional in keys mode
    model = toy()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_K.zero_()
            block.attn.b_K.normal_(generator=torch.Generator().manual_seed(1))
    hs = bh.score_heads(model, toks, block_size=4, n_swaps=None, exclude_keys=(0,))
    assert bool((hs.distance_from_uniform > 1e-3).all())
    torch.testing.assert_close(hs.s_pos, torch.ones_like(hs.s_pos), atol=1e-6, rtol=0)
