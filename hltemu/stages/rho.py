"""Stage ``rho``: the event's median pT density, CMS fixed-grid style.

The eta-phi plane ``-eta_max <= eta < eta_max``, ``0 <= phi < 2 pi`` is cut into a fixed grid
(:class:`RhoConfig`); each cell's density is the summed pT of the clusters in it
divided by its area, and rho is the median over all cells, empty ones included (as FastJet's
``GridMedianBackgroundEstimator``, which CMS's ``fixedGridRhoFastjetAll`` uses).  Clusters are
massless: pT = E / cosh(eta); clusters with E <= 0 (noise) are left out.

Needs ``clusters`` (columns ``energy`` [GeV], ``eta``, ``phi`` [rad]); adds ``rho``, one row per
event with column ``rho`` [GeV per unit eta-phi area].  The L1FastJet correction reads it.

Backends agree to 1e-12 relative: the sums run in the same order everywhere; only ``cosh``
may differ in the last bit between NumPy, Numba and CUDA (cuda vs cpu on an NVIDIA H200,
2026-11-28: 2.5e-16 at most on the sample, so 3e-15 with a 10x margin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError, param
from hltemu.ops import THREADS_PER_BLOCK, blocks
from hltemu.pipeline import PipelineError, Stage, register


@dataclass(frozen=True)
class RhoConfig:
    """Stage ``rho``: median pT density of clusters on a fixed eta-phi grid (CMS fixed-grid rho).

    The grid has ``round(2 eta_max / grid_spacing)`` rows in eta and ``round(2 pi /
    grid_spacing)`` columns in phi, so cells are close to ``grid_spacing`` square; CMS's
    ``fixedGridRhoFastjetAll`` uses eta_max 5.0 and spacing 0.55 (18 x 11 cells).
    """

    eta_max: float = param(5.0, "", "the grid covers -eta_max <= eta < eta_max")
    grid_spacing: float = param(0.55, "", "requested cell size in eta and in phi [rad]")

    def __post_init__(self) -> None:
        if not (self.eta_max > 0 and self.grid_spacing > 0):
            raise ConfigError(
                f"eta_max and grid_spacing must be > 0, got {self.eta_max} and {self.grid_spacing}"
            )


#: Cluster columns this stage reads.
CLUSTER_COLUMNS: tuple[str, ...] = ("energy", "eta", "phi")


class RhoGrid(NamedTuple):
    """The fixed grid: ``n_eta`` rows of ``d_eta`` from ``-eta_max``, ``n_phi`` columns of
    ``d_phi`` [rad] from 0; ``cell_area = d_eta * d_phi``."""

    eta_max: float
    d_eta: float
    n_eta: int
    d_phi: float
    n_phi: int

    @property
    def cell_area(self) -> float:
        return self.d_eta * self.d_phi

    @property
    def n_cells(self) -> int:
        return self.n_eta * self.n_phi

    def as_array(self) -> np.ndarray:
        """``(eta_min, d_eta, n_eta, d_phi, n_phi, cell_area)``, the kernels' ``grid``."""
        return np.array([-self.eta_max, self.d_eta, self.n_eta, self.d_phi, self.n_phi,
                         self.cell_area], dtype=np.float64)


def rho_grid(cfg: RhoConfig) -> RhoGrid:
    """The grid of a configuration (cell counts rounded to the nearest integer, at least 1)."""
    from hltemu.kernels.rho import MAX_CELLS

    n_eta = max(1, int(2.0 * cfg.eta_max / cfg.grid_spacing + 0.5))
    n_phi = max(1, int(2.0 * math.pi / cfg.grid_spacing + 0.5))
    if n_eta * n_phi > MAX_CELLS:
        raise ConfigError(
            f"[rho] grid_spacing={cfg.grid_spacing} with eta_max={cfg.eta_max} gives "
            f"{n_eta} x {n_phi} = {n_eta * n_phi} cells, more than the {MAX_CELLS} the kernels "
            "support; use a larger grid_spacing"
        )
    return RhoGrid(cfg.eta_max, 2.0 * cfg.eta_max / n_eta, n_eta, 2.0 * math.pi / n_phi, n_phi)


