"""Stage ``pixelvertices``: the HLT's pixel vertices from the ``pixeltracks``, Patatrack's way:
density clustering of the tracks' z0, a weighted-mean fit with outlier rejection, the split of
vertices that look like two, and the primary vertex of largest sum pT^2.

Sources read (CMS pixeltrack-standalone, ``src/cuda/plugin-PixelVertexFinding/``):
``gpuClusterTracksByDensity.h``, ``gpuFitVertices.h``, ``gpuSplitVertices.h``,
``gpuSortByPt2.h``, ``gpuVertexFinderImpl.h`` (``loadTracks`` and the order of the steps) and
``PixelVertexProducerCUDA.cc`` (the defaults); CMSSW's alpaka ``loadTracks`` (the pT cap
``ptMax``) and ``PixelVertexProducerFromSoA.cc`` (vertices of fewer than two tracks dropped).

The rules
---------
1. **Tracks.**  A pixel track enters when it has ``n_hits >= min_hits`` (4: Patatrack uses
   no triplets) and ``pT >= pt_min`` (0.5 GeV, CMSSW ``ptMin``).  Its pT enters the sums of
   rule 5 capped at ``pt_max`` (75 GeV, CMSSW ``ptMax``: a track above it still enters, with
   pT = 75 GeV; CMSSW clamps, it does not cut).  ``z = z0`` [cm]; its error ``sigma_z0``
   [cm] see *Approximations*.
2. **Density clustering** (``clusterTracksByDensity``, after Rodriguez and Laio, Science 344
   (2014) 1492).  Two tracks are *compatible* when ``|z_i - z_j| <= eps`` (0.07 cm) and
   ``(z_i - z_j)^2 <= chi2max (sigma_i^2 + sigma_j^2)`` (chi2max 9).  A track's density
   ``nn`` is its number of compatible tracks when ``sigma_z0^2 <= errmax^2`` (errmax 0.01
   cm), else 0.  Each track points to the *nearest* compatible track of higher rank (more
   neighbours, or as many and a lower z), itself if there is none; following the pointers
   leads to a root.  A root with ``nn >= min_t`` (2) seeds a cluster of every track that
   leads to it; the tracks of other roots are noise (no vertex).  Patatrack leaves ties in
   distance to the threads' order ("we ignore the possibility of two j at same distance"); we
   take the first in ascending (z0, row) order.
3. **Fit** (``fitVertices``) of each cluster: ``z = sum(w z0) / sum(w)`` with ``w = 1 /
   sigma_z0^2`` (sums in ascending (z0, row) order); each track's ``chi2_i = (z - z0)^2 /
   sigma_z0^2``; a track with ``chi2_i > fit_chi2_max`` (50) leaves the cluster (an outlier:
   no vertex), the others give ``chi2 = sum chi2_i`` and ``ndof = n - 1``; the weight
   ``W = sum(w)`` (outliers included, as in Patatrack, which does not refit) is scaled by
   ``ndof / chi2`` when ``ndof > 0`` (and ``chi2 > 0``: a guard of ours against equal z0).
4. **Split** (``splitVertices``; ``split = True``): a vertex with ``ndof >= split_min_ndof``
   (4) and ``chi2 >= split_chi2 ndof`` (9) is divided by a two-means in z: its tracks'
   ``dz = z0 - z`` start on side 0 when ``dz < 0``, else 1; then at most ``split_iterations``
   (20) times: each side's weighted mean of ``dz`` (weights w), each track to the side of the
   nearer mean (1 at equal distance), until no track moves.  When the two means ``m0, m1``
   (those of the last pass, weights ``W0, W1``) satisfy ``(m0 - m1)^2 / (1/W0 + 1/W1) >=
   split_separation`` (4), side 1's tracks become a new vertex (numbered after the others, in
   the order of the vertices split).  A side left empty stops the split (Patatrack would
   divide 0 by 0 there and then refuse the split).  Vertices made by a split are not split
   again.  Then every vertex is fitted again (rule 3) with ``final_fit_chi2_max`` (5000).
5. **Vertices.**  A cluster is a vertex when at least ``min_tracks`` (2) tracks remain after
   the last fit.  ``sum_pt2`` = the sum of its tracks' capped pT^2; the event's vertices are
   ordered by ``sum_pt2`` descending (ties: lower z, then lower cluster number; Patatrack's
   sort leaves ties to the order of its atomics): the primary vertex is row 0.

Outputs
-------
``pixelvertices``, per event (PV first):

=========== ===== =================================================================
z           cm    the last fit's weighted mean of z0
z_error     cm    ``sqrt(1 / W)``, W the last fit's scaled weight (rule 3); CMSSW's
                  conversion to ``reco::Vertex`` doubles the variance, we do not
n_tracks    \\-    tracks of the vertex (int32)
sum_pt2     GeV^2 sum of their capped pT^2
chi2        \\-    the last fit's sum of chi2_i
ndof        \\-    ``n_tracks - 1`` (int32)
=========== ===== =================================================================

``pixeltrack_vertex``, one row per pixel track (the offsets of ``pixeltracks``): ``vertex``
(int32), the row of the track's vertex within the event's ``pixelvertices``, -1 when it has
none (not selected, noise, an outlier, or a cluster under ``min_tracks``): Patatrack's
``idv``.  A stage cannot add columns to another's collection, hence a collection aligned with
``pixeltracks``.

Approximations
--------------
* **sigma_z0.**  Patatrack takes each track's z0 variance from its broken-line fit's
  covariance.  ``pixeltracks`` gives one now (``cov_z0_z0``), but this stage still uses the
  table below, measured with its earlier fit (Karimaki circle and an unweighted line, z0
  resolution 2-3x worse than the present fit's ~10 um).  We parameterise ``sigma_z0`` by ``|eta|``: ``z0_errors[i]``
  for ``z0_error_eta_edges[i-1] <= |eta| < z0_error_eta_edges[i]``.  The defaults are the
  central-68% half widths of ``z0 - vz`` of pixel tracks of >= 4 hits matched to a prompt
  particle (``sim_index``, production within 100 um of the beam line) on the built-in sample
  (10 ttbar events at pileup 50, default doublets and pixeltracks; 3,528 tracks): 24, 11, 18,
  33, 66, 128 um for |eta| 0-0.5, 0.5-1, 1-1.5, 1.5-2, 2-2.5, > 2.5, with no dependence on pT
  (23-28 um from 0.5 to > 5 GeV; no material).  Real CMS pixel tracks have 50-500 um,
  growing as 1/pT: ``errmax`` (100 um) then selects the better tracks as seeds, here all but
  |eta| > 2.5.  Triplets (``min_hits = 3``) get the same errors, 4x too small (their width is
  99 um overall).
* float64 throughout (Patatrack: float32); no beam-spot tilt (the beam line is the z axis).
* The HLT's ``PixelVertexCollectionTrimmer`` (keep vertices with sum pT^2 >= 0.3 of the
  PV's) is not applied.

Backends
--------
The selection, the ``(event, z0, row)`` sort, the error table, and at the end the ordering
of the vertices run with NumPy (reference, cpu) or ``xp`` (cuda).  ``reference`` clusters,
fits and splits in plain Python (all pairs of tracks, lists of members);
``cpu`` and ``cuda`` run :mod:`hltemu.kernels.pixelvertices`, one event per ``prange``
iteration or CUDA thread.  Comparisons are exact, the sums run in the same order and every
operation is one IEEE operation (the kernels through :mod:`hltemu.kernels.ieee`), so the three
backends give the same vertices and the same bits, given the same tracks.  On a real GPU the
tracks' ``eta`` may differ in the last bit (``pixeltracks``), which could move a track's
error across a table edge only if its |eta| lay within ~1e-16 of it.

Needs ``pixeltracks`` (``pt`` [GeV], ``eta``, ``z0`` [cm], ``n_hits``); a missing column or a
non-finite value is an error naming the column and the row.

Measured (2026-11-29, cpu, default doublets, pixeltracks and config; PV: row 0 against
``Event.pv_z``, the true hard-scatter vertex; ``hltemu run FILE --stages
doublets,pixeltracks,pixelvertices -n 100`` on ``hltemu generate`` ttbar seeds 5000 and 5050)::

    sample                      events  vertices/event  PV < 1 mm  PV < 100 um  median |dz|
    built-in (pileup 50)            10            26.0      1.000        1.000       3.8 um
    seed 5000, pileup 0            100             1.1      1.000        1.000       3.3 um
    seed 5050, pileup 50           100            26.0      0.980        0.970       3.6 um

At pileup 50 (51 interactions) 26 vertices of >= 2 quadruplets per event, 13 tracks each;
93% of the >= 4-hit tracks are in a vertex; in 2 of the 100 events a pileup vertex has the
larger sum pT^2.  The median chi2 / ndof is 0.9 (2.1 at pileup 0, where the hard scatter's
vertex includes b and c hadron daughters): the table's widths are those of the cores.  The
stage runs at ~5,000 events/s (cpu, 2 shared cores) at pileup 50.
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from hltemu.backends import Backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError, param
from hltemu.ops import THREADS_PER_BLOCK, blocks
from hltemu.pipeline import Stage, register
from hltemu.stages.antikt import _check_columns, _check_finite
from hltemu.xpsafe import bincount, event_index


@dataclass(frozen=True)
class PixelVerticesConfig:
    """Stage ``pixelvertices``: Patatrack's density clustering of pixel-track z0, vertex fit,
    split and sum-pT^2 ordering (rules and sources in :mod:`hltemu.stages.pixelvertices`).
    Defaults are CMSSW's (``PixelVertexProducerCUDA``), the z0 errors our parameterisation."""

    pt_min: float = param(0.5, "GeV", "tracks with pT >= pt_min enter (ptMin)")
    pt_max: float = param(75.0, "GeV", "track pT is capped at pt_max in sum pT^2 (ptMax)")
    min_hits: int = param(4, "", "tracks with at least this many hits enter (Patatrack: 4, no "
                          "triplets)")
    eps: float = param(0.07, "cm", "compatible tracks are at most eps apart in z0 (eps)")
    errmax: float = param(0.01, "cm", "tracks with sigma_z0 <= errmax have a density (errmax)")
    chi2max: float = param(9.0, "", "compatible tracks have dz^2 <= chi2max (sigma_i^2 + "
                           "sigma_j^2) (chi2max)")
    min_t: int = param(2, "", "a root with at least min_t compatible tracks seeds a cluster "
                       "(minT)")
    fit_chi2_max: float = param(50.0, "", "first fit: a track with chi2 above this leaves "
                                "its vertex")
    split: bool = param(True, "", "split vertices that look like two (splitVertices)")
    split_min_ndof: int = param(4, "", "vertices with ndof >= this may be split")
    split_chi2: float = param(9.0, "", "vertices with chi2 >= split_chi2 ndof are split")
    split_separation: float = param(4.0, "", "the two halves become vertices when (m0 - m1)^2 "
                                    "/ (1/W0 + 1/W1) >= this")
    split_iterations: int = param(20, "", "at most this many two-means passes")
    final_fit_chi2_max: float = param(5000.0, "", "last fit: a track with chi2 above this "
                                      "leaves its vertex")
    min_tracks: int = param(2, "", "vertices keep at least this many tracks "
                            "(PixelVertexProducerFromSoA: 2)")
    z0_error_eta_edges: tuple = param((0.5, 1.0, 1.5, 2.0, 2.5), "",
                                      "|eta| edges of the sigma_z0 table")
    z0_errors: tuple = param((0.0024, 0.0011, 0.0018, 0.0033, 0.0066, 0.0128), "cm",
                             "sigma_z0 of a pixel track per |eta| bin (one more than edges)")

    def __post_init__(self) -> None:
        for name in ("pt_min", "pt_max", "eps", "errmax", "chi2max", "fit_chi2_max",
                     "split_chi2", "split_separation", "final_fit_chi2_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float))
                                               and math.isfinite(value) and value >= 0):
                raise ConfigError(f"[pixelvertices] {name} must be a finite number >= 0, got "
                                  f"{value!r}")
        if self.pt_max < self.pt_min:
            raise ConfigError(f"[pixelvertices] pt_max ({self.pt_max} GeV) must be >= pt_min "
                              f"({self.pt_min} GeV)")
        for name, least in (("min_hits", 1), ("min_t", 0), ("split_min_ndof", 1),
                            ("split_iterations", 1), ("min_tracks", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"[pixelvertices] {name} must be an integer >= {least}, got "
                                  f"{value!r}")
        edges, errors = self.z0_error_eta_edges, self.z0_errors
        if (not all(isinstance(v, (int, float)) and math.isfinite(v) for v in edges)
                or any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True))
                or any(v < 0 for v in edges)):
            raise ConfigError(f"[pixelvertices] z0_error_eta_edges must be finite numbers >= 0 "
                              f"in ascending order, got {edges!r}")
        if len(errors) != len(edges) + 1 or not all(
                isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in errors):
            raise ConfigError(f"[pixelvertices] z0_errors must be {len(edges) + 1} finite "
                              f"numbers > 0 in cm (one per |eta| bin of z0_error_eta_edges), "
                              f"got {errors!r}")


