"""Pixel vertices from pixel-track z0 (stage ``pixelvertices``): Patatrack's density
clustering, vertex fit and split, written once and compiled for Numba's CPU target and CUDA.

The rules are stated in :mod:`hltemu.stages.pixelvertices`.  Data layout: the selected tracks
of a batch, grouped by event and within an event in ascending ``(z0, track row)`` order,
"positions" ``p`` of flat float64 arrays ``z`` [cm], ``e2`` (``sigma_z0^2`` [cm^2]) and ``pt2``
(capped pT^2 [GeV^2]); event ``e`` owns positions ``offsets[e]:offsets[e + 1]`` and cluster
slots ``2 offsets[e]`` to ``2 offsets[e + 1]`` (an event of ``m`` tracks has at most ``m``
clusters, each split adds at most one: no capacity to overflow).  ``cuts`` holds the numbers
of :data:`CUT_*`.

Per event (:func:`_make`'s ``event``), all sequential over the positions in order:

1. ``density``: ``nn[p]``, the tracks within ``eps`` and ``chi2max`` of track ``p`` (only for
   tracks with ``e2 <= errmax^2``; others 0); ``parent[p]``, the nearest track of higher rank
   (more neighbours, or as many and a lower z0) within ``eps`` and ``chi2max``, the first in
   position order at equal distance (``p`` itself if none); then each track's root by
   following ``parent``.  Roots with ``nn >= minT`` are the clusters, numbered in position
   order; ``cid[p]`` is the cluster of the track's root, -1 when that root is noise.
2. ``fit`` (outlier cut ``fit_chi2_max``), 3. ``split`` (vertices of ndof >= ``split_min_ndof``
   and ``chi2 >= split_chi2 ndof``: two-means in z, new vertices numbered after the others in
   the order of the vertices they came from), 4. ``fit`` again (``final_fit_chi2_max``) over all
   clusters; then each cluster's member count and sum of ``pt2``.

Sums run over positions in ascending order into per-cluster accumulators, so a cluster's sum
is always over its tracks in (z0, row) order.  One event is one sequential walk (one
``prange`` iteration, one CUDA thread), so nothing depends on thread order.  Every float
operation goes through :mod:`hltemu.kernels.ieee`'s exactly rounded sets (no FMA contraction
on CUDA), in the order the stage's docstring gives, which the reference repeats in plain
Python: given the same inputs, reference, cpu and cuda give the same bits.

Numba's on-disk cache: the kernels compile in :mod:`hltemu.kernels.ieee`; after editing it,
clear ``kernels/__pycache__/pixelvertices*``.
"""

from __future__ import annotations

import numba
from numba import cuda

from .ieee import CPU_OPS, CUDA_OPS

#: Index of each number in the ``cuts`` array.
CUT_EPS, CUT_ERR2_MAX, CUT_CHI2_MAX, CUT_MIN_T = 0, 1, 2, 3
CUT_FIT_CHI2_MAX, CUT_FINAL_FIT_CHI2_MAX = 4, 5
CUT_SPLIT, CUT_SPLIT_MIN_NDOF, CUT_SPLIT_CHI2, CUT_SPLIT_SEPARATION, CUT_SPLIT_ITERATIONS = \
    6, 7, 8, 9, 10
N_CUTS = 11


