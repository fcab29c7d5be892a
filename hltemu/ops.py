"""Backend-dispatched operations on collections that several stages and metrics share."""

from __future__ import annotations

from typing import Any

import numpy as np

from hltemu.backends import Backend

#: CUDA threads per block of the one-thread-per-item kernels.
THREADS_PER_BLOCK = 128


def blocks(n: int, threads: int = THREADS_PER_BLOCK) -> int:
    """Blocks of ``threads`` threads that cover ``n`` items (one thread each): ``ceil(n /
    threads)``, launched as ``kernel[blocks(n), THREADS_PER_BLOCK](...)``."""
    return (int(n) + threads - 1) // threads


def segment_sum(values: Any, offsets: Any, backend: Backend) -> Any:
    """Per-event sums of ``values`` (float64, shape ``(n_events,)``) on ``backend``.

    ``values`` has ``offsets[-1]`` rows; ``offsets`` are CSR offsets of length n_events + 1.
    Every backend adds an event's values one at a time in row order from 0.0, so all give the
    same bits.
    """
    xp = backend.xp
    n = int(offsets.shape[0]) - 1
    if backend.name == "reference":
        values = np.asarray(values, dtype=np.float64)
        out = np.zeros(n, dtype=np.float64)
        for i in range(n):
            for v in values[offsets[i]: offsets[i + 1]]:
                out[i] += v
        return out
    out = xp.zeros(n, dtype=xp.float64)
    vals = xp.asarray(values, dtype=xp.float64)
    if backend.name == "cpu":
        from hltemu.kernels.segments import segment_sum_cpu

        segment_sum_cpu(vals, offsets, out)
        return out
    from hltemu.kernels.segments import segment_sum_cuda

    if n:
        segment_sum_cuda[blocks(n), THREADS_PER_BLOCK](vals, offsets, out)
    return out
