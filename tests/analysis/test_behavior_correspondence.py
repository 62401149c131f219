"""Behaviour vs frequency: Spearman correlation, permutation p-value, per-pair curves."""

import dataclasses

import pytest
import torch

import rope_behavior as rb
from rope_behavior.analysis.correspondence import behavior_frequency_correspondence, spearman
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.scoring.scorer import score_heads
from tests.models import VOCAB


def test_spearman_known_values():
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([1.0, 3, 2, 4])) == pytest.approx(0.8)
    # ties take average ranks: x ranks (1.5, 1.5, 3), y ranks (1, 2, 3)
    assert spearman(torch.tensor([5.0, 5, 9]), torch.tensor([0.0, 1, 2])) == pytest.approx(0.8660254, abs=1e-6)
    assert spearman(torch.tensor([3.0, 2, 1]), torch.tensor([0.0, 1, 2])) == pytest.approx(-1.0)


@pytest.fixture
def run(bridge_factory):
    model = bridge_factory("llama_gqa")
    tokens = torch.randint(0, VOCAB, (2, 33), generator=torch.Generator().manual_seed(0))
    hs = score_heads(model, tokens, block_size=4, n_swaps=6)
    pp = score_heads(model, tokens, block_size=4, n_swaps=6, per_pair=True, query_positions="all")
    usage = rb.frequency_usage(rb.capture(model, tokens))
    return hs, pp, usage


def test_correspondence_on_a_model(run):
    hs, pp, usage = run
    c = behavior_frequency_correspondence(hs, usage, pair_scores=pp, n_permutations=200,
                                          seed=0)
    # n_heads counts the heads the statistic rests on (identifiable ones by default)
    assert c.n_heads == int(c.in_statistic.sum()) <= c.n_heads_total == 8
    assert behavior_frequency_correspondence(hs, usage, include="all").n_heads == 8
    assert -1 <= c.rho <= 1
    assert 0 < c.p_value <= 1
    expected = (hs.s_pos - hs.s_sym).mean(0)
    torch.testing.assert_close(c.behavior, expected)
    assert c.pair_behavior.shape == (2, 4, 8)
    assert c.pair_rho.shape == (2, 4)
    df = c.to_frame()
    assert len(df) == 2 * 4 * 8
    assert {"behavior", "centroid", "pair_rho", "pair_s_pos"} <= set(df.columns)
    only_pairs = behavior_frequency_correspondence(pp, usage)
    assert only_pairs.behavior is None
    assert only_pairs.rho != only_pairs.rho
    assert only_pairs.pair_behavior is not None


def test_perfect_rank_agreement_has_small_p_value(run):
    hs, _, usage = run
    cen = usage.centroid.double()
    fake = dataclasses.replace(hs, s_pos=(-cen)[None].expand_as(hs.s_pos).clone(),
                               s_sym=torch.zeros_like(hs.s_sym))
    c = behavior_frequency_correspondence(fake, usage, n_permutations=999)
    assert c.rho == pytest.approx(-1.0)
    assert c.p_value == pytest.approx(1 / 1000, abs=2e-3)


def test_bad_input(run):
    hs, _pp, usage = run
    with pytest.raises(RopeBehaviorError, match="n_permutations"):
        behavior_frequency_correspondence(hs, usage, n_permutations=0)
    with pytest.raises(RopeBehaviorError, match="per_pair=True"):
        behavior_frequency_correspondence(hs, usage, pair_scores=hs)
