"""Primary vertices from track z0: the track selection and the gap clustering of stage
``vertices``, written once and compiled for Numba's CPU target and CUDA.

The rules are stated in :mod:`hltemu.stages.vertices`.  Data layout: tracks of a batch grouped
by event with CSR ``offsets``, float64 ``pt`` [GeV], ``d0``, ``z0``, ``sigma_d0``, ``sigma_z0``
[cm]; ``cuts`` = [pt_min, max_sigma_z0, max_d0_significance, z_separation, fit_sigmas,
fit_iterations] (:data:`CUT_*`).

Clustering one event (:func:`_make`'s ``walk``): its selected tracks in ascending ``(z0, track
row)`` order (``rows[start:stop]``); a track more than ``z_separation`` above the previous one
starts a new cluster; ``cluster_of[row] = k``.  Each cluster is then fitted (``fit``): ``z``
starts at the weighted median of its z0 (the first track, in that order, at which the running
sum of ``w = 1 / sigma_z0^2`` reaches half the cluster's sum), then at most ``fit_iterations``
times the tracks with ``|z0 - z| < fit_sigmas sigma_z0`` are summed, in that order (``w``,
``w z0``, ``pT^2``, their count), and ``z = sum(w z0) / sum(w)``, until ``z`` no longer
changes.  The last sums go into slot ``slot0 + k`` of the cluster arrays (slot0 = the event's
first track row, so an event's clusters, at most one per track, never reach the next event's
slots: no capacity to overflow).

One event is one sequential walk (one ``prange`` iteration, one CUDA thread), so nothing
depends on thread order.  Every float operation is one IEEE-754 operation through
:mod:`hltemu.kernels.ieee`'s sets (libdevice's ``dmul_rn`` etc. on CUDA: no FMA contraction),
in the order above, as the reference adds in plain Python: given the same tracks, reference,
cpu and cuda give the same bits.

Numba's on-disk cache: the kernels compile in :mod:`hltemu.kernels.ieee`; after editing it,
clear ``kernels/__pycache__/vertices*``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import cuda

from .ieee import CPU_OPS, CUDA_OPS

#: Index of each number in the ``cuts`` array.
CUT_PT_MIN, CUT_SIGMA_Z0_MAX, CUT_D0_SIGNIFICANCE_MAX, CUT_Z_SEPARATION = 0, 1, 2, 3
CUT_FIT_SIGMAS, CUT_FIT_ITERATIONS = 4, 5


def _make(jit, mul, add, sub, div):
    """``(selected, walk)`` compiled with ``jit`` on the arithmetic ``mul, add, sub, div``."""

    def selected(pt, d0, sigma_d0, sigma_z0, cuts):
        """Whether a track enters the vertex finding: ``pT >= pt_min``, ``sigma_z0 <
        max_sigma_z0`` and ``|d0| < max_d0_significance sigma_d0``."""
        return (pt >= cuts[CUT_PT_MIN] and sigma_z0 < cuts[CUT_SIGMA_Z0_MAX]
                and abs(d0) < mul(cuts[CUT_D0_SIGNIFICANCE_MAX], sigma_d0))

    def fit(rows, start, stop, z0, pt, sigma_z0, cuts, j, c_sw, c_swz, c_n, c_pt2, in_fit):
        """The trimmed fit of the cluster ``rows[start:stop]`` (ascending z0) into slot ``j``,
        and ``in_fit[row]`` 1 for the tracks of its last sums (see the module docstring)."""
        total = 0.0
        for i in range(start, stop):
            s = sigma_z0[rows[i]]
            total = add(total, div(1.0, mul(s, s)))
        half = mul(0.5, total)
        running = 0.0
        z = z0[rows[stop - 1]]
        for i in range(start, stop):
            s = sigma_z0[rows[i]]
            running = add(running, div(1.0, mul(s, s)))
            if running >= half:
                z = z0[rows[i]]
                break
        c_sw[j] = 0.0
        c_swz[j] = 0.0
        c_n[j] = 0
        c_pt2[j] = 0.0
        window = cuts[CUT_FIT_SIGMAS]
        z_fit = z
        for _ in range(int(cuts[CUT_FIT_ITERATIONS])):
            sw = 0.0
            swz = 0.0
            pt2 = 0.0
            n = 0
            for i in range(start, stop):
                r = rows[i]
                s = sigma_z0[r]
                if abs(sub(z0[r], z)) < mul(window, s):
                    w = div(1.0, mul(s, s))
                    sw = add(sw, w)
                    swz = add(swz, mul(w, z0[r]))
                    pt2 = add(pt2, mul(pt[r], pt[r]))
                    n += 1
            if n == 0:  # only when window 0 keeps nothing: the config refuses that
                break
            c_sw[j] = sw
            c_swz[j] = swz
            c_n[j] = n
            c_pt2[j] = pt2
            z_fit = z
            z_new = div(swz, sw)
            if z_new == z:
                break
            z = z_new
        for i in range(start, stop):
            r = rows[i]
            in_fit[r] = 1 if abs(sub(z0[r], z_fit)) < mul(window, sigma_z0[r]) else 0

    def walk(rows, start, stop, z0, pt, sigma_z0, cuts, slot0, cluster_of, c_sw, c_swz, c_n,
             c_pt2, in_fit):
        """Gap clustering of the tracks ``rows[start:stop]`` (ascending z0) and the fit of
        each cluster; returns the number of clusters (see the module docstring)."""
        gap = cuts[CUT_Z_SEPARATION]
        k = -1
        first = start
        prev = 0.0
        for i in range(start, stop):
            r = rows[i]
            z = z0[r]
            if k < 0 or sub(z, prev) > gap:
                if k >= 0:
                    fit(rows, first, i, z0, pt, sigma_z0, cuts, slot0 + k, c_sw, c_swz, c_n,
                        c_pt2, in_fit)
                k += 1
                first = i
            cluster_of[r] = k
            prev = z
        if k >= 0:
            fit(rows, first, stop, z0, pt, sigma_z0, cuts, slot0 + k, c_sw, c_swz, c_n, c_pt2,
                in_fit)
        return k + 1

    fit = jit(fit)
    return jit(selected), jit(walk)


_selected_cpu, _walk_cpu = _make(numba.njit(cache=True, inline="always"), *CPU_OPS)
_selected_cuda, _walk_cuda = _make(cuda.jit(device=True), *CUDA_OPS)


@numba.njit(parallel=True, nogil=True, cache=True)
def cluster_cpu(offsets, pt, d0, z0, sigma_d0, sigma_z0, cuts, cluster_of, c_sw, c_swz, c_n,
                c_pt2, n_clusters, in_fit):
    """Every event (in parallel): select, sort by (z0, row), cluster and fit its tracks;
    ``cluster_of[row]`` = the track's cluster within the event (-1: not selected),
    ``n_clusters[e]``, ``in_fit[row]`` (1: in its cluster's fit; rows not selected are left
    as they were: pass zeros)."""
    for e in numba.prange(offsets.shape[0] - 1):
        lo, hi = offsets[e], offsets[e + 1]
        rows = np.empty(hi - lo, dtype=np.int64)
        m = 0
        for r in range(lo, hi):
            cluster_of[r] = -1
            if _selected_cpu(pt[r], d0[r], sigma_d0[r], sigma_z0[r], cuts):
                rows[m] = r
                m += 1
        rows = rows[:m]
        order = np.argsort(z0[rows], kind="mergesort")  # stable: equal z0 keep row order
        n_clusters[e] = _walk_cpu(rows[order], 0, m, z0, pt, sigma_z0, cuts, lo, cluster_of,
                                  c_sw, c_swz, c_n, c_pt2, in_fit)


@cuda.jit(cache=True)
def select_cuda(pt, d0, sigma_d0, sigma_z0, cuts, selected):
    """One thread per track: ``selected[r]`` 1 when the track enters the vertex finding."""
    r = cuda.grid(1)
    if r < selected.shape[0]:
        selected[r] = 1 if _selected_cuda(pt[r], d0[r], sigma_d0[r], sigma_z0[r], cuts) else 0


@cuda.jit(cache=True)
def cluster_cuda(offsets, order, order_offsets, pt, z0, sigma_z0, cuts, cluster_of, c_sw,
                 c_swz, c_n, c_pt2, n_clusters, in_fit):
    """One thread per event ``e``: the gap clustering and fits of its selected tracks, which
    ``order[order_offsets[e]:order_offsets[e + 1]]`` lists in ascending (z0, row)."""
    e = cuda.grid(1)
    if e < n_clusters.shape[0]:
        n_clusters[e] = _walk_cuda(order, order_offsets[e], order_offsets[e + 1], z0, pt,
                                   sigma_z0, cuts, offsets[e], cluster_of, c_sw, c_swz, c_n,
                                   c_pt2, in_fit)
