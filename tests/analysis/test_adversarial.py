"""Attacks on the public surfaces (analyze, score_corpus, score_heads, capture,
frequency_usage, pair_logits, the interventions, the sweep): bad input is refused with the
library's error naming the value, interrupted runs leave no hook and rerun to the same
numbers, and padding on either side scores each prompt as if alone.

Each row of ``BAD_INPUT`` is one attack; the ones marked ``# found`` raised a bare
``AttributeError`` / ``TypeError``, or returned a silent answer, before they were fixed.
"""

import os

import pandas as pd
import pytest
import torch

import rope_behavior as rb
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.interventions.values import (
    AngleOverride,
    FrequencyAblation,
    FrequencyPatch,
    TwoAngles,
)
from rope_behavior.scoring.head_classes import extreme_heads
from tests.models import hook_count, make_bridge

T = torch.randint(3, 97, (2, 20), generator=torch.Generator().manual_seed(0))
ONES = torch.ones(2, 20, dtype=torch.long)


@pytest.fixture(scope="module")
def model():
    return make_bridge("llama_gqa")


def _cap(m, layers=None):
    return rb.capture(m, T, layers=layers)


BAD_INPUT = [
    # tokens
    (
        "float tokens",
        lambda m: rb.capture(m, T.float()),
        r"integer token ids; got dtype torch.float32",
    ),
    (
        "bool tokens",
        lambda m: rb.score_heads(m, T > 50),
        r"integer token ids; got dtype torch.bool",
    ),
    ("1-D tokens", lambda m: rb.capture(m, T[0]), r"add a batch axis: tokens\[None\]"),
    ("3-D tokens", lambda m: rb.capture(m, T[None]), r"got rank 3 shape \(1, 2, 20\)"),
    ("no prompt", lambda m: rb.score_heads(m, T[:0]), r"shape \(0, 20\) is too short"),
    ("no position", lambda m: rb.capture(m, T[:, :0]), r"shape \(2, 0\) is too short"),
    (
        "negative id",
        lambda m: rb.capture(m, T - 10),
        r"ids in \[-7, 86\]; expected ids in \[0, 96\]",
    ),
    ("id past the vocabulary", lambda m: rb.analyze(m, T + 100), r"expected ids in \[0, 96\]"),
    (
        "longer than n_ctx",
        lambda m: rb.capture(m, torch.randint(3, 97, (1, 65))),
        r"65 positions .* n_ctx=64",
    ),
    ("tokens as a list", lambda m: rb.score_corpus(m, T.tolist()), r"tokens must be a tensor"),
    # masks
    (
        "mask of NaN",
        lambda m: rb.capture(m, T, attention_mask=torch.full((2, 20), float("nan"))),
        r"only 0 \(padding\) and 1",
    ),
    (
        "mask of 2",
        lambda m: rb.score_heads(m, T, attention_mask=2 * ONES),
        r"only 0 \(padding\) and 1",
    ),
    (
        "mask shape",
        lambda m: rb.capture(m, T, attention_mask=ONES[:, :19]),
        r"shaped like tokens \(2, 20\); got \(2, 19\)",
    ),
    (
        "mask all-zero row",
        lambda m: rb.analyze(m, T, attention_mask=ONES * torch.tensor([[1], [0]])),
        r"1 row\(s\) with no tokens \(all padding\): prompts \[1\]",
    ),
    ("mask as a list", lambda m: rb.capture(m, T, attention_mask=ONES.tolist()), r"got list"),
    # layers, heads, pairs
    ("negative layer", lambda m: rb.capture(m, T, layers=-1), r"layer -1 is out of range"),
    (
        "layer past the model",
        lambda m: rb.score_heads(m, T, layers=[2]),
        r"layer 2 is out of range: expected 0 <= layer <= 1",
    ),
    ("bool layer", lambda m: rb.capture(m, T, layers=True), r"layer=True \(bool\)"),
    ("no layer", lambda m: rb.capture(m, T, layers=[]), r"layer is empty"),
    ("string layer", lambda m: rb.frequency_usage(_cap(m), layers="0"), r"layer='0' \(str\)"),
    (
        "float heads",
        lambda m: rb.pair_logits(_cap(m), 0, heads=1.0),
        r"head=1.0 \(float\); expected an int in \[0, 3\]",
    ),  # found
    ("negative head", lambda m: rb.pair_logits(_cap(m), 0, heads=-1), r"head -1 is out of range"),
    (
        "float layer",
        lambda m: rb.pair_logits(_cap(m), 1.0),
        r"layer must be an int in \[0, 1\]; got 1.0",
    ),
    (
        "layer not captured",
        lambda m: rb.frequency_usage(_cap(m, [0]), layers=[1]),
        r"layer 1 was not captured",
    ),
    (
        "tokens for a capture",
        lambda m: rb.frequency_usage(T),
        r"frequency_usage takes what capture\(model, tokens\) returns; got Tensor",
    ),  # found
    (
        "tokens for pair_logits",
        lambda m: rb.pair_logits(T, 0),
        r"pair_logits takes what capture",
    ),  # found
    (
        "callback not callable",
        lambda m: rb.stream_layers(m, T, None),
        r"on_layer=None is not callable",
    ),  # found
    # scoring settings
    ("no swap", lambda m: rb.score_heads(m, T, swaps=[]), r"swaps is empty"),
    (
        "negative block",
        lambda m: rb.score_heads(m, T, block_size=4, swaps=[(-1, 0)]),
        r"refers to block -1",
    ),
    (
        "negative excluded key",
        lambda m: rb.score_heads(m, T, block_size=4, exclude_keys=(-1,)),
        r"exclude_keys holds -1",
    ),
    (
        "negative query",
        lambda m: rb.score_heads(m, T, block_size=4, query_positions=-1),
        r"query position\(s\) -1 out of range",
    ),
    (
        "bool query",
        lambda m: rb.score_heads(m, T, block_size=4, query_positions=True),
        r"query_positions=True; options",
    ),
    (
        "repeated query",
        lambda m: rb.score_heads(m, T, block_size=4, query_positions=[19, 19]),
        r"lists position\(s\) \[19\] more than once",
    ),  # found
    (
        "short prompts",
        lambda m: rb.score_heads(m, T[:, :8], block_size=4),
        r"2 of 2 prompts too short to score: prompt 0 \(8 tokens, needs 9\)",
    ),  # found
    (
        "folder as an int",
        lambda m: rb.analyze(m, T, block_size=4, out_dir=3),
        r"out_dir=3 \(int\); expected a folder path",
    ),  # found
    (
        "progress as a str",
        lambda m: rb.score_corpus(m, T, progress="yes"),
        r"progress='yes'",
    ),  # found
    (
        "scores of other kinds",
        lambda m: rb.behavior_frequency_correspondence(T, T),
        r"expected \(HeadScores, FrequencyUsage\)",
    ),
    ("no usage to merge", lambda m: rb.FrequencyUsage.merge([]), r"needs at least one part"),
    (
        "negative k heads",
        lambda m: extreme_heads(pd.DataFrame({"s_pos": [0.9], "s_sym": [0.1]}), k=-1),
        r"k=-1; expected an int >= 0",
    ),  # found
    (
        "exclusion prompt -1",
        lambda m: rb.exclusion_check(m, T, prompt=-1),
        r"prompt=-1; expected an int in \[0, 1\]",
    ),
    ("exclusion head 9", lambda m: rb.exclusion_check(m, T, head=9), r"head 9 is out of range"),
    (
        "a model for a spec",
        lambda m: rb.band(m, "high"),
        r"band takes the model's RopeSpec first; got TransformerBridge",
    ),  # found
    (
        "a model for equal_bands",
        lambda m: rb.equal_bands(m, 2),
        r"equal_bands takes the model's RopeSpec",
    ),  # found
    ("an int for a spec", lambda m: rb.capture(m, T, spec=3), r"spec must be a RopeSpec"),
    # interventions
    (
        "bool layer value",
        lambda m: FrequencyAblation(layer=True),
        r"layer must be an int; got True",
    ),
    (
        "layer past the model",
        lambda m: rb.run_with_interventions(m, T, FrequencyAblation(layer=5)),
        r"layer 5 is out of range",
    ),
    ("negative head value", lambda m: FrequencyAblation(layer=0, heads=-1), r"heads holds -1"),
    (
        "pair past the model",
        lambda m: rb.run_with_interventions(m, T, FrequencyAblation(layer=0, pairs=[99])),
        r"pair 99 is out of range",
    ),
    (
        "mean without a fit",
        lambda m: rb.run_with_interventions(m, T, FrequencyAblation(layer=0, mode="mean")),
        r"needs reference statistics",
    ),
    (
        "negative resample seed",
        lambda m: FrequencyAblation(layer=0, mode="resample").fit(m, T, seed=-1),
        r"seed=-1; expected a non-negative int",
    ),  # found
    (
        "float resample seed",
        lambda m: FrequencyAblation(layer=0, mode="resample").fit(m, T, seed=1.5),
        r"seed=1.5",
    ),  # found
    (
        "int per_position",
        lambda m: FrequencyAblation(layer=0, mode="mean").fit(m, T, per_position=1),
        r"per_position=1 \(int\)",
    ),
    (
        "NaN angle",
        lambda m: AngleOverride(layer=0, omega=float("nan")),
        r"omega=nan: expected a finite real angle",
    ),
    (
        "inf angle tensor",
        lambda m: AngleOverride(layer=0, omega=torch.tensor([float("inf")])),
        r"omega\[0\]=inf",
    ),
    (
        "2-D angles",
        lambda m: AngleOverride(layer=0, omega=torch.zeros(2, 2)),
        r"0-D or 1-D \[pair\]",
    ),
    (
        "3 angles for 8 pairs",
        lambda m: rb.run_with_interventions(m, T, AngleOverride(layer=0, omega=[0.1, 0.2, 0.3])),
        r"omega has 3 angles",
    ),
    ("angle as a str", lambda m: AngleOverride(layer=0, omega="0.1"), r"omega='0.1'"),
    ("bool split", lambda m: TwoAngles(first=0.0, second=0.1, split=True), r"split=True \(bool\)"),
    (
        "split past the pairs",
        lambda m: rb.run_with_interventions(
            m, T, AngleOverride(layer=0, omega=TwoAngles(first=0.0, second=0.1, split=99))
        ),
        r"split=99; expected an int in \[0, 8\]",
    ),
    (
        "repeated pairs with angles",
        lambda m: AngleOverride(layer=0, omega=[0.1, 0.1], pairs=[2, 2]),
        r"lists pair\(s\) \[2\] more than once",
    ),  # found
    ("patch without source", lambda m: FrequencyPatch(layer=0), r"needs source="),
    (
        "float patch source",
        lambda m: rb.run_with_interventions(m, T, FrequencyPatch(layer=0, source=T.float())),
        r"must hold token ids",
    ),
    (
        "short patch source",
        lambda m: rb.run_with_interventions(m, T, FrequencyPatch(layer=0, source=T[:, :5])),
        r"covers 5 positions but the run has 20",
    ),
    (
        "patch source of batch 3",
        lambda m: rb.run_with_interventions(
            m, T, FrequencyPatch(layer=0, source=torch.cat([T, T[:1]]))
        ),
        r"batch 3 but the run has batch 2",
    ),
    (
        "a string of interventions",
        lambda m: rb.run_with_interventions(m, T, "abl"),
        r"interventions='abl'",
    ),
    (
        "a model for compile_hooks",
        lambda m: rb.compile_hooks(m, [FrequencyAblation(layer=0)]),
        r"compile_hooks takes the model's RopeSpec first",
    ),  # found
    # the sweep
    (
        "0 bands",
        lambda m: rb.frequency_patching_sweep(m, T, T, lambda x: x.sum(), bands=0),
        r"bands=0 equal bands",
    ),
    (
        "no band",
        lambda m: rb.frequency_patching_sweep(m, T, T, lambda x: x.sum(), bands=[]),
        r"bands is empty",
    ),
    (
        "negative sweep head",
        lambda m: rb.frequency_patching_sweep(m, T, T, lambda x: x.sum(), bands=2, heads=-1),
        r"kv_head -1 is out of range",
    ),
    (
        "runs of two shapes",
        lambda m: rb.frequency_patching_sweep(m, T, T[:, :5], lambda x: x.sum(), bands=2),
        r"corrupted_tokens has \(2, 5\)",
    ),
    (
        "NaN metric",
        lambda m: rb.frequency_patching_sweep(m, T, T, lambda x: x.sum() * float("nan"), bands=2),
        r"returned nan for the clean run",
    ),
    (
        "non-scalar metric",
        lambda m: rb.frequency_patching_sweep(m, T, T, lambda x: x, bands=2),
        r"ONE number",
    ),
    (
        "float list band",
        lambda m: rb.frequency_patching_sweep(m, T, T, lambda x: x.sum(), bands=[[0.5]]),
        r"bands\[0\]: pairs=\[0.5\]",
    ),
    (
        "folder as a float",
        lambda m: rb.frequency_patching_sweep(m, T, T, lambda x: x.sum(), bands=2, out_dir=1.5),
        r"out_dir=1.5 \(float\)",
    ),  # found
]


