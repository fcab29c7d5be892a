"""Event pT density rho: median of pT / area over a fixed eta-phi grid.

One event per CPU iteration or CUDA thread: sum the pT of the event's objects in each grid cell
(in input order, so every backend adds in the same order), divide by the cell area, take the
median of all cells (empty cells count, with density 0).  The scalar functions are plain Python
compiled for both targets (``numba.njit`` and ``cuda.jit(device=True)``).

Inputs: ``pt`` [GeV], ``eta``, ``phi`` [rad] flat per object, ``offsets`` (n_events + 1);
``grid`` = (eta_min, d_eta, n_eta, d_phi, n_phi, cell_area) as float64; ``out`` (n_events,).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

#: Largest grid the kernels accept (per-thread scratch on the GPU is this many doubles).
MAX_CELLS = 1024

TWO_PI = 2.0 * math.pi


def _cell_index(eta, phi, eta_min, d_eta, n_eta, d_phi, n_phi):
    """Grid cell of a direction, or -1 outside ``eta_min <= eta < -eta_min``.

    Rows are ``int((eta - eta_min) / d_eta)``; columns ``int(phi' / d_phi)`` with ``phi'`` the
    azimuth wrapped into ``[0, 2 pi)`` as ``phi - 2 pi floor(phi / 2 pi)``.
    """
    if not (eta >= eta_min and eta < -eta_min):
        return -1
    iy = int((eta - eta_min) / d_eta)
    if iy >= n_eta:
        iy = n_eta - 1
    p = phi - TWO_PI * math.floor(phi / TWO_PI)
    ip = int(p / d_phi)
    if ip >= n_phi:
        ip = n_phi - 1
    if ip < 0:
        ip = 0
    return iy * n_phi + ip


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


def _make(jit):
    cell_index = jit(_cell_index)
    select = jit(_select)

    def rho_one(i, pt, eta, phi, offsets, grid, cells):
        """Rho of event ``i``; ``cells`` is scratch of at least n_eta * n_phi entries."""
        eta_min = grid[0]
        d_eta = grid[1]
        n_eta = int(grid[2])
        d_phi = grid[3]
        n_phi = int(grid[4])
        area = grid[5]
        n = n_eta * n_phi
        for c in range(n):
            cells[c] = 0.0
        for j in range(offsets[i], offsets[i + 1]):
            c = cell_index(eta[j], phi[j], eta_min, d_eta, n_eta, d_phi, n_phi)
            if c >= 0:
                cells[c] += pt[j]
        for c in range(n):
            cells[c] = cells[c] / area
        half = n // 2
        upper = select(cells, n, half)
        if n % 2 == 1:
            return upper
        lower = cells[0]
        for c in range(1, half):
            if cells[c] > lower:
                lower = cells[c]
        return 0.5 * (lower + upper)

    return jit(rho_one), cell_index


_rho_one_cpu, cell_index_cpu = _make(numba.njit(cache=True, inline="always"))
_rho_one_cuda, _ = _make(cuda.jit(device=True))


@numba.njit(parallel=True, cache=True)
def rho_cpu(pt, eta, phi, offsets, grid, out):
    """``out[i]`` = rho of event ``i`` (GeV per unit area), in parallel over events."""
    n_cells = int(grid[2]) * int(grid[4])
    for i in numba.prange(out.shape[0]):
        cells = np.empty(n_cells, dtype=np.float64)
        out[i] = _rho_one_cpu(i, pt, eta, phi, offsets, grid, cells)


@cuda.jit(cache=True)
def rho_cuda(pt, eta, phi, offsets, grid, out):
    """One thread per event: same arguments and result as :func:`rho_cpu`."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        cells = cuda.local.array(MAX_CELLS, numba.float64)
        out[i] = _rho_one_cuda(i, pt, eta, phi, offsets, grid, cells)
