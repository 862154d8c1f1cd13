"""The HF Trainer's checkpoint rotation and best-checkpoint rule, applied to a ledger branch.

This module owns what ``LedgerCallback`` keeps: it mirrors, commit for folder,
``transformers.trainer_utils.rotate_checkpoints`` (called by
``Trainer._save_checkpoint`` after every save), the end-of-training rule of
``Trainer.train`` for ``save_total_limit=1``, and the check in
``Trainer._save_checkpoint`` that sets ``state.best_model_checkpoint`` only
when a checkpoint of ``best_global_step`` exists. Where the Trainer lists the
``checkpoint-*`` folders of ``output_dir`` (oldest first), the ledger lists
the commits ``LedgerCallback`` made on the branch's first-parent line that
still have their state (oldest first); where the Trainer deletes a folder,
the ledger expires the commit (``Ledger.expire``, an event every process
sees), and ``free_space`` runs ``gc(grace=0)`` so its bytes go at once.

It uses the public ``Ledger`` API only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ledger import Commit, Ledger
from ledger.errors import CommitExpiredError

STATE_KEY = "trainer_state"
"""The key of the ``TrainerState`` in a commit made by ``LedgerCallback`` (its marker)."""


def rotate(ids: Sequence[str], limit: int | None, best: str | None) -> list[str]:
    """The ids ``rotate_checkpoints`` deletes from ``ids`` (oldest first), keeping at most ``limit``.

    The newest and ``best`` are protected; when both are and ``limit`` is 1,
    two stay, as in the Trainer. No limit (None or <= 0): nothing goes.

    Example:
        >>> rotate(["5", "10", "15", "20", "25"], 2, None)
        ['5', '10', '15']
        >>> rotate(["5", "10", "15", "20", "25"], 2, "5")
        ['10', '15', '20']
        >>> rotate(["5", "10", "15", "20", "25"], 1, "5")
        ['10', '15', '20']
    """
    if limit is None or limit <= 0 or len(ids) <= limit:
        return []
    protected = {ids[-1]} | ({best} if best is not None else set())
    keep = max(limit, len(protected))
    remaining = len(ids)
    gone: list[str] = []
    for cid in ids:
        if remaining <= keep:
            break
        if cid not in protected:
            gone.append(cid)
            remaining -= 1
    return gone


def at_train_end(ids: Sequence[str], limit: int | None, best: str | None) -> list[str]:
    """The ids ``Trainer.train`` deletes when training ends: all but ``best`` when ``limit`` is 1.

    Example:
        >>> at_train_end(["5", "10"], 1, "5"), at_train_end(["5", "10"], 2, "5")
        (['10'], [])
    """
    if limit != 1 or best is None:
        return []
    return [cid for cid in ids if cid != best]


@dataclass
class Checkpoints:
    """The commits that stand for a Trainer's ``checkpoint-*`` folders on one line of history."""

    lg: Ledger
    _ours: dict[str, bool]
    _expired: set[str]

    @classmethod
    def of(cls, lg: Ledger) -> Checkpoints:
        """An empty cache over ``lg`` (whether a commit is ours never changes; expiry is final)."""
        return cls(lg, {}, set())

    def live(self, tip: str, step: int | None = None) -> list[Commit]:
        """Commits ``LedgerCallback`` made from ``tip`` back along first parents that keep their state, oldest first.

        With ``step``, only those at that step (no other manifest is read).
        """
        out: list[Commit] = []
        for commit in self.lg.log(tip):
            if commit.id in self._expired or (step is not None and commit.step != step):
                continue
            if self._live_and_ours(commit.id):
                out.append(commit)
        out.reverse()
        return out

    def _live_and_ours(self, cid: str) -> bool:
        try:
            _, manifest = self.lg.manifest(cid)  # raises for an expired commit
        except CommitExpiredError:
            self._expired.add(cid)
            return False
        ours = self._ours.get(cid)
        if ours is None:
            ours = self._ours[cid] = STATE_KEY in manifest.root.keys
        return ours

    def at_step(self, tip: str, step: int) -> Commit | None:
        """The newest live commit of this line at ``step`` (the Trainer's ``checkpoint-<step>``), or None."""
        found = self.live(tip, step)
        return found[-1] if found else None

    def expire(self, ids: Sequence[str], reason: str) -> list[str]:
        """Expire ``ids`` (their history stays); returns them."""
        for cid in ids:
            self.lg.expire(cid, reason=reason)
            self._expired.add(cid)
        return list(ids)
