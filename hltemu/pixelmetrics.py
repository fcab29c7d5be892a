"""Figures of merit of pixel tracks and pixel vertices from truth (issue 19, "Truth metrics").

Measurements on host arrays (every collection is copied to the host first) of batches that
went through stages ``pixeltracks`` and, for the vertex figures, ``pixelvertices``; for
tests, examples and studies, never called by the chain (like :mod:`hltemu.metrics`).  Every
function takes one :class:`~hltemu.batch.EventBatch` or a list of them (the figures are then
those of all their events together).  Collections read: ``PixelHit`` (``layer``,
``sim_index``), ``GenPart`` (``pt, eta, phi, charge, status, vx, vy, vz, vertex``),
``pixeltracks`` (``pt, eta, phi, d0, z0, charge, n_hits, hit0 ... hit4``, ``sim_index`` and
the covariance ``cov_*`` if present),
``pixelvertices`` (``z``) and, when present, ``Event`` (``pv_z``, ``n_pileup``).

Definitions (the cuts are fields of :class:`PixelTruthConfig`; units GeV, cm, rad)
---------------------------------------------------------------------------------
*Interaction vertex.*  Each interaction ``k`` of an event (``GenPart.vertex``: 0 the hard
scatter, k >= 1 pileup) has the production point shared by most of its status-1 particles
(the generator gives every particle that is not a weak-decay product exactly the point of its
interaction; ties: the point nearest the beam line).  For the hard scatter it equals
``Event.pv_z`` in z (checked: ``checks.hs_vertex_minus_pv_z_cm``).

*Denominator particles* (``denominator``): GenPart rows with ``status == 1``, ``charge !=
0``, ``pt > pt_min`` (0.9 GeV), ``|eta| < eta_max`` (2.5), **prompt**: production point within
``max_dxy`` (0.2 cm) transversely and ``max_dz`` (1.0 cm) in z of their own interaction's
vertex (this keeps b- and c-hadron daughters and drops K0s, Lambda and conversion products
produced further out), and with pixel hits (``PixelHit.sim_index``) on at least
``min_layers`` (3) distinct pixel layers (``PixelHit.layer``: the 4 barrel layers and the
3 + 3 disks count separately).  Hard-scatter (``vertex == 0``) and pileup particles are
reported apart (``hard_scatter``, ``pileup``) and together (``all``).

*Matching.*  A track is matched to a particle when at least ``match_fraction`` (75%) of its
hits come from that particle (3/3, 3/4, 4/5).  The particle of each track is recomputed here
from the track's hit rows and ``PixelHit.sim_index`` (independently of the stage's own
``pixeltracks.sim_index``, whose disagreements are counted in
``checks.sim_index_mismatches``); noise hits (``sim_index`` -1) count against the track.

*Efficiency* = denominator particles matched by at least one track (of any pT) / denominator
particles, with a Clopper-Pearson central interval at ``cl`` (68.27%, one sigma:
:func:`hltemu.study.fits.clopper_pearson`); also per true-pT bin (0.9-2, 2-5, > 5 GeV) and
per true-|eta| bin (0-0.5-1-1.5-2-2.5).

*Fake rate* = unmatched tracks / tracks, over the tracks with reconstructed ``pt >
track_pt_min`` (0.9 GeV) and ``|eta| < track_eta_max`` (2.5).  A track matched to a particle
outside the denominator (soft, displaced, few layers) is not a fake.

*Duplicate rate* = (matched tracks - distinct particles they match) / matched tracks, over the
same tracks: the second and later tracks of one particle.

*Resolutions* of the tracks matched to denominator particles (every such track, duplicates
included), against the particle's helix at its point of closest approach (PCA) to the beam
line (the z axis; the field ``B`` of the geometry along +z, a positive particle bending
clockwise seen from +z, as in ``pixeltracks``): ``pt / pt_true - 1``; ``d0 - d0_true`` [cm];
``z0 - z0_true`` [cm]; ``eta - eta_true``; ``phi - phi_true`` [rad] (wrapped to
(-pi, pi]).  The true helix (:func:`true_track_parameters`) starts at the production point
``(vx, vy, vz)`` with direction ``phi`` and radius ``R = pt / (0.01 C B)`` cm; its centre is
``c = (vx, vy) + q R (sin phi, -cos phi)``, so ``d0_true = q (R - |c|)`` with ``pixeltracks``'
sign (``d0 = PCA . (-sin phi_PCA, cos phi_PCA)``; to first order ``-vx sin phi + vy cos
phi``), ``phi_true`` the direction at the PCA and ``z0_true = vz - s sinh(eta)`` with ``s``
the signed arc length from the PCA to the production point (for a particle made on the beam
line ``z0_true = vz`` exactly, ``d0_true = 0``).  Reported: the median and half of the
16-84% width (``half_width_68``) of each residual, over all such tracks and per true-pT bin.
*Pulls* ``(fit - true) / sigma`` of the same tracks, ``sigma`` the square root of the
diagonal of ``pixeltracks``' covariance (``cov_qoverpt_qoverpt``, ``cov_phi_phi``,
``cov_d0_d0``, ``cov_cottheta_cottheta``, ``cov_z0_z0``), for ``q / pt`` [1/GeV] (``charge /
pt`` against ``sign(q_true) / pt_true``), ``phi``, ``d0``, ``cot(theta) = sinh(eta)`` and
``z0`` against the truth above: per track type (``all``, ``triplets``, ``quadruplets`` = 4 or 5
hits) the Gaussian core (:func:`hltemu.study.fits.gaussian_core_fit`, an iterative
truncated-moment fit in a +-2 sigma window: mean and sigma with their errors), the half 16-84%
width and the rms.  A width of 1 means the covariance describes the residuals; tracks with a
foreign hit (3 of 4 hits matched) and displaced particles sit in the tails.  Without the
covariance columns the result says ``pulls: null``.

*Vertices.*  An interaction is *eligible* when at least ``vertex_min_particles`` (2) of its
particles are denominator particles (the definition above).  Within each event, pixel
vertices are assigned to interactions (all of them, eligible or not) nearest first: the pairs
(interaction, vertex) with ``|z_vertex - z_interaction| < vertex_max_dz`` (0.1 cm) are taken
in ascending ``|dz|`` and a pair is kept when neither its vertex nor its interaction is taken
yet, so one vertex counts for one interaction at most.  *Vertex efficiency* = eligible
interactions with a vertex / eligible interactions (hard scatter and pileup also apart);
unassigned vertices are counted (``vertices_unassigned``).  *Primary vertex within 0.1 cm*:
the fraction of events whose primary pixel vertex (row 0 of ``pixelvertices``, largest sum
pT^2) lies within ``pv_max_dz`` (0.1 cm) of ``Event.pv_z`` (events without a vertex fail;
needs ``Event.pv_z``).  *Vertices per event* against the true number of interactions
(``Event.n_pileup + 1``, else the number of distinct ``GenPart.vertex``): their means, the
ratio of means and the per-event lists.

Entry points: :func:`pixel_metrics` (everything, a JSON-ready dict: non-finite numbers become
``None``), :func:`tracking_metrics`, :func:`vertex_metrics`, :func:`track_truth` (per track
its particle), :func:`true_track_parameters`; :func:`metrics_table` / :func:`print_metrics`
show the dict (rich, or plain text).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hltemu.batch import Collection, EventBatch
from hltemu.geometry import C_LIGHT, N_PIXEL_LAYERS, default_geometry

#: pixeltracks' hit columns (hit0 ... hit4)
_MAX_TRACK_HITS = 5
HIT_COLUMNS: tuple[str, ...] = tuple(f"hit{i}" for i in range(_MAX_TRACK_HITS))

PULLS_NOTE = ("pulls (fit - true) / sigma need pixeltracks' covariance columns (cov_*), which "
              "these tracks lack")
#: Pulled quantity -> (pixeltracks covariance column, unit of the fitted quantity).
PULL_COLUMNS: dict[str, tuple[str, str]] = {
    "qoverpt": ("cov_qoverpt_qoverpt", "1/GeV"), "phi": ("cov_phi_phi", "rad"),
    "d0": ("cov_d0_d0", "cm"), "cottheta": ("cov_cottheta_cottheta", ""),
    "z0": ("cov_z0_z0", "cm"),
}
#: Window (in sigma) of the iterative Gaussian-core fit of the pulls.
PULL_CORE_WINDOW = 2.0


@dataclass(frozen=True)
class PixelTruthConfig:
    """The selections of the truth metrics (definitions in :mod:`hltemu.pixelmetrics`)."""

    pt_min: float = 0.9             # GeV, denominator particles: pt > pt_min
    eta_max: float = 2.5            # denominator particles: |eta| < eta_max
    max_dxy: float = 0.2            # cm, prompt: transverse distance to the interaction vertex
    max_dz: float = 1.0             # cm, prompt: |vz - z of the interaction vertex|
    min_layers: int = 3             # distinct pixel layers with a hit of the particle
    match_fraction: float = 0.75    # a track's hits from one particle, at least
    track_pt_min: float = 0.9       # GeV, tracks of the fake and duplicate rates
    track_eta_max: float = 2.5
    pt_bins: tuple[float, ...] = (0.9, 2.0, 5.0, math.inf)       # GeV, true pT
    eta_bins: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5)  # true |eta|
    vertex_max_dz: float = 0.1      # cm, vertex-interaction association
    vertex_min_particles: int = 2   # denominator particles of an eligible interaction
    pv_max_dz: float = 0.1          # cm, primary vertex vs Event.pv_z
    cl: float = 0.6827              # confidence level of the binomial intervals
    b_field: float | None = None    # T; None: the default geometry's


# -- small helpers ---------------------------------------------------------------------------
def _batches(batches: EventBatch | Iterable[EventBatch]) -> list[EventBatch]:
    return [batches] if isinstance(batches, EventBatch) else list(batches)


def _host(batch: EventBatch, name: str) -> Collection:
    return batch[name].to_host()


def _f64(coll: Collection, name: str) -> np.ndarray:
    return np.asarray(coll[name], dtype=np.float64)


def _i64(coll: Collection, name: str) -> np.ndarray:
    return np.asarray(coll[name], dtype=np.int64)


def ratio(passed: int, total: int, cl: float = 0.6827) -> dict[str, Any]:
    """``{"passed", "total", "value", "interval": [lo, hi]}``: ``passed / total`` with its
    Clopper-Pearson central interval at ``cl`` (NaN where ``total == 0``)."""
    from hltemu.study.fits import clopper_pearson

    lo, hi = clopper_pearson(np.array([passed]), np.array([total]), cl)
    return {"passed": int(passed), "total": int(total),
            "value": passed / total if total else float("nan"),
            "interval": [float(lo[0]), float(hi[0])]}


def spread(values: np.ndarray) -> dict[str, Any]:
    """``{"n", "median", "half_width_68"}``: the median and half the 16-84% width (NaN when
    empty)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "median": float("nan"), "half_width_68": float("nan")}
    lo, mid, hi = np.percentile(v, [15.865, 50.0, 84.135])
    return {"n": int(v.size), "median": float(mid), "half_width_68": float((hi - lo) / 2)}