def cluster_pt(clusters: Collection, xp: Any) -> Any:
    """pT [GeV] of massless clusters, E / cosh(eta), and 0 for clusters with E <= 0."""
    for name in CLUSTER_COLUMNS:
        if name not in clusters:
            raise PipelineError(
                f"stage 'rho' needs column {name!r} in collection 'clusters'; it has "
                f"{sorted(clusters.columns)}"
            )
    e = clusters["energy"]
    return xp.where(e > 0, e / xp.cosh(clusters["eta"]), 0.0)


def rho_reference(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, offsets: np.ndarray,
                  grid: RhoGrid) -> np.ndarray:
    """Rho per event (NumPy, written to be read): float64 ``(n_events,)``."""
    n_events = offsets.shape[0] - 1
    out = np.zeros(n_events, dtype=np.float64)
    for i in range(n_events):
        sl = slice(int(offsets[i]), int(offsets[i + 1]))
        e, p, w = eta[sl], phi[sl], pt[sl]
        inside = (e >= -grid.eta_max) & (e < grid.eta_max)
        e, p, w = e[inside], p[inside], w[inside]
        row = np.minimum(((e + grid.eta_max) / grid.d_eta).astype(np.int64), grid.n_eta - 1)
        wrapped = p - 2.0 * math.pi * np.floor(p / (2.0 * math.pi))  # into [0, 2 pi)
        col = np.clip((wrapped / grid.d_phi).astype(np.int64), 0, grid.n_phi - 1)
        sums = np.bincount(row * grid.n_phi + col, weights=w, minlength=grid.n_cells)
        out[i] = np.median(sums / grid.cell_area)
    return out


class Prepared(NamedTuple):
    """What :func:`prepare` builds once per (config, backend): the grid, and its kernel array
    ``(eta_min, d_eta, n_eta, d_phi, n_phi, cell_area)`` on the backend's device."""

    grid: RhoGrid
    device_grid: Any


def prepare(cfg: RhoConfig, backend: Any) -> Prepared:
    """The grid of ``cfg``, uploaded once to ``backend`` (a :class:`ConfigError` for a grid
    with more cells than the kernels support)."""
    grid = rho_grid(cfg)
    return Prepared(grid, backend.to_device(grid.as_array()))


def _inputs(batch: EventBatch) -> tuple[Any, Any, Any, Any]:
    """``(pt, eta, phi, offsets)`` of the clusters, float64 on the batch's backend."""
    xp = batch.backend.xp
    clusters = batch["clusters"]
    pt = xp.asarray(cluster_pt(clusters, xp), dtype=xp.float64)
    eta = xp.asarray(clusters["eta"], dtype=xp.float64)
    phi = xp.asarray(clusters["phi"], dtype=xp.float64)
    return pt, eta, phi, clusters.offsets


def _output(rho: Any, xp: Any) -> dict[str, Collection]:
    return {"rho": Collection.event_level({"rho": rho}, xp)}


def run_reference(batch: EventBatch, cfg: RhoConfig, prep: Prepared) -> dict[str, Collection]:
    """:func:`rho_reference` per event (NumPy)."""
    pt, eta, phi, offsets = _inputs(batch)
    return _output(rho_reference(pt, eta, phi, offsets, prep.grid), np)


def run_cpu(batch: EventBatch, cfg: RhoConfig, prep: Prepared) -> dict[str, Collection]:
    """The Numba kernel, parallel over events."""
    from hltemu.kernels.rho import rho_cpu

    pt, eta, phi, offsets = _inputs(batch)
    out = np.zeros(batch.n_events, dtype=np.float64)
    rho_cpu(pt, eta, phi, offsets, prep.device_grid, out)
    return _output(out, np)


def run_cuda(batch: EventBatch, cfg: RhoConfig, prep: Prepared) -> dict[str, Collection]:
    """The CUDA kernel, one thread per event."""
    from hltemu.kernels.rho import rho_cuda

    xp = batch.backend.xp
    pt, eta, phi, offsets = _inputs(batch)
    out = xp.zeros(batch.n_events, dtype=xp.float64)
    if batch.n_events:
        rho_cuda[blocks(batch.n_events), THREADS_PER_BLOCK](pt, eta, phi, offsets,
                                                            prep.device_grid, out)
    return _output(out, xp)


STAGE = register(Stage(
    name="rho",
    needs=("clusters",),
    adds=("rho",),
    config_type=RhoConfig,
    prepare=prepare,
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    doc="median cluster pT density on a fixed eta-phi grid (CMS fixedGridRho)",
))
