"""Stage ``vertices``: the offline primary vertex of each event from its ``tracks`` alone (never
from truth), and each track's association with it, for particle flow's charged-hadron
subtraction.

The rule
--------
1. **Tracks.**  A track enters the vertex finding when ``pT >= pt_min`` (0 GeV: every track),
   ``sigma_z0 < max_sigma_z0`` (1 cm) and ``|d0| < max_d0_significance sigma_d0`` (4), the
   track filter of CMS's offline primary vertices (CMSSW ``RecoVertex/PrimaryVertexProducer``
   ``TkFilterParameters``: ``minPt = 0``, ``maxDzError = 1.0`` cm, ``maxD0Significance = 4.0``;
   its hit-count and chi2 cuts have nothing to act on here).  The d0 cut keeps decay products
   (K0S, Lambda, conversions) out of the vertices.
2. **Clusters.**  The event's selected tracks sorted by ``z0`` (ties: lower track row first);
   a track more than ``z_separation`` (0.02 cm) above the previous one starts a new cluster:
   CMS's "gap" clustering of 2010 (``TkGapClusParameters``; CMS has since moved to
   deterministic annealing).  CMS used ``zSeparation = 0.1`` cm at 2010's low pileup; at
   pileup 50 (51 interactions in a luminous region of sigma_z = 4 cm, ~600 tracks) 1 mm gaps
   chain neighbouring interactions and the merged pileup tracks pull the vertex, so we take
   0.02 cm, chosen on ttbar at pileup 50 (``hltemu generate -s 5050``, 200 events) and
   checked on another sample (``-s 6060``, 100 events) and at pileup 0 (``-s 5000``, 200
   events):

   ============================ ============= ============= =============
   z_separation [cm]            0.1           0.02          0.01
   ============================ ============= ============= =============
   PU 50: PV < 1 mm, < 100 um   0.92, 0.60    0.99, 0.82    0.99, 0.91
   PU 50: vertices per event    21.3          46.0          61.4
   PU 0: PV < 100 um            0.995         0.995         1.000
   PU 0: vertices per event     1.1           2.1           3.0
   ============================ ============= ============= =============

   (PV: the primary vertex below against the true hard-scatter vertex ``Event.pv_z``; seed
   6060 for pileup 50.)  Smaller gaps split the hard scatter's soft tracks into extra
   vertices; 0.02 cm is the compromise.  (This table predates rule 3's fit, which changes
   only the vertex positions; rule 3 has its effect.)
3. **Vertex: a trimmed fit.**  ``z`` starts at the cluster's weighted median z0 (``w = 1 /
   sigma_z0^2``; the first track, in ascending (z0, row) order, at which the running sum of
   ``w`` reaches half the cluster's), then at most ``fit_iterations`` (10) times: the tracks
   with ``|z0 - z| < fit_sigmas sigma_z0`` (3) are the fit's, and ``z = sum(w z0) / sum(w)``
   over them (sums in ascending (z0, row) order), until ``z`` stays.  ``z_error = 1 /
   sqrt(sum(w))``, ``n_tracks`` and ``sum_pt2 = sum(pT^2)`` are those of the fit's tracks;
   a cluster is a vertex when its fit keeps at least ``min_tracks``.  CMS fits its vertices
   with the adaptive vertex fitter (tracks down-weighted with their distance, JINST 9 (2014)
   P10009 section 4); this is its hard-threshold form.  Without it, gap clustering at pileup
   50 chains soft pileup tracks onto the hard scatter's cluster and their weighted mean pulls
   the vertex 0.1-1 mm off, beyond 3 sigma_z0 of the hard scatter's precise tracks, which
   then lose their association (rule 5) and their jets' charged hadrons: on QCD at pileup 50
   (seed 1001, 1,500 events) the PV lay 50 um - 1 mm from the true vertex for 14-17% of the
   hard-scatter jets of 30-200 GeV (|eta| < 2.5) with the plain mean, 1-3% with the fit;
   the jets of 100-200 GeV in events with the PV 0.1-1 mm off had 0.73 of their pileup-0 pT
   (median).
4. **The primary vertex** is the vertex of largest ``score``: with ``ranking = "track_jets"``
   (default) the sum of the pT^2 of the anti-kT (R = ``track_jet_radius``, 0.4) jets of its
   fit's tracks, taken massless, every jet counted: CMS's choice since Run 2 (its physics
   papers' "jets clustered with the tracks assigned to the vertex as inputs", after the Phase-2
   technical proposal, CERN-LHCC-2015-010), without their missing-pT term, which here found
   the hard scatter less often (8.2% against 7.5% of the 30-50 GeV jets at |eta| < 2.5 in
   events whose PV is a pileup vertex; seed 1001 at pileup 50, 3,000 events); with
   ``"sum_pt2"`` the sum of the fit's tracks' pT^2, CMS's Run-1 choice (JINST 9 (2014)
   P10009).  The event's
   vertices are ordered by ``score`` descending (ties: lower z first), so the primary vertex is
   row 0; an event with no vertex has none.
5. **Association.**  A track is associated with the primary vertex when ``|z0 - z_PV| <
   association_sigmas sigma_z0`` (3): CMS's "from PV" test in z, for every track (selected or
   not), with the track's own error only (the vertex's, ~10 um, is neglected).

Outputs
-------
``vertices``, per event (PV first):

=========== ===== ========================================================
z           cm    weighted mean of the fit's tracks' z0 (rule 3)
z_error     cm    ``1 / sqrt(sum(1 / sigma_z0^2))``
n_tracks    \\-    tracks in the fit (int32)
sum_pt2     GeV^2 sum of the fit's tracks' pT^2
score       GeV^2 the ranking's (rule 4): the fit's track jets' sum of pT^2, or sum_pt2
=========== ===== ========================================================

``track_pv``, one row per track (the offsets of ``tracks``): ``vertex`` (int32), the row of
the vertex of the track's cluster within the event's ``vertices``, whether or not the fit
kept the track (-1: the track was not selected or its cluster's fit kept fewer than
``min_tracks`` tracks), and ``pv`` (bool), the association with the
primary vertex (False when the event has none).  A stage cannot add columns to another's
collection, so the association is a collection of its own, aligned row for row with
``tracks``: what particle flow reads to keep or subtract a charged particle.

Backends agree bit for bit given the same tracks: the selection and the gaps compare exactly
rounded values, the sums run in the same order everywhere (:mod:`hltemu.kernels.vertices`),
and ``z``, ``z_error`` and the association are single IEEE operations (a division, ``sqrt``,
a subtraction and a product).  The track jets are the anti-kT stage's, identical constituents
on every backend (:mod:`hltemu.stages.antikt`), their pT^2 summed per vertex in jet order
(:func:`hltemu.ops.segment_sum`); only their momenta, computed with ``cos``/``sinh`` by NumPy
or CuPy, may differ in the last bits on a GPU, so ``score`` agrees there within antikt's
5e-14 relative (bit for bit on the cpu and under the simulator) and the order of the vertices
exactly unless two scores tie that closely.  Through the whole chain the tracks' ``d0`` and
``z0`` may differ in the last bit between backends (:mod:`hltemu.stages.tracks`), which could
move a track across a cut only if it lay within ~1e-16 relative of it.

Needs ``tracks`` (columns ``pt`` [GeV], ``eta``, ``phi`` [rad], ``d0``, ``z0``, ``sigma_d0``,
``sigma_z0`` [cm]);
non-finite values and sigmas <= 0 are errors naming the column and the row.

Measured (2026-11-29; ttbar, ``hltemu generate -n 200 -s 5000 --pileup 0`` and ``-s 5050
--pileup 50``, ``-n 100 -s 6060 --pileup 50``, then ``hltemu run --stages tracks,vertices
--backend cpu``; pileup 50's seed 5050 is the one z_separation was chosen on)::

    pileup  seed  tracks  vertices  PV < 1 mm  PV < 100 um  median |dz|  hard-scatter / pileup
                  /event  /event                                          tracks associated
         0  5000    66.2       2.1      1.000        1.000       8.7 um   0.939 / -
        50  5050   581.7      47.0      0.990        0.990      12.4 um   0.934 / 0.019
        50  6060   589.8      46.0      0.980        0.960      11.1 um   0.923 / 0.023

(``dz = z_PV - Event.pv_z``; before the fit of rule 3 and the track-jet ranking, seed 5050
gave 0.985, 0.910, 17.3 um and 0.922 / 0.020.)  Of the hard scatter's tracks not associated
at pileup 0 (6.1%), 83% have a true z0 more than 3 sigma_z0 from the hard-scatter vertex:
daughters of b and c hadrons, K0S and Lambda, as they should be.

On QCD with a soft hard scatter the choice fails more often: pT-hat > 15 GeV (``--pthat-bias
4``, seed 1001, the first 1,000 events at pileup 50) gives the PV within 1 mm in 80.2% of
events (77.6% ranked by ``sum_pt2``; 99.8% at pileup 0).  By truth, with the tracks grouped by
their true interaction, the hard scatter's sum of track pT^2 is below the hardest pileup
interaction's in 21% of these events at pileup 50, and in 23% of those whose leading truth
jet has 30-50 GeV at |eta| < 2.5 (14% by track jets): no ranking of these vertices can find it
there.  A jet of an event whose PV is a pileup vertex loses its charged hadrons to
charged-hadron subtraction (median pT 0.6-0.7 of its pileup-0 value),
which is what keeps the pfjets' corrected response at pileup 50 and 30-50 GeV below that of
the events with the right PV (``benchmarks/pfjec/``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from hltemu.backends import Backend
from hltemu.batch import Collection, EventBatch, counts_to_offsets
from hltemu.config import ConfigError, param
from hltemu.ops import THREADS_PER_BLOCK, blocks, segment_sum
from hltemu.pipeline import PipelineError, Stage, register
from hltemu.stages.antikt import (
    _check_columns,
    _check_finite,
    antikt_jets,
    cluster_cpu,
    cluster_cuda,
    cluster_reference,
)
from hltemu.xpsafe import any_true, bincount, event_index, item

#: The primary vertex's rankings (rule 4).
RANKINGS: tuple[str, ...] = ("track_jets", "sum_pt2")


@dataclass(frozen=True)
class VerticesConfig:
    """Stage ``vertices``: gap clustering of track z0, weighted-mean vertices, the primary
    vertex of largest sum pT^2 and each track's association with it (rules and sources in
    :mod:`hltemu.stages.vertices`)."""

    pt_min: float = param(0.0, "GeV", "tracks with pT >= pt_min enter the vertex finding")
    max_sigma_z0: float = param(1.0, "cm", "tracks with sigma_z0 < max_sigma_z0 enter")
    max_d0_significance: float = param(4.0, "", "tracks with |d0| < max_d0_significance "
                                       "sigma_d0 enter")
    z_separation: float = param(0.02, "cm", "a gap in z0 above this between consecutive "
                                "selected tracks starts a new cluster")
    fit_sigmas: float = param(3.0, "", "a cluster's track stays in its vertex fit while "
                              "|z0 - z| < fit_sigmas sigma_z0")
    fit_iterations: int = param(10, "", "at most this many refits of a vertex")
    min_tracks: int = param(2, "", "vertices have at least this many tracks in their fit")
    ranking: str = param("track_jets", "", "the primary vertex has the largest sum of pT^2 of "
                         "its fit's anti-kT track jets ('track_jets', CMS Run 2) or of its "
                         "fit's tracks ('sum_pt2', CMS Run 1)")
    track_jet_radius: float = param(0.4, "", "anti-kT radius R of the track jets")
    association_sigmas: float = param(3.0, "", "a track is associated with the primary vertex "
                                      "when |z0 - z_PV| < association_sigmas sigma_z0")

    def __post_init__(self) -> None:
        for name in ("pt_min", "max_sigma_z0", "max_d0_significance", "z_separation",
                     "association_sigmas"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"[vertices] {name} must be a finite number >= 0, got "
                                  f"{value}")
        if not (math.isfinite(self.fit_sigmas) and self.fit_sigmas > 0):
            raise ConfigError(f"[vertices] fit_sigmas must be a finite number > 0, got "
                              f"{self.fit_sigmas}")
        if self.fit_iterations < 1:
            raise ConfigError(f"[vertices] fit_iterations must be >= 1, got "
                              f"{self.fit_iterations}")
        if self.ranking not in RANKINGS:
            raise ConfigError(f"[vertices] ranking must be one of {list(RANKINGS)}, got "
                              f"{self.ranking!r}")
        if not (math.isfinite(self.track_jet_radius) and self.track_jet_radius > 0):
            raise ConfigError(f"[vertices] track_jet_radius must be a finite number > 0, got "
                              f"{self.track_jet_radius}")
        if self.min_tracks < 1:
            raise ConfigError(f"[vertices] min_tracks must be >= 1, got {self.min_tracks}")


#: Track columns stage ``vertices`` reads.
TRACK_COLUMNS: tuple[str, ...] = ("pt", "eta", "phi", "d0", "z0", "sigma_d0", "sigma_z0")
#: Columns of the ``vertices`` collection.
VERTEX_COLUMNS: tuple[str, ...] = ("z", "z_error", "n_tracks", "sum_pt2", "score")


def cuts(cfg: VerticesConfig) -> np.ndarray:
    """The kernels' ``cuts`` array (:mod:`hltemu.kernels.vertices`)."""
    return np.array([cfg.pt_min, cfg.max_sigma_z0, cfg.max_d0_significance, cfg.z_separation,
                     cfg.fit_sigmas, cfg.fit_iterations], dtype=np.float64)


