"""Writing: :class:`OutputWriter`, which appends collections of event batches to a ROOT file
(one TTree, NanoAOD layout) with the hltemu metadata and the file's provenance."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

from hltemu.batch import Collection, EventBatch
from hltemu.io.errors import OutputError
from hltemu.io.provenance import dumps_provenance
from hltemu.io.schema import _NUMERIC_KINDS, METADATA_KEY, PROVENANCE_KEY, TREE_NAME, branch_name

#: Columns of one written collection: name -> (dtype name, inner shape).
_ColumnKeys = dict[str, tuple[str, tuple[int, ...]]]
#: Written collections: name -> (per_event, columns).
_Layout = dict[str, tuple[bool, _ColumnKeys]]

_COLLECTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_COLUMN_NAME = re.compile(r"[A-Za-z0-9_]+")


#: Compression algorithms of :func:`parse_compression` -> (uproot class name, default level, the
#: Python package uproot needs for it).
COMPRESSION_ALGORITHMS: dict[str, tuple[str, int, str]] = {
    "zstd": ("ZSTD", 1, "zstandard"), "zlib": ("ZLIB", 1, "zlib"), "lz4": ("LZ4", 1, "lz4"),
    "lzma": ("LZMA", 9, "lzma")}
#: ``hltemu run``'s output compression.  Measured on 50 ttbar events at pileup 50 (cpu, 2
#: cores, benchmarks/RESULTS.md): ZSTD level 1 writes the full output (doublets whole) 4x
#: faster than ROOT's ZLIB level 1 (8.0 against 32 ms per event) for 2% fewer bytes, and reads
#: it 2x faster; LZ4 is faster still but 28% larger; LZMA 16% smaller, 35x slower to write.
DEFAULT_COMPRESSION = "zstd:1"


def parse_compression(spec: str) -> Any:
    """An uproot compression from ``ALGO[:LEVEL]`` (``zstd``, ``zstd:3``, ``zlib:1``,
    ``lz4:4``, ``lzma:9``) or ``none`` (``None``: no compression);
    :data:`COMPRESSION_ALGORITHMS` gives each algorithm's
    default level.  A bad name or level is an :class:`OutputError` naming it; so is an
    algorithm whose package is not installed (``lz4`` also needs ``xxhash``)."""
    import importlib.util

    text = str(spec).strip().lower()
    if text == "none":
        return None
    algo, _, level_text = text.partition(":")
    if algo not in COMPRESSION_ALGORITHMS:
        raise OutputError(f"unknown compression {spec!r}: use ALGO[:LEVEL] with ALGO one of "
                          f"{', '.join(COMPRESSION_ALGORITHMS)}, or none")
    cls, level, package = COMPRESSION_ALGORITHMS[algo]
    if level_text:
        try:
            level = int(level_text)
        except ValueError:
            level = -1
        if not 1 <= level <= 9 and not (algo == "zstd" and 1 <= level <= 22):
            raise OutputError(f"compression {spec!r}: the level must be an integer 1-9 "
                              f"(zstd: 1-22), got {level_text!r}")
    for pkg in (package, *(("xxhash",) if algo == "lz4" else ())):
        if importlib.util.find_spec(pkg) is None:
            raise OutputError(f"compression {spec!r} needs the Python package {pkg!r}, which "
                              f"is not installed (pip install {pkg})")
    return getattr(uproot, cls)(level)


def _column_key(col: np.ndarray) -> tuple[str, tuple[int, ...]]:
    """(dtype name in native byte order, inner shape) of a column."""
    return col.dtype.newbyteorder("=").name, tuple(int(s) for s in col.shape[1:])


def _native(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))


class OutputWriter:
    """Append collections of event batches to a ROOT file (one TTree, NanoAOD layout).

    Jagged collection ``C``: counter ``nC`` and branches ``C_x``; event-level collection ``C``:
    scalar (or fixed-size array) branches ``C_x``, except the event identifiers ``run``,
    ``luminosityBlock`` and ``event`` of the collection ``Event``, written as top-level
    branches of those names as in NanoAOD (:func:`~hltemu.io.schema.branch_name`; the column
    dtypes are written as given, the schema's are uint32, uint32, uint64).  A jagged column
    with an inner shape (e.g. ``PixelHit.pad``, ``(n_hits, 8, 8)``) is written flattened as
    branch ``C_x`` with its own counter ``nC_x`` (``prod(shape)`` values per row), because
    uproot does not write ``var * 8 * 8 * float32`` correctly; the reader restores the shape.
    A jagged collection with no 1-D column gets an explicit ``nC`` branch.  The file also
    holds the ``hltemu_metadata`` JSON (:data:`METADATA_KEY`: hltemu version, tree,
    collections, columns, dtypes, shapes), written with the tree.

    The first :meth:`write` fixes the collections and their columns; later writes must have
    the same ones (:class:`OutputError` otherwise).  A file closed before any write holds the
    metadata but no tree.

    Provenance: a JSON object describing how the file was made (settings, versions, command
    line, ...; :mod:`hltemu.io.provenance`), given to the constructor (``provenance=``) or to
    :meth:`set_provenance` at any time before :meth:`close`, which writes the last one given
    as the ``TObjString`` :data:`~hltemu.io.schema.PROVENANCE_KEY` (``hltemu_provenance``);
    :func:`hltemu.io.read_provenance` reads it back.  It is checked (JSON-ready, finite
    numbers) when given, so that :meth:`close` cannot fail on it.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike, tree: str = TREE_NAME,
                 compression: Any = None, name: str | os.PathLike | None = None,
                 provenance: Mapping[str, Any] | None = None) -> None:
        """``compression``: an uproot compression (e.g. ``uproot.LZMA(9)``) or a
        :func:`parse_compression` spec (``"zstd:1"``, ``"none"``); ``None`` keeps uproot's
        default (ZLIB level 1).  ``name``: the file named in error messages
        (default ``path``), e.g. the final name when ``path`` is the temporary file of
        :func:`hltemu.outputs.atomic_output`.  ``provenance``: see :meth:`set_provenance`."""
        self.path = os.fspath(path)
        self.name = os.fspath(name) if name is not None else self.path
        self.tree_name = tree
        self.n_events = 0
        self._tree: Any = None
        self._layout: _Layout | None = None
        self._meta_written = False
        self._provenance: str | None = None
        if provenance is not None:  # checked before the file is created
            self._provenance = dumps_provenance(provenance, f"provenance of {self.name}")
        kwargs: dict[str, Any] = {}
        if isinstance(compression, str):
            kwargs["compression"] = parse_compression(compression)
        elif compression is not None:
            kwargs["compression"] = compression
        try:
            self._file: Any = uproot.recreate(Path(self.path), **kwargs)
        except Exception as exc:
            raise OutputError(f"cannot create output file {self.name}: {exc}") from None

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._file is None

    def set_provenance(self, provenance: Mapping[str, Any]) -> None:
        """Keep ``provenance`` (a JSON-ready mapping with string keys) to write when the file
        is closed, replacing any given before.  NumPy scalars and arrays, tuples and paths are
        converted (to numbers, lists, strings); a value JSON cannot hold (an object, a NaN or
        infinite float: use ``None``) is an :class:`OutputError` naming its key path."""
        if self._file is None:
            raise OutputError(f"output file {self.name} is closed: its provenance is written")
        self._provenance = dumps_provenance(provenance, f"provenance of {self.name}")

    @property
    def provenance(self) -> dict[str, Any] | None:
        """The provenance that :meth:`close` writes (a copy), or ``None``."""
        return None if self._provenance is None else json.loads(self._provenance)

    def close(self) -> None:
        """Write the metadata if no batch was written and the provenance if one was given, and
        close the file (idempotent)."""
        if self._file is None:
            return
        try:
            if not self._meta_written:
                self._write_metadata({})
            if self._provenance is not None:
                self._file[PROVENANCE_KEY] = self._provenance
        finally:
            self._file.close()
            self._file = None

    def write(self, batch: EventBatch, names: Sequence[str] | None = None,
              counts_only: Sequence[str] = ()) -> None:
        """Append the collections ``names`` (``None``: all) of ``batch`` as ``batch.n_events``
        new entries.  Of the jagged collections in ``counts_only`` (a subset of ``names``) only
        the per-event counts are written (branch ``nC``, no column), which the reader returns
        as a collection with offsets and no column.  Arrays on a GPU are copied to the host
        first."""
        if self._file is None:
            raise OutputError(f"output file {self.name} is closed")
        names = list(batch.collections) if names is None else list(dict.fromkeys(names))
        missing = [n for n in names if n not in batch]
        if missing:
            raise OutputError(
                f"cannot write collection(s) {missing} to {self.name}: the batch has "
                f"{sorted(batch.collections)}"
            )
        bad = [n for n in counts_only if n not in names or batch[n].per_event]
        if bad:
            raise OutputError(f"counts only of {bad} in {self.name}: each must be a jagged "
                              f"collection among those written ({names})")
        colls = {n: (Collection(batch.backend.to_host(batch[n].offsets))
                     if n in counts_only else batch[n].to_host()) for n in names}
        layout = {n: self._describe(n, c) for n, c in colls.items()}
        if self._layout is None:
            self._create(layout)
        elif layout != self._layout:
            raise OutputError(self._difference(layout))
        if batch.n_events:
            data: dict[str, Any] = {}
            for n, c in colls.items():
                data.update(self._arrays(n, c))
            self._tree.extend(data)
            self.n_events += batch.n_events

    # -- helpers ------------------------------------------------------------------------------
    def _describe(self, name: str, coll: Collection) -> tuple[bool, _ColumnKeys]:
        if not _COLLECTION_NAME.fullmatch(name):
            raise OutputError(
                f"collection name {name!r} cannot be a branch prefix in {self.name}: use letters, "
                "digits and '_', starting with a letter"
            )
        cols = {}
        for col, arr in coll.columns.items():
            if not _COLUMN_NAME.fullmatch(col):
                raise OutputError(
                    f"column name {col!r} of collection {name!r} cannot be a branch name in "
                    f"{self.name}: use letters, digits and '_'"
                )
            dt = arr.dtype
            if dt.kind not in _NUMERIC_KINDS or dt.itemsize > 8 or dt == np.float16:
                raise OutputError(
                    f"column {name}.{col} has dtype {arr.dtype}, which a TTree cannot hold; use "
                    "bool, (u)int8-64, float32 or float64"
                )
            cols[col] = _column_key(arr)
        if coll.per_event and not cols:
            raise OutputError(f"event-level collection {name!r} has no column to write")
        return coll.per_event, cols

    def _difference(self, layout: _Layout) -> str:
        assert self._layout is not None
        if set(layout) != set(self._layout):
            return (
                f"output file {self.name}: this batch writes collections {sorted(layout)}, the "
                f"first batch wrote {sorted(self._layout)}"
            )
        for n, (per_event, cols) in layout.items():
            first_pe, first_cols = self._layout[n]
            if per_event != first_pe:
                return (
                    f"output file {self.name}: collection {n!r} is "
                    f"{'event-level' if per_event else 'jagged'} in this batch, "
                    f"{'event-level' if first_pe else 'jagged'} in the first batch written"
                )
            if cols != first_cols:
                return (
                    f"output file {self.name}: collection {n!r} has columns {cols} (dtype, "
                    f"inner shape), the first batch wrote {first_cols}"
                )
        return f"output file {self.name}: batch layout differs from the first batch"

    def _branch_names(self, name: str, per_event: bool, cols: Mapping[str, Any]) -> list[str]:
        if per_event:
            return [branch_name(name, c) for c in cols]
        out = [f"n{name}"]
        for c, (_, shape) in cols.items():
            out += [f"{name}_{c}"] + ([f"n{name}_{c}"] if shape else [])
        return out

    def _create(self, layout: _Layout) -> None:
        seen: dict[str, str] = {}
        for n, (pe, cols) in layout.items():
            for b in self._branch_names(n, pe, cols):
                if b in seen:
                    raise OutputError(
                        f"output file {self.name}: collections {seen[b]!r} and {n!r} would both "
                        f"write the branch {b!r}; rename one of them"
                    )
                seen[b] = n
        types: dict[str, Any] = {}
        for n, (pe, cols) in layout.items():
            types.update(self._types(n, pe, cols))
        try:
            self._tree = self._file.mktree(self.tree_name, types)
        except Exception as exc:
            raise OutputError(f"output file {self.name}: cannot create tree: {exc}") from None
        self._layout = layout
        self._write_metadata(layout)

    @staticmethod
    def _types(name: str, per_event: bool, cols: _ColumnKeys) -> dict[str, Any]:
        def leaf(dtype: str, shape: tuple[int, ...]) -> Any:
            t: Any = ak.types.NumpyType(dtype)
            for size in reversed(shape):
                t = ak.types.RegularType(t, size)
            return t if shape else np.dtype(dtype)

        types: dict[str, Any] = {}
        if per_event:
            for c, (dt, shape) in cols.items():
                types[branch_name(name, c)] = leaf(dt, shape)
            return types
        flat = {c: v for c, v in cols.items() if not v[1]}
        if flat:
            types[name] = ak.types.ListType(ak.types.RecordType(
                [ak.types.NumpyType(dt) for dt, _ in flat.values()], list(flat)))
        else:
            types[f"n{name}"] = np.dtype(np.int32)
        for c, (dt, shape) in cols.items():
            if shape:
                types[f"{name}_{c}"] = ak.types.ListType(ak.types.NumpyType(dt))
        return types

    @staticmethod
    def _arrays(name: str, coll: Collection) -> dict[str, Any]:
        if coll.per_event:
            return {branch_name(name, c): _native(a) for c, a in coll.columns.items()}
        counts = np.asarray(coll.counts, dtype=np.int64)
        out: dict[str, Any] = {}
        flat = {c: a for c, a in coll.columns.items() if a.ndim == 1}
        if flat:
            record = ak.zip({c: ak.Array(_native(a)) for c, a in flat.items()}, depth_limit=1)
            out[name] = ak.unflatten(record, counts)
        else:
            out[f"n{name}"] = counts.astype(np.int32)
        for c, a in coll.columns.items():
            if a.ndim > 1:
                per_row = math.prod(a.shape[1:])
                out[f"{name}_{c}"] = ak.unflatten(_native(a).reshape(-1), counts * per_row)
        return out

    def _write_metadata(self, layout: _Layout) -> None:
        from hltemu import __version__

        meta = {
            "hltemu_version": __version__,
            "tree": self.tree_name,
            "collections": {
                n: {
                    "per_event": pe,
                    "columns": {
                        c: {"dtype": dt, "shape": list(shape)} for c, (dt, shape) in cols.items()
                    },
                }
                for n, (pe, cols) in layout.items()
            },
        }
        self._file[METADATA_KEY] = json.dumps(meta)
        self._meta_written = True
