"""A CuPy-strict stand-in for NumPy, the ``xp`` of the ``cuda`` backend under the CUDA simulator.

Under ``NUMBA_ENABLE_CUDASIM=1`` (CI, no GPU) the ``cuda`` backend's arrays are NumPy arrays, and
NumPy accepts calls that CuPy refuses or that cost a device-to-host synchronisation on a GPU.
This module makes the simulator refuse them, so that the CPU-only test suite finds the next one
before a GPU does.  Device arrays become :class:`DeviceArray` (a NumPy array behind a wrapper
that is *not* an ``ndarray``) and ``xp`` becomes :data:`strict_numpy`, which refuses:

* ``xp.repeat(a, repeats)`` with an array of ``repeats`` (refused by CuPy < 14.1);
* ``xp.bincount`` of an empty array (raises in CuPy < 14);
* ``np.asarray`` / ``np.array`` of device data, and mixing host arrays into device arithmetic
  (CuPy raises ``TypeError``: implicit host <-> device conversions);
* ``int()``, ``float()``, ``bool()`` of a device array *inside a stage* (a hidden
  synchronisation: the host waits for the device; ``if xp.any(bad):`` is one), and
  ``operator.index()`` of one anywhere (CuPy does not implement it).

Intended reads from the device are explicit: :meth:`hltemu.backends.Backend.item`,
:meth:`~hltemu.backends.Backend.to_host` (``.get()``), ``.item()``, ``.tolist()``.  Each refusal is
a :class:`StrictXPError` naming the call.  :func:`record_reads` records every read (stage, kind,
bytes), so that a test can hold a chain to a budget of device synchronisations.
``HLTEMU_STRICT_XP=0`` turns the shim off.

Kernel launches in the simulator receive the wrapped NumPy array itself (the launch is patched
once to unwrap :class:`DeviceArray` arguments), so kernels run unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin


class StrictXPError(TypeError):
    """A call that CuPy refuses, or a hidden device-to-host synchronisation inside a stage."""


_STAGE: contextvars.ContextVar[str | None] = contextvars.ContextVar("hltemu_stage", default=None)


@contextlib.contextmanager
def stage_scope(name: str) -> Iterator[None]:
    """Mark code as running inside stage ``name`` (implicit syncs are refused there)."""
    token = _STAGE.set(name)
    try:
        yield
    finally:
        _STAGE.reset(token)


def current_stage() -> str | None:
    """The stage whose code is running (``None`` outside stages)."""
    return _STAGE.get()


def enabled() -> bool:
    """True unless ``HLTEMU_STRICT_XP=0``."""
    return os.environ.get("HLTEMU_STRICT_XP", "1") not in ("0", "")


def _unwrap(x: Any) -> Any:
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return DeviceArray(x)
    if isinstance(x, np.generic):  # CuPy returns 0-d arrays where NumPy returns scalars
        return DeviceArray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _refuse_host_arrays(args: Any, what: str) -> None:
    """CuPy refuses NumPy arrays (ndim >= 1) mixed into device calls: refuse them too."""
    stack = list(args) if isinstance(args, (list, tuple)) else [args]
    while stack:
        a = stack.pop()
        if isinstance(a, (list, tuple)):
            stack.extend(a)
        elif isinstance(a, np.ndarray) and a.ndim > 0:
            raise StrictXPError(
                f"{what}: a host NumPy array (shape {a.shape}) mixed with device arrays; CuPy "
                "refuses it in arithmetic and copies it to the device on every call when it "
                "indexes: upload it once with backend.to_device(...) / xp.asarray(...)"
            )


def _sync_refused(kind: str) -> None:
    stage = current_stage()
    if stage is not None:
        raise StrictXPError(
            f"{kind}() of a device array inside stage {stage!r}: a hidden device-to-host "
            "synchronisation on a GPU; read it explicitly with backend.item(x) (or keep it on the "
            "device)"
        )


class DeviceArray(NDArrayOperatorsMixin):
    """A simulated device array: NumPy storage with CuPy's refusals (see the module doc)."""

    __slots__ = ("_a",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    # -- metadata (no device access on a GPU either) ------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    T = property(lambda self: DeviceArray(self._a.T))

    def __len__(self) -> int:
        return len(self._a)

    def __repr__(self) -> str:
        return f"DeviceArray({self._a!r})"

    # -- element access -------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        _refuse_host_arrays(key, "indexing a device array with")
        if isinstance(key, DeviceArray) and key.dtype == np.bool_:
            _note_read("mask", key._a)  # the result's size is on the device
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        _refuse_host_arrays((key, value), "assigning into a device array")
        self._a[_unwrap(key)] = _unwrap(value)

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self._a)):
            yield self[i]

    # -- explicit reads (allowed: a sync the code asks for) -------------------------------------
    def get(self) -> np.ndarray:
        """A NumPy copy in host memory (CuPy's explicit download)."""
        _note_read("get", self._a)
        return self._a.copy()

    def item(self) -> Any:
        _note_read("item", self._a)
        return self._a.item()

    def tolist(self) -> Any:
        _note_read("tolist", self._a)
        return self._a.tolist()

    # -- refused implicit conversions --------------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise StrictXPError(
            "np.asarray/np.array of device data: CuPy refuses an implicit device-to-host copy; use "
            "backend.to_host(x)"
        )

    def __int__(self) -> int:
        _sync_refused("int")
        _note_read("int", self._a)
        return int(self._a)

    def __float__(self) -> float:
        _sync_refused("float")
        _note_read("float", self._a)
        return float(self._a)

    def __bool__(self) -> bool:
        _sync_refused("bool")
        _note_read("bool", self._a)
        return bool(self._a)

    def __index__(self) -> int:
        raise StrictXPError(
            "operator.index() of a device array (a device array used as a Python integer, e.g. "
            "a slice bound or a range() argument): CuPy does not implement it; read the value "
            "with backend.item(x)"
        )

    # -- NumPy protocols: compute on the storage, wrap the result -------------------------------
    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        _refuse_host_arrays(inputs, f"np.{ufunc.__name__}")
        _refuse_host_arrays(kwargs.get("out", ()), f"np.{ufunc.__name__}(out=...)")
        result = getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs))
        return _wrap(result)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        return getattr(strict_numpy, func.__name__)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # no __array_interface__ / buffer: NumPy must not see through
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):

            @functools.wraps(attr)
            def method(*args: Any, **kwargs: Any) -> Any:
                _refuse_host_arrays(args, f"DeviceArray.{name}")
                if name in _SIZED_BY_DATA:
                    _note_read(name, self._a)
                return _wrap(attr(*_unwrap(args), **_unwrap(kwargs)))

            return method
        return _wrap(attr)