def _wrap(dphi: np.ndarray) -> np.ndarray:
    """Angles to (-pi, pi]."""
    return -np.remainder(-dphi + np.pi, 2 * np.pi) + np.pi


def _popcount(mask: np.ndarray) -> np.ndarray:
    n = np.zeros(mask.shape, dtype=np.int64)
    for bit in range(N_PIXEL_LAYERS):
        n += (mask >> bit) & 1
    return n


def jsonable(obj: Any) -> Any:
    """``obj`` with NumPy scalars and arrays made Python ones and non-finite floats ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.integer, bool, np.bool_)):
        return obj.item() if hasattr(obj, "item") else obj
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


# -- truth -------------------------------------------------------------------------------------
def track_truth(tracks: Collection, hits: Collection, match_fraction: float = 0.75
                ) -> np.ndarray:
    """Per track the GenPart row (within its event) of at least ``match_fraction`` of its
    hits, -1 if none (int64), from ``hit0 ... hit4`` (PixelHit rows within the event, -1
    absent) and ``PixelHit.sim_index``; a noise hit (-1) counts as nobody's.

    Counted with :func:`numpy.unique` over (track, particle) pairs, independently of the
    stage's own vote (``pixeltracks._truth``), so that the two can be compared."""
    tracks, hits = tracks.to_host(), hits.to_host()
    n = tracks.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    ev = tracks.event_index()
    rows = np.stack([_i64(tracks, c) for c in HIT_COLUMNS if c in tracks], axis=1)
    present = rows >= 0
    n_hits = present.sum(axis=1)
    sim = _i64(hits, "sim_index")
    glob = hits.offsets[ev][:, None] + np.where(present, rows, 0)
    owner = np.where(present, sim[glob], -1)
    t_idx = np.broadcast_to(np.arange(n)[:, None], owner.shape)
    ok = owner >= 0
    pairs, counts = np.unique(np.stack([t_idx[ok], owner[ok]]), axis=1, return_counts=True)
    best_count = np.zeros(n, dtype=np.int64)
    best = np.full(n, -1, dtype=np.int64)
    # pairs are sorted by (track, particle): keep each track's largest count
    order = np.lexsort((-counts, pairs[0]))
    first = order[np.r_[True, pairs[0][order][1:] != pairs[0][order][:-1]]]
    best_count[pairs[0][first]] = counts[first]
    best[pairs[0][first]] = pairs[1][first]
    matched = best_count >= match_fraction * n_hits - 1e-9
    return np.where(matched & (n_hits > 0), best, -1)