#: pixeltracks columns the stage reads.
TRACK_COLUMNS: tuple[str, ...] = ("pt", "eta", "z0", "n_hits")
#: Columns of the ``pixelvertices`` collection.
VERTEX_COLUMNS: tuple[str, ...] = ("z", "z_error", "n_tracks", "sum_pt2", "chi2", "ndof")


def cuts(cfg: PixelVerticesConfig) -> np.ndarray:
    """The kernels' ``cuts`` array (:mod:`hltemu.kernels.pixelvertices`, ``CUT_*``)."""
    from hltemu.kernels import pixelvertices as K

    c = np.zeros(K.N_CUTS, dtype=np.float64)
    c[K.CUT_EPS] = cfg.eps
    c[K.CUT_ERR2_MAX] = cfg.errmax * cfg.errmax
    c[K.CUT_CHI2_MAX] = cfg.chi2max
    c[K.CUT_MIN_T] = cfg.min_t
    c[K.CUT_FIT_CHI2_MAX] = cfg.fit_chi2_max
    c[K.CUT_FINAL_FIT_CHI2_MAX] = cfg.final_fit_chi2_max
    c[K.CUT_SPLIT] = 1.0 if cfg.split else 0.0
    c[K.CUT_SPLIT_MIN_NDOF] = cfg.split_min_ndof
    c[K.CUT_SPLIT_CHI2] = cfg.split_chi2
    c[K.CUT_SPLIT_SEPARATION] = cfg.split_separation
    c[K.CUT_SPLIT_ITERATIONS] = cfg.split_iterations
    return c


