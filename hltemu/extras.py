"""Optional extras (``pip install 'hltemu[EXTRA]'``): whether one is installed, checked before
any work, and the one-line message when it is not.

:func:`missing` looks the extra's modules up without importing them
(:func:`importlib.util.find_spec`), so a check costs nothing and loads nothing; a command
calls :func:`require` before it starts (``hltemu generate --plots`` before Pythia), a script
(``examples/``) calls :func:`require_or_exit`.  This module imports no other hltemu module.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

#: Extra -> the top-level modules it provides (as imported, not as distributed).
EXTRAS: dict[str, tuple[str, ...]] = {
    "plots": ("matplotlib", "hist", "mplhep"),
    "nvtx": ("nvtx",),
    "dask": ("distributed",),
    "train": ("torch",),
}


class MissingExtraError(ImportError):
    """An optional extra that a command needs is not installed; the message is one line
    naming the extra, the missing modules and the ``pip install`` command."""


def missing(extra: str, modules: Sequence[str] | None = None) -> list[str]:
    """The modules of ``extra`` (or only ``modules`` of it) that cannot be imported."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; extras: {', '.join(EXTRAS)}")
    names = EXTRAS[extra] if modules is None else tuple(modules)
    out = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package that fails, a broken __spec__
            found = False
        if not found:
            out.append(name)
    return out


def message(extra: str, what: str, absent: Sequence[str]) -> str:
    """``<what> needs the '<extra>' extra (<absent> not installed): pip install
    'hltemu[<extra>]'``."""
    return (f"{what} needs the {extra!r} extra ({', '.join(absent)} not installed): "
            f"pip install 'hltemu[{extra}]'")


def require(extra: str, what: str, modules: Sequence[str] | None = None) -> None:
    """Raise :class:`MissingExtraError` (one line, naming ``what`` needs it) when a module of
    ``extra`` (or of ``modules``) is missing."""
    absent = missing(extra, modules)
    if absent:
        raise MissingExtraError(message(extra, what, absent))


def require_or_exit(extra: str, what: str, modules: Sequence[str] | None = None) -> None:
    """For scripts: print :func:`require`'s one line to stderr and exit with status 1 when
    ``extra`` is missing, instead of a traceback later."""
    try:
        require(extra, what, modules)
    except MissingExtraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
