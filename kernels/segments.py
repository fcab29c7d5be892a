"""Per-event (segmented) reductions over CSR offsets: Numba CPU and CUDA variants.

``values`` is a flat float array, ``offsets`` the int64 CSR offsets (n_events + 1); the result
has one entry per event.  Used for event-level sums such as HT and total energies.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import cuda


def _segment_sum_one(values, offsets, i):  # plain scalar code, compiled for CPU and GPU below
    acc = 0.0
    for j in range(offsets[i], offsets[i + 1]):
        acc += values[j]
    return acc


_segment_sum_one_cpu = numba.njit(inline="always", cache=True)(_segment_sum_one)
_segment_sum_one_cuda = cuda.jit(device=True)(_segment_sum_one)


@numba.njit(parallel=True, nogil=True, cache=True)
def segment_sum_cpu(values: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = sum(values[offsets[i]:offsets[i+1]])`` for every event, in parallel."""
    for i in numba.prange(out.shape[0]):
        out[i] = _segment_sum_one_cpu(values, offsets, i)


@cuda.jit(cache=True)
def segment_sum_cuda(values, offsets, out):
    """One thread per event: ``out[i] = sum(values[offsets[i]:offsets[i+1]])``."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = _segment_sum_one_cuda(values, offsets, i)
