"""The calorimeter's response to single charged pions, E/p: the table and its evaluation.

A particle-flow algorithm links a track (a charged particle of momentum ``p``) to the
calorimeter topoclusters it points at and subtracts the track's *expected deposit* from their
energy; it needs, for this calorimeter, the mean response ``E / p`` of single charged pions
and its spread as a function of ``p`` and ``|eta|``.  NumPy only (no Numba, no generator): the
derivation, with the particle gun of :mod:`hltemu.simulate.particle_gun` and the real
``topocluster`` stage, is ``examples/derive_pion_response.py``.

What ``E`` is (the shipped table; each table's provenance says how it was made): single pi+
and pi- from the nominal interaction point, electronic noise and no pileup, clustered by
stage ``topocluster`` (``pileup_mu = 0``); ``E`` is the sum of the energies of the clusters of
positive energy whose (eta, phi) lie within ``Delta R < 0.2`` of the pion's *impact point* on
the ECAL front (where the track extrapolation lands, helix in the solenoid:
:func:`hltemu.simulate.calorimeter.impact`), 0 when there is none.  Only pions that reach the
calorimeter are in the table (soft ones curl up in the tracker), and ``|eta|`` is the impact
point's (the detector eta of the track extrapolated to the calorimeter), not the direction at
the vertex.  Pions with ``E = 0`` are counted in the statistics (``mean``, ``median``,
``sigma``, ``rms``), since an algorithm subtracting the expected deposit meets them too, and
their fraction is ``zero_fraction``.

Table (``.npz``, :func:`save_table` / :func:`load_table`): ``p_edges`` (float64, GeV,
``n_p + 1`` increasing edges > 0) and ``abs_eta_edges`` (float64, ``n_eta + 1`` increasing edges
>= 0); per bin, ``(n_p, n_eta)`` arrays: ``n`` (int64 pions, >= 1 in every bin), ``mean``,
``median``, ``sigma`` (half the 16-84% width), ``rms`` (about the mean) of ``E / p``, and
``zero_fraction`` (pions with ``E = 0``: below the clustering thresholds or outside the cone);
``provenance`` (a JSON string: seed, pions, the cone, the command, seconds).  A table is given
as ``builtin:NAME`` (shipped in ``hltemu/models``: ``builtin:pion_response.npz``) or a path.

The shipped table (36,000 pions, seed 3001, ``hltemu/models/pion_response.json``): above about
30 GeV the clusters hold the whole deposit and ``E / p`` follows the calorimeter's hadron
response ``1 - (1 - h/e) (E / E0)^(m - 1)`` (h/e 0.45: 0.72 at 50 GeV, 0.80 at 400 GeV) in every
|eta| bin; below, the 4-2-0 thresholds cut the soft pions' showers (spread over a 3 x 3 cell
window, below the 4 sigma seed): 97-99% of pions of 1-1.7 GeV leave no cluster, half of those of
5-8 GeV at |eta| < 1.3, and in 2.5 < |eta| < 3 (more noise, showers spread over more cells in
eta-phi as the impact radius shrinks) 71% of those of 8-13 GeV.  Where more than 84% of a
bin's pions leave no cluster ``sigma`` is 0 (``rms`` is not: :data:`SPREADS`).

Evaluation (:meth:`PionResponseTable.expected_deposit`, :func:`expected_deposit`): the mean and
sigma of the response, linear in ``log p`` between the bins' centres (``sqrt(p_lo p_hi)``,
where the tabulated value holds exactly) and constant beyond the first and last centre; in
``|eta|`` the value of the bin holding it (``|eta|`` beyond the last edge: the last bin);
times ``p``.  Array operations only, on NumPy or CuPy arrays (``xp``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hltemu.config import BUILTIN_PREFIX, shipped_file

#: The shipped table.
DEFAULT_TABLE = f"{BUILTIN_PREFIX}pion_response.npz"

#: Per-bin statistics of a table, ``(n_p, n_eta)`` float64 arrays: name -> meaning.
STATISTICS: dict[str, str] = {
    "mean": "mean of E/p",
    "median": "median of E/p",
    "sigma": "half the 16-84% width of E/p",
    "rms": "RMS of E/p about its mean",
    "zero_fraction": "fraction of pions with E = 0",
}

#: Statistics :meth:`PionResponseTable.expected_deposit` can give as the spread: ``sigma`` (the
#: default, robust against tails) is 0 where more than 84% of the pions leave no cluster (low
#: momenta); ``rms`` is not.
SPREADS: tuple[str, ...] = ("sigma", "rms")

#: Arrays of a table file: name -> (dtype kind, meaning).
TABLE_ARRAYS: dict[str, tuple[str, str]] = {
    "p_edges": ("f", "momentum bin edges (GeV), increasing, > 0"),
    "abs_eta_edges": ("f", "|eta| bin edges at the calorimeter front, increasing, >= 0"),
    "n": ("i", "pions per bin (n_p, n_eta), >= 1"),
    **{name: ("f", f"{doc} per bin (n_p, n_eta)") for name, doc in STATISTICS.items()},
    "provenance": ("U", "JSON: how the table was made"),
}


class PionResponseError(ValueError):
    """A pion-response table that cannot be read, or statistics that cannot make one."""


@dataclass(frozen=True)
class PionResponseTable:
    """Single charged-pion response ``E / p`` per bin of ``p`` and ``|eta|`` (module docstring).

    ``p_edges`` (GeV, ``(n_p + 1,)``), ``abs_eta_edges`` (``(n_eta + 1,)``); ``n`` (int64) and the
    :data:`STATISTICS` (float64), each ``(n_p, n_eta)``; ``provenance``: dict.
    """

    p_edges: np.ndarray
    abs_eta_edges: np.ndarray
    n: np.ndarray
    mean: np.ndarray
    median: np.ndarray
    sigma: np.ndarray
    rms: np.ndarray
    zero_fraction: np.ndarray
    provenance: dict
    #: The evaluation's arrays per array module (uploaded once per module).
    _on: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def p_centres(self) -> np.ndarray:
        """Geometric centre of each momentum bin, ``sqrt(p_lo p_hi)`` (GeV)."""
        return np.sqrt(self.p_edges[:-1] * self.p_edges[1:])

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_p, n_eta)``."""
        return (self.p_edges.shape[0] - 1, self.abs_eta_edges.shape[0] - 1)

    def _arrays(self, xp: Any, spread: str) -> tuple[Any, Any, Any, Any]:
        if spread not in SPREADS:
            raise PionResponseError(f"spread must be one of {list(SPREADS)}, got {spread!r}")
        key = (getattr(xp, "__name__", str(id(xp))), spread)
        if key not in self._on:
            self._on[key] = (xp.asarray(np.log(self.p_centres)), xp.asarray(self.abs_eta_edges),
                             xp.asarray(self.mean), xp.asarray(getattr(self, spread)))
        return self._on[key]

    def response(self, p: Any, eta: Any, xp: Any = np, spread: str = "sigma"
                 ) -> tuple[Any, Any]:
        """Mean and spread (``sigma``, or ``rms``: :data:`SPREADS`) of ``E / p`` at momenta
        ``p`` (GeV) and pseudorapidities ``eta`` (arrays of one shape, or scalars) on array
        module ``xp`` (NumPy or CuPy): linear in ``log p`` between the bins' centres, clamped at
        the first and last; the ``|eta|`` bin's value (clamped into the table's range)."""
        log_c, eta_edges, mean, sigma = self._arrays(xp, spread)
        n_p, n_eta = self.shape
        x = xp.log(xp.asarray(p, dtype=xp.float64))
        j = xp.clip(xp.searchsorted(eta_edges, xp.abs(xp.asarray(eta, dtype=xp.float64)),
                                    side="right") - 1, 0, n_eta - 1)
        if n_p == 1:
            return mean[0, j], sigma[0, j]
        hi = xp.clip(xp.searchsorted(log_c, x, side="right"), 1, n_p - 1)
        lo = hi - 1
        t = xp.clip((x - log_c[lo]) / (log_c[hi] - log_c[lo]), 0.0, 1.0)
        return (mean[lo, j] + t * (mean[hi, j] - mean[lo, j]),
                sigma[lo, j] + t * (sigma[hi, j] - sigma[lo, j]))

    def expected_deposit(self, p: Any, eta: Any, xp: Any = np, spread: str = "sigma"
                         ) -> tuple[Any, Any]:
        """Expected calorimeter deposit of charged pions of momentum ``p`` (GeV) at ``eta``:
        ``(mean, sigma)`` in GeV, :meth:`response` times ``p``."""
        p = xp.asarray(p, dtype=xp.float64)
        mean, sigma = self.response(p, eta, xp, spread)
        return mean * p, sigma * p


