"""What the HLT's jet calibrations do to a single-jet trigger's turn-on, on hltemu output
(:func:`threshold_width_study`).

The question: does cutting on corrected HLT jets give a sharper turn-on, in offline pT, than
cutting on raw HLT jets, or on jets calibrated another way?  Selections are emulated from the
HLT jets of each event (no path bit needed, every event counts, no prescale):

* *full* (the path's own): the leading full-JEC HLT jet with |eta| <= the path's ``eta_max``
  has pT >= the path's ``pt_min`` (hltemu's stage ``trigger`` on that path, e.g. HLT_CaloJet80;
  checked against the path's ``trigger_pre`` bit where the file has it);
* every other HLT jet flavour, *raw*, each intermediate JEC level (e.g. L1FastJet alone) and,
  where the files have them, the *regressed* jets of stage ``jet_regression``: the leading jet
  of that flavour, same |eta| cut, has pT >= ``T``, with ``T`` chosen twice, on a grid of
  ``StudySettings.threshold_step`` GeV:

  - *equal p50* (``selections``): the offline p50 of its turn-on equals the full one's: a
    bisection over thresholds, then the grid point nearest in p50 (:func:`match_threshold`);
    "matched" when within ``StudySettings.p50_tolerance`` GeV;
  - *equal rate* (``rate_matched``): its accept rate equals the full one's, the grid point
    nearest in rate (:func:`match_rate`; the rate falls with ``T``, in steps at each event's
    leading pT, so a run of grid points can share the nearest rate: then the one nearest the
    equal-p50 threshold, so that the two matchings differ only where the rates say so).  The
    rate is the sum of the generator weights of the accepted events over every event of the
    files (an offline jet is not needed to fire a trigger), normalised per file to its
    cross-section (:func:`hltemu.study.emulator_input.rate_weights`): the samples are
    generated with a pT-hat bias, so unweighted counts would give the spectrum's low end, which
    dominates the rate, far too little say.

Each turn-on is measured against the leading offline jet's pT among the offline jets with
|eta| <= ``StudySettings.width_eta``, by default the path's own ``eta_max`` (events without such
a jet are left out), and fitted with :func:`hltemu.study.fits.fit_turn_on` per event,
*unweighted*: within an offline pT bin the efficiency is a property of the HLT, not of how
often such events are produced, and weights spanning decades would only cut the effective
number of events (the pT-hat bias changes how many events each bin holds, which the
unbinned fit allows for).  Reported per selection: p50, p95 (errors from the fit's
covariance), the width p95 - p50, and the efficiency at ``StudySettings.efficiency_at``
(default the path's threshold + :data:`EFFICIENCY_OFFSET` GeV) with its error
(:func:`hltemu.study.fits.efficiency_at`), beside its rate relative to the full one's.

The acceptance is the path's, not the reference method's |eta| < 2.5 (``turn_on_eta``), on
purpose: with the offline jets cut tighter than the HLT ones, events whose leading HLT jet lies
between the two cuts pass at any offline pT (about 1 to 3 % of the events below the threshold
in QCD), a pedestal the erf model has no term for, which the fit absorbs into a sigma nearly
twice the rising edge's (measured on hltemu's QCD samples: width 30 GeV instead of 17 at
HLT_CaloJet80).  Every selection is made on the same events, so their widths' fit errors are
correlated; ``StudySettings.bootstrap`` resamples the events (thresholds fixed) for the error
of each width's difference from the full one's, in both matchings.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hltemu.study.fits import efficiency_at, fit_turn_on
from hltemu.study.online_offline import (
    PathCut,
    StudySample,
    StudySettings,
    efficiency_points,
    leading_pt,
    ranked,
    turn_on_edges,
)

#: Default offline pT (GeV) of the reported efficiency: this far above the path's threshold
#: (90 GeV for HLT_CaloJet80), on the rising edge where the flavours' turn-ons differ most.
EFFICIENCY_OFFSET = 10.0

#: Prefix of the rate-matched selections' keys inside the bootstrap.
_RATE = "rate:"


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


def _sorted_tail(lead: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``lead`` sorted (stably) and, per position ``k``, the summed weight of the events from
    ``k`` on (one more entry, 0, at the end)."""
    order = np.argsort(lead, kind="stable")
    tail = np.append(np.cumsum(weight[order][::-1])[::-1], 0.0)
    return lead[order], tail


def accept_rates(lead: np.ndarray, weight: np.ndarray, thresholds: np.ndarray | float
                 ) -> np.ndarray:
    """The accept rate of ``lead >= T`` (summed ``weight`` of the events passing) at each
    threshold ``T`` (GeV).  Sums are taken in one fixed order, so a flavour that is a
    monotone function of another gives bit-identical rates at corresponding thresholds."""
    ordered, tail = _sorted_tail(lead, weight)
    return tail[np.searchsorted(ordered, np.asarray(thresholds, dtype=np.float64), side="left")]


