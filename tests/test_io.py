"""ROOT I/O: writing and reading back batches, validation of bad inputs, real CMS NanoAOD."""

from __future__ import annotations

import math
import re
import struct
import tempfile
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hltemu
from hltemu import io
from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.io import INPUT_SCHEMA, InputError, OutputError, OutputWriter

REF = get_backend("reference")


# ---------------------------------------------------------------------------------------------
# helpers: random batches, concatenation, comparison
# ---------------------------------------------------------------------------------------------


def random_column(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.normal(0.0, 10.0, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(size=shape) < 0.5
    info = np.iinfo(dtype)
    return rng.integers(
        max(info.min, -1000), min(info.max, 1000), size=shape, endpoint=True
    ).astype(dtype)


def random_input_batch(
    rng: np.random.Generator, n_events: int, max_rows: int = 6, empty: bool = False
) -> EventBatch:
    """A batch of every INPUT_SCHEMA collection with random content (some events empty)."""
    colls = {}
    for name, spec in INPUT_SCHEMA.items():
        if spec.per_event:
            counts = np.ones(n_events, dtype=np.int64)
        elif empty:
            counts = np.zeros(n_events, dtype=np.int64)
        else:
            counts = rng.integers(0, max_rows + 1, size=n_events)
            counts[rng.random(n_events) < 0.3] = 0
        n = int(counts.sum())
        cols = {c: random_column(rng, cs.dtype, (n, *cs.shape)) for c, cs in spec.columns.items()}
        colls[name] = (
            Collection.event_level(cols) if spec.per_event else Collection.from_counts(counts, cols)
        )
    return EventBatch(REF, n_events, colls)


def concat(colls: list[Collection]) -> Collection:
    """Concatenate the events of several host collections of the same layout."""
    counts = np.concatenate([np.asarray(c.counts) for c in colls])
    columns = {k: np.concatenate([c.columns[k] for c in colls]) for k in colls[0].columns}
    return Collection(
        np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), columns, colls[0].per_event
    )


def assert_same(got: Collection, expected: Collection) -> None:
    got, expected = got.to_host(), expected.to_host()
    assert got.per_event == expected.per_event
    np.testing.assert_array_equal(got.offsets, expected.offsets)
    assert list(got.columns) == list(expected.columns)
    for k, v in expected.columns.items():
        g = got.columns[k]
        assert g.dtype == v.dtype, k
        assert g.shape == v.shape, k
        np.testing.assert_array_equal(g, v, err_msg=k)


def write_file(path: Path, batches: list[EventBatch], names: list[str] | None = None) -> Path:
    with OutputWriter(path) as w:
        for b in batches:
            w.write(b, names)
    return path


@pytest.fixture(scope="module")
def input_files(tmp_path_factory) -> tuple[list[Path], list[EventBatch]]:
    """Two files in the input schema: written in several writes, with empty events, a batch
    with no object at all and a zero-event batch."""
    rng = np.random.default_rng(7)
    d = tmp_path_factory.mktemp("io_inputs")
    a = [
        random_input_batch(rng, 9),
        random_input_batch(rng, 0),
        random_input_batch(rng, 4, empty=True),
        random_input_batch(rng, 13),
    ]
    b = [random_input_batch(rng, 1), random_input_batch(rng, 10, max_rows=2)]
    return [write_file(d / "a.root", a), write_file(d / "b.root", b)], a + b


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 4, 9, 100])
@pytest.mark.parametrize("max_events", [None, 0, 5, 26, 30, 1000])
def test_round_trip_input_schema(input_files, batch_size, max_events):
    files, written = input_files
    n_total = sum(b.n_events for b in written)
    assert io.count_events(files) == n_total == 37
    assert io.common_collections(files) == list(INPUT_SCHEMA)
    batches = list(io.iterate_batches(files, batch_size=batch_size, max_events=max_events))
    n_read = n_total if max_events is None else min(max_events, n_total)
    assert sum(b.n_events for b in batches) == n_read
    # batches never span two files; source and first_entry locate them
    entries = {str(files[0]): 0, str(files[1]): 0}
    for b in batches:
        assert 1 <= b.n_events <= batch_size
        assert b.backend.name == "reference"
        assert b.first_entry == entries[b.source]
        entries[b.source] += b.n_events
    assert entries[str(files[0])] == min(n_read, 26)
    if n_read == 0:
        return
    for name in INPUT_SCHEMA:
        expected = concat([w[name] for w in written]).select_events(0, n_read)
        assert_same(concat([b[name] for b in batches]), expected)
    pads = concat([b["PixelHit"] for b in batches])["pad"]
    assert pads.shape[1:] == io.PIXEL_PAD_SHAPE and pads.dtype == np.float32


