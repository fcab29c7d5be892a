"""Trigger path decisions: one event per CPU iteration or CUDA thread, every path in turn.

Path kinds (``path_kind``): single jet, multi-jet, HT, object multiplicity (pixel doublets),
pixel-track multiplicity and pixel-vertex multiplicity.  Cuts per path come as parallel
arrays (``pt_min`` [GeV], ``eta_max``, ``ht_min`` [GeV], ``n_min``, ``prescale``,
``count_col``, ``min_hits``, ``dz_max`` [cm], ``min_tracks``, ``jet_set``).  Jets are the flat
columns ``pt`` [GeV], ``eta`` of one or more jet collections one after the other, with CSR
``offsets`` per collection (``(n_collections, n_events + 1)``); a jet path reads the
collection ``jet_set[p]``; ``counts`` (n_events, n_count_columns) int64 holds
object multiplicities (e.g. doublets per event) that multiplicity paths read through
``count_col``.  Pixel tracks are ``trk_pt`` [GeV], ``trk_eta``, ``trk_n_hits``, ``trk_z0``
[cm] with ``trk_offsets``; pixel vertices ``vtx_z`` [cm], ``vtx_n_tracks`` with
``vtx_offsets``, the primary vertex first in each event (as stage ``pixelvertices`` orders
them).

A path accepts an event when its prescaler lets the event through and its filter passes (the
decision before the prescaler, the filter's alone, is returned too):
the prescaler counts events from 1 (``entry + 1``) and lets through every ``prescale``-th one
(0 disables the path), as CMS's HLTPrescaler with offset 0.  Jet cuts are inclusive
(``pt >= pt_min``, ``|eta| <= eta_max``), as CMS's HLT jet filters.  HT sums jet pT in input
order, so every backend computes the same sum bit for bit.  A pixel-track path counts the
tracks with ``pt >= pt_min``, ``|eta| <= eta_max``, ``n_hits >= min_hits`` and, when
``dz_max`` is finite, ``|z0 - z_PV| <= dz_max`` (an event without a pixel vertex then has no
such track); a pixel-vertex path counts the vertices with ``n_tracks >= min_tracks``.  Every
cut is one comparison of stored values (or of one IEEE subtraction), so the decisions are
identical on every backend.
"""

from __future__ import annotations

import math

import numba
from numba import cuda

KIND_SINGLE_JET = 0  # at least one jet with pt >= pt_min and |eta| <= eta_max
KIND_MULTI_JET = 1  # at least n_min such jets
KIND_HT = 2  # sum of pt of such jets >= ht_min
KIND_COUNT = 3  # counts[event, count_col] >= n_min (pixel doublets)
KIND_TRACKS = 4  # at least n_min pixel tracks passing pt_min, eta_max, min_hits, dz_max
KIND_VERTICES = 5  # at least n_min pixel vertices with n_tracks >= min_tracks


def _count_tracks(i, p, trk_pt, trk_eta, trk_n_hits, trk_z0, trk_offsets, vtx_z, vtx_offsets,
                  pt_min, eta_max, min_hits, dz_max):
    """Pixel tracks of event ``i`` that pass path ``p``'s cuts."""
    use_dz = dz_max[p] < math.inf
    has_pv = vtx_offsets[i + 1] > vtx_offsets[i]
    if use_dz and not has_pv:
        return 0
    pv_z = vtx_z[vtx_offsets[i]] if has_pv else 0.0
    n = 0
    for j in range(trk_offsets[i], trk_offsets[i + 1]):
        if (trk_pt[j] >= pt_min[p] and abs(trk_eta[j]) <= eta_max[p]
                and trk_n_hits[j] >= min_hits[p]
                and (not use_dz or abs(trk_z0[j] - pv_z) <= dz_max[p])):
            n += 1
    return n


def _count_vertices(i, p, vtx_n_tracks, vtx_offsets, min_tracks):
    """Pixel vertices of event ``i`` with at least path ``p``'s ``min_tracks`` tracks."""
    n = 0
    for j in range(vtx_offsets[i], vtx_offsets[i + 1]):
        if vtx_n_tracks[j] >= min_tracks[p]:
            n += 1
    return n


