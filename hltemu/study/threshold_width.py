"""What the HLT's jet energy corrections do to a single-jet trigger's turn-on, on hltemu output
(:func:`threshold_width_study`).

The question: does cutting on corrected HLT jets give a sharper turn-on, in offline pT, than
cutting on raw HLT jets?  Two selections are emulated from the HLT jets of each event (no
path bit needed, every event counts, no prescale):

* *corrected*: the leading full-JEC HLT jet with |eta| <= the path's ``eta_max`` has
  pT >= the path's ``pt_min`` (hltemu's stage ``trigger`` on that path, e.g. HLT_CaloJet80;
  checked against the path's ``trigger_pre`` bit where the file has it);
* *raw* (and each intermediate JEC level, e.g. L1FastJet alone): the leading HLT jet at that
  level, same |eta| cut, has pT >= ``T``, with ``T`` chosen so that the offline p50 of its
  turn-on equals the corrected one's: a bisection over thresholds on a grid of
  ``StudySettings.threshold_step`` GeV, then the grid point nearest in p50; "matched" when
  within ``StudySettings.p50_tolerance`` GeV.

Both turn-ons are measured against the leading offline jet's pT among the offline jets with
|eta| <= ``StudySettings.width_eta``, by default the path's own ``eta_max`` (events without such
a jet are left out), and fitted with :func:`hltemu.study.fits.fit_turn_on`; the width is
p95 - p50.  The acceptance is the path's, not the reference method's |eta| < 2.5
(``turn_on_eta``), on purpose: with the offline jets cut tighter than the HLT ones, events
whose leading HLT jet lies between the two cuts pass at any offline pT (about 1 to 3 % of the
events below the threshold in QCD), a pedestal the erf model has no term for, which the fit
absorbs into a sigma nearly twice the rising edge's (measured on hltemu's QCD samples: width
30 GeV instead of 17 at HLT_CaloJet80).  Both selections are made on
the same events, so their widths' fit errors are correlated; ``StudySettings.bootstrap``
resamples the events (thresholds fixed) for the error of their difference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hltemu.study.fits import fit_turn_on
from hltemu.study.online_offline import (
    PathCut,
    StudySample,
    StudySettings,
    efficiency_points,
    leading_pt,
    ranked,
    turn_on_edges,
)


def _p50(x: np.ndarray, passed: np.ndarray, min_rising: int) -> tuple[float | None, dict]:
    fit = fit_turn_on(x, passed, min_rising=min_rising)
    return (fit["p50"] if fit["status"] == "ok" else None), fit


def match_threshold(x: np.ndarray, lead: np.ndarray, target: float, start: float,
                    step: float, min_rising: int) -> dict[str, Any]:
    """The threshold ``T`` (a multiple of ``step``, GeV) whose selection ``lead >= T`` has the
    offline p50 nearest ``target`` (GeV), by bisection from a bracket grown around ``start``.

    Returns ``{"threshold", "p50", "fit", "scan"}`` (``scan``: every ``[T, p50]`` tried, p50
    ``None`` where the fit failed) or, when no bracket is found, ``threshold`` ``None`` and a
    ``reason``."""
    cache: dict[int, tuple[float | None, dict]] = {}

    def at(i: int) -> float | None:
        if i not in cache:
            cache[i] = _p50(x, lead >= i * step, min_rising)
        return cache[i][0]

    def result(i: int | None, reason: str | None = None) -> dict[str, Any]:
        scan = [[k * step, cache[k][0]] for k in sorted(cache)]
        if i is None:
            return {"threshold": None, "p50": None, "fit": None, "scan": scan, "reason": reason}
        return {"threshold": i * step, "p50": cache[i][0], "fit": cache[i][1], "scan": scan,
                "reason": None}

    i0 = max(1, round(start / step))
    lo = hi = i0
    width = max(1, round(0.1 * start / step))
    # grow the bracket: p50(lo) <= target <= p50(hi); p50 rises with the threshold
    for _ in range(12):
        p_lo, p_hi = at(lo), at(hi)
        if p_lo is not None and p_lo > target:
            lo = max(1, lo - width)
        elif p_hi is not None and p_hi < target:
            hi = hi + width
        elif p_lo is None and lo > 1:
            lo = max(1, lo - width)
        elif p_hi is None:
            hi = hi + width
        else:
            break
        width *= 2
    p_lo, p_hi = at(lo), at(hi)
    if p_lo is None or p_hi is None or not p_lo <= target <= p_hi:
        return result(None, f"no threshold found with an offline p50 around {target:.1f} GeV "
                            f"(tried {lo * step:g}-{hi * step:g} GeV)")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        p = at(mid)
        if p is None:  # a failed fit inside the bracket: keep the nearest found so far
            break
        if p <= target:
            lo = mid
        else:
            hi = mid
    best = min((i for i in cache if cache[i][0] is not None),
               key=lambda i: abs(cache[i][0] - target))
    return result(best)


def _selection(name: str, x: np.ndarray, passed: np.ndarray, fit: dict[str, Any],
               threshold: float, description: str) -> dict[str, Any]:
    return {"level": name, "threshold": threshold, "selection": description, **fit,
            "points": efficiency_points(x, passed, turn_on_edges(threshold))}


def _bootstrap(x: np.ndarray, passes: dict[str, np.ndarray], n: int, min_rising: int,
               seed: int = 12345) -> dict[str, Any]:
    """Widths p95 - p50 of each selection on ``n`` resamples of the events (the same events
    for every selection in a resample): their spread and that of each width's difference from
    the corrected one's."""
    rng = np.random.default_rng(seed)
    widths: dict[str, list[float]] = {k: [] for k in passes}
    for _ in range(n):
        idx = rng.integers(0, x.size, x.size)
        row = {}
        for k, passed in passes.items():
            fit = fit_turn_on(x[idx], passed[idx], min_rising=min_rising)
            row[k] = fit["width"] if fit["status"] == "ok" and fit["width"] is not None \
                else math.nan
        for k in passes:
            widths[k].append(row[k])
    w = {k: np.asarray(v) for k, v in widths.items()}
    ok = np.all([np.isfinite(v) for v in w.values()], axis=0)
    out: dict[str, Any] = {"resamples": n, "used": int(ok.sum()), "seed": seed,
                           "width_sd": {k: float(np.std(v[ok], ddof=1)) if ok.sum() > 1
                                        else None for k, v in w.items()}}
    ref = next(iter(w))
    out["difference_sd"] = {k: float(np.std(w[k][ok] - w[ref][ok], ddof=1))
                            if ok.sum() > 1 else None for k in w if k != ref}
    return out


