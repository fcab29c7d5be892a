"""Stage ``pixeltracks``: pixel tracks from the ``doublets``, Patatrack's way (CMS
pixeltrack-standalone, CMSSW ``RecoPixelVertexing/PixelTriplets`` ``CAHitNtupletGenerator``):
a cellular automaton connects doublets into n-tuplets, which are fitted, cut on and cleaned of
shared hits.

The rules
---------
1. **Cells and neighbours.**  Every doublet is a cell.  Inner cell A = (h1, h2) and outer cell
   B = (h2, h3) are neighbours when A's outer hit *is* B's inner hit and the triplet (h1, h2,
   h3) passes Patatrack's cuts (``GPUCACell::check_alignment``), with hit ``i`` at (x_i, y_i,
   z_i) [cm], ``r_i = sqrt(x_i^2 + y_i^2)``:

   * **r-z alignment** (``areAlignedRZ``): ``|z1 (r2 - r3) + z2 (r3 - r1) + z3 (r1 - r2)| *
     ptmin * d13 <= theta_cut * d13^2 * |r1 - r3|`` with ``d13 = sqrt((r1 - r3)^2 + (z1 -
     z3)^2)``.  The left factor is twice the r-z triangle's area, i.e. ``d13`` times the
     distance of h2 from the line h1-h3, so the cut reads ``kink * p_min <= theta_cut``:
     ``kink`` [rad] = that distance / ``d13`` and ``p_min = ptmin d13 / |r1 - r3|`` [GeV] the
     momentum of a ``ptmin`` track at this polar angle (multiple scattering angles scale as
     1/p); ``theta_cut`` [GeV rad] is ``ca_theta_cut_barrel`` (0.002) when h2 is on a
     barrel layer, else ``ca_theta_cut_forward`` (0.003); ``ptmin`` 0.9 GeV.
   * **hardCurvCut** (``dcaCut``): the curvature of the r-phi circle through the three hits,
     ``2 |a x b| / (|a| |b| |b - a|)`` with ``a = p2 - p1``, ``b = p3 - p1`` (``p_i = (x_i,
     y_i)``), at most ``hard_curv_cut`` = 0.0328 1/cm (a radius of 30.5 cm, pT 0.35 GeV in
     3.8 T).  CMSSW compares ``CircleEq::curvature()``, which carries a sign (the bending
     sense, and a coordinate swap inside ``CircleEq``), with the cut; we compare the absolute
     value, so the cut acts on every triplet alike.
   * **dca** (``dcaCut``): the distance of the beam line (x = y = 0; the beam spot is at the
     origin in hltemu) from that circle, ``| |C|^2 - R^2 | / (|C| + R)`` (C its centre, R its
     radius; a straight line's distance when the hits are collinear), below
     ``dca_cut_inner_triplet`` = 0.15 cm when h1 is on the innermost barrel layer, else
     ``dca_cut_outer_triplet`` = 0.25 cm.

2. **N-tuplets**, built inner to outer (Patatrack's ``find_ntuplets`` direction: from the
   cells on the innermost layers along their outer neighbours): a depth-first search from
   every cell whose inner hit lies on a layer of ``start_layers`` (default BPix1, BPix2 and
   the first disks: the inner layers of the layer pairs CMSSW starts from with
   ``minHitsPerNtuplet = 3``, ``kernel_find_ntuplets``), along outer neighbours in ascending
   cell order.  A path ends at a cell with no outer
   neighbour or at 4 cells (5 hits, Patatrack's depth); it is an n-tuplet when it has at least
   ``min_hits_per_ntuplet`` (3) hits.  So a cell with two outer neighbours starts two
   n-tuplets, and an n-tuplet from BPix2 may be the tail of one from BPix1: both are left to
   the cleaning (5).  Patatrack's early fishbone (removing one of two aligned cells that share
   an outer hit, from overlapping modules) is not applied: this detector has no module
   overlaps, and the cleaning removes the n-tuplets it would have prevented.

3. **Fit** of each n-tuplet, with hit errors from the pixel pitch of the detector geometry
   (``sigma_rphi = pitch_x / sqrt(12)`` = 29 um on every hit, ``sigma_z`` of barrel hits and
   ``sigma_r`` of disk hits ``pitch_y / sqrt(12)`` = 43 um):

   * **r-phi**: Karimaki's closed-form circle fit (V. Karimaki, NIM A 305 (1991) 187) of the
     hits with equal weights, *not* constrained to the beam spot: curvature ``rho`` [1/cm],
     direction ``phi`` [rad] at the point of closest approach (PCA) to the beam line and
     ``d0`` [cm], the signed distance of the PCA (CMS's sign: ``d0 = PCA . (-sin phi, cos
     phi)``).  For a triplet the circle goes through the three hits.  ``pT = 0.01 C B /
     |rho|`` [GeV] with ``C`` = 0.2998 GeV/(T m) and ``B`` the geometry's field [T]; charge
     ``sign(rho)`` (a positive particle bends clockwise seen from +z).
   * **r-z**: a weighted straight line ``z = z0 + cot(theta) s`` with ``s`` [cm] the
     transverse arc length from the PCA (the chord ``L`` to the hit times the series of ``2
     asin(u / 2) / u``, ``u = rho L``, to ``u^4``: ``1 + u^2 / 24 + 3 u^4 / 640``, relative
     error < 3e-5 for pT > 0.3 GeV); a disk hit's error in z is ``sigma_r |cot theta|`` (cot
     theta from its first and last hits).  ``eta = asinh(cot theta)``, ``z0`` [cm] the z of
     the PCA.
   * ``chi2`` = the circle's sum of squared hit distances / ``sigma_rphi^2`` plus the line's
     sum of squared z residuals / their errors^2 (``2 n - 5`` degrees of freedom).

   **Approximations** (issue 19 asks for the broken-line or Riemann fit): no multiple
   scattering in the errors (the hltemu simulation has no material either), no beam-spot
   constraint, no covariance matrix, errors from the pitch rather than from the cluster, and
   the circle and line are fitted one after the other (the line uses the circle's arc lengths).

4. **Quality** (CMSSW ``trackQualityCuts``): a triplet is kept when ``|d0| <
   triplet_max_tip`` (0.3 cm), ``|z0| < triplet_max_zip`` (12 cm) and ``pT >
   triplet_min_pt`` (0.5 GeV); an n-tuplet of 4 or 5 hits with the ``quadruplet_*`` cuts
   (0.5 cm, 12 cm, 0.3 GeV).  CMSSW's pT-dependent chi2 cut (``chi2Scale`` x polynomial in
   pT) is calibrated for the broken-line fit's chi2 with multiple scattering, which this fit
   does not have; instead ``chi2 < max_chi2`` (9), our choice on the built-in sample (10 ttbar
   events at pileup 50): it keeps 100% of the triplets and 99.9% of the quadruplets whose hits
   all come from one particle and removes 48% of the other triplets (with errors of pitch /
   sqrt(12), several times the toy detector's resolution, true tracks have chi2 / dof ~ 0.1).
   A degenerate fit drops the n-tuplet: all hits at one radius or no defined direction
   (Karimaki's ``C_rr`` or both ``q1``, ``q2`` zero), ``1 - 4 delta kappa <= 0``, zero
   curvature (a straight line in r-phi), the last hit's ``s`` not above the first's, a zero
   error (a disk hit and ``cot theta`` 0), all hits at one ``s``, or a non-finite chi2.

5. **Cleaning** of shared hits (Patatrack's duplicate removers, simplified to one rule): the
   event's n-tuplets that pass 4 are ranked by more hits first, then smaller chi2, then
   smaller ``|d0|``, then lower hit rows; walking down that ranking, an n-tuplet becomes a
   track unless one of its hits belongs to a track already.  So no two tracks share a hit and
   a sub-path of a longer n-tuplet never survives it.

Outputs
-------
``pixeltracks``, per event, ordered by ``hit0`` (unique: tracks share no hit):

=============== ======= ================================================================
column          unit    meaning
=============== ======= ================================================================
pt              GeV     transverse momentum from the fitted curvature
eta             \\-      pseudorapidity, ``asinh(cot theta)``
phi             rad     direction at the PCA, in (-pi, pi]
d0              cm      signed transverse impact parameter (CMS sign, see the fit)
z0              cm      z at the PCA
chi2            \\-      chi2 of the circle and line fits (``2 n_hits - 5`` dof)
charge          \\-      +1 or -1 (int32), from the sense of the bending
n_hits          \\-      3, 4 or 5 (int32)
hit0 ... hit4   \\-      PixelHit rows (within the event) inner to outer, -1 when absent
sim_index       \\-      truth (when PixelHit has ``sim_index``): the GenPart row of at least
                        75% of the hits (issue 19's matching rule), -1 if none
=============== ======= ================================================================

Backends
--------
``reference`` (:func:`tracks_reference`) is written from the rules above for clarity and
imports nothing from :mod:`hltemu.kernels.pixeltracks`: per event, a dict of cells by inner
hit, the triplet cut as the formulas read (``math.hypot``), a recursive depth-first search,
Karimaki's fit with centred moments and ``atan2`` for phi, the line fit in centred form,
``sorted`` for the ranking, a set of used hits, and its own truth match.  ``cpu`` runs
:mod:`hltemu.kernels.pixeltracks` with Numba (``prange`` over cells, candidates and events),
``cuda`` the same device functions one thread per cell, candidate or event (counts, prefix
sums, then fills: no atomics, no buffer to overflow).  The ranking of step 5 is a sort with
``xp``.  In the kernels every arithmetic operation that decides is exactly rounded and done in
the same order on both targets, so cpu and cuda give the same tracks and the same bits for
pt, d0, z0 and chi2 (eta and phi come from NumPy's or CuPy's ``arcsinh`` and ``arctan2``: 1e-12
relative).

The reference rounds differently (other formulas for the same quantities), so against it the
discrete output (which tracks, n_hits, charge, the hit rows and their order, sim_index) is
checked exactly and the floats within: pt 1e-9 relative; eta, phi (modulo 2 pi) 1e-11; d0,
z0 1e-10 cm; chi2 1e-9 absolute (kept tracks have chi2 < 9).  Measured largest differences
on the built-in sample (4,996 tracks): pt 2e-11 relative (a 2.4 TeV track), eta 3e-14, phi
2e-13, d0 7e-13 cm, z0 1e-12 cm, chi2 6e-12; random helix events alike.  A cut value or
ranking key within ~1e-12 relative of its threshold or of a rival's could in principle decide
differently; none has been seen.

Measured (2026-11-29, the built-in sample: 10 ttbar events at pileup 50, default doublets and
config, cpu = reference): 500 tracks per event (1,319 triplets, 3,384
quadruplets, 293 of 5 hits in all); 88.2% of the tracks have all their hits from one GenPart
(triplets 55.5%, quadruplets 99.9%, 5 hits 100%); of the charged particles with pT > 0.9
GeV, |eta| < 2.5, produced within 0.2 cm of the beam line and with hits on >= 3 layers,
97.8% are found (3,254 particles), none twice.  Against the matched particle's pT, ``pT /
pT_true - 1`` has median 1e-5 and a central-68% half width of 0.87% (0.52%, 0.80%, 1.3%,
3.2% for true pT 0.5-0.9, 0.9-2, 2-5, > 5 GeV; 6.6% for triplets, 0.57% for quadruplets);
eta 1.2e-4, phi 0.54 mrad, z0 - vz 34 um (same measure); the charge is right for every
matched track.  The cpu stage runs at ~90 events/s on 2 shared cores at this pileup.

Needs ``PixelHit`` (``x, y, z`` [cm], ``layer``; ``sim_index`` if present) and ``doublets``
(``inner``, ``outer``: PixelHit rows within the event, as stage ``doublets`` gives them, in any
order).  A missing column, a non-finite coordinate, a layer id or a hit row out of range is an
error naming the collection, the column and the row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from hltemu.backends import Backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError, param
from hltemu.geometry import (
    BARREL_LAYERS,
    C_LIGHT,
    N_PIXEL_LAYERS,
    Geometry,
    default_geometry,
    is_barrel_layer,
)
from hltemu.ops import THREADS_PER_BLOCK, blocks
from hltemu.pipeline import PipelineError, Stage, register
from hltemu.stages.antikt import _check_columns, _check_finite
from hltemu.xpsafe import any_true, bincount, event_index, item


@dataclass(frozen=True)
class PixelTracksConfig:
    """Stage ``pixeltracks``: Patatrack's cellular automaton on the doublets, n-tuplets of 3-5
    hits, a circle + line fit, quality cuts and shared-hit cleaning (rules in
    :mod:`hltemu.stages.pixeltracks`).  Defaults are CMSSW's (``CAHitNtupletCUDA``)."""

    ptmin: float = param(0.9, "GeV", "ptmin of the r-z alignment cut (CMSSW ptmin)")
    ca_theta_cut_barrel: float = param(
        0.002, "GeV rad", "largest r-z kink times p_min when the middle hit is on a barrel "
        "layer (CAThetaCutBarrel)")
    ca_theta_cut_forward: float = param(
        0.003, "GeV rad", "the same when the middle hit is on a disk (CAThetaCutForward)")
    dca_cut_inner_triplet: float = param(
        0.15, "cm", "largest distance of the triplet's r-phi circle from the beam line when "
        "its first hit is on the innermost barrel layer (dcaCutInnerTriplet)")
    dca_cut_outer_triplet: float = param(
        0.25, "cm", "the same for the other triplets (dcaCutOuterTriplet)")
    hard_curv_cut: float = param(0.0328, "1/cm", "largest curvature of the triplet's r-phi "
                                 "circle (hardCurvCut; 0.35 GeV in 3.8 T)")
    min_hits_per_ntuplet: int = param(3, "", "fewest hits of an n-tuplet (3 to 5)")
    start_layers: tuple = param((0, 1, 4, 7), "", "pixel layer ids whose cells start the "
                                "n-tuplet search (BPix1, BPix2, first disks)")
    triplet_max_tip: float = param(0.3, "cm", "triplets: |d0| below this (tripletMaxTip)")
    triplet_min_pt: float = param(0.5, "GeV", "triplets: pT above this (tripletMinPt)")
    triplet_max_zip: float = param(12.0, "cm", "triplets: |z0| below this (tripletMaxZip)")
    quadruplet_max_tip: float = param(0.5, "cm", "4-5 hits: |d0| below this "
                                      "(quadrupletMaxTip)")
    quadruplet_min_pt: float = param(0.3, "GeV", "4-5 hits: pT above this (quadrupletMinPt)")
    quadruplet_max_zip: float = param(12.0, "cm", "4-5 hits: |z0| below this "
                                      "(quadrupletMaxZip)")
    max_chi2: float = param(9.0, "", "largest chi2 of the fit (hit errors pitch / sqrt(12), "
                            "no multiple scattering; not CMSSW's chi2 cut)")

    def __post_init__(self) -> None:
        for name in ("ptmin", "ca_theta_cut_barrel", "ca_theta_cut_forward",
                     "dca_cut_inner_triplet", "dca_cut_outer_triplet", "hard_curv_cut",
                     "triplet_max_tip", "triplet_min_pt", "triplet_max_zip",
                     "quadruplet_max_tip", "quadruplet_min_pt", "quadruplet_max_zip",
                     "max_chi2"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"[pixeltracks] {name} must be a finite number >= 0, got "
                                  f"{value!r}")
        from hltemu.kernels.pixeltracks import MAX_HITS

        if not 3 <= self.min_hits_per_ntuplet <= MAX_HITS:
            raise ConfigError(f"[pixeltracks] min_hits_per_ntuplet must be 3 to {MAX_HITS}, "
                              f"got {self.min_hits_per_ntuplet}")
        bad = [v for v in self.start_layers if not (isinstance(v, int)
                                                    and 0 <= v < N_PIXEL_LAYERS)]
        if bad or not self.start_layers:
            raise ConfigError(f"[pixeltracks] start_layers must be pixel layer ids 0-"
                              f"{N_PIXEL_LAYERS - 1} (0-3 barrel, 4-6 disks +z, 7-9 disks -z),"
                              f" at least one; got {self.start_layers!r}")


