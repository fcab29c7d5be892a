"""Offline tracks from generator particles: the counter-based random stream and the per-particle
response of stage ``tracks``, written once and compiled for Python (the reference), Numba's CPU
target and CUDA.

The rules (candidates, efficiency table, resolutions, impact parameters) and their sources are
stated in :mod:`hltemu.stages.tracks`; this module holds the arithmetic.  Data layout: GenPart
rows of a batch grouped by event with CSR ``offsets``; per row float64 ``pt`` [GeV], ``eta``,
``phi`` [rad], ``vx``, ``vy``, ``vz`` [cm], int32 ``charge``, ``status``, ``pdg``; per event
uint64 ``run``, ``lumi``, ``event``.  Outputs: one value per GenPart row (``keep`` 1 for a
reconstructed track, else 0, and the track's columns), compacted by the stage.

Random stream
-------------
Every random number is a pure function of ``(seed, run, luminosityBlock, event, row, draw)``,
``row`` the particle's GenPart row within its event and ``draw`` one of the :data:`DRAW_*`
numbers below: nothing depends on the batch, on the order in which threads run or on the
backend.  The generator is SplitMix64 (G. Steele, D. Lea, C. Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014; the finaliser constants of S. Vigna's
``splitmix64.c``):

* ``mix64(z)``: ``z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9``, ``z = (z ^ z >> 27) *
  0x94D049BB133111EB``, ``z ^ z >> 31``, all modulo 2^64;
* the event's key ``k = mix64(mix64(mix64(key0 ^ run) ^ lumi) ^ event)`` with ``key0 =
  mix64(SALT ^ seed)`` (:func:`seed_key`; :data:`SALT` keeps other users of the scheme apart);
* draw ``d`` of row ``r``: ``h = mix64(k + (r * N_DRAWS + d + 1) * GAMMA)``, the ``(r N_DRAWS +
  d + 1)``-th output of SplitMix64 seeded with ``k``;
* the uniform ``u = ((h >> 11) + 0.5) 2^-53``, in (0, 1): 53 random bits, exactly representable,
  so ``u`` is the same double on every target;
* a Gaussian from two draws by Box-Muller's cosine branch: ``sqrt(-2 ln u1) cos(2 pi u2)``.

Integers are uint64 on the compiled targets (multiplication wraps modulo 2^64) and Python ints
masked to 64 bits in Python (the reference, and the CUDA simulator, whose device code is Python:
NumPy's uint64 scalars would warn on every wrap), through the cast ``u64`` each target passes to
:func:`_make`; ``& MASK64`` after each multiplication and addition is the wrap in Python and a
no-op on uint64.

Rounding.  The efficiency decision is ``u < table value``: exact on every target, so reference,
cpu and cuda keep the same particles.  Every other float operation is one IEEE-754 operation
through :mod:`hltemu.kernels.ieee`'s sets (libdevice's ``dmul_rn`` etc. on CUDA, which NVVM
never contracts into an FMA), and ``sqrt`` is correctly rounded everywhere, so the resolutions
(``sigma_*``) are identical on every target.  What differs is ``log``, ``cos``, ``sin`` and
``sinh`` (libdevice against the C library: a last-bit difference at most), which enter the
Gaussians and the true impact parameters: smeared values agree to about 1e-15 relative (plus
~1e-16 of the production radius, absolute, for ``d0`` and ``z0``, which cancel).

Numba's on-disk cache: the kernels compile in :mod:`hltemu.kernels.ieee`; after editing it,
clear ``kernels/__pycache__/tracks*``.
"""

from __future__ import annotations

import math

import numba
from numba import cuda

from .ieee import CPU_OPS, CUDA_OPS, PY_OPS

#: 2^64 - 1: the uint64 wrap, written out for Python's unbounded ints.
MASK64 = 0xFFFFFFFFFFFFFFFF
#: SplitMix64's increment (2^64 / golden ratio, odd).
GAMMA = 0x9E3779B97F4A7C15
#: Finaliser multipliers of SplitMix64 (Stafford's "Mix13").
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
#: The stream's salt: "tracks" in ASCII, so that another stage keyed by the same event
#: identifiers draws other numbers.
SALT = 0x747261636B73
#: 2^-53: a 53-bit integer times this is a double in [0, 1).
TWO_M53 = 2.0 ** -53
TWO_PI = 2.0 * math.pi