# -- building a table ---------------------------------------------------------------------------
def bin_statistics(p: np.ndarray, abs_eta: np.ndarray, energy: np.ndarray,
                   p_edges: np.ndarray, abs_eta_edges: np.ndarray,
                   provenance: dict | None = None) -> PionResponseTable:
    """The table of pions of momentum ``p`` (GeV) at impact ``abs_eta`` whose clusters hold
    ``energy`` (GeV; 0 for none), in the bins ``p_edges`` x ``abs_eta_edges`` (pions outside
    them are left out).  :class:`PionResponseError` names an empty bin."""
    p, abs_eta, energy = (np.asarray(a, dtype=np.float64) for a in (p, abs_eta, energy))
    p_edges = np.asarray(p_edges, dtype=np.float64)
    abs_eta_edges = np.asarray(abs_eta_edges, dtype=np.float64)
    _check_edges(p_edges, "p_edges", "bin_statistics", minimum=0.0, strict=True)
    _check_edges(abs_eta_edges, "abs_eta_edges", "bin_statistics", minimum=0.0, strict=False)
    shape = (p_edges.shape[0] - 1, abs_eta_edges.shape[0] - 1)
    ip = np.searchsorted(p_edges, p, side="right") - 1
    ie = np.searchsorted(abs_eta_edges, abs_eta, side="right") - 1
    inside = (ip >= 0) & (ip < shape[0]) & (ie >= 0) & (ie < shape[1])
    response = energy / p
    n = np.zeros(shape, np.int64)
    stats = {name: np.zeros(shape) for name in STATISTICS}
    for a in range(shape[0]):
        for b in range(shape[1]):
            r = response[inside & (ip == a) & (ie == b)]
            if r.shape[0] == 0:
                raise PionResponseError(
                    f"bin_statistics: no pion in the bin p {p_edges[a]:g}-{p_edges[a + 1]:g} "
                    f"GeV, |eta| {abs_eta_edges[b]:g}-{abs_eta_edges[b + 1]:g}")
            q16, q50, q84 = np.quantile(r, (0.16, 0.5, 0.84))
            n[a, b] = r.shape[0]
            stats["mean"][a, b] = r.mean()
            stats["median"][a, b] = q50
            stats["sigma"][a, b] = 0.5 * (q84 - q16)
            stats["rms"][a, b] = r.std()
            stats["zero_fraction"][a, b] = np.mean(energy[inside & (ip == a) & (ie == b)] == 0)
    return PionResponseTable(p_edges, abs_eta_edges, n, provenance=dict(provenance or {}),
                             **stats)


