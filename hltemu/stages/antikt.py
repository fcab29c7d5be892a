"""Stage ``antikt``: anti-kT jets identical to FastJet's (the clustering that
:mod:`hltemu.stages.genjets` also uses).

The algorithm (Cacciari, Salam, Soyez 2008) with FastJet's definitions, in float64: inputs are
4-vectors ``(px, py, pz, E)`` [GeV]; rapidity and azimuth [rad] as FastJet's ``PseudoJet``
computes them (``E == |pz|`` with ``pT == 0`` gives rapidity ``+-(1e5 + |pz|)``, a tachyonic
mass counts as 0, and ``E + |pz| == 0``, e.g. ``(0, 0, -3, -3)`` GeV, divides by zero as
IEEE-754 does: a NaN rapidity for ``pT == 0``, an infinite one for ``pT > 0``; such an input is
at no finite distance from anything and becomes a jet on its own, as in FastJet); ``d_ij =
min(pT_i^-2, pT_j^-2) dR_ij^2 / R^2`` with ``dR^2 = dphi^2 + drap^2``, ``d_iB = pT_i^-2``; the
smallest is merged (E-scheme: 4-vectors added) or, for a beam distance, becomes an inclusive
jet.  Inputs with a NaN or infinite component are refused (:func:`check_vectors`).  Jets with
``pT >= pt_min`` are kept (FastJet's ``inclusive_jets(pt_min)`` tests ``pT^2 >= pt_min^2``; we
do too).

Exact agreement with FastJet: the merge sequence is decided with FastJet's own arithmetic
(unnormalised ``diJ = dR^2 * min(1/kt2)``, beam ``R^2 / kt2``, its phi folding and rapidity)
and ties between equal distances are broken as FastJet's ``N2Plain`` strategy breaks them (see
:mod:`hltemu.kernels.antikt` for the rule), on every backend.  For inputs without exact ties
every FastJet strategy gives the same jets and constituents; for exact ties (duplicated or
mirror-symmetric inputs) FastJet's strategies differ among themselves, and we match
``N2Plain`` (``tests/test_antikt.py`` checks both).

Backends
--------
``reference`` (:func:`cluster_reference`) is FastJet's ``N2Plain`` written out with NumPy: an
array of slots, each jet's nearest neighbour, one step at a time.  ``cpu`` is a Numba kernel
with lazy tiles, reverse nearest-neighbour lists and a tournament tree, parallel over events
(on one core 0.37-0.67 of the time of FastJet's C++ at N = 100-5000 particles,
``benchmarks/RESULTS.md``).  ``cuda`` runs one event per block with parallel minimum
reductions.  The merge sequence is identical on all
three: the arithmetic that decides it is exactly rounded on the GPU too (libdevice ``dmul_rn``
etc., :mod:`hltemu.kernels.ieee`; no FMA, ``tests/test_ptx.py``); CUDA's ``log``/``atan2`` may
still differ from the C library's in the last bit, which can only matter for two distances
equal to ~1e-16 relative.  Measured on an NVIDIA H200 (2026-11-28, the sample tiled to 100
events, ``benchmarks/device_scale.py``): identical constituents, jet counts and
``n_constituents``; cuda vs cpu ``pt``/``eta``/``phi`` within 5.2e-16 relative, ``px``..``E``
within 3.4e-15 (the cluster 4-vectors are computed by CuPy, whose ``cos``/``sinh`` may round
differently), ``mass`` within 3.9e-8 of ``E`` (``sqrt(E^2 - p^2)`` cancels for light jets).
Tolerances stated with a 10x margin: 5e-14 relative, ``mass`` 4e-7 ``E``.  (That measurement
predates FastJet's ``eta`` and ``mass`` formulas below, which replaced ``asinh(pz / pt)`` and
``pt^2`` in place of ``kt2``: ``mass`` of jets with identical 4-vectors is now identical;
``eta`` goes through ``theta = pi + atan(pt / pz)`` for ``pz < 0``, where a last-bit
difference of ``atan`` can move ``theta`` by one ulp of pi and ``eta`` by ``4.4e-16 /
sin(theta)``: 3e-14 absolute (6e-15 relative) at ``eta = -5``, 2.4e-13 (3.5e-14) at ``-7``;
not yet measured on a GPU.)

Stage ``antikt``
----------------
Needs ``clusters`` (columns ``energy`` [GeV], ``eta``, ``phi`` [rad]).  Clusters are massless:
``pT = E / cosh(eta)``, ``px = pT cos(phi)``, ``py = pT sin(phi)``, ``pz = pT sinh(eta)``, so
their rapidity is their eta up to rounding.  Clusters with ``energy <= 0`` (noise
fluctuations) are not clustered, as ATLAS does.  Adds:

* ``jets``: per event sorted by pT descending, ties by the smallest cluster row (within the
  event) among the constituents; columns below;
* ``cluster_jet``: one row per cluster (the offsets of ``clusters``), column ``jet``: the row
  of its jet within the event's ``jets``, -1 for a cluster not clustered (``energy <= 0``) or
  in a jet below ``pt_min``.

Jet columns
-----------
================ ====== ==============================================================
pt               GeV    ``sqrt(kt2)``, ``kt2 = px^2 + py^2`` [GeV^2]
eta              \\-     FastJet's ``eta()``: ``-log(tan(theta / 2))``, ``theta = atan(pt /
                        pz)`` [rad] moved to [0, pi]; ``+1e5`` when ``px == py == 0``
                        (either sign of pz), 0 when ``pz == 0``, ``+inf`` when ``kt2``
                        underflows to 0 (either sign of pz)
phi              rad    ``atan2(py, px)`` in [-pi, pi]; 0 when ``kt2 == 0`` (FastJet)
mass             GeV    FastJet's ``m()``: ``m2 = (E + pz)(E - pz) - kt2`` [GeV^2],
                        ``sqrt(m2)``, ``-sqrt(-m2)`` when ``m2 < 0`` (``-0.0`` for
                        ``m2 = -0.0``, as FastJet)
px, py, pz, E    GeV    E-scheme sum of the constituents
area             \\-     ``pi R^2``: the nominal anti-kT area (see below)
n_constituents   \\-     inputs in the jet (int64)
================ ====== ==============================================================

``eta`` and ``mass`` are FastJet's formulas, operation for operation, so they equal FastJet's
values where NumPy's (CuPy's) ``atan``, ``tan``, ``log`` and ``sqrt`` round as the C library
does (``sqrt`` always; the others to within a last bit).  FastJet's eta is not ``asinh(pz /
pt)``: it saturates near -37.3 for ``pz < 0`` and ``pt / |pz| < 1e-16``, and its rounding
near ``eta = 0`` is ~1e-16 absolute.

Area: jets carry the nominal area ``pi R^2``.  Anti-kT jets are cones of radius R around hard
jets (their FastJet active area is ``pi R^2`` within a few percent above ~20 GeV); soft jets
and jets overlapping a harder one have smaller active areas, which this estimate ignores.  It
is deterministic, costs nothing, and is what L1FastJet's ``rho * area`` needs for jets in the
JEC range.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from hltemu.backends import Backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError, param
from hltemu.kernels.antikt import MAX_RAP, dist, momentum_factor, rap_phi
from hltemu.pipeline import PipelineError, Stage, dispatch, register
from hltemu.xpsafe import any_true, bincount, event_index, item


@dataclass(frozen=True)
class AntiKtConfig:
    """Stage ``antikt``: anti-kT jets of calorimeter clusters (E-scheme), identical to FastJet.

    Jets carry the nominal area ``pi R^2`` (see :mod:`hltemu.stages.antikt`).
    """

    R: float = param(0.4, "", "jet radius in the rapidity-azimuth plane")
    pt_min: float = param(5.0, "GeV", "jets with pT below this are dropped (pT^2 >= pt_min^2 "
                          "kept, as FastJet's inclusive_jets)")

    def __post_init__(self) -> None:
        check_jet_settings("antikt", self.R, self.pt_min)


def check_jet_settings(stage: str, radius: float, pt_min: float) -> None:
    """:class:`ConfigError` naming ``[stage]`` unless ``radius`` is finite and > 0 and
    ``pt_min`` [GeV] finite and >= 0 (the settings of ``antikt`` and ``genjets``)."""
    _check_radius(radius, stage)
    if not (pt_min >= 0 and math.isfinite(pt_min)):
        raise ConfigError(f"[{stage}] pt_min must be >= 0 GeV, got {pt_min}")


#: Columns of the ``jets`` and ``genjets`` collections.
JET_COLUMNS: tuple[str, ...] = ("pt", "eta", "phi", "mass", "px", "py", "pz", "E", "area",
                                "n_constituents")
#: Cluster columns stage ``antikt`` reads.
CLUSTER_COLUMNS: tuple[str, ...] = ("energy", "eta", "phi")
class Clustering(NamedTuple):
    """Raw result for a batch, before the pT cut and sorting.

    ``jet_of``: per input, its inclusive jet within the event (0-based, FastJet history order).
    ``px, py, pz, E, first``: per inclusive jet, at rows ``offsets[e] + k`` of the input
    offsets (``k < n_jets[e]``); ``first`` is the jet's smallest input index in the event.
    """

    jet_of: Any
    px: Any
    py: Any
    pz: Any
    E: Any
    first: Any
    n_jets: Any


# ------------------------------------------------------------------------------------------
# Reference: FastJet's N2Plain, one step at a time, written for reading
# ------------------------------------------------------------------------------------------
def cluster_reference_event(px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray,
                            radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Anti-kT of one event (float64 arrays of n inputs [GeV]).

    Returns ``jet_of`` (n,), each input's inclusive jet in the order the jets are made, and
    ``jets`` (n_jets, 5): px, py, pz, E [GeV] and the smallest input index of each jet.
    """
    n = px.shape[0]
    r2 = radius * radius
    # jets by id: inputs 0..n-1, then one id per merge
    mom = [(float(px[i]), float(py[i]), float(pz[i]), float(e[i])) for i in range(n)]
    first = list(range(n))
    parent = [-1] * n
    # slots, as FastJet's BriefJet array: id, rapidity, azimuth, momentum factor, NN slot
    # (-1: the beam) and NN distance
    ids = np.arange(n)
    rap = np.empty(n)
    phi = np.empty(n)
    kf = np.empty(n)
    for i in range(n):
        rap[i], phi[i] = rap_phi(*mom[i])
        kf[i] = momentum_factor(mom[i][0], mom[i][1])
    nn = np.full(n, -1)
    nnd = np.full(n, r2)

    def distances(i: int, m: int) -> np.ndarray:
        """dR^2 from slot i to slots 0..m-1 (slot i itself: infinity).  A NaN distance (a NaN
        rapidity, or two jets at the same infinite rapidity) is below nothing in FastJet's
        comparisons: it reads as infinity here, so that ``argmin`` does not pick it."""
        with np.errstate(invalid="ignore"):  # inf - inf: NaN, on purpose
            dphi = np.abs(phi[:m] - phi[i])
            dphi = np.where(dphi > math.pi, 2.0 * math.pi - dphi, dphi)
            drap = rap[:m] - rap[i]
            d = dphi * dphi + drap * drap
        d[np.isnan(d)] = np.inf
        d[i] = np.inf
        return d

    def search(i: int, m: int) -> None:
        """NN of slot i: the first slot at the smallest distance, if below R^2."""
        d = distances(i, m)
        j = int(np.argmin(d)) if m > 1 else i
        if m > 1 and d[j] < r2:
            nn[i], nnd[i] = j, d[j]
        else:
            nn[i], nnd[i] = -1, r2

    for i in range(n):
        search(i, n)
    jets: list[tuple[float, float, float, float, int]] = []
    final: dict[int, int] = {}
    m = n
    while m > 0:
        kmin = np.where(nn[:m] >= 0, np.minimum(kf[:m], kf[np.maximum(nn[:m], 0)]), kf[:m])
        dij = nnd[:m] * kmin
        sa = int(np.argmin(dij))  # the first slot with the smallest diJ
        sb = int(nn[sa])
        tail = m - 1
        if sb >= 0:  # merge: the new jet goes to the smaller slot
            if sa < sb:
                sa, sb = sb, sa
            a, b = int(ids[sa]), int(ids[sb])
            c = len(mom)
            mom.append(tuple(u + v for u, v in zip(mom[a], mom[b], strict=True)))
            first.append(min(first[a], first[b]))
            parent[a] = parent[b] = c
            parent.append(-1)
            ids[sb] = c
            rap[sb], phi[sb] = rap_phi(*mom[c])
            kf[sb] = momentum_factor(mom[c][0], mom[c][1])
        else:  # beam: an inclusive jet
            a = int(ids[sa])
            final[a] = len(jets)
            jets.append((*mom[a], first[a]))
        # the last slot's jet moves into slot sa
        for arr in (ids, rap, phi, kf, nn, nnd):
            arr[sa] = arr[tail]
        m -= 1
        # jets whose NN was removed search again; the others follow the last slot's move
        lost = (nn[:m] == sa) | ((nn[:m] == sb) if sb >= 0 else False)
        if sb >= 0:
            lost[sb] = False
        nn[:m] = np.where(nn[:m] == tail, sa, nn[:m])
        for i in np.flatnonzero(lost):
            search(int(i), m)
        if sb >= 0:
            # the new jet: every other jet takes it if strictly closer than its NN
            nn[sb], nnd[sb] = -1, r2
            d = distances(sb, m)
            closer = d < nnd[:m]
            nn[:m] = np.where(closer, sb, nn[:m])
            nnd[:m] = np.where(closer, d, nnd[:m])
            search(sb, m)
    jet_of = np.empty(n, dtype=np.int64)
    for i in range(n):
        j = i
        while parent[j] >= 0:
            j = parent[j]
        jet_of[i] = final[j]
    return jet_of, np.array(jets, dtype=np.float64).reshape(-1, 5)


