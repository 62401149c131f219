"""One naming scheme for frequency bands, and every name the library prints read back."""

import pytest
import torch

import rope_behavior as rb
from rope_behavior.errors import RopeBehaviorError
from tests.models import VOCAB, hook_count


@pytest.fixture(scope="module")
def model(request):
    from tests.models import make_bridge

    return make_bridge("llama_gqa")


@pytest.fixture(scope="module")
def spec(model):
    return rb.RopeSpec.from_model(model)


def _printed(spec, model):
    """Every kind of band name the library gives a PairSet."""
    toks = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    sweep = rb.frequency_patching_sweep(
        model, toks, toks.flip(1), lambda x: x.sum(), layers=[0], heads=[0], target="q",
        bands=[[0, 3], "high", "band:1/2", "pair:2", *rb.equal_bands(spec, 3)],
    )  # fmt: skip
    return [
        *rb.equal_bands(spec, 4),
        *rb.equal_bands(spec, spec.n_pairs),
        *rb.wavelength_bands(spec, 64),
        *rb.wavelength_bands(spec, 16, layer=1, edges=(1e-5, 0.3, 2.0)),
        rb.pair_set(spec, [5, 1, 1]),
        *[rb.band(spec, n) for n in ("high", "mid", "low", "pair:3", "band:1/2", "band1/2")],
        *sweep.bands,
        *rb.frequency_patching_sweep(
            model, toks, toks.flip(1), lambda x: x.sum(), layers=[0], heads=[0], target="q", bands=2
        ).bands,
    ]


def test_every_printed_name_is_read_back(spec, model):
    bands = _printed(spec, model)
    assert len({b.name for b in bands}) > 15
    for b in bands:
        back = rb.band(spec, b.name)
        assert back.pairs == b.pairs, b.name
        assert back.name == b.name
    # and in the sweep's table
    toks = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(1))
    frame = rb.frequency_patching_sweep(
        model, toks, toks.flip(1), lambda x: x.sum(), layers=[0], heads=[0], bands=[[0, 1], 3]
    ).to_frame()
    for name, pairs in zip(frame["band"], frame["pairs"]):
        assert rb.band(spec, name).pairs == tuple(pairs)
    assert hook_count(model) == 0


def test_high_mid_low_mean_one_thing(spec):
    # thirds by pair index; wavelength bands carry their own names, never high/mid/low
    thirds = rb.equal_bands(spec, 3)
    assert [rb.band(spec, n).pairs for n in ("high", "mid", "low")] == [t.pairs for t in thirds]
    names = [b.name for b in rb.wavelength_bands(spec, 64)]
    assert names == ["wavelength:0-0.1@64", "wavelength:0.1-1@64", "wavelength:1-inf@64"]
    assert not {"high", "mid", "low"} & set(names)


def test_equal_band_spellings_agree(spec):
    for k in range(1, spec.n_pairs + 1):
        for i in range(k):
            assert (
                rb.band(spec, f"band:{i}/{k}").pairs
                == rb.band(spec, f"band{i}/{k}").pairs
                == rb.equal_bands(spec, k)[i].pairs
            )


def test_a_wavelength_name_on_another_context_or_layer(spec):
    short = rb.band(spec, "wavelength:1-inf@8")
    long = rb.band(spec, "wavelength:1-inf@4096")
    assert set(long.pairs) <= set(short.pairs)  # a longer context: fewer pairs turn less than once
    assert rb.band(spec, "wavelength:0-inf@64").pairs == tuple(range(spec.n_pairs))


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("band:x/2", r"expected 'band:<i>/<k>' or 'band<i>/<k>'"),
        ("band3/3", r"index 3 not in \[0, 2\]"),
        ("band0/0", r"k \(equal bands\)=0"),
        ("pairs[1, x]", r"expected 'pairs\[<i>, <j>, \.\.\.\]'"),
        ("pairs[9]", r"pair 9 is out of range"),
        ("pairs[]", r"expected .pairs\[<i>, <j>, \.\.\.\]. \(ints\)"),
        ("wavelength:0-1", r"expected 'wavelength:<lo>-<hi>@<context>'"),
        ("wavelength:1-0.5@64", r"expected 0 <= lo < hi; got 1, 0.5"),
        ("wavelength:0-1@1", r"context=1; expected an int >= 2"),
        ("wavelength:0-1@64:layer5", r"layer 5 is out of range"),
        ("wavelength:1000-inf@64", r"is empty"),
        (
            "middle",
            r"unknown band name 'middle'; options: 'high', 'mid', 'low' \(thirds by pair index\)",
        ),
    ],
)
def test_bad_names(spec, name, match):
    with pytest.raises(RopeBehaviorError, match=match):
        rb.band(spec, name)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"context_length": 1}, r"context_length=1; expected an int >= 2"),
        ({"context_length": 64.0}, r"context_length=64.0 \(float\)"),
        ({"context_length": 64, "edges": (float("nan"), 1.0)}, r"edges=nan"),
        ({"context_length": 64, "edges": (1.0, 0.1)}, r"expected increasing positive fractions"),
        ({"context_length": 64, "edges": (0.0, 1.0)}, r"edges=0.0"),
        ({"context_length": 64, "edges": ()}, r"expected increasing positive fractions"),
        ({"context_length": 64, "edges": 0.5}, r"expected increasing positive fractions"),
        ({"context_length": 64, "layer": -1}, r"layer"),
    ],
)
def test_wavelength_band_arguments(spec, kw, match):
    with pytest.raises(RopeBehaviorError, match=match):
        rb.wavelength_bands(spec, **kw)
