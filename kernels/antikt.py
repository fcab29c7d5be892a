"""Anti-kT clustering kernels that reproduce FastJet's merge sequence, ties included.

Definitions (FastJet 3.5, ``PseudoJet`` and ``ClusterSequence``), all float64:

* rapidity and azimuth of a 4-vector ``(px, py, pz, E)``: :func:`rap_phi` (phi in [0, 2 pi);
  ``E == |pz|`` with ``pT == 0`` gives ``+-(1e5 + |pz|)``; a tachyonic mass counts as 0);
* the momentum factor of anti-kT ``k = 1 / kt2`` (``1e300`` when ``kt2 <= 1e-300``);
* the geometric distance ``dR2 = dphi^2 + drap^2`` with ``dphi = |phi_i - phi_j|`` folded to
  ``2 pi - dphi`` above pi (:func:`dist`);
* each jet's nearest neighbour (NN) is the closest jet with ``dR2 < R^2`` strictly (else the
  beam), and its ``diJ = dR2_NN * min(k_i, k_NN)`` (``R^2 k_i`` for the beam).  FastJet
  compares these unnormalised values (the ``1/R^2`` of the textbook ``d_ij`` is applied after),
  so we do too; the global minimum ``diJ`` is merged (E-scheme) or, for the beam, becomes a jet.

Ties.  FastJet's choice among equal distances depends on its strategy.  We reproduce the one of
its plain N^2 strategy (``N2Plain``, ``ClusterSequence_N2.icc``), which is a function of *slots*:
jets live in an array of ``n_active`` slots (inputs start in slot = input index); a merge of the
jets in slots ``sa > sb`` puts the new jet in ``sb`` and moves the jet of the last slot into
``sa``; a beam step moves the last slot into the freed one.  Then

* the step merges the jet of the smallest slot among those with the minimal ``diJ``;
* a NN found by a search is the smallest slot among the jets at the minimal distance (initially
  slot = input index);
* after a step, a jet whose NN was one of the two removed jets searches again; any other jet
  takes the new jet as NN only if it is *strictly* closer than its NN (an equally close new jet
  does not replace it); the new jet's NN is found by a search.

Every backend here follows these rules, so that reference, cpu and cuda give the same jets and
constituents, and the same as FastJet run with ``N2Plain``, exact ties included (FastJet's
tiled strategies, its default at these multiplicities, break exact ties otherwise; for inputs
without exact ties every strategy gives the same jets).

Rounding.  Every float operation that decides a merge (kt2, the rapidity's argument, the
azimuth's wrap, dR2, 1/kt2, diJ) is one IEEE-754 float64 operation rounded to nearest, in the
same order on every backend: the functions are written once (:func:`_make`) on arithmetic
helpers, plain operators for Python and Numba's CPU target, libdevice's ``dmul_rn``,
``dadd_rn`` and ``ddiv_rn`` for CUDA (``a - b`` as ``dadd_rn(a, -b)``), which NVVM never
contracts into an FMA (it contracts ``a * b + c`` by default, which rounds once instead of
twice).  ``tests/test_ptx.py`` checks the sm_90 PTX.  What remains target-dependent is
``atan2`` and ``log`` themselves (libdevice against the C library, possibly a last-bit
difference).

Strategies:

* ``cluster_event_cpu`` (Numba ``@njit``): tiles of at least ``max(R, 0.1)`` in rapidity and
  azimuth with linked lists per tile, as FastJet's tiled strategies, so a NN search and the
  updates after a step only look at the 3 x 3 tiles around the jets involved; the minimum
  ``diJ`` comes from a tournament tree over slots (ties go to the smaller slot), O(log n) per
  update.  Tiles only bound where to look: a search over the tiles takes the lexicographic
  minimum (distance, slot), which is what a search over all slots finds, so the result does
  not depend on the tiling.  Below ``TILE_MIN_N`` inputs one tile holds everything.  Inputs
  get internal ids in tile order (their slots stay their input indices), so that a tile's
  jets are adjacent in memory; the initial NN search visits each pair of jets once.
* ``antikt_cuda``: one event per block, the slot array in global memory; the minimum ``diJ``
  and the new jet's NN are parallel (value, slot) minimum reductions in shared memory; the NN
  updates run one thread per slot.

Inputs: flat ``px, py, pz, E`` [GeV] with CSR ``offsets`` (n_events + 1).  Outputs, per event
with the input offsets: ``jet_of[i]`` the inclusive jet of input i (0-based, in the order
FastJet's history makes them, i.e. the order of the beam steps), and for each inclusive jet
``jpx, jpy, jpz, jE`` and ``jfirst`` (its smallest input index), rows ``offsets[e] ...
offsets[e] + n_jets[e] - 1``.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from .ieee import CPU_OPS, CUDA_OPS, PY_OPS

#: FastJet's MaxRap: rapidity given to pT = 0, E = |pz| momenta (plus |pz|).
MAX_RAP = 1.0e5
PI = math.pi
TWO_PI = 2.0 * math.pi
#: Below this many inputs the cpu kernel uses a single tile (plain N^2 with NN bookkeeping).
TILE_MIN_N = 48
#: Smallest tile side, as FastJet (tiles of side max(R, 0.1)), widened a little so that two
#: jets closer than R are always in neighbouring tiles despite rounding of the tile index.
MIN_TILE = 0.1
TILE_MARGIN = 1.0 + 1e-6
#: Rapidity range over which tiles are laid out; beyond it the edge tiles take everything.
TILE_RAP_LIMIT = 12.0
INF = math.inf


# ------------------------------------------------------------------------------------------
# Scalar functions, written once: plain Python for the reference, compiled for cpu and cuda
# ------------------------------------------------------------------------------------------
def _make(jit, mul, add, sub, div):
    """``(rap_phi, momentum_factor, dist)`` on the arithmetic ``mul, add, sub, div`` (one of
    :data:`PY_OPS`, :data:`CPU_OPS`, :data:`CUDA_OPS`), each compiled with ``jit``.  Every
    float operation goes through them, in the order of the formulas below (the reference's
    NumPy distances use the same order)."""

    def rap_phi(px, py, pz, e):
        """FastJet's rapidity and azimuth [rad] in [0, 2 pi) of one 4-vector [GeV]:
        ``kt2 = px^2 + py^2``, ``phi = atan2(py, px)``, ``m2 = (E + pz)(E - pz) - kt2``,
        ``rap = -+ log((kt2 + max(m2, 0)) / (E + |pz|)^2) / 2`` (sign of pz)."""
        kt2 = add(mul(px, px), mul(py, py))
        if kt2 == 0.0:
            phi = 0.0
        else:
            phi = math.atan2(py, px)
        if phi < 0.0:
            phi = add(phi, TWO_PI)
        if phi >= TWO_PI:
            phi = sub(phi, TWO_PI)
        apz = abs(pz)
        if e == apz and kt2 == 0.0:
            rap = add(MAX_RAP, apz)
            if pz < 0.0:
                rap = -rap
        else:
            m2 = sub(mul(add(e, pz), sub(e, pz)), kt2)
            eff = m2 if 0.0 < m2 else 0.0
            epz = add(e, apz)
            arg = div(add(kt2, eff), mul(epz, epz))
            if arg > 0.0:
                rap = mul(0.5, math.log(arg))
            elif arg == 0.0:
                rap = -INF
            else:
                rap = math.nan
            if pz > 0.0:
                rap = -rap
        return rap, phi

    def momentum_factor(px, py):
        """Anti-kT's ``1 / kt2`` [GeV^-2], ``kt2 = px^2 + py^2`` [GeV^2]; ``1e300`` for
        ``kt2 <= 1e-300`` (FastJet)."""
        kt2 = add(mul(px, px), mul(py, py))
        if kt2 > 1e-300:
            return div(1.0, kt2)
        return 1e300

    def dist(rap1, phi1, rap2, phi2):
        """FastJet's ``dphi^2 + drap^2`` (dimensionless) with phi [rad] in [0, 2 pi)."""
        dphi = abs(sub(phi1, phi2))
        drap = sub(rap1, rap2)
        if dphi > PI:
            dphi = sub(TWO_PI, dphi)
        return add(mul(dphi, dphi), mul(drap, drap))

    return jit(rap_phi), jit(momentum_factor), jit(dist)


