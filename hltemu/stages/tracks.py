"""Stage ``tracks``: offline tracks of charged generator particles with a parameterised
response of CMS's offline tracking (efficiency, pT and impact-parameter resolutions), the
first layer of the offline reconstruction that the primary vertex (:mod:`hltemu.stages.vertices`)
and, later, particle flow read.

The rules
---------
1. **Candidates.**  A ``GenPart`` row is a candidate when it is final-state (``status == 1``),
   charged (``charge != 0``), has ``pT >= pt_min`` (0.5 GeV) and ``|eta| < eta_max`` (2.5), and
   was produced near the beam line: ``vx^2 + vy^2 < r_max^2`` (r_max 2.5 cm) and ``|vz| <
   z_max`` (30 cm).

   * ``eta_max`` = 2.5 is the acceptance of CMS's silicon tracker, whose strip layers, which
     hltemu does not model, end there.  The toy pixel detector of :mod:`hltemu.geometry` reaches
     further: a particle from the origin crosses at least 3 of its layers (a pixel triplet, the
     seed of CMS tracking) up to ``|eta| = asinh(39.6 / 4.5) = 2.87`` (second disk, inner ring
     radius; :func:`pixel_eta_reach`), and ``eta_max`` beyond that is refused.
   * ``r_max`` = 2.5 cm and ``z_max`` = 30 cm are CMS's own definition of a track it should
     find in its Phase-1 efficiency measurements (CMSSW ``Validation/RecoTrack/python/
     TrackingParticleSelectionsForEfficiency_cff.py``: ``tip = 2.5`` cm, "beampipe is around
     2.0, BPIX1 is at 2.9", and ``lip = 30`` cm): a particle produced outside the first pixel
     layer (2.9 cm here too, ``DetectorConfig.barrel_radii``), e.g. from a K0S or Lambda decay
     or a photon conversion in the material, is not a normal prompt track.
   * ``pt_min`` = 0.5 GeV keeps the soft tracks that charged-hadron subtraction needs and
     stays where the parameterisation has sources (rule 2 and 3: P10009's text quotes
     efficiencies above 0.9 GeV, Delphes's low-pT bin and Fig. 15 reach lower).  Such tracks
     already curl: the radius ``pT / (0.3 B)`` is 44 cm at 0.5 GeV in 3.8 T, so the particle
     turns back inside the tracker (outer radius 110 cm), and below ~0.3 GeV loopers and
     their duplicates dominate real tracking, which this response does not model.
2. **Efficiency.**  A candidate becomes a track when its uniform draw (below) is below the
   efficiency of its (pT, |eta|) bin, a table lookup (no arithmetic, so every backend keeps the
   same particles).  Bins: pT < 0.9 and >= 0.9 GeV, ``|eta|`` in [0, 0.9), [0.9, 1.5), [1.5,
   2.5).  Hadrons (and electrons: no special treatment of bremsstrahlung):

   ============ ============ ============ ============
   pT [GeV]     |eta| < 0.9  0.9 - 1.5    1.5 - 2.5
   ============ ============ ============ ============
   0.5 - 0.9    0.70         0.70         0.60
   >= 0.9       0.94         0.85         0.85
   ============ ============ ============ ============

   Muons (``|pdgId| == 13``): 0.75, 0.75, 0.70 below 0.9 GeV, 0.99, 0.99, 0.98 above.
   Sources: above 0.9 GeV the abstract of CMS, "Description and performance of track and
   primary-vertex reconstruction with the CMS tracker", JINST 9 (2014) P10009 (arXiv:1405.6569):
   for ttbar events under 2011 pileup, 94% for |eta| < 0.9 and 85% for 0.9 < |eta| < 2.5
   (charged particles with pT > 0.9 GeV produced promptly; hadrons lose mostly to nuclear
   interactions), "essentially 100%" for isolated muons.  The paper's text quotes nothing below
   0.9 GeV; we take the low-pT values of Delphes's CMS card (``cards/delphes_card_CMS.tcl``:
   0.1 < pT <= 1 GeV, 0.70 (muons 0.75) for |eta| <= 1.5 and 0.60 (0.70) beyond; muons above 1
   GeV 0.99 and 0.98), with that card's |eta| boundary 1.5 and the paper's pT boundary 0.9:
   approximations.
3. **Resolutions** (Gaussian), functions of the true pT [GeV] and |eta| in three bins [0,
   0.9), [0.9, 1.4), [1.4, 2.5):

   * ``sigma_pt / pT = a (+) b pT`` (in quadrature) with ``a`` = 0.0092, 0.0146, 0.0206 and
     ``b`` = 2.17e-4, 2.93e-4, 6.74e-4 per GeV: the values of P10009 Fig. 15 (single
     isolated muons, pT = 1 and 100 GeV: 0.92%, 1.46%, 2.06% and 2.36%, 3.27%, 7.05%) as
     digitised by J. T. Offermann for Delphes (``cards/trackResolutionCMS.tcl``,
     WebPlotDigitizer), ``a`` the 1 GeV value and ``b`` from the 100 GeV one.  At 10 GeV this
     gives 0.95%, 1.49%, 2.17% (digitised: 0.92%, 1.59%, 2.36%); the rise below 1 GeV (1.15%,
     1.66%, 2.59% at 0.5 GeV) is not modelled.  The abstract's "2.8% for |eta| < 1.4 at 100
     GeV" lies between the first two bins.
   * ``sigma_d0`` and ``sigma_z0`` [um] at pT = 100, 10, 1 GeV, the same digitisation of Fig.
     15 (its bins holding 100, 10 and 1 GeV), linear in ``1/pT`` between these nodes, constant
     above 100 GeV, extrapolated linearly in ``1/pT`` below 1 GeV (multiple scattering; at 0.5
     GeV this gives 138, 172, 300 um for d0 and 193, 362, 1289 um for z0; digitised: 143, 160,
     279 and 194, 320, 1200):

     ========== ===================== =====================
     |eta|      d0: 100, 10, 1 GeV    z0: 100, 10, 1 GeV
     ========== ===================== =====================
     < 0.9      10.4, 19.1, 75.3      28.3, 38.2, 111.3
     0.9 - 1.4  10.2, 21.4, 92.6      34.3, 51.1, 198.2
     1.4 - 2.5  13.0, 25.6, 155.7     82.0, 111.7, 669.5
     ========== ===================== =====================

     (the abstract: 10 and 30 um for 100 GeV muons at |eta| < 1.4).

   These are Run-1 numbers of the original pixel detector (3 barrel layers, the first at 4.4
   cm).  The Phase-1 detector that hltemu models (first layer at 2.9 cm) improves the impact
   parameters; we found no published Phase-1 table to use, so these are conservative.  Fig. 15
   is for isolated muons; every charged particle gets these Gaussian cores (the non-Gaussian
   tails of hadrons, nuclear interactions, and of electrons, bremsstrahlung, are not
   modelled).  Angles are not smeared: eta and phi resolutions (< 1e-3 above 1 GeV) are far
   below the calorimeter's granularity that particle flow compares them with.
4. **Impact parameters.**  True values of a straight line in the transverse plane from the
   production vertex ``(vx, vy, vz)`` [cm] along the particle's direction at production
   ``(phi, eta)``: ``d0 = vx sin(phi) - vy cos(phi)`` (signed, as CMS's ``reco::Track::d0() =
   -dxy()``, relative to the beam line x = y = 0, which is the centre of hltemu's luminous
   region) and ``z0 = vz - (vx cos(phi) + vy sin(phi)) sinh(eta)`` (z at the point of closest
   transverse approach).  The helix's curvature is neglected: over the transverse distance s
   (<= the production radius r) from the production point to the point of closest approach
   a circle of radius R = pT / (0.3 B) (88 cm at 1 GeV in 3.8 T) leaves the straight line by
   ``s^2 / (2 R)``: nothing for prompt particles (r ~ 12 um, the luminous region), 5 um at
   r = 3 mm (a B decay), but up to 355 um at r = 2.5 cm (a K0S daughter near the first pixel
   layer) for a 1 GeV track.  Such displaced tracks fail the primary vertex's d0 cut.
5. **Measured values.**  ``q/pT`` (the curvature a tracker measures) gets a Gaussian of width
   ``sigma(q/pT) = (sigma_pt / pT) / pT``; ``pt = 1 / |q/pT|``, and a sign change flips the
   charge (charge misassignment).  ``d0`` and ``z0`` get Gaussians of width ``sigma_d0``,
   ``sigma_z0``.  The ``sigma_*`` columns report the widths used (from the true pT and eta; a
   track fit would report them at the measured ones, a second-order difference).

Random numbers
--------------
A counter-based stream (:mod:`hltemu.kernels.tracks`): each draw is a hash (SplitMix64) of the
config's ``seed``, the event's ``(run, luminosityBlock, event)`` (the ``Event`` collection),
the particle's GenPart row within the event and the draw number.  A track's response therefore
depends on nothing but its event and its particle: not on the batch size, the batch's other
events, the order of threads or the backend.  The efficiency decision (a 53-bit uniform below
a table value) and the ``sigma_*`` columns are identical on every backend; ``pt``, ``d0`` and
``z0`` go through ``log``, ``cos``, ``sin`` and ``sinh``, whose last bit may differ between
libdevice (cuda) and the C library (reference, cpu): they agree within 1e-12 relative plus
1e-12 of the column's largest magnitude (``tests/test_tracks.py``; the differences expected
are ~1e-15).  Two events with the same identifiers get the same draws (give every event of a
production its own identifiers, as ``hltemu generate`` does).

Inputs and outputs
------------------
Needs ``GenPart`` (columns ``pt`` [GeV], ``eta``, ``phi`` [rad], ``charge``, ``status``,
``pdgId``, ``vx``, ``vy``, ``vz`` [cm]) and ``Event`` (``run``, ``luminosityBlock``,
``event``).  A missing column, non-integer ``charge``/``status``/``pdgId``/identifiers and
non-finite kinematics are errors naming the collection, the column and the row.  CMS NanoAOD's
``GenPart`` (pruned, without production vertices) is refused, with the reason, by the planner
(an input with NanoAOD's ``GenJet``) and by the stage (a GenPart without ``vx``/``vy``/``vz``
that has NanoAOD's ``statusFlags`` and ``genPartIdxMother``).

On ttbar (``hltemu generate -n 200``) the default settings give 66.2 tracks per event at
pileup 0 and 581.7 at pileup 50, 0.75 of the candidates at pileup 50 (mostly soft pileup
particles below 0.9 GeV).

Adds ``tracks``, per event in GenPart row order:

============ ====== ==================================================================
pt           GeV    measured transverse momentum
eta, phi     -, rad the particle's (not smeared)
charge       e      measured charge (int32; flipped when the curvature changes sign)
d0, z0       cm     measured impact parameters (d0: CMS's ``d0()`` sign)
sigma_pt     GeV    ``(sigma_pt / pT) pT`` at the true pT
sigma_d0     cm     d0 resolution
sigma_z0     cm     z0 resolution
sim_index    -      truth: the particle's GenPart row within the event (int32, as
                    ``PixelHit.sim_index``); for validation only
============ ====== ==================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from hltemu.backends import Backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError, param
from hltemu.io.schema import EVENT, EVENT_ID_COLUMNS
from hltemu.ops import THREADS_PER_BLOCK, blocks
from hltemu.pipeline import CannotRun, PipelineError, Planned, Stage, register
from hltemu.stages.antikt import _check_columns, _check_finite, _select
from hltemu.stages.genjets import NANOAOD_GENJET, NANOAOD_GENPART_COLUMNS
from hltemu.xpsafe import event_index

#: The pixel layers a candidate's straight line from the origin must cross at most |eta| =
#: eta_max (a pixel triplet: the seeds of CMS's iterative tracking).
MIN_PIXEL_LAYERS = 3


@dataclass(frozen=True)
class TracksConfig:
    """Stage ``tracks``: final-state charged GenPart within the tracker acceptance, kept with a
    binned efficiency and smeared with Gaussian pT, d0 and z0 resolutions (CMS JINST 9 (2014)
    P10009; every value and its source in :mod:`hltemu.stages.tracks`)."""

    pt_min: float = param(0.5, "GeV", "candidates have pT >= pt_min")
    eta_max: float = param(2.5, "", "candidates have |eta| < eta_max (CMS tracker acceptance)")
    r_max: float = param(2.5, "cm", "candidates are produced at vx^2 + vy^2 < r_max^2 (inside "
                         "the first pixel layer)")
    z_max: float = param(30.0, "cm", "candidates are produced at |vz| < z_max")
    eff_pt_edges: tuple = param((0.9,), "GeV", "pT bin edges of the efficiency tables "
                                "(ascending, between the bins)")
    eff_eta_edges: tuple = param((0.9, 1.5), "", "|eta| bin edges of the efficiency tables")
    efficiency: tuple = param(((0.70, 0.70, 0.60), (0.94, 0.85, 0.85)), "",
                              "tracking efficiency of hadrons and electrons: one row per pT "
                              "bin, one column per |eta| bin")
    muon_efficiency: tuple = param(((0.75, 0.75, 0.70), (0.99, 0.99, 0.98)), "",
                                   "tracking efficiency of muons (|pdgId| 13), as efficiency")
    pt_res_eta_edges: tuple = param((0.9, 1.4), "", "|eta| bin edges of the pT resolution")
    pt_res_a: tuple = param((0.0092, 0.0146, 0.0206), "",
                            "constant term of sigma_pt / pT, per |eta| bin")
    pt_res_b: tuple = param((2.17e-4, 2.93e-4, 6.74e-4), "1/GeV",
                            "term of sigma_pt / pT proportional to pT (in quadrature)")
    ip_eta_edges: tuple = param((0.9, 1.4), "", "|eta| bin edges of the d0 and z0 resolutions")
    ip_pt_nodes: tuple = param((100.0, 10.0, 1.0), "GeV",
                               "pT nodes of the d0 and z0 resolutions (descending; linear in "
                               "1/pT between them)")
    d0_resolution: tuple = param(((10.4, 19.1, 75.3), (10.2, 21.4, 92.6), (13.0, 25.6, 155.7)),
                                 "um", "sigma_d0 at the pT nodes, one row per |eta| bin")
    z0_resolution: tuple = param(((28.3, 38.2, 111.3), (34.3, 51.1, 198.2),
                                  (82.0, 111.7, 669.5)),
                                 "um", "sigma_z0 at the pT nodes, one row per |eta| bin")
    seed: int = param(0, "", "seed of the random stream (with each event's run, "
                      "luminosityBlock and event)")

    def __post_init__(self) -> None:
        for name in ("pt_min", "eta_max", "r_max", "z_max"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"[tracks] {name} must be a finite number > 0, got {value}")
        if not 0 <= self.seed < 2**64:
            raise ConfigError(f"[tracks] seed must be an integer in 0 .. 2^64 - 1, got "
                              f"{self.seed}")
        _edges("eff_pt_edges", self.eff_pt_edges)
        _edges("eff_eta_edges", self.eff_eta_edges)
        shape = (len(self.eff_pt_edges) + 1, len(self.eff_eta_edges) + 1)
        for name in ("efficiency", "muon_efficiency"):
            table = _table(name, getattr(self, name), shape)
            if not ((table >= 0) & (table <= 1)).all():
                raise ConfigError(f"[tracks] {name} values must lie in [0, 1], got "
                                  f"{getattr(self, name)}")
        _edges("pt_res_eta_edges", self.pt_res_eta_edges)
        n = len(self.pt_res_eta_edges) + 1
        for name in ("pt_res_a", "pt_res_b"):
            if not (_table(name, (getattr(self, name),), (1, n)) >= 0).all():
                raise ConfigError(f"[tracks] {name} values must be >= 0, got "
                                  f"{getattr(self, name)}")
        _edges("ip_eta_edges", self.ip_eta_edges)
        nodes = _table("ip_pt_nodes", (self.ip_pt_nodes,), (1, len(self.ip_pt_nodes)))[0]
        if nodes.size == 0 or not (nodes > 0).all() or not (np.diff(nodes) < 0).all():
            raise ConfigError(f"[tracks] ip_pt_nodes must be pT values > 0 GeV in descending "
                              f"order, got {self.ip_pt_nodes}")
        shape = (len(self.ip_eta_edges) + 1, nodes.size)
        for name in ("d0_resolution", "z0_resolution"):
            if not (_table(name, getattr(self, name), shape) > 0).all():
                raise ConfigError(f"[tracks] {name} values must be > 0 um, got "
                                  f"{getattr(self, name)}")


def _edges(name: str, edges: tuple) -> np.ndarray:
    """Bin edges as float64, checked: finite, ascending (a :class:`ConfigError` naming
    ``[tracks] name`` otherwise)."""
    a = _table(name, (edges,), (1, len(edges)))[0]
    if not (np.isfinite(a).all() and (np.diff(a) > 0).all()):
        raise ConfigError(f"[tracks] {name} must be finite and ascending, got {edges}")
    return a


def _table(name: str, rows: tuple, shape: tuple[int, int]) -> np.ndarray:
    """``rows`` (a tuple of tuples of numbers) as a float64 array of ``shape``, or a
    :class:`ConfigError` naming ``[tracks] name`` and the shape expected."""
    try:
        a = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"[tracks] {name} must hold numbers, got {rows}") from None
    if a.shape != shape and not (a.size == 0 and shape[1] == 0):
        raise ConfigError(f"[tracks] {name} must be {shape[0]} x {shape[1]} (from its bin "
                          f"edges), got {rows}")
    return a.reshape(shape)


#: GenPart columns stage ``tracks`` reads: float kinematics and vertex, integer codes.
GENPART_FLOATS: tuple[str, ...] = ("pt", "eta", "phi", "vx", "vy", "vz")
GENPART_INTS: tuple[str, ...] = ("charge", "status", "pdgId")
#: The production-vertex columns CMS NanoAOD's GenPart lacks.
VERTEX_COLUMNS: tuple[str, ...] = ("vx", "vy", "vz")
#: Why CMS NanoAOD's GenPart makes no tracks (one line).
NANOAOD_REASON = ("it holds the hard process and selected decay products, not every "
                  "final-state charged particle, and no production vertices, so it cannot "
                  "make tracks")
#: Columns of the ``tracks`` collection.
TRACK_COLUMNS: tuple[str, ...] = ("pt", "eta", "phi", "charge", "d0", "z0", "sigma_pt",
                                  "sigma_d0", "sigma_z0", "sim_index")
#: 1 um in cm (the impact-parameter tables are in um).
UM = 1e-4


def pixel_eta_reach(pixel: Any = None, min_layers: int = MIN_PIXEL_LAYERS) -> float:
    """The largest |eta| at which a straight line from the origin crosses at least
    ``min_layers`` layers of ``pixel`` (default: the default geometry's pixel detector): a
    barrel layer of radius r and half-length L up to ``asinh(L / r)``, a disk at |z| between
    ``asinh(|z| / r_max)`` and ``asinh(|z| / r_min)``.  0 when no |eta| has enough layers."""
    if pixel is None:
        from hltemu.geometry import default_geometry

        pixel = default_geometry().pixel
    spans = [(0.0, math.asinh(b.half_length / b.radius)) for b in pixel.barrel]
    spans += [(math.asinh(d.z / d.r_max), math.asinh(d.z / d.r_min))
              for d in pixel.disks if d.z > 0]
    for top in sorted((hi for _, hi in spans), reverse=True):
        if sum(lo <= top <= hi for lo, hi in spans) >= min_layers:
            return top
    return 0.0


# -- prepared tables ------------------------------------------------------------------------------
class Tables(NamedTuple):
    """The response's tables as the kernels take them (NumPy on the host, or uploaded):
    ``cuts`` [pt_min, eta_max, r_max^2, z_max], the efficiency tables and their edges, the pT
    resolution's ``a``, ``b`` and edges, the impact-parameter nodes (``u = 1/pT`` [1/GeV],
    ascending), values [cm] and slopes [cm GeV] per |eta| bin."""

    cuts: Any
    pt_edges: Any
    eta_edges: Any
    eff_hadron: Any
    eff_muon: Any
    res_edges: Any
    res_a: Any
    res_b: Any
    ip_edges: Any
    ip_nodes: Any
    d0_values: Any
    d0_slopes: Any
    z0_values: Any
    z0_slopes: Any


class Prepared(NamedTuple):
    """What :func:`prepare` builds once per (config, backend): the tables on the host (the
    reference's) and on the backend's device, and ``key0`` (uint64) that every event's key
    starts from."""

    host: Tables
    device: Tables
    key0: np.uint64


def tables(cfg: TracksConfig) -> Tables:
    """The kernels' tables of ``cfg`` (NumPy, float64; each computed here once, so every
    backend reads the same doubles)."""
    f64 = np.float64
    nodes_pt = np.array(cfg.ip_pt_nodes, dtype=f64)
    u = 1.0 / nodes_pt  # ascending (nodes descending in pT)

    def ip(rows: tuple) -> tuple[np.ndarray, np.ndarray]:
        values = np.array(rows, dtype=f64) * UM
        if u.size < 2:
            return values, np.zeros((values.shape[0], 0), dtype=f64)
        return values, np.diff(values, axis=1) / np.diff(u)

    d0_values, d0_slopes = ip(cfg.d0_resolution)
    z0_values, z0_slopes = ip(cfg.z0_resolution)
    return Tables(
        np.array([cfg.pt_min, cfg.eta_max, cfg.r_max * cfg.r_max, cfg.z_max], dtype=f64),
        np.array(cfg.eff_pt_edges, dtype=f64), np.array(cfg.eff_eta_edges, dtype=f64),
        np.array(cfg.efficiency, dtype=f64), np.array(cfg.muon_efficiency, dtype=f64),
        np.array(cfg.pt_res_eta_edges, dtype=f64), np.array(cfg.pt_res_a, dtype=f64),
        np.array(cfg.pt_res_b, dtype=f64), np.array(cfg.ip_eta_edges, dtype=f64), u,
        d0_values, d0_slopes, z0_values, z0_slopes)


def prepare(cfg: TracksConfig, backend: Backend) -> Prepared:
    """The tables of ``cfg`` on the host and uploaded to ``backend``, and the seed's key."""
    from hltemu.kernels.tracks import seed_key

    host = tables(cfg)
    device = Tables(*(backend.to_device(np.ascontiguousarray(a)) for a in host))
    return Prepared(host, device, np.uint64(seed_key(cfg.seed)))


