"""The fits of the online-offline study: the Gaussian core of a response distribution and the
error-function turn-on of a trigger efficiency (by maximum likelihood, with errors from the
inverse Hessian of the negative log-likelihood, computed numerically at the minimum).

* :func:`gaussian_core_fit`: an iterative fit of the core of a distribution (a jet response
  HLT pT / offline pT, dimensionless) within +-``window`` sigma around its peak, by truncated
  moments (see there why not by likelihood);
* :func:`fit_turn_on`: ``eps(pT) = plateau * 1/2 (1 + erf((pT - mu) / (sqrt(2) sigma)))`` fitted
  to per-event pass/fail decisions (unbinned binomial likelihood), with the pT where the
  efficiency reaches 50, 95 and 99 % (of 1, not of the plateau) and their errors;
* :func:`efficiency_at`: a fitted turn-on's efficiency at a given pT with its error, from the
  fit's covariance;
* :func:`clopper_pearson`: exact binomial intervals of binned efficiencies (for the figures).

A fit is reported with a ``status``: ``"ok"`` or why there are no numbers (``"too few
events"``, ``"not converged"``, ``"no events"``); every number is ``None`` unless the status is
``"ok"``.  NumPy and SciPy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: Fractions of full efficiency (of 1, not of the plateau) whose pT a turn-on fit reports.
TURN_ON_FRACTIONS: tuple[float, ...] = (0.50, 0.95, 0.99)

#: A fitted plateau this close to 1 is fixed at 1 and the fit repeated with mu and sigma only
#: (the likelihood's maximum lies on the boundary, where the Hessian is not an error matrix).
PLATEAU_AT_ONE = 1e-4


# -- numerical derivatives ---------------------------------------------------------------------
def numerical_hessian(f: Callable[[np.ndarray], float], x: np.ndarray, steps: np.ndarray
                      ) -> np.ndarray:
    """Central-difference Hessian of ``f`` at ``x`` with per-parameter ``steps``."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    h = np.asarray(steps, dtype=np.float64)
    hess = np.empty((n, n))
    f0 = f(x)
    for i in range(n):
        ei = np.zeros(n)
        ei[i] = h[i]
        hess[i, i] = (f(x + ei) - 2 * f0 + f(x - ei)) / h[i] ** 2
        for j in range(i + 1, n):
            ej = np.zeros(n)
            ej[j] = h[j]
            hess[i, j] = hess[j, i] = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej)
                                       + f(x - ei - ej)) / (4 * h[i] * h[j])
    return hess


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, steps: np.ndarray
                       ) -> np.ndarray:
    """Central-difference gradient of ``f`` at ``x`` with per-parameter ``steps``."""
    x = np.asarray(x, dtype=np.float64)
    g = np.empty(x.size)
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = steps[i]
        g[i] = (f(x + e) - f(x - e)) / (2 * steps[i])
    return g


def _covariance(hess: np.ndarray) -> np.ndarray | None:
    """The inverse of a positive-definite Hessian, else ``None``."""
    if not np.all(np.isfinite(hess)):
        return None
    sym = 0.5 * (hess + hess.T)
    if np.min(np.linalg.eigvalsh(sym)) <= 0:
        return None
    return np.linalg.inv(sym)


# -- Gaussian core -----------------------------------------------------------------------------
def truncation_factor(window: float) -> float:
    """The standard deviation of a unit Gaussian truncated to ``+-window``:
    ``sqrt(1 - 2 window phi(window) / (2 Phi(window) - 1))`` (0.7427 for 1.5)."""
    phi = math.exp(-0.5 * window * window) / math.sqrt(2 * math.pi)
    inside = math.erf(window / math.sqrt(2.0))
    return math.sqrt(1.0 - 2.0 * window * phi / inside)


def _core_slopes(window: float) -> tuple[float, float]:
    """Per kept entry, minus the derivatives of the estimating equations of the mean and of
    sigma (unit Gaussian, window +-k, the window's edges moving with the estimates):
    ``1 - 2 k phi(k) / P`` and ``2 c^2 - 2 k phi(k) (k^2 - c^2) / P``, with
    ``P = 2 Phi(k) - 1`` and ``c`` the :func:`truncation_factor`."""
    k = window
    phi = math.exp(-0.5 * k * k) / math.sqrt(2 * math.pi)
    inside = math.erf(k / math.sqrt(2.0))
    c2 = truncation_factor(k) ** 2
    return 1.0 - 2 * k * phi / inside, 2 * c2 - 2 * k * phi * (k * k - c2) / inside


