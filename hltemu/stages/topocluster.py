"""Stage ``topocluster``: ATLAS-style 4-2-0 topological clustering of calorimeter cells.

The rule
--------
Each cell has a significance ``S = |E| / sigma`` (``E`` its measured energy less the mean
pileup energy, ``sigma`` its total noise, electronic and pileup, see below; two-sided, as
ATLAS: large negative noise fluctuations seed and grow clusters too).  With the thresholds of
:class:`TopoclusterConfig` (``seed`` 4 > ``grow`` 2 > ``perimeter`` 0 by default,
a cell passing a threshold when ``S`` is *strictly* above it):

1. **Cluster cores.** Take the graph of *growing* cells (``S > grow``; seeds are growing cells
   too) in which two cells are joined when they are neighbours (:meth:`Calorimeter.neighbours`:
   the 8 cells around in the same layer, phi wrapping, and the overlapping cells of the layers
   just inside and outside).  Every connected component holding at least one *seed*
   (``S > seed``) is the core of one cluster.  So two seeds linked through growing cells make
   ONE cluster (ATLAS's merge rule); a component without a seed makes none.
2. **Label.** A cluster is named by its best seed: the highest ``S``, ties broken by the lowest
   cell id.  Seeds are ranked in that order everywhere (``seed rank``).  The label does not
   depend on the order cells are visited in, which is what lets the GPU's tag propagation give
   the same clusters as the sequential algorithm.
3. **Perimeter.** A cell that is not in a core and has ``S > perimeter`` joins a cluster when it
   neighbours one of the cluster's core cells; neighbouring the cores of several clusters, it
   joins the one whose label seed ranks best.  Perimeter cells do not grow the cluster further.
   (A growing cell outside every core never neighbours a core, or it would be in it, so the
   perimeter candidates are exactly the cells with ``perimeter < S <= grow``.)

Cells not in a cluster get label -1.  The two-sided significance means that a cluster may hold
cells of negative energy, and that a cluster of noise may have ``energy <= 0``: such clusters
are kept (``antikt`` ignores clusters with ``energy <= 0``).

Kinematics of a cluster (cells at their centres, :mod:`hltemu.geometry`):

* ``energy`` = sum of the member cells' ``E`` (GeV, negative cells included; ``E`` is the
  corrected energy, see "Noise and pileup");
* ``energy_em`` = the same sum over the member cells of the ECAL layers only (GeV; the layers
  whose section is ``"ECAL"`` in :mod:`hltemu.geometry`, default ``EM1`` and ``EM2``): the same
  corrected ``E`` (the pileup offset subtracted as for ``energy``), negative cells included,
  so ``energy_em`` may be negative or exceed ``energy``; ``energy - energy_em`` is the HCAL
  part.  The EM fraction of a jet is built from it (:mod:`hltemu.stages.jet_regression`);
* ``eta`` = ``sum |E| eta / sum |E|``: weights ``|E|``, so that every weight is positive;
* ``phi`` = ``phi_seed + sum |E| dphi / sum |E|`` wrapped into ``[-pi, pi)``, with ``dphi`` each
  cell's ``phi - phi_seed`` wrapped into ``[-pi, pi)``: the ``|E|``-weighted mean measured from
  the label seed's cell, so clusters across the phi = +-pi line average correctly; no
  ``atan2``, so every backend computes it with the same few IEEE operations;
* ``n_cells`` (core + perimeter), ``seed`` (cell id of the label seed) and
  ``seed_significance``.

Clusters of an event are ordered by seed rank (``seed_significance`` descending, then ``seed``
ascending): an exact key, the same on every backend.

Noise and pileup
----------------
As ATLAS, thresholds are on the *total* noise ``sigma = sqrt(sigma_el**2 + mu * sigma_1**2)``
(:func:`noise_graph`): ``sigma_el`` the cell's electronic noise (:mod:`hltemu.geometry`),
``mu`` = :attr:`TopoclusterConfig.pileup_mu` the mean pileup (interactions per crossing; 0 =
electronic noise only), and ``sigma_1`` the RMS energy one minimum-bias interaction leaves in
the cell, per layer and eta ring, from the table :attr:`TopoclusterConfig.pileup_noise`
(shipped: ``hltemu/models/pileup_noise.npz``, 40,000 Pythia minimum-bias interactions through
the toy calorimeter; the table format in :mod:`hltemu.calo_noise`, its derivation in
:mod:`hltemu.simulate.pileup_noise`).  At ``mu = 50`` the pileup noise (median over cells)
is 46 MeV against 31 MeV of electronic noise in central EM1 cells (|eta| < 1), 134 against
43 MeV in forward ones (|eta| > 2.5); in HAD1 75 against 122 MeV centrally, 432 against
170 MeV forward.

**The input's pileup.**  ``pileup_mu = "auto"`` (the default) is resolved by the planner
before the first event (:func:`plan_topocluster`): the mean pileup the input files were
generated with (``pileup.mean_requested`` in their provenance, :func:`hltemu.io.input_pileup`),
else the mean of their ``Event_n_pileup`` branch.  A file with neither (CMS NanoAOD, a file
hltemu did not write) is an error that names it and asks for ``[topocluster] pileup_mu``;
files whose values differ are refused, naming each file and value (the noise and the offset
are set once per run; a Dask run plans on the client with every file, so it refuses the same
inputs).  A number sets ``mu`` whatever the input.  The run prints the value and where it came
from (``topocluster: noise and pileup offset for <mu> = 50 (the input's provenance)``); the
plan's facts (run report, output provenance) record it with each input's value and source.

**The mean pileup energy.**  Pileup adds on average ``mu * mean_1`` GeV to a cell (``mean_1``:
the mean energy one interaction leaves, per layer and eta ring, from the same table), which
grows as ``mu`` while the noise grows as ``sqrt(mu)``: at ``mu = 200`` it is 1 to 2.7 sigma in
the median forward cell, enough to join most of the forward calorimeter into a few clusters
of 10,000 cells and more (ATLAS's bipolar pulse shaping makes it about zero; here nothing
does).  With :attr:`TopoclusterConfig.subtract_pileup_mean` (default) every cell's energy is
first corrected, ``E' = E - n * mean_1(layer, ring)`` (GeV), and everything above uses ``E'``:
the significance ``|E'| / sigma``, the cluster ``energy`` (sum of ``E'``) and the ``|E'|``
weights of ``eta`` and ``phi``.  ``n``, the number of interactions subtracted
(:attr:`TopoclusterConfig.pileup_offset`):

* ``"event"`` (default): the event's own estimate ``n = max(rho - rho_zero_pileup, 0) /
  rho_per_interaction`` from its calorimeter rho (:mod:`hltemu.stages.rho`'s algorithm and
  default grid on the same cells; 0.626 GeV/area per interaction and 1.21 at none, the fit of
  rho vs ``Event_n_pileup`` on QCD at pileup 50).  The jets' residual pileup then no longer
  depends on the run's ``<mu>`` (with ``"mean"`` an event with fewer interactions than
  ``<mu>`` is over-subtracted, one with more under-subtracted: the jet offset rises by 0.6
  GeV per unit area per GeV/area of rho *within* a run, while it is about zero at every
  run's mean), so one L1 correction in rho serves every pileup (``hltemu derive-jec``);
* ``"mean"``: ``n = mu``, the run's mean (as ATLAS, whose cells see ``<mu>``).

With ``"mean"`` the offset is :attr:`CellGraph.offset <hltemu.cell_graph.CellGraph.offset>`
(``mu * mean_1``); with ``"event"`` that times ``n / mu`` per event (:func:`event_scale`).
Either is one IEEE multiply and subtract done by :func:`cell_energies` for all three
backends, so their clusters stay identical.

Measured on ttbar (cpu backend; ``hltemu generate -p ttbar -s 2024``: 50 events at pileup 0
and 50, 20 at pileup 200; the same seed gives the same hard scatter at every pileup).
"Before" is the former default (``pileup_mu = 50`` whatever the input, no subtraction),
"after" ``auto`` with the subtraction of the run's mean (``pileup_offset = "mean"``), "event"
the default (``auto``, each event's own pileup from its rho; HS containment not measured for
it).  "Containment": the fraction of the true
deposited energy (hard scatter and pileup) inside clusters; "HS cont.": the fraction of the
hard scatter's true energy (the pileup-0 file's, cell by cell) inside clusters; "largest":
over events, the mean cell count and energy (GeV) of the cluster with the most cells:

=======  ======================  =============  ===========  ========  =======  =======
pileup   config                  clusters/evt   containment  HS cont.  largest  GeV
=======  ======================  =============  ===========  ========  =======  =======
0        before: 50, no subtr.   36.5           0.72         0.72      354      173
0        after: auto = 0         79.1           0.82         0.82      573      212
50       before: 50, no subtr.   346            0.56         0.82      1,128    449
50       after: auto = 50        346            0.38         0.76      455      216
200      before: 50, no subtr.   381            0.92         0.96      29,710   10,240
200      auto = 200, no subtr.   303            0.76         0.89      10,330   5,946
200      after: auto = 200       406            0.23         0.64      410      187
0        event (default)         79.1           0.82                   573      212
50       event (default)         346            0.37                   437      204
200      event (default)         404            0.22                   386      173
=======  ======================  =============  ===========  ========  =======  =======

At pileup 0 the noise of ``mu = 50`` had left 10 points more of the hard scatter's energy out
of clusters (containment 0.82 -> 0.72) and halved the clusters; ``auto`` restores them. At
pileup 50 the thresholds do not change; the subtraction breaks the forward percolation (largest
cluster 1,128 -> 455 cells, 449 -> 216 GeV: jet-sized, as at pileup 0) and leaves
most pileup energy out of clusters (containment 0.56 -> 0.38), at the price of some
hard-scatter energy in cells now under threshold (0.82 -> 0.76; the "before" figure is largely
inflated by pileup-swollen clusters). At pileup 200 the thresholds alone (``auto``, no subtraction)
still leave a 10,000-cell, 6 TeV cluster per event; with the subtraction the largest cluster is
jet-sized again (410 cells, 187 GeV). The hard scatter's containment falls to 0.64 there because
the noise of 200 interactions (``sqrt(200) * sigma_1``) lifts every threshold, as it does in
ATLAS. The default ``"event"`` offset gives the same picture (pileup 0 is unchanged: no offset
there). ``examples/plot_topoclusters.py`` prints these figures of merit (default: each sample's
own pileup with subtraction; ``--pileup-mu 50 --no-subtract``: the "before" configuration).

Inputs and outputs
------------------
Needs ``CaloCell`` with columns ``id`` (cell id in the default geometry) and ``energy`` (GeV);
``true_energy`` (GeV) is used by :func:`~hltemu.metrics.topocluster_metrics` only.  An event
may hold every cell of the geometry (as ``hltemu generate`` writes) or any subset, in any order:
neighbours missing from the event count as absent.  Ids out of range, ids repeated within an
event, or energies that are not finite are errors naming the column, the event and the value.

Adds ``clusters`` (:data:`CLUSTER_COLUMNS`) and ``cell_cluster``, aligned row for row with
``CaloCell``: column ``cluster`` = the cell's cluster as an index into its event's
``clusters`` rows, -1 for none.

Backends
--------
``reference`` (:func:`cluster_event_reference`): per event, the classic seed-queue algorithm in
plain Python, seeds taken in rank order (so the first seed of a component to be reached is its
best one), then perimeter cells handed out cluster by cluster in rank order.  ``cpu``: the
same algorithm in Numba, in parallel over events.  ``cuda``: parallel tag propagation to a
fixed point, then a perimeter pass (see :mod:`hltemu.kernels.topocluster`).  Cluster membership
(``cell_cluster``, ``n_cells``, ``seed``, ``seed_significance``) is identical on all three;
``energy``, ``energy_em``, ``eta`` and ``phi`` agree within 1e-12 (relative; absolute 1e-12
GeV times the cluster's ``sum |E|`` for the energies, which may cancel to about zero): the
same terms, summed in ascending row order by ``cpu`` and ``cuda`` and by NumPy's pairwise
sum in ``reference``.  ``cpu`` and ``cuda`` give bit-identical clusters (their sums use
exactly rounded operations, :mod:`hltemu.kernels.ieee`; measured on an NVIDIA H200,
2026-11-28, the sample tiled to 100 events; ``energy_em``, added later by the same kernel
with the same operations, was checked in the CUDA simulator only).

The neighbour graph, noise table and cell centres are built once per calorimeter
(:func:`calorimeter_graph`) and kept on each backend's device (:meth:`CellGraph.on`).
Any graph can be used (:meth:`CellGraph.from_arrays`), which the tests do with small random
ones; which cells are ECAL cells (for ``energy_em``) is a mask per cell id (:func:`ecal_mask`:
the default geometry's, or given with such a graph).  Work memory on ``cpu``/``cuda``: a
dense ``(n_events, n_cells)`` int32 map from cell id to row (35 MB for 100 events of the
default 88,320 cells).
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from hltemu.backends import Backend
from hltemu.batch import Collection, EventBatch, counts_to_offsets
from hltemu.calo_cells import check_cells, repeated_id_error
from hltemu.cell_graph import CellGraph, corrected_energy, graph_of
from hltemu.config import ConfigError, param
from hltemu.ops import THREADS_PER_BLOCK, blocks
from hltemu.pipeline import PipelineError, Planned, Stage, dispatch, prepared, register
from hltemu.xpsafe import any_true, bincount, item

#: ``[topocluster] pileup_mu`` that takes the input's mean pileup (:func:`plan_topocluster`).
AUTO = "auto"
#: ``[topocluster] pileup_offset``: the event's own pileup estimate, or the run's mean.
EVENT, MEAN = "event", "mean"


@dataclass(frozen=True)
class TopoclusterConfig:
    """Stage ``topocluster``: ATLAS-style 4-2-0 topological clustering of calorimeter cells.

    Thresholds are on the cell significance ``|E| / sigma_noise`` (two-sided, as ATLAS), in
    units of the cell's total noise ``sigma_noise = sqrt(sigma_el**2 + pileup_mu *
    sigma_1**2)``: its electronic noise ``sigma_el`` (:mod:`hltemu.geometry`) and the pileup
    noise of ``pileup_mu`` interactions, ``sigma_1`` being the RMS energy one minimum-bias
    interaction leaves in the cell (per layer and eta ring, from the table ``pileup_noise``:
    ``builtin:NAME`` in ``hltemu/models`` or a path; format: :mod:`hltemu.calo_noise`).
    ``pileup_mu = "auto"`` (the default) takes the input's mean pileup when the run is planned
    (:func:`plan_topocluster`: the generated mean in the files' provenance, else the mean of
    their ``Event_n_pileup``); a number sets it.  With ``subtract_pileup_mean`` (default) every
    cell's energy is first reduced by ``pileup_mu * mean_1`` GeV, the mean energy of
    ``pileup_mu`` interactions in the cell (``mean_1`` from the same table), and the clusters are
    built from and sum those corrected energies.  ``pileup_mu = 0``: electronic noise only, no
    offset (the table is then not read).  A cell passes a
    threshold when its significance is strictly above it.  Seeds must pass ``seed_threshold``,
    cells that grow a cluster (and merge clusters) ``grow_threshold``, the perimeter cells added
    last ``perimeter_threshold``; ``0 <= perimeter_threshold <= grow_threshold <=
    seed_threshold``.
    """

    seed_threshold: float = param(4.0, "sigma_noise", "seed cells: |E| / sigma above this")
    grow_threshold: float = param(2.0, "sigma_noise", "growing cells: |E| / sigma above this")
    perimeter_threshold: float = param(0.0, "sigma_noise",
                                       "perimeter cells: |E| / sigma above this")
    pileup_mu: float | str = param(
        AUTO, "interactions",
        "<mu> of the pileup noise (sigma_noise^2 = sigma_el^2 + pileup_mu sigma_1^2) and offset "
        "(pileup_mu mean_1 GeV per cell): 'auto' = the input's mean pileup (its provenance, "
        "else the mean of Event_n_pileup), or a number >= 0 (0 = electronic noise only)",
        keywords=(AUTO,))
    subtract_pileup_mean: bool = param(
        True, "", "subtract n * mean_1 (GeV: the mean energy one interaction leaves, per "
        "layer and eta ring) from every cell's energy before the significance; clusters are "
        "built from and sum the corrected energies; n as pileup_offset says")
    pileup_offset: str = param(
        EVENT, "", "the number of interactions n of the subtracted energy: 'event' = the "
        "event's own estimate (rho - rho_zero_pileup) / rho_per_interaction, >= 0, from the "
        "calorimeter rho of the event (stage rho's algorithm and default grid), or 'mean' = "
        "pileup_mu; none at pileup_mu = 0")
    rho_per_interaction: float = param(
        0.626, "GeV/area", "'event' offset: calorimeter rho per pileup interaction (slope of "
        "rho vs Event_n_pileup, QCD at pileup 50)")
    rho_zero_pileup: float = param(
        1.21, "GeV/area", "'event' offset: calorimeter rho without pileup (the intercept of "
        "that fit)")
    pileup_noise: str = param("builtin:pileup_noise.npz", "",
                              "table of sigma_1 and mean_1 per layer and eta ring (builtin:NAME "
                              "or path)", path=True)

    def __post_init__(self) -> None:
        values = (self.perimeter_threshold, self.grow_threshold, self.seed_threshold)
        if not all(math.isfinite(v) for v in values) or not (
                0.0 <= self.perimeter_threshold <= self.grow_threshold <= self.seed_threshold):
            raise ConfigError(
                "[topocluster] thresholds must be finite with 0 <= perimeter_threshold <= "
                f"grow_threshold <= seed_threshold, got perimeter_threshold="
                f"{self.perimeter_threshold}, grow_threshold={self.grow_threshold}, "
                f"seed_threshold={self.seed_threshold}")
        mu = self.pileup_mu
        if isinstance(mu, str):
            if mu != AUTO:
                raise ConfigError(f"[topocluster] pileup_mu must be {AUTO!r} or a number >= 0 "
                                  f"(interactions), got {mu!r}")
        elif isinstance(mu, bool) or not isinstance(mu, (int, float)) or not (
                math.isfinite(mu) and mu >= 0.0):
            raise ConfigError(f"[topocluster] pileup_mu must be {AUTO!r} or a finite number >= 0 "
                              f"(interactions), got {mu!r}")
        else:
            object.__setattr__(self, "pileup_mu", float(mu))
        if not isinstance(self.subtract_pileup_mean, bool):
            raise ConfigError(f"[topocluster] subtract_pileup_mean must be true or false, got "
                              f"{self.subtract_pileup_mean!r}")
        if self.pileup_offset not in (EVENT, MEAN):
            raise ConfigError(f"[topocluster] pileup_offset must be {EVENT!r} or {MEAN!r}, got "
                              f"{self.pileup_offset!r}")
        if not (math.isfinite(self.rho_per_interaction) and self.rho_per_interaction > 0
                and math.isfinite(self.rho_zero_pileup)):
            raise ConfigError("[topocluster] rho_per_interaction must be > 0 and "
                              "rho_zero_pileup finite (GeV/area), got "
                              f"{self.rho_per_interaction} and {self.rho_zero_pileup}")
        if not self.pileup_noise:
            raise ConfigError("[topocluster] pileup_noise must name a table (builtin:NAME or a "
                              "path), got an empty string")


#: ``clusters`` columns: name -> (dtype, unit, meaning).
CLUSTER_COLUMNS: dict[str, tuple[str, str, str]] = {
    "energy": ("float64", "GeV", "sum of the member cells' energies (negative ones included)"),
    "energy_em": ("float64", "GeV", "the same sum over the member cells of ECAL layers only"),
    "eta": ("float64", "", "|E|-weighted mean eta of the member cells' centres"),
    "phi": ("float64", "rad", "|E|-weighted mean phi, measured from the seed, in [-pi, pi)"),
    "n_cells": ("int32", "", "member cells (core and perimeter)"),
    "seed": ("int32", "", "cell id of the label seed (best seed of the cluster)"),
    "seed_significance": ("float64", "", "|E| / sigma_noise of the label seed"),
}

#: Name and column of the per-cell output collection.
LABEL_COLLECTION = "cell_cluster"
LABEL_COLUMN = "cluster"

TWO_PI = 2.0 * math.pi


# -- the cell graph with the configured noise ------------------------------------------------
@functools.lru_cache(maxsize=8)
def _noise_graph_of(calo: Any, pileup_mu: float, pileup_noise: str, subtract: bool
                    ) -> CellGraph:
    from hltemu.calo_noise import PileupNoiseError, load_table, pileup_offset, total_noise

    base = graph_of(calo)
    source = f"pileup-noise table {pileup_noise!r}"
    try:
        table = load_table(pileup_noise)
        sigma1 = table.cell_sigma1(calo, source=source)
        offset = pileup_offset(table.cell_mean1(calo, source=source), pileup_mu) \
            if subtract else None
    except PileupNoiseError as exc:
        raise PipelineError(f"stage 'topocluster' (pileup_noise = {pileup_noise!r}): {exc}"
                            ) from None
    return base.with_noise(total_noise(calo.noise_sigma, sigma1, pileup_mu), offset)


def resolved_mu(cfg: TopoclusterConfig) -> float:
    """``cfg.pileup_mu`` as a number; :class:`PipelineError` when it is still ``"auto"`` (the
    planner resolves it from the input files: :func:`plan_topocluster`)."""
    if isinstance(cfg.pileup_mu, str):
        raise PipelineError(
            "stage 'topocluster': [topocluster] pileup_mu = 'auto' is the input's mean pileup, "
            "resolved when a run is planned with its input files (hltemu run, run_files, "
            "pipeline.plan(..., files=...)); here no input file is known: give pileup_mu as a "
            "number of interactions (0 = electronic noise only)")
    return float(cfg.pileup_mu)


def noise_graph(cfg: TopoclusterConfig, calo: Any = None) -> CellGraph:
    """The :class:`CellGraph` of a calorimeter (default: the default geometry's) with the total
    noise of ``cfg``: ``sqrt(sigma_el**2 + cfg.pileup_mu * sigma_1**2)`` per cell, ``sigma_1``
    from the table ``cfg.pileup_noise``, and with ``cfg.subtract_pileup_mean`` the per-cell
    energy offset ``cfg.pileup_mu * mean_1`` (GeV; :attr:`CellGraph.offset`).  Built once per
    calorimeter, ``pileup_mu``, table and subtraction (and copied once to each backend's
    device); with ``pileup_mu == 0`` it is :func:`calorimeter_graph` itself (no offset) and the
    table is not read.  :class:`PipelineError` naming the table for a missing or corrupt file
    or one whose rings are not the calorimeter's, and for ``pileup_mu = "auto"`` not yet
    resolved (:func:`resolved_mu`)."""
    mu = resolved_mu(cfg)
    if calo is None:
        from hltemu.geometry import default_geometry

        calo = default_geometry().calo
    if mu == 0.0:
        return graph_of(calo)
    return _noise_graph_of(calo, mu, cfg.pileup_noise, bool(cfg.subtract_pileup_mean))


# -- which cells are ECAL cells (energy_em) -----------------------------------------------------
@dataclass(frozen=True, eq=False)
class EcalMask:
    """Which cell ids are ECAL cells: ``em`` (uint8, one per cell id, 1 = a cell of an ECAL
    layer), copied once to each backend's device (:meth:`on`)."""

    em: np.ndarray
    _device: dict = field(default_factory=dict, repr=False)

    @property
    def n_cells(self) -> int:
        return int(self.em.shape[0])

    def on(self, be: Backend) -> Any:
        """``em`` on ``be``, copied there once and cached."""
        key = (be.name, be.simulated)
        if key not in self._device:
            self._device[key] = be.to_device(np.array(self.em, copy=True))
        return self._device[key]


@functools.lru_cache(maxsize=4)
def _ecal_mask_of(calo: Any) -> EcalMask:
    ecal = calo.section_layers("ECAL")
    return EcalMask(np.isin(calo.cell_layer, ecal).astype(np.uint8))


def ecal_mask(em: Any = None, graph: CellGraph | None = None) -> EcalMask:
    """The ECAL cells of a graph as an :class:`EcalMask`.  ``em``: an :class:`EcalMask` or a
    boolean array per cell id (True = ECAL); ``None``: the default geometry's calorimeter (the
    cells of its layers whose section is ``"ECAL"``), built once.  :class:`PipelineError` when the
    mask's length is not the graph's cell count (a graph of another calorimeter needs its own
    ``em``)."""
    if em is None:
        from hltemu.geometry import default_geometry

        mask = _ecal_mask_of(default_geometry().calo)
    elif isinstance(em, EcalMask):
        mask = em
    else:
        arr = np.asarray(em)
        if arr.ndim != 1 or arr.dtype.kind not in "bui":
            raise PipelineError(f"stage 'topocluster': the ECAL mask must be a 1-D boolean array "
                                f"(one entry per cell id), got shape {arr.shape} and dtype "
                                f"{arr.dtype}")
        mask = EcalMask((arr != 0).astype(np.uint8))
    if graph is not None and mask.n_cells != graph.n_cells:
        raise PipelineError(
            f"stage 'topocluster': the ECAL mask has {mask.n_cells} cells, the cell graph "
            f"{graph.n_cells}: a graph that is not the default geometry's needs its own mask "
            f"(topocluster(..., em=<bool per cell id>))")
    return mask


# -- pileup_mu = "auto": the input's mean pileup, resolved by the planner -----------------------
def input_mu(inputs: tuple[str, ...]) -> tuple[float, str, dict[str, Any]]:
    """The mean pileup of the input files: ``(mu, where, per_file)``, ``where`` saying where it
    was read (for the plan note) and ``per_file`` each file's ``{"mu", "source"}``
    (:func:`hltemu.io.input_pileup`: the generated mean in the file's provenance, else the
    mean of its ``Event_n_pileup``).

    :class:`PipelineError` naming the file for a file with neither (CMS NanoAOD, a file
    hltemu did not write), and naming each file and value when the files' values differ: the
    noise and the offset are set once per run (a Dask run plans on the client with every
    file, so it refuses the same inputs), so such files are run separately or with a number.
    """
    from hltemu import io

    found = [io.input_pileup(f) for f in inputs]
    per_file = {p["file"]: {"mu": p["mu"], "source": p["source"]} for p in found}
    unknown = [p["file"] for p in found if p["mu"] is None]
    if unknown:
        raise PipelineError(
            f"stage 'topocluster': [topocluster] pileup_mu = 'auto' takes the input's mean "
            f"pileup, but {', '.join(unknown)} records none (no hltemu provenance with the "
            f"generated pileup, no Event_n_pileup branch, e.g. CMS NanoAOD); set "
            f"[topocluster] pileup_mu to the mean pileup of the data (a number of interactions, "
            f"0 for none)")
    values = {p["mu"] for p in found}
    if len(values) > 1:
        listed = ", ".join(f"{p['file']} {p['mu']:g} (from its {p['source']})" for p in found)
        raise PipelineError(
            f"stage 'topocluster': [topocluster] pileup_mu = 'auto', but the input files differ "
            f"in mean pileup: {listed}; the noise thresholds and the pileup offset are set once "
            f"per run: run the files of each pileup separately, or set [topocluster] pileup_mu")
    sources = sorted({p["source"] for p in found})
    what = {"provenance": "provenance", "Event_n_pileup": "mean Event_n_pileup"}
    n_events = sum(p["events"] for p in found)
    where = " and ".join(what[s] for s in sources)
    where = (f"the input's {where}" if len(found) == 1 else
             f"the {len(found)} inputs' {where}")
    if "Event_n_pileup" in sources:
        where += f", {n_events} events"
    return values.pop(), where, per_file


def plan_topocluster(cfg: TopoclusterConfig, available: frozenset[str],
                     inputs: tuple[str, ...] = ()) -> Planned:
    """The planner's hook: resolve ``pileup_mu = "auto"`` to the mean pileup of the run's
    ``inputs`` (:func:`input_mu`), then build and check the noise graph (reads the table).
    The note says which ``<mu>`` the noise and offset use and where it came from; the facts
    (run report, output provenance) hold ``pileup_mu``, ``pileup_mu_from`` (``"config"`` or
    ``"input"``), ``subtract_pileup_mean`` and, for ``"auto"``, ``inputs`` (each file's value
    and source).  With no input files known (:func:`~hltemu.pipeline.check_config`) or no
    ``CaloCell`` to cluster, ``"auto"`` stays as it is."""
    from dataclasses import replace

    if isinstance(cfg.pileup_mu, str):
        if not inputs or "CaloCell" not in available:
            return Planned(cfg)
        mu, where, per_file = input_mu(inputs)
        cfg = replace(cfg, pileup_mu=mu)
        facts: dict[str, Any] = {"pileup_mu_from": "input", "inputs": per_file}
    else:
        where = "[topocluster] pileup_mu"
        facts = {"pileup_mu_from": "config"}
    noise_graph(cfg)  # reads and checks the table
    mu = float(cfg.pileup_mu)
    if mu == 0.0:
        what = "electronic noise only, no pileup offset"
    elif cfg.subtract_pileup_mean and cfg.pileup_offset == EVENT:
        what = "noise, and pileup offset from each event's rho,"
    elif cfg.subtract_pileup_mean:
        what = "noise and pileup offset"
    else:
        what = "noise (mean pileup energy not subtracted)"
    note = f"topocluster: {what} for <mu> = {mu:g} ({where})"
    return Planned(cfg, (note,), {"pileup_mu": mu, **facts,
                                  "subtract_pileup_mean": bool(cfg.subtract_pileup_mean),
                                  "pileup_offset": cfg.pileup_offset})


# -- input checks and per-row arrays ----------------------------------------------------------
class RowArrays(NamedTuple):
    """Per-row arrays of a CaloCell collection on one backend.

    ``ids`` (int32), ``sig`` (float64, ``|E| / sigma``), ``energy`` (float64, GeV), ``event``
    (int64), ``slot`` (int32 ``(n_events, n_cells)``: row within the event of each cell id, -1).
    """

    ids: Any
    sig: Any
    energy: Any
    event: Any
    slot: Any


def cell_energies(energy: Any, ids: Any, graph: Any, xp: Any, scale: Any = None) -> Any:
    """The energies clustering uses (float64 GeV): the measured ones less the graph's per-cell
    offset (the mean energy of ``pileup_mu`` interactions, :attr:`CellGraph.offset`; none:
    unchanged), times ``scale`` (per row or a number; ``None``: 1), the event's pileup over
    ``pileup_mu`` in the ``"event"`` mode (:func:`event_scale`).  ``graph`` is a
    :class:`CellGraph` or its arrays on a device; the one place every backend corrects."""
    return corrected_energy(energy, ids, graph.offset, xp, scale)


def event_scale(cells: Collection, cfg: TopoclusterConfig, graph: CellGraph, be: Backend
                ) -> Any:
    """Per event (float64 ``(n_events,)`` on ``be``), the factor of the graph's offset in the
    ``"event"`` mode: ``n / pileup_mu`` with ``n = max(rho - rho_zero_pileup, 0) /
    rho_per_interaction`` the event's own pileup estimate from its calorimeter rho (stage
    ``rho``'s algorithm and default grid on these cells, bit-identical on every backend);
    ``None`` (the offset as it is) in the ``"mean"`` mode or when the graph has no offset."""
    if cfg.pileup_offset != EVENT or graph.offset is None or not cfg.subtract_pileup_mean:
        return None
    mu = resolved_mu(cfg)
    if mu == 0.0:
        return None
    from hltemu.stages import rho as rho_stage

    # the rho stage's own tables for its default grid, from the pipeline's cache: uploaded once
    # per backend, shared with stage rho when it runs with that grid
    prep = prepared(rho_stage.STAGE, rho_stage.RhoConfig(), be)
    rho = rho_stage.compute_rho(cells, prep, be)
    n = be.xp.maximum(rho - cfg.rho_zero_pileup, 0.0) / cfg.rho_per_interaction
    return n / mu


def significance(energy: Any, ids: Any, noise: Any, xp: Any) -> Any:
    """``|E| / sigma`` (float64): one IEEE division of float64 values, exact on every backend."""
    return xp.abs(xp.asarray(energy, dtype=xp.float64)) / noise[ids]


def row_arrays(cells: Collection, graph: CellGraph, be: Backend, scale: Any = None
               ) -> RowArrays:
    """The kernels' per-row arrays; :class:`PipelineError` when an event repeats a cell id."""
    xp = be.xp
    dev = graph.on(be)
    n_events = cells.n_events
    ids = xp.asarray(cells["id"], dtype=xp.int32)
    rows = xp.arange(cells.size, dtype=xp.int64)
    event = xp.searchsorted(cells.offsets[1:], rows, side="right").astype(xp.int64)
    local = (rows - cells.offsets[event]).astype(xp.int32)
    slot = xp.full((n_events, graph.n_cells), -1, dtype=xp.int32)
    slot[event, ids] = local
    repeated = slot[event, ids] != local
    if any_true(repeated):
        row = item(xp.argmax(repeated))
        raise repeated_id_error(int(be.to_host(ids[row])), int(be.to_host(event[row])),
                                "topocluster")
    energy = cell_energies(cells["energy"], ids, dev, xp,
                           None if scale is None else scale[event])
    return RowArrays(ids, significance(energy, ids, dev.noise, xp), energy, event, slot)


# -- reference ----------------------------------------------------------------------------------
def wrap_phi(x: Any) -> Any:
    """Angle(s) [rad] wrapped into ``[-pi, pi)``."""
    return x - TWO_PI * np.floor((x + math.pi) / TWO_PI)


def cluster_event_reference(ids: np.ndarray, energy: np.ndarray, graph: CellGraph,
                            cfg: TopoclusterConfig, scale: float | None = None, *,
                            em: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """4-2-0 clustering of one event, written to be read.

    ``ids`` (int) and ``energy`` (GeV, measured) are the event's cells; the graph's offset
    (mean pileup energy) is subtracted first (:func:`cell_energies`); ``em`` (per cell id,
    nonzero = ECAL) selects the cells of ``energy_em``.  Returns the cluster
    index of each cell (int32, -1 for none) and the clusters' columns
    (:data:`CLUSTER_COLUMNS`), clusters in seed-rank order.
    """
    n = ids.shape[0]
    energy = cell_energies(energy, ids, graph, np, scale)
    sig = significance(energy, ids, graph.noise, np)
    row_of_cell = np.full(graph.n_cells, -1, dtype=np.int64)
    row_of_cell[ids] = np.arange(n)

    def neighbours(row: int) -> list[int]:
        c = ids[row]
        cells = graph.nbr_index[graph.nbr_offsets[c]:graph.nbr_offsets[c + 1]]
        rows = row_of_cell[cells]
        return rows[rows >= 0].tolist()

    s = sig.tolist()
    grows = [v > cfg.grow_threshold for v in s]
    # Seeds in rank order: highest significance first, then lowest cell id.
    seeds = sorted((r for r in range(n) if s[r] > cfg.seed_threshold),
                   key=lambda r: (-s[r], int(ids[r])))
    cluster = np.full(n, -1, dtype=np.int64)
    cores: list[list[int]] = []
    for seed in seeds:
        if cluster[seed] >= 0:
            continue  # reached from a better seed: the two seeds are one cluster
        k = len(cores)
        cluster[seed] = k
        core = [seed]
        queue = deque([seed])
        while queue:
            r = queue.popleft()
            for q in neighbours(r):
                if cluster[q] < 0 and grows[q]:
                    cluster[q] = k
                    core.append(q)
                    queue.append(q)
        cores.append(core)
    # Perimeter: clusters in rank order, so a cell touching several joins the best one.
    for k, core in enumerate(cores):
        for r in core:
            for q in neighbours(r):
                if cluster[q] < 0 and cfg.perimeter_threshold < s[q] and not grows[q]:
                    cluster[q] = k

    cols: dict[str, list] = {name: [] for name in CLUSTER_COLUMNS}
    for k, core in enumerate(cores):
        rows = np.flatnonzero(cluster == k)
        seed = core[0]
        e = energy[rows]
        w = np.abs(e)
        phi0 = graph.phi[ids[seed]]
        dphi = wrap_phi(graph.phi[ids[rows]] - phi0)
        cols["energy"].append(e.sum())
        cols["energy_em"].append(e[em[ids[rows]] != 0].sum())
        cols["eta"].append((w * graph.eta[ids[rows]]).sum() / w.sum())
        cols["phi"].append(wrap_phi(phi0 + (w * dphi).sum() / w.sum()))
        cols["n_cells"].append(rows.shape[0])
        cols["seed"].append(ids[seed])
        cols["seed_significance"].append(s[seed])
    out = {name: np.asarray(v, dtype=CLUSTER_COLUMNS[name][0]) for name, v in cols.items()}
    return cluster.astype(np.int32), out


def cluster_reference(cells: Collection, graph: CellGraph, cfg: TopoclusterConfig,
                      scale: np.ndarray | None = None, em: EcalMask | None = None
                      ) -> tuple[Collection, Collection]:
    """``(clusters, cell_cluster)`` by :func:`cluster_event_reference`, event by event
    (``scale``: each event's factor of the offset, :func:`event_scale`; ``em``: the ECAL
    cells, :func:`ecal_mask`, default the default geometry's)."""
    em_ids = ecal_mask(em, graph).em
    labels, per_event, counts = [], [], []
    ids_all = np.asarray(cells["id"])
    energy_all = np.asarray(cells["energy"])
    for i in range(cells.n_events):
        sl = slice(int(cells.offsets[i]), int(cells.offsets[i + 1]))
        ids = ids_all[sl]
        unique, n_seen = np.unique(ids, return_counts=True)
        if np.any(n_seen > 1):
            raise repeated_id_error(int(unique[np.argmax(n_seen > 1)]), i, "topocluster")
        label, cols = cluster_event_reference(ids, energy_all[sl], graph, cfg,
                                              None if scale is None else scale[i], em=em_ids)
        labels.append(label)
        per_event.append(cols)
        counts.append(cols["seed"].shape[0])
    clusters = {
        name: (np.concatenate([c[name] for c in per_event]) if per_event
               else np.zeros(0, dtype=dtype))
        for name, (dtype, _, _) in CLUSTER_COLUMNS.items()
    }
    label = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int32)
    return (Collection.from_counts(counts, clusters),
            Collection(np.asarray(cells.offsets).copy(), {LABEL_COLUMN: label}))


# -- cpu and cuda: labels, then shared assembly -------------------------------------------------
def labels_cpu(rows: RowArrays, offsets: np.ndarray, graph: CellGraph,
               cfg: TopoclusterConfig) -> np.ndarray:
    """Label seed (global row) of every cell, -1 for none: Numba, parallel over events."""
    from hltemu.kernels.topocluster import label_cells_cpu

    label = np.empty(rows.ids.shape[0], dtype=np.int64)
    label_cells_cpu(rows.ids, rows.sig, offsets, rows.slot, graph.nbr_offsets, graph.nbr_index,
                    cfg.seed_threshold, cfg.grow_threshold, cfg.perimeter_threshold, label)
    return label


#: Tag-propagation launches between two reads of the ``changed`` flag on cuda (each read
#: waits for the device).  On the built-in sample's first event (pileup 50) the propagation
#: converges in 8 launches: 4 cuts those reads from 8 to 2, for at most 3 launches more, each
#: a few microseconds of a GPU (tests/test_device_syncs.py holds the stage to its budget).
CONVERGENCE_CHECK_EVERY = 4


def labels_cuda(rows: RowArrays, offsets: Any, graph: CellGraph, cfg: TopoclusterConfig,
                be: Backend) -> tuple[Any, int]:
    """Label seed of every cell by tag propagation: ``(label, launches)``, where ``launches``
    counts the propagation launches (the last :data:`CONVERGENCE_CHECK_EVERY` change
    nothing)."""
    from hltemu.kernels.topocluster import (
        assign_perimeter_cuda,
        mark_perimeter_cuda,
        propagate_tags_cuda,
    )

    xp = be.xp
    dev = graph.on(be)
    n = int(rows.ids.shape[0])
    sig = rows.sig
    tag = xp.where(sig > cfg.seed_threshold, xp.arange(n, dtype=xp.int64), -1)
    grow = xp.nonzero(sig > cfg.grow_threshold)[0].astype(xp.int64)
    n_grow = int(grow.shape[0])
    common = (rows.event, offsets, rows.ids, sig)
    graph_args = (rows.slot, dev.nbr_offsets, dev.nbr_index)
    launches = 0
    if n_grow:
        # Every launch but the last improves at least one tag, and a tag can improve at most
        # (seeds in the component) times: the loop ends; the bound only guards against a bug.
        # The flag is read once per CONVERGENCE_CHECK_EVERY launches (a synchronisation
        # each): launches past the fixed point change nothing, so the labels are the same.
        limit = n_grow + 2 + CONVERGENCE_CHECK_EVERY
        while True:
            changed = xp.zeros(1, dtype=xp.int32)
            for _ in range(CONVERGENCE_CHECK_EVERY):
                propagate_tags_cuda[blocks(n_grow), THREADS_PER_BLOCK](
                    grow, *common, cfg.grow_threshold, *graph_args, tag, changed)
            launches += CONVERGENCE_CHECK_EVERY
            if be.item(changed[0]) == 0:
                break
            if launches > limit:
                raise RuntimeError(f"topocluster tag propagation did not converge in {limit} "
                                   "launches (a bug: it must)")
        mark = xp.zeros(n, dtype=xp.int32)
        mark_perimeter_cuda[blocks(n_grow), THREADS_PER_BLOCK](
            grow, *common, cfg.grow_threshold, cfg.perimeter_threshold, *graph_args, tag, mark)
        perimeter = xp.nonzero(mark)[0].astype(xp.int64)
        if perimeter.shape[0]:
            assign_perimeter_cuda[blocks(int(perimeter.shape[0])), THREADS_PER_BLOCK](
                perimeter, *common, cfg.grow_threshold, *graph_args, tag)
    return tag, launches


def kinematics_cpu(n_clusters: int, args: tuple[Any, ...]) -> None:
    """Cluster energy, eta, phi and cell count with the Numba kernel."""
    from hltemu.kernels.topocluster import cluster_kinematics_cpu

    cluster_kinematics_cpu(*args)


def kinematics_cuda(n_clusters: int, args: tuple[Any, ...]) -> None:
    """The same with the CUDA kernel, one thread per cluster."""
    from hltemu.kernels.topocluster import cluster_kinematics_cuda

    cluster_kinematics_cuda[blocks(n_clusters), THREADS_PER_BLOCK](*args)


def assemble(label: Any, rows: RowArrays, offsets: Any, n_events: int, graph: CellGraph,
             be: Backend, kinematics: Any, em: EcalMask) -> tuple[Collection, Collection]:
    """``(clusters, cell_cluster)`` from label seeds (global rows), on ``be``; ``kinematics``
    is :func:`kinematics_cpu` or :func:`kinematics_cuda`; ``em`` the ECAL cells."""
    xp = be.xp
    dev = graph.on(be)
    n = int(label.shape[0])
    all_rows = xp.arange(n, dtype=xp.int64)
    heads = xp.nonzero(label == all_rows)[0]  # each cluster's label seed labels itself
    keys = xp.stack([rows.ids[heads].astype(xp.float64), -rows.sig[heads],
                     rows.event[heads].astype(xp.float64)])
    heads = heads[xp.lexsort(keys)]  # by event, then seed rank
    n_cl = int(heads.shape[0])
    head_event = rows.event[heads]
    counts = bincount(head_event, n_events, xp)[:n_events] if n_cl else \
        xp.zeros(n_events, dtype=xp.int64)
    cl_offsets = counts_to_offsets(counts, xp)
    index_of_head = xp.full(n, -1, dtype=xp.int64)
    index_of_head[heads] = xp.arange(n_cl, dtype=xp.int64)
    inside = label >= 0
    cidx = xp.where(inside, index_of_head[xp.where(inside, label, 0)], -1)
    local = xp.where(inside, cidx - cl_offsets[rows.event], -1).astype(xp.int32)

    members = xp.nonzero(inside)[0]
    if xp is np:  # a stable (radix) sort keeps rows ascending within each cluster
        members = members[np.argsort(cidx[members], kind="stable")]
    else:  # unique keys: no reliance on the stability of the device sort
        members = members[xp.argsort(cidx[members] * max(n, 1) + members)]
    member_offsets = xp.searchsorted(cidx[members], xp.arange(n_cl + 1, dtype=xp.int64))
    row_eta, row_phi = dev.eta[rows.ids], dev.phi[rows.ids]
    out = {name: xp.zeros(n_cl, dtype=dtype) for name, (dtype, _, _) in CLUSTER_COLUMNS.items()}
    if n_cl:
        row_em = em.on(be)[rows.ids]
        args = (members, member_offsets.astype(xp.int64), rows.energy, row_em, row_eta,
                row_phi, heads, out["energy"], out["energy_em"], out["eta"], out["phi"],
                out["n_cells"])
        kinematics(n_cl, args)
    out["seed"] = rows.ids[heads].astype(xp.int32)
    out["seed_significance"] = rows.sig[heads]
    return Collection(cl_offsets, out), Collection(offsets, {LABEL_COLUMN: local})


# -- the stage ----------------------------------------------------------------------------------
def clusters_reference(cells: Collection, cfg: TopoclusterConfig, be: Backend,
                       graph: CellGraph, em: EcalMask) -> tuple[Collection, Collection]:
    """The seed-queue algorithm per event in plain Python (:func:`cluster_reference`)."""
    check_cells(cells, graph.n_cells, be, "topocluster")
    scale = event_scale(cells, cfg, graph, be)
    return cluster_reference(cells.to_host(), graph, cfg,
                             None if scale is None else be.to_host(scale), em)


def clusters_cpu(cells: Collection, cfg: TopoclusterConfig, be: Backend,
                 graph: CellGraph, em: EcalMask) -> tuple[Collection, Collection]:
    """The same algorithm in Numba, parallel over events, then the common assembly."""
    check_cells(cells, graph.n_cells, be, "topocluster")
    rows = row_arrays(cells, graph, be, event_scale(cells, cfg, graph, be))
    label = labels_cpu(rows, cells.offsets, graph, cfg)
    return assemble(label, rows, cells.offsets, cells.n_events, graph, be, kinematics_cpu, em)


def clusters_cuda(cells: Collection, cfg: TopoclusterConfig, be: Backend,
                  graph: CellGraph, em: EcalMask) -> tuple[Collection, Collection]:
    """Tag propagation to a fixed point and a perimeter pass on CUDA, then the assembly."""
    check_cells(cells, graph.n_cells, be, "topocluster")
    rows = row_arrays(cells, graph, be, event_scale(cells, cfg, graph, be))
    label, _ = labels_cuda(rows, cells.offsets, graph, cfg, be)
    return assemble(label, rows, cells.offsets, cells.n_events, graph, be, kinematics_cuda,
                    em)


#: The clustering of each backend.
ALGORITHMS: dict[str, Any] = {"reference": clusters_reference, "cpu": clusters_cpu,
                              "cuda": clusters_cuda}


def topocluster(cells: Collection, cfg: TopoclusterConfig, be: Backend,
                graph: CellGraph | None = None, em: Any = None) -> dict[str, Collection]:
    """``{"clusters": ..., "cell_cluster": ...}`` of a CaloCell collection on ``be``.

    ``graph`` defaults to the default geometry's calorimeter with the total noise of ``cfg``
    (:func:`noise_graph`).  A ``graph`` given is used as it is: its ``noise`` is the sigma of
    the significance, and ``cfg.pileup_mu`` / ``cfg.pileup_noise`` play no part.  ``em``: the
    ECAL cells of ``energy_em`` (:func:`ecal_mask`: a boolean per cell id, default the default
    geometry's, which only fits a graph of its calorimeter).
    """
    graph = graph if graph is not None else noise_graph(cfg)
    mask = ecal_mask(em, graph)
    clusters, labels = dispatch(ALGORITHMS, be, "topoclustering")(cells, cfg, be, graph, mask)
    return {"clusters": clusters, LABEL_COLLECTION: labels}


class Tables(NamedTuple):
    """What :func:`prepare` gives the stage: the cell graph and the ECAL cells."""

    graph: CellGraph
    em: EcalMask


def prepare(cfg: TopoclusterConfig, backend: Backend) -> Tables:
    """The calorimeter's cell graph with the total noise of ``cfg`` (:func:`noise_graph`) and
    its ECAL cells (:func:`ecal_mask`), copied once to ``backend``'s device."""
    graph = noise_graph(cfg)
    graph.on(backend)
    em = ecal_mask(None, graph)
    em.on(backend)
    return Tables(graph, em)


def run_reference(batch: EventBatch, cfg: TopoclusterConfig, tables: Tables
                  ) -> dict[str, Collection]:
    clusters, labels = clusters_reference(batch["CaloCell"], cfg, batch.backend, *tables)
    return {"clusters": clusters, LABEL_COLLECTION: labels}


def run_cpu(batch: EventBatch, cfg: TopoclusterConfig, tables: Tables
            ) -> dict[str, Collection]:
    clusters, labels = clusters_cpu(batch["CaloCell"], cfg, batch.backend, *tables)
    return {"clusters": clusters, LABEL_COLLECTION: labels}


def run_cuda(batch: EventBatch, cfg: TopoclusterConfig, tables: Tables
             ) -> dict[str, Collection]:
    clusters, labels = clusters_cuda(batch["CaloCell"], cfg, batch.backend, *tables)
    return {"clusters": clusters, LABEL_COLLECTION: labels}


STAGE = register(Stage(
    name="topocluster",
    needs=("CaloCell",),
    adds=("clusters", LABEL_COLLECTION),
    config_type=TopoclusterConfig,
    prepare=prepare,
    plan=plan_topocluster,
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    doc="ATLAS 4-2-0 topological clusters of calorimeter cells by |E|/sigma_noise, electronic "
        "and pileup noise (GPU: tag propagation)",
))