# -- input checks ---------------------------------------------------------------------------------
class Inputs(NamedTuple):
    """The GenPart and Event columns the response reads, on the batch's backend: float64
    ``pt, eta, phi, vx, vy, vz``; int32 ``charge, status, pdg``; uint64 ``run, lumi, event``
    per event; the GenPart ``offsets``."""

    offsets: Any
    pt: Any
    eta: Any
    phi: Any
    vx: Any
    vy: Any
    vz: Any
    charge: Any
    status: Any
    pdg: Any
    run: Any
    lumi: Any
    event: Any


def check_not_nanoaod(gen: Collection, stage: str = "tracks") -> None:
    """Refuse CMS NanoAOD's pruned ``GenPart`` (no ``vx``/``vy``/``vz``; ``statusFlags`` and
    ``genPartIdxMother``) with a :class:`~hltemu.pipeline.PipelineError` saying why."""
    missing = [c for c in VERTEX_COLUMNS if c not in gen]
    if missing and all(c in gen for c in NANOAOD_GENPART_COLUMNS):
        raise PipelineError(
            f"stage {stage!r}: collection 'GenPart' is CMS NanoAOD's pruned generator record "
            f"(columns {', '.join(map(repr, NANOAOD_GENPART_COLUMNS))}, no "
            f"{', '.join(map(repr, missing))}): {NANOAOD_REASON}")