def test_round_trip_selected_columns(input_files):
    files, written = input_files
    want = {"PixelHit": ["pad", "x"], "Event": ["pv_z"]}
    (batch,) = io.iterate_batches(files[0], want, batch_size=1000)
    assert set(batch) == {"PixelHit", "Event"}
    assert list(batch["PixelHit"].columns) == ["pad", "x"]
    expected = concat([w["PixelHit"] for w in written[:4]])
    np.testing.assert_array_equal(batch["PixelHit"]["pad"], expected["pad"])
    np.testing.assert_array_equal(batch["PixelHit"].offsets, expected.offsets)
    assert batch["Event"].per_event and list(batch["Event"].columns) == ["pv_z"]
    # a list of names means every column of each
    (again,) = io.iterate_batches(files[0], ["CaloCell"], batch_size=1000)
    assert list(again["CaloCell"].columns) == list(INPUT_SCHEMA["CaloCell"].columns)


def test_read_collections_and_metadata(input_files):
    files, written = input_files
    colls = io.read_collections(files[1])
    assert list(colls) == list(INPUT_SCHEMA)
    for name in INPUT_SCHEMA:
        assert_same(colls[name], concat([w[name] for w in written[4:]]))
    only = io.read_collections(files[1], ["CaloCell"])
    assert list(only) == ["CaloCell"]
    meta = io.read_metadata(files[1])
    assert meta["hltemu_version"] == hltemu.__version__
    assert meta["collections"]["PixelHit"]["columns"]["pad"] == {
        "dtype": "float32",
        "shape": [8, 8],
    }
    assert (
        io.read_metadata(Path(__file__).parent / "data" / "nanoAOD_2015_CMS_Open_Data_ttbar.root")
        is None
    )


def test_read_on_every_backend(input_files, backend):
    files, written = input_files
    batches = list(
        io.iterate_batches(
            files, {"PixelHit": None, "Event": None}, batch_size=8, backend=backend.name
        )
    )
    assert all(b.backend.name == backend.name for b in batches)
    for name in ("PixelHit", "Event"):
        got = concat([b[name].to_host() for b in batches])
        assert_same(got, concat([w[name] for w in written]))


def test_write_from_a_device_batch(tmp_path, backend):
    rng = np.random.default_rng(3)
    batch = random_input_batch(rng, 6)
    write_file(tmp_path / "dev.root", [batch.to(backend)])
    got = io.read_collections(tmp_path / "dev.root")
    for name in INPUT_SCHEMA:
        assert_same(got[name], batch[name])


def test_zero_event_and_empty_files(tmp_path):
    rng = np.random.default_rng(5)
    # only a zero-event batch: a tree with no entries and the right branch types
    path = write_file(tmp_path / "zero.root", [random_input_batch(rng, 0)])
    assert io.count_events(path) == 0
    assert list(io.iterate_batches(path)) == []
    colls = io.read_collections(path)
    for name, spec in INPUT_SCHEMA.items():
        assert colls[name].n_events == 0 and colls[name].per_event == spec.per_event
        for col, cs in spec.columns.items():
            assert colls[name][col].dtype == cs.dtype and colls[name][col].shape == (0, *cs.shape)
    # events with no objects at all
    path = write_file(tmp_path / "noobj.root", [random_input_batch(rng, 5, empty=True)])
    colls = io.read_collections(path)
    assert colls["PixelHit"].n_events == 5 and colls["PixelHit"].size == 0
    assert colls["PixelHit"]["pad"].shape == (0, 8, 8)
    # a writer closed before any write leaves metadata but no tree: a clear error on reading
    OutputWriter(tmp_path / "nothing.root").close()
    assert io.read_metadata(tmp_path / "nothing.root")["collections"] == {}
    with pytest.raises(
        InputError, match=r"nothing\.root has no tree 'Events'; it holds no TTree or RNTuple"
    ):
        io.count_events(tmp_path / "nothing.root")