def match_rate(lead: np.ndarray, weight: np.ndarray, target: float, step: float,
               prefer: float | None = None) -> dict[str, Any]:
    """The threshold ``T`` (a positive multiple of ``step``, GeV) whose selection
    ``lead >= T`` has the accept rate (summed ``weight`` of the events passing) nearest
    ``target``.

    The rate falls with ``T`` in steps (at each event's ``lead``): where a run of grid points
    shares the nearest rate (no event between them), the one nearest ``prefer`` (GeV), else
    the middle one.  Returns ``{"threshold", "rate", "threshold_range", "reason"}``
    (``threshold_range``: the first and last grid points of that run), or ``threshold``
    ``None`` and a ``reason`` when no threshold accepts an event."""
    top = float(lead.max()) if lead.size else 0.0
    grid = np.arange(1, int(math.floor(top / step)) + 2) * step
    rates = accept_rates(lead, weight, grid)
    if not target > 0 or not np.any(rates > 0):
        return {"threshold": None, "rate": None, "threshold_range": None,
                "reason": f"no accepted event to match (target rate {target:.4g})"}
    diff = np.abs(rates - target)
    tied = np.flatnonzero(diff == diff.min())  # one rate, or two equally near (one each side)
    if prefer is None:
        run = tied[rates[tied] == rates[tied[0]]]
        i = int(run[run.size // 2])
    else:
        i = int(tied[np.argmin(np.abs(grid[tied] - prefer))])
        run = tied[rates[tied] == rates[i]]
    return {"threshold": float(grid[i]), "rate": float(rates[i]),
            "threshold_range": [float(grid[run[0]]), float(grid[run[-1]])], "reason": None}


def _selection(name: str, x: np.ndarray, passed: np.ndarray, fit: dict[str, Any],
               threshold: float, description: str, pt_eff: float) -> dict[str, Any]:
    eff = efficiency_at(fit, pt_eff)
    return {"level": name, "threshold": threshold, "selection": description, **fit,
            "efficiency": eff["efficiency"], "efficiency_error": eff["efficiency_error"],
            "points": efficiency_points(x, passed, turn_on_edges(threshold))}


def _rate(lead_all: np.ndarray, weight: np.ndarray, threshold: float, full_rate: float
          ) -> dict[str, Any]:
    """A selection's accept rate (over every event), its error (sqrt of the summed squared
    weights) and its ratio to the full selection's."""
    passed = lead_all >= threshold
    rate = float(accept_rates(lead_all, weight, threshold))
    return {"rate": rate, "rate_error": float(math.sqrt(np.sum(weight[passed] ** 2))),
            "rate_ratio": rate / full_rate if full_rate > 0 else None,
            "n_accepted": int(passed.sum())}


def _compare(s: dict[str, Any], fit_full: dict[str, Any], target: float) -> None:
    """Add a selection's p50 difference and width ratio to the full selection's."""
    s["p50_difference"] = s["p50"] - target if s["p50"] is not None else None
    if s["status"] == "ok" and s["width"] is not None and fit_full["width"] is not None:
        s["width_ratio"] = s["width"] / fit_full["width"]


def _bootstrap(x: np.ndarray, passes: dict[str, np.ndarray], n: int, min_rising: int,
               seed: int = 12345) -> dict[str, Any]:
    """Widths p95 - p50 of each selection on ``n`` resamples of the events (the same events
    for every selection in a resample): their spread and that of each width's difference from
    the first selection's (the full one)."""
    rng = np.random.default_rng(seed)
    widths: dict[str, list[float]] = {k: [] for k in passes}
    for _ in range(n):
        idx = rng.integers(0, x.size, x.size)
        for k, passed in passes.items():
            fit = fit_turn_on(x[idx], passed[idx], min_rising=min_rising)
            widths[k].append(fit["width"] if fit["status"] == "ok" and fit["width"] is not None
                             else math.nan)
    w = {k: np.asarray(v) for k, v in widths.items()}
    ok = np.all([np.isfinite(v) for v in w.values()], axis=0)
    out: dict[str, Any] = {"resamples": n, "used": int(ok.sum()), "seed": seed,
                           "width_sd": {k: float(np.std(v[ok], ddof=1)) if ok.sum() > 1
                                        else None for k, v in w.items()}}
    ref = next(iter(w))
    out["difference_sd"] = {k: float(np.std(w[k][ok] - w[ref][ok], ddof=1))
                            if ok.sum() > 1 else None for k in w if k != ref}
    return out


def _split_bootstrap(b: dict[str, Any]) -> dict[str, Any]:
    """The bootstrap's rate-matched entries (keys :data:`_RATE` + level) under ``rate_``
    keys of their own."""
    for key in ("width_sd", "difference_sd"):
        d = b[key]
        b[key] = {k: v for k, v in d.items() if not k.startswith(_RATE)}
        b[f"rate_{key}"] = {k[len(_RATE):]: v for k, v in d.items() if k.startswith(_RATE)}
    return b


def threshold_width_study(sample: StudySample, settings: StudySettings) -> dict[str, Any]:
    """The turn-on of ``settings.width_path``'s cut on full-JEC HLT jets against the same cut
    on each other HLT jet flavour at the thresholds that match its p50 and its accept rate
    (module docstring)."""
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
    pt_eff = (cut.pt_min + EFFICIENCY_OFFSET if settings.efficiency_at is None
              else settings.efficiency_at)
    lead_off = ranked(sample.offline, np.abs(sample.offline.eta) <= eta, 1)[:, 0]
    has = lead_off >= 0
    x = sample.offline.pt[lead_off[has]]
    leads_all = {k: leading_pt(j, cut.eta_max) for k, j in sample.levels.items()}
    leads = {k: v[has] for k, v in leads_all.items()}
    weight = (np.ones(sample.n_events) if sample.weight is None
              else np.asarray(sample.weight, dtype=np.float64))
    weights = sample.info.get("weights") or {"normalisation": "none", "unit": "events",
                                             "rule": "every event weighs 1"}
    full_rate = float(accept_rates(leads_all[FULL], weight, cut.pt_min))
    out.update(threshold=cut.pt_min, eta_max=cut.eta_max, offline_eta_max=eta,
               n_events=int(has.sum()), events_without_offline_jet=int((~has).sum()),
               x=f"leading offline jet pT, |eta| <= {eta:g}",
               tolerance=settings.p50_tolerance, step=settings.threshold_step,
               efficiency_at=pt_eff,
               rate={"events": int(sample.n_events), "target": full_rate, **weights})
    passed_full = leads[FULL] >= cut.pt_min
    if path in sample.paths:
        bit = sample.paths[path][has]
        out["bit_check"] = {"path_bit": "trigger_pre", "events": int(bit.size),
                            "agree": int(np.sum(bit == passed_full))}
    fit_full = fit_turn_on(x, passed_full, min_rising=settings.min_rising)
    full = _selection(FULL, x, passed_full, fit_full, cut.pt_min,
                      f"leading {FULL}-JEC HLT jet, |eta| <= {cut.eta_max:g}, pT >= "
                      f"{cut.pt_min:g} GeV", pt_eff)
    full.update(_rate(leads_all[FULL], weight, cut.pt_min, full_rate))
    sel = {FULL: full}
    out["selections"] = sel
    out["rate_matched"] = {}
    if fit_full["status"] != "ok":
        out.update(status="no fit", reason=f"corrected selection: {fit_full['status']}: "
                                           f"{fit_full['reason']}")
        return out
    target = fit_full["p50"]
    passes = {FULL: passed_full}
    for name in sample.levels:
        if name == FULL:
            continue
        describe = (f"leading {name} HLT jet, |eta| <= {cut.eta_max:g}, pT >= {{:g}} GeV"
                    ).format
        # start where the median jet of the corrected turn-on's rising edge would be cut
        near = (x > target - 10) & (x < target + 10) & (leads[FULL] > 0)
        ratio = float(np.median(leads[name][near] / leads[FULL][near])) if near.any() else 1.0
        ratio = ratio if math.isfinite(ratio) and ratio > 0 else 1.0
        m = match_threshold(x, leads[name], target, cut.pt_min * ratio,
                            settings.threshold_step, settings.min_rising)
        if m["threshold"] is None:
            sel[name] = {"level": name, "threshold": None, "status": "not matched",
                         "reason": m["reason"], "scan": m["scan"]}
        else:
            passed = leads[name] >= m["threshold"]
            passes[name] = passed
            s = _selection(name, x, passed, m["fit"], m["threshold"],
                           describe(m["threshold"]), pt_eff)
            s.update(_rate(leads_all[name], weight, m["threshold"], full_rate))
            _compare(s, fit_full, target)
            s["matched"] = bool(abs(m["p50"] - target) <= settings.p50_tolerance)
            s["scan"] = m["scan"]
            sel[name] = s
        r = match_rate(leads_all[name], weight, full_rate, settings.threshold_step,
                       prefer=m["threshold"])
        if r["threshold"] is None:
            out["rate_matched"][name] = {"level": name, "threshold": None,
                                         "status": "not matched", "reason": r["reason"]}
            continue
        passed = leads[name] >= r["threshold"]
        fit = fit_turn_on(x, passed, min_rising=settings.min_rising)
        s = _selection(name, x, passed, fit, r["threshold"], describe(r["threshold"]), pt_eff)
        s.update(_rate(leads_all[name], weight, r["threshold"], full_rate),
                 threshold_range=r["threshold_range"])
        _compare(s, fit_full, target)
        if s["status"] == "ok":
            passes[_RATE + name] = passed
        out["rate_matched"][name] = s
    if settings.bootstrap:
        out["bootstrap"] = _split_bootstrap(
            _bootstrap(x, passes, settings.bootstrap, settings.min_rising))
    return out
