"""Secrets never enter metadata: token shapes, flags, names, and the user's own fields.

Three kinds of proof: hypothesis properties (ordinary metadata passes through
unchanged; every token shape is caught wherever it is embedded, in every
field the ledger stores), the rules one by one (argv flags, bare tokens, env
values under innocent names, URL passwords holding ``/``, ``allow_secrets=``
and its warning), and an end-to-end search: secrets of every kind planted in
argv, the environment, the git remote and the user's fields, then every file
and every decoded object of the ledger and of a pushed directory remote
searched for them (with a control value kept by ``allow_secrets=``, found
by the same search, so a search that could not see would fail).
"""

from __future__ import annotations

import random
import string
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import git_repo, stored_byte_strings, tree_bytes
from hypothesis import given
from hypothesis import strategies as st

from ledger import Ledger, metadata
from ledger.errors import SecretRedactedWarning, UnsupportedValueError
from ledger.objects.check import decode_object
from ledger.objects.packs import read_pack_index
from ledger.secrets import find_secrets, is_secret_name, redact, strip_url_credentials

ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "/+"
UPPER_DIGITS = string.ascii_uppercase + string.digits

# -- secret shapes: (text to plant, the part that must vanish) --------------------------------

Planted = tuple[str, str]


def _text(alphabet: str, n: int, extra: int = 8) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=n, max_size=n + extra)


def _same(s: st.SearchStrategy[str]) -> st.SearchStrategy[Planted]:
    return s.map(lambda t: (t, t))


def _aws_secret(r: random.Random) -> str:
    """A secret access key as AWS makes them: 40 random base64 characters."""
    return "".join(r.choice(B64) for _ in range(40))


def _url(user: str, password: str, host: str) -> Planted:
    return f"https://{user}:{password}@{host}.example.com/org/repo.git", password


SHAPES: dict[str, st.SearchStrategy[Planted]] = {
    "hugging face": _same(_text(ALNUM, 34).map(lambda b: "hf_" + b)),
    "hugging face org": _same(_text(ALNUM, 34).map(lambda b: "api_org_" + b)),
    "github": _same(
        st.tuples(st.sampled_from("pousr"), _text(ALNUM, 36)).map(lambda t: f"gh{t[0]}_{t[1]}")
    ),
    "github pat": _same(_text(ALNUM + "_", 82).map(lambda b: "github_pat_" + b)),
    "gitlab": _same(_text(ALNUM + "_-", 20).map(lambda b: "glpat-" + b)),
    "aws access key": _same(
        st.tuples(st.sampled_from(["AKIA", "ASIA", "AROA"]), _text(UPPER_DIGITS, 16, 0)).map(
            "".join
        )
    ),
    "aws secret key": _same(st.randoms(use_true_random=True).map(_aws_secret)),
    "slack": _same(
        st.tuples(st.sampled_from("bpoa"), _text(string.digits, 10), _text(ALNUM, 24)).map(
            lambda t: f"xox{t[0]}-{t[1]}-{t[2]}"
        )
    ),
    "openai": _same(
        st.tuples(st.sampled_from(["", "proj-", "ant-api03-"]), _text(ALNUM, 40)).map(
            lambda t: f"sk-{t[0]}{t[1]}"
        )
    ),
    "stripe": _same(_text(ALNUM, 24).map(lambda b: "sk_live_" + b)),
    "google": _same(_text(ALNUM + "_-", 35, 0).map(lambda b: "AIza" + b)),
    "jwt": _same(
        st.tuples(*[_text(ALNUM + "_-", 16)] * 3).map(lambda t: f"eyJ{t[0]}.eyJ{t[1]}.{t[2]}")
    ),
    "bearer": st.tuples(_text(ALNUM + "._-", 16), st.sampled_from(string.digits)).map(
        lambda t: (f"Bearer {t[0]}{t[1]}", f"{t[0]}{t[1]}")
    ),
    "authorization": _text(ALNUM + "+/", 16).map(lambda t: (f"Authorization: Basic {t}", t)),
    "pem": _text(B64, 40).map(
        lambda b: (f"-----BEGIN RSA PRIVATE KEY-----\n{b}\n-----END RSA PRIVATE KEY-----", b)
    ),
    "url password with /": st.builds(
        _url,
        st.text(string.ascii_lowercase, min_size=1, max_size=8),
        st.tuples(_text(ALNUM, 6), _text(ALNUM + "/._~!$&*+,;=-", 6)).map("/".join),
        st.text(string.ascii_lowercase, min_size=1, max_size=8),
    ),
    "url token": _text(ALNUM, 16).map(lambda t: (f"https://{t}@github.com/org/repo", t)),
}
ANY_SECRET = st.one_of(*SHAPES.values())