#: PixelHit columns the stage reads (``sim_index`` too when present).
HIT_COLUMNS: tuple[str, ...] = ("x", "y", "z", "layer")
#: doublets columns the stage reads.
DOUBLET_COLUMNS: tuple[str, ...] = ("inner", "outer")


def hit_columns() -> tuple[str, ...]:
    """``hit0``, ``hit1``, ...: one per possible hit of a track."""
    from hltemu.kernels.pixeltracks import MAX_HITS

    return tuple(f"hit{i}" for i in range(MAX_HITS))


# -- the cut tables ------------------------------------------------------------------------------
def cut_vector(cfg: PixelTracksConfig, geometry: Geometry) -> np.ndarray:
    """The kernels' ``cuts`` vector (:mod:`hltemu.kernels.pixeltracks`, ``CUT_*``)."""
    from hltemu.kernels import pixeltracks as K

    c = np.zeros(K.N_CUTS, dtype=np.float64)
    c[K.CUT_PTMIN] = cfg.ptmin
    c[K.CUT_THETA_BARREL] = cfg.ca_theta_cut_barrel
    c[K.CUT_THETA_FORWARD] = cfg.ca_theta_cut_forward
    c[K.CUT_DCA_INNER] = cfg.dca_cut_inner_triplet
    c[K.CUT_DCA_OUTER] = cfg.dca_cut_outer_triplet
    c[K.CUT_HARD_CURV] = cfg.hard_curv_cut
    c[K.CUT_TRIPLET_MAX_TIP] = cfg.triplet_max_tip
    c[K.CUT_TRIPLET_MIN_PT] = cfg.triplet_min_pt
    c[K.CUT_TRIPLET_MAX_ZIP] = cfg.triplet_max_zip
    c[K.CUT_QUADRUPLET_MAX_TIP] = cfg.quadruplet_max_tip
    c[K.CUT_QUADRUPLET_MIN_PT] = cfg.quadruplet_min_pt
    c[K.CUT_QUADRUPLET_MAX_ZIP] = cfg.quadruplet_max_zip
    c[K.CUT_SIGMA_RPHI] = geometry.pixel.pitch_x / math.sqrt(12.0)
    c[K.CUT_SIGMA_Z] = geometry.pixel.pitch_y / math.sqrt(12.0)
    c[K.CUT_SIGMA_R] = geometry.pixel.pitch_y / math.sqrt(12.0)
    c[K.CUT_PT_PER_CURVATURE] = 0.01 * C_LIGHT * geometry.b_field
    c[K.CUT_MAX_CHI2] = cfg.max_chi2
    return c