def _integers(xp: Any, coll: Collection, name: str, col: str, dtype: Any, stage: str) -> Any:
    values = coll[col]
    if values.dtype.kind not in "iu":
        raise PipelineError(f"stage {stage!r}: {name}.{col} must be integers, got dtype "
                            f"{values.dtype}")
    return xp.ascontiguousarray(xp.asarray(values, dtype=dtype))


def check_inputs(batch: EventBatch, stage: str = "tracks") -> Inputs:
    """The columns of ``GenPart`` and ``Event`` that stage ``tracks`` reads, checked (errors
    name the collection, the column and, for a bad value, the row) and converted."""
    xp = batch.backend.xp
    gen = batch["GenPart"]
    check_not_nanoaod(gen, stage)
    _check_columns(gen, "GenPart", GENPART_FLOATS + GENPART_INTS, stage)
    floats = []
    for col in GENPART_FLOATS:
        if gen[col].dtype.kind not in "fiu":
            raise PipelineError(f"stage {stage!r}: GenPart.{col} must be numbers, got dtype "
                                f"{gen[col].dtype}")
        values = xp.ascontiguousarray(xp.asarray(gen[col], dtype=xp.float64))
        _check_finite(xp, values, "GenPart", col, stage)
        floats.append(values)
    ints = [_integers(xp, gen, "GenPart", c, xp.int32, stage) for c in GENPART_INTS]
    ev = batch[EVENT]
    for col in EVENT_ID_COLUMNS:
        if col not in ev:
            raise PipelineError(
                f"stage {stage!r} needs column {col!r} in collection {EVENT!r} (the event "
                f"identifiers run, luminosityBlock, event key its random stream); it has "
                f"{sorted(ev.columns)} (a file written before hltemu stored them: generate it "
                "again)")
    ids = [_integers(xp, ev, EVENT, c, xp.uint64, stage) for c in EVENT_ID_COLUMNS]
    if int(ids[0].shape[0]) != gen.n_events:
        raise PipelineError(f"stage {stage!r}: collection {EVENT!r} has {ids[0].shape[0]} "
                            f"rows for {gen.n_events} events of 'GenPart'")
    return Inputs(xp.asarray(gen.offsets, dtype=xp.int64), *floats, *ints, *ids)