def _repeat(a: Any, repeats: Any, axis: Any = None) -> Any:
    if isinstance(repeats, (DeviceArray, np.ndarray, list, tuple)) and np.ndim(
        _unwrap(repeats) if not isinstance(repeats, DeviceArray) else repeats._a
    ) > 0:
        raise StrictXPError(
            "xp.repeat(a, repeats) with an array of repeats: CuPy < 14.1 refuses it; use "
            "hltemu.xpsafe.event_index(offsets, n_rows, xp) or an integer repeat"
        )
    return _wrap(np.repeat(_unwrap(a), _unwrap(repeats), axis=axis))


def _bincount(x: Any, weights: Any = None, minlength: int = 0) -> Any:
    if int(np.shape(_unwrap(x))[0]) == 0:
        raise StrictXPError(
            "xp.bincount of an empty array: CuPy < 14 raises; use hltemu.xpsafe.bincount"
        )
    _refuse_host_arrays((x, weights), "xp.bincount")
    return _wrap(np.bincount(_unwrap(x), _unwrap(weights), minlength=minlength))


#: Host arrays uploaded while :func:`record_uploads` is active (``None``: not recording).
_UPLOADS: list[np.ndarray] | None = None


@contextlib.contextmanager
def record_uploads() -> Iterator[list[np.ndarray]]:
    """Record every host array that becomes device data (``xp.asarray``/``xp.array`` of host
    data, hence ``backend.to_device``): the list holds a copy of each, in order."""
    global _UPLOADS
    previous, _UPLOADS = _UPLOADS, []
    try:
        yield _UPLOADS
    finally:
        _UPLOADS = previous


#: Calls whose result's size depends on device data: CuPy reads that size back (a
#: synchronisation), so :func:`record_reads` counts them (boolean-mask indexing too).
_SIZED_BY_DATA = frozenset({"nonzero", "flatnonzero", "argwhere", "unique", "compress",
                            "extract"})


class DeviceRead(NamedTuple):
    """One device-to-host read (a synchronisation on a GPU) seen by :func:`record_reads`."""

    stage: str | None  #: the stage whose code read (``None``: the pipeline, outside stages)
    #: ``get`` (a download), ``item``, ``tolist``, ``int``, ``float``, ``bool``, or an
    #: operation sized by the data (``nonzero``, ``mask`` indexing, ``unique``, ...)
    kind: str
    nbytes: int  #: bytes read


