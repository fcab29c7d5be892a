"""Closure of jet energy corrections against hard-scatter truth jets (``hltemu derive-jec``).

For a :class:`~hltemu.jec.derive.JetSample` (ideally events never used to derive the
corrections) and a correction chain (the files as written, read back by hltemu's reader): truth
jets in ``|eta| < 3`` matched to reco jets (Delta R < R/2, closest first), and per nominal
pileup, ``|eta|`` bin and truth-pT bin the weighted median of ``pT / pT_truth`` with its
statistical error after each level (raw, after the first level, ..., after all), the matching
efficiency, and the relative resolution (half the 16-84% width over the median) after all
levels fitted per ``|eta|`` bin in the N, S, C form::

    sigma / mu = sqrt(N |N| / pT^2 + S^2 / pT + C^2)        (pT the truth pT in GeV)

The same median estimator as the derivation (:func:`hltemu.jec.derive.median_with_error`),
weighted or not as it (``DeriveSettings.weighted``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hltemu.jec.derive import CALO_ETA_MAX, DeriveSettings, JetSample, jet_weights, truth_matches
from hltemu.jetmatch import median_with_error

#: ``|eta|`` bins of the closure table (barrel, endcap with tracker, endcap beyond it).
CLOSURE_ETA_EDGES: tuple[float, ...] = (0.0, 1.3, 2.5, CALO_ETA_MAX)
#: truth-pT bins of the closure table (GeV); 30-500 are the ones the acceptance criteria cite.
CLOSURE_PT_EDGES: tuple[float, ...] = (15.0, 30.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
#: coarser truth-pT bins where jets are rarer: beyond the tracker (2.5 < |eta| < 3) a QCD
#: sample holds about a sixth of the barrel's jets above 100 GeV
CLOSURE_PT_EDGES_BY_ETA: dict[tuple[float, float], tuple[float, ...]] = {
    (2.5, CALO_ETA_MAX): (15.0, 30.0, 50.0, 100.0, 500.0, 1000.0),
}
#: finer truth-pT bins for the resolution fit (GeV)
RESOLUTION_PT_EDGES: tuple[float, ...] = (15, 20, 25, 30, 40, 50, 65, 80, 100, 130, 170, 220,
                                          300, 400, 550, 750, 1000)


@dataclass(frozen=True)
class ClosureBin:
    """One (pileup, |eta|, truth pT) bin: ``levels`` maps "raw", each level name and "all" to
    the median response and its error (``median``, ``error``, ``width``, ``n``, ``n_eff``)."""

    pileup: float
    eta: tuple[float, float]
    pt: tuple[float, float]
    n_truth: int
    n_matched: int
    levels: dict[str, dict[str, float]]


def chain_factors(chain: Any, sample: JetSample) -> np.ndarray:
    """Per reco jet of ``sample``, the factor of each level of ``chain`` (``(n_jets,
    n_levels)``), evaluated by hltemu's NumPy reference on the raw jets."""
    values = {"JetPt": sample.j_pt, "JetEta": sample.j_eta, "JetPhi": sample.j_phi,
              "JetA": sample.j_area, "Rho": sample.rho[sample.j_ev]}
    _, _, factors = chain.correct_reference(values)
    return factors


def closure_table(sample: JetSample, factors: np.ndarray, level_names: Sequence[str],
                  settings: DeriveSettings | None = None,
                  eta_edges: Sequence[float] = CLOSURE_ETA_EDGES,
                  pt_edges: Sequence[float] | None = None,
                  matches: tuple[np.ndarray, np.ndarray] | None = None) -> list[ClosureBin]:
    """Median response per (pileup, |eta|, truth pT) bin after each level; ``pt_edges``
    (GeV) for every |eta| bin, or (``None``) :data:`CLOSURE_PT_EDGES` with the coarser
    :data:`CLOSURE_PT_EDGES_BY_ETA` where given; ``matches``: :func:`truth_matches` of
    ``sample`` when already made."""
    settings = settings or DeriveSettings()
    acc, reco = matches if matches is not None else truth_matches(sample, settings)
    t_pt, t_eta = sample.t_pt[acc], np.abs(sample.t_eta[acc])
    ev = sample.t_ev[acc]
    cum = np.cumprod(factors, axis=1) if factors.size else np.ones((sample.j_pt.size, 0))
    out = []
    for pu in sample.pileups():
        at = sample.pileup[ev] == pu
        for elo, ehi in zip(eta_edges[:-1], eta_edges[1:], strict=True):
            edges = pt_edges if pt_edges is not None else CLOSURE_PT_EDGES_BY_ETA.get(
                (elo, ehi), CLOSURE_PT_EDGES)
            for plo, phi in zip(edges[:-1], edges[1:], strict=True):
                b = at & (t_eta >= elo) & (t_eta < ehi) & (t_pt >= plo) & (t_pt < phi)
                bm = b & (reco >= 0)
                levels: dict[str, dict[str, float]] = {}
                if bm.sum() >= 2:
                    r = reco[bm]
                    w = jet_weights(sample, ev[bm], settings)
                    raw = sample.j_pt[r] / t_pt[bm]
                    levels["raw"] = median_with_error(raw, w)
                    for k, name in enumerate(level_names):
                        levels[name] = median_with_error(raw * cum[r, k], w)
                out.append(ClosureBin(pu, (elo, ehi), (plo, phi), int(b.sum()), int(bm.sum()),
                                      levels))
    return out