def gaussian_core_fit(values: Sequence[float] | np.ndarray, window: float = 1.5,
                      min_entries: int = 10, max_iterations: int = 100) -> dict[str, Any]:
    """Fit the Gaussian core of ``values`` (e.g. jet responses, dimensionless).

    Method (an iterative truncated-moment fit): start from the median and the half 16-84 %
    width; then repeat: keep the values within ``mean +- window * sigma``, take their mean as
    the new mean and their RMS divided by :func:`truncation_factor` (the RMS a Gaussian keeps
    inside +-``window`` sigma) as the new sigma; stop when the values kept no longer change
    (the estimates depend on them alone).  This is the maximum-likelihood-free form of the
    usual iterative +-1.5 sigma Gaussian fit: for Gaussian data it is unbiased at any sample
    size, and unlike a truncated-Gaussian likelihood fit (whose sigma runs off for a few tens
    of entries in so narrow a window) it always settles.  When the kept values alternate
    between a few sets, the mean and sigma are averaged over that cycle.  Tails outside the
    window do not enter.

    Errors: those of an M-estimator (the window moves with the estimates, which makes them
    larger than the plain errors of a mean and an RMS: 1.45 sigma / sqrt(n) for the mean of a
    Gaussian with k = 1.5, not 0.80): ``sqrt(mean(psi^2) / n_core) / |mean(dpsi)|`` per
    parameter, ``psi`` the estimating function (``z`` for the mean, ``z^2 - c^2`` for sigma,
    ``z = (x - mean) / sigma`` over the kept values, ``c`` the truncation factor), its
    numerator from the kept values and its slope, edge terms included, from the Gaussian
    model (:func:`_core_slopes`).

    Returns ``{"status", "mean", "mean_error", "sigma", "sigma_error", "n_core",
    "iterations"}``; status ``"ok"``, ``"too few events"`` (fewer than ``min_entries`` values
    in the window) or ``"not converged"``, with the numbers ``None`` unless ``"ok"``.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    out: dict[str, Any] = {"status": "ok", "mean": None, "mean_error": None, "sigma": None,
                           "sigma_error": None, "n_core": 0, "iterations": 0}
    if x.size < min_entries:
        out.update(status="too few events", n_core=int(x.size))
        return out
    factor = truncation_factor(window)
    slope_mu, slope_sigma = _core_slopes(window)
    q16, mu, q84 = np.quantile(x, [0.16, 0.5, 0.84])
    sigma = 0.5 * (q84 - q16)
    seen: dict[tuple[int, int], int] = {}
    fits: list[tuple[float, float, float, float, int]] = []
    for it in range(1, max_iterations + 1):
        out["iterations"] = it
        key = (int(np.searchsorted(x, mu - window * sigma, side="left")),
               int(np.searchsorted(x, mu + window * sigma, side="right")))
        if key in seen:  # the same values as before: a fixed point, or a cycle
            cycle = fits[seen[key]:]
            out.update(mean=float(np.mean([f[0] for f in cycle])),
                       mean_error=max(f[1] for f in cycle),
                       sigma=float(np.mean([f[2] for f in cycle])),
                       sigma_error=max(f[3] for f in cycle),
                       n_core=int(round(np.mean([f[4] for f in cycle]))))
            return out
        core = x[key[0]:key[1]]
        if core.size < min_entries:
            out.update(status="too few events", n_core=int(core.size))
            return out
        mu = float(core.mean())
        rms = float(core.std())
        if rms <= 0:  # every kept value equal: no width to measure
            out.update(status="not converged", n_core=int(core.size))
            return out
        sigma = rms / factor
        z2 = ((core - mu) / sigma) ** 2
        n = core.size
        seen[key] = len(fits)
        fits.append((mu, sigma * math.sqrt(z2.mean() / n) / slope_mu, sigma,
                     sigma * math.sqrt(np.mean((z2 - factor ** 2) ** 2) / n) / slope_sigma,
                     int(n)))
    out["status"] = "not converged"
    return out


# -- turn-on -----------------------------------------------------------------------------------
def erf_turn_on(pt: np.ndarray | float, mu: float, sigma: float, plateau: float = 1.0
                ) -> np.ndarray:
    """``plateau * 1/2 (1 + erf((pt - mu) / (sqrt(2) sigma)))``; ``pt``, ``mu``, ``sigma`` in
    GeV."""
    from scipy.special import erf

    return plateau * 0.5 * (1.0 + erf((np.asarray(pt, dtype=np.float64) - mu)
                                      / (math.sqrt(2.0) * sigma)))


def turn_on_point(fraction: float, mu: float, sigma: float, plateau: float) -> float | None:
    """The pT (GeV) where :func:`erf_turn_on` reaches ``fraction`` (of 1, not of the
    plateau); ``None`` when the plateau does not reach it."""
    from scipy.special import erfinv

    if not 0.0 < fraction < plateau:
        return None
    return float(mu + math.sqrt(2.0) * sigma * erfinv(2.0 * fraction / plateau - 1.0))


def _binomial_nll(eps: np.ndarray, k: np.ndarray) -> float:
    p = np.clip(eps, 1e-12, 1.0 - 1e-12)
    return float(-np.sum(np.where(k, np.log(p), np.log1p(-p))))


def _start(x: np.ndarray, k: np.ndarray) -> tuple[float, float, float]:
    """Starting (mu, sigma, plateau): the best of a coarse grid over the data's range."""
    top = x >= np.quantile(x, 0.8)
    plateau = float(min(max(k[top].mean(), 0.05), 1.0 - 1e-3))
    span = float(x.max() - x.min()) or 1.0
    best = (math.inf, float(np.median(x)), 0.1 * span)
    for mu in np.quantile(x, np.linspace(0.02, 0.98, 25)):
        for frac in (0.01, 0.03, 0.1, 0.3):
            nll = _binomial_nll(erf_turn_on(x, mu, frac * span, plateau), k)
            if nll < best[0]:
                best = (nll, float(mu), frac * span)
    return best[1], best[2], plateau


