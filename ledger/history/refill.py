"""Put good copies of damaged objects in place: ``verify --repair --from REMOTE``.

This module owns what happens after good copies of damaged objects have been
written into a new pack (the api fetches them from a remote): every pack that
still holds a *damaged* copy of one of them is taken out of the way, because
the store reads the first copy it indexed. Such a pack's intact objects are
first copied into a new pack (each decoded and hash-checked), then the pack
is moved, not deleted, to ``objects/quarantine/`` (kept for inspection; never
read again). The caller holds the gc lock exclusively, so no gc rewrites or
deletes packs meanwhile. A crash at any point leaves every object readable:
the copies are durable before the move, and the damaged pack is whole until then.
"""

from __future__ import annotations

import os

from ledger.errors import LedgerError
from ledger.objects.check import decode_object
from ledger.objects.durable import disk_errors, fsync_dir
from ledger.objects.store import ObjectStore

QUARANTINE = "quarantine"


def damaged_copies(store: ObjectStore, oids: set[bytes]) -> dict[str, set[bytes]]:
    """For each pack, which of ``oids`` it holds a copy of that fails its check.

    Example:
        >>> damaged_copies(lg.store, set())  # doctest: +SKIP
        {}
    """
    out: dict[str, set[bytes]] = {}
    for name in store.pack_names():
        for entry in store.pack_entries(name):
            if entry.id not in oids:
                continue
            try:
                decode_object(entry, store.read_encoded(name, entry), f"pack {name[:12]}")
            except LedgerError:
                out.setdefault(name, set()).add(entry.id)
    return out


def quarantine(store: ObjectStore, packs: dict[str, set[bytes]], good: set[bytes]) -> list[str]:
    """Move aside each pack whose damaged objects all have a good copy now; return lines to report.

    A pack with a damaged object that has no good copy stays where it is (its
    other objects are still read from it) and is reported by verify as before.

    Example:
        >>> quarantine(lg.store, {}, set())  # doctest: +SKIP
        []
    """
    done: list[str] = []
    movable = {name: bad for name, bad in packs.items() if bad <= good}
    if not movable:
        return done
    writer = store.writer(None, compress=False)
    try:
        for name, bad in sorted(movable.items()):
            for entry in store.pack_entries(name):
                if entry.id in bad:
                    continue
                blob = store.read_encoded(name, entry)
                decode_object(entry, blob, f"object {entry.id.hex()[:12]} in pack {name[:12]}")
                writer.put_encoded(entry, blob)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    target = store.root / "objects" / QUARANTINE
    with disk_errors(str(target)):
        target.mkdir(exist_ok=True)
        for name, bad in sorted(movable.items()):
            os.replace(store.pack_path(name), target / f"{name}.pack")
            done.append(
                f"moved pack {name[:12]} ({len(bad)} damaged object(s), now refetched) to "
                f"objects/{QUARANTINE}/ after copying its intact objects"
            )
        fsync_dir(target)
        fsync_dir(store.packs_dir)
    store.sync()
    return done
