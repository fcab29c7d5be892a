"""Compute backends: where arrays live and which implementation of each stage runs.

``reference``
    NumPy and plain Python written to be read: the oracle for every test.
``cpu``
    Numba ``@njit`` kernels on NumPy arrays.
``cuda``
    Numba CUDA kernels plus CuPy array work through :attr:`Backend.xp`.  When the environment
    sets ``NUMBA_ENABLE_CUDASIM=1`` (tests on a machine without a GPU) the same code runs in
    Numba's CUDA simulator and ``xp`` is NumPy.
``auto``
    ``cuda`` when a GPU is usable, otherwise ``cpu``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

# numba-cuda <= 0.30.4 registers an overload of ``np.row_stack`` when it first compiles a CUDA
# kernel; NumPy 2.5 removed that alias of ``np.vstack`` (deprecated since NumPy 2.0), so with
# NumPy >= 2.5 every CUDA compilation failed with "module 'numpy' has no attribute 'row_stack'"
# (the first real-GPU run, 2026-11-28: H200, NumPy 2.5.2, numba-cuda 0.30.4).  Put the alias
# back, as what it was, before anything compiles; every hltemu import passes here first.
if "row_stack" not in dir(np):  # pragma: no cover - NumPy >= 2.5 only
    np.row_stack = np.vstack

BACKEND_NAMES: tuple[str, ...] = ("reference", "cpu", "cuda")
CHOICES: tuple[str, ...] = (*BACKEND_NAMES, "auto")


class BackendError(RuntimeError):
    """A backend was asked for that cannot run here (unknown name, no GPU, missing package)."""


def cuda_simulator_enabled() -> bool:
    """True when Numba's CUDA simulator is switched on (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, str]:
    """Whether the ``cuda`` backend can run here, and a one-line reason or device name.

    Returns ``(True, "<device name>")`` on a GPU, ``(True, "CUDA simulator ...")`` under
    ``NUMBA_ENABLE_CUDASIM=1``, and ``(False, "<why not>")`` otherwise.
    """
    try:
        from numba import cuda
    except Exception as exc:  # pragma: no cover - numba always imports where hltemu does
        return False, f"numba.cuda cannot be imported ({exc})"
    if cuda_simulator_enabled():
        return True, "CUDA simulator (NUMBA_ENABLE_CUDASIM=1), NumPy as xp"
    try:
        available = cuda.is_available()
    except Exception as exc:  # driver present but broken
        return False, f"CUDA driver error: {exc}"
    if not available:
        return False, "no CUDA GPU or driver found"
    try:
        import cupy  # noqa: F401
    except Exception as exc:
        return False, (f"a GPU is present but CuPy cannot be imported ({exc}); "
                       "pip install 'hltemu[cuda]'")
    try:
        name = cuda.get_current_device().name
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:
        return False, f"CUDA device cannot be opened: {exc}"
    return True, name


@dataclass(frozen=True)
class Backend:
    """A place to compute: its array module and how to move arrays to and from it.

    Attributes
    ----------
    name:
        ``"reference"``, ``"cpu"`` or ``"cuda"``.
    xp:
        The array module, :mod:`numpy` or :mod:`cupy`.
    device:
        Human-readable device name ("CPU", a GPU name, or the CUDA simulator).
    simulated:
        True for ``cuda`` under the Numba CUDA simulator.
    """

    name: str
    xp: ModuleType = field(repr=False)
    device: str = "CPU"
    simulated: bool = False
    _sync: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @property
    def is_gpu(self) -> bool:
        """True when arrays live in GPU memory (a real ``cuda`` backend, not the simulator)."""
        return self.name == "cuda" and not self.simulated

    def to_device(self, array: Any, dtype: Any = None) -> Any:
        """Return ``array`` as an array of this backend (no copy when it is already there)."""
        if self.xp is not np:  # CuPy on a GPU, or the CuPy-strict shim under the simulator
            return self.xp.asarray(array, dtype=dtype)
        if hasattr(array, "get") and not isinstance(array, np.ndarray):  # a CuPy array
            array = array.get()
        return np.asarray(array, dtype=dtype)

    def to_host(self, array: Any) -> np.ndarray:
        """Return ``array`` as a NumPy array in host memory."""
        if hasattr(array, "get") and not isinstance(array, np.ndarray):
            return array.get()
        return np.asarray(array)

    def item(self, array: Any) -> Any:
        """The single value of ``array`` (a size-1 device or host array) as a Python scalar.

        On a GPU this waits for the device: use it where the host needs the value (a buffer
        size, an error check), never ``int()``/``bool()`` of a device array, which hide that
        synchronisation (the CuPy-strict simulator shim refuses those inside stages).
        """
        from hltemu.xpsafe import item

        return item(array)

    def synchronize(self) -> None:
        """Wait until all queued device work is done (no-op on CPU backends)."""
        if self._sync is not None:
            self._sync()


