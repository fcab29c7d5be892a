"""A particle gun: single particles through the toy calorimeter, one per event, then clustered.

The detector model is :mod:`hltemu.simulate.calorimeter`'s, unchanged: :func:`impact` (helix in
the solenoid up to the ECAL front), :func:`deposited_energies` (shower split, non-compensating
response, fluctuations, lateral spread) and :func:`cell_columns` (electronic noise and
digitisation of every cell).  No pileup.

Particles (:class:`GunConfig`): a species drawn uniformly from ``pdg_ids`` (default pi+ and
pi-), momentum ``p`` fixed (``p_min == p_max``) or log-uniform in ``[p_min, p_max]`` (GeV),
direction at the vertex with ``eta`` uniform in ``[eta_min, eta_max]`` (with ``mirror``, the
sign then flipped with probability 1/2: ``|eta|`` uniform in the range) and ``phi`` uniform,
from the nominal interaction point (0, 0, 0).

Random numbers: particle ``i`` (0-based) of a gun seeded ``seed`` takes every random number
from the children of ``SeedSequence(seed, spawn_key=(i,))`` (:func:`particle_seeds`):
its kinematics, its shower, and its event's cell noise.  So particle ``i`` does not depend on
the others: any range of particles, in any order or process, gives the same events.

Measurement (:func:`cluster_energies`): after stage ``topocluster`` (run through the pipeline
by :func:`shoot_and_cluster`, ``pileup_mu = 0``), the energy ``E`` of each particle is the sum
over the clusters of positive energy within ``Delta R < dr`` of its impact point (the cone), and,
for comparison, the energy of the positive cluster nearest the impact point and its distance.
The impact point, not the vertex direction: the field bends a 10 GeV pion by 0.07 (|eta| = 0)
to 0.19 rad (|eta| = 2) in phi before the calorimeter, a 1 GeV one by 0.8 to 2.4 rad, and loopers
that miss the barrel land on the endcap up to 1.1 higher in |eta|.  The nearest cluster is worse
behaved than the cone: a pion that leaves no cluster (most below 5 GeV) is given a noise
cluster anywhere in the calorimeter (median distance 1 to 3), a mean E/p of 0.2 at 1 GeV
from noise alone; above 20 GeV the two agree (one cluster per pion).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import DetectorConfig
from hltemu.geometry import Geometry, geometry_for
from hltemu.simulate.calorimeter import cell_columns, deposited_energies, impact

#: Species the gun knows: PDG id -> (mass GeV, charge e).
PARTICLES: dict[int, tuple[float, int]] = {
    211: (0.13957039, 1), -211: (0.13957039, -1),
    321: (0.493677, 1), -321: (0.493677, -1),
    2212: (0.93827209, 1), -2212: (0.93827209, -1),
    2112: (0.93956542, 0), -2112: (0.93956542, 0),
    130: (0.497611, 0), 22: (0.0, 0),
    11: (0.00051099895, -1), -11: (0.00051099895, 1),
    13: (0.1056583755, -1), -13: (0.1056583755, 1),
}

#: Name of the event-level collection holding each event's particle (:data:`GUN_COLUMNS`).
GUN_COLLECTION = "GunParticle"
#: Its columns: name -> meaning (units).
GUN_COLUMNS: dict[str, str] = {
    "index": "particle index i of the gun (its random stream)",
    "pdgId": "PDG id", "charge": "charge (e)", "mass": "mass (GeV)",
    "p": "momentum (GeV)", "e": "energy (GeV)", "eta": "eta of the momentum at the vertex",
    "phi": "phi of the momentum at the vertex (rad)",
    "px": "GeV", "py": "GeV", "pz": "GeV",
    "reached": "whether it reaches the ECAL front",
    "impact_eta": "detector eta of the impact on the ECAL front (NaN: not reached)",
    "impact_phi": "phi of the impact (rad)",
    "impact_r": "transverse radius of the impact (cm)",
}


class GunError(ValueError):
    """Particle-gun settings that cannot be shot."""


@dataclass(frozen=True)
class GunConfig:
    """Settings of the particle gun (module docstring).  Momenta GeV."""

    pdg_ids: tuple[int, ...] = (211, -211)
    p_min: float = 10.0
    p_max: float = 10.0
    eta_min: float = 0.0
    eta_max: float = 3.0
    mirror: bool = True
    seed: int = 3001

    def __post_init__(self) -> None:
        unknown = [i for i in self.pdg_ids if i not in PARTICLES]
        if not self.pdg_ids or unknown:
            raise GunError(f"pdg_ids must be ids the gun knows ({sorted(PARTICLES)}), got "
                           f"{list(self.pdg_ids)}")
        if not (math.isfinite(self.p_min) and math.isfinite(self.p_max)
                and 0 < self.p_min <= self.p_max):
            raise GunError(f"momenta must satisfy 0 < p_min <= p_max (GeV), got p_min="
                           f"{self.p_min}, p_max={self.p_max}")
        if not (math.isfinite(self.eta_min) and math.isfinite(self.eta_max)
                and self.eta_min <= self.eta_max):
            raise GunError(f"eta range must be finite with eta_min <= eta_max, got "
                           f"[{self.eta_min}, {self.eta_max}]")


def particle_seeds(seed: int, index: int) -> tuple[np.random.SeedSequence, ...]:
    """``(kinematics, shower, noise)`` seed sequences of particle ``index`` of a gun seeded
    ``seed``."""
    kin, shower, noise = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(3)
    return kin, shower, noise


def _kinematics(cfg: GunConfig, rng: np.random.Generator) -> dict[str, float]:
    pdg = int(cfg.pdg_ids[rng.integers(len(cfg.pdg_ids))])
    mass, charge = PARTICLES[pdg]
    u = rng.random(3)
    p = cfg.p_min * (cfg.p_max / cfg.p_min) ** u[0]  # log-uniform; fixed when equal
    eta = cfg.eta_min + (cfg.eta_max - cfg.eta_min) * u[1]
    if cfg.mirror and rng.random() < 0.5:
        eta = -eta
    phi = -math.pi + 2.0 * math.pi * u[2]
    pt = p / math.cosh(eta)
    return {"pdgId": pdg, "charge": charge, "mass": mass, "p": p, "e": math.hypot(p, mass),
            "eta": eta, "phi": phi, "px": pt * math.cos(phi), "py": pt * math.sin(phi),
            "pz": pt * math.sinh(eta)}


def shoot_one(cfg: GunConfig, index: int, geom: Geometry | None = None
              ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Particle ``index`` of the gun: its truth (:data:`GUN_COLUMNS`) and its event's CaloCell
    columns (every cell, ordered by id: :func:`~hltemu.simulate.calorimeter.cell_columns`)."""
    geom = geom or geometry_for(DetectorConfig())
    kin_ss, shower_ss, noise_ss = particle_seeds(cfg.seed, index)
    k = _kinematics(cfg, np.random.default_rng(kin_ss))
    one = {c: np.array([k[c]], dtype=np.float64) for c in ("px", "py", "pz", "e", "mass")}
    pdg, charge = np.array([k["pdgId"]]), np.array([k["charge"]])
    zero = np.zeros(1)
    hit = impact(geom, one["px"], one["py"], one["pz"], charge, zero, zero, zero)
    true, meas = deposited_energies(geom, one["px"], one["py"], one["pz"], one["e"],
                                    one["mass"], pdg, charge, zero, zero, zero,
                                    np.random.default_rng(shower_ss))
    cells = cell_columns(geom, true, meas, np.random.default_rng(noise_ss))
    truth = {"index": index, **k, "reached": bool(hit.reached[0]),
             "impact_eta": float(hit.eta[0]), "impact_phi": float(hit.phi[0]),
             "impact_r": float(hit.r[0])}
    return truth, cells


