"""Stage ``pfrho``: the event's median pT density of particle-flow candidates (CMS PF rho).

The offline pileup density of CMS's ``fixedGridRhoFastjetAll`` (``FixedGridRhoProducerFastjet``
in CMSSW's RecoJets/JetProducers on the ``particleFlow`` candidates, FastJet's
``GridMedianBackgroundEstimator`` with ``gridSpacing = 0.55``): every candidate of
``pfcandidates`` (:mod:`hltemu.stages.pfcandidates`), charged ones from pileup vertices
included (no charged-hadron subtraction), neutral ones as the calorimeter measured them.

The rule
--------
1. **Grid.**  A fixed grid over ``-eta_max <= eta < eta_max`` (``eta_max`` 3.0 by default, the
   calorimeter's acceptance, where neutral candidates end) and ``-pi <= phi < pi``:
   ``n_eta = round(2 eta_max / grid_spacing)`` rows and ``n_phi = round(2 pi / grid_spacing)``
   columns (halves up, at least 1; 11 x 11 with the default spacing 0.55, as stage ``rho``'s
   :func:`hltemu.stages.rho.rho_grid`), of ``d_eta = 2 eta_max / n_eta`` and ``d_phi = 2 pi /
   n_phi``, every cell of area ``d_eta * d_phi`` (0.5455 x 0.5712 = 0.3116 by default).
2. **Cells.**  A candidate with ``-eta_max <= eta < eta_max`` goes to row ``floor((eta +
   eta_max) / d_eta)`` and column ``floor((phi + pi) / d_phi)``, each clipped to the grid (a
   rounding up to ``n_eta``, or ``phi = pi``, lands in the last row or column); candidates
   outside add nothing.  A cell's pT is the sum of its candidates' ``pt`` [GeV], in the
   candidates' row order.
3. **Rho** [GeV per unit eta-phi area] = the median over *all* grid cells, empty ones
   included, of (cell pT) / (cell area); for an even number of cells the mean of the two
   middle values (FastJet's median, which counts empty tiles too).  An event without
   candidates in the grid has rho 0.

FastJet's grid is in rapidity ``y`` (CMS hands it the candidates' four-vectors) and CMS's
reaches ``|y| < 5`` (the forward calorimeter).  Here it is in ``eta``, equal to ``y`` for the
massless neutral candidates (for a charged pion ``|y| < |eta|``, by at most ``ln(m_T / pT)``:
0.04 at 0.5 GeV, 0.004 at 1.5 GeV), and stops at 3.0, as there is no calorimeter beyond
``|eta| = 3`` (nor a track beyond 2.5): a larger ``eta_max`` is accepted, but adds cells that
are always empty and pulls rho down.

Worked example (``tests/test_pfrho.py::test_hand_built_event``): the default 11 x 11 grid,
area ``A = (6 / 11)(2 pi / 11) = 0.311563``; 61 cells holding 1 GeV each and 60 empty ones:
rho = ``1 / A`` = 3.2096 (the 61st smallest of 121 densities); with 60 cells at 1 GeV and 61
empty, 0.  On an 8 x 13 grid (``eta_max = 2``, ``grid_spacing =
0.5``, ``A = 0.5 x 2 pi / 13 = pi / 13``), 52 cells at 2 GeV and 52 empty: rho = ``0.5 (0 +
2 / A)`` = ``1 / A`` = 4.1380.

Needs ``pfcandidates`` (columns ``pt`` [GeV], ``eta``, ``phi`` [rad]; a missing column or a
non-finite value is a :class:`PipelineError` naming the column, and the row).  Adds ``pfrho``,
one row per event, column ``rho`` [GeV per unit eta-phi area].  Not in the default chain (an
offline stage, as ``pfjets``): ``--stages tracks,vertices,topocluster,pfcandidates,pfrho``.

Backends agree bit for bit (tested with a tolerance of 0): each candidate's grid cell is
computed with the backend's array module (NumPy for ``reference`` and ``cpu``, CuPy for
``cuda``): one IEEE ``+`` and one ``/`` for the row and for the column, then ``floor`` and the
clip, exact on every backend; then ``reference`` (NumPy, one event at a time), ``cpu`` (Numba,
parallel over events) and ``cuda`` (one thread per event) add the same float64 pT from 0.0 in
the same (row) order, divide by the same area, and take the median by comparisons and one
``0.5 * (a + b)``: the device function that stage ``rho`` uses too
(:mod:`hltemu.kernels.rho`), on CUDA through exactly rounded libdevice operations.

Measured (``cpu``, 2026-11-29; QCD, ``hltemu generate -n 3000 -p qcd --pthat-min 15
--pthat-bias 4 -s 2001 --pileup N -o v2001_puN.root`` for N = 0, 30, 50: 3,000 events each at
a mean pileup of 0, 30 or 50 interactions; the first 300 of each)::

    hltemu run v2001_puN.root --stages \\
        tracks,vertices,topocluster,pfcandidates,pfrho,rho -n 300 --backend cpu \\
        -o /tmp/pfrho/puN.root -r /tmp/pfrho/puN.json --no-progress

    pileup  events  <N_PU>   <pfrho> +- s.e.   <rho> (calo) +- s.e.   pfrho = 0
         0     300     0.0     0.600 +- 0.045     1.844 +- 0.052       148
        30     300    30.0    13.898 +- 0.244    20.128 +- 0.308         0
        50     300    50.1    21.679 +- 0.306    32.469 +- 0.399         0

[GeV per unit area; s.e. = standard deviation / sqrt(events).]  A straight line through the
three points (weighted by their standard errors): <pfrho> = (0.429 +- 0.005) pileup + (0.61 +-
0.05), chi2/ndf 4.5/1; the calorimeter's rho on the same events: (0.611 +- 0.006) pileup + 1.84.
Per added interaction pfrho grows by 0.443 from pileup 0 to 30 and by 0.389 from 30 to 50,
0.69 and 0.67 times the calorimeter rho.  The bend is the neutral candidates': stage
topocluster by default subtracts each event's estimated mean pileup energy from the cells
(``subtract_pileup_mean``, ``pileup_offset = "event"``), so the neutral candidates' mean pT
density (their pT sum over ``|eta| < 3`` / 12 pi) goes 6.34, 10.64, 12.30 at pileup 0, 30, 50,
while the charged candidates' goes 6.52, 15.35, 21.24 (0.29 per interaction throughout).  CMS's
particle flow subtracts nothing, so its ``fixedGridRhoFastjetAll`` holds the neutral pileup
too.  At pileup 0 a QCD event fills fewer than half of the 121 cells in 148 of 300 events,
whose pfrho is then 0; from pileup 30 on every event's pfrho is > 0 (the smallest 3.31 at 30,
8.97 at 50).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from hltemu.backends import Backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError, param
from hltemu.ops import THREADS_PER_BLOCK, blocks
from hltemu.pipeline import Stage, register
from hltemu.stages.antikt import _check_columns, _check_finite
from hltemu.stages.rho import grid_shape

#: ``pfcandidates`` columns read.
CANDIDATE_COLUMNS = ("pt", "eta", "phi")


class PFRhoGrid(NamedTuple):
    """The fixed grid: ``n_eta`` rows of ``d_eta`` from ``-eta_max``, ``n_phi`` columns of
    ``d_phi`` [rad] from ``-pi``, cell index ``row * n_phi + column``; every cell of ``area``
    (``d_eta * d_phi``)."""

    eta_max: float
    d_eta: float
    n_eta: int
    d_phi: float
    n_phi: int

    @property
    def n_cells(self) -> int:
        return self.n_eta * self.n_phi

    @property
    def area(self) -> float:
        """Eta-phi area of one cell."""
        return self.d_eta * self.d_phi


def pfrho_grid(eta_max: float, grid_spacing: float) -> PFRhoGrid:
    """The grid of rule 1 (cell counts by :func:`hltemu.stages.rho.grid_shape`, as stage
    ``rho``'s); a :class:`ConfigError` when it has more cells than the kernels support."""
    n_eta, n_phi = grid_shape(eta_max, grid_spacing, "pfrho")
    return PFRhoGrid(float(eta_max), 2.0 * eta_max / n_eta, n_eta, 2.0 * math.pi / n_phi, n_phi)


@dataclass(frozen=True)
class PFRhoConfig:
    """Stage ``pfrho``: median pT density of all particle-flow candidates on a fixed eta-phi
    grid (CMS ``fixedGridRhoFastjetAll``; rules in :mod:`hltemu.stages.pfrho`)."""

    eta_max: float = param(3.0, "", "the grid covers -eta_max <= eta < eta_max (3.0: the "
                                    "calorimeter's acceptance; CMS's 5.0 includes its HF)")
    grid_spacing: float = param(0.55, "", "requested grid cell size in eta and in phi [rad]")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.eta_max) and self.eta_max > 0):
            raise ConfigError(f"eta_max must be finite and > 0, got {self.eta_max}")
        if not (math.isfinite(self.grid_spacing) and self.grid_spacing > 0):
            raise ConfigError(f"grid_spacing must be finite and > 0, got {self.grid_spacing}")
        pfrho_grid(self.eta_max, self.grid_spacing)

    @property
    def grid(self) -> PFRhoGrid:
        return pfrho_grid(self.eta_max, self.grid_spacing)


