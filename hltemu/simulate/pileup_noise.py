"""Pileup noise of the calorimeter cells: derivation from minimum-bias interactions.

The table, its loading and :func:`~hltemu.calo_noise.total_noise` are reconstruction's, in
:mod:`hltemu.calo_noise` (NumPy only); they are re-exported here.

Topoclustering thresholds are in units of a cell's *total* noise (as in ATLAS)::

    sigma_tot = sqrt(sigma_el**2 + mu * sigma_1**2)

with ``sigma_el`` the electronic noise of :mod:`hltemu.geometry`, ``mu`` the mean number of
pileup interactions the thresholds are tuned for, and ``sigma_1`` the pileup noise of *one*
minimum-bias interaction: the RMS (about zero) of the energy one interaction leaves in the cell.

Why ``mu * sigma_1**2``: ``hltemu generate`` draws ``N ~ Poisson(mu)`` independent interactions
per event, so the pileup energy of a cell ``E = X_1 + ... + X_N`` has the compound-Poisson
variance ``Var(E) = mu * <X**2>`` (the second moment about zero, not the variance of ``X``).
So ``sigma_pileup(mu) = sqrt(mu) * sigma_1`` holds exactly for the generator's pileup, with
``sigma_1 = sqrt(<X**2>)``.

Derivation (:func:`derive_pileup_noise`): minimum-bias Pythia interactions (``SoftQCD:inelastic``,
as the generator's pileup) at vertices drawn from the luminous region, their final-state
particles (``|eta| < truth_eta_max``) through the toy calorimeter
(:mod:`hltemu.simulate.calorimeter`: impact, shower split and response, lateral spread), one
interaction at a time and *without* electronic noise or digitisation.  ``X`` is the cell's
**measured** energy (response and shower fluctuations included), as that is the energy the
significance ``|E| / sigma`` compares; the true deposited energy's RMS is stored beside it
(``sigma1_true``), for reference only.  The cells of one ring (a layer and an eta bin) are
equivalent by phi symmetry, and ring ``i`` and ring ``n_eta - 1 - i`` by the symmetry
``eta -> -eta`` of pp collisions and of the luminous region: ``<X**2>`` is averaged over all of
their cells and interactions.  The statistical error of each ring's value comes from the
spread between interactions (cells of one interaction are correlated, interactions are not).

Table (``.npz``, :func:`~hltemu.calo_noise.save_table` / :func:`~hltemu.calo_noise.load_table`,
format in :mod:`hltemu.calo_noise`): ``sigma1``, ``sigma1_true``,
``sigma1_rel_err``, ``mean1`` (the mean energy per interaction), float64 GeV, one entry per ring
in the order ``(layer, i_eta)`` (layer after layer, ``i_eta = 0`` at ``eta = -eta_max``);
``n_eta`` (int64, rings per layer); ``layer_names``; ``provenance`` (a JSON string: seed,
interactions, sqrt(s), beam spot, seconds, hltemu and pythia8mc versions, the command).
Loading needs NumPy only.

Rebuild the shipped table (``hltemu/models/pileup_noise.npz``)::

    python -m hltemu.simulate.pileup_noise --interactions 2000 --seed 2024 \\
        --output hltemu/models/pileup_noise.npz
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import numpy as np

# The table, its file format and the total noise belong to reconstruction (NumPy only, no
# generator): defined in hltemu.calo_noise, re-exported here for existing importers.
from hltemu.calo_noise import (  # noqa: F401
    BUILTIN,
    TABLE_ARRAYS,
    PileupNoiseError,
    PileupNoiseTable,
    load_table,
    models_dir,
    save_table,
    table_path,
    total_noise,
)


# -- derivation ---------------------------------------------------------------------------------
def interaction_cell_energies(geom: Any, particles: dict[str, np.ndarray],
                              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(true, measured)`` energy (float64 GeV, ``(n_cells,)``) that final-state particles
    (GenPart-like columns px, py, pz, e, mass, pdgId, charge, vx, vy, vz) leave in the cells:
    :func:`hltemu.simulate.calorimeter.simulate_calorimeter` without electronic noise and
    digitisation."""
    from hltemu.simulate.calorimeter import deposited_energies

    g = particles
    return deposited_energies(geom, g["px"], g["py"], g["pz"], g["e"], g["mass"], g["pdgId"],
                              g["charge"], g["vx"], g["vy"], g["vz"], rng)


