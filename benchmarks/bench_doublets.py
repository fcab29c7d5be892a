"""Pixel-doublet stage speed: reference (plain Python), cpu (Numba, parallel over events) and
cuda (on a GPU) on the same batch, the shipped ttbar sample at pileup 50 (10 events,
``hltemu/data/sample.root``)::

    python -m pytest benchmarks/bench_doublets.py --benchmark-group-by=group

Each result carries ``events_per_second`` and ``doublets`` in its ``extra_info``; the cpu and
cuda results also carry ``speedup_vs_reference`` (the reference's mean time over theirs, when
the reference ran first in the same session).  Timed: the whole stage (grid and sort of the
hits, search, sort and features of the doublets), the batch already on the backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from _common import SAMPLE, skip_unless_gpu

from hltemu.backends import get_backend
from hltemu.io import read_collections
from hltemu.stages.doublets import DoubletsConfig, find_doublets

BACKENDS = ["reference", "cpu", "cuda"]
ROUNDS = {"reference": 1, "cpu": 10, "cuda": 20}
_MEAN_SECONDS: dict[str, float] = {}
_COUNTS: dict[str, int] = {}


@pytest.fixture(scope="module")
def hits():
    return read_collections(SAMPLE, ["PixelHit"])["PixelHit"]


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_doublets_stage(benchmark, backend_name, hits):
    skip_unless_gpu(backend_name)
    be = get_backend(backend_name)
    cfg = DoubletsConfig()
    on_device = hits.to(be)

    def run():
        out = find_doublets(on_device, cfg, be)
        be.synchronize()
        return out

    run()  # compile outside the timing
    benchmark.group = "doublets ttbar PU50, 10 events"
    result = benchmark.pedantic(run, rounds=ROUNDS[backend_name], iterations=1)
    n = int(result.size)
    mean = benchmark.stats.stats.mean
    _MEAN_SECONDS[backend_name] = mean
    _COUNTS[backend_name] = n
    benchmark.extra_info["events"] = hits.n_events
    benchmark.extra_info["hits"] = hits.size
    benchmark.extra_info["doublets"] = n
    benchmark.extra_info["events_per_second"] = hits.n_events / mean
    if backend_name != "reference" and "reference" in _MEAN_SECONDS:
        benchmark.extra_info["speedup_vs_reference"] = _MEAN_SECONDS["reference"] / mean
        assert n == _COUNTS["reference"]  # same set size (the tests check the same set)
    assert n > 0 and np.all(np.diff(be.to_host(result.offsets)) >= 0)