def test_products_with_any_name_and_shape(tmp_path):
    """Collections not in the schema: names with '_', N-D columns, no 1-D column, no column."""
    rng = np.random.default_rng(11)
    counts = np.array([2, 0, 3, 1])
    n = int(counts.sum())
    batch = EventBatch(
        REF,
        4,
        {
            "doublet_scores": Collection.from_counts(
                counts,
                {
                    "score": rng.random(n).astype(np.float32),
                    "inner_hit": np.arange(n, dtype=np.int64),
                },
            ),
            "images": Collection.from_counts(counts, {"pix": rng.random((n, 2, 3))}),
            "marks": Collection.from_counts(counts, {}),
            "rho_grid": Collection.event_level(
                {
                    "value": rng.random((4, 3, 2)).astype(np.float32),
                    "n_cells": np.arange(4, dtype=np.int32),
                }
            ),
            "trigger": Collection.event_level({"HT_500": np.array([True, False, True, True])}),
        },
    )
    path = write_file(tmp_path / "products.root", [batch, batch.select_events(1, 3)])
    keys = set(uproot.open(path)["Events"].keys())
    assert {
        "ndoublet_scores",
        "doublet_scores_score",
        "nimages_pix",
        "images_pix",
        "nmarks",
        "rho_grid_value",
        "trigger_HT_500",
    } <= keys
    got = io.read_collections(path)
    assert set(got) == set(batch)
    for name in batch:
        assert_same(got[name], concat([batch[name], batch.select_events(1, 3)[name]]))


# ---------------------------------------------------------------------------------------------
# property test: random jagged content round-trips exactly
# ---------------------------------------------------------------------------------------------

DTYPES = ["float32", "float64", "int32", "int64", "int8", "uint8", "uint16", "bool"]
SHAPES = [(), (), (2,), (3, 2)]
NAMES = ["Jets", "my_jets", "Trig", "rho_grid", "Hits"]


@st.composite
def layouts(draw):
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    out = {}
    for name in names:
        per_event = draw(st.booleans())
        n_cols = draw(st.integers(1 if per_event else 0, 3))
        cols = {
            f"c{i}_{draw(st.sampled_from(['x', 'y_z']))}": (
                draw(st.sampled_from(DTYPES)),
                draw(st.sampled_from(SHAPES)),
            )
            for i in range(n_cols)
        }
        out[name] = (per_event, cols, draw(st.integers(0, 5)))
    return out


def build_batch(rng, layout, n_events) -> EventBatch:
    colls = {}
    for name, (per_event, cols, max_rows) in layout.items():
        counts = np.ones(n_events, int) if per_event else rng.integers(0, max_rows + 1, n_events)
        n = int(counts.sum())
        data = {c: random_column(rng, dt, (n, *shape)) for c, (dt, shape) in cols.items()}
        colls[name] = Collection(
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), data, per_event
        )
    return EventBatch(REF, n_events, colls)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=layouts(),
    sizes=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    batch_size=st.integers(1, 7),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_round_trip(layout, sizes, batch_size, seed):
    rng = np.random.default_rng(seed)
    written = [build_batch(rng, layout, n) for n in sizes]
    with tempfile.TemporaryDirectory() as d:
        path = write_file(Path(d) / "p.root", written)
        batches = list(io.iterate_batches(path, batch_size=batch_size, schema={}))
        whole = io.read_collections(path, schema={})
    assert [b.n_events for b in batches] == [
        min(batch_size, sum(sizes) - s) for s in range(0, sum(sizes), batch_size)
    ]
    for name in layout:
        expected = concat([w[name] for w in written])
        assert_same(whole[name], expected)
        if batches:
            assert_same(concat([b[name] for b in batches]), expected)


# ---------------------------------------------------------------------------------------------
# writer errors
# ---------------------------------------------------------------------------------------------


def test_writer_errors(tmp_path):
    rng = np.random.default_rng(1)
    batch = random_input_batch(rng, 3)
    with OutputWriter(tmp_path / "w.root") as w:
        with pytest.raises(
            OutputError,
            match=r"cannot write collection\(s\) \['jets'\] .*the batch has \['CaloCell'",
        ):
            w.write(batch, ["jets"])
        w.write(batch, ["CaloCell", "Event"])
        with pytest.raises(
            OutputError,
            match=(
                r"this batch writes collections \['CaloCell'\], the first batch wrote "
                r"\['CaloCell', 'Event'\]"
            ),
        ):
            w.write(batch, ["CaloCell"])
        other = EventBatch(
            REF,
            3,
            {
                "CaloCell": Collection.from_counts(
                    batch["CaloCell"].counts, {"energy": np.zeros(batch["CaloCell"].size)}
                ),
                "Event": batch["Event"],
            },
        )
        with pytest.raises(
            OutputError,
            match=r"collection 'CaloCell' has columns \{'energy': \('float64', \(\)\)\}",
        ):
            w.write(other)
    with pytest.raises(OutputError, match="output file .*w.root is closed"):
        w.write(batch)
    bad = EventBatch(REF, 1, {"X": Collection.event_level({"z": np.array([1 + 2j])})})
    with (
        OutputWriter(tmp_path / "x.root") as w,
        pytest.raises(
            OutputError, match="column X.z has dtype complex128, which a TTree cannot hold"
        ),
    ):
        w.write(bad)
    for name, col in [("9lives", "x"), ("ok", "a-b")]:
        b = EventBatch(REF, 1, {name: Collection.event_level({col: np.ones(1)})})
        with (
            OutputWriter(tmp_path / "y.root") as w,
            pytest.raises(OutputError, match=re.escape(repr(name if name[0] == "9" else col))),
        ):
            w.write(b)
    clash = EventBatch(
        REF,
        1,
        {
            "A": Collection.event_level({"b_c": np.ones(1)}),
            "A_b": Collection.event_level({"c": np.ones(1)}),
        },
    )
    with (
        OutputWriter(tmp_path / "z.root") as w,
        pytest.raises(
            OutputError, match="collections 'A' and 'A_b' would both write the branch 'A_b_c'"
        ),
    ):
        w.write(clash)
    (tmp_path / "plain").write_text("a file, not a directory")
    with pytest.raises(OutputError, match=r"cannot create output file .*plain/out\.root"):
        OutputWriter(tmp_path / "plain" / "out.root")


