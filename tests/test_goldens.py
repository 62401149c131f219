"""The package reproduces the golden set recorded from a frozen copy of the code.

``tests/goldens/goldens.pt`` holds ``{key: float64 tensor}`` written by
``scripts/record_goldens.py``; every key is recomputed here with the current package by
the same code (:mod:`tests.goldens.compute`, top-level public names only) and compared
with ``torch.testing.assert_close`` (NaNs equal). A refactor that moves code must keep
every number. Each group is computed once per module (on one torch thread the shipped
LM's ``analyze`` takes about 5 s, the whole file about 15 s, 25 s with pytest's start-up).

Tolerance: ``rtol=1e-5, atol=1e-6`` by default, room for a refactor that changes the order
of floating-point operations (a float32 sum reordered moves its result by about 1e-7
relative). Keys in :data:`TOLERANCES` (matched by prefix, longest first) differ, each
with its reason. To re-record after an intended change of numbers, see
``scripts/record_goldens.py``.
"""

from pathlib import Path

import pytest
import torch

from tests.goldens import compute

GOLDENS = Path(__file__).parent / "goldens" / "goldens.pt"
DEFAULT = dict(rtol=1e-5, atol=1e-6)
TOLERANCES: dict[str, dict[str, float]] = {
    # The KL of a noised tiny random model to its clean run is 2e-7..2e-5: the default
    # atol would accept almost any value, so the absolute tolerance is scaled down to it.
    "patch/gpt_neox/qk_noising/values": dict(rtol=1e-5, atol=1e-10),
    "patch/gpt_neox/qk_noising/corrupted_baseline": dict(rtol=1e-5, atol=1e-10),
    "patch/gpt_neox/qk_noising/clean_baseline": dict(rtol=1e-5, atol=1e-10),
}


def tolerance(key: str) -> dict[str, float]:
    for prefix in sorted(TOLERANCES, key=len, reverse=True):
        if key.startswith(prefix):
            return TOLERANCES[prefix]
    return DEFAULT


def _goldens() -> dict[str, torch.Tensor]:
    return torch.load(GOLDENS, weights_only=True)


KEYS = sorted(_goldens())


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One thread: these small models run several times faster so on a shared 2-core box
    (the recorded numbers came out equal to 0.0 with one thread and with two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def goldens() -> dict[str, torch.Tensor]:
    return _goldens()


@pytest.fixture(scope="module")
def recomputed():
    """``get(group)``: that group recomputed by the current package, once per module (a
    group that raised raises again for each of its keys without being recomputed)."""
    cache: dict[str, dict[str, torch.Tensor] | BaseException] = {}

    def get(group: str) -> dict[str, torch.Tensor]:
        if group not in cache:
            try:
                cache[group] = compute.GROUPS[group]()
            except Exception as err:
                cache[group] = err
                raise
        got = cache[group]
        if isinstance(got, BaseException):
            raise RuntimeError(
                f"computing group {group!r} failed earlier: {type(got).__name__}: "
                f"{str(got).splitlines()[0] if str(got) else ''}"
            ) from None
        return got

    return get


def test_the_golden_set_covers_every_group():
    assert {compute.group_of(k) for k in KEYS} == set(compute.GROUPS)
    assert all(v.dtype == torch.float64 for v in _goldens().values())
    assert GOLDENS.stat().st_size < 2_000_000


@pytest.mark.parametrize("key", KEYS)
def test_golden(goldens, recomputed, key):
    got = recomputed(compute.group_of(key))
    assert key in got, f"{key} is no longer computed (a field renamed or removed?)"
    hint = ""
    if key.startswith("lm/") and not torch.equal(got["lm/tokens"], goldens["lm/tokens"]):
        hint = (
            " (the held-out prompts differ: rb.heldout_texts reads this Python's standard "
            "library, so another Python version gives other text)"
        )
    torch.testing.assert_close(
        got[key],
        goldens[key],
        equal_nan=True,
        check_dtype=True,
        **tolerance(key),
        msg=lambda m: f"{key}: {m}{hint}",
    )