def grid_cells(eta: Any, phi: Any, grid: PFRhoGrid, xp: Any) -> Any:
    """Rule 2: each candidate's grid cell (int32 ``row * n_phi + column``; -1 outside ``-eta_max
    <= eta < eta_max``), with the array module ``xp``.  Rows and columns are clipped as floats
    (a huge ``phi`` cannot overflow the integer conversion)."""
    inside = (eta >= -grid.eta_max) & (eta < grid.eta_max)
    row = xp.clip(xp.floor((eta + grid.eta_max) / grid.d_eta), 0, grid.n_eta - 1)
    col = xp.clip(xp.floor((phi + math.pi) / grid.d_phi), 0, grid.n_phi - 1)
    cell = row.astype(xp.int32) * grid.n_phi + col.astype(xp.int32)
    return xp.where(inside, cell, -1).astype(xp.int32)


class Prepared(NamedTuple):
    """The grid (host) and the kernels' ``area`` table on the backend (float64, one entry per
    cell, all equal)."""

    grid: PFRhoGrid
    area: Any


def prepare(cfg: PFRhoConfig, backend: Backend) -> Prepared:
    grid = cfg.grid
    return Prepared(grid, backend.to_device(np.full(grid.n_cells, grid.area)))


# -- the three implementations ------------------------------------------------------------------
def pfrho_reference(offsets: np.ndarray, pt: np.ndarray, eta: np.ndarray, phi: np.ndarray,
                    grid: PFRhoGrid) -> np.ndarray:
    """Rho per event (NumPy, written to be read): float64 ``(n_events,)``.

    ``np.bincount`` adds its weights in input order from 0.0, so each cell's pT is summed in
    the candidates' row order, as the kernels do; ``np.median`` takes the middle value, or
    ``(a + b) / 2`` of the two middle ones (the same bits as the kernels' ``0.5 * (a + b)``).
    """
    n_events = offsets.shape[0] - 1
    out = np.zeros(n_events, dtype=np.float64)
    for i in range(n_events):
        sl = slice(int(offsets[i]), int(offsets[i + 1]))
        cell = grid_cells(eta[sl], phi[sl], grid, np)
        inside = cell >= 0
        cell_pt = np.bincount(cell[inside], weights=pt[sl][inside], minlength=grid.n_cells)
        out[i] = np.median(cell_pt / grid.area)  # every grid cell, empty ones too
    return out


