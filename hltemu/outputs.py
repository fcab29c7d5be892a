"""Safe outputs: no file hltemu writes can destroy an input or be left half written.

Every writer (``hltemu run``'s ROOT products and JSON report, each per-file output of a Dask
run, ``hltemu generate``'s ROOT file and run record) follows two rules:

* :func:`check_outputs`, before anything is read or written: no output is the same file as an
  input (:func:`os.path.samefile`: through symlinks, hard links, ``./x`` and ``x``), nor the
  same file as another output; the error names both paths;
* :func:`atomic_output`: the file is written under a temporary name in its target directory
  (``.<name>.<pid>-<random>.tmp``), created on entry, so that a missing or unwritable
  directory fails before any work, and renamed over the final name (:func:`os.replace`,
  atomic on POSIX) only on success.  On an error, ``KeyboardInterrupt`` (Ctrl-C) or
  :meth:`AtomicOutput.discard` the temporary file is removed and the final name is untouched:
  a file of that name from an earlier run stays as it was.

A process killed outright (``SIGKILL``, a crashed Dask worker) cannot clean up after itself;
its temporary files are found by :func:`temporaries` and removed by
:func:`remove_temporaries` (each Dask task does so for its own output before it starts).

This module imports no other hltemu module and nothing beyond the standard library.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

#: Ending of every temporary file (``.<final name>.<pid>-<random>`` + this).
TEMP_SUFFIX = ".tmp"

PathLike = str | os.PathLike


class OutputPathError(ValueError):
    """An output that cannot or must not be written: the same file as an input or as another
    output, a missing or unwritable directory, a directory in place of a file.  The message
    is one line naming the file(s)."""


class NoOutputWarning(UserWarning):
    """Nothing was written because there was nothing to write (a run of 0 events); the
    message names the file(s) not written."""


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` are the same file: :func:`os.path.samefile` where both exist
    (symlinks, hard links, any spelling of the path), else the same resolved path (two names
    of a file neither of which exists yet)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(outputs: Iterable[tuple[str, PathLike | None]],
                  inputs: Iterable[PathLike | None] = ()) -> None:
    """Refuse outputs that would overwrite an input or each other.

    ``outputs`` are ``(what, path)`` pairs (``what`` names the file in messages, e.g.
    ``"output file"``, ``"report file"``; a ``None`` path is skipped); ``inputs`` are the
    files the run reads (``None`` skipped).  Raises :class:`OutputPathError` naming both paths;
    reads and writes nothing.
    """
    ins = [os.fspath(p) for p in inputs if p is not None]
    seen: list[tuple[str, str]] = []
    for what, path in outputs:
        if path is None:
            continue
        out = os.fspath(path)
        for inp in ins:
            if same_file(out, inp):
                raise OutputPathError(f"refusing to write {what} {out}: it is the same file as "
                                      f"input {inp}; choose another name")
        for other_what, other in seen:
            if same_file(out, other):
                raise OutputPathError(f"{other_what} {other} and {what} {out} are the same "
                                      "file; choose different names")
        seen.append((what, out))


def temporaries(path: PathLike) -> list[Path]:
    """The temporary files of :func:`atomic_output` for the final name ``path`` present in its
    directory (left by a process that was killed before it could clean up, or in use)."""
    final = Path(path)
    prefix = f".{final.name}."
    try:
        names = os.listdir(final.parent)
    except OSError:
        return []
    return sorted(final.parent / n for n in names
                  if n.startswith(prefix) and n.endswith(TEMP_SUFFIX))


def remove_temporaries(path: PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` (:func:`temporaries`); returns those removed.
    Only for a writer that owns the final name: another process writing the same name at the
    same time would lose its temporary file."""
    removed = []
    for tmp in temporaries(path):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _reason(exc: OSError, directory: Path) -> str:
    """Why a file cannot be created in ``directory``, in a few words."""
    if not directory.exists():
        return f"directory {directory} does not exist"
    if not directory.is_dir():
        return f"{directory} is not a directory"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"directory {directory} is not writable ({exc.strerror})"
    return f"{exc.strerror} (in directory {directory})"


class AtomicOutput:
    """A file being written: :attr:`path` is the temporary file (created empty by the
    constructor, in the directory of :attr:`final`), :meth:`commit` renames it over
    :attr:`final`, :meth:`discard` removes it.  Use through :func:`atomic_output`."""

    def __init__(self, path: PathLike, what: str = "output file") -> None:
        self.final = Path(path)
        self.what = what
        self.state = "open"  # "open", "committed" or "discarded"
        if self.final.is_dir():
            raise OutputPathError(f"cannot write {what} {self.final}: it is a directory")
        directory = self.final.parent
        self.path = directory / (f".{self.final.name}.{os.getpid()}-{secrets.token_hex(4)}"
                                 f"{TEMP_SUFFIX}")
        try:
            # O_EXCL: never an existing file; mode 0o666 less the umask, as open() gives
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise OutputPathError(
                f"cannot write {what} {self.final}: {_reason(exc, directory)}") from None
        os.close(fd)

    def commit(self) -> Path:
        """Flush the temporary file to disk and rename it over :attr:`final`; returns
        :attr:`final`.  A failure removes the temporary file and raises
        :class:`OutputPathError`."""
        if self.state != "open":
            raise OutputPathError(f"{self.what} {self.final} was already {self.state}")
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.path, self.final)
        except OSError as exc:
            self.discard()
            raise OutputPathError(
                f"cannot write {self.what} {self.final}: {exc.strerror or exc}") from None
        self.state = "committed"
        return self.final

    def discard(self) -> None:
        """Remove the temporary file; the final name is left as it was (idempotent)."""
        if self.state == "open":
            self.state = "discarded"
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@contextlib.contextmanager
def atomic_output(path: PathLike, what: str = "output file") -> Iterator[AtomicOutput]:
    """Write ``path`` safely: yields an :class:`AtomicOutput` whose :attr:`~AtomicOutput.path`
    (a temporary file beside ``path``) the caller writes; on a normal exit it is renamed over
    ``path`` (unless already committed or discarded), on any exception (``KeyboardInterrupt``
    included) it is removed and the exception goes on.  ``what`` names the file in errors.

    Raises :class:`OutputPathError` on entry when the temporary file cannot be created (the
    directory is missing or not writable), before the caller does any work.
    """
    out = AtomicOutput(path, what)
    try:
        yield out
    except BaseException:
        out.discard()
        raise
    if out.state == "open":
        out.commit()
