"""Metric names a reader understands: tokens as text (or ids), never a hash; the name is
not what a resumable sweep identifies its metric by."""

import re

import pytest
import torch

from rope_behavior import metrics
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.patching.sweep import frequency_patching_sweep
from rope_behavior.runtime.fingerprint import metric_identity
from rope_behavior.viz import plots

HASH = re.compile(r"[0-9a-f]{12}")


@pytest.fixture(scope="module")
def tokenizer():
    """The shipped LM's own tokenizer (read from its folder: no model is built)."""
    import transformers

    from rope_behavior.data.shipped_lm import shipped_lm_path

    return transformers.AutoTokenizer.from_pretrained(shipped_lm_path())


class _Holder:
    """Anything that holds its tokenizer as ``.tokenizer`` (a HookedTransformer, a Bridge)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


def test_one_answer_reads_as_its_token(tokenizer):
    answer, wrong = tokenizer.encode(" A")[-1], tokenizer.encode("#")[-1]
    ld = metrics.logit_diff(answer, wrong, tokenizer=tokenizer)
    assert ld.name == "logit_diff(position=-1, answer=' A', wrong='#')"
    # a model holding the tokenizer names the same tokens
    assert metrics.logit_diff(answer, wrong, tokenizer=_Holder(tokenizer)).name == ld.name
    acc = metrics.accuracy(answer, position=-2, tokenizer=tokenizer)
    assert acc.name == "accuracy(position=-2, answer=' A')"


def test_one_answer_per_prompt_reads_as_a_count_and_the_first_tokens(tokenizer):
    ids = torch.tensor([tokenizer.encode(t)[-1] for t in (" A", "#", "(", ")")] * 16)
    ld = metrics.logit_diff(ids, ids.roll(1), tokenizer=tokenizer)
    assert ld.name == (
        "logit_diff(position=-1, answer=64 tokens (' A', '#', ...), "
        "wrong=64 tokens (')', ' A', ...))"
    )
    two = metrics.accuracy(ids[:2], tokenizer=tokenizer)
    assert two.name == "accuracy(position=-1, answer=2 tokens (' A', '#'))"


def test_without_a_tokenizer_the_name_shows_ids():
    assert metrics.logit_diff(5, 7).name == "logit_diff(position=-1, answer=id 5, wrong=id 7)"
    ld = metrics.logit_diff(torch.tensor([5, 9, 4]), 7, position=-3)
    assert ld.name == "logit_diff(position=-3, answer=3 ids (5, 9, ...), wrong=id 7)"
    assert (
        metrics.accuracy(torch.tensor([5, 9])).name == "accuracy(position=-1, answer=2 ids (5, 9))"
    )


def test_no_name_holds_a_hash(tokenizer):
    tokens = torch.randint(3, 2048, (4, 9), generator=torch.Generator().manual_seed(0))
    logits = torch.randn(4, 9, 2048, generator=torch.Generator().manual_seed(1))
    names = {
        "logit_diff": metrics.logit_diff(tokens[:, -1], tokens[:, 0]).name,
        "logit_diff_text": metrics.logit_diff(tokens[:, -1], 7, tokenizer=tokenizer).name,
        "accuracy": metrics.accuracy(tokens[:, -1]).name,
        "loss": metrics.loss(tokens).name,
        "kl_to_clean": metrics.kl_to_clean(logits).name,
    }
    assert names["loss"] == "loss(tokens=4 x 9)"
    assert names["kl_to_clean"] == "kl_to_clean(position=-1, clean logits 4 x 9 x 2048)"
    for what, name in names.items():
        assert not HASH.search(name), (what, name)


def test_the_tokens_decode_as_the_tokenizer_says(tokenizer):
    ids = torch.tensor(tokenizer.encode("    def f(self):\n        return"))
    ld = metrics.logit_diff(ids[-1], ids[-2], tokenizer=tokenizer)
    want = (
        f"answer={tokenizer.decode([int(ids[-1])])!r}, wrong={tokenizer.decode([int(ids[-2])])!r}"
    )
    assert want in ld.name


@pytest.mark.parametrize("bad", [3, "gpt2", object()])
def test_a_tokenizer_that_cannot_decode_is_refused_naming_it(bad):
    with pytest.raises(
        RopeBehaviorError,
        match=r"tokenizer=.* cannot decode token ids; expected a tokenizer with decode\(\)",
    ):
        metrics.logit_diff(1, 2, tokenizer=bad)


def test_a_tokenizer_that_fails_on_the_ids_is_named_with_them():
    class Fails:
        def decode(self, ids):
            raise IndexError("id out of range")

    with pytest.raises(
        RopeBehaviorError,
        match=r"accuracy answer: the tokenizer cannot decode the ids \[99999\] \(id out of range\)",
    ):
        metrics.accuracy(99999, tokenizer=Fails())


def test_the_sweep_result_and_its_colour_bar_carry_the_name(bridge_factory, gen, tokenizer):
    model = bridge_factory("llama_gqa")
    clean = torch.randint(3, 40, (2, 8), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 2:5] = torch.randint(3, 40, (2, 3), generator=gen)
    ld = metrics.logit_diff(torch.tensor([5, 9]), torch.tensor([7, 11]), tokenizer=tokenizer)
    result = frequency_patching_sweep(model, clean, corrupted, ld, layers=[0], heads=[0], bands=2)
    assert result.metric == ld.name
    frame = result.to_frame()
    assert frame.attrs["metric"] == ld.name
    fig = plots.sweep_heatmap(frame, value="value")
    titles = [t.colorbar.title.text for t in fig.data if t.colorbar and t.colorbar.title.text]
    assert titles
    assert all(ld.name in t and not HASH.search(t) for t in titles)


def test_metrics_with_one_name_are_still_told_apart_when_resuming(bridge_factory, gen, tmp_path):
    """The name lists only the first answers; the store identifies the metric by content."""
    a = metrics.logit_diff(torch.tensor([5, 9, 4]), 7)
    b = metrics.logit_diff(torch.tensor([5, 9, 6]), 7)
    assert a.name == b.name
    assert metric_identity(a).digest != metric_identity(b).digest
    model = bridge_factory("llama_gqa")
    clean = torch.randint(3, 40, (3, 8), generator=gen)
    corrupted = clean.flip(1)
    kw = dict(layers=[0], heads=[0], bands=1, out_dir=tmp_path / "store")
    frequency_patching_sweep(model, clean, corrupted, a, **kw)
    with pytest.raises(RopeBehaviorError, match="holds a different sweep"):
        frequency_patching_sweep(model, clean, corrupted, b, **kw)
    # the first metric again resumes its own store
    again = frequency_patching_sweep(model, clean, corrupted, a, **kw)
    assert again.metric == a.name
