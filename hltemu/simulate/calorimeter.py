"""Particles into calorimeter cells: impact point, showers, non-compensating response, noise.

Per event:

1. :func:`impact` finds where each particle meets the ECAL front (barrel cylinder of radius
   ``ecal_radius`` or endcap plane at ``|z| = ecal_endcap_z``): charged particles along their
   helix (at most one turn: soft charged particles curl up in the tracker and never arrive),
   neutral ones in a straight line.  The cell grids are projective from the nominal
   interaction point, so the shower is centred on the impact point's detector eta and phi.
2. :func:`shower_energies` splits each particle's deposited energy over the layers:
   EM particles (photons, electrons) by ``calo_em_fraction``, hadrons by
   ``calo_had_fraction``, muons deposit the MIP energies ``calo_mip``; neutrinos nothing.
   The *true* energy is the energy deposited (``E`` for mesons, photons, electrons; ``E - m``
   for baryons, ``E + m`` for antibaryons, which annihilate).  The *measured* energy is the
   true one times the response and a stochastic fluctuation (a Gamma variate with the
   section's resolution ``a / sqrt(E) (+) b``, so that it is never negative):
   EM response 1; hadron response ``1 - (1 - h/e) (E / E0)^(m - 1)`` (Groom's
   parametrisation of a non-compensating calorimeter: about 0.45 at 1 GeV, 0.63 at 10 GeV,
   0.75 at 100 GeV), which makes jet energy corrections necessary and derivable.
3. :func:`deposit` spreads each layer's energy over a ``(2 w + 1)^2`` window of cells around
   the impact cell with a Gaussian lateral profile of width ``calo_em_width`` or
   ``calo_had_width`` (cm at the ECAL front, i.e. ``width / r_impact`` in eta and in phi),
   integrated over the cell edges and normalised over the cells inside the coverage, so the
   energy a particle leaves in a layer is conserved exactly whenever its impact is inside the
   layer's eta coverage.
4. :func:`cell_columns` (called by :func:`simulate_calorimeter`, and by the generator once
   per event on the deposits summed over all interactions) adds Gaussian electronic noise with
   the geometry's per-cell sigma to every cell and digitises (cell energies are multiples of
   ``calo_lsb``): the only steps that are not additive over particles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import vectorize

from hltemu.geometry import Geometry
from hltemu.simulate.tracker import _cylinder_arcs, _helix_at, helix_radius

#: PDG ids of particles the calorimeter does not see (neutrinos).
INVISIBLE: tuple[int, ...] = (12, 14, 16)
#: PDG ids showering electromagnetically.
ELECTROMAGNETIC: tuple[int, ...] = (11, 22)
MUON = 13


@dataclass
class Impact:
    """Where particles meet the ECAL front: ``reached`` (bool), detector ``eta``, ``phi``
    (from the nominal interaction point) and transverse radius ``r`` (cm) of the impact."""

    reached: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    r: np.ndarray


def impact(geom: Geometry, px: np.ndarray, py: np.ndarray, pz: np.ndarray, charge: np.ndarray,
           vx: np.ndarray, vy: np.ndarray, vz: np.ndarray) -> Impact:
    """Impact points on the ECAL front (momenta GeV, vertices cm; see module docstring)."""
    calo = geom.calo
    r_cal, z_cal = calo.ecal_radius, calo.ecal_endcap_z
    px, py, pz, vx, vy, vz = (np.asarray(a, dtype=np.float64) for a in (px, py, pz, vx, vy, vz))
    n = px.shape[0]
    pt = np.hypot(px, py)
    phi0 = np.arctan2(py, px)
    with np.errstate(divide="ignore", invalid="ignore"):
        cot = pz / pt
    charged = (np.asarray(charge) != 0) & (pt > 0)
    s_barrel = np.full(n, np.nan)
    turn = np.full(n, np.inf)
    # Charged: first crossing of the barrel cylinder along the helix.
    c = np.flatnonzero(charged)
    radius = helix_radius(pt[c], np.asarray(charge)[c], geom.b_field)
    h = np.sign(np.asarray(charge)[c]).astype(np.float64)
    s1, _ = _cylinder_arcs(vx[c], vy[c], phi0[c], radius, h, r_cal)
    s_barrel[c] = s1
    turn[c] = 2.0 * np.pi * radius
    # Neutral: straight line, |v_T + s u_T| = r_cal.
    nn = np.flatnonzero(~charged & (pt > 0))
    b = vx[nn] * np.cos(phi0[nn]) + vy[nn] * np.sin(phi0[nn])
    s_barrel[nn] = -b + np.sqrt(b * b - (vx[nn] ** 2 + vy[nn] ** 2 - r_cal**2))
    with np.errstate(invalid="ignore", divide="ignore"):
        z_barrel = vz + s_barrel * cot
        in_barrel = np.isfinite(s_barrel) & (np.abs(z_barrel) <= z_cal)
        s_endcap = (np.copysign(z_cal, pz) - vz) / cot
        in_endcap = ~in_barrel & np.isfinite(s_endcap) & (s_endcap > 0) & (s_endcap < turn)
    s = np.where(in_barrel, s_barrel, np.where(in_endcap, s_endcap, 0.0))
    reached = in_barrel | in_endcap
    x, y = vx + s * np.cos(phi0), vy + s * np.sin(phi0)  # neutral particles
    if c.shape[0]:
        xc, yc, _, _ = _helix_at(vx[c], vy[c], vz[c], phi0[c], radius, h, cot[c], s[c])
        x[c], y[c] = xc, yc
    z = vz + s * cot
    r = np.hypot(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.where(reached, np.arcsinh(z / r), np.nan)
    return Impact(reached, eta, np.arctan2(y, x), r)


def hadron_response(e: np.ndarray, h_over_e: float, e0: float, m: float) -> np.ndarray:
    """Mean response (measured / deposited) of a hadron shower of energy ``e`` (GeV)."""
    f_had = np.minimum(1.0, (np.maximum(e, 1e-6) / e0) ** (m - 1.0))
    return 1.0 - (1.0 - h_over_e) * f_had


def _fluctuate(mean: np.ndarray, e: np.ndarray, stochastic: float, constant: float,
               rng: np.random.Generator) -> np.ndarray:
    """Gamma variates of mean ``mean`` and relative width ``stochastic / sqrt(e) (+) constant``."""
    rel2 = stochastic**2 / np.maximum(e, 1e-6) + constant**2
    if not np.any(rel2 > 0):  # a perfect resolution (used in tests): no fluctuation
        return np.asarray(mean, dtype=np.float64).copy()
    shape = 1.0 / rel2
    return rng.gamma(shape, mean / shape)


def deposited_energy(e: np.ndarray, mass: np.ndarray, pdg_id: np.ndarray) -> np.ndarray:
    """Energy a particle can leave in the calorimeter (GeV): ``E - m`` for baryons, ``E + m``
    for antibaryons, ``E`` otherwise."""
    baryon = (np.abs(pdg_id) > 1000) & (np.abs(pdg_id) < 10000)
    return np.where(baryon, e - np.sign(pdg_id) * mass, e)


def shower_energies(geom: Geometry, e: np.ndarray, mass: np.ndarray, pdg_id: np.ndarray,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per particle and layer: true and measured energy (GeV) and lateral width (cm).

    Returns three ``(n_particles, n_layers)`` arrays.  Invisible particles get zeros.
    """
    cfg = geom.config
    pdg = np.abs(np.asarray(pdg_id))
    em = np.isin(pdg, ELECTROMAGNETIC)
    mu = pdg == MUON
    invisible = np.isin(pdg, INVISIBLE)
    had = ~(em | mu | invisible)
    e_dep = np.maximum(deposited_energy(np.asarray(e), np.asarray(mass), np.asarray(pdg_id)), 0.0)

    meas_total = np.zeros_like(e_dep)
    meas_total[em] = _fluctuate(e_dep[em], e_dep[em], cfg.em_stochastic, cfg.em_constant, rng)
    resp = hadron_response(e_dep[had], cfg.had_h_over_e, cfg.had_e0, cfg.had_m)
    meas_total[had] = _fluctuate(resp * e_dep[had], e_dep[had], cfg.had_stochastic,
                                 cfg.had_constant, rng)

    em_f, had_f = np.asarray(cfg.calo_em_fraction), np.asarray(cfg.calo_had_fraction)
    mip = np.asarray(cfg.calo_mip)
    frac = np.where(em[:, None], em_f, np.where(had[:, None], had_f, 0.0))
    true = frac * e_dep[:, None]
    meas = frac * meas_total[:, None]
    # Muons: MIP losses, scaled down when the muon has less kinetic energy than that.
    e_kin = np.maximum(np.asarray(e)[mu] - np.asarray(mass)[mu], 0.0)
    mu_scale = np.minimum(1.0, e_kin / mip.sum())
    true[mu] = mip[None, :] * mu_scale[:, None]
    meas[mu] = true[mu]
    width = np.where(em[:, None] | mu[:, None], np.asarray(cfg.calo_em_width),
                     np.asarray(cfg.calo_had_width))
    return true, meas, width