# Keep the scalar distance importable beside the reference (tests use it).
pair_distance = dist


def cluster_reference(px: Any, py: Any, pz: Any, e: Any, offsets: Any, radius: float,
                      backend: Backend) -> Clustering:
    """Inclusive anti-kT jets of every event with :func:`cluster_reference_event` (NumPy)."""
    n = int(px.shape[0])
    n_events = int(offsets.shape[0]) - 1
    jet_of = np.empty(n, dtype=np.int64)
    cols = np.zeros((n, 5), dtype=np.float64)
    n_jets = np.zeros(n_events, dtype=np.int64)
    for ev in range(n_events):
        lo, hi = int(offsets[ev]), int(offsets[ev + 1])
        jet_of[lo:hi], jets = cluster_reference_event(px[lo:hi], py[lo:hi], pz[lo:hi],
                                                      e[lo:hi], radius)
        cols[lo:lo + jets.shape[0]] = jets
        n_jets[ev] = jets.shape[0]
    return Clustering(jet_of, cols[:, 0].copy(), cols[:, 1].copy(), cols[:, 2].copy(),
                      cols[:, 3].copy(), cols[:, 4].astype(np.int64), n_jets)


def _outputs(n: int, n_events: int, xp: Any) -> tuple[Any, list[Any], Any, Any]:
    """The kernels' output arrays: ``jet_of`` (-1), jet px, py, pz, E, ``first``, ``n_jets``."""
    return (xp.full(n, -1, dtype=xp.int64), [xp.zeros(n, dtype=xp.float64) for _ in range(4)],
            xp.zeros(n, dtype=xp.int64), xp.zeros(n_events, dtype=xp.int64))