rap_phi, momentum_factor, dist = _make(lambda f: f, *PY_OPS)


def tiling(rap_lo, rap_hi, radius, n):
    """Tile grid ``(rap_min, rap_width, n_rap, phi_width, n_phi)`` for ``n`` inputs whose
    rapidities span ``[rap_lo, rap_hi]``; one tile below ``TILE_MIN_N`` inputs."""
    if n < TILE_MIN_N:
        return 0.0, 1.0, 1, TWO_PI, 1
    side = max(radius, MIN_TILE) * TILE_MARGIN
    lo = max(rap_lo, -TILE_RAP_LIMIT)
    hi = min(rap_hi, TILE_RAP_LIMIT)
    n_rap = 1
    width = 1.0
    if hi > lo:
        n_rap = int((hi - lo) / side)
        if n_rap < 1:
            n_rap = 1
        width = (hi - lo) / n_rap
    n_phi = int(TWO_PI / side)
    if n_phi < 3:
        n_phi = 1
    return lo, width, n_rap, TWO_PI / n_phi, n_phi


def tile_index(rap, phi, rap_min, rap_width, n_rap, phi_width, n_phi):
    """Tile of a (rap, phi) point; out-of-range rapidities go to the edge tiles."""
    x = (rap - rap_min) / rap_width
    if x < 0.0:
        ir = 0
    elif x >= n_rap:
        ir = n_rap - 1
    else:
        ir = int(x)
    ip = int(phi / phi_width)
    if ip >= n_phi:
        ip = n_phi - 1
    return ir * n_phi + ip


