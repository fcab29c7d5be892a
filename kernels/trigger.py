"""Trigger path decisions: one event per CPU iteration or CUDA thread, every path in turn.

Path kinds (``path_kind``): single jet, multi-jet, HT, pixel-doublet multiplicity.  Cuts per
path come as parallel arrays (``pt_min`` [GeV], ``eta_max``, ``ht_min`` [GeV], ``n_min``,
``prescale``, ``count_col``).  Jets are the flat columns ``pt`` [GeV], ``eta`` with CSR
``offsets``; ``counts`` (n_events, n_count_columns) int64 holds object multiplicities (e.g.
doublets per event) that multiplicity paths read through ``count_col``.

A path accepts an event when its prescaler lets the event through and its filter passes (the
decision before the prescaler, the filter's alone, is returned too):
the prescaler counts events from 1 (``entry + 1``) and lets through every ``prescale``-th one
(0 disables the path), as CMS's HLTPrescaler with offset 0.  Jet cuts are inclusive
(``pt >= pt_min``, ``|eta| <= eta_max``), as CMS's HLT jet filters.  HT sums jet pT in input
order, so every backend computes the same sum bit for bit.
"""

from __future__ import annotations

import numba
from numba import cuda

KIND_SINGLE_JET = 0  # at least one jet with pt >= pt_min and |eta| <= eta_max
KIND_MULTI_JET = 1  # at least n_min such jets
KIND_HT = 2  # sum of pt of such jets >= ht_min
KIND_COUNT = 3  # counts[event, count_col] >= n_min (pixel doublets)


def _path_filter(i, p, pt, eta, offsets, counts, kind, pt_min, eta_max, ht_min, n_min,
                 count_col):
    """Whether event ``i`` passes the filter of path ``p`` (prescale not applied)."""
    k = kind[p]
    if k == KIND_COUNT:
        return counts[i, count_col[p]] >= n_min[p]
    n = 0
    ht = 0.0
    for j in range(offsets[i], offsets[i + 1]):
        if pt[j] >= pt_min[p] and abs(eta[j]) <= eta_max[p]:
            n += 1
            ht += pt[j]
    if k == KIND_SINGLE_JET:
        return n >= 1
    if k == KIND_MULTI_JET:
        return n >= n_min[p]
    return ht >= ht_min[p]


def _prescaler(entry, prescale):
    """CMS prescaler with offset 0: event number ``entry + 1`` passes when divisible."""
    if prescale <= 0:
        return False
    return (entry + 1) % prescale == 0


def _make(jit):
    path_filter = jit(_path_filter)
    prescaler = jit(_prescaler)

    def decide_event(i, pt, eta, offsets, counts, first_entry, kind, pt_min, eta_max, ht_min,
                     n_min, prescale, count_col, out, out_pre):
        for p in range(kind.shape[0]):
            ok = path_filter(i, p, pt, eta, offsets, counts, kind, pt_min, eta_max, ht_min,
                             n_min, count_col)
            out_pre[i, p] = ok
            out[i, p] = ok and prescaler(first_entry + i, prescale[p])

    return jit(decide_event)


_decide_event_cpu = _make(numba.njit(cache=True, inline="always"))
_decide_event_cuda = _make(cuda.jit(device=True))


@numba.njit(parallel=True, cache=True)
def trigger_cpu(pt, eta, offsets, counts, first_entry, kind, pt_min, eta_max, ht_min, n_min,
                prescale, count_col, out, out_pre):
    """``out[i, p]`` = decision of path ``p`` for event ``i`` (bool), in parallel over events;
    ``out_pre[i, p]`` the decision before the prescaler (the filter alone).

    ``first_entry`` is the entry number of event 0 in its file (drives the prescalers).
    """
    for i in numba.prange(out.shape[0]):
        _decide_event_cpu(i, pt, eta, offsets, counts, first_entry, kind, pt_min, eta_max,
                          ht_min, n_min, prescale, count_col, out, out_pre)


@cuda.jit(cache=True)
def trigger_cuda(pt, eta, offsets, counts, first_entry, kind, pt_min, eta_max, ht_min, n_min,
                 prescale, count_col, out, out_pre):
    """One thread per event: same arguments and result as :func:`trigger_cpu`."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        _decide_event_cuda(i, pt, eta, offsets, counts, first_entry, kind, pt_min, eta_max,
                           ht_min, n_min, prescale, count_col, out, out_pre)