#: Draw numbers of one particle (``N_DRAWS`` per row; 7 is unused, kept for a future draw).
DRAW_EFFICIENCY = 0
DRAW_CURVATURE = 1  # and 2: the Gaussian of q/pT
DRAW_D0 = 3  # and 4
DRAW_Z0 = 5  # and 6
N_DRAWS = 8

#: Index of each cut in the ``cuts`` array: pt_min [GeV], eta_max, r_max^2 [cm^2], z_max [cm].
CUT_PT_MIN, CUT_ETA_MAX, CUT_R2_MAX, CUT_Z_MAX = 0, 1, 2, 3
#: |pdgId| of the muon, whose efficiency table is its own.
MUON = 13


def _u64_py(x):
    """A Python int modulo 2^64 (the reference's and the simulator's uint64)."""
    return int(x) & MASK64


def _u64_compiled(x):
    """uint64 (Numba's CPU and CUDA targets)."""
    return numba.uint64(x)


def _make(jit, u64, mul, add, sub, div):
    """The device functions of stage ``tracks`` on one target: ``jit`` compiles, ``u64`` casts
    to the target's uint64, ``mul, add, sub, div`` is a set of :mod:`hltemu.kernels.ieee`.

    Returns a dict name -> function: ``mix64``, ``event_key``, ``uniform``, ``gaussian``,
    ``candidate``, ``efficiency``, ``resolutions``, ``impact_parameters``, ``respond``.
    """

    def mix64(z):
        """SplitMix64's finaliser of the uint64 ``z``."""
        z = ((z ^ (z >> u64(30))) * u64(MIX1)) & u64(MASK64)
        z = ((z ^ (z >> u64(27))) * u64(MIX2)) & u64(MASK64)
        return z ^ (z >> u64(31))

    mix = jit(mix64)

    def event_key(key0, run, lumi, event):
        """The key of one event's stream from ``key0`` (:func:`seed_key`) and its identifiers."""
        k = mix(u64(key0) ^ u64(run))
        k = mix(k ^ u64(lumi))
        return mix(k ^ u64(event))

    def uniform(key, row, draw):
        """Draw ``draw`` of GenPart row ``row`` (within the event) of the stream ``key``: a
        double in (0, 1), the same bits on every target."""
        counter = u64(row) * u64(N_DRAWS) + u64(draw) + u64(1)
        h = mix((u64(key) + counter * u64(GAMMA)) & u64(MASK64))
        return mul(add(float(h >> u64(11)), 0.5), TWO_M53)

    uni = jit(uniform)

    def gaussian(key, row, draw):
        """A standard normal from draws ``draw`` and ``draw + 1`` (Box-Muller, cosine)."""
        u1 = uni(key, row, draw)
        u2 = uni(key, row, draw + 1)
        return mul(math.sqrt(mul(-2.0, math.log(u1))), math.cos(mul(TWO_PI, u2)))

    gauss = jit(gaussian)

    def bin_of(x, edges):
        """The bin of ``x`` between ascending interior ``edges``: how many edges are <= x."""
        i = 0
        while i < edges.shape[0] and x >= edges[i]:
            i += 1
        return i

    binned = jit(bin_of)

    def candidate(status, charge, pt, eta, vx, vy, vz, cuts):
        """Whether a GenPart row may become a track: final state, charged, ``pT >= pt_min``,
        ``|eta| < eta_max``, produced at ``vx^2 + vy^2 < r_max^2`` and ``|vz| < z_max``."""
        if status != 1 or charge == 0:
            return False
        if not (pt >= cuts[CUT_PT_MIN] and abs(eta) < cuts[CUT_ETA_MAX]):
            return False
        r2 = add(mul(vx, vx), mul(vy, vy))
        return r2 < cuts[CUT_R2_MAX] and abs(vz) < cuts[CUT_Z_MAX]

    def efficiency(pt, eta, pdg, pt_edges, eta_edges, eff_hadron, eff_muon):
        """The tracking efficiency of a particle from the tables (muons: their own)."""
        i = binned(pt, pt_edges)
        j = binned(abs(eta), eta_edges)
        if abs(pdg) == MUON:
            return eff_muon[i, j]
        return eff_hadron[i, j]

    eff = jit(efficiency)

    def ip_sigma(u, j, nodes, values, slopes):
        """Row ``j`` of an impact-parameter table at ``u = 1/pT``: linear in ``u`` between the
        nodes (ascending), constant below the first, extrapolated from the last segment above
        the last."""
        if nodes.shape[0] == 1 or u <= nodes[0]:
            return values[j, 0]
        k = 0
        while k < nodes.shape[0] - 2 and u > nodes[k + 1]:
            k += 1
        return add(values[j, k], mul(slopes[j, k], sub(u, nodes[k])))

    ip = jit(ip_sigma)

    def resolutions(pt, eta, res_edges, res_a, res_b, ip_edges, ip_nodes, d0_values,
                    d0_slopes, z0_values, z0_slopes):
        """``(sigma_pt [GeV], sigma_d0 [cm], sigma_z0 [cm])`` at the true pT and eta:
        ``sigma_pt / pt = a (+) b pt`` and the impact-parameter tables at ``1 / pt``."""
        i = binned(abs(eta), res_edges)
        bp = mul(res_b[i], pt)
        rel = math.sqrt(add(mul(res_a[i], res_a[i]), mul(bp, bp)))
        u = div(1.0, pt)
        j = binned(abs(eta), ip_edges)
        return (mul(rel, pt), ip(u, j, ip_nodes, d0_values, d0_slopes),
                ip(u, j, ip_nodes, z0_values, z0_slopes))

    res = jit(resolutions)

    def impact_parameters(phi, eta, vx, vy, vz):
        """True ``(d0, z0)`` [cm] of a straight line from ``(vx, vy, vz)`` along ``(phi,
        eta)``: ``d0 = vx sin(phi) - vy cos(phi)`` (CMS's ``d0() = -dxy()``), ``z0 = vz - (vx
        cos(phi) + vy sin(phi)) sinh(eta)`` (z at the transverse point of closest approach
        to the beam line x = y = 0)."""
        s, c = math.sin(phi), math.cos(phi)
        d0 = sub(mul(vx, s), mul(vy, c))
        z0 = sub(vz, mul(add(mul(vx, c), mul(vy, s)), math.sinh(eta)))
        return d0, z0

    ips = jit(impact_parameters)

    def respond(key, row, pt, eta, phi, charge, pdg, vx, vy, vz, pt_edges, eta_edges,
                eff_hadron, eff_muon, res_edges, res_a, res_b, ip_edges, ip_nodes, d0_values,
                d0_slopes, z0_values, z0_slopes):
        """The response to one candidate: ``(found, pt, charge, d0, z0, sigma_pt, sigma_d0,
        sigma_z0)``.  ``found``: the efficiency draw is below the table's value.  q/pT is
        smeared with sigma(q/pT) = (sigma_pt / pt) / pt (a sign change flips the charge),
        d0 and z0 with their sigmas."""
        e = eff(pt, eta, pdg, pt_edges, eta_edges, eff_hadron, eff_muon)
        if not uni(key, row, DRAW_EFFICIENCY) < e:
            return False, 0.0, 0, 0.0, 0.0, 0.0, 0.0, 0.0
        s_pt, s_d0, s_z0 = res(pt, eta, res_edges, res_a, res_b, ip_edges, ip_nodes,
                               d0_values, d0_slopes, z0_values, z0_slopes)
        sign = 1.0 if charge > 0 else -1.0
        kappa = add(div(sign, pt), mul(div(div(s_pt, pt), pt), gauss(key, row, DRAW_CURVATURE)))
        q = charge if (kappa > 0.0) == (charge > 0) else -charge
        d0, z0 = ips(phi, eta, vx, vy, vz)
        d0 = add(d0, mul(s_d0, gauss(key, row, DRAW_D0)))
        z0 = add(z0, mul(s_z0, gauss(key, row, DRAW_Z0)))
        return True, div(1.0, abs(kappa)), q, d0, z0, s_pt, s_d0, s_z0

    return {"mix64": mix, "event_key": jit(event_key), "uniform": uni, "gaussian": gauss,
            "candidate": jit(candidate), "efficiency": eff, "resolutions": res,
            "impact_parameters": ips, "respond": jit(respond)}


