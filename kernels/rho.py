"""Event pT density rho from calorimeter towers and from particle-flow candidates: Numba CPU
and CUDA kernels.

The rules are stated in :mod:`hltemu.stages.rho` and :mod:`hltemu.stages.pfrho`; the towers'
kernels know the detector only through four tables the stage builds once per (config,
backend):

* ``tower_offsets`` (int64, n_towers + 1) and ``tower_cells`` (int32): CSR list of the cell ids
  of each tower, ascending;
* ``tower_cosh`` (float64, n_towers): ``cosh(eta)`` of each tower's centre, computed on the
  host (NumPy) once, so that no backend evaluates a transcendental function;
* ``tower_cell`` (int32, n_towers): the grid cell of each tower, -1 for a tower outside the
  grid; ``area`` (float64, n_grid): each grid cell's area (the sum of its towers' areas).

Cells of a batch are rows (``energy`` [GeV], float64) grouped by event with CSR ``offsets``;
``slot`` (int32, ``(n_events, n_ids)``) maps ``(event, cell id)`` to the cell's row within its
event, -1 when the event does not hold that cell (an input may hold any subset of the cells,
in any order).

Two steps, the same sums in the same order on both targets:

1. tower pT (:func:`tower_pt_cuda`, one thread per (event, tower); on the CPU one event per
   ``prange`` iteration): ``0.0 + E_1 + E_2 + ...`` over the tower's cells in ascending cell
   id, then divided by ``tower_cosh``;
2. rho (:func:`rho_cuda`, one thread per event): each grid cell's ``0.0 + pT_1 + pT_2 + ...``
   over its towers in ascending tower index, divided by its area, then the median of all grid
   cells (quickselect; the mean of the two middle values for an even count).

The candidates' rho (:func:`candidate_rho_cpu`, :func:`candidate_rho_cuda`, one thread per
event) takes each candidate's grid cell (int32, -1 outside the grid), computed by the stage
with the backend's array module, and adds the event's candidates' pT [GeV] into their cells in
ascending row order (``0.0 + pT_1 + ...``); then the same "divide by the area, take the median"
device function as step 2 (``median_density``).

Every float operation is one exactly rounded IEEE-754 float64 ``+``, ``/`` or ``*``
(:mod:`hltemu.kernels.ieee`: libdevice's ``dadd_rn``, ``ddiv_rn``, ``dmul_rn`` on CUDA, never
contracted into an FMA), so cpu and cuda give the same bits, and so does the NumPy reference,
which adds the same terms in the same order.

Numba's on-disk cache: this module compiles in :mod:`hltemu.kernels.ieee`; after editing that
file, clear this module's ``__pycache__/rho*.nbi``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import cuda

from .ieee import CPU_OPS, CUDA_OPS

#: Largest grid the kernels accept (per-thread scratch on the GPU is this many doubles).
MAX_CELLS = 1024


def _select(a, n, k):
    """Move the k-th smallest of ``a[:n]`` to ``a[k]``, smaller ones before it (quickselect,
    in place, deterministic middle pivot).  Returns ``a[k]``."""
    lo = 0
    hi = n - 1
    while lo < hi:
        pivot = a[(lo + hi) // 2]
        i = lo
        j = hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while pivot < a[j]:
                j -= 1
            if i <= j:
                t = a[i]
                a[i] = a[j]
                a[j] = t
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return a[k]


def _make(jit, mul, add, sub, div):
    """The target's device functions ``(tower_pt, grid_median, candidate_median)``, compiled
    with ``jit`` on the exactly rounded arithmetic ``mul, add, sub, div`` (a set of
    :mod:`hltemu.kernels.ieee`)."""
    select = jit(_select)

    def tower_pt(e, t, slot, offsets, energy, tower_offsets, tower_cells, tower_cosh):
        """pT [GeV] of tower ``t`` in event ``e``: the sum of its cells' energies (ascending
        cell id; cells the event does not hold add nothing) over cosh(eta_tower)."""
        base = offsets[e]
        s = 0.0
        for k in range(tower_offsets[t], tower_offsets[t + 1]):
            r = slot[e, tower_cells[k]]
            if r >= 0:
                s = add(s, energy[base + r])
        return div(s, tower_cosh[t])

    def median_density(cells, area):
        """The median over the grid cells of ``cells[c] / area[c]`` (``cells[:n]``: each grid
        cell's pT sum [GeV], overwritten; ``n = area.shape[0]``); for an even ``n`` the mean of
        the two middle values."""
        n = area.shape[0]
        for c in range(n):
            cells[c] = div(cells[c], area[c])
        half = n // 2
        upper = select(cells, n, half)
        if n % 2 == 1:
            return upper
        lower = cells[0]
        for c in range(1, half):
            if cells[c] > lower:
                lower = cells[c]
        return mul(0.5, add(lower, upper))

    median = jit(median_density)

    def grid_median(e, tower_pt, tower_cell, area, cells):
        """Rho of event ``e`` from its towers' pT (row ``e`` of ``tower_pt``): the median over
        the grid cells of pT sum / area; ``cells`` is scratch of at least ``area.shape[0]``."""
        n = area.shape[0]
        for c in range(n):
            cells[c] = 0.0
        for t in range(tower_cell.shape[0]):
            c = tower_cell[t]
            if c >= 0:
                cells[c] = add(cells[c], tower_pt[e, t])
        return median(cells, area)

    def candidate_median(e, offsets, cell, pt, area, cells):
        """Rho of event ``e`` from its candidates (rows ``offsets[e]`` to ``offsets[e + 1]``):
        each grid cell's ``0.0 + pT_1 + pT_2 + ...`` over the candidates with ``cell[r] == c``
        in ascending row order (``cell[r] < 0``: outside the grid), then the median over the
        grid cells of pT sum / area; ``cells`` is scratch of at least ``area.shape[0]``."""
        n = area.shape[0]
        for c in range(n):
            cells[c] = 0.0
        for r in range(offsets[e], offsets[e + 1]):
            c = cell[r]
            if c >= 0:
                cells[c] = add(cells[c], pt[r])
        return median(cells, area)

    return jit(tower_pt), jit(grid_median), jit(candidate_median)


_tower_pt_cpu, _grid_median_cpu, _candidate_median_cpu = _make(
    numba.njit(cache=True, inline="always"), *CPU_OPS)
_tower_pt_cuda, _grid_median_cuda, _candidate_median_cuda = _make(
    cuda.jit(device=True), *CUDA_OPS)


@numba.njit(parallel=True, nogil=True, cache=True)
def slot_map_cpu(ids, offsets, slot, repeated):
    """``slot[e, c]`` = the row within event ``e`` of its cell id ``c`` (-1: not held), and
    ``repeated[e]`` = the first row (global) whose id event ``e`` already held, else -1; in
    parallel over events.  ``ids`` must be in ``0..slot.shape[1]-1``."""
    for e in numba.prange(slot.shape[0]):
        for c in range(slot.shape[1]):
            slot[e, c] = -1
        repeated[e] = -1
        base = offsets[e]
        for r in range(base, offsets[e + 1]):
            c = ids[r]
            if slot[e, c] >= 0 and repeated[e] < 0:
                repeated[e] = r
            slot[e, c] = r - base


@numba.njit(parallel=True, nogil=True, cache=True)
def rho_cpu(slot, offsets, energy, tower_offsets, tower_cells, tower_cosh, tower_cell, area,
            tower_pt, out):
    """``tower_pt[e, t]`` [GeV] and ``out[e]`` = rho [GeV per unit area] of every event ``e``,
    in parallel over events."""
    n_towers = tower_cosh.shape[0]
    for e in numba.prange(out.shape[0]):
        for t in range(n_towers):
            tower_pt[e, t] = _tower_pt_cpu(e, t, slot, offsets, energy, tower_offsets,
                                           tower_cells, tower_cosh)
        cells = np.empty(area.shape[0], dtype=np.float64)
        out[e] = _grid_median_cpu(e, tower_pt, tower_cell, area, cells)


@cuda.jit(cache=True)
def tower_pt_cuda(slot, offsets, energy, tower_offsets, tower_cells, tower_cosh, tower_pt):
    """One thread per (event, tower), ``i = e * n_towers + t``: ``tower_pt[e, t]`` [GeV]."""
    i = cuda.grid(1)
    n_towers = tower_cosh.shape[0]
    if i < tower_pt.shape[0] * n_towers:
        e = i // n_towers
        t = i - e * n_towers
        tower_pt[e, t] = _tower_pt_cuda(e, t, slot, offsets, energy, tower_offsets, tower_cells,
                                        tower_cosh)


@cuda.jit(cache=True)
def rho_cuda(tower_pt, tower_cell, area, out):
    """One thread per event: ``out[e]`` = rho from row ``e`` of :func:`tower_pt_cuda`'s
    ``tower_pt``, as :func:`rho_cpu`."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        cells = cuda.local.array(MAX_CELLS, numba.float64)
        out[i] = _grid_median_cuda(i, tower_pt, tower_cell, area, cells)


@numba.njit(parallel=True, nogil=True, cache=True)
def candidate_rho_cpu(offsets, cell, pt, area, out):
    """``out[e]`` = rho [GeV per unit area] of every event ``e`` from its candidates' pT
    [GeV] and grid cells (``cell``, -1: outside the grid), in parallel over events."""
    for e in numba.prange(out.shape[0]):
        cells = np.empty(area.shape[0], dtype=np.float64)
        out[e] = _candidate_median_cpu(e, offsets, cell, pt, area, cells)


@cuda.jit(cache=True)
def candidate_rho_cuda(offsets, cell, pt, area, out):
    """One thread per event: ``out[e]`` = rho, as :func:`candidate_rho_cpu`."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        cells = cuda.local.array(MAX_CELLS, numba.float64)
        out[i] = _candidate_median_cuda(i, offsets, cell, pt, area, cells)
