"""Remotes: push, fetch, pull and clone over a directory, fsspec (S3) and the Hugging Face Hub.

Two layers live here (docs/remotes.md):

* backends (``base``, ``local``, ``fs``, ``hub``): one small key -> bytes
  protocol with compare-and-swap (``put_if``); they know nothing of ledgers;
* sync (``layout``, ``transfer``, ``tracking``, ``push``, ``fetch``, ``lazy``,
  ``card``, ``direct``): the remote layout (packs, index files, ``refs.json``) and the
  operations, built on ``ledger.history`` and ``ledger.objects``.

Importing this package imports no network client; each backend imports its
own (fsspec, huggingface_hub) when a remote of its kind is opened.
"""

from ledger.remotes.config import open_remote
from ledger.remotes.direct import DirectCommit
from ledger.remotes.fetch import FetchResult, PullResult
from ledger.remotes.push import PushPlan, PushResult

__all__ = ["DirectCommit", "FetchResult", "PullResult", "PushPlan", "PushResult", "open_remote"]
