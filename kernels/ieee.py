"""Exactly rounded float64 arithmetic, one set per target: ``(mul, add, sub, div)``.

Every float operation that decides a discrete outcome (an anti-kT merge, a doublet cut, a
topocluster cluster's kinematics that feed anti-kT) goes through these, so that each is one
IEEE-754 float64 operation rounded to nearest on every backend, as in Python, NumPy and Numba's
CPU target (LLVM contracts ``a * b + c`` into an FMA only under fastmath).  NVVM contracts by
default (``fma.rn.f64``: one rounding instead of two), so the cuda set is libdevice's
``__nv_dmul_rn`` etc., which are never contracted (``tests/test_ptx.py`` checks the PTX).

Kernel modules write their math once as a factory ``_make(jit, mul, add, sub, div)`` and call
it with :data:`PY_OPS` (reference), :data:`CPU_OPS` (``numba.njit``) and :data:`CUDA_OPS`
(``cuda.jit(device=True)``).  What libdevice cannot make exact is its transcendental functions
(``atan2``, ``log``, ``exp``...), which may differ from glibc's in the last bit.

Numba's on-disk cache of a kernel is invalidated by its own file only: after editing this
module, clear the caches of the kernel modules that import it (their ``__pycache__/*.nbi``).
"""

import operator

import numba
from numba import cuda
from numba.cuda import libdevice


def _mul(a, b):
    """``a * b``, rounded once."""
    return a * b


def _add(a, b):
    """``a + b``, rounded once."""
    return a + b


def _sub(a, b):
    """``a - b``, rounded once."""
    return a - b


def _div(a, b):
    """``a / b``, rounded once."""
    return a / b


#: ``(mul, add, sub, div)`` for plain Python (the reference backend): the operators themselves.
PY_OPS = (operator.mul, operator.add, operator.sub, operator.truediv)
#: The same compiled for Numba's CPU target (inlined: the code is that of the plain operators).
CPU_OPS = tuple(numba.njit(cache=True, inline="always")(f) for f in (_mul, _add, _sub, _div))


@cuda.jit(device=True)
def _dsub_rn(a, b):
    """``a - b`` on CUDA: libdevice has no ``dsub_rn``; ``a + (-b)`` is the same IEEE
    operation (negation is exact), rounded once by ``dadd_rn``."""
    return libdevice.dadd_rn(a, -b)


#: The cuda target: libdevice's exactly rounded intrinsics.  The simulator has no libdevice
#: (its stubs return None); its kernels run in Python, whose floats are IEEE doubles already.
CUDA_OPS = PY_OPS if numba.config.ENABLE_CUDASIM else (
    libdevice.dmul_rn, libdevice.dadd_rn, _dsub_rn, libdevice.ddiv_rn)