# -- the three implementations ------------------------------------------------------------------
def tracks_reference(inp: Inputs, tab: Tables, key0: int) -> dict[str, np.ndarray]:
    """The tracks of every event (plain Python over events and particles, written to be read):
    the columns of :data:`TRACK_COLUMNS` and ``counts`` (tracks per event)."""
    from hltemu.kernels.tracks import PY

    cols: dict[str, list] = {c: [] for c in TRACK_COLUMNS}
    counts = []
    for e in range(int(inp.offsets.shape[0]) - 1):
        key = PY["event_key"](key0, inp.run[e], inp.lumi[e], inp.event[e])
        lo, hi = int(inp.offsets[e]), int(inp.offsets[e + 1])
        n = 0
        for r in range(lo, hi):
            pt, eta, phi = float(inp.pt[r]), float(inp.eta[r]), float(inp.phi[r])
            vx, vy, vz = float(inp.vx[r]), float(inp.vy[r]), float(inp.vz[r])
            q, pdg = int(inp.charge[r]), int(inp.pdg[r])
            if not PY["candidate"](int(inp.status[r]), q, pt, eta, vx, vy, vz, tab.cuts):
                continue
            # found: the efficiency draw is below the efficiency of the particle's bin
            found, pt_m, q_m, d0, z0, spt, sd0, sz0 = PY["respond"](
                key, r - lo, pt, eta, phi, q, pdg, vx, vy, vz, *tab[1:])
            if not found:
                continue
            for c, v in zip(TRACK_COLUMNS, (pt_m, eta, phi, q_m, d0, z0, spt, sd0, sz0, r - lo),
                            strict=True):
                cols[c].append(v)
            n += 1
        counts.append(n)
    out = {c: np.array(v, dtype=np.float64) for c, v in cols.items()}
    out["charge"] = out["charge"].astype(np.int32)
    out["sim_index"] = out["sim_index"].astype(np.int32)
    out["counts"] = np.array(counts, dtype=np.int64)
    return out


