"""What the benchmark suites share: the built-in sample and the GPU-only skip."""

from __future__ import annotations

from pathlib import Path

import pytest

from hltemu.backends import cuda_simulator_enabled, cuda_status

#: The built-in sample (10 ttbar events at pileup 50), the default input of the benchmarks.
SAMPLE = Path(__file__).resolve().parents[1] / "hltemu" / "data" / "sample.root"


def skip_unless_gpu(backend_name: str) -> None:
    """Skip a ``cuda`` benchmark unless a real GPU runs it (simulator timings mean nothing)."""
    if backend_name == "cuda":
        ok, why = cuda_status()
        if not ok or cuda_simulator_enabled():
            pytest.skip(f"needs a GPU ({why or 'the CUDA simulator is on'})")
