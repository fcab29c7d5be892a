"""HLT jet-energy regression: features and the dense network per jet, Numba CPU and CUDA.

The features and the network are stated in :mod:`hltemu.jet_regression`; these kernels compute
them on flat arrays, one jet per ``prange`` iteration (cpu) or per thread (cuda), with the same
two scalar functions compiled for both targets (fbpic style):

* :func:`jet_features` — every feature of ``hltemu.jet_regression.FEATURES`` of jet ``j``
  (float64), from its constituent clusters ``members[member_offsets[j]:member_offsets[j + 1]]``
  (cluster rows, ascending) into ``f``;
* :func:`forward` — standardise the model's features (float32) and run the dense layers
  (``params``/``layout`` of ``hltemu.jet_regression.flat_params``, weights transposed),
  ReLU between layers,
  ping-ponging between two scratch vectors of ``MAX_WIDTH`` float32; the last layer's outputs go
  to ``out[j, :]``.

On the CPU the network runs on tiles of :data:`TILE` jets (:func:`forward_tile`, one tile per
``prange`` iteration): the innermost loop runs over the tile's jets, which the compiler
vectorises, while each jet's sums still add the same float32 products in the same order as
:func:`forward` does for one jet (so cpu equals :func:`forward` bit for bit; 5x faster than a
jet per iteration, measured on one core, 2026-11-29).

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
                 jet_phi, jet_area, jet_rho, jet_nvtx, f):
    """Every feature of jet ``j`` into ``f[0:N_FEATURES]`` (float64), in the order of
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
    f[0] = math.log(pt)
    f[1] = abs(eta)
    f[2] = jet_area[j]
    f[3] = jet_rho[j]
    f[4] = jet_rho[j] * jet_area[j] / pt
    f[5] = n
    if n > 0:
        f[6] = lead / s_pt
        f[7] = math.sqrt(s_pt2) / s_pt
        em = s_em / s_e
        f[8] = min(max(em, EM_LO), EM_HI)
        f[9] = s_w / s_pt
    else:
        f[6] = 0.0
        f[7] = 0.0
        f[8] = 0.0
        f[9] = 0.0
    f[10] = jet_nvtx[j]


def forward(j, f, feature_index, mean, std, params, layout, a, b, out):
    """The network on jet ``j``'s features ``f``: ``out[j, :]`` (float32).  ``a``/``b``:
    float32 scratch of at least the widest layer.  Weights come transposed, ``(in, out)``, so
    the inner loop runs over a layer's outputs (independent sums, contiguous weights: the CPU
    compiler vectorises it) while each output still adds its products in input order."""
    n_in = feature_index.shape[0]
    for k in range(n_in):
        a[k] = (np.float32(f[feature_index[k]]) - mean[k]) / std[k]
    n_layers = layout.shape[0]
    for layer in range(n_layers):
        n_out = layout[layer, 0]
        width = layout[layer, 1]
        w0 = layout[layer, 2]
        b0 = w0 + n_out * width
        for o in range(n_out):
            b[o] = params[b0 + o]
        for k in range(width):
            ak = a[k]
            row = w0 + k * n_out
            for o in range(n_out):
                b[o] += params[row + o] * ak
        if layer < n_layers - 1:
            for o in range(n_out):
                a[o] = b[o] if b[o] > np.float32(0.0) else np.float32(0.0)
        else:
            for o in range(n_out):
                out[j, o] = b[o]


@numba.njit(inline="always", cache=True)
def forward_tile(lo, nt, f, feature_index, mean, std, params, layout, a, b, out):
    """:func:`forward` for the ``nt`` jets ``lo ... lo + nt - 1`` at once: ``f`` their
    features (float64 ``(TILE, N_FEATURES)``), ``a``/``b`` float32 ``(MAX_WIDTH, TILE)``
    scratch; the jets run innermost (vectorised), each with :func:`forward`'s sums."""
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
                          jet_pt, jet_eta, jet_phi, jet_area, jet_rho, jet_nvtx, f[t])
        forward_tile(lo, nt, f, feature_index, mean, std, params, layout, a, b, out)


@numba.njit(parallel=True, nogil=True, cache=True)
def features_cpu(member_offsets, members, cl_e, cl_eem, cl_eta, cl_phi, jet_pt, jet_eta,
                 jet_phi, jet_area, jet_rho, jet_nvtx, out):
    """``out[j, :]``: every feature of every jet (float64 ``(n_jets, N_FEATURES)``)."""
    for j in numba.prange(jet_pt.shape[0]):
        _features_cpu(j, member_offsets, members, cl_e, cl_eem, cl_eta, cl_phi, jet_pt,
                      jet_eta, jet_phi, jet_area, jet_rho, jet_nvtx, out[j])


@cuda.jit(cache=True)
def regress_jets_cuda(member_offsets, members, cl_e, cl_eem, cl_eta, cl_phi, jet_pt, jet_eta,
                      jet_phi, jet_area, jet_rho, jet_nvtx, feature_index, mean, std, params,
                      layout, out):
    """One thread per jet: the same arguments and result as :func:`regress_jets_cpu`."""
    j = cuda.grid(1)
    if j >= jet_pt.shape[0]:
        return
    f = cuda.local.array(N_FEATURES, numba.float64)
    a = cuda.local.array(MAX_WIDTH, numba.float32)
    b = cuda.local.array(MAX_WIDTH, numba.float32)
    _features_cuda(j, member_offsets, members, cl_e, cl_eem, cl_eta, cl_phi, jet_pt, jet_eta,
                   jet_phi, jet_area, jet_rho, jet_nvtx, f)
    _forward_cuda(j, f, feature_index, mean, std, params, layout, a, b, out)
