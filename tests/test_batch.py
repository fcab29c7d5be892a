"""EventBatch / Collection: awkward <-> SoA round trips, validation, moving between backends."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hltemu.backends import get_backend
from hltemu.batch import BatchError, Collection, EventBatch, counts_to_offsets

counts_st = st.lists(st.integers(min_value=0, max_value=6), min_size=0, max_size=12)


@st.composite
def jagged_records(draw):
    """Random jagged records: empty events and empty batches included, 1-D and 2-D columns."""
    counts = draw(counts_st)
    n = sum(counts)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    cols = {
        "x": rng.normal(size=n).astype(np.float32),
        "i": rng.integers(-5, 5, size=n).astype(np.int32),
        "pad": rng.random((n, 3, 2)).astype(np.float32),
    }
    return counts, cols


@settings(max_examples=60, deadline=None)
@given(jagged_records())
def test_awkward_soa_round_trip(data):
    counts, cols = data
    coll = Collection.from_counts(counts, cols)
    arr = coll.to_awkward()
    assert len(arr) == len(counts)
    assert ak.to_list(ak.num(arr, axis=1)) == list(counts)
    back = Collection.from_awkward(arr)
    np.testing.assert_array_equal(back.offsets, coll.offsets)
    for k, v in cols.items():
        assert back[k].dtype == v.dtype
        assert back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)


@settings(max_examples=40, deadline=None)
@given(jagged_records(), st.data())
def test_select_events_matches_awkward_slicing(data, draw):
    counts, cols = data
    coll = Collection.from_counts(counts, cols)
    n = len(counts)
    start = draw.draw(st.integers(0, n))
    stop = draw.draw(st.integers(start, n))
    sub = coll.select_events(start, stop)
    assert sub.n_events == stop - start
    assert ak.to_list(sub.to_awkward()) == ak.to_list(coll.to_awkward()[start:stop])


def test_per_event_collection_and_counts():
    c = Collection.event_level({"rho": np.array([1.0, 2.0, 3.0])})
    assert c.per_event and c.n_events == 3 and c.size == 3
    np.testing.assert_array_equal(c.counts, [1, 1, 1])
    np.testing.assert_array_equal(counts_to_offsets([2, 0, 3]), [0, 2, 2, 5])
    np.testing.assert_array_equal(Collection.from_counts([2, 0, 1], {"a": np.zeros(3)}).event_index(), [0, 0, 2])


def test_empty_batch_round_trip():
    c = Collection.empty(0, {"pt": np.float32})
    assert c.n_events == 0 and c.size == 0
    arr = c.to_awkward()
    assert len(arr) == 0
    back = Collection.from_awkward(arr)
    assert back.n_events == 0 and back["pt"].dtype == np.float32


@pytest.mark.parametrize(
    "offsets, cols, match",
    [
        (np.array([1, 2]), {}, "start at 0"),
        (np.array([0, 3, 2]), {"x": np.zeros(2)}, "must not decrease"),
        (np.array([0, 2, 3]), {"x": np.zeros(4)}, "column 'x' has 4 rows, offsets say 3"),
        (np.array([0.0, 1.0]), {}, "must be integers"),
    ],
)
def test_bad_collections_are_rejected(offsets, cols, match):
    with pytest.raises(BatchError, match=match):
        Collection(offsets, cols)


def test_batch_checks_event_counts_and_names():
    be = get_backend("reference")
    a = Collection.from_counts([1, 2], {"x": np.zeros(3)})
    b = Collection.from_counts([1, 2, 0], {"x": np.zeros(3)})
    with pytest.raises(BatchError, match="collection 'b' has 3 events, the batch has 2"):
        EventBatch(be, 2, {"a": a, "b": b})
    batch = EventBatch(be, 2, {"a": a})
    with pytest.raises(KeyError, match="no collection 'jets' in this batch; it has \\['a'\\]"):
        batch["jets"]
    with pytest.raises(KeyError, match="no column 'y'"):
        a["y"]


def test_batch_moves_between_backends(backend):
    rng = np.random.default_rng(3)
    coll = Collection.from_counts([3, 0, 2], {"e": rng.random(5), "pad": rng.random((5, 2, 2))})
    batch = EventBatch(get_backend("reference"), 3, {"cells": coll}, source="f.root", first_entry=7)
    moved = batch.to(backend)
    assert moved.backend.name == backend.name
    assert moved.source == "f.root" and moved.first_entry == 7
    back = moved.to("reference")
    for k in ("e", "pad"):
        np.testing.assert_array_equal(back["cells"][k], coll[k])
    sub = moved.select_events(1, 3)
    assert sub.first_entry == 8 and sub.n_events == 2
    np.testing.assert_array_equal(backend.to_host(sub["cells"].offsets), [0, 0, 2])