#: Device reads recorded while :func:`record_reads` is active (``None``: not recording).
_READS: list[DeviceRead] | None = None


@contextlib.contextmanager
def record_reads() -> Iterator[list[DeviceRead]]:
    """Record every device-to-host read of simulated device data (:class:`DeviceRead`: which
    stage, how, how many bytes): the explicit ones (``backend.to_host``, ``backend.item``,
    ``.get()``, ``.item()``, ``.tolist()``), ``int()``/``float()``/``bool()`` outside
    stages (refused inside), and the operations whose result is sized by the data
    (``nonzero``, boolean-mask indexing, ``unique``, ...), for which CuPy reads a count.
    On a GPU each is a synchronisation with the device; a test holds the chain to a budget
    of them."""
    global _READS
    previous, _READS = _READS, []
    try:
        yield _READS
    finally:
        _READS = previous


def _note_read(kind: str, a: np.ndarray) -> None:
    if _READS is not None:
        _READS.append(DeviceRead(current_stage(), kind, int(a.nbytes)))


def _note_upload(a: Any) -> None:
    if _UPLOADS is not None and not isinstance(a, DeviceArray) and not _has_device([a]):
        _UPLOADS.append(np.array(a))


def _asarray(a: Any, dtype: Any = None, order: Any = None, **kwargs: Any) -> Any:
    """Upload (host data) or view/convert (device data): both explicit, both allowed."""
    _note_upload(a)
    return DeviceArray(np.asarray(_unwrap(a), dtype=dtype, order=order, **kwargs))


def _array(a: Any, dtype: Any = None, copy: bool = True, **kwargs: Any) -> Any:
    _note_upload(a)
    return DeviceArray(np.array(_unwrap(a), dtype=dtype, copy=copy, **kwargs))


def _argsort(a: Any, axis: int = -1, kind: Any = None) -> Any:
    """CuPy's sort is stable (a Thrust stable sort) whatever ``kind`` says: be stable too."""
    return _wrap(np.argsort(_unwrap(a), axis=axis, kind="stable"))


def _ascontiguousarray(a: Any, dtype: Any = None) -> Any:
    return DeviceArray(np.ascontiguousarray(_unwrap(a), dtype=dtype))


_SPECIAL = {"argsort": _argsort, "repeat": _repeat, "bincount": _bincount, "asarray": _asarray,
            "array": _array, "ascontiguousarray": _ascontiguousarray}


class _StrictNumPy(ModuleType):
    """``xp`` under the simulator: NumPy's functions on :class:`DeviceArray` s, with refusals."""

    def __getattr__(self, name: str) -> Any:
        if name in _SPECIAL:
            return _SPECIAL[name]
        attr = getattr(np, name)
        if isinstance(attr, (type, np.dtype)) or not callable(attr):
            return attr  # dtypes, constants (pi, inf, newaxis), classes
        if isinstance(attr, ModuleType):
            return attr

        @functools.wraps(attr)
        def fn(*args: Any, **kwargs: Any) -> Any:
            device = _has_device(args) or _has_device(kwargs.values())
            if device:
                _refuse_host_arrays(args, f"xp.{name}")
                if name in _SIZED_BY_DATA or (name == "where" and len(args) == 1):
                    _note_read(name, np.asarray(_unwrap(args[0])))
            return _wrap(attr(*_unwrap(args), **_unwrap(kwargs)))

        return fn


def _has_device(values: Any) -> bool:
    stack = list(values)
    while stack:
        v = stack.pop()
        if isinstance(v, DeviceArray):
            return True
        if isinstance(v, (list, tuple)):
            stack.extend(v)
    return False


#: The strict ``xp`` module object.
strict_numpy = _StrictNumPy("hltemu.strictxp.strict_numpy")


@functools.lru_cache(maxsize=1)
def install_simulator_unwrap() -> None:
    """Let simulated kernel launches take :class:`DeviceArray` arguments (unwrapped to NumPy)."""
    from numba.cuda.simulator import kernel as sim_kernel

    original = sim_kernel.FakeCUDAKernel.__call__

    @functools.wraps(original)
    def call(self: Any, *args: Any) -> Any:
        return original(self, *(a._a if isinstance(a, DeviceArray) else a for a in args))

    sim_kernel.FakeCUDAKernel.__call__ = call