class Prepared(NamedTuple):
    """The ``cuts`` array and the sigma_z0 table (edges, errors [cm]), on the backend."""

    cuts: Any
    edges: Any
    errors: Any


def prepare(cfg: PixelVerticesConfig, backend: Backend) -> Prepared:
    """The cut array and the error table, uploaded once to ``backend``."""
    return Prepared(backend.to_device(cuts(cfg)),
                    backend.to_device(np.asarray(cfg.z0_error_eta_edges, dtype=np.float64)),
                    backend.to_device(np.asarray(cfg.z0_errors, dtype=np.float64)))


class Tracks(NamedTuple):
    """The selected tracks (rule 1) in ``(event, z0, row)`` order: their ``rows`` in
    ``pixeltracks``, CSR ``offsets`` by event, ``z`` [cm], ``e2`` (sigma_z0^2 [cm^2]), ``pt2``
    (capped pT^2 [GeV^2]); and ``n`` (all pixel tracks) and ``track_offsets``."""

    rows: Any
    offsets: Any
    z: Any
    e2: Any
    pt2: Any
    n: int
    track_offsets: Any


def selected_tracks(batch: EventBatch, cfg: PixelVerticesConfig, edges: Any, errors: Any
                    ) -> Tracks:
    """The stage's input, checked (errors name the column and the row), selected and sorted."""
    xp = batch.backend.xp
    tracks = batch["pixeltracks"]
    _check_columns(tracks, "pixeltracks", TRACK_COLUMNS, "pixelvertices")
    cols = {}
    for col in ("pt", "eta", "z0"):
        cols[col] = xp.asarray(tracks[col], dtype=xp.float64)
        _check_finite(xp, cols[col], "pixeltracks", col, "pixelvertices")
    n_hits = xp.asarray(tracks["n_hits"])
    n = int(n_hits.shape[0])
    track_offsets = xp.asarray(tracks.offsets, dtype=xp.int64)
    n_events = int(track_offsets.shape[0]) - 1
    rows = xp.flatnonzero((n_hits >= cfg.min_hits) & (cols["pt"] >= cfg.pt_min))
    event = event_index(track_offsets, n, xp)[rows]
    if rows.shape[0]:
        order = xp.lexsort(xp.stack([rows.astype(xp.float64), cols["z0"][rows],
                                     event.astype(xp.float64)]))
        rows, event = rows[order], event[order]
    offsets = xp.zeros(n_events + 1, dtype=xp.int64)
    xp.cumsum(bincount(event, n_events, xp), out=offsets[1:])
    sigma = errors[xp.searchsorted(edges, xp.abs(cols["eta"][rows]), side="right")]
    pt = xp.minimum(cols["pt"][rows], cfg.pt_max)
    return Tracks(rows, offsets, xp.ascontiguousarray(cols["z0"][rows]),
                  xp.ascontiguousarray(sigma * sigma), xp.ascontiguousarray(pt * pt), n,
                  track_offsets)


