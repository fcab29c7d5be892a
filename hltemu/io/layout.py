"""Validating input files and finding their collections: ROOT file checks, opening the tree,
scanning TTree branches and RNTuple fields, classifying them into collections (the rules in
the package docstring), the hltemu metadata, the cached file description, :func:`count_events`
and :func:`common_collections`."""

from __future__ import annotations

import functools
import json
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

from hltemu.io.errors import InputError, _where
from hltemu.io.schema import _NUMERIC_KINDS, EVENT, EVENT_ID_COLUMNS, METADATA_KEY, TREE_NAME

#: Paths given to the readers: one path or a sequence of them.
Paths = str | os.PathLike | Sequence[str | os.PathLike]


@dataclass(frozen=True)
class _Field:
    """One top-level branch (TTree) or field (RNTuple) of a numeric type.

    ``dtype`` is in native byte order; ``shape`` is the fixed shape per value (per event for a
    scalar branch, per row for a jagged one).  ``counter`` is the counter branch of a jagged
    TTree branch.  ``subfields`` lists the leaves of an RNTuple field ``var * {x, y, ...}``.
    """

    name: str
    jagged: bool
    dtype: np.dtype | None
    shape: tuple[int, ...] = ()
    counter: str | None = None
    subfields: tuple[_Field, ...] = ()


@dataclass(frozen=True)
class _Column:
    """Where one column of a collection is stored.

    ``branch`` is read (for an RNTuple record field, ``branch.field``); ``shape`` is the inner
    shape of a row as returned (``None``: unknown yet, resolved from the schema).  A column
    ``stored_flat`` comes as ``prod(shape)`` values per row, counted by ``counter`` (TTree).
    ``source_dtype``: the file's dtype when the schema's (``dtype``) differs and the reader
    converts (float to float; integer to integer, checked to fit).
    """

    name: str
    branch: str
    dtype: np.dtype
    shape: tuple[int, ...] | None = ()
    stored_flat: bool = False
    counter: str | None = None
    field: str | None = None
    #: The dtype stored in the file when it differs from ``dtype`` (converted on reading).
    source_dtype: np.dtype | None = None

    @property
    def read_name(self) -> str:
        return self.branch if self.field is None else f"{self.branch}.{self.field}"


@dataclass
class _CollLayout:
    """A collection found in a file: its kind, counter and columns, and rule breaches."""

    name: str
    per_event: bool
    counter: str | None = None
    columns: dict[str, _Column] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def kind(self) -> str:
        if self.per_event:
            return f"event-level (scalar branches {self.name}_*)"
        return f"jagged (counter n{self.name})"


@dataclass
class _FileLayout:
    """What a validated input file holds."""

    path: str
    tree: str
    kind: str  # "TTree" or "RNTuple"
    entries: int
    collections: dict[str, _CollLayout]
    metadata: dict[str, Any] | None  # hltemu_metadata of a file hltemu wrote, for this tree


#: ROOT file header after the magic b"root": fVersion, fBEGIN, fEND (32-bit or 64-bit fEND).
_HEADER = struct.Struct(">iiI")
_HEADER_LARGE = struct.Struct(">iiQ")


def open_root(path: str) -> Any:
    """``uproot.open(path)`` after :func:`_check_file`; :class:`InputError` naming the file
    when it is missing, not ROOT or truncated."""
    _check_file(path)
    try:
        return uproot.open(Path(path))
    except Exception as exc:
        raise InputError(f"input file {path} cannot be opened as a ROOT file: {exc}") from None