def neighbour_tiles(t, n_rap, n_phi, out):
    """Write the tiles around tile ``t`` (itself included, each once) to ``out``; return how
    many."""
    ir = t // n_phi
    ip = t - ir * n_phi
    k = 0
    for dr in range(-1, 2):
        jr = ir + dr
        if jr < 0 or jr >= n_rap:
            continue
        if n_phi >= 3:
            for dp in range(-1, 2):
                jp = ip + dp
                if jp < 0:
                    jp += n_phi
                elif jp >= n_phi:
                    jp -= n_phi
                out[k] = jr * n_phi + jp
                k += 1
        else:
            out[k] = jr * n_phi + ip
            k += 1
    return k


# ------------------------------------------------------------------------------------------
# cpu: tiled NN bookkeeping + tournament tree over slots
# ------------------------------------------------------------------------------------------
_jit = numba.njit(cache=True, inline="always")
_rap_phi_cpu, _mfac_cpu, _dist_cpu = _make(_jit, *CPU_OPS)
_tiling_cpu = _jit(tiling)
_tile_index_cpu = _jit(tile_index)
_neighbours_cpu = _jit(neighbour_tiles)


@numba.njit(cache=True, inline="always")
def _tree_set(val, arg, size, slot, v):
    """Set leaf ``slot`` of the tournament tree to ``v`` and update its ancestors (ties go to
    the left child, i.e. the smaller slot)."""
    i = size + slot
    val[i] = v
    arg[i] = slot
    i >>= 1
    while i >= 1:
        left = 2 * i
        right = left + 1
        if val[right] < val[left]:
            val[i] = val[right]
            arg[i] = arg[right]
        else:
            val[i] = val[left]
            arg[i] = arg[left]
        i >>= 1