def derive_pileup_noise(interactions: int, seed: int, generate: Any = None,
                        detector: Any = None, command: str = "") -> PileupNoiseTable:
    """The per-ring pileup noise of one minimum-bias interaction from ``interactions``
    simulated ones (see the module docstring).

    ``generate`` (:class:`~hltemu.config.GenerateConfig`, default its defaults) gives sqrt(s),
    the luminous region and ``truth_eta_max``; ``detector`` (:class:`~hltemu.config.
    DetectorConfig`) the calorimeter.  ``seed`` seeds Pythia, the vertices and the detector
    response (three streams of :class:`numpy.random.SeedSequence`).  Needs Pythia.
    """
    from importlib.metadata import version

    from hltemu import __version__
    from hltemu.config import DetectorConfig, GenerateConfig
    from hltemu.geometry import geometry_for
    from hltemu.simulate.generate import _pythia_seed, _truth
    from hltemu.simulate.pythia import PythiaGenerator

    if interactions < 1:
        raise PileupNoiseError(f"interactions must be >= 1, got {interactions}")
    gen_cfg = generate or GenerateConfig()
    geom = geometry_for(detector or DetectorConfig())
    calo = geom.calo
    t0 = time.perf_counter()
    pythia_ss, beam_ss, det_ss = np.random.SeedSequence(seed).spawn(3)
    pythia = PythiaGenerator("minbias", gen_cfg.sqrt_s, _pythia_seed(pythia_ss),
                             keep_hard_process=False)
    beam = np.random.default_rng(beam_ss)
    det = np.random.default_rng(det_ss)

    n_eta = np.array([lay.n_eta for lay in calo.layers], dtype=np.int64)
    ring_offset = np.concatenate([[0], np.cumsum(n_eta)]).astype(np.int64)
    n_rings = int(ring_offset[-1])
    # ring of each cell, folded: ring i and its mirror n_eta - 1 - i share one bin
    ieta = np.asarray(calo.cell_ieta, dtype=np.int64)
    layer = np.asarray(calo.cell_layer, dtype=np.int64)
    folded = ring_offset[layer] + np.minimum(ieta, n_eta[layer] - 1 - ieta)
    cells_per_bin = np.bincount(folded, minlength=n_rings).astype(np.float64)
    used = cells_per_bin > 0
    sum_m2 = np.zeros(n_rings)   # sum over interactions of (per-cell mean of X**2 in the bin)
    sum_m2_sq = np.zeros(n_rings)
    sum_t2 = np.zeros(n_rings)
    sum_m = np.zeros(n_rings)
    for _ in range(interactions):
        vtx = np.zeros((1, 3))
        vtx[0, :2] = beam.normal(0.0, gen_cfg.beamspot_sigma_xy, 2)
        vtx[0, 2] = beam.normal(0.0, gen_cfg.beamspot_sigma_z)
        gen = _truth([pythia.next()], vtx, gen_cfg.truth_eta_max)
        final = gen["status"] == 1
        particles = {k: v[final] for k, v in gen.items()}
        true, meas = interaction_cell_energies(geom, particles, det)
        m2 = np.bincount(folded, weights=meas * meas, minlength=n_rings)[used] / \
            cells_per_bin[used]
        sum_m2[used] += m2
        sum_m2_sq[used] += m2 * m2
        sum_t2[used] += np.bincount(folded, weights=true * true, minlength=n_rings)[used] / \
            cells_per_bin[used]
        sum_m[used] += np.bincount(folded, weights=meas, minlength=n_rings)[used] / \
            cells_per_bin[used]
    seconds = time.perf_counter() - t0
    n = float(interactions)
    mean_m2 = sum_m2 / n
    var_m2 = np.maximum(sum_m2_sq / n - mean_m2**2, 0.0) / max(n - 1.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # sigma = sqrt(<X^2>): relative error half that of <X^2>
        rel = np.where(mean_m2 > 0, 0.5 * np.sqrt(var_m2) / mean_m2, 0.0)
    # unfold: every ring takes the value of its folded bin
    ring_ieta = np.concatenate([np.arange(k) for k in n_eta])
    ring_layer = np.repeat(np.arange(n_eta.shape[0]), n_eta)
    unfold = ring_offset[ring_layer] + np.minimum(ring_ieta, n_eta[ring_layer] - 1 - ring_ieta)
    provenance = {
        "what": "per-ring pileup noise of one minimum-bias interaction "
                "(hltemu.simulate.pileup_noise)",
        "interactions": int(interactions),
        "seed": int(seed),
        "sqrt_s_GeV": float(gen_cfg.sqrt_s),
        "process": "minbias (Pythia 8 SoftQCD:inelastic)",
        "beamspot_sigma_z_cm": float(gen_cfg.beamspot_sigma_z),
        "beamspot_sigma_xy_cm": float(gen_cfg.beamspot_sigma_xy),
        "truth_eta_max": float(gen_cfg.truth_eta_max),
        "energy": "measured (response, fluctuations), no electronic noise, not digitised",
        "symmetries": "phi (cells of a ring) and eta -> -eta (mirror rings) averaged",
        "seconds": round(seconds, 2),
        "hltemu_version": __version__,
        "pythia8mc_version": version("pythia8mc"),
        "command": command,
    }
    return PileupNoiseTable(
        sigma1=np.sqrt(mean_m2)[unfold], sigma1_true=np.sqrt(sum_t2 / n)[unfold],
        sigma1_rel_err=rel[unfold], mean1=(sum_m / n)[unfold], n_eta=n_eta,
        layer_names=tuple(lay.name for lay in calo.layers), provenance=provenance)


def summary(table: PileupNoiseTable, calo: Any = None) -> str:
    """Per layer: sigma1 (MeV) at |eta| < 1 (mean), 2.5 < |eta| (mean) and max, and the
    largest relative statistical error."""
    if calo is None:
        from hltemu.geometry import default_geometry

        calo = default_geometry().calo
    lines = [f"{'layer':6s} {'|eta|<1':>9s} {'1-2.5':>9s} {'>2.5':>9s} {'max':>9s} "
             f"{'true/meas':>9s} {'rel.err':>8s}   sigma1 in MeV"]
    for i, lay in enumerate(calo.layers):
        o = table.ring_offset
        s = table.sigma1[o[i]:o[i + 1]]
        st = table.sigma1_true[o[i]:o[i + 1]]
        eta = np.abs(-lay.eta_max + (np.arange(lay.n_eta) + 0.5) * lay.deta)
        parts = [np.mean(s[m]) * 1e3 if np.any(m) else math.nan for m in
                 (eta < 1.0, (eta >= 1.0) & (eta < 2.5), eta >= 2.5)]
        ratio = float(np.sum(st) / np.sum(s)) if np.sum(s) > 0 else math.nan
        lines.append(f"{lay.name:6s} {parts[0]:9.2f} {parts[1]:9.2f} {parts[2]:9.2f} "
                     f"{s.max() * 1e3:9.2f} {ratio:9.2f} "
                     f"{table.sigma1_rel_err[o[i]:o[i + 1]].max():8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m hltemu.simulate.pileup_noise``: derive a table and write it."""
    parser = argparse.ArgumentParser(
        prog="python -m hltemu.simulate.pileup_noise",
        description="Derive the per-ring pileup noise of one minimum-bias interaction.")
    parser.add_argument("--interactions", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--output", required=True, help="output .npz")
    args = parser.parse_args(argv)
    command = "python -m hltemu.simulate.pileup_noise " + " ".join(
        sys.argv[1:] if argv is None else argv)
    table = derive_pileup_noise(args.interactions, args.seed, command=command)
    save_table(args.output, table)
    print(f"wrote {args.output}: {args.interactions} interactions, seed {args.seed}, "
          f"{table.provenance['seconds']} s")
    print(summary(table))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
