"""HLT/offline response and resolution of raw, factorized-JEC and regressed HLT jets.

Usage::

    python examples/jet_regression_response.py OUTPUT.root [--weights builtin:jet_regression_v1.npz]

``OUTPUT.root`` is an ``hltemu run`` output with ``jets``, ``clusters`` (with ``energy_em``),
``cluster_jet``, ``rho``, ``corrected_jets`` (stage ``jec``), ``pfjets`` and ``pfrho``.  Each
HLT jet is matched to an offline jet (pfjets corrected by the shipped offline JEC with pfrho,
as ``derive-jec --reference pfjets`` and ``train-jet-regression`` define offline pT) by Delta R
< 0.2; per offline-pT bin and |eta| bin (of the offline jet) the median of ``pT_HLT /
pT_offline`` with its error and the resolution, the half 16-84% width over the median, are
printed for the raw jets, ``corrected_jets``, optionally the raw jets corrected by other levels
(``--jec``: ``other_jec``) and the regression (computed here with the NumPy reference of stage
``jet_regression``).  Unweighted: within a narrow offline-pT bin the response
is a property of the detector.
"""

from __future__ import annotations

import argparse

import numpy as np

from hltemu.io import read_collections
from hltemu.jec import load_chain
from hltemu.jec.chain import jet_values
from hltemu.jec.derive import OFFLINE_LEVELS
from hltemu.jet_regression import (
    constituent_rows,
    forward_reference,
    jet_features_reference,
    load_model,
    standardise,
)
from hltemu.jetmatch import match_jets, median_with_error

PT_BINS = ((30, 50), (50, 100), (100, 200), (200, 500))
ETA_BINS = ((0.0, 1.3), (1.3, 2.5))


def responses(path: str, weights: str, max_dr: float = 0.2,
              jec: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Matched jets of ``path``: offline pT and eta, and pT_HLT / pT_offline per flavour
    (with ``jec``, also the raw jets corrected by those levels, as ``other_jec``)."""
    c = read_collections(path, ["jets", "clusters", "cluster_jet", "rho", "corrected_jets",
                                "pfjets", "pfrho"])
    jets, clusters, pf = c["jets"], c["clusters"], c["pfjets"]
    model = load_model(weights)
    if "n_pixel_vertices" in model.features:
        raise SystemExit(f"{weights} uses n_pixel_vertices; this script reads no pixelvertices")
    jev = np.asarray(jets.event_index())
    cl_jet = constituent_rows(np.asarray(jets.offsets), np.asarray(clusters.offsets),
                              np.asarray(c["cluster_jet"]["jet"]))
    feats = jet_features_reference(
        {k: np.asarray(jets[k]) for k in ("pt", "eta", "phi", "area")},
        np.asarray(c["rho"]["rho"], dtype=np.float64)[jev], np.zeros(jets.size),
        {k: np.asarray(clusters[k]) for k in ("energy", "energy_em", "eta", "phi")}, cl_jet)
    out = forward_reference(standardise(feats, model), model)
    raw = np.asarray(jets["pt"], dtype=np.float64)
    flavours = {"raw": raw, "corrected_jets": np.asarray(c["corrected_jets"]["pt"]),
                "regressed_jets": raw * np.exp(out[:, 0].astype(np.float64))}
    if jec:
        flavours["other_jec"] = load_chain(jec).correct_reference(jet_values(jets,
                                                                             c["rho"]))[0]
    pt_off = load_chain(OFFLINE_LEVELS).correct_reference(jet_values(pf, c["pfrho"]))[0]
    ia, ib = match_jets(jev, jets["eta"], jets["phi"], np.asarray(pf.event_index()), pf["eta"],
                        pf["phi"], max_dr, jets.n_events)
    res = {"pt_offline": pt_off[ib], "eta_offline": np.asarray(pf["eta"])[ib]}
    res.update({k: v[ia] / pt_off[ib] for k, v in flavours.items()})
    return res


def resolution_error(r: np.ndarray, n_boot: int, seed: int = 0) -> float:
    """Bootstrap standard deviation of half(q84 - q16) / median of ``r``."""
    if n_boot <= 0 or r.size < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, r.size, (n_boot, r.size))
    q16, q50, q84 = np.quantile(r[idx], [0.16, 0.5, 0.84], axis=1)
    return float(np.std(0.5 * (q84 - q16) / q50))


def table(res: dict[str, np.ndarray], n_boot: int = 0) -> list[str]:
    """Rows: eta bin, pT bin, jets, then median +- error and resolution (+- its bootstrap
    error with ``n_boot`` resamples) per flavour."""
    names = tuple(n for n in ("raw", "corrected_jets", "other_jec", "regressed_jets")
                  if n in res)
    lines = ["| abs(eta) | offline pT [GeV] | jets | " + " | ".join(
        f"{n} median | {n} resolution" for n in names) + " |",
        "|---" * (3 + 2 * len(names)) + "|"]
    for elo, ehi in ETA_BINS:
        for plo, phi in PT_BINS:
            sel = ((np.abs(res["eta_offline"]) >= elo) & (np.abs(res["eta_offline"]) < ehi)
                   & (res["pt_offline"] >= plo) & (res["pt_offline"] < phi))
            cells = []
            for n in names:
                m = median_with_error(res[n][sel], np.ones(int(sel.sum())))
                err = resolution_error(res[n][sel], n_boot)
                cells += [f"{m['median']:.3f} ± {m['error']:.3f}",
                          f"{m['width'] / m['median']:.3f}"
                          + (f" ± {err:.3f}" if n_boot > 0 else "")]
            lines.append(f"| {elo}-{ehi} | {plo}-{phi} | {int(sel.sum())} | "
                         + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("output")
    ap.add_argument("--weights", default="builtin:jet_regression_v1.npz")
    ap.add_argument("--jec", nargs="*", default=(),
                    help="correction levels for a further column 'other_jec' (e.g. a "
                         "derive-jec --reference pfjets output)")
    ap.add_argument("--bootstrap", type=int, default=0,
                    help="resamples for the resolutions' errors (0: none)")
    args = ap.parse_args()
    print("\n".join(table(responses(args.output, args.weights, jec=tuple(args.jec)),
                           args.bootstrap)))


if __name__ == "__main__":
    main()
