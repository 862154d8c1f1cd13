"""History: HEAD semantics, branches, tags, the log, revision syntax and commit ids.

Each test states one guarantee of the history layer (design layer 4, issue 3
"Public API") and exercises it through the public ``Ledger`` facade, except
where the revision grammar is checked directly against fake ids.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import blake3
import pytest
from helpers import tiny_state

from ledger import Ledger, LedgerError
from ledger.errors import (
    AmbiguousRevisionError,
    DetachedHeadError,
    EmptyLedgerError,
    RefNameError,
    RevisionNotFoundError,
)
from ledger.history.revisions import resolve

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def commit_n(lg: Ledger, n: int, start: int = 0, **kw: Any) -> list[str]:
    """Make ``n`` commits (no RNG capture, to keep them cheap); return their ids in order."""
    return [lg.commit(tiny_state(i), step=i, rng=False, **kw).id for i in range(start, start + n)]


# -- HEAD --------------------------------------------------------------------------


def test_new_ledger_head_is_unborn_main(lg: Ledger) -> None:
    assert lg.head is None
    assert lg.current_branch == "main"
    assert list(lg.log()) == []
    with pytest.raises(EmptyLedgerError):
        lg.resolve("HEAD")


def test_head_survives_the_process(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        ids = commit_n(lg, 2)
        lg.branch("exp", at=ids[0])
        lg.switch("exp")
    with Ledger.open(ledger_dir) as lg:
        assert lg.current_branch == "exp"
        head = lg.head
        assert head is not None and head.id == ids[0]
        lg.switch(ids[1])
    with Ledger.open(ledger_dir) as lg:
        assert lg.current_branch is None
        head = lg.head
        assert head is not None and head.id == ids[1]


def test_switch_to_branch_attaches_and_commit_moves_that_branch(lg: Ledger) -> None:
    ids = commit_n(lg, 2)
    lg.branch("exp", at=ids[0])
    switched = lg.switch("exp")
    assert switched is not None and switched.id == ids[0]
    assert lg.current_branch == "exp"
    c = lg.commit(tiny_state(9), rng=False)
    assert c.parents == [ids[0]]
    assert lg.branches() == {"exp": c.id, "main": ids[1]}
    head = lg.head
    assert head is not None and head.id == c.id
    lg.switch("refs/heads/main")
    assert lg.current_branch == "main"


@pytest.mark.parametrize("how", ["id", "prefix", "tag", "main~1"])
def test_switch_to_non_branch_detaches_and_commit_refuses(lg: Ledger, how: str) -> None:
    ids = commit_n(lg, 2)
    lg.tag("v0", at=ids[0])
    rev = {"id": ids[0], "prefix": ids[0][:10], "tag": "v0", "main~1": "main~1"}[how]
    switched = lg.switch(rev)
    assert switched is not None and switched.id == ids[0]
    assert lg.current_branch is None
    head = lg.head
    assert head is not None and head.id == ids[0]
    before = lg.refs.snapshot()
    with pytest.raises(DetachedHeadError, match="detached"):
        lg.commit(tiny_state(5), rng=False)
    assert lg.refs.snapshot() == before, "a refused commit moved a ref"
    assert isinstance(DetachedHeadError("x"), LedgerError)


def test_detached_commit_with_branch_creates_it_at_head(lg: Ledger) -> None:
    ids = commit_n(lg, 2)
    lg.switch(ids[0])
    c = lg.commit(tiny_state(7), rng=False, branch="fix")
    assert c.parents == [ids[0]]
    assert lg.branches()["fix"] == c.id
    assert lg.branches()["main"] == ids[1]
    assert lg.current_branch is None
    head = lg.head
    assert head is not None and head.id == ids[0], "commit(branch=) moved a detached HEAD"


def test_commit_to_new_branch_starts_at_head_and_keeps_head(lg: Ledger) -> None:
    ids = commit_n(lg, 2)
    c = lg.commit(tiny_state(7), rng=False, branch="b")
    assert c.parents == [ids[1]], "a new branch must start at HEAD's commit"
    assert lg.branches() == {"b": c.id, "main": ids[1]}
    assert lg.current_branch == "main"
    head = lg.head
    assert head is not None and head.id == ids[1]


def test_commit_to_existing_branch_uses_its_tip_as_parent(lg: Ledger) -> None:
    ids = commit_n(lg, 3)
    lg.branch("old", at=ids[0])
    c = lg.commit(tiny_state(8), rng=False, branch="old")
    assert c.parents == [ids[0]], "the parent must be the branch tip, not HEAD"
    assert lg.branches() == {"main": ids[2], "old": c.id}
    assert lg.current_branch == "main"


def test_unchanged_state_still_makes_a_new_commit(lg: Ledger) -> None:
    s = tiny_state(1)
    a = lg.commit(s, rng=False)
    b = lg.commit(s, rng=False)
    assert a.id != b.id
    assert b.parents == [a.id]
    assert b.stats.chunks_written == 0, "an unchanged state stored a chunk again"
    assert [c.id for c in lg.log()] == [b.id, a.id]


# -- log --------------------------------------------------------------------------


def test_log_follows_first_parents_newest_first(lg: Ledger) -> None:
    ids = commit_n(lg, 3)
    lg.branch("side", at=ids[1])
    side = commit_n(lg, 2, start=10, branch="side")
    assert [c.id for c in lg.log("main")] == ids[::-1]
    assert [c.id for c in lg.log("side")] == side[::-1] + ids[:2][::-1]
    assert [c.step for c in lg.log("HEAD")] == [2, 1, 0]
    assert [c.id for c in lg.log(ids[1])] == [ids[1], ids[0]]


# -- resolve ----------------------------------------------------------------------


def test_resolve_names_ids_prefixes_and_ancestry(lg: Ledger) -> None:
    ids = commit_n(lg, 4)
    lg.tag("v1", at=ids[1])
    lg.branch("exp", at=ids[2])
    assert lg.resolve("main") == ids[3]
    assert lg.resolve("HEAD") == ids[3]
    assert lg.resolve("refs/heads/main") == ids[3]
    assert lg.resolve("exp") == ids[2]
    assert lg.resolve("v1") == ids[1]
    assert lg.resolve("refs/tags/v1") == ids[1]
    assert lg.resolve(ids[0]) == ids[0]
    assert lg.resolve(ids[0][:8]) == ids[0]
    assert lg.resolve(ids[0][:8].upper()) == ids[0]
    assert lg.resolve("HEAD~2") == ids[1]
    assert lg.resolve("main^") == ids[2]
    assert lg.resolve("main~") == ids[2]
    assert lg.resolve("main^^") == ids[1]
    assert lg.resolve("main~1~2") == ids[0]
    assert lg.resolve("exp~2") == ids[0]
    assert lg.resolve("v1~1") == ids[0]
    assert lg.resolve("main~0") == ids[3]
    assert lg.get("main~3").step == 0


def test_resolve_past_the_root_is_an_error(lg: Ledger) -> None:
    ids = commit_n(lg, 3)
    assert lg.resolve("main~2") == ids[0]
    with pytest.raises(RevisionNotFoundError, match="main~3"):
        lg.resolve("main~3")
    with pytest.raises(RevisionNotFoundError):
        lg.resolve("HEAD^^^^")


@pytest.mark.parametrize("rev", ["nope", "mian", "v9", "0000000", "zzzz", "main~x", ""])
def test_unknown_revision_is_a_ledger_error_naming_it(lg: Ledger, rev: str) -> None:
    commit_n(lg, 1)
    with pytest.raises(RevisionNotFoundError) as info:
        lg.resolve(rev)
    assert isinstance(info.value, LedgerError)
    if rev:
        assert repr(rev.split("~")[0]) in str(info.value) or rev in str(info.value)


def test_ambiguous_prefix_through_the_ledger(lg: Ledger) -> None:
    """Commit until two real commit ids share a 4-hex prefix (about 300 tiny commits)."""
    seen: dict[str, str] = {}
    for i in range(5000):
        cid = lg.commit({"i": i}, rng=False).id
        if cid[:4] in seen:
            other = seen[cid[:4]]
            break
        seen[cid[:4]] = cid
    else:  # pragma: no cover - astronomically unlikely
        pytest.fail("no 4-char prefix collision in 5000 commits")
    with pytest.raises(AmbiguousRevisionError) as info:
        lg.resolve(cid[:4])
    msg = str(info.value)
    assert cid[:4] in msg and "2 commits" in msg
    assert cid[:12] in msg and other[:12] in msg
    # One more character than they share settles it.
    common = next(k for k in range(4, 64) if cid[k] != other[k])
    assert lg.resolve(cid[: common + 1]) == cid
    assert lg.resolve(other[: common + 1]) == other


def test_resolve_grammar_with_fake_ids() -> None:
    a, b, c = "abcd" + "1" * 60, "abcd" + "2" * 60, "ef01" + "3" * 60
    parents = {c: b, b: a, a: None}
    refs = {"HEAD": "ref: refs/heads/main", "refs/heads/main": c, "refs/tags/t": a}

    def run(rev: str) -> str:
        return resolve(rev, refs, lambda: [a, b, c], parents.__getitem__)

    assert run("HEAD") == c
    assert run("@") == c
    assert run("main~2") == a
    assert run("t") == a
    assert run("ef01") == c
    assert run("abcd1") == a
    with pytest.raises(AmbiguousRevisionError, match="2 commits"):
        run("abcd")
    with pytest.raises(RevisionNotFoundError):
        run("abc")  # fewer than 4 hex chars is never an id prefix
    with pytest.raises(RevisionNotFoundError, match="history ends after 2"):
        run("main~3")


def test_branch_name_shadows_an_id_prefix(lg: Ledger) -> None:
    ids = commit_n(lg, 2)
    lg.branch(ids[1][:6], at=ids[0])
    assert lg.resolve(ids[1][:6]) == ids[0], "names are tried before id prefixes, like git"
    assert lg.resolve(ids[1][:7]) == ids[1]


# -- branch / tag names -------------------------------------------------------------


BAD_NAMES = [
    "",
    "-x",
    ".hidden",
    "a..b",
    "a//b",
    "a/",
    "a.",
    "x.lock",
    "HEAD",
    "a b",
    "a~1",
    "a^",
    "a:b",
    "é",
    "x" * 201,
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_ref_names_are_refused(lg: Ledger, name: str) -> None:
    commit_n(lg, 1)
    before = lg.refs.snapshot()
    with pytest.raises(RefNameError):
        lg.branch(name)
    with pytest.raises(RefNameError):
        lg.tag(name)
    with pytest.raises(RefNameError):
        lg.commit(tiny_state(1), rng=False, branch=name)
    assert lg.refs.snapshot() == before


@pytest.mark.parametrize("name", ["exp", "exp/lr-3e-4", "v1.0", "a_b", "0abc"])
def test_valid_ref_names_are_accepted(lg: Ledger, name: str) -> None:
    ids = commit_n(lg, 1)
    assert lg.branch(name).id == ids[0]
    assert lg.tag(name).id == ids[0]
    assert lg.branches()[name] == ids[0]
    assert lg.tags()[name] == ids[0]


def test_existing_branch_or_tag_cannot_be_created_again(lg: Ledger) -> None:
    ids = commit_n(lg, 2)
    lg.branch("exp", at=ids[0])
    lg.tag("v1", at=ids[0])
    with pytest.raises(RefNameError, match="already exists"):
        lg.branch("exp", at=ids[1])
    with pytest.raises(RefNameError, match="already exists"):
        lg.branch("main", at=ids[0])
    with pytest.raises(RefNameError, match="already exists"):
        lg.tag("v1", at=ids[1])
    assert lg.branches() == {"exp": ids[0], "main": ids[1]}
    assert lg.tags() == {"v1": ids[0]}


def test_tags_never_move(lg: Ledger) -> None:
    ids = commit_n(lg, 1)
    lg.tag("v1")
    commit_n(lg, 2, start=5)
    assert lg.tags() == {"v1": ids[0]}
    lg.switch("v1")
    assert lg.current_branch is None, "switching to a tag must detach, never attach to the tag"
    with pytest.raises(DetachedHeadError):
        lg.commit(tiny_state(1), rng=False)
    assert lg.tags() == {"v1": ids[0]}


# -- commit objects -------------------------------------------------------------------


def test_commit_time_is_aware_utc_and_survives_reopen(ledger_dir: Path) -> None:
    before = dt.datetime.now(dt.timezone.utc)
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        c = lg.commit(tiny_state(1), rng=False)
    after = dt.datetime.now(dt.timezone.utc)
    assert c.time.tzinfo is not None and c.time.utcoffset() == dt.timedelta(0)
    assert before <= c.time <= after
    with Ledger.open(ledger_dir) as lg:
        again = lg.get(c.id)
    assert again.time == c.time
    assert again.time.utcoffset() == dt.timedelta(0)


def test_commit_id_is_blake3_of_the_stored_commit_object(lg: Ledger) -> None:
    commit_n(lg, 1)
    c = lg.commit(tiny_state(2), message="m", step=3, epoch=1, metrics={"loss": 0.5}, rng=False)
    assert HEX64.match(c.id)
    raw = lg.store.read(bytes.fromhex(c.id), "commit")
    assert blake3.blake3(raw).hexdigest() == c.id
    assert HEX64.match(c.manifest)
    manifest = lg.store.read(bytes.fromhex(c.manifest), "manifest")
    assert blake3.blake3(manifest).hexdigest() == c.manifest
    # The stored object really is this commit: its fields come back from disk.
    with Ledger.open(lg.root) as fresh:
        back = fresh.get(c.id)
    assert (back.message, back.step, back.epoch, back.metrics) == ("m", 3, 1, {"loss": 0.5})
    assert back.parents == c.parents and back.manifest == c.manifest
