"""Stage ``rho``: the event's median pT density from calorimeter towers (CMS calo rho).

The rule
--------
1. **Towers.**  Every cell of the event's ``CaloCell`` collection, with its energy as measured
   (no threshold: negative noise fluctuations included), is added to its tower
   (:func:`calo_towers`).  The towers are the eta-phi grid of the calorimeter's coarsest layer
   (the one with the fewest cells; by default the HCAL's, 60 x 64 towers of 0.1 x 2 pi / 64 =
   0.098 over ``|eta| < 3``), as CMS's calorimeter towers follow the HCAL readout.  Every
   layer's grid must nest into it (same ``|eta|`` coverage, cell counts in eta and in phi whole
   multiples of the towers'), so each cell lies in exactly one tower: the one holding its
   centre, tower index ``(i_eta // f_eta) * n_phi_tower + i_phi // f_phi`` with the cell's
   grid indices (:mod:`hltemu.geometry`) and ``f`` the layer's cells per tower in eta and
   phi.  A default tower is 16 EM1 + 4 EM2 + 1 HAD1 + 1 HAD2 + 1 HAD3 = 23 cells.
2. **Tower pT** = ``E_tower / cosh(eta_tower)`` (massless, at the tower's centre), signed.
3. **Grid.**  A fixed grid over ``-eta_max <= eta < eta_max`` (at most the calorimeter's
   acceptance, 3.0 by default) and ``-pi <= phi < pi``: ``round(2 eta_max / grid_spacing)``
   rows and ``round(2 pi / grid_spacing)`` columns (11 x 11 with the default spacing 0.55).
   Each tower belongs to the grid cell that holds its centre (towers with centres outside
   ``|eta| < eta_max`` to none), and a grid cell *is* the union of its towers: its area is
   the sum of theirs (25 to 36 towers, 0.25 to 0.35, by default: 60 tower rows and 64 tower
   columns do not divide into 11).  Every grid cell must hold a tower (a
   :class:`ConfigError` otherwise), as every grid cell at least a tower wide and high does.
4. **Rho** = the median over all grid cells of (sum of the cell's tower pT) / (its area),
   empty cells included (as FastJet's ``GridMedianBackgroundEstimator``, which CMS's
   ``fixedGridRho*`` use; for an even number of cells the mean of the two middle values).

Negative energies are kept at every step (CMS's calo rho too takes towers with their energy
as measured): a tower of negative energy has negative pT and lowers its grid cell's sum, and
rho itself may come out below 0 in an event without pileup.  The calorimeter's noise is
symmetric about 0, so signed sums carry no noise offset and rho grows linearly with the pileup
from about 0.  Clipping towers at 0 would add the positive half of the noise of every tower
(0.4 sigma_tower on average, sigma_tower = 0.32 GeV centrally), an offset that shrinks as
pileup fills the towers: on noise-only events rho is -0.2 to 0.3 GeV per unit area signed and
5.6 to 6.3 clipped, the rho of about 10 pileup interactions
(``tests/test_rho.py::test_noise_alone_gives_rho_about_zero``).

Needs ``CaloCell`` (columns ``id``, the cell id in :func:`hltemu.geometry.default_geometry`'s
calorimeter, and ``energy`` [GeV]); an event may hold every cell (as ``hltemu generate``
writes) or any subset, in any order (a missing cell adds nothing).  Ids out of range, an id
repeated within an event, and energies that are not finite are errors naming the column, the
event and the value.  Adds ``rho``, one row per event, column ``rho`` [GeV per unit eta-phi
area].  The L1FastJet correction reads it.

Backends agree bit for bit (tested with a tolerance of 0): ``reference`` (NumPy, one event at
a time), ``cpu`` (Numba, parallel over events) and ``cuda`` (one thread per event and tower,
then one per event) add the same float64 terms in the same order (a tower's cells in
ascending cell id, a grid cell's towers in ascending tower index, from 0.0), divide by the same
host-computed ``cosh`` and area tables, and do nothing else but compare values (the median)
and one ``0.5 * (a + b)``; on CUDA through exactly rounded libdevice operations
(:mod:`hltemu.kernels.rho`), so no FMA contraction can change a bit.

Measured (minimum bias, ``cpu``, 2026-11-28, ``examples/rho_vs_pileup.py``, whose docstring
has the commands; seeds 1000 + pileup for 100 events per point, plus 2000 + pileup for 300,
200, 100 and 100 more events at pileup 20, 50, 100 and 200; generated before the
per-interaction random streams of 2026-11-29, so the same seeds now give other events)::

    pileup  events  <N_PU>   <rho> +- s.e.    <rho>/<N_PU>  min rho  [GeV per unit area]
         0     100     0.0    0.564 +- 0.057        -        -0.271
        20     400    20.1   12.055 +- 0.214     0.599        2.947
        50     300    49.5   30.413 +- 0.404     0.614       13.554
       100     200    98.9   60.653 +- 0.719     0.613       37.885
       200     200   200.9  121.532 +- 1.002     0.605       80.202

<rho> in bins of the true N_PU (>= 40 events a bin), fitted for N_PU >= 20: (0.6086 +- 0.0043)
N_PU + (-0.17 +- 0.27), chi2/ndf 14.4/18; every bin within 4.2% of the fit (its statistical
error: 1.2 to 4.7%; 2.7% with bins of >= 80 events).  Per interaction, pileup 200 gives 0.985
times pileup 50's value.  Rho > 0 in every event with N_PU >= 20 (the smallest 4.88); the only
rho <= 0 are 9 of the 100 events at pileup 0 (one minimum-bias interaction and noise, down to
-0.27).  The intercept is near 0 rather than one interaction's rho (the minimum-bias "hard"
interaction): the median of the grid's densities is below their mean by about 14% for 1
interaction, 7% for 21, 3% for 51, 1% for 201, so <rho> bends slightly upwards at low pileup.
The calorimeter's hadron response (h/e = 0.45) puts these densities at about 0.7 times those of
the cells' true energies.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from hltemu.backends import Backend
from hltemu.batch import Collection, EventBatch
from hltemu.calo_cells import check_cells, repeated_id_error
from hltemu.config import ConfigError, param
from hltemu.ops import THREADS_PER_BLOCK, blocks
from hltemu.pipeline import Stage, dispatch, register
from hltemu.xpsafe import any_true, event_index, item


def _default_calo() -> Any:
    from hltemu.geometry import default_geometry

    return default_geometry().calo


def calo_acceptance(calo: Any = None) -> float:
    """The calorimeter's ``|eta|`` coverage (largest over its layers; default: the default
    geometry's, 3.0)."""
    calo = _default_calo() if calo is None else calo
    return max(lay.eta_max for lay in calo.layers)