def prepare(cfg: VerticesConfig, backend: Backend) -> Any:
    """The ``cuts`` array on ``backend``."""
    return backend.to_device(cuts(cfg))


class TrackInputs(NamedTuple):
    """The track columns the stage reads, float64 on the batch's backend, and the offsets."""

    offsets: Any
    pt: Any
    eta: Any
    phi: Any
    d0: Any
    z0: Any
    sigma_d0: Any
    sigma_z0: Any


def check_tracks(tracks: Collection, xp: Any, stage: str = "vertices") -> TrackInputs:
    """The columns of ``tracks`` that stage ``vertices`` reads, checked (present, finite,
    sigmas > 0; errors name the column and the row) and converted to float64."""
    _check_columns(tracks, "tracks", TRACK_COLUMNS, stage)
    cols = []
    for col in TRACK_COLUMNS:
        values = xp.ascontiguousarray(xp.asarray(tracks[col], dtype=xp.float64))
        _check_finite(xp, values, "tracks", col, stage)
        if col.startswith("sigma_"):
            bad = values <= 0
            if any_true(bad):
                row = item(xp.flatnonzero(bad)[0])
                raise PipelineError(f"stage {stage!r}: collection 'tracks' column {col!r} has "
                                    f"{item(values[row])!r} cm at row {row}; resolutions must "
                                    "be > 0")
        cols.append(values)
    return TrackInputs(xp.asarray(tracks.offsets, dtype=xp.int64), *cols)


