"""Pixel tracks and pixel vertices, stage speed: reference (plain Python), cpu (Numba, parallel
over cells, candidates and events) and cuda (on a GPU) on the shipped ttbar sample at pileup 50
(``hltemu/data/sample.root``)::

    python -m pytest benchmarks/bench_pixeltracks.py --benchmark-group-by=group

One group per stage, so that one run shows the ratio:

* ``pixeltracks``: input the sample's ``PixelHit`` and its default ``doublets`` (cpu, made once).
  The reference takes ~0.4 s per event, so it runs on the first 3 events only, and cpu on the
  same 3 events (the like-for-like ratio) and on all 10; cuda on all 10.
* ``pixelvertices``: input the default ``pixeltracks`` of all 10 events (cpu, made once); every
  backend on all 10.

Each result carries ``events``, ``events_per_second`` and its product's size (``tracks`` or
``vertices``) in its ``extra_info``; the cpu and cuda results also carry
``speedup_vs_reference``, the reference's time per event over theirs (when the reference ran
first in the same session), and check that they made as many tracks or vertices as the
reference on the same events.  Timed: the whole stage (input checks, and for pixeltracks
neighbours, n-tuplets, fits, cuts, cleaning and truth; for pixelvertices selection, sort,
clustering, fits, split and ordering), the batch already on the backend and the stage's
prepared tables cached.  With ``--benchmark-disable`` each case runs once, unchecked by time.
"""

from __future__ import annotations

import pytest
from _common import SAMPLE, skip_unless_gpu

from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.io import read_collections
from hltemu.pipeline import get_stage

#: (backend, events) per stage; the reference of pixeltracks on a few events to stay short.
TRACK_CASES = [("reference", 3), ("cpu", 3), ("cpu", 10), ("cuda", 10)]
VERTEX_CASES = [("reference", 10), ("cpu", 10), ("cuda", 10)]
ROUNDS = {"reference": 1, "cpu": 10, "cuda": 20}
_SECONDS_PER_EVENT: dict[tuple[str, str], float] = {}
_SIZES: dict[tuple[str, str, int], int] = {}


@pytest.fixture(scope="module")
def inputs() -> EventBatch:
    """The sample's PixelHit with its default doublets and pixel tracks (cpu, on the host)."""
    hits = read_collections(SAMPLE, ["PixelHit"])["PixelHit"]
    cpu = get_backend("cpu")
    batch = EventBatch(cpu, hits.n_events, {"PixelHit": hits.to(cpu)})
    batch.add("doublets", get_stage("doublets")(batch)["doublets"])
    batch.add("pixeltracks", get_stage("pixeltracks")(batch)["pixeltracks"])
    return batch


def _first(batch: EventBatch, names: tuple[str, ...], n: int) -> EventBatch:
    """Collections ``names`` of the first ``n`` events, on the host."""
    colls: dict[str, Collection] = {k: batch[k].to_host().select_events(0, n) for k in names}
    return EventBatch(get_backend("reference"), n, colls)


def _time(benchmark, stage: str, backend_name: str, n_events: int, batch: EventBatch,
          product: str, size_name: str) -> None:
    """Time stage ``stage`` on ``batch`` (already on the backend) and record the figures."""
    be = batch.backend
    run_stage = get_stage(stage)

    def run() -> Collection:
        out = run_stage(batch)[product]
        be.synchronize()
        return out

    run()  # compile and prepare outside the timing
    benchmark.group = f"{stage} ttbar PU50 (built-in sample)"
    benchmark.extra_info["events"] = n_events
    result = benchmark.pedantic(run, rounds=ROUNDS[backend_name], iterations=1)
    size = int(result.size)
    benchmark.extra_info[size_name] = size
    if backend_name != "reference" and (stage, "reference", n_events) in _SIZES:
        assert size == _SIZES[(stage, "reference", n_events)]  # the tests check the same set
    _SIZES[(stage, backend_name, n_events)] = size
    assert size > 0
    if benchmark.stats is None:  # --benchmark-disable: run once, no timing
        return
    per_event = benchmark.stats.stats.mean / n_events
    benchmark.extra_info["events_per_second"] = 1.0 / per_event
    if backend_name == "reference":
        _SECONDS_PER_EVENT[(stage, backend_name)] = per_event
    elif (stage, "reference") in _SECONDS_PER_EVENT:
        benchmark.extra_info["speedup_vs_reference"] = \
            _SECONDS_PER_EVENT[(stage, "reference")] / per_event


@pytest.mark.parametrize(("backend_name", "n_events"), TRACK_CASES,
                         ids=[f"{b}-{n}ev" for b, n in TRACK_CASES])
def test_pixeltracks_stage(benchmark, backend_name, n_events, inputs):
    skip_unless_gpu(backend_name)
    batch = _first(inputs, ("PixelHit", "doublets"), n_events).to(backend_name)
    _time(benchmark, "pixeltracks", backend_name, n_events, batch, "pixeltracks", "tracks")


@pytest.mark.parametrize(("backend_name", "n_events"), VERTEX_CASES,
                         ids=[f"{b}-{n}ev" for b, n in VERTEX_CASES])
def test_pixelvertices_stage(benchmark, backend_name, n_events, inputs):
    skip_unless_gpu(backend_name)
    batch = _first(inputs, ("pixeltracks",), n_events).to(backend_name)
    _time(benchmark, "pixelvertices", backend_name, n_events, batch, "pixelvertices",
          "vertices")
