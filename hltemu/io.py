"""ROOT input and output: the schemas, chunked reading into EventBatches, writing products.

Schema conventions (NanoAOD style, one TTree ``Events``, one entry per event):

* a jagged collection ``C`` with column ``x`` is the branch ``C_x`` with the counter ``nC``;
* an event-level collection (``Collection.per_event``) ``C`` with column ``x`` is the scalar
  branch ``C_x``;
* a column with a fixed inner shape (a pixel-charge pad per hit) is stored flattened, see
  :class:`ColumnSpec`.

Sections of this module: schema (the declarations below, :func:`describe_schema`), errors,
validation (opening a file and finding its collections), reading (:func:`count_events`,
:func:`common_collections`, :func:`iterate_batches`, :func:`read_collections`) and writing
(:class:`OutputWriter`).

How branches map to collections
-------------------------------
The reader works on files hltemu did not write (e.g. CMS NanoAOD), by these rules:

* a jagged branch ``C_x`` counted by ``nC`` is column ``x`` of the jagged collection ``C``
  (``C`` is the counter's name without its leading ``n``; ``x`` may contain ``_``);
* a jagged branch ``C`` with no ``_``, counted by ``nC`` (NanoAOD's ``LHEPdfWeight``,
  ``PSWeight``), is a one-column collection ``C`` whose column is ``"value"``;
* a jagged branch ``C_x`` counted by its own counter ``nC_x``, where ``C`` is a jagged
  collection, is the column ``x`` of ``C`` stored flattened: ``prod(shape)`` values per row of
  ``C``, the inner ``shape`` coming from the file's hltemu metadata or the schema's
  :attr:`ColumnSpec.shape` (``()`` when neither knows it);
* a scalar (or fixed-size array) branch ``C_x`` with no counter ``nC`` is column ``x`` of the
  event-level collection ``C`` (NanoAOD's ``HLT_*`` trigger bits become the collection
  ``HLT``, ``PV_*`` the collection ``PV``); the name is split at its first ``_``;
* branches with no ``_`` that are not counters (NanoAOD's ``run``, ``luminosityBlock``,
  ``event``, ``genWeight``, ``fixedGridRhoFastjetAll``) belong to no collection and are not
  read; so are branches of types other than numbers and booleans (strings, objects);
* a branch that breaks these rules for a collection (a scalar ``C_x`` beside a counter ``nC``,
  a jagged ``C_x`` counted by something other than ``nC``) makes that collection unreadable,
  with an :class:`InputError` naming the branch when the collection is asked for.

Files written by :class:`OutputWriter` carry a ``hltemu_metadata`` object (a ``TObjString``
holding JSON: the hltemu version, the tree, every collection with its columns, dtypes and
inner shapes); the reader uses it to resolve collection names that contain ``_`` and inner
shapes of N-D columns of collections not in the schema.

RNTuples (what ``f[name] = {...}`` writes with uproot >= 5.7) are read too, with the same
rules, where a jagged field needs no counter and a field ``C`` of type ``var * {x, y, ...}``
is the jagged collection ``C``.  :class:`OutputWriter` always writes a TTree.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

from hltemu.backends import Backend, get_backend
from hltemu.batch import BatchError, Collection, EventBatch

#: Name of the TTree holding events, in every file hltemu reads or writes.
TREE_NAME = "Events"

#: Event-level collection carried from input to output (event number, pileup, vertex).
EVENT = "Event"

#: Pixel-charge pad stored per hit: PIXEL_PAD_SHAPE[0] pixels along the module's local x
#: (100 um pitch) times PIXEL_PAD_SHAPE[1] along local y (150 um pitch), centred on the cluster.
PIXEL_PAD_SHAPE: tuple[int, int] = (8, 8)


@dataclass(frozen=True)
class ColumnSpec:
    """One column: dtype, unit ('' when dimensionless), meaning, fixed inner shape per row."""

    dtype: np.dtype
    unit: str
    doc: str
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class CollectionSpec:
    """One collection of the schema: its columns and whether it is event-level."""

    name: str
    columns: dict[str, ColumnSpec]
    per_event: bool = False
    doc: str = ""


def _c(dtype: str, unit: str, doc: str, shape: tuple[int, ...] = ()) -> ColumnSpec:
    return ColumnSpec(np.dtype(dtype), unit, doc, shape)


#: What ``hltemu generate`` writes and ``hltemu run`` reads.
INPUT_SCHEMA: dict[str, CollectionSpec] = {
    EVENT: CollectionSpec(
        EVENT,
        {
            "event": _c("int64", "", "event number within the generated run"),
            "n_pileup": _c("int32", "", "number of pileup interactions overlaid"),
            "pv_z": _c("float32", "cm", "z of the hard-scatter vertex"),
        },
        per_event=True,
        doc="event-level information",
    ),
    "GenPart": CollectionSpec(
        "GenPart",
        {
            "pt": _c("float32", "GeV", "transverse momentum"),
            "eta": _c("float32", "", "pseudorapidity"),
            "phi": _c("float32", "rad", "azimuth in [-pi, pi)"),
            "mass": _c("float32", "GeV", "generator mass"),
            "pdgId": _c("int32", "", "PDG particle code"),
            "charge": _c("int32", "e", "electric charge"),
            "status": _c("int32", "", "1 = final state (Pythia isFinal), else 2"),
            "vx": _c("float32", "cm", "production vertex x"),
            "vy": _c("float32", "cm", "production vertex y"),
            "vz": _c("float32", "cm", "production vertex z"),
            "vertex": _c("int32", "", "interaction index: 0 = hard scatter, k > 0 = pileup k"),
        },
        doc="generator particles (truth), final state and the hard-process record",
    ),
    "PixelHit": CollectionSpec(
        "PixelHit",
        {
            "x": _c("float32", "cm", "global x"),
            "y": _c("float32", "cm", "global y"),
            "z": _c("float32", "cm", "global z"),
            "layer": _c("int32", "",
                        "0-3 barrel BPix1-4, 4-6 forward disks +z 1-3, 7-9 disks -z 1-3"),
            "module": _c("int32", "", "module index within the layer or disk"),
            "u": _c("float32", "cm", "module-local x (r-phi direction, 100 um pitch)"),
            "v": _c("float32", "cm", "module-local y (z in the barrel, r in disks; 150 um pitch)"),
            "size_x": _c("int32", "pixels", "cluster size along local x"),
            "size_y": _c("int32", "pixels", "cluster size along local y"),
            "charge": _c("float32", "electrons", "total cluster charge"),
            "pad": _c("float32", "electrons", "pixel charges around the cluster centre",
                      PIXEL_PAD_SHAPE),
            "sim_index": _c("int32", "", "truth: GenPart index of the particle, -1 for noise"),
        },
        doc="reconstructed pixel clusters (hits) of the Phase-1 pixel detector",
    ),
    "CaloCell": CollectionSpec(
        "CaloCell",
        {
            "id": _c("int32", "", "cell index in hltemu.geometry's calorimeter (ECAL then HCAL)"),
            "energy": _c("float32", "GeV", "measured energy, electronic noise included"),
            "true_energy": _c("float32", "GeV", "truth: energy deposited by particles"),
        },
        doc="calorimeter cells (every cell of the geometry, noise included)",
    ),
}

#: Name of the TObjString (JSON) that :class:`OutputWriter` writes beside the tree.
METADATA_KEY = "hltemu_metadata"

#: Paths given to the readers: one path or a sequence of them.
Paths = str | os.PathLike | Sequence[str | os.PathLike]


def describe_schema(schema: Mapping[str, CollectionSpec] = INPUT_SCHEMA) -> list[dict[str, str]]:
    """One row per column of ``schema`` (for documentation and ``hltemu info``).

    Each row has the keys ``collection``, ``column``, ``branch`` (the TTree branch), ``dtype``,
    ``shape`` (inner shape per row, ``""`` for scalars), ``unit`` and ``doc``.
    """
    rows = []
    for cname, spec in schema.items():
        for col, cs in spec.columns.items():
            branch = f"{cname}_{col}"
            if cs.shape:
                branch += f" (flattened, counter n{cname}_{col})"
            elif not spec.per_event:
                branch += f" (counter n{cname})"
            rows.append({
                "collection": cname,
                "column": col,
                "branch": branch,
                "dtype": str(cs.dtype),
                "shape": " x ".join(map(str, cs.shape)),
                "unit": cs.unit,
                "doc": cs.doc,
            })
    return rows


# =============================================================================================
# Errors
# =============================================================================================


class InputError(ValueError):
    """A problem with an input file: missing, not ROOT, truncated, or not in the expected
    layout.  The message names the file, the tree/branch/value concerned and what was expected.
    """


class OutputError(BatchError):
    """A batch that cannot be written: unknown collection, unsupported dtype, or columns that
    differ from those of the first batch written to the same file."""


def _where(path: str, tree: str | None = None) -> str:
    return f"input file {path}" + (f", tree {tree!r}" if tree is not None else "")


# =============================================================================================
# Validation: opening a file, finding its tree and its collections
# =============================================================================================


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
    """

    name: str
    branch: str
    dtype: np.dtype
    shape: tuple[int, ...] | None = ()
    stored_flat: bool = False
    counter: str | None = None
    field: str | None = None

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
    _check_file(path)
    try:
        f = uproot.open(Path(path))
    except Exception as exc:
        raise InputError(f"input file {path} cannot be opened as a ROOT file: {exc}") from None
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


