"""Each head's class from its scores' intervals (docs/method.md §4, "Pure heads"):
synthetic frames for every class and edge case, and the shipped LM, whose classes must
agree with the extremes ``extreme_heads`` picks from the same frame."""

import math

import pandas as pd
import pytest

import rope_behavior as rb
from rope_behavior.scoring.head_classes import (
    PURE_SIDE,
    PURITY_CLASSES,
    UNIFORM_CORNER,
    extreme_heads,
    head_purity,
    purity_counts,
)

NAN = math.nan


def _frame(rows, fraction=True):
    """Heads-frame rows ``(s_pos, lo, hi, s_sym, lo, hi, identifiable_fraction)``."""
    cols = ["s_pos_mean", "s_pos_lo", "s_pos_hi", "s_sym_mean", "s_sym_lo", "s_sym_hi"]
    df = pd.DataFrame([r[:6] for r in rows], columns=cols)
    df.insert(0, "layer", 0)
    df.insert(1, "head", range(len(rows)))
    if fraction:
        df["identifiable_fraction"] = [r[6] for r in rows]
    return df


def _classify(df, **kw):
    kw.setdefault("identifiable", "identifiable_fraction")
    return list(head_purity(df, s_pos="s_pos_mean", s_sym="s_sym_mean", **kw))


CASES = [
    ((0.95, 0.90, 0.99, 0.10, 0.05, 0.20, 1.0), "positional"),
    ((0.10, 0.05, 0.20, 0.95, 0.90, 0.99, 1.0), "symbolic"),
    ((0.97, 0.95, 0.99, 0.96, 0.93, 0.98, 1.0), "uniform"),
    # exactly on the corner: lo >= UNIFORM_CORNER counts as in it
    ((0.95, UNIFORM_CORNER, 0.99, 0.95, UNIFORM_CORNER, 0.99, 1.0), "uniform"),
    # both high short of the corner: leans positional, tight intervals, still mixed
    ((0.95, 0.94, 0.96, 0.85, 0.84, 0.86, 1.0), "mixed"),
    # one interval reaches into the corner, the other not: neither uniform nor pure
    ((0.95, 0.92, 0.98, 0.90, 0.85, 0.95, 1.0), "mixed"),
    # the s_SYM interval straddles 1/2
    ((0.90, 0.80, 0.99, 0.40, 0.30, 0.55, 1.0), "mixed"),
    # on 1/2 exactly: not above it
    ((0.90, PURE_SIDE, 0.99, 0.20, 0.10, 0.30, 1.0), "mixed"),
    ((0.20, 0.10, 0.30, 0.10, 0.05, 0.20, 1.0), "mixed"),  # both low
    # a percentile interval that misses its mean is widened to hold it
    ((0.45, 0.55, 0.70, 0.10, 0.05, 0.20, 1.0), "mixed"),
    ((0.95, 0.90, 0.99, 0.10, 0.05, 0.20, 0.4), "unidentifiable"),
    ((0.97, 0.95, 0.99, 0.96, 0.93, 0.98, 0.0), "unidentifiable"),  # before uniform
    ((0.95, NAN, NAN, 0.10, NAN, NAN, 1.0), "unidentifiable"),  # one prompt: no interval
    ((0.95, 0.90, 0.99, 0.10, 0.05, NAN, 1.0), "unidentifiable"),
    ((NAN, NAN, NAN, NAN, NAN, NAN, 0.0), "unidentifiable"),  # no finite row
    ((0.95, 0.90, 0.99, 0.10, 0.05, 0.20, NAN), "unidentifiable"),
]


@pytest.mark.parametrize(("row", "expected"), CASES)
def test_each_class_from_the_intervals(row, expected):
    assert _classify(_frame([row])) == [expected]


def test_one_frame_keeps_its_index_and_order():
    df = _frame([row for row, _ in CASES]).set_index(pd.Index(range(100, 100 + len(CASES))))
    got = head_purity(df, s_pos="s_pos_mean", s_sym="s_sym_mean",
                      identifiable="identifiable_fraction")  # fmt: skip
    assert got.name == "purity"
    assert list(got.index) == list(df.index)
    assert list(got) == [expected for _, expected in CASES]
    assert set(got) <= set(PURITY_CLASSES)


