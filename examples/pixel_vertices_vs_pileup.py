"""The pixel-vertex count as the HLT's pileup estimator: N_vtx against the true number of
interactions, and the calorimeter rho against N_vtx (issue 19: "the vertex count per event as
the HLT's pileup estimator (rho vs N_vtx in a plot)").

Reads ``hltemu run`` outputs of stages ``pixelvertices`` and ``rho`` (branches
``npixelvertices``, ``rho_rho`` and ``Event_n_pileup``, which ``hltemu run`` copies from its
input) and prints, per file, the mean number of interactions (N_PU + 1: the hard scatter and its
pileup), the mean N_vtx and rho with their standard errors; then the straight-line fits
(least squares, every event weighted alike) of N_vtx against N_int and of rho against N_vtx,
with the slopes' errors, and the rms of rho around its fit in N_vtx and in N_int (how well each
estimates the pileup that rho measures).  ``--plot FILE.png`` draws both, events as points and
the mean per bin with its error.

The files of the figures in ``hltemu/stages/pixelvertices.py`` (ttbar, cpu)::

    hltemu generate --process ttbar --pileup 100 --events 40 --seed 7100 --output t7100_pu100.root
    for f in t5000_pu0 t5050_pu50 t7100_pu100 t7200_pu200; do
      hltemu run $f.root --stages doublets,pixeltracks,pixelvertices,rho --backend cpu \\
          --batch-size 8 --max-events 40 --output vtx_$f.root --report vtx_$f.json
    done
    python examples/pixel_vertices_vs_pileup.py vtx_t*.root --plot nvtx_rho.png
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def read(path: str) -> dict[str, np.ndarray]:
    """Per event: ``n_int`` (N_PU + 1), ``n_vtx`` and ``rho`` [GeV per unit area]."""
    from hltemu.io import read_collections

    c = read_collections(path, ["pixelvertices", "rho", "Event"])
    return {"n_int": np.asarray(c["Event"]["n_pileup"], dtype=np.float64) + 1.0,
            "n_vtx": np.asarray(c["pixelvertices"].counts, dtype=np.float64),
            "rho": np.asarray(c["rho"]["rho"], dtype=np.float64)}


def line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """``(slope, slope error, intercept, rms of the residuals)`` of ``y = a x + b``."""
    a, b = np.polyfit(x, y, 1)
    res = y - (a * x + b)
    rms = float(np.sqrt(np.mean(res**2)))
    sxx = float(np.sum((x - x.mean()) ** 2))
    err = rms / np.sqrt(sxx) if sxx > 0 else float("nan")
    return float(a), float(err), float(b), rms


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", help="hltemu run outputs with pixelvertices, rho, Event")
    ap.add_argument("--plot", default=None, help="PNG to draw")
    args = ap.parse_args(argv)

    data = {f: read(f) for f in args.files}
    print(f"{'file':40s} {'events':>6s} {'<N_int>':>8s} {'<N_vtx>':>14s} {'<rho> GeV':>14s}")
    for f, d in data.items():
        n = d["n_vtx"].shape[0]
        print(f"{f[-40:]:40s} {n:6d} {d['n_int'].mean():8.1f} "
              f"{d['n_vtx'].mean():7.2f} ± {d['n_vtx'].std(ddof=1) / np.sqrt(n):4.2f} "
              f"{d['rho'].mean():7.2f} ± {d['rho'].std(ddof=1) / np.sqrt(n):4.2f}")
    allv = {k: np.concatenate([d[k] for d in data.values()]) for k in ("n_int", "n_vtx", "rho")}
    a, ea, b, rms = line_fit(allv["n_int"], allv["n_vtx"])
    print(f"N_vtx = ({a:.3f} ± {ea:.3f}) N_int + {b:.2f}   (rms {rms:.2f})")
    a2, ea2, b2, rms2 = line_fit(allv["n_vtx"], allv["rho"])
    a3, ea3, b3, rms3 = line_fit(allv["n_int"], allv["rho"])
    print(f"rho = ({a2:.4f} ± {ea2:.4f}) GeV N_vtx + {b2:.3f} GeV   (rms {rms2:.3f} GeV)")
    print(f"rho = ({a3:.4f} ± {ea3:.4f}) GeV N_int + {b3:.3f} GeV   (rms {rms3:.3f} GeV)")

    if args.plot:
        from pathlib import Path

        from hltemu.plotting import pyplot, save

        plt, _ = pyplot()
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, 7))
        for f, d in data.items():
            ax1.scatter(d["n_int"], d["n_vtx"], s=6, alpha=0.4, label=Path(f).stem)
            ax2.scatter(d["n_vtx"], d["rho"], s=6, alpha=0.4, label=Path(f).stem)
        xs = np.linspace(0, allv["n_int"].max() * 1.05, 50)
        ax1.plot(xs, a * xs + b, "k-", lw=1, label=f"fit: {a:.3f} per interaction")
        ax1.set_xlabel("interactions N_PU + 1")
        ax1.set_ylabel("pixel vertices N_vtx")
        xv = np.linspace(0, allv["n_vtx"].max() * 1.05, 50)
        ax2.plot(xv, a2 * xv + b2, "k-", lw=1, label=f"fit: {a2:.3f} GeV per vertex")
        ax2.set_xlabel("pixel vertices N_vtx")
        ax2.set_ylabel("calorimeter rho [GeV]")
        for ax in (ax1, ax2):
            ax.legend(fontsize=12)
            ax.grid(alpha=0.3)
        print(f"plot: {save(plt, fig, Path(args.plot))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