@pytest.mark.parametrize(
    ("call", "match"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT]
)
def test_bad_input_is_refused_naming_the_value(model, call, match):
    with pytest.raises(RopeBehaviorError, match=match):
        call(model)
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("uint8 tokens", lambda m: rb.capture(m, T.to(torch.uint8))),
        ("int32 tokens", lambda m: rb.score_heads(m, T.int(), block_size=4)),
        ("strided tokens", lambda m: rb.score_heads(m, T.repeat(1, 2)[:, ::2], block_size=4)),
        ("float 0/1 mask", lambda m: rb.capture(m, T, attention_mask=ONES.float())),
        ("bool mask", lambda m: rb.capture(m, T, attention_mask=ONES.bool())),
        (
            "tensor query positions",
            lambda m: rb.score_heads(m, T, block_size=4, query_positions=torch.tensor([19, 12])),
        ),
        (
            "numpy ints",
            lambda m: rb.score_heads(
                m, T, block_size=__import__("numpy").int64(4), layers=__import__("numpy").int64(1)
            ),
        ),
    ],
)
def test_other_integer_and_mask_types_are_read(model, name, call):
    call(model)
    assert hook_count(model) == 0


def test_tensor_query_positions_equal_the_list(model):
    a = rb.score_heads(model, T, block_size=4, query_positions=torch.tensor([19, 12]))
    b = rb.score_heads(model, T, block_size=4, query_positions=[19, 12])
    assert a.query_positions == b.query_positions == (19, 12)
    torch.testing.assert_close(a.s_pos, b.s_pos, rtol=0, atol=0, equal_nan=True)


