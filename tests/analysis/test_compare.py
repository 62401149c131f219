"""compare_edits: exact zero shifts for edits that change nothing, shifts equal to two
analyses differenced by hand, losses recomputed, edit names, bad input, no leaked hooks."""

import pytest
import torch

import rope_behavior as rb
from rope_behavior.analysis.compare import compare_edits
from rope_behavior.analysis.edit_names import NoPEBelowBand, edit_label, parse_edit
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.viz.compare_report import compare_report, edit_shift_figure
from tests.models import hook_count, make_bridge


@pytest.fixture(scope="module")
def model():
    return make_bridge("llama_mha", seed=3)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(3, 97, (6, 40), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def result(model, tokens):
    return compare_edits(model, tokens, ["prope:0", "linear:1", rb.NoPEBelow(2)], n_boot=200)


def test_edits_that_change_nothing_shift_nothing_exactly(model, result):
    assert result.edits == ("prope:0", "linear:1", "nope-below:2")
    for e in (0, 1):  # no pair changes: no hook, the same forward, the same numbers
        for t in (result.d_pos, result.d_pos_lo, result.d_pos_hi, result.d_sym, result.d_centroid):
            assert torch.equal(t[e], torch.zeros_like(t[e]))
        assert result.loss[e + 1] == result.loss[0]
        assert result.accuracy[e + 1] == result.accuracy[0]
    assert hook_count(model) == 0


def test_shifts_are_two_analyses_differenced(model, tokens, result):
    base = rb.analyze(model, tokens, per_pair=False, seed=0)
    with rb.intervened(model, [rb.NoPEBelow(2)]):
        edited = rb.analyze(model, tokens, per_pair=False, seed=0)
    want = (edited.scores.s_pos - base.scores.s_pos).double().nanmean(0)
    torch.testing.assert_close(result.d_pos[2], want, rtol=0, atol=1e-12)
    assert float(result.d_pos[2].abs().max()) > 1e-3  # NoPE on 6 of 8 pairs moves attention
    ok = ~torch.isnan(result.d_pos[2])
    assert bool((result.d_pos_lo[2][ok] <= result.d_pos[2][ok] + 1e-12).all())
    assert bool((result.d_pos[2][ok] <= result.d_pos_hi[2][ok] + 1e-12).all())
    cent = (
        edited.usage.head_frame()["centroid_log_omega"]
        - base.usage.head_frame()["centroid_log_omega"]
    )
    torch.testing.assert_close(result.d_centroid[2].flatten(), torch.tensor(cent.to_numpy()))
    assert hook_count(model) == 0


def test_loss_and_accuracy_recomputed(model, tokens, result):
    with torch.no_grad():
        logits = rb.run_with_interventions(model, tokens, [rb.NoPEBelow(2)])
    pred, target = logits[:, :-1].double().flatten(0, 1), tokens[:, 1:].flatten()
    assert result.loss[3] == pytest.approx(float(torch.nn.functional.cross_entropy(pred, target)))
    assert result.accuracy[3] == pytest.approx(float((pred.argmax(-1) == target).double().mean()))
    assert result.loss[3] != result.loss[0]


def test_task_metric_and_frames(model, tokens):
    metric = rb.metrics.logit_diff(answer=torch.full((6,), 5), wrong=torch.full((6,), 7))
    got = compare_edits(model, tokens, ["nope-below:0"], task_metric=(tokens, metric), n_boot=50)
    with torch.no_grad():
        want = float(metric(rb.run_with_interventions(model, tokens, [rb.NoPEBelow(0)])))
    assert got.metric[1] == pytest.approx(want)
    frame = got.to_frame()
    assert len(frame) == 2 * 4
    assert set(frame["edit"]) == {"nope-below:0"}
    edits = got.edits_frame()
    assert list(edits["edit"]) == ["none", "nope-below:0"]
    assert edits["d_loss"][1] == pytest.approx(got.loss[1] - got.loss[0])
    assert max(len(line) for line in repr(got).splitlines()) <= 80
    card = got._repr_html_()  # the notebook card: the edits' table and a heatmap per head
    assert "EditComparison" in card
    assert "nope-below:0" in card
    assert "<svg" in card
    assert "metric" in card  # a task metric was given: its columns are shown
    fig = edit_shift_figure(got)
    assert len(fig.data) == 2  # one edit: its s_POS and s_SYM shifts, one colour, one legend entry
    assert fig.data[0].marker.color == fig.data[1].marker.color
    assert [t.showlegend for t in fig.data] == [True, False]
    assert list(fig.data[1].y) == list(got.d_sym[0].flatten().tolist())
    assert fig.layout.yaxis.title.text == "edited - unedited"
    assert fig.layout.xaxis2.ticktext[0].startswith("L0H0<br>")
    assert hook_count(model) == 0


def test_report_is_written(tmp_path, result):
    path = compare_report(result, tmp_path / "r.html")
    text = path.read_text()
    assert 'id="edits"' in text
    assert "nope-below:2" in text


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("prope:0.25", rb.PRoPE(0.25)),
        ("nope-below:4", rb.NoPEBelow(4)),
        ("linear:2", rb.RopeScaling("linear", 2)),
        ("NTK:2", rb.RopeScaling("ntk", 2)),
        ("yarn:4", rb.RopeScaling("yarn", 4, original_context=64)),
        ("nope-below-band", NoPEBelowBand()),
    ],
)
def test_names_parse_and_print_back(text, want):
    got = parse_edit(text, original_context=64)
    assert got == want
    assert edit_label(got) == text.lower()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("bogus:1", r"edit 'bogus:1' is not one of the forms: prope:<p>, nope-below:<pair>"),
        ("prope", r"is not one of the forms"),
        ("prope:x", r"'x' is not a number; prope takes one"),
        ("prope:2", r"edit 'prope:2': PRoPE: p=2.0; expected a number in \[0, 1\]"),
        ("nope-below:-1", r"'-1' is not a pair index"),
        ("linear:0", r"edit 'linear:0'"),
        (3, r"edit 3 \(int\); expected a name"),
    ],
)
def test_bad_names_refused(text, match):
    with pytest.raises(RopeBehaviorError, match=match):
        parse_edit(text, original_context=64)


def test_bad_input_refused_without_leaks(model, tokens):
    with pytest.raises(RopeBehaviorError, match=r"is not one of the forms"):
        compare_edits(model, tokens, ["prope:0.25", "rope:2"])
    with pytest.raises(RopeBehaviorError, match=r"given twice"):
        compare_edits(model, tokens, ["prope:0.25", rb.PRoPE(0.25)])
    with pytest.raises(RopeBehaviorError, match=r"expected a list of edits"):
        compare_edits(model, tokens, "prope:0.25")
    with pytest.raises(RopeBehaviorError, match=r"at least one edit"):
        compare_edits(model, tokens, [])
    with pytest.raises(RopeBehaviorError, match=r"task_metric=int"):
        compare_edits(model, tokens, ["prope:0.25"], task_metric=3)
    with pytest.raises(RopeBehaviorError, match=r"layer 9"):
        compare_edits(model, tokens, [rb.PRoPE(0.5, layers=9)], n_boot=10)
    assert hook_count(model) == 0
