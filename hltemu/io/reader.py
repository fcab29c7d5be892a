"""Reading: planning which branches to read for the requested collections (checked against
the schema and across files) and reading them into :class:`EventBatch` es
(:func:`iterate_batches`, :func:`read_collections`)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import awkward as ak
import numpy as np

from hltemu.backends import Backend, get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.io.errors import InputError, _where
from hltemu.io.layout import (
    Paths,
    _as_paths,
    _CollLayout,
    _Column,
    _FileLayout,
    _inspect,
    _open_tree,
)
from hltemu.io.schema import INPUT_SCHEMA, TREE_NAME, CollectionSpec, branch_name


@dataclass(frozen=True)
class _CollPlan:
    """What to read for one collection of one file: kind, counter, columns with known shapes."""

    name: str
    per_event: bool
    counter: str | None
    columns: tuple[_Column, ...]

    def branches(self) -> list[str]:
        names = [self.counter] if self.counter else []
        for c in self.columns:
            names.append(c.read_name)
            if c.counter:
                names.append(c.counter)
        return names


def convertible(source: np.dtype, target: np.dtype) -> bool:
    """Whether the reader converts a branch of dtype ``source`` to the schema's ``target``:
    float to float (float64 energies to float32 lose precision beyond float32's, which the
    chain computes in anyway) and integer to integer (each value checked to fit)."""
    kinds = {source.kind, target.kind}
    return kinds <= {"f"} or kinds <= {"i", "u"}


def _convert(values: np.ndarray, c: _Column, where: str, first_entry: int, n_events: int
             ) -> np.ndarray:
    """``values`` (the file's ``c.source_dtype``) as ``c.dtype``; an integer that does not fit
    is an :class:`InputError` naming the branch, the value and the entries read."""
    if c.dtype.kind in "iu" and values.size:
        info = np.iinfo(c.dtype)
        flat = values.reshape(-1)
        bad = np.flatnonzero((flat < info.min) | (flat > info.max))
        if bad.size:
            raise InputError(
                f"{where}: branch {c.read_name!r} holds {flat[bad[0]]}, which does not fit "
                f"{c.dtype} (entries {first_entry}-{first_entry + n_events - 1})")
    return values.astype(c.dtype)


def _as_planned(values: np.ndarray, c: _Column, where: str, first_entry: int, n_events: int
                ) -> np.ndarray:
    return values if c.source_dtype is None else _convert(values, c, where, first_entry,
                                                          n_events)


def _plan_collection(
    lay: _FileLayout,
    name: str,
    wanted: Sequence[str] | None,
    schema: Mapping[str, CollectionSpec],
) -> _CollPlan:
    """Check that collection ``name`` can be read from ``lay`` with the ``wanted`` columns
    (``None``: every column the file has; in a file written by hltemu, every column of its
    metadata and every column of the schema not marked ``optional`` must then be there) and
    resolve the columns' shapes."""
    where = _where(lay.path, lay.tree)
    cl = lay.collections.get(name)
    if cl is None:
        present = ", ".join(lay.collections) or "none"
        raise InputError(
            f"{where}: no collection {name!r} (no branches {name}_* nor counter n{name}); "
            f"collections present: {present}"
        )
    if cl.problems:
        raise InputError(f"{where}: collection {name!r}: {cl.problems[0]}")
    spec = schema.get(name)
    if spec is not None and spec.per_event != cl.per_event:
        expected = _CollLayout(name, spec.per_event).kind()
        raise InputError(
            f"{where}: collection {name!r} is {cl.kind()} in the file, expected {expected}"
        )
    if wanted is None:
        # order: as written (hltemu metadata) or as in the schema, then the file's others
        schema_cols = list(spec.columns) if spec is not None else []
        if lay.metadata is not None:
            meta_cols = list(lay.metadata.get("collections", {}).get(name, {}).get("columns", {}))
            optional = {c for c, cs in spec.columns.items() if cs.optional} if spec else set()
            required = (set(schema_cols) - optional) | set(meta_cols)
            first = [*meta_cols, *schema_cols]
        else:
            required, first = set(), schema_cols
        cols = [c for c in dict.fromkeys([*first, *cl.columns]) if c in cl.columns or c in required]
    else:
        cols = list(dict.fromkeys(wanted))
    planned = []
    for col in cols:
        c = cl.columns.get(col)
        cspec = spec.columns.get(col) if spec is not None else None
        if c is None:
            what = f" ({cspec.dtype}, {cspec.unit or 'no unit'}: {cspec.doc})" if cspec else ""
            raise InputError(
                f"{where}: collection {name!r} has no branch "
                f"{branch_name(name, col, cl.per_event)!r}{what}; "
                f"its columns: {', '.join(cl.columns) or 'none'}"
            )
        shape = c.shape
        if shape is None:  # flattened column: shape from the schema, else one value per row
            shape = cspec.shape if cspec is not None else ()
            c = _Column(c.name, c.branch, c.dtype, shape, c.stored_flat, c.counter, c.field)
        if cspec is not None:
            if c.dtype != cspec.dtype:
                if not convertible(c.dtype, np.dtype(cspec.dtype)):
                    raise InputError(
                        f"{where}: branch {c.branch!r} of collection {name!r} has dtype "
                        f"{c.dtype}, expected {cspec.dtype} ({cspec.unit or 'no unit'}: "
                        f"{cspec.doc}); only float to float and integer to integer are converted"
                    )
                c = replace(c, dtype=np.dtype(cspec.dtype), source_dtype=c.dtype)
            if tuple(shape) != tuple(cspec.shape):
                raise InputError(
                    f"{where}: branch {c.branch!r} of collection {name!r} has inner shape "
                    f"{tuple(shape)} per row, expected {tuple(cspec.shape)}"
                )
        planned.append(c)
    return _CollPlan(name, cl.per_event, cl.counter, tuple(planned))


def _plan(
    layouts: list[_FileLayout],
    collections: Mapping[str, Sequence[str] | None] | Sequence[str] | None,
    schema: Mapping[str, CollectionSpec],
) -> list[dict[str, _CollPlan]]:
    """Per file, the plan of every requested collection; checks that all files agree."""
    if collections is None:
        names = [
            c for c in layouts[0].collections
            if all(c in lay.collections for lay in layouts[1:])
        ]
        collections = {c: None for c in names}
    elif not isinstance(collections, Mapping):
        collections = {c: None for c in collections}
    for name, cols in collections.items():
        if isinstance(cols, str):
            raise ValueError(
                f"columns of collection {name!r} must be a list of names or None, got {cols!r}"
            )
    plans = [
        {n: _plan_collection(lay, n, cols, schema) for n, cols in collections.items()}
        for lay in layouts
    ]
    # None: the columns common to every file; then every file is re-planned with that list
    for name, cols in collections.items():
        if cols is None and len(layouts) > 1:
            common = [
                c.name for c in plans[0][name].columns
                if all(c.name in {d.name for d in p[name].columns} for p in plans[1:])
            ]
            for lay, p in zip(layouts, plans, strict=True):
                p[name] = _plan_collection(lay, name, common, schema)
    for name in collections:
        ref = plans[0][name]
        for lay, p in zip(layouts[1:], plans[1:], strict=True):
            got = p[name]
            if got.per_event != ref.per_event:
                event_level, jagged = (layouts[0], lay) if ref.per_event else (lay, layouts[0])
                raise InputError(
                    f"collection {name!r} is event-level in input file {event_level.path} but "
                    f"jagged in input file {jagged.path}"
                )
            for a, b in zip(ref.columns, got.columns, strict=True):
                if (a.dtype, tuple(a.shape)) != (b.dtype, tuple(b.shape)):
                    raise InputError(
                        f"column {name}.{a.name} is {a.dtype} with inner shape {tuple(a.shape)} "
                        f"in input file {layouts[0].path} but {b.dtype} with inner shape "
                        f"{tuple(b.shape)} in input file {lay.path}"
                    )
    return plans


def _numpy(array: Any) -> np.ndarray:
    """A contiguous, native-byte-order NumPy array from an awkward array without lists."""
    out = ak.to_numpy(array, allow_missing=False)
    if not out.dtype.isnative:
        out = out.astype(out.dtype.newbyteorder("="))
    return np.ascontiguousarray(out)


def _counter_mismatch(
    where: str, first_entry: int, branch: str, got: np.ndarray, expected: np.ndarray, what: str
) -> InputError:
    i = int(np.nonzero(got != expected)[0][0])
    return InputError(
        f"{where}, entry {first_entry + i}: branch {branch!r} has {int(got[i])} values, "
        f"expected {int(expected[i])} ({what}); inconsistent counters"
    )


def _to_collection(chunk: Any, plan: _CollPlan, where: str, first_entry: int) -> Collection:
    """Convert the awkward arrays of one chunk into a host :class:`Collection`."""
    n = len(chunk)
    if plan.per_event:
        cols = {c.name: _as_planned(_numpy(chunk[c.branch]), c, where, first_entry, n)
                for c in plan.columns}
        return Collection(np.arange(n + 1, dtype=np.int64), cols, per_event=True)
    counts: np.ndarray | None = None
    source = ""
    if plan.counter is not None:
        counts = _numpy(chunk[plan.counter]).astype(np.int64)
        source = f"counter {plan.counter!r}"
    cols: dict[str, np.ndarray] = {}
    for c in plan.columns:
        arr = chunk[c.branch] if c.field is None else chunk[c.branch][c.field]
        n_values = ak.to_numpy(ak.num(arr, axis=1)).astype(np.int64)
        flat = _numpy(ak.flatten(arr, axis=1))
        per_row = math.prod(c.shape) if c.stored_flat else 1
        if c.stored_flat and c.counter is not None:
            own = _numpy(chunk[c.counter]).astype(np.int64)
            if not np.array_equal(own, n_values):
                raise _counter_mismatch(where, first_entry, c.branch, n_values, own,
                                        f"its counter {c.counter!r}")
        if counts is None:
            if c.stored_flat and np.any(n_values % per_row):
                bad = n_values % per_row != 0
                raise _counter_mismatch(where, first_entry, c.branch, n_values,
                                        np.where(bad, n_values - n_values % per_row, n_values),
                                        f"a multiple of {per_row}")
            counts = n_values // per_row
            source = f"branch {c.read_name!r}"
        elif not np.array_equal(n_values, counts * per_row):
            what = f"{per_row} x {source}" if per_row != 1 else source
            raise _counter_mismatch(
                where, first_entry, c.read_name, n_values, counts * per_row, what
            )
        flat = _as_planned(flat, c, where, first_entry, n)
        cols[c.name] = flat.reshape(-1, *c.shape) if c.stored_flat else flat
    if counts is None:  # no column and no counter: cannot happen for a planned collection
        raise InputError(f"{where}: collection {plan.name!r} has nothing to read")
    return Collection.from_counts(counts, cols)


def _empty_collection(plan: _CollPlan) -> Collection:
    cols = {c.name: np.zeros((0, *c.shape), dtype=c.dtype) for c in plan.columns}
    return Collection(np.zeros(1, dtype=np.int64), cols, per_event=plan.per_event)


def _read_file(
    lay: _FileLayout, plans: dict[str, _CollPlan], batch_size: int, n_max: int, be: Backend
) -> Iterator[EventBatch]:
    """Batches of at most ``batch_size`` events from the first ``n_max`` entries of one file."""
    stop = min(lay.entries, n_max)
    if stop <= 0:
        return
    where = _where(lay.path, lay.tree)
    wanted = {b for p in plans.values() for b in p.branches()}
    ref = get_backend("reference")
    if not wanted:  # nothing to read: batches of events with no collections
        for start in range(0, stop, batch_size):
            n = min(batch_size, stop - start)
            yield EventBatch(be, n, {}, lay.path, start)
        return
    with _open_tree(lay.path, lay.tree) as (_, t):
        chunks = t.iterate(
            filter_name=lambda name: name in wanted,
            entry_start=0,
            entry_stop=stop,
            step_size=batch_size,
            library="ak",
        )
        start = 0
        while start < stop:
            try:
                chunk = next(chunks)
            except StopIteration:
                raise InputError(
                    f"{where}: the tree ended at entry {start}, its header says {lay.entries}"
                ) from None
            except Exception as exc:
                hi = min(start + batch_size, stop)
                raise InputError(
                    f"{where}: cannot read entries {start}-{hi - 1}: {type(exc).__name__}: {exc}"
                ) from exc
            n = len(chunk)
            colls = {name: _to_collection(chunk, p, where, start) for name, p in plans.items()}
            yield EventBatch(ref, n, colls, lay.path, start).to(be)
            start += n


def reading_notes(
    files: Paths,
    collections: Mapping[str, Sequence[str] | None] | Sequence[str] | None = None,
    tree: str = TREE_NAME,
    schema: Mapping[str, CollectionSpec] = INPUT_SCHEMA,
) -> list[str]:
    """What reading ``collections`` of ``files`` (as :func:`iterate_batches` would) converts or
    leaves out, one line each: branches whose dtype is converted to the schema's, and
    collections present in some files but not all (only the common ones are read).  Problems
    that stop the reading raise :class:`InputError` here, before any event is read."""
    paths = [os.fspath(p) for p in _as_paths(files)]
    layouts = [_inspect(p, tree) for p in paths]
    notes = []
    for lay, plans in zip(layouts, _plan(layouts, collections, schema), strict=True):
        for plan in plans.values():
            for c in plan.columns:
                if c.source_dtype is not None:
                    loss = (" (rounded to float32 precision)" if c.source_dtype.kind == "f"
                            and c.dtype.itemsize < c.source_dtype.itemsize else "")
                    notes.append(f"{lay.path}: branch {c.read_name!r} is {c.source_dtype}, read "
                                 f"as {c.dtype}{loss}")
    if len(layouts) > 1:
        everywhere = set.intersection(*(set(lay.collections) for lay in layouts))
        for lay in layouts:
            only = [c for c in lay.collections if c not in everywhere]
            if only:
                shown = ", ".join(only[:8]) + (f" and {len(only) - 8} more" if len(only) > 8
                                               else "")
                notes.append(f"{lay.path}: collection(s) {shown} not in every input file, so "
                             "not read")
    return notes


def iterate_batches(
    files: Paths,
    collections: Mapping[str, Sequence[str] | None] | Sequence[str] | None = None,
    *,
    batch_size: int = 100,
    max_events: int | None = None,
    backend: str | Backend = "reference",
    tree: str = TREE_NAME,
    schema: Mapping[str, CollectionSpec] = INPUT_SCHEMA,
) -> Iterator[EventBatch]:
    """Read ``files`` in :class:`EventBatch` es of ``batch_size`` events on ``backend``.

    Parameters
    ----------
    files:
        ROOT files (one path or several), read in order.
    collections:
        Collection name -> column names to read, or ``None`` for every column the files have
        (in a file written by hltemu, every column of its metadata and every column of the
        schema not marked ``optional`` must then be present); a list of names means ``None``
        for each.  ``None`` (the default) reads every collection common to all files.
    batch_size:
        Events per batch.  A batch never spans two files, so the last batch of each file may
        be shorter.
    max_events:
        Stop after this many events in total (``None``: all).
    schema:
        Expected dtypes and inner shapes of known collections; columns of collections in it
        are checked, N-D columns stored flattened get their shape back from it.

    Every file is validated before the first batch is read: existence, ROOT format, truncation,
    tree, collections, branches, dtypes, kinds, and agreement between files; each problem is an
    :class:`InputError` naming the file, tree and branch.  Counters are checked while reading.
    Each batch's ``source`` is its file and ``first_entry`` the entry of its first event.
    Jagged columns come back 1-D (``(n_rows,)``) or, with a fixed inner shape, N-D (e.g.
    ``PixelHit.pad``: ``(n_hits, 8, 8)``); event-level collections have one row per event.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_events is not None and max_events < 0:
        raise ValueError(f"max_events must be >= 0 or None, got {max_events}")
    paths = _as_paths(files)
    be = get_backend(backend)
    layouts = [_inspect(p, tree) for p in paths]
    plans = _plan(layouts, collections, schema)
    return _iterate(layouts, plans, int(batch_size), max_events, be)


def _iterate(
    layouts: list[_FileLayout],
    plans: list[dict[str, _CollPlan]],
    batch_size: int,
    max_events: int | None,
    be: Backend,
) -> Iterator[EventBatch]:
    remaining = math.inf if max_events is None else max_events
    for lay, plan in zip(layouts, plans, strict=True):
        if remaining <= 0:
            return
        for batch in _read_file(lay, plan, batch_size, remaining, be):
            remaining -= batch.n_events
            yield batch


def read_collections(
    path: str | os.PathLike,
    names: Sequence[str] | None = None,
    tree: str = TREE_NAME,
    schema: Mapping[str, CollectionSpec] = INPUT_SCHEMA,
) -> dict[str, Collection]:
    """Every event of one (small) file, as collections on the reference backend.

    ``names``: the collections to read (``None``: all), each with every column.  Returns
    name -> :class:`Collection` with ``n_events`` = the number of entries of the tree.
    """
    path = os.fspath(path)
    lay = _inspect(path, tree)
    wanted = list(lay.collections) if names is None else list(names)
    plan = _plan([lay], {n: None for n in wanted}, schema)[0]
    if lay.entries == 0:
        return {n: _empty_collection(p) for n, p in plan.items()}
    batches = list(_read_file(lay, plan, lay.entries, lay.entries, get_backend("reference")))
    if len(batches) != 1:
        raise InputError(f"{_where(path, tree)}: expected one batch of {lay.entries} events")
    return dict(batches[0].collections)
