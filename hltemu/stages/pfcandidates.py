"""Stage ``pfcandidates``: particle-flow candidates from offline tracks and calorimeter
clusters, with charged-hadron subtraction (CHS) flags; the input of the offline ``pfjets``.

A simplified form of CMS's particle flow (JINST 12 (2017) P10003): tracks measure charged
hadrons better than the calorimeter does, so each track becomes a charged candidate and its
expected calorimeter deposit is taken out of the cluster it points at; what the calorimeter
holds beyond that, by more than its resolution, is neutral.

The rules
---------
1. **Track impact.**  Each track (``tracks``: pT [GeV], eta, phi [rad], charge, z0 [cm]) is
   followed as a helix from ``(0, 0, z0)`` in the solenoid (the detector's field, 3.8 T: radius
   ``R = 100 pT / (0.299792458 B)`` cm) to the ECAL front (:mod:`hltemu.geometry`: the barrel
   cylinder of radius ``ecal_radius``, 129 cm, or the endcap planes ``|z| = ecal_endcap_z``,
   320 cm).  From the beam line the transverse circle reaches radius ``r`` after the arc
   ``s = 2 R asin(r / (2 R))``, at azimuth ``phi - q asin(r / (2 R))`` (``q`` the sign of the
   charge, the simulation's convention), and ``z = z0 + s sinh(eta)``: the barrel when ``2 R >=
   r`` and ``|z| <= ecal_endcap_z``, else the endcap at ``s = (+-ecal_endcap_z - z0) /
   sinh(eta)``, provided ``s`` is less than a full turn, where the transverse radius is ``2 R
   sin(s / (2 R))`` and the azimuth ``phi - q s / (2 R)``.  The impact's eta is
   ``asinh(z / r)``, seen from the nominal interaction point as the cells' are.  A track that
   reaches neither (it curls up, pT < 0.74 GeV centrally) has no impact.
2. **Link.**  A track with an impact is linked to the cluster (``clusters``: energy [GeV],
   eta, phi) of positive energy of its event nearest to the impact in ``Delta R`` (the first in
   row order on a tie), when ``Delta R < link_dr`` (0.25); a cluster may collect several
   tracks, a track links to one cluster.  The pion response table measures a pion's deposit in
   the clusters within 0.2 of its impact; a smaller radius leaves part of a charged hadron's
   shower unlinked, to be counted again as neutral: on QCD at pileup 0 (seed 1001, 1,000
   events, ``|eta| < 1.3``) the pfjets' median response at truth pT 200-500 GeV goes 1.023,
   0.996, 0.980, 0.980 and their resolution 0.111, 0.097, 0.079, 0.077 for ``link_dr`` 0.1,
   0.15, 0.25, 0.3: no gain beyond 0.25.
3. **Expected deposit.**  A track of momentum ``p = pT cosh(eta)`` is expected to leave ``mean
   = <E/p> p`` with spread ``sigma = sigma(E/p) p`` in the clusters around its impact: this
   calorimeter's single charged-pion response (:mod:`hltemu.pion_response`, table
   ``pion_response``, at the impact's |eta|; the spread is the RMS of E/p: the 16-84% half
   width is 0 below ~5 GeV, where most pions leave no cluster).  A cluster's expected deposit
   is the sum of its tracks' ``mean``, its variance the sum of their ``sigma^2`` (tracks in row
   order).
4. **Neutral candidates.**  A cluster with no track gives a neutral candidate of its energy.  A
   cluster with tracks gives one of energy ``E - expected`` only when that excess exceeds
   ``neutral_significance`` (1) standard deviation of the expected deposit (CMS's rule); else
   the calorimeter is taken to hold the tracks' energy only.  A neutral candidate is massless
   at the cluster's (eta, phi); its energy is the calorimeter's as measured (not calibrated for
   hadrons: the jet energy corrections of ``pfjets`` absorb it).
5. **Charged candidates.**  Every track, with the pion mass (``charged_mass``).  **CHS:** a
   charged candidate is ``from_pv`` when stage ``vertices`` associates its track with the
   event's primary vertex, reconstructed from the tracks (``track_pv``'s ``pv``: ``|z0 - z_PV|
   < 3 sigma_z0``); an event without a vertex keeps every charged candidate.  Never the truth
   vertex.  Neutral candidates are ``from_pv`` (the calorimeter cannot tell).

Adds ``pfcandidates``: per event the charged candidates (track order), then the neutral ones
(cluster order), columns ``pt``, ``eta``, ``phi`` (GeV, rad), ``mass`` (GeV), ``charge``
(int32, 0 for neutral), ``from_pv`` (bool), ``track`` (the track's row within the event, -1
for neutral) and ``cluster`` (the cluster's row within the event: the linked one for a charged
candidate, -1 when none).

Backends: the impacts and expected deposits are array operations on the backend's ``xp``
(NumPy for ``reference`` and ``cpu``, CuPy for ``cuda``); the link and the sums are the loop
of :mod:`hltemu.kernels.pfcandidates` (``cpu``, ``cuda``) or its NumPy reference
(:func:`link_reference`), exactly rounded operations in the same order.  Candidate sets
(which tracks link to which cluster, which clusters give a neutral) are identical on every
backend for the same inputs; the floats agree within 1e-12 relative (libdevice's ``asin``,
``sinh``, ``cosh`` and ``log`` on CUDA may differ from the C library's in the last bit: a
link decision can differ only for a track equidistant from two clusters to 1e-16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from hltemu.backends import Backend
from hltemu.batch import Collection, EventBatch, counts_to_offsets
from hltemu.config import ConfigError, param
from hltemu.geometry import default_geometry
from hltemu.ops import THREADS_PER_BLOCK, blocks
from hltemu.pipeline import PipelineError, Stage, check_only, register
from hltemu.stages.antikt import _check_columns, _check_finite
from hltemu.xpsafe import bincount, item

#: Speed of light in the units of the radius of curvature: R [m] = pT [GeV] / (C B [T]).
C_LIGHT = 0.299792458

#: ``tracks`` columns read, ``clusters`` columns read.
TRACK_COLUMNS = ("pt", "eta", "phi", "charge", "z0")
CLUSTER_COLUMNS = ("energy", "eta", "phi")

#: ``pfcandidates`` columns: name -> (dtype, unit, meaning).
CANDIDATE_COLUMNS: dict[str, tuple[str, str, str]] = {
    "pt": ("float64", "GeV", "transverse momentum"),
    "eta": ("float64", "", "pseudorapidity (neutral: the cluster's)"),
    "phi": ("float64", "rad", "azimuth"),
    "mass": ("float64", "GeV", "charged_mass for charged candidates, 0 for neutral ones"),
    "charge": ("int32", "e", "the track's charge, 0 for neutral candidates"),
    "from_pv": ("bool", "", "charged: associated with the primary vertex; neutral: true"),
    "track": ("int64", "", "row of the track within the event, -1 for neutral"),
    "cluster": ("int64", "", "row of the (linked) cluster within the event, -1 for none"),
}


@dataclass(frozen=True)
class PFCandidatesConfig:
    """Stage ``pfcandidates``: particle flow from ``tracks``, ``clusters`` and the tracks'
    association with the primary vertex (``vertices``, ``track_pv``; rules and units in
    :mod:`hltemu.stages.pfcandidates`)."""

    link_dr: float = param(0.25, "", "largest Delta R between a track's calorimeter impact and "
                                     "a cluster's centre for a link")
    neutral_significance: float = param(
        1.0, "", "a cluster with tracks gives a neutral candidate when E - expected exceeds "
                 "this many standard deviations of the expected deposit")
    charged_mass: float = param(0.13957039, "GeV", "mass of charged candidates (pi+-)")
    pion_response: str = param("builtin:pion_response.npz", "",
                               "single charged-pion E/p table (hltemu.pion_response)",
                               path=True)


def check_settings(cfg: PFCandidatesConfig) -> None:
    """Refuse settings that cannot be applied (a :class:`ConfigError` naming the key) and a
    response table that cannot be read."""
    from hltemu.pion_response import PionResponseError, load_table

    if not (math.isfinite(cfg.link_dr) and cfg.link_dr > 0):
        raise ConfigError(f"[pfcandidates] link_dr must be a finite number > 0, got "
                          f"{cfg.link_dr}")
    if not (math.isfinite(cfg.neutral_significance) and cfg.neutral_significance >= 0):
        raise ConfigError("[pfcandidates] neutral_significance must be a finite number >= 0, "
                          f"got {cfg.neutral_significance}")
    if not (math.isfinite(cfg.charged_mass) and cfg.charged_mass >= 0):
        raise ConfigError(f"[pfcandidates] charged_mass must be >= 0 GeV, got "
                          f"{cfg.charged_mass}")
    try:
        load_table(cfg.pion_response)
    except (PionResponseError, OSError) as exc:
        raise ConfigError(f"[pfcandidates] pion_response: {exc}") from None


class Prepared(NamedTuple):
    """What ``pfcandidates`` needs besides the events: the field and ECAL front (T, cm) and the
    pion-response table."""

    b_field: float
    r_ecal: float
    z_ecal: float
    table: Any


def prepare(cfg: PFCandidatesConfig, backend: Backend) -> Prepared:
    from hltemu.pion_response import load_table

    check_settings(cfg)
    geom = default_geometry()
    return Prepared(float(geom.b_field), float(geom.calo.ecal_radius),
                    float(geom.calo.ecal_endcap_z), load_table(cfg.pion_response))


# -- step 1: the impact on the ECAL front ---------------------------------------------------------
def track_impact(pt: Any, eta: Any, phi: Any, charge: Any, z0: Any, prep: Prepared, xp: Any
                 ) -> tuple[Any, Any, Any]:
    """``(reach, eta_impact, phi_impact)`` of tracks on the ECAL front (rule 1); arrays of
    ``xp``; ``eta``/``phi`` are 0 where ``reach`` is false."""
    radius = 100.0 * pt / (C_LIGHT * prep.b_field)  # cm
    q = xp.sign(charge).astype(xp.float64)
    sh = xp.sinh(eta)
    two_r = 2.0 * radius
    barrel_ok = two_r >= prep.r_ecal
    half = xp.arcsin(xp.minimum(prep.r_ecal / two_r, 1.0))
    z_barrel = z0 + two_r * half * sh
    in_barrel = barrel_ok & (xp.abs(z_barrel) <= prep.z_ecal)
    safe_sh = xp.where(sh == 0, 1.0, sh)
    s_end = (xp.where(sh >= 0, prep.z_ecal, -prep.z_ecal) - z0) / safe_sh
    in_endcap = ~in_barrel & (sh != 0) & (s_end > 0) & (s_end < 2.0 * math.pi * radius)
    reach = in_barrel | in_endcap
    turn_end = xp.where(in_endcap, s_end / two_r, 0.0)
    r_end = two_r * xp.sin(turn_end)
    angle = xp.where(in_barrel, half, turn_end)
    r_imp = xp.where(in_barrel, prep.r_ecal, r_end)
    z_imp = xp.where(in_barrel, z_barrel, xp.where(sh >= 0, prep.z_ecal, -prep.z_ecal))
    ok_r = reach & (r_imp > 0)
    eta_imp = xp.where(ok_r, xp.arcsinh(z_imp / xp.where(ok_r, r_imp, 1.0)), 0.0)
    phi_imp = xp.where(reach, phi - q * angle, 0.0)
    phi_imp = xp.where(phi_imp > math.pi, phi_imp - 2.0 * math.pi,
                       xp.where(phi_imp < -math.pi, phi_imp + 2.0 * math.pi, phi_imp))
    return ok_r, eta_imp, phi_imp


# -- step 2: links and sums -----------------------------------------------------------------------
def link_reference(t_off: np.ndarray, c_off: np.ndarray, t_eta: np.ndarray, t_phi: np.ndarray,
                   reach: np.ndarray, mean: np.ndarray, var: np.ndarray, c_eta: np.ndarray,
                   c_phi: np.ndarray, c_energy: np.ndarray, link_dr2: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rule 2 and the sums of rule 3, written to be read: ``(link, expected, variance)``
    (``link``: the global row of each track's cluster or -1)."""
    link = np.full(t_eta.shape[0], -1, dtype=np.int64)
    expected = np.zeros(c_eta.shape[0])
    variance = np.zeros(c_eta.shape[0])
    for e in range(t_off.shape[0] - 1):
        rows = np.arange(c_off[e], c_off[e + 1])
        rows = rows[c_energy[rows] > 0.0]
        for t in range(t_off[e], t_off[e + 1]):
            if not reach[t] or rows.size == 0:
                continue
            dphi = t_phi[t] - c_phi[rows]
            dphi = np.where(dphi > math.pi, dphi - 2.0 * math.pi,
                            np.where(dphi < -math.pi, dphi + 2.0 * math.pi, dphi))
            deta = t_eta[t] - c_eta[rows]
            d2 = deta * deta + dphi * dphi
            k = int(np.argmin(d2))  # the first of equal minima
            if d2[k] < link_dr2:
                c = int(rows[k])
                link[t] = c
                expected[c] += mean[t]
                variance[c] += var[t]
    return link, expected, variance


