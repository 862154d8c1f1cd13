"""Which remotes a ledger knows: names, URLs, and opening a backend for a URL.

This module owns ``<ledger>/remotes/config.json`` (msgspec ``RemotesConfig``:
remote name -> URL, and whether the ledger is shallow) and the URL rules: a
path or ``file://`` (directory), ``hf://user/repo`` (the Hub), any other
``scheme://`` fsspec knows (``s3://bucket/prefix`` ...). It refuses a URL that
carries a credential (user:password@, or a token/key/signature in the query):
credentials come from each client's own configuration and must never be
written into a ledger. A remote may name *which* of the client's credentials
to use (a stored Hub token's name, an AWS profile); only that name is kept.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import msgspec

from ledger.errors import RecordTooLargeError, RemoteError, RemoteURLError
from ledger.objects.durable import atomic_write, read_bounded
from ledger.objects.safepath import check_inside
from ledger.remotes.base import Remote, RetryingRemote

REMOTES_DIR = "remotes"
CONFIG_FILE = "config.json"
#: The largest remotes config read (a few hundred bytes per remote).
MAX_CONFIG_BYTES = 16 << 20
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SECRET_WORDS = ("token", "key", "secret", "password", "passwd", "signature", "credential", "auth")


class RemoteEntry(msgspec.Struct, frozen=True, omit_defaults=True):
    """One configured remote: its URL and, optionally, which credential of the client to use.

    ``hf_token_name`` names one of the tokens ``huggingface_hub`` stores
    (``hf auth login``); ``aws_profile`` an AWS profile (``~/.aws/config``).
    Only the names are kept, never a token or key.
    """

    url: str
    hf_token_name: str | None = None
    aws_profile: str | None = None


class RemotesConfig(msgspec.Struct, tag="remotes", kw_only=True):
    """``<ledger>/remotes/config.json``."""

    format: int = 1
    remotes: dict[str, RemoteEntry] = {}
    #: cloned with a depth: pulls fetch only the new tip's state
    shallow: bool = False


_decoder = msgspec.json.Decoder(RemotesConfig)


def check_remote_name(name: str) -> str:
    """Validate a remote name (letters, digits, ``._-``; no ``/``).

    Example:
        >>> check_remote_name("origin")
        'origin'
    """
    if not _NAME_RE.match(name) or name.endswith((".", ".lock")):
        raise RemoteError(
            f"remote name {name!r} is not valid: use letters, digits and . _ - (no '/')"
        )
    return name


def check_url(url: str) -> str:
    """Refuse URLs that carry credentials or name no supported kind; return the URL.

    Example:
        >>> check_url("s3://bucket/runs/bert")
        's3://bucket/runs/bert'
    """
    url = url.strip()
    if not url:
        raise RemoteURLError("a remote URL is empty")
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise RemoteURLError(
            f"remote URL for {parts.scheme}://{parts.hostname or ''}... carries a user or password: "
            "leave credentials to the client's own settings (AWS profile, HF_TOKEN, ...), "
            "they must never be stored in the ledger"
        )
    for key, _ in parse_qsl(parts.query, keep_blank_values=True):
        if any(word in key.lower() for word in _SECRET_WORDS):
            raise RemoteURLError(
                f"remote URL has a {key!r} query parameter, which looks like a credential: "
                "configure it in the client's settings instead"
            )
    if parts.scheme == "hf" and len([p for p in (parts.netloc + parts.path).split("/") if p]) != 2:
        raise RemoteURLError(f"{url!r}: a Hub remote is hf://<user or org>/<repo>")
    return url


def open_remote(url: str, entry: RemoteEntry | None = None) -> Remote:
    """A backend for ``url`` (see the module docstring), retried on transient faults.

    ``entry`` (a configured remote) says which credential of the client to use.

    Example:
        >>> open_remote("/tmp/ledger-remote").url
        '/tmp/ledger-remote'
    """
    return RetryingRemote(_backend(check_url(url), entry or RemoteEntry(url=url)))


def check_credential_names(entry: RemoteEntry) -> RemoteEntry:
    """Refuse a token name or profile that does not fit the URL or that the client lacks.

    Example:
        >>> check_credential_names(RemoteEntry(url="/tmp/r")).url
        '/tmp/r'
    """
    scheme = entry.url.split("://", 1)[0].lower() if "://" in entry.url else ""
    if entry.hf_token_name is not None:
        if scheme != "hf":
            raise RemoteURLError(
                f"--hf-token-name applies to Hub remotes (hf://...), not {entry.url!r}"
            )
        from ledger.remotes.hub_auth import stored_token

        stored_token(entry.hf_token_name, entry.url)
    if entry.aws_profile is not None:
        if scheme not in ("s3", "s3a"):
            raise RemoteURLError(
                f"--aws-profile applies to S3 remotes (s3://...), not {entry.url!r}"
            )
        import botocore.session

        profiles = botocore.session.Session().available_profiles
        if entry.aws_profile not in profiles:
            from ledger.errors import RemoteAuthError

            known = ", ".join(sorted(profiles)) or "none"
            raise RemoteAuthError(
                f"no AWS profile named {entry.aws_profile!r} (known: {known}); add it to "
                "~/.aws/config (`aws configure --profile NAME`) or pick another with --aws-profile",
                url=entry.url,
            )
    return entry


def _backend(url: str, entry: RemoteEntry) -> Remote:
    if "://" not in url:
        from ledger.remotes.local import DirectoryRemote

        return DirectoryRemote(Path(url).expanduser().absolute(), url=url)
    scheme = url.split("://", 1)[0].lower()
    if scheme == "file":
        from ledger.remotes.local import DirectoryRemote

        return DirectoryRemote(Path(urlsplit(url).path), url=url)
    if scheme == "hf":
        from ledger.remotes.hub import HubRemote

        return HubRemote(url, token_name=entry.hf_token_name)
    import fsspec

    try:
        fsspec.get_filesystem_class(scheme)
    except (ValueError, ImportError) as e:
        raise RemoteURLError(f"{url!r}: no filesystem for {scheme}:// ({e})") from e
    from ledger.remotes.fs import FsspecRemote

    options = {"profile": entry.aws_profile} if entry.aws_profile else {}
    return FsspecRemote(url, **options)


def split_url_rev(text: str) -> tuple[str, str | None]:
    """``"hf://me/run@main"`` -> ``("hf://me/run", "main")``; no ``@``: the remote's head.

    Example:
        >>> split_url_rev("s3://b/p@v1"), split_url_rev("s3://b/p")
        (('s3://b/p', 'v1'), ('s3://b/p', None))
    """
    scheme, _, rest = text.partition("://")
    if "@" in rest:
        body, _, rev = rest.rpartition("@")
        return f"{scheme}://{body}", rev or None
    return text, None


def config_path(root: Path) -> Path:
    """Where a ledger's remote settings live."""
    return check_inside(root, root / REMOTES_DIR / CONFIG_FILE)


def load_config(root: Path) -> RemotesConfig:
    """The ledger's remote settings (empty when none were made)."""
    path = config_path(root)
    try:
        return _decoder.decode(read_bounded(path, MAX_CONFIG_BYTES))
    except FileNotFoundError:
        return RemotesConfig()
    except (RecordTooLargeError, msgspec.DecodeError) as e:
        raise RemoteError(f"{path} is damaged ({e}); fix or delete it") from e


def save_config(root: Path, config: RemotesConfig, tmp_dir: Path) -> None:
    """Write the settings atomically (the caller holds the ledger's write lock)."""
    path = config_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path, msgspec.json.format(msgspec.json.encode(config)) + b"\n", fsync=True, tmp_dir=tmp_dir
    )


def cache_dir(root: Path, name: str) -> Path:
    """Where the refs and index files last read from remote ``name`` are cached."""
    return check_inside(root, root / REMOTES_DIR / check_remote_name(name))
