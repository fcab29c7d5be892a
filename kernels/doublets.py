"""Pixel doublets: the cut test of one (inner hit, outer hit) pair and the binned search.

Inputs are the stage's *hit table* (see :mod:`hltemu.stages.doublets`): pixel hits sorted by
``(event, layer, phi bin)``, with ``bin_offsets`` (CSR, ``n_events * n_layers * n_bins + 1``)
so that the hits of event ``e``, layer ``l``, phi bin ``b`` are rows
``bin_offsets[k]:bin_offsets[k + 1]`` with ``k = (e * n_layers + l) * n_bins + b``.

Exact agreement between backends
--------------------------------
Coordinates arrive as float64 holding **integers in micrometres** (the stage rounds the hits
to a 1 um grid), and every cut is written so that each sum or difference adds exact integers
(the stage admits coordinates up to 10 m, so products of two stay below 2**53; pitch and
thickness are whole um, cluster sizes whole pixels), while products of non-integers never feed
a sum.  IEEE-754 rounds each remaining product and comparison the same way in Python, in Numba
on the CPU and in CUDA.  On top of that, every float operation of the cut goes through
exactly rounded helpers (plain operators in Python and on the CPU, libdevice's ``dmul_rn`` /
``dadd_rn`` in CUDA, see :mod:`hltemu.kernels.antikt`), which NVVM never fuses
into an FMA (it fuses ``a * b + c`` by default), so the CUDA code performs the very operations
of the CPU code, in the same order, whether or not the grid argument holds
(``tests/test_ptx.py`` checks the sm_90 PTX).  So the pass/fail decision of every pair, hence
the doublet set, is bit-for-bit the same everywhere.

The cut (:func:`doublet_passes`) is scalar Python written once on those helpers
(:func:`_make`) and compiled twice (fbpic style): ``numba.njit`` for the CPU kernels and
``cuda.jit(device=True)`` for the CUDA kernel.  The reference implementation in the stage
calls the plain Python version itself.

Cut tables (float64), one row per layer pair, columns ``PAIR_*``; global cuts, ``CUT_*``.
Lengths are in um, angles enter as ``tan**2``, curvature as ``(1/R_min)**2`` in um**-2.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from .ieee import CPU_OPS, CUDA_OPS, PY_OPS

# -- per-pair cut table columns (pair_cuts[p, column]) ----------------------------------------
PAIR_TAN2_DPHI = 0  #: tan(phi window)**2; the window is below pi/2
PAIR_INNER_Z_MIN = 1  #: um, lowest z of the inner hit
PAIR_INNER_Z_MAX = 2  #: um, highest z of the inner hit
PAIR_DR_MAX = 3  #: um, largest r_outer - r_inner
PAIR_INNER_BARREL = 4  #: 1.0 if the inner layer is a barrel layer, 0.0 for a disk
PAIR_OUTER_BARREL = 5  #: 1.0 if the outer layer is a barrel layer, 0.0 for a disk
N_PAIR_COLUMNS = 6

# -- global cut vector (cuts[column]) ---------------------------------------------------------
CUT_Z0_MAX = 0  #: um, largest |z0| of the doublet's r-z line at r = 0
CUT_KAPPA2_MAX = 1  #: um**-2, (1 / R_min)**2 with R_min the radius of a pt_min track
CUT_COT_MAX = 2  #: largest |dz / dr| (sinh of the largest |eta|)
CUT_PITCH = 3  #: um, pixel pitch along local y (z in the barrel, r in the disks)
CUT_THICKNESS = 4  #: um, sensor thickness
CUT_SIZE_BELOW = 5  #: pixels, size_y may be this much below the prediction
CUT_SIZE_ABOVE = 6  #: pixels, size_y may be this much above the prediction
CUT_SIZE_INNER = 7  #: 1.0: apply the cluster-size test to the inner hit
CUT_SIZE_OUTER = 8  #: 1.0: apply the cluster-size test to the outer hit
N_CUT_COLUMNS = 9

#: rad, added to each phi window when choosing the bins to scan (not to the cut itself).
PHI_MARGIN = 1.0e-6


def _make(jit, mul, add, sub):
    """``doublet_passes`` on the arithmetic ``mul, add, sub`` (one of the sets ``PY_OPS``,
    ``CPU_OPS``, ``CUDA_OPS`` of :mod:`hltemu.kernels.ieee`), compiled with ``jit``."""

    def size_compatible(size, barrel, adz, dr, pitch, thick, below, above):
        """Cluster length ``size`` (pixels along local y) against the doublet's r-z angle:
        on a barrel layer the length along z over the crossing along r, on a disk along r
        over across z; ``below``/``above`` pixels of slack."""
        along = adz if barrel != 0.0 else dr
        across = dr if barrel != 0.0 else adz
        resid = sub(mul(mul(size, pitch), across), mul(thick, along))  # pitch*across*(size - pred)
        return not (resid < -mul(mul(below, pitch), across)
                    or resid > mul(mul(above, pitch), across))

    size_compatible = jit(size_compatible)

    def doublet_passes(xi, yi, zi, ri, si, xo, yo, zo, ro, so, pair_cuts, p, cuts):
        """True when inner hit ``i`` and outer hit ``o`` make a doublet of layer pair ``p``.

        ``x, y, z`` are um on the 1 um grid, ``r`` is ``sqrt(x**2 + y**2)`` rounded to an integer
        um, ``s`` the cluster size along local y (pixels).  The tests, cheapest first:

        1. r-z: the inner hit inside the pair's z window; ``0 < dr <= dr_max``;
           ``|dz| <= cot_max * dr``; the straight r-z line through both hits meets r = 0 within
           ``|z0| <= z0_max`` of the beam spot (``|z_i r_o - r_i z_o| <= z0_max * dr``).
        2. phi window: ``|dphi| <= window``, as ``dot > 0`` and ``cross**2 <= tan**2 * dot**2``.
        3. pT: the circle through the beam line (0, 0) and both hits has curvature
           ``2 |cross| / (r_i r_o d)`` (d: the hits' transverse distance); it must not exceed
           ``1 / R_min`` (squared on both sides).
        4. cluster size: a track crossing a sensor of thickness t at the doublet's angle leaves a
           cluster ``t |dz/dr| / pitch`` pixels long along z on a barrel module, ``t |dr/dz| /
           pitch`` along r on a disk; the measured ``size_y`` must lie within
           ``[pred - below, pred + above]``.  Applied to the inner hit, and to the outer hit when
           switched on.
        """
        # 1. r-z compatibility -------------------------------------------------------------
        if zi < pair_cuts[p, PAIR_INNER_Z_MIN] or zi > pair_cuts[p, PAIR_INNER_Z_MAX]:
            return False
        dr = sub(ro, ri)
        if dr <= 0.0 or dr > pair_cuts[p, PAIR_DR_MAX]:
            return False
        adz = abs(sub(zo, zi))
        if adz > mul(cuts[CUT_COT_MAX], dr):
            return False
        if abs(sub(mul(zi, ro), mul(ri, zo))) > mul(cuts[CUT_Z0_MAX], dr):
            return False
        # 2. phi window ----------------------------------------------------------------------
        dot = add(mul(xi, xo), mul(yi, yo))
        if dot <= 0.0:
            return False
        cross = sub(mul(xi, yo), mul(yi, xo))
        if mul(cross, cross) > mul(pair_cuts[p, PAIR_TAN2_DPHI], mul(dot, dot)):
            return False
        # 3. minimum pT: curvature of the circle through the beam line and both hits ------------
        dx = sub(xo, xi)
        dy = sub(yo, yi)
        r2i = add(mul(xi, xi), mul(yi, yi))
        r2o = add(mul(xo, xo), mul(yo, yo))
        d2 = add(mul(dx, dx), mul(dy, dy))
        if mul(mul(4.0, cross), cross) > mul(cuts[CUT_KAPPA2_MAX], mul(mul(r2i, r2o), d2)):
            return False
        # 4. cluster length along local y against the doublet's r-z angle ----------------------
        pitch = cuts[CUT_PITCH]
        thick = cuts[CUT_THICKNESS]
        below = cuts[CUT_SIZE_BELOW]
        above = cuts[CUT_SIZE_ABOVE]
        if cuts[CUT_SIZE_INNER] != 0.0 and not size_compatible(
                si, pair_cuts[p, PAIR_INNER_BARREL], adz, dr, pitch, thick, below, above):
            return False
        if cuts[CUT_SIZE_OUTER] != 0.0 and not size_compatible(
                so, pair_cuts[p, PAIR_OUTER_BARREL], adz, dr, pitch, thick, below, above):
            return False
        return True

    return jit(doublet_passes)


def phi_bins(phi, window, n_bins):
    """``(first, count)``: the phi bins that hold ``[phi - window, phi + window]`` (rad), the
    first wrapped into ``[0, n_bins)``, ``count`` at most ``n_bins``.  Bin ``b`` holds
    ``-pi + b w <= phi < -pi + (b + 1) w`` with ``w = 2 pi / n_bins``.  ``window`` includes a
    margin (:data:`PHI_MARGIN`) far above the last-bit differences of ``atan2`` between
    platforms, so a hit never falls outside the bins scanned for it."""
    scale = n_bins / (2.0 * math.pi)
    lo = int(math.floor((phi - window + math.pi) * scale))
    hi = int(math.floor((phi + window + math.pi) * scale))
    count = hi - lo + 1
    if count > n_bins:
        count = n_bins
    return (lo + 2 * n_bins) % n_bins, count


doublet_passes = _make(lambda f: f, *PY_OPS[:3])
_passes_cpu = _make(numba.njit(inline="always", cache=True), *CPU_OPS[:3])
_phi_bins_cpu = numba.njit(inline="always", cache=True)(phi_bins)
_passes_cuda = _make(cuda.jit(device=True), *CUDA_OPS[:3])
_phi_bins_cuda = cuda.jit(device=True)(phi_bins)


# -- CPU: parallel over events, count pass then fill pass -------------------------------------
@numba.njit(cache=True)
def _scan_event_cpu(e, x, y, z, r, s, phi, layer, bin_offsets, n_layers, n_bins,
                    layer_pair_offsets, layer_pairs, pair_outer, pair_window, pair_cuts, cuts,
                    write, start, out_inner, out_outer, out_pair):  # pragma: no cover - compiled
    """Doublets of event ``e``; written at ``out_*[start:]`` when ``write``.  Returns the count."""
    per_event = n_layers * n_bins
    n = 0
    for i in range(bin_offsets[e * per_event], bin_offsets[(e + 1) * per_event]):
        li = layer[i]
        for k in range(layer_pair_offsets[li], layer_pair_offsets[li + 1]):
            p = layer_pairs[k]
            base = (e * n_layers + pair_outer[p]) * n_bins
            b0, n_scan = _phi_bins_cpu(phi[i], pair_window[p], n_bins)
            for w in range(n_scan):
                cell = base + (b0 + w) % n_bins
                for o in range(bin_offsets[cell], bin_offsets[cell + 1]):
                    if _passes_cpu(x[i], y[i], z[i], r[i], s[i], x[o], y[o], z[o], r[o], s[o],
                                   pair_cuts, p, cuts):
                        if write:
                            out_inner[start + n] = i
                            out_outer[start + n] = o
                            out_pair[start + n] = p
                        n += 1
    return n


@numba.njit(parallel=True, nogil=True, cache=True)
def count_doublets_cpu(x, y, z, r, s, phi, layer, bin_offsets, n_layers, n_bins,
                       layer_pair_offsets, layer_pairs, pair_outer, pair_window, pair_cuts, cuts,
                       counts):  # pragma: no cover - compiled
    """``counts[e]``: number of doublets of event ``e`` (int64, shape ``(n_events,)``)."""
    dummy = np.zeros(0, dtype=np.int32)
    for e in numba.prange(counts.shape[0]):
        counts[e] = _scan_event_cpu(e, x, y, z, r, s, phi, layer, bin_offsets, n_layers,
                                    n_bins, layer_pair_offsets, layer_pairs, pair_outer,
                                    pair_window, pair_cuts, cuts, False, 0, dummy, dummy, dummy)


@numba.njit(parallel=True, nogil=True, cache=True)
def fill_doublets_cpu(x, y, z, r, s, phi, layer, bin_offsets, n_layers, n_bins,
                      layer_pair_offsets, layer_pairs, pair_outer, pair_window, pair_cuts, cuts,
                      out_offsets, out_inner, out_outer, out_pair):  # pragma: no cover - compiled
    """Write the doublets of event ``e`` at ``out_*[out_offsets[e]:out_offsets[e + 1]]``
    (sorted-hit indices of the inner and outer hit, pair id)."""
    for e in numba.prange(out_offsets.shape[0] - 1):
        _scan_event_cpu(e, x, y, z, r, s, phi, layer, bin_offsets, n_layers, n_bins,
                        layer_pair_offsets, layer_pairs, pair_outer, pair_window, pair_cuts, cuts,
                        True, out_offsets[e], out_inner, out_outer, out_pair)


# -- CUDA: one thread per (inner hit, layer pair), atomic counter into a fixed buffer ----------
@cuda.jit(cache=True)
def find_doublets_cuda(item_hit, item_pair, x, y, z, r, s, phi, event, bin_offsets,
                       n_layers, n_bins, pair_outer, pair_window, pair_cuts, cuts, counter,
                       out_inner, out_outer, out_pair):  # pragma: no cover - compiled
    """Thread ``t`` scans the phi window of inner hit ``item_hit[t]`` on the outer layer of
    pair ``item_pair[t]``.  Each doublet takes a slot from ``counter[0]`` (atomic add); slots
    at or past the buffer's length are not written, so ``counter[0]`` ends as the true total
    and the caller reruns with a larger buffer when it exceeds the capacity."""
    t = cuda.grid(1)
    if t >= item_hit.shape[0]:
        return
    i = item_hit[t]
    p = item_pair[t]
    capacity = out_inner.shape[0]
    base = (event[i] * n_layers + pair_outer[p]) * n_bins
    b0, n_scan = _phi_bins_cuda(phi[i], pair_window[p], n_bins)
    for w in range(n_scan):
        cell = base + (b0 + w) % n_bins
        for o in range(bin_offsets[cell], bin_offsets[cell + 1]):
            if _passes_cuda(x[i], y[i], z[i], r[i], s[i], x[o], y[o], z[o], r[o], s[o],
                            pair_cuts, p, cuts):
                slot = cuda.atomic.add(counter, 0, 1)
                if slot < capacity:
                    out_inner[slot] = i
                    out_outer[slot] = o
                    out_pair[slot] = p
