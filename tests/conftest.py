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
