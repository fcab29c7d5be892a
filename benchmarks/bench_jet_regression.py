"""Inference speed of stage ``jet_regression`` (the shipped ``jet_regression_v2`` network on
every HLT jet): reference (NumPy: features by array code, the network as matrix products),
cpu (Numba, ``prange`` over tiles of 32 jets) and cuda (one thread per jet, on a GPU) on the
same jets::

    python -m pytest benchmarks/bench_jet_regression.py --benchmark-group-by=group

The jets are real HLT jets: the calorimeter cells of the shipped sample
(``hltemu/data/sample.root``: 10 ttbar events at pileup 50, seed 2026), or of
``HLTEMU_BENCH_FILE``, run once through ``topocluster``, ``antikt`` and ``rho`` on the cpu (251
jets with pT > 5 GeV in the 10 sample events, ~25 per event), then tiled in order
(:func:`hltemu.bench.tile_batch`) to 100 events (2,510 jets: ``hltemu run``'s default batch)
and 1,000 events (25,100 jets).  Timed: the stage as the chain calls it (gathering its inputs,
constituent lists, features, network, the ``regressed_jets`` collection), the inputs already on
the backend, the device synchronized.  ``extra_info`` of each result: ``events``, ``jets``,
``jets_per_second``, ``speedup_vs_reference`` (when the reference ran first in the same run)
and ``max_abs_output_difference`` from the reference (asserted within
:data:`hltemu.jet_regression.OUTPUT_TOLERANCE` + ``OUTPUT_RTOL`` x |output|).  On a machine
shared with other jobs, ``OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1`` gives per-core figures:
with two threads each, OpenBLAS's threads (the reference's matrix products) wait on each other
when a core is taken.  Figures: ``benchmarks/jetreg/README.md``.

The stage's share of the whole chain's time (the default chain the sample feeds, doublets
through trigger, plus ``jet_regression``, each stage timed as ``hltemu run`` times it) is
``hltemu bench``'s per-stage table; this file runs it and prints the share::

    python3 benchmarks/bench_jet_regression.py --backends cpu --events 100 \\
        --json benchmarks/jetreg/chain_share_cpu_100ev.json

equivalent to ``hltemu bench --stages doublets,doublet_cnn,topocluster,antikt,genjets,rho,jec,
trigger,jet_regression --backends cpu --events 100`` with the share of the ``jet_regression``
row in the ``total`` row (median seconds per event over the repeats).  At 10 events the light
stages sit on a per-call floor and the share reads ~7x too high.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from _common import SAMPLE, skip_unless_gpu

from hltemu.backends import get_backend
from hltemu.batch import EventBatch

FILE = Path(os.environ.get("HLTEMU_BENCH_FILE", SAMPLE))
#: The stages that make the regression's inputs from the calorimeter cells.
UPSTREAM = ("topocluster", "antikt", "rho")
INPUTS = ("jets", "clusters", "cluster_jet", "rho")
BACKENDS = ["reference", "cpu", "cuda"]
#: Events of the timed batch, tiled from the file's: hltemu run's default batch, and 10x it.
EVENTS = [100, 1000]
ROUNDS = {"reference": 10, "cpu": 10, "cuda": 30}
_MEAN: dict[tuple[str, int], float] = {}
_OUT: dict[tuple[str, int], np.ndarray] = {}


def hlt_jets(path: Path = FILE) -> EventBatch:
    """The regression's inputs (:data:`INPUTS`) of every event of ``path``, on the host: its
    ``CaloCell`` through :data:`UPSTREAM` with the default settings on the cpu backend."""
    from hltemu.io import read_collections
    from hltemu.pipeline import plan, run_batch

    cells = read_collections(str(path), ["CaloCell"])["CaloCell"]
    batch = EventBatch(get_backend("cpu"), cells.n_events, {"CaloCell": cells}, str(path))
    planned = plan(list(UPSTREAM), ["CaloCell"], None, [str(path)])
    run_batch(batch, planned.stages, planned.config)
    return EventBatch(get_backend("reference"), batch.n_events,
                      {k: batch[k].to_host() for k in INPUTS}, str(path))


@pytest.fixture(scope="module")
def source() -> EventBatch:
    return hlt_jets()


@pytest.mark.parametrize("n_events", EVENTS)
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_jet_regression_inference(benchmark, backend_name, n_events, source):
    from hltemu.bench import tile_batch
    from hltemu.jet_regression import OUTPUT_RTOL, OUTPUT_TOLERANCE
    from hltemu.pipeline import get_stage
    from hltemu.stages.jet_regression import JetRegressionConfig, model_for

    skip_unless_gpu(backend_name)
    stage, cfg = get_stage("jet_regression"), JetRegressionConfig()
    batch, _ = tile_batch(source, n_events)
    be = get_backend(backend_name)
    on_device = batch.to(be)
    n_jets = batch["jets"].size

    def run():
        out = stage(on_device, cfg)["regressed_jets"]
        be.synchronize()
        return out

    run()  # compile and prepare (weights on the device) outside the timing
    benchmark.group = (f"jet_regression, {FILE.name}: {n_events} events tiled from "
                       f"{source.n_events}, {n_jets} HLT jets")
    result = benchmark.pedantic(run, rounds=ROUNDS[backend_name], iterations=1)
    model = model_for(cfg)
    outputs = np.stack([np.asarray(be.to_host(result[name]), dtype=np.float64)
                        for name in model.outputs], axis=1)
    key = (backend_name, n_events)
    _OUT[key] = outputs
    info = benchmark.extra_info
    info.update(events=n_events, source_events=source.n_events, jets=n_jets,
                weights=str(cfg.weights), parameters=model.n_parameters)
    if benchmark.stats is not None:  # None under --benchmark-disable (a smoke run)
        _MEAN[key] = mean = benchmark.stats.stats.mean
        info.update(jets_per_second=n_jets / mean, events_per_second=n_events / mean)
    ref_key = ("reference", n_events)
    if backend_name != "reference" and ref_key in _OUT:
        ref = _OUT[ref_key]
        if key in _MEAN and ref_key in _MEAN:
            info["speedup_vs_reference"] = _MEAN[ref_key] / _MEAN[key]
        diff = np.abs(outputs - ref)
        info["max_abs_output_difference"] = float(diff.max()) if diff.size else 0.0
        assert np.all(diff <= OUTPUT_TOLERANCE + OUTPUT_RTOL * np.abs(ref))


# -- the stage's share of the chain (hltemu bench), not a pytest benchmark ------------------------
def chain_share(backends: str = "cpu", n_events: int = 100, repeat: int = 3,
                json_path: str | None = None, path: Path = FILE) -> dict[str, dict[str, float]]:
    """``hltemu bench`` (:func:`hltemu.bench.run_bench`) of the default chain ``path`` feeds
    plus ``jet_regression`` on each backend; per backend the median seconds per event of
    ``jet_regression`` and of the chain (``total``, the sum of the stages) and the share."""
    from hltemu import io
    from hltemu.bench import run_bench
    from hltemu.pipeline import plan

    files = [str(path)]
    default = [st.name for st in plan(None, io.common_collections(files), None, files).stages]
    result = run_bench(files, backends, [*default, "jet_regression"], n_events, repeat,
                       json_path=json_path)
    d = result.to_dict()
    out = {}
    for name, b in d["backends"].items():
        stage = b["stages"]["jet_regression"]["seconds_per_event"]["median"]
        total = b["stages"]["total"]["seconds_per_event"]["median"]
        out[name] = {"jet_regression_s_per_event": stage, "chain_s_per_event": total,
                     "share": stage / total}
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="stage jet_regression's share of the chain's "
                                             "time (hltemu bench); the benchmarks run under "
                                             "pytest")
    ap.add_argument("--backends", default="cpu")
    ap.add_argument("--events", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None, help="hltemu bench's JSON")
    args = ap.parse_args(argv)
    shares = chain_share(args.backends, args.events, args.repeat, args.json)
    print(f"| backend | jet_regression ms/event | chain ms/event | share |  ({args.events} "
          f"events of {FILE.name}, median of {args.repeat})")
    print("|---|---|---|---|")
    for name, s in shares.items():
        print(f"| {name} | {1e3 * s['jet_regression_s_per_event']:.3f} | "
              f"{1e3 * s['chain_s_per_event']:.1f} | {100 * s['share']:.2f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
