"""frequency_patching_sweep takes an attention mask, shared by the clean and corrupted runs."""

import pytest
import torch

import rope_behavior as rb
from rope_behavior.interventions.compile import run_with_interventions
from tests.models import VOCAB, hook_count


def masked_loop(model, clean, corrupted, mask, metric, result):
    """One forward per condition, denoising: patch from the clean run, both under ``mask``."""
    source = rb.capture(model, clean, attention_mask=mask)
    out = torch.empty_like(result.values)
    for li, layer in enumerate(result.layers):
        for hi, heads in enumerate(result.query_heads):
            for bi, band in enumerate(result.bands):
                value = rb.FrequencyPatch(layer=layer, heads=heads, pairs=band, target="qk", source=source)
                with torch.no_grad():
                    logits = run_with_interventions(model, corrupted, value, attention_mask=mask)
                out[li, hi, bi] = float(metric(logits))
    return out


@pytest.mark.parametrize("family", ["llama_gqa", "gpt_neox"])
def test_a_masked_sweep_equals_the_masked_loop(bridge_factory, family):
    model = bridge_factory(family)
    g = torch.Generator().manual_seed(5)
    clean = torch.randint(3, VOCAB, (2, 9), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2:5] = torch.randint(3, VOCAB, (2, 3), generator=g)
    mask = torch.ones_like(clean)
    mask[1, :3] = 0  # the second prompt is left-padded
    metric = rb.metrics.logit_diff(torch.tensor([5, 9]), torch.tensor([7, 11]), position=5)
    result = rb.frequency_patching_sweep(
        model, clean, corrupted, metric, bands=2, attention_mask=mask, batch_conditions=3
    )
    assert hook_count(model) == 0
    expected = masked_loop(model, clean, corrupted, mask, metric, result)
    torch.testing.assert_close(result.values, expected, atol=1e-5, rtol=0)
    with torch.no_grad():
        clean_value = float(metric(model(clean, attention_mask=mask)))
    assert result.clean_baseline == pytest.approx(clean_value, abs=1e-6)
    unmasked = rb.frequency_patching_sweep(model, clean, corrupted, metric, bands=2)
    assert not torch.allclose(unmasked.values, result.values)  # the mask matters


def test_an_all_ones_mask_changes_nothing(bridge_factory):
    model = bridge_factory("llama_gqa")
    g = torch.Generator().manual_seed(6)
    clean = torch.randint(3, VOCAB, (2, 8), generator=g)
    corrupted = torch.randint(3, VOCAB, (2, 8), generator=g)
    metric = rb.metrics.logit_diff(torch.tensor([5, 9]), torch.tensor([7, 11]))
    plain = rb.frequency_patching_sweep(model, clean, corrupted, metric, bands=2)
    ones = rb.frequency_patching_sweep(
        model, clean, corrupted, metric, bands=2, attention_mask=torch.ones_like(clean)
    )
    torch.testing.assert_close(ones.values, plain.values, atol=1e-6, rtol=0)


def test_a_mask_of_another_shape_is_refused(bridge_factory):
    model = bridge_factory("llama_gqa")
    clean = torch.randint(3, VOCAB, (2, 8))
    metric = rb.metrics.logit_diff(torch.tensor([5, 9]), torch.tensor([7, 11]))
    with pytest.raises(rb.RopeBehaviorError, match="attention_mask must be a tensor shaped like"):
        rb.frequency_patching_sweep(
            model, clean, clean, metric, bands=2, attention_mask=torch.ones(2, 7, dtype=torch.long)
        )
    assert hook_count(model) == 0