def layer_flags(cfg: PixelTracksConfig) -> np.ndarray:
    """Per pixel layer id (uint8): start layer, barrel layer, innermost barrel layer."""
    from hltemu.kernels import pixeltracks as K

    layers = np.arange(N_PIXEL_LAYERS)
    flags = np.where(is_barrel_layer(layers), K.FLAG_BARREL, 0)
    flags[BARREL_LAYERS[0]] |= K.FLAG_INNERMOST
    flags[list(cfg.start_layers)] |= K.FLAG_START
    return flags.astype(np.uint8)


class Prepared(NamedTuple):
    """:func:`prepare`'s tables, on the host and on the backend."""

    cuts: np.ndarray
    flags: np.ndarray
    cuts_dev: Any
    flags_dev: Any


def prepare(cfg: PixelTracksConfig, backend: Backend) -> Prepared:
    """The cut vector (with the geometry's field and pitches) and the layer flags, uploaded
    once to ``backend``."""
    cuts, flags = cut_vector(cfg, default_geometry()), layer_flags(cfg)
    return Prepared(cuts, flags, backend.to_device(cuts), backend.to_device(flags))


# -- inputs --------------------------------------------------------------------------------------
class Inputs(NamedTuple):
    """The stage's inputs on one backend: hits by batch row (float64 ``x, y, z, r`` [cm], int32
    ``layer``, their ``offsets`` and int32 ``sim_index`` or None), and the cells (int64 batch
    hit rows ``inner``, ``outer``) sorted by (inner, outer) with ``hit_cells``, the CSR of the
    cells by inner hit (``n_hits + 1``)."""

    offsets: Any
    x: Any
    y: Any
    z: Any
    r: Any
    layer: Any
    sim_index: Any
    inner: Any
    outer: Any
    hit_cells: Any

    @property
    def n_events(self) -> int:
        return int(self.offsets.shape[0]) - 1


