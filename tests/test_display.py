"""Result objects show themselves: a repr of a few lines within 80 columns, and an HTML card
(tables and inline SVG, no script) that parses, holds the key numbers, escapes text and
stays small for a 64-layer x 64-head model."""

import dataclasses
import math
import re
from html.parser import HTMLParser

import pytest
import torch

import rope_behavior as rb
from rope_behavior import display
from rope_behavior.analysis.correspondence import behavior_frequency_correspondence
from rope_behavior.display.draw import num
from rope_behavior.patching.sweep import frequency_patching_sweep

N_BIG = 64  # layers, heads and pairs of the large fakes


class _Card(HTMLParser):
    """Checks that tags nest and close; collects the text and the attribute values."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.text: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.stack.append(tag)
        self.attrs += attrs

    def handle_startendtag(self, tag, attrs):
        self.attrs += attrs

    def handle_endtag(self, tag):
        assert self.stack, tag
        assert self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> str:
    """The card's text (entities decoded), after checking it is well-formed and inert."""
    card = _Card()
    card.feed(html)
    card.close()
    assert card.stack == []
    assert "<script" not in html.lower()
    assert not [k for k, _ in card.attrs if k.startswith("on")]  # no event handlers
    urls = set(re.findall(r"\w+://[^\"' ]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}  # a namespace, nothing fetched
    return " ".join(card.text)


def check_repr(text: str, name: str, max_lines: int = 8) -> None:
    lines = text.splitlines()
    assert 1 <= len(lines) <= max_lines, text
    assert all(len(line) <= 80 for line in lines), [len(line) for line in lines]
    assert lines[0].startswith(f"{name}("), text
    assert lines[-1].endswith(")"), text


# -- small real objects ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def analysis():
    model = rb.load_shipped_lm()
    tokens, mask = rb.tokenize_prompts(model, rb.heldout_texts(8), context=48)
    return rb.analyze(model, tokens, attention_mask=mask, batch_size=8, pair_prompts=2)


@pytest.fixture(scope="module")
def sweep():
    toy = pytest.importorskip("rope_behavior.tasks.toy")
    config = toy.ToyConfig(d_vocab=20, n_ctx=16, n_layers=2, n_heads=2, d_head=8)
    model = toy.ToyRotaryTransformer(config).eval()
    gen = torch.Generator().manual_seed(2)
    clean, corrupted = (torch.randint(0, 20, (2, 6), generator=gen) for _ in range(2))
    return frequency_patching_sweep(model, clean, corrupted, rb.metrics.logit_diff(3, 4), bands=2)


def _objects(a, sweep):
    return {
        "spec": a.spec,
        "scores": a.scores,
        "summary": a.summary,
        "pair_summary": a.pair_summary,
        "usage": a.usage,
        "correspondence": a.correspondence,
        "analysis": a,
        "sweep": sweep,
    }


def _top_head(summary):
    df = summary.to_frame()
    return df.loc[(df["s_pos_mean"] - df["s_sym_mean"]).idxmax()]


def key_numbers(name, obj):
    """(in the repr, in the card's text) for each kind of object."""
    if name == "spec":
        w = obj.wavelength
        return (
            [obj.architecture, f"d_head={obj.d_head}", f"rotary_dim={obj.rotary_dim}"],
            [f"{obj.n_pairs} ({obj.pair_layout} layout)", f"{num(w.min())}-{num(w.max())} tokens"],
        )
    if name == "scores":
        mean_l0 = float(obj.s_pos[:, 0].nanmean())
        swaps = f"{len(obj.swaps)} of {obj.n_block_pairs} block pairs"
        return [f"swaps={swaps}", f"shape={tuple(obj.s_pos.shape)}"], [swaps, num(mean_l0)]
    if name in ("summary", "pair_summary"):
        top = _top_head(obj)
        return [f"shape={tuple(obj.s_pos_mean.shape)}", f"swaps={obj.n_swaps} of"], [
            num(top.s_pos_mean),
            num(top.s_pos_mean - top.s_sym_mean),
        ]
    if name == "usage":
        return [f"tokens={int(obj.n_tokens)}", f"{obj.centroid.shape[1]} heads"], [
            num(float(obj.centroid[0].mean())),
            f"{int(obj.n_tokens)} tokens",
        ]
    if name in ("correspondence", "analysis"):
        c = obj if name == "correspondence" else obj.correspondence
        heads = f"{c.n_heads} of {c.n_heads_total}"
        both = [f"rho={num(c.rho)}", f"p={num(c.p_value)}", f"on {heads} heads"]
        html = [num(c.rho), num(c.p_value), heads, num(c.rho_ci[0])]
        if name == "analysis":
            pos = obj.summary_dict()["most_positional"][0]
            both.append(repr(obj.model_name))
            html += [obj.model_name, num(pos["s_pos"])]
        return both, html
    assert name == "sweep"
    best = float(obj.normalized().max())
    return [f"clean={num(obj.clean_baseline, 4)}", f"target={obj.target!r}"], [
        num(obj.corrupted_baseline, 4),
        num(best),
    ]


@pytest.mark.parametrize(
    "name",
    ["spec", "scores", "summary", "pair_summary", "usage", "correspondence", "analysis", "sweep"],
)
def test_small_real_objects_show_their_key_numbers(analysis, sweep, name):
    obj = _objects(analysis, sweep)[name]
    text, html = repr(obj), obj._repr_html_()
    check_repr(text, type(obj).__name__)
    assert text == display.text(obj)
    assert html == display.html(obj)
    in_text, in_html = key_numbers(name, obj)
    for key in in_text:
        assert key in text, (key, text)
    shown = parse(html)
    for key in in_html:
        assert key in shown, (key, shown[:2000])
    assert len(html) < 40_000


def test_notes_and_caveats_are_shown_whole_and_wrapped(analysis):
    caveat = "the statistic rests on only 5 heads (fewer than 8): rho is fragile; " * 3
    c = dataclasses.replace(analysis.correspondence, caveat=caveat.strip())
    text = repr(c)
    check_repr(text, "FrequencyCorrespondence", max_lines=10)
    assert "caveat: " + c.caveat in " ".join(text.split())
    assert "caveat: " + c.caveat in parse(c._repr_html_())


def test_text_is_escaped(analysis, sweep):
    evil = "<script>alert('x')</script> & <b>"
    a = dataclasses.replace(analysis, model_name=evil)
    html = a._repr_html_()
    assert evil in parse(html)
    assert "&lt;script&gt;" in html
    band = rb.PairSet("<i>odd</i>", sweep.bands[0].pairs)
    s = dataclasses.replace(sweep, bands=(band, *sweep.bands[1:]), metric="m<&>")
    shown = parse(s._repr_html_())
    assert "<i>odd</i>" in shown
    assert "m<&>" in shown


def test_other_branches(analysis, sweep):
    c = analysis.correspondence
    only_pairs = dataclasses.replace(c, behavior=None, rho=math.nan, p_value=math.nan)
    assert "rho of each head's pair curve" in parse(only_pairs._repr_html_())
    check_repr(repr(only_pairs), "FrequencyCorrespondence")
    flat = dataclasses.replace(sweep, corrupted_baseline=sweep.clean_baseline)
    assert "not normalized" in parse(flat._repr_html_())
    check_repr(repr(flat), "FrequencyPatchingResult")
    noising = dataclasses.replace(sweep, direction="noising")
    assert "toward the corrupted run" in parse(noising._repr_html_())
    with pytest.raises(TypeError, match="no renderer for int"):
        display.html(3)


# -- large fakes: 64 layers x 64 heads x 64 pairs -------------------------------------------


@pytest.fixture(scope="module")
def big(analysis):
    gen = torch.Generator().manual_seed(0)
    n, n_prompts, n_swaps = N_BIG, 4, 3

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    spec0 = analysis.spec
    base = torch.where(torch.arange(n) % 6 == 5, 1e6, 1e4)[:, None]  # local / global layers
    omega = base ** (-torch.arange(n, dtype=torch.float64) / n)[None, :]
    spec = rb.RopeSpec(
        architecture="Big<Model>ForCausalLM", n_layers=n, n_heads=n, n_kv_heads=8, d_head=2 * n,
        rotary_dim=2 * n, pair_layout="half", _omega=omega,
        _table_scale=torch.ones(n, dtype=torch.float64), attn_scales=(8.0,) * n,
        logit_softcaps=(50.0,) * n, sliding_windows=(4096, None) * (n // 2),
        sites=(spec0.sites[0],) * n, omega_source=("inv_freq",) * n,
    )  # fmt: skip
    row, swap = (n_prompts, n, n), (n_prompts, n, n, n_swaps)
    s_pos, s_sym = rand(*row), rand(*row)
    s_pos[0, 0, :5] = math.nan
    scores = dataclasses.replace(
        analysis.scores, layers=tuple(range(n)), n_heads=n,
        swaps=((0, 1), (0, 2), (1, 2)), n_block_pairs=3,
        start=torch.zeros(n_prompts, dtype=torch.long),
        query_pos=torch.full((n_prompts, 1), 40), excluded=torch.zeros(n_prompts, 41, dtype=torch.bool),
        s_pos=s_pos, s_sym=s_sym, separation=rand(*row), identifiable=rand(*row) > 0.3,
        entropy=rand(*row), distance_from_uniform=rand(*row), block_mass=rand(*row),
        leftover_mass=rand(*row), swapped_mass=rand(*row), mass_moved=rand(*swap),
        swap_weight=rand(*swap), swap_mass=rand(*swap), pos_swap=rand(*swap), sym_swap=rand(*swap),
    )  # fmt: skip
    summary = scores.mean(n_boot=20)
    per_pair = {
        f.name: rand(n, n, n) for f in dataclasses.fields(summary) if f.name.startswith("s_")
    }
    pair_summary = dataclasses.replace(
        summary, per_pair=True, n_prompts=torch.full((n, n, n), 2), **per_pair,
        identifiable_fraction=rand(n, n, n), swapped_mass=rand(n, n, n), leftover_mass=rand(n, n, n),
    )  # fmt: skip
    usage_rand = rand(n, n, n)
    usage = dataclasses.replace(
        analysis.usage, layers=tuple(range(n)), q_norm=usage_rand, k_norm=usage_rand,
        norm_usage=usage_rand, logit_abs=usage_rand, logit_usage=usage_rand / usage_rand.sum(-1, keepdim=True),
        centroid=rand(n, n) * (n - 1), centroid_log_omega=rand(n, n), omega=omega,
        n_tokens=torch.tensor(4096.0), logit_weight=rand(n, n),
    )  # fmt: skip
    c = behavior_frequency_correspondence(scores, usage, n_permutations=50)
    c = dataclasses.replace(
        c, pair_s_pos=rand(n, n, n), pair_s_sym=rand(n, n, n), pair_behavior=rand(n, n, n),
        pair_rho=rand(n, n) * 2 - 1,
        caveat="many heads sit at the uniform corner (mean s_pos and s_sym >= 0.9): " * 2,
    )  # fmt: skip
    a = dataclasses.replace(
        analysis, model_name="big", spec=spec, usage=usage, scores=scores, summary=summary,
        pair_summary=pair_summary, correspondence=c, n_prompts=n_prompts, n_tokens=164,
    )  # fmt: skip
    bands = tuple(rb.PairSet(f"band{i}/4", tuple(range(16 * i, 16 * i + 16))) for i in range(4))
    sweep = rb.FrequencyPatchingResult(
        values=rand(n, n, 4), layers=tuple(range(n)), heads=tuple(range(n)), head_axis="head",
        query_heads=tuple((h,) for h in range(n)), bands=bands, target="qk",
        direction="denoising", clean_baseline=1.0, corrupted_baseline=0.0, metric="logit_diff",
    )  # fmt: skip
    return {"spec": spec, "scores": scores, "summary": summary, "pair_summary": pair_summary,
            "usage": usage, "correspondence": c, "analysis": a, "sweep": sweep}  # fmt: skip


@pytest.mark.parametrize(
    "name",
    ["spec", "scores", "summary", "pair_summary", "usage", "correspondence", "analysis", "sweep"],
)
def test_a_large_model_stays_small(big, name):
    obj = big[name]
    check_repr(repr(obj), type(obj).__name__, max_lines=10)
    html = obj._repr_html_()
    assert len(html.encode()) < 100_000, len(html)
    shown = parse(html)
    if name in ("summary", "pair_summary", "scores", "usage"):
        assert "more rows" in shown  # 64 (or 4096) table rows are cut
    if name == "pair_summary":
        assert "mean over pair" in shown  # 262144 points drawn as 4096 heads
    if name == "sweep":
        assert "rows: means of" in shown  # 16384 cells drawn as 4096
    if name == "spec":
        assert "layers [0..4, 6..10" in shown  # two groups of layers, two wavelength curves
