"""Anti-kT, cpu strategy: tiles with lazy nearest-neighbour searches and a tournament tree.

The rules (FastJet's ``N2Plain`` merge sequence, ties included), the rounding, the inputs and
the outputs are those of :mod:`hltemu.kernels.antikt`; its ``rap_phi``, ``momentum_factor``
and ``dist`` are compiled here (``_make`` on :data:`~hltemu.kernels.ieee.CPU_OPS`), and every
float operation that decides a merge goes through them, in the same order as before the tiles
changed: the merged 4-vector is ``x[a] + x[b]`` etc. with ``a`` the jet of the larger slot.

``cluster_event_cpu`` (Numba ``@njit``) clusters one event.  Layout: one row per jet id
(inputs ``0..n-1``, merged jets ``n..2n-2`` in history order), structure of arrays (``rap``,
``phi``, ``nn``, ``nnd``, ... each its own float64/int64 array); the inputs get their ids in
tile order (a counting sort; their slots stay their input indices), so that a tile's inputs are
adjacent in memory and the first NN pass reads them as contiguous ranges.  Tiles of at least
``max(R, 0.1)`` in rapidity and azimuth, a doubly linked list and a count of jets per tile, as
FastJet's tiled strategies: two jets closer than R are in the same or neighbouring tiles, so a
NN search and the updates after a step only look at the 3 x 3 tiles around the jets involved.
The minimum ``diJ`` comes from a tournament tree over slots (ties go to the smaller slot),
O(log n) per update.

Lazy tiles (the idea of FastJet's ``LazyTiling9`` and of JetReconstruction.jl's tiled
strategy, written anew here).  A point's squared gaps to the four edges of its tile
(:func:`edge_gaps`, each shrunk by ``BOUND_MARGIN``) bound its distance to any jet of a
neighbouring tile from below (:func:`tile_bound`: the gaps to the edges in between; infinite
for a tile that is not a neighbour).  Each tile keeps ``maxnnd``, an upper bound on its jets'
NN distances (raised when a jet's NN distance may grow, set exactly whenever the tile is
scanned).  Then

* a NN search visits the jet's own tile first and skips a neighbouring tile whose bound is
  *strictly* above the best distance found so far: every jet there is strictly farther, so it
  can neither win nor tie;
* the first NN pass takes each pair once (within a tile, then each tile with its neighbours
  of offsets (0, +1), (+1, -1), (+1, 0), (+1, +1)) and skips a jet against a neighbouring tile
  whose bound exceeds both the jet's NN distance so far and the tile's ``maxnnd`` after the
  pass within tiles (NN distances only decrease in this pass);
* after a step, the jets whose NN was a removed jet search again: they are found in the
  removed jets' reverse NN lists (each jet keeps a doubly linked list of the jets whose NN it
  is, updated whenever a NN changes), not by scanning tiles;
* a tile around the new jet is scanned for jets that take the new jet as NN (strictly closer
  than their NN) only if its bound from the new jet does not exceed its ``maxnnd``.  The new
  jet's distances to the jets of the scanned tiles also serve its own NN search, which then
  visits only the tiles around it that are left and not ruled out by their bounds;
* tiles of at most ``FEW`` jets are scanned without computing a bound (cheaper there).

Why the jets cannot change.  Every search returns the lexicographic minimum (distance, slot)
over the jets at distance below R^2, which is what a search over all slots finds (FastJet's
``N2Plain`` rule), whatever the order of the visit and whichever tiles are skipped, because a
skipped tile holds only jets strictly farther than the minimum; the updates after a step are
those of the rule for every jet: a jet whose NN was removed searches again (the reverse lists
hold exactly those jets), any other takes the new jet only if strictly closer (a skipped tile
holds none that is), exactly as the plain N^2 search does.  ``BOUND_MARGIN`` (1e-9 in
rapidity and in rad) covers the rounding of the tile index (a jet within ~1e-15 of an edge
may sit in either tile) and of the distance (relative ~1e-15) for squared distances up to
~1e12; bounds are only compared with values <= R^2, and tiles exist only for R < 24 (2 x
``TILE_RAP_LIMIT``; above, one tile holds everything).
``antikt_cpu`` runs it in parallel over events, ``antikt_serial_cpu`` on one core.  Below
``TILE_MIN_N`` inputs one tile holds everything (the plain N^2 search with NN bookkeeping);
``tests/test_antikt.py`` clusters the same events with and without tiles (random, lattice
ties, duplicates, particles on tile edges and at the azimuth wrap, NaN and infinite
rapidities) and requires every output bit to be the same.

Compiled code: the helpers inlined at Numba's IR level (``inline="always"``) take scalars,
except the tournament tree's update; the loops over a tile's jets are written out in the
kernel, because a helper taking arrays pays for calls to NRT_incref/NRT_decref at its
branches (measured: ~30 ns per call of a 10-line distance bound on the arrays of tile
edges, more than the bound saves).

Numba cache (``cache=True``): a cached kernel is invalidated by its own file only, and the
kernels here compile in code of ``kernels/antikt.py`` (``_make``, ``MAX_RAP``, ``PI``,
``TWO_PI``, ``INF``, ``NAN``) and ``kernels/ieee.py`` (``CPU_OPS``).  After editing either,
clear this module's cache (``kernels/__pycache__/antikt_cpu.*``, the ``.nbi`` and ``.nbc``
files).

Non-finite rapidities (FastJet's, of inputs with ``E + |pz| == 0``: see
:mod:`hltemu.kernels.antikt`) are clustered as FastJet does: the rapidity range that sizes the
tiles skips NaN, :func:`tile_index` puts a NaN position in tile 0 and infinite rapidities in
the edge tiles, the distance comparisons (``d < best``) never take a NaN distance, and
:func:`edge_gaps` are 0 (rule nothing out) for a NaN rapidity and infinite (rule out, rightly:
the distance is infinite or NaN) across rapidity for an infinite one.
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
#: Safety margin [rapidity units, rad] by which a tile's lower distance bound is shrunk per
#: axis, for the rounding of tile indices and distances (see the module docstring).
BOUND_MARGIN = 1e-9
#: Tiles of at most this many jets are scanned without computing their bound (it costs more
#: than it saves there).
FEW = 2


# ------------------------------------------------------------------------------------------
# Tiles in rapidity x azimuth (plain Python, compiled below)
# ------------------------------------------------------------------------------------------
def tiling(rap_lo, rap_hi, radius, tiled):
    """Tile grid ``(rap_min, rap_width, n_rap, phi_width, n_phi)`` for inputs whose
    rapidities span ``[rap_lo, rap_hi]``; one tile unless ``tiled``."""
    if not tiled:
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


def neighbour_tile(ir, ip, a, n_rap, n_phi):
    """Tile number ``a`` (0..8, row-major over rapidity then azimuth offsets -1, 0, +1; 4 is
    the tile itself) of the 3 x 3 tiles around tile row ``ir``, column ``ip``; -1 where there
    is none (beyond the rapidity edges, or an azimuth offset when one column spans 2 pi).
    Each tile appears once."""
    jr = ir + a // 3 - 1
    if jr < 0 or jr >= n_rap:
        return -1
    dp = a % 3 - 1
    if dp != 0 and n_phi < 3:
        return -1
    jp = ip + dp
    if jp < 0:
        jp += n_phi
    elif jp >= n_phi:
        jp -= n_phi
    return jr * n_phi + jp


def edge_gaps(rap, phi, t, rap_min, rap_width, n_rap, phi_width, n_phi):
    """Squared gaps from the point (rap, phi [rad]) in tile ``t`` to the four edges of its tile
    (rapidity below and above, azimuth below and above), each shrunk by ``BOUND_MARGIN`` and
    floored at 0 (0 also for a NaN gap: a NaN rapidity bounds nothing); with the tile's row
    and column: ``(ir, ip, below_rap, above_rap, below_phi, above_phi)``.  A neighbouring tile
    lies beyond one or two of these edges, so the sum of those squared gaps is a lower bound on
    the distance (``dR2``) to any jet in it (:func:`tile_bound`); the edges are those of
    :func:`tile_index` (the edge rows open towards +-inf, the last column ending at 2 pi)."""
    ir = t // n_phi
    ip = t - ir * n_phi
    g_lo = rap - (rap_min + ir * rap_width) - BOUND_MARGIN if ir > 0 else 0.0
    g_hi = (rap_min + (ir + 1) * rap_width) - rap - BOUND_MARGIN if ir < n_rap - 1 else 0.0
    h_lo = 0.0
    h_hi = 0.0
    if n_phi > 1:
        h_lo = phi - ip * phi_width - BOUND_MARGIN
        h_hi = ((ip + 1) * phi_width if ip < n_phi - 1 else TWO_PI) - phi - BOUND_MARGIN
    g_lo = g_lo * g_lo if g_lo > 0.0 else 0.0
    g_hi = g_hi * g_hi if g_hi > 0.0 else 0.0
    h_lo = h_lo * h_lo if h_lo > 0.0 else 0.0
    h_hi = h_hi * h_hi if h_hi > 0.0 else 0.0
    return ir, ip, g_lo, g_hi, h_lo, h_hi


def tile_bound(ir, ip, g_lo, g_hi, h_lo, h_hi, jr, jp, n_phi):
    """Lower bound on the distance (``dR2``) from a point with the :func:`edge_gaps` ``ir ..
    h_hi`` to any jet in the tile of row ``jr``, column ``jp``: the gaps to the edges between
    the two tiles; infinite for a tile not among the 3 x 3 around the point's tile (at least
    one tile side, i.e. more than R, away)."""
    dr = jr - ir
    dp = jp - ip
    if dp > 1:
        dp -= n_phi
    elif dp < -1:
        dp += n_phi
    if dr < -1 or dr > 1 or dp < -1 or dp > 1:
        return INF
    b = 0.0
    if dr < 0:
        b = g_lo
    elif dr > 0:
        b = g_hi
    if dp < 0:
        b += h_lo
    elif dp > 0:
        b += h_hi
    return b


# ------------------------------------------------------------------------------------------
# Compiled kinematics and tiling, and the tournament tree: inlined into the kernels
# ------------------------------------------------------------------------------------------
_jit = numba.njit(cache=True, inline="always")
_rap_phi_cpu, _mfac_cpu, _dist_cpu = _make(_jit, *CPU_OPS)
_tiling_cpu = _jit(tiling)
_tile_index_cpu = _jit(tile_index)
_neighbour_cpu = _jit(neighbour_tile)
_gaps_cpu = _jit(edge_gaps)
_bound_cpu = _jit(tile_bound)


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
def cluster_event_cpu(px, py, pz, e, radius, tiled, jet_of, jpx, jpy, jpz, je, jfirst):
    """Cluster one event of ``n = px.shape[0]`` inputs (4-vectors [GeV]) with jet radius
    ``radius``, on tiles if ``tiled`` (else one tile: the result is the same); fill
    ``jet_of`` (n,) and the first ``n_jets`` rows of ``jpx, jpy, jpz, je`` [GeV] and
    ``jfirst``; return ``n_jets``."""
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
    rap_min, rap_w, n_rap, phi_w, n_phi = _tiling_cpu(rap_lo, rap_hi, radius, tiled)
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
    # per tile: a doubly linked list of its jets, their number
    head = np.full(n_tiles, -1, np.int64)
    count = np.empty(n_tiles, np.int64)
    for t in range(n_tiles):
        lo_t = start[t]
        hi_t = start[t + 1]
        count[t] = hi_t - lo_t
        if hi_t > lo_t:
            head[t] = lo_t
        for j in range(lo_t, hi_t):
            prv[j] = j - 1 if j > lo_t else -1
            nxt[j] = j + 1 if j + 1 < hi_t else -1
    # initial NN: lexicographic minimum (distance, slot) below R^2.  Each pair of jets once
    # (updating both): first within each tile, then between each tile and its neighbours of
    # offsets (0, +1), (+1, -1), (+1, 0), (+1, +1) (each pair of neighbouring tiles once).  A
    # jet skips a neighbouring tile whose bound exceeds both its NN distance so far and the
    # tile's largest NN distance after the first pass (NN distances only decrease here).
    maxnnd = np.full(n_tiles, -1.0)
    for t in range(n_tiles):
        for i in range(start[t], start[t + 1]):
            ri = rap[i]
            fi = phi[i]
            si = slot_of[i]
            for j in range(i + 1, start[t + 1]):
                d = _dist_cpu(ri, fi, rap[j], phi[j])
                if d < nnd[i] or (d == nnd[i] and nn[i] >= 0 and slot_of[j] < slot_of[nn[i]]):
                    nnd[i] = d
                    nn[i] = j
                if d < nnd[j] or (d == nnd[j] and nn[j] >= 0 and si < slot_of[nn[j]]):
                    nnd[j] = d
                    nn[j] = i
            if nnd[i] > maxnnd[t]:
                maxnnd[t] = nnd[i]
    if n_tiles > 1:
        for t in range(n_tiles):
            for i in range(start[t], start[t + 1]):
                ri = rap[i]
                fi = phi[i]
                si = slot_of[i]
                ir, ip, g_lo, g_hi, h_lo, h_hi = _gaps_cpu(ri, fi, t, rap_min, rap_w, n_rap,
                                                           phi_w, n_phi)
                for a in range(5, 9):
                    u = _neighbour_cpu(ir, ip, a, n_rap, n_phi)
                    if u < 0 or count[u] == 0:
                        continue
                    if count[u] > FEW:
                        ur = ir + a // 3 - 1
                        bi = _bound_cpu(ir, ip, g_lo, g_hi, h_lo, h_hi, ur, u - ur * n_phi,
                                        n_phi)
                        if bi > nnd[i] and bi > maxnnd[u]:
                            continue
                    for j in range(start[u], start[u + 1]):
                        d = _dist_cpu(ri, fi, rap[j], phi[j])
                        if d < nnd[i] or (d == nnd[i] and nn[i] >= 0
                                          and slot_of[j] < slot_of[nn[i]]):
                            nnd[i] = d
                            nn[i] = j
                        if d < nnd[j] or (d == nnd[j] and nn[j] >= 0
                                          and si < slot_of[nn[j]]):
                            nnd[j] = d
                            nn[j] = i
        # per tile, an upper bound on the NN distances of its jets (-1: empty)
        for t in range(n_tiles):
            mx = -1.0
            for i in range(start[t], start[t + 1]):
                if nnd[i] > mx:
                    mx = nnd[i]
            maxnnd[t] = mx
    # the tournament tree over slots
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
    # the tiles around C left for its own search, and their bounds from C
    c_left = np.empty(9, np.int64)
    c_left_b = np.empty(9)
    # reverse NN lists: the jets whose NN is jet j, doubly linked (rhead[j], rnext, rprev)
    rhead = np.full(m, -1, np.int64)
    rnext = np.empty(m, np.int64)
    rprev = np.empty(m, np.int64)
    for i in range(n):
        j = nn[i]
        if j >= 0:
            rprev[i] = -1
            rnext[i] = rhead[j]
            if rhead[j] >= 0:
                rprev[rhead[j]] = i
            rhead[j] = i
    todo = np.empty(n, np.int64)  # the jets that search again after a step

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
            tile_of[jc] = _tile_index_cpu(r, p, rap_min, rap_w, n_rap, phi_w, n_phi)
        else:
            final[ja] = n_jets
            jpx[n_jets] = x[ja]
            jpy[n_jets] = y[ja]
            jpz[n_jets] = z[ja]
            je[n_jets] = en[ja]
            jfirst[n_jets] = first[ja]
            n_jets += 1
        # remove A (and B): from their tiles, from the reverse list of their NN; the jets
        # whose NN they were (other than A and B) search again
        n_todo = 0
        for w in range(2):
            jw = ja if w == 0 else jb
            if jw < 0:
                continue
            count[tile_of[jw]] -= 1
            if prv[jw] >= 0:
                nxt[prv[jw]] = nxt[jw]
            else:
                head[tile_of[jw]] = nxt[jw]
            if nxt[jw] >= 0:
                prv[nxt[jw]] = prv[jw]
            k = nn[jw]
            if k >= 0:
                if rprev[jw] >= 0:
                    rnext[rprev[jw]] = rnext[jw]
                else:
                    rhead[k] = rnext[jw]
                if rnext[jw] >= 0:
                    rprev[rnext[jw]] = rprev[jw]
        for w in range(2):
            jw = ja if w == 0 else jb
            if jw < 0:
                continue
            i = rhead[jw]
            while i >= 0:
                if i != ja and i != jb:
                    todo[n_todo] = i
                    n_todo += 1
                i = rnext[i]
        if pair:
            t = tile_of[jc]
            count[t] += 1
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
        # searches again: own tile first, then the neighbours not ruled out by their bounds
        for q in range(n_todo):
            i = todo[q]
            ri = rap[i]
            fi = phi[i]
            ti = tile_of[i]
            ir, ip, g_lo, g_hi, h_lo, h_hi = _gaps_cpu(ri, fi, ti, rap_min, rap_w, n_rap,
                                                       phi_w, n_phi)
            best = r2
            bj = -1
            for a in range(-1, 9):
                if a < 0:
                    v = ti
                else:
                    v = _neighbour_cpu(ir, ip, a, n_rap, n_phi)
                    if a == 4 or v < 0 or count[v] == 0:
                        continue
                    if count[v] > FEW:
                        vr = ir + a // 3 - 1
                        if _bound_cpu(ir, ip, g_lo, g_hi, h_lo, h_hi, vr, v - vr * n_phi,
                                      n_phi) > best:
                            continue
                j = head[v]
                while j >= 0:
                    if j != i:
                        d = _dist_cpu(ri, fi, rap[j], phi[j])
                        if d < best or (d == best and bj >= 0 and slot_of[j] < slot_of[bj]):
                            best = d
                            bj = j
                    j = nxt[j]
            nn[i] = bj
            nnd[i] = best
            if bj >= 0:  # (its old list was A's or B's, now gone)
                rprev[i] = -1
                rnext[i] = rhead[bj]
                if rhead[bj] >= 0:
                    rprev[rhead[bj]] = i
                rhead[bj] = i
            kmin = kf[i]
            if bj >= 0 and kf[bj] < kmin:
                kmin = kf[bj]
            dij[i] = best * kmin
            _tree_set(tval, targ, size, slot_of[i], dij[i])
            if best > maxnnd[ti]:
                maxnnd[ti] = best
        if not pair:
            continue
        # C: a jet around it takes it if strictly closer than its NN (tiles whose bound from C
        # exceeds their maxnnd hold none); C's distances to the jets of those tiles also serve
        # C's own search, which then visits the other tiles around it not ruled out
        rc = rap[jc]
        fc = phi[jc]
        tc = tile_of[jc]
        cr, cp, cg_lo, cg_hi, ch_lo, ch_hi = _gaps_cpu(rc, fc, tc, rap_min, rap_w, n_rap,
                                                       phi_w, n_phi)
        cbest = r2
        cj = -1
        nc = 0  # tiles left for C's search
        for a in range(9):
            u = _neighbour_cpu(cr, cp, a, n_rap, n_phi)
            if u < 0:
                continue
            cu = count[u]
            if cu == 0 or (cu == 1 and u == tc):  # no jet other than C
                continue
            if cu > FEW:
                ur = cr + a // 3 - 1
                bc = _bound_cpu(cr, cp, cg_lo, cg_hi, ch_lo, ch_hi, ur, u - ur * n_phi, n_phi)
                if bc > maxnnd[u]:
                    if bc <= r2:
                        c_left[nc] = u
                        c_left_b[nc] = bc
                        nc += 1
                    continue
            mx = -1.0
            i = head[u]
            while i >= 0:
                if i != jc:
                    d = _dist_cpu(rap[i], phi[i], rc, fc)
                    if d < nnd[i]:
                        k = nn[i]
                        if k >= 0:  # leave the reverse list of its NN
                            if rprev[i] >= 0:
                                rnext[rprev[i]] = rnext[i]
                            else:
                                rhead[k] = rnext[i]
                            if rnext[i] >= 0:
                                rprev[rnext[i]] = rprev[i]
                        rprev[i] = -1
                        rnext[i] = rhead[jc]
                        if rhead[jc] >= 0:
                            rprev[rhead[jc]] = i
                        rhead[jc] = i
                        nn[i] = jc
                        nnd[i] = d
                        kmin = kf[i]
                        if kf[jc] < kmin:
                            kmin = kf[jc]
                        dij[i] = d * kmin
                        _tree_set(tval, targ, size, slot_of[i], dij[i])
                    if d < cbest or (d == cbest and cj >= 0 and slot_of[i] < slot_of[cj]):
                        cbest = d
                        cj = i
                    if nnd[i] > mx:
                        mx = nnd[i]
                i = nxt[i]
            maxnnd[u] = mx
        for q in range(nc):
            if c_left_b[q] > cbest:
                continue
            i = head[c_left[q]]
            while i >= 0:
                d = _dist_cpu(rap[i], phi[i], rc, fc)
                if d < cbest or (d == cbest and cj >= 0 and slot_of[i] < slot_of[cj]):
                    cbest = d
                    cj = i
                i = nxt[i]
        nn[jc] = cj
        nnd[jc] = cbest
        if cj >= 0:
            rprev[jc] = -1
            rnext[jc] = rhead[cj]
            if rhead[cj] >= 0:
                rprev[rhead[cj]] = jc
            rhead[cj] = jc
        kmin = kf[jc]
        if cj >= 0 and kf[cj] < kmin:
            kmin = kf[cj]
        dij[jc] = cbest * kmin
        _tree_set(tval, targ, size, sb, dij[jc])
        if cbest > maxnnd[tc]:
            maxnnd[tc] = cbest
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
                                       hi - lo >= TILE_MIN_N, jet_of[lo:hi], jpx[lo:hi],
                                       jpy[lo:hi], jpz[lo:hi], je[lo:hi], jfirst[lo:hi])


@numba.njit(nogil=True, cache=True)
def antikt_serial_cpu(px, py, pz, e, offsets, radius, jet_of, jpx, jpy, jpz, je, jfirst,
                      n_jets):
    """:func:`antikt_cpu` on one core (for benchmarks per core)."""
    for ev in range(offsets.shape[0] - 1):
        lo = offsets[ev]
        hi = offsets[ev + 1]
        n_jets[ev] = cluster_event_cpu(px[lo:hi], py[lo:hi], pz[lo:hi], e[lo:hi], radius,
                                       hi - lo >= TILE_MIN_N, jet_of[lo:hi], jpx[lo:hi],
                                       jpy[lo:hi], jpz[lo:hi], je[lo:hi], jfirst[lo:hi])
