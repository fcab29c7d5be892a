"""Anti-kT clustering kernels that reproduce FastJet's merge sequence, ties included.

Definitions (FastJet 3.5, ``PseudoJet`` and ``ClusterSequence``), all float64:

* rapidity and azimuth of a 4-vector ``(px, py, pz, E)``: :func:`rap_phi` (phi in [0, 2 pi);
  ``E == |pz|`` with ``pT == 0`` gives ``+-(1e5 + |pz|)``; a tachyonic mass counts as 0; the
  division by ``(E + |pz|)^2`` is IEEE-754's, also by zero: ``E + |pz| == 0`` (e.g. ``(0, 0,
  -3, -3)``, or ``(1e-170, 0, 0, 1e-170)`` whose squares underflow) gives ``0 / 0``, a NaN
  rapidity, and with ``pT > 0`` gives ``x / 0 = +inf``, an infinite rapidity (``-inf`` for
  ``pz > 0``), as FastJet 3.5);
* a NaN distance (from a NaN rapidity, or between two jets at the same infinite rapidity) is
  below nothing, as in FastJet's comparisons, and an infinite one is not below ``R^2``: a jet of
  NaN or infinite rapidity is nobody's NN and has none, so it becomes an inclusive jet on its
  own;
* the momentum factor of anti-kT ``k = 1 / kt2`` (``1e300`` when ``kt2 <= 1e-300``);
* the geometric distance ``dR2 = dphi^2 + drap^2`` with ``dphi = |phi_i - phi_j|`` folded to
  ``2 pi - dphi`` above pi (:func:`dist`);
* each jet's nearest neighbour (NN) is the closest jet with ``dR2 < R^2`` strictly (else the
  beam), and its ``diJ = dR2_NN * min(k_i, k_NN)`` (``R^2 k_i`` for the beam).  FastJet
  compares these unnormalised values (the ``1/R^2`` of the textbook ``d_ij`` is applied after),
  so we do too; the global minimum ``diJ`` is merged (E-scheme) or, for the beam, becomes a jet.

Ties.  FastJet's choice among equal distances depends on its strategy.  We reproduce the one of
its plain N^2 strategy (``N2Plain``, ``ClusterSequence_N2.icc``), which is a function of *slots*:
jets live in an array of ``n_active`` slots (inputs start in slot = input index); a merge of the
jets in slots ``sa > sb`` puts the new jet in ``sb`` and moves the jet of the last slot into
``sa``; a beam step moves the last slot into the freed one.  Then

* the step merges the jet of the smallest slot among those with the minimal ``diJ``;
* a NN found by a search is the smallest slot among the jets at the minimal distance (initially
  slot = input index);
* after a step, a jet whose NN was one of the two removed jets searches again; any other jet
  takes the new jet as NN only if it is *strictly* closer than its NN (an equally close new jet
  does not replace it); the new jet's NN is found by a search.

Every backend here follows these rules, so that reference, cpu and cuda give the same jets and
constituents, and the same as FastJet run with ``N2Plain``, exact ties included (FastJet's
tiled strategies, its default at these multiplicities, break exact ties otherwise; for inputs
without exact ties every strategy gives the same jets).

Rounding.  Every float operation that decides a merge (kt2, the rapidity's argument, the
azimuth's wrap, dR2, 1/kt2, diJ) is one IEEE-754 float64 operation rounded to nearest, in the
same order on every backend: the functions are written once (:func:`_make`) on arithmetic
helpers, plain operators for Python and Numba's CPU target, libdevice's ``dmul_rn``,
``dadd_rn`` and ``ddiv_rn`` for CUDA (``a - b`` as ``dadd_rn(a, -b)``), which NVVM never
contracts into an FMA (it contracts ``a * b + c`` by default, which rounds once instead of
twice).  ``tests/test_ptx.py`` checks the sm_90 PTX.  What remains target-dependent is
``atan2`` and ``log`` themselves (libdevice against the C library, possibly a last-bit
difference).

Strategies (each in its own module, on :func:`_make`'s compiled functions):

* :mod:`hltemu.kernels.antikt_cpu`: ``antikt_cpu`` (Numba ``@njit``, parallel over events),
  tiles and a tournament tree over slots;
* :mod:`hltemu.kernels.antikt_cuda`: ``antikt_cuda``, one event per block, parallel minimum
  reductions in shared memory;
* the reference (plain Python and NumPy, :mod:`hltemu.stages.antikt`) calls :func:`rap_phi`,
  :func:`momentum_factor` and :func:`dist` of this module.

Inputs: flat ``px, py, pz, E`` [GeV] with CSR ``offsets`` (n_events + 1).  Outputs, per event
with the input offsets: ``jet_of[i]`` the inclusive jet of input i (0-based, in the order
FastJet's history makes them, i.e. the order of the beam steps), and for each inclusive jet
``jpx, jpy, jpz, jE`` and ``jfirst`` (its smallest input index), rows ``offsets[e] ...
offsets[e] + n_jets[e] - 1``.

Numba's on-disk cache of a kernel is invalidated by its own file only, and the kernels of
``antikt_cpu.py`` and ``antikt_cuda.py`` compile in this module's functions and constants:
after editing this module, clear their caches (``kernels/__pycache__/antikt_cpu.*`` and
``antikt_cuda.*``, the ``.nbi`` and ``.nbc`` files), as after editing :mod:`hltemu.kernels.ieee`.
"""