def _fail_at(xp: Any, bad: Any, name: str, col: str, values: Any, why: str) -> None:
    if any_true(bad):
        row = item(xp.flatnonzero(bad)[0])
        raise PipelineError(f"stage 'pixeltracks': collection {name!r} column {col!r} has "
                            f"{item(values[row])!r} at row {row}; {why}")


def check_inputs(batch: EventBatch) -> Inputs:
    """The checked inputs of the stage (errors name collection, column and row)."""
    xp = batch.backend.xp
    hits, doublets = batch["PixelHit"], batch["doublets"]
    _check_columns(hits, "PixelHit", HIT_COLUMNS, "pixeltracks")
    _check_columns(doublets, "doublets", DOUBLET_COLUMNS, "pixeltracks")
    if doublets.n_events != hits.n_events:
        raise PipelineError(f"stage 'pixeltracks': 'doublets' has {doublets.n_events} events, "
                            f"'PixelHit' {hits.n_events}")
    coords = []
    for col in ("x", "y", "z"):
        values = xp.ascontiguousarray(xp.asarray(hits[col], dtype=xp.float64))
        _check_finite(xp, values, "PixelHit", col, "pixeltracks")
        coords.append(values)
    layer = xp.ascontiguousarray(xp.asarray(hits["layer"], dtype=xp.int32))
    _fail_at(xp, (layer < 0) | (layer >= N_PIXEL_LAYERS), "PixelHit", "layer", layer,
             f"valid layer ids are 0-{N_PIXEL_LAYERS - 1}")
    offsets = xp.asarray(hits.offsets, dtype=xp.int64)
    event = event_index(doublets.offsets, doublets.size, xp)
    count = (offsets[1:] - offsets[:-1])[event]
    rows = []
    for col in DOUBLET_COLUMNS:
        local = xp.asarray(doublets[col], dtype=xp.int64)
        _fail_at(xp, (local < 0) | (local >= count), "doublets", col, local,
                 "it must be a PixelHit row within the doublet's event")
        rows.append(local + offsets[:-1][event])
    inner, outer = rows
    order = xp.lexsort(xp.stack([outer, inner])) if inner.shape[0] else inner
    inner = xp.ascontiguousarray(inner[order])
    outer = xp.ascontiguousarray(outer[order])
    hit_cells = xp.searchsorted(inner, xp.arange(hits.size + 1, dtype=xp.int64), side="left")
    x, y, z = coords
    sim = xp.asarray(hits["sim_index"], dtype=xp.int32) if "sim_index" in hits else None
    return Inputs(offsets, x, y, z, xp.sqrt(x * x + y * y), layer, sim, inner, outer,
                  hit_cells.astype(xp.int64))


class Candidates(NamedTuple):
    """The kept n-tuplets of a batch: ``hits`` (int64 batch rows, ``(n, MAX_HITS)``, -1
    padded), ``n_hits`` (int32) and fit results ``par`` (``(n, N_PAR)``), ordered by
    (event, hit0)."""

    hits: Any
    n_hits: Any
    par: Any


# -- reference: the rules written out, independent of hltemu.kernels.pixeltracks ---------------
class ReferenceRules(NamedTuple):
    """What the reference needs besides the config: layer kinds and the fit's constants."""

    cfg: PixelTracksConfig
    innermost: int  # the innermost barrel layer id (the inner dca cut)
    sigma_rphi: float  # cm
    sigma_z: float  # cm, barrel hits
    sigma_r: float  # cm, disk hits
    pt_per_curvature: float  # GeV cm: pT = this / |curvature|


class ReferenceHit(NamedTuple):
    """A hit as the reference sees it: ``x, y, z, r`` [cm] and its pixel layer id."""

    x: float
    y: float
    z: float
    r: float
    layer: int


class ReferenceFit(NamedTuple):
    """A fitted n-tuplet (rule 3)."""

    curvature: float  # 1/cm, > 0 bends clockwise seen from +z
    phi: float  # rad, direction at the PCA, in (-pi, pi]
    d0: float  # cm
    cot_theta: float
    z0: float  # cm
    chi2: float
    pt: float  # GeV