class Raw(NamedTuple):
    """The kernels' per-GenPart-row output: ``keep`` (uint8), and for kept rows pt, charge
    (int32), d0, z0, sigma_pt, sigma_d0, sigma_z0."""

    keep: Any
    pt: Any
    charge: Any
    d0: Any
    z0: Any
    sigma_pt: Any
    sigma_d0: Any
    sigma_z0: Any


def _raw(n: int, xp: Any) -> Raw:
    return Raw(xp.zeros(n, dtype=xp.uint8), xp.zeros(n, dtype=xp.float64),
               xp.zeros(n, dtype=xp.int32), *(xp.zeros(n, dtype=xp.float64) for _ in range(5)))


def _tracks_cpu(inp: Inputs, prep: Prepared, be: Backend) -> Raw:
    from hltemu.kernels.tracks import tracks_cpu

    raw = _raw(int(inp.pt.shape[0]), np)
    if raw.keep.shape[0]:
        tracks_cpu(inp.offsets, inp.run, inp.lumi, inp.event, prep.key0, inp.pt, inp.eta,
                   inp.phi, inp.charge, inp.status, inp.pdg, inp.vx, inp.vy, inp.vz,
                   *prep.device, *raw)
    return raw


def _tracks_cuda(inp: Inputs, prep: Prepared, be: Backend) -> Raw:
    from hltemu.kernels.tracks import tracks_cuda

    n = int(inp.pt.shape[0])
    raw = _raw(n, be.xp)
    if n:
        row_event = event_index(inp.offsets, n, be.xp)
        tracks_cuda[blocks(n), THREADS_PER_BLOCK](
            inp.offsets, row_event, inp.run, inp.lumi, inp.event, prep.key0, inp.pt, inp.eta,
            inp.phi, inp.charge, inp.status, inp.pdg, inp.vx, inp.vy, inp.vz, *prep.device,
            *raw)
    return raw