# -- reference ------------------------------------------------------------------------------------
class _Cluster(NamedTuple):
    """A cluster after a fit: its tracks (positions in (z0, row) order) and fit results."""

    members: list[int]
    z: float
    weight: float
    chi2: float


def _fit(members: list[int], z: list[float], e2: list[float], chi2_max: float) -> _Cluster:
    """Rule 3 on one cluster."""
    sw = swz = 0.0
    for p in members:
        w = 1.0 / e2[p]
        swz += z[p] * w
        sw += w
    zv = swz / sw if sw > 0 else 0.0
    kept, chi2 = [], 0.0
    for p in members:
        c2 = (zv - z[p]) * ((zv - z[p]) / e2[p])
        if not c2 > chi2_max:
            kept.append(p)
            chi2 += c2
    ndof = len(kept) - 1
    if ndof > 0 and chi2 > 0:
        sw *= ndof / chi2
    return _Cluster(kept, zv, sw, chi2)


def _split(v: _Cluster, z: list[float], e2: list[float], cfg: PixelVerticesConfig
           ) -> list[int]:
    """Rule 4 on one vertex: the tracks of its new half (none: not split)."""
    dz = {p: z[p] - v.z for p in v.members}
    side = {p: 0 if dz[p] < 0 else 1 for p in v.members}
    for _ in range(cfg.split_iterations):
        sums = [[0.0, 0.0], [0.0, 0.0]]  # per side: sum w dz, sum w
        for p in v.members:
            w = 1.0 / e2[p]
            sums[side[p]][0] += dz[p] * w
            sums[side[p]][1] += w
        (s0, w0), (s1, w1) = sums
        if w0 == 0 or w1 == 0:
            return []
        m0, m1 = s0 / w0, s1 / w1
        moved = {p: 0 if abs(dz[p] - m0) < abs(dz[p] - m1) else 1 for p in v.members}
        if moved == side:
            break
        side = moved
    if (m0 - m1) * (m0 - m1) / (1.0 / w0 + 1.0 / w1) < cfg.split_separation:
        return []
    return [p for p in v.members if side[p] == 1]