def _minimise(f: Callable[[np.ndarray], float], x0: np.ndarray,
              bounds: list[tuple[float, float]]) -> Any:
    """L-BFGS-B from ``x0``; when its line search ends abnormally (finite-difference gradients
    of a flat likelihood near its minimum), restarted once from where it stopped, then
    polished by Nelder-Mead within the same bounds (measured on hltemu's QCD samples: one
    rate-matched HLT_CaloJet80 turn-on of 7,000 events needed it)."""
    from scipy.optimize import minimize

    res = minimize(f, x0, method="L-BFGS-B", bounds=bounds)
    if res.success:
        return res
    again = minimize(f, res.x, method="L-BFGS-B", bounds=bounds)
    if again.success:
        return again
    return minimize(f, again.x if again.fun <= res.fun else res.x, method="Nelder-Mead",
                    bounds=bounds, options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000})


def fit_turn_on(pt: Sequence[float] | np.ndarray, passed: Sequence[bool] | np.ndarray,
                min_rising: int = 20) -> dict[str, Any]:
    """Fit ``eps(pT) = plateau * 1/2 (1 + erf((pT - mu) / (sqrt(2) sigma)))`` to per-event
    decisions ``passed`` at ``pt`` (GeV) by unbinned binomial maximum likelihood.

    mu, sigma and the plateau (bounded to (0, 1]) are fitted with L-BFGS-B from the best point
    of a coarse grid (:func:`_minimise`); a plateau within :data:`PLATEAU_AT_ONE` of 1 is fixed
    at 1 and the fit repeated with mu and sigma.  The covariance is the inverse numerical
    Hessian of the negative log-likelihood over the free parameters (``covariance``: over (mu,
    sigma) or (mu, sigma, plateau), GeV and dimensionless, as nested lists;
    :func:`efficiency_at` reads it); the errors of p50, p95, p99 (:func:`turn_on_point`) and of
    the width p95 - p50 are propagated through it with numerical gradients.

    ``n_rising`` counts the events within mu +- 2 sigma (where the efficiency rises from 2 % to
    98 % of its plateau: the events that measure mu and sigma).  Status: ``"no events"``,
    ``"too few events"`` (``n_rising < min_rising``, or no event failing or none passing),
    ``"not converged"`` (the minimiser failed, sigma ran to its lower bound: a step that the
    data cannot resolve, or no positive-definite Hessian), else ``"ok"``.  Every fitted number
    is ``None`` unless ``"ok"``; ``p95``/``p99`` are ``None`` with a note when the plateau is
    below 0.95/0.99.
    """
    x = np.asarray(pt, dtype=np.float64)
    k = np.asarray(passed, dtype=bool)
    out: dict[str, Any] = {"status": "ok", "reason": None, "n_events": int(x.size),
                           "n_pass": int(k.sum()), "n_rising": 0}
    for key in ("mu", "sigma", "plateau", "p50", "p95", "p99", "width"):
        out[key] = None
        out[f"{key}_error"] = None
    out["plateau_fixed"] = False
    out["covariance"] = None
    if x.size == 0:
        out.update(status="no events", reason="no events")
        return out
    if k.all() or not k.any():
        out.update(status="too few events",
                   reason=f"all {x.size} events {'pass' if k.all() else 'fail'}: no turn-on")
        return out
    span = float(x.max() - x.min())
    sigma_min = 1e-3 * max(span, 1.0)
    mu0, sigma0, plateau0 = _start(x, k)

    def nll3(t: np.ndarray) -> float:
        return _binomial_nll(erf_turn_on(x, t[0], t[1], t[2]), k)

    def nll2(t: np.ndarray) -> float:
        return _binomial_nll(erf_turn_on(x, t[0], t[1], 1.0), k)

    bounds = [(float(x.min()), float(x.max())), (sigma_min, max(span, 2 * sigma_min))]
    res = _minimise(nll3, np.array([mu0, sigma0, plateau0]), [*bounds, (1e-3, 1.0)])
    theta = np.asarray(res.x, dtype=np.float64)
    fixed = theta[2] >= 1.0 - PLATEAU_AT_ONE
    if fixed:
        res = _minimise(nll2, theta[:2], bounds)
        theta = np.append(np.asarray(res.x, dtype=np.float64), 1.0)
    mu, sigma, plateau = (float(v) for v in theta)
    out["n_rising"] = int(np.sum(np.abs(x - mu) < 2.0 * sigma))
    if not res.success:
        out.update(status="not converged", reason=f"minimiser: {res.message}")
        return out
    if sigma <= 1.01 * sigma_min:
        out.update(status="not converged",
                   reason="sigma at its lower bound: no event in the rising part resolves it")
        return out
    if out["n_rising"] < min_rising:
        out.update(status="too few events",
                   reason=f"{out['n_rising']} events within mu +- 2 sigma (< {min_rising})")
        return out
    free = theta[:2] if fixed else theta
    steps = np.array([1e-3 * max(sigma, 1e-3), 1e-3 * max(sigma, 1e-3),
                      min(1e-3, 0.5 * (1.0 - plateau))])[:free.size]
    cov = _covariance(numerical_hessian(nll2 if fixed else nll3, free, steps))
    if cov is None:
        out.update(status="not converged", reason="the Hessian is not positive definite")
        return out
    err = np.sqrt(np.diag(cov))
    out.update(mu=mu, mu_error=float(err[0]), sigma=sigma, sigma_error=float(err[1]),
               plateau=plateau, plateau_error=None if fixed else float(err[2]),
               plateau_fixed=bool(fixed), covariance=cov.tolist())

    def full(t: np.ndarray) -> tuple[float, float, float]:
        return (float(t[0]), float(t[1]), 1.0 if fixed else float(t[2]))

    def propagated(g: Callable[[np.ndarray], float]) -> float:
        grad = numerical_gradient(g, free, steps)
        return float(math.sqrt(max(grad @ cov @ grad, 0.0)))

    points = {}
    for f in TURN_ON_FRACTIONS:
        name = f"p{round(100 * f)}"
        value = turn_on_point(f, mu, sigma, plateau)
        points[name] = value
        if value is None:
            out[f"{name}_note"] = f"n/a: plateau {plateau:.3f} < {f:g}"
            continue
        out[name] = value
        out[f"{name}_error"] = propagated(
            lambda t, f=f: turn_on_point(f, *full(t)) or math.nan)
    if points["p50"] is not None and points["p95"] is not None:
        out["width"] = points["p95"] - points["p50"]
        out["width_error"] = propagated(
            lambda t: (turn_on_point(0.95, *full(t)) or math.nan)
            - (turn_on_point(0.50, *full(t)) or math.nan))
    return out