# -- the ranking (every backend) ------------------------------------------------------------------
def track_jet_scores(group: Any, n_groups: int, trk: TrackInputs, cfg: VerticesConfig,
                     backend: Backend, clusterer: Any) -> Any:
    """Per group (a vertex) the sum of the pT^2 [GeV^2] of the anti-kT track jets (radius
    ``cfg.track_jet_radius``, massless tracks, every jet) of the tracks whose ``group`` is it
    (``group`` per track, -1: in none), float64 ``(n_groups,)`` on ``backend``: rule 4."""
    xp = backend.xp
    rows = xp.flatnonzero(group >= 0)
    if rows.shape[0]:  # grouped, each group's tracks in row order
        rows = rows[xp.lexsort(xp.stack([rows.astype(xp.float64),
                                         group[rows].astype(xp.float64)]))]
    offsets = xp.zeros(n_groups + 1, dtype=xp.int64)
    xp.cumsum(bincount(group[rows], n_groups, xp), out=offsets[1:])
    pt, eta, phi = trk.pt[rows], trk.eta[rows], trk.phi[rows]
    jets, _ = antikt_jets(pt * xp.cos(phi), pt * xp.sin(phi), pt * xp.sinh(eta),
                          pt * xp.cosh(eta), offsets, cfg.track_jet_radius, 0.0, backend,
                          clusterer, origin=("vertices", "tracks", rows, trk.offsets))
    jet_pt = xp.asarray(jets["pt"], dtype=xp.float64)
    return segment_sum(jet_pt * jet_pt, jets.offsets, backend)