def _event_reference(z: list[float], e2: list[float], pt2: list[float],
                     cfg: PixelVerticesConfig) -> tuple[list[tuple[int, _Cluster, float]],
                                                        list[int]]:
    """One event's selected tracks (in (z0, row) order) in plain Python: its vertices as
    (cluster number, last fit, sum pT^2) in PV-first order, and each track's cluster number
    (-1: none)."""
    m = len(z)

    def compatible(i: int, j: int) -> bool:
        d = abs(z[i] - z[j])
        return d <= cfg.eps and d * d <= cfg.chi2max * (e2[i] + e2[j])

    nn = [sum(1 for j in range(m) if j != i and compatible(i, j))
          if e2[i] <= cfg.errmax * cfg.errmax else 0 for i in range(m)]
    parent = []
    for i in range(m):
        higher = [j for j in range(m) if (nn[j], -z[j]) > (nn[i], -z[i]) and compatible(i, j)]
        parent.append(min(higher, key=lambda j: (abs(z[i] - z[j]), j)) if higher else i)

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    seeds = [i for i in range(m) if parent[i] == i and nn[i] >= cfg.min_t]
    groups: list[list[int]] = [[i for i in range(m) if root(i) == s] for s in seeds]
    clusters = [_fit(g, z, e2, cfg.fit_chi2_max) for g in groups]
    if cfg.split:
        for k, v in enumerate(list(clusters)):
            ndof = len(v.members) - 1
            if ndof < cfg.split_min_ndof or v.chi2 < cfg.split_chi2 * ndof:
                continue
            half = _split(v, z, e2, cfg)
            if half:
                clusters[k] = v._replace(members=[p for p in v.members if p not in half])
                clusters.append(v._replace(members=half))
    clusters = [_fit(c.members, z, e2, cfg.final_fit_chi2_max) for c in clusters]
    cluster_of = [-1] * m
    vertices = []
    for k, c in enumerate(clusters):
        for p in c.members:
            cluster_of[p] = k
        if len(c.members) >= cfg.min_tracks:
            total = 0.0
            for p in c.members:
                total += pt2[p]
            vertices.append((k, c, total))
    vertices.sort(key=lambda v: (-v[2], v[1].z, v[0]))
    return vertices, cluster_of