def interaction_vertices(genpart: Collection) -> dict[str, np.ndarray]:
    """The vertex of every interaction present in ``genpart``: arrays ``event``,
    ``interaction`` (``GenPart.vertex``), ``x, y, z`` [cm] and ``n_particles`` (its status-1
    rows), one entry per (event, interaction), sorted by both.  The vertex is the production
    point shared by most of the interaction's status-1 particles (ties: nearest the beam
    line)."""
    gen = genpart.to_host()
    s1 = np.asarray(gen["status"]) == 1
    ev = gen.event_index()[s1]
    k = _i64(gen, "vertex")[s1]
    # float32 points compare exactly: prompt particles share the generator's vertex bits
    x, y, z = (np.asarray(gen[c])[s1] for c in ("vx", "vy", "vz"))
    empty = {"event": np.zeros(0, np.int64), "interaction": np.zeros(0, np.int64),
             "x": np.zeros(0), "y": np.zeros(0), "z": np.zeros(0),
             "n_particles": np.zeros(0, np.int64)}
    if ev.size == 0:
        return empty
    keys = np.stack([ev, k, x.view(np.int32) if x.dtype == np.float32 else x.view(np.int64),
                     y.view(np.int32) if y.dtype == np.float32 else y.view(np.int64),
                     z.view(np.int32) if z.dtype == np.float32 else z.view(np.int64)])
    points, first, counts = np.unique(keys.T, axis=0, return_index=True, return_counts=True)
    px, py, pz = (np.asarray(a, np.float64)[first] for a in (x, y, z))
    rho = np.hypot(px, py)
    # per (event, interaction): most particles first, then nearest the beam line
    order = np.lexsort((rho, -counts, points[:, 1], points[:, 0]))
    pe, pk = points[order, 0], points[order, 1]
    head = np.r_[True, (pe[1:] != pe[:-1]) | (pk[1:] != pk[:-1])]
    pick = order[head]
    group = np.cumsum(head) - 1
    n_part = np.bincount(group, weights=counts[order]).astype(np.int64)
    return {"event": points[pick, 0].astype(np.int64),
            "interaction": points[pick, 1].astype(np.int64),
            "x": px[pick], "y": py[pick], "z": pz[pick], "n_particles": n_part}