def reference_rules(cfg: PixelTracksConfig) -> ReferenceRules:
    """The reference's constants: hit errors pitch / sqrt(12) and ``pT = 0.01 C B / |rho|``
    with the default geometry's pitches and field."""
    pixel, b_field = default_geometry().pixel, default_geometry().b_field
    return ReferenceRules(cfg, BARREL_LAYERS[0], pixel.pitch_x / math.sqrt(12.0),
                          pixel.pitch_y / math.sqrt(12.0), pixel.pitch_y / math.sqrt(12.0),
                          0.01 * C_LIGHT * b_field)


def _beam_line_distance(p1: ReferenceHit, p2: ReferenceHit, p3: ReferenceHit) -> float:
    """Distance [cm] of the beam line (the origin of x-y) from the circle through the three
    hits in x-y: the origin's power ``|C|^2 - R^2`` over ``|C| + R``; from the straight line
    through them when they are collinear."""
    ax, ay = p2.x - p1.x, p2.y - p1.y
    bx, by = p3.x - p1.x, p3.y - p1.y
    cross = ax * by - ay * bx
    if cross == 0.0:
        return abs(p1.x * by - p1.y * bx) / math.hypot(bx, by)
    # u = C - p1 is equidistant from p1, p2, p3: u . a = |a|^2 / 2, u . b = |b|^2 / 2
    a2, b2 = ax * ax + ay * ay, bx * bx + by * by
    ux = (a2 * by - b2 * ay) / (2.0 * cross)
    uy = (b2 * ax - a2 * bx) / (2.0 * cross)
    radius = math.hypot(ux, uy)
    centre = math.hypot(p1.x + ux, p1.y + uy)
    power = p1.x * p1.x + p1.y * p1.y + 2.0 * (p1.x * ux + p1.y * uy)  # |p1 + u|^2 - |u|^2
    return abs(power) / (centre + radius)


def triplet_passes_reference(h1: ReferenceHit, h2: ReferenceHit, h3: ReferenceHit,
                             rules: ReferenceRules) -> bool:
    """Rule 1 for hits ``h1`` (inner), ``h2``, ``h3`` (outer): r-z alignment, hardCurvCut and
    the dca of the r-phi circle to the beam line."""
    cfg = rules.cfg
    # r-z alignment: kink * p_min <= theta_cut, multiplied out (no division by |r1 - r3|)
    theta_cut = (cfg.ca_theta_cut_barrel if is_barrel_layer(h2.layer)
                 else cfg.ca_theta_cut_forward)
    d13 = math.hypot(h1.r - h3.r, h1.z - h3.z)
    area2 = abs(h1.z * (h2.r - h3.r) + h2.z * (h3.r - h1.r) + h3.z * (h1.r - h2.r))
    if area2 * cfg.ptmin * d13 > theta_cut * d13 ** 2 * abs(h1.r - h3.r):
        return False
    # hardCurvCut: curvature 2 |a x b| / (|a| |b| |b - a|) of the circle through the hits
    ax, ay = h2.x - h1.x, h2.y - h1.y
    bx, by = h3.x - h1.x, h3.y - h1.y
    sides = math.hypot(ax, ay) * math.hypot(bx, by) * math.hypot(h3.x - h2.x, h3.y - h2.y)
    if sides == 0.0:  # two hits at one (x, y): no circle
        return False
    if 2.0 * abs(ax * by - ay * bx) / sides > cfg.hard_curv_cut:
        return False
    dca_cut = (cfg.dca_cut_inner_triplet if h1.layer == rules.innermost
               else cfg.dca_cut_outer_triplet)
    return _beam_line_distance(h1, h2, h3) < dca_cut


def _arc_length(h: ReferenceHit, pca: tuple[float, float], curvature: float) -> float:
    """Transverse arc length [cm] from the PCA to hit ``h``: the chord ``L`` times ``2 asin(u /
    2) / u`` (``u = curvature L``) as its series to ``u^4``: ``1 + u^2 / 24 + 3 u^4 / 640``."""
    chord = math.hypot(h.x - pca[0], h.y - pca[1])
    u2 = (curvature * chord) ** 2
    return chord * (1.0 + u2 / 24.0 + 3.0 * u2 * u2 / 640.0)


