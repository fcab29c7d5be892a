"""The event-batch data model: flat structure-of-arrays columns with CSR offsets.

A :class:`Collection` is one kind of object (pixel hits, calorimeter cells, jets, ...) for a
batch of events: a dict of equal-length columns plus ``offsets`` of length ``n_events + 1``, so
that the objects of event ``i`` are rows ``offsets[i]:offsets[i + 1]``.  A column is 1-D, or
N-D with a fixed inner shape (e.g. a pixel-charge pad per hit, shape ``(n_hits, 8, 8)``).
Per-event quantities (rho, trigger bits) are a collection with one row per event
(:meth:`Collection.event_level`).

An :class:`EventBatch` holds named collections, all on one :class:`~hltemu.backends.Backend`.
Awkward arrays appear only at the edges (:meth:`Collection.from_awkward`,
:meth:`Collection.to_awkward`), used by :mod:`hltemu.io`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hltemu.backends import Backend, get_backend
from hltemu.xpsafe import any_true, event_index, item


class BatchError(ValueError):
    """Inconsistent columns or offsets in a collection or batch."""


def counts_to_offsets(counts: Any, xp: Any = np) -> Any:
    """CSR offsets (``len(counts) + 1``, int64, starting at 0) from per-event counts."""
    counts = xp.asarray(counts, dtype=xp.int64)
    offsets = xp.zeros(counts.shape[0] + 1, dtype=xp.int64)
    if counts.shape[0]:
        xp.cumsum(counts, out=offsets[1:])
    return offsets


def offsets_to_event_index(offsets: Any, xp: Any = np, n_rows: int | None = None) -> Any:
    """Event index (int64) of every row, from CSR offsets (``n_rows``: ``offsets[-1]``, read
    from the device when not given)."""
    offsets = xp.asarray(offsets)
    if n_rows is None:
        n_rows = item(offsets[-1]) if offsets.shape[0] else 0
    return event_index(offsets, n_rows, xp)


@dataclass
class Collection:
    """Columns of one object kind for a batch of events, with CSR ``offsets``.

    ``offsets`` has ``n_events + 1`` int64 entries, starts at 0 and never decreases; every
    column has ``offsets[-1]`` rows.  Arrays are NumPy or CuPy arrays (never awkward).
    """

    offsets: Any
    columns: dict[str, Any] = field(default_factory=dict)
    per_event: bool = False
    """True for event-level quantities: exactly one row per event (written as scalar branches)."""

    def __post_init__(self) -> None:
        # host arrays are checked in full; device arrays only by what needs no read-back
        # (shapes, dtypes, equal column lengths): call validate() to check their values too
        self.validate(read_device=isinstance(self.offsets, np.ndarray))

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_counts(cls, counts: Any, columns: Mapping[str, Any], xp: Any = np) -> Collection:
        """Build from per-event object counts and flat columns."""
        return cls(counts_to_offsets(counts, xp), dict(columns))

    @classmethod
    def event_level(cls, columns: Mapping[str, Any], xp: Any = np) -> Collection:
        """A collection with exactly one row per event (event-level quantities)."""
        cols = dict(columns)
        if not cols:
            raise BatchError("event_level needs at least one column")
        n = int(next(iter(cols.values())).shape[0])
        return cls(xp.arange(n + 1, dtype=xp.int64), cols, per_event=True)

    @classmethod
    def empty(cls, n_events: int, columns: Mapping[str, Any], xp: Any = np) -> Collection:
        """A collection with no rows in any of ``n_events`` events; ``columns``: name -> dtype."""
        return cls(
            xp.zeros(n_events + 1, dtype=xp.int64),
            {k: xp.zeros(0, dtype=dt) for k, dt in columns.items()},
        )

    @classmethod
    def from_awkward(cls, array: Any, fields: list[str] | None = None) -> Collection:
        """From an awkward array of type ``n * var * {field: T, ...}`` (or ``n * var * T``,
        stored as the column ``"value"``).  Fixed-size inner dimensions are kept as N-D columns.
        """
        import awkward as ak

        array = ak.to_packed(array)
        counts = ak.to_numpy(ak.num(array, axis=1)).astype(np.int64)
        flat = ak.flatten(array, axis=1)
        names = ak.fields(flat) or []
        cols: dict[str, Any] = {}
        if not names:
            cols["value"] = _awkward_column_to_numpy(flat, "value")
        for name in fields if fields is not None else names:
            cols[name] = _awkward_column_to_numpy(flat[name], name)
        return cls.from_counts(counts, cols)

    # -- basic properties -------------------------------------------------------------------
    @property
    def n_events(self) -> int:
        return int(self.offsets.shape[0]) - 1

    @property
    def size(self) -> int:
        """Total number of rows in all events."""
        if self.columns:  # every column has offsets[-1] rows: no read from the device
            return int(next(iter(self.columns.values())).shape[0])
        return item(self.offsets[-1]) if self.offsets.shape[0] else 0

    @property
    def counts(self) -> Any:
        """Rows per event (int64, length ``n_events``)."""
        return self.offsets[1:] - self.offsets[:-1]

    def event_index(self) -> Any:
        """Event index of every row (int64)."""
        n_rows = next(iter(self.columns.values())).shape[0] if self.columns else None
        return offsets_to_event_index(self.offsets, _xp_of(self.offsets), n_rows)

    def __getitem__(self, name: str) -> Any:
        try:
            return self.columns[name]
        except KeyError:
            raise KeyError(
                f"no column {name!r} in this collection; it has {sorted(self.columns)}"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def validate(self, read_device: bool = True) -> None:
        """Raise :class:`BatchError` when offsets or column lengths are inconsistent.

        ``read_device=False`` checks only what needs no read from the device: offsets 1-D
        integers, columns at least 1-D and all of one length (and, per event, that length is
        the number of events).  The default also reads the offsets' values (a synchronisation
        on a GPU): first 0, non-decreasing, last equal to the columns' length.
        """
        off = self.offsets
        if off.ndim != 1 or off.shape[0] < 1:
            raise BatchError(
                f"offsets must be 1-D with n_events + 1 >= 1 entries, got shape {off.shape}"
            )
        if off.dtype.kind not in "iu":
            raise BatchError(f"offsets must be integers, got dtype {off.dtype}")
        if not read_device:
            lengths = {name: (int(c.shape[0]) if c.ndim >= 1 else None)
                       for name, c in self.columns.items()}
            if self.per_event:
                lengths["(one row per event)"] = int(off.shape[0]) - 1
            if None in lengths.values() or len(set(lengths.values())) > 1:
                raise BatchError(f"columns of unequal lengths: {lengths}")
            return
        # explicit reads from the device (a synchronisation on a GPU)
        n, first = item(off[-1]), item(off[0])
        if first != 0:
            raise BatchError(f"offsets must start at 0, got {first}")
        if off.shape[0] > 1 and any_true(off[1:] < off[:-1]):
            raise BatchError("offsets must not decrease")
        if self.per_event and n != off.shape[0] - 1:
            raise BatchError(f"a per-event collection needs one row per event, got {n} rows")
        for name, col in self.columns.items():
            if col.ndim < 1 or int(col.shape[0]) != n:
                raise BatchError(
                    f"column {name!r} has {col.shape[0] if col.ndim else 'scalar'} rows, "
                    f"offsets say {n}"
                )

    # -- moving and slicing -----------------------------------------------------------------
    def to(self, backend: Backend | str) -> Collection:
        """A copy of this collection with every array on ``backend``."""
        be = get_backend(backend)
        return Collection(
            be.to_device(self.offsets),
            {k: be.to_device(v) for k, v in self.columns.items()},
            self.per_event,
        )

    def to_host(self) -> Collection:
        """A copy with NumPy arrays."""
        return Collection(
            _host(self.offsets), {k: _host(v) for k, v in self.columns.items()}, self.per_event
        )

    def select_events(self, start: int, stop: int) -> Collection:
        """Events ``start:stop`` as a new collection (offsets rebased to 0)."""
        lo, hi = item(self.offsets[start]), item(self.offsets[stop])
        return Collection(
            self.offsets[start : stop + 1] - lo,
            {k: v[lo:hi] for k, v in self.columns.items()},
            self.per_event,
        )

    def event(self, i: int) -> dict[str, Any]:
        """The rows of event ``i`` as a dict of column slices (for tests and debugging)."""
        lo, hi = item(self.offsets[i]), item(self.offsets[i + 1])
        return {k: v[lo:hi] for k, v in self.columns.items()}

    def to_awkward(self) -> Any:
        """An awkward array ``n_events * var * {column: ...}`` in host memory."""
        import awkward as ak

        host = self.to_host()
        contents = {k: ak.Array(_numpy_to_awkward_content(v)) for k, v in host.columns.items()}
        if not contents:
            return ak.unflatten(ak.Array(np.zeros((host.size, 0))), host.counts)
        record = ak.zip(contents, depth_limit=1)
        return ak.unflatten(record, host.counts)


def _awkward_column_to_numpy(array: Any, name: str) -> np.ndarray:
    import awkward as ak

    try:
        return ak.to_numpy(array, allow_missing=False)
    except (ValueError, TypeError) as exc:
        raise BatchError(
            f"column {name!r} of type {ak.type(array)} is not a flat or fixed-shape column: {exc}"
        ) from None


def _numpy_to_awkward_content(a: np.ndarray) -> Any:
    import awkward as ak

    return ak.from_numpy(a, regulararray=True) if a.ndim > 1 else a


def _xp_of(array: Any) -> Any:
    if isinstance(array, np.ndarray):
        return np
    from hltemu.strictxp import DeviceArray, strict_numpy

    if isinstance(array, DeviceArray):
        return strict_numpy
    import cupy  # only reached for CuPy arrays

    return cupy


def _host(array: Any) -> np.ndarray:
    if hasattr(array, "get") and not isinstance(array, np.ndarray):
        return array.get()
    return np.asarray(array)


@dataclass
class EventBatch:
    """Named collections for ``n_events`` consecutive events of one source, on one backend.

    Attributes
    ----------
    backend:
        Where every array of the batch lives.
    n_events:
        Number of events; every collection has ``n_events + 1`` offsets.
    collections:
        Name -> :class:`Collection` (e.g. ``"PixelHit"``, ``"CaloCell"``, ``"jets"``).
    source:
        File the events were read from (``""`` for generated or synthetic batches).
    first_entry:
        Entry number of the first event in ``source``.
    """

    backend: Backend
    n_events: int
    collections: dict[str, Collection] = field(default_factory=dict)
    source: str = ""
    first_entry: int = 0

    def __post_init__(self) -> None:
        for name, coll in self.collections.items():
            self._check(name, coll)

    def _check(self, name: str, coll: Collection) -> None:
        if coll.n_events != self.n_events:
            raise BatchError(
                f"collection {name!r} has {coll.n_events} events, the batch has {self.n_events}"
            )

    def __getitem__(self, name: str) -> Collection:
        try:
            return self.collections[name]
        except KeyError:
            raise KeyError(
                f"no collection {name!r} in this batch; it has {sorted(self.collections)}"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self.collections

    def __iter__(self) -> Iterator[str]:
        return iter(self.collections)

    def add(self, name: str, coll: Collection) -> None:
        """Add (or replace) a collection; it must have this batch's event count."""
        self._check(name, coll)
        self.collections[name] = coll

    def to(self, backend: Backend | str) -> EventBatch:
        """A copy of the batch with every collection moved to ``backend``."""
        be = get_backend(backend)
        return EventBatch(
            be,
            self.n_events,
            {k: c.to(be) for k, c in self.collections.items()},
            self.source,
            self.first_entry,
        )

    def select_events(self, start: int, stop: int) -> EventBatch:
        """Events ``start:stop`` of this batch as a new batch."""
        stop = min(stop, self.n_events)
        return EventBatch(
            self.backend,
            max(stop - start, 0),
            {k: c.select_events(start, stop) for k, c in self.collections.items()},
            self.source,
            self.first_entry + start,
        )
