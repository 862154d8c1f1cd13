"""``restore(..., report=True)`` and the warnings of ``restore(strict=False)``.

The report names, by state path, what a restore left missing, what the commit
held that the live state lacked, and what it loaded; a non-strict restore warns
with those lists (``PartialRestoreWarning``), and loudly, with its own class
(``NothingRestoredWarning``), when it loaded nothing.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import (
    Commit,
    Ledger,
    NothingRestoredWarning,
    PartialRestoreWarning,
    RestoreReport,
)


def model(bias: bool = True) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3, bias=bias)


def test_strict_report_lists_every_loaded_path_and_warns_nothing(lg: Ledger) -> None:
    saved = model()
    c = lg.commit({"model": saved, "w": torch.ones(2), "cfg": {"lr": 0.1}, "epoch": 3}, rng=False)
    live: dict[str, Any] = {"model": model(), "w": torch.zeros(2), "cfg": {"lr": 0.0}, "epoch": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = lg.restore(live, report=True, rng=False)
    assert isinstance(report, RestoreReport)
    assert report.commit == lg.get(c.id)
    assert sorted(report.loaded) == ["cfg/lr", "epoch", "model/bias", "model/weight", "w"]
    assert report.missing == [] and report.unexpected == []
    assert live["epoch"] == 3 and live["cfg"] == {"lr": 0.1}


def test_non_strict_reports_and_warns_missing_and_unexpected(lg: Ledger) -> None:
    c = lg.commit({"model": model(), "w": torch.ones(2), "old": 7}, rng=False)
    live: dict[str, Any] = {"model": model(bias=False), "w": torch.zeros(2), "ema": torch.ones(1)}
    with pytest.warns(PartialRestoreWarning) as caught:
        report = lg.restore(live, strict=False, report=True, rng=False)
    assert report.missing == ["ema"]
    assert sorted(report.unexpected) == ["model/bias", "old"]
    assert sorted(report.loaded) == ["model/weight", "w"]
    (w,) = caught.list
    text = str(w.message)
    assert "'ema'" in text and "'model/bias'" in text and "'old'" in text and c.id[:12] in text
    assert w.filename == __file__, "the warning must point at the caller of restore"
    assert live["old"] == 7, "a stored value the live mapping lacked is added to it"
    assert torch.equal(live["w"], torch.ones(2))


def test_non_strict_without_report_still_returns_the_commit(lg: Ledger) -> None:
    c = lg.commit({"w": torch.ones(2)}, rng=False)
    with pytest.warns(PartialRestoreWarning):
        got = lg.restore({"w": torch.zeros(2), "extra": 1}, strict=False, rng=False)
    assert isinstance(got, Commit) and got.id == c.id


def test_nothing_loaded_warns_loudly_with_its_own_class(lg: Ledger) -> None:
    first = lg.commit({"w": torch.ones(2)}, rng=False)
    second = lg.commit({"model": model()}, rng=False)
    lg.restore({"w": torch.zeros(2)}, first.id, rng=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", PartialRestoreWarning)  # silencing partial ones ...
        report = lg.restore({"other": torch.zeros(1)}, second.id, strict=False, report=True)
    loud = [w for w in caught if issubclass(w.category, NothingRestoredWarning)]
    assert len(loud) == 1, [str(w.message) for w in caught]  # ... never silences this one
    assert "LOADED NOTHING" in str(loud[0].message)
    assert report.loaded == [] and report.missing == ["other"]
    assert sorted(report.unexpected) == ["model"]
    based = lg.based_on
    assert based is not None and based.id == first.id, "a restore that loaded nothing set lineage"


def test_strict_restore_of_an_rng_only_commit_does_not_warn(lg: Ledger) -> None:
    lg.commit({})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = lg.restore({}, report=True)
    assert report.loaded == []


names = st.sets(st.sampled_from("abcdefgh"), max_size=6)


@settings(max_examples=40, deadline=None)
@given(stored=names, present=names, tensors=st.booleans())
def test_report_is_the_set_difference_of_the_two_sides(
    stored: set[str], present: set[str], tensors: bool
) -> None:
    import tempfile

    with Ledger.open(tempfile.mkdtemp() + "/l", create=True, fsync=False) as lg:

        def value(k: str, i: int) -> Any:
            return torch.full((2,), float(i)) if tensors else i

        lg.commit({k: value(k, ord(k)) for k in stored}, rng=False)
        live = {k: value(k, -1) for k in present}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = lg.restore(live, strict=False, report=True, rng=False)
        assert sorted(report.missing) == sorted(present - stored)
        assert sorted(report.unexpected) == sorted(stored - present)
        assert sorted(report.loaded) == sorted(present & stored)
        for k in stored:
            got = live[k]
            want = value(k, ord(k))
            assert torch.equal(got, want) if tensors else got == want