def deposit(geom: Geometry, layer: int, eta: np.ndarray, phi: np.ndarray, sigma: np.ndarray,
            energies: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Spread energies over the window of cells around ``(eta, phi)`` in ``layer``.

    ``sigma`` is the angular Gaussian width (in eta and phi) per particle; every array in
    ``energies`` (GeV, one entry per particle) is spread with the same weights.  Particles whose
    ``eta`` is outside the layer's coverage deposit nothing.  Returns the cell ids and, per
    input energy array, the energy given to each of those cells (flat arrays, one entry per
    particle and window cell; cell ids may repeat).
    """
    calo = geom.calo
    lay = calo.layers[layer]
    w = int(geom.config.calo_window[layer])
    ie0 = lay.ieta(eta)
    inside = (ie0 >= 0) & (ie0 < lay.n_eta)
    idx = np.flatnonzero(inside)
    eta, phi, sigma, ie0 = eta[idx], phi[idx], np.maximum(sigma[idx], 1e-9), ie0[idx]
    ip0 = lay.iphi(phi)
    offs = np.arange(-w, w + 1)
    # Edges of the window cells relative to the impact, in units of sigma.
    e_lo = (-lay.eta_max + (ie0[:, None] + offs) * lay.deta - eta[:, None]) / sigma[:, None]
    dphi0 = np.remainder(phi - (-math.pi + ip0 * lay.dphi), 2.0 * math.pi)  # in [0, dphi)
    p_lo = ((offs * lay.dphi)[None, :] - dphi0[:, None]) / sigma[:, None]
    w_eta = _erf_diff(e_lo, e_lo + lay.deta / sigma[:, None])
    w_phi = _erf_diff(p_lo, p_lo + lay.dphi / sigma[:, None])
    je = ie0[:, None] + offs
    w_eta = np.where((je >= 0) & (je < lay.n_eta), w_eta, 0.0)
    weights = w_eta[:, :, None] * w_phi[:, None, :]
    norm = weights.sum(axis=(1, 2))
    weights /= np.where(norm > 0, norm, 1.0)[:, None, None]
    cells = calo.cell_id(layer, np.clip(je, 0, lay.n_eta - 1)[:, :, None],
                         (ip0[:, None] + offs)[:, None, :])
    keep = weights > 0
    out = [(np.asarray(en)[idx][:, None, None] * weights)[keep] for en in energies]
    return cells[keep], out


def _erf_diff(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Probability of a standard Gaussian between ``lo`` and ``hi`` (arrays in units of sigma)."""
    return 0.5 * (_erf(hi / math.sqrt(2.0)) - _erf(lo / math.sqrt(2.0)))


@vectorize(["float64(float64)"], cache=True)
def _erf(x: float) -> float:  # pragma: no cover - compiled
    return math.erf(x)


def deposited_energies(geom: Geometry, px: np.ndarray, py: np.ndarray, pz: np.ndarray,
                       e: np.ndarray, mass: np.ndarray, pdg_id: np.ndarray, charge: np.ndarray,
                       vx: np.ndarray, vy: np.ndarray, vz: np.ndarray,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(true, measured)`` energy (float64 GeV, ``(n_cells,)``) that particles leave in the
    cells, before electronic noise and digitisation (momenta GeV, vertices cm)."""
    calo = geom.calo
    hit = impact(geom, px, py, pz, charge, vx, vy, vz)
    true, meas, width = shower_energies(geom, e, mass, pdg_id, rng)
    vis = np.flatnonzero(hit.reached & (true.sum(axis=1) > 0))
    true_cells = np.zeros(calo.n_cells)
    meas_cells = np.zeros(calo.n_cells)
    for lay in calo.layers:
        li = lay.index
        rows = vis[true[vis, li] > 0]
        if rows.shape[0] == 0:
            continue
        sigma = width[rows, li] / hit.r[rows]
        cells, (t, m) = deposit(geom, li, hit.eta[rows], hit.phi[rows], sigma,
                                [true[rows, li], meas[rows, li]])
        true_cells += np.bincount(cells, weights=t, minlength=calo.n_cells)
        meas_cells += np.bincount(cells, weights=m, minlength=calo.n_cells)
    return true_cells, meas_cells


def simulate_calorimeter(geom: Geometry, px: np.ndarray, py: np.ndarray, pz: np.ndarray,
                         e: np.ndarray, mass: np.ndarray, pdg_id: np.ndarray, charge: np.ndarray,
                         vx: np.ndarray, vy: np.ndarray, vz: np.ndarray,
                         rng: np.random.Generator) -> dict[str, np.ndarray]:
    """CaloCell columns of one event: every cell, ordered by id (see :mod:`hltemu.geometry`).

    ``energy`` (float32, GeV): measured, with noise, digitised (multiples of ``calo_lsb``);
    ``true_energy`` (float32, GeV): the energy the particles deposited in the cell (stored in
    steps of ``calo_truth_step``).
    """
    true_cells, meas_cells = deposited_energies(geom, px, py, pz, e, mass, pdg_id, charge,
                                                vx, vy, vz, rng)
    return cell_columns(geom, true_cells, meas_cells, rng)


def cell_columns(geom: Geometry, true_cells: np.ndarray, meas_cells: np.ndarray,
                 noise_rng: np.random.Generator) -> dict[str, np.ndarray]:
    """CaloCell columns from the summed ``(true, measured)`` deposits of every particle of the
    event (:func:`deposited_energies`, summed over interactions): electronic noise (from
    ``noise_rng``) and digitisation are applied here, once, after the sum.

    Additivity: a particle's response (hadron non-linearity, fluctuations) depends on the
    particle only, so deposits add exactly; what does not add (noise, the ``calo_lsb``
    rounding of ``energy``) acts on the sum.  ``true_energy`` is rounded to
    ``calo_truth_step``, a monotone map: adding deposits never lowers it.  No cell is
    zero-suppressed (every cell is written).
    """
    calo = geom.calo
    cfg = geom.config
    noisy = meas_cells + noise_rng.standard_normal(calo.n_cells) * calo.noise_sigma
    lsb = np.asarray(cfg.calo_lsb)[calo.cell_layer]
    energy = np.round(noisy / lsb) * lsb
    return {
        "id": np.arange(calo.n_cells, dtype=np.int32),
        "energy": energy.astype(np.float32),
        # Truth stored on a fine absolute grid: sub-keV tails of the lateral profiles cost
        # file size and carry no information.
        "true_energy": (np.round(true_cells / cfg.calo_truth_step) * cfg.calo_truth_step
                        ).astype(np.float32),
    }
