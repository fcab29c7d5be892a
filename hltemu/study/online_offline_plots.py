"""Figures of ``hltemu study online-offline`` (needs the ``plots`` extra: matplotlib, mplhep).

Every figure is drawn from the study's summary (:func:`hltemu.study.online_offline.run_study`,
``summary.json``) alone, so that each number drawn is one written:

* ``hlt_vs_offline_pt.png``: matched pairs in (offline pT, HLT pT);
* ``response.png``: per |eta| bin, the median response and the Gaussian core's mean (band: +-
  its sigma) against offline pT; bins below twice the HLT storage threshold drawn open;
* ``response_distributions.png``: the response of every non-empty bin with its fitted core;
* ``turn_on_<path>.png``: per path with any passing event, the efficiency points of each
  method with the erf fit, p50 and p95.

The style helpers mirror those of :mod:`hltemu.jec.derive_plots` (CMS style, Agg backend)
rather than import them: they are private there, and that module loads the JEC derivation.
Each PNG is written through :func:`hltemu.outputs.atomic_output`.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from hltemu.plotting import grid, log_x, pyplot, save
from hltemu.study.fits import erf_turn_on


def _label(ax: Any, summary: dict[str, Any], text: str, size: int = 12) -> None:
    """The heading above the axes (hltemu, CMS NanoAOD, events) and ``text`` at the top left."""
    ax.text(0.0, 1.01, "hltemu", transform=ax.transAxes, fontsize=size + 2, weight="bold",
            va="bottom", ha="left")
    ax.text(0.2, 1.01, "CMS NanoAOD", transform=ax.transAxes, fontsize=size, style="italic",
            va="bottom", ha="left")
    ax.text(1.0, 1.01, f"{summary['input']['events']} events", transform=ax.transAxes,
            fontsize=size, va="bottom", ha="right")
    ax.text(0.04, 0.95, text, transform=ax.transAxes, fontsize=size + 1, va="top")




def _eta_bins(summary: dict[str, Any]) -> list[tuple[float, float]]:
    return sorted({(b["eta_min"], b["eta_max"]) for b in summary["response"]})


def plot_pt_2d(summary: dict[str, Any], path: Path) -> Path:
    plt, mplhep = pyplot()
    h = summary["hlt_vs_offline"]
    fig, ax = plt.subplots(figsize=(8, 7))
    counts = np.asarray(h["counts"], dtype=float)
    mplhep.hist2dplot(np.where(counts > 0, counts, np.nan), h["offline_pt_edges"],
                      h["hlt_pt_edges"], ax=ax, cbarextend=False)
    lo, hi = h["offline_pt_edges"][0], h["offline_pt_edges"][-1]
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"offline jet $p_T$ (GeV)")
    ax.set_ylabel(r"HLT jet $p_T$ (GeV)")
    _label(ax, summary, f"{h['pairs']} matched pairs, "
                                f"ΔR < {summary['matching']['max_dr']:g}")
    return save(plt, fig, path)


def plot_response(summary: dict[str, Any], path: Path) -> Path:
    plt, _ = pyplot()
    etas = _eta_bins(summary)
    fig, axes = grid(plt, len(etas), ncols=min(len(etas), 4))
    flag_below = summary["hlt_jets"]["flag_below"]
    for ax, (e0, e1) in zip(axes, etas, strict=True):
        rows = [b for b in summary["response"]
                if (b["eta_min"], b["eta_max"]) == (e0, e1) and b["n"]]
        for flagged in (False, True):
            sel = [b for b in rows if b["flagged"] == flagged]
            if not sel:
                continue
            x = np.array([math.sqrt(b["pt_min"] * b["pt_max"]) for b in sel])
            xerr = np.array([[xi - b["pt_min"] for xi, b in zip(x, sel, strict=True)],
                             [b["pt_max"] - xi for xi, b in zip(x, sel, strict=True)]])
            suffix = " (flagged)" if flagged else ""
            ax.errorbar(x, [b["median"] for b in sel], xerr=xerr,
                        yerr=[b["median_error"] for b in sel], fmt="o", color="k",
                        mfc="none" if flagged else "k", label="median" + suffix)
            core = [(xi, b) for xi, b in zip(x, sel, strict=True) if b["core_mean"] is not None]
            if core:
                cx = np.array([c[0] for c in core])
                ax.errorbar(cx * 1.03, [c[1]["core_mean"] for c in core],
                            yerr=[c[1]["core_mean_error"] for c in core], fmt="s", color="C3",
                            mfc="none" if flagged else "C3", label="Gaussian core" + suffix)
                for _, b in core:
                    ax.fill_between([b["pt_min"], b["pt_max"]], b["core_mean"] - b["sigma"],
                                    b["core_mean"] + b["sigma"], color="C3", alpha=0.15, lw=0)
        if flag_below is not None:
            ax.axvspan(summary["settings"]["pt_edges"][0], flag_below, color="gray", alpha=0.15,
                       lw=0)
        ax.axhline(1.0, color="gray", lw=1)
        log_x(ax)
        ax.set_ylim(0.4, 1.6)
        ax.set_xlabel(r"offline jet $p_T$ (GeV)")
        ax.set_ylabel(r"$p_T^{HLT} / p_T^{offline}$")
        _label(ax, summary, f"{e0:g} < |η| < {e1:g}\nband: core mean ± σ")
        if rows:
            ax.legend(fontsize=10, loc="lower right")
    return save(plt, fig, path)


def plot_response_distributions(summary: dict[str, Any], path: Path) -> Path | None:
    from hltemu.study.online_offline import RESPONSE_EDGES

    rows = [b for b in summary["response"] if b["n"]]
    if not rows:
        return None
    plt, mplhep = pyplot()
    fig, axes = grid(plt, len(rows), ncols=min(len(rows), 6), size=4.5)
    edges = RESPONSE_EDGES
    width = float(edges[1] - edges[0])
    window = summary["settings"]["core_window"]
    inside = math.erf(window / math.sqrt(2.0))
    for ax, b in zip(axes, rows, strict=True):
        mplhep.histplot(np.asarray(b["hist"]), edges, ax=ax, color="k")
        text = (f"{b['eta_min']:g} < |η| < {b['eta_max']:g}\n"
                f"{b['pt_min']:g}-{b['pt_max']:g} GeV, n = {b['n']}")
        if b["core_mean"] is not None:
            mu, sigma = b["core_mean"], b["sigma"]
            g = np.linspace(mu - window * sigma, mu + window * sigma, 100)
            amp = b["n_core"] * width / (sigma * math.sqrt(2 * math.pi) * inside)
            ax.plot(g, amp * np.exp(-0.5 * ((g - mu) / sigma) ** 2), color="C3")
            text += f"\nμ = {mu:.3f}, σ = {sigma:.3f}"
        else:
            text += f"\ncore: {b['core_status']}"
        ax.set_xlabel(r"$p_T^{HLT} / p_T^{offline}$", fontsize=12)
        ax.set_ylabel("jets", fontsize=12)
        ax.tick_params(labelsize=10)
        ax.text(0.04, 0.95, text, transform=ax.transAxes, fontsize=10, va="top")
        ax.set_ylim(0, max(max(b["hist"]), 1) * 1.7)
    return save(plt, fig, path)


def plot_turn_on(summary: dict[str, Any], name: str, path: Path) -> Path:
    plt, _ = pyplot()
    methods = summary["turn_on"][name]
    fig, axes = grid(plt, len(methods), ncols=len(methods))
    for ax, (method, r) in zip(axes, methods.items(), strict=True):
        pts = r["points"]
        if pts:
            x = np.array([0.5 * (p["pt_min"] + p["pt_max"]) for p in pts])
            eff = np.array([p["efficiency"] for p in pts])
            ax.errorbar(x, eff, xerr=[0.5 * (p["pt_max"] - p["pt_min"]) for p in pts],
                        yerr=[eff - [p["low"] for p in pts], [p["high"] for p in pts] - eff],
                        fmt="o", color="k", label="data (68% CP)")
            top = pts[-1]["pt_max"]
        else:
            top = 3.0 * summary["paths"][name]["threshold"]
        if r["status"] == "ok":
            g = np.linspace(0.0, top, 300)
            ax.plot(g, erf_turn_on(g, r["mu"], r["sigma"], r["plateau"]), color="C3",
                    label="erf fit")
            for key, ls in (("p50", "--"), ("p95", ":")):
                if r[key] is not None:
                    ax.axvline(r[key], color="C3", lw=1, ls=ls, label=key)
            fit = (f"p50 = {r['p50']:.1f} ± {r['p50_error']:.1f} GeV\n"
                   + (f"p95 = {r['p95']:.1f} ± {r['p95_error']:.1f} GeV\n"
                      if r["p95"] is not None else "p95 n/a\n")
                   + f"plateau = {r['plateau']:.3f}" + (" (fixed)" if r["plateau_fixed"] else ""))
        else:
            fit = "no fit: " + textwrap.fill(f"{r['status']}: {r['reason']}", 40)
        ax.text(0.96, 0.05, fit, transform=ax.transAxes, fontsize=11, va="bottom", ha="right")
        how = (f"ref. {r['reference']}" if method == "reference"
               else "tag and probe (dijet)")
        _label(ax, summary, f"{name}, {how}\n{r['n_events']} "
                            f"{'events' if method == 'reference' else 'probes'}, "
                            f"{r['n_rising']} within μ ± 2σ", size=11)
        ax.set_xlim(0, top)
        ax.set_ylim(0, 1.45)
        ax.axhline(1.0, color="gray", lw=1)
        ax.set_xlabel(f"{r['x']} (GeV)", fontsize=13)
        ax.set_ylabel("efficiency")
        if pts:
            ax.legend(fontsize=10, loc="upper right")
    return save(plt, fig, path)


def turn_on_paths(summary: dict[str, Any]) -> list[str]:
    """The paths whose turn-on figure is drawn: those with a passing event in some method."""
    return [name for name, methods in summary["turn_on"].items()
            if any(r["n_pass"] for r in methods.values())]


def figure_names(summary: dict[str, Any]) -> list[str]:
    """The file names :func:`draw_all` writes for ``summary``."""
    names = ["hlt_vs_offline_pt.png", "response.png"]
    if any(b["n"] for b in summary["response"]):
        names.append("response_distributions.png")
    return names + [f"turn_on_{name}.png" for name in turn_on_paths(summary)]


def draw_all(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """Every figure of the study, in ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    paths = [plot_pt_2d(summary, out_dir / "hlt_vs_offline_pt.png"),
             plot_response(summary, out_dir / "response.png"),
             plot_response_distributions(summary, out_dir / "response_distributions.png")]
    for name in turn_on_paths(summary):
        paths.append(plot_turn_on(summary, name, out_dir / f"turn_on_{name}.png"))
    return [p for p in paths if p is not None]