# -- non-finite models -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def nan_model():
    m = make_bridge("llama_gqa")
    with torch.no_grad():
        m.original_model.model.layers[0].self_attn.q_proj.weight[0, 0] = float("nan")
    return m


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda m: rb.pair_logits(rb.capture(m, T), 0),
            r"non-finite values \(NaN\) at layer 0 in the queries",
        ),
        (lambda m: rb.frequency_usage(rb.capture(m, T)), r"non-finite values \(NaN\) at layer 0"),
        (lambda m: rb.score_heads(m, T, block_size=4), r"NaN/inf attention logits at layer 0"),
        (
            lambda m: rb.score_heads(m, T, block_size=4, mode="tokens"),
            r"NaN/inf attention logits at layer 0",
        ),
        (
            lambda m: rb.analyze(m, T, block_size=4, per_pair=False),
            r"non-finite values \(NaN\) at layer 0",
        ),
    ],
)
def test_nan_weights_are_named_not_scored(nan_model, call, match):
    with pytest.raises(RopeBehaviorError, match=match):
        call(nan_model)
    assert hook_count(nan_model) == 0


# -- interruption and reruns -----------------------------------------------------------------


def _interrupt(x, hook=None):
    raise KeyboardInterrupt


INTERRUPTIBLE = [
    ("capture", lambda m: rb.capture(m, T)),
    ("score keys", lambda m: rb.score_heads(m, T, block_size=4)),
    ("score tokens", lambda m: rb.score_heads(m, T, block_size=4, mode="tokens")),
    (
        "interventions",
        lambda m: rb.run_with_interventions(
            m, T, [AngleOverride(layer=1, omega=0.0), FrequencyAblation(layer=0, pairs=[1])]
        ),
    ),
    ("analyze", lambda m: rb.analyze(m, T, block_size=4, per_pair=True, pair_prompts=1)),
    (
        "sweep",
        lambda m: rb.frequency_patching_sweep(
            m, T, T.flip(1), lambda x: x[:, -1, 3].mean(), bands=2
        ),
    ),
]


