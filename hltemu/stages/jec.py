"""Stage ``jec``: the factorized CMS jet energy corrections, level after level.

The levels listed in :class:`~hltemu.config.JecConfig` (CMS text files or correctionlib JSON,
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

from typing import Any

import numpy as np

from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError, JecConfig
from hltemu.jec import JEC_VARIABLES, JecChain, JecError, load_chain, values_matrix
from hltemu.ops import THREADS_PER_BLOCK, blocks
from hltemu.pipeline import PipelineError, Stage, register

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


def _correct_kernels(batch: EventBatch, chain: JecChain, values: dict[str, Any]) -> tuple[Any, Any]:
    """Run the cpu or cuda kernel: corrected (pt, E) and factors (n_jets, n_levels)."""
    from hltemu.kernels import jec as K

    be = batch.backend
    xp = be.xp
    n = int(values["JetPt"].shape[0])
    mat = values_matrix(values, n, xp)
    factors = xp.ones((n, len(chain)), dtype=xp.float64)
    if n and len(chain):
        if be.name == "cpu":
            K.correct_jets_cpu(mat, *chain.tables(), factors)
        else:
            with np.errstate(all="ignore"):  # the simulator runs the interpreter with NumPy
                K.correct_jets_cuda[blocks(n), THREADS_PER_BLOCK](
                    mat, *chain.device_tables(be), factors
                )
    return xp.ascontiguousarray(mat[:, K.VAR_PT]), xp.ascontiguousarray(mat[:, K.VAR_E]), factors


def _jec(batch: EventBatch, cfg: JecConfig) -> dict[str, Collection]:
    be = batch.backend
    xp = be.xp
    chain = chain_for(cfg)
    jets = batch["jets"]
    values = jet_values(batch, chain)
    if be.name == "reference":
        pt, energy, factors = chain.correct_reference(values)
    else:
        pt, energy, factors = _correct_kernels(batch, chain, values)
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


STAGE = register(Stage(
    name="jec",
    needs=("jets", "rho"),
    adds=("corrected_jets",),
    config_type=JecConfig,
    implementations={"reference": _jec, "cpu": _jec, "cuda": _jec},
    doc="factorized CMS jet energy corrections (L1FastJet, L2Relative, L3Absolute, residuals)",
))

__all__ = ["STAGE", "JEC_VARIABLES", "chain_for", "jet_values"]
