"""Figures of ``hltemu study online-offline`` (needs the ``plots`` extra: matplotlib, mplhep).

Every figure is drawn from the study's summary (:func:`hltemu.study.online_offline.run_study`,
``summary.json``) alone, so that each number drawn is one written:

* ``hlt_vs_offline_pt.png``: matched pairs in (offline pT, HLT pT) (hltemu: full JEC);
* ``response.png``: per |eta| bin, the median response and the Gaussian core's mean (band: +-
  its sigma) against offline pT, one colour per HLT level; bins below twice the HLT storage
  threshold drawn open;
* ``response_distributions.png``: the response of every non-empty bin with its fitted core,
  the HLT levels overlaid;
* ``turn_on_<path>.png``: per path with any passing event, the efficiency points of each
  method with the erf fit, p50 and p95;
* ``threshold_width.png`` (hltemu input): the turn-ons of the width comparison's selections,
  every HLT jet flavour overlaid (raw, JEC levels, full, regressed), at equal p50 (left) and at
  equal accept rate (right) (:mod:`hltemu.study.threshold_width`).

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

#: Colours of the HLT levels (the levels in the order the summary lists them).
LEVEL_COLOURS = ("C0", "C1", "C3", "C2", "C4", "C5", "C6")


def _label(ax: Any, summary: dict[str, Any], text: str, size: int = 12) -> None:
    """The heading above the axes (hltemu, the input kind, events) and ``text`` at the top
    left."""
    ax.text(0.0, 1.01, "hltemu", transform=ax.transAxes, fontsize=size + 2, weight="bold",
            va="bottom", ha="left")
    kind = "emulation" if summary["input"].get("kind") == "hltemu" else "CMS NanoAOD"
    ax.text(0.2, 1.01, kind, transform=ax.transAxes, fontsize=size, style="italic",
            va="bottom", ha="left")
    ax.text(1.0, 1.01, f"{summary['input']['events']} events", transform=ax.transAxes,
            fontsize=size, va="bottom", ha="right")
    ax.text(0.04, 0.95, text, transform=ax.transAxes, fontsize=size + 1, va="top")




def _eta_bins(summary: dict[str, Any]) -> list[tuple[float, float]]:
    return sorted({(b["eta_min"], b["eta_max"]) for b in summary["response"]})


def _levels(summary: dict[str, Any]) -> list[str]:
    """The HLT levels of the response rows, in order (one, unnamed, for older summaries)."""
    return list(dict.fromkeys(b.get("level", "") for b in summary["response"]))


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
    # |eta| bins with a matched jet (hltemu's calorimeter ends at |eta| = 3), else all
    etas = [e for e in _eta_bins(summary) if any(
        b["n"] for b in summary["response"] if (b["eta_min"], b["eta_max"]) == e)] \
        or _eta_bins(summary)
    levels = _levels(summary)
    one = len(levels) == 1
    fig, axes = grid(plt, len(etas), ncols=min(len(etas), 4))
    flag_below = summary["hlt_jets"]["flag_below"]
    for ax, (e0, e1) in zip(axes, etas, strict=True):
        drawn = False
        for k, level in enumerate(levels):
            rows = [b for b in summary["response"] if b.get("level", "") == level
                    and (b["eta_min"], b["eta_max"]) == (e0, e1) and b["n"]]
            median_colour = "k" if one else LEVEL_COLOURS[k % len(LEVEL_COLOURS)]
            core_colour = "C3" if one else median_colour
            shift = 1.0 if one else 1.0 + 0.03 * (k - (len(levels) - 1) / 2)
            name = "" if one else f"{level}: "
            for flagged in (False, True):
                sel = [b for b in rows if b["flagged"] == flagged]
                if not sel:
                    continue
                drawn = True
                x = np.array([math.sqrt(b["pt_min"] * b["pt_max"]) for b in sel]) * shift
                xerr = np.array([[xi - b["pt_min"] for xi, b in zip(x, sel, strict=True)],
                                 [b["pt_max"] - xi for xi, b in zip(x, sel, strict=True)]])
                suffix = " (flagged)" if flagged else ""
                ax.errorbar(x, [b["median"] for b in sel], xerr=xerr if one else None,
                            yerr=[b["median_error"] for b in sel], fmt="o",
                            color=median_colour, mfc="none" if flagged else median_colour,
                            label=f"{name}median{suffix}")
                core = [(xi, b) for xi, b in zip(x, sel, strict=True)
                        if b["core_mean"] is not None]
                if not core:
                    continue
                cx = np.array([c[0] for c in core])
                if one:
                    ax.errorbar(cx * 1.03, [c[1]["core_mean"] for c in core],
                                yerr=[c[1]["core_mean_error"] for c in core], fmt="s",
                                color=core_colour, mfc="none" if flagged else core_colour,
                                label="Gaussian core" + suffix)
                for _, b in core:
                    ax.fill_between([b["pt_min"], b["pt_max"]], b["core_mean"] - b["sigma"],
                                    b["core_mean"] + b["sigma"], color=core_colour,
                                    alpha=0.15, lw=0)
        if flag_below is not None and flag_below > summary["settings"]["pt_edges"][0]:
            ax.axvspan(summary["settings"]["pt_edges"][0], flag_below, color="gray", alpha=0.15,
                       lw=0)
        ax.axhline(1.0, color="gray", lw=1)
        log_x(ax)
        ax.set_ylim(0.4, 1.6)
        ax.set_xlabel(r"offline jet $p_T$ (GeV)")
        ax.set_ylabel(r"$p_T^{HLT} / p_T^{offline}$")
        _label(ax, summary, f"{e0:g} < |η| < {e1:g}\nband: core mean ± σ")
        if drawn:
            ax.legend(fontsize=10, loc="lower right")
    return save(plt, fig, path)


def plot_response_distributions(summary: dict[str, Any], path: Path) -> Path | None:
    from hltemu.study.online_offline import RESPONSE_EDGES

    bins = list(dict.fromkeys((b["eta_min"], b["eta_max"], b["pt_min"], b["pt_max"])
                              for b in summary["response"] if b["n"]))
    if not bins:
        return None
    levels = _levels(summary)
    one = len(levels) == 1
    plt, mplhep = pyplot()
    fig, axes = grid(plt, len(bins), ncols=min(len(bins), 6), size=4.5)
    edges = RESPONSE_EDGES
    width = float(edges[1] - edges[0])
    window = summary["settings"]["core_window"]
    inside = math.erf(window / math.sqrt(2.0))
    for ax, key in zip(axes, bins, strict=True):
        rows = [b for b in summary["response"]
                if (b["eta_min"], b["eta_max"], b["pt_min"], b["pt_max"]) == key and b["n"]]
        text = (f"{key[0]:g} < |η| < {key[1]:g}\n"
                f"{key[2]:g}-{key[3]:g} GeV, n = {rows[0]['n']}")
        top = 1
        for b in rows:
            k = levels.index(b.get("level", ""))
            colour = "k" if one else LEVEL_COLOURS[k % len(LEVEL_COLOURS)]
            mplhep.histplot(np.asarray(b["hist"]), edges, ax=ax, color=colour,
                            label=None if one else b["level"])
            top = max(top, max(b["hist"]))
            name = "" if one else f"{b['level']}: "
            if b["core_mean"] is not None:
                mu, sigma = b["core_mean"], b["sigma"]
                g = np.linspace(mu - window * sigma, mu + window * sigma, 100)
                amp = b["n_core"] * width / (sigma * math.sqrt(2 * math.pi) * inside)
                ax.plot(g, amp * np.exp(-0.5 * ((g - mu) / sigma) ** 2),
                        color="C3" if one else colour, ls="-" if one else "--")
                text += f"\n{name}μ = {mu:.3f}, σ = {sigma:.3f}"
            else:
                text += f"\n{name}core: {b['core_status']}"
        ax.set_xlabel(r"$p_T^{HLT} / p_T^{offline}$", fontsize=12)
        ax.set_ylabel("jets", fontsize=12)
        ax.tick_params(labelsize=10)
        ax.text(0.04, 0.95, text, transform=ax.transAxes, fontsize=10 if one else 8, va="top")
        ax.set_ylim(0, top * (1.7 if one else 2.2))
        if not one:
            ax.legend(fontsize=8, loc="upper right")
    return save(plt, fig, path)


def _draw_efficiency(ax: Any, pts: list[dict[str, Any]], r: dict[str, Any], top: float,
                     colour: str, fit_colour: str, label: str, fit_label: str | None = None,
                     xerr: bool = False) -> None:
    """Efficiency points (68% Clopper-Pearson) and, for a fit with status ok, its erf curve
    up to ``top`` [GeV] with p50 (dashed) and p95 (dotted) lines; ``fit_label`` names the
    curve and the lines in the legend (none when ``None``)."""
    if pts:
        x = np.array([0.5 * (p["pt_min"] + p["pt_max"]) for p in pts])
        eff = np.array([p["efficiency"] for p in pts])
        ax.errorbar(x, eff, xerr=([0.5 * (p["pt_max"] - p["pt_min"]) for p in pts] if xerr
                                  else None),
                    yerr=[eff - [p["low"] for p in pts], [p["high"] for p in pts] - eff],
                    fmt="o", color=colour, label=label, **({} if xerr else {"ms": 4}))
    if r["status"] == "ok":
        g = np.linspace(0.0, top, 300)
        ax.plot(g, erf_turn_on(g, r["mu"], r["sigma"], r["plateau"]), color=fit_colour,
                label=fit_label)
        for key, ls in (("p50", "--"), ("p95", ":")):
            if r[key] is not None:
                ax.axvline(r[key], color=fit_colour, lw=1, ls=ls,
                           label=key if fit_label is not None else None)


def _efficiency_frame(ax: Any, top: float, xlabel: str) -> None:
    """Axes of an efficiency plot: pT from 0 to ``top`` [GeV], efficiency 0 to 1.45, a line
    at 1."""
    ax.set_xlim(0, top)
    ax.set_ylim(0, 1.45)
    ax.axhline(1.0, color="gray", lw=1)
    ax.set_xlabel(f"{xlabel} (GeV)", fontsize=13)
    ax.set_ylabel("efficiency")


def plot_turn_on(summary: dict[str, Any], name: str, path: Path) -> Path:
    plt, _ = pyplot()
    methods = summary["turn_on"][name]
    fig, axes = grid(plt, len(methods), ncols=len(methods))
    for ax, (method, r) in zip(axes, methods.items(), strict=True):
        pts = r["points"]
        top = pts[-1]["pt_max"] if pts else 3.0 * summary["paths"][name]["threshold"]
        _draw_efficiency(ax, pts, r, top, "k", "C3", "data (68% CP)", "erf fit", xerr=True)
        if r["status"] == "ok":
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
        _efficiency_frame(ax, top, r["x"])
        if pts:
            ax.legend(fontsize=10, loc="upper right")
    return save(plt, fig, path)


def plot_threshold_width(summary: dict[str, Any], path: Path) -> Path:
    """The width comparison's selections, every HLT jet flavour: efficiency points, erf fits,
    p50 and p95; a panel for the thresholds at equal p50 and one for those at equal rate."""
    plt, _ = pyplot()
    w = summary["threshold_width"]
    panels = {"p50 matched": w["selections"]}
    if w.get("rate_matched"):
        panels["rate matched"] = {"full": w["selections"]["full"], **w["rate_matched"]}
    fig, axes = grid(plt, len(panels), ncols=len(panels), size=8)
    levels = summary["hlt_jets"].get("levels") or list(w["selections"])
    top = 3.0 * w["threshold"]
    pt_eff = w.get("efficiency_at")
    for ax, (how, selections) in zip(axes, panels.items(), strict=True):
        lines = []
        for name, r in selections.items():
            if r.get("threshold") is None:
                lines.append(f"{name}: {r['status']}")
                continue
            k = levels.index(name) if name in levels else len(levels)
            colour = LEVEL_COLOURS[k % len(LEVEL_COLOURS)]
            pts = [p for p in r["points"] if p["pt_max"] <= top]
            _draw_efficiency(ax, pts, r, top, colour, colour,
                             f"{name}: pT > {r['threshold']:g} GeV")
            if r["status"] != "ok":
                lines.append(f"{name}: {r['status']}")
                continue
            text = (f"{name}: p50 {r['p50']:.1f}, " + (
                f"width {r['width']:.1f} ± {r['width_error']:.1f}" if r["width"] is not None
                else "p95 n/a"))
            if r.get("efficiency") is not None:
                text += f", ε({pt_eff:g}) {r['efficiency']:.3f}"
            lines.append(text)
        ax.text(0.96, 0.05, "\n".join(lines), transform=ax.transAxes, fontsize=10,
                va="bottom", ha="right")
        _label(ax, summary, f"{w['path']}'s cut (|η| ≤ {w['eta_max']:g}) per HLT jet flavour\n"
                            f"{w['n_events']} events, {how}", size=11)
        _efficiency_frame(ax, top, w["x"])
        ax.legend(fontsize=10, loc="upper right")
    return save(plt, fig, path)


def _has_width(summary: dict[str, Any]) -> bool:
    w = summary.get("threshold_width")
    return bool(w) and bool(w.get("selections"))


def turn_on_paths(summary: dict[str, Any]) -> list[str]:
    """The paths whose turn-on figure is drawn: those with a passing event in some method."""
    return [name for name, methods in summary["turn_on"].items()
            if any(r["n_pass"] for r in methods.values())]


def figure_names(summary: dict[str, Any]) -> list[str]:
    """The file names :func:`draw_all` writes for ``summary``."""
    names = ["hlt_vs_offline_pt.png", "response.png"]
    if any(b["n"] for b in summary["response"]):
        names.append("response_distributions.png")
    names += [f"turn_on_{name}.png" for name in turn_on_paths(summary)]
    return names + (["threshold_width.png"] if _has_width(summary) else [])


def draw_all(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """Every figure of the study, in ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    paths = [plot_pt_2d(summary, out_dir / "hlt_vs_offline_pt.png"),
             plot_response(summary, out_dir / "response.png"),
             plot_response_distributions(summary, out_dir / "response_distributions.png")]
    for name in turn_on_paths(summary):
        paths.append(plot_turn_on(summary, name, out_dir / f"turn_on_{name}.png"))
    if _has_width(summary):
        paths.append(plot_threshold_width(summary, out_dir / "threshold_width.png"))
    return [p for p in paths if p is not None]