def _check_file(path: str) -> None:
    """Existence, ROOT magic bytes, and a file as long as its header says (not truncated);
    raise :class:`InputError` otherwise."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input file {path} does not exist")
    if p.is_dir():
        raise InputError(f"input file {path} is a directory, not a ROOT file")
    try:
        with open(p, "rb") as fh:
            head = fh.read(4 + _HEADER_LARGE.size)
        size = p.stat().st_size
    except OSError as exc:
        raise InputError(f"input file {path} cannot be read: {exc}") from None
    if not head:
        raise InputError(f"input file {path} is empty (0 bytes), not a ROOT file")
    if head[:4] != b"root":
        raise InputError(
            f"input file {path} is not a ROOT file: it starts with {head[:4]!r}, "
            "a ROOT file starts with b'root'"
        )
    version = _HEADER.unpack_from(head, 4)[0] if len(head) >= 4 + _HEADER.size else 0
    header = _HEADER_LARGE if version >= 1_000_000 else _HEADER  # large files: 64-bit fEND
    if len(head) < 4 + header.size:
        raise InputError(f"input file {path} is truncated: {size} bytes, less than a ROOT header")
    end = header.unpack_from(head, 4)[2]
    if size < end:
        raise InputError(
            f"input file {path} is truncated: {size} bytes on disk, its ROOT header says {end} "
            "(an interrupted write or copy?)"
        )


@contextmanager
def _open_tree(path: str, tree: str) -> Iterator[tuple[Any, Any]]:
    """Open ``path`` after checking it, yield ``(file, tree object)``; close it afterwards.

    Raises :class:`InputError` for a missing, non-ROOT or truncated file, and for a missing
    tree (naming the trees the file has) or an object that is not a TTree or RNTuple.
    """
    f = open_root(path)
    try:
        try:
            classes = f.classnames(cycle=False)
        except Exception as exc:
            raise InputError(f"input file {path}: cannot list its contents: {exc}") from None
        trees = sorted(k for k, c in classes.items() if c in ("TTree", "ROOT::RNTuple"))
        if tree not in classes:
            found = (
                f"its trees: {', '.join(map(repr, trees))}"
                if trees
                else f"it holds no TTree or RNTuple (objects: {sorted(classes) or 'none'})"
            )
            raise InputError(f"input file {path} has no tree {tree!r}; {found}")
        if classes[tree] not in ("TTree", "ROOT::RNTuple"):
            raise InputError(
                f"input file {path}: {tree!r} is a {classes[tree]}, not a TTree or RNTuple"
                + (f"; its trees: {', '.join(map(repr, trees))}" if trees else "")
            )
        try:
            obj = f[tree]
        except Exception as exc:
            raise InputError(f"{_where(path, tree)} cannot be read: {exc}") from None
        yield f, obj
    finally:
        f.close()


def _leaf_type(form: Any) -> tuple[np.dtype, tuple[int, ...]] | None:
    """(dtype, inner shape) of an awkward form made of RegularForms around a NumpyForm."""
    shape: list[int] = []
    while isinstance(form, ak.forms.RegularForm):
        shape.append(int(form.size))
        form = form.content
    if not isinstance(form, ak.forms.NumpyForm):
        return None
    dtype = np.dtype(ak.types.numpytype.primitive_to_dtype(form.primitive))
    if dtype.kind not in _NUMERIC_KINDS:
        return None
    return dtype, (*shape, *form.inner_shape)


def _scan_ttree(tree: Any) -> list[_Field]:
    """The numeric top-level branches of a TTree."""
    from uproot.interpretation.jagged import AsJagged
    from uproot.interpretation.numerical import AsDtype

    out = []
    for b in tree.branches:
        interp = b.interpretation
        if isinstance(interp, AsJagged) and isinstance(interp.content, AsDtype):
            dt = np.dtype(interp.content.to_dtype)
            if dt.base.kind not in _NUMERIC_KINDS:
                continue
            counter = b.count_branch.name if b.count_branch is not None else None
            out.append(_Field(b.name, True, dt.base.newbyteorder("="), dt.shape, counter))
        elif isinstance(interp, AsDtype):
            dt = np.dtype(interp.to_dtype)
            if dt.base.kind in _NUMERIC_KINDS:
                out.append(_Field(b.name, False, dt.base.newbyteorder("="), dt.shape))
    return out


def _scan_rntuple(ntuple: Any) -> list[_Field]:
    """The numeric top-level fields of an RNTuple (records of numbers for ``var * {...}``)."""
    form = ntuple.to_akform()[0]
    out = []
    for name, content in zip(form.fields, form.contents, strict=True):
        leaf = _leaf_type(content)
        if leaf is not None:
            out.append(_Field(name, False, *leaf))
            continue
        if not isinstance(content, (ak.forms.ListOffsetForm, ak.forms.ListForm)):
            continue
        inner = content.content
        leaf = _leaf_type(inner)
        if leaf is not None:
            out.append(_Field(name, True, *leaf))
        elif isinstance(inner, ak.forms.RecordForm) and not inner.is_tuple:
            subs = tuple(
                _Field(sub, False, *lt)
                for sub, c in zip(inner.fields, inner.contents, strict=True)
                if (lt := _leaf_type(c)) is not None
            )
            if subs:
                out.append(_Field(name, True, None, (), None, subs))
    return out


def _classify(fields: list[_Field], meta: Mapping[str, Any]) -> dict[str, _CollLayout]:
    """Group fields into collections by the rules in the package docstring (hltemu.io).

    ``meta`` is the ``collections`` table of the file's hltemu metadata (``{}`` for other
    files): its names take precedence when splitting ``C_x`` (collection names may contain
    ``_`` there) and its inner shapes apply to columns stored flattened.
    """
    by_name = {f.name: f for f in fields}
    counted = {f.counter for f in fields if f.counter}

    def split(name: str, among: Any = None) -> tuple[str, str] | None:
        for c in sorted(among if among is not None else known, key=len, reverse=True):
            if name.startswith(c + "_") and len(name) > len(c) + 1:
                return c, name[len(c) + 1 :]
        if among is None and "_" in name:
            c, x = name.split("_", 1)
            if c and x:
                return c, x
        return None

    # 1. jagged collections and their counters
    jagged: dict[str, str | None] = {}
    for name, m in meta.items():
        if not m.get("per_event", False):
            jagged[name] = f"n{name}" if f"n{name}" in by_name else None
    for f in fields:
        if f.subfields:
            jagged.setdefault(f.name, f"n{f.name}" if f"n{f.name}" in by_name else None)
        elif f.jagged and f.counter and f.counter.startswith("n"):
            c = f.counter[1:]
            if f.name.startswith(c + "_") or ("_" not in f.name and f.name == c):
                jagged.setdefault(c, f.counter)
            elif f.counter == f"n{f.name}" and "_" in f.name:
                # a column with its own counter nC_x (NanoAOD v15 writes one per column) beside
                # the collection's scalar counter nC: the collection C, counted by nC
                c = f.name.split("_", 1)[0]
                if f"n{c}" in by_name and not by_name[f"n{c}"].jagged:
                    jagged.setdefault(c, f"n{c}")
    known = set(meta) | set(jagged)
    for f in fields:  # RNTuple: jagged fields C_x need no counter
        if f.jagged and f.counter is None and not f.subfields:
            s = split(f.name)
            c = s[0] if s else f.name
            jagged.setdefault(c, f"n{c}" if f"n{c}" in by_name else None)
            known.add(c)
    counters = counted | {f"n{c}" for c in jagged}

    colls: dict[str, _CollLayout] = {}
    seen_at: dict[str, int] = {}  # index of the first field of each collection
    pos = -1

    def coll(name: str, per_event: bool) -> _CollLayout:
        if name not in colls:
            colls[name] = _CollLayout(name, per_event, None if per_event else jagged.get(name))
            seen_at[name] = pos
        return colls[name]

    def meta_shape(c: str, x: str) -> tuple[int, ...] | None:
        shape = meta.get(c, {}).get("columns", {}).get(x, {}).get("shape")
        return tuple(shape) if shape is not None else None

    for name in jagged:
        if name in meta:  # column-less jagged collections written by hltemu
            coll(name, False)
    for pos, f in enumerate(fields):  # noqa: B007 (pos is read by coll())
        if f.subfields:
            c = coll(f.name, False)
            for sf in f.subfields:
                c.columns[sf.name] = _Column(sf.name, f.name, sf.dtype, sf.shape, field=sf.name)
        elif f.jagged and f.counter is not None:
            c = f.counter[1:] if f.counter.startswith("n") else None
            if c is not None and f.name.startswith(c + "_") and c in jagged:
                x = f.name[len(c) + 1 :]
                coll(c, False).columns[x] = _Column(x, f.name, f.dtype, f.shape)
            elif f.counter == f"n{f.name}" and (s := split(f.name, jagged)) is not None:
                cname, x = s
                shape = meta_shape(cname, x)
                if f.shape:  # own counter and a fixed shape: neither hltemu's layout nor ROOT's
                    coll(cname, False).problems.append(
                        f"branch {f.name!r} has its own counter {f.counter!r} and a fixed "
                        f"shape {f.shape} per value; expected a flat jagged branch"
                    )
                    continue
                coll(cname, False).columns[x] = _Column(
                    x, f.name, f.dtype, shape, stored_flat=True, counter=f.counter
                )
            elif f.counter == f"n{f.name}" and "_" not in f.name:
                coll(f.name, False).columns["value"] = _Column("value", f.name, f.dtype, f.shape)
            elif (s := split(f.name)) is not None:
                if f.counter == f"n{f.name}":
                    why = f"has its own counter {f.counter!r}, but there is no counter n{s[0]}"
                else:
                    why = f"is counted by {f.counter!r}, expected n{s[0]}"
                coll(s[0], s[0] not in jagged).problems.append(
                    f"branch {f.name!r} {why}; inconsistent counters"
                )
        elif f.jagged:  # RNTuple jagged field
            s = split(f.name)
            cname, x = s if s else (f.name, "value")
            coll(cname, False).columns[x] = _Column(x, f.name, f.dtype, f.shape)
        else:
            if f.name in counters:
                continue
            s = split(f.name)
            if s is None and f.name in EVENT_ID_COLUMNS:  # NanoAOD's run, luminosityBlock, event
                s = (EVENT, f.name)
            if s is None:
                continue
            cname, x = s
            if cname in jagged:
                coll(cname, False).problems.append(
                    f"branch {f.name!r} is a scalar per event, but collection {cname!r} is "
                    f"jagged (counter n{cname}); expected a jagged branch"
                )
                continue
            columns = coll(cname, True).columns
            if x in columns:  # 'event' beside a legacy 'Event_event'
                colls[cname].problems.append(
                    f"branches {columns[x].branch!r} and {f.name!r} both hold column {x!r}; "
                    "expected one of them")
                continue
            columns[x] = _Column(x, f.name, f.dtype, f.shape)

    # order: as in the metadata, then as the first branch of each collection in the tree
    def position(c: _CollLayout) -> tuple[int, int]:
        return (list(meta).index(c.name) if c.name in meta else len(meta), seen_at[c.name])

    return {c.name: c for c in sorted(colls.values(), key=position)}


def _read_metadata(f: Any, path: str) -> dict[str, Any] | None:
    if METADATA_KEY not in f.keys(cycle=False):
        return None
    try:
        meta = json.loads(str(f[METADATA_KEY]))
    except Exception as exc:
        raise InputError(
            f"input file {path}: its {METADATA_KEY!r} object is not the JSON hltemu writes: {exc}"
        ) from None
    if not isinstance(meta, dict):
        raise InputError(f"input file {path}: its {METADATA_KEY!r} object is not a JSON object")
    return meta


def _inspect(path: str, tree: str = TREE_NAME) -> _FileLayout:
    """Validate ``path`` and describe the collections of its ``tree`` (no event data read).

    The description is cached per (path, size, modification time, tree): listing the ~1000
    branches of a NanoAOD file takes a few tenths of a second, and a run inspects each file
    three times (collections, event count, reading).  Errors are not cached.
    """
    _check_file(path)
    st = os.stat(path)
    return _inspect_cached(os.path.realpath(path), str(path), st.st_size, st.st_mtime_ns, tree)


@functools.lru_cache(maxsize=64)
def _inspect_cached(real: str, path: str, size: int, mtime_ns: int, tree: str) -> _FileLayout:
    with _open_tree(path, tree) as (f, t):
        meta = _read_metadata(f, path)
        if meta is not None and meta.get("tree") != tree:
            meta = None
        try:
            if isinstance(t, uproot.behaviors.TTree.TTree):
                kind, fields = "TTree", _scan_ttree(t)
            else:
                kind, fields = "RNTuple", _scan_rntuple(t)
            entries = int(t.num_entries)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{_where(path, tree)}: cannot read its branch list: {exc}") from None
    colls = _classify(fields, (meta or {}).get("collections", {}))
    return _FileLayout(str(path), tree, kind, entries, colls, meta)


def read_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``hltemu_metadata`` of a file written by :class:`OutputWriter` (``None`` for other
    files): ``{"hltemu_version", "tree", "collections": {name: {"per_event", "columns":
    {column: {"dtype", "shape"}}}}}``."""
    path = str(path)
    f = open_root(path)
    with f:
        return _read_metadata(f, path)


