"""Anti-kT clustering speed: hltemu reference (NumPy), cpu (Numba, one core) and FastJet (C++).

One run compares them on the same inputs, per event::

    python -m pytest benchmarks/bench_antikt.py --benchmark-group-by=param:n

Inputs: the built-in sample (``hltemu/data/sample.root``: Pythia 8 ttbar + 50 pileup, 4,801-8,822
final-state particles per event, |eta| < 5); for each of its events with at least ``n``
final-state particles (all 10 for ``n`` = 100, 500, 2000; 9 for 5000), ``n`` of them drawn at
random (fixed seed) as massive 4-vectors.  Every engine clusters the same events per call with
R = 0.4 and returns every inclusive jet;
``extra_info['us_per_event']`` is the mean time per event.

Engines (clustering only, inputs already in memory as float64 arrays):

* ``reference``: :func:`hltemu.stages.antikt.cluster_reference_event` per event (NumPy);
* ``cpu``: :func:`hltemu.kernels.antikt_cpu.antikt_serial_cpu`, the cpu backend's kernel run on
  one core (the stage runs the same kernel in parallel over events);
* ``fastjet``: ``fastjet.ClusterSequence(array, jet_def).inclusive_jets()`` of the scikit-hep
  binding on an awkward array of the events: one call, the event loop and the clustering in
  FastJet's C++ (default strategy ``Best``: N2MinHeapTiled at these multiplicities), plus the
  binding's conversion of the jets to an awkward array;
* ``fastjet-ext``: the C++ entry point that call wraps, ``fastjet._ext.interfacemulti(px, py,
  pz, E, starts, stops, jet_def).to_numpy(0.0)``, without the awkward layer (the fastest way to
  run FastJet from Python; a private API of the binding, so timed only as a second peer).

The ratio cpu / FastJet is ``us_per_event`` of ``cpu`` over that of ``fastjet`` (both single
threaded).  ``benchmarks/antikt_per_core.py`` prints the per-core table against
``fastjet-ext`` (interleaved repeats, median ratio with its spread, one pinned core).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from _common import SAMPLE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from antikt_inputs import concat, fastjet_array, fastjet_definition  # noqa: E402
from hltemu.kernels.antikt_cpu import antikt_serial_cpu  # noqa: E402

from hltemu.stages.antikt import cluster_reference_event  # noqa: E402

SIZES = [100, 500, 2000, 5000]
ENGINES = ["reference", "cpu", "fastjet", "fastjet-ext"]
RADIUS = 0.4


def sample_inputs(n: int, seed: int = 0):
    """``n`` random final-state particles of each sample event that has at least ``n``: flat
    (px, py, pz, E) [GeV] and offsets."""
    from hltemu.io import read_collections

    gen = read_collections(str(SAMPLE), ["GenPart"])["GenPart"]
    rng = np.random.default_rng(seed)
    events = []
    for i in range(gen.n_events):
        ev = gen.event(i)
        final = np.flatnonzero(ev["status"] == 1)
        if final.shape[0] < n:
            continue
        rows = np.sort(rng.choice(final, n, replace=False))
        pt, eta, phi, m = (ev[c][rows].astype(np.float64) for c in ("pt", "eta", "phi", "mass"))
        px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        events.append((px, py, pz, np.sqrt(px * px + py * py + pz * pz + m * m)))
    return concat(events)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("engine", ENGINES)
def test_antikt_clustering(benchmark, engine, n):
    flat, offsets = sample_inputs(n)
    n_events = offsets.shape[0] - 1
    total = int(offsets[-1])
    benchmark.group = f"antikt R={RADIUS} n={n}"

    if engine == "reference":
        def run():
            return sum(cluster_reference_event(*(a[offsets[e]:offsets[e + 1]] for a in flat),
                                               RADIUS)[1].shape[0] for e in range(n_events))

        n_jets = benchmark.pedantic(run, rounds=3 if n < 2000 else 1, iterations=1)
    elif engine == "cpu":
        out = [np.zeros(total) for _ in range(4)]
        first = np.zeros(total, dtype=np.int64)
        jet_of = np.zeros(total, dtype=np.int64)
        counts = np.zeros(n_events, dtype=np.int64)
        args = (*flat, offsets, RADIUS, jet_of, *out, first, counts)
        antikt_serial_cpu(*args)  # compile outside the timing

        def run():
            antikt_serial_cpu(*args)
            return int(counts.sum())

        n_jets = benchmark.pedantic(run, rounds=50, iterations=1, warmup_rounds=2)
    elif engine == "fastjet":
        fastjet = pytest.importorskip("fastjet")
        array = fastjet_array(flat, offsets)
        jet_def = fastjet_definition(RADIUS)

        def run():
            return fastjet.ClusterSequence(array, jet_def).inclusive_jets()

        jets = benchmark.pedantic(run, rounds=50, iterations=1, warmup_rounds=2)
        n_jets = sum(len(j) for j in jets.to_list())
    else:
        fastjet = pytest.importorskip("fastjet")
        jet_def = fastjet_definition(RADIUS)
        starts, stops = offsets[:-1].copy(), offsets[1:].copy()

        def run():
            res = fastjet._ext.interfacemulti(*flat, starts, stops, jet_def)
            return int(res.to_numpy(0.0)[0].shape[0])

        n_jets = benchmark.pedantic(run, rounds=50, iterations=1, warmup_rounds=2)
    benchmark.extra_info["events"] = n_events
    benchmark.extra_info["particles_per_event"] = n
    benchmark.extra_info["jets"] = int(n_jets)
    benchmark.extra_info["us_per_event"] = benchmark.stats.stats.mean / n_events * 1e6