# -- ordinary metadata ---------------------------------------------------------------------------

WORD = st.text(string.ascii_lowercase, min_size=1, max_size=12)
CAPITAL = st.from_regex(r"[A-Z][a-z]{1,10}[0-9]{0,3}", fullmatch=True)
# Names whose last word says secret (`password`, `hub_token`) are redacted by design, whatever
# their value: the ordinary names here never end in one of those words.
SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "passphrase",
                "credential", "credentials", "auth", "authorization", "bearer", "cookie"}  # fmt: skip
IDENT = (
    st.lists(WORD, min_size=1, max_size=4).filter(lambda w: w[-1] not in SECRET_WORDS).map("_".join)
)
SEGMENT = st.one_of(WORD, CAPITAL, IDENT, st.tuples(IDENT, WORD).map(".".join))
ORDINARY_STRING = st.one_of(
    st.binary(min_size=20, max_size=32).map(bytes.hex),  # commit ids, blake3 / sha digests
    st.binary(min_size=20, max_size=32).map(lambda b: b.hex().upper()),
    st.binary(min_size=6, max_size=6).map(bytes.hex),  # short ids
    st.tuples(st.sampled_from(["", "/", "./", "~/", "s3://bucket/", "file:///"]),
              st.lists(SEGMENT, min_size=1, max_size=8)).map(lambda t: t[0] + "/".join(t[1])),
    st.tuples(WORD, st.lists(st.one_of(WORD, CAPITAL), min_size=1, max_size=3),
              st.sampled_from(["7b", "70B", "1.3b", "base", "v2", "hf"])).map(
        lambda t: f"{t[0]}/{'-'.join(t[1])}-{t[2]}"),  # model names
    st.integers().map(str),
    st.floats(allow_nan=False).map(str),
    st.lists(st.one_of(WORD, CAPITAL), min_size=1, max_size=12).map(" ".join),  # messages
    st.datetimes().map(lambda d: d.isoformat()),
)  # fmt: skip
ORDINARY_VALUE = st.recursive(
    st.one_of(ORDINARY_STRING, st.integers(), st.floats(allow_nan=False), st.booleans()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(IDENT, inner, max_size=4)),
    max_leaves=12,
)


def _user(
    *, message: str | None = None, metrics: dict[str, float] | None = None,
    params: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
    allow: Any = None,
) -> metadata.UserFields:  # fmt: skip
    return metadata.scrub_user(
        message=message, metrics=metrics or {}, params=params or {}, data=data or {},
        allow_secrets=allow,
    )  # fmt: skip


@given(st.dictionaries(IDENT, ORDINARY_VALUE, max_size=6), ORDINARY_STRING,
       st.dictionaries(ORDINARY_STRING, st.floats(allow_nan=False), max_size=4))  # fmt: skip