def true_track_parameters(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray,
                          charge: np.ndarray, vx: np.ndarray, vy: np.ndarray, vz: np.ndarray,
                          b_field: float | None = None) -> dict[str, np.ndarray]:
    """``d0`` [cm], ``z0`` [cm] and ``phi`` [rad] at the point of closest approach to the
    beam line of the helix of a particle produced at ``(vx, vy, vz)`` [cm] with ``pt`` [GeV],
    ``eta``, direction ``phi`` and ``charge`` in the field ``b_field`` [T] along +z (default:
    the default geometry's).  Sign of d0 as ``pixeltracks``: ``PCA . (-sin phi, cos phi)``.
    Neutral particles (charge 0) get straight lines."""
    b = default_geometry().b_field if b_field is None else b_field
    pt, eta, phi, vx, vy, vz = (np.asarray(a, dtype=np.float64)
                                for a in (pt, eta, phi, vx, vy, vz))
    q = np.sign(np.asarray(charge, dtype=np.float64))
    cot = np.sinh(eta)
    # straight line (q == 0): PCA = p0 - (p0 . u) u
    s_line = vx * np.cos(phi) + vy * np.sin(phi)
    d0 = -vx * np.sin(phi) + vy * np.cos(phi)
    z0 = vz - s_line * cot
    phi0 = phi.copy()
    c = q != 0
    if c.any():
        r = pt[c] / (0.01 * C_LIGHT * b)  # cm
        qc = q[c]
        cx = vx[c] + qc * r * np.sin(phi[c])
        cy = vy[c] - qc * r * np.cos(phi[c])
        dc = np.hypot(cx, cy)
        d0[c] = qc * (r - dc)
        phi0[c] = np.arctan2(qc * cx, -qc * cy)
        # PCA = c (1 - R / |c|); arc from the PCA to the production point, signed along the
        # motion
        pca_x, pca_y = cx * (1 - r / dc), cy * (1 - r / dc)
        ch_x, ch_y = vx[c] - pca_x, vy[c] - pca_y
        chord = np.hypot(ch_x, ch_y)
        sign = np.sign(ch_x * np.cos(phi0[c]) + ch_y * np.sin(phi0[c]))
        s = sign * 2 * r * np.arcsin(np.minimum(1.0, chord / (2 * r)))
        z0[c] = vz[c] - s * cot[c]
    return {"d0": d0, "z0": z0, "phi": phi0}


# -- per-batch tables --------------------------------------------------------------------------
def _particle_table(batch: EventBatch, cfg: PixelTruthConfig) -> dict[str, np.ndarray]:
    """Per GenPart row of the batch: selection flags and what the metrics need."""
    gen = _host(batch, "GenPart")
    hits = _host(batch, "PixelHit")
    gev = gen.event_index()
    n = gen.size
    # distinct layers with a hit of each particle
    sim = _i64(hits, "sim_index")
    hev = hits.event_index()
    ok = sim >= 0
    layer_mask = np.zeros(n, dtype=np.int64)
    np.bitwise_or.at(layer_mask, gen.offsets[hev[ok]] + sim[ok],
                     np.left_shift(1, _i64(hits, "layer")[ok]))
    n_layers = _popcount(layer_mask)
    # the particle's interaction vertex
    iv = interaction_vertices(gen)
    k = _i64(gen, "vertex")
    key_iv = iv["event"] * (1 << 20) + iv["interaction"]
    pos = np.searchsorted(key_iv, gev * (1 << 20) + k)
    pos = np.minimum(pos, max(key_iv.size - 1, 0))
    has_iv = key_iv.size > 0
    found_iv = (key_iv[pos] == gev * (1 << 20) + k) if has_iv else np.zeros(n, bool)
    vx, vy, vz = _f64(gen, "vx"), _f64(gen, "vy"), _f64(gen, "vz")
    ix = np.where(found_iv, iv["x"][pos] if has_iv else 0.0, np.nan)
    iy = np.where(found_iv, iv["y"][pos] if has_iv else 0.0, np.nan)
    iz = np.where(found_iv, iv["z"][pos] if has_iv else 0.0, np.nan)
    with np.errstate(invalid="ignore"):
        prompt = (np.hypot(vx - ix, vy - iy) < cfg.max_dxy) & (np.abs(vz - iz) < cfg.max_dz)
    pt, eta = _f64(gen, "pt"), _f64(gen, "eta")
    charged = (np.asarray(gen["status"]) == 1) & (np.asarray(gen["charge"]) != 0)
    kinematic = charged & (pt > cfg.pt_min) & (np.abs(eta) < cfg.eta_max)
    den = kinematic & prompt & (n_layers >= cfg.min_layers)
    return {"event": gev, "interaction": k, "pt": pt, "eta": eta, "phi": _f64(gen, "phi"),
            "charge": _i64(gen, "charge"), "vx": vx, "vy": vy, "vz": vz,
            "n_layers": n_layers, "prompt": prompt, "kinematic": kinematic,
            "denominator": den}