def log_edges(p_min: float, p_max: float, n_bins: int) -> np.ndarray:
    """``n_bins`` bins of equal width in ``log p`` from ``p_min`` to ``p_max`` (GeV): the edges."""
    return np.geomspace(p_min, p_max, n_bins + 1)


def summary(table: PionResponseTable) -> str:
    """The table as text: per bin, pions, mean, median and sigma of E/p, zero fraction."""
    lines = [f"{'p (GeV)':>13}  {'|eta|':>9}  {'n':>5}  {'mean':>6}  {'median':>6}  "
             f"{'sigma':>6}  {'rms':>6}  {'E=0':>6}"]
    pe, ee = table.p_edges, table.abs_eta_edges
    for a in range(table.shape[0]):
        for b in range(table.shape[1]):
            lines.append(
                f"{pe[a]:6.2f}-{pe[a + 1]:6.2f}  {ee[b]:4.2f}-{ee[b + 1]:4.2f}  "
                f"{table.n[a, b]:5d}  {table.mean[a, b]:6.3f}  {table.median[a, b]:6.3f}  "
                f"{table.sigma[a, b]:6.3f}  {table.rms[a, b]:6.3f}  "
                f"{table.zero_fraction[a, b]:6.3f}")
    return "\n".join(lines)


# -- files --------------------------------------------------------------------------------------
def table_path(spec: str | Path) -> Path:
    """The file of a table given as ``builtin:NAME`` (in ``hltemu/models``) or a path;
    :class:`PionResponseError` naming the shipped tables for an unknown ``builtin:`` name."""
    return shipped_file(spec, "models", "pion-response table", (".npz",), PionResponseError)


def save_table(path: str | Path, table: PionResponseTable) -> None:
    """Write ``table`` as an ``.npz`` file (compressed)."""
    np.savez_compressed(
        path, p_edges=table.p_edges, abs_eta_edges=table.abs_eta_edges,
        n=np.asarray(table.n, dtype=np.int64),
        **{name: np.asarray(getattr(table, name), dtype=np.float64) for name in STATISTICS},
        provenance=np.asarray(json.dumps(table.provenance, sort_keys=True)))