#: dtype kinds the reader turns into columns: bool, signed and unsigned integers, floats.
_NUMERIC_KINDS = frozenset("biuf")


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
    """Group fields into collections by the rules in this module's docstring.

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
            if s is None:
                continue
            cname, x = s
            if cname in jagged:
                coll(cname, False).problems.append(
                    f"branch {f.name!r} is a scalar per event, but collection {cname!r} is "
                    f"jagged (counter n{cname}); expected a jagged branch"
                )
                continue
            coll(cname, True).columns[x] = _Column(x, f.name, f.dtype, f.shape)

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
    _check_file(path)
    try:
        f = uproot.open(Path(path))
    except Exception as exc:
        raise InputError(f"input file {path} cannot be opened as a ROOT file: {exc}") from None
    with f:
        return _read_metadata(f, path)


def _as_paths(files: Paths) -> list[str]:
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    paths = [os.fspath(f) for f in files]
    if not paths:
        raise InputError("no input files given")
    return paths


# =============================================================================================
# Reading
# =============================================================================================


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

    Collections are found by the NanoAOD naming convention described in this module's
    docstring; e.g. CMS NanoAOD gives ``GenPart``, ``Jet``, ``HLT``, ``PV``, ...
    """
    layouts = [_inspect(p, tree) for p in _as_paths(files)]
    first = list(layouts[0].collections)
    return [c for c in first if all(c in lay.collections for lay in layouts[1:])]


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


