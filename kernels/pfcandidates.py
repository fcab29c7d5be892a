"""Particle flow's track-cluster link and expected-deposit sums: Numba CPU and CUDA kernels.

The rules are stated in :mod:`hltemu.stages.pfcandidates`; these kernels do the one step that
loops over pairs, per event (one ``prange`` iteration on the CPU, one thread on CUDA):

1. every track that reaches the calorimeter (``reach``) is linked to the cluster of positive
   energy of its event whose centre is nearest to the track's impact point in
   ``Delta R^2 = Delta eta^2 + Delta phi^2`` (``Delta phi`` wrapped into ``[-pi, pi]``),
   provided ``Delta R^2 < link_dr2``; the first cluster (ascending row) wins a tie;
2. each cluster sums, over its linked tracks in ascending row order from ``0.0``, their
   expected deposits ``mean`` and variances ``var`` (GeV, GeV^2).

Inputs are float64 columns in CSR order (``t_off``/``c_off`` the events' track and cluster
offsets); outputs ``link`` (int64, the linked cluster's *global* row or -1), ``expected`` and
``variance`` per cluster.  Every float operation is one exactly rounded IEEE-754 float64
operation (:mod:`hltemu.kernels.ieee`: libdevice's ``*_rn`` on CUDA, never contracted into an
FMA), so cpu and cuda give the same bits from the same inputs, and so does the NumPy reference
(:func:`hltemu.stages.pfcandidates.link_reference`), which does the same operations in the
same order.

Numba's on-disk cache: this module compiles in :mod:`hltemu.kernels.ieee`; after editing that
file, clear this module's ``__pycache__/pfcandidates*.nbi``.
"""

from __future__ import annotations

import math

import numba
from numba import cuda

from .ieee import CPU_OPS, CUDA_OPS

TWO_PI = 2.0 * math.pi


def _make(jit, mul, add, sub, div):
    """The target's device function ``link_event``, compiled with ``jit`` on the exactly
    rounded arithmetic ``mul, add, sub, div`` (a set of :mod:`hltemu.kernels.ieee`)."""

    def wrapped_dphi(a, b):
        d = sub(a, b)
        if d > math.pi:
            d = sub(d, TWO_PI)
        elif d < -math.pi:
            d = add(d, TWO_PI)
        return d

    wrapped = jit(wrapped_dphi)

    def link_event(e, t_off, c_off, t_eta, t_phi, reach, mean, var, c_eta, c_phi, c_energy,
                   link_dr2, link, expected, variance):
        """Links and sums of event ``e`` (see the module docstring)."""
        c0 = c_off[e]
        c1 = c_off[e + 1]
        for c in range(c0, c1):
            expected[c] = 0.0
            variance[c] = 0.0
        for t in range(t_off[e], t_off[e + 1]):
            best = -1
            best_d2 = link_dr2
            if reach[t]:
                for c in range(c0, c1):
                    if c_energy[c] > 0.0:
                        de = sub(t_eta[t], c_eta[c])
                        dp = wrapped(t_phi[t], c_phi[c])
                        d2 = add(mul(de, de), mul(dp, dp))
                        if d2 < best_d2:
                            best_d2 = d2
                            best = c
            link[t] = best
            if best >= 0:
                expected[best] = add(expected[best], mean[t])
                variance[best] = add(variance[best], var[t])

    return jit(link_event)


_link_event_cpu = _make(numba.njit(cache=True, inline="always"), *CPU_OPS)
_link_event_cuda = _make(cuda.jit(device=True), *CUDA_OPS)


@numba.njit(parallel=True, nogil=True, cache=True)
def link_cpu(t_off, c_off, t_eta, t_phi, reach, mean, var, c_eta, c_phi, c_energy, link_dr2,
             link, expected, variance):
    """:func:`link_event` of every event, in parallel over events."""
    for e in numba.prange(t_off.shape[0] - 1):
        _link_event_cpu(e, t_off, c_off, t_eta, t_phi, reach, mean, var, c_eta, c_phi,
                        c_energy, link_dr2, link, expected, variance)


@cuda.jit(cache=True)
def link_cuda(t_off, c_off, t_eta, t_phi, reach, mean, var, c_eta, c_phi, c_energy, link_dr2,
              link, expected, variance):
    """One thread per event: :func:`link_event`."""
    e = cuda.grid(1)
    if e < t_off.shape[0] - 1:
        _link_event_cuda(e, t_off, c_off, t_eta, t_phi, reach, mean, var, c_eta, c_phi,
                         c_energy, link_dr2, link, expected, variance)