@numba.njit(cache=True)
def cluster_event_cpu(px, py, pz, e, radius, jet_of, jpx, jpy, jpz, je, jfirst):
    """Cluster one event of ``n = px.shape[0]`` inputs; fill ``jet_of`` (n,) and the first
    ``n_jets`` rows of ``jpx, jpy, jpz, je, jfirst``; return ``n_jets``."""
    n = px.shape[0]
    if n == 0:
        return 0
    r2 = radius * radius
    m = 2 * n
    # per jet id (inputs 0..n-1, merged jets n..2n-2, in history order)
    x = np.empty(m)
    y = np.empty(m)
    z = np.empty(m)
    en = np.empty(m)
    rap = np.empty(m)
    phi = np.empty(m)
    kf = np.empty(m)
    nnd = np.empty(m)
    dij = np.empty(m)
    nn = np.empty(m, np.int64)
    first = np.empty(m, np.int64)
    parent = np.full(m, -1, np.int64)
    final = np.full(m, -1, np.int64)
    slot_of = np.empty(m, np.int64)
    tile_of = np.empty(m, np.int64)
    nxt = np.empty(m, np.int64)
    prv = np.empty(m, np.int64)
    at_slot = np.empty(n, np.int64)
    # rapidity and azimuth of the inputs, then the tiling they need
    in_rap = np.empty(n)
    in_phi = np.empty(n)
    rap_lo = INF
    rap_hi = -INF
    for i in range(n):
        r, p = _rap_phi_cpu(px[i], py[i], pz[i], e[i])
        in_rap[i] = r
        in_phi[i] = p
        rap_lo = min(rap_lo, r)
        rap_hi = max(rap_hi, r)
    rap_min, rap_w, n_rap, phi_w, n_phi = _tiling_cpu(rap_lo, rap_hi, radius, n)
    n_tiles = n_rap * n_phi
    # internal ids 0..n-1 in tile order (counting sort), so that a tile's jets are adjacent
    # in memory; slots (and hence every tie-break) stay the input indices
    in_tile = np.empty(n, np.int64)
    id_of = np.empty(n, np.int64)
    start = np.zeros(n_tiles + 1, np.int64)
    for i in range(n):
        t = _tile_index_cpu(in_rap[i], in_phi[i], rap_min, rap_w, n_rap, phi_w, n_phi)
        in_tile[i] = t
        start[t + 1] += 1
    for t in range(n_tiles):
        start[t + 1] += start[t]
    fill = start[:n_tiles].copy()
    for i in range(n):
        t = in_tile[i]
        j = fill[t]
        fill[t] += 1
        x[j] = px[i]
        y[j] = py[i]
        z[j] = pz[i]
        en[j] = e[i]
        rap[j] = in_rap[i]
        phi[j] = in_phi[i]
        kf[j] = _mfac_cpu(px[i], py[i])
        first[j] = i
        slot_of[j] = i
        at_slot[i] = j
        id_of[i] = j
        tile_of[j] = t
        nn[j] = -1
        nnd[j] = r2
    head = np.full(n_tiles, -1, np.int64)
    for t in range(n_tiles):
        lo_t = start[t]
        hi_t = start[t + 1]
        if hi_t > lo_t:
            head[t] = lo_t
        for j in range(lo_t, hi_t):
            prv[j] = j - 1 if j > lo_t else -1
            nxt[j] = j + 1 if j + 1 < hi_t else -1
    near = np.empty(9, np.int64)
    union = np.empty(27, np.int64)
    near_c = np.empty(27, np.bool_)
    # initial NN: lexicographic minimum (distance, slot) below R^2; each pair of jets is
    # seen once (same tile, or a neighbouring tile of larger index) and updates both
    for t in range(n_tiles):
        k = _neighbours_cpu(t, n_rap, n_phi, near)
        for i in range(start[t], start[t + 1]):
            ri = rap[i]
            fi = phi[i]
            si = slot_of[i]
            for a in range(k):
                u = near[a]
                if u < t:
                    continue
                j0 = i + 1 if u == t else start[u]
                for j in range(j0, start[u + 1]):
                    d = _dist_cpu(ri, fi, rap[j], phi[j])
                    if d < nnd[i] or (d == nnd[i] and nn[i] >= 0
                                      and slot_of[j] < slot_of[nn[i]]):
                        nnd[i] = d
                        nn[i] = j
                    if d < nnd[j] or (d == nnd[j] and nn[j] >= 0
                                      and si < slot_of[nn[j]]):
                        nnd[j] = d
                        nn[j] = i
    size = 1
    while size < n:
        size *= 2
    tval = np.full(2 * size, INF)
    targ = np.empty(2 * size, np.int64)
    for s in range(size):
        targ[size + s] = s
    for i in range(n):
        kmin = kf[i]
        if nn[i] >= 0 and kf[nn[i]] < kmin:
            kmin = kf[nn[i]]
        dij[i] = nnd[i] * kmin
        tval[size + slot_of[i]] = dij[i]
    for node in range(size - 1, 0, -1):
        left = 2 * node
        if tval[left + 1] < tval[left]:
            tval[node] = tval[left + 1]
            targ[node] = targ[left + 1]
        else:
            tval[node] = tval[left]
            targ[node] = targ[left]

    n_active = n
    next_id = n
    n_jets = 0
    while n_active > 0:
        ja = at_slot[targ[1]]
        jb = nn[ja]
        pair = jb >= 0
        sa = slot_of[ja]
        tail = n_active - 1
        jc = -1
        sb = -1
        if pair:
            sb = slot_of[jb]
            if sa < sb:
                ja, jb = jb, ja
                sa, sb = sb, sa
            jc = next_id
            next_id += 1
            x[jc] = x[ja] + x[jb]
            y[jc] = y[ja] + y[jb]
            z[jc] = z[ja] + z[jb]
            en[jc] = en[ja] + en[jb]
            r, p = _rap_phi_cpu(x[jc], y[jc], z[jc], en[jc])
            rap[jc] = r
            phi[jc] = p
            kf[jc] = _mfac_cpu(x[jc], y[jc])
            first[jc] = min(first[ja], first[jb])
            parent[ja] = jc
            parent[jb] = jc
            nn[jc] = -1
            nnd[jc] = r2
        else:
            final[ja] = n_jets
            jpx[n_jets] = x[ja]
            jpy[n_jets] = y[ja]
            jpz[n_jets] = z[ja]
            je[n_jets] = en[ja]
            jfirst[n_jets] = first[ja]
            n_jets += 1
        # the tiles whose jets may need an update: around the removed and the new jets
        nu = 0
        for w in range(3):
            jw = ja if w == 0 else (jb if w == 1 else jc)
            if jw < 0:
                continue
            t = tile_of[jw]
            if w == 2:
                t = _tile_index_cpu(rap[jc], phi[jc], rap_min, rap_w, n_rap, phi_w, n_phi)
                tile_of[jc] = t
            k = _neighbours_cpu(t, n_rap, n_phi, near)
            for a in range(k):
                seen = False
                for b in range(nu):
                    if union[b] == near[a]:
                        seen = True
                        if w == 2:
                            near_c[b] = True
                        break
                if not seen:
                    union[nu] = near[a]
                    near_c[nu] = w == 2
                    nu += 1
        # remove A (and B) from their tiles, insert C
        for w in range(2):
            jw = ja if w == 0 else jb
            if jw < 0:
                continue
            if prv[jw] >= 0:
                nxt[prv[jw]] = nxt[jw]
            else:
                head[tile_of[jw]] = nxt[jw]
            if nxt[jw] >= 0:
                prv[nxt[jw]] = prv[jw]
        if pair:
            t = tile_of[jc]
            nxt[jc] = head[t]
            prv[jc] = -1
            if head[t] >= 0:
                prv[head[t]] = jc
            head[t] = jc
        # slots: C takes sb, the last slot's jet moves into sa
        jt = at_slot[tail]
        _tree_set(tval, targ, size, tail, INF)
        if pair:
            at_slot[sb] = jc
            slot_of[jc] = sb
        if sa != tail:
            at_slot[sa] = jt
            slot_of[jt] = sa
            _tree_set(tval, targ, size, sa, dij[jt])
        n_active -= 1
        # NN updates
        cbest = r2
        cj = -1
        for u in range(nu):
            i = head[union[u]]
            check_c = pair and near_c[u]
            while i >= 0:
                if i != jc:
                    changed = False
                    if nn[i] == ja or (pair and nn[i] == jb):
                        best = r2
                        bj = -1
                        k = _neighbours_cpu(tile_of[i], n_rap, n_phi, near)
                        for a in range(k):
                            j = head[near[a]]
                            while j >= 0:
                                if j != i:
                                    d = _dist_cpu(rap[i], phi[i], rap[j], phi[j])
                                    if d < best or (d == best and bj >= 0
                                                    and slot_of[j] < slot_of[bj]):
                                        best = d
                                        bj = j
                                j = nxt[j]
                        nn[i] = bj
                        nnd[i] = best
                        changed = True
                    if check_c:  # jets outside C's tiles are at least R from it
                        d = _dist_cpu(rap[i], phi[i], rap[jc], phi[jc])
                        if d < nnd[i]:
                            nn[i] = jc
                            nnd[i] = d
                            changed = True
                        if d < cbest or (d == cbest and cj >= 0 and slot_of[i] < slot_of[cj]):
                            cbest = d
                            cj = i
                    if changed:
                        kmin = kf[i]
                        if nn[i] >= 0 and kf[nn[i]] < kmin:
                            kmin = kf[nn[i]]
                        dij[i] = nnd[i] * kmin
                        _tree_set(tval, targ, size, slot_of[i], dij[i])
                i = nxt[i]
        if pair:
            nn[jc] = cj
            nnd[jc] = cbest
            kmin = kf[jc]
            if cj >= 0 and kf[cj] < kmin:
                kmin = kf[cj]
            dij[jc] = cbest * kmin
            _tree_set(tval, targ, size, sb, dij[jc])
    # each input's jet: parents have larger ids than their children
    for i in range(next_id - 1, -1, -1):
        if parent[i] >= 0:
            final[i] = final[parent[i]]
    for i in range(n):
        jet_of[i] = final[id_of[i]]
    return n_jets


