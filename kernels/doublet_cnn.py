"""Doublet-CNN inference: the per-hit encoder and the per-doublet head (see :mod:`hltemu.cnn`).

Two scalar functions hold the arithmetic, plain Python compiled twice (fbpic style):
``numba.njit`` for the CPU kernels and ``cuda.jit(device=True)`` for the CUDA kernels.

* :func:`encode_hit` — one hit: its pad through conv1 + ReLU, conv2 + ReLU, dense + ReLU; the
  two activation maps go to caller-provided scratch vectors (flat, channel-major), the
  embedding to ``emb[h, :]``.
* :func:`doublet_logit` — one doublet: the hidden layer is computed one unit at a time and
  folded straight into the output sum, so the head needs no scratch at all.

Kernels: ``*_cpu`` run ``prange`` over hits or doublets (one per iteration); ``*_cuda`` run one
thread per hit or doublet.  Every array is float32, and so is every accumulator (sums start
from a float32 bias and add float32 products; ReLU goes through a float32 store), as in the
NumPy reference; only the summation order differs, hence the 1e-5 score tolerance.

The CUDA encoder's scratch lives in per-thread local memory, whose size must be a compile-time
constant: :func:`encode_hits_cuda_kernel` builds the kernel for one model shape
(:func:`scratch_sizes`), once per shape, so that each thread reserves what that model needs
(1,232 B for the shipped model) rather than a fixed maximum (9,216 B before), which on a full
GPU reserved gigabytes of local memory and lowered occupancy.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import cuda

# The largest activation map and input patch the CUDA encoder accepts for its per-thread
# scratch; defined once, with the model loader (hltemu.cnn.validate) enforcing the same.
from .doublet_cnn_limits import MAX_ACTIVATIONS, MAX_PATCH


def scratch_sizes(pad_shape, conv1_shape, conv2_shape) -> tuple[int, int, int]:
    """Per-thread scratch of the encoder, in float32 entries: ``(n_act1, n_act2, n_patch)``.

    ``pad_shape`` is ``(H, W)`` pixels; ``conv1_shape`` ``(C1, 1, K1, K1)`` and ``conv2_shape``
    ``(C2, C1, K2, K2)`` are the convolution weight shapes as PyTorch stores them.  The 'valid'
    convolutions give ``H1 = H - K1 + 1`` (``W1`` alike) and ``H2 = H1 - K2 + 1``, so
    ``n_act1 = C1*H1*W1``, ``n_act2 = C2*H2*W2`` and ``n_patch = max(K1*K1, C1*K2*K2)`` (the
    larger of the two convolutions' patches), the sizes :func:`encode_hits_cpu` allocates.
    """
    h, w = (int(v) for v in pad_shape)
    c1, k1 = int(conv1_shape[0]), int(conv1_shape[2])
    c2, k2 = int(conv2_shape[0]), int(conv2_shape[2])
    h1, w1 = h - k1 + 1, w - k1 + 1
    h2, w2 = h1 - k2 + 1, w1 - k2 + 1
    return c1 * h1 * w1, c2 * h2 * w2, max(k1 * k1, c1 * k2 * k2)


def encode_hit(h, t, pads, scale, k1, w1, b1, k2, w2, b2, we, be, act1, act2, patch, emb):
    """Embedding of the hit whose pad is ``pads[h]`` (electrons) into ``emb[t, :]``.

    Weights come flattened: ``w1 (C1, K1*K1)``, ``w2 (C2, C1*K2*K2)`` (PyTorch's
    ``(out, in, k, k)`` in C order), ``we (E, C2*H2*W2)``; ``k1``/``k2`` are the kernel sizes and
    ``scale`` is ``1 / pad_scale``.  ``act1``, ``act2`` and ``patch`` are float32 scratch
    vectors of at least ``C1*H1*W1``, ``C2*H2*W2`` and ``C1*K2*K2`` entries.  Each output of a
    convolution is a dot product of a weight row with the input patch under the kernel,
    gathered once per position into ``patch`` (contiguous: the CPU compiler vectorises it).
    """
    c1 = w1.shape[0]
    h1 = pads.shape[1] - k1 + 1
    x1 = pads.shape[2] - k1 + 1
    for i in range(h1):
        for j in range(x1):
            n = 0
            for u in range(k1):
                for v in range(k1):
                    patch[n] = pads[h, i + u, j + v] * scale
                    n += 1
            for c in range(c1):
                acc = b1[c]
                for k in range(n):
                    acc += w1[c, k] * patch[k]
                m = (c * h1 + i) * x1 + j
                act1[m] = acc
                if act1[m] < 0:
                    act1[m] = 0
    c2 = w2.shape[0]
    h2 = h1 - k2 + 1
    x2 = x1 - k2 + 1
    for i in range(h2):
        for j in range(x2):
            n = 0
            for ci in range(c1):
                for u in range(k2):
                    for v in range(k2):
                        patch[n] = act1[(ci * h1 + i + u) * x1 + j + v]
                        n += 1
            for c in range(c2):
                acc = b2[c]
                for k in range(n):
                    acc += w2[c, k] * patch[k]
                m = (c * h2 + i) * x2 + j
                act2[m] = acc
                if act2[m] < 0:
                    act2[m] = 0
    n_in = c2 * h2 * x2
    for e in range(we.shape[0]):
        acc = be[e]
        for k in range(n_in):
            acc += we[e, k] * act2[k]
        emb[t, e] = acc
        if emb[t, e] < 0:
            emb[t, e] = 0


def doublet_logit(d, inner_row, outer_row, emb, feats, inner_layer, outer_layer, n_layers,
                  wh, bh, wo, bo):
    """Logit of doublet ``d``: hits ``inner_row[d]``/``outer_row[d]`` (rows of ``emb``),
    normalised features ``feats[d, :]``, layer ids one-hot coded (``n_layers`` each).

    ``wh (H, 2E + F + 2 n_layers)`` and ``wo (1, H)``: each hidden unit is formed, passed
    through ReLU and added to the output sum at once.
    """
    n_emb = emb.shape[1]
    n_feat = feats.shape[1]
    a = inner_row[d]
    b = outer_row[d]
    col_i = 2 * n_emb + n_feat + inner_layer[d]
    col_o = 2 * n_emb + n_feat + n_layers + outer_layer[d]
    logit = bo[0]
    for j in range(wh.shape[0]):
        acc = bh[j]
        for k in range(n_emb):
            acc += wh[j, k] * emb[a, k]
        for k in range(n_emb):
            acc += wh[j, n_emb + k] * emb[b, k]
        for k in range(n_feat):
            acc += wh[j, 2 * n_emb + k] * feats[d, k]
        acc += wh[j, col_i]
        acc += wh[j, col_o]
        if acc > 0:
            logit += wo[0, j] * acc
    return logit


def sigmoid(z):
    """Logistic function of a logit, without overflow for large ``|z|``."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


#: CPU kernels may reorder sums (vectorised dot products); no other fast-math liberty.
_FAST = {"reassoc", "contract"}
_encode_cpu = numba.njit(inline="always", cache=True, fastmath=_FAST)(encode_hit)
_logit_cpu = numba.njit(inline="always", cache=True, fastmath=_FAST)(doublet_logit)
_sigmoid_cpu = numba.njit(inline="always", cache=True)(sigmoid)
_encode_cuda = cuda.jit(device=True)(encode_hit)
_logit_cuda = cuda.jit(device=True)(doublet_logit)
_sigmoid_cuda = cuda.jit(device=True)(sigmoid)


# -- CPU --------------------------------------------------------------------------------------
@numba.njit(parallel=True, nogil=True, cache=True, fastmath=_FAST)
def encode_hits_cpu(rows, pads, scale, k1, w1, b1, k2, w2, b2, we, be, emb):  # pragma: no cover
    """``emb[t, :]`` = embedding of the hit ``pads[rows[t]]``, for every ``t`` (prange);
    weights flattened as :func:`encode_hit` takes them."""
    h1 = pads.shape[1] - k1 + 1
    x1 = pads.shape[2] - k1 + 1
    n1 = w1.shape[0] * h1 * x1
    n2 = w2.shape[0] * (h1 - k2 + 1) * (x1 - k2 + 1)
    n_patch = max(k1 * k1, w1.shape[0] * k2 * k2)
    for t in numba.prange(rows.shape[0]):
        act1 = np.empty(n1, dtype=np.float32)
        act2 = np.empty(n2, dtype=np.float32)
        patch = np.empty(n_patch, dtype=np.float32)
        _encode_cpu(rows[t], t, pads, scale, k1, w1, b1, k2, w2, b2, we, be, act1, act2, patch,
                    emb)


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=_FAST)
def score_doublets_cpu(inner_row, outer_row, emb, feats, inner_layer, outer_layer, n_layers,
                       wh, bh, wo, bo, out):  # pragma: no cover - compiled
    """``out[d]`` = score of doublet ``d`` (float32, prange over doublets)."""
    for d in numba.prange(out.shape[0]):
        out[d] = _sigmoid_cpu(_logit_cpu(d, inner_row, outer_row, emb, feats, inner_layer,
                                         outer_layer, n_layers, wh, bh, wo, bo))


