"""Stage ``jec``: the factorized CMS jet energy corrections, level after level.

The levels listed in :class:`JecConfig` (CMS text files or correctionlib JSON,
read by :mod:`hltemu.jec`) are applied in order; each level sees the pT and energy the previous
one left (CMS FactorizedJetCorrector), together with the jet's eta, phi, area and the event's
rho.

Needs ``jets`` (columns ``pt`` [GeV], ``eta``, ``phi`` [rad], ``E`` [GeV], ``area``; only those
the levels read are required) and ``rho`` (from stage ``rho``).  Adds ``corrected_jets``, one
row per input jet, in the input order (row i of ``corrected_jets`` is row i of ``jets``): every
column of ``jets``, with ``pt``, ``E``, ``mass``, ``px``, ``py``, ``pz`` scaled by the total
factor, plus ``pt_raw`` [GeV], ``factor`` (the product of the levels' factors) and one column
``factor_<level>`` per level (``factor_L2Relative``, ...; repeated levels get ``_2``, ``_3``).

Backends: ``reference`` evaluates each level with NumPy (:meth:`hltemu.jec.JecLevel.evaluate`,
first matching row by a plain scan); ``cpu`` and ``cuda`` run :mod:`hltemu.kernels.jec` (a
search index over the bins and a formula interpreter).  They agree with the reference to
1e-12 relative (same operations; transcendental functions may differ in the last bits); cuda
against cpu on an NVIDIA H200 (2026-11-28, the sample's jets): at most 3.3e-15 relative in
``factor`` and the scaled momenta, so 5e-14 with a 10x margin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError, param
from hltemu.jec import JEC_VARIABLES, JecChain, JecError, JecTables, load_chain, values_matrix
from hltemu.ops import THREADS_PER_BLOCK, blocks
from hltemu.pipeline import PipelineError, Stage, check_only, register


@dataclass(frozen=True)
class JecConfig:
    """Stage ``jec``: the factorized jet energy corrections applied to ``jets``, in order.

    Each entry is a CMS JEC text file (plain or gzipped; ``FILE#SECTION`` for one section of a
    multi-section file), a correctionlib JSON correction ``FILE.json#NAME`` (a compound
    correction's levels when NAME is one), or ``builtin:NAME`` for a file shipped in
    ``hltemu/models``.  The default is the emulator's own corrections for its anti-kT R = 0.4
    calorimeter jets, ``hltemu_V2_MC`` L1FastJet then L2Relative, derived by ``hltemu
    derive-jec`` on paired QCD samples (the seeds in ``benchmarks/SAMPLES.md``; closure in
    ``benchmarks/jec/``); CMS's Fall17 MC L2Relative for AK4 calorimeter jets stays shipped as
    an example (``builtin:Fall17_17Nov2017_V32_MC_L2Relative_AK4Calo.txt``).  An empty list
    applies no correction (every factor 1).
    """

    levels: tuple = param(
        ("builtin:hltemu_V2_MC_L1FastJet_AK4Calo.txt",
         "builtin:hltemu_V2_MC_L2Relative_AK4Calo.txt"), "",
        "correction levels in the order applied (L1FastJet, L2Relative, L3Absolute, ...)",
        path=True,
    )


#: Jet column each CMS variable is read from (Rho comes from the ``rho`` collection).
JET_COLUMNS: dict[str, str] = {
    "JetEta": "eta", "JetPt": "pt", "JetPhi": "phi", "JetE": "E", "JetA": "area",
}
#: Jet columns scaled by the total correction factor.
SCALED_COLUMNS: tuple[str, ...] = ("pt", "E", "mass", "px", "py", "pz")


def chain_for(cfg: JecConfig) -> JecChain:
    """The correction chain of a configuration (cached); file problems become ConfigError."""
    try:
        return load_chain(tuple(str(e) for e in cfg.levels))
    except JecError as exc:
        raise ConfigError(f"[jec] levels: {exc}") from None


def jet_values(batch: EventBatch, chain: JecChain) -> dict[str, Any]:
    """CMS-named per-jet arrays (on the batch's backend) for the variables the chain reads."""
    jets = batch["jets"]
    xp = batch.backend.xp
    out: dict[str, Any] = {"JetPt": xp.asarray(jets["pt"], dtype=xp.float64)}
    for var in chain.variables:
        if var == "Rho":
            rho = batch["rho"]["rho"]
            out["Rho"] = xp.asarray(rho, dtype=xp.float64)[jets.event_index()]
        elif var not in out:
            col = JET_COLUMNS[var]
            if col not in jets:
                users = [lv.name for lv in chain.levels if var in lv.variables]
                raise PipelineError(
                    f"JEC level(s) {users} read {var}, but collection 'jets' has no column "
                    f"{col!r}; it has {sorted(jets.columns)}"
                )
            out[var] = xp.asarray(jets[col], dtype=xp.float64)
    if "E" in jets and "JetE" not in out:
        out["JetE"] = xp.asarray(jets["E"], dtype=xp.float64)
    return out


class Prepared(NamedTuple):
    """What :func:`prepare` builds once per (config, backend): the chain (files read, formulas
    compiled) and its kernel tables on the backend's device."""

    chain: JecChain
    tables: JecTables


def prepare(cfg: JecConfig, backend: Any) -> Prepared:
    """Read the chain's files and upload its tables to ``backend`` (file problems are a
    :class:`ConfigError` naming the level)."""
    chain = chain_for(cfg)
    return Prepared(chain, chain.device_tables(backend))


def _kernel_inputs(batch: EventBatch, chain: JecChain) -> tuple[Any, Any, int]:
    """The kernels' ``values`` matrix ``(n_jets, N_VARS)``, the ones-initialised ``factors``
    ``(n_jets, n_levels)`` and ``n_jets``, on the batch's backend."""
    xp = batch.backend.xp
    values = jet_values(batch, chain)
    n = int(values["JetPt"].shape[0])
    return values_matrix(values, n, xp), xp.ones((n, len(chain)), dtype=xp.float64), n


def _kernel_outputs(mat: Any, factors: Any, xp: Any) -> tuple[Any, Any, Any]:
    from hltemu.jec.opcodes import VAR_E, VAR_PT

    return xp.ascontiguousarray(mat[:, VAR_PT]), xp.ascontiguousarray(mat[:, VAR_E]), factors


def correct_reference(batch: EventBatch, prep: Prepared) -> tuple[Any, Any, Any]:
    """Corrected (pt, E) and factors ``(n_jets, n_levels)`` with NumPy, level by level."""
    return prep.chain.correct_reference(jet_values(batch, prep.chain))


def correct_cpu(batch: EventBatch, prep: Prepared) -> tuple[Any, Any, Any]:
    """The same with the Numba kernel (search index over the bins, formula interpreter)."""
    from hltemu.kernels.jec import correct_jets_cpu

    mat, factors, n = _kernel_inputs(batch, prep.chain)
    if n and len(prep.chain):
        correct_jets_cpu(mat, *prep.tables, factors)
    return _kernel_outputs(mat, factors, np)


def correct_cuda(batch: EventBatch, prep: Prepared) -> tuple[Any, Any, Any]:
    """The same with the CUDA kernel, one thread per jet."""
    from hltemu.kernels.jec import correct_jets_cuda

    mat, factors, n = _kernel_inputs(batch, prep.chain)
    if n and len(prep.chain):
        with np.errstate(all="ignore"):  # the simulator runs the interpreter with NumPy
            correct_jets_cuda[blocks(n), THREADS_PER_BLOCK](mat, *prep.tables, factors)
    return _kernel_outputs(mat, factors, batch.backend.xp)


def corrected_jets(batch: EventBatch, chain: JecChain, pt: Any, energy: Any,
                   factors: Any) -> dict[str, Collection]:
    """The ``corrected_jets`` collection from the levels' results (the same on every backend)."""
    xp = batch.backend.xp
    jets = batch["jets"]
    total = xp.ones(jets.size, dtype=xp.float64)
    for i in range(len(chain)):
        total = total * factors[:, i]
    cols = dict(jets.columns)
    for name in SCALED_COLUMNS:
        if name in cols:
            cols[name] = xp.asarray(cols[name], dtype=xp.float64) * total
    cols["pt"] = pt  # the levels' own running products, as CMS computes them
    if "E" in cols:
        cols["E"] = energy
    cols["pt_raw"] = xp.asarray(jets["pt"], dtype=xp.float64)
    cols["factor"] = total
    for i, label in enumerate(chain.names):
        cols[f"factor_{label}"] = xp.ascontiguousarray(factors[:, i])
    return {"corrected_jets": Collection(jets.offsets, cols)}


def run_reference(batch: EventBatch, cfg: JecConfig, prep: Prepared) -> dict[str, Collection]:
    return corrected_jets(batch, prep.chain, *correct_reference(batch, prep))


def run_cpu(batch: EventBatch, cfg: JecConfig, prep: Prepared) -> dict[str, Collection]:
    return corrected_jets(batch, prep.chain, *correct_cpu(batch, prep))


def run_cuda(batch: EventBatch, cfg: JecConfig, prep: Prepared) -> dict[str, Collection]:
    return corrected_jets(batch, prep.chain, *correct_cuda(batch, prep))


def check_derivation(cfg: JecConfig, configs: Any, chain: tuple[str, ...],
                     inputs: tuple[str, ...]) -> list[str]:
    """Plan notes for each level derived by ``hltemu derive-jec`` with other settings than this
    run's: jet radius (``antikt``), rho definition (``rho``), topoclustering's noise mode and a
    pileup outside the derived range.  A stage not in the chain takes its settings from the
    input files' provenance (``hltemu run`` outputs record theirs)."""
    from dataclasses import asdict, is_dataclass

    from hltemu.io.provenance import read_provenance
    from hltemu.jec.record import derivation_record, mismatches

    records = {str(e): derivation_record(str(e)) for e in cfg.levels}
    if not any(records.values()):  # no level written by derive-jec: nothing to read or compare
        return []
    compared = ("antikt", "rho", "topocluster")
    recorded = ([] if set(compared) <= set(chain)  # the inputs' provenance only when needed
                else [(read_provenance(f) or {}).get("config") or {} for f in inputs])

    def settings(name: str) -> dict[str, Any] | None:
        if name in chain:
            c = configs[name]
            return asdict(c) if is_dataclass(c) else dict(c)
        return next((dict(r[name]) for r in recorded if r.get(name)), None)

    antikt, rho, topo = (settings(name) for name in compared)
    mu = topo.get("pileup_mu") if topo else None
    found: dict[str, tuple[list[str], list[str]]] = {}  # one note per derivation
    for entry, record in records.items():
        if record is None:
            continue
        diff = mismatches(record, float(antikt["R"]) if antikt else None, rho, topo,
                          float(mu) if isinstance(mu, (int, float)) else None)
        if diff:
            key = json.dumps(record, sort_keys=True)
            found.setdefault(key, ([], diff))[0].append(entry)
    return [f"jec: {', '.join(entries)} derived with {'; '.join(diff)}: the corrections may "
            "not close for this run" for entries, diff in found.values()]


STAGE = register(Stage(
    name="jec",
    needs=("jets", "rho"),
    adds=("corrected_jets",),
    config_type=JecConfig,
    prepare=prepare,
    plan=check_only(chain_for),
    cross_check=check_derivation,
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    doc="factorized CMS jet energy corrections (L1FastJet, L2Relative, L3Absolute, residuals)",
))

__all__ = ["STAGE", "JEC_VARIABLES", "chain_for", "jet_values"]
