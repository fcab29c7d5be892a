"""The JEC exceptions: :class:`JecError` and :class:`JecFormatError` (the place of a fault)."""

from __future__ import annotations


class JecError(ValueError):
    """A correction that cannot be read, written or evaluated."""


class JecFormatError(JecError):
    """A malformed JEC text file or correctionlib JSON, with the place of the fault.

    Attributes: ``source`` (file), ``line`` (1-based, 0 when not line-based), ``token`` (the
    offending text) and ``reason``.
    """

    def __init__(self, source: str, line: int, token: str, reason: str) -> None:
        self.source, self.line, self.token, self.reason = source, line, token, reason
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {reason} (at token {token!r})")
