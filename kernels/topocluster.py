"""Topological clustering (4-2-0) of calorimeter cells: Numba CPU and CUDA kernels.

The rules are stated in :mod:`hltemu.stages.topocluster`; these kernels implement them on flat
arrays and know nothing of the detector beyond a neighbour graph:

* cells of a batch are rows (``cell_id``, ``sig`` = ``|E| / sigma_noise``, float64) grouped by
  event with CSR ``offsets`` (n_events + 1);
* the neighbour graph is CSR over *cell ids*, ``nbr_offsets`` (int64, n_ids + 1) and
  ``nbr_index`` (int32), symmetric;
* ``slot`` (int32, ``(n_events, n_ids)``) maps ``(event, cell id)`` to the cell's row within its
  event, -1 when the event does not hold that cell; so an input may hold any subset of the
  cells, in any order.

A cluster is named by its *label seed*, the row of its best seed (:func:`_better`: higher
significance, then lower cell id).  The labelling kernels write ``label[r]``: the global row of
the label seed of the cluster cell ``r`` belongs to, or -1.

``cpu``: one event per ``prange`` iteration, the seed-queue algorithm of the reference (seeds
in rank order, each unlabelled seed floods its component of growing cells; then perimeter cells
are handed out cluster by cluster in rank order, first come first served).

``cuda``: tag propagation.  Every growing cell carries a tag (its own row when it is a seed,
else -1); :func:`propagate_tags_cuda` runs one thread per growing cell, which takes the best tag
among itself and its growing neighbours, until a launch changes nothing (device flag).  Only
the thread of cell ``r`` writes ``tag[r]``, tags only ever improve, and a tag is always a seed of
the cell's component; a reader sees a neighbour's old or new tag (aligned 64-bit loads and
stores do not tear), both valid, so the order threads run in (sequential in the simulator,
concurrent on a GPU) changes how many launches it takes, never the result: after a launch in
which no thread changed anything, every growing cell holds the best tag of its neighbours,
hence the same tag over a whole component, which must be the component's best seed.  Then
:func:`mark_perimeter_cuda` flags the perimeter candidates next to cluster cells (threads may
store the same 1 concurrently: benign) and :func:`assign_perimeter_cuda` gives each flagged
cell the best tag among its cluster-cell neighbours (reads only the final tags of growing
cells, writes only its own).

Cluster kinematics (:func:`cluster_kinematics_cpu` / :func:`cluster_kinematics_cuda`: energy,
energy of the ECAL rows ``row_em``, eta, phi, cell count): one
cluster per iteration / thread over its member rows in ascending row order, so the sums run in
the same order on both, and every operation is exactly rounded on both (libdevice's
``dmul_rn``/``dadd_rn``/... on CUDA, which NVVM never fuses into an FMA), so they agree bit for
bit.

Rounding.  No float arithmetic decides cluster membership here: the significances arrive
computed (one IEEE division in the stage), and the kernels only compare them with the
thresholds and with each other (:func:`_better`).  ``tests/test_ptx.py`` checks that the
labelling kernels' sm_90 PTX holds no FMA, and neither does the kinematics kernel.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from .ieee import CPU_OPS, CUDA_OPS

TWO_PI = 2.0 * math.pi


# -- scalar functions, compiled for both targets ----------------------------------------------
def _better(a, b, sig, cell_id):
    """True when seed row ``a`` outranks seed row ``b``: higher significance, then lower id."""
    if sig[a] != sig[b]:
        return sig[a] > sig[b]
    return cell_id[a] < cell_id[b]


def _neighbour_row(e, base, k, slot, nbr_index):
    """Global row of the ``k``-th neighbour entry in event ``e`` (rows from ``base``), or -1."""
    q = slot[e, nbr_index[k]]
    if q < 0:
        return -1
    return base + q


def _make(jit, mul, add, sub, div):
    """The target's device functions ``(better, neighbour_row, cluster_sums)``, compiled with
    ``jit``; the kinematics on the arithmetic ``mul, add, sub, div`` (one of the sets
    ``PY_OPS``, ``CPU_OPS``, ``CUDA_OPS`` of :mod:`hltemu.kernels.ieee`: exactly rounded, so
    that CUDA does not fuse ``a * b + c`` into an FMA and cpu and cuda sums agree bit for bit).
    """
    better = jit(_better)
    neighbour_row = jit(_neighbour_row)

    def wrap(x):
        """``x`` [rad] wrapped into ``[-pi, pi)``: ``x - 2 pi floor((x + pi) / 2 pi)``."""
        return sub(x, mul(TWO_PI, math.floor(div(add(x, math.pi), TWO_PI))))

    wrap = jit(wrap)

    def cluster_sums(k, members, member_offsets, energy, row_em, row_eta, row_phi, seed_row,
                     out_energy, out_energy_em, out_eta, out_phi, out_n):
        """Kinematics of cluster ``k`` from its member rows ``members[member_offsets[k]:
        member_offsets[k + 1]]`` (ascending rows).

        energy [GeV] = sum E; energy_em [GeV] = sum E over the rows with ``row_em != 0`` (the
        cells of ECAL layers), in the same order; eta = sum |E| eta / sum |E|; phi [rad] =
        seed phi + sum |E| dphi / sum |E|, with dphi a member's phi minus the seed's wrapped
        into [-pi, pi), then wrapped into [-pi, pi).  ``sum |E| > 0`` always: the seed has
        ``|E| > 0``.
        """
        phi0 = row_phi[seed_row[k]]
        s_e = 0.0
        s_em = 0.0
        s_w = 0.0
        s_eta = 0.0
        s_dphi = 0.0
        lo = member_offsets[k]
        hi = member_offsets[k + 1]
        for i in range(lo, hi):
            r = members[i]
            en = energy[r]
            w = abs(en)
            s_e = add(s_e, en)
            if row_em[r] != 0:
                s_em = add(s_em, en)
            s_w = add(s_w, w)
            s_eta = add(s_eta, mul(w, row_eta[r]))
            s_dphi = add(s_dphi, mul(w, wrap(sub(row_phi[r], phi0))))
        out_energy[k] = s_e
        out_energy_em[k] = s_em
        out_eta[k] = div(s_eta, s_w)
        out_phi[k] = wrap(add(phi0, div(s_dphi, s_w)))
        out_n[k] = hi - lo

    return better, neighbour_row, jit(cluster_sums)


_better_cpu, _neighbour_row_cpu, _cluster_sums_cpu = _make(
    numba.njit(inline="always", cache=True), *CPU_OPS)
_better_cuda, _neighbour_row_cuda, _cluster_sums_cuda = _make(cuda.jit(device=True), *CUDA_OPS)


# -- CPU ----------------------------------------------------------------------------------------
@numba.njit(parallel=True, nogil=True, cache=True)
def label_cells_cpu(cell_id, sig, offsets, slot, nbr_offsets, nbr_index, t_seed, t_grow,
                    t_perim, label):
    """``label[r]``: global row of the label seed of cell ``r``'s cluster, or -1 (int64).

    One event per ``prange`` iteration; see the module docstring.
    """
    for e in numba.prange(offsets.shape[0] - 1):
        lo = offsets[e]
        hi = offsets[e + 1]
        for r in range(lo, hi):
            label[r] = -1
        n_seed = 0
        for r in range(lo, hi):
            if sig[r] > t_seed:
                n_seed += 1
        seeds = np.empty(n_seed, dtype=np.int64)
        j = 0
        for r in range(lo, hi):
            if sig[r] > t_seed:
                seeds[j] = r
                j += 1
        # rank order: significance descending, then cell id ascending (two stable sorts)
        seeds = seeds[np.argsort(cell_id[seeds], kind="mergesort")]
        seeds = seeds[np.argsort(-sig[seeds], kind="mergesort")]
        # growth: each seed not yet in a cluster floods its component of growing cells; the
        # queue keeps every cluster's cells contiguous, [start[j], start[j + 1])
        queue = np.empty(hi - lo, dtype=np.int64)
        start = np.empty(n_seed + 1, dtype=np.int64)
        owner = np.empty(n_seed, dtype=np.int64)
        n_q = 0
        n_cl = 0
        for j in range(n_seed):
            s = seeds[j]
            if label[s] >= 0:
                continue
            owner[n_cl] = s
            start[n_cl] = n_q
            n_cl += 1
            label[s] = s
            queue[n_q] = s
            n_q += 1
            head = n_q - 1
            while head < n_q:
                r = queue[head]
                head += 1
                c = cell_id[r]
                for k in range(nbr_offsets[c], nbr_offsets[c + 1]):
                    q = _neighbour_row_cpu(e, lo, k, slot, nbr_index)
                    if q >= 0 and label[q] < 0 and sig[q] > t_grow:
                        label[q] = s
                        queue[n_q] = q
                        n_q += 1
        start[n_cl] = n_q
        # perimeter: clusters in rank order, so a cell touching several joins the best
        for j in range(n_cl):
            s = owner[j]
            for i in range(start[j], start[j + 1]):
                c = cell_id[queue[i]]
                for k in range(nbr_offsets[c], nbr_offsets[c + 1]):
                    q = _neighbour_row_cpu(e, lo, k, slot, nbr_index)
                    if q >= 0 and label[q] < 0 and sig[q] > t_perim and sig[q] <= t_grow:
                        label[q] = s


@numba.njit(parallel=True, nogil=True, cache=True)
def cluster_kinematics_cpu(members, member_offsets, energy, row_em, row_eta, row_phi,
                           seed_row, out_energy, out_energy_em, out_eta, out_phi, out_n):
    """Energy and ECAL energy [GeV], eta, phi [rad] and cell count of every cluster (see
    :func:`_cluster_sums`; ``row_em`` (uint8): 1 for the rows of ECAL cells)."""
    for k in numba.prange(seed_row.shape[0]):
        _cluster_sums_cpu(k, members, member_offsets, energy, row_em, row_eta, row_phi,
                          seed_row, out_energy, out_energy_em, out_eta, out_phi, out_n)


# -- CUDA ---------------------------------------------------------------------------------------
@cuda.jit(device=True)
def _best_grow_tag_cuda(r, best, row_event, offsets, cell_id, sig, t_grow, slot, nbr_offsets,
                        nbr_index, tag):
    """The best of ``best`` and the tags of row ``r``'s growing neighbours (-1: none)."""
    e = row_event[r]
    base = offsets[e]
    c = cell_id[r]
    for k in range(nbr_offsets[c], nbr_offsets[c + 1]):
        q = _neighbour_row_cuda(e, base, k, slot, nbr_index)
        if q >= 0 and sig[q] > t_grow:
            t = tag[q]
            if t >= 0 and (best < 0 or _better_cuda(t, best, sig, cell_id)):
                best = t
    return best