def test_identifiable_column_bool_none_or_missing():
    rows = [(0.95, 0.90, 0.99, 0.10, 0.05, 0.20, 0.0)]
    df = _frame(rows)
    assert _classify(df) == ["unidentifiable"]
    assert _classify(df, identifiable=None) == ["positional"]  # every head counts
    assert _classify(_frame(rows, fraction=False)) == ["positional"]
    flags = df.drop(columns="identifiable_fraction").assign(identifiable=[False])
    assert _classify(flags, identifiable="identifiable") == ["unidentifiable"]
    assert _classify(flags.assign(identifiable=[True]), identifiable="identifiable") == [
        "positional"
    ]


def test_plane_frame_names():
    """A plane frame (``s_pos``, ``s_pos_lo``, ``identifiable``) needs no column names."""
    df = pd.DataFrame(
        {
            "layer": [0, 0],
            "head": [0, 1],
            "s_pos": [0.1, 0.9],
            "s_pos_lo": [0.05, 0.8],
            "s_pos_hi": [0.2, 0.95],
            "s_sym": [0.9, 0.95],
            "s_sym_lo": [0.8, 0.9],
            "s_sym_hi": [0.95, 0.99],
            "identifiable": [True, True],
        }
    )
    assert list(head_purity(df)) == ["symbolic", "mixed"]


def test_missing_intervals_are_refused():
    df = _frame([CASES[0][0]]).drop(columns=["s_sym_lo", "s_sym_hi"])
    with pytest.raises(rb.RopeBehaviorError, match=r"needs columns \['s_sym_lo', 's_sym_hi'\]"):
        _classify(df)
    with pytest.raises(rb.RopeBehaviorError, match="expected a ScoreSummary"):
        head_purity(pd.DataFrame({"s_pos": [0.5], "s_sym": [0.5]}))


def test_purity_counts_keeps_every_class():
    counts = purity_counts(["mixed", "positional", "mixed"])
    assert list(counts) == list(PURITY_CLASSES)
    assert counts == {"positional": 1, "symbolic": 0, "mixed": 2, "uniform": 0,
                      "unidentifiable": 0}  # fmt: skip
    with pytest.raises(rb.RopeBehaviorError, match=r"\['pure'\] are not head classes"):
        purity_counts(["pure"])


# -- the shipped language model ------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_analysis():
    model = rb.load_shipped_lm()
    tokens, mask = rb.tokenize_prompts(model, rb.heldout_texts(16), context=128)
    return rb.analyze(model, tokens, attention_mask=mask, per_pair=False, seed=0)


def test_shipped_lm_classes_agree_with_the_extremes(lm_analysis):
    a = lm_analysis
    frame = a.heads_frame()
    assert list(frame["purity"]) == list(head_purity(a.summary))  # the summary, directly
    names = dict(s_pos="s_pos_mean", s_sym="s_sym_mean", identifiable="identifiable_fraction")
    every_pos, every_sym = extreme_heads(frame, k=len(frame), **names)
    candidates = {"positional": set(every_pos.index), "symbolic": set(every_sym.index)}
    for kind in ("positional", "symbolic"):
        pure = set(frame.index[frame["purity"] == kind])
        # a pure head is among extreme_heads' candidates, on its side of 0
        assert pure <= candidates[kind], (kind, frame.loc[sorted(pure), ["behavior", "purity"]])
    pos, sym = a.extremes()
    for kind, part in (("positional", pos), ("symbolic", sym)):
        # an extreme head is pure on its own side or mixed: never the other pure class,
        # uniform or unidentifiable (those are no candidates)
        assert set(frame.loc[part.index, "purity"]) <= {kind, "mixed"}, kind
    uniform = frame[frame["purity"] == "uniform"]
    assert (
        (uniform["s_pos_mean"] >= UNIFORM_CORNER) & (uniform["s_sym_mean"] >= UNIFORM_CORNER)
    ).all()
    summary = a.summary_dict()
    assert summary["head_classes"] == purity_counts(frame["purity"])
    assert sum(summary["head_classes"].values()) == a.spec.n_layers * a.spec.n_heads
    card = a._repr_html_()  # the notebook card counts the classes and names the extremes'
    assert f"{summary['head_classes']['positional']} pure positional, " in card
    assert ">class</th>" in card
    assert [h["purity"] for h in summary["most_positional"]] == list(frame.loc[pos.index, "purity"])