def _check_edges(edges: np.ndarray, name: str, where: str, minimum: float, strict: bool
                 ) -> None:
    """Edges: 1-D, at least 2, finite, increasing, ``> minimum`` (``strict``) or ``>=``."""
    if edges.ndim != 1 or edges.shape[0] < 2:
        raise PionResponseError(f"{where}: array {name!r} must hold at least 2 bin edges "
                                f"(1-D), got shape {edges.shape}")
    low_ok = edges > minimum if strict else edges >= minimum
    if not np.all(np.isfinite(edges) & low_ok) or not np.all(np.diff(edges) > 0):
        raise PionResponseError(
            f"{where}: array {name!r} must be finite, increasing and "
            f"{'>' if strict else '>='} {minimum:g}, got {edges.tolist()}")


def load_table(spec: str | Path) -> PionResponseTable:
    """Read a table (``builtin:NAME`` or a path to an ``.npz``), fully checked.

    :class:`PionResponseError` naming the file for a missing or unreadable file, a missing
    array, a wrong dtype or shape, edges that are not increasing, an empty bin, or statistics
    that are not finite (``sigma``, ``rms`` >= 0, ``zero_fraction`` in [0, 1]).
    """
    path = table_path(spec)
    where = f"pion-response table {path}"
    if not path.is_file():
        raise PionResponseError(f"pion-response table {str(spec)!r}: no such file {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # zipfile/pickle/value errors of a corrupt file
        raise PionResponseError(f"{where}: cannot read it as .npz ({exc})") from None
    missing = [k for k in TABLE_ARRAYS if k not in arrays]
    if missing:
        raise PionResponseError(f"{where}: missing array(s) {missing}; has {sorted(arrays)}")
    for name, (kind, _) in TABLE_ARRAYS.items():
        if arrays[name].dtype.kind not in (kind, "u" if kind == "i" else kind):
            raise PionResponseError(f"{where}: array {name!r} has dtype {arrays[name].dtype}, "
                                    f"expected kind {kind!r}")
    p_edges = arrays["p_edges"].astype(np.float64)
    eta_edges = arrays["abs_eta_edges"].astype(np.float64)
    _check_edges(p_edges, "p_edges", where, minimum=0.0, strict=True)
    _check_edges(eta_edges, "abs_eta_edges", where, minimum=0.0, strict=False)
    shape = (p_edges.shape[0] - 1, eta_edges.shape[0] - 1)
    n = arrays["n"].astype(np.int64)
    if n.shape != shape:
        raise PionResponseError(f"{where}: array 'n' has shape {n.shape}, expected {shape} "
                                "(p bins, |eta| bins)")
    if np.any(n < 1):
        a, b = np.argwhere(n < 1)[0]
        raise PionResponseError(f"{where}: array 'n' is {n[a, b]} in bin ({a}, {b}); every "
                                "bin needs pions")
    values = {}
    for name in STATISTICS:
        v = arrays[name].astype(np.float64)
        if v.shape != shape:
            raise PionResponseError(f"{where}: array {name!r} has shape {v.shape}, expected "
                                    f"{shape} (p bins, |eta| bins)")
        ok = np.isfinite(v)
        rule = "finite"
        if name in ("sigma", "rms"):
            ok &= v >= 0
            rule = "finite and >= 0"
        elif name == "zero_fraction":
            ok &= (v >= 0) & (v <= 1)
            rule = "in [0, 1]"
        if not np.all(ok):
            a, b = np.argwhere(~ok)[0]
            raise PionResponseError(f"{where}: array {name!r} has the value {v[a, b]} in bin "
                                    f"({a}, {b}); values must be {rule}")
        values[name] = v
    try:
        provenance = json.loads(str(arrays["provenance"]))
    except ValueError as exc:
        raise PionResponseError(f"{where}: provenance is not JSON ({exc})") from None
    if not isinstance(provenance, dict):
        raise PionResponseError(f"{where}: provenance must be a JSON object, got "
                                f"{type(provenance).__name__}")
    return PionResponseTable(p_edges, eta_edges, n, provenance=provenance, **values)


@functools.lru_cache(maxsize=4)
def _cached_table(spec: str) -> PionResponseTable:
    return load_table(spec)


def expected_deposit(p: Any, eta: Any, table: str | PionResponseTable = DEFAULT_TABLE,
                     xp: Any = np, spread: str = "sigma") -> tuple[Any, Any]:
    """Expected calorimeter deposit ``(mean, sigma)`` (GeV) of charged pions of momentum ``p``
    (GeV) at ``eta`` (:meth:`PionResponseTable.expected_deposit`); ``table`` is a table or a
    file (``builtin:NAME`` or a path, read once); ``xp`` the array module of ``p`` and ``eta``;
    ``spread`` the statistic returned as sigma (:data:`SPREADS`)."""
    if not isinstance(table, PionResponseTable):
        table = _cached_table(str(table))
    return table.expected_deposit(p, eta, xp, spread)
