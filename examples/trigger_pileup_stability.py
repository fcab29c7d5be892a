"""Trigger accepts on paired events at two pileups: does a path measure physics or pileup?

Usage::

    python examples/trigger_pileup_stability.py RUN_PU0.root RUN_PUN.root [--json OUT.json]

Both files are ``hltemu run`` outputs (with the ``trigger`` stage) of events generated with the
same seeds at pileup 0 and at pileup N (``hltemu generate`` pairs them: the same hard scatter,
vertex and detector response).  Events are paired by (run, luminosityBlock, event); for each
path the fraction accepted *before* its prescale (``trigger_pre``) is printed at both pileups,
unweighted and weighted by ``Event_weight`` (a ``--pthat-bias`` sample's generator weights),
with binomial errors, and the relative change N vs 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np


def _load(path: str) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    from hltemu import io

    c = io.read_collections(path, ["Event", "trigger_pre"])
    ev = c["Event"]
    key = np.stack([np.asarray(ev[k], dtype=np.uint64)
                    for k in ("run", "luminosityBlock", "event")], axis=1)
    w = np.asarray(ev["weight"], dtype=np.float64) if "weight" in ev else np.ones(ev.n_events)
    tp = c["trigger_pre"]
    return key, {p: np.asarray(tp[p], dtype=bool) for p in tp.columns}, w


def _fraction(acc: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted fraction and its binomial error with the effective number of events."""
    f = float(np.sum(w * acc) / np.sum(w))
    n_eff = float(w.sum() ** 2 / np.sum(w * w))
    return f, math.sqrt(max(f * (1 - f), 0.0) / n_eff)


def compare(file0: str, file_n: str) -> list[dict]:
    k0, t0, w0 = _load(file0)
    kn, tn, _ = _load(file_n)
    index = {tuple(k): i for i, k in enumerate(k0.tolist())}
    rows_n = [i for i, k in enumerate(kn.tolist()) if tuple(k) in index]
    rows_0 = [index[tuple(kn[i])] for i in rows_n]
    if not rows_n:
        sys.exit(f"no event of {file_n} has a partner in {file0} (generate with the same seeds)")
    out = []
    for path in t0:
        if path not in tn:
            continue
        a0, an = t0[path][rows_0], tn[path][rows_n]
        w = w0[rows_0]
        row = {"path": path, "events": len(rows_n)}
        for label, weights in (("unweighted", np.ones_like(w)), ("weighted", w)):
            f0, e0 = _fraction(a0, weights)
            fn, en = _fraction(an, weights)
            rel = (fn / f0 - 1) if f0 > 0 else float("nan")
            row[label] = {"pu0": f0, "pu0_error": e0, "puN": fn, "puN_error": en,
                          "relative_change": rel}
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file0")
    ap.add_argument("file_n")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rows = compare(a.file0, a.file_n)
    print(f"{'path':<20} {'events':>6}  {'PU0 (unweighted)':>18} {'PU N':>18} {'rel':>7}   "
          f"{'PU0 (weighted)':>18} {'PU N':>18} {'rel':>7}")
    for r in rows:
        u, w = r["unweighted"], r["weighted"]
        print(f"{r['path']:<20} {r['events']:>6}  "
              f"{u['pu0']:8.4f} ± {u['pu0_error']:.4f} {u['puN']:8.4f} ± {u['puN_error']:.4f} "
              f"{u['relative_change']:+7.3f}   "
              f"{w['pu0']:8.5f} ± {w['pu0_error']:.5f} {w['puN']:8.5f} ± {w['puN_error']:.5f} "
              f"{w['relative_change']:+7.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
