"""Matching jets in (eta, phi) and the robust statistics of jet response studies.

:func:`match_jets` pairs two jet collections event by event, closest pairs first (Delta R in
rapidity-azimuth, azimuth wrapped), each jet at most once: reco to truth jets, jets of an event
to those of its pileup-0 partner, HLT to offline jets.  :func:`weighted_quantile` and
:func:`median_with_error` give the medians and widths with which responses are measured
(``hltemu derive-jec`` and its closure).  NumPy only (CSR offsets from :mod:`hltemu.batch`).
"""

from __future__ import annotations

import math

import numpy as np

from hltemu.batch import counts_to_offsets


def delta_phi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` wrapped into ``[-pi, pi)`` (rad)."""
    return (np.asarray(a) - np.asarray(b) + np.pi) % (2 * np.pi) - np.pi


def match_jets(ev_a: np.ndarray, eta_a: np.ndarray, phi_a: np.ndarray,
               ev_b: np.ndarray, eta_b: np.ndarray, phi_b: np.ndarray,
               max_dr: float, n_events: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one Delta R matching of jets ``a`` to jets ``b`` in the same event.

    ``ev_a``/``ev_b`` are event rows, non-decreasing; pairs with Delta R < ``max_dr`` are taken
    closest first, each jet at most once.  Returns the indices ``(ia, ib)`` of the matched
    pairs, sorted by ``ia``.
    """
    ev_a, ev_b = np.asarray(ev_a, dtype=np.int64), np.asarray(ev_b, dtype=np.int64)
    if ev_a.size == 0 or ev_b.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if np.any(np.diff(ev_a) < 0) or np.any(np.diff(ev_b) < 0):
        raise ValueError("match_jets: event rows must be sorted")
    n = int(n_events if n_events is not None else max(ev_a.max(), ev_b.max()) + 1)
    ca, cb = np.bincount(ev_a, minlength=n), np.bincount(ev_b, minlength=n)
    oa, ob = counts_to_offsets(ca), counts_to_offsets(cb)
    npair = ca * cb
    pair_ev = np.repeat(np.arange(n), npair)
    k = np.arange(int(npair.sum())) - np.repeat(counts_to_offsets(npair)[:-1], npair)
    ia = oa[pair_ev] + k // np.maximum(cb[pair_ev], 1)
    ib = ob[pair_ev] + k % np.maximum(cb[pair_ev], 1)
    dr2 = (np.asarray(eta_a)[ia] - np.asarray(eta_b)[ib]) ** 2 + \
        delta_phi(np.asarray(phi_a)[ia], np.asarray(phi_b)[ib]) ** 2
    close = dr2 < max_dr * max_dr
    ia, ib, dr2 = ia[close], ib[close], dr2[close]
    order = np.lexsort((ib, ia, dr2))  # closest first; ties in a fixed order
    used_a = np.zeros(ev_a.size, dtype=bool)
    used_b = np.zeros(ev_b.size, dtype=bool)
    keep = []
    for p in order.tolist():
        a, b = ia[p], ib[p]
        if not used_a[a] and not used_b[b]:
            used_a[a] = used_b[b] = True
            keep.append(p)
    keep_idx = np.asarray(keep, dtype=np.int64)
    ra, rb = ia[keep_idx], ib[keep_idx]
    s = np.argsort(ra, kind="stable")
    return ra[s], rb[s]



def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float | np.ndarray
                      ) -> np.ndarray:
    """Quantile(s) ``q`` of ``values`` with ``weights`` (midpoint interpolation of the
    cumulative weight; equal weights give numpy's ``'hazen'`` quantile)."""
    v, w = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cw = np.cumsum(w) - 0.5 * w
    return np.interp(np.asarray(q) * w.sum(), cw, v)


def median_with_error(values: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """Weighted median, its statistical error, the half 16-84% width and the effective number
    of entries ``(sum w)^2 / sum w^2``.  Error: ``1.2533 * width / sqrt(n_eff)`` (the
    asymptotic error of a median of a Gaussian core)."""
    w = np.asarray(weights, dtype=np.float64)
    n_eff = float(w.sum() ** 2 / np.sum(w * w)) if w.size else 0.0
    q16, q50, q84 = weighted_quantile(values, w, np.array([0.16, 0.5, 0.84]))
    width = 0.5 * (q84 - q16)
    return {"median": float(q50), "error": float(1.2533 * width / math.sqrt(max(n_eff, 1.0))),
            "width": float(width), "n": int(w.size), "n_eff": n_eff}
