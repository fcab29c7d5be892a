"""Backend selection, the no-GPU error, and a Numba CUDA kernel through the cuda backend."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hltemu import backends, strictxp
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


def _pretend(monkeypatch, status, simulator):
    """Make this process look like a machine where ``cuda_status()`` is ``status`` and the CUDA
    simulator is on or off."""
    monkeypatch.setattr(backends, "cuda_status", lambda: status)
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1" if simulator else "0")


def test_auto_is_cpu_on_a_machine_without_gpu(monkeypatch):
    _pretend(monkeypatch, (False, "no CUDA GPU or driver found"), simulator=False)
    be = get_backend("auto")
    assert (be.name, be.is_gpu, be.device) == ("cpu", False, "CPU (Numba)")
    assert usable_backends()["cuda"] == (False, "no CUDA GPU or driver found")
    with pytest.raises(BackendError, match=r"backend 'cuda' is not usable here: no CUDA GPU or "
                                           r"driver found\. Use --backend cpu"):
        get_backend("cuda")


def test_auto_is_cpu_under_the_simulator_though_cuda_runs(monkeypatch):
    """The simulator is for tests, never a default: auto stays on the CPU, while an explicit
    cuda gives the simulated backend (device arrays are not host ndarrays there either)."""
    _pretend(monkeypatch, (True, "CUDA simulator (NUMBA_ENABLE_CUDASIM=1), NumPy as xp"),
             simulator=True)
    assert get_backend("auto").name == "cpu"
    cuda = get_backend("cuda")
    assert (cuda.name, cuda.simulated, cuda.is_gpu) == ("cuda", True, False)
    assert cuda.device.startswith("CUDA simulator")
    a = np.arange(6.0)
    on_device = cuda.to_device(a)
    # the CuPy-strict shim (on unless HLTEMU_STRICT_XP=0) holds it apart, like a GPU array
    assert isinstance(on_device, np.ndarray) != strictxp.enabled()
    back = cuda.to_host(on_device)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, a)
    assert cuda.item(cuda.to_device(np.array([7]))) == 7


def test_auto_is_the_gpu_where_one_is_usable(monkeypatch):
    """With a usable GPU (faked here: a stand-in CuPy and driver), auto picks cuda on the GPU;
    its arrays go through CuPy and synchronize waits on CuPy's stream and on Numba's device."""
    import numba.cuda

    calls = []

    class FakeStream:
        def synchronize(self):
            calls.append("cupy stream")

    fake_cupy = types.ModuleType("cupy")
    fake_cupy.asarray = lambda a, dtype=None: ("on gpu", np.asarray(a, dtype=dtype))
    fake_cupy.cuda = types.SimpleNamespace(get_current_stream=FakeStream)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(numba.cuda, "synchronize", lambda: calls.append("numba device"),
                        raising=False)
    _pretend(monkeypatch, (True, "NVIDIA H200"), simulator=False)
    be = get_backend("auto")
    assert (be.name, be.is_gpu, be.simulated, be.device) == ("cuda", True, False, "NVIDIA H200")
    assert be.xp is fake_cupy
    tag, arr = be.to_device([1, 2], dtype=np.float32)
    assert tag == "on gpu" and arr.dtype == np.float32
    be.synchronize()
    assert calls == ["cupy stream", "numba device"]
    # the CPU backends never touch the device
    get_backend("cpu").synchronize()
    assert calls == ["cupy stream", "numba device"]


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


def test_cuda_backend_round_trips_arrays_where_it_runs():
    """The real cuda backend of this machine (simulator or GPU): arrays go to the device as
    device arrays (never host ndarrays) and come back equal; a GPU says its name."""
    ok, why = usable_backends()["cuda"]
    if not ok:
        pytest.skip(f"cuda not usable: {why}")
    backend = get_backend("cuda")
    strict = strictxp.enabled()
    if cuda_simulator_enabled():
        assert backend.simulated and not backend.is_gpu
        assert backend.device == (f"{why}, CuPy-strict" if strict else why)
    else:
        assert backend.is_gpu and backend.device == why and "simulator" not in why
    a = np.linspace(-1.0, 1.0, 9)
    d = backend.to_device(a)
    assert not isinstance(d, np.ndarray) or (backend.simulated and not strict)
    backend.synchronize()
    back = backend.to_host(d)
    assert isinstance(back, np.ndarray) and back.dtype == np.float64
    np.testing.assert_array_equal(back, a)
    assert backend.item(backend.to_device(np.array([3.5]))) == 3.5


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


def test_one_stream_launches_turns_off_the_array_interface_sync(monkeypatch):
    """numba-cuda's wait for CuPy's stream before each launch is turned off unless the user set
    NUMBA_CUDA_ARRAY_INTERFACE_SYNC or CuPy uses per-thread default streams."""
    pytest.importorskip("numba.cuda")
    from hltemu.backends import one_stream_launches

    try:
        from numba.cuda.core import config
    except ImportError:
        from numba.core import config
    monkeypatch.setattr(config, "CUDA_ARRAY_INTERFACE_SYNC", True, raising=False)
    monkeypatch.delenv("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", raising=False)
    monkeypatch.setenv("CUPY_CUDA_PER_THREAD_DEFAULT_STREAM", "1")
    assert not one_stream_launches() and config.CUDA_ARRAY_INTERFACE_SYNC
    monkeypatch.delenv("CUPY_CUDA_PER_THREAD_DEFAULT_STREAM")
    monkeypatch.setenv("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "1")
    assert not one_stream_launches() and config.CUDA_ARRAY_INTERFACE_SYNC
    monkeypatch.delenv("NUMBA_CUDA_ARRAY_INTERFACE_SYNC")
    assert one_stream_launches() and config.CUDA_ARRAY_INTERFACE_SYNC is False
