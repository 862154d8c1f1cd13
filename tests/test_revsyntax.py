"""The revision grammar's parser and formatter (ledger.history.revsyntax), without a ledger.

Properties: every tree formats to text that parses back to the same tree, and
the canonical text of any accepted revision is a fixed point. Malformed text
is a RevisionSyntaxError that says which part is wrong.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import LedgerError, RevisionNotFoundError, RevisionSyntaxError
from ledger.history.revsyntax import (
    UNITS,
    Absolute,
    At,
    Best,
    Epoch,
    Name,
    Relative,
    Rev,
    Select,
    Step,
    format_rev,
    parse_rev,
)

_NAME = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._/-]{0,12}\Z").filter(
    lambda n: n not in ("step", "epoch", "best") and not n.endswith(("/", "."))
)
# a metric cannot hold a keyword segment (``a:step:1`` reads as branch ``best:a``, step 1)
_METRIC = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_./:-]{0,12}\Z").filter(
    lambda m: not m.endswith(":") and "::" not in m and not re.search(r"(^|:)(step|epoch|best):", m)
)
_OFFSETS = st.integers(-14 * 60, 14 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
_MOMENT = st.datetimes(
    min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2200, 1, 1), timezones=_OFFSETS
) | st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2200, 1, 1))
_WHEN = st.builds(Relative, st.integers(0, 10**6), st.sampled_from(sorted(UNITS))) | st.builds(
    Absolute, _MOMENT
)
_SELECTOR = (
    st.builds(Step, st.integers(0, 10**12), st.booleans())
    | st.builds(Epoch, st.integers(0, 10**6))
    | st.builds(Best, _METRIC, st.sampled_from(["min", "max"]))
)
_BACK = st.lists(st.integers(0, 50), max_size=3).map(tuple)
_PLAIN = st.builds(Name, _NAME | st.sampled_from(["HEAD", "@"])) | st.builds(
    At, st.none() | _NAME | st.just("HEAD"), _WHEN
)
_SCOPE = st.builds(Rev, _PLAIN, _BACK)
REVS = st.builds(Rev, _PLAIN | st.builds(Select, st.none() | _SCOPE, _SELECTOR), _BACK)


@given(REVS)
def test_every_tree_formats_to_text_that_parses_back_to_it(rev: Rev) -> None:
    text = format_rev(rev)
    assert parse_rev(text) == rev
    assert parse_rev(f"  {text}\n") == rev  # surrounding whitespace is ignored


@given(REVS)
def test_canonical_text_is_a_fixed_point(rev: Rev) -> None:
    text = format_rev(rev)
    assert format_rev(parse_rev(text)) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("step:1000", Rev(Select(None, Step(1000)))),
        ("step:<=1000", Rev(Select(None, Step(1000, at_most=True)))),
        ("epoch:3", Rev(Select(None, Epoch(3)))),
        ("best:val_loss", Rev(Select(None, Best("val_loss", "min")))),
        ("best:val_acc:max", Rev(Select(None, Best("val_acc", "max")))),
        ("best:eval/loss:min", Rev(Select(None, Best("eval/loss", "min")))),
        ("exp:step:1000", Rev(Select(Rev(Name("exp")), Step(1000)))),
        ("exp/lr-3:best:acc:max~1", Rev(Select(Rev(Name("exp/lr-3")), Best("acc", "max")), (1,))),
        ("v1~2:epoch:0", Rev(Select(Rev(Name("v1"), (2,)), Epoch(0)))),
        ("main^^", Rev(Name("main"), (1, 1))),
        ("main@{2 hours ago}", Rev(At("main", Relative(2, "hour")))),
        ("@{5 min ago}", Rev(At(None, Relative(5, "minute")))),
        ("main@{yesterday}", Rev(At("main", Relative(1, "day")))),
        ("main@{2026-11-30 12:00}", Rev(At("main", Absolute(dt.datetime(2026, 11, 30, 12))))),
        (
            "main@{2026-11-30 12:00 UTC}:step:<=5",
            Rev(
                Select(
                    Rev(At("main", Absolute(dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)))),
                    Step(5, at_most=True),
                )
            ),
        ),
        # a branch named like a keyword: the rightmost well-formed selector wins
        ("best:step:10", Rev(Select(Rev(Name("best")), Step(10)))),
        ("best:epoch:2", Rev(Select(Rev(Name("best")), Epoch(2)))),
        ("refs/heads/step:step:7", Rev(Select(Rev(Name("refs/heads/step")), Step(7)))),
    ],
)
def test_documented_forms_parse(text: str, expected: Rev) -> None:
    assert parse_rev(text) == expected


def test_a_metric_ending_in_min_keeps_an_explicit_mode() -> None:
    rev = Rev(Select(None, Best("loss:max", "min")))
    assert format_rev(rev) == "best:loss:max:min"
    assert parse_rev("best:loss:max:min") == rev


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("~2", "nothing before"),
        ("main:foo", "no selector"),
        ("step:ten", "whole number"),
        ("step:<=", "whole number"),
        ("epoch:-1", "whole number"),
        ("best:", "metric name"),
        ("best::max", "metric name"),
        (":step:1", "nothing comes before"),
        ("main@{2 hours ago", "closing"),
        ("main@{when the loss dropped}", "no time"),
        ("main@{3 fortnights ago}", "unknown unit"),
        ("step:1:step:2", "two selectors"),
        ("main@{1 day ago}:step:1:epoch:2", "two selectors"),
        ("step:1:step:x", "whole number"),
        ("my branch", "not a ref name"),
    ],
)
def test_malformed_text_is_a_syntax_error_saying_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(RevisionSyntaxError, match=says) as info:
        parse_rev(text)
    # callers that catch "not found" or any LedgerError keep working
    assert isinstance(info.value, RevisionNotFoundError | LedgerError)
    assert repr(text.strip()) in str(info.value) or not text


@given(st.text(max_size=40))
def test_any_text_parses_or_is_a_syntax_error(text: str) -> None:
    try:
        rev = parse_rev(text)
    except RevisionSyntaxError:
        return
    assert parse_rev(format_rev(rev)) == rev
