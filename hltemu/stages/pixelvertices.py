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
   [cm] by ``z0_error``:

   * ``"covariance"`` (default): ``sigma_z0^2 = cov_z0_z0 + (beam_width_xy sinh(eta))^2``,
     the variance of z0 from the ``pixeltracks`` fit [cm^2] (Patatrack's ``ezt2``, the fit's
     covariance) plus the beam-line term below; ``beam_width_xy`` 0.0012 cm, ``hltemu
     generate``'s luminous region (``beamspot_sigma_xy``); 0 gives Patatrack's rule exactly.
   * ``"table"``: ``sigma_z0 = z0_errors[i]`` [cm] for ``z0_error_eta_edges[i-1] <= |eta| <
     z0_error_eta_edges[i]`` (see *Approximations*).
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
* **The beam-line term.**  z0 is the track's z at its closest approach to the beam line
  (the z axis), but an interaction happens at (x_v, y_v), ``~N(0, 12 um)`` off it: a track of
  direction phi from there has ``z0 = z_v - (x_v cos phi + y_v sin phi) cot(theta)``, an offset
  of variance ``beam_width_xy^2 cot^2(theta)`` that differs from track to track of one vertex
  (by phi) and that the fit's covariance does not know.  In CMS it hides under 50-500 um of
  multiple scattering; here (no material) the fit gives 4-8 um at 0.5 < |eta| < 2 while the
  offset is 19 um at |eta| 1.25 and 56 um at 2.25.  Measured on ttbar at pileup 50 (seed 5050,
  50 events, 18,196 selected tracks matched to a particle produced at its interaction's
  vertex; ``z0 - z`` of that vertex): central-68% half widths 25, 12, 18, 33, 62, 117 um for
  |eta| 0-0.5, 0.5-1, 1-1.5, 1.5-2, 2-2.5, > 2.5, where ``sqrt(cov_z0_z0)`` has medians 22, 8,
  5, 6, 28, 63 um (pulls 1.2, 1.5, 4.0, 5.4, 2.7, 1.8) and ``sigma_z0`` with the term 22, 14,
  19, 34, 61, 101 um (pulls 1.15, 0.81, 0.95, 0.93, 1.00, 1.14; beyond 3 sigma: 2.8% at
  |eta| < 0.5, at most 0.5% elsewhere).  Without the term (``beam_width_xy = 0``) 27% of
  these tracks lie beyond 3 sigma of their vertex, the fit's outlier cut and the split act on
  them, and at pileup 0 the hard-scatter vertex is split: 1.36 vertices per event and a PV
  10.7 um from the truth (median), against 1.04 and 3.7 um with it (table below).
