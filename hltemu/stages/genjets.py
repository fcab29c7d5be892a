"""Stage ``genjets``: anti-kT truth jets of generator particles, identical to FastJet's (the
clustering of :mod:`hltemu.stages.antikt`, whose docstring states the algorithm and the jet
columns).

Needs ``GenPart`` (columns ``pt``, ``eta``, ``phi``, ``mass`` [GeV], ``pdgId``, ``status``,
and ``vertex`` unless ``vertices = "all"``).  Final-state particles (``status == 1``) of the
hard-scatter interaction (``vertex == 0``; ``vertices = "all"``: of every interaction, pileup
included), without neutrinos (|pdgId| 12, 14, 16) unless ``include_neutrinos``; ``px = pT
cos(phi)``, ``py = pT sin(phi)``, ``pz = pT sinh(eta)``, ``E = sqrt(p^2 + m^2)``.  Adds
``genjets`` with the columns of ``jets``.  Truth jets are those of the hard scatter by default
because a genjet-matched response means nothing when pileup particles are clustered too (the
built-in sample, ttbar at pileup 50, ``pt_min`` 5 GeV: 149.3 genjets per event of every
interaction, 66.1 of them above 20 GeV; 14.1 of the hard scatter, 5.1 above 20 GeV).

CMS NanoAOD is refused: its ``GenPart`` is pruned (the hard-process record and selected decay
products, not every final-state particle), so reclustering it makes no truth jets; its own
``GenJet`` collection is the truth to use.  Two checks, one per level of what is known:

* the planner sees collection names only: an input with both ``GenPart`` and ``GenJet``
  (NanoAOD's AK4 generator jets; hltemu's files have no ``GenJet``) is NanoAOD, and the
  stage's ``plan`` hook raises :class:`~hltemu.pipeline.CannotRun` naming ``GenJet``: the
  default chain leaves ``genjets`` out with that reason, ``--stages genjets`` fails with it;
* the stage itself sees columns: a ``GenPart`` without ``vertex`` that has NanoAOD's
  ``statusFlags`` and ``genPartIdxMother`` is refused with the same reason (whatever
  ``vertices`` says); any other ``GenPart`` without ``vertex`` is refused under ``vertices =
  "hard_scatter"`` with an error naming ``vertices = "all"``, never clustered whole silently.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError, param
from hltemu.pipeline import CannotRun, PipelineError, Planned, Stage, register
from hltemu.stages.antikt import (
    _check_columns,
    _check_finite,
    _check_radius,
    _select,
    antikt_jets,
    check_jet_settings,
    cluster_cpu,
    cluster_cuda,
    cluster_reference,
)

#: Values of ``[genjets] vertices``: the hard-scatter interaction (GenPart ``vertex == 0``)
#: or every interaction, pileup included.
VERTICES: tuple[str, ...] = ("hard_scatter", "all")


@dataclass(frozen=True)
class GenJetsConfig:
    """Stage ``genjets``: anti-kT jets of generator final-state particles (``GenPart`` with
    status 1) of the hard-scatter interaction (``vertex == 0``) unless ``vertices = "all"``,
    identical to FastJet; neutrinos are left out unless ``include_neutrinos``.  CMS NanoAOD's
    pruned ``GenPart`` is refused (see :mod:`hltemu.stages.genjets`)."""

    R: float = param(0.4, "", "jet radius in the rapidity-azimuth plane")
    pt_min: float = param(5.0, "GeV", "generator jets with pT below this are dropped")
    include_neutrinos: bool = param(False, "", "cluster neutrinos (|pdgId| 12, 14, 16) too")
    vertices: str = param("hard_scatter", "",
                          'interactions clustered: "hard_scatter" (GenPart vertex == 0) or '
                          '"all" (every vertex, pileup included)')

    def __post_init__(self) -> None:
        check_jet_settings("genjets", self.R, self.pt_min)
        if self.vertices not in VERTICES:
            raise ConfigError(f"[genjets] vertices must be one of "
                              f"{', '.join(map(repr, VERTICES))}, got {self.vertices!r}")


#: GenPart columns stage ``genjets`` reads.
GENPART_COLUMNS: tuple[str, ...] = ("pt", "eta", "phi", "mass", "pdgId", "status")
#: |pdgId| of neutrinos, left out of generator jets.
NEUTRINOS: tuple[int, ...] = (12, 14, 16)
#: CMS NanoAOD's generator-jet collection: where an input has it, its GenPart is NanoAOD's.
NANOAOD_GENJET = "GenJet"
#: GenPart columns of CMS NanoAOD (branches ``GenPart_statusFlags``,
#: ``GenPart_genPartIdxMother``) that, without ``vertex``, mark its pruned record.
NANOAOD_GENPART_COLUMNS: tuple[str, ...] = ("statusFlags", "genPartIdxMother")
#: Why CMS NanoAOD's GenPart is not clustered (one line, after what showed it is NanoAOD's).
NANOAOD_REASON = (
    "it holds the hard process and selected decay products, not every final-state particle, "
    f"so reclustering it makes no truth jets; use NanoAOD's {NANOAOD_GENJET!r} collection as "
    "the truth jets")


def check_not_nanoaod(gen: Collection, stage: str = "genjets") -> None:
    """Refuse CMS NanoAOD's pruned ``GenPart`` (no ``vertex``; ``statusFlags`` and
    ``genPartIdxMother``) with a :class:`~hltemu.pipeline.PipelineError` naming ``GenJet``."""
    if "vertex" not in gen and all(c in gen for c in NANOAOD_GENPART_COLUMNS):
        raise PipelineError(
            f"stage {stage!r}: collection 'GenPart' is CMS NanoAOD's pruned generator record "
            f"(columns {', '.join(map(repr, NANOAOD_GENPART_COLUMNS))}, no 'vertex'): "
            f"{NANOAOD_REASON}")


def genparticle_vectors(gen: Collection, include_neutrinos: bool, xp: Any,
                        stage: str = "genjets", vertices: str = "hard_scatter"
                        ) -> tuple[Any, Any, Any, Any, Any, Any]:
    """px, py, pz, E [GeV] of the final-state GenPart rows of the hard scatter (``vertex ==
    0``; ``vertices="all"``: of every interaction), without neutrinos unless asked, the GenPart
    rows they come from and their offsets.  CMS NanoAOD's GenPart is refused
    (:func:`check_not_nanoaod`), so is one without ``vertex`` unless ``vertices="all"``."""
    if vertices not in VERTICES:
        raise ConfigError(f"[{stage}] vertices must be one of {', '.join(map(repr, VERTICES))}, "
                          f"got {vertices!r}")
    check_not_nanoaod(gen, stage)
    _check_columns(gen, "GenPart", GENPART_COLUMNS, stage)
    if vertices == "hard_scatter" and "vertex" not in gen:
        raise PipelineError(
            f"stage {stage!r} clusters the hard scatter only ([{stage}] vertices = "
            f"\"hard_scatter\") and needs column 'vertex' in collection 'GenPart' (0: hard "
            f"scatter); it has {sorted(gen.columns)}; [{stage}] vertices = \"all\" clusters "
            "every particle")
    pt, eta, phi, mass = (xp.asarray(gen[c], dtype=xp.float64) for c in GENPART_COLUMNS[:4])
    for col, values in zip(GENPART_COLUMNS[:4], (pt, eta, phi, mass), strict=True):
        _check_finite(xp, values, "GenPart", col, stage)
    keep = gen["status"] == 1
    if vertices == "hard_scatter":
        keep &= xp.asarray(gen["vertex"]) == 0
    if not include_neutrinos:
        apdg = xp.abs(xp.asarray(gen["pdgId"]))
        keep &= (apdg != 12) & (apdg != 14) & (apdg != 16)
    rows, offsets = _select(xp, keep, gen.offsets)
    pt, eta, phi, mass = pt[rows], eta[rows], phi[rows], mass[rows]
    px, py, pz = pt * xp.cos(phi), pt * xp.sin(phi), pt * xp.sinh(eta)
    e = xp.sqrt(px * px + py * py + pz * pz + mass * mass)
    return px, py, pz, e, rows, offsets


def genjets_stage(batch: EventBatch, cfg: GenJetsConfig, clusterer: Any
                  ) -> dict[str, Collection]:
    """The ``genjets`` stage with ``clusterer`` (one of :data:`CLUSTERERS`)."""
    be = batch.backend
    _check_radius(cfg.R, "genjets")
    gen = batch["GenPart"]
    px, py, pz, e, rows, offsets = genparticle_vectors(gen, cfg.include_neutrinos, be.xp,
                                                       vertices=cfg.vertices)
    jets, _ = antikt_jets(px, py, pz, e, offsets, cfg.R, cfg.pt_min, be, clusterer,
                          origin=("genjets", "GenPart", rows, gen.offsets))
    return {"genjets": jets}


def plan_genjets(cfg: GenJetsConfig, available: frozenset[str], inputs: tuple[str, ...] = ()
                 ) -> Planned:
    """The planner's check (collection names only): an input with ``GenPart`` and CMS
    NanoAOD's ``GenJet`` holds NanoAOD's pruned GenPart, which is not clustered
    (:class:`~hltemu.pipeline.CannotRun` naming ``GenJet``)."""
    if "GenPart" in available and NANOAOD_GENJET in available:
        raise CannotRun(f"the input's 'GenPart' is CMS NanoAOD's pruned generator record (the "
                        f"input has {NANOAOD_GENJET!r}): {NANOAOD_REASON}")
    return Planned(cfg)


run_genjets_reference = functools.partial(genjets_stage, clusterer=cluster_reference)
run_genjets_cpu = functools.partial(genjets_stage, clusterer=cluster_cpu)
run_genjets_cuda = functools.partial(genjets_stage, clusterer=cluster_cuda)


GENJETS_STAGE = register(Stage(
    name="genjets",
    needs=("GenPart",),
    adds=("genjets",),
    config_type=GenJetsConfig,
    implementations={"reference": run_genjets_reference, "cpu": run_genjets_cpu,
                     "cuda": run_genjets_cuda},
    doc="anti-kT jets of the hard scatter's generator final-state particles (no neutrinos), "
        "as FastJet",
    plan=plan_genjets,
))
