"""The HTML report: one file, plotly.js once, a div per figure, sections for the inputs."""

import dataclasses
import functools
import html
import os
import re

import pandas as pd
import pytest
import torch

import rope_behavior as rb
from rope_behavior import metrics, plots
from rope_behavior.tasks import load_pretrained
from rope_behavior.viz.html_report import figures_for, report
from tests.models import make_bridge

PLOTLY_BANNER = "* plotly.js"  # the full bundle or the cartesian one
MAX_BYTES = 6 * 1024 * 1024
SECTIONS = (
    "summary",
    "spectrum",
    "usage",
    "plane",
    "pair-scores",
    "correspondence",
    "sweeps",
    "tasks",
    "figures",
    "heads",
)


def _task_frames() -> dict:
    """Experiment-shaped frames: 3 tasks x 19 settings, like results.csv / by_position.csv."""
    settings = [f"pair:{p}" for p in range(16)] + ["all", "nope", "two_angle:0.1"]
    tasks = ["index", "retrieval", "partial_induction"]
    results = pd.DataFrame(
        [
            {"task": t, "setting": s, "seed": 0, "accuracy": (i * 7 + j * 3) % 10 / 10}
            for i, t in enumerate(tasks)
            for j, s in enumerate(settings)
        ]
    )
    by_position = pd.DataFrame(
        [
            {"task": t, "setting": s, "seed": 0, "answer_position": p, "accuracy": (p + j) % 5 / 4}
            for t in tasks
            for j, s in enumerate(settings)
            for p in range(16)
        ]
    )
    return {"results": results, "by_position": by_position}


@functools.lru_cache(maxsize=1)
def report_inputs() -> dict:
    """Every input of a report for a 4-layer x 8-head random Llama (GQA, 8 pairs), with
    two sweeps, experiment-shaped task frames and two extra planes (the shipped toy models;
    the Llama with layer 3 marked unidentifiable). Built once per session."""
    model = make_bridge(
        "llama_gqa",
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        hidden_size=128,
    )
    gen = torch.Generator().manual_seed(0)
    toks = torch.randint(3, 97, (4, 33), generator=gen)
    spec = rb.RopeSpec.from_model(model)
    usage = rb.frequency_usage(rb.capture(model, toks))
    scores = rb.score_heads(model, toks, block_size=4, n_swaps=8)
    pair_scores = rb.score_heads(model, toks, block_size=4, n_swaps=8, per_pair=True)
    corr = rb.behavior_frequency_correspondence(scores, usage, pair_scores=pair_scores)
    clean, corrupted, ld = toks[:2, :8], toks[2:, :8], metrics.logit_diff(5, 7)
    sweep = rb.frequency_patching_sweep(model, clean, corrupted, ld, bands=2)
    key_sweep = rb.frequency_patching_sweep(model, clean, corrupted, ld, bands=2, target="k")
    rows = []
    for i, name in enumerate(("index", "retrieval", "partial_induction")):
        toy, task, _ = load_pretrained(name)
        batch = task.sample(16, torch.Generator().manual_seed(1))
        s = rb.score_heads(toy, batch.tokens, block_size=1, n_swaps=None).mean(n_boot=100)
        frame = plots.plane_frame(s).assign(head=i)
        rows.append(frame)
    toy_plane = plots.positional_symbolic_plane(pd.concat(rows), color="layer")
    marked = plots.plane_frame(scores.mean(n_boot=100), usage)
    marked["identifiable"] = marked["layer"] < 3  # both traces (filled and hollow) and legend
    mixed_plane = plots.positional_symbolic_plane(marked, color="layer")
    return {
        "spec": spec,
        "usage": usage,
        "scores": scores,
        "pair_scores": pair_scores,
        "correspondence": corr,
        "sweeps": [sweep, ("Key patching (target='k'), titled", key_sweep)],
        "tasks": _task_frames(),
        "extra_figures": [
            ("Shipped toy models (head = index, retrieval, partial induction)", toy_plane),
            ("Layer 3 marked unidentifiable", mixed_plane),
        ],
    }