def fit_reference(hits: list[ReferenceHit], rules: ReferenceRules) -> ReferenceFit | None:
    """Rule 3: Karimaki's circle fit, then the weighted line fit in s-z; None when degenerate."""
    n = len(hits)
    # -- r-phi: Karimaki, equal weights; q = x^2 + y^2
    xs, ys = [h.x for h in hits], [h.y for h in hits]
    qs = [x * x + y * y for x, y in zip(xs, ys, strict=True)]
    xm, ym, qm = sum(xs) / n, sum(ys) / n, sum(qs) / n

    def cov(u: list[float], um: float, v: list[float], vm: float) -> float:
        return sum((a - um) * (b - vm) for a, b in zip(u, v, strict=True)) / n

    cxx, cyy, cxy = cov(xs, xm, xs, xm), cov(ys, ym, ys, ym), cov(xs, xm, ys, ym)
    cxq, cyq, cqq = cov(xs, xm, qs, qm), cov(ys, ym, qs, qm), cov(qs, qm, qs, qm)
    q1 = cqq * cxy - cxq * cyq
    q2 = cqq * (cxx - cyy) - cxq * cxq + cyq * cyq
    if not (cqq > 0.0 and (q1 != 0.0 or q2 != 0.0)):  # all hits at one radius, or no direction
        return None
    phi = 0.5 * math.atan2(2.0 * q1, q2)  # tan(2 phi) = 2 q1 / q2, phi in (-pi/2, pi/2]
    kappa = (math.sin(phi) * cxq - math.cos(phi) * cyq) / cqq
    delta = -kappa * qm + math.sin(phi) * xm - math.cos(phi) * ym
    chord = (xs[-1] - xs[0], ys[-1] - ys[0])
    if chord[0] * math.cos(phi) + chord[1] * math.sin(phi) < 0.0:
        phi, kappa, delta = phi + math.pi, -kappa, -delta  # the track runs first to last hit
        if phi > math.pi:
            phi -= 2.0 * math.pi
    disc = 1.0 - 4.0 * delta * kappa
    if not disc > 0.0:
        return None
    rho = 2.0 * kappa / math.sqrt(disc)
    d = 2.0 * delta / (1.0 + math.sqrt(disc))  # Karimaki's d: PCA = d (sin phi, -cos phi)
    if rho == 0.0:
        return None
    sin_phi, cos_phi = math.sin(phi), math.cos(phi)
    pca = (d * sin_phi, -d * cos_phi)
    d0 = -pca[0] * sin_phi + pca[1] * cos_phi  # CMS sign: PCA . (-sin phi, cos phi)
    chi2_circle = 0.0
    for h, q in zip(hits, qs, strict=True):
        # Karimaki's eps = rho/2 (|p - C|^2 - R^2); the signed distance from the circle is the
        # root of rho/2 dist^2 + dist = eps
        eps = 0.5 * rho * q - (1.0 + rho * d) * (h.x * sin_phi - h.y * cos_phi) \
            + 0.5 * rho * d * d + d
        dist = 2.0 * eps / (1.0 + math.sqrt(max(1.0 + 2.0 * rho * eps, 0.0)))
        chi2_circle += (dist / rules.sigma_rphi) ** 2
    # -- r-z: z = z0 + cot(theta) s, weights 1 / sigma^2
    s = [_arc_length(h, pca, rho) for h in hits]
    if not s[-1] > s[0]:
        return None
    cot_first_last = abs((hits[-1].z - hits[0].z) / (s[-1] - s[0]))
    sigma = [rules.sigma_z if is_barrel_layer(h.layer) else rules.sigma_r * cot_first_last
             for h in hits]
    if not all(e > 0.0 for e in sigma):
        return None
    w = [1.0 / (e * e) for e in sigma]
    sw = sum(w)
    sm = sum(wi * si for wi, si in zip(w, s, strict=True)) / sw
    zm = sum(wi * h.z for wi, h in zip(w, hits, strict=True)) / sw
    sss = sum(wi * (si - sm) ** 2 for wi, si in zip(w, s, strict=True))
    ssz = sum(wi * (si - sm) * (h.z - zm) for wi, si, h in zip(w, s, hits, strict=True))
    if not sss > 0.0:
        return None
    cot = ssz / sss
    z0 = zm - cot * sm
    chi2_line = sum(wi * (h.z - z0 - cot * si) ** 2 for wi, si, h in zip(w, s, hits,
                                                                          strict=True))
    chi2 = chi2_circle + chi2_line
    if not math.isfinite(chi2):
        return None
    return ReferenceFit(rho, phi, d0, cot, z0, chi2, rules.pt_per_curvature / abs(rho))


def quality_reference(n_hits: int, fit: ReferenceFit, cfg: PixelTracksConfig) -> bool:
    """Rule 4."""
    if n_hits == 3:
        tip, min_pt, zip_ = cfg.triplet_max_tip, cfg.triplet_min_pt, cfg.triplet_max_zip
    else:
        tip, min_pt, zip_ = cfg.quadruplet_max_tip, cfg.quadruplet_min_pt, cfg.quadruplet_max_zip
    return (abs(fit.d0) < tip and abs(fit.z0) < zip_ and fit.pt > min_pt
            and fit.chi2 < cfg.max_chi2)


def ntuplets_reference(hits: list[ReferenceHit], cells: list[tuple[int, int]],
                       rules: ReferenceRules) -> list[list[int]]:
    """Rules 1 and 2 for one event: the hit lists (inner to outer) of its n-tuplets, found
    depth first from the start cells along outer neighbours (ascending)."""
    cfg = rules.cfg
    starting_at: dict[int, list[int]] = {}  # inner hit -> outer hits of its cells, ascending
    for a, b in sorted(set(cells)):
        starting_at.setdefault(a, []).append(b)
    neighbours: dict[tuple[int, int], list[int]] = {}

    def outer_neighbours(a: int, b: int) -> list[int]:
        """Outer hits ``o`` of the cells (b, o) that are neighbours of cell (a, b)."""
        if (a, b) not in neighbours:
            neighbours[a, b] = [o for o in starting_at.get(b, [])
                                if triplet_passes_reference(hits[a], hits[b], hits[o], rules)]
        return neighbours[a, b]

    found: list[list[int]] = []

    def extend(path: list[int]) -> None:
        following = outer_neighbours(path[-2], path[-1])
        if not following or len(path) == 5:  # 5 hits: 4 cells, Patatrack's depth
            if len(path) >= cfg.min_hits_per_ntuplet:
                found.append(path)
            return
        for o in following:
            extend(path + [o])

    for a in sorted(starting_at):
        if hits[a].layer in cfg.start_layers:
            for b in starting_at[a]:
                extend([a, b])
    return found


def event_reference(hits: list[ReferenceHit], cells: list[tuple[int, int]],
                    rules: ReferenceRules) -> list[tuple[list[int], ReferenceFit]]:
    """One event: its tracks as (hit rows within the event, fit), ordered by the first hit."""
    candidates = []
    for path in ntuplets_reference(hits, cells, rules):  # rules 1-4
        fit = fit_reference([hits[h] for h in path], rules)
        if fit is not None and quality_reference(len(path), fit, rules.cfg):
            candidates.append((path, fit))
    ranked = sorted(candidates, key=lambda c: (-len(c[0]), c[1].chi2, abs(c[1].d0), c[0]))
    used: set[int] = set()
    tracks = []
    for path, fit in ranked:  # rule 5
        if used.isdisjoint(path):
            used.update(path)
            tracks.append((path, fit))
    return sorted(tracks, key=lambda t: t[0][0])


def _truth_reference(path: list[int], sim: list[int]) -> int:
    """The GenPart row of at least 75% of the hits of ``path``, -1 if none."""
    for particle in sorted({sim[h] for h in path if sim[h] >= 0}):
        if 4 * sum(sim[h] == particle for h in path) >= 3 * len(path):
            return particle
    return -1


