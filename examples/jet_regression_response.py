"""HLT/offline response and resolution of raw, factorized-JEC and regressed HLT jets.

Usage::

    python examples/jet_regression_response.py OUTPUT.root [OUTPUT.root ...] \\
        [--weights builtin:jet_regression_v2.npz] [--jec L1FastJet.txt L2Relative.txt] \\
        [--by-file] [--bootstrap 200] [--json RESULT.json] [--plot FIGURE.png]

Each ``OUTPUT.root`` is an ``hltemu run`` output with ``jets``, ``clusters`` (with
``energy_em``), ``cluster_jet``, ``rho``, ``corrected_jets`` (stage ``jec``), ``pfjets`` and
``pfrho`` (and ``pixelvertices`` for a model that uses the pixel-vertex count).  Each HLT jet is
matched to an offline jet (pfjets corrected by the shipped offline JEC with pfrho, as
``derive-jec --reference pfjets`` and ``train-jet-regression`` define offline pT) by Delta R <
0.2, closest pairs first.  Per offline |eta| and pT bin (of the offline jet) it gives the median
of ``pT_HLT / pT_offline`` with its error (``1.2533 x half width / sqrt(n)``) and the
resolution, the half 16-84% width over the median (with a seeded bootstrap error), for the raw
jets, ``corrected_jets`` (the shipped factorized JEC), the raw jets corrected by other levels
(``--jec``: ``other_jec``, e.g. a ``derive-jec --reference pfjets`` derivation on the
regression's own training events) and ``regressed_jets`` (stage ``jet_regression`` itself,
run here on the reference backend, residual included).

The files are pooled, or with ``--by-file`` measured one by one (e.g. one seed at pileup 0, 50
and 100).  Unweighted: within a narrow offline-pT bin the response is a property of the
detector.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hltemu.backends import get_backend
from hltemu.batch import EventBatch
from hltemu.io import read_collections
from hltemu.jec import load_chain
from hltemu.jec.chain import jet_values
from hltemu.jec.derive import OFFLINE_LEVELS
from hltemu.jet_regression import load_model
from hltemu.jetmatch import match_jets, median_with_error
from hltemu.pipeline import get_stage
from hltemu.stages.jet_regression import JetRegressionConfig

PT_BINS = ((30, 50), (50, 100), (100, 200), (200, 500))
ETA_BINS = ((0.0, 1.3), (1.3, 2.5), (2.5, 3.0))
FLAVOURS = ("raw", "corrected_jets", "other_jec", "regressed_jets")


def responses(path: str, weights: str, max_dr: float = 0.2,
              jec: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Matched jets of ``path``: offline pT [GeV] and eta, the event's mean pileup
    (``Event_n_pileup``) and pT_HLT / pT_offline per flavour (with ``jec``, also the raw jets
    corrected by those levels, as ``other_jec``)."""
    vertices = "n_pixel_vertices" in load_model(weights).features
    c = read_collections(path, ["jets", "clusters", "cluster_jet", "rho", "corrected_jets",
                                "pfjets", "pfrho", "Event",
                                *(["pixelvertices"] if vertices else [])])
    jets, pf = c["jets"], c["pfjets"]
    jev = np.asarray(jets.event_index())
    # the stage itself, on the reference backend: network and residual as a run applies them
    batch = EventBatch(get_backend("reference"), jets.n_events,
                       {k: v for k, v in c.items() if k != "Event"})
    regressed = get_stage("jet_regression")(batch, JetRegressionConfig(weights=weights))
    raw = np.asarray(jets["pt"], dtype=np.float64)
    flavours = {"raw": raw, "corrected_jets": np.asarray(c["corrected_jets"]["pt"]),
                "regressed_jets": np.asarray(regressed["regressed_jets"]["pt"])}
    if jec:
        flavours["other_jec"] = load_chain(jec).correct_reference(jet_values(jets,
                                                                             c["rho"]))[0]
    pt_off = load_chain(OFFLINE_LEVELS).correct_reference(jet_values(pf, c["pfrho"]))[0]
    ia, ib = match_jets(jev, jets["eta"], jets["phi"], np.asarray(pf.event_index()), pf["eta"],
                        pf["phi"], max_dr, jets.n_events)
    pileup = float(np.mean(c["Event"]["n_pileup"]))
    res = {"pt_offline": pt_off[ib], "eta_offline": np.asarray(pf["eta"])[ib],
           "pileup": np.full(ia.size, pileup)}
    res.update({k: v[ia] / pt_off[ib] for k, v in flavours.items()})
    return res


def pooled(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The matched jets of several files together."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def resolution_error(r: np.ndarray, n_boot: int, seed: int = 0) -> float:
    """Bootstrap standard deviation of half(q84 - q16) / median of ``r`` (``n_boot`` seeded
    resamples; NaN without)."""
    if n_boot <= 0 or r.size < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, r.size, (n_boot, r.size))
    q16, q50, q84 = np.quantile(r[idx], [0.16, 0.5, 0.84], axis=1)
    return float(np.std(0.5 * (q84 - q16) / q50))


