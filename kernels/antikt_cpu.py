"""Anti-kT, cpu strategy: tiled nearest-neighbour bookkeeping and a tournament tree.

The rules (FastJet's ``N2Plain`` merge sequence, ties included), the rounding, the inputs and
the outputs are those of :mod:`hltemu.kernels.antikt`; its ``rap_phi``, ``momentum_factor``
and ``dist`` are compiled here (``_make`` on :data:`~hltemu.kernels.ieee.CPU_OPS`), and every
float operation that decides a merge goes through them.

``cluster_event_cpu`` (Numba ``@njit``) clusters one event: tiles of at least ``max(R, 0.1)``
in rapidity and azimuth with linked lists per tile, as FastJet's tiled strategies, so a NN
search and the updates after a step only look at the 3 x 3 tiles around the jets involved; the
minimum ``diJ`` comes from a tournament tree over slots (ties go to the smaller slot),
O(log n) per update.  Tiles only bound where to look: a search over the tiles takes the
lexicographic minimum (distance, slot), which is what a search over all slots finds, so the
result does not depend on the tiling.  Below ``TILE_MIN_N`` inputs one tile holds everything.
Inputs get internal ids in tile order (their slots stay their input indices), so that a tile's
jets are adjacent in memory; the initial NN search visits each pair of jets once.
``antikt_cpu`` runs it in parallel over events, ``antikt_serial_cpu`` on one core.

Numba cache (``cache=True``): a cached kernel is invalidated by its own file only, and the
kernels here compile in code of ``kernels/antikt.py`` (``_make``, ``MAX_RAP``, ``PI``,
``TWO_PI``, ``INF``, ``NAN``) and ``kernels/ieee.py`` (``CPU_OPS``).  After editing either,
clear this module's cache (``kernels/__pycache__/antikt_cpu.*``, the ``.nbi`` and ``.nbc``
files).

Non-finite rapidities (FastJet's, of inputs with ``E + |pz| == 0``: see
:mod:`hltemu.kernels.antikt`) are clustered as FastJet does: the rapidity range that sizes the
tiles skips NaN, :func:`tile_index` puts a NaN position in tile 0 and infinite rapidities in
the edge tiles, and the distance comparisons (``d < best``) never take a NaN distance.
"""

from __future__ import annotations

import numba
import numpy as np

from .antikt import INF, TWO_PI, _make
from .ieee import CPU_OPS

#: Below this many inputs the cpu kernel uses a single tile (plain N^2 with NN bookkeeping).
TILE_MIN_N = 48
#: Smallest tile side, as FastJet (tiles of side max(R, 0.1)), widened a little so that two
#: jets closer than R are always in neighbouring tiles despite rounding of the tile index.
MIN_TILE = 0.1
TILE_MARGIN = 1.0 + 1e-6
#: Rapidity range over which tiles are laid out; beyond it the edge tiles take everything.
TILE_RAP_LIMIT = 12.0


# ------------------------------------------------------------------------------------------
# Tiles in rapidity x azimuth (plain Python, compiled below)
# ------------------------------------------------------------------------------------------
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
    """Tile of a (rap, phi) point [rad for phi]; out-of-range rapidities go to the edge tiles,
    a NaN position to tile 0 (a NaN rapidity is at no finite distance from anything, so any
    tile will do; ``int(nan)`` is undefined in compiled code)."""
    x = (rap - rap_min) / rap_width
    if x >= n_rap:
        ir = n_rap - 1
    elif x >= 0.0:
        ir = int(x)
    else:  # negative or NaN
        ir = 0
    q = phi / phi_width
    if q >= n_phi:
        ip = n_phi - 1
    elif q >= 0.0:
        ip = int(q)
    else:
        ip = 0
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
# Compiled kinematics and tiling, and the tournament tree: inlined into the kernels
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


# ------------------------------------------------------------------------------------------
# Kernels: one event, then every event (in parallel, or on one core)
# ------------------------------------------------------------------------------------------
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
        if r < rap_lo:  # comparisons, not min/max: a NaN rapidity leaves the range alone
            rap_lo = r
        if r > rap_hi:
            rap_hi = r
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


@numba.njit(parallel=True, nogil=True, cache=True)
def antikt_cpu(px, py, pz, e, offsets, radius, jet_of, jpx, jpy, jpz, je, jfirst, n_jets):
    """Cluster every event (in parallel over events); see the module docstring."""
    for ev in numba.prange(offsets.shape[0] - 1):
        lo = offsets[ev]
        hi = offsets[ev + 1]
        n_jets[ev] = cluster_event_cpu(px[lo:hi], py[lo:hi], pz[lo:hi], e[lo:hi], radius,
                                       jet_of[lo:hi], jpx[lo:hi], jpy[lo:hi], jpz[lo:hi],
                                       je[lo:hi], jfirst[lo:hi])


@numba.njit(nogil=True, cache=True)
def antikt_serial_cpu(px, py, pz, e, offsets, radius, jet_of, jpx, jpy, jpz, je, jfirst,
                      n_jets):
    """:func:`antikt_cpu` on one core (for benchmarks per core)."""
    for ev in range(offsets.shape[0] - 1):
        lo = offsets[ev]
        hi = offsets[ev + 1]
        n_jets[ev] = cluster_event_cpu(px[lo:hi], py[lo:hi], pz[lo:hi], e[lo:hi], radius,
                                       jet_of[lo:hi], jpx[lo:hi], jpy[lo:hi], jpz[lo:hi],
                                       je[lo:hi], jfirst[lo:hi])