def run_reference(batch: EventBatch, cfg: PixelVerticesConfig, prep: Prepared
                  ) -> dict[str, Collection]:
    """:func:`_event_reference` for every event; the error table with :mod:`bisect`."""
    trk = batch["pixeltracks"]
    sel = selected_tracks(batch, cfg, prep.edges, prep.errors)  # checks, selection, order
    eta = np.asarray(trk["eta"], dtype=np.float64)
    rows, offsets, z = sel.rows.tolist(), sel.offsets.tolist(), sel.z.tolist()
    e2 = []
    for r in rows:
        s = cfg.z0_errors[bisect.bisect_right(cfg.z0_error_eta_edges, abs(float(eta[r])))]
        e2.append(s * s)
    pt = [min(float(trk["pt"][r]), cfg.pt_max) for r in rows]
    pt2 = [p * p for p in pt]
    cols: dict[str, list] = {c: [] for c in VERTEX_COLUMNS}
    counts = []
    vertex = np.full(sel.n, -1, dtype=np.int32)
    for e in range(len(offsets) - 1):
        lo, hi = offsets[e], offsets[e + 1]
        found, cluster_of = _event_reference(z[lo:hi], e2[lo:hi], pt2[lo:hi], cfg)
        row_of = {k: i for i, (k, _, _) in enumerate(found)}
        for p, k in enumerate(cluster_of):
            vertex[rows[lo + p]] = row_of.get(k, -1)
        counts.append(len(found))
        for _, c, total in found:
            n = len(c.members)
            for col, x in zip(VERTEX_COLUMNS, (c.z, math.sqrt(1.0 / c.weight), n, total,
                                               c.chi2, n - 1), strict=True):
                cols[col].append(x)
    out = {c: np.array(v, dtype=np.float64) for c, v in cols.items()}
    for c in ("n_tracks", "ndof"):
        out[c] = out[c].astype(np.int32)
    offs = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offs[1:])
    return {"pixelvertices": Collection(offs, out),
            "pixeltrack_vertex": Collection(np.asarray(sel.track_offsets), {"vertex": vertex})}


