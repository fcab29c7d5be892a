"""examples/trigger_pileup_stability.py: accept fractions on paired events."""

from __future__ import annotations

import numpy as np
import pytest
from examples_loader import load_example

from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.io.writer import OutputWriter


def _write(path, events, accept, weight):
    n = len(events)
    ev = Collection.event_level({"run": np.ones(n, np.uint32),
                                 "luminosityBlock": np.ones(n, np.uint32),
                                 "event": np.asarray(events, np.uint64),
                                 "weight": np.asarray(weight, np.float32)})
    tp = Collection.event_level({"HLT_A": np.asarray(accept, bool)})
    with OutputWriter(path) as w:
        w.write(EventBatch(get_backend("reference"), n, {"Event": ev, "trigger_pre": tp}))


def test_paired_fractions(tmp_path):
    mod = load_example("trigger_pileup_stability")
    # PU0: events 1..4 accept 1,2; PU N (events in another order, one unpaired): accepts 1,2,3
    _write(tmp_path / "a.root", [1, 2, 3, 4], [1, 1, 0, 0], [1.0, 1.0, 2.0, 4.0])
    _write(tmp_path / "b.root", [4, 3, 2, 1, 9], [0, 1, 1, 1, 1], [4.0, 2.0, 1.0, 1.0, 8.0])
    (row,) = mod.compare(str(tmp_path / "a.root"), str(tmp_path / "b.root"))
    assert row["path"] == "HLT_A" and row["events"] == 4
    assert row["unweighted"]["pu0"] == pytest.approx(0.5)
    assert row["unweighted"]["puN"] == pytest.approx(0.75)
    assert row["unweighted"]["relative_change"] == pytest.approx(0.5)
    assert row["weighted"]["pu0"] == pytest.approx(2 / 8)
    assert row["weighted"]["puN"] == pytest.approx(4 / 8)
