"""No fused multiply-add where the cuda kernels decide something: their sm_90 PTX.

CUDA contracts ``a * b + c`` into one FMA (``fma.rn.f64``: one rounding instead of two) unless
the operations are libdevice's exactly rounded intrinsics (``dmul_rn``, ``dadd_rn``, ...), and
an FMA would let a GPU round a distance or a cut differently from the Numba CPU kernels and the
NumPy reference, whose discrete outputs (anti-kT merge sequence and constituents, doublet sets,
topocluster membership) the project claims to reproduce exactly.  The kernels write the
deciding arithmetic once on helpers that are plain operators on the CPU and those intrinsics on
CUDA (:data:`hltemu.kernels.ieee.CUDA_OPS`); this test compiles, for sm_90 (H100/H200), the
device functions that decide and the whole kernels, and counts ``fma.rn.f64``.

What is checked, and why:

* anti-kT: ``dist`` (dR^2, compared to pick each jet's nearest neighbour and against R^2) and
  ``momentum_factor`` (1 / kt^2, the factor of diJ): no FMA at all.  ``rap_phi`` (rapidity and
  azimuth, the inputs of dR^2) calls libdevice's ``atan2`` and ``log``, whose own code is full
  of FMAs (their accuracy is libdevice's, not ours: a documented last-bit difference from the
  C library); its FMAs must be exactly those of a probe that calls only ``atan2`` and ``log``,
  i.e. none comes from our arithmetic (kt^2, m^2, the argument of the log, the phi wrap).  The
  whole kernel ``antikt_cuda`` (diJ = dR^2 * min(1/kt^2), the reductions, the E-scheme sums)
  then holds exactly the FMAs of its two inlined ``rap_phi`` calls (inputs and merged jets).
* doublets: ``doublet_passes`` (every cut) and the whole kernel ``find_doublets_cuda``: none.
  (On the 1 um grid the cut's sums add exact integer products, so an FMA would not change them
  anyway; the intrinsics make that independent of the grid.)
* topocluster: the labelling kernels only compare significances (no arithmetic); the
  kinematics kernel's sums use the intrinsics, so cpu and cuda clusters agree bit for bit:
  none in any of the four kernels.

The compilation needs NVVM (``numba-cuda[cu13]`` or ``[cu12]``), not a GPU, and runs in a
subprocess because it needs ``NUMBA_ENABLE_CUDASIM=0`` while the rest of the suite runs the
simulator (set before ``numba.cuda`` is imported, tests/conftest.py).  Without a GPU, device
functions called from a kernel compile for the "current device", so the subprocess pretends
an sm_90 one (as tests/test_doublet_cnn.py does).  Skipped only when NVVM cannot be loaded.
About 10 s.
"""

from __future__ import annotations

import json
import re

import pytest
from ptx_runner import ptx_counts as run_ptx

#: Times ``rap_phi`` is inlined into ``antikt_cuda``: the inputs' and each merged jet's.
RAP_PHI_CALLS = 2
FMA = re.compile(r"\bfma\.rn\.f64\b")


