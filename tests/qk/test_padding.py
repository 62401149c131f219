"""Padding is exact in every family: a prompt padded into a batch (left or right, with an
attention mask) gives, on its real tokens, the same captured q/k and tables, per-pair
logits, frequency usage and intervened logits as the prompt run alone.

What the host does (measured, see ``rope_behavior.model.adapters.bridge``): the Bridge derives
per-prompt position ids from the mask for left-padded rows (real tokens count from 0) and
keeps ``0..pos-1`` for the others; its own logits on real tokens equal the unpadded run's
in every family of ``tests.models.FAMILIES`` (checked below first), so every difference
would be rope_behavior's.
"""

import pytest
import torch

import rope_behavior as rb
from rope_behavior.interventions.compile import compile_hooks
from rope_behavior.model.adapters import adapter_for
from rope_behavior.qk.captured import Captured
from tests.models import FAMILIES, hook_count, make_bridge

TOL = dict(atol=1e-5, rtol=0)
N, SHORT = 7, 4  # row 0 is the short prompt, padded to N; row 1 fills all N positions


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run fastest on one thread (and a shared 2-core box is not oversubscribed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bridges():
    cache: dict = {}

    def get(name):
        if name not in cache:
            cache[name] = make_bridge(name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def prompts():
    gen = torch.Generator().manual_seed(7)
    return torch.randint(3, 97, (SHORT,), generator=gen), torch.randint(3, 97, (N,), generator=gen)


def _batch(prompts, side):
    """Tokens, mask and, per row, the slice of its real tokens."""
    short, full = prompts
    tokens = torch.zeros(2, N, dtype=torch.long)
    mask = torch.ones(2, N, dtype=torch.long)
    real = slice(N - SHORT, N) if side == "left" else slice(0, SHORT)
    tokens[0, real], tokens[1] = short, full
    mask[0] = 0
    mask[0, real] = 1
    return tokens, mask, [real, slice(0, N)]


def _row(cap: Captured, b: int) -> Captured:
    """Prompt ``b`` of a captured batch as a batch of one (padding kept)."""

    def one(m):
        return {layer: t[b : b + 1] for layer, t in m.items()}

    return Captured(
        spec=cap.spec,
        layers=cap.layers,
        tokens=cap.tokens[b : b + 1],
        attention_mask=None if cap.attention_mask is None else cap.attention_mask[b : b + 1],
        rot_q=one(cap.rot_q),
        rot_k=one(cap.rot_k),
        q=one(cap.q),
        k=one(cap.k),
        cos=one(cap.cos),
        sin=one(cap.sin),
    )


INTERVENTIONS = {
    "nope": rb.AngleOverride(layer=0, omega=0.0),
    "angle": rb.AngleOverride(layer=0, omega=0.7, pairs=[0, 1]),
    "ablate": rb.FrequencyAblation(layer=0, pairs=[0], mode="zero"),
}


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_padded_prompt_is_analysed_as_when_alone(bridges, prompts, family, side):
    model = bridges(family)
    tokens, mask, reals = _batch(prompts, side)
    alone = [tokens[b : b + 1, reals[b]] for b in range(2)]
    with torch.no_grad():
        # the host itself: padded logits equal the lone prompt's on its real tokens
        host = model(tokens, attention_mask=mask)
        for b in range(2):
            torch.testing.assert_close(host[b, reals[b]], model(alone[b])[0], **TOL)
        cap = rb.capture(model, tokens, attention_mask=mask)
        for b in range(2):
            one = rb.capture(model, alone[b])
            r = reals[b]
            for layer in cap.layers:
                for role in ("rot_q", "rot_k", "q", "k", "cos", "sin"):
                    got = getattr(cap, role)[layer][b, r]
                    torch.testing.assert_close(got, getattr(one, role)[layer][0], **TOL)
            pl, pl_one = rb.pair_logits(cap, 0), rb.pair_logits(one, 0)
            torch.testing.assert_close(pl.per_pair[b][:, r, r], pl_one.per_pair[0], **TOL)
            torch.testing.assert_close(pl.mask[b][r, r], pl_one.mask[0])
            assert not bool(pl.mask[b].sum() != pl_one.mask[0].sum())  # nothing else attended
            for weighted in (False, True):
                u = rb.frequency_usage(_row(cap, b), layers=0, attention_weighted=weighted)
                u_one = rb.frequency_usage(one, layers=0, attention_weighted=weighted)
                for name in ("q_norm", "k_norm", "logit_abs", "logit_usage", "centroid"):
                    torch.testing.assert_close(getattr(u, name), getattr(u_one, name), **TOL)
        for what, value in INTERVENTIONS.items():
            out = rb.run_with_interventions(model, tokens, value, attention_mask=mask)
            for b in range(2):
                ref = rb.run_with_interventions(model, alone[b], value)
                torch.testing.assert_close(out[b, reals[b]], ref[0], **TOL, msg=what)
    assert hook_count(model) == 0
    assert adapter_for(model).hook_count() == 0


@pytest.mark.parametrize("family", ["llama_gqa", "gpt_neox", "gptj", "phimoe"])
def test_the_recorded_positions_are_the_models(bridges, prompts, family):
    """The tables rope_behavior rotates with sit at the position ids the model uses:
    a left-padded prompt's real tokens count from 0."""
    model = bridges(family)
    tokens, mask, reals = _batch(prompts, "left")
    cap = rb.capture(model, tokens, attention_mask=mask, layers=[0])
    for b in range(2):
        one = rb.capture(model, tokens[b : b + 1, reals[b]], layers=[0])
        torch.testing.assert_close(cap.cos[0][b, reals[b]], one.cos[0][0], atol=0, rtol=0)
        torch.testing.assert_close(cap.sin[0][b, reals[b]], one.sin[0][0], atol=0, rtol=0)
    assert not torch.equal(cap.cos[0][0], cap.cos[0][1])  # each prompt has its own table


def test_plain_model_hooks_refuse_to_guess_positions(bridges, prompts):
    """Compiled angle overrides installed with model.hooks record no positions; where the
    model's tables show prompts at different positions they raise instead of guessing."""
    model = bridges("llama_gqa")
    tokens, mask, _ = _batch(prompts, "left")
    spec = rb.RopeSpec.from_model(model)
    hooks = compile_hooks(spec, rb.AngleOverride(layer=0, omega=0.7), model=model)
    with (
        pytest.raises(rb.RopeBehaviorError, match="without recording them"),
        model.hooks(fwd_hooks=hooks),
    ):
        model(tokens, attention_mask=mask)
    assert adapter_for(model).hook_count() == 0
    with model.hooks(fwd_hooks=hooks):  # unpadded: positions 0..pos-1 are the model's
        plain = model(tokens)
    torch.testing.assert_close(
        plain, rb.run_with_interventions(model, tokens, rb.AngleOverride(layer=0, omega=0.7)), **TOL
    )


@pytest.mark.parametrize("family", ["gptj", "llama_gqa"])
def test_position_recorders_are_removed_when_a_call_raises(bridges, prompts, family):
    model = bridges(family)
    a = adapter_for(model)
    tokens, mask, _ = _batch(prompts, "left")

    def boom(x, hook):
        raise RuntimeError("boom")

    value = rb.AngleOverride(layer=1, omega=0.7)
    with (
        pytest.raises(RuntimeError, match="boom"),
        model.hooks(fwd_hooks=[(a.sites(1).pattern, boom)]),
    ):
        rb.run_with_interventions(model, tokens, value, attention_mask=mask)
    with pytest.raises(RuntimeError, match="boom"):
        rb.stream_layers(model, tokens, lambda lq: boom(None, None), attention_mask=mask)
    assert a.hook_count() == 0
    assert all(len(attn._forward_pre_hooks) == 0 for attn in a._attn)
