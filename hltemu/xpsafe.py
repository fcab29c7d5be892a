"""Array operations written so that every supported CuPy accepts them, NumPy too.

Some NumPy calls that a stage would write naturally are refused by older CuPy releases, and
the test suite's CuPy-strict simulator shim (:mod:`hltemu.strictxp`) refuses them everywhere so
that a CPU-only CI finds them.  Use these helpers instead:

* ``xp.repeat(xp.arange(n), counts)`` (an array of repeats; CuPy < 14.1 refuses it):
  :func:`event_index`, a ``searchsorted`` on the offsets;
* ``xp.bincount(x, ...)`` of an empty ``x`` (raises in CuPy < 14): :func:`bincount`.

Explicit reads from the device (a synchronisation, by intent) go through
:meth:`hltemu.backends.Backend.item` / :meth:`~hltemu.backends.Backend.to_host`, never through
``int()``, ``bool()`` or ``np.asarray`` of a device array.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def item(array: Any) -> Any:
    """The single value of a size-1 device or host array as a Python scalar: an explicit
    device-to-host read (on a GPU the host waits for the device)."""
    if hasattr(array, "get") and not isinstance(array, np.ndarray):
        array = array.get()
    return np.asarray(array).item()


def any_true(mask: Any) -> bool:
    """``mask.any()`` read back to the host (explicitly: a synchronisation on a GPU)."""
    return bool(item(mask.any()))


def event_index(offsets: Any, n_rows: int, xp: Any = np) -> Any:
    """Event index (int64, shape ``(n_rows,)``) of every row, from CSR ``offsets``.

    ``offsets`` has ``n_events + 1`` entries and ``offsets[-1] == n_rows``; ``n_rows`` is passed
    (it is the length of any column) so that nothing is read back from the device.  Row ``r``
    belongs to the event ``e`` with ``offsets[e] <= r < offsets[e + 1]``: the number of
    ``offsets[1:]`` entries ``<= r``.
    """
    rows = xp.arange(int(n_rows), dtype=xp.int64)
    if int(offsets.shape[0]) <= 1:
        return rows  # no events, hence no rows
    return xp.searchsorted(offsets[1:], rows, side="right").astype(xp.int64)


def bincount(x: Any, minlength: int, xp: Any = np, weights: Any = None) -> Any:
    """``xp.bincount(x, weights, minlength)`` that also accepts an empty ``x``.

    Returns int64 counts (float64 sums with ``weights``) of length ``max(minlength, x.max()+1)``;
    for an empty ``x``, ``minlength`` zeros.
    """
    if int(x.shape[0]) == 0:
        return xp.zeros(int(minlength), dtype=xp.float64 if weights is not None else xp.int64)
    if weights is None:
        return xp.bincount(x, minlength=int(minlength))
    return xp.bincount(x, weights=weights, minlength=int(minlength))