#: The functions in plain Python (the reference backend and the tests).
PY = _make(lambda f: f, _u64_py, *PY_OPS)
_CPU = _make(numba.njit(cache=True, inline="always"), numba.njit(inline="always")(_u64_compiled),
             *CPU_OPS)
_CUDA = _make(cuda.jit(device=True),
              _u64_py if numba.config.ENABLE_CUDASIM else cuda.jit(device=True)(_u64_compiled),
              *CUDA_OPS)


def seed_key(seed: int) -> int:
    """``key0 = mix64(SALT ^ seed)``: the key every event key starts from (a Python int)."""
    return PY["mix64"](_u64_py(SALT ^ _u64_py(seed)))


_event_key_cpu, _candidate_cpu, _respond_cpu = (
    _CPU[k] for k in ("event_key", "candidate", "respond"))
_event_key_cuda, _candidate_cuda, _respond_cuda = (
    _CUDA[k] for k in ("event_key", "candidate", "respond"))


@numba.njit(parallel=True, nogil=True, cache=True)
def tracks_cpu(offsets, run, lumi, event, key0, pt, eta, phi, charge, status, pdg, vx, vy, vz,
               cuts, pt_edges, eta_edges, eff_hadron, eff_muon, res_edges, res_a, res_b,
               ip_edges, ip_nodes, d0_values, d0_slopes, z0_values, z0_slopes,
               keep, out_pt, out_charge, out_d0, out_z0, out_spt, out_sd0, out_sz0):
    """Every GenPart row of every event (in parallel over events): ``keep[r]`` 1 for a track,
    and its pt, charge, d0, z0 and sigmas (the rows not kept are left as they are)."""
    for e in numba.prange(offsets.shape[0] - 1):
        key = _event_key_cpu(key0, run[e], lumi[e], event[e])
        base = offsets[e]
        for r in range(base, offsets[e + 1]):
            keep[r] = 0
            if _candidate_cpu(status[r], charge[r], pt[r], eta[r], vx[r], vy[r], vz[r], cuts):
                found, p, q, d0, z0, spt, sd0, sz0 = _respond_cpu(
                    key, r - base, pt[r], eta[r], phi[r], charge[r], pdg[r], vx[r], vy[r],
                    vz[r], pt_edges, eta_edges, eff_hadron, eff_muon, res_edges, res_a, res_b,
                    ip_edges, ip_nodes, d0_values, d0_slopes, z0_values, z0_slopes)
                if found:
                    keep[r] = 1
                    out_pt[r], out_charge[r], out_d0[r], out_z0[r] = p, q, d0, z0
                    out_spt[r], out_sd0[r], out_sz0[r] = spt, sd0, sz0


