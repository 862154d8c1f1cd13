"""Who a Hub remote writes as: picking a stored token by name and checking it before a write.

This module owns two rules. A Hub remote may name one of the tokens
``huggingface_hub`` keeps (``hf auth login`` stores several, each under a
name, in ``$HF_HOME/stored_tokens``); the ledger keeps only that *name* and
reads the token from the client's store each time it opens the remote. And
before a push or a release writes anything, the token is checked with the
Hub's ``whoami``: a missing, invalid or read-only token fails early with one
clear error, instead of half-way through an upload. Nothing here stores,
logs or passes on a token beyond the ``HfApi`` client it is handed to.
"""

from __future__ import annotations

from typing import Any

from ledger.errors import RemoteAuthError

#: What to tell a user who has no usable token.
LOGIN_HINT = "set HF_TOKEN or run `hf auth login` (a token with write access)"


def stored_token_names() -> list[str]:
    """The names of the tokens ``huggingface_hub`` has stored (``hf auth login``), sorted.

    Example:
        >>> isinstance(stored_token_names(), list)
        True
    """
    from huggingface_hub.utils import get_stored_tokens

    return sorted(get_stored_tokens())


def stored_token(name: str, url: str | None = None) -> str:
    """The token ``huggingface_hub`` stores under ``name``.

    Raises:
        RemoteAuthError: no stored token has that name (the message lists the names).

    Example:
        >>> stored_token("work")  # doctest: +SKIP
        'hf_...'
    """
    from huggingface_hub.utils import get_stored_tokens

    tokens = get_stored_tokens()
    token = tokens.get(name)
    if not token:
        known = ", ".join(sorted(tokens)) or "none"
        raise RemoteAuthError(
            f"no Hugging Face token is stored under the name {name!r} (stored: {known}); "
            f"run `hf auth login` and name the token {name!r}, or pick another with "
            "--hf-token-name",
            url=url,
        )
    return token


def check_write_token(api: Any, token: str | None, repo_id: str, url: str) -> str:
    """Ask the Hub who ``token`` is (``whoami``) and refuse one that cannot write to ``repo_id``.

    ``token`` None means the client's own default (``HF_TOKEN``, the saved login).
    Returns the user name the token belongs to.

    Raises:
        RemoteAuthError: no token at all, the Hub rejects it (401), or it is read-only
            (a ``read`` token, or a fine-grained one without write access to the repo's owner).

    Example:
        >>> check_write_token(HfApi(), None, "me/run", "hf://me/run")  # doctest: +SKIP
        'me'
    """
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import get_token

    if token is None and not get_token():
        raise RemoteAuthError(f"no Hugging Face token for {url}: {LOGIN_HINT}", url=url)
    try:
        me = api.whoami(token=token)
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise RemoteAuthError(
                f"the Hub rejects the token used for {url} (HTTP {status}: invalid or expired); "
                f"{LOGIN_HINT}",
                url=url,
            ) from None
        raise
    owner = repo_id.split("/", 1)[0]
    if not _can_write(me, owner, repo_id):
        who = me.get("name", "?")
        raise RemoteAuthError(
            f"the token used for {url} (user {who!r}) is read-only for {owner!r}: nothing was "
            f"written; use a token with write access ({LOGIN_HINT}, or --hf-token-name)",
            url=url,
        )
    return str(me.get("name", ""))


def _can_write(me: dict[str, Any], owner: str, repo_id: str) -> bool:
    """Whether a ``whoami`` answer shows write access to ``repo_id`` (owned by ``owner``).

    A classic token has ``role`` ``read`` or ``write`` (and an org membership may be
    read-only); a fine-grained one lists scoped permissions per entity (a user, an
    org or one repo). An answer this does not recognise is let through: the Hub
    itself still refuses the write, with its own message.
    """
    auth = me.get("auth") or {}
    access = auth.get("accessToken") or {}
    role = access.get("role")
    if role == "read":
        return False
    if role == "fineGrained":
        scoped = (access.get("fineGrained") or {}).get("scoped") or []
        return any(
            (scope.get("entity") or {}).get("name") in (owner, repo_id)
            and any(p.startswith("repo.write") for p in scope.get("permissions") or [])
            for scope in scoped
        )
    for org in me.get("orgs") or []:
        if org.get("name") == owner and org.get("roleInOrg") == "read":
            return False
    return True