def cluster_cpu(px: Any, py: Any, pz: Any, e: Any, offsets: Any, radius: float,
                backend: Backend) -> Clustering:
    """The same with the tiled Numba kernel, parallel over events."""
    from hltemu.kernels.antikt_cpu import antikt_cpu

    n, n_events = int(px.shape[0]), int(offsets.shape[0]) - 1
    jet_of, out, first, n_jets = _outputs(n, n_events, np)
    antikt_cpu(px, py, pz, e, offsets, float(radius), jet_of, *out, first, n_jets)
    return Clustering(jet_of, *out, first, n_jets)


def cluster_cuda(px: Any, py: Any, pz: Any, e: Any, offsets: Any, radius: float,
                 backend: Backend) -> Clustering:
    """The same with the CUDA kernel, one event per block."""
    from hltemu.kernels.antikt_cuda import CUDA_THREADS, antikt_cuda

    xp = backend.xp
    n, n_events = int(px.shape[0]), int(offsets.shape[0]) - 1
    jet_of, out, first, n_jets = _outputs(n, n_events, xp)
    if n_events and n:
        f64 = [xp.empty(n, dtype=xp.float64) for _ in range(6)]
        i64 = [xp.empty(n, dtype=xp.int64) for _ in range(2)]
        h64 = [xp.empty(2 * n, dtype=xp.float64) for _ in range(4)]
        hi64 = [xp.empty(2 * n, dtype=xp.int64) for _ in range(3)]
        antikt_cuda[n_events, CUDA_THREADS](px, py, pz, e, offsets, float(radius), jet_of,
                                            *out, first, n_jets, *f64, *i64, *h64, *hi64)
    return Clustering(jet_of, *out, first, n_jets)


