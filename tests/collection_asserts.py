"""Collections shared by the stage tests: a one-collection batch built from per-event
columns, the rows of a collection that a mask keeps, and a bit-for-bit comparison."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch


def rows_where(coll: Collection, keep: np.ndarray) -> Collection:
    """The rows of ``coll`` (host arrays) where ``keep`` is true, each still in its event
    (small inputs for the CUDA simulator: a wedge in phi of real events)."""
    counts = np.bincount(coll.event_index()[keep], minlength=coll.n_events)
    return Collection.from_counts(counts, {k: v[keep] for k, v in coll.columns.items()})


def one_collection_batch(name: str, events: Sequence[dict], defaults: dict[str, float],
                         backend: str = "reference", dtypes: dict[str, Any] | None = None
                         ) -> EventBatch:
    """A batch holding only collection ``name``: one dict of columns per event (each event
    needs ``z0``, which gives its row count; a missing column takes its value in
    ``defaults``), float64 unless ``dtypes`` says otherwise, on ``backend``."""
    dtypes = dtypes or {}
    cols = {}
    for c, d in defaults.items():
        dtype = dtypes.get(c, np.float64)
        cols[c] = (np.concatenate([np.broadcast_to(np.asarray(e.get(c, d), dtype=dtype),
                                                   np.shape(e["z0"])) for e in events])
                   if events else np.zeros(0, dtype=dtype))
    coll = Collection.from_counts([len(e["z0"]) for e in events], cols)
    return EventBatch(get_backend("reference"), len(events), {name: coll}).to(backend)


def assert_collections_identical(got: Sequence[Collection], want: Sequence[Collection],
                                 names: Sequence[str], what: str) -> None:
    """Each collection of ``got`` equals its partner in ``want`` bit for bit: offsets, column
    names, dtypes and values (``names`` label them in the messages, ``what`` the backend)."""
    for g, w, name in zip(got, want, names, strict=True):
        np.testing.assert_array_equal(g.offsets, w.offsets, err_msg=f"{what} {name}")
        assert sorted(g.columns) == sorted(w.columns), (what, name)
        for c in w.columns:
            assert g[c].dtype == w[c].dtype, (what, name, c)
            np.testing.assert_array_equal(g[c], w[c], err_msg=f"{what} {name}.{c}")
