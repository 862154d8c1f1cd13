"""Token shapes and redaction: how the ledger recognises a secret in a string.

This module owns the rules (docs/metadata.md, "Secrets never enter
metadata") that every captured string and every user-given metadata field
(``params=``, metric names, messages, ``data=``) goes through before it is
stored: credentials in URLs, the shapes of well-known tokens (Hugging Face,
GitHub, GitLab, AWS access and secret keys, Slack, OpenAI-style ``sk-``
keys, Stripe, Google, npm, PyPI, JWTs, bearer/authorization headers, PEM
private keys), and names that say their value is secret (``hub_token``,
``--wandb-key``, ``HF_TOKEN``). It knows nothing of commits: it maps
strings to strings and says what it found.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

REDACTED = "<redacted>"

_L = r"(?<![A-Za-z0-9])"  # a token starts at a word boundary (``_``, ``=``, ``/``, space ...)
_R = r"(?![A-Za-z0-9])"

#: (kind, pattern): the whole match is a secret.
_SHAPES: list[tuple[str, re.Pattern[str]]] = [
    ("a PEM private key", re.compile(
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*)",
        re.S,
    )),
    ("a Hugging Face token", re.compile(_L + r"(?:hf|api_org)_[A-Za-z0-9]{30,}")),
    ("a GitHub token", re.compile(
        _L + r"(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"
    )),
    ("a GitLab token", re.compile(_L + r"glpat-[A-Za-z0-9_-]{20,}")),
    ("an AWS access key id", re.compile(
        r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)"
        r"[A-Z0-9]{16}(?![A-Z0-9])"
    )),
    ("a Slack token", re.compile(
        _L + r"(?:xox[abposre]-[A-Za-z0-9-]{10,}|xapp-[0-9]-[A-Za-z0-9-]{10,})"
    )),
    ("a Slack webhook", re.compile(r"hooks\.slack\.com/services/[A-Za-z0-9/_-]+")),
    ("a Stripe key", re.compile(_L + r"[sr]k_(?:live|test)_[A-Za-z0-9]{16,}")),
    ("an OpenAI-style key", re.compile(
        _L + r"sk-[A-Za-z0-9_-]*[A-Za-z0-9]{20}[A-Za-z0-9_-]*"
    )),
    ("a Google API key", re.compile(_L + r"AIza[0-9A-Za-z_-]{35}")),
    ("an npm token", re.compile(_L + r"npm_[A-Za-z0-9]{36}")),
    ("a PyPI token", re.compile(_L + r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{16,}")),
    ("a JSON web token", re.compile(
        _L + r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    )),
]  # fmt: skip

#: (kind, pattern): group 1 of a match is the secret (the words around it stay).
_CONTEXT: list[tuple[str, re.Pattern[str]]] = [
    ("an authorization header", re.compile(
        r"(?i)\b(?:proxy-)?authori[sz]ation\b[\"']?\s*[:=]\s*[\"']?"
        r"(?:(?:basic|bearer|token|digest)\s+)?([^\s\"',;]{6,})"
    )),
    ("a bearer token", re.compile(r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]*[0-9][A-Za-z0-9._~+/-]*=*)")),
    ("an AWS secret access key", re.compile(
        r"(?i)aws[A-Za-z0-9_.-]{0,30}(?:secret|key)[A-Za-z0-9_.-]{0,20}[\"']?\s*[:=]\s*[\"']?"
        r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
    )),
]  # fmt: skip

# A bare 40-character AWS secret access key: 40 base64 letters that are a whole run of them, or
# a whole part of one between ``/`` (``s3://bucket/<key>``), not glued to a name (``run_2``,
# ``.pt``) and not a path of words.
_B64_RUN = re.compile(r"[A-Za-z0-9/+]{40,}")
_GLUED_RIGHT = re.compile(r"^(?:[=_-]|\.\w)")
_PATH_SEGMENT = re.compile(r"[A-Z]?[a-z]+(?:[A-Z][a-z]{2,})*[0-9]*|[a-z0-9]+|[A-Z0-9]{1,8}|")
_CAMEL_WORDS = re.compile(r"(?:[A-Z][a-z]+)+")

# ``scheme://user:password@`` (the password may hold ``/``) and ``scheme://token@``.
_URL_CRED = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^\s@/?#:]*:[^\s@]*|[^\s@/?#:]+)@")

# Names (environment variables): any of these words anywhere, any case.
_SECRET_ENV_NAME = re.compile(
    r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|PRIVATE|SESSION|COOKIE", re.I
)
# Names (flags, params, mapping keys): the last word says secret. ``max_tokens``,
# ``tokenizer`` and ``token_embedding`` do not; ``hub_token``, ``wandb-key``, ``apiKey`` do.
_SECRET_WORD = re.compile(
    r"(?:^|[_.\s-])(?:api[_-]?key|apikey|access[_-]?key|secret[_-]?key|private[_-]?key|key|"
    r"token|secret|password|passwd|passphrase|credentials?|auth|authorization|bearer|cookie|"
    r"session[_-]?(?:id|key|token))$"
)
# Tokenizer settings named ``*_token`` hold vocabulary, not credentials.
_VOCAB_TOKEN = re.compile(
    r"(?:^|[_.\s-])(?:pad|eos|bos|unk|sep|cls|mask|start|end|decoder[_-]start|special)[_-]token$"
)
# Placeholders, not credentials: ``<pad>``, ``[MASK]``, HF's ``<HUB_TOKEN>``, ``***``, empty.
_PLACEHOLDER = re.compile(r"\s*(?:<[^<>]*>|\[[^\[\]]*\]|\*+|none|null)?\s*", re.I)


def _words(name: str) -> str:
    """``hubToken`` / ``--Hub-Token`` -> ``hub_token`` (camelCase split, lowercased)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.lstrip("-")).lower()