@cuda.jit(cache=True)
def propagate_tags_cuda(work, row_event, offsets, cell_id, sig, t_grow, slot, nbr_offsets,
                        nbr_index, tag, changed):
    """One thread per growing cell ``work[i]``: take the best tag of itself and its growing
    neighbours; set ``changed[0] = 1`` when the tag improved."""
    i = cuda.grid(1)
    if i >= work.shape[0]:
        return
    r = work[i]
    own = tag[r]
    best = _best_grow_tag_cuda(r, own, row_event, offsets, cell_id, sig, t_grow, slot,
                               nbr_offsets, nbr_index, tag)
    if best != own:
        tag[r] = best
        changed[0] = 1


@cuda.jit(cache=True)
def mark_perimeter_cuda(work, row_event, offsets, cell_id, sig, t_grow, t_perim, slot,
                        nbr_offsets, nbr_index, tag, mark):
    """One thread per growing cell ``work[i]``: when it is in a cluster, set ``mark[q] = 1`` for
    each neighbour ``q`` that is a perimeter candidate (``t_perim < sig <= t_grow``)."""
    i = cuda.grid(1)
    if i >= work.shape[0]:
        return
    r = work[i]
    if tag[r] < 0:
        return
    e = row_event[r]
    base = offsets[e]
    c = cell_id[r]
    for k in range(nbr_offsets[c], nbr_offsets[c + 1]):
        q = _neighbour_row_cuda(e, base, k, slot, nbr_index)
        if q >= 0 and sig[q] > t_perim and sig[q] <= t_grow:
            mark[q] = 1


@cuda.jit(cache=True)
def assign_perimeter_cuda(work, row_event, offsets, cell_id, sig, t_grow, slot, nbr_offsets,
                          nbr_index, tag):
    """One thread per perimeter candidate ``work[i]``: its tag becomes the best tag among its
    neighbours that are cluster cells (growing cells with a tag)."""
    i = cuda.grid(1)
    if i >= work.shape[0]:
        return
    r = work[i]
    tag[r] = _best_grow_tag_cuda(r, -1, row_event, offsets, cell_id, sig, t_grow, slot,
                                 nbr_offsets, nbr_index, tag)


@cuda.jit(cache=True)
def cluster_kinematics_cuda(members, member_offsets, energy, row_em, row_eta, row_phi,
                            seed_row, out_energy, out_energy_em, out_eta, out_phi, out_n):
    """One thread per cluster: same arguments and result as :func:`cluster_kinematics_cpu`."""
    k = cuda.grid(1)
    if k < seed_row.shape[0]:
        _cluster_sums_cuda(k, members, member_offsets, energy, row_em, row_eta, row_phi,
                           seed_row, out_energy, out_energy_em, out_eta, out_phi, out_n)
