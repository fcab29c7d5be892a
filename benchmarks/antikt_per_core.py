"""Anti-kT per core: hltemu's serial cpu kernel against FastJet's C++ entry point.

The table of issue 18: for N = 100, 500, 2000 and 5000 particles per event, the time of
:func:`hltemu.kernels.antikt_cpu.antikt_serial_cpu` (the cpu backend's kernel on one thread,
kernel only: inputs already flat float64 arrays, outputs preallocated) over the time of
``fastjet._ext.interfacemulti(px, py, pz, E, starts, stops, jet_def).to_numpy(0.0)`` (FastJet
3.5's C++ event loop and clustering, default strategy ``Best``, plus the conversion of the
inclusive jets to NumPy; no awkward layer), as ``benchmarks/bench_antikt.py``'s ``cpu`` and
``fastjet-ext`` engines.

Inputs (:func:`bench_antikt.sample_inputs`): for each event of the built-in sample
(``hltemu/data/sample.root``, 10 ttbar events at pileup 50, 4,801-8,822 final-state particles
per event) that has at least N final-state particles, N of them drawn at random (seed 0) as
massive 4-vectors [GeV]; R = 0.4; every inclusive jet.  Both engines cluster the same events
per call (10; 9 at N = 5000) and must find the same number of jets (checked).

Method: ``--repeats`` (default 25) interleaved repeats per N; in each, one timing of hltemu and
one of FastJet, in alternating order (so that load on the machine affects both alike); a
timing is the mean over ``inner`` back-to-back calls, ``inner`` chosen so that one timing
lasts at least ``--min-time`` seconds (default 0.05).  The ratio of a repeat is hltemu's time
over FastJet's; the table shows the median ratio over the repeats with its spread (the 25-75 %
range and the min-max range), and each engine's median time per event [µs].  The garbage
collector is off while timing.

The ratio is a time ratio (below 1: hltemu faster).  Run it on one pinned core with Numba on
one thread::

    NUMBA_NUM_THREADS=1 taskset -c 1 python3 benchmarks/antikt_per_core.py \\
        --json antikt_per_core.json

The script prints the CPU set it runs on and ``NUMBA_NUM_THREADS``; the first call of each
engine (Numba compilation, or loading its on-disk cache) is outside the timing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from antikt_inputs import fastjet_definition  # noqa: E402
from bench_antikt import RADIUS, sample_inputs  # noqa: E402

SIZES = (100, 500, 2000, 5000)


def _clock(fn, inner: int) -> float:
    """Mean wall time [s] of ``inner`` back-to-back calls of ``fn``."""
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def _inner_for(fn, min_time: float) -> int:
    """Calls per timing so that one timing lasts at least ``min_time`` [s]."""
    t = _clock(fn, 1)
    return max(1, int(np.ceil(min_time / max(t, 1e-9))))


def measure(n: int, repeats: int, min_time: float) -> dict:
    """One row of the table for ``n`` particles per event (times in µs per event)."""
    import fastjet
    from hltemu.kernels.antikt_cpu import antikt_serial_cpu

    flat, offsets = sample_inputs(n)
    n_events = offsets.shape[0] - 1
    total = int(offsets[-1])
    out = [np.zeros(total) for _ in range(4)]
    first = np.zeros(total, dtype=np.int64)
    jet_of = np.zeros(total, dtype=np.int64)
    counts = np.zeros(n_events, dtype=np.int64)
    args = (*flat, offsets, RADIUS, jet_of, *out, first, counts)
    jet_def = fastjet_definition(RADIUS)
    starts, stops = offsets[:-1].copy(), offsets[1:].copy()

    def run_hltemu():
        antikt_serial_cpu(*args)

    def run_fastjet():
        return fastjet._ext.interfacemulti(*flat, starts, stops, jet_def).to_numpy(0.0)

    run_hltemu()  # compile (or load the cache) outside the timing
    fj_jets = int(run_fastjet()[0].shape[0])
    ours = int(counts.sum())
    if ours != fj_jets:
        raise RuntimeError(f"N={n}: hltemu made {ours} jets, FastJet {fj_jets}")
    inner_h = _inner_for(run_hltemu, min_time)
    inner_f = _inner_for(run_fastjet, min_time)
    t_h = np.empty(repeats)
    t_f = np.empty(repeats)
    gc.disable()
    try:
        for r in range(repeats):
            if r % 2 == 0:
                t_h[r] = _clock(run_hltemu, inner_h)
                t_f[r] = _clock(run_fastjet, inner_f)
            else:
                t_f[r] = _clock(run_fastjet, inner_f)
                t_h[r] = _clock(run_hltemu, inner_h)
    finally:
        gc.enable()
    ratio = t_h / t_f
    us = 1e6 / n_events
    return {
        "n": n, "events": n_events, "jets": ours, "repeats": repeats,
        "inner_hltemu": inner_h, "inner_fastjet": inner_f,
        "hltemu_us_per_event": float(np.median(t_h) * us),
        "fastjet_us_per_event": float(np.median(t_f) * us),
        "ratio_median": float(np.median(ratio)),
        "ratio_q25": float(np.percentile(ratio, 25)),
        "ratio_q75": float(np.percentile(ratio, 75)),
        "ratio_min": float(ratio.min()),
        "ratio_max": float(ratio.max()),
        "ratios": ratio.tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES),
                    help="particles per event (default: 100 500 2000 5000)")
    ap.add_argument("--repeats", type=int, default=25, help="interleaved repeats per N (>= 20)")
    ap.add_argument("--min-time", type=float, default=0.05,
                    help="seconds one timing lasts at least (default 0.05)")
    ap.add_argument("--json", type=Path, help="write the rows and the setup to this file")
    opts = ap.parse_args(argv)
    if opts.repeats < 1:
        ap.error("--repeats must be >= 1")

    import fastjet
    import numba

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    setup = {
        "cpus": cpus, "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS"),
        "numba_threads": numba.config.NUMBA_NUM_THREADS, "python": platform.python_version(),
        "numpy": np.__version__, "numba": numba.__version__, "fastjet": fastjet.__version__,
        "radius": RADIUS, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    print(f"cpus {cpus}, NUMBA_NUM_THREADS={setup['NUMBA_NUM_THREADS']}, python "
          f"{setup['python']}, numpy {setup['numpy']}, numba {setup['numba']}, fastjet "
          f"{setup['fastjet']}, R = {RADIUS}")
    if len(cpus) != 1 or numba.config.NUMBA_NUM_THREADS != 1:
        print("warning: not pinned to one core with NUMBA_NUM_THREADS=1", file=sys.stderr)
    rows = []
    print("| N | hltemu cpu (µs/event) | FastJet _ext (µs/event) | ratio (median) "
          "| 25-75 % | min-max | repeats |")
    print("|---|---|---|---|---|---|---|")
    for n in opts.sizes:
        row = measure(n, opts.repeats, opts.min_time)
        rows.append(row)
        print(f"| {n} | {row['hltemu_us_per_event']:,.1f} | {row['fastjet_us_per_event']:,.1f} "
              f"| {row['ratio_median']:.3f} | {row['ratio_q25']:.3f}-{row['ratio_q75']:.3f} "
              f"| {row['ratio_min']:.3f}-{row['ratio_max']:.3f} | {row['repeats']} |",
              flush=True)
    if opts.json:
        opts.json.write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
