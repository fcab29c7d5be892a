"""Anti-kT, cuda strategy: one event per block over FastJet's ``N2Plain`` slot array.

The rules (FastJet's ``N2Plain`` merge sequence, ties included), the rounding, the inputs and
the outputs are those of :mod:`hltemu.kernels.antikt`; its ``rap_phi``, ``momentum_factor``
and ``dist`` are compiled here as device functions (``_make`` on
:data:`~hltemu.kernels.ieee.CUDA_OPS`, libdevice's exactly rounded intrinsics, which NVVM never
contracts into an FMA; ``tests/test_ptx.py`` checks the sm_90 PTX of these and of the kernel).

``antikt_cuda``: one event per block, the slot array in global memory (scratch the caller
allocates); the minimum ``diJ`` and the new jet's NN are parallel (value, slot) minimum
reductions in shared memory; the NN updates run one thread per slot.  Thread 0 makes each step
(merge or beam) and moves the slots; what the other threads need of it is the block's state
``st``, a shared int64 array whose slots are the ``ST_*`` constants below.

Non-finite rapidities (FastJet's, of inputs with ``E + |pz| == 0``: see
:mod:`hltemu.kernels.antikt`) need nothing here: every NN search and update compares a
distance with ``<`` against ``R^2`` or the best one so far, which a NaN or infinite distance
never passes, as in FastJet, and ``diJ`` (a distance below ``R^2`` times a momentum factor) is
never NaN.

Numba cache (``cache=True``): a cached kernel is invalidated by its own file only, and
``antikt_cuda`` compiles in code of ``kernels/antikt.py`` (``_make``, ``MAX_RAP``, ``PI``,
``TWO_PI``, ``INF``, ``NAN``) and ``kernels/ieee.py`` (``CUDA_OPS``).  After editing either,
clear this module's cache (``kernels/__pycache__/antikt_cuda.*``, the ``.nbi`` and ``.nbc``
files).
Under the CUDA simulator the kernel runs as Python and reads the module's globals at run time
(``tests/test_cuda_sizes.py`` sets ``CUDA_THREADS`` here to 128).
"""

from __future__ import annotations

import numba
from numba import cuda

from .antikt import INF, _make
from .ieee import CUDA_OPS

#: Threads per block of :func:`antikt_cuda` (a power of two: the reductions halve it); fewer
#: under the CUDA simulator, where every thread is a Python thread.
CUDA_THREADS = 32 if numba.config.ENABLE_CUDASIM else 128

# Slots of the block's shared state array ``st`` (int64; thread 0 writes them between barriers,
# every thread reads them).
#: The number of active slots ``n_active`` (slots ``0 .. n_active - 1``); the loop ends at 0.
ST_ACTIVE = 0
#: ``sa``, the slot the step frees: the larger slot of the merged pair, or the beam jet's.
ST_SA = 1
#: ``sb``, the new jet's slot: the smaller slot of the merged pair (-1 after a beam step).
ST_SB = 2
#: ``tail``, the last active slot before the step, whose jet the step moved into ``sa``.
ST_TAIL = 3
#: 1 if the step merged a pair, 0 if a jet went to the beam.
ST_PAIR = 4
#: The next jet id of the history (inputs are ``0 .. n - 1``, then one id per merge).
ST_NEXT_ID = 5
#: Inclusive jets made so far (one per beam step): the next row of ``jpx ... jfirst``.
ST_N_JETS = 6
#: Length of ``st``.
ST_SIZE = 7


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
    st = cuda.shared.array(ST_SIZE, numba.int64)  # the block's state: slots ST_*
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
        st[ST_ACTIVE] = n
        st[ST_NEXT_ID] = n
        st[ST_N_JETS] = 0
    cuda.syncthreads()
    # initial NN: first minimum over slots (= input index)
    for i in range(tid, n, CUDA_THREADS):
        nn[lo + i], nnd[lo + i] = _nearest_cuda(rap, phi, lo, i, n, r2)
    cuda.syncthreads()
    for i in range(tid, n, CUDA_THREADS):
        _set_dij_cuda(kf, nn, nnd, dij, lo, i)
    cuda.syncthreads()
    while st[ST_ACTIVE] > 0:
        active = st[ST_ACTIVE]
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
                c = st[ST_NEXT_ID]
                st[ST_NEXT_ID] = c + 1
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
                st[ST_PAIR] = 1
            else:
                ia = hlo + sid[lo + sa]
                k = st[ST_N_JETS]
                hfinal[ia] = k
                jpx[lo + k] = hx[ia]
                jpy[lo + k] = hy[ia]
                jpz[lo + k] = hz[ia]
                je[lo + k] = he[ia]
                jfirst[lo + k] = hfirst[ia]
                st[ST_N_JETS] = k + 1
                st[ST_PAIR] = 0
            # the last slot's jet moves into sa
            rap[lo + sa] = rap[lo + tail]
            phi[lo + sa] = phi[lo + tail]
            kf[lo + sa] = kf[lo + tail]
            nnd[lo + sa] = nnd[lo + tail]
            nn[lo + sa] = nn[lo + tail]
            dij[lo + sa] = dij[lo + tail]
            sid[lo + sa] = sid[lo + tail]
            st[ST_SA] = sa
            st[ST_SB] = sb
            st[ST_TAIL] = tail
            st[ST_ACTIVE] = active - 1
        cuda.syncthreads()
        active = st[ST_ACTIVE]
        sa = st[ST_SA]
        sb = st[ST_SB]
        tail = st[ST_TAIL]
        pair = st[ST_PAIR] == 1
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
        for i in range(st[ST_NEXT_ID] - 1, -1, -1):
            if hparent[hlo + i] >= 0:
                hfinal[hlo + i] = hfinal[hlo + hparent[hlo + i]]
        n_jets[ev] = st[ST_N_JETS]
    cuda.syncthreads()
    for i in range(tid, n, CUDA_THREADS):
        jet_of[lo + i] = hfinal[hlo + i]
