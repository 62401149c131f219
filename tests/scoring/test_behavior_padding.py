"""score_heads on a padded batch equals each prompt scored alone, on every family, with
left and right padding, in keys and tokens modes."""

import pytest
import torch

import rope_behavior.scoring.scorer as bh
from tests.models import FAMILIES, VOCAB, hook_count

FIELDS = ("s_pos", "s_sym", "separation", "swapped_mass", "leftover_mass", "entropy")
SWAPS = [(0, 1), (0, 3), (1, 2), (2, 4)]


def _batch(side):
    gen = torch.Generator().manual_seed(11)
    long = torch.randint(3, VOCAB, (40,), generator=gen)
    short = torch.randint(3, VOCAB, (33,), generator=gen)
    toks = torch.full((2, 40), 5, dtype=torch.long)
    mask = torch.zeros(2, 40, dtype=torch.long)
    toks[0], mask[0] = long, 1
    if side == "left":
        toks[1, 7:], mask[1, 7:] = short, 1
    else:
        toks[1, :33], mask[1, :33] = short, 1
    return toks, mask, [long[None], short[None]]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_padded_batch_equals_each_prompt_alone(bridge_factory, family, side):
    model = bridge_factory(family)
    toks, mask, alone = _batch(side)
    modes = ("keys", "tokens") if family in ("llama_gqa", "gpt_neox", "gptj", "phi3", "falcon_mq") else ("keys",)
    for mode in modes:
        args = dict(mode=mode, block_size=4, swaps=SWAPS, exclude_keys="none")
        batched = bh.score_heads(model, toks, attention_mask=mask, **args)
        for i, prompt in enumerate(alone):
            ref = bh.score_heads(model, prompt, **args)
            for name in FIELDS:
                torch.testing.assert_close(
                    getattr(batched, name)[i : i + 1], getattr(ref, name), atol=2e-5, rtol=0,
                    equal_nan=True, msg=lambda m, name=name, i=i, mode=mode: f"{family} {side} {mode} {name} prompt {i}: {m}",
                )
        assert batched.query_pos[:, 0].tolist() == ([39, 39] if side == "left" else [39, 32])
    assert hook_count(model) == 0