def nsc(pt: np.ndarray, n: float, s: float, c: float) -> np.ndarray:
    """Relative resolution of the N, S, C form at truth ``pt`` [GeV]."""
    pt = np.asarray(pt, dtype=np.float64)
    return np.sqrt(np.maximum(n * abs(n) / pt**2 + s * s / pt + c * c, 0.0))


def resolution(sample: JetSample, factors: np.ndarray, settings: DeriveSettings | None = None,
               eta_edges: Sequence[float] = CLOSURE_ETA_EDGES,
               pt_edges: Sequence[float] = RESOLUTION_PT_EDGES,
               min_jets: int = 30, matches: tuple[np.ndarray, np.ndarray] | None = None
               ) -> list[dict[str, Any]]:
    """Relative resolution after all levels per (pileup, |eta|) with its N, S, C fit
    (``matches`` as :func:`closure_table`'s)."""
    from scipy.optimize import least_squares

    settings = settings or DeriveSettings()
    acc, reco = matches if matches is not None else truth_matches(sample, settings)
    t_pt, t_eta = sample.t_pt[acc], np.abs(sample.t_eta[acc])
    ev = sample.t_ev[acc]
    total = np.prod(factors, axis=1) if factors.size else np.ones(sample.j_pt.size)
    out = []
    for pu in sample.pileups():
        at = (sample.pileup[ev] == pu) & (reco >= 0)
        for elo, ehi in zip(eta_edges[:-1], eta_edges[1:], strict=True):
            pts = []
            for plo, phi in zip(pt_edges[:-1], pt_edges[1:], strict=True):
                b = at & (t_eta >= elo) & (t_eta < ehi) & (t_pt >= plo) & (t_pt < phi)
                if b.sum() < min_jets:
                    continue
                w = jet_weights(sample, ev[b], settings)
                r = sample.j_pt[reco[b]] * total[reco[b]] / t_pt[b]
                m = median_with_error(r, w)
                rel = m["width"] / m["median"]
                pts.append({"pt": float(np.average(t_pt[b], weights=w)), "resolution": rel,
                            "error": rel / math.sqrt(2 * max(m["n_eff"], 1.0)),
                            "n": m["n"], "n_eff": m["n_eff"]})
            fit: dict[str, Any] | None = None
            if len(pts) >= 4:
                x = np.array([p["pt"] for p in pts])
                y = np.array([p["resolution"] for p in pts])
                e = np.array([p["error"] for p in pts])
                res = least_squares(lambda q, x=x, y=y, e=e: (nsc(x, *q) - y) / e,
                                    [3.0, 1.0, 0.05])
                chi2 = float(np.sum(res.fun**2))
                fit = {"N": float(res.x[0]), "S": float(abs(res.x[1])), "C": float(abs(res.x[2])),
                       "chi2": chi2, "ndf": len(pts) - 3}
            out.append({"pileup": pu, "eta": [elo, ehi], "points": pts, "fit": fit})
    return out


def pileup_dependence(table: Sequence[ClosureBin], level: str = "all"
                      ) -> list[dict[str, Any]]:
    """Per (|eta|, truth pT) bin and nominal pileup N > 0: the median response after ``level``
    at N minus that at pileup 0, with the errors added in quadrature."""
    at0 = {(b.eta, b.pt): b for b in table if b.pileup == 0 and level in b.levels}
    out = []
    for b in table:
        if b.pileup == 0 or level not in b.levels or (b.eta, b.pt) not in at0:
            continue
        ref = at0[(b.eta, b.pt)].levels[level]
        cur = b.levels[level]
        out.append({"pileup": b.pileup, "eta": list(b.eta), "pt": list(b.pt),
                    "difference": cur["median"] - ref["median"],
                    "error": math.hypot(cur["error"], ref["error"])})
    return out


def closure_report(sample: JetSample, chain: Any, settings: DeriveSettings | None = None
                   ) -> dict[str, Any]:
    """Closure table, resolution and pileup dependence of ``chain`` on ``sample`` (JSON-ready).

    Level keys: ``raw``, then ``L1FastJet``, ``L1FastJet+L2Relative``, ... (cumulative)."""
    settings = settings or DeriveSettings()
    factors = chain_factors(chain, sample)
    names = []
    for n in chain.names:
        names.append(n if not names else f"{names[-1]}+{n}")
    matches = truth_matches(sample, settings)  # one matching for the table and the resolution
    table = closure_table(sample, factors, names, settings, matches=matches)
    last = names[-1] if names else "raw"
    return {
        "files": sample.files,
        "pileups": sample.pileups(),
        "events": {f"{p:g}": int((sample.pileup == p).sum()) for p in sample.pileups()},
        "levels": ["raw", *names],
        "estimator": ("generator-weighted" if settings.weighted else "unweighted")
                     + " median of pT / pT_truth; error 1.2533 * half 16-84% width / sqrt(n_eff)",
        "bins": [{"pileup": b.pileup, "eta": list(b.eta), "pt": list(b.pt),
                  "n_truth": b.n_truth, "n_matched": b.n_matched, "levels": b.levels}
                 for b in table],
        "resolution": resolution(sample, factors, settings, matches=matches),
        "pileup_dependence": pileup_dependence(table, last),
    }