@cuda.jit(cache=True)
def tracks_cuda(offsets, row_event, run, lumi, event, key0, pt, eta, phi, charge, status, pdg,
                vx, vy, vz, cuts, pt_edges, eta_edges, eff_hadron, eff_muon, res_edges, res_a,
                res_b, ip_edges, ip_nodes, d0_values, d0_slopes, z0_values, z0_slopes,
                keep, out_pt, out_charge, out_d0, out_z0, out_spt, out_sd0, out_sz0):
    """One thread per GenPart row ``r`` (``row_event[r]`` its event): as :func:`tracks_cpu`."""
    r = cuda.grid(1)
    if r < keep.shape[0]:
        e = row_event[r]
        keep[r] = 0
        if _candidate_cuda(status[r], charge[r], pt[r], eta[r], vx[r], vy[r], vz[r], cuts):
            key = _event_key_cuda(key0, run[e], lumi[e], event[e])
            found, p, q, d0, z0, spt, sd0, sz0 = _respond_cuda(
                key, r - offsets[e], pt[r], eta[r], phi[r], charge[r], pdg[r], vx[r], vy[r],
                vz[r], pt_edges, eta_edges, eff_hadron, eff_muon, res_edges, res_a, res_b,
                ip_edges, ip_nodes, d0_values, d0_slopes, z0_values, z0_slopes)
            if found:
                keep[r] = 1
                out_pt[r] = p
                out_charge[r] = q
                out_d0[r] = d0
                out_z0[r] = z0
                out_spt[r] = spt
                out_sd0[r] = sd0
                out_sz0[r] = sz0