class LinkInputs(NamedTuple):
    """The link's arguments, in :func:`link_reference`'s (and the kernels') order."""

    t_off: Any
    c_off: Any
    t_eta: Any
    t_phi: Any
    reach: Any
    mean: Any
    var: Any
    c_eta: Any
    c_phi: Any
    c_energy: Any
    link_dr2: float


def _link_outputs(inp: LinkInputs, xp: Any) -> tuple[Any, Any, Any]:
    """The kernels' outputs ``(link, expected, variance)``, to be filled."""
    n_clusters = inp.c_eta.shape[0]
    return (xp.empty(inp.t_eta.shape[0], dtype=xp.int64),
            xp.empty(n_clusters, dtype=xp.float64), xp.empty(n_clusters, dtype=xp.float64))


def _link_cpu(inp: LinkInputs, xp: Any) -> tuple[Any, Any, Any]:
    from hltemu.kernels.pfcandidates import link_cpu

    out = _link_outputs(inp, np)
    link_cpu(*inp, *out)
    return out


def _link_cuda(inp: LinkInputs, xp: Any) -> tuple[Any, Any, Any]:
    from hltemu.kernels.pfcandidates import link_cuda

    out = _link_outputs(inp, xp)
    n_events = inp.t_off.shape[0] - 1
    if n_events > 0:
        link_cuda[blocks(n_events), THREADS_PER_BLOCK](*inp, *out)
    return out