def shoot(cfg: GunConfig, start: int, stop: int, geom: Geometry | None = None) -> EventBatch:
    """Particles ``start .. stop - 1`` as a reference-backend :class:`EventBatch` of one event
    each: collections ``CaloCell`` (id, energy, true_energy) and :data:`GUN_COLLECTION`."""
    if stop <= start:
        raise GunError(f"need stop > start, got particles {start}..{stop}")
    geom = geom or geometry_for(DetectorConfig())
    truths, cells = zip(*(shoot_one(cfg, i, geom) for i in range(start, stop)), strict=True)
    gun = {c: np.array([t[c] for t in truths]) for c in GUN_COLUMNS}
    calo = Collection.from_counts([geom.calo.n_cells] * len(cells),
                                  {c: np.concatenate([ev[c] for ev in cells]) for c in cells[0]})
    return EventBatch(get_backend("reference"), stop - start,
                      {"CaloCell": calo, GUN_COLLECTION: Collection.event_level(gun)},
                      first_entry=start)


# -- measurement --------------------------------------------------------------------------------
def cluster_energies(clusters: Collection, impact_eta: np.ndarray, impact_phi: np.ndarray,
                     dr: float = 0.2) -> dict[str, np.ndarray]:
    """Per event (host arrays): ``cone`` = sum of the energies of the clusters with energy > 0
    within ``Delta R < dr`` of ``(impact_eta, impact_phi)`` (0 for none); ``nearest`` = energy of
    the cluster with energy > 0 nearest to it (0 for none) and ``nearest_dr`` its distance
    (inf for none); ``n_cone`` = clusters in the cone.  Events whose impact is NaN get 0."""
    clusters = clusters.to_host()
    n = clusters.n_events
    ev = np.asarray(clusters.event_index())
    e = np.asarray(clusters["energy"])
    deta = np.asarray(clusters["eta"]) - impact_eta[ev]
    dphi = np.remainder(np.asarray(clusters["phi"]) - impact_phi[ev] + math.pi,
                        2.0 * math.pi) - math.pi
    d = np.hypot(deta, dphi)
    positive = (e > 0) & np.isfinite(d)
    cone = positive & (d < dr)
    out = {"cone": np.bincount(ev[cone], weights=e[cone], minlength=n),
           "n_cone": np.bincount(ev[cone], minlength=n),
           "nearest": np.zeros(n), "nearest_dr": np.full(n, np.inf)}
    rows = np.flatnonzero(positive)
    order = rows[np.lexsort((d[rows], ev[rows]))]
    first = order[np.r_[True, ev[order][1:] != ev[order][:-1]]] if order.shape[0] else order
    out["nearest"][ev[first]] = e[first]
    out["nearest_dr"][ev[first]] = d[first]
    return out