def test_ordinary_metadata_passes_through_unchanged(
    params: dict[str, Any], text: str, metrics: dict[str, float]
) -> None:
    assert redact(text) == text and find_secrets(text) == []
    assert metadata.scrub(params) == metadata.scrub(params) == _plain(params)
    assert metadata.redact_argv(["train.py", text, f"--out={text}"]) == [
        "train.py", text, f"--out={text}"
    ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", SecretRedactedWarning)
        user = _user(message=text, metrics=metrics, params=params, data=params)
    assert user == (text, metrics, _plain(params), _plain(params))


def _plain(value: Any) -> Any:
    """``value`` as stored: tuples become lists (as msgpack stores them)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


LEFT = st.sampled_from([" ", "=", ": ", "\n", "(", "[", "{", "'", '"', ", ", "\t", "/"])
RIGHT = st.sampled_from([" ", "\n", ")", "]", "}", "'", '"', ",", "; ", ". ", "\t"])
SENTENCE = st.lists(WORD, max_size=4).map(" ".join)


@st.composite
def embedded(draw: st.DrawFn) -> tuple[str, str]:
    """An ordinary sentence with a secret of some shape inside it, and the secret part."""
    text, secret = draw(ANY_SECRET)
    if draw(st.booleans()):
        return text, secret
    return draw(SENTENCE) + draw(LEFT) + text + draw(RIGHT) + draw(SENTENCE), secret


def _everywhere(text: str) -> list[tuple[str, Any]]:
    """Every field the ledger stores, holding ``text``: where, and what would be stored."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecretRedactedWarning)
        user = _user(
            message=text,
            metrics={f"eval/{text}": 1.0},
            params={"run_name": text, "nested": {"list": [1, text]}, text: 3},
            data={"source": text},
        )
    return [
        ("redact", redact(text)),
        ("argv", metadata.redact_argv(["train.py", text, f"--note={text}", "--x", text])),
        ("captured", metadata.scrub({"data": {"k": [text]}})),
        ("user fields", user),
    ]


@given(embedded())
def test_every_secret_shape_is_caught_wherever_it_is_embedded(case: tuple[str, str]) -> None:
    text, secret = case
    assert find_secrets(text), "no secret found"
    for where, stored in _everywhere(text):
        assert secret not in repr(stored), f"{secret!r} survived in {where}: {stored!r}"


@given(st.sampled_from(sorted(SHAPES)).flatmap(lambda k: st.tuples(st.just(k), SHAPES[k])))
def test_each_shape_is_named_in_the_warning_but_never_shown(case: tuple[str, Planted]) -> None:
    _, (text, secret) = case
    with pytest.warns(SecretRedactedWarning) as record:
        user = _user(params={"comment": f"see {text} here"})
    comment = user.params["comment"]
    assert comment.startswith("see ") and comment.endswith(" here") and secret not in comment
    shown = " ".join(str(w.message) for w in record)
    assert "'comment'" in shown and secret not in shown
    assert record[0].message.fields == ["comment"]  # type: ignore[union-attr]


# -- the rules one by one ------------------------------------------------------------------------

HF = "hf_" + "aB3dE5" * 6
GH = "ghp_" + "Zq9" * 12
AWS_ID = "AKIAIOSFODNN7EXAMPLZ"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_argv_values_after_secret_flags_and_bare_tokens_are_redacted() -> None:
    argv = [
        "train.py", "--wandb-key", "k" * 12, "--auth", "a" * 12, "--auth-token=t1",
        "--hubToken", "c" * 9, HF, f"--resume={GH}", f"HF_TOKEN={'s' * 10}",
        "--header", "Authorization: Bearer abc123def456ghi", "--aws", AWS_SECRET,
        "--max-tokens", "512", "--tokenizer", "gpt2", "--pad-token", "<pad>", "--lr", "3",
        "--monkey", "george",
    ]  # fmt: skip
    assert metadata.redact_argv(argv) == [
        "train.py", "--wandb-key", "<redacted>", "--auth", "<redacted>", "--auth-token=<redacted>",
        "--hubToken", "<redacted>", "<redacted>", "--resume=<redacted>", "HF_TOKEN=<redacted>",
        "--header", "Authorization: Bearer <redacted>", "--aws", "<redacted>",
        "--max-tokens", "512", "--tokenizer", "gpt2", "--pad-token", "<pad>", "--lr", "3",
        "--monkey", "george",
    ]  # fmt: skip


def test_names_decide_by_their_last_word() -> None:
    secret = ["--token", "hub_token", "apiKey", "WANDB_API_KEY", "--wandb-key", "auth", "password",
              "db.password", "aws_secret_access_key", "client_secret", "--credentials"]  # fmt: skip
    ordinary = ["max_tokens", "tokenizer", "token_embedding", "pad_token", "eos_token", "keys",
                "monkey", "num_keys", "lr", "authors", "secretary", "hub_model_id"]  # fmt: skip
    assert [n for n in secret if not is_secret_name(n)] == []
    assert [n for n in ordinary if is_secret_name(n)] == []


def test_a_git_origin_whose_password_holds_a_slash_loses_it() -> None:
    for url, kept in [
        (
            "https://alice:pa/ss@git.example.com/org/repo.git",
            "https://git.example.com/org/repo.git",
        ),
        ("https://alice:a/b/c@host/x", "https://host/x"),
        ("https://:tok/en@host/x", "https://host/x"),
        ("https://ghp_tok@github.com/org/r", "https://github.com/org/r"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("https://registry.example.com/@scope/pkg", "https://registry.example.com/@scope/pkg"),
    ]:
        assert strip_url_credentials(url) == kept


@pytest.fixture
def fresh_capture() -> Iterator[None]:
    """Capture code and environment again in this test (they are cached once per process)."""
    for cached in (metadata.code_info, metadata.environment_info):
        cached.cache_clear()
    yield
    for cached in (metadata.code_info, metadata.environment_info):
        cached.cache_clear()


def test_token_values_under_innocent_environment_names_are_redacted(
    fresh_capture: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JOB_COMMENT", f"run {GH}")
    monkeypatch.setenv("HF_ENDPOINT", "https://bob:pw/x@hub.example.com")
    monkeypatch.setenv("CUDA_LAUNCH_NOTE", AWS_ID)
    monkeypatch.setenv("HF_HOME", "/tmp/hf-home-kept")
    monkeypatch.setenv("HF_TOKEN", HF)
    env = metadata.environment_info()["env"]
    assert env["SLURM_JOB_COMMENT"] == "run <redacted>"
    assert env["HF_ENDPOINT"] == "https://hub.example.com"
    assert env["CUDA_LAUNCH_NOTE"] == "<redacted>"
    assert env["HF_HOME"] == "/tmp/hf-home-kept"
    assert "HF_TOKEN" not in env


def test_user_fields_are_redacted_with_a_warning_unless_allowed_by_name(lg: Ledger) -> None:
    with pytest.warns(SecretRedactedWarning, match="allow_secrets=") as record:
        c = lg.commit(
            {"w": torch.ones(2)},
            f"pushed with {HF}",
            metrics={"loss": 0.5, f"x/{GH}": 2.0},
            params={"lr": 0.1, "hub_token": "plain-words!", "pad_token": "<pad>",
                    "optim": {"url": "https://u:p/w@h/x"}, "keys": [AWS_ID], "n": 3},
            data={"source": f"s3://{AWS_ID}:{AWS_SECRET}@bucket/x", "tokenizer": "gpt2"},
        )  # fmt: skip
    assert len(record) == 1
    assert record[0].message.fields == [  # type: ignore[union-attr]
        "data.source", "hub_token", "keys.0", "message", "optim.url", "x/<redacted>"
    ]  # fmt: skip
    assert c.message == "pushed with <redacted>"
    assert c.metrics == {"loss": 0.5, "x/<redacted>": 2.0}
    assert c.params == {"lr": 0.1, "hub_token": "<redacted>", "pad_token": "<pad>",
                        "optim": {"url": "https://h/x"}, "keys": ["<redacted>"], "n": 3}  # fmt: skip
    assert c.meta["data"] == {"source": "s3://bucket/x", "tokenizer": "gpt2"}
    assert lg.get(c.id).params == c.params  # as stored, not only as returned

    with warnings.catch_warnings():
        warnings.simplefilter("error", SecretRedactedWarning)
        kept = lg.commit(
            {"w": torch.ones(2)},
            f"note {HF}",
            metrics={f"x/{GH}": 1.0},
            params={"hub_token": "plain-words!", "optim": {"url": "https://u:p@h/x"}},
            data={"source": f"s3://k:{AWS_SECRET}@b/x"},
            allow_secrets=["hub_token", "optim", f"metrics.x/{GH}", "message", "data.source"],
        )
    assert kept.message == f"note {HF}" and kept.metrics == {f"x/{GH}": 1.0}
    assert kept.params == {"hub_token": "plain-words!", "optim": {"url": "https://u:p@h/x"}}
    assert kept.meta["data"] == {"source": f"s3://k:{AWS_SECRET}@b/x"}
    with pytest.warns(SecretRedactedWarning):  # a name allows only itself and what is below it
        other = lg.commit({"w": torch.ones(2)}, params={"hub_tokens": HF}, allow_secrets="hub")
    assert other.params == {"hub_tokens": "<redacted>"}
    with pytest.raises(UnsupportedValueError, match="allow_secrets"):
        lg.commit({"w": torch.ones(2)}, allow_secrets=[3])  # type: ignore[list-item]


def test_a_staged_commit_redacts_and_allows_alike(lg: Ledger) -> None:
    with lg.stage() as stage:
        with pytest.warns(SecretRedactedWarning):
            c = stage.commit({"w": stage.write(torch.ones(2))}, params={"t": HF})
        kept = stage.commit({"w": torch.ones(1)}, params={"t": HF}, allow_secrets=["t"])
    assert c.params == {"t": "<redacted>"} and kept.params == {"t": HF}


# -- end to end: search every stored byte ------------------------------------------------------


def _remote_bytes(root: Path) -> list[bytes]:
    """Every file of a directory remote plus every object of its packs, decoded."""
    blobs = list(tree_bytes(root).values())
    packs = sorted(root.rglob("*.pack"))
    assert packs, "the remote holds no pack: nothing was pushed"
    for pack in packs:
        data = pack.read_bytes()
        for e in read_pack_index(pack):
            blobs.append(bytes(decode_object(e, data[e.offset : e.offset + e.length], pack.name)))
    return blobs


def _planted(r: random.Random) -> dict[str, str]:
    def body(n: int) -> str:
        return "".join(r.choice(ALNUM) for _ in range(n))

    return {
        "url password": f"{body(8)}/{body(8)}",
        "wandb flag": body(24),
        "auth flag": body(24),
        "bare hf": "hf_" + body(34),
        "bearer": body(30) + "7",
        "HF_TOKEN= arg": body(24),
        "env HF_TOKEN": "hf_" + body(34),
        "env WANDB_API_KEY": body(40),
        "env innocent github": "ghp_" + body(36),
        "env innocent aws id": "AKIA" + "".join(r.choice(UPPER_DIGITS) for _ in range(16)),
        "env endpoint password": f"{body(6)}/{body(10)}",
        "param named token": body(20),
        "param aws secret": _aws_secret(r),
        "param openai": "sk-proj-" + body(48),
        "message slack": f"xoxb-{r.randrange(10**11)}-{body(24)}",
        "metric jwt": f"eyJ{body(20)}.eyJ{body(20)}.{body(20)}",
        "data gitlab": "glpat-" + body(20),
        "data google": "AIza" + body(35),
        "pem": body(48),
    }


def test_planted_secrets_of_every_kind_are_in_no_file_and_no_object_here_or_on_a_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_capture: None
) -> None:
    p = _planted(random.SystemRandom())
    control = "hf_" + "".join(random.SystemRandom().choice(ALNUM) for _ in range(34))
    origin = f"https://alice:{p['url password']}@git.example.com/org/repo.git"
    monkeypatch.chdir(git_repo(tmp_path / "repo", origin))
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--wandb-key", p["wandb flag"], "--auth", p["auth flag"], p["bare hf"],
        "--header", f"Authorization: Bearer {p['bearer']}", f"HF_TOKEN={p['HF_TOKEN= arg']}",
        "--max-tokens", "512",
    ])  # fmt: skip
    monkeypatch.setenv("HF_TOKEN", p["env HF_TOKEN"])
    monkeypatch.setenv("WANDB_API_KEY", p["env WANDB_API_KEY"])
    monkeypatch.setenv("SLURM_JOB_COMMENT", p["env innocent github"])
    monkeypatch.setenv("CUDA_NOTE", f"key {p['env innocent aws id']}")
    monkeypatch.setenv("HF_ENDPOINT", f"https://bob:{p['env endpoint password']}@hub.example.com")
    monkeypatch.setenv("HF_HOME", "/tmp/hf-home-kept")

    lg = Ledger.open(tmp_path / "ckpt", create=True, fsync=False)
    with lg, pytest.warns(SecretRedactedWarning):
        lg.commit(
            {"model": torch.nn.Linear(3, 2)},
            f"notify {p['message slack']}",
            step=1,
            metrics={"loss": 1.0, f"eval/{p['metric jwt']}": 2.0},
            params={
                "lr": 0.1,
                "hub_token": p["param named token"],
                "aws": {"secret": p["param aws secret"]},
                "run_name": f"run {p['param openai']}",
                "key_file": f"-----BEGIN PRIVATE KEY-----\n{p['pem']}\n-----END PRIVATE KEY-----",
                "note": control,
            },
            data={"dataset": f"gitlab {p['data gitlab']}", "api": p["data google"]},
            allow_secrets=["note"],
        )
        meta = lg.head.meta  # type: ignore[union-attr]
        lg.remote_add("origin", str(tmp_path / "remote"))
        lg.push("origin")

    for where, blobs in [
        ("ledger", stored_byte_strings(tmp_path / "ckpt")),
        ("remote", _remote_bytes(tmp_path / "remote")),
    ]:
        # the control, kept by allow_secrets=, is found by the same search
        assert any(control.encode() in b for b in blobs), f"the search cannot see the {where}"
        leaked = [name for name, value in p.items() if any(value.encode() in b for b in blobs)]
        assert leaked == [], f"leaked into the {where}"
    # What should be there is there.
    assert meta["code"]["git"]["remote"] == "https://git.example.com/org/repo.git"
    assert meta["code"]["argv"] == [
        "train.py", "--wandb-key", "<redacted>", "--auth", "<redacted>", "<redacted>",
        "--header", "Authorization: Bearer <redacted>", "HF_TOKEN=<redacted>", "--max-tokens", "512",
    ]  # fmt: skip
    env = meta["env"]["env"]
    assert env["HF_HOME"] == "/tmp/hf-home-kept" and env["CUDA_NOTE"] == "key <redacted>"
    assert "HF_TOKEN" not in env and "WANDB_API_KEY" not in env


def test_transformers_arguments_reach_the_ledger_scrubbed(lg: Ledger, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import TrainingArguments

    from ledger.adapters._common import plain_params

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), hub_token=HF, run_name=f"run {GH}", report_to=[],
        use_cpu=True, hub_model_id="https://bob:pw/x@hub.example.com/org/m",
    )  # fmt: skip
    with pytest.warns(SecretRedactedWarning) as record:
        c = lg.commit({"w": torch.ones(1)}, params=plain_params(args.to_dict()))
    assert c.params["hub_token"] == "<HUB_TOKEN>"  # HF's own placeholder: kept, no warning for it
    assert c.params["run_name"] == "run <redacted>"
    assert c.params["hub_model_id"] == "https://hub.example.com/org/m"
    assert record[0].message.fields == ["hub_model_id", "run_name"]  # type: ignore[union-attr]
    assert HF not in repr(c.params) and GH not in repr(c.params)