def tracks_reference(inp: Inputs, cfg: PixelTracksConfig) -> Collection:
    """The ``pixeltracks`` collection, one event at a time by :func:`event_reference`."""
    rules = reference_rules(cfg)
    offsets = inp.offsets.tolist()
    x, y, z, layer = inp.x.tolist(), inp.y.tolist(), inp.z.tolist(), inp.layer.tolist()
    sim = None if inp.sim_index is None else inp.sim_index.tolist()
    inner, outer = inp.inner.tolist(), inp.outer.tolist()  # batch rows
    cell_bounds = np.searchsorted(inp.inner, inp.offsets).tolist()  # cells of event e
    names = [f"hit{i}" for i in range(5)]  # at most 5 hits (rule 2)
    rows: dict[str, list] = {c: [] for c in ("pt", "eta", "phi", "d0", "z0", "chi2", "charge",
                                             "n_hits", *names)}
    truth: list[int] = []
    counts = []
    for e in range(inp.n_events):
        lo, hi = offsets[e], offsets[e + 1]
        hits = [ReferenceHit(x[i], y[i], z[i], math.hypot(x[i], y[i]), layer[i])
                for i in range(lo, hi)]
        cells = [(inner[c] - lo, outer[c] - lo) for c in range(cell_bounds[e],
                                                               cell_bounds[e + 1])]
        tracks = event_reference(hits, cells, rules)
        event_sim = sim[lo:hi] if sim is not None else []
        counts.append(len(tracks))
        for path, fit in tracks:
            for col, value in (("pt", fit.pt), ("eta", math.asinh(fit.cot_theta)),
                               ("phi", fit.phi), ("d0", fit.d0), ("z0", fit.z0),
                               ("chi2", fit.chi2), ("charge", 1 if fit.curvature > 0 else -1),
                               ("n_hits", len(path))):
                rows[col].append(value)
            for i, col in enumerate(names):
                rows[col].append(path[i] if i < len(path) else -1)
            if sim is not None:
                truth.append(_truth_reference(path, event_sim))
    cols = {c: np.array(v, dtype=np.float64 if c in ("pt", "eta", "phi", "d0", "z0", "chi2")
                        else np.int32) for c, v in rows.items()}
    if sim is not None:
        cols["sim_index"] = np.array(truth, dtype=np.int32)
    return Collection.from_counts(np.array(counts, dtype=np.int64), cols)


# -- cpu and cuda: the kernels of hltemu.kernels.pixeltracks -------------------------------------
class Kernels(NamedTuple):
    """One backend's kernels and how to launch one over ``n`` items: ``launch(kernel, n,
    *args)``."""

    neighbours: Any
    ntuplets: Any
    fit: Any
    clean: Any
    launch: Any


def _launch_cpu(kernel: Any, n: int, *args: Any) -> None:
    kernel(*args)


def _launch_cuda(kernel: Any, n: int, *args: Any) -> None:
    if n:
        kernel[blocks(n), THREADS_PER_BLOCK](*args)


def _cpu_kernels() -> Kernels:
    from hltemu.kernels import pixeltracks as K

    return Kernels(K.neighbours_cpu, K.ntuplets_cpu, K.fit_cpu, K.clean_cpu, _launch_cpu)


def _cuda_kernels() -> Kernels:
    from hltemu.kernels import pixeltracks as K

    return Kernels(K.neighbours_cuda, K.ntuplets_cuda, K.fit_cuda, K.clean_cuda, _launch_cuda)


def _offsets(xp: Any, counts: Any) -> Any:
    """CSR offsets (``n + 1``, int64) of per-item ``counts``."""
    offsets = xp.zeros(int(counts.shape[0]) + 1, dtype=xp.int64)
    xp.cumsum(counts, out=offsets[1:])
    return offsets


def _neighbour_lists(inp: Inputs, prep: Prepared, xp: Any, k: Kernels) -> tuple[Any, Any]:
    """``(nb_offsets, nb)``: every cell's outer neighbours (count, prefix sum, fill)."""
    n_cells = int(inp.inner.shape[0])
    args = (inp.inner, inp.outer, inp.hit_cells, inp.x, inp.y, inp.z, inp.r, inp.layer,
            prep.flags_dev, prep.cuts_dev)
    counts = xp.zeros(n_cells, dtype=xp.int64)
    k.launch(k.neighbours, n_cells, *args, xp.zeros(n_cells + 1, dtype=xp.int64),
             xp.zeros(1, dtype=xp.int64), False, counts)
    nb_offsets = _offsets(xp, counts)
    nb = xp.zeros(max(item(nb_offsets[-1]), 1), dtype=xp.int64)  # never a 0-size kernel arg
    k.launch(k.neighbours, n_cells, *args, nb_offsets, nb, True, counts)
    return nb_offsets, nb


def _ntuplets(inp: Inputs, prep: Prepared, min_hits: int, nb_offsets: Any, nb: Any, xp: Any,
              k: Kernels) -> tuple[Any, Any]:
    """``(tup_hits, tup_n)``: the n-tuplets of every start cell (count, prefix sum, fill)."""
    from hltemu.kernels.pixeltracks import MAX_HITS

    n_cells = int(inp.inner.shape[0])
    args = (inp.inner, inp.outer, inp.layer, prep.flags_dev, nb_offsets, nb, min_hits)
    counts = xp.zeros(n_cells, dtype=xp.int64)
    k.launch(k.ntuplets, n_cells, *args, xp.zeros(n_cells + 1, dtype=xp.int64),
             xp.zeros((1, MAX_HITS), dtype=xp.int64), xp.zeros(1, dtype=xp.int32), False,
             counts)
    tup_offsets = _offsets(xp, counts)
    n_cand = item(tup_offsets[-1])
    tup_hits = xp.full((n_cand, MAX_HITS), -1, dtype=xp.int64)
    tup_n = xp.zeros(n_cand, dtype=xp.int32)
    k.launch(k.ntuplets, n_cells, *args, tup_offsets, tup_hits, tup_n, True, counts)
    return tup_hits, tup_n


