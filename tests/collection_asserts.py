"""Assertions on collections shared by the stage tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hltemu.batch import Collection


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