def threshold_width_study(sample: StudySample, settings: StudySettings) -> dict[str, Any]:
    """The turn-on of ``settings.width_path``'s cut on full-JEC HLT jets against the same cut
    on each lower level at the threshold that matches its p50 (module docstring)."""
    from hltemu.study.emulator_input import FULL, RAW

    path = settings.width_path
    out: dict[str, Any] = {"path": path, "status": "ok", "reason": None}
    cut: PathCut | None = sample.cuts.get(path)
    if cut is None:
        out.update(status="not done", reason=f"{path!r} is not a single-jet path of the run's "
                   f"menu (its single-jet paths: {', '.join(sample.cuts) or 'none'})")
        return out
    if FULL not in sample.levels or RAW not in sample.levels:
        out.update(status="not done", reason="needs the HLT jets raw and fully corrected "
                                             "(corrected_jets of stage jec)")
        return out
    eta = cut.eta_max if settings.width_eta is None else settings.width_eta
    lead_off = ranked(sample.offline, np.abs(sample.offline.eta) <= eta, 1)[:, 0]
    has = lead_off >= 0
    x = sample.offline.pt[lead_off[has]]
    leads = {k: leading_pt(j, cut.eta_max)[has] for k, j in sample.levels.items()}
    out.update(threshold=cut.pt_min, eta_max=cut.eta_max, offline_eta_max=eta,
               n_events=int(has.sum()), events_without_offline_jet=int((~has).sum()),
               x=f"leading offline jet pT, |eta| <= {eta:g}",
               tolerance=settings.p50_tolerance, step=settings.threshold_step)
    passed_full = leads[FULL] >= cut.pt_min
    if path in sample.paths:
        bit = sample.paths[path][has]
        out["bit_check"] = {"path_bit": "trigger_pre", "events": int(bit.size),
                            "agree": int(np.sum(bit == passed_full))}
    fit_full = fit_turn_on(x, passed_full, min_rising=settings.min_rising)
    sel = {FULL: _selection(FULL, x, passed_full, fit_full, cut.pt_min,
                            f"leading {FULL}-JEC HLT jet, |eta| <= {cut.eta_max:g}, pT >= "
                            f"{cut.pt_min:g} GeV")}
    out["selections"] = sel
    if fit_full["status"] != "ok":
        out.update(status="no fit", reason=f"corrected selection: {fit_full['status']}: "
                                           f"{fit_full['reason']}")
        return out
    target = fit_full["p50"]
    passes = {FULL: passed_full}
    for name in sample.levels:
        if name == FULL:
            continue
        # start where the median jet of the corrected turn-on's rising edge would be cut
        near = (x > target - 10) & (x < target + 10) & (leads[FULL] > 0)
        ratio = float(np.median(leads[name][near] / leads[FULL][near])) if near.any() else 1.0
        ratio = ratio if math.isfinite(ratio) and ratio > 0 else 1.0
        m = match_threshold(x, leads[name], target, cut.pt_min * ratio,
                            settings.threshold_step, settings.min_rising)
        if m["threshold"] is None:
            sel[name] = {"level": name, "threshold": None, "status": "not matched",
                         "reason": m["reason"], "scan": m["scan"]}
            continue
        passed = leads[name] >= m["threshold"]
        passes[name] = passed
        s = _selection(name, x, passed, m["fit"], m["threshold"],
                       f"leading {name} HLT jet, |eta| <= {cut.eta_max:g}, pT >= "
                       f"{m['threshold']:g} GeV")
        s["p50_difference"] = m["p50"] - target
        s["matched"] = bool(abs(m["p50"] - target) <= settings.p50_tolerance)
        s["scan"] = m["scan"]
        if s["status"] == "ok" and s["width"] is not None and fit_full["width"] is not None:
            s["width_ratio"] = s["width"] / fit_full["width"]
        sel[name] = s
    if settings.bootstrap:
        out["bootstrap"] = _bootstrap(x, passes, settings.bootstrap, settings.min_rising)
    return out
