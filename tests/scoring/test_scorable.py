"""rope_behavior.scorable_prompts: the one rule of which prompts can be scored, and the
error that names the prompts scoring refuses."""

import pytest
import torch

import rope_behavior as rb
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.scoring.geometry import block_geometry, excluded_keys
from rope_behavior.tasks import toy_model
from tests.models import hook_count

BOS = 1
V = 50


@pytest.fixture(scope="module")
def model():
    """A toy rotary model whose tokenizer 'prepends' BOS = 1 (so exclude_keys='auto' drops it)."""
    m = toy_model(d_vocab=V, n_ctx=64, n_layers=1)
    m.bos_token_id = BOS
    return m


def _batch(lengths, side, gen, mid_bos=0.0):
    """Prompts of ``lengths`` real tokens (BOS first), padded on ``side``; with ``mid_bos``
    a share of the other tokens is BOS too (excluded keys inside a prompt)."""
    n = max(lengths)
    tokens = torch.zeros(len(lengths), n, dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for i, length in enumerate(lengths):
        row = torch.randint(3, V, (length,), generator=gen)
        row[0] = BOS
        if mid_bos:
            row[1:][torch.rand(length - 1, generator=gen) < mid_bos] = BOS
        cols = slice(0, length) if side == "right" else slice(n - length, n)
        tokens[i, cols], mask[i, cols] = row, 1
    return tokens, mask


def _geometry_ok(tokens, mask, b, qp="last", align="end"):
    """Whether the block geometry scoring draws accepts the batch (the length check)."""
    excl = excluded_keys(tokens, "auto", BOS)
    message = ""
    try:
        block_geometry(tokens, mask, excl, b, qp, None, "auto", None, align)
    except RopeBehaviorError as e:
        message = str(e)
    assert not message or "too short to score" in message
    return not message


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("align", ["end", "start"])
def test_predicate_is_the_rule_scoring_applies(model, side, align):
    # 150 random batches per case: the predicate says True for every prompt exactly when
    # the block geometry scoring draws accepts the batch, and each prompt alone likewise
    gen = torch.Generator().manual_seed(hash((side, align)) % 2**31)
    for trial in range(150):
        b = int(torch.randint(1, 9, (1,), generator=gen))
        lengths = torch.randint(
            1, 40, (int(torch.randint(1, 6, (1,), generator=gen)),), generator=gen
        )
        tokens, mask = _batch(lengths.tolist(), side, gen, mid_bos=0.1 if trial % 3 == 0 else 0.0)
        ok = rb.scorable_prompts(model, tokens, mask, block_size=b, align=align)
        assert ok.dtype == torch.bool
        assert ok.shape == (len(lengths),)
        assert bool(ok.all()) == _geometry_ok(tokens, mask, b, align=align), (lengths, b)
        for i in range(len(lengths)):
            row, m = tokens[i : i + 1], mask[i : i + 1]
            assert bool(ok[i]) == _geometry_ok(row, m, b, align=align), (lengths[i], b)


@pytest.mark.parametrize("side", ["right", "left"])
def test_predicate_agrees_with_score_heads(model, side):
    gen = torch.Generator().manual_seed(7 if side == "right" else 8)
    for _ in range(8):
        b = int(torch.randint(2, 6, (1,), generator=gen))
        lengths = torch.randint(2, 30, (5,), generator=gen).tolist()
        tokens, mask = _batch(lengths, side, gen)
        ok = rb.scorable_prompts(model, tokens, attention_mask=mask, block_size=b)
        if bool(ok.all()):
            rb.score_heads(model, tokens, attention_mask=mask, block_size=b)
        else:
            bad = (~ok).nonzero().flatten().tolist()
            with pytest.raises(RopeBehaviorError, match="too short to score") as err:
                rb.score_heads(model, tokens, attention_mask=mask, block_size=b)
            for i in bad:  # every rejected prompt is named, with its length
                assert f"prompt {i} ({lengths[i]} tokens, needs {2 * b + 2})" in str(err.value)
            named = {
                int(w.split()[1]) for w in str(err.value).split("), ") if w.startswith("prompt ")
            }
            assert named <= set(bad)
            if bool(ok.any()):  # the kept ones score
                rb.score_heads(model, tokens[ok], attention_mask=mask[ok], block_size=b)
        assert hook_count(model) == 0


@pytest.mark.parametrize("block_size", [1, 4, 8])
def test_default_settings_need_2b_plus_2_tokens_with_bos(model, block_size):
    # the length the docstring states: n >= 2 * block_size + 2 with a prepended BOS, and
    # n >= 2 * block_size + 1 without one
    gen = torch.Generator().manual_seed(block_size)
    need = 2 * block_size + 2
    tokens, mask = _batch([need - 1, need, need + 1], "right", gen)
    assert rb.scorable_prompts(model, tokens, mask, block_size=block_size).tolist() == [
        False,
        True,
        True,
    ]
    plain = tokens.clone()
    plain[:, 0] = 7  # no BOS
    got = rb.scorable_prompts(model, plain, mask, block_size=block_size)
    assert got.tolist() == [True, True, True]
    shorter = plain[:1, : need - 2]
    assert not bool(rb.scorable_prompts(model, shorter, block_size=block_size)[0])


def test_listed_queries_and_all(model):
    gen = torch.Generator().manual_seed(3)
    tokens, mask = _batch([30, 12, 20], "right", gen)
    # position 15 is padding in prompt 1; before position 10 there are 9 movable keys
    assert rb.scorable_prompts(
        model, tokens, mask, block_size=4, query_positions=[10, 15]
    ).tolist() == [True, False, True]
    assert rb.scorable_prompts(model, tokens, mask, block_size=5, query_positions=10).tolist() == [
        False,
        False,
        False,
    ]
    assert rb.scorable_prompts(
        model, tokens, mask, block_size=5, query_positions="all"
    ).tolist() == [True, True, True]
    with pytest.raises(
        RopeBehaviorError,
        match=r"prompt 1 \(query position\(s\) \[15\] are padding in its 12 tokens\)",
    ):
        rb.score_heads(model, tokens, attention_mask=mask, block_size=4, query_positions=[10, 15])
    # "all": every prompt can be scored alone, and they are scored where they share positions
    hs = rb.score_heads(model, tokens, attention_mask=mask, block_size=5, query_positions="all")
    assert max(hs.query_positions) <= 11


def test_all_padding_rows_are_not_scorable(model):
    gen = torch.Generator().manual_seed(4)
    tokens, mask = _batch([30, 25], "left", gen)
    mask[1] = 0
    assert rb.scorable_prompts(model, tokens, mask).tolist() == [True, False]
    with pytest.raises(
        RopeBehaviorError, match=r"1 row\(s\) with no tokens \(all padding\): prompts \[1\]"
    ):
        rb.score_heads(model, tokens, attention_mask=mask)


def test_the_error_names_prompts_lengths_and_ways_on(model):
    gen = torch.Generator().manual_seed(5)
    tokens, mask = _batch([40, 9, 40, 5], "right", gen)
    with pytest.raises(RopeBehaviorError) as err:
        rb.score_heads(model, tokens, attention_mask=mask, block_size=8)
    text = str(err.value)
    assert text.startswith(
        "2 of 4 prompts too short to score: prompt 1 (9 tokens, needs 18), prompt 3 (5 tokens, needs 18)."
    )
    assert (
        "rope_behavior.scorable_prompts(model, tokens, attention_mask=mask, block_size=8)" in text
    )
    # prompt 3 has 3 keys that can move (BOS and its last token cannot): block_size 1
    assert text.endswith("or use block_size=1 (the largest that scores them)")
    assert "first movable key" not in text
    rb.score_heads(model, tokens, attention_mask=mask, block_size=1)


def test_the_error_says_when_no_block_size_helps(model):
    tokens = torch.tensor([[BOS, 5, 6], [BOS, 5, 6]])
    with pytest.raises(
        RopeBehaviorError, match=r"no block_size scores prompts 0, 1 \(fewer than two keys"
    ):
        rb.score_heads(model, tokens, block_size=2)


def test_analyze_names_the_prompt_by_its_index_in_the_corpus():
    model = toy_model(d_vocab=V, n_ctx=64, n_layers=2, n_heads=2)
    model.bos_token_id = BOS
    gen = torch.Generator().manual_seed(6)
    tokens, mask = _batch([30] * 9 + [10], "right", gen)
    with pytest.raises(
        RopeBehaviorError,
        match=r"1 of 10 prompts too short to score: prompt 9 \(10 tokens, needs 18\)",
    ):
        rb.analyze(model, tokens, attention_mask=mask, batch_size=4, per_pair=False)
    keep = rb.scorable_prompts(model, tokens, mask)
    out = rb.analyze(model, tokens[keep], attention_mask=mask[keep], batch_size=4, per_pair=False)
    assert out.n_prompts == 9
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"block_size": 0}, r"block_size=0; expected an int >= 1"),
        ({"block_size": 2.0}, r"block_size=2.0 \(float\)"),
        ({"align": "middle"}, r"align='middle'; options: 'end', 'start'"),
        ({"query_positions": "first"}, r"options: 'last', 'all'"),
        ({"exclude_keys": "bos-ish"}, r"exclude_keys holds 'bos-ish'"),
    ],
)
def test_predicate_arguments_are_checked(model, kw, match):
    tokens = torch.randint(3, V, (2, 20))
    with pytest.raises(RopeBehaviorError, match=match):
        rb.scorable_prompts(model, tokens, **kw)


def test_predicate_on_the_shipped_lm_matches_tokenize_prompts():
    lm = rb.load_shipped_lm()
    texts = ["x", "def f(a, b):\n    return a + b\n", "import os", *rb.heldout_texts()[:2]]
    tokens, mask = rb.tokenize_prompts(lm, texts, context=64)
    ok = rb.scorable_prompts(lm, tokens, mask)
    assert ok.tolist() == [bool(n >= 18) for n in mask.sum(1).tolist()]
    rb.score_heads(lm, tokens[ok], attention_mask=mask[ok], layers=[0])
