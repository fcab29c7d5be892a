"""Figures of a JEC derivation and its closure (needs the ``plots`` extra: matplotlib, mplhep).

:func:`draw_all` writes ``<era>_l1_offset.png`` (offset per area vs rho with the fitted hybrid
form), ``<era>_l2_fit.png`` (1/response vs <pT> with the fitted curve), ``<era>_closure.png``
(median response vs truth pT after each level, per pileup) and ``<era>_resolution.png``
(sigma/mu vs truth pT with the N, S, C fit).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from hltemu.jec.closure import nsc
from hltemu.jec.derive import Derivation, l1_offset, l2_correction
from hltemu.plotting import grid, log_x, pyplot, save


def _label(mplhep: Any, ax: Any, text: str) -> None:
    mplhep.label.exp_label(exp="hltemu", llabel="Simulation", rlabel="13.6 TeV", ax=ax,
                           fontsize=12)
    ax.text(0.04, 0.93, text, transform=ax.transAxes, fontsize=13, va="top")


def plot_l1(result: Derivation, path: Path) -> None:
    plt, mplhep = pyplot()
    fig, axes = grid(plt, len(result.l1), ncols=min(4, len(result.l1)))
    edges = result.settings.l1_pt_edges
    cmap = plt.get_cmap("viridis")
    for ax, f in zip(axes, result.l1, strict=True):
        pts = f.points
        bins = sorted({p["pt_bin"] for p in pts})
        for k, b in enumerate(bins):
            sel = [p for p in pts if p["pt_bin"] == b]
            color = cmap(k / max(len(bins) - 1, 1))
            ax.errorbar([p["rho"] for p in sel], [p["offset_per_area"] for p in sel],
                        yerr=[p["error"] for p in sel], fmt="o", color=color,
                        label=f"raw pT {edges[b]:g}-{edges[b + 1]:g} GeV")
            pt_mid = float(np.exp(np.mean([np.log(p["pt"]) for p in sel])))
            r = np.linspace(0, max(p["rho"] for p in pts) * 1.1, 50)
            ax.plot(r, l1_offset(f.params, r, np.full_like(r, pt_mid)), color=color, lw=1)
        ax.set_xlabel(r"$\rho$ (GeV / area)")
        ax.set_ylabel("median offset / area (GeV)")
        _label(mplhep, ax, f"{f.eta[0]:g} < |η| < {f.eta[1]:g}\n"
                           f"χ²/ndf = {f.chi2:.1f}/{f.ndf}")
        ax.legend(fontsize=9, loc="lower right")
    save(plt, fig, path)


def plot_l2(result: Derivation, path: Path) -> None:
    plt, mplhep = pyplot()
    fig, axes = grid(plt, len(result.l2), ncols=3)
    for ax, f in zip(axes, result.l2, strict=True):
        x = np.array([p["pt"] for p in f.points])
        ax.errorbar(x, [p["correction"] for p in f.points],
                    yerr=[p["error"] for p in f.points], fmt="o", color="k",
                    label="1 / median response")
        pts = np.geomspace(8, max(x.max() * 2, 100), 200)
        ax.plot(pts, l2_correction(f.params, np.clip(pts, *f.pt_range)), color="C1",
                label="fit (clamped)")
        log_x(ax)
        ax.set_xlabel(r"$\langle p_T^{L1} \rangle$ (GeV)")
        ax.set_ylabel("L2Relative correction")
        _label(mplhep, ax, f"{f.eta[0]:g} < |η| < {f.eta[1]:g}\n"
                           f"χ²/ndf = {f.chi2:.1f}/{f.ndf}")
        ax.legend(fontsize=10, loc="upper right")
    save(plt, fig, path)


def plot_closure(report: dict[str, Any], path: Path, title: str) -> None:
    plt, mplhep = pyplot()
    etas = sorted({tuple(b["eta"]) for b in report["bins"]})
    fig, axes = grid(plt, len(etas), ncols=len(etas))
    # raw and fully corrected; the intermediate levels are in the JSON
    shown = dict.fromkeys((report["levels"][0], report["levels"][-1]))
    markers = ["o", "s", "^", "v", "D"]
    for ax, eta in zip(axes, etas, strict=True):
        for ip, pu in enumerate(report["pileups"]):
            for level in shown:
                raw = level == "raw"
                bins = [b for b in report["bins"] if tuple(b["eta"]) == eta
                        and b["pileup"] == pu and level in b["levels"]]
                if not bins:
                    continue
                x = [math.sqrt(b["pt"][0] * b["pt"][1]) for b in bins]
                y = [b["levels"][level]["median"] for b in bins]
                e = [b["levels"][level]["error"] for b in bins]
                ax.errorbar(x, y, yerr=e, fmt=markers[ip % len(markers)],
                            mfc="none" if raw else None, color=f"C{ip}",
                            label=f"PU {pu:g}, {'raw' if raw else 'corrected'}")
        ax.axhline(1.0, color="gray", lw=1)
        for d in (0.98, 1.02):
            ax.axhline(d, color="gray", lw=0.5, ls="--")
        log_x(ax)
        ax.set_ylim(0.3, 1.3)
        ax.set_xlabel(r"$p_T^{truth}$ (GeV)")
        ax.set_ylabel(r"median $p_T / p_T^{truth}$")
        _label(mplhep, ax, f"{title}\n{eta[0]:g} < |η| < {eta[1]:g}")
        ax.legend(fontsize=9, loc="lower right")
    save(plt, fig, path)


def plot_resolution(report: dict[str, Any], path: Path, title: str) -> None:
    plt, mplhep = pyplot()
    etas = sorted({tuple(r["eta"]) for r in report["resolution"]})
    fig, axes = grid(plt, len(etas), ncols=len(etas))
    for ax, eta in zip(axes, etas, strict=True):
        for ip, r in enumerate(x for x in report["resolution"] if tuple(x["eta"]) == eta):
            if not r["points"]:
                continue
            x = np.array([p["pt"] for p in r["points"]])
            ax.errorbar(x, [p["resolution"] for p in r["points"]],
                        yerr=[p["error"] for p in r["points"]], fmt="o", color=f"C{ip}",
                        label=f"PU {r['pileup']:g}")
            if r["fit"]:
                f = r["fit"]
                g = np.geomspace(x.min(), x.max(), 100)
                ax.plot(g, nsc(g, f["N"], f["S"], f["C"]), color=f"C{ip}", lw=1,
                        label=f"N={f['N']:.1f} S={f['S']:.2f} C={f['C']:.3f}")
        log_x(ax)
        ax.set_xlabel(r"$p_T^{truth}$ (GeV)")
        ax.set_ylabel(r"$\sigma / \mu$ (half 16-84% width / median)")
        _label(mplhep, ax, f"{title}\n{eta[0]:g} < |η| < {eta[1]:g}")
        ax.legend(fontsize=9, loc="upper right")
    save(plt, fig, path)


def draw_all(result: Derivation, closures: dict[str, dict[str, Any]], out_dir: Path
             ) -> list[Path]:
    """Every figure of a derivation (``closures``: label -> :func:`closure_report`)."""
    era = result.settings.era
    paths = [out_dir / f"{era}_l1_offset.png", out_dir / f"{era}_l2_fit.png"]
    plot_l1(result, paths[0])
    plot_l2(result, paths[1])
    for label, report in closures.items():
        p = out_dir / f"{era}_closure_{label}.png"
        plot_closure(report, p, label)
        paths.append(p)
        p = out_dir / f"{era}_resolution_{label}.png"
        plot_resolution(report, p, label)
        paths.append(p)
    return paths