#: The clustering of each backend (the rest of the stage is the same code on all three).
CLUSTERERS: dict[str, Any] = {"reference": cluster_reference, "cpu": cluster_cpu,
                              "cuda": cluster_cuda}


# ------------------------------------------------------------------------------------------
# From raw clustering to the jets collection (NumPy or CuPy, the same code on every backend)
# ------------------------------------------------------------------------------------------
def fastjet_eta(px: Any, py: Any, pz: Any, pt: Any, xp: Any) -> Any:
    """FastJet's pseudorapidity (``PseudoJet::eta()``, dimensionless) of jets with momenta
    ``px, py, pz`` and ``pt = sqrt(px^2 + py^2)`` [GeV]: ``MAX_RAP`` (+1e5, either sign of pz)
    when ``px == py == 0``, 0 when ``pz == 0``, else ``-log(tan(theta / 2))`` with ``theta =
    atan(pt / pz)`` [rad], plus pi when negative (``+inf`` when ``theta`` is 0 or -0, i.e.
    ``pt`` underflows to 0)."""
    on_axis = (px == 0) & (py == 0)
    transverse = pz == 0
    theta = xp.arctan(pt / xp.where(transverse, 1.0, pz))
    theta = xp.where(theta < 0, theta + math.pi, theta)
    t = xp.tan(theta / 2)
    eta = xp.where(t > 0, -xp.log(xp.where(t > 0, t, 1.0)), math.inf)  # -log(+-0) = +inf
    return xp.where(on_axis, MAX_RAP, xp.where(transverse, 0.0, eta))