def _compile_all() -> dict[str, dict[str, int]]:
    """In a process with NUMBA_ENABLE_CUDASIM=0: PTX instruction counts (``fma``: fma.rn.f64,
    ``mul_rn``: mul.rn.f64, ``add_rn``: add.rn.f64) of each checked function and kernel."""
    import math
    import types

    import numba.cuda.dispatcher as dispatcher
    from numba import cuda
    from numba import types as nt

    if not cuda.is_available():  # device functions compile for the current device's cc
        dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))

    from hltemu.kernels import antikt_cuda as A
    from hltemu.kernels import doublets as D
    from hltemu.kernels import topocluster as C

    f8, i8, i4 = nt.float64, nt.int64, nt.int32
    a8, ai8, ai4 = f8[::1], i8[::1], i4[::1]
    cuts2d = f8[:, ::1]

    def counts(ptx: str) -> dict[str, int]:
        return {"fma": len(FMA.findall(ptx)), "mul_rn": ptx.count("mul.rn.f64"),
                "add_rn": ptx.count("add.rn.f64")}

    def device(fn, sig):
        return counts(cuda.compile_ptx(fn, sig, device=True, cc=(9, 0))[0])

    def kernel(fn, sig):
        return counts(cuda.compile_ptx(fn.py_func, sig, cc=(9, 0))[0])

    def probe(y, x, a):
        return math.atan2(y, x), math.log(a)

    # as the stages launch them (float64 data, int64 offsets, int32 hit/pair/label columns)
    antikt_sig = ((a8,) * 4 + (ai8, f8, ai8) + (a8,) * 4 + (ai8, ai8) + (a8,) * 6 + (ai8,) * 2
                  + (a8,) * 4 + (ai8,) * 3)
    doublets_sig = ((ai4, ai4) + (a8,) * 6 + (ai4, ai8, i8, i8, ai4, a8, cuts2d, a8, ai8)
                    + (ai4,) * 3)
    rows = (ai8, ai4, ai8, ai4, a8)  # work, row_event, offsets, cell_id, sig
    graph = (i4[:, ::1], ai8, ai4)  # slot, nbr_offsets, nbr_index
    return {
        "probe atan2+log": device(probe, (f8, f8, f8)),
        "antikt.rap_phi": device(A._rap_phi_cuda.py_func, (f8,) * 4),
        "antikt.momentum_factor": device(A._mfac_cuda.py_func, (f8, f8)),
        "antikt.dist": device(A._dist_cuda.py_func, (f8,) * 4),
        "antikt_cuda": kernel(A.antikt_cuda, antikt_sig),
        "doublets.doublet_passes": device(D._passes_cuda.py_func,
                                          (f8,) * 10 + (cuts2d, i8, a8)),
        "find_doublets_cuda": kernel(D.find_doublets_cuda, doublets_sig),
        "propagate_tags_cuda": kernel(C.propagate_tags_cuda, rows + (f8,) + graph + (ai8, ai4)),
        "mark_perimeter_cuda": kernel(C.mark_perimeter_cuda,
                                      rows + (f8, f8) + graph + (ai8, ai4)),
        "assign_perimeter_cuda": kernel(C.assign_perimeter_cuda, rows + (f8,) + graph + (ai8,)),
        "cluster_kinematics_cuda": kernel(C.cluster_kinematics_cuda,
                                          (ai8, ai8, a8, nt.uint8[::1], a8, a8, ai8, a8, a8, a8,
                                           a8, ai4)),
    }


@pytest.fixture(scope="module")
def ptx_counts() -> dict[str, dict[str, int]]:
    return run_ptx([__file__])


@pytest.mark.parametrize("name", ["antikt.dist", "antikt.momentum_factor",
                                  "doublets.doublet_passes", "find_doublets_cuda",
                                  "propagate_tags_cuda", "mark_perimeter_cuda",
                                  "assign_perimeter_cuda", "cluster_kinematics_cuda"])
def test_no_fma_where_kernels_decide(ptx_counts, name):
    """No fma.rn.f64 at all in these device functions and whole kernels (see the module
    docstring for why each)."""
    assert ptx_counts[name]["fma"] == 0, (name, ptx_counts[name])


def test_rap_phi_fma_are_only_libdevice_atan2_and_log(ptx_counts):
    """``rap_phi`` holds exactly the FMAs of libdevice's atan2 and log (36 with CUDA 13's
    NVVM), and ``antikt_cuda`` those of its inlined ``rap_phi`` copies: a multiple of them
    (2x when both calls are inlined; one stray FMA breaks the multiple)."""
    probe = ptx_counts["probe atan2+log"]["fma"]
    assert probe > 0  # libdevice's atan2 and log do use FMAs: the probe measures them
    assert ptx_counts["antikt.rap_phi"]["fma"] == probe, ptx_counts
    kernel = ptx_counts["antikt_cuda"]["fma"]
    assert kernel % probe == 0 and 0 < kernel <= RAP_PHI_CALLS * probe, ptx_counts


def test_exactly_rounded_intrinsics_are_in_the_ptx(ptx_counts):
    """The arithmetic is there, as mul.rn / add.rn (a plain product is ``mul.f64``): the zero
    FMA counts above are not a sign of compiling something empty."""
    for name in ("antikt.dist", "antikt.momentum_factor", "antikt.rap_phi", "antikt_cuda",
                 "doublets.doublet_passes", "find_doublets_cuda", "cluster_kinematics_cuda"):
        assert ptx_counts[name]["mul_rn"] >= 2 and ptx_counts[name]["add_rn"] >= 1, (
            name, ptx_counts[name])


if __name__ == "__main__":
    print("PTX-COUNTS " + json.dumps(_compile_all()))
