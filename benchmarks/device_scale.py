"""cpu vs cuda on the built-in sample tiled to 10, 100, 500 events: throughput and agreement.

Part of ``benchmarks/device-check.sh`` (the one-shot check of a lent GPU); it also runs without a
GPU (then only ``cpu`` and ``reference`` are timed and compared)::

    python benchmarks/device_scale.py --tiles 1 10 50 --json scale.json
    python benchmarks/device_scale.py --once doublets doublet_cnn   # one event, for the sanitizer

Inputs are the sample's 10 events (ttbar, pileup 50) repeated ``k`` times, so no file is carried.
Each backend first runs the chain once on the 10 sample events (compiling its kernels, not
timed), then once per size: events/s per stage from synchronized stage timers.  Then every
product column of the two backends is compared: integer and boolean columns must be equal
(``exact``), float columns report their largest relative difference
``max |a - b| / max(|a|, |b|, tiny)`` and the number of differing values.  A jet ``mass`` is
``sqrt(E^2 - p^2)``, which cancels for light jets: its difference is reported relative to the
jet's energy ``E`` instead (``max |dm| / E``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from hltemu import io
from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.pipeline import plan, run_batch
from hltemu.profiling import RunReport, StageTimer

SAMPLE = Path(__file__).resolve().parents[1] / "hltemu" / "data" / "sample.root"


def tiled(batch: EventBatch, k: int) -> EventBatch:
    """``batch`` with its events repeated ``k`` times (host arrays)."""
    colls = {}
    for name, c in batch.collections.items():
        counts = np.tile(np.diff(c.offsets), k)
        offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
        cols = {n: np.concatenate([v] * k) for n, v in c.columns.items()}
        colls[name] = Collection(offsets, cols, c.per_event)
    return EventBatch(batch.backend, batch.n_events * k, colls)


def compare(a: EventBatch, b: EventBatch, names: list[str]) -> dict[str, dict]:
    """Per product column: exact equality (ints, bools) or the max relative difference."""
    out: dict[str, dict] = {}
    for name in names:
        ca, cb = a[name].to_host(), b[name].to_host()
        key = f"{name}.offsets"
        out[key] = {"exact": bool(np.array_equal(ca.offsets, cb.offsets))}
        for col in ca.columns:
            x, y = ca[col], cb[col]
            key = f"{name}.{col}"
            if x.shape != y.shape:
                out[key] = {"exact": False, "shape": [list(x.shape), list(y.shape)]}
            elif x.dtype.kind in "biu":
                out[key] = {"exact": bool(np.array_equal(x, y)),
                            "n_diff": int(np.count_nonzero(x != y))}
            else:
                x64, y64 = x.astype(np.float64), y.astype(np.float64)
                ref = x64
                if col == "mass" and "E" in ca.columns:  # cancellation: relative to E
                    ref = ca["E"].astype(np.float64)
                scale = np.maximum(np.maximum(np.abs(ref), np.abs(y64)), 1e-300)
                rel = np.abs(x64 - y64) / scale
                rel[(x64 == y64) | (np.isnan(x64) & np.isnan(y64))] = 0.0
                out[key] = {"max_rel": float(rel.max()) if rel.size else 0.0,
                            "n_diff": int(np.count_nonzero(rel))}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--backends", nargs="+", default=["cpu", "cuda"])
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--once", nargs="*", default=None,
                   help="run these stages (all when empty) once on one event and exit")
    args = p.parse_args(argv)

    present = io.common_collections([str(SAMPLE)])
    if args.once is not None:
        planned = plan(args.once or None, present, None, [str(SAMPLE)])
        chain, inputs, config = planned.stages, planned.inputs, planned.config
        be = get_backend("cuda")
        batch = next(io.iterate_batches([str(SAMPLE)], inputs, batch_size=1, backend=be))
        run_batch(batch, chain, config)
        be.synchronize()
        print("ran", [s.name for s in chain], "on one event")
        return 0

    planned = plan(None, present, None, [str(SAMPLE)])  # topocluster: the sample's <mu>
    chain, inputs, config = planned.stages, planned.inputs, planned.config
    products = [n for st in chain for n in st.adds]
    host = next(io.iterate_batches([str(SAMPLE)], inputs, batch_size=10))
    results: dict = {"stages": [s.name for s in chain], "sizes": {}}
    for name in args.backends:  # compile every kernel once, untimed
        be = get_backend(name)
        t0 = time.perf_counter()
        run_batch(host.to(be), chain, config)
        be.synchronize()
        results.setdefault("warmup_s", {})[name] = time.perf_counter() - t0
        print("warm-up", name, f"{results['warmup_s'][name]:.1f} s", flush=True)
    for k in args.tiles:
        base = tiled(host, k)
        done: dict[str, EventBatch] = {}
        row: dict = {}
        for name in args.backends:
            be = get_backend(name)
            batch = base.to(be)
            report = RunReport(be.name, be.device)
            run_batch(batch, chain, config, StageTimer(be, report))
            done[name] = batch
            seconds = sum(v.seconds for v in report.stages.values())
            row[name] = {
                "events_per_s": {s: v.events / v.seconds for s, v in report.stages.items()},
                "total_events_per_s": base.n_events / seconds,
            }
            rates = {s: round(v, 1) for s, v in row[name]["events_per_s"].items()}
            print(base.n_events, name, rates, f"chain {base.n_events / seconds:.1f}", flush=True)
        names = list(done)
        for other in names[1:]:
            cmp = compare(done[names[0]], done[other], products)
            row[f"{names[0]}_vs_{other}"] = cmp
            bad = [c for c, v in cmp.items() if v.get("exact") is False]
            floats = {c: v["max_rel"] for c, v in cmp.items() if "max_rel" in v}
            print(f"{base.n_events} {names[0]} vs {other}: exact columns differing: "
                  f"{bad or 'none'}")
            print("  max rel diff:", {c: f"{v:.1e}" for c, v in floats.items() if v})
        results["sizes"][base.n_events] = row
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
