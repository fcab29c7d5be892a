"""The calorimeter as a graph: cells indexed by id, their neighbours (CSR), centres and noise.

What topological clustering walks (:mod:`hltemu.stages.topocluster`): built once per
calorimeter from :class:`hltemu.geometry.Calorimeter` (:func:`calorimeter_graph`), given other
noise (and a per-cell energy offset, the mean pileup energy) by :meth:`CellGraph.with_noise`
and copied once to each backend's device (:meth:`CellGraph.on`).  NumPy only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from hltemu.backends import Backend


class DeviceGraph(NamedTuple):
    """A :class:`CellGraph`'s arrays on one backend."""

    nbr_offsets: Any
    nbr_index: Any
    noise: Any
    eta: Any
    phi: Any
    offset: Any = None


@dataclass(frozen=True, eq=False)
class CellGraph:
    """The cells clustering runs on, as arrays indexed by cell id.

    ``nbr_offsets`` (int64, ``n_cells + 1``) and ``nbr_index`` (int32): symmetric neighbour CSR,
    no cell its own neighbour; ``noise`` (float64, GeV, > 0): sigma of each cell;
    ``eta``, ``phi`` (float64, rad): cell centres; ``offset`` (float64, GeV, or ``None`` for
    none): subtracted from each cell's energy before clustering (:func:`corrected_energy`).
    """

    nbr_offsets: np.ndarray
    nbr_index: np.ndarray
    noise: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    offset: np.ndarray | None = None
    _device: dict = field(default_factory=dict, repr=False)
    _base: CellGraph | None = field(default=None, repr=False)

    @property
    def n_cells(self) -> int:
        return int(self.noise.shape[0])

    @classmethod
    def from_arrays(cls, nbr_offsets: Any, nbr_index: Any, noise: Any, eta: Any = None,
                    phi: Any = None, offset: Any = None) -> CellGraph:
        """A checked graph (``ValueError`` naming the problem); ``eta``/``phi`` default to 0,
        ``offset`` to none."""
        noise = np.ascontiguousarray(noise, dtype=np.float64)
        n = noise.shape[0]
        offsets = np.ascontiguousarray(nbr_offsets, dtype=np.int64)
        index = np.ascontiguousarray(nbr_index, dtype=np.int32)
        eta = np.zeros(n) if eta is None else np.ascontiguousarray(eta, dtype=np.float64)
        phi = np.zeros(n) if phi is None else np.ascontiguousarray(phi, dtype=np.float64)
        if noise.ndim != 1 or not np.all(np.isfinite(noise) & (noise > 0)):
            raise ValueError("cell graph: noise must be a 1-D array of finite values > 0 GeV")
        if eta.shape != (n,) or phi.shape != (n,):
            raise ValueError(f"cell graph: eta and phi need {n} entries (one per cell)")
        if (offsets.shape != (n + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0)
                or offsets[-1] != index.shape[0]):
            raise ValueError(f"cell graph: nbr_offsets must be {n + 1} non-decreasing offsets "
                             f"from 0 to len(nbr_index) = {index.shape[0]}")
        if index.shape[0] and (index.min() < 0 or index.max() >= n):
            raise ValueError(f"cell graph: nbr_index must hold cell ids 0-{n - 1}")
        src = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
        if np.any(src == index):
            raise ValueError("cell graph: a cell is listed as its own neighbour")
        fwd = np.sort(src * n + index)
        if np.any(fwd[1:] == fwd[:-1]) or not np.array_equal(fwd, np.sort(index * np.int64(n)
                                                                          + src)):
            raise ValueError("cell graph: the neighbour relation must be symmetric without "
                             "repeated entries")
        return cls(offsets, index, noise, eta, phi, _checked_offset(offset, n))

    def with_noise(self, noise: Any, offset: Any = None) -> CellGraph:
        """The same cells and neighbours with another ``noise`` (float64 GeV, > 0, one per
        cell) and energy ``offset`` (float64 GeV, finite, one per cell; ``None``: none); the
        neighbour and centre arrays are shared, on the devices too."""
        noise = np.ascontiguousarray(noise, dtype=np.float64)
        if noise.shape != self.noise.shape or not np.all(np.isfinite(noise) & (noise > 0)):
            raise ValueError(f"cell graph: noise must be {self.n_cells} finite values > 0 GeV")
        base = self._base if self._base is not None else self
        return CellGraph(self.nbr_offsets, self.nbr_index, noise, self.eta, self.phi,
                         _checked_offset(offset, self.n_cells), _base=base)

    def on(self, be: Backend) -> DeviceGraph:
        """The arrays on ``be``, copied there once and cached."""
        key = (be.name, be.simulated)
        if key not in self._device:
            def up(a: Any) -> Any:
                # copies in the CUDA simulator: it writes every kernel argument back to the
                # host array, which fails for the geometry's read-only arrays
                return None if a is None else be.to_device(np.array(a, copy=be.simulated))

            if self._base is not None:  # neighbours and centres shared with the base graph
                self._device[key] = self._base.on(be)._replace(noise=up(self.noise),
                                                               offset=up(self.offset))
            else:
                self._device[key] = DeviceGraph(*(up(a) for a in (
                    self.nbr_offsets, self.nbr_index, self.noise, self.eta, self.phi,
                    self.offset)))
        return self._device[key]


def _checked_offset(offset: Any, n: int) -> np.ndarray | None:
    """``offset`` as float64 ``(n,)`` (``ValueError`` unless finite), or ``None``."""
    if offset is None:
        return None
    offset = np.ascontiguousarray(offset, dtype=np.float64)
    if offset.shape != (n,) or not np.all(np.isfinite(offset)):
        raise ValueError(f"cell graph: offset must be {n} finite values (GeV, one per cell)")
    return offset


def corrected_energy(energy: Any, ids: Any, offset: Any, xp: Any, scale: Any = None) -> Any:
    """Cell energies (float64 GeV) less the graph's per-cell ``offset`` (``None``: unchanged),
    times ``scale`` (per row or a number; ``None``: 1): one IEEE multiply and subtraction per
    cell, so every backend gets the same values bit for bit."""
    energy = xp.asarray(energy, dtype=xp.float64)
    if offset is None:
        return energy
    return energy - (offset[ids] if scale is None else scale * offset[ids])


@functools.lru_cache(maxsize=4)
def graph_of(calo: Any) -> CellGraph:
    """The graph of ``calo`` (a :class:`~hltemu.geometry.Calorimeter`), built once."""
    offsets, index = calo.neighbours()
    return CellGraph.from_arrays(offsets, index, calo.noise_sigma, calo.cell_eta, calo.cell_phi)


def calorimeter_graph(calo: Any = None) -> CellGraph:
    """The :class:`CellGraph` of a :class:`~hltemu.geometry.Calorimeter` (default: the default
    geometry's), built once per calorimeter."""
    if calo is None:
        from hltemu.geometry import default_geometry

        calo = default_geometry().calo
    return graph_of(calo)