# ---------------------------------------------------------------------------------------------
# bad inputs: each a clear InputError naming the file and what is wrong
# ---------------------------------------------------------------------------------------------


def _all_readers_raise(path: Path, pattern: str) -> None:
    for call in (
        lambda: io.count_events([path]),
        lambda: io.common_collections([path]),
        lambda: io.iterate_batches([path], {"CaloCell": None}),  # raises before any next()
        lambda: io.read_collections(path),
    ):
        with pytest.raises(InputError, match=pattern):
            call()


def test_missing_file_directory_text_and_empty(tmp_path):
    _all_readers_raise(tmp_path / "nope.root", r"input file .*nope\.root does not exist")
    _all_readers_raise(tmp_path, r"input file .* is a directory, not a ROOT file")
    text = tmp_path / "notes.txt"
    text.write_text("run 1, lumi 2\n" * 50)
    _all_readers_raise(
        text,
        (
            r"input file .*notes\.txt is not a ROOT file: it starts with b'run ', a ROOT file "
            r"starts with b'root'"
        ),
    )
    empty = tmp_path / "empty.root"
    empty.write_bytes(b"")
    _all_readers_raise(empty, r"input file .*empty\.root is empty \(0 bytes\), not a ROOT file")
    assert issubclass(InputError, ValueError)
    with pytest.raises(InputError, match="no input files given"):
        io.count_events([])


def test_truncated_file(tmp_path, input_files):
    good = input_files[0][0].read_bytes()
    cut = tmp_path / "cut.root"
    for frac in (0.5, 0.9, 0.01):
        cut.write_bytes(good[: int(len(good) * frac)])
        _all_readers_raise(
            cut,
            (
                rf"input file .*cut\.root is truncated: {int(len(good) * frac)} bytes on disk, "
                rf"its ROOT header says {len(good)}"
            ),
        )
    # a large-file header (ROOT version >= 1000000: 64-bit fEND) that promises more bytes
    big = tmp_path / "big.root"
    big.write_bytes(b"root" + struct.pack(">iiQ", 1_063_000, 100, 5_000_000_000) + bytes(200))
    _all_readers_raise(
        big, r"big\.root is truncated: 220 bytes on disk, its ROOT header says 5000000000"
    )
    big.write_bytes(b"root\0\0")
    _all_readers_raise(big, r"big\.root is truncated: 6 bytes, less than a ROOT header")