def fastjet_mass(pz: Any, e: Any, kt2: Any, xp: Any) -> Any:
    """FastJet's ``PseudoJet::m()`` [GeV] of jets with ``pz``, ``E`` [GeV] and ``kt2 = px^2 +
    py^2`` [GeV^2]: ``m2 = (E + pz)(E - pz) - kt2``, ``sqrt(m2)``, or ``-sqrt(-m2)`` when
    ``m2 < 0`` (``sqrt(-0.0) = -0.0`` as in C++)."""
    m2 = (e + pz) * (e - pz) - kt2
    root = xp.sqrt(xp.where(m2 < 0, -m2, m2))
    return xp.where(m2 < 0, -root, root)


def make_jets(raw: Clustering, offsets: Any, radius: float, pt_min: float,
              xp: Any) -> tuple[Collection, Any]:
    """The ``jets`` collection (pT cut, sorted) and each input's jet row within its event."""
    n_events = int(offsets.shape[0]) - 1
    n = int(raw.px.shape[0])
    ev = event_index(offsets, n, xp)
    local = xp.arange(n, dtype=xp.int64) - offsets[:-1][ev] if n else xp.zeros(0, xp.int64)
    kt2 = raw.px * raw.px + raw.py * raw.py
    keep = (local < raw.n_jets[ev]) & (kt2 >= pt_min * pt_min)
    rows = xp.flatnonzero(keep)
    pt = xp.sqrt(kt2[rows])
    order = xp.lexsort(xp.stack([raw.first[rows], -pt, ev[rows]])) if rows.shape[0] else rows
    rows = rows[order]
    jev = ev[rows]
    counts = bincount(jev, n_events, xp)
    jets_off = xp.zeros(n_events + 1, dtype=xp.int64)
    xp.cumsum(counts, out=jets_off[1:])
    # capacity row of an inclusive jet -> its row within the event's sorted jets, or -1
    new_row = xp.full(n, -1, dtype=xp.int64)
    new_row[rows] = xp.arange(rows.shape[0], dtype=xp.int64) - jets_off[:-1][jev]
    jet_row = new_row[offsets[:-1][ev] + raw.jet_of] if n else xp.zeros(0, xp.int64)
    jpx, jpy, jpz, je = raw.px[rows], raw.py[rows], raw.pz[rows], raw.E[rows]
    jkt2 = kt2[rows]
    jpt = xp.sqrt(jkt2)
    glob = xp.where(jet_row >= 0, jets_off[:-1][ev] + jet_row, rows.shape[0])
    n_const = bincount(glob, rows.shape[0] + 1, xp)[: rows.shape[0]]
    cols = {
        "pt": jpt,
        "eta": fastjet_eta(jpx, jpy, jpz, jpt, xp),
        "phi": xp.where(jkt2 == 0, 0.0, xp.arctan2(jpy, jpx)),
        "mass": fastjet_mass(jpz, je, jkt2, xp),
        "px": jpx, "py": jpy, "pz": jpz, "E": je,
        "area": xp.full(rows.shape[0], math.pi * radius * radius, dtype=xp.float64),
        "n_constituents": n_const.astype(xp.int64),
    }
    return Collection(jets_off, cols), jet_row