from __future__ import annotations

import math

from .ieee import PY_OPS

#: FastJet's MaxRap: rapidity given to pT = 0, E = |pz| momenta (plus |pz|), and the
#: pseudorapidity of jets with px = py = 0.
MAX_RAP = 1.0e5
PI = math.pi
TWO_PI = 2.0 * math.pi
INF = math.inf
NAN = math.nan


# ------------------------------------------------------------------------------------------
# Scalar functions, written once: plain Python for the reference, compiled for cpu and cuda
# ------------------------------------------------------------------------------------------
def _make(jit, mul, add, sub, div):
    """``(rap_phi, momentum_factor, dist)`` on the arithmetic ``mul, add, sub, div`` (one of
    :data:`PY_OPS`, :data:`CPU_OPS`, :data:`CUDA_OPS`), each compiled with ``jit``.  Every
    float operation goes through them, in the order of the formulas below (the reference's
    NumPy distances use the same order)."""

    def rap_phi(px, py, pz, e):
        """FastJet's rapidity (dimensionless) and azimuth [rad] in [0, 2 pi) of one 4-vector
        [GeV]: ``kt2 = px^2 + py^2`` [GeV^2], ``phi = atan2(py, px)`` (0 for ``kt2 == 0``),
        ``m2 = (E + pz)(E - pz) - kt2``, ``rap = -+ log((kt2 + max(m2, 0)) / (E + |pz|)^2) / 2``
        (sign of pz), the quotient IEEE-754's for a zero divisor (``0 / 0``: NaN, ``x / 0``:
        ``+inf``), written out so that no target raises; ``+-(MAX_RAP + |pz|)`` when
        ``E == |pz|`` and ``kt2 == 0``."""
        kt2 = add(mul(px, px), mul(py, py))
        if kt2 == 0.0:
            phi = 0.0
        else:
            phi = math.atan2(py, px)
        if phi < 0.0:
            phi = add(phi, TWO_PI)
        if phi >= TWO_PI:
            phi = sub(phi, TWO_PI)
        apz = abs(pz)
        if e == apz and kt2 == 0.0:
            rap = add(MAX_RAP, apz)
            if pz < 0.0:
                rap = -rap
        else:
            m2 = sub(mul(add(e, pz), sub(e, pz)), kt2)
            eff = m2 if 0.0 < m2 else 0.0
            epz = add(e, apz)
            num = add(kt2, eff)
            den = mul(epz, epz)
            if den != 0.0:
                arg = div(num, den)
            elif num == 0.0:
                arg = NAN  # 0 / 0: E + |pz| == 0 (or underflows), kt2 + max(m2, 0) == 0
            else:
                arg = INF  # x / +0 with x > 0: E + |pz| == 0 (or underflows), kt2 > 0
            if arg > 0.0:
                rap = mul(0.5, math.log(arg))
            elif arg == 0.0:
                rap = -INF
            else:
                rap = NAN
            if pz > 0.0:
                rap = -rap
        return rap, phi

    def momentum_factor(px, py):
        """Anti-kT's ``1 / kt2`` [GeV^-2], ``kt2 = px^2 + py^2`` [GeV^2]; ``1e300`` for
        ``kt2 <= 1e-300`` (FastJet)."""
        kt2 = add(mul(px, px), mul(py, py))
        if kt2 > 1e-300:
            return div(1.0, kt2)
        return 1e300

    def dist(rap1, phi1, rap2, phi2):
        """FastJet's ``dphi^2 + drap^2`` (dimensionless) with phi [rad] in [0, 2 pi)."""
        dphi = abs(sub(phi1, phi2))
        drap = sub(rap1, rap2)
        if dphi > PI:
            dphi = sub(TWO_PI, dphi)
        return add(mul(dphi, dphi), mul(drap, drap))

    return jit(rap_phi), jit(momentum_factor), jit(dist)


rap_phi, momentum_factor, dist = _make(lambda f: f, *PY_OPS)