@numba.njit(parallel=True, cache=True)
def antikt_cpu(px, py, pz, e, offsets, radius, jet_of, jpx, jpy, jpz, je, jfirst, n_jets):
    """Cluster every event (in parallel over events); see the module docstring."""
    for ev in numba.prange(offsets.shape[0] - 1):
        lo = offsets[ev]
        hi = offsets[ev + 1]
        n_jets[ev] = cluster_event_cpu(px[lo:hi], py[lo:hi], pz[lo:hi], e[lo:hi], radius,
                                       jet_of[lo:hi], jpx[lo:hi], jpy[lo:hi], jpz[lo:hi],
                                       je[lo:hi], jfirst[lo:hi])


@numba.njit(cache=True)
def antikt_serial_cpu(px, py, pz, e, offsets, radius, jet_of, jpx, jpy, jpz, je, jfirst,
                      n_jets):
    """:func:`antikt_cpu` on one core (for benchmarks per core)."""
    for ev in range(offsets.shape[0] - 1):
        lo = offsets[ev]
        hi = offsets[ev + 1]
        n_jets[ev] = cluster_event_cpu(px[lo:hi], py[lo:hi], pz[lo:hi], e[lo:hi], radius,
                                       jet_of[lo:hi], jpx[lo:hi], jpy[lo:hi], jpz[lo:hi],
                                       je[lo:hi], jfirst[lo:hi])