# -- CUDA -------------------------------------------------------------------------------------
def encode_hits_cuda_kernel(n_act1: int, n_act2: int, n_patch: int):
    """The CUDA encoder whose per-thread scratch holds ``n_act1``, ``n_act2`` and ``n_patch``
    float32 entries (:func:`scratch_sizes` of the model), i.e. ``4 * (n_act1 + n_act2 +
    n_patch)`` bytes of local memory per thread.

    Launch as ``kernel[blocks, threads](rows, pads, scale, k1, w1, b1, k2, w2, b2, we, be, emb)``
    (arguments as :func:`encode_hits_cpu` takes them): thread ``t`` writes the embedding of hit
    ``pads[rows[t]]`` into ``emb[t, :]``.  One kernel per size tuple, built on first use and then
    reused (compiled by Numba at its first launch).  Raises :class:`ValueError` naming the sizes
    when one is not positive or exceeds :data:`MAX_ACTIVATIONS` / :data:`MAX_PATCH`.
    """
    sizes = (int(n_act1), int(n_act2), int(n_patch))
    limits = (MAX_ACTIVATIONS, MAX_ACTIVATIONS, MAX_PATCH)
    for name, n, limit in zip(("conv1 activations", "conv2 activations", "patch"), sizes, limits,
                              strict=True):
        if not 0 < n <= limit:
            raise ValueError(f"CUDA encoder scratch (conv1, conv2, patch) = {sizes} float32 "
                             f"entries: {name} {n} is outside 1-{limit}, the sizes the kernel "
                             "supports")
    return _encode_hits_cuda(*sizes)