def vertex_scores(group: Any, n_groups: int, sum_pt2: Any, trk: TrackInputs,
                  cfg: VerticesConfig, backend: Backend, clusterer: Any) -> Any:
    """Each vertex's ranking score [GeV^2] by ``cfg.ranking``: its track jets' (see
    :func:`track_jet_scores`) or its ``sum_pt2``."""
    if cfg.ranking == "sum_pt2":
        return sum_pt2
    return track_jet_scores(group, n_groups, trk, cfg, backend, clusterer)


# -- reference ------------------------------------------------------------------------------------
def _fit_reference(members: list[int], trk: TrackInputs, cfg: VerticesConfig
                   ) -> tuple[float, float, float, list[int]]:
    """The trimmed fit of one cluster (its track rows in ascending (z0, row) order): sum of w,
    w z0 and pT^2 of the tracks in the last fit, and those tracks (rule 3)."""
    weights = [1.0 / (trk.sigma_z0[r] * trk.sigma_z0[r]) for r in members]
    total = 0.0
    for w in weights:  # in order, as the kernels (not sum(): compensated from Python 3.12)
        total += w
    half = 0.5 * total
    running, z = 0.0, trk.z0[members[-1]]
    for r, w in zip(members, weights, strict=True):
        running += w
        if running >= half:
            z = trk.z0[r]  # the weighted median
            break
    result: tuple[float, float, float, list[int]] = (0.0, 0.0, 0.0, [])
    for _ in range(cfg.fit_iterations):
        kept = [(r, w) for r, w in zip(members, weights, strict=True)
                if abs(trk.z0[r] - z) < cfg.fit_sigmas * trk.sigma_z0[r]]
        sw = swz = pt2 = 0.0
        for r, w in kept:
            sw += w
            swz += w * trk.z0[r]
            pt2 += trk.pt[r] * trk.pt[r]
        result = (sw, swz, pt2, [r for r, _ in kept])
        if swz / sw == z:
            break
        z = swz / sw
    return result