# -- cpu and cuda: the kernels, then the vertices with xp -----------------------------------------
def _launch_cpu(kernel: Any, n_events: int, *args: Any) -> None:
    kernel(*args)


def _launch_cuda(kernel: Any, n_events: int, *args: Any) -> None:
    kernel[blocks(n_events), THREADS_PER_BLOCK](*args)


def _run_kernels(batch: EventBatch, cfg: PixelVerticesConfig, prep: Prepared, kernel: str,
                 launch: Any) -> dict[str, Collection]:
    from hltemu.kernels import pixelvertices as K

    xp = batch.backend.xp
    sel = selected_tracks(batch, cfg, prep.edges, prep.errors)
    m, n_events = int(sel.z.shape[0]), int(sel.offsets.shape[0]) - 1
    size = max(m, 1)  # never a 0-size kernel argument
    track = (xp.zeros(size, dtype=xp.int64), xp.zeros(size, dtype=xp.int64),
             xp.full(size, -1, dtype=xp.int64), xp.zeros(size, dtype=xp.float64),
             xp.zeros(size, dtype=xp.uint8))
    cid = track[2]
    slots = tuple(xp.zeros(2 * size, dtype=dt) for dt in
                  (xp.float64, xp.float64, xp.float64, xp.int32, xp.int32, xp.float64))
    zv, wv, chi2, ndof, n, pt2 = slots
    n_clusters = xp.zeros(n_events, dtype=xp.int64)
    if m:
        launch(getattr(K, kernel), n_events, sel.offsets, sel.z, sel.e2, sel.pt2, prep.cuts,
               *track, *slots, n_clusters)
    # the vertices: slot s of event e is cluster s - 2 offsets[e]
    slot_event = event_index(2 * sel.offsets, 2 * m, xp)
    k = xp.arange(2 * m, dtype=xp.int64) - 2 * sel.offsets[slot_event]
    good = xp.flatnonzero((k < n_clusters[slot_event]) & (n[:2 * m] >= cfg.min_tracks))
    if good.shape[0]:
        good = good[xp.lexsort(xp.stack([k[good].astype(xp.float64), zv[good], -pt2[good],
                                         slot_event[good].astype(xp.float64)]))]
    v_event = slot_event[good]
    offsets = xp.zeros(n_events + 1, dtype=xp.int64)
    xp.cumsum(bincount(v_event, n_events, xp), out=offsets[1:])
    cols = {"z": zv[good], "z_error": xp.sqrt(1.0 / wv[good]), "n_tracks": n[good],
            "sum_pt2": pt2[good], "chi2": chi2[good], "ndof": ndof[good]}
    row_of_slot = xp.full(2 * m + 1, -1, dtype=xp.int32)
    row_of_slot[good] = (xp.arange(good.shape[0], dtype=xp.int64) - offsets[v_event]
                         ).astype(xp.int32)
    vertex = xp.full(sel.n, -1, dtype=xp.int32)
    pos_event = event_index(sel.offsets, m, xp)
    slot = xp.where(cid[:m] >= 0, 2 * sel.offsets[pos_event] + cid[:m], 2 * m)
    vertex[sel.rows] = row_of_slot[slot]
    return {"pixelvertices": Collection(offsets, cols),
            "pixeltrack_vertex": Collection(sel.track_offsets, {"vertex": vertex})}


#: The Numba kernel, parallel over events.
run_cpu = functools.partial(_run_kernels, kernel="vertices_cpu", launch=_launch_cpu)
#: The CUDA kernel, one thread per event.
run_cuda = functools.partial(_run_kernels, kernel="vertices_cuda", launch=_launch_cuda)


STAGE = register(Stage(
    name="pixelvertices",
    needs=("pixeltracks",),
    adds=("pixelvertices", "pixeltrack_vertex"),
    config_type=PixelVerticesConfig,
    prepare=prepare,
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    doc="pixel vertices from pixel-track z0: Patatrack's density clustering, fit with outlier "
        "rejection, split, PV = largest sum pT^2",
    in_default_chain=False,
))