def _assemble(raw: Raw, inp: Inputs, xp: Any) -> Collection:
    """The ``tracks`` collection from the kernels' per-row output (NumPy or CuPy)."""
    rows, offsets = _select(xp, raw.keep == 1, inp.offsets)
    n = int(rows.shape[0])
    event = event_index(offsets, n, xp)
    cols = {"pt": raw.pt[rows], "eta": inp.eta[rows], "phi": inp.phi[rows],
            "charge": raw.charge[rows], "d0": raw.d0[rows], "z0": raw.z0[rows],
            "sigma_pt": raw.sigma_pt[rows], "sigma_d0": raw.sigma_d0[rows],
            "sigma_z0": raw.sigma_z0[rows],
            "sim_index": (rows - inp.offsets[event]).astype(xp.int32)}
    return Collection(offsets, cols)


def run_reference(batch: EventBatch, cfg: TracksConfig, prep: Prepared
                  ) -> dict[str, Collection]:
    """:func:`tracks_reference` (plain Python)."""
    inp = check_inputs(batch)
    out = tracks_reference(inp, prep.host, int(prep.key0))
    counts = out.pop("counts")
    return {"tracks": Collection.from_counts(counts, out)}


def run_cpu(batch: EventBatch, cfg: TracksConfig, prep: Prepared) -> dict[str, Collection]:
    """The Numba kernel, parallel over events."""
    inp = check_inputs(batch)
    return {"tracks": _assemble(_tracks_cpu(inp, prep, batch.backend), inp, np)}