def _batch_tables(batch: EventBatch, cfg: PixelTruthConfig) -> dict[str, Any]:
    gen = _host(batch, "GenPart")
    hits = _host(batch, "PixelHit")
    tracks = _host(batch, "pixeltracks")
    parts = _particle_table(batch, cfg)
    # tracks and their particles (global GenPart rows of this batch)
    tev = tracks.event_index()
    sim = track_truth(tracks, hits, cfg.match_fraction)
    mismatches = int((_i64(tracks, "sim_index") != sim).sum()) if "sim_index" in tracks \
        else -1
    gid = np.where(sim >= 0, gen.offsets[tev] + np.maximum(sim, 0), -1)
    n_tracks_of = np.bincount(gid[gid >= 0], minlength=gen.size)
    t_pt, t_eta = _f64(tracks, "pt"), _f64(tracks, "eta")
    sel = (t_pt > cfg.track_pt_min) & (np.abs(t_eta) < cfg.track_eta_max)
    # residuals of tracks matched to denominator particles
    res_rows = np.flatnonzero((gid >= 0) & parts["denominator"][np.maximum(gid, 0)])
    g = gid[res_rows]
    true = true_track_parameters(parts["pt"][g], parts["eta"][g], parts["phi"][g],
                                 parts["charge"][g], parts["vx"][g], parts["vy"][g],
                                 parts["vz"][g], cfg.b_field)
    residuals = {
        "true_pt": parts["pt"][g],
        "pt_rel": t_pt[res_rows] / parts["pt"][g] - 1.0,
        "d0": _f64(tracks, "d0")[res_rows] - true["d0"],
        "z0": _f64(tracks, "z0")[res_rows] - true["z0"],
        "eta": t_eta[res_rows] - parts["eta"][g],
        "phi": _wrap(_f64(tracks, "phi")[res_rows] - true["phi"]),
        "n_hits": _i64(tracks, "n_hits")[res_rows],
    }
    if all(col in tracks for col, _ in PULL_COLUMNS.values()):
        fitted = {"qoverpt": _f64(tracks, "charge")[res_rows] / t_pt[res_rows],
                  "cottheta": np.sinh(t_eta[res_rows])}
        truth = {"qoverpt": np.sign(parts["charge"][g]) / parts["pt"][g],
                 "cottheta": np.sinh(parts["eta"][g])}
        diff = {"qoverpt": fitted["qoverpt"] - truth["qoverpt"], "phi": residuals["phi"],
                "d0": residuals["d0"], "cottheta": fitted["cottheta"] - truth["cottheta"],
                "z0": residuals["z0"]}
        with np.errstate(divide="ignore", invalid="ignore"):
            for name, (col, _) in PULL_COLUMNS.items():
                residuals[f"pull_{name}"] = diff[name] / np.sqrt(_f64(tracks, col)[res_rows])
    # duplicates among the selected matched tracks
    sel_matched = sel & (gid >= 0)
    n_distinct = np.unique(gid[sel_matched]).size
    out: dict[str, Any] = {
        "n_events": batch.n_events,
        "n_tracks": tracks.size,
        "den": {key: parts[key][parts["denominator"]] for key in ("pt", "eta", "interaction")},
        "den_found": (n_tracks_of > 0)[parts["denominator"]],
        "den_event": parts["event"][parts["denominator"]],
        "sel_tracks": int(sel.sum()),
        "sel_unmatched": int((sel & (gid < 0)).sum()),
        "sel_matched": int(sel_matched.sum()),
        "sel_duplicates": int(sel_matched.sum()) - n_distinct,
        "residuals": residuals,
        "sim_index_mismatches": mismatches,
        "n_hits_mismatches": int((np.stack([_i64(tracks, c) >= 0 for c in HIT_COLUMNS
                                            if c in tracks], axis=1).sum(axis=1)
                                  != _i64(tracks, "n_hits")).sum()) if tracks.size else 0,
    }
    if "pixelvertices" in batch:
        out["vertices"] = _vertex_tables(batch, gen, parts, cfg)
    return out


def assign_vertices(true_z: np.ndarray, reco_z: np.ndarray, max_dz: float) -> np.ndarray:
    """One event: for each true interaction (z [cm]) the row of the pixel vertex assigned to
    it, -1 if none.  Pairs with ``|dz| < max_dz`` are taken nearest first (ties: lower
    interaction, then lower vertex row), each vertex and each interaction at most once."""
    true_z, reco_z = np.asarray(true_z, np.float64), np.asarray(reco_z, np.float64)
    out = np.full(true_z.size, -1, dtype=np.int64)
    if true_z.size == 0 or reco_z.size == 0:
        return out
    dz = np.abs(true_z[:, None] - reco_z[None, :])
    ti, vi = np.nonzero(dz < max_dz)
    order = np.lexsort((vi, ti, dz[ti, vi]))
    used = np.zeros(reco_z.size, dtype=bool)
    for t, v in zip(ti[order].tolist(), vi[order].tolist(), strict=True):
        if out[t] < 0 and not used[v]:
            out[t] = v
            used[v] = True
    return out


def _vertex_tables(batch: EventBatch, gen: Collection, parts: Mapping[str, np.ndarray],
                   cfg: PixelTruthConfig) -> dict[str, Any]:
    vtx = _host(batch, "pixelvertices")
    iv = interaction_vertices(gen)
    n_ev = batch.n_events
    # denominator particles per interaction
    key = parts["event"] * (1 << 20) + parts["interaction"]
    key_iv = iv["event"] * (1 << 20) + iv["interaction"]
    den_keys, den_counts = np.unique(key[parts["denominator"]], return_counts=True)
    n_den = np.zeros(key_iv.size, dtype=np.int64)
    where = np.searchsorted(key_iv, den_keys)
    n_den[where] = den_counts
    eligible = n_den >= cfg.vertex_min_particles
    assigned = np.full(key_iv.size, -1, dtype=np.int64)
    vz = _f64(vtx, "z")
    starts = np.searchsorted(iv["event"], np.arange(n_ev + 1))
    n_assigned_vertices = 0
    for e in range(n_ev):
        a, b = starts[e], starts[e + 1]
        zs = vz[vtx.offsets[e]:vtx.offsets[e + 1]]
        assigned[a:b] = assign_vertices(iv["z"][a:b], zs, cfg.vertex_max_dz)
        n_assigned_vertices += int((assigned[a:b] >= 0).sum())
    # primary vertex vs Event.pv_z
    n_vtx = np.asarray(vtx.counts, dtype=np.int64)
    pv_dz = np.full(n_ev, np.nan)
    pv_z = None
    n_int = np.bincount(iv["event"], minlength=n_ev).astype(np.int64)
    hs_check = float("nan")
    if "Event" in batch:
        event = _host(batch, "Event")
        if "pv_z" in event:
            pv_z = _f64(event, "pv_z")
            has = n_vtx > 0
            pv_dz[has] = vz[vtx.offsets[:-1][has]] - pv_z[has]
            hs = iv["interaction"] == 0
            if hs.any():
                hs_check = float(np.max(np.abs(iv["z"][hs] - pv_z[iv["event"][hs]])))
        if "n_pileup" in event:
            n_int = _i64(event, "n_pileup") + 1
    return {"eligible": eligible, "assigned": assigned >= 0, "hard_scatter":
            iv["interaction"] == 0, "n_interactions": n_int, "n_vertices": n_vtx,
            "n_assigned_vertices": n_assigned_vertices, "pv_dz": pv_dz,
            "has_pv_z": pv_z is not None, "hs_check": hs_check}