def _jet_filter(i, p, pt, eta, offsets, jet_set, kind, pt_min, eta_max, ht_min, n_min):
    """Whether event ``i`` passes the jet path ``p`` (single jet, multi-jet or HT) on its jet
    collection ``jet_set[p]`` (row of ``offsets``)."""
    k = kind[p]
    s = jet_set[p]
    n = 0
    ht = 0.0
    for j in range(offsets[s, i], offsets[s, i + 1]):
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
    jet_filter = jit(_jet_filter)
    count_tracks = jit(_count_tracks)
    count_vertices = jit(_count_vertices)
    prescaler = jit(_prescaler)

    def decide_event(i, pt, eta, offsets, counts, trk_pt, trk_eta, trk_n_hits, trk_z0,
                     trk_offsets, vtx_z, vtx_n_tracks, vtx_offsets, first_entry, kind, pt_min,
                     eta_max, ht_min, n_min, prescale, count_col, min_hits, dz_max, min_tracks,
                     jet_set, out, out_pre):
        for p in range(kind.shape[0]):
            k = kind[p]
            if k == KIND_COUNT:
                ok = counts[i, count_col[p]] >= n_min[p]
            elif k == KIND_TRACKS:
                ok = count_tracks(i, p, trk_pt, trk_eta, trk_n_hits, trk_z0, trk_offsets, vtx_z,
                                  vtx_offsets, pt_min, eta_max, min_hits, dz_max) >= n_min[p]
            elif k == KIND_VERTICES:
                ok = count_vertices(i, p, vtx_n_tracks, vtx_offsets, min_tracks) >= n_min[p]
            else:
                ok = jet_filter(i, p, pt, eta, offsets, jet_set, kind, pt_min, eta_max, ht_min,
                                n_min)
            out_pre[i, p] = ok
            out[i, p] = ok and prescaler(first_entry + i, prescale[p])

    return jit(decide_event)


_decide_event_cpu = _make(numba.njit(cache=True, inline="always"))
_decide_event_cuda = _make(cuda.jit(device=True))


@numba.njit(parallel=True, nogil=True, cache=True)
def trigger_cpu(pt, eta, offsets, counts, trk_pt, trk_eta, trk_n_hits, trk_z0, trk_offsets,
                vtx_z, vtx_n_tracks, vtx_offsets, first_entry, kind, pt_min, eta_max, ht_min,
                n_min, prescale, count_col, min_hits, dz_max, min_tracks, jet_set, out, out_pre):
    """``out[i, p]`` = decision of path ``p`` for event ``i`` (bool), in parallel over events;
    ``out_pre[i, p]`` the decision before the prescaler (the filter alone).

    ``pt``, ``eta``: the jets of every jet collection the paths read, one after the other;
    ``offsets`` int64 ``(n_collections, n_events + 1)``: each collection's CSR offsets into
    them; ``jet_set[p]``: the row of path ``p``'s collection.  ``first_entry`` is the entry
    number of event 0 in its file (drives the prescalers).
    """
    for i in numba.prange(out.shape[0]):
        _decide_event_cpu(i, pt, eta, offsets, counts, trk_pt, trk_eta, trk_n_hits, trk_z0,
                          trk_offsets, vtx_z, vtx_n_tracks, vtx_offsets, first_entry, kind,
                          pt_min, eta_max, ht_min, n_min, prescale, count_col, min_hits, dz_max,
                          min_tracks, jet_set, out, out_pre)


@cuda.jit(cache=True)
def trigger_cuda(pt, eta, offsets, counts, trk_pt, trk_eta, trk_n_hits, trk_z0, trk_offsets,
                 vtx_z, vtx_n_tracks, vtx_offsets, first_entry, kind, pt_min, eta_max, ht_min,
                 n_min, prescale, count_col, min_hits, dz_max, min_tracks, jet_set, out,
                 out_pre):
    """One thread per event: same arguments and result as :func:`trigger_cpu`."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        _decide_event_cuda(i, pt, eta, offsets, counts, trk_pt, trk_eta, trk_n_hits, trk_z0,
                           trk_offsets, vtx_z, vtx_n_tracks, vtx_offsets, first_entry, kind,
                           pt_min, eta_max, ht_min, n_min, prescale, count_col, min_hits,
                           dz_max, min_tracks, jet_set, out, out_pre)