def efficiency_at(fit: dict[str, Any], pt: float) -> dict[str, Any]:
    """The efficiency of a :func:`fit_turn_on` result at ``pt`` (GeV) with its error,
    propagated linearly through the fit's covariance with the analytic gradient of
    :func:`erf_turn_on`, ``z = (pt - mu) / sigma``: ``d/dmu = -plateau phi(z) / sigma``,
    ``d/dsigma = -plateau z phi(z) / sigma``, ``d/dplateau = Phi(z)`` (no plateau term when the
    fit fixed it at 1).

    Returns ``{"pt", "efficiency", "efficiency_error"}``, the numbers ``None`` unless the fit's
    status is ``"ok"``."""
    out: dict[str, Any] = {"pt": float(pt), "efficiency": None, "efficiency_error": None}
    if fit.get("status") != "ok" or fit.get("covariance") is None:
        return out
    mu, sigma, plateau = fit["mu"], fit["sigma"], fit["plateau"]
    z = (pt - mu) / sigma
    phi = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    cdf = 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
    cov = np.asarray(fit["covariance"], dtype=np.float64)
    grad = np.array([-plateau * phi / sigma, -plateau * z * phi / sigma, cdf])[:cov.shape[0]]
    out.update(efficiency=plateau * cdf,
               efficiency_error=float(math.sqrt(max(grad @ cov @ grad, 0.0))))
    return out


def clopper_pearson(passed: np.ndarray, total: np.ndarray, cl: float = 0.6827
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper-Pearson) central interval ``(low, high)`` of ``passed / total`` at
    confidence ``cl`` (1 sigma by default); bins with ``total == 0`` give NaN."""
    from scipy.stats import beta

    k = np.asarray(passed, dtype=np.float64)
    n = np.asarray(total, dtype=np.float64)
    alpha = 1.0 - cl
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, beta.ppf(alpha / 2, k, n - k + 1), 0.0)
        hi = np.where(k < n, beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    empty = n == 0
    return np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)