def _collect(batches: EventBatch | Iterable[EventBatch], cfg: PixelTruthConfig
             ) -> list[dict[str, Any]]:
    tables = [_batch_tables(b, cfg) for b in _batches(batches)]
    if not tables:
        raise ValueError("no batch given")
    return tables


def _cat(tables: Sequence[Mapping[str, Any]], *path: str) -> np.ndarray:
    arrays = []
    for t in tables:
        v: Any = t
        for p in path:
            v = v[p]
        arrays.append(np.asarray(v))
    return np.concatenate(arrays) if arrays else np.zeros(0)


# -- the figures -----------------------------------------------------------------------------
def _binned_efficiency(found: np.ndarray, x: np.ndarray, edges: Sequence[float], cl: float
                       ) -> list[dict[str, Any]]:
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (x >= lo) & (x < hi)
        out.append({"lo": lo, "hi": hi, **ratio(int(found[inside].sum()),
                                                  int(inside.sum()), cl)})
    return out


def _efficiency(found: np.ndarray, pt: np.ndarray, eta: np.ndarray, cfg: PixelTruthConfig
                ) -> dict[str, Any]:
    return {**ratio(int(found.sum()), int(found.size), cfg.cl),
            "pt_bins": _binned_efficiency(found, pt, cfg.pt_bins, cfg.cl),
            "eta_bins": _binned_efficiency(found, np.abs(eta), cfg.eta_bins, cfg.cl)}


def pull_core(pulls: np.ndarray) -> dict[str, Any]:
    """The Gaussian core of pulls: :func:`hltemu.study.fits.gaussian_core_fit` with a
    +-:data:`PULL_CORE_WINDOW` sigma window (``n``, ``mean``, ``sigma`` and their errors,
    ``status``), plus ``half_width_68`` (half the 16-84% width) and ``rms``; non-finite pulls
    (a zero variance) are left out."""
    from hltemu.study.fits import gaussian_core_fit

    p = np.asarray(pulls, dtype=np.float64)
    p = p[np.isfinite(p)]
    core = gaussian_core_fit(p, window=PULL_CORE_WINDOW)
    out = {"n": int(p.size), **{k: core[k] for k in ("status", "mean", "mean_error", "sigma",
                                                     "sigma_error", "n_core")}}
    out["half_width_68"] = spread(p)["half_width_68"]
    out["rms"] = float(p.std()) if p.size else float("nan")
    return out


