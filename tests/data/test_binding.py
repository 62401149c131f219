"""Binding prompts: deterministic for a seed; each answer is a single token of the model's
tokenizer (or the request is refused); clean / corrupted pairs of one length whose metric
runs in a patching sweep; and the texts analyse like any prompts."""

import math
import re

import pytest
import torch

import rope_behavior as rb
from rope_behavior.data.binding import ATTRIBUTES, ENTITIES, binding_prompts
from rope_behavior.data.binding_patching import binding_patching_inputs
from rope_behavior.errors import RopeBehaviorError
from tests.models import hook_count


@pytest.fixture(scope="module")
def lm():
    return rb.load_shipped_lm()


# -- the prompts --------------------------------------------------------------------------


def test_deterministic_for_a_seed_and_different_for_another():
    a, b = binding_prompts(16, seed=3), binding_prompts(16, seed=3)
    assert a.texts == b.texts
    assert (a.answers, a.distractors, a.queried) == (b.answers, b.distractors, b.queried)
    assert binding_prompts(16, seed=4).texts != a.texts
    from_gen = binding_prompts(16, seed=torch.Generator().manual_seed(7))
    assert from_gen.texts == binding_prompts(16, seed=torch.Generator().manual_seed(7)).texts


def test_each_prompt_binds_and_queries_one_of_its_pairs():
    p = binding_prompts(32, n_pairs=5, seed=0)
    assert len(p) == 32
    assert p.answer_ids is None
    assert p.distractor_ids is None
    for i, text in enumerate(p.texts):
        ents, attrs, q, d = p.entities[i], p.attributes[i], p.queried[i], p.distractor_pair[i]
        assert len(set(ents)) == len(set(attrs)) == 5
        assert set(ents) <= set(ENTITIES)
        assert set(attrs) <= set(ATTRIBUTES)
        assert q != d
        for e, a in zip(ents, attrs, strict=True):
            assert f"The {e} holds the {a}." in text
        assert text.endswith(f". The {ents[q]} holds the")
        assert (p.answers[i], p.distractors[i]) == (f" {attrs[q]}", f" {attrs[d]}")
    assert len(set(p.queried)) > 1  # the queried pair varies


def test_words_given_by_the_caller():
    p = binding_prompts(4, n_pairs=2, seed=1, entities=["cup", "box"], attributes=["pen", "key"])
    assert {frozenset(e) for e in p.entities} == {frozenset({"cup", "box"})}
    assert {p.answers[0], p.distractors[0]} == {" pen", " key"}


def test_answers_are_single_tokens_of_the_shipped_lm(lm):
    p = binding_prompts(24, seed=0, tokenizer=lm)
    assert p.answer_ids is not None
    assert p.distractor_ids is not None
    assert (p.answer_ids != p.distractor_ids).all()
    lengths = set()
    for i, text in enumerate(p.texts):
        prompt = lm.to_tokens(text)[0]
        for word, wid in ((p.answers[i], p.answer_ids[i]), (p.distractors[i], p.distractor_ids[i])):
            assert lm.tokenizer.decode([int(wid)]) == word
            torch.testing.assert_close(lm.to_tokens(text + word)[0], torch.cat([prompt, wid[None]]))
        lengths.add(len(prompt))
    assert len(lengths) == 1  # every word one token: one length
    # a Hugging Face tokenizer gives what the model holding it gives
    q = binding_prompts(24, seed=0, tokenizer=lm.tokenizer)
    assert q.texts == p.texts
    assert q.answer_ids is not None
    assert torch.equal(q.answer_ids, p.answer_ids)


class WordTokenizer:
    """A word-level tokenizer (each word with its leading space, and each ".", is a token);
    ``merge_after``: texts longer than that have their last two tokens merged into one."""

    def __init__(self, merge_after: int | None = None):
        self.vocab: dict[str, int] = {}
        self.merge_after = merge_after

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        pieces = re.findall(r" ?[^ .]+|\.", text)
        if self.merge_after is not None and len(text) > self.merge_after and len(pieces) > 1:
            pieces = [*pieces[:-2], pieces[-2] + pieces[-1]]
        return [self.vocab.setdefault(p, len(self.vocab)) for p in pieces]

    def decode(self, ids: list[int]) -> str:
        words = {i: p for p, i in self.vocab.items()}
        return "".join(words[i] for i in ids)


def test_any_tokenizer_with_encode_and_decode():
    tok = WordTokenizer()
    p = binding_prompts(8, seed=0, tokenizer=tok)
    assert p.texts == binding_prompts(8, seed=0).texts  # every built-in word is one token
    assert p.answer_ids is not None
    assert [tok.decode([int(i)]) for i in p.answer_ids] == list(p.answers)


def test_a_tokenizer_that_merges_across_words_is_refused():
    with pytest.raises(
        RopeBehaviorError,
        match=r"binding prompt 0 'The .*': followed by ' \w+' it does not tokenize as its own "
        r"tokens then ' \w+' \(id \d+\); this tokenizer merges tokens across words",
    ):
        binding_prompts(4, tokenizer=WordTokenizer(merge_after=40))