def topocluster_config(pileup_mu: float = 0.0) -> Any:
    """The :class:`~hltemu.config.HLTConfig` of the measurement: stage defaults,
    ``[topocluster] pileup_mu`` as given (0: electronic noise only, as the gun's events)."""
    from hltemu import pipeline

    return pipeline.config_from_dict({"topocluster": {"pileup_mu": float(pileup_mu)}},
                                     source="particle gun")


def shoot_and_cluster(cfg: GunConfig, n: int, start: int = 0, backend: str = "cpu",
                      batch_size: int = 200, dr: float = 0.2,
                      on_batch: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Shoot particles ``start .. start + n - 1``, cluster each event with stage
    ``topocluster`` on ``backend`` (``pileup_mu = 0``) and measure :func:`cluster_energies`.

    Returns per particle the :data:`GUN_COLUMNS` and the measured ``cone``, ``n_cone``,
    ``nearest``, ``nearest_dr`` (GeV), ``n_clusters`` (clusters of the event).
    ``on_batch(k)`` is called after each batch of ``k`` particles.
    """
    from hltemu import pipeline

    if n < 1 or batch_size < 1:
        raise GunError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    geom = geometry_for(DetectorConfig())
    config = topocluster_config(0.0)
    chain = [pipeline.get_stage("topocluster")]
    be = get_backend(backend)
    parts: list[dict[str, np.ndarray]] = []
    for a in range(start, start + n, batch_size):
        b = min(a + batch_size, start + n)
        batch = shoot(cfg, a, b, geom).to(be)
        pipeline.run_batch(batch, chain, config)
        gun = {c: np.asarray(be.to_host(v)) for c, v in batch[GUN_COLLECTION].columns.items()}
        clusters = batch["clusters"].to_host()
        measured = cluster_energies(clusters, gun["impact_eta"], gun["impact_phi"], dr)
        parts.append({**gun, **measured, "n_clusters": np.asarray(clusters.counts)})
        if on_batch is not None:
            on_batch(b - a)
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
