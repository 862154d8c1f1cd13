"""``ledger.File``: a file's bytes held in a training state, stored as deduplicated chunks.

This module owns the value type users put in a state for files that belong
to a checkpoint (a model's ``config.json``, tokenizer files, custom code):
flattening turns one into a ``file`` manifest node whose bytes are chunks in
the object store, so an unchanged file costs nothing in the next commit, and
``checkout`` gives it back as a :class:`File`. It never writes anywhere
except where :meth:`File.write` is told to.
"""

from __future__ import annotations

import os
from pathlib import Path

import blake3

from ledger.errors import UnsupportedValueError


class File:
    """An immutable file content (bytes), stored in the ledger as chunks, not inline.

    Equal contents compare equal and hash alike; the name of the file is the
    key it is stored under in the state, not part of the value.

    Example:
        >>> f = File(b'{"model_type": "gpt2"}')
        >>> f.data[:2], len(f), f == File(f.data)
        (b'{"', 22, True)
    """

    __slots__ = ("_data",)

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise UnsupportedValueError(
                f"File() takes bytes, not {type(data).__name__}; "
                "use File.from_path(path) to read a file"
            )
        self._data = bytes(data)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> File:
        """The content of the regular file at ``path``.

        Raises:
            UnsupportedValueError: ``path`` is missing or not a regular file.

        Example:
            >>> File.from_path("config.json")  # doctest: +SKIP
            File(612 bytes, blake3 3f2a9c01d4e5)
        """
        p = Path(path)
        if not p.is_file():
            what = "does not exist" if not p.exists() else "is not a regular file"
            raise UnsupportedValueError(f"File.from_path({str(p)!r}): the path {what}")
        return cls(p.read_bytes())

    @property
    def data(self) -> bytes:
        """The file's bytes."""
        return self._data

    def text(self, encoding: str = "utf-8") -> str:
        """The bytes decoded as text.

        Example:
            >>> File(b"hi").text()
            'hi'
        """
        return self._data.decode(encoding)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the bytes to ``path`` (parents created; an existing file is replaced).

        Example:
            >>> File(b"{}").write(tmp / "config.json")  # doctest: +SKIP
            PosixPath('.../config.json')
        """
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(self._data)
        return p

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, File) and other._data == self._data

    def __hash__(self) -> int:
        return hash((File, self._data))

    def __repr__(self) -> str:
        digest = blake3.blake3(self._data).hexdigest()[:12]
        return f"File({len(self._data)} bytes, blake3 {digest})"