def test_corrupted_prompts_swap_answer_and_distractor():
    p = binding_prompts(8, seed=2)
    for kind in ("query", "swap"):
        c = p.corrupted(kind)
        assert (c.answers, c.distractors) == (p.distractors, p.answers)
        for i in range(len(p)):
            attrs, q = c.attributes[i], c.queried[i]
            assert c.answers[i] == f" {attrs[q]}"
            assert c.distractors[i] == f" {attrs[c.distractor_pair[i]]}"
            assert c.texts[i] != p.texts[i]
    q = p.corrupted("query")
    assert q.attributes == p.attributes
    assert q.queried == p.distractor_pair
    s = p.corrupted("swap")
    assert s.queried == p.queried
    assert all(t.endswith(u[u.rindex(". ") :]) for t, u in zip(s.texts, p.texts, strict=True))


# -- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"n": 0}, r"n=0; expected an int >= 1 \(the number of prompts\)"),
        ({"n": 2.0}, r"n=2.0 \(float\); expected an int >= 1"),
        ({"n_pairs": 1}, r"n_pairs=1; expected an int >= 2 \(pairs per prompt"),
        ({"seed": -1}, r"seed=-1; expected a non-negative int below 2\*\*63"),
        ({"entities": "box bag"}, r"entities='box bag'; expected a list of words"),
        ({"entities": ["box", "big bag"]}, r"entities holds \['big bag'\]; expected single words"),
        ({"attributes": ["pen."]}, r"attributes holds \['pen.'\]; expected single words"),
        ({"entities": ["box", "key"]}, r"\['key'\] are both entities and attributes"),
        ({"n_pairs": 3, "entities": ["box", "bag"]}, r"n_pairs=3 needs 3 distinct entities per prompt, but only 2 \(box, bag\); lower n_pairs to 2"),
        ({"tokenizer": object()}, r"tokenizer=<object object at .*> cannot encode text; expected a Hugging Face tokenizer"),
    ],
)  # fmt: skip
def test_bad_requests_are_refused(kw, match):
    with pytest.raises(RopeBehaviorError, match=match):
        binding_prompts(**{"n": 4, **kw})


def test_a_vocabulary_too_small_is_refused_naming_the_options(lm):
    with pytest.raises(
        RopeBehaviorError,
        match=r"n_pairs=40 needs 40 distinct entities per prompt, but only \d+ of the 60 given are "
        r"single tokens of this tokenizer \(case, .*\); lower n_pairs to \d+, or pass more entities=",
    ):
        binding_prompts(4, n_pairs=40, tokenizer=lm)
    with pytest.raises(
        RopeBehaviorError, match=r"only 0 of the 3 given are single tokens.*; pass more attributes="
    ):
        binding_prompts(4, tokenizer=lm, attributes=["apple", "banana", "cherry"])


def test_models_without_a_tokenizer_and_bad_corruptions_are_refused(lm, bridge_factory):
    random_model = bridge_factory("llama_gqa")
    with pytest.raises(RopeBehaviorError, match=r"is a model without a tokenizer"):
        binding_prompts(4, tokenizer=random_model)
    with pytest.raises(RopeBehaviorError, match=r"model=\w+ has no tokenizer"):
        binding_patching_inputs(random_model, 4)
    with pytest.raises(
        RopeBehaviorError, match=r"corruption='both' is not one of \['query', 'swap'\]"
    ):
        binding_patching_inputs(lm, 4, corruption="both")  # type: ignore[arg-type]
    with pytest.raises(RopeBehaviorError, match=r"corruption='x' is not one of"):
        binding_prompts(2).corrupted("x")  # type: ignore[arg-type]
    with pytest.raises(
        RopeBehaviorError,
        match=r"are \d+ tokens, longer than the model's context n_ctx=128; lower n_pairs",
    ):
        binding_patching_inputs(lm, 2, n_pairs=16)
    assert hook_count(lm) == 0


# -- patching and analysis ----------------------------------------------------------------


@pytest.mark.parametrize("corruption", ["query", "swap"])
def test_patching_pairs_have_one_length_and_differ_where_the_binding_does(lm, corruption):
    clean, corrupted, metric = binding_patching_inputs(lm, 6, seed=1, corruption=corruption)
    assert clean.shape == corrupted.shape
    assert clean.shape[0] == 6
    differ = (clean != corrupted).sum(-1)
    assert differ.tolist() == [1 if corruption == "query" else 2] * 6
    prompts = binding_prompts(6, seed=1, tokenizer=lm)
    assert prompts.answer_ids is not None
    assert torch.equal(metric.answer, prompts.answer_ids)
    assert metric.position == -1
    assert prompts.answers[0] in metric.name


def test_the_metric_runs_in_a_patching_sweep(lm):
    clean, corrupted, metric = binding_patching_inputs(lm, 4, seed=0)
    result = rb.frequency_patching_sweep(
        lm, clean, corrupted, metric, layers=[0], heads=[0], bands=2
    )
    assert tuple(result.values.shape) == (1, 1, 2)
    assert torch.isfinite(result.values).all()
    with torch.no_grad():
        assert result.clean_baseline == pytest.approx(float(metric(lm(clean))), abs=1e-4)
    assert math.isfinite(result.corrupted_baseline)
    assert "logit_diff" in result.metric
    assert hook_count(lm) == 0


def test_analyze_runs_on_binding_texts(lm):
    prompts = binding_prompts(6, seed=0, tokenizer=lm)
    tokens, mask = rb.tokenize_prompts(lm, prompts.texts)
    assert bool(mask.all())  # one length: no padding
    assert rb.scorable_prompts(lm, tokens, mask).all()
    analysis = rb.analyze(lm, tokens, attention_mask=mask, per_pair=False, batch_size=6)
    assert analysis.n_prompts == 6
    assert hook_count(lm) == 0