def _plan_collection(
    lay: _FileLayout,
    name: str,
    wanted: Sequence[str] | None,
    schema: Mapping[str, CollectionSpec],
) -> _CollPlan:
    """Check that collection ``name`` can be read from ``lay`` with the ``wanted`` columns
    (``None``: every column the file has; in a file written by hltemu, every column of the
    schema and of its metadata must then be there) and resolve the columns' shapes."""
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
            required = set(schema_cols) | set(meta_cols)
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
                f"{where}: collection {name!r} has no branch {f'{name}_{col}'!r}{what}; "
                f"its columns: {', '.join(cl.columns) or 'none'}"
            )
        shape = c.shape
        if shape is None:  # flattened column: shape from the schema, else one value per row
            shape = cspec.shape if cspec is not None else ()
            c = _Column(c.name, c.branch, c.dtype, shape, c.stored_flat, c.counter, c.field)
        if cspec is not None:
            if c.dtype != cspec.dtype:
                raise InputError(
                    f"{where}: branch {c.branch!r} of collection {name!r} has dtype {c.dtype}, "
                    f"expected {cspec.dtype} ({cspec.unit or 'no unit'}: {cspec.doc})"
                )
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
        cols = {c.name: _numpy(chunk[c.branch]) for c in plan.columns}
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
        (in a file written by hltemu, every column of the schema and of its metadata must then
        be present); a list of names means ``None`` for each.  ``None`` (the default) reads
        every collection common to all files.
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


# =============================================================================================
# Writing
# =============================================================================================

#: Columns of one written collection: name -> (dtype name, inner shape).
_ColumnKeys = dict[str, tuple[str, tuple[int, ...]]]
#: Written collections: name -> (per_event, columns).
_Layout = dict[str, tuple[bool, _ColumnKeys]]

_COLLECTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_COLUMN_NAME = re.compile(r"[A-Za-z0-9_]+")


def _column_key(col: np.ndarray) -> tuple[str, tuple[int, ...]]:
    """(dtype name in native byte order, inner shape) of a column."""
    return col.dtype.newbyteorder("=").name, tuple(int(s) for s in col.shape[1:])


def _native(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))


