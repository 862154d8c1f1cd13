"""Who a remote writes as: Hub tokens by name and ``whoami`` first, S3 through a named profile.

Hub cases run the real ``huggingface_hub`` client against the fake Hub on
127.0.0.1 (tests/servers/hub.py), which knows one write token (``TOKEN``) and
the extra tokens a test gives it, each with a role; its ``whoami`` answers
with that role and a write with a read token is refused 403, as the Hub does.
Named tokens live where ``hf auth login`` keeps them (``stored_tokens``).
S3 cases run s3fs against moto behind the recording proxy, which sees the
access key id each request is signed with.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest
import torch
from helpers import run_cli, stored_byte_strings
from servers.hub import FakeHub, serve_hub
from servers.s3 import S3Proxy, s3_bucket, s3_endpoint, s3_proxy

from ledger import Ledger
from ledger.errors import RemoteAuthError, RemoteURLError

__all__ = ["s3_bucket", "s3_endpoint", "s3_proxy"]  # fixtures used by this module

URL = "hf://user/run"
READ_TOKEN = "hf_readOnlyToken0123456789abcdefgh"
OTHER_WRITE = "hf_secondWriteToken0123456789abcdef"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeHub:
    server = serve_hub(monkeypatch, tmp_path)
    server.state.tokens = {READ_TOKEN: "read", OTHER_WRITE: "write"}
    yield server  # type: ignore[misc]
    server.stop()


def _store_tokens(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **tokens: str) -> None:
    """Tokens as `hf auth login` stores them (an INI file of name -> hf_token)."""
    import huggingface_hub.constants

    ini = configparser.ConfigParser()
    for name, token in tokens.items():
        ini[name] = {"hf_token": token}
    path = tmp_path / "hf-home" / "stored_tokens"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        ini.write(f)
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(path))
    monkeypatch.setattr(
        huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token")
    )


def _ledger(tmp_path: Path) -> Ledger:
    lg = Ledger.open(tmp_path / "ckpt", create=True, fsync=False)
    lg.commit({"w": torch.arange(64, dtype=torch.float32)}, step=1, rng=False)
    return lg


def _commits(hub: FakeHub) -> int:
    return sum(1 for method, path in hub.state.requests if method == "POST" and "/commit/" in path)


def test_a_named_token_is_used_and_only_its_name_is_stored(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The active token can only read: the push succeeds only through the named one.
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    _store_tokens(monkeypatch, tmp_path, work=OTHER_WRITE, personal=READ_TOKEN)
    with _ledger(tmp_path) as lg:
        lg.remote_add("origin", URL, hf_token_name="work")
        assert lg.remote_settings() == {"origin": {"url": URL, "hf_token_name": "work"}}
        result = lg.push()
        assert result.updated
    for blob in stored_byte_strings(tmp_path / "ckpt"):
        assert OTHER_WRITE.encode() not in blob and READ_TOKEN.encode() not in blob
    config = (tmp_path / "ckpt" / "remotes" / "config.json").read_text()
    assert '"hf_token_name": "work"' in config


def test_a_read_only_token_fails_before_anything_is_uploaded(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    with _ledger(tmp_path) as lg:
        lg.remote_add("origin", URL)
        with pytest.raises(RemoteAuthError, match="read-only"):
            lg.push()
    assert _commits(hub) == 0
    assert not any(m in ("PUT", "POST") and "/preupload/" in p for m, p in hub.state.requests)


def test_an_invalid_token_is_named_as_such(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_notAValidToken0000000000000000000")
    with _ledger(tmp_path) as lg:
        lg.remote_add("origin", URL)
        with pytest.raises(RemoteAuthError, match="rejects the token"):
            lg.push()
    assert _commits(hub) == 0


def test_no_token_at_all_says_how_to_log_in(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    _store_tokens(monkeypatch, tmp_path)  # an empty store and no saved login
    with _ledger(tmp_path) as lg:
        lg.remote_add("origin", URL)
        with pytest.raises(RemoteAuthError, match="hf auth login"):
            lg.push()
    assert _commits(hub) == 0


def test_an_unknown_token_name_is_refused_when_added_listing_the_stored_names(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _store_tokens(monkeypatch, tmp_path, work=OTHER_WRITE, personal=READ_TOKEN)
    with _ledger(tmp_path) as lg:
        with pytest.raises(RemoteAuthError, match=r"'wrok' \(stored: personal, work\)"):
            lg.remote_add("origin", URL, hf_token_name="wrok")
        assert lg.remote_settings() == {}
        with pytest.raises(RemoteURLError, match="Hub remotes"):
            lg.remote_add("backup", str(tmp_path / "dir"), hf_token_name="work")


def test_release_checks_the_token_first_and_takes_a_name(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    _store_tokens(monkeypatch, tmp_path, work=OTHER_WRITE)
    from test_release import gpt2, hf_state

    with Ledger.open(tmp_path / "ckpt", create=True, fsync=False) as lg:
        lg.commit(hf_state(gpt2()), step=1)
        with pytest.raises(RemoteAuthError, match="read-only"):
            lg.release("HEAD", "hf://user/model")
        assert "user/model" not in hub.state.repos
        done = lg.release("HEAD", "hf://user/model", hf_token_name="work")
    assert "model.safetensors" in done.uploaded
    assert "user/model" in hub.state.repos


def test_cli_remote_add_with_a_token_name_and_a_one_line_error(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _store_tokens(monkeypatch, tmp_path, work=OTHER_WRITE)
    _ledger(tmp_path).close()
    ckpt = str(tmp_path / "ckpt")
    added = run_cli("--dir", ckpt, "remote", "add", "origin", URL, "--hf-token-name", "work")
    assert added.exit_code == 0, added.output
    assert "(token work)" in added.output
    listed = run_cli("--dir", ckpt, "remote")
    assert re.search(r"origin\s+hf://user/run\s+\(token work\)", listed.output)
    bad = run_cli("--dir", ckpt, "remote", "add", "b", URL, "--hf-token-name", "nope")
    assert bad.exit_code == 1
    lines = bad.output.strip().splitlines()
    assert lines[0].startswith("error: no Hugging Face token is stored under the name 'nope'")
    assert len(lines) <= 2 and "Traceback" not in bad.output
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    monkeypatch.setattr("huggingface_hub.constants.HF_STORED_TOKENS_PATH", str(tmp_path / "none"))
    pushed = run_cli("--dir", ckpt, "remote", "add", "ro", "hf://user/other")
    assert pushed.exit_code == 0
    refused = run_cli("--dir", ckpt, "push", "ro")
    assert refused.exit_code == 1 and "read-only" in refused.output


# -- S3: a named AWS profile ---------------------------------------------------------

PROFILE_KEY = "AKIAPROFILEKEYLEDGER"
PROFILE_SECRET = "pr0file/Secret+ledger0123456789abcdefghi"


def _aws_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    creds = tmp_path / "aws" / "credentials"
    creds.parent.mkdir(parents=True)
    creds.write_text(
        f"[training]\naws_access_key_id = {PROFILE_KEY}\naws_secret_access_key = {PROFILE_SECRET}\n"
    )
    (tmp_path / "aws" / "config").write_text("[profile training]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws" / "config"))


def test_an_aws_profile_signs_the_requests_and_only_its_name_is_stored(
    s3_proxy: S3Proxy, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _aws_profile(monkeypatch, tmp_path)
    url = f"s3://{s3_bucket}/run"
    with _ledger(tmp_path) as lg:
        lg.remote_add("origin", url, aws_profile="training")
        s3_proxy.signed_by.clear()
        lg.push()
    # the environment names another key (the fixture's): every request used the profile's
    assert s3_proxy.signed_by and set(s3_proxy.signed_by) == {PROFILE_KEY}
    for blob in stored_byte_strings(tmp_path / "ckpt"):
        assert PROFILE_KEY.encode() not in blob and PROFILE_SECRET.encode() not in blob
    assert '"aws_profile": "training"' in (tmp_path / "ckpt/remotes/config.json").read_text()


def test_an_unknown_aws_profile_is_refused_when_added(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _aws_profile(monkeypatch, tmp_path)
    with _ledger(tmp_path) as lg:
        with pytest.raises(RemoteAuthError, match=r"no AWS profile named 'trainnig'.*training"):
            lg.remote_add("origin", f"s3://{s3_bucket}/run", aws_profile="trainnig")
        with pytest.raises(RemoteURLError, match="S3 remotes"):
            lg.remote_add("hub", URL, aws_profile="training")
        assert lg.remote_settings() == {}