def one_stream_launches() -> bool:
    """Stop numba-cuda from synchronizing CuPy's stream before every kernel launch, where that
    is safe; returns whether it did.

    For each array argument that comes through ``__cuda_array_interface__`` (every CuPy array)
    numba-cuda waits for the stream the array names (``NUMBA_CUDA_ARRAY_INTERFACE_SYNC``,
    default on): 27 waits per anti-kT launch.  hltemu creates no stream: CuPy's work and every
    kernel go to the legacy default stream, which orders them, so the waits only stall the
    host.  They stay on when the user chose (``NUMBA_CUDA_ARRAY_INTERFACE_SYNC`` set) or when
    CuPy runs on per-thread default streams (``CUPY_CUDA_PER_THREAD_DEFAULT_STREAM``), where
    the ordering would not hold.
    """
    import os

    if "NUMBA_CUDA_ARRAY_INTERFACE_SYNC" in os.environ:
        return False
    if os.environ.get("CUPY_CUDA_PER_THREAD_DEFAULT_STREAM", "0") not in ("", "0"):
        return False
    try:
        from numba.cuda.core import config
    except ImportError:  # numba-cuda before the config moved into it
        from numba.core import config
    config.CUDA_ARRAY_INTERFACE_SYNC = False
    return True


def _make_cuda() -> Backend:
    ok, why = cuda_status()
    if not ok:
        raise BackendError(
            f"backend 'cuda' is not usable here: {why}. Use --backend cpu (Numba on the CPU), "
            "or set NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels in Numba's simulator."
        )
    if cuda_simulator_enabled():
        from hltemu import strictxp

        if not strictxp.enabled():
            return Backend("cuda", np, device=why, simulated=True)
        strictxp.install_simulator_unwrap()
        return Backend("cuda", strictxp.strict_numpy, device=f"{why}, CuPy-strict",
                       simulated=True)
    import cupy
    from numba import cuda

    one_stream_launches()

    def sync() -> None:
        cupy.cuda.get_current_stream().synchronize()
        cuda.synchronize()

    return Backend("cuda", cupy, device=why, simulated=False, _sync=sync)


def get_backend(name: str | Backend = "auto") -> Backend:
    """Return the backend called ``name`` (one of ``reference``, ``cpu``, ``cuda``, ``auto``).

    Raises :class:`BackendError` naming the valid choices for an unknown name, and naming
    ``--backend cpu`` when ``cuda`` is asked for where there is neither a GPU nor the simulator.
    """
    if isinstance(name, Backend):
        return name
    key = str(name).strip().lower()
    if key == "auto":
        key = "cuda" if cuda_status()[0] and not cuda_simulator_enabled() else "cpu"
    if key == "reference":
        return Backend("reference", np, device="CPU (NumPy reference)")
    if key == "cpu":
        return Backend("cpu", np, device="CPU (Numba)")
    if key == "cuda":
        return _make_cuda()
    raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(CHOICES)}")


def usable_backends() -> dict[str, tuple[bool, str]]:
    """For each backend name: whether it runs here and its device (or why it does not)."""
    out: dict[str, tuple[bool, str]] = {
        "reference": (True, "CPU (NumPy reference)"),
        "cpu": (True, "CPU (Numba)"),
    }
    out["cuda"] = cuda_status()
    return out