class OutputWriter:
    """Append collections of event batches to a ROOT file (one TTree, NanoAOD layout).

    Jagged collection ``C``: counter ``nC`` and branches ``C_x``; event-level collection ``C``:
    scalar (or fixed-size array) branches ``C_x``.  A jagged column with an inner shape (e.g.
    ``PixelHit.pad``, ``(n_hits, 8, 8)``) is written flattened as branch ``C_x`` with its own
    counter ``nC_x`` (``prod(shape)`` values per row), because uproot does not write
    ``var * 8 * 8 * float32`` correctly; the reader restores the shape.  A jagged collection
    with no 1-D column gets an explicit ``nC`` branch.  The file also holds the
    ``hltemu_metadata`` JSON (:data:`METADATA_KEY`: hltemu version, tree, collections, columns,
    dtypes, shapes), written with the tree.

    The first :meth:`write` fixes the collections and their columns; later writes must have
    the same ones (:class:`OutputError` otherwise).  A file closed before any write holds the
    metadata but no tree.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike, tree: str = TREE_NAME,
                 compression: Any = None) -> None:
        """``compression``: an uproot compression (e.g. ``uproot.LZMA(9)``); ``None`` keeps
        uproot's default (ZLIB level 1)."""
        self.path = os.fspath(path)
        self.tree_name = tree
        self.n_events = 0
        self._tree: Any = None
        self._layout: _Layout | None = None
        self._meta_written = False
        try:
            kwargs = {} if compression is None else {"compression": compression}
            self._file: Any = uproot.recreate(Path(self.path), **kwargs)
        except Exception as exc:
            raise OutputError(f"cannot create output file {self.path}: {exc}") from None

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._file is None

    def close(self) -> None:
        """Write the metadata if no batch was written, and close the file (idempotent)."""
        if self._file is None:
            return
        try:
            if not self._meta_written:
                self._write_metadata({})
        finally:
            self._file.close()
            self._file = None

    def write(self, batch: EventBatch, names: Sequence[str] | None = None) -> None:
        """Append the collections ``names`` (``None``: all) of ``batch`` as ``batch.n_events``
        new entries.  Arrays on a GPU are copied to the host first."""
        if self._file is None:
            raise OutputError(f"output file {self.path} is closed")
        names = list(batch.collections) if names is None else list(dict.fromkeys(names))
        missing = [n for n in names if n not in batch]
        if missing:
            raise OutputError(
                f"cannot write collection(s) {missing} to {self.path}: the batch has "
                f"{sorted(batch.collections)}"
            )
        colls = {n: batch[n].to_host() for n in names}
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
                f"collection name {name!r} cannot be a branch prefix in {self.path}: use letters, "
                "digits and '_', starting with a letter"
            )
        cols = {}
        for col, arr in coll.columns.items():
            if not _COLUMN_NAME.fullmatch(col):
                raise OutputError(
                    f"column name {col!r} of collection {name!r} cannot be a branch name in "
                    f"{self.path}: use letters, digits and '_'"
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
                f"output file {self.path}: this batch writes collections {sorted(layout)}, the "
                f"first batch wrote {sorted(self._layout)}"
            )
        for n, (per_event, cols) in layout.items():
            first_pe, first_cols = self._layout[n]
            if per_event != first_pe:
                return (
                    f"output file {self.path}: collection {n!r} is "
                    f"{'event-level' if per_event else 'jagged'} in this batch, "
                    f"{'event-level' if first_pe else 'jagged'} in the first batch written"
                )
            if cols != first_cols:
                return (
                    f"output file {self.path}: collection {n!r} has columns {cols} (dtype, "
                    f"inner shape), the first batch wrote {first_cols}"
                )
        return f"output file {self.path}: batch layout differs from the first batch"

    def _branch_names(self, name: str, per_event: bool, cols: Mapping[str, Any]) -> list[str]:
        if per_event:
            return [f"{name}_{c}" for c in cols]
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
                        f"output file {self.path}: collections {seen[b]!r} and {n!r} would both "
                        f"write the branch {b!r}; rename one of them"
                    )
                seen[b] = n
        types: dict[str, Any] = {}
        for n, (pe, cols) in layout.items():
            types.update(self._types(n, pe, cols))
        try:
            self._tree = self._file.mktree(self.tree_name, types)
        except Exception as exc:
            raise OutputError(f"output file {self.path}: cannot create tree: {exc}") from None
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
                types[f"{name}_{c}"] = leaf(dt, shape)
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
            return {f"{name}_{c}": _native(a) for c, a in coll.columns.items()}
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