@pytest.mark.parametrize("site", ["blocks.0.attn.hook_rot_k", "blocks.1.attn.hook_rot_q"])
@pytest.mark.parametrize(("name", "call"), INTERRUPTIBLE, ids=[c[0] for c in INTERRUPTIBLE])
def test_keyboard_interrupt_mid_forward_leaves_no_hook(model, site, name, call):
    want = rb.score_heads(model, T, block_size=4)
    with model.hooks(fwd_hooks=[(site, _interrupt)]), pytest.raises(KeyboardInterrupt):
        call(model)
    assert hook_count(model) == 0
    again = rb.score_heads(model, T, block_size=4)  # and the next run is a clean one
    torch.testing.assert_close(again.s_pos, want.s_pos, rtol=0, atol=0, equal_nan=True)


def test_keyboard_interrupt_inside_intervened_removes_its_hooks(model):
    clean = model(T)

    def interrupted_block():
        with rb.intervened(model, [AngleOverride(layer=1, omega=0.0)]):
            model(T)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted_block()
    assert hook_count(model) == 0
    torch.testing.assert_close(model(T), clean, rtol=0, atol=0)


def test_analyze_interrupted_between_shards_then_rerun(model):
    def stop(done, total):
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rb.analyze(model, T, block_size=4, batch_size=1, progress=stop, per_pair=False)
    assert hook_count(model) == 0
    a = rb.analyze(model, T, block_size=4, batch_size=1, per_pair=False)
    b = rb.analyze(model, T, block_size=4, batch_size=1, per_pair=False)
    torch.testing.assert_close(a.scores.s_pos, b.scores.s_pos, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(
        a.summary.s_pos_hi, b.summary.s_pos_hi, rtol=0, atol=0, equal_nan=True
    )


def test_sweep_interrupted_in_its_metric_resumes_to_the_same_values(model, tmp_path):
    out = os.fspath(tmp_path / "sweep")
    calls = {"n": 0}

    def flaky(logits):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return logits[:, -1, 5].mean()

    kw = dict(bands=2, metric_label="logit5")
    with pytest.raises(KeyboardInterrupt):
        rb.frequency_patching_sweep(model, T, T.flip(1), flaky, out_dir=out, **kw)
    assert hook_count(model) == 0
    resumed = rb.frequency_patching_sweep(
        model, T, T.flip(1), lambda x: x[:, -1, 5].mean(), out_dir=out, **kw
    )
    fresh = rb.frequency_patching_sweep(model, T, T.flip(1), lambda x: x[:, -1, 5].mean(), bands=2)
    torch.testing.assert_close(resumed.values, fresh.values, rtol=0, atol=1e-6)


# -- padding on either side --------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_scores_each_prompt_as_if_alone(model, side):
    toks = torch.randint(3, 97, (4, 24), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(toks)
    for row, n in ((1, 6), (3, 3)):
        if side == "left":
            mask[row, :n] = 0
        else:
            mask[row, -n:] = 0
    toks = toks.masked_fill(mask == 0, 0)
    swaps = [(0, 1), (1, 3)]
    whole = rb.score_heads(model, toks, attention_mask=mask, block_size=4, swaps=swaps)
    for i in range(4):
        one = rb.score_heads(model, toks[i, mask[i].bool()][None], block_size=4, swaps=swaps)
        torch.testing.assert_close(whole.s_pos[i], one.s_pos[0], rtol=0, atol=1e-5, equal_nan=True)
        torch.testing.assert_close(whole.s_sym[i], one.s_sym[0], rtol=0, atol=1e-5, equal_nan=True)
    analysed = rb.analyze(
        model, toks, attention_mask=mask, block_size=4, batch_size=3, per_pair=False
    )
    assert analysed.n_tokens == int(mask.sum())
    assert hook_count(model) == 0


def test_a_mask_with_a_hole_decomposes_exactly(model):
    # a gap inside a prompt (not padding at an end): the model's own positions and mask
    hole = torch.ones_like(T)
    hole[1, 8:10] = 0
    cap = rb.capture(model, T, attention_mask=hole)
    pl = rb.pair_logits(cap, 1)
    _, cache = model.run_with_cache(
        T, attention_mask=hole, names_filter=["blocks.1.attn.hook_attn_scores"]
    )
    ref = cache["blocks.1.attn.hook_attn_scores"]
    m = pl.mask[:, None].expand_as(ref)
    torch.testing.assert_close(pl.scores()[m], ref[m], rtol=0, atol=1e-5)
    # every key the model attends is ours; only the hole's own query rows are left out
    model_mask = ref > torch.finfo(ref.dtype).min / 2
    assert bool((m <= model_mask).all())
    assert bool((m == model_mask)[:, :, hole[1] == 1].all())