* **The table** (``z0_error = "table"``, the stage's rule before the fit had a covariance):
  ``z0_errors`` are the central-68% half widths of ``z0 - vz`` of pixel tracks of >= 4 hits
  matched to a prompt particle on the built-in sample, measured with the earlier fit (Karimaki
  circle and an unweighted line): 24, 11, 18, 33, 66, 128 um for |eta| 0-0.5, ..., > 2.5.
  They are mostly the beam-line term above, hence close to the covariance mode's errors, but
  one per |eta| bin (the fit's errors vary 6-41 um within 2 < |eta| < 2.5) and the same for
  triplets (``min_hits = 3``), whose fitted z0 errors are larger (medians of
  ``sqrt(cov_z0_z0)`` 22, 14 and 6 um for 3, 4 and 5 hits at pileup 50).
* **Patatrack's cuts, kept.**  ``eps`` (0.07 cm), ``errmax`` (0.01 cm) and ``chi2max`` (9)
  are CMSSW's, set for errors of 50-500 um: there ``errmax`` gives a density only to the
  better-measured tracks and ``eps`` bounds the clusters of the worse ones.  With this
  detector's 10-100 um, ``chi2max`` alone sets the clustering scale (``3 sqrt(2) sigma_z0``,
  60-400 um) and ``errmax`` only takes tracks of sigma_z0 > 100 um out of the seeding (about
  half of those beyond |eta| 2.5; the table: all of them).  We keep the defaults rather than
  tune them to a detector without material.
* float64 throughout (Patatrack: float32); no beam-spot tilt (the beam line is the z axis).
* The HLT's ``PixelVertexCollectionTrimmer`` (keep vertices with sum pT^2 >= 0.3 of the
  PV's) is not applied.

Backends
--------
The selection, the ``(event, z0, row)`` sort and at the end the ordering of the vertices run
with NumPy (reference, cpu) or ``xp`` (cuda); so does ``sigma_z0^2`` for cpu and cuda, while
``reference`` computes it track by track (``bisect`` in the table; ``cov_z0_z0`` plus the
beam-line term with NumPy's ``sinh``, the function cpu uses).  ``reference`` clusters, fits and
splits in plain Python (all pairs of tracks, lists of members);
``cpu`` and ``cuda`` run :mod:`hltemu.kernels.pixelvertices`, one event per ``prange``
iteration or CUDA thread.  Comparisons are exact, the sums run in the same order and every
operation is one IEEE operation (the kernels through :mod:`hltemu.kernels.ieee`), so the three
backends give the same vertices and the same bits, given the same tracks.  On a real GPU the
tracks' ``eta`` may differ in the last bit (``pixeltracks``), and CuPy's ``sinh`` from NumPy's,
which changes the beam-line term in its last bit (a comparison could differ only at a tie
within ~1e-16 relative) or moves a track's error across a table edge (only if its |eta| lay
within ~1e-16 of it).

Needs ``pixeltracks`` (``pt`` [GeV], ``eta``, ``z0`` [cm], ``n_hits``, and with ``z0_error =
"covariance"`` ``cov_z0_z0`` [cm^2]); a missing column or a non-finite value is an error naming
the column and the row; without ``cov_z0_z0`` the error also names ``z0_error = 'table'``; a
``cov_z0_z0`` that is not > 0 is an error naming its value and row.

Measured (2026-11-29, cpu, default doublets, pixeltracks and config; ``python
examples/pixel_tracking_performance.py FILE --events N`` on ``hltemu generate`` ttbar files,
definitions in :mod:`hltemu.pixelmetrics`: a vertex is efficient for an interaction with >= 2
charged prompt particles of pT > 0.9 GeV, |eta| < 2.5 when a vertex is within 0.1 cm of it,
each vertex used once; PV: row 0 against ``Event.pv_z``; ``unassigned``: vertices near no
interaction, e.g. a vertex split in two); the table mode's figures are the stage's before the
covariance became the default::

    pileup (seed, events)  z0_error    vtx eff (pileup)  PV<0.1cm  median|dz|  vtx/ev  unassigned
    0 (5000, 50)           covariance    1.000               1.000      3.7 um    1.04      2 / 52
                           table         1.000               1.000      3.3 um    1.12      6 / 56
    50 (5050, 50)          covariance    0.873 (0.869)       0.980      4.8 um   25.76   7 / 1,288
                           table         0.877 (0.872)       0.980      4.0 um   25.84   5 / 1,292
    200 (7200, 24)         covariance    0.760 (0.758)       0.958      3.9 um   90.29   2 / 2,167
                           table         0.778 (0.776)       0.958      3.8 um   92.00   3 / 2,208
    50 (built-in, 10)      covariance        -               1.000      3.9 um   25.9        -
                           table             -               1.000      3.1 um   26.0        -

The hard-scatter interaction has a vertex in every event.  The PV's distance to the truth: in
the 49 (pileup 50) and 50 (pileup 0) events where both modes are within 0.1 cm, the table is
nearer in 31 and 29 of them, by 0.5 um on average (6.8 against 6.3 um; 4.7 against 4.4), a
difference within the statistics (sign test p = 0.09 and 0.3).  At pileup 200 (203
interactions, 113 eligible per event) the vertex efficiency is limited by merging (mean
spacing ~0.5 mm at z = 0): the covariance mode's errors are larger than the table's at 0.5 <
|eta| < 1.5 and merge more (1.8 points of efficiency); a smaller width trades this
against split vertices (``beam_width_xy = 0.0009``: 0.775 at pileup 200, 0.874 at pileup 50,
PV median |dz| 3.9 and 4.2 um at pileup 0 and 50).  Patatrack's plain covariance
(``beam_width_xy = 0``) gives 0.812 with 127 unassigned vertices at pileup 200, and 0.870,
PV < 0.1 cm 0.94 and 143 unassigned at pileup 50: its errors are too small for these tracks.
At pileup 50, 93% of the selected tracks are in a vertex, 13.7 per vertex, median chi2 / ndof
0.89 (1.84 at pileup 0, where the hard scatter's vertex includes b and c hadron daughters).
The stage runs at ~13,000 events/s (cpu, 2 shared cores, the built-in sample's 10 events:
``benchmarks/bench_pixeltracks.py``, ``benchmarks/RESULTS.md``) at pileup 50.
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
from hltemu.pipeline import PipelineError, Stage, register
from hltemu.stages.antikt import _check_columns, _check_finite
from hltemu.xpsafe import any_true, bincount, event_index, item

#: Where a track's sigma_z0 comes from (config ``z0_error``): the fit's covariance, or the table.
Z0_ERROR_MODES: tuple[str, ...] = ("covariance", "table")


@dataclass(frozen=True)
class PixelVerticesConfig:
    """Stage ``pixelvertices``: Patatrack's density clustering of pixel-track z0, vertex fit,
    split and sum-pT^2 ordering (rules and sources in :mod:`hltemu.stages.pixelvertices`).
    Defaults are CMSSW's (``PixelVertexProducerCUDA``); sigma_z0 from the fit's covariance."""

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
    z0_error: str = param("covariance", "",
                          'sigma_z0 of a track: "covariance" (sqrt(cov_z0_z0) of the '
                          'pixeltracks fit [cm], Patatrack\'s way) or "table" (z0_errors by '
                          '|eta|)')
    beam_width_xy: float = param(0.0012, "cm", 'z0_error = "covariance": the luminous '
                                 "region's transverse width (sigma in x and y); adds "
                                 "(beam_width_xy sinh(eta))^2 to cov_z0_z0 (0: the covariance "
                                 "alone, as Patatrack)")
    z0_error_eta_edges: tuple = param((0.5, 1.0, 1.5, 2.0, 2.5), "",
                                      'z0_error = "table": |eta| edges of the sigma_z0 table')
    z0_errors: tuple = param((0.0024, 0.0011, 0.0018, 0.0033, 0.0066, 0.0128), "cm",
                             'z0_error = "table": sigma_z0 of a pixel track per |eta| bin (one '
                             'more than edges)')

    def __post_init__(self) -> None:
        for name in ("pt_min", "pt_max", "eps", "errmax", "chi2max", "fit_chi2_max",
                     "split_chi2", "split_separation", "final_fit_chi2_max", "beam_width_xy"):
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
        if self.z0_error not in Z0_ERROR_MODES:
            raise ConfigError(f"[pixelvertices] z0_error must be one of "
                              f"{', '.join(map(repr, Z0_ERROR_MODES))}, got {self.z0_error!r}")
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


#: pixeltracks columns the stage reads in every mode, and with ``z0_error = "covariance"``.
TRACK_COLUMNS: tuple[str, ...] = ("pt", "eta", "z0", "n_hits")
COVARIANCE_COLUMN = "cov_z0_z0"
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


def _check_track_columns(tracks: Collection, cfg: PixelVerticesConfig) -> None:
    """Every column the config needs is there; a missing ``cov_z0_z0`` says how to do without."""
    _check_columns(tracks, "pixeltracks", TRACK_COLUMNS, "pixelvertices")
    if cfg.z0_error == "covariance" and COVARIANCE_COLUMN not in tracks:
        raise PipelineError(f"stage 'pixelvertices' needs column {COVARIANCE_COLUMN!r} in "
                            f"collection 'pixeltracks' (z0_error = 'covariance': each track's z0 "
                            f"variance [cm^2] from the fit of stage 'pixeltracks'); it has "
                            f"{sorted(tracks.columns)}. Set [pixelvertices] z0_error = 'table' "
                            f"to take sigma_z0 from the |eta| table instead")


def _check_variance(xp: Any, cov: Any) -> None:
    """``cov_z0_z0`` is a finite variance > 0 on every row (one read-back)."""
    bad = ~(xp.isfinite(cov) & (cov > 0))
    if any_true(bad):
        row = item(xp.flatnonzero(bad)[0])
        raise PipelineError(f"stage 'pixelvertices': collection 'pixeltracks' column "
                            f"{COVARIANCE_COLUMN!r} has the value {item(cov[row])!r} at row "
                            f"{row}, expected a finite z0 variance > 0 [cm^2]")


def selected_tracks(batch: EventBatch, cfg: PixelVerticesConfig, edges: Any, errors: Any
                    ) -> Tracks:
    """The stage's input, checked (errors name the column and the row), selected and sorted;
    ``e2`` from ``cov_z0_z0`` or from the table (``edges``, ``errors`` [cm]) by ``z0_error``."""
    xp = batch.backend.xp
    tracks = batch["pixeltracks"]
    _check_track_columns(tracks, cfg)
    cols = {}
    for col in ("pt", "eta", "z0"):
        cols[col] = xp.asarray(tracks[col], dtype=xp.float64)
        _check_finite(xp, cols[col], "pixeltracks", col, "pixelvertices")
    if cfg.z0_error == "covariance":
        cov = xp.asarray(tracks[COVARIANCE_COLUMN], dtype=xp.float64)
        _check_variance(xp, cov)
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
    eta = cols["eta"][rows]
    if cfg.z0_error == "covariance":  # the beam-line offset of z0: width x cot(theta)
        t = cfg.beam_width_xy * xp.sinh(eta)
        e2 = cov[rows] + t * t
    else:
        sigma = errors[xp.searchsorted(edges, xp.abs(eta), side="right")]
        e2 = sigma * sigma
    pt = xp.minimum(cols["pt"][rows], cfg.pt_max)
    return Tracks(rows, offsets, xp.ascontiguousarray(cols["z0"][rows]),
                  xp.ascontiguousarray(e2), xp.ascontiguousarray(pt * pt), n, track_offsets)


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
    """:func:`_event_reference` for every event; each track's sigma_z0^2 read here, row by row:
    ``cov_z0_z0``, or the error table with :mod:`bisect`."""
    trk = batch["pixeltracks"]
    sel = selected_tracks(batch, cfg, prep.edges, prep.errors)  # checks, selection, order
    rows, offsets, z = sel.rows.tolist(), sel.offsets.tolist(), sel.z.tolist()
    eta = np.asarray(trk["eta"], dtype=np.float64)
    cov = np.asarray(trk[COVARIANCE_COLUMN], dtype=np.float64) if cfg.z0_error == "covariance" \
        else None
    e2 = []
    for r in rows:
        if cov is not None:  # NumPy's sinh (not math's) for the same bits as cpu and cuda
            t = cfg.beam_width_xy * float(np.sinh(eta[r]))
            e2.append(float(cov[r]) + t * t)
        else:
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
