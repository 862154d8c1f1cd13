"""Every public method of the facade raises a ``LedgerError``, never a raw ``OSError``.

This module owns the last line of that rule (docs/design-decisions.md, "What
the ledger touches"): :func:`guard_os_errors` wraps each public method,
property and generator of a facade class so that an ``OSError`` escaping it
(a missing ``events.log``, a permission refused, a read-only file system, the
descriptor limit) becomes the ``LedgerError`` that ``errors.from_os_error``
makes, naming the file (the one the OS named, else the ledger directory).
Sites that know better (``durable.disk_errors``, ``safepath.os_errors``) raise
their own, more precise, errors first; those pass through unchanged.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ledger.errors import LedgerError, from_os_error

T = TypeVar("T", bound=type)


def _translated(exc: OSError, self: Any, name: str) -> LedgerError:
    where = exc.filename if isinstance(exc.filename, str) else getattr(self, "root", None)
    return from_os_error(exc, None if where is None else str(where), f"in {name}")


def _wrap(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generate(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(self, *args, **kwargs)
            except (LedgerError, BrokenPipeError):
                raise
            except OSError as e:
                raise _translated(e, self, name) from e

        return generate

    @functools.wraps(fn)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except (LedgerError, BrokenPipeError):
            raise
        except OSError as e:
            raise _translated(e, self, name) from e

    return call


def guard_os_errors(cls: T) -> T:
    """Wrap every public method, classmethod and property of ``cls`` (and its bases) in place.

    Example:
        >>> class Tiny:
        ...     root = "/ckpt"
        ...     def read(self) -> bytes:
        ...         return open("/nowhere/events.log", "rb").read()
        >>> _ = guard_os_errors(Tiny)
        >>> try:
        ...     Tiny().read()
        ... except LedgerError as e:
        ...     print(type(e).__name__, e.path)
        MissingFileError /nowhere/events.log
    """
    for name in dir(cls):
        if name.startswith("_"):
            continue
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, classmethod):
            setattr(cls, name, classmethod(_wrap(raw.__func__, name)))
        elif isinstance(raw, staticmethod):
            continue
        elif isinstance(raw, property) and raw.fget is not None:
            setattr(cls, name, property(_wrap(raw.fget, name), raw.fset, raw.fdel, raw.__doc__))
        elif inspect.isfunction(raw):
            setattr(cls, name, _wrap(raw, name))
    return cls