@functools.lru_cache(maxsize=8)
def _encode_hits_cuda(n_act1: int, n_act2: int, n_patch: int):
    """Build the encoder kernel for one scratch size tuple (validated, plain ints): the sizes
    are closure constants, which ``cuda.local.array`` needs."""

    @cuda.jit
    def encode_hits_cuda(rows, pads, scale, k1, w1, b1, k2, w2, b2, we, be,
                         emb):  # pragma: no cover - compiled
        """Thread ``t`` writes the embedding of hit ``pads[rows[t]]`` into ``emb[t, :]``."""
        t = cuda.grid(1)
        if t >= rows.shape[0]:
            return
        act1 = cuda.local.array(n_act1, numba.float32)
        act2 = cuda.local.array(n_act2, numba.float32)
        patch = cuda.local.array(n_patch, numba.float32)
        _encode_cuda(rows[t], t, pads, scale, k1, w1, b1, k2, w2, b2, we, be, act1, act2,
                     patch, emb)

    return encode_hits_cuda


@cuda.jit(cache=True)
def score_doublets_cuda(inner_row, outer_row, emb, feats, inner_layer, outer_layer, n_layers,
                        wh, bh, wo, bo, out):  # pragma: no cover - compiled
    """Thread ``d`` writes the score of doublet ``d`` into ``out[d]``."""
    d = cuda.grid(1)
    if d >= out.shape[0]:
        return
    out[d] = _sigmoid_cuda(_logit_cuda(d, inner_row, outer_row, emb, feats, inner_layer,
                                       outer_layer, n_layers, wh, bh, wo, bo))