def pull_widths(residuals: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Per track type (``all``, ``triplets``: 3 hits, ``quadruplets``: 4 or 5 hits) and pulled
    quantity (:data:`PULL_COLUMNS`) the :func:`pull_core` of ``(fit - true) / sigma``."""
    n_hits = np.asarray(residuals["n_hits"])
    types = {"all": np.ones(n_hits.size, dtype=bool), "triplets": n_hits == 3,
             "quadruplets": n_hits >= 4}
    return {kind: {name: pull_core(np.asarray(residuals[f"pull_{name}"])[sel])
                   for name in PULL_COLUMNS} for kind, sel in types.items()}


def _tracking_from_tables(tables: Sequence[Mapping[str, Any]], cfg: PixelTruthConfig
                          ) -> dict[str, Any]:
    found = _cat(tables, "den_found").astype(bool)
    pt, eta = _cat(tables, "den", "pt"), _cat(tables, "den", "eta")
    hs = _cat(tables, "den", "interaction") == 0
    n_events = sum(t["n_events"] for t in tables)
    n_tracks = sum(t["n_tracks"] for t in tables)
    common = set.intersection(*(set(t["residuals"]) for t in tables))
    res = {k: _cat(tables, "residuals", k) for k in tables[0]["residuals"] if k in common}
    names = {"pt_rel": "pt_rel", "d0": "d0_cm", "z0": "z0_cm", "eta": "eta",
             "phi": "phi_rad"}

    def resolutions(mask: np.ndarray) -> dict[str, Any]:
        return {out: spread(res[k][mask]) for k, out in names.items()}

    true_pt = res["true_pt"]
    pt_bins = []
    for lo, hi in zip(cfg.pt_bins[:-1], cfg.pt_bins[1:], strict=True):
        pt_bins.append({"lo": lo, "hi": hi,
                        **resolutions((true_pt >= lo) & (true_pt < hi))})
    mism = [t["sim_index_mismatches"] for t in tables]
    has_pulls = all("pull_d0" in t["residuals"] for t in tables)
    return {
        "events": n_events,
        "tracks": n_tracks,
        "tracks_per_event": n_tracks / n_events if n_events else float("nan"),
        "efficiency": {"all": _efficiency(found, pt, eta, cfg),
                       "hard_scatter": _efficiency(found[hs], pt[hs], eta[hs], cfg),
                       "pileup": _efficiency(found[~hs], pt[~hs], eta[~hs], cfg)},
        "fake_rate": ratio(sum(t["sel_unmatched"] for t in tables),
                           sum(t["sel_tracks"] for t in tables), cfg.cl),
        "duplicate_rate": ratio(sum(t["sel_duplicates"] for t in tables),
                                sum(t["sel_matched"] for t in tables), cfg.cl),
        "resolution": {"all": {"lo": cfg.pt_bins[0], "hi": cfg.pt_bins[-1],
                               **resolutions(np.ones(true_pt.size, dtype=bool))},
                       "pt_bins": pt_bins},
        "pulls": pull_widths(res) if has_pulls else None,
        "pulls_note": None if has_pulls else PULLS_NOTE,
        "checks": {
            "sim_index_mismatches": (None if any(m < 0 for m in mism) else sum(mism)),
            "n_hits_mismatches": sum(t["n_hits_mismatches"] for t in tables),
        },
    }


def _vertex_from_tables(tables: Sequence[Mapping[str, Any]], cfg: PixelTruthConfig
                        ) -> dict[str, Any] | None:
    if not all("vertices" in t for t in tables):
        return None
    v = [t["vertices"] for t in tables]
    elig = np.concatenate([x["eligible"] for x in v])
    done = np.concatenate([x["assigned"] for x in v])
    hs = np.concatenate([x["hard_scatter"] for x in v])
    n_int = np.concatenate([x["n_interactions"] for x in v])
    n_vtx = np.concatenate([x["n_vertices"] for x in v])
    pv_dz = np.concatenate([x["pv_dz"] for x in v])
    n_assigned = sum(x["n_assigned_vertices"] for x in v)
    has_pv = all(x["has_pv_z"] for x in v)
    hs_checks = [x["hs_check"] for x in v if math.isfinite(x["hs_check"])]
    with np.errstate(invalid="ignore"):
        within = np.abs(pv_dz) < cfg.pv_max_dz
    mean_v = float(n_vtx.mean()) if n_vtx.size else float("nan")
    mean_i = float(n_int.mean()) if n_int.size else float("nan")
    return {
        "efficiency": {"all": ratio(int((elig & done).sum()), int(elig.sum()), cfg.cl),
                       "hard_scatter": ratio(int((elig & done & hs).sum()),
                                             int((elig & hs).sum()), cfg.cl),
                       "pileup": ratio(int((elig & done & ~hs).sum()),
                                       int((elig & ~hs).sum()), cfg.cl)},
        "interactions": int(elig.size),
        "eligible_interactions": int(elig.sum()),
        "vertices": int(n_vtx.sum()),
        "vertices_unassigned": int(n_vtx.sum()) - n_assigned,
        "pv_within": (ratio(int(within.sum()), int(pv_dz.size), cfg.cl) if has_pv else None),
        "pv_abs_dz_median_cm": (float(np.nanmedian(np.abs(pv_dz)))
                                if has_pv and np.isfinite(pv_dz).any() else float("nan")),
        "events_without_vertex": int((n_vtx == 0).sum()),
        "per_event": {"mean_vertices": mean_v, "mean_interactions": mean_i,
                      "mean_eligible_interactions":
                          int(elig.sum()) / n_vtx.size if n_vtx.size else float("nan"),
                      "vertices_per_interaction": mean_v / mean_i if mean_i else float("nan"),
                      "n_vertices": n_vtx.tolist(), "n_interactions": n_int.tolist()},
        "checks": {"hs_vertex_minus_pv_z_cm": max(hs_checks) if hs_checks else float("nan")},
    }


def tracking_metrics(batches: EventBatch | Iterable[EventBatch],
                     cfg: PixelTruthConfig | None = None) -> dict[str, Any]:
    """Efficiency (all, hard scatter, pileup; per pT and |eta| bin), fake and duplicate rates,
    resolutions per true-pT bin, and the truth cross-checks, of ``pixeltracks`` (definitions
    in :mod:`hltemu.pixelmetrics`).  Not yet JSON-cleaned (NaN stays NaN)."""
    cfg = cfg or PixelTruthConfig()
    return _tracking_from_tables(_collect(batches, cfg), cfg)


def vertex_metrics(batches: EventBatch | Iterable[EventBatch],
                   cfg: PixelTruthConfig | None = None) -> dict[str, Any] | None:
    """Vertex efficiency (all, hard scatter, pileup), primary vertex within ``pv_max_dz`` of
    ``Event.pv_z``, vertices per event vs interactions (definitions in
    :mod:`hltemu.pixelmetrics`); ``None`` when a batch has no ``pixelvertices``."""
    cfg = cfg or PixelTruthConfig()
    return _vertex_from_tables(_collect(batches, cfg), cfg)


def pixel_metrics(batches: EventBatch | Iterable[EventBatch],
                  cfg: PixelTruthConfig | None = None) -> dict[str, Any]:
    """Everything, JSON-serialisable (non-finite numbers ``None``): ``selection`` (the
    config), ``tracking`` (:func:`tracking_metrics`), ``vertices`` (:func:`vertex_metrics`,
    ``None`` without ``pixelvertices``), ``units`` and ``definitions`` (one line each)."""
    cfg = cfg or PixelTruthConfig()
    tables = _collect(batches, cfg)
    return jsonable({
        "selection": {**asdict(cfg), "b_field": (default_geometry().b_field
                                                 if cfg.b_field is None else cfg.b_field)},
        "tracking": _tracking_from_tables(tables, cfg),
        "vertices": _vertex_from_tables(tables, cfg),
        "units": {"pt": "GeV", "d0_cm": "cm", "z0_cm": "cm", "phi_rad": "rad",
                  "pt_rel": "pt / pt_true - 1", "interval": f"Clopper-Pearson, cl {cfg.cl}",
                  "half_width_68": "half of the 16-84% width",
                  "pulls": "(fit - true) / sigma, dimensionless"},
        "definitions": DEFINITIONS,
    })


DEFINITIONS: dict[str, str] = {
    "denominator": "GenPart status 1, charge != 0, pt > pt_min, |eta| < eta_max, production "
                   "point within max_dxy (transverse) and max_dz (z) of its interaction's "
                   "vertex, hits on >= min_layers distinct pixel layers",
    "matched": ">= match_fraction of the track's hits from one particle (recomputed from "
               "hit rows and PixelHit.sim_index)",
    "efficiency": "denominator particles matched by >= 1 track / denominator particles",
    "fake_rate": "unmatched tracks / tracks, tracks with pt > track_pt_min, |eta| < "
                 "track_eta_max",
    "duplicate_rate": "(matched tracks - distinct particles) / matched tracks, same tracks",
    "resolution": "tracks matched to denominator particles vs the particle's helix at the "
                  "PCA to the beam line: median and half the 16-84% width, per true pT bin",
    "pulls": "(fit - true) / sqrt(covariance diagonal) of the same tracks, per track type "
             "(3 hits, 4-5 hits): Gaussian core (iterative fit in +-2 sigma), half 16-84% "
             "width, rms",
    "vertex_efficiency": "interactions with >= vertex_min_particles denominator particles "
                         "that get a pixel vertex within vertex_max_dz (nearest pairs "
                         "first, one vertex per interaction) / such interactions",
    "pv_within": "events whose pixelvertices row 0 lies within pv_max_dz of Event.pv_z / "
                 "events",
}


# -- showing it --------------------------------------------------------------------------------
def _fmt_ratio(r: Mapping[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    if r is None or r.get("value") is None:
        return "n/a"
    lo, hi = r["interval"]
    return (f"{scale * r['value']:.{digits}f} (+{scale * (hi - r['value']):.{digits}f} "
            f"-{scale * (r['value'] - lo):.{digits}f})  [{r['passed']}/{r['total']}]")


def _edge(x: Any) -> str:
    return "inf" if x is None or x == math.inf else f"{x:g}"


def _fmt_spread(s: Mapping[str, Any], scale: float, digits: int) -> str:
    if s["n"] == 0 or s["median"] is None:
        return "n/a"
    return f"{scale * s['half_width_68']:.{digits}f} ({scale * s['median']:+.{digits}f})"


def metrics_rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(quantity, value) rows of :func:`pixel_metrics`' dict, for any table."""
    t = result["tracking"]
    rows = [("events", str(t["events"])),
            ("tracks / event", f"{t['tracks_per_event']:.1f}" if t["tracks_per_event"]
             is not None else "n/a")]
    for part in ("hard_scatter", "pileup", "all"):
        e = t["efficiency"][part]
        rows.append((f"efficiency {part} [%]", _fmt_ratio(e)))
        for b in e["pt_bins"]:
            rows.append((f"  pT {_edge(b['lo'])}-{_edge(b['hi'])} GeV", _fmt_ratio(b)))
        for b in e["eta_bins"]:
            rows.append((f"  |eta| {_edge(b['lo'])}-{_edge(b['hi'])}", _fmt_ratio(b)))
    rows.append(("fake rate [%]", _fmt_ratio(t["fake_rate"], digits=2)))
    rows.append(("duplicate rate [%]", _fmt_ratio(t["duplicate_rate"], digits=2)))
    for b in [t["resolution"]["all"], *t["resolution"]["pt_bins"]]:
        rows.append((f"resolution pT {_edge(b['lo'])}-{_edge(b['hi'])} GeV (n={b['pt_rel']['n']}): "
                     "half-width68 (median)",
                     f"pT {_fmt_spread(b['pt_rel'], 100, 2)} %, "
                     f"d0 {_fmt_spread(b['d0_cm'], 1e4, 1)} um, "
                     f"z0 {_fmt_spread(b['z0_cm'], 1e4, 1)} um, "
                     f"eta {_fmt_spread(b['eta'], 1e3, 2)} e-3, "
                     f"phi {_fmt_spread(b['phi_rad'], 1e3, 2)} mrad"))
    if t["pulls"] is None:
        rows.append(("pulls", "n/a: " + t["pulls_note"]))
    else:
        for kind, by_name in t["pulls"].items():
            cells = []
            for name, c in by_name.items():
                if c["status"] != "ok":
                    cells.append(f"{name} n/a ({c['status']})")
                    continue
                cells.append(f"{name} {c['sigma']:.3f}+-{c['sigma_error']:.3f} "
                             f"({c['mean']:+.2f})")
            n = next(iter(by_name.values()))["n"]
            rows.append((f"pull core sigma (mean) {kind} (n={n})", ", ".join(cells)))
    rows.append(("sim_index cross-check mismatches", str(t["checks"]["sim_index_mismatches"])))
    v = result.get("vertices")
    if v is not None:
        for part in ("hard_scatter", "pileup", "all"):
            rows.append((f"vertex efficiency {part} [%]", _fmt_ratio(v["efficiency"][part])))
        rows.append(("PV within 0.1 cm of Event.pv_z [%]", _fmt_ratio(v["pv_within"])))
        med = v["pv_abs_dz_median_cm"]
        rows.append(("PV median |dz| [um]", "n/a" if med is None else f"{1e4 * med:.1f}"))
        pe = v["per_event"]
        rows.append(("vertices / event vs interactions / event",
                     f"{pe['mean_vertices']:.2f} vs {pe['mean_interactions']:.2f} "
                     f"(eligible {pe['mean_eligible_interactions']:.2f}); unassigned "
                     f"vertices {v['vertices_unassigned']}/{v['vertices']}"))
    return rows


def metrics_table(result: Mapping[str, Any], title: str = "pixel tracks and vertices vs "
                  "truth") -> Any:
    """A :class:`rich.table.Table` of :func:`metrics_rows`."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value (68% CL interval)")
    for name, value in metrics_rows(result):
        table.add_row(escape(name), escape(value))
    return table


def print_metrics(result: Mapping[str, Any], plain: bool = False, file: Any = None,
                  title: str = "pixel tracks and vertices vs truth") -> None:
    """Print :func:`pixel_metrics`' dict: a rich table, or plain ``name: value`` lines when
    ``plain`` (or rich is missing)."""
    if not plain:
        try:
            from rich.console import Console
        except ImportError:
            plain = True
    if plain:
        print(title, file=file)
        for name, value in metrics_rows(result):
            print(f"  {name}: {value}", file=file)
        return
    Console(file=file).print(metrics_table(result, title))