def _make(jit, mul, add, sub, div):
    """``event`` compiled with ``jit`` on the arithmetic ``mul, add, sub, div``."""

    def compatible(z, e2, i, j, chi2max):
        """|z_i - z_j| and whether its square is within ``chi2max (e2_i + e2_j)``."""
        d = abs(sub(z[i], z[j]))
        return d, not mul(d, d) > mul(chi2max, add(e2[i], e2[j]))

    def density(z, e2, lo, hi, cuts, nn, parent, cid):
        """Step 1; returns the number of clusters."""
        eps = cuts[CUT_EPS]
        chi2max = cuts[CUT_CHI2_MAX]
        for i in range(lo, hi):
            n = 0
            if e2[i] <= cuts[CUT_ERR2_MAX]:
                j = i - 1
                while j >= lo:
                    d, ok = compatible(z, e2, i, j, chi2max)
                    if d > eps:
                        break
                    if ok:
                        n += 1
                    j -= 1
                j = i + 1
                while j < hi:
                    d, ok = compatible(z, e2, i, j, chi2max)
                    if d > eps:
                        break
                    if ok:
                        n += 1
                    j += 1
            nn[i] = n
        for i in range(lo, hi):
            first = i
            while first > lo and abs(sub(z[i], z[first - 1])) <= eps:
                first -= 1
            best = i
            mdist = eps
            for j in range(first, hi):
                d, ok = compatible(z, e2, i, j, chi2max)
                if j > i and d > eps:
                    break
                if nn[j] < nn[i] or (nn[j] == nn[i] and z[j] >= z[i]):
                    continue
                if d > mdist or (d == mdist and best != i) or not ok:
                    continue
                mdist = d
                best = j
            parent[i] = best
        for i in range(lo, hi):
            r = parent[i]
            while parent[r] != r:
                r = parent[r]
            parent[i] = r
        n_clusters = 0
        for i in range(lo, hi):
            if parent[i] == i:
                if nn[i] >= cuts[CUT_MIN_T]:
                    cid[i] = n_clusters
                    n_clusters += 1
                else:
                    cid[i] = -1
        for i in range(lo, hi):
            cid[i] = cid[parent[i]]
        return n_clusters

    def fit(z, e2, lo, hi, cid, base, n_clusters, chi2_max, zv, wv, chi2, ndof):
        """Steps 2 and 4: the weighted mean of each cluster's tracks, their chi2 (a track with
        more than ``chi2_max`` leaves its cluster: ``cid`` -1), ndof and the weight scaled by
        ndof / chi2."""
        for c in range(base, base + n_clusters):
            zv[c] = 0.0
            wv[c] = 0.0
            chi2[c] = 0.0
            ndof[c] = -1
        for i in range(lo, hi):
            if cid[i] >= 0:
                c = base + cid[i]
                w = div(1.0, e2[i])
                zv[c] = add(zv[c], mul(z[i], w))
                wv[c] = add(wv[c], w)
        for c in range(base, base + n_clusters):
            if wv[c] > 0.0:
                zv[c] = div(zv[c], wv[c])
        for i in range(lo, hi):
            if cid[i] >= 0:
                c = base + cid[i]
                d = sub(zv[c], z[i])
                c2 = mul(d, div(d, e2[i]))
                if c2 > chi2_max:
                    cid[i] = -1
                else:
                    chi2[c] = add(chi2[c], c2)
                    ndof[c] += 1
        for c in range(base, base + n_clusters):
            if ndof[c] > 0 and chi2[c] > 0.0:
                wv[c] = mul(wv[c], div(float(ndof[c]), chi2[c]))

    def split(z, e2, lo, hi, cid, base, n_clusters, cuts, zv, chi2, ndof, zz, side):
        """Step 3; returns the number of clusters after it."""
        n_total = n_clusters
        for v in range(n_clusters):
            c = base + v
            if ndof[c] < cuts[CUT_SPLIT_MIN_NDOF] or chi2[c] < mul(cuts[CUT_SPLIT_CHI2],
                                                                   float(ndof[c])):
                continue
            for i in range(lo, hi):
                if cid[i] == v:
                    zz[i] = sub(z[i], zv[c])
                    side[i] = 0 if zz[i] < 0.0 else 1
            iterations = int(cuts[CUT_SPLIT_ITERATIONS])
            z0 = 0.0
            z1 = 0.0
            w0 = 0.0
            w1 = 0.0
            while True:
                z0 = 0.0
                z1 = 0.0
                w0 = 0.0
                w1 = 0.0
                for i in range(lo, hi):
                    if cid[i] == v:
                        w = div(1.0, e2[i])
                        if side[i] == 0:
                            z0 = add(z0, mul(zz[i], w))
                            w0 = add(w0, w)
                        else:
                            z1 = add(z1, mul(zz[i], w))
                            w1 = add(w1, w)
                if w0 == 0.0 or w1 == 0.0:
                    break
                z0 = div(z0, w0)
                z1 = div(z1, w1)
                more = False
                for i in range(lo, hi):
                    if cid[i] == v:
                        s = 0 if abs(sub(zz[i], z0)) < abs(sub(zz[i], z1)) else 1
                        if s != side[i]:
                            more = True
                        side[i] = s
                iterations -= 1
                if not more or iterations <= 0:
                    break
            if w0 == 0.0 or w1 == 0.0:
                continue
            dz = sub(z0, z1)
            if div(mul(dz, dz), add(div(1.0, w0), div(1.0, w1))) < cuts[CUT_SPLIT_SEPARATION]:
                continue
            for i in range(lo, hi):
                if cid[i] == v and side[i] == 1:
                    cid[i] = n_total
            n_total += 1
        return n_total

    def event(z, e2, pt2, lo, hi, cuts, nn, parent, cid, zz, side, zv, wv, chi2, ndof, n,
              sum_pt2):
        """Steps 1-4 for the positions ``lo:hi`` (one event), clusters in slots from ``2 lo``;
        returns the number of clusters (see the module docstring)."""
        base = 2 * lo
        n_clusters = density(z, e2, lo, hi, cuts, nn, parent, cid)
        fit(z, e2, lo, hi, cid, base, n_clusters, cuts[CUT_FIT_CHI2_MAX], zv, wv, chi2, ndof)
        if cuts[CUT_SPLIT] != 0.0:
            n_clusters = split(z, e2, lo, hi, cid, base, n_clusters, cuts, zv, chi2, ndof, zz,
                               side)
        fit(z, e2, lo, hi, cid, base, n_clusters, cuts[CUT_FINAL_FIT_CHI2_MAX], zv, wv, chi2,
            ndof)
        for c in range(base, base + n_clusters):
            n[c] = 0
            sum_pt2[c] = 0.0
        for i in range(lo, hi):
            if cid[i] >= 0:
                c = base + cid[i]
                n[c] += 1
                sum_pt2[c] = add(sum_pt2[c], pt2[i])
        return n_clusters

    compatible = jit(compatible)
    density = jit(density)
    fit = jit(fit)
    split = jit(split)
    return jit(event)