def test_corrupt_data_is_reported_with_the_file(tmp_path):
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 20, 3000)
    batch = EventBatch(
        REF, 3000, {"Jets": Collection.from_counts(counts, {"pt": rng.random(counts.sum())})}
    )
    data = bytearray(write_file(tmp_path / "good.root", [batch]).read_bytes())
    data[len(data) // 3 : len(data) // 3 + 4000] = bytes(4000)  # same size, broken baskets
    bad = tmp_path / "corrupt.root"
    bad.write_bytes(bytes(data))
    batches = io.iterate_batches(bad, batch_size=500)
    with pytest.raises(
        InputError,
        match=r"input file .*corrupt\.root, tree 'Events': cannot read entries \d+-\d+: ",
    ):
        list(batches)


def test_missing_tree_and_not_a_tree(tmp_path):
    with uproot.recreate(tmp_path / "other.root") as f:
        f.mktree("Runs", {"run": np.int32}).extend({"run": np.arange(2, dtype=np.int32)})
        f["Events"] = "a string, not a tree"
    _all_readers_raise(
        tmp_path / "other.root",
        r"other\.root: 'Events' is a TObjString, not a TTree or RNTuple; its trees: 'Runs'",
    )
    with pytest.raises(InputError, match=r"other\.root has no tree 'Ev'; its trees: 'Runs'"):
        io.count_events(tmp_path / "other.root", tree="Ev")
    assert io.count_events(tmp_path / "other.root", tree="Runs") == 2


def _write_partial(path: Path, drop: str | None = None, **replace: np.ndarray) -> Path:
    """An input-schema file written by hltemu with GenPart column ``drop`` removed, or columns
    replaced (``name=array`` for GenPart)."""
    batch = random_input_batch(np.random.default_rng(4), 5)
    gp = batch["GenPart"]
    cols = {k: v for k, v in gp.columns.items() if k != drop}
    cols.update(replace)
    batch.add("GenPart", Collection(gp.offsets, cols))
    return write_file(path, [batch])


def test_missing_collection_and_branch(tmp_path, input_files):
    files = input_files[0]
    with pytest.raises(
        InputError,
        match=(
            r"a\.root, tree 'Events': no collection 'Jet' \(no branches Jet_\* nor counter "
            r"nJet\); collections present: Event, GenPart, PixelHit, CaloCell"
        ),
    ):
        io.iterate_batches(files, {"Jet": None})
    with pytest.raises(
        InputError,
        match=(
            r"a\.root, tree 'Events': collection 'CaloCell' has no branch 'CaloCell_eta'; its "
            r"columns: id, energy, true_energy"
        ),
    ):
        io.iterate_batches(files, {"CaloCell": ["energy", "eta"]})
    # a file written by hltemu must have every schema column when all columns are asked for
    path = _write_partial(tmp_path / "nocharge.root", drop="charge")
    msg = (
        r"nocharge\.root, tree 'Events': collection 'GenPart' has no branch 'GenPart_charge' "
        r"\(int32, e: electric charge\)"
    )
    with pytest.raises(InputError, match=msg):
        io.iterate_batches(path, {"GenPart": None})
    with pytest.raises(InputError, match=msg):
        io.read_collections(path)
    (b,) = io.iterate_batches(path, {"GenPart": ["pt", "pdgId"]})  # what is there can be read
    assert list(b["GenPart"].columns) == ["pt", "pdgId"]
    # validation covers every file before the first batch: the bad one is second here
    with pytest.raises(InputError, match="nocharge"):
        io.iterate_batches([files[0], path], {"GenPart": None})


def test_wrong_dtype_kind_and_shape(tmp_path):
    n = random_input_batch(np.random.default_rng(4), 5)["GenPart"].size  # as in _write_partial
    # float64 where the schema has float32 is converted (tests/test_planning.py); an integer
    # branch where it has floats is refused
    path = _write_partial(tmp_path / "i64.root", pt=np.zeros(n, dtype=np.int64))
    with pytest.raises(
        InputError,
        match=(
            r"i64\.root, tree 'Events': branch 'GenPart_pt' of collection 'GenPart' has dtype "
            r"int64, expected float32 \(GeV: transverse momentum\); only float to float and "
            r"integer to integer are converted"
        ),
    ):
        io.iterate_batches(path, {"GenPart": ["pt"]})
    # pads of the wrong shape
    batch = random_input_batch(np.random.default_rng(4), 3)
    ph = batch["PixelHit"]
    batch.add(
        "PixelHit",
        Collection(ph.offsets, {**ph.columns, "pad": np.zeros((ph.size, 4, 4), np.float32)}),
    )
    path = write_file(tmp_path / "pad44.root", [batch])
    with pytest.raises(
        InputError,
        match=(
            r"pad44\.root, tree 'Events': branch 'PixelHit_pad' of collection 'PixelHit' has "
            r"inner shape \(4, 4\) per row, expected \(8, 8\)"
        ),
    ):
        io.read_collections(path)
    # an event-level collection written as a jagged one
    ev = batch["Event"]
    batch.add("Event", Collection(ev.offsets, ev.columns, per_event=False))
    path = write_file(tmp_path / "jaggedevent.root", [batch], ["Event"])
    with pytest.raises(
        InputError,
        match=(
            r"jaggedevent\.root, tree 'Events': collection 'Event' is jagged \(counter nEvent\) "
            r"in the file, expected event-level \(scalar branches Event_\*\)"
        ),
    ):
        io.iterate_batches(path, {"Event": None})


def _record(**cols: np.ndarray) -> ak.types.Type:
    return ak.types.ListType(
        ak.types.RecordType([ak.types.NumpyType(v.dtype.name) for v in cols.values()], list(cols))
    )


def test_inconsistent_counters(tmp_path):
    counts = np.array([2, 0, 3])
    x = np.arange(5, dtype=np.float32)
    hits = ak.unflatten(ak.zip({"x": x}), counts)
    # pads stored flattened with 63 values per hit instead of 64
    path = tmp_path / "pad63.root"
    with uproot.recreate(path) as f:
        t = f.mktree(
            "Events",
            {
                "PixelHit": _record(x=x),
                "PixelHit_pad": ak.types.ListType(ak.types.NumpyType("float32")),
            },
        )
        t.extend(
            {
                "PixelHit": hits,
                "PixelHit_pad": ak.unflatten(np.zeros(5 * 63, np.float32), counts * 63),
            }
        )
    batches = io.iterate_batches(
        path, {"PixelHit": ["x", "pad"]}
    )  # validation passes: values unread
    with pytest.raises(
        InputError,
        match=(
            r"pad63\.root, tree 'Events', entry 0: branch 'PixelHit_pad' has 126 values, expected "
            r"128 \(64 x counter 'nPixelHit'\); inconsistent counters"
        ),
    ):
        list(batches)
    # a branch counted by another collection's counter
    path = tmp_path / "counter.root"
    with uproot.recreate(path) as f:
        t = f.mktree(
            "Events",
            {"Jet": _record(pt=x), "Muon": _record(pt=x)},
            counter_name=lambda c: "nMuon" if c == "Jet" else f"n{c}",
        )
        t.extend(
            {
                "Jet": ak.unflatten(ak.zip({"pt": x}), counts),
                "Muon": ak.unflatten(ak.zip({"pt": x}), counts),
            }
        )
    assert io.common_collections(path) == ["Jet", "Muon"]
    with pytest.raises(
        InputError,
        match=(
            r"counter\.root, tree 'Events': collection 'Jet': branch 'Jet_pt' is counted by "
            r"'nMuon', expected nJet; inconsistent counters"
        ),
    ):
        io.iterate_batches(path, {"Jet": None})
    assert io.read_collections(path, ["Muon"])["Muon"].counts.tolist() == [2, 0, 3]
    # a scalar branch beside a counter
    path = tmp_path / "scalar.root"
    with uproot.recreate(path) as f:
        t = f.mktree("Events", {"Jet": _record(pt=x), "Jet_n": np.int32})
        t.extend({"Jet": ak.unflatten(ak.zip({"pt": x}), counts), "Jet_n": counts.astype(np.int32)})
    with pytest.raises(
        InputError,
        match=(
            r"scalar\.root, tree 'Events': collection 'Jet': branch 'Jet_n' is a scalar per "
            r"event, but collection 'Jet' is jagged \(counter nJet\)"
        ),
    ):
        io.read_collections(path)


def test_files_that_disagree(tmp_path):
    def one(path, dtype, per_event=False):
        col = np.arange(3).astype(dtype)
        c = (
            Collection.event_level({"v": col})
            if per_event
            else Collection.from_counts([1, 2, 0], {"v": col})
        )
        return write_file(path, [EventBatch(REF, 3, {"Thing": c})])

    a, b = one(tmp_path / "a.root", np.int32), one(tmp_path / "b.root", np.float32)
    with pytest.raises(
        InputError,
        match=(
            r"column Thing\.v is int32 with inner shape \(\) in input file .*a\.root but float32 "
            r"with inner shape \(\) in input file .*b\.root"
        ),
    ):
        io.iterate_batches([a, b])
    c = one(tmp_path / "c.root", np.int32, per_event=True)
    with pytest.raises(
        InputError,
        match=(
            r"collection 'Thing' is event-level in input file .*c\.root but jagged in input file "
            r".*a\.root"
        ),
    ):
        io.iterate_batches([a, c])


def test_bad_arguments(input_files):
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        io.iterate_batches(input_files[0], batch_size=0)
    with pytest.raises(ValueError, match="max_events must be >= 0 or None, got -1"):
        io.iterate_batches(input_files[0], max_events=-1)
    with pytest.raises(
        ValueError,
        match="columns of collection 'CaloCell' must be a list of names or None, got 'energy'",
    ):
        io.iterate_batches(input_files[0], {"CaloCell": "energy"})


# ---------------------------------------------------------------------------------------------
# RNTuple input (what uproot >= 5.7 writes for f[name] = {...}): read with the same rules
# ---------------------------------------------------------------------------------------------


def test_rntuple_input(tmp_path):
    rng = np.random.default_rng(9)
    counts = np.array([3, 0, 2, 1])
    n = int(counts.sum())
    x = rng.random(n).astype(np.float32)
    layer = rng.integers(0, 10, n).astype(np.int32)
    jet_pt = rng.random(n).astype(np.float32)
    path = tmp_path / "rntuple.root"
    with uproot.recreate(path) as f:
        f["Events"] = {
            "PixelHit_x": ak.unflatten(x, counts),
            "PixelHit_layer": ak.unflatten(layer, counts),
            "Jet": ak.unflatten(ak.zip({"pt": jet_pt}), counts),
            "Event_event": np.arange(4, dtype=np.int64),
            "CaloCell_energy": ak.unflatten(rng.random(n), counts),  # float64: schema's float32
            "run": np.ones(4, dtype=np.int32),
        }
    assert uproot.open(path).classnames() == {"Events;1": "ROOT::RNTuple"}
    assert io.count_events(path) == 4
    assert set(io.common_collections(path)) == {"CaloCell", "Event", "Jet", "PixelHit"}
    batches = list(
        io.iterate_batches(
            path, {"PixelHit": ["x", "layer"], "Jet": None, "Event": ["event"]}, batch_size=3
        )
    )
    assert [b.n_events for b in batches] == [3, 1]
    hits = concat([b["PixelHit"] for b in batches])
    np.testing.assert_array_equal(hits.counts, counts)
    np.testing.assert_array_equal(hits["x"], x)
    np.testing.assert_array_equal(hits["layer"], layer)
    np.testing.assert_array_equal(concat([b["Jet"] for b in batches])["pt"], jet_pt)
    assert concat([b["Event"] for b in batches])["event"].tolist() == [0, 1, 2, 3]
    # uproot returns empty records for a missing RNTuple field: the reader must not
    with pytest.raises(
        InputError,
        match=r"rntuple\.root, tree 'Events': collection 'PixelHit' has no branch 'PixelHit_z'",
    ):
        io.iterate_batches(path, {"PixelHit": ["z"]})
    # float64 where the schema has float32: converted, with a note
    assert io.reading_notes(path, {"CaloCell": ["energy"]}) == [
        f"{path}: branch 'CaloCell_energy' is float64, read as float32 (rounded to float32 "
        "precision)"]
    cells = next(io.iterate_batches(path, {"CaloCell": ["energy"]}))["CaloCell"]
    assert cells["energy"].dtype == np.float32


# ---------------------------------------------------------------------------------------------
# a file hltemu did not write: real CMS NanoAOD (2015 ttbar, 200 events, CMS Open Data)
# ---------------------------------------------------------------------------------------------


def test_cms_nanoaod_collections(cms_nanoaod):
    assert io.count_events(cms_nanoaod) == 200
    present = io.common_collections(cms_nanoaod)
    for name in (
        "GenPart",
        "Jet",
        "Muon",
        "GenJet",
        "GenJetAK8",
        "HLT",
        "PV",
        "Pileup",
        "LHEPdfWeight",
    ):
        assert name in present, name
    # the event identifiers run, luminosityBlock, event are the columns of Event
    ids = io.read_collections(cms_nanoaod, [io.EVENT])[io.EVENT]
    assert list(ids.columns) == ["run", "luminosityBlock", "event"] and ids.per_event
    tree = uproot.open(cms_nanoaod)["Events"]
    for col in ids.columns:
        np.testing.assert_array_equal(ids[col], tree[col].array(library="np"))
    # other branches without '_' that are not counters belong to no collection
    for name in (
        "run",
        "event",
        "luminosityBlock",
        "genWeight",
        "nJet",
        "nGenPart",
        "fixedGridRhoFastjetAll",
    ):
        assert name not in present, name


def test_cms_nanoaod_read(cms_nanoaod):
    tree = uproot.open(cms_nanoaod)["Events"]
    batches = list(
        io.iterate_batches(
            cms_nanoaod,
            {"GenPart": None, "Jet": ["pt", "eta", "phi", "mass"], "PV": None, "HLT": None},
            batch_size=64,
        )
    )
    assert [b.n_events for b in batches] == [64, 64, 64, 8]
    assert [b.first_entry for b in batches] == [0, 64, 128, 192]
    assert all(b.source == str(cms_nanoaod) for b in batches)
    gen = concat([b["GenPart"] for b in batches])
    assert gen.n_events == 200
    np.testing.assert_array_equal(gen.counts, tree["nGenPart"].array(library="np"))
    np.testing.assert_array_equal(gen["pt"], ak.to_numpy(ak.flatten(tree["GenPart_pt"].array())))
    for col in ("pt", "eta", "phi", "mass", "pdgId", "status"):
        assert gen[col].dtype == INPUT_SCHEMA["GenPart"].columns[col].dtype, col
    assert "genPartIdxMother" in gen.columns and "charge" not in gen.columns
    assert (gen["pt"] >= 0).all() and np.isfinite(gen["eta"]).all()
    assert (np.abs(gen["phi"]) <= math.pi + 1e-6).all()
    # mother indices point inside their own event (-1: none); W bosons from the top decays
    mother = gen["genPartIdxMother"]
    assert ((mother >= -1) & (mother < np.repeat(gen.counts, gen.counts))).all()
    n_w = np.bincount(gen.event_index(), weights=np.abs(gen["pdgId"]) == 24, minlength=200)
    assert (n_w > 0).sum() >= 190
    jets = concat([b["Jet"] for b in batches])
    np.testing.assert_array_equal(jets.counts, tree["nJet"].array(library="np"))
    assert list(jets.columns) == ["pt", "eta", "phi", "mass"] and (jets["pt"] > 0).all()
    pv = concat([b["PV"] for b in batches])
    assert pv.per_event and pv.size == 200 and (pv["npvs"] >= 1).all()
    np.testing.assert_array_equal(pv["z"], tree["PV_z"].array(library="np"))
    hlt = concat([b["HLT"] for b in batches])
    assert hlt.per_event and len(hlt.columns) > 400 and hlt["IsoMu20"].dtype == np.bool_
    np.testing.assert_array_equal(hlt["IsoMu20"], tree["HLT_IsoMu20"].array(library="np"))
    # max_events across a batch boundary; a column the schema has but the file has not
    assert [
        b.n_events for b in io.iterate_batches(cms_nanoaod, ["Jet"], batch_size=64, max_events=150)
    ] == [64, 64, 22]
    with pytest.raises(
        InputError,
        match=(
            r"nanoAOD_2015_CMS_Open_Data_ttbar\.root, tree 'Events': collection 'GenPart' has no "
            r"branch 'GenPart_charge'"
        ),
    ):
        io.iterate_batches(cms_nanoaod, {"GenPart": ["pt", "charge"]})
    # one-column collections (NanoAOD's weights) read as the column "value"
    w = io.read_collections(cms_nanoaod, ["LHEPdfWeight"])["LHEPdfWeight"]
    np.testing.assert_array_equal(w.counts, tree["nLHEPdfWeight"].array(library="np"))


def test_cms_nanoaod_on_every_backend(cms_nanoaod, backend):
    want = {"GenPart": ["pt", "eta", "phi", "mass", "pdgId"], "PV": ["z"]}
    ref = io.read_collections(cms_nanoaod, list(want))
    batches = list(
        io.iterate_batches(
            cms_nanoaod,
            want,
            batch_size=50,
            max_events=100 if backend.name == "cuda" else None,
            backend=backend,
        )
    )
    assert all(b.backend.name == backend.name for b in batches)
    n = sum(b.n_events for b in batches)
    for name, cols in want.items():
        got = concat([b[name].to_host() for b in batches])
        expected = ref[name].select_events(0, n)
        np.testing.assert_array_equal(got.offsets, expected.offsets)
        for c in cols:
            np.testing.assert_array_equal(got[c], expected[c])


def test_describe_schema():
    rows = io.describe_schema()
    assert len(rows) == sum(len(s.columns) for s in INPUT_SCHEMA.values())
    pad = next(r for r in rows if r["collection"] == "PixelHit" and r["column"] == "pad")
    assert (
        pad["shape"] == "8 x 8" and pad["unit"] == "electrons" and "nPixelHit_pad" in pad["branch"]
    )
    ev = next(r for r in rows if r["collection"] == "Event" and r["column"] == "pv_z")
    assert ev["branch"] == "Event_pv_z" and ev["unit"] == "cm"


def test_run3_nanoaod_with_a_counter_per_column():
    """NanoAOD v15 writes a counter per column (``nGenJet_pt`` beside ``nGenJet``): the
    collections read as uproot reads their branches, counted by ``nC``."""
    import awkward as ak

    path = Path(__file__).resolve().parent / "data" / "nanoAOD_v15_Run3_ttbar_TrigObj.root"
    colls = io.read_collections(path, ["GenJet", "TrigObj", "Jet"])
    with uproot.open(path) as f:
        tree = f["Events"]
        assert tree["GenJet_pt"].count_branch.name == "nGenJet_pt"
        for name, n in (("GenJet", 1768), ("TrigObj", 3278), ("Jet", 1636)):
            coll = colls[name]
            assert coll.n_events == 200 and coll.size == n
            np.testing.assert_array_equal(coll.counts, tree[f"n{name}"].array(library="np"))
            for col in ("pt", "eta", "phi"):
                np.testing.assert_array_equal(
                    coll[col], ak.to_numpy(ak.flatten(tree[f"{name}_{col}"].array())))
