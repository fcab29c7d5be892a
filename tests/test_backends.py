"""Backend selection, the no-GPU error, and a Numba CUDA kernel through the cuda backend."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hltemu.backends import BackendError, cuda_simulator_enabled, get_backend, usable_backends
from hltemu.ops import segment_sum


def test_reference_and_cpu_always_available():
    for name in ("reference", "cpu"):
        be = get_backend(name)
        assert be.name == name and be.xp is np and not be.is_gpu
        a = be.to_device([1, 2, 3])
        assert isinstance(be.to_host(a), np.ndarray)
        be.synchronize()
    assert get_backend(" CPU ").name == "cpu"
    assert get_backend(get_backend("cpu")).name == "cpu"


def test_unknown_backend_names_the_choices():
    with pytest.raises(BackendError, match="unknown backend 'gpu'; choose one of reference, cpu, cuda, auto"):
        get_backend("gpu")


def test_auto_picks_cpu_without_a_gpu():
    ok, _ = usable_backends()["cuda"]
    be = get_backend("auto")
    if cuda_simulator_enabled() or not ok:
        assert be.name == "cpu"
    else:
        assert be.name == "cuda" and be.is_gpu


@pytest.mark.skipif(
    os.path.exists("/dev/nvidiactl"), reason="a GPU is present: the no-GPU error cannot happen"
)
def test_cuda_without_gpu_or_simulator_is_a_clear_error():
    code = (
        "from hltemu.backends import get_backend, BackendError\n"
        "try:\n    get_backend('cuda')\nexcept BackendError as e:\n    print(e)\n"
    )
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "backend 'cuda' is not usable here" in out.stdout
    assert "--backend cpu" in out.stdout
    assert "NUMBA_ENABLE_CUDASIM=1" in out.stdout


def test_cuda_backend_under_simulator_or_gpu():
    ok, why = usable_backends()["cuda"]
    if not ok:
        pytest.skip(f"cuda not usable: {why}")
    backend = get_backend("cuda")
    assert backend.simulated == cuda_simulator_enabled()
    assert backend.is_gpu == (not backend.simulated)


@settings(max_examples=25, deadline=None)
@given(
    counts=st.lists(st.integers(0, 9), min_size=0, max_size=40),
    seed=st.integers(0, 2**31),
)
def test_segment_sum_kernel_agrees_on_every_backend(counts, seed):
    """A tiny Numba kernel (CPU prange and CUDA, simulator without a GPU) against the reference."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    values = rng.normal(scale=10, size=offsets[-1])
    ref = segment_sum(values, offsets, get_backend("reference"))
    for name, (ok, _) in usable_backends().items():
        if name == "reference" or not ok:
            continue
        be = get_backend(name)
        got = be.to_host(segment_sum(be.to_device(values), be.to_device(offsets), be))
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
