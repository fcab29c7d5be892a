"""Stage ``pfjets``: the offline jets, anti-kT on particle-flow candidates (CMS's AK4 PF CHS).

Needs ``pfcandidates`` (:mod:`hltemu.stages.pfcandidates`: ``pt``, ``eta``, ``phi`` [GeV,
rad], ``mass`` [GeV], ``from_pv``).  With ``chs = true`` (the default) the charged candidates
not associated with the primary vertex are left out (charged-hadron subtraction); neutral
candidates are always clustered.  Four-vectors ``px = pT cos(phi)``, ``py = pT sin(phi)``,
``pz = pT sinh(eta)``, ``E = sqrt(p^2 + m^2)``, clustered by the anti-kT of
:mod:`hltemu.stages.antikt` (identical to FastJet, E-scheme; the same kernels on each backend).
Adds ``pfjets`` with the columns of ``jets`` and ``pfcandidate_jet`` (per candidate: its jet's
row within the event, -1 when it is in no jet above ``pt_min`` or left out by CHS).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from hltemu.batch import Collection, EventBatch
from hltemu.config import param
from hltemu.pipeline import Stage, register
from hltemu.stages.antikt import (
    _check_columns,
    _check_finite,
    antikt_of_rows,
    check_jet_settings,
    cluster_cpu,
    cluster_cuda,
    cluster_reference,
)

#: ``pfcandidates`` columns read.
CANDIDATE_COLUMNS = ("pt", "eta", "phi", "mass", "from_pv")


@dataclass(frozen=True)
class PFJetsConfig:
    """Stage ``pfjets``: anti-kT jets of particle-flow candidates (E-scheme, FastJet's)."""

    R: float = param(0.4, "", "jet radius in the rapidity-azimuth plane")
    pt_min: float = param(5.0, "GeV", "jets with pT below this are dropped")
    chs: bool = param(True, "", "leave out charged candidates not from the primary vertex")

    def __post_init__(self) -> None:
        check_jet_settings("pfjets", self.R, self.pt_min)


def pfjets_stage(batch: EventBatch, cfg: PFJetsConfig, clusterer: Any) -> dict[str, Collection]:
    """The ``pfjets`` stage with ``clusterer`` (one of anti-kT's per-backend clusterers)."""
    be = batch.backend
    xp = be.xp
    cands = batch["pfcandidates"]
    _check_columns(cands, "pfcandidates", CANDIDATE_COLUMNS, "pfjets")
    pt, eta, phi, mass = (xp.asarray(cands[c], dtype=xp.float64)
                          for c in ("pt", "eta", "phi", "mass"))
    for col, values in zip(("pt", "eta", "phi", "mass"), (pt, eta, phi, mass), strict=True):
        _check_finite(xp, values, "pfcandidates", col, "pfjets")
    keep = xp.asarray(cands["from_pv"], dtype=xp.bool_) if cfg.chs else \
        xp.ones(pt.shape[0], dtype=xp.bool_)
    pz = pt * xp.sinh(eta)
    jets, cand_jet = antikt_of_rows(keep, cands.offsets, pt * xp.cos(phi), pt * xp.sin(phi), pz,
                                    xp.sqrt(pt * pt + pz * pz + mass * mass), cfg.R, cfg.pt_min,
                                    be, clusterer, "pfjets", "pfcandidates")
    return {"pfjets": jets, "pfcandidate_jet": cand_jet}


run_reference = functools.partial(pfjets_stage, clusterer=cluster_reference)
run_cpu = functools.partial(pfjets_stage, clusterer=cluster_cpu)
run_cuda = functools.partial(pfjets_stage, clusterer=cluster_cuda)


STAGE = register(Stage(
    name="pfjets",
    needs=("pfcandidates",),
    adds=("pfjets", "pfcandidate_jet"),
    config_type=PFJetsConfig,
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    doc="offline jets: anti-kT on particle-flow candidates with charged-hadron subtraction",
    in_default_chain=False,
))