def measure(res: dict[str, np.ndarray], n_boot: int = 0, min_jets: int = 20) -> list[dict]:
    """Per (|eta|, pT) bin: jets, and per flavour (in bins of at least ``min_jets``) the
    median with its error and the resolution with its bootstrap error."""
    names = [n for n in FLAVOURS if n in res]
    rows = []
    for elo, ehi in ETA_BINS:
        for plo, phi in PT_BINS:
            sel = ((np.abs(res["eta_offline"]) >= elo) & (np.abs(res["eta_offline"]) < ehi)
                   & (res["pt_offline"] >= plo) & (res["pt_offline"] < phi))
            row = {"eta": [elo, ehi], "pt": [plo, phi], "jets": int(sel.sum())}
            if sel.sum() < max(min_jets, 2):
                rows.append(row)
                continue
            for n in names:
                m = median_with_error(res[n][sel], np.ones(int(sel.sum())))
                row[n] = {"median": m["median"], "median_error": m["error"],
                          "resolution": m["width"] / m["median"],
                          "resolution_error": resolution_error(res[n][sel], n_boot)}
            rows.append(row)
    return rows


def table(rows: list[dict], title: str = "") -> list[str]:
    """Markdown rows: |eta| bin, pT bin, jets, then median +- error and resolution (+- its
    bootstrap error) per flavour."""
    names = [n for n in FLAVOURS if any(n in r for r in rows)]
    lines = ([f"**{title}**", ""] if title else []) + [
        "| abs(eta) | offline pT [GeV] | jets | " + " | ".join(
            f"{n} median | {n} resolution" for n in names) + " |",
        "|---" * (3 + 2 * len(names)) + "|"]
    for r in rows:
        cells = []
        for n in names:
            if n not in r:
                cells += ["", ""]
                continue
            v = r[n]
            err = v["resolution_error"]
            cells += [f"{v['median']:.3f} ± {v['median_error']:.3f}",
                      f"{v['resolution']:.3f}" + ("" if np.isnan(err) else f" ± {err:.3f}")]
        lines.append(f"| {r['eta'][0]}-{r['eta'][1]} | {r['pt'][0]}-{r['pt'][1]} | "
                     f"{r['jets']} | " + " | ".join(cells) + " |")
    return lines


def plot(results: dict[str, list[dict]], path: str) -> None:
    """Median response and resolution vs offline pT, barrel and endcap, per flavour (one
    line style per file or the pooled files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    colours = {"raw": "tab:grey", "corrected_jets": "tab:blue", "other_jec": "tab:green",
               "regressed_jets": "tab:red"}
    styles = ["-", "--", ":", "-."]
    for k, (label, rows) in enumerate(results.items()):
        for col, (elo, ehi) in enumerate(ETA_BINS[:2]):
            sel = [r for r in rows if r["eta"] == [elo, ehi]]
            x = np.array([np.sqrt(r["pt"][0] * r["pt"][1]) for r in sel])
            for n, colour in colours.items():
                if not all(n in r for r in sel) or n == "raw":
                    continue
                y = [r[n]["median"] for r in sel]
                ye = [r[n]["median_error"] for r in sel]
                w = [r[n]["resolution"] for r in sel]
                we = [np.nan_to_num(r[n]["resolution_error"]) for r in sel]
                kw = {"color": colour, "ls": styles[k % len(styles)], "marker": "o", "ms": 3}
                axes[0, col].errorbar(x, y, ye, label=f"{n} ({label})", **kw)
                axes[1, col].errorbar(x, w, we, **kw)
            axes[0, col].set_title(f"{elo} <= |eta_offline| < {ehi}")
            axes[1, col].set_xlabel("offline pT [GeV]")
    for ax in axes.ravel():
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("median pT_HLT / pT_offline")
    axes[1, 0].set_ylabel("half 16-84% width / median")
    axes[0, 0].axhline(1.0, color="k", lw=0.5)
    axes[0, 1].axhline(1.0, color="k", lw=0.5)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outputs", nargs="+")
    ap.add_argument("--weights", default="builtin:jet_regression_v2.npz")
    ap.add_argument("--jec", nargs="*", default=(),
                    help="correction levels for a further column 'other_jec' (e.g. a "
                         "derive-jec --reference pfjets output)")
    ap.add_argument("--by-file", action="store_true", help="one table per file")
    ap.add_argument("--bootstrap", type=int, default=0,
                    help="resamples for the resolutions' errors (0: none)")
    ap.add_argument("--json", help="write every number to this JSON file")
    ap.add_argument("--plot", help="draw response and resolution vs pT to this PNG")
    args = ap.parse_args()
    parts = {Path(p).name: responses(p, args.weights, jec=tuple(args.jec))
             for p in args.outputs}
    if args.by_file:
        results = {name: measure(r, args.bootstrap) for name, r in parts.items()}
    else:
        results = {"pooled": measure(pooled(list(parts.values())), args.bootstrap)}
    for name, rows in results.items():
        pileup = float(np.mean(parts[name]["pileup"])) if name in parts else None
        print("\n".join(table(rows, name + ("" if pileup is None
                                            else f" (mean pileup {pileup:.1f})"))) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"files": args.outputs, "weights": args.weights, "jec": list(args.jec),
             "bootstrap": args.bootstrap, "results": results}, indent=1))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
