"""Figures of merit from truth: how well a stage's products match the simulated truth.

Measurements on host arrays (every input is copied to the host first), for tests, examples and
benchmarks; the chain never calls them.  Each function returns a frozen dataclass of counts,
and the figures are properties of it:

Doublets (:func:`doublet_metrics`, :class:`DoubletMetrics`; needs ``PixelHit.sim_index`` and,
for the efficiency, ``GenPart``):

* ``efficiency``: true doublets of selected particles found, over all true doublets of
  selected particles.  A *true doublet* is a pair of hits of one particle on the inner and
  outer layer of a configured layer pair; *selected* particles are charged, with
  ``pt > pt_min``, ``|eta| < eta_max`` and optionally a production vertex within
  ``max_vertex_rho`` of the beam line.  ``None`` without GenPart; ``per_pair_efficiency`` the
  same per layer pair (NaN where a pair has no true doublet);
* ``fake_fraction``: doublets whose two hits do not come from one particle (``sim_index``
  -1, noise hits included), over all doublets;
* ``doublets_per_event``: the combinatorial load the next step sees.

Topoclusters (:func:`topocluster_metrics`, :class:`TopoclusterMetrics`; the truth figures need
``CaloCell.true_energy``, the energy particles deposited in each cell):

* ``containment``: fraction of the true deposited energy (hard scatter and pileup) that lies
  in cells of some cluster;
* ``noise_clusters_per_event``: clusters none of whose cells holds any true energy (pure
  noise), per event;
* ``clusters_per_event`` and ``n_positive_clusters`` (clusters with ``energy > 0``, the ones
  ``rho`` and ``antikt`` use).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hltemu.batch import Collection
from hltemu.geometry import N_PIXEL_LAYERS
from hltemu.stages.doublets import DoubletsConfig
from hltemu.stages.topocluster import LABEL_COLUMN


# -- doublets: metrics from truth -------------------------------------------------------------
@dataclass(frozen=True)
class DoubletMetrics:
    """Doublet-finding figures of a batch.

    ``efficiency``: found true doublets of selected particles / true doublets of selected
    particles (pT > pt_min, |eta| < eta_max, charged, one hit on each layer of a configured
    pair), ``None`` without GenPart; ``fake_fraction``: doublets whose hits do not come from
    one particle / all doublets.  ``per_pair_efficiency`` has one entry per layer pair (NaN
    where the pair has no true doublet).
    """

    n_events: int
    n_doublets: int
    n_fake: int
    n_true_selected: int
    n_found_selected: int
    per_pair_efficiency: tuple[float, ...]

    @property
    def doublets_per_event(self) -> float:
        return self.n_doublets / self.n_events if self.n_events else float("nan")

    @property
    def fake_fraction(self) -> float:
        return self.n_fake / self.n_doublets if self.n_doublets else float("nan")

    @property
    def efficiency(self) -> float | None:
        if self.n_true_selected < 0:
            return None
        if self.n_true_selected == 0:
            return float("nan")
        return self.n_found_selected / self.n_true_selected


def doublet_metrics(hits: Collection, doublets: Collection, genpart: Collection | None,
                    cfg: DoubletsConfig | None = None, pt_min: float = 0.9,
                    eta_max: float = 2.5, max_vertex_rho: float | None = None) -> DoubletMetrics:
    """Efficiency, fake fraction and doublets per event from truth (host arrays).

    A true doublet is a pair of hits of one particle (``sim_index``, a GenPart row of the
    event) on the inner and outer layer of one of ``cfg.layer_pairs``.  Selected particles
    have ``pt > pt_min`` [GeV], ``|eta| < eta_max`` and, when ``max_vertex_rho`` [cm] is given,
    a production vertex within that transverse distance of the beam line.
    """
    cfg = cfg or DoubletsConfig()
    hits, doublets = hits.to_host(), doublets.to_host()
    n_pairs = len(cfg.layer_pairs)
    sim_d = doublets["sim_index"]
    n_fake = int((sim_d < 0).sum())
    if genpart is None:
        return DoubletMetrics(hits.n_events, doublets.size, n_fake, -1, 0,
                              tuple([float("nan")] * n_pairs))
    gen = genpart.to_host()
    # selected particles, as global GenPart rows
    sel = (gen["pt"] > pt_min) & (np.abs(gen["eta"]) < eta_max) & (gen["charge"] != 0)
    if max_vertex_rho is not None:
        sel &= np.hypot(gen["vx"], gen["vy"]) < max_vertex_rho
    # denominator: per (selected particle, layer) hit counts; pairs multiply
    sim = hits["sim_index"]
    ev = hits.event_index()
    ok = sim >= 0
    gid = np.where(ok, gen.offsets[ev] + np.where(ok, sim, 0), -1)
    ok &= sel[np.where(ok, gid, 0)]
    particles, inverse = np.unique(gid[ok], return_inverse=True)
    per_layer = np.zeros((particles.shape[0], N_PIXEL_LAYERS), dtype=np.int64)
    np.add.at(per_layer, (inverse, hits["layer"][ok]), 1)
    # numerator: found doublets of one selected particle
    ev_d = doublets.event_index()
    true_d = sim_d >= 0
    gid_d = gen.offsets[ev_d] + np.where(true_d, sim_d, 0)
    found = true_d & sel[gid_d]
    found_per_pair = np.bincount(doublets["pair"][found], minlength=n_pairs)
    per_pair, n_true = [], 0
    for p, (a, b) in enumerate(cfg.layer_pairs):
        den = int((per_layer[:, a] * per_layer[:, b]).sum())
        n_true += den
        per_pair.append(found_per_pair[p] / den if den else float("nan"))
    return DoubletMetrics(hits.n_events, doublets.size, n_fake, n_true, int(found.sum()),
                          tuple(float(v) for v in per_pair))


# -- topoclusters: metrics from truth ---------------------------------------------------------
@dataclass(frozen=True)
class TopoclusterMetrics:
    """Clustering figures of a batch.

    ``true_energy``: energy particles deposited in all cells (GeV); ``true_energy_in_clusters``:
    the part of it in cells of a cluster; ``n_noise_clusters``: clusters none of whose cells
    has any true energy.  The truth fields are NaN / -1 without ``CaloCell.true_energy``.
    """

    n_events: int
    n_clusters: int
    n_noise_clusters: int
    n_positive_clusters: int
    true_energy: float
    true_energy_in_clusters: float

    @property
    def clusters_per_event(self) -> float:
        return self.n_clusters / self.n_events if self.n_events else float("nan")

    @property
    def noise_clusters_per_event(self) -> float:
        if self.n_noise_clusters < 0 or not self.n_events:
            return float("nan")
        return self.n_noise_clusters / self.n_events

    @property
    def containment(self) -> float:
        """Fraction of the true deposited energy inside clusters."""
        return (self.true_energy_in_clusters / self.true_energy if self.true_energy > 0
                else float("nan"))


def topocluster_metrics(cells: Collection, cell_cluster: Collection,
                        clusters: Collection) -> TopoclusterMetrics:
    """Clusters per event, energy containment and noise clusters from truth (host arrays)."""
    cells, labels, clusters = cells.to_host(), cell_cluster.to_host(), clusters.to_host()
    label = labels[LABEL_COLUMN]
    n_pos = int((clusters["energy"] > 0).sum())
    if "true_energy" not in cells:
        return TopoclusterMetrics(cells.n_events, clusters.size, -1, n_pos, float("nan"),
                                  float("nan"))
    true = cells["true_energy"].astype(np.float64)
    inside = label >= 0
    global_cluster = clusters.offsets[cells.event_index()[inside]] + label[inside]
    true_per_cluster = np.bincount(global_cluster, weights=true[inside] > 0,
                                   minlength=clusters.size)
    return TopoclusterMetrics(
        n_events=cells.n_events,
        n_clusters=clusters.size,
        n_noise_clusters=int((true_per_cluster == 0).sum()),
        n_positive_clusters=n_pos,
        true_energy=float(true.sum()),
        true_energy_in_clusters=float(true[inside].sum()),
    )
