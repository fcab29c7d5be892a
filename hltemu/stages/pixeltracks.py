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

3. **Fit** of each n-tuplet: a weighted least-squares helix fit with the hits' measured
   errors and a multiple-scattering term, giving the parameters, their covariance and a chi2.

   * **Hit errors** [cm], by the cluster's size along local x (``size_x``: r-phi) and y
     (``size_y``: z in the barrel, r on a disk), from the config's tables
     (``hit_error_barrel_rphi``, ``hit_error_barrel_z``, ``hit_error_disk_rphi``,
     ``hit_error_disk_r``; a size beyond a table takes its last entry).  The defaults are the
     rms of ``hit - true crossing`` of hltemu's own simulation (``simulate.tracker``: charge
     along the path through the 285 um sensor, Lorentz drift, 8 um diffusion, pixel noise,
     threshold, ADC, charge-weighted centroid), measured on 150,000 single particles
     (``propagate`` + ``digitize`` with hit efficiency 1; pT log-uniform 0.3-50 GeV, |eta| <
     2.6, vertex z ~ N(0, 3.5 cm); residuals in the module frame; 2026-11-29).  Barrel r-phi
     9.8, 3.6, 2.7 um for size_x 1, 2, >= 3 (83% of the hits have size 2: the Lorentz drift
     shares the charge of every track); barrel z 28.0, 14.6, 4.8, 3.7, 3.4, 3.2 um for size_y
     1 ... >= 6 (a long cluster at large |eta| has a sharp centroid, a one-pixel cluster at
     eta ~ 0 the pitch / sqrt(12) of a box; pitch / sqrt(12) everywhere would be 29 and 43 um);
     disk r-phi 17.9, 19.0, 2.8 um and disk r 23.9, 19.8, 3.6 um (size 1, 2, >= 3; sizes >= 3
     are 0.1% of disk hits).  The residuals have zero mean (< 0.2 um).
   * **Material**: hltemu's simulation has none (no scattering, no energy loss); the config's
     ``radiation_length`` (x / X0 per pixel layer id at normal incidence, default 0 to match)
     adds Highland's scattering (``theta0 = 13.6 MeV / p sqrt(x') (1 + 0.038 ln x)``, beta =
     1, ``x' = x`` times the path length over the normal one: ``sqrt(1 + cot^2 theta)`` in the
     barrel, ``sqrt(1 + cot^2 theta) / |cot theta|`` on a disk; the logarithm at normal
     incidence) at every hit but the last: a kink there moves each later hit ``i`` by the
     kink times ``s_i - s_k`` (``s`` the transverse arc length), in r-phi with variance
     ``theta0^2 (1 + cot^2 theta)`` and in z with ``theta0^2 (1 + cot^2 theta)^2``; p, cot
     theta from the prefit.  These correlated terms join the diagonal hit variances in the
     residuals' covariance ``V`` of each view.
   * **Why this fit.**  The broken-line fit (Blobel, NIM A 566 (2006) 14; Patatrack's
     default) fits the hit offsets and the kinks at the hits with the kinks' prior ``N(0,
     theta0^2)``; integrating the kinks out gives exactly the generalised least squares of
     the helix parameters with the hit covariance ``V`` above, which is also the Riemann fit's
     error model: the same linear model, the same estimate and covariance (Blobel's paper
     shows the broken line equal to the Kalman filter and to the full least squares).  Here it
     is written as that least squares, which keeps the no-material limit of this detector
     (kink variances 0) regular where the broken line's kink weights ``1 / theta0^2`` would
     be infinite.  Like Patatrack's fits the circle and the line are fitted one after the
     other (no r-phi / r-z covariance).
   * **r-phi**: the prefit is Karimaki's closed-form circle fit (V. Karimaki, NIM A 305
     (1991) 187) of the hits with equal weights, *not* constrained to the beam spot:
     curvature ``rho`` [1/cm], direction ``phi`` at the point of closest approach (PCA) to the
     beam line and Karimaki's ``d`` (PCA ``= d (sin phi, -cos phi)``).  Then one
     Gauss-Newton step of the generalised least squares: the residual of hit ``i`` is its
     signed distance from the circle, ``dist_i`` (the root of ``rho/2 dist^2 + dist =
     eps_i``, Karimaki's ``eps_i = rho/2 r_i^2 - (1 + rho d)(x_i sin phi - y_i cos phi) + rho/2
     d^2 + d``), linearised in ``(rho, phi, d)`` (the gradient by implicit differentiation);
     the step ``-(J^T V^-1 J)^-1 J^T V^-1 dist`` is added to the prefit (``phi`` rotated by
     the step; a step of ``|delta phi| >= 0.1`` rad is degenerate), the covariance is
     ``(J^T V^-1 J)^-1`` and the chi2 that of the linearised residuals ``dist + J step``.
     ``pT = 0.01 C B / |rho|`` [GeV] with ``C`` = 0.2998 GeV/(T m) and ``B`` the geometry's
     field [T]; charge ``sign(rho)`` (a positive particle bends clockwise seen from +z), ``q /
     pT = rho / (0.01 C B)``, ``d0 = -d`` (CMS's sign: ``d0 = PCA . (-sin phi, cos phi)``).
     For a triplet the circle goes through the three hits (3 parameters, 3 residuals).
   * **r-z**: the generalised least-squares line ``z = z0 + cot(theta) s`` (exactly linear)
     with ``s`` [cm] the transverse arc length from the fitted circle's PCA (the chord ``L``
     to the hit times the series of ``2 asin(u / 2) / u``, ``u = rho L``, to ``u^8``: ``1 +
     u^2 / 24 + 3 u^4 / 640 + 5 u^6 / 7168 + 35 u^8 / 294912``, relative error < 2e-7 for pT
     > 0.3 GeV); a disk hit measures r, so its error in z is ``sigma_r |cot theta|`` (cot
     theta of the prefit: from the first and last hits' z and prefit ``s``).  ``eta =
     asinh(cot theta)``, ``z0`` [cm] the z of the PCA.
   * ``chi2`` = the circle's plus the line's (``n - 3`` plus ``n - 2``: ``2 n - 5`` degrees
     of freedom).  On the built-in sample the tracks whose hits all come from one particle
     follow the chi2 law of their dof (median 0.47, 1.92, 4.52 for 3, 4, 5 hits; the law's
     0.45, 2.37, 4.35).

   **Remaining approximations**: no beam-spot constraint; one Gauss-Newton step (the change a
   second step would make is of second order in the step, ~1e-4 of the errors); ``p`` and
   ``cot theta`` of the scattering term and the disk errors from the prefit; beta = 1 and no
   energy loss; no correlation between the r-phi and r-z views (nor between a disk hit's r
   error in the two views).

4. **Quality** (CMSSW ``trackQualityCuts``): a triplet is kept when ``|d0| <
   triplet_max_tip`` (0.3 cm), ``|z0| < triplet_max_zip`` (12 cm) and ``pT >
   triplet_min_pt`` (0.5 GeV); an n-tuplet of 4 or 5 hits with the ``quadruplet_*`` cuts
   (0.5 cm, 12 cm, 0.3 GeV).  CMSSW's pT-dependent chi2 cut (``chi2Scale`` x polynomial in
   pT, calibrated on CMS's material) is replaced by ``chi2 < max_chi2`` (20), our choice from
   the chi2 distribution on the built-in sample (10 ttbar events at pileup 50, no chi2 cut):
   of the tracks whose hits all come from one particle it keeps 100% of the triplets (735;
   99.9% have chi2 < 9.1), 99.9% of the quadruplets (3,377; 99.9% below 17.7) and 100% of the
   5-hit tracks (293); it removes 69% of the other triplets (1,126, of which 78% have chi2 >
   9 and 54% > 50).  With the cut, 92.6% of the sample's tracks have all their hits from one
   particle (old fit with pitch / sqrt(12) errors and chi2 < 9: 88.2%).
   A degenerate fit drops the n-tuplet: all hits at one radius or no defined direction
   (Karimaki's ``C_rr`` or both ``q1``, ``q2`` zero), ``1 - 4 delta kappa <= 0``, zero
   curvature (before or after the step), a hit with ``1 + 2 rho eps <= 0``, the last hit's
   ``s`` not above the first's, a covariance ``V`` or normal matrix that is not positive
   definite (e.g. all hits at one ``s``; a disk hit and ``cot theta`` 0), ``|delta phi| >=
   0.1``, or a non-finite chi2.

5. **Cleaning** of shared hits (Patatrack's duplicate removers, simplified to one rule): the
   event's n-tuplets that pass 4 are ranked by more hits first, then smaller chi2, then
   smaller ``|d0|``, then lower hit rows; walking down that ranking, an n-tuplet becomes a
   track unless one of its hits belongs to a track already.  So no two tracks share a hit and
   a sub-path of a longer n-tuplet never survives it.

Outputs
-------
``pixeltracks``, per event, ordered by ``hit0`` (unique: tracks share no hit):

===================== ======= ==========================================================
column                unit    meaning
===================== ======= ==========================================================
pt                    GeV     transverse momentum from the fitted curvature
eta                   \\-      pseudorapidity, ``asinh(cot theta)``
phi                   rad     direction at the PCA, in (-pi, pi]
d0                    cm      signed transverse impact parameter (CMS sign, see the fit)
z0                    cm      z at the PCA
chi2                  \\-      chi2 of the circle and line fits (``2 n_hits - 5`` dof)
cov_qoverpt_qoverpt   1/GeV^2 covariance of the fit (rule 3): q/pT = charge / pt [1/GeV] ...
cov_qoverpt_phi       rad/GeV ... with phi [rad] ...
cov_qoverpt_d0        cm/GeV  ... and d0 [cm] (so sigma(q/pT) = sqrt(cov_qoverpt_qoverpt))
cov_phi_phi           rad^2   phi
cov_phi_d0            rad cm  phi and d0 (correlation: ``cov_phi_d0 / sqrt(cov_phi_phi cov_d0_d0)``)
cov_d0_d0             cm^2    d0
cov_cottheta_cottheta \\-      cot theta (= sinh eta) of the r-z line
cov_cottheta_z0       cm      cot theta and z0
cov_z0_z0             cm^2    z0 (the r-phi and r-z blocks are uncorrelated: fitted apart)
charge                \\-      +1 or -1 (int32), from the sense of the bending
n_hits                \\-      3, 4 or 5 (int32)
hit0 ... hit4         \\-      PixelHit rows (within the event) inner to outer, -1 when absent
sim_index             \\-      truth (when PixelHit has ``sim_index``): the GenPart row of at least
                              75% of the hits (issue 19's matching rule), -1 if none
===================== ======= ==========================================================

Backends
--------
``reference`` (:func:`tracks_reference`) is written from the rules above for clarity and
imports nothing from :mod:`hltemu.kernels.pixeltracks`: per event, a dict of cells by inner
hit, the triplet cut as the formulas read (``math.hypot``), a recursive depth-first search,
Karimaki's prefit with centred moments and ``atan2`` for phi, the residuals and their
gradients with ``math.sin``/``cos``, the least squares with NumPy's ``inv`` and matrix
products (``cholesky`` as the positive-definiteness test), ``sorted`` for the ranking, a set
of used hits, and its own truth match.  ``cpu`` runs :mod:`hltemu.kernels.pixeltracks` with
Numba (``prange`` over cells, candidates and events), ``cuda`` the same device functions one
thread per cell, candidate or event (counts, prefix sums, then fills: no atomics, no buffer to
overflow); there the least squares are Cholesky factorisations and substitutions on
thread-local arrays and phi is rotated by the step with the series of sin and cos (to the 9th
and 8th power: exact to 1e-16 for the steps allowed).  The ranking of step 5 is a sort with
``xp``.  In the kernels every arithmetic operation that decides is exactly rounded and done in
the same order on both targets, so cpu and cuda give the same tracks and the same bits for
pt, d0, z0, chi2 and the covariance (eta and phi come from NumPy's or CuPy's ``arcsinh`` and
``arctan2``: 1e-12 relative).

The reference rounds differently (other formulas for the same quantities), so against it the
discrete output (which tracks, n_hits, charge, the hit rows and their order, sim_index) is
checked exactly and the floats within: pt 1e-9 relative; eta, phi (modulo 2 pi) 1e-11; d0
1e-10 cm; z0 1e-9 cm; chi2 1e-9 relative + 1e-9; the covariance columns 1e-9 relative.
Measured largest differences on the built-in sample (4,758 tracks): pt 4e-13 relative, eta
1.6e-12, phi 3e-15, d0 8e-15 cm, z0 7e-11 cm (2e-10 relative: z0 comes from arc lengths of
the stepped circle, whose phi the two round differently), chi2 1.6e-10 (1.2e-9 relative),
covariance 4e-12 relative; random helix events alike.  A cut value or ranking key within
~1e-10 relative of its threshold or of a rival's could in principle decide differently; none
has been seen.

Measured (2026-11-29, the built-in sample: 10 ttbar events at pileup 50, default doublets and
config, cpu = reference): 476 tracks per event (1,085 triplets, 3,380 quadruplets, 293 of 5
hits in all); 92.6% of the tracks have all their hits from one GenPart (triplets 67.7%,
quadruplets 99.9%, 5 hits 100%); of the charged particles with pT > 0.9 GeV, |eta| < 2.5,
produced within 0.2 cm of the beam line and with hits on >= 3 layers, 97.8% are found (3,254
particles), none twice; fake rate (unmatched tracks with pT > 0.9 GeV, |eta| < 2.5) 8.3%
(old fit: 13.3%).  Against the matched particle's pT, ``pT / pT_true - 1`` has median 7e-6
and a central-68% half width of 0.62% (old fit 0.87%); the charge is right for every matched
track.  Pulls ``(fit - true) / sigma`` of the tracks whose hits all come from one prompt
particle (4,233): Gaussian-core widths (iterative fit in +-2 sigma) 0.92 (q/pT), 0.91 (phi),
0.93 (d0), 0.93 (cot theta), 0.97 (z0), each +-0.02.  Triplets alone: 1.03, 1.04, 1.02,
1.33, 1.34; those with a disk hit (477 of 714) have 1.45 in cot theta and z0, those in the
barrel 0.91, 1.00.  A likely cause (not yet fixed): the disk r error depends on the crossing
angle more than on size_y (the residual's rms is 17 um at |cot theta| 2-4 and 26 um above
4, both mostly in size_y 1-2), so a table by size underestimates it for forward tracks.
Residuals of one-pixel clusters are box-shaped, for which a Gaussian-core fit in +-2 sigma
reads a width 1.14 times the rms.  PU 0, 50 and 200 figures:
``examples/pixel_tracking_performance.py``.  The cpu stage runs at ~60 events/s on 2 shared
cores at this pileup.

Needs ``PixelHit`` (``x, y, z`` [cm], ``layer``, ``size_x``, ``size_y`` [pixels];
``sim_index`` if present) and the doublet collection ``[pixeltracks] doublets`` names:
``doublets`` (default: every doublet) or ``filtered_doublets`` (those the doublet CNN keeps;
the same columns and order) (``inner``, ``outer``: PixelHit rows within the event, as stage
``doublets`` gives them, in any order).  A missing column, a non-finite coordinate, a layer
id or a hit row out of range is an error naming the collection, the column and the row.
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
    hits, a least-squares helix fit with covariance, quality cuts and shared-hit cleaning (rules in
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
    doublets: str = param("doublets", "", "the doublet collection whose cells are connected: "
                          "doublets (all), or filtered_doublets (kept by the doublet CNN)")
    max_chi2: float = param(20.0, "", "largest chi2 of the fit (2 n_hits - 5 "
                            "dof; chosen on the built-in sample, not CMSSW's pT-dependent cut)")
    hit_error_barrel_rphi: tuple = param(
        (9.8e-4, 3.6e-4, 2.7e-4), "cm", "r-phi error of a barrel hit by cluster size_x 1, 2, "
        ">= 3 (the last entry for larger sizes): the rms of the simulated centroid residuals")
    hit_error_barrel_z: tuple = param(
        (28.0e-4, 14.6e-4, 4.8e-4, 3.7e-4, 3.4e-4, 3.2e-4), "cm", "z error of a barrel hit by "
        "cluster size_y 1, 2, ..., >= 6 (measured alike)")
    hit_error_disk_rphi: tuple = param(
        (17.9e-4, 19.0e-4, 2.8e-4), "cm", "r-phi error of a disk hit by size_x 1, 2, >= 3")
    hit_error_disk_r: tuple = param(
        (23.9e-4, 19.8e-4, 3.6e-4), "cm", "r error of a disk hit by size_y 1, 2, >= 3")
    radiation_length: tuple = param(
        (0.0,) * N_PIXEL_LAYERS, "", "material per pixel layer id (x / X0 at normal incidence) "
        "for the fit's multiple scattering; 0: none, as in hltemu's simulation")

    def __post_init__(self) -> None:
        if self.doublets not in DOUBLET_COLLECTIONS:
            raise ConfigError(f"[pixeltracks] doublets must be one of "
                              f"{', '.join(DOUBLET_COLLECTIONS)}, got {self.doublets!r}")
        for name in ("ptmin", "ca_theta_cut_barrel", "ca_theta_cut_forward",
                     "dca_cut_inner_triplet", "dca_cut_outer_triplet", "hard_curv_cut",
                     "triplet_max_tip", "triplet_min_pt", "triplet_max_zip",
                     "quadruplet_max_tip", "quadruplet_min_pt", "quadruplet_max_zip",
                     "max_chi2"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"[pixeltracks] {name} must be a finite number >= 0, got "
                                  f"{value!r}")
        for name in ("hit_error_barrel_rphi", "hit_error_barrel_z", "hit_error_disk_rphi",
                     "hit_error_disk_r"):
            value = getattr(self, name)
            if not (isinstance(value, tuple) and value and all(
                    isinstance(e, (int, float)) and math.isfinite(e) and e > 0 for e in value)):
                raise ConfigError(f"[pixeltracks] {name} must be a non-empty tuple of finite "
                                  f"errors > 0 cm, got {value!r}")
        x0 = self.radiation_length
        if not (isinstance(x0, tuple) and len(x0) == N_PIXEL_LAYERS and all(
                isinstance(e, (int, float)) and math.isfinite(e) and 0 <= e < 1 for e in x0)):
            raise ConfigError(f"[pixeltracks] radiation_length must be {N_PIXEL_LAYERS} "
                              f"fractions x / X0 in [0, 1), one per pixel layer id, got {x0!r}")
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
HIT_COLUMNS: tuple[str, ...] = ("x", "y", "z", "layer", "size_x", "size_y")
#: The covariance columns of ``pixeltracks`` and the kernels' ``PAR_*`` entries they hold.
COV_COLUMNS: dict[str, str] = {
    "cov_qoverpt_qoverpt": "PAR_COV_QPT_QPT", "cov_qoverpt_phi": "PAR_COV_QPT_PHI",
    "cov_qoverpt_d0": "PAR_COV_QPT_D0", "cov_phi_phi": "PAR_COV_PHI_PHI",
    "cov_phi_d0": "PAR_COV_PHI_D0", "cov_d0_d0": "PAR_COV_D0_D0",
    "cov_cottheta_cottheta": "PAR_COV_COT_COT", "cov_cottheta_z0": "PAR_COV_COT_Z0",
    "cov_z0_z0": "PAR_COV_Z0_Z0",
}
#: Doublet collections the stage can read (``[pixeltracks] doublets``).
DOUBLET_COLLECTIONS: tuple[str, ...] = ("doublets", "filtered_doublets")
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
    c[K.CUT_PT_PER_CURVATURE] = 0.01 * C_LIGHT * geometry.b_field
    c[K.CUT_MAX_CHI2] = cfg.max_chi2
    c[K.CUT_MAX_DPHI] = MAX_DPHI_STEP
    return c


def layer_flags(cfg: PixelTracksConfig) -> np.ndarray:
    """Per pixel layer id (uint8): start layer, barrel layer, innermost barrel layer."""
    from hltemu.kernels import pixeltracks as K

    layers = np.arange(N_PIXEL_LAYERS)
    flags = np.where(is_barrel_layer(layers), K.FLAG_BARREL, 0)
    flags[BARREL_LAYERS[0]] |= K.FLAG_INNERMOST
    flags[list(cfg.start_layers)] |= K.FLAG_START
    return flags.astype(np.uint8)


#: Largest change of phi [rad] in the Gauss-Newton step from the prefit (rule 3): beyond it
#: the linearisation is not trusted and the fit counts as degenerate.
MAX_DPHI_STEP = 0.1

#: Highland's formula: theta0 = HIGHLAND_GEV / p sqrt(x / X0) (1 + HIGHLAND_LOG ln(x / X0)),
#: p in GeV, beta = 1 (PDG, "Passage of particles through matter", eq. 34.15).
HIGHLAND_GEV = 0.0136
HIGHLAND_LOG = 0.038


def layer_scattering(cfg: PixelTracksConfig) -> np.ndarray:
    """Per pixel layer id: ``theta0^2 p^2`` [GeV^2 rad^2] of a crossing at normal incidence
    (Highland, :data:`HIGHLAND_GEV`), 0 for a layer without material.  The fit scales it by
    the crossing's path length over the normal one; the logarithm stays at normal incidence."""
    out = np.zeros(N_PIXEL_LAYERS, dtype=np.float64)
    for layer, x0 in enumerate(cfg.radiation_length):
        if x0 > 0:
            out[layer] = (HIGHLAND_GEV * (1.0 + HIGHLAND_LOG * math.log(x0))) ** 2 * x0
    return out


def error_table(errors: tuple) -> np.ndarray:
    """A hit-error tuple of the config as a float64 array [cm] (index: cluster size - 1)."""
    return np.asarray(errors, dtype=np.float64)


class Prepared(NamedTuple):
    """:func:`prepare`'s tables, on the host and on the backend: the cuts, the layer flags,
    the layer scattering (:func:`layer_scattering`) and the four hit-error tables [cm]
    (barrel r-phi, barrel z, disk r-phi, disk r; by cluster size)."""

    cuts: np.ndarray
    flags: np.ndarray
    cuts_dev: Any
    flags_dev: Any
    ms_dev: Any
    errors_dev: tuple


def prepare(cfg: PixelTracksConfig, backend: Backend) -> Prepared:
    """The cut vector (with the geometry's field), the layer flags, the layer scattering and
    the hit-error tables, uploaded once to ``backend``."""
    cuts, flags = cut_vector(cfg, default_geometry()), layer_flags(cfg)
    errors = tuple(backend.to_device(error_table(e)) for e in (
        cfg.hit_error_barrel_rphi, cfg.hit_error_barrel_z, cfg.hit_error_disk_rphi,
        cfg.hit_error_disk_r))
    return Prepared(cuts, flags, backend.to_device(cuts), backend.to_device(flags),
                    backend.to_device(layer_scattering(cfg)), errors)


def hit_errors(layer: Any, size_x: Any, size_y: Any, tables: tuple, xp: Any
               ) -> tuple[Any, Any]:
    """Per hit ``(err_t, err_l)`` [cm]: the r-phi error and the z (barrel) or r (disk) error,
    looked up in ``tables`` (:class:`Prepared`'s ``errors_dev``) by the cluster's size along
    local x and y (sizes beyond a table use its last entry; a size below 1 counts as 1)."""
    def pick(table: Any, size: Any) -> Any:
        n = int(table.shape[0])
        return table[xp.clip(size.astype(xp.int64) - 1, 0, n - 1)]

    barrel = is_barrel_layer(layer)
    err_t = xp.where(barrel, pick(tables[0], size_x), pick(tables[2], size_x))
    err_l = xp.where(barrel, pick(tables[1], size_y), pick(tables[3], size_y))
    return xp.ascontiguousarray(err_t), xp.ascontiguousarray(err_l)


# -- inputs --------------------------------------------------------------------------------------
class Inputs(NamedTuple):
    """The stage's inputs on one backend: hits by batch row (float64 ``x, y, z, r`` [cm], int32
    ``layer``, int32 cluster sizes ``size_x, size_y`` [pixels], their ``offsets`` and int32
    ``sim_index`` or None), and the cells (int64 batch
    hit rows ``inner``, ``outer``) sorted by (inner, outer) with ``hit_cells``, the CSR of the
    cells by inner hit (``n_hits + 1``)."""

    offsets: Any
    x: Any
    y: Any
    z: Any
    r: Any
    layer: Any
    size_x: Any
    size_y: Any
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


def check_inputs(batch: EventBatch, doublet_collection: str = "doublets") -> Inputs:
    """The checked inputs of the stage, the doublets from ``doublet_collection`` (errors name
    collection, column and row)."""
    xp = batch.backend.xp
    hits, doublets = batch["PixelHit"], batch[doublet_collection]
    _check_columns(hits, "PixelHit", HIT_COLUMNS, "pixeltracks")
    _check_columns(doublets, doublet_collection, DOUBLET_COLUMNS, "pixeltracks")
    if doublets.n_events != hits.n_events:
        raise PipelineError(f"stage 'pixeltracks': {doublet_collection!r} has "
                            f"{doublets.n_events} events, 'PixelHit' {hits.n_events}")
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
    sizes = [xp.ascontiguousarray(xp.asarray(hits[c], dtype=xp.int32))
             for c in ("size_x", "size_y")]
    sim = xp.asarray(hits["sim_index"], dtype=xp.int32) if "sim_index" in hits else None
    return Inputs(offsets, x, y, z, xp.sqrt(x * x + y * y), layer, *sizes, sim, inner, outer,
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
    pt_per_curvature: float  # GeV cm: pT = this / |curvature|
    scattering: tuple[float, ...]  # per layer id: theta0^2 p^2 at normal incidence, GeV^2


class ReferenceHit(NamedTuple):
    """A hit as the reference sees it: ``x, y, z, r`` [cm], its pixel layer id and its
    cluster sizes [pixels]."""

    x: float
    y: float
    z: float
    r: float
    layer: int
    size_x: int = 1
    size_y: int = 1


class ReferenceFit(NamedTuple):
    """A fitted n-tuplet (rule 3)."""

    curvature: float  # 1/cm, > 0 bends clockwise seen from +z
    phi: float  # rad, direction at the PCA, in (-pi, pi]
    d0: float  # cm
    cot_theta: float
    z0: float  # cm
    chi2: float
    pt: float  # GeV
    cov: dict[str, float]  # the COV_COLUMNS of the track


def reference_rules(cfg: PixelTracksConfig) -> ReferenceRules:
    """The reference's constants: ``pT = 0.01 C B / |rho|`` with the default geometry's field,
    and Highland's theta0^2 p^2 per layer (:func:`layer_scattering`)."""
    return ReferenceRules(cfg, BARREL_LAYERS[0], 0.01 * C_LIGHT * default_geometry().b_field,
                          tuple(layer_scattering(cfg).tolist()))


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
    2) / u`` (``u = curvature L``) as its series to ``u^8``: ``1 + u^2 / 24 + 3 u^4 / 640 + 5
    u^6 / 7168 + 35 u^8 / 294912``."""
    chord = math.hypot(h.x - pca[0], h.y - pca[1])
    u2 = (curvature * chord) ** 2
    return chord * (1.0 + u2 / 24.0 + 3.0 * u2 ** 2 / 640.0 + 5.0 * u2 ** 3 / 7168.0
                    + 35.0 * u2 ** 4 / 294912.0)


def hit_errors_reference(h: ReferenceHit, cfg: PixelTracksConfig) -> tuple[float, float]:
    """``(sigma_rphi, sigma_z or sigma_r)`` [cm] of a hit from the config's tables by cluster
    size (rule 3)."""
    def pick(table: tuple, size: int) -> float:
        return float(table[min(max(size, 1), len(table)) - 1])

    if is_barrel_layer(h.layer):
        return pick(cfg.hit_error_barrel_rphi, h.size_x), pick(cfg.hit_error_barrel_z, h.size_y)
    return pick(cfg.hit_error_disk_rphi, h.size_x), pick(cfg.hit_error_disk_r, h.size_y)


def _karimaki(hits: list[ReferenceHit]) -> tuple[float, float, float] | None:
    """The prefit: Karimaki's circle fit with equal weights, ``(rho, phi, d)`` with the PCA at
    ``d (sin phi, -cos phi)``; None when degenerate."""
    n = len(hits)
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
    if rho == 0.0:
        return None
    return rho, phi, 2.0 * delta / (1.0 + math.sqrt(disc))


def _circle_residual(h: ReferenceHit, rho: float, phi: float, d: float
                     ) -> tuple[float, list[float]] | None:
    """The signed distance [cm] of hit ``h`` from the circle ``(rho, phi, d)`` and its
    gradient in ``(rho, phi, d)``: Karimaki's ``eps = rho/2 |p - C|^2 - R^2 / 2 ...`` written
    out, ``dist`` the root of ``rho/2 dist^2 + dist = eps``, differentiated implicitly.  None
    when ``1 + 2 rho eps <= 0`` (no real distance)."""
    sin_phi, cos_phi = math.sin(phi), math.cos(phi)
    along = h.x * sin_phi - h.y * cos_phi
    across = h.x * cos_phi + h.y * sin_phi
    r2 = h.x * h.x + h.y * h.y
    eps = 0.5 * rho * r2 - (1.0 + rho * d) * along + 0.5 * rho * d * d + d
    if not 1.0 + 2.0 * rho * eps > 0.0:
        return None
    root = math.sqrt(1.0 + 2.0 * rho * eps)  # = 1 + rho dist
    dist = 2.0 * eps / (1.0 + root)
    grad = [(0.5 * r2 - d * along + 0.5 * d * d - 0.5 * dist * dist) / root,
            -(1.0 + rho * d) * across / root,
            (1.0 - rho * along + rho * d) / root]
    return dist, grad


def _scattering_reference(hits: list[ReferenceHit], s: list[float], cot: float, factor: float,
                          rules: ReferenceRules) -> np.ndarray:
    """Multiple-scattering covariance of the hits' residuals in one view: the kink at hit
    ``k`` (all but the last) of variance ``scattering[layer] * path * factor`` moves hit
    ``i > k`` by the kink times ``s_i - s_k``."""
    n = len(hits)
    v = np.zeros((n, n))
    slope = math.sqrt(1.0 + cot * cot)
    for k in range(n - 1):
        ms = rules.scattering[hits[k].layer]
        if ms == 0.0:
            continue
        path = slope if is_barrel_layer(hits[k].layer) else slope / abs(cot)
        lever = np.array([s[i] - s[k] if i > k else 0.0 for i in range(n)])
        v += ms * path * factor * np.outer(lever, lever)
    return v


def _gls_reference(v: np.ndarray, jac: np.ndarray, r0: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, float] | None:
    """The ``p`` minimising ``r^T v^-1 r`` with ``r = r0 + jac p``, its covariance ``(jac^T
    v^-1 jac)^-1`` and the minimum; None when ``v`` or the normal matrix is not positive
    definite."""
    try:
        np.linalg.cholesky(v)
        w = np.linalg.inv(v)
        normal = jac.T @ w @ jac
        np.linalg.cholesky(normal)
    except np.linalg.LinAlgError:
        return None
    cov = np.linalg.inv(normal)
    p = -cov @ (jac.T @ w @ r0)
    r = r0 + jac @ p
    return p, cov, float(r @ w @ r)


def fit_reference(hits: list[ReferenceHit], rules: ReferenceRules) -> ReferenceFit | None:
    """Rule 3: Karimaki's prefit, one Gauss-Newton step of the weighted circle fit, the
    weighted line fit in s-z, the covariances; None when degenerate."""
    cfg = rules.cfg
    pre = _karimaki(hits)
    if pre is None:
        return None
    rho, phi, d = pre

    def arcs(rho: float, phi: float, d: float) -> list[float]:
        pca = (d * math.sin(phi), -d * math.cos(phi))
        return [_arc_length(h, pca, rho) for h in hits]

    s = arcs(rho, phi, d)
    if not s[-1] > s[0]:
        return None
    cot0 = (hits[-1].z - hits[0].z) / (s[-1] - s[0])
    inv_pt2 = (rho / rules.pt_per_curvature) ** 2
    errors = [hit_errors_reference(h, cfg) for h in hits]
    # -- r-phi
    residuals = [_circle_residual(h, rho, phi, d) for h in hits]
    if any(r is None for r in residuals):
        return None
    r0 = np.array([r[0] for r in residuals])
    jac = np.array([r[1] for r in residuals])
    v = np.diag([e[0] ** 2 for e in errors]) + _scattering_reference(hits, s, cot0, inv_pt2,
                                                                     rules)
    solved = _gls_reference(v, jac, r0)
    if solved is None or not abs(solved[0][1]) < MAX_DPHI_STEP:
        return None
    step, cov_c, chi2_circle = solved
    rho, phi, d = rho + step[0], phi + step[1], d + step[2]
    phi = math.atan2(math.sin(phi), math.cos(phi))
    if rho == 0.0:
        return None
    # -- r-z
    s = arcs(rho, phi, d)
    if not s[-1] > s[0]:
        return None
    sigma_z = [e[1] if is_barrel_layer(h.layer) else e[1] * abs(cot0)
               for h, e in zip(hits, errors, strict=True)]
    v = np.diag([e ** 2 for e in sigma_z]) + _scattering_reference(
        hits, s, cot0, inv_pt2 * (1.0 + cot0 * cot0), rules)
    solved = _gls_reference(v, np.array([[1.0, si] for si in s]),
                            -np.array([h.z for h in hits]))
    if solved is None:
        return None
    (z0, cot), cov_l, chi2_line = solved
    chi2 = chi2_circle + chi2_line
    if not math.isfinite(chi2):
        return None
    k = rules.pt_per_curvature  # (q/pT, phi, d0) = (rho / k, phi, -d)
    cov = {"cov_qoverpt_qoverpt": cov_c[0, 0] / k / k, "cov_qoverpt_phi": cov_c[0, 1] / k,
           "cov_qoverpt_d0": -cov_c[0, 2] / k, "cov_phi_phi": cov_c[1, 1],
           "cov_phi_d0": -cov_c[1, 2], "cov_d0_d0": cov_c[2, 2],
           "cov_cottheta_cottheta": cov_l[1, 1], "cov_cottheta_z0": cov_l[0, 1],
           "cov_z0_z0": cov_l[0, 0]}
    return ReferenceFit(rho, phi, -d, float(cot), float(z0), chi2, k / abs(rho),
                        {c: float(x) for c, x in cov.items()})


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
    size_x, size_y = inp.size_x.tolist(), inp.size_y.tolist()
    sim = None if inp.sim_index is None else inp.sim_index.tolist()
    inner, outer = inp.inner.tolist(), inp.outer.tolist()  # batch rows
    cell_bounds = np.searchsorted(inp.inner, inp.offsets).tolist()  # cells of event e
    names = [f"hit{i}" for i in range(5)]  # at most 5 hits (rule 2)
    floats = ("pt", "eta", "phi", "d0", "z0", "chi2", *COV_COLUMNS)
    rows: dict[str, list] = {c: [] for c in (*floats, "charge", "n_hits", *names)}
    truth: list[int] = []
    counts = []
    for e in range(inp.n_events):
        lo, hi = offsets[e], offsets[e + 1]
        hits = [ReferenceHit(x[i], y[i], z[i], math.hypot(x[i], y[i]), layer[i], size_x[i],
                             size_y[i]) for i in range(lo, hi)]
        cells = [(inner[c] - lo, outer[c] - lo) for c in range(cell_bounds[e],
                                                               cell_bounds[e + 1])]
        tracks = event_reference(hits, cells, rules)
        event_sim = sim[lo:hi] if sim is not None else []
        counts.append(len(tracks))
        for path, fit in tracks:
            for col, value in (("pt", fit.pt), ("eta", math.asinh(fit.cot_theta)),
                               ("phi", fit.phi), ("d0", fit.d0), ("z0", fit.z0),
                               ("chi2", fit.chi2), ("charge", 1 if fit.curvature > 0 else -1),
                               ("n_hits", len(path)), *fit.cov.items()):
                rows[col].append(value)
            for i, col in enumerate(names):
                rows[col].append(path[i] if i < len(path) else -1)
            if sim is not None:
                truth.append(_truth_reference(path, event_sim))
    cols = {c: np.array(v, dtype=np.float64 if c in floats else np.int32)
            for c, v in rows.items()}
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
    err_t, err_l = hit_errors(inp.layer, inp.size_x, inp.size_y, prep.errors_dev, xp)
    k.launch(k.fit, n_cand, tup_hits, tup_n, inp.x, inp.y, inp.z, inp.layer, prep.flags_dev,
             err_t, err_l, prep.ms_dev, prep.cuts_dev, par, good)
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
    cols.update({name: par[:, getattr(K, index)] for name, index in COV_COLUMNS.items()})
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
    return {"pixeltracks": tracks_reference(check_inputs(batch, cfg.doublets), cfg)}


def run_cpu(batch: EventBatch, cfg: PixelTracksConfig, prep: Prepared) -> dict[str, Collection]:
    """The Numba kernels, parallel over cells, candidates and events."""
    inp = check_inputs(batch, cfg.doublets)
    return {"pixeltracks": track_collection(
        inp, candidates_kernels(inp, cfg, prep, np, _cpu_kernels()), np)}


def run_cuda(batch: EventBatch, cfg: PixelTracksConfig, prep: Prepared) -> dict[str, Collection]:
    """The CUDA kernels, one thread per cell, candidate or event; sorting with ``xp``."""
    xp = batch.backend.xp
    inp = check_inputs(batch, cfg.doublets)
    return {"pixeltracks": track_collection(
        inp, candidates_kernels(inp, cfg, prep, xp, _cuda_kernels()), xp)}


def needs(cfg: PixelTracksConfig) -> tuple[str, ...]:
    """``PixelHit`` and the doublet collection of ``cfg``."""
    return ("PixelHit", cfg.doublets)


STAGE = register(Stage(
    name="pixeltracks",
    needs=needs,
    adds=("pixeltracks",),
    config_type=PixelTracksConfig,
    prepare=prepare,
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    doc="pixel tracks from the doublets: Patatrack's cellular automaton, n-tuplets of 3-5 hits, "
        "helix fit with covariance, quality cuts, shared-hit cleaning",
    in_default_chain=False,
))
