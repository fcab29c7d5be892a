"""Cost of ``hltemu run`` per stage against pileup: ms per event of reading, every stage of the
default chain and writing, at several pileups, with each stage's growth law (issue 18's "cost
table re-measured (PU 0/50/100/200) after the change, with the growth law per stage").

Each point is ``hltemu run FILE --backend cpu --no-pipeline`` with the default output (the
steps in sequence, so that each is timed alone), repeated ``--repeat`` times after one warm-up
run; the table shows the median ms per event.  The growth law is the least-squares slope ``k``
of log(ms per event) against log(mu) over the points with mu > 0 (``t ~ mu^k``; ``k`` = 1 is
linear, 2 quadratic).  Usage (the ttbar files of ``benchmarks/SAMPLES.md``)::

    python benchmarks/cost_vs_pileup.py 0=t5000_pu0.root 50=t5050_pu50.root \\
        100=t7100_pu100.root 200=t7200_pu200.root --events 24 --batch-size 8 --json cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path


def measure(path: str, events: int, batch_size: int, repeat: int) -> dict[str, float]:
    """Median ms per event of each step (read, stages, write, total) over ``repeat`` runs."""
    from hltemu.pipeline import run_files

    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.root"
        run_files([path], backend="cpu", max_events=min(events, 4), batch_size=batch_size,
                  output=out, pipeline=False)  # warm-up: kernels compiled or loaded
        for _ in range(repeat):
            rep = run_files([path], backend="cpu", max_events=events, batch_size=batch_size,
                            output=out, pipeline=False)
            row = {k: 1e3 * s.seconds / rep.events for k, s in rep.stages.items()}
            row["total"] = 1e3 * rep.total_seconds / rep.events
            row["output_kB"] = out.stat().st_size / rep.events / 1e3
            runs.append(row)
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def growth(mus: list[float], values: list[float]) -> float | None:
    """Least-squares slope of log(value) against log(mu) over mu > 0 (None: < 2 points)."""
    import numpy as np

    pts = [(m, v) for m, v in zip(mus, values, strict=True) if m > 0 and v > 0]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("points", nargs="+", metavar="MU=FILE", help="pileup and its input file")
    ap.add_argument("--events", type=int, default=24, help="events per run (default 24)")
    ap.add_argument("--batch-size", type=int, default=8, help="events per batch (default 8)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per point (default 3)")
    ap.add_argument("--json", default=None, help="write the table as JSON here")
    args = ap.parse_args(argv)

    points = []
    for p in args.points:
        mu, _, path = p.partition("=")
        points.append((float(mu), path))
    table = {}
    for mu, path in points:
        table[mu] = measure(path, args.events, args.batch_size, args.repeat)
        print(f"pileup {mu:g}: {table[mu]['total']:.1f} ms per event", file=sys.stderr)
    mus = [mu for mu, _ in points]
    steps = list(table[mus[0]])
    head = f"{'step':12s}" + "".join(f"{'PU' + format(m, 'g'):>10s}" for m in mus) + "   growth"
    print(head)
    laws = {}
    for st in steps:
        vals = [table[m][st] for m in mus]
        laws[st] = growth(mus, vals)
        law = f"mu^{laws[st]:.2f}" if laws[st] is not None else "n/a"
        print(f"{st:12s}" + "".join(f"{v:10.2f}" for v in vals) + f"   {law}")
    if args.json:
        from hltemu.profiling import versions

        Path(args.json).write_text(json.dumps(
            {"ms_per_event": {format(m, "g"): table[m] for m in mus}, "growth": laws,
             "files": {format(m, "g"): f for m, f in points}, "events": args.events,
             "batch_size": args.batch_size, "repeat": args.repeat, "versions": versions()},
            indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