# ------------------------------------------------------------------------------------------
# cuda: one event per block, FastJet's N2Plain slot array, parallel minimum reductions
# ------------------------------------------------------------------------------------------
#: Threads per block of :func:`antikt_cuda` (a power of two: the reductions halve it); fewer
#: under the CUDA simulator, where every thread is a Python thread.
CUDA_THREADS = 32 if numba.config.ENABLE_CUDASIM else 128

_dev = cuda.jit(device=True)
_rap_phi_cuda, _mfac_cuda, _dist_cuda = _make(_dev, *CUDA_OPS)
_mul_cuda = CUDA_OPS[0]


@cuda.jit(device=True)
def _block_argmin(sval, sarg, tid):
    """Minimum (value, slot) of the block's ``sval/sarg`` (ties: smaller slot) into entry 0."""
    step = CUDA_THREADS // 2
    while step > 0:
        cuda.syncthreads()
        if tid < step:
            v = sval[tid + step]
            a = sarg[tid + step]
            if v < sval[tid] or (v == sval[tid] and a >= 0 and (sarg[tid] < 0 or a < sarg[tid])):
                sval[tid] = v
                sarg[tid] = a
        step //= 2
    cuda.syncthreads()


@cuda.jit(device=True)
def _nearest_cuda(rap, phi, lo, i, n_slots, r2):
    """(slot, distance) of slot ``i``'s nearest neighbour among slots ``0..n_slots-1`` within
    ``r2`` (first minimum over slots; slot -1 and ``r2`` when none is nearer)."""
    best = r2
    bj = -1
    for j in range(n_slots):
        if j != i:
            d = _dist_cuda(rap[lo + i], phi[lo + i], rap[lo + j], phi[lo + j])
            if d < best:
                best = d
                bj = j
    return bj, best