class _Found(NamedTuple):
    """A vertex of the reference: its cluster's index in the event, fit and tracks."""

    k: int
    z: float
    z_error: float
    sum_pt2: float
    members: list[int]
    fitted: list[int]


def vertices_reference(trk: TrackInputs, cfg: VerticesConfig, backend: Backend
                       ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Plain Python, one event at a time (the track jets by the reference anti-kT, all events
    at once): the vertex columns, vertices per event, and per track its vertex row (-1: none)
    and its association with the primary vertex."""
    events: list[list[_Found]] = []
    for e in range(int(trk.offsets.shape[0]) - 1):
        lo, hi = int(trk.offsets[e]), int(trk.offsets[e + 1])
        rows = [r for r in range(lo, hi)
                if trk.pt[r] >= cfg.pt_min and trk.sigma_z0[r] < cfg.max_sigma_z0
                and abs(trk.d0[r]) < cfg.max_d0_significance * trk.sigma_d0[r]]
        rows.sort(key=lambda r: (float(trk.z0[r]), r))
        clusters: list[list[int]] = []
        for r in rows:
            if not clusters or trk.z0[r] - trk.z0[clusters[-1][-1]] > cfg.z_separation:
                clusters.append([])
            clusters[-1].append(r)
        found = []
        for k, members in enumerate(clusters):
            sw, swz, pt2, fitted = _fit_reference(members, trk, cfg)
            if len(fitted) >= cfg.min_tracks:
                found.append(_Found(k, swz / sw, math.sqrt(1.0 / sw), pt2, members, fitted))
        events.append(found)
    # the ranking: vertex i of the whole batch is group i
    every = [v for found in events for v in found]
    group = np.full(trk.pt.shape[0], -1, dtype=np.int64)
    for i, v in enumerate(every):
        group[v.fitted] = i
    scores = vertex_scores(group, len(every), np.array([v.sum_pt2 for v in every]), trk, cfg,
                           backend, cluster_reference)
    cols: dict[str, list] = {c: [] for c in VERTEX_COLUMNS}
    counts, vertex, pv = [], [], []
    first = 0
    for e, found in enumerate(events):
        score = [float(scores[first + i]) for i in range(len(found))]
        first += len(found)
        order = sorted(range(len(found)), key=lambda i: (-score[i], found[i].k))
        of = {r: row for row, i in enumerate(order) for r in found[i].members}
        for i in order:
            v = found[i]
            for c, x in zip(VERTEX_COLUMNS, (v.z, v.z_error, len(v.fitted), v.sum_pt2,
                                             score[i]), strict=True):
                cols[c].append(x)
        counts.append(len(found))
        z_pv = found[order[0]].z if found else 0.0
        for r in range(int(trk.offsets[e]), int(trk.offsets[e + 1])):
            vertex.append(of.get(r, -1))
            pv.append(bool(found) and abs(trk.z0[r] - z_pv)
                      < cfg.association_sigmas * trk.sigma_z0[r])
    out = {c: np.array(v, dtype=np.float64) for c, v in cols.items()}
    out["n_tracks"] = out["n_tracks"].astype(np.int32)
    return (out, np.array(counts, dtype=np.int64), np.array(vertex, dtype=np.int32),
            np.array(pv, dtype=bool))


# -- cpu and cuda: clusters by the kernels, then vertices with xp ---------------------------------
class Clusters(NamedTuple):
    """The kernels' output: per track its cluster within the event (-1: not selected) and
    whether its cluster's fit kept it; per slot ``offsets[e] + k`` (k < n_clusters[e]) cluster
    k's fit: sum of w, w z0, pT^2 and count."""

    cluster_of: Any
    sw: Any
    swz: Any
    n: Any
    pt2: Any
    n_clusters: Any
    in_fit: Any


def _clusters(n: int, n_events: int, xp: Any) -> Clusters:
    return Clusters(xp.full(n, -1, dtype=xp.int64), xp.zeros(n, dtype=xp.float64),
                    xp.zeros(n, dtype=xp.float64), xp.zeros(n, dtype=xp.int32),
                    xp.zeros(n, dtype=xp.float64), xp.zeros(n_events, dtype=xp.int64),
                    xp.zeros(n, dtype=xp.uint8))


def _clusters_cpu(trk: TrackInputs, cuts_dev: Any, be: Backend) -> Clusters:
    from hltemu.kernels.vertices import cluster_cpu as vertex_clusters_cpu

    n, n_events = int(trk.pt.shape[0]), int(trk.offsets.shape[0]) - 1
    out = _clusters(n, n_events, np)
    if n:
        vertex_clusters_cpu(trk.offsets, trk.pt, trk.d0, trk.z0, trk.sigma_d0, trk.sigma_z0,
                            cuts_dev, *out)
    return out


def _clusters_cuda(trk: TrackInputs, cuts_dev: Any, be: Backend) -> Clusters:
    from hltemu.kernels.vertices import cluster_cuda as vertex_clusters_cuda
    from hltemu.kernels.vertices import select_cuda

    xp = be.xp
    n, n_events = int(trk.pt.shape[0]), int(trk.offsets.shape[0]) - 1
    out = _clusters(n, n_events, xp)
    if n:
        selected = xp.zeros(n, dtype=xp.uint8)
        select_cuda[blocks(n), THREADS_PER_BLOCK](trk.pt, trk.d0, trk.sigma_d0, trk.sigma_z0,
                                                  cuts_dev, selected)
        rows = xp.flatnonzero(selected == 1)
        event = event_index(trk.offsets, n, xp)[rows]
        keys = xp.stack([rows.astype(xp.float64), trk.z0[rows], event.astype(xp.float64)])
        order = rows[xp.lexsort(keys)] if rows.shape[0] else rows
        order_offsets = xp.zeros(n_events + 1, dtype=xp.int64)
        xp.cumsum(bincount(event, n_events, xp), out=order_offsets[1:])
        vertex_clusters_cuda[blocks(n_events), THREADS_PER_BLOCK](
            trk.offsets, order, order_offsets, trk.pt, trk.z0, trk.sigma_z0, cuts_dev, *out)
    return out


def vertices_from_clusters(cl: Clusters, trk: TrackInputs, cfg: VerticesConfig,
                           backend: Backend, clusterer: Any
                           ) -> tuple[dict[str, Any], Any, Any, Any]:
    """The vertex columns, their offsets, each track's vertex row and PV association, from the
    kernels' clusters (NumPy or CuPy: the same code for cpu and cuda; ``clusterer`` makes
    the track jets)."""
    xp = backend.xp
    n, n_events = int(trk.pt.shape[0]), int(trk.offsets.shape[0]) - 1
    slot_event = event_index(trk.offsets, n, xp)
    k = xp.arange(n, dtype=xp.int64) - trk.offsets[slot_event]
    valid = (k < cl.n_clusters[slot_event]) & (cl.n >= cfg.min_tracks)
    # each track's cluster slot (n: none), and for the ranking its vertex's group: the
    # vertices (valid slots) numbered in slot order
    track_slot = xp.where(cl.cluster_of >= 0, trk.offsets[slot_event] + cl.cluster_of, n)
    slots = xp.flatnonzero(valid)
    group_of_slot = xp.full(n + 1, -1, dtype=xp.int64)
    group_of_slot[slots] = xp.arange(slots.shape[0], dtype=xp.int64)
    group = xp.where(cl.in_fit == 1, group_of_slot[track_slot], -1)
    score = xp.zeros(n, dtype=xp.float64)
    score[slots] = vertex_scores(group, int(slots.shape[0]), cl.pt2[slots], trk, cfg, backend,
                                 clusterer)
    if slots.shape[0]:
        slots = slots[xp.lexsort(xp.stack([k[slots].astype(xp.float64), -score[slots],
                                           slot_event[slots].astype(xp.float64)]))]
    v_event = slot_event[slots]
    offsets = xp.zeros(n_events + 1, dtype=xp.int64)
    xp.cumsum(bincount(v_event, n_events, xp), out=offsets[1:])
    sw = cl.sw[slots]
    cols = {"z": cl.swz[slots] / sw, "z_error": xp.sqrt(1.0 / sw), "n_tracks": cl.n[slots],
            "sum_pt2": cl.pt2[slots], "score": score[slots]}
    # each cluster slot's vertex row within its event (-1: no vertex)
    row_of_slot = xp.full(n + 1, -1, dtype=xp.int64)
    row_of_slot[slots] = xp.arange(slots.shape[0], dtype=xp.int64) - offsets[v_event]
    vertex = row_of_slot[track_slot].astype(xp.int32)
    has_pv = offsets[1:] > offsets[:-1]
    if slots.shape[0]:
        z_pv = cols["z"][xp.minimum(offsets[:-1], slots.shape[0] - 1)]
        pv = has_pv[slot_event] & (xp.abs(trk.z0 - z_pv[slot_event])
                                   < cfg.association_sigmas * trk.sigma_z0)
    else:
        pv = xp.zeros(n, dtype=xp.bool_)
    return cols, offsets, vertex, pv


# -- the stage ------------------------------------------------------------------------------------
def _output(cols: dict[str, Any], offsets: Any, vertex: Any, pv: Any, trk: TrackInputs
            ) -> dict[str, Collection]:
    return {"vertices": Collection(offsets, cols),
            "track_pv": Collection(trk.offsets, {"vertex": vertex, "pv": pv})}


def run_reference(batch: EventBatch, cfg: VerticesConfig, prep: Any) -> dict[str, Collection]:
    """:func:`vertices_reference` (plain Python)."""
    trk = check_tracks(batch["tracks"], np)
    cols, counts, vertex, pv = vertices_reference(trk, cfg, batch.backend)
    return _output(cols, counts_to_offsets(counts), vertex, pv, trk)


def _run_kernels(batch: EventBatch, cfg: VerticesConfig, prep: Any, clusters: Any,
                 clusterer: Any) -> dict[str, Collection]:
    be = batch.backend
    trk = check_tracks(batch["tracks"], be.xp)
    return _output(*vertices_from_clusters(clusters(trk, prep, be), trk, cfg, be, clusterer),
                   trk)


#: The Numba kernel (parallel over events), then the vertices with NumPy.
run_cpu = functools.partial(_run_kernels, clusters=_clusters_cpu, clusterer=cluster_cpu)
#: The selection kernel (a thread per track), the (event, z0, row) sort with ``xp``, the
#: clustering kernel (a thread per event), then the vertices with ``xp``.
run_cuda = functools.partial(_run_kernels, clusters=_clusters_cuda, clusterer=cluster_cuda)


STAGE = register(Stage(
    name="vertices",
    needs=("tracks",),
    adds=("vertices", "track_pv"),
    config_type=VerticesConfig,
    prepare=prepare,
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    doc="offline primary vertices from track z0 (gap clustering, trimmed weighted-mean fit, "
        "PV = largest sum of track-jet pT^2) and each track's association with the PV",
    in_default_chain=False,
))