def is_secret_env_name(name: str) -> bool:
    """Whether an environment variable name looks like it holds a secret (a broad rule).

    Example:
        >>> is_secret_env_name("HF_TOKEN"), is_secret_env_name("CUDA_VISIBLE_DEVICES")
        (True, False)
    """
    return bool(_SECRET_ENV_NAME.search(name))


def is_secret_name(name: str) -> bool:
    """Whether a flag, parameter or mapping key says its value is a secret.

    The last word decides, so counts and tokenizer settings pass.

    Example:
        >>> [is_secret_name(n) for n in ("--wandb-key", "hubToken", "max_tokens", "pad_token")]
        [True, True, False, False]
    """
    words = _words(name)
    return bool(_SECRET_WORD.search(words)) and not _VOCAB_TOKEN.search(words)


def looks_like_credential(value: str) -> bool:
    """Whether a string under a secret-named key could be a credential: anything but a
    placeholder (empty, ``"<pad>"``, ``"[MASK]"``, HF's ``"<HUB_TOKEN>"``, ``"***"``, ``"none"``).

    Example:
        >>> looks_like_credential("s3cr3t-v4lue"), looks_like_credential("<HUB_TOKEN>")
        (True, False)
    """
    return not _PLACEHOLDER.fullmatch(value)


def _aws_secret(candidate: str) -> bool:
    if not (re.search(r"[A-Z]", candidate) and re.search(r"[a-z]", candidate)):
        return False  # hex digests, commit ids
    if "/" in candidate and all(_PATH_SEGMENT.fullmatch(s) for s in candidate.split("/")):
        return False  # a path of words
    return not _CAMEL_WORDS.fullmatch(candidate)


def _spans(text: str) -> tuple[tuple[int, int, str], ...]:
    """The merged spans of secrets in ``text``: every commit scrubs the same metadata strings
    again (~1 ms a commit), so short texts' answers are remembered."""
    return _spans_cached(text) if len(text) <= SPANS_CACHED_CHARS else _find_spans(text)


SPANS_CACHED_CHARS = 4096


@functools.lru_cache(maxsize=2048)
def _spans_cached(text: str) -> tuple[tuple[int, int, str], ...]:
    return _find_spans(text)


def _find_spans(text: str) -> tuple[tuple[int, int, str], ...]:
    spans: list[tuple[int, int, str]] = []
    for kind, pattern in _SHAPES:
        spans += [(m.start(), m.end(), kind) for m in pattern.finditer(text)]
    for kind, pattern in _CONTEXT:
        spans += [(m.start(1), m.end(1), kind) for m in pattern.finditer(text)]
    for m in _B64_RUN.finditer(text):
        run, base = m.group(), m.start()
        starts = [0] if base == 0 or text[base - 1] not in "_.-" else []
        starts += [i + 1 for i, c in enumerate(run) if c == "/"]
        for start in starts:
            end = start + 40
            if end < len(run) and run[end] != "/":
                continue
            if end == len(run) and _GLUED_RIGHT.match(text[m.end() : m.end() + 2]):
                continue
            if end <= len(run) and _aws_secret(run[start:end]):
                spans.append((base + start, base + end, "an AWS secret access key"))
    spans.sort()
    merged: list[tuple[int, int, str]] = []
    for start, end, kind in spans:
        if merged and start < merged[-1][1]:
            s, e, k = merged[-1]
            merged[-1] = (s, max(e, end), k)
        else:
            merged.append((start, end, kind))
    return tuple(merged)


def find_secrets(text: str) -> list[str]:
    """What secrets ``text`` holds (their kinds, in order; empty when none).

    Example:
        >>> find_secrets("push https://bob:pw@host/x with hf_" + "a1B2" * 9)
        ['URL credentials', 'a Hugging Face token']
    """
    kinds = ["URL credentials"] * len(_URL_CRED.findall(text))
    return kinds + [kind for _, _, kind in _spans(_URL_CRED.sub(r"\1", text))]


def strip_url_credentials(text: str) -> str:
    """Remove ``user:password@`` (the password may contain ``/``) and ``token@`` from every URL.

    Example:
        >>> strip_url_credentials("https://user:p/w@github.com/org/repo.git")
        'https://github.com/org/repo.git'
    """
    return _URL_CRED.sub(r"\1", text)


def redact(text: str, found: Callable[[str], None] | None = None) -> str:
    """``text`` without URL credentials and with every token-shaped part replaced by ``<redacted>``.

    Args:
        text: any string.
        found: called with the kind of each secret removed.

    Example:
        >>> redact("key AKIAABCDEFGHIJKLMNOP for s3://k:s@bucket/run")
        'key <redacted> for s3://bucket/run'
    """
    stripped = strip_url_credentials(text)
    if found is not None and stripped != text:
        for _ in _URL_CRED.findall(text):
            found("URL credentials")
    out: list[str] = []
    at = 0
    for start, end, kind in _spans(stripped):
        out += [stripped[at:start], REDACTED]
        at = end
        if found is not None:
            found(kind)
    out.append(stripped[at:])
    return "".join(out)


__all__ = [
    "REDACTED",
    "find_secrets",
    "is_secret_env_name",
    "is_secret_name",
    "looks_like_credential",
    "redact",
    "strip_url_credentials",
]