def _inputs(batch: EventBatch) -> tuple[Collection, Any, Any, Any]:
    """``(pfcandidates, pt, eta, phi)``, the columns float64 on the batch's backend, checked."""
    xp = batch.backend.xp
    cands = batch["pfcandidates"]
    _check_columns(cands, "pfcandidates", CANDIDATE_COLUMNS, "pfrho")
    cols = [xp.ascontiguousarray(xp.asarray(cands[c], dtype=xp.float64))
            for c in CANDIDATE_COLUMNS]
    for name, values in zip(CANDIDATE_COLUMNS, cols, strict=True):
        _check_finite(xp, values, "pfcandidates", name, "pfrho")
    return cands, *cols


def _output(rho: Any, xp: Any) -> dict[str, Collection]:
    return {"pfrho": Collection.event_level({"rho": rho}, xp)}


def run_reference(batch: EventBatch, cfg: PFRhoConfig, prep: Prepared) -> dict[str, Collection]:
    """:func:`pfrho_reference`, one event at a time."""
    cands, pt, eta, phi = _inputs(batch)
    return _output(pfrho_reference(np.asarray(cands.offsets), pt, eta, phi, prep.grid), np)


def run_cpu(batch: EventBatch, cfg: PFRhoConfig, prep: Prepared) -> dict[str, Collection]:
    """The Numba kernel, parallel over events."""
    from hltemu.kernels.rho import candidate_rho_cpu

    cands, pt, eta, phi = _inputs(batch)
    out = np.zeros(cands.n_events, dtype=np.float64)
    if cands.n_events:
        cell = grid_cells(eta, phi, prep.grid, np)
        candidate_rho_cpu(np.asarray(cands.offsets, dtype=np.int64), cell, pt, prep.area, out)
    return _output(out, np)


def run_cuda(batch: EventBatch, cfg: PFRhoConfig, prep: Prepared) -> dict[str, Collection]:
    """The CUDA kernel, one thread per event; the cells with CuPy."""
    from hltemu.kernels.rho import candidate_rho_cuda

    xp = batch.backend.xp
    cands, pt, eta, phi = _inputs(batch)
    n_events = cands.n_events
    out = xp.zeros(n_events, dtype=xp.float64)
    if n_events:
        cell = grid_cells(eta, phi, prep.grid, xp)
        candidate_rho_cuda[blocks(n_events), THREADS_PER_BLOCK](
            xp.asarray(cands.offsets, dtype=xp.int64), cell, pt, prep.area, out)
    return _output(out, xp)


STAGE = register(Stage(
    name="pfrho",
    needs=("pfcandidates",),
    adds=("pfrho",),
    config_type=PFRhoConfig,
    prepare=prepare,
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    doc="median pT density of all particle-flow candidates, pileup included, on a fixed "
        "eta-phi grid (CMS fixedGridRhoFastjetAll)",
    in_default_chain=False,
))
