"""The errors of hltemu.io: :class:`InputError` (bad input files) and :class:`OutputError`
(batches that cannot be written)."""

from __future__ import annotations

from hltemu.batch import BatchError


class InputError(ValueError):
    """A problem with an input file: missing, not ROOT, truncated, or not in the expected
    layout.  The message names the file, the tree/branch/value concerned and what was expected.
    """


class OutputError(BatchError):
    """A batch that cannot be written: unknown collection, unsupported dtype, or columns that
    differ from those of the first batch written to the same file."""


def _where(path: str, tree: str | None = None) -> str:
    return f"input file {path}" + (f", tree {tree!r}" if tree is not None else "")
