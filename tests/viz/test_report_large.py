"""A report of a big model (64 layers x 64 heads x 64 pairs) stays small and drawable:
the usage heatmap shows one layer at a time (a slider), the plane labels only extremes."""

import json
import math
import re

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from rope_behavior.frequency.usage import FrequencyUsage
from rope_behavior.viz import plots
from rope_behavior.viz.html_report import report
from tests.viz.test_report_browser import CHROMIUM, PROBE, Path, _chromium

L, H, P = 64, 64, 64


def fake_usage() -> FrequencyUsage:
    g = torch.Generator().manual_seed(0)
    logit_abs = torch.rand(L, H, P, generator=g, dtype=torch.float64)
    usage = logit_abs / logit_abs.sum(-1, keepdim=True)
    pairs = torch.arange(P, dtype=torch.float64)
    omega = (10000.0 ** (-pairs / P)).expand(L, P).clone()
    return FrequencyUsage(
        layers=tuple(range(L)),
        attention_weighted=False,
        q_norm=torch.rand(L, H, P, generator=g, dtype=torch.float64),
        k_norm=torch.rand(L, H, P, generator=g, dtype=torch.float64),
        norm_usage=usage,
        logit_abs=logit_abs,
        logit_usage=usage,
        centroid=(usage * pairs).sum(-1),
        centroid_log_omega=(usage * omega.log()[:, None]).sum(-1),
        omega=omega,
    )


def fake_scores() -> pd.DataFrame:
    g = torch.Generator().manual_seed(1)
    pos, sym = torch.rand(L * H, generator=g), torch.rand(L * H, generator=g)
    rows = []
    for i in range(L * H):
        p, s = float(pos[i]), float(sym[i])
        rows.append({"layer": i // H, "head": i % H, "s_pos": p, "s_sym": s,
                     "s_pos_lo": p - 0.05, "s_pos_hi": p + 0.05, "s_sym_lo": s - 0.05,
                     "s_sym_hi": s + 0.05, "identifiable": True})  # fmt: skip
    return pd.DataFrame(rows)


def test_usage_heatmap_of_many_heads_pages_by_layer():
    usage = fake_usage()
    fig = plots.frequency_usage_heatmap(usage)
    assert len(fig.data) == L
    assert [t.visible for t in fig.data[:3]] == [True, False, False]
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == [str(layer) for layer in range(L)]
    assert steps[5].args[0]["visible"] == [j == 5 for j in range(L)]
    assert fig.layout.height < 1500  # one layer of 64 heads, not 4,096 rows
    zmax = {t.zmax for t in fig.data}
    assert len(zmax) == 1  # one colour scale for every layer
    assert math.isclose(zmax.pop(), float(usage.logit_usage.max()), rel_tol=1e-6)
    small = plots.frequency_usage_heatmap(usage, max_rows=L * H)
    assert len(small.data) == 1
    assert len(small.data[0].y) == L * H
    one = plots.frequency_usage_heatmap(usage, layer=3)
    assert len(one.data) == 1
    assert len(one.data[0].y) == H


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="headless Chromium is not installed")
def test_report_of_64_layers_by_64_heads_is_small_and_renders(tmp_path):
    page = report(tmp_path / "big.html", title="64 x 64", usage=fake_usage(), scores=fake_scores())
    size = page.stat().st_size
    assert size <= 6 * 2**20, f"{size / 2**20:.1f} MB"
    text = page.read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace('<meta charset="utf-8">', '<meta charset="utf-8">' + PROBE, 1))
    run = _chromium(["--dump-dom", probed.as_uri()], tmp_path / "profile")
    assert run.returncode == 0, run.stderr[-2000:]
    found = re.search(r'<pre id="rb-probe">(.*?)</pre>', run.stdout, re.S)
    assert found, run.stderr[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&lt;", "<")
                       .replace("&gt;", ">").replace("&amp;", "&"))  # fmt: skip
    assert probe["messages"] == [], probe["messages"]
    figures = {f["id"]: f for f in probe["figures"]}
    assert set(figures) == {"fig-usage", "fig-plane"}
    assert all(f["plotted"] and f["main_svg"] >= 1 for f in figures.values()), figures
    assert figures["fig-usage"]["heatmap_nodes"] == 1  # the visible layer is drawn
    assert figures["fig-plane"]["points"] == L * H


def test_pages_inline_the_cartesian_bundle_only_when_it_draws_every_trace(monkeypatch):
    from plotly.offline import get_plotlyjs

    from rope_behavior.viz import plotly_bundle

    full = get_plotlyjs()
    heat = plots.frequency_usage_heatmap(fake_usage(), layer=0)
    small = plotly_bundle.plotly_js([heat])
    assert plotly_bundle.bundle_version(small) == plotly_bundle.VENDORED_VERSION
    assert "(cartesian" in small[:200]
    assert len(small) < len(full) / 2
    cube = go.Figure(go.Scatter3d(x=[0], y=[0], z=[0]))
    assert plotly_bundle.plotly_js([heat, cube]) == full  # a 3-D trace: the full bundle
    # another plotly version installed: never mix versions
    monkeypatch.setattr(plotly_bundle, "get_plotlyjs", lambda: full.replace("v4.1.1", "v9.9.9", 1))
    assert "(cartesian" not in plotly_bundle.plotly_js([heat])[:200]
