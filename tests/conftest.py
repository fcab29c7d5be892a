"""Shared test set-up.

The cuda backend is tested everywhere: on a machine without a GPU, Numba's CUDA simulator runs
the kernels (NUMBA_ENABLE_CUDASIM=1, NumPy standing in for CuPy).  The variable must be set before
numba.cuda is imported, hence here.  On a GPU machine the real device is used; set
NUMBA_ENABLE_CUDASIM yourself to force either.
"""

from __future__ import annotations

import os
from pathlib import Path

if "NUMBA_ENABLE_CUDASIM" not in os.environ:
    has_gpu = Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0" if has_gpu else "1"

import pytest  # noqa: E402

from hltemu.backends import cuda_status, get_backend  # noqa: E402

#: Real CMS NanoAOD file (2015 ttbar simulation, 200 events, CMS Open Data), kept in tests/data.
CMS_NANOAOD = Path(__file__).resolve().parent / "data" / "nanoAOD_2015_CMS_Open_Data_ttbar.root"


def cuda_usable() -> bool:
    return cuda_status()[0]


@pytest.fixture(params=["reference", "cpu", "cuda"])
def backend(request):
    """Each backend in turn; cuda under the simulator where there is no GPU."""
    if request.param == "cuda" and not cuda_usable():
        pytest.skip(f"cuda backend not usable: {cuda_status()[1]}")
    return get_backend(request.param)


@pytest.fixture
def cms_nanoaod() -> Path:
    assert CMS_NANOAOD.is_file(), f"CMS open-data test file missing: {CMS_NANOAOD}"
    return CMS_NANOAOD


def _mentions_cuda(item) -> bool:
    """True when the test function's source names the cuda backend or loops over all backends."""
    import inspect

    try:
        src = inspect.getsource(item.function)
    except (AttributeError, OSError, TypeError):
        return False
    return any(s in src for s in ('"cuda"', "'cuda'", "BACKEND_NAMES"))


def pytest_collection_modifyitems(config, items):
    """Mark every test that runs the cuda backend ``cuda`` (its id or name says cuda), so that
    ``pytest -m "cuda or gpu"`` runs the GPU-relevant part of the suite on a lent device; skip
    ``gpu`` tests (real-device sizes, too slow for the simulator) unless a real GPU is here."""
    real_gpu = cuda_usable() and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0")
    for item in items:
        if "cuda" in item.nodeid.lower() or _mentions_cuda(item):
            item.add_marker(pytest.mark.cuda)
        if item.get_closest_marker("gpu") is not None and not real_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a real GPU (not the CUDA simulator)"))