@pytest.fixture(scope="module")
def inputs() -> dict:
    return report_inputs()


def _sections(text: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', text)


def test_full_report_is_one_self_contained_file(inputs, tmp_path):
    out = report(tmp_path / "report.html", title="Llama <4x8> & co", notes=["a <note>"], **inputs)
    assert out == tmp_path / "report.html"
    text = out.read_text(encoding="utf-8")
    size = out.stat().st_size
    print(f"\nreport size for 4 layers x 8 heads: {size / 1e6:.2f} MB ({size} bytes)")
    assert size <= MAX_BYTES
    assert text.count(PLOTLY_BANNER) == 1  # plotly.js inline, once
    assert "<script src=" not in text  # nothing loaded from elsewhere
    figs = figures_for(**{k: v for k, v in inputs.items() if k != "correspondence"})
    divs = re.findall(r'<div id="fig-([^"]+)" class="plotly-graph-div"', text)
    assert divs == list(figs)  # one div per figure, in order
    assert text.count("Plotly.newPlot(") == len(figs)
    assert len(figs) == 4 + 2 + 4 + 2  # analysis figures, sweeps, task figures, extra
    assert _sections(text) == list(SECTIONS)
    # escaped text
    assert "Llama &lt;4x8&gt; &amp; co" in text
    assert "a &lt;note&gt;" in text
    assert "<note>" not in text
    # the heads table: 32 heads with intervals and the usage centroid
    table = text[text.index('<section id="heads">') :]
    assert table.count("<tr") == 1 + 32
    assert "usage centroid (pair)" in table
    assert "s_POS [lo, hi]" in table
    # the correspondence numbers
    corr = inputs["correspondence"]
    sec = text[text.index('<section id="correspondence">') : text.index('<section id="sweeps">')]
    assert f"{corr.rho:.3f}" in sec
    assert f"{corr.n_heads} of {corr.n_heads_total}" in sec
    no_tmp = [p.name for p in tmp_path.iterdir()]
    assert no_tmp == ["report.html"]


def test_only_the_sections_given(inputs, tmp_path):
    text = report(tmp_path / "r.html", title="spectrum", spec=inputs["spec"]).read_text()
    assert _sections(text) == ["summary", "spectrum"]
    assert re.findall(r'<div id="fig-([^"]+)"', text) == ["spectrum"]
    assert text.count(PLOTLY_BANNER) == 1
    text = report(tmp_path / "r.html", title="usage", usage=inputs["usage"]).read_text()
    assert _sections(text) == ["summary", "usage", "heads"]
    text = report(tmp_path / "r.html", title="empty", notes="just a note").read_text()
    assert _sections(text) == ["summary"]
    assert "Plotly.newPlot(" not in text
    assert "just a note" in text


def test_summary_names_the_extreme_heads(inputs, tmp_path):
    summary = inputs["scores"].mean()
    frame = plots.plane_frame(summary)
    frame[["s_pos", "s_sym"]] = 0.97  # every head at the uniform corner but three
    frame.loc[3, ["s_pos", "s_sym"]] = [0.95, 0.05]
    frame.loc[9, ["s_pos", "s_sym"]] = [0.80, 0.20]
    frame.loc[17, ["s_pos", "s_sym"]] = [0.10, 0.90]
    text = report(tmp_path / "r.html", title="t", scores=frame).read_text()
    summ = text[: text.index('<section id="plane">')]
    assert (
        "Most positional heads</strong> (s_POS, s_SYM): L0H3 (0.95, 0.05), L1H1 (0.80, 0.20)"
        in summ
    )
    assert "Most symbolic heads</strong> (s_POS, s_SYM): L2H1 (0.10, 0.90)" in summ
    heads = text[text.index('<section id="heads">') :]
    assert heads.count('class="pos"') == 2
    assert heads.count('class="sym"') == 1


def test_caveat_is_shown_prominently(tmp_path):
    model = make_bridge("llama_gqa")  # 2 layers x 4 heads: few heads, a caveat
    toks = torch.randint(3, 97, (3, 33), generator=torch.Generator().manual_seed(0))
    scores = rb.score_heads(model, toks, block_size=4, n_swaps=4)
    usage = rb.frequency_usage(rb.capture(model, toks))
    corr = rb.behavior_frequency_correspondence(scores, usage)
    assert "uniform corner" in corr.caveat
    text = report(tmp_path / "r.html", title="t", correspondence=corr).read_text()
    box = re.findall(
        r'<div class="caveat" role="alert"><strong>Caveat:</strong> ([^<]*)</div>', text
    )
    assert len(box) == 2  # in the summary and in the correspondence section
    assert box[0] == html.escape(corr.caveat)
    clean = dataclasses.replace(corr, caveat="")
    text = report(tmp_path / "r.html", title="t", correspondence=clean).read_text()
    assert 'class="caveat"' not in text


def test_the_interval_is_named_and_a_disagreement_with_the_test_is_said(inputs, tmp_path):
    corr = inputs["correspondence"]

    def section(c):
        text = report(tmp_path / "r.html", title="t", correspondence=c).read_text()
        return text[text.index('<section id="correspondence">') :]

    weak = dataclasses.replace(corr, p_value=0.017, rho_ci=(-0.935, 0.070))
    sec = section(weak)
    assert "[-0.935, 0.070] (Fisher z (Bonett-Wright))" in sec
    assert "resamples" not in sec
    assert "<dt>note</dt><dd>p &lt; 0.05 but the 95% interval contains 0: " in sec
    assert "read the effect as weak" in sec
    agree = dataclasses.replace(corr, p_value=0.017, rho_ci=(-0.935, -0.07))
    assert "<dt>note</dt>" not in section(agree)


def test_a_failing_figure_leaves_no_report_and_no_temp_file(inputs, tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    with pytest.raises(
        rb.RopeBehaviorError, match=r"extra_figures\[1\] is a str; expected a Figure"
    ):
        report(
            target,
            title="t",
            spec=inputs["spec"],
            extra_figures=[plots.omega_spectrum(inputs["spec"]), "nope"],
        )
    assert list(tmp_path.iterdir()) == []

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(plots, "frequency_usage_heatmap", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        report(target, title="t", usage=inputs["usage"])
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_keeps_the_old_report(inputs, tmp_path, monkeypatch):
    target = report(tmp_path / "report.html", title="old", spec=inputs["spec"])
    before = target.read_bytes()

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report(target, title="new", spec=inputs["spec"])
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_bad_inputs_are_named(inputs, tmp_path):
    with pytest.raises(rb.RopeBehaviorError, match=r"folder .* does not exist"):
        report(tmp_path / "missing" / "r.html", title="t")
    with pytest.raises(rb.RopeBehaviorError, match="spec is a str; expected a RopeSpec"):
        report(tmp_path / "r.html", title="t", spec="llama")
    with pytest.raises(rb.RopeBehaviorError, match="pair_scores lack a pair axis"):
        report(tmp_path / "r.html", title="t", pair_scores=inputs["scores"])
    with pytest.raises(rb.RopeBehaviorError, match="scores have a pair axis"):
        report(tmp_path / "r.html", title="t", scores=inputs["pair_scores"])
    with pytest.raises(rb.RopeBehaviorError, match=r"sweeps\[0\] is a int"):
        report(tmp_path / "r.html", title="t", sweeps=[3])
    with pytest.raises(rb.RopeBehaviorError, match="tasks is a list; expected an ExperimentResult"):
        report(tmp_path / "r.html", title="t", tasks=[1])
    assert list(tmp_path.iterdir()) == []