def check_vectors(px: Any, py: Any, pz: Any, e: Any, offsets: Any, xp: Any,
                  origin: tuple[str, str, Any, Any] | None = None) -> None:
    """Refuse 4-vectors [GeV] with a NaN or infinite component, which anti-kT cannot cluster
    (FastJet's rapidity and distances of them are meaningless), with a
    :class:`~hltemu.pipeline.PipelineError` naming the event and the particle.  ``origin``:
    ``(stage, collection, rows, offsets)``, the rows of the collection the inputs come from and
    its offsets, so that the error names the collection's row."""
    bad = ~(xp.isfinite(px) & xp.isfinite(py) & xp.isfinite(pz) & xp.isfinite(e))
    if not any_true(bad):
        return
    row = item(xp.flatnonzero(bad)[0])
    ev = item(event_index(offsets, int(px.shape[0]), xp)[row])
    vec = ", ".join(f"{item(a[row])!r}" for a in (px, py, pz, e))
    if origin is None:
        where = f"anti-kT: event {ev}, particle {row - item(offsets[ev])} (input row {row})"
    else:
        stage, name, rows, src_offsets = origin
        src = item(rows[row])
        where = (f"stage {stage!r}: event {ev}, collection {name!r} row {src} (row "
                 f"{src - item(src_offsets[ev])} of the event)")
    raise PipelineError(f"{where} has a non-finite 4-vector (px, py, pz, E) = ({vec}) GeV, "
                        "which anti-kT cannot cluster")


def antikt_jets(px: Any, py: Any, pz: Any, e: Any, offsets: Any, radius: float, pt_min: float,
                backend: Backend, clusterer: Any = None,
                origin: tuple[str, str, Any, Any] | None = None) -> tuple[Collection, Any]:
    """Anti-kT jets of 4-vectors [GeV] on ``backend``: the jets collection (columns
    :data:`JET_COLUMNS`) and each input's jet row within its event (-1: below ``pt_min``).
    ``clusterer``: one of :data:`CLUSTERERS` (default: ``backend``'s).  Every finite 4-vector
    is clustered as FastJet clusters it (``E + |pz| == 0`` included); a non-finite one is
    refused by :func:`check_vectors` (``origin``: see there)."""
    xp = backend.xp
    args = [xp.ascontiguousarray(xp.asarray(a, dtype=xp.float64)) for a in (px, py, pz, e)]
    offsets = xp.asarray(offsets, dtype=xp.int64)
    check_vectors(*args, offsets, xp, origin)
    if clusterer is None:
        clusterer = dispatch(CLUSTERERS, backend, "anti-kT clustering")
    raw = clusterer(*args, offsets, radius, backend)
    return make_jets(raw, offsets, radius, pt_min, xp)


