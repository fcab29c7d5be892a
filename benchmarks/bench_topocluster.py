"""Topocluster stage speed: reference (plain Python seed queue), cpu (Numba, parallel over
events) and cuda (tag propagation, on a GPU) on the same batch, the shipped ttbar sample at
pileup 50 (10 events of 88,320 cells, ``hltemu/data/sample.root``)::

    python -m pytest benchmarks/bench_topocluster.py --benchmark-group-by=group

Each result carries ``events_per_second``, ``cells`` and ``clusters`` in its ``extra_info``;
the cpu and cuda results also carry ``speedup_vs_reference`` (the reference's mean time over
theirs, when the reference ran first in the same session).  Timed: the whole stage (input
checks, significance, id-to-row map, labelling, cluster ordering and kinematics), the batch
already on the backend and the neighbour graph already on the device (built once per run).
"""

from __future__ import annotations

import numpy as np
import pytest
from _common import SAMPLE, skip_unless_gpu

from hltemu.backends import get_backend
from hltemu.cell_graph import calorimeter_graph
from hltemu.io import read_collections
from hltemu.stages.topocluster import TopoclusterConfig, topocluster

BACKENDS = ["reference", "cpu", "cuda"]
ROUNDS = {"reference": 3, "cpu": 10, "cuda": 20}
_MEAN_SECONDS: dict[str, float] = {}
_SEEDS: dict[str, np.ndarray] = {}


@pytest.fixture(scope="module")
def cells():
    return read_collections(SAMPLE, ["CaloCell"])["CaloCell"]


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_topocluster_stage(benchmark, backend_name, cells):
    skip_unless_gpu(backend_name)
    be = get_backend(backend_name)
    cfg = TopoclusterConfig(pileup_mu=50.0)  # the sample: generated at pileup 50
    on_device = cells.to(be)
    calorimeter_graph().on(be)  # neighbour CSR on the device before timing

    def run():
        out = topocluster(on_device, cfg, be)
        be.synchronize()
        return out

    run()  # compile outside the timing
    benchmark.group = "topocluster ttbar PU50, 10 events"
    result = benchmark.pedantic(run, rounds=ROUNDS[backend_name], iterations=1)
    clusters = result["clusters"]
    mean = benchmark.stats.stats.mean
    seeds = be.to_host(clusters["seed"])
    _MEAN_SECONDS[backend_name] = mean
    _SEEDS[backend_name] = seeds
    benchmark.extra_info["events"] = cells.n_events
    benchmark.extra_info["cells"] = cells.size
    benchmark.extra_info["clusters"] = int(clusters.size)
    benchmark.extra_info["events_per_second"] = cells.n_events / mean
    if backend_name != "reference" and "reference" in _MEAN_SECONDS:
        benchmark.extra_info["speedup_vs_reference"] = _MEAN_SECONDS["reference"] / mean
        np.testing.assert_array_equal(seeds, _SEEDS["reference"])  # the same clusters
    assert clusters.size > 0