def _ranked(inp: Inputs, tup_hits: Any, tup_n: Any, par: Any, good: Any, xp: Any
            ) -> tuple[Any, Any]:
    """The good candidates best first within each event (rule 5: more hits, smaller chi2,
    smaller |d0|, lower hit rows) and the CSR offsets of that list by event."""
    from hltemu.kernels.pixeltracks import MAX_HITS, PAR_CHI2, PAR_D0

    rows = xp.flatnonzero(good == 1)
    hit_event = event_index(inp.offsets, int(inp.x.shape[0]), xp)
    if rows.shape[0]:
        keys = [tup_hits[rows, i].astype(xp.float64) for i in range(MAX_HITS - 1, -1, -1)]
        keys += [xp.abs(par[rows, PAR_D0]), par[rows, PAR_CHI2],
                 -tup_n[rows].astype(xp.float64), hit_event[tup_hits[rows, 0]].astype(xp.float64)]
        rows = rows[xp.lexsort(xp.stack(keys))]
    return rows, _offsets(xp, bincount(hit_event[tup_hits[rows, 0]], inp.n_events,
                                       xp)[: inp.n_events])


def candidates_kernels(inp: Inputs, cfg: PixelTracksConfig, prep: Prepared, xp: Any,
                       k: Kernels) -> Candidates:
    """Neighbours, n-tuplets, fits and cleaning with the kernels ``k`` (arrays on ``xp``)."""
    from hltemu.kernels.pixeltracks import N_PAR

    nb_offsets, nb = _neighbour_lists(inp, prep, xp, k)
    tup_hits, tup_n = _ntuplets(inp, prep, cfg.min_hits_per_ntuplet, nb_offsets, nb, xp, k)
    n_cand = int(tup_n.shape[0])
    par = xp.zeros((n_cand, N_PAR), dtype=xp.float64)
    good = xp.zeros(n_cand, dtype=xp.uint8)
    k.launch(k.fit, n_cand, tup_hits, tup_n, inp.x, inp.y, inp.z, inp.layer, prep.flags_dev,
             prep.cuts_dev, par, good)
    order, order_offsets = _ranked(inp, tup_hits, tup_n, par, good, xp)
    used = xp.zeros(int(inp.x.shape[0]), dtype=xp.uint8)
    keep = xp.zeros(n_cand, dtype=xp.uint8)
    if order.shape[0]:
        k.launch(k.clean, inp.n_events, order, order_offsets, tup_hits, tup_n, used, keep)
    kept = xp.flatnonzero(keep == 1)  # candidate order is (event, hit0): that of start cells
    return Candidates(tup_hits[kept], tup_n[kept], par[kept])


# -- the output collection -----------------------------------------------------------------------
def _truth(sim: Any, hits: Any, n_hits: Any, xp: Any) -> Any:
    """Per track the GenPart row of at least 75% of its hits, -1 if none (int32)."""
    n = int(hits.shape[0])
    s = xp.where(hits >= 0, sim[xp.maximum(hits, 0)], -1)
    same = (s[:, :, None] == s[:, None, :]) & (s[:, None, :] >= 0)
    votes = same.sum(axis=2)  # per hit: hits of the track from its particle
    best = xp.argmax(votes, axis=1)
    top = votes[xp.arange(n), best]
    return xp.where(4 * top >= 3 * n_hits, s[xp.arange(n), best], -1).astype(xp.int32)


def track_collection(inp: Inputs, cand: Candidates, xp: Any) -> Collection:
    """The ``pixeltracks`` collection of the kept candidates (any backend's)."""
    from hltemu.kernels import pixeltracks as K

    n = int(cand.n_hits.shape[0])
    event = event_index(inp.offsets, int(inp.x.shape[0]), xp)[cand.hits[:, 0]] if n else \
        xp.zeros(0, dtype=xp.int64)
    par = cand.par
    cols = {
        "pt": par[:, K.PAR_PT], "eta": xp.arcsinh(par[:, K.PAR_COT_THETA]),
        "phi": xp.arctan2(par[:, K.PAR_SIN_PHI], par[:, K.PAR_COS_PHI]),
        "d0": par[:, K.PAR_D0], "z0": par[:, K.PAR_Z0], "chi2": par[:, K.PAR_CHI2],
    }
    cols = {c: xp.ascontiguousarray(v, dtype=xp.float64) for c, v in cols.items()}
    cols["charge"] = xp.where(par[:, K.PAR_CURVATURE] > 0, 1, -1).astype(xp.int32)
    cols["n_hits"] = xp.asarray(cand.n_hits, dtype=xp.int32)
    first = inp.offsets[event]
    for i, name in enumerate(hit_columns()):
        cols[name] = xp.where(cand.hits[:, i] >= 0, cand.hits[:, i] - first, -1).astype(xp.int32)
    if inp.sim_index is not None:
        cols["sim_index"] = _truth(inp.sim_index, cand.hits, cols["n_hits"], xp)
    return Collection(_offsets(xp, bincount(event, inp.n_events, xp)[: inp.n_events]), cols)


# -- the stage -----------------------------------------------------------------------------------
def run_reference(batch: EventBatch, cfg: PixelTracksConfig, prep: Prepared
                  ) -> dict[str, Collection]:
    """Plain Python per event (:func:`tracks_reference`), independent of the kernels."""
    return {"pixeltracks": tracks_reference(check_inputs(batch), cfg)}


def run_cpu(batch: EventBatch, cfg: PixelTracksConfig, prep: Prepared) -> dict[str, Collection]:
    """The Numba kernels, parallel over cells, candidates and events."""
    inp = check_inputs(batch)
    return {"pixeltracks": track_collection(
        inp, candidates_kernels(inp, cfg, prep, np, _cpu_kernels()), np)}


def run_cuda(batch: EventBatch, cfg: PixelTracksConfig, prep: Prepared) -> dict[str, Collection]:
    """The CUDA kernels, one thread per cell, candidate or event; sorting with ``xp``."""
    xp = batch.backend.xp
    inp = check_inputs(batch)
    return {"pixeltracks": track_collection(
        inp, candidates_kernels(inp, cfg, prep, xp, _cuda_kernels()), xp)}


STAGE = register(Stage(
    name="pixeltracks",
    needs=("PixelHit", "doublets"),
    adds=("pixeltracks",),
    config_type=PixelTracksConfig,
    prepare=prepare,
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    doc="pixel tracks from the doublets: Patatrack's cellular automaton, n-tuplets of 3-5 hits, "
        "circle + line fit, quality cuts, shared-hit cleaning",
    in_default_chain=False,
))