@dataclass(frozen=True)
class RhoConfig:
    """Stage ``rho``: median pT density of calorimeter towers on a fixed eta-phi grid.

    The grid has ``round(2 eta_max / grid_spacing)`` rows in eta and ``round(2 pi /
    grid_spacing)`` columns in phi, so cells are close to ``grid_spacing`` square (11 x 11 by
    default); each grid cell is the union of the towers whose centres it holds.  ``eta_max``
    must not exceed the calorimeter's acceptance (3.0): beyond it there are no cells.  Files
    written before rho came from towers hold ``eta_max = 5.0`` (CMS's grid, whose calorimeters
    reach |eta| 5), which is now an error asking to remove the key; ``eta_max = 2.5`` gives a
    central rho.
    """

    eta_max: float = param(3.0, "", "the grid covers -eta_max <= eta < eta_max; at most the "
                                    "calorimeter's acceptance (3.0)")
    grid_spacing: float = param(0.55, "", "requested grid cell size in eta and in phi [rad]; "
                                          "not finer than the towers (0.1)")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.eta_max) and self.eta_max > 0):
            raise ConfigError(f"eta_max must be finite and > 0, got {self.eta_max}")
        if not (math.isfinite(self.grid_spacing) and self.grid_spacing > 0):
            raise ConfigError(f"grid_spacing must be finite and > 0, got {self.grid_spacing}")
        acceptance = calo_acceptance()
        if self.eta_max > acceptance:
            raise ConfigError(
                f"eta_max = {self.eta_max} is beyond the calorimeter's acceptance |eta| < "
                f"{acceptance}: rho is measured on calorimeter towers, and there are none "
                f"there (5.0, the former default, was CMS's grid); remove the key (default "
                f"{acceptance}) or set eta_max <= {acceptance}")