def _as_paths(files: Paths) -> list[str]:
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    paths = [os.fspath(f) for f in files]
    if not paths:
        raise InputError("no input files given")
    return paths


def count_events(files: Paths, tree: str = TREE_NAME) -> int:
    """Total number of events (tree entries) in ``files``, after validating each file.

    Raises :class:`InputError` for a missing, non-ROOT or truncated file or a missing tree.
    """
    total = 0
    for path in _as_paths(files):
        with _open_tree(path, tree) as (_, t):
            total += int(t.num_entries)
    return total


def common_collections(files: Paths, tree: str = TREE_NAME) -> list[str]:
    """Names of the collections present in every file (in the first file's order).

    Collections are found by the NanoAOD naming convention described in the package
    docstring (hltemu.io); e.g. CMS NanoAOD gives ``GenPart``, ``Jet``, ``HLT``, ``PV``, ...
    """
    layouts = [_inspect(p, tree) for p in _as_paths(files)]
    first = list(layouts[0].collections)
    return [c for c in first if all(c in lay.collections for lay in layouts[1:])]


def counts_only_collections(files: Paths, tree: str = TREE_NAME) -> list[str]:
    """Names of the jagged collections that some file in ``files`` holds as per-event counts
    only (a counter ``nC`` and no column), as ``hltemu run`` writes its largest products by
    default (the doublets); in the first such file's order."""
    out: list[str] = []
    for p in _as_paths(files):
        for name, c in _inspect(p, tree).collections.items():
            if not c.per_event and not c.columns and name not in out:
                out.append(name)
    return out