_event_cpu = _make(numba.njit(cache=True, inline="always"), *CPU_OPS)
_event_cuda = _make(cuda.jit(device=True), *CUDA_OPS)


@numba.njit(parallel=True, nogil=True, cache=True)
def vertices_cpu(offsets, z, e2, pt2, cuts, nn, parent, cid, zz, side, zv, wv, chi2, ndof, n,
                 sum_pt2, n_clusters):
    """Every event in parallel (see the module docstring); ``n_clusters[e]`` its clusters."""
    for e in numba.prange(offsets.shape[0] - 1):
        n_clusters[e] = _event_cpu(z, e2, pt2, offsets[e], offsets[e + 1], cuts, nn, parent,
                                   cid, zz, side, zv, wv, chi2, ndof, n, sum_pt2)


@cuda.jit(cache=True)
def vertices_cuda(offsets, z, e2, pt2, cuts, nn, parent, cid, zz, side, zv, wv, chi2, ndof, n,
                  sum_pt2, n_clusters):
    """One thread per event ``e`` (see the module docstring)."""
    e = cuda.grid(1)
    if e < n_clusters.shape[0]:
        n_clusters[e] = _event_cuda(z, e2, pt2, offsets[e], offsets[e + 1], cuts, nn, parent,
                                    cid, zz, side, zv, wv, chi2, ndof, n, sum_pt2)