# ------------------------------------------------------------------------------------------
# Stage inputs
# ------------------------------------------------------------------------------------------
def _check_columns(coll: Collection, name: str, columns: tuple[str, ...], stage: str) -> None:
    for col in columns:
        if col not in coll:
            raise PipelineError(f"stage {stage!r} needs column {col!r} in collection {name!r}; "
                                f"it has {sorted(coll.columns)}")


def _check_finite(xp: Any, values: Any, name: str, col: str, stage: str) -> None:
    bad = ~xp.isfinite(values)
    if any_true(bad):
        row = item(xp.flatnonzero(bad)[0])
        raise PipelineError(f"stage {stage!r}: collection {name!r} column {col!r} has a "
                            f"non-finite value {item(values[row])!r} at row {row}")


def _select(xp: Any, keep: Any, offsets: Any) -> tuple[Any, Any]:
    """Rows kept and the offsets of the kept rows."""
    rows = xp.flatnonzero(keep)
    csum = xp.zeros(keep.shape[0] + 1, dtype=xp.int64)
    xp.cumsum(keep.astype(xp.int64), out=csum[1:])
    return rows, csum[offsets]


def _check_radius(radius: float, stage: str) -> None:
    if not (radius > 0 and math.isfinite(radius)):
        raise ConfigError(f"[{stage}] R must be a finite number > 0, got {radius}")


def antikt_of_rows(keep: Any, offsets: Any, px: Any, py: Any, pz: Any, e: Any, radius: float,
                   pt_min: float, backend: Backend, clusterer: Any, stage: str, name: str
                   ) -> tuple[Collection, Collection]:
    """Anti-kT jets of the rows of collection ``name`` (CSR ``offsets``) where ``keep``, from
    their 4-vectors [GeV] (given for every row): the jets and, per row, its jet's row within
    the event (column ``jet``; -1 when left out or in no jet above ``pt_min``)."""
    xp = backend.xp
    rows, kept_offsets = _select(xp, keep, offsets)
    jets, jet_row = antikt_jets(px[rows], py[rows], pz[rows], e[rows], kept_offsets, radius,
                                pt_min, backend, clusterer, origin=(stage, name, rows, offsets))
    row_jet = xp.full(keep.shape[0], -1, dtype=xp.int64)
    row_jet[rows] = jet_row
    return jets, Collection(offsets, {"jet": row_jet})


def antikt_stage(batch: EventBatch, cfg: AntiKtConfig, clusterer: Any) -> dict[str, Collection]:
    """The ``antikt`` stage with ``clusterer`` (one of :data:`CLUSTERERS`)."""
    be = batch.backend
    xp = be.xp
    _check_radius(cfg.R, "antikt")
    clusters = batch["clusters"]
    _check_columns(clusters, "clusters", CLUSTER_COLUMNS, "antikt")
    energy, eta, phi = (xp.asarray(clusters[c], dtype=xp.float64) for c in CLUSTER_COLUMNS)
    for col, values in zip(CLUSTER_COLUMNS, (energy, eta, phi), strict=True):
        _check_finite(xp, values, "clusters", col, "antikt")
    pt = energy / xp.cosh(eta)
    jets, cluster_jet = antikt_of_rows(energy > 0, clusters.offsets, pt * xp.cos(phi),
                                       pt * xp.sin(phi), pt * xp.sinh(eta), energy, cfg.R,
                                       cfg.pt_min, be, clusterer, "antikt", "clusters")
    return {"jets": jets, "cluster_jet": cluster_jet}


# one implementation per backend: the same stage body with that backend's clusterer
run_antikt_reference = functools.partial(antikt_stage, clusterer=cluster_reference)
run_antikt_cpu = functools.partial(antikt_stage, clusterer=cluster_cpu)
run_antikt_cuda = functools.partial(antikt_stage, clusterer=cluster_cuda)


STAGE = register(Stage(
    name="antikt",
    needs=("clusters",),
    adds=("jets", "cluster_jet"),
    config_type=AntiKtConfig,
    implementations={"reference": run_antikt_reference, "cpu": run_antikt_cpu,
                     "cuda": run_antikt_cuda},
    doc="anti-kT jets of calorimeter clusters, identical to FastJet (E-scheme, any R)",
))