def run_cuda(batch: EventBatch, cfg: TracksConfig, prep: Prepared) -> dict[str, Collection]:
    """The CUDA kernel, one thread per GenPart row, then the compaction with ``xp``."""
    inp = check_inputs(batch)
    return {"tracks": _assemble(_tracks_cuda(inp, prep, batch.backend), inp,
                                batch.backend.xp)}


def plan_tracks(cfg: TracksConfig, available: frozenset[str], inputs: tuple[str, ...] = ()
                ) -> Planned:
    """Before the first event: an input with ``GenPart`` and CMS NanoAOD's ``GenJet`` holds
    NanoAOD's pruned GenPart (:class:`~hltemu.pipeline.CannotRun`); ``eta_max`` beyond the
    pixel detector's reach (:func:`pixel_eta_reach`) is a :class:`ConfigError`."""
    if "GenPart" in available and NANOAOD_GENJET in available:
        raise CannotRun(f"the input's 'GenPart' is CMS NanoAOD's pruned generator record (the "
                        f"input has {NANOAOD_GENJET!r}): {NANOAOD_REASON}")
    reach = pixel_eta_reach()
    if cfg.eta_max > reach:
        raise ConfigError(f"[tracks] eta_max = {cfg.eta_max} is beyond |eta| = {reach:.3f}, "
                          f"where a particle from the origin still crosses "
                          f"{MIN_PIXEL_LAYERS} pixel layers")
    return Planned(cfg)


STAGE = register(Stage(
    name="tracks",
    needs=("GenPart", EVENT),
    adds=("tracks",),
    config_type=TracksConfig,
    prepare=prepare,
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    doc="offline tracks: charged final-state GenPart in the tracker acceptance with CMS's "
        "tracking efficiency and pT, d0, z0 resolutions (JINST 9 P10009), counter-based "
        "random stream",
    plan=plan_tracks,
    in_default_chain=False,
))
