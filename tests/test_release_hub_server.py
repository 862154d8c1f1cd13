"""The test Hub's branches, tags, visibility and ``whoami``, through the real ``HfApi``.

These are the Hub's answers that ``release`` (and the operations issue's token
check) rely on, so the fake must give them as the Hub does: a new branch from a
starting point, 409 for a branch or tag that exists, commits onto branches only,
``private`` on create and in repo info, 401 ``RepoNotFound`` for a private repo
read without the token, and ``whoami`` only for a valid token.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import (
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session
from servers.hub import FakeHub, serve_hub

REPO = "org/refs"


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[HfApi, FakeHub]]:
    server = serve_hub(monkeypatch, tmp_path)
    yield HfApi(endpoint=server.endpoint), server
    server.stop()


def _upload(api: HfApi, path: str, data: bytes, revision: str = "main") -> str:
    info = api.upload_file(path_or_fileobj=data, path_in_repo=path, repo_id=REPO, revision=revision)
    return str(info.oid)


def test_whoami_needs_a_valid_token(api: tuple[HfApi, FakeHub]) -> None:
    hf, _ = api
    me = hf.whoami()
    assert me["name"] == "user" and [o["name"] for o in me["orgs"]] == ["org"]
    with pytest.raises(HfHubHTTPError, match="Invalid user token"):
        hf.whoami(token="hf_wrong")


def test_branches_start_where_asked_and_commits_stay_on_them(api: tuple[HfApi, FakeHub]) -> None:
    hf, hub = api
    hf.create_repo(REPO, private=True)
    root = hf.repo_info(REPO).sha
    on_main = _upload(hf, "a.txt", b"a")
    hf.create_branch(REPO, branch="from-root", revision=root)
    hf.create_branch(REPO, branch="dev")  # from main
    with pytest.raises(HfHubHTTPError) as e:
        hf.create_branch(REPO, branch="dev")
    assert e.value.response.status_code == 409
    hf.create_branch(REPO, branch="dev", exist_ok=True)
    assert not hf.file_exists(REPO, "a.txt", revision="from-root")
    on_dev = _upload(hf, "b.txt", b"b", revision="dev")
    assert hf.repo_info(REPO).sha == on_main  # main did not move
    assert hf.repo_info(REPO, revision="dev").sha == on_dev
    assert [c.commit_id for c in hf.list_repo_commits(REPO, revision="dev")][:2] == [
        on_dev,
        on_main,
    ]
    refs = hf.list_repo_refs(REPO)
    assert {b.name: b.target_commit for b in refs.branches} == {
        "main": on_main,
        "dev": on_dev,
        "from-root": root,
    }
    hf.delete_branch(REPO, branch="from-root")
    with pytest.raises(RevisionNotFoundError):
        hf.repo_info(REPO, revision="from-root")
    assert hub.file(REPO, "b.txt", rev="dev") == b"b"


def test_tags_are_immutable_and_cannot_take_commits(api: tuple[HfApi, FakeHub]) -> None:
    hf, hub = api
    hf.create_repo(REPO)
    first = _upload(hf, "a.txt", b"1")
    hf.create_tag(REPO, tag="v1")
    _upload(hf, "a.txt", b"2")
    with pytest.raises(HfHubHTTPError) as e:
        hf.create_tag(REPO, tag="v1")
    assert e.value.response.status_code == 409
    assert hub.state.repos[REPO].tags["v1"] == first
    assert hub.file(REPO, "a.txt", rev="v1") == b"1"
    with pytest.raises(RevisionNotFoundError):
        _upload(hf, "a.txt", b"3", revision="v1")
    assert [t.name for t in hf.list_repo_refs(REPO).tags] == ["v1"]


def test_private_repos_are_not_found_without_the_token(api: tuple[HfApi, FakeHub]) -> None:
    hf, hub = api
    hf.create_repo(REPO, private=True)
    hf.create_repo("org/open", private=False)
    hf.create_repo(REPO, private=False, exist_ok=True)  # an existing repo keeps its visibility
    assert hf.repo_info(REPO).private is True and hf.repo_info("org/open").private is False
    for path in (f"/api/models/{REPO}", f"/{REPO}/resolve/main/.gitattributes"):
        answer = get_session().get(hub.endpoint + path)
        assert answer.status_code == 401 and answer.headers["X-Error-Code"] == "RepoNotFound"
        assert get_session().get(hub.endpoint + path.replace(REPO, "org/open")).status_code == 200
    with pytest.raises(RepositoryNotFoundError):
        hf.repo_info(REPO, token=False)
    hf.update_repo_settings(REPO, private=False)
    assert hf.repo_info(REPO, token=False).private is False
    hf.update_repo_settings(REPO, private=True)
    assert hub.state.repos[REPO].private
    with pytest.raises(HfHubHTTPError):
        HfApi(endpoint=hub.endpoint, token="hf_wrong").update_repo_settings(REPO, private=False)
    assert hub.state.repos[REPO].private
