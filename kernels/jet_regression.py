"""HLT jet-energy regression: features and the dense network per jet, Numba CPU and CUDA.

The features and the network are stated in :mod:`hltemu.jet_regression`; these kernels compute
them on flat arrays with the same two functions compiled for both targets (fbpic style):

* :func:`jet_features` — every feature of ``hltemu.jet_regression.FEATURES`` of jet ``j``
  (float64), from its constituent clusters ``members[member_offsets[j]:member_offsets[j + 1]]``
  (cluster rows, ascending) into row ``row`` of ``f``;
* :func:`forward` — standardise the model's features (float32) and run the dense layers
  (``params``/``layout`` of ``hltemu.jet_regression.flat_params``, weights transposed), ReLU
  between layers, ping-ponging between two float32 scratch arrays, on a run of ``nt`` jets;
  the last layer's outputs go to their rows of ``out``.

The CPU gives each ``prange`` iteration a tile of :data:`TILE` jets: the innermost loop runs
over the tile's jets, which the compiler vectorises (5x faster than a jet per iteration,
measured on one core, 2026-11-29); CUDA gives each thread one jet (``nt`` = 1, local arrays).
Either way each jet's float32 sums add the same products in the same order.

Each jet is computed by one iteration/thread (a tile by one iteration) that writes only its
own rows of ``out``: no concurrency question.  The float64 feature sums run in ascending
cluster row order on both targets; the network's float32 sums add the products in input
order, which the NumPy reference (a matrix product) does not, and CUDA may contract ``a * b +
c`` into an FMA: hence the stated tolerance ``hltemu.jet_regression.OUTPUT_TOLERANCE`` rather
than bit equality.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

#: Scratch width per thread (float32 entries), ``hltemu.jet_regression.MAX_WIDTH``.
MAX_WIDTH = 128
#: Jets per tile of the CPU network (:func:`forward_tile`).
TILE = 32
#: Number of features :func:`jet_features` computes (``len(hltemu.jet_regression.FEATURES)``).
N_FEATURES = 11
TWO_PI = 2.0 * math.pi
EM_LO = -1.0
EM_HI = 2.0


def jet_features(j, member_offsets, members, cl_e, cl_eem, cl_eta, cl_phi, jet_pt, jet_eta,
                 jet_phi, jet_area, jet_rho, jet_nvtx, f, row):
    """Every feature of jet ``j`` into ``f[row, 0:N_FEATURES]`` (float64), in the order of
    ``hltemu.jet_regression.FEATURES``; cluster pT = energy / cosh(eta) [GeV]."""
    pt = jet_pt[j]
    eta = jet_eta[j]
    phi = jet_phi[j]
    s_pt = 0.0
    s_pt2 = 0.0
    s_e = 0.0
    s_em = 0.0
    s_w = 0.0
    lead = 0.0
    lo = member_offsets[j]
    hi = member_offsets[j + 1]
    for i in range(lo, hi):
        c = members[i]
        cpt = cl_e[c] / math.cosh(cl_eta[c])
        dphi = cl_phi[c] - phi + math.pi
        dphi = dphi - TWO_PI * math.floor(dphi / TWO_PI) - math.pi
        deta = cl_eta[c] - eta
        dr = math.sqrt(deta * deta + dphi * dphi)
        s_pt += cpt
        s_pt2 += cpt * cpt
        s_e += cl_e[c]
        s_em += cl_eem[c]
        s_w += cpt * dr
        if cpt > lead:
            lead = cpt
    n = hi - lo
    f[row, 0] = math.log(pt)
    f[row, 1] = abs(eta)
    f[row, 2] = jet_area[j]
    f[row, 3] = jet_rho[j]
    f[row, 4] = jet_rho[j] * jet_area[j] / pt
    f[row, 5] = n
    if n > 0:
        f[row, 6] = lead / s_pt
        f[row, 7] = math.sqrt(s_pt2) / s_pt
        em = s_em / s_e
        f[row, 8] = min(max(em, EM_LO), EM_HI)
        f[row, 9] = s_w / s_pt
    else:
        f[row, 6] = 0.0
        f[row, 7] = 0.0
        f[row, 8] = 0.0
        f[row, 9] = 0.0
    f[row, 10] = jet_nvtx[j]


def forward(lo, nt, f, feature_index, mean, std, params, layout, a, b, out):
    """The network on the ``nt`` jets ``lo ... lo + nt - 1``: ``out[lo + t, :]`` (float32).
    ``f``: their features (float64 ``(>= nt, N_FEATURES)``); ``a``/``b``: float32 scratch
    ``(>= widest layer, >= nt)``.  Weights come transposed, ``(in, out)``: each output adds
    its products in input order; the jets run innermost, independent sums that the CPU compiler
    vectorises (the CPU passes a tile of :data:`TILE` jets, CUDA one jet per thread)."""
    n_in = feature_index.shape[0]
    for k in range(n_in):
        for t in range(nt):
            a[k, t] = (np.float32(f[t, feature_index[k]]) - mean[k]) / std[k]
    n_layers = layout.shape[0]
    for layer in range(n_layers):
        n_out = layout[layer, 0]
        width = layout[layer, 1]
        w0 = layout[layer, 2]
        b0 = w0 + n_out * width
        for o in range(n_out):
            bias = params[b0 + o]
            for t in range(nt):
                b[o, t] = bias
        for k in range(width):
            row = w0 + k * n_out
            for o in range(n_out):
                w = params[row + o]
                for t in range(nt):
                    b[o, t] += w * a[k, t]
        if layer < n_layers - 1:
            for o in range(n_out):
                for t in range(nt):
                    v = b[o, t]
                    a[o, t] = v if v > np.float32(0.0) else np.float32(0.0)
        else:
            for o in range(n_out):
                for t in range(nt):
                    out[lo + t, o] = b[o, t]


_features_cpu = numba.njit(inline="always", cache=True)(jet_features)
_forward_cpu = numba.njit(inline="always", cache=True)(forward)
_features_cuda = cuda.jit(device=True)(jet_features)
_forward_cuda = cuda.jit(device=True)(forward)


@numba.njit(parallel=True, nogil=True, cache=True)
def regress_jets_cpu(member_offsets, members, cl_e, cl_eem, cl_eta, cl_phi, jet_pt, jet_eta,
                     jet_phi, jet_area, jet_rho, jet_nvtx, feature_index, mean, std, params,
                     layout, out):
    """``out[j, :]``: the network's outputs for every jet ``j`` (float32), a tile of
    :data:`TILE` jets per ``prange`` iteration."""
    n = jet_pt.shape[0]
    for tile in numba.prange((n + TILE - 1) // TILE):
        lo = tile * TILE
        nt = min(TILE, n - lo)
        f = np.empty((TILE, N_FEATURES), dtype=np.float64)
        a = np.empty((MAX_WIDTH, TILE), dtype=np.float32)
        b = np.empty((MAX_WIDTH, TILE), dtype=np.float32)
        for t in range(nt):
            _features_cpu(lo + t, member_offsets, members, cl_e, cl_eem, cl_eta, cl_phi,
                          jet_pt, jet_eta, jet_phi, jet_area, jet_rho, jet_nvtx, f, t)
        _forward_cpu(lo, nt, f, feature_index, mean, std, params, layout, a, b, out)


@numba.njit(parallel=True, nogil=True, cache=True)
def features_cpu(member_offsets, members, cl_e, cl_eem, cl_eta, cl_phi, jet_pt, jet_eta,
                 jet_phi, jet_area, jet_rho, jet_nvtx, out):
    """``out[j, :]``: every feature of every jet (float64 ``(n_jets, N_FEATURES)``)."""
    for j in numba.prange(jet_pt.shape[0]):
        _features_cpu(j, member_offsets, members, cl_e, cl_eem, cl_eta, cl_phi, jet_pt,
                      jet_eta, jet_phi, jet_area, jet_rho, jet_nvtx, out, j)


@cuda.jit(cache=True)
def regress_jets_cuda(member_offsets, members, cl_e, cl_eem, cl_eta, cl_phi, jet_pt, jet_eta,
                      jet_phi, jet_area, jet_rho, jet_nvtx, feature_index, mean, std, params,
                      layout, out):
    """One thread per jet: the same arguments and result as :func:`regress_jets_cpu`."""
    j = cuda.grid(1)
    if j >= jet_pt.shape[0]:
        return
    f = cuda.local.array((1, N_FEATURES), numba.float64)
    a = cuda.local.array((MAX_WIDTH, 1), numba.float32)
    b = cuda.local.array((MAX_WIDTH, 1), numba.float32)
    _features_cuda(j, member_offsets, members, cl_e, cl_eem, cl_eta, cl_phi, jet_pt, jet_eta,
                   jet_phi, jet_area, jet_rho, jet_nvtx, f, 0)
    _forward_cuda(j, 1, f, feature_index, mean, std, params, layout, a, b, out)
