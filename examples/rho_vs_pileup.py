"""Rho against the true number of pileup interactions: is the calorimeter-tower rho linear?

Reads ``hltemu run`` outputs of stage ``rho`` (branches ``rho_rho`` and ``Event_n_pileup``,
which ``hltemu run`` copies from its input) and prints:

* per file: events, mean N_PU, mean rho with its standard error, rho per interaction, min rho;
* <rho> in bins of the true N_PU (bins merged until they hold ``--min-events``), the weighted
  linear fit of the binned means with N_PU >= ``--fit-min`` (default 20), and each bin's
  relative deviation from the fit;
* the checks: every bin with N_PU >= 20 within 5% of the fit, rho per interaction at the
  highest pileup point within 10% of its value at pileup 50, rho > 0 in every event with
  N_PU >= 20.  Exit status 1 when one fails.

The files used for ``hltemu.stages.rho``'s figures (minimum bias, 2 cores, about 5 minutes)::

    for mu in 0 20 50 100 200; do
      hltemu generate --process minbias --pileup $mu --events 100 --seed $((1000 + mu)) \\
          --output minbias_pu$mu.root
      hltemu run minbias_pu$mu.root --stages rho --backend cpu --output rho_pu$mu.root
    done
    # more events: 300 at pileup 20, 200 at 50, 100 at 100 and 200, seeds 2000 + mu
    hltemu generate --process minbias --pileup 20 --events 300 --seed 2020 \\
        --output minbias_pu20_b.root   # ... and hltemu run as above, to rho_pu20_b.root
    python examples/rho_vs_pileup.py --point 0=rho_pu0.root \\
        --point 20=rho_pu20.root,rho_pu20_b.root ...  # one --point per pileup

With ``--process minbias`` the "hard" interaction is itself a minimum-bias one, so an event
holds N_PU + 1 interactions (hence the column rho / (N_PU + 1)).  The fit's intercept comes out
near 0 rather than one interaction's rho (about 0.6): the median of the grid cells' densities
is below their mean by 14% for one interaction, 7% for 21, 3% for 51, 1% for 201 (the
distribution is skewed where few interactions fill it), so <rho> bends slightly upwards at low
pileup.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def read(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(rho, n_pileup)`` of every event of ``paths``."""
    import uproot

    rho, npu = [], []
    for p in paths:
        with uproot.open(p) as f:
            t = f["Events"]
            rho.append(t["rho_rho"].array(library="np").astype(np.float64))
            npu.append(t["Event_n_pileup"].array(library="np").astype(np.int64))
    return np.concatenate(rho), np.concatenate(npu)


def bins_of(npu: np.ndarray, min_events: int) -> list[tuple[int, int]]:
    """Consecutive N_PU ranges ``[lo, hi]`` holding at least ``min_events`` events each (the
    last one merged into its neighbour when short)."""
    values, counts = np.unique(npu, return_counts=True)
    out, lo, n = [], None, 0
    for v, c in zip(values.tolist(), counts.tolist(), strict=True):
        if lo is None:
            lo = v
        n += c
        if n >= min_events:
            out.append([lo, v])
            lo, n = None, 0
    if lo is not None:
        if out and n < min_events:
            out[-1][1] = int(values[-1])
        else:
            out.append([lo, int(values[-1])])
    return [(a, b) for a, b in out]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--point", action="append", required=True,
                    help="MU=FILE[,FILE...]: hltemu run outputs of one pileup point")
    ap.add_argument("--min-events", type=int, default=40, help="events per N_PU bin (merged)")
    ap.add_argument("--fit-min", type=int, default=20, help="fit bins with N_PU >= this")
    args = ap.parse_args(argv)

    points = {}
    for spec in args.point:
        mu, files = spec.split("=", 1)
        points[float(mu)] = read(files.split(","))
    print("pileup  events  <N_PU>   <rho> +- s.e.   rho/(N_PU)  rho/(N_PU+1)  min rho")
    per_int = {}
    for mu, (rho, npu) in sorted(points.items()):
        se = rho.std(ddof=1) / np.sqrt(rho.size)
        slope = rho.mean() / npu.mean() if npu.mean() > 0 else float("nan")
        per_int[mu] = slope
        print(f"{mu:6g}  {rho.size:6d}  {npu.mean():6.1f}  {rho.mean():7.3f} +- {se:5.3f}  "
              f"{slope:10.4f}  {rho.mean() / (npu.mean() + 1):12.4f}  {rho.min():7.3f}")

    rho = np.concatenate([r for r, _ in points.values()])
    npu = np.concatenate([n for _, n in points.values()])
    rows = []
    for lo, hi in bins_of(npu, args.min_events):
        sel = (npu >= lo) & (npu <= hi)
        r, n = rho[sel], npu[sel]
        rows.append((lo, hi, sel.sum(), n.mean(), r.mean(), r.std(ddof=1) / np.sqrt(r.size)))
    table = np.array([row[3:] for row in rows])
    fit = table[:, 0] >= args.fit_min
    x, y, e = table[fit, 0], table[fit, 1], table[fit, 2]
    (slope, intercept), cov = np.polyfit(x, y, 1, w=1.0 / e, cov="unscaled")
    d_slope, d_intercept = np.sqrt(np.diag(cov))
    resid = (y - (slope * x + intercept)) / e
    chi2 = float((resid ** 2).sum())
    print(f"\nlinear fit of binned <rho> for N_PU >= {args.fit_min}: <rho> = ({slope:.4f} +- "
          f"{d_slope:.4f}) N_PU + ({intercept:.3f} +- {d_intercept:.3f})  (chi2/ndf = "
          f"{chi2:.1f}/{fit.sum() - 2})")
    print("N_PU range  events  <N_PU>   <rho> +- s.e.      fit   deviation +- s.e.")
    worst = 0.0
    for (lo, hi, n_ev, mean_n, mean_r, se), in_fit in zip(rows, fit, strict=True):
        f = slope * mean_n + intercept
        dev = (mean_r - f) / f
        if in_fit:
            worst = max(worst, abs(dev))
        print(f"{lo:4d}-{hi:<4d}  {n_ev:6d}  {mean_n:6.1f}  {mean_r:7.3f} +- {se:5.3f}  "
              f"{f:7.3f}  {100 * dev:+6.2f}% +- {100 * se / abs(f):4.2f}%"
              f"{'' if in_fit else '  (not fitted)'}")

    ok = True
    print(f"\nlargest deviation from the fit (N_PU >= {args.fit_min}): {100 * worst:.2f}% "
          f"(must be <= 5%)")
    ok &= worst <= 0.05
    if 50.0 in per_int:
        top = max(per_int)
        ratio = per_int[top] / per_int[50.0]
        print(f"rho per interaction at pileup {top:g} / at pileup 50: {ratio:.4f} "
              f"(must be within 10% of 1)")
        ok &= abs(ratio - 1.0) <= 0.10
    busy = npu >= 20
    print(f"min rho over the {busy.sum()} events with N_PU >= 20: {rho[busy].min():.3f} "
          f"(must be > 0); events with rho <= 0 at any N_PU: {(rho <= 0).sum()} "
          f"(N_PU of those: {sorted(set(npu[rho <= 0].tolist()))})")
    ok &= bool((rho[busy] > 0).all())
    print("all checks pass" if ok else "A CHECK FAILS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