# -- towers and grid ----------------------------------------------------------------------------
class Towers(NamedTuple):
    """The calorimeter towers: the eta-phi cells of the coarsest layer ``grid`` (a
    :class:`hltemu.geometry.CaloLayer`: ``n_eta`` rows of ``deta`` from ``-eta_max``, ``n_phi``
    columns of ``dphi`` [rad] from ``-pi``), tower index ``i_eta * n_phi + i_phi``.  Arrays
    (read-only): ``cell_tower`` (int32, per cell id), the CSR member lists ``offsets`` (int64,
    n_towers + 1) and ``cells`` (int32, cell ids ascending within a tower), and per tower
    ``eta``, ``phi`` (centre) and ``cosh_eta`` (float64)."""

    grid: Any
    cell_tower: np.ndarray
    offsets: np.ndarray
    cells: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    cosh_eta: np.ndarray

    @property
    def layer(self) -> str:
        return str(self.grid.name)

    @property
    def eta_max(self) -> float:
        return float(self.grid.eta_max)

    @property
    def n_eta(self) -> int:
        return int(self.grid.n_eta)

    @property
    def n_phi(self) -> int:
        return int(self.grid.n_phi)

    @property
    def deta(self) -> float:
        return float(self.grid.deta)

    @property
    def dphi(self) -> float:
        return float(self.grid.dphi)

    @property
    def area(self) -> float:
        """Eta-phi area of one tower."""
        return self.deta * self.dphi

    @property
    def n_towers(self) -> int:
        return self.n_eta * self.n_phi