@cuda.jit(device=True)
def _set_dij_cuda(kf, nn, nnd, dij, lo, i):
    """``dij[i] = nnd[i] * min(kf[i], kf[nn[i]])`` [GeV^-2] (FastJet's diJ, unnormalised;
    the product exactly rounded, as on the cpu)."""
    kmin = kf[lo + i]
    if nn[lo + i] >= 0 and kf[lo + nn[lo + i]] < kmin:
        kmin = kf[lo + nn[lo + i]]
    dij[lo + i] = _mul_cuda(nnd[lo + i], kmin)


@cuda.jit(cache=True)
def antikt_cuda(px, py, pz, e, offsets, radius, jet_of, jpx, jpy, jpz, je, jfirst, n_jets,
                rap, phi, kf, nnd, dij, dnew, nn, sid, hx, hy, hz, he, hfirst, hparent, hfinal):
    """One block per event.  Scratch: per input row ``rap, phi, kf, nnd, dij, dnew`` (float64)
    and ``nn, sid`` (int64), indexed by slot; per 2 * input row ``hx, hy, hz, he`` (float64)
    and ``hfirst, hparent, hfinal`` (int64), indexed by jet id (2 * offsets[e] + id)."""
    ev = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    if ev >= offsets.shape[0] - 1:
        return
    lo = offsets[ev]
    n = offsets[ev + 1] - lo
    hlo = 2 * lo
    r2 = radius * radius
    sval = cuda.shared.array(CUDA_THREADS, numba.float64)
    sarg = cuda.shared.array(CUDA_THREADS, numba.int64)
    # state shared by the block: active, sa, sb, tail, pair, next_id, n_jets
    st = cuda.shared.array(8, numba.int64)
    for i in range(tid, n, CUDA_THREADS):
        r, p = _rap_phi_cuda(px[lo + i], py[lo + i], pz[lo + i], e[lo + i])
        rap[lo + i] = r
        phi[lo + i] = p
        kf[lo + i] = _mfac_cuda(px[lo + i], py[lo + i])
        sid[lo + i] = i
        hx[hlo + i] = px[lo + i]
        hy[hlo + i] = py[lo + i]
        hz[hlo + i] = pz[lo + i]
        he[hlo + i] = e[lo + i]
        hfirst[hlo + i] = i
    for i in range(tid, 2 * n, CUDA_THREADS):
        hparent[hlo + i] = -1
        hfinal[hlo + i] = -1
    if tid == 0:
        st[0] = n
        st[5] = n
        st[6] = 0
    cuda.syncthreads()
    # initial NN: first minimum over slots (= input index)
    for i in range(tid, n, CUDA_THREADS):
        nn[lo + i], nnd[lo + i] = _nearest_cuda(rap, phi, lo, i, n, r2)
    cuda.syncthreads()
    for i in range(tid, n, CUDA_THREADS):
        _set_dij_cuda(kf, nn, nnd, dij, lo, i)
    cuda.syncthreads()
    while st[0] > 0:
        active = st[0]
        # 1. the step: first minimum of diJ over slots
        best = INF
        bs = -1
        for s in range(tid, active, CUDA_THREADS):
            if bs < 0 or dij[lo + s] < best:
                best = dij[lo + s]
                bs = s
        sval[tid] = best
        sarg[tid] = bs
        _block_argmin(sval, sarg, tid)
        # 2. one thread merges and moves slots
        if tid == 0:
            sa = sarg[0]
            sb = nn[lo + sa]
            tail = active - 1
            if sb >= 0:
                if sa < sb:
                    sa, sb = sb, sa
                ia = hlo + sid[lo + sa]
                ib = hlo + sid[lo + sb]
                c = st[5]
                st[5] = c + 1
                ic = hlo + c
                hx[ic] = hx[ia] + hx[ib]
                hy[ic] = hy[ia] + hy[ib]
                hz[ic] = hz[ia] + hz[ib]
                he[ic] = he[ia] + he[ib]
                hfirst[ic] = min(hfirst[ia], hfirst[ib])
                hparent[ia] = c
                hparent[ib] = c
                r, p = _rap_phi_cuda(hx[ic], hy[ic], hz[ic], he[ic])
                rap[lo + sb] = r
                phi[lo + sb] = p
                kf[lo + sb] = _mfac_cuda(hx[ic], hy[ic])
                sid[lo + sb] = c
                nn[lo + sb] = -1
                nnd[lo + sb] = r2
                st[4] = 1
            else:
                ia = hlo + sid[lo + sa]
                k = st[6]
                hfinal[ia] = k
                jpx[lo + k] = hx[ia]
                jpy[lo + k] = hy[ia]
                jpz[lo + k] = hz[ia]
                je[lo + k] = he[ia]
                jfirst[lo + k] = hfirst[ia]
                st[6] = k + 1
                st[4] = 0
            # the last slot's jet moves into sa
            rap[lo + sa] = rap[lo + tail]
            phi[lo + sa] = phi[lo + tail]
            kf[lo + sa] = kf[lo + tail]
            nnd[lo + sa] = nnd[lo + tail]
            nn[lo + sa] = nn[lo + tail]
            dij[lo + sa] = dij[lo + tail]
            sid[lo + sa] = sid[lo + tail]
            st[1] = sa
            st[2] = sb
            st[3] = tail
            st[0] = active - 1
        cuda.syncthreads()
        active = st[0]
        sa = st[1]
        sb = st[2]
        tail = st[3]
        pair = st[4] == 1
        # 3. NN updates, one thread per slot
        for i in range(tid, active, CUDA_THREADS):
            if pair and i == sb:
                dnew[lo + i] = INF
                continue
            changed = False
            if nn[lo + i] == sa or (pair and nn[lo + i] == sb):
                nn[lo + i], nnd[lo + i] = _nearest_cuda(rap, phi, lo, i, active, r2)
                changed = True
            elif nn[lo + i] == tail:
                nn[lo + i] = sa
            if pair:
                d = _dist_cuda(rap[lo + i], phi[lo + i], rap[lo + sb], phi[lo + sb])
                dnew[lo + i] = d
                if d < nnd[lo + i]:
                    nn[lo + i] = sb
                    nnd[lo + i] = d
                    changed = True
            if changed:
                _set_dij_cuda(kf, nn, nnd, dij, lo, i)
        cuda.syncthreads()
        # 4. the new jet's NN: first minimum of its distances over slots
        if pair:
            best = r2
            bs = -1
            for s in range(tid, active, CUDA_THREADS):
                if dnew[lo + s] < best:
                    best = dnew[lo + s]
                    bs = s
            sval[tid] = best
            sarg[tid] = bs
            _block_argmin(sval, sarg, tid)
            if tid == 0:
                nn[lo + sb] = sarg[0]
                nnd[lo + sb] = sval[0]
                _set_dij_cuda(kf, nn, nnd, dij, lo, sb)
        cuda.syncthreads()
    if tid == 0:
        for i in range(st[5] - 1, -1, -1):
            if hparent[hlo + i] >= 0:
                hfinal[hlo + i] = hfinal[hlo + hparent[hlo + i]]
        n_jets[ev] = st[6]
    cuda.syncthreads()
    for i in range(tid, n, CUDA_THREADS):
        jet_of[lo + i] = hfinal[hlo + i]