def _link_reference(inp: LinkInputs, xp: Any) -> tuple[Any, Any, Any]:
    return link_reference(*inp)


# -- the stage ------------------------------------------------------------------------------------
def _from_pv(batch: EventBatch, tracks: Collection, xp: Any) -> Any:
    """Per track: associated with the primary vertex (``track_pv``'s ``pv``), or true in an
    event without a vertex."""
    vtx, assoc = batch["vertices"], batch["track_pv"]
    _check_columns(assoc, "track_pv", ("pv",), "pfcandidates")
    if assoc.size != tracks.size:
        raise PipelineError(f"stage 'pfcandidates': 'track_pv' has {assoc.size} rows, "
                            f"'tracks' {tracks.size}: the association must be the tracks'")
    v_off = xp.asarray(vtx.offsets, dtype=xp.int64)
    has_pv = v_off[1:] > v_off[:-1]
    return xp.where(has_pv[tracks.event_index()], xp.asarray(assoc["pv"], dtype=xp.bool_),
                    True)


def pf_stage(batch: EventBatch, cfg: PFCandidatesConfig, prep: Prepared, linker: Any
             ) -> dict[str, Collection]:
    """The ``pfcandidates`` stage with ``linker`` (:func:`link_reference`, the cpu or the cuda
    kernel)."""
    xp = batch.backend.xp
    tracks, clusters = batch["tracks"], batch["clusters"]
    _check_columns(tracks, "tracks", TRACK_COLUMNS, "pfcandidates")
    _check_columns(clusters, "clusters", CLUSTER_COLUMNS, "pfcandidates")
    t = {c: xp.asarray(tracks[c], dtype=xp.float64) for c in TRACK_COLUMNS}
    cl = {c: xp.asarray(clusters[c], dtype=xp.float64) for c in CLUSTER_COLUMNS}
    for name, cols in (("tracks", t), ("clusters", cl)):
        for c, v in cols.items():
            _check_finite(xp, v, name, c, "pfcandidates")
    t_off = xp.asarray(tracks.offsets, dtype=xp.int64)
    c_off = xp.asarray(clusters.offsets, dtype=xp.int64)
    if t_off.shape[0] != c_off.shape[0]:
        raise PipelineError("stage 'pfcandidates': 'tracks' and 'clusters' hold different "
                            "numbers of events")
    n_events = t_off.shape[0] - 1
    reach, eta_imp, phi_imp = track_impact(t["pt"], t["eta"], t["phi"], t["charge"], t["z0"],
                                           prep, xp)
    p = t["pt"] * xp.cosh(t["eta"])
    mean, sigma = prep.table.expected_deposit(p, eta_imp, xp, spread="rms")
    link, expected, variance = linker(LinkInputs(
        t_off, c_off, eta_imp, phi_imp, reach, xp.ascontiguousarray(mean),
        xp.ascontiguousarray(sigma * sigma), cl["eta"], cl["phi"], cl["energy"],
        float(cfg.link_dr) ** 2), xp)
    # rule 4: neutral candidates
    n_clusters = cl["energy"].shape[0]
    linked = link[link >= 0]
    n_links = bincount(linked, n_clusters, xp)
    energy = cl["energy"]
    excess = energy - expected
    neutral = xp.where(n_links == 0, energy > 0,
                       excess > cfg.neutral_significance * xp.sqrt(variance))
    e_neutral = xp.where(n_links == 0, energy, excess)
    # rule 5: CHS flags
    from_pv = _from_pv(batch, tracks, xp)
    t_ev = tracks.event_index()
    # the output: per event its charged candidates (track order), then its neutral ones
    c_ev = clusters.event_index()
    nz = xp.flatnonzero(neutral)
    ev_n = c_ev[nz]
    n_charged = t_off[1:] - t_off[:-1]
    n_neutral = bincount(ev_n, n_events, xp)
    offsets = counts_to_offsets(n_charged + n_neutral, xp)
    n_out = int(item(offsets[-1]))
    track_row = xp.arange(t_ev.shape[0], dtype=xp.int64) - t_off[t_ev]
    dest_c = offsets[t_ev] + track_row
    neutral_before = counts_to_offsets(n_neutral, xp)[:-1]  # neutrals of earlier events
    dest_n = (offsets[ev_n] + n_charged[ev_n]
              + xp.arange(nz.shape[0], dtype=xp.int64) - neutral_before[ev_n])
    eta_n = cl["eta"][nz]
    n_n = nz.shape[0]

    def fill(dtype: Any, charged: Any, neutral_values: Any) -> Any:
        col = xp.empty(n_out, dtype=dtype)
        col[dest_c] = charged
        col[dest_n] = neutral_values
        return col

    out = {
        "pt": fill(xp.float64, t["pt"], e_neutral[nz] / xp.cosh(eta_n)),
        "eta": fill(xp.float64, t["eta"], eta_n),
        "phi": fill(xp.float64, t["phi"], cl["phi"][nz]),
        "mass": fill(xp.float64, xp.full(t_ev.shape[0], cfg.charged_mass), xp.zeros(n_n)),
        "charge": fill(xp.int32, t["charge"].astype(xp.int32), xp.zeros(n_n, dtype=xp.int32)),
        "from_pv": fill(xp.bool_, from_pv, xp.ones(n_n, dtype=xp.bool_)),
        "track": fill(xp.int64, track_row, xp.full(n_n, -1, dtype=xp.int64)),
        "cluster": fill(xp.int64, xp.where(link >= 0, link - c_off[t_ev], -1),
                        nz - c_off[ev_n]),
    }
    return {"pfcandidates": Collection(offsets, out)}


def run_reference(batch: EventBatch, cfg: PFCandidatesConfig, prep: Prepared
                  ) -> dict[str, Collection]:
    return pf_stage(batch, cfg, prep, _link_reference)


def run_cpu(batch: EventBatch, cfg: PFCandidatesConfig, prep: Prepared) -> dict[str, Collection]:
    return pf_stage(batch, cfg, prep, _link_cpu)


def run_cuda(batch: EventBatch, cfg: PFCandidatesConfig, prep: Prepared
             ) -> dict[str, Collection]:
    return pf_stage(batch, cfg, prep, _link_cuda)


STAGE = register(Stage(
    name="pfcandidates",
    needs=("tracks", "vertices", "track_pv", "clusters"),
    adds=("pfcandidates",),
    config_type=PFCandidatesConfig,
    prepare=prepare,
    plan=check_only(check_settings),
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    doc="particle-flow candidates: tracks, and calorimeter clusters minus the tracks' "
        "expected deposits; charged-hadron subtraction flags from the primary vertex",
    in_default_chain=False,
))