@functools.lru_cache(maxsize=8)
def calo_towers(calo: Any = None) -> Towers:
    """The towers of a calorimeter (default: the default geometry's), built once per
    calorimeter; a :class:`ConfigError` when a layer's grid does not nest into the coarsest
    layer's (see the module docstring)."""
    calo = _default_calo() if calo is None else calo
    coarse = min(calo.layers, key=lambda lay: (lay.n_cells, lay.index))
    for lay in calo.layers:
        if (lay.eta_max != coarse.eta_max or lay.n_eta % coarse.n_eta
                or lay.n_phi % coarse.n_phi):
            raise ConfigError(
                f"stage 'rho': calorimeter layer {lay.name} ({lay.n_eta} x {lay.n_phi} cells "
                f"over |eta| < {lay.eta_max}) does not nest into the towers of layer "
                f"{coarse.name} ({coarse.n_eta} x {coarse.n_phi} over |eta| < "
                f"{coarse.eta_max}): every layer must cover the same |eta| with cell counts in "
                "eta and in phi that are multiples of the coarsest layer's")
    per_eta = np.array([lay.n_eta // coarse.n_eta for lay in calo.layers], dtype=np.int64)
    per_phi = np.array([lay.n_phi // coarse.n_phi for lay in calo.layers], dtype=np.int64)
    layer = np.asarray(calo.cell_layer, dtype=np.int64)
    t_eta = np.asarray(calo.cell_ieta, dtype=np.int64) // per_eta[layer]
    t_phi = np.asarray(calo.cell_iphi, dtype=np.int64) // per_phi[layer]
    cell_tower = (t_eta * coarse.n_phi + t_phi).astype(np.int32)
    n_towers = coarse.n_eta * coarse.n_phi
    cells = np.argsort(cell_tower, kind="stable").astype(np.int32)  # ascending ids per tower
    offsets = np.zeros(n_towers + 1, dtype=np.int64)
    np.cumsum(np.bincount(cell_tower, minlength=n_towers), out=offsets[1:])
    i_eta, i_phi = np.divmod(np.arange(n_towers, dtype=np.int64), coarse.n_phi)
    eta = -coarse.eta_max + (i_eta + 0.5) * coarse.deta
    phi = -math.pi + (i_phi + 0.5) * coarse.dphi
    cosh_eta = np.cosh(eta)
    for a in (cell_tower, offsets, cells, eta, phi, cosh_eta):
        a.setflags(write=False)
    return Towers(coarse, cell_tower, offsets, cells, eta, phi, cosh_eta)


class RhoGrid(NamedTuple):
    """The fixed grid: ``n_eta`` rows of ``d_eta`` from ``-eta_max``, ``n_phi`` columns of
    ``d_phi`` [rad] from ``-pi``, cell index ``row * n_phi + column``; ``tower_cell`` (int32,
    per tower: its grid cell, -1 outside) and ``area`` (float64, per grid cell: the sum of its
    towers' areas)."""

    eta_max: float
    d_eta: float
    n_eta: int
    d_phi: float
    n_phi: int
    tower_cell: np.ndarray
    area: np.ndarray

    @property
    def n_cells(self) -> int:
        return self.n_eta * self.n_phi

    def as_array(self) -> np.ndarray:
        """The kernels' ``area`` table (float64, one entry per grid cell)."""
        return self.area


def grid_shape(eta_max: float, grid_spacing: float, stage: str) -> tuple[int, int]:
    """``(n_eta, n_phi)`` of a fixed grid over ``|eta| < eta_max`` and ``2 pi`` in phi with
    cells of about ``grid_spacing``: the counts rounded to the nearest integer, at least 1; a
    :class:`ConfigError` naming ``[stage]`` when the kernels cannot hold that many cells
    (:data:`hltemu.kernels.rho.MAX_CELLS`).  Stages ``rho`` and ``pfrho`` share it."""
    from hltemu.kernels.rho import MAX_CELLS

    n_eta = max(1, int(2.0 * eta_max / grid_spacing + 0.5))
    n_phi = max(1, int(2.0 * math.pi / grid_spacing + 0.5))
    if n_eta * n_phi > MAX_CELLS:
        raise ConfigError(
            f"[{stage}] grid_spacing={grid_spacing} with eta_max={eta_max} gives "
            f"{n_eta} x {n_phi} = {n_eta * n_phi} cells, more than the {MAX_CELLS} the kernels "
            "support; use a larger grid_spacing")
    return n_eta, n_phi


def rho_grid(cfg: RhoConfig, calo: Any = None) -> RhoGrid:
    """The grid of a configuration over the towers of ``calo`` (default: the default
    geometry's): cell counts rounded to the nearest integer, at least 1.  A
    :class:`ConfigError` when ``eta_max`` exceeds the calorimeter, the grid has more cells than
    the kernels support, or a grid cell holds no tower."""
    towers = calo_towers(calo)
    if cfg.eta_max > towers.eta_max:
        raise ConfigError(f"[rho] eta_max = {cfg.eta_max} is beyond the calorimeter's "
                          f"acceptance |eta| < {towers.eta_max}")
    n_eta, n_phi = grid_shape(cfg.eta_max, cfg.grid_spacing, "rho")
    d_eta, d_phi = 2.0 * cfg.eta_max / n_eta, 2.0 * math.pi / n_phi
    inside = (towers.eta >= -cfg.eta_max) & (towers.eta < cfg.eta_max)
    row = np.clip(np.floor((towers.eta + cfg.eta_max) / d_eta).astype(np.int64), 0, n_eta - 1)
    col = np.clip(np.floor((towers.phi + math.pi) / d_phi).astype(np.int64), 0, n_phi - 1)
    tower_cell = np.where(inside, row * n_phi + col, -1).astype(np.int32)
    count = np.bincount(tower_cell[inside], minlength=n_eta * n_phi)
    if (count == 0).any():
        raise ConfigError(
            f"[rho] grid_spacing={cfg.grid_spacing} with eta_max={cfg.eta_max} gives "
            f"{n_eta} x {n_phi} grid cells, {int((count == 0).sum())} of which hold no "
            f"calorimeter tower ({towers.deta:.3g} x {towers.dphi:.3g}); use a larger "
            "grid_spacing")
    area = count * towers.area
    for a in (tower_cell, area):
        a.setflags(write=False)
    return RhoGrid(float(cfg.eta_max), d_eta, n_eta, d_phi, n_phi, tower_cell, area)


# -- input checks ---------------------------------------------------------------------------------
def slot_map(cells: Collection, n_ids: int, be: Backend) -> Any:
    """int32 ``(n_events, n_ids)`` on ``be``: the row within its event of each (event, cell
    id), -1 where the event does not hold the cell; :class:`PipelineError` for a repeated id.
    Array operations on any backend (``cuda``: CuPy); :func:`_slot_map_cpu` is the cpu
    backend's faster equal."""
    xp = be.xp
    slot = xp.full((cells.n_events, n_ids), -1, dtype=xp.int32)
    if cells.size == 0:
        return slot
    ids = xp.asarray(cells["id"], dtype=xp.int64)
    event = event_index(cells.offsets, cells.size, xp)
    local = (xp.arange(cells.size, dtype=xp.int64) - cells.offsets[event]).astype(xp.int32)
    flat = event * n_ids + ids
    slot.reshape(-1)[flat] = local
    repeated = slot.reshape(-1)[flat] != local  # of two rows with one id, one lost the store
    if any_true(repeated):
        row = item(xp.argmax(repeated))
        raise repeated_id_error(int(be.to_host(ids[row])), int(be.to_host(event[row])),
                                "rho")
    return slot


def _slot_map_cpu(cells: Collection, n_ids: int, be: Backend) -> np.ndarray:
    """:func:`slot_map` by a Numba kernel, in parallel over events (NumPy's fancy indexing
    takes 20x longer on full events)."""
    from hltemu.kernels.rho import slot_map_cpu

    slot = np.empty((cells.n_events, n_ids), dtype=np.int32)
    repeated = np.empty(cells.n_events, dtype=np.int64)
    ids = np.asarray(cells["id"])
    slot_map_cpu(ids, cells.offsets, slot, repeated)
    bad = np.flatnonzero(repeated >= 0)
    if bad.size:
        raise repeated_id_error(int(ids[repeated[bad[0]]]), int(bad[0]), "rho")
    return slot


# -- prepared tables ----------------------------------------------------------------------------
class Prepared(NamedTuple):
    """What :func:`prepare` builds once per (config, backend): the towers and the grid (host),
    and the kernels' tables on the backend's device: ``tower_offsets``, ``tower_cells``,
    ``tower_cosh``, ``tower_cell`` (grid cell of each tower) and ``area`` (per grid cell)."""

    towers: Towers
    grid: RhoGrid
    tower_offsets: Any
    tower_cells: Any
    tower_cosh: Any
    tower_cell: Any
    area: Any

    @property
    def n_ids(self) -> int:
        """Number of cell ids of the calorimeter."""
        return int(self.towers.cell_tower.shape[0])


def prepare_for(cfg: RhoConfig, backend: Backend, calo: Any = None) -> Prepared:
    """The towers of ``calo`` (default: the default geometry's) and the grid of ``cfg``,
    uploaded to ``backend`` (a :class:`ConfigError` for a grid the towers cannot fill)."""
    towers = calo_towers(calo)
    grid = rho_grid(cfg, calo)

    def up(a: np.ndarray) -> Any:
        return backend.to_device(np.array(a))  # a writable copy: the tables are read-only

    return Prepared(towers, grid, up(towers.offsets), up(towers.cells), up(towers.cosh_eta),
                    up(grid.tower_cell), up(grid.as_array()))


def prepare(cfg: RhoConfig, backend: Backend) -> Prepared:
    """:func:`prepare_for` the default geometry's calorimeter (cached by the pipeline)."""
    return prepare_for(cfg, backend)


# -- the three implementations ------------------------------------------------------------------
def rho_reference(ids: np.ndarray, energy: np.ndarray, offsets: np.ndarray, towers: Towers,
                  grid: RhoGrid) -> np.ndarray:
    """Rho per event (NumPy, written to be read): float64 ``(n_events,)``.

    ``np.bincount`` adds its weights in input order, so sorting an event's cells by id first
    makes the tower sums run in ascending cell id, and the grid sums in ascending tower index,
    as the kernels' do.
    """
    n_events = offsets.shape[0] - 1
    out = np.zeros(n_events, dtype=np.float64)
    in_grid = grid.tower_cell >= 0
    for i in range(n_events):
        sl = slice(int(offsets[i]), int(offsets[i + 1]))
        event_ids = np.asarray(ids[sl], dtype=np.int64)
        event_energy = np.asarray(energy[sl], dtype=np.float64)
        order = np.argsort(event_ids, kind="stable")
        event_ids, event_energy = event_ids[order], event_energy[order]
        repeated = np.flatnonzero(event_ids[1:] == event_ids[:-1])
        if repeated.size:
            raise repeated_id_error(int(event_ids[repeated[0]]), i, "rho")
        tower_energy = np.bincount(towers.cell_tower[event_ids], weights=event_energy,
                                   minlength=towers.n_towers)
        tower_pt = tower_energy / towers.cosh_eta  # signed: negative towers stay negative
        cell_pt = np.bincount(grid.tower_cell[in_grid], weights=tower_pt[in_grid],
                              minlength=grid.n_cells)
        out[i] = np.median(cell_pt / grid.area)  # every grid cell, empty ones too
    return out


def _rho_reference(cells: Collection, prep: Prepared, be: Backend) -> Any:
    return rho_reference(np.asarray(cells["id"]), np.asarray(cells["energy"]),
                         np.asarray(cells.offsets), prep.towers, prep.grid)


def _kernel_inputs(cells: Collection, prep: Prepared, be: Backend, slots: Any
                   ) -> tuple[Any, Any, Any]:
    """``(slot, energy float64, tower_pt scratch (n_events, n_towers))`` on ``be``, the slot
    map by ``slots`` (:func:`slot_map` or :func:`_slot_map_cpu`)."""
    xp = be.xp
    slot = slots(cells, prep.n_ids, be)
    energy = xp.asarray(cells["energy"], dtype=xp.float64)
    tower_pt = xp.empty((cells.n_events, prep.towers.n_towers), dtype=xp.float64)
    return slot, energy, tower_pt


def _rho_cpu(cells: Collection, prep: Prepared, be: Backend) -> Any:
    from hltemu.kernels.rho import rho_cpu

    out = np.zeros(cells.n_events, dtype=np.float64)
    if cells.n_events:
        slot, energy, tower_pt = _kernel_inputs(cells, prep, be, _slot_map_cpu)
        rho_cpu(slot, cells.offsets, energy, prep.tower_offsets, prep.tower_cells,
                prep.tower_cosh, prep.tower_cell, prep.area, tower_pt, out)
    return out


def _rho_cuda(cells: Collection, prep: Prepared, be: Backend) -> Any:
    from hltemu.kernels.rho import rho_cuda, tower_pt_cuda

    xp = be.xp
    n_events = cells.n_events
    out = xp.zeros(n_events, dtype=xp.float64)
    if n_events:
        slot, energy, tower_pt = _kernel_inputs(cells, prep, be, slot_map)
        n_threads = n_events * prep.towers.n_towers
        tower_pt_cuda[blocks(n_threads), THREADS_PER_BLOCK](
            slot, cells.offsets, energy, prep.tower_offsets, prep.tower_cells, prep.tower_cosh,
            tower_pt)
        rho_cuda[blocks(n_events), THREADS_PER_BLOCK](tower_pt, prep.tower_cell, prep.area, out)
    return out


_IMPLEMENTATIONS = {"reference": _rho_reference, "cpu": _rho_cpu, "cuda": _rho_cuda}


def compute_rho(cells: Collection, prep: Prepared, backend: Backend) -> Any:
    """Rho [GeV per unit area] of every event of ``cells`` (a CaloCell collection on
    ``backend``), float64 ``(n_events,)`` on ``backend``, with the tables of ``prep``
    (:func:`prepare_for`: any calorimeter whose towers the tests build)."""
    check_cells(cells, prep.n_ids, backend, "rho")
    return dispatch(_IMPLEMENTATIONS, backend, "stage 'rho'")(cells, prep, backend)


def _output(rho: Any, xp: Any) -> dict[str, Collection]:
    return {"rho": Collection.event_level({"rho": rho}, xp)}


def run_reference(batch: EventBatch, cfg: RhoConfig, prep: Prepared) -> dict[str, Collection]:
    """:func:`rho_reference` per event (NumPy)."""
    cells = batch["CaloCell"]
    check_cells(cells, prep.n_ids, batch.backend, "rho")
    return _output(_rho_reference(cells, prep, batch.backend), np)


def run_cpu(batch: EventBatch, cfg: RhoConfig, prep: Prepared) -> dict[str, Collection]:
    """The Numba kernel, parallel over events."""
    cells = batch["CaloCell"]
    check_cells(cells, prep.n_ids, batch.backend, "rho")
    return _output(_rho_cpu(cells, prep, batch.backend), np)


def run_cuda(batch: EventBatch, cfg: RhoConfig, prep: Prepared) -> dict[str, Collection]:
    """The CUDA kernels: one thread per (event, tower), then one per event."""
    cells = batch["CaloCell"]
    check_cells(cells, prep.n_ids, batch.backend, "rho")
    return _output(_rho_cuda(cells, prep, batch.backend), batch.backend.xp)


STAGE = register(Stage(
    name="rho",
    needs=("CaloCell",),
    adds=("rho",),
    config_type=RhoConfig,
    prepare=prepare,
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    doc="median pT density of calorimeter towers (every cell, noise included) on a fixed "
        "eta-phi grid (CMS calo fixedGridRho)",
))
