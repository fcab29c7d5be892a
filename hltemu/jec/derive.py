"""The emulator's own jet energy corrections: ``hltemu derive-jec``.

Input: files written by ``hltemu run`` with the stages ``topocluster,antikt,genjets,rho`` (the
collections ``jets``, ``genjets``, ``rho`` and ``Event``; for ``--jets pfjets``, the offline
stages and ``pfrho`` in place of ``antikt`` and ``rho``, :data:`RUN_STAGES`) from a *paired*
production: the same generator seeds at pileup 0 and at one or more pileups (``hltemu
generate`` gives the same hard scatter, vertex and detector response for the same seed at any
pileup), so an event at pileup N and its partner at pileup 0 share ``(run, luminosityBlock,
event)``.

Two levels are derived, as CMS does for its calorimeter jets (JINST 12 (2017) P02014):

1. **L1FastJet** (pileup offset).  Each jet at pileup N is matched to the jet of the paired
   pileup-0 event nearest in (eta, phi) (Delta R < R/2); its offset is ``pT(PU) - pT(PU 0)``.
   Per ``|eta|`` bin the median offset per unit area (unweighted; the median, as the
   closure's estimator: offsets have a long positive tail, and a mean-offset correction leaves
   the median response low at pileup) in bins of rho and raw pT is fitted with CMS's hybrid
   form anchored at pileup 0::

       offset = A * (rho - rho0) * (a + b * ln pT)        (GeV; A the jet area, rho GeV/area)

   a linear least-squares fit in ``(a, b)``; ``rho0`` is the median rho of the pileup-0 events,
   fixed, so a pileup-0 jet keeps its pT: its offset is zero by definition.  (CMS's hybrid form
   ``p0 + p1 rho (1 + p2 ln pT)`` has a free intercept; fitted on pileup >= 20 only it went
   negative at pileup 0, and the level *raised* pileup-0 jets beyond the tracker by 2.5% while
   lowering pileup-50 ones: the 30-50 GeV response at 2.5 < |eta| < 3 then differed by 4%
   between pileup 50 and 0, on the validation seed 2001, benchmarks/SAMPLES.md.)  The level's
   factor is ``max(0.0001, 1 - offset / pT_raw)``.
2. **L2Relative** (L2 and L3 in one level, as CMS since 2017).  L1-corrected jets of every
   input file are matched to truth jets (``genjets``: hard-scatter particles only, ``|eta| < 3``)
   by Delta R < R/2, closest pairs first.  Per ``|eta|`` bin and truth-pT bin: the response
   ``R`` = weighted *median* of ``pT_L1 / pT_truth`` (the estimator for derivation and closure
   alike) and ``<pT_L1>`` (weighted mean); the correction ``1 / R`` is placed at ``<pT_L1>``
   (numerical inversion) and fitted in CMS's standard parameterisation with ``L = log10(pT)``::

       C(pT) = max(0.0001, p0 + p1 / (L^2 + p2) + p3 * exp(-p4 * (L - p5)^2))

   A truth-pT bin is used only when it has enough jets, 80% of its truth jets are matched and
   the 2% quantile of its matched jets' raw pT is 1.5 times the jets' ``pt_min`` (else the
   reconstruction threshold cuts into the response); pT is clamped to the fitted points'
   range, so the correction is flat beyond them (no cliffs).

Weights: the medians are *unweighted* by default: within a narrow truth-pT bin the response is
a property of the detector, not of how often such events occur, and generator weights of a
``--pthat-bias`` sample (which span ten decades) would leave few effective jets (at 15-30 GeV,
143 effective of 1,113 matched jets in the barrel on 3,000 events).  With ``weighted=True``
each event counts with ``Event_weight`` times its file's cross-section over its summed weights
(from the generation provenance), so biased samples and files of different sizes combine into
one physical spectrum.  Either way the effective number of jets of every point is recorded.

Reference: truth jets by default; with ``reference="pfjets"`` the L2 response is measured
against the offline particle-flow jets corrected by :data:`OFFLINE_LEVELS`, so the HLT
correction calibrates HLT jets to the offline ones (the online-offline study measures the
result).

Acceptance: the calorimeter's ``|eta| < 3``; the outermost bins reach 5.191 (CMS's edge) so
that a jet outside still gets a factor.

Outputs (:func:`write_corrections`): CMS text files ``<era>_L1FastJet_<algo>.txt`` and
``<era>_L2Relative_<algo>.txt``, the same levels as correctionlib JSON ``<era>.json``, and
``<era>_derivation.json`` (what the corrections were derived with: R, rho and noise settings,
inputs and seeds; the fits).  The closure report lives in :mod:`hltemu.jec.closure`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hltemu.batch import counts_to_offsets
from hltemu.jec.errors import JecError
from hltemu.jec.record import RECORD_FORMAT, noise_mode
from hltemu.jetmatch import match_jets, median_with_error

#: Pseudorapidity of CMS's outermost bin edge: the last bin of a derived level reaches it.
CMS_ETA_EDGE = 5.191

#: The calorimeter's acceptance (|eta|): truth jets and fits stop here.
CALO_ETA_MAX = 3.0

#: Formulas of the derived levels, in the CMS text syntax (x, y, z the parameter variables).
L1_FORMULA = "max(0.0001,1-(z/y)*(x-[2])*([0]+[1]*log(y)))"
L1_VARIABLES = ("Rho", "JetPt", "JetA")
L2_FORMULA = ("max(0.0001,[0]+[1]/(pow(log10(x),2)+[2])"
              "+[3]*exp(-[4]*pow(log10(x)-[5],2)))")

#: Collections a derivation reads from each ``hltemu run`` output (and the jets' rho,
#: :data:`RHO_COLLECTIONS`).
NEEDED = ("Event",)

#: The event rho each jet collection's L1FastJet reads: the calorimeter towers' for calo jets,
#: the particle-flow candidates' (CMS's fixedGridRhoFastjetAll) for pfjets.
RHO_COLLECTIONS: dict[str, str] = {"jets": "rho", "pfjets": "pfrho"}

#: The reference jets a derivation calibrates to: hard-scatter truth jets, or the offline
#: particle-flow jets corrected with :data:`OFFLINE_LEVELS` ("move knowledge between online and
#: offline": an HLT correction that gives HLT/offline = 1).
REFERENCES: tuple[str, ...] = ("genjets", "pfjets")

#: The corrections of the offline reference ``pfjets`` (derive-jec --jets pfjets, shipped).
OFFLINE_LEVELS: tuple[str, ...] = ("builtin:hltemu_PF_V2_MC_L1FastJet_AK4PFchs.txt",
                                   "builtin:hltemu_PF_V2_MC_L2Relative_AK4PFchs.txt")

#: Jet collections corrections can be derived for -> the stages whose settings make them (the
#: first holds ``R`` and ``pt_min``), which must agree between the inputs.
JET_COLLECTIONS: dict[str, tuple[str, ...]] = {
    "jets": ("antikt",),
    "pfjets": ("pfjets", "pfcandidates", "vertices", "tracks"),
}

#: The ``hltemu run --stages`` that make each collection's derive-jec input.
RUN_STAGES: dict[str, str] = {
    "jets": "topocluster,antikt,genjets,rho",
    "pfjets": "tracks,vertices,topocluster,pfcandidates,pfjets,pfrho,genjets",
}


class DeriveError(JecError):
    """A derivation that cannot be done (inputs, pairing, too few jets), with the reason."""


@dataclass(frozen=True)
class DeriveSettings:
    """How corrections are derived (binning in ``|eta|`` and GeV, thresholds)."""

    era: str = "hltemu_V2_MC"
    algo: str = "AK4Calo"
    l1_eta_edges: tuple[float, ...] = (0.0, 1.3, 2.0, 2.5, 3.0)
    l2_eta_edges: tuple[float, ...] = (0.0, 0.5, 1.0, 1.3, 1.7, 2.1, 2.5, 2.75, 3.0)
    l2_pt_edges: tuple[float, ...] = (10, 12, 15, 18, 22, 27, 33, 40, 50, 60, 75, 90, 110, 135,
                                      165, 200, 250, 300, 400, 500, 650, 850, 1100, 1500, 2000,
                                      3000)
    #: L1: bins of raw pT (GeV) for the binned offsets, fine at low pT where the offset's pT
    #: dependence shows (chosen on seed 2001, benchmarks/SAMPLES.md: from 15 GeV the fit left
    #: the 30-50 GeV response 3% low at pileup 50); rho bins: quantiles per eta bin
    l1_pt_edges: tuple[float, ...] = (10, 14, 18, 24, 30, 45, 60, 120, 300, 7000)
    l1_rho_bins: int = 6
    #: L1: pairs only where the pileup-0 jet has at least this pT (GeV).
    l1_min_pt0: float = 8.0
    #: a point (one bin of the binned offsets or responses) needs this many jets
    min_jets_per_point: int = 30
    #: an L2 |eta| bin needs this many matched jets in its used points
    min_jets_per_eta_bin: int = 300
    #: an L2 point needs this fraction of its truth jets matched (the plateau is ~0.9: jets
    #: split or Delta R > R/2) ...
    min_match_efficiency: float = 0.8
    #: ... and the 2% quantile of its matched jets' raw pT at least this times the jets' pt_min
    #: (else the reconstruction threshold cuts into the response distribution)
    threshold_margin: float = 1.5
    #: matching distance as a fraction of R (CMS: R/2)
    match_fraction_of_r: float = 0.5
    truth_pt_min: float = 10.0
    #: medians weighted by the generator weights (normalised per file), or not (default)
    weighted: bool = False


# -- reading the inputs --------------------------------------------------------------------------
@dataclass
class JetSample:
    """Jets of a set of ``hltemu run`` outputs, flat arrays in event order.

    Per event (length ``n_events``): ``key`` ``(n, 3)`` uint64 (run, luminosityBlock, event),
    ``pileup`` (the file's nominal mean pileup), ``n_pileup``, ``rho`` [GeV/area], ``weight``
    (event weight times the file's normalisation), ``file`` (index into ``files``).  Reco jets
    ``j_*`` and truth jets ``t_*``: ``ev`` (event row), ``pt`` [GeV], ``eta``, ``phi`` [rad],
    and the reco jets' ``area``.
    """

    files: list[str]
    key: np.ndarray
    pileup: np.ndarray
    n_pileup: np.ndarray
    rho: np.ndarray
    weight: np.ndarray
    file: np.ndarray
    j_ev: np.ndarray
    j_pt: np.ndarray
    j_eta: np.ndarray
    j_phi: np.ndarray
    j_area: np.ndarray
    t_ev: np.ndarray
    t_pt: np.ndarray
    t_eta: np.ndarray
    t_phi: np.ndarray
    radius: float
    run_config: dict[str, Any]
    generation: list[dict[str, Any]] = field(default_factory=list)
    #: topoclustering's :data:`NOISE_MODE_KEYS` (those of the files with pileup)
    noise_mode: dict[str, Any] = field(default_factory=dict)
    #: the reco jets' collection (a key of :data:`JET_COLLECTIONS`)
    jets: str = "jets"
    #: what the ``t_*`` jets are: ``"genjets"`` (truth) or ``"pfjets"`` (corrected offline jets)
    reference: str = "genjets"

    @property
    def n_events(self) -> int:
        return int(self.key.shape[0])

    def pileups(self) -> list[float]:
        """The nominal pileups present, ascending."""
        return sorted({float(p) for p in np.unique(self.pileup)})

    def select_events(self, mask: np.ndarray) -> JetSample:
        """The events where ``mask`` (per event) holds, with their jets (rows renumbered)."""
        new_index = np.cumsum(mask) - 1
        jm, tm = mask[self.j_ev], mask[self.t_ev]
        return JetSample(
            self.files, self.key[mask], self.pileup[mask], self.n_pileup[mask], self.rho[mask],
            self.weight[mask], self.file[mask], new_index[self.j_ev[jm]], self.j_pt[jm],
            self.j_eta[jm], self.j_phi[jm], self.j_area[jm], new_index[self.t_ev[tm]],
            self.t_pt[tm], self.t_eta[tm], self.t_phi[tm], self.radius, self.run_config,
            self.generation, self.noise_mode, self.jets, self.reference)


def generation_provenance(prov: dict[str, Any] | None) -> dict[str, Any]:
    """The generation settings of a run output's input (seed, pileup, process, cross-section
    and weight sum of the hard process), or {} when it does not say; for the output of a run
    over a run output, those of the generated file the first run read
    (:func:`hltemu.io.provenance.generation_run`)."""
    from hltemu.io.provenance import generation_run

    if not prov:
        return {}
    prov = generation_run(prov)
    inputs = prov.get("inputs") or []
    if len(inputs) != 1 or not isinstance(inputs[0].get("provenance"), dict):
        return {}
    gen = inputs[0]["provenance"]
    settings = gen.get("settings") or {}
    hard = ((gen.get("pythia") or {}).get("hard_process")) or {}
    return {
        "file": inputs[0].get("file"),
        "command": gen.get("command"),
        "seed": settings.get("seed"),
        "pileup": settings.get("pileup"),
        "process": settings.get("process"),
        "pthat_min": settings.get("pthat_min"),
        "pthat_bias": settings.get("pthat_bias", 0.0),
        "events": gen.get("events"),
        "sigma_gen_mb": hard.get("sigma_gen_mb"),
        "weight_sum": hard.get("weight_sum"),
    }


def cross_section_scale(gen: dict[str, Any]) -> float | None:
    """``sigma_gen / weight_sum`` (mb per unit of ``Event_weight``) of a
    :func:`generation_provenance` record: the factor that turns a file's event weights into
    cross-sections, so that files of one process or several pT-hat ranges add up; None when
    the record lacks either."""
    if gen.get("sigma_gen_mb") and gen.get("weight_sum"):
        return float(gen["sigma_gen_mb"]) / float(gen["weight_sum"])
    return None


def load_sample(paths: Sequence[str | Path], progress: Callable[[int], None] | None = None,
                jets: str = "jets", reference: str = "genjets",
                reference_levels: Sequence[str] = OFFLINE_LEVELS) -> JetSample:
    """Read the reco jets ``jets`` (``"jets"``: calorimeter, ``"pfjets"``: particle flow),
    the reference jets, ``rho`` and ``Event`` of each ``hltemu run`` output.

    The reference (the ``t_*`` arrays) is ``genjets`` (hard-scatter truth) or ``pfjets`` (the
    offline jets, their pT corrected by ``reference_levels``: an HLT correction derived against
    them calibrates HLT jets to offline ones).

    A missing collection, a file written with another jet radius or rho definition than the
    first, or an empty input is a :class:`DeriveError` naming the file.  ``progress`` is called
    with 1 after each file.
    """
    from hltemu.io import read_collections
    from hltemu.io.layout import common_collections
    from hltemu.io.provenance import provenance_pileup, read_provenance

    if not paths:
        raise DeriveError("no input files given")
    if jets not in JET_COLLECTIONS:
        raise DeriveError(f"jets {jets!r}: derive-jec corrects {' or '.join(JET_COLLECTIONS)}")
    if reference not in REFERENCES or reference == jets:
        raise DeriveError(f"reference {reference!r}: give one of {', '.join(REFERENCES)}, other "
                          f"than the jets corrected ({jets!r})")
    rho_name, ref_rho_name = RHO_COLLECTIONS[jets], RHO_COLLECTIONS.get(reference)
    ref_rho = (ref_rho_name,) if ref_rho_name else ()
    must_agree = tuple(dict.fromkeys((*JET_COLLECTIONS[jets], rho_name,
                                      *JET_COLLECTIONS.get(reference, ()), *ref_rho)))
    needed = tuple(dict.fromkeys((jets, reference, *NEEDED, rho_name, *ref_rho)))
    offline_chain = None
    if reference == "pfjets":
        from hltemu.jec import load_chain

        try:
            offline_chain = load_chain(tuple(str(x) for x in reference_levels))
        except JecError as exc:
            raise DeriveError(f"reference pfjets corrections: {exc}") from None
    parts: list[dict[str, np.ndarray]] = []
    files = [str(p) for p in paths]
    first_config: dict[str, Any] | None = None
    generation: list[dict[str, Any]] = []
    mode: dict[str, Any] | None = None
    mode_file = ""
    offset = 0
    for i, path in enumerate(files):
        have = set(common_collections([path]))
        missing = [c for c in needed if c not in have]
        if missing:
            raise DeriveError(
                f"{path}: no collection {', '.join(map(repr, missing))}; derive-jec reads the "
                f"output of `hltemu run FILE --stages {RUN_STAGES[jets]}`"
                + ("" if reference == "genjets" else f" (and {RUN_STAGES['pfjets']})"))
        prov = read_provenance(path) or {}
        config = {k: (prov.get("config") or {}).get(k) for k in must_agree}
        config["topocluster"] = (prov.get("config") or {}).get("topocluster")
        config["facts"] = (prov.get("plan") or {}).get("facts") or {}
        if first_config is None:
            first_config = config
        else:
            for k in must_agree:
                if config[k] != first_config[k]:
                    raise DeriveError(
                        f"{path}: [{k}] {config[k]} differs from {files[0]}'s {first_config[k]}; "
                        "derive corrections from files run with the same settings")
        gen = generation_provenance(prov)
        generation.append(gen)
        topo = config["topocluster"] or {}
        if float(topo.get("pileup_mu") or 0.0) > 0:  # at pileup 0 no offset is subtracted
            this = noise_mode(topo)
            if mode is None:
                mode, mode_file = this, path
            elif this != mode:
                raise DeriveError(
                    f"{path}: topocluster {this} differs from {mode_file}'s {mode}; derive "
                    "corrections from files clustered with the same noise mode")
        c = read_collections(path, list(needed))
        ev, reco, gj, rho = c["Event"], c[jets], c[reference], c[rho_name]
        n = ev.n_events
        if n == 0:
            raise DeriveError(f"{path}: no events")
        w = np.asarray(ev["weight"], dtype=np.float64) if "weight" in ev else np.ones(n)
        scale = cross_section_scale(gen)
        if scale is not None:
            w = w * scale
        n_pu = (np.asarray(ev["n_pileup"], dtype=np.float64) if "n_pileup" in ev
                else np.zeros(n))
        nominal = provenance_pileup(prov)  # the generated mean, as topocluster's "auto" reads it
        if nominal is None:
            nominal = round(float(n_pu.mean()), 1)
        key = np.stack([np.asarray(ev[k], dtype=np.uint64)
                        for k in ("run", "luminosityBlock", "event")], axis=1)
        parts.append({
            "key": key, "pileup": np.full(n, float(nominal)), "n_pileup": n_pu,
            "rho": np.asarray(rho["rho"], dtype=np.float64), "weight": w,
            "file": np.full(n, i, dtype=np.int64),
            "j_ev": np.asarray(reco.event_index()) + offset,
            "j_pt": np.asarray(reco["pt"], dtype=np.float64),
            "j_eta": np.asarray(reco["eta"], dtype=np.float64),
            "j_phi": np.asarray(reco["phi"], dtype=np.float64),
            "j_area": np.asarray(reco["area"], dtype=np.float64),
            "t_ev": np.asarray(gj.event_index()) + offset,
            "t_pt": _reference_pt(gj, c[ref_rho_name] if ref_rho_name else None,
                                  offline_chain),
            "t_eta": np.asarray(gj["eta"], dtype=np.float64),
            "t_phi": np.asarray(gj["phi"], dtype=np.float64),
        })
        offset += n
        if progress is not None:
            progress(1)
    assert first_config is not None
    radius = float((first_config.get(JET_COLLECTIONS[jets][0]) or {}).get("R", 0.4))
    truth_r = (first_config.get(JET_COLLECTIONS.get(reference, ("genjets",))[0]) or {}).get("R")
    if truth_r is not None and float(truth_r) != radius:
        raise DeriveError(f"{files[0]}: jets have R = {radius:g} but genjets R = {truth_r}; "
                          "derive with truth jets of the same radius")
    vertices = (first_config.get("genjets") or {}).get("vertices")
    if reference == "genjets" and vertices not in (None, "hard_scatter"):
        raise DeriveError(f"{files[0]}: genjets were clustered from {vertices!r} vertices; the "
                          "response is defined against hard-scatter truth jets "
                          "([genjets] vertices = \"hard_scatter\")")
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return JetSample(files=files, radius=radius, run_config=first_config, generation=generation,
                     noise_mode=mode or {}, jets=jets, reference=reference, **cat)


def _reference_pt(ref: Any, rho: Any, chain: Any) -> np.ndarray:
    """The reference jets' pT [GeV]: as stored (genjets), or corrected by ``chain``."""
    from hltemu.jec.chain import jet_values

    if chain is None:
        return np.asarray(ref["pt"], dtype=np.float64)
    return chain.correct_reference(jet_values(ref, rho))[0]


def pair_events(pu: JetSample, pu0: JetSample) -> np.ndarray:
    """For each event of ``pu``, the row of the event of ``pu0`` with the same (run,
    luminosityBlock, event), or -1."""
    keys = pu0.key.tolist()
    index = {tuple(k): i for i, k in enumerate(keys)}
    if len(index) < len(keys):
        seen: dict[tuple, int] = {}
        for i, k in enumerate(keys):
            if tuple(k) in seen:
                j = seen[tuple(k)]
                raise DeriveError(
                    f"two pileup-0 events share (run, luminosityBlock, event) = {tuple(k)}: "
                    f"{pu0.files[pu0.file[j]]} and {pu0.files[pu0.file[i]]}; the pairing with "
                    "the events at pileup would be ambiguous (generate each seed with its own "
                    "--run)")
            seen[tuple(k)] = i
    return np.asarray([index.get(tuple(k), -1) for k in pu.key.tolist()], dtype=np.int64)


def _float32(params: Sequence[float]) -> tuple[float, ...]:
    """Parameters rounded to float32 values: readers that hold CMS tables in float32 (CMSSW,
    coffea) then evaluate exactly the parameters hltemu does."""
    return tuple(float(np.float32(p)) for p in params)


# -- L1: pileup offset ---------------------------------------------------------------------------
@dataclass
class L1Fit:
    """The offset fit of one ``|eta|`` bin: ``params`` (a, b [per unit rho], rho0 [GeV/area]),
    the binned points (``rho``, ``pt``, ``offset_per_area`` with ``error``, ``n``), chi2 and ndf."""

    eta: tuple[float, float]
    params: tuple[float, float, float]
    chi2: float
    ndf: int
    n_pairs: int
    rho_range: tuple[float, float]
    pt_range: tuple[float, float]
    points: list[dict[str, float]]


def l1_offset(p: Sequence[float], rho: np.ndarray, pt: np.ndarray) -> np.ndarray:
    """Offset per unit area (GeV/area) of the anchored hybrid form at ``rho`` and raw ``pt``."""
    a, b, rho0 = p
    return (rho - rho0) * (a + b * np.log(pt))


def l1_pairs(sample: JetSample, settings: DeriveSettings) -> dict[str, Any]:
    """Jets at pileup > 0 matched to the jets of their paired pileup-0 event: per pair the
    pileup jet's raw ``pt``, ``eta``, ``area``, its event's ``rho``, ``offset`` = pT - pT(PU 0)
    [GeV] and ``pileup`` (the file's nominal); ``rho0``: the median rho of the paired pileup-0
    events (a float)."""
    is0 = sample.pileup == 0
    if not is0.any():
        raise DeriveError("no pileup-0 input: the L1 offset needs the pileup-0 partner of each "
                          "event (the same generator seeds at pileup 0)")
    if is0.all():
        raise DeriveError("every input is at pileup 0: the L1 offset needs inputs with pileup")
    s0, s1 = sample.select_events(is0), sample.select_events(~is0)
    partner = pair_events(s1, s0)
    if (partner < 0).all():
        raise DeriveError("no event at pileup > 0 has a pileup-0 partner (the same run, "
                          "luminosityBlock and event): generate both with the same seeds")
    # the pileup-0 jets relabelled with the event row of their partner at pileup
    paired = np.flatnonzero(partner >= 0)
    j0_rows = []
    j0_ev = []
    o0 = counts_to_offsets(np.bincount(s0.j_ev, minlength=s0.n_events))
    for e in paired.tolist():  # event order of s1: the relabelled jets stay sorted
        lo, hi = o0[partner[e]], o0[partner[e] + 1]
        j0_rows.append(np.arange(lo, hi))
        j0_ev.append(np.full(hi - lo, e))
    rows0 = np.concatenate(j0_rows) if j0_rows else np.zeros(0, dtype=np.int64)
    ev0 = np.concatenate(j0_ev) if j0_ev else np.zeros(0, dtype=np.int64)
    sel0 = s0.j_pt[rows0] >= settings.l1_min_pt0
    rows0, ev0 = rows0[sel0], ev0[sel0]
    max_dr = settings.match_fraction_of_r * sample.radius
    ia, ib = match_jets(s1.j_ev, s1.j_eta, s1.j_phi, ev0, s0.j_eta[rows0], s0.j_phi[rows0],
                        max_dr, s1.n_events)
    pt = s1.j_pt[ia]
    return {"pt": pt, "eta": s1.j_eta[ia], "area": s1.j_area[ia], "rho": s1.rho[s1.j_ev[ia]],
            "offset": pt - s0.j_pt[rows0[ib]], "pileup": s1.pileup[s1.j_ev[ia]],
            "rho0": float(np.median(s0.rho[partner[paired]]))}


def fit_l1(pairs: dict[str, Any], settings: DeriveSettings) -> list[L1Fit]:
    """The anchored hybrid offset fit in each ``|eta|`` bin of ``settings.l1_eta_edges``."""
    fits = []
    edges = settings.l1_eta_edges
    aeta = np.abs(pairs["eta"])
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (aeta >= lo) & (aeta < hi)
        n_pairs = int(sel.sum())
        if n_pairs < 3 * settings.min_jets_per_point:
            raise DeriveError(f"L1: only {n_pairs} matched jet pairs at {lo:g} <= |eta| < "
                              f"{hi:g}; more paired events are needed")
        rho, pt = pairs["rho"][sel], pairs["pt"][sel]
        opa = pairs["offset"][sel] / pairs["area"][sel]
        rho_edges = np.unique(np.quantile(rho, np.linspace(0, 1, settings.l1_rho_bins + 1)))
        ri = np.clip(np.searchsorted(rho_edges, rho, side="right") - 1, 0, rho_edges.size - 2)
        pi = np.searchsorted(np.asarray(settings.l1_pt_edges), pt, side="right") - 1
        points = []
        for r in range(rho_edges.size - 1):
            for p in range(len(settings.l1_pt_edges) - 1):
                b = (ri == r) & (pi == p)
                if b.sum() < settings.min_jets_per_point:
                    continue
                m = median_with_error(opa[b], np.ones(int(b.sum())))
                points.append({"rho": float(rho[b].mean()), "pt": float(np.exp(np.log(pt[b])
                                                                                  .mean())),
                               "offset_per_area": m["median"], "error": max(m["error"], 1e-6),
                               "n": m["n"], "pt_bin": p})
        if len(points) < 3:
            raise DeriveError(f"L1: {len(points)} populated (rho, pT) bins at {lo:g} <= |eta| < "
                              f"{hi:g}; need 3 or more")
        x_rho = np.array([q["rho"] for q in points])
        x_pt = np.array([q["pt"] for q in points])
        y = np.array([q["offset_per_area"] for q in points])
        e = np.array([q["error"] for q in points])
        d_rho = x_rho - pairs["rho0"]
        design = np.stack([d_rho, d_rho * np.log(x_pt)], axis=1)
        q, *_ = np.linalg.lstsq(design / e[:, None], y / e, rcond=None)
        params = _float32((float(q[0]), float(q[1]), pairs["rho0"]))
        chi2 = float(np.sum(((design @ q - y) / e) ** 2))
        fits.append(L1Fit((lo, hi), params, chi2, len(points) - 2, n_pairs,
                          (float(rho.min()), float(rho.max())),
                          (float(pt.min()), float(pt.max())), points))
    return fits


# -- L2Relative ----------------------------------------------------------------------------------
@dataclass
class L2Fit:
    """The L2Relative fit of one ``|eta|`` bin: ``params`` (p0..p5), the clamp range of pT
    [GeV], chi2/ndf and the points (``pt`` = <pT_L1>, ``correction`` = 1/R with ``error``,
    ``truth_pt``, ``n``, ``n_eff``, ``efficiency``)."""

    eta: tuple[float, float]
    params: tuple[float, ...]
    pt_range: tuple[float, float]
    chi2: float
    ndf: int
    n_jets: int
    points: list[dict[str, float]]


def l2_correction(p: Sequence[float], pt: np.ndarray) -> np.ndarray:
    """The L2Relative factor of the standard parameterisation at ``pt`` [GeV] (no clamping)."""
    x = np.log10(np.asarray(pt, dtype=np.float64))
    val = p[0] + p[1] / (x * x + p[2]) + p[3] * np.exp(-p[4] * (x - p[5]) ** 2)
    return np.maximum(0.0001, val)


def jet_weights(sample: JetSample, events: np.ndarray, settings: DeriveSettings) -> np.ndarray:
    """The weight of each jet of ``events`` (event rows): its event's normalised generator
    weight with ``settings.weighted``, else 1."""
    if settings.weighted:
        return sample.weight[events]
    return np.ones(np.asarray(events).size)


def truth_matches(sample: JetSample, settings: DeriveSettings
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Truth jets in the acceptance (``|eta| < 3``, pT above ``truth_pt_min``) and their
    matched reco jets: ``(truth rows, reco row of each or -1)``."""
    acc = np.flatnonzero((np.abs(sample.t_eta) < CALO_ETA_MAX)
                         & (sample.t_pt >= settings.truth_pt_min))
    max_dr = settings.match_fraction_of_r * sample.radius
    it, ij = match_jets(sample.t_ev[acc], sample.t_eta[acc], sample.t_phi[acc], sample.j_ev,
                        sample.j_eta, sample.j_phi, max_dr, sample.n_events)
    reco = np.full(acc.size, -1, dtype=np.int64)
    reco[it] = ij
    return acc, reco


def _fit_standard(x: np.ndarray, y: np.ndarray, e: np.ndarray
                  ) -> tuple[tuple[float, ...], float]:
    """Least-squares fit of :func:`l2_correction`'s form (several starts; the Gaussian term
    only with 7 or more points); returns the parameters and chi2."""
    from scipy.optimize import least_squares

    lx = np.log10(x)

    def model(p: np.ndarray) -> np.ndarray:
        return p[0] + p[1] / (lx * lx + p[2]) + p[3] * np.exp(-p[4] * (lx - p[5]) ** 2)

    best: tuple[float, np.ndarray] | None = None
    lo = [-10.0, -100.0, 0.01, -5.0, 0.0, 0.5]
    hi = [10.0, 100.0, 100.0, 5.0, 50.0, 3.5]
    starts = [[1.0, 1.0, 1.0, 0.0, 1.0, 2.0], [1.0, 5.0, 3.0, 0.0, 1.0, 1.5],
              [1.2, -1.0, 0.5, 0.1, 2.0, 2.0], [1.0, 10.0, 10.0, 0.0, 1.0, 2.5]]
    use_gauss = x.size >= 7
    for s in starts:
        if use_gauss:
            res = least_squares(lambda p: (model(p) - y) / e, s, bounds=(lo, hi))
            p = res.x
        else:
            res = least_squares(
                lambda q: (model(np.array([q[0], q[1], q[2], 0.0, 1.0, 2.0])) - y) / e,
                s[:3], bounds=(lo[:3], hi[:3]))
            p = np.array([*res.x, 0.0, 1.0, 2.0])
        chi2 = float(np.sum(((model(p) - y) / e) ** 2))
        if best is None or chi2 < best[0]:
            best = (chi2, p)
    assert best is not None
    return tuple(float(v) for v in best[1]), best[0]


def fit_l2(pt_l1: np.ndarray, sample: JetSample, settings: DeriveSettings) -> list[L2Fit]:
    """The L2Relative fits of ``sample``'s jets after L1 (``pt_l1``: L1-corrected pT of every
    reco jet [GeV])."""
    acc, reco = truth_matches(sample, settings)
    t_pt, t_eta = sample.t_pt[acc], sample.t_eta[acc]
    w_all = jet_weights(sample, sample.t_ev[acc], settings)
    reco_pt_min = float((sample.run_config.get(JET_COLLECTIONS[sample.jets][0]) or {})
                        .get("pt_min", 0.0))
    matched = reco >= 0
    edges = np.asarray(settings.l2_pt_edges, dtype=np.float64)
    fits = []
    for lo, hi in zip(settings.l2_eta_edges[:-1], settings.l2_eta_edges[1:], strict=True):
        in_eta = (np.abs(t_eta) >= lo) & (np.abs(t_eta) < hi)
        points = []
        for k in range(edges.size - 1):
            b = in_eta & (t_pt >= edges[k]) & (t_pt < edges[k + 1])
            bm = b & matched
            n_all, n_m = int(b.sum()), int(bm.sum())
            if n_m < settings.min_jets_per_point:
                continue
            eff = n_m / n_all
            if eff < settings.min_match_efficiency:
                continue
            if np.quantile(sample.j_pt[reco[bm]], 0.02) < settings.threshold_margin * reco_pt_min:
                continue
            resp = pt_l1[reco[bm]] / t_pt[bm]
            w = w_all[bm]
            m = median_with_error(resp, w)
            if m["n_eff"] < 10 or m["median"] <= 0:
                continue
            points.append({
                "truth_pt": float(np.average(t_pt[bm], weights=w)),
                "pt": float(np.average(pt_l1[reco[bm]], weights=w)),
                "response": m["median"], "response_error": m["error"],
                "correction": 1.0 / m["median"],
                "error": max(m["error"] / m["median"] ** 2, 1e-4),
                "n": n_m, "n_eff": m["n_eff"], "efficiency": eff,
            })
        n_jets = int(sum(q["n"] for q in points))
        if len(points) < 4 or n_jets < settings.min_jets_per_eta_bin:
            raise DeriveError(
                f"L2Relative: {n_jets} matched jets in {len(points)} usable truth-pT bins at "
                f"{lo:g} <= |eta| < {hi:g}; need {settings.min_jets_per_eta_bin} jets in 4 or "
                "more bins (more events, or a lower --pthat-min / a --pthat-bias sample)")
        x = np.array([q["pt"] for q in points])
        y = np.array([q["correction"] for q in points])
        e = np.array([q["error"] for q in points])
        params, chi2 = _fit_standard(x, y, e)
        params = _float32(params)
        chi2 = float(np.sum(((l2_correction(params, x) - y) / e) ** 2))
        n_par = 6 if x.size >= 7 else 3
        fits.append(L2Fit((lo, hi), params, _float32((x.min(), x.max())), chi2,
                          int(x.size - n_par), n_jets, points))
    return fits


def cliffs(fit: L2Fit, pt_min: float = 8.0, step: float = 1.0, limit: float = 0.05
           ) -> list[float]:
    """Raw pT values (GeV, >= ``pt_min``) where the clamped correction changes by more than
    ``limit`` (relative) over ``step`` GeV: none for a usable correction."""
    pts = np.arange(pt_min, max(fit.pt_range[1] * 1.5, pt_min + 10), 0.25)
    lo, hi = fit.pt_range
    c0 = l2_correction(fit.params, np.clip(pts, lo, hi))
    c1 = l2_correction(fit.params, np.clip(pts + step, lo, hi))
    return [float(p) for p in pts[np.abs(c1 / c0 - 1) > limit]]


# -- writing -------------------------------------------------------------------------------------
def _mirrored(edges: Sequence[float]) -> list[tuple[float, float, int]]:
    """Signed eta bins ``(lo, hi, |eta| bin index)`` from ``|eta|`` edges: the outermost
    reach +-5.191."""
    pos = list(edges)
    pos[-1] = CMS_ETA_EDGE
    n = len(pos) - 1
    neg = [(-pos[i + 1], -pos[i], i) for i in reversed(range(n))]
    return neg + [(pos[i], pos[i + 1], i) for i in range(n)]


def _fmt(x: float) -> str:
    return repr(float(x))


def l1_text(fits: Sequence[L1Fit], settings: DeriveSettings) -> str:
    """The L1FastJet level as a CMS text file."""
    lines = [f"{{1 JetEta 3 {' '.join(L1_VARIABLES)} {L1_FORMULA} Correction L1FastJet}}"]
    for lo, hi, i in _mirrored(settings.l1_eta_edges):
        p = fits[i].params
        clamps = [0.0, 200.0, 1.0, 14000.0, 0.0, 10.0]
        vals = [lo, hi, len(clamps) + len(p), *clamps, *p]
        lines.append(" ".join(_fmt(v) for v in vals))
    return "\n".join(lines) + "\n"


def l2_text(fits: Sequence[L2Fit], settings: DeriveSettings) -> str:
    """The L2Relative level as a CMS text file (pT clamped to each bin's fitted range)."""
    lines = [f"{{1 JetEta 1 JetPt {L2_FORMULA} Correction L2Relative}}"]
    for lo, hi, i in _mirrored(settings.l2_eta_edges):
        f = fits[i]
        vals = [lo, hi, 2 + len(f.params), *f.pt_range, *f.params]
        lines.append(" ".join(_fmt(v) for v in vals))
    return "\n".join(lines) + "\n"


@dataclass
class Derivation:
    """A finished derivation: the fits, what it was derived from, and where it was written."""

    settings: DeriveSettings
    l1: list[L1Fit]
    l2: list[L2Fit]
    inputs: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """What the corrections were derived with (JSON-ready)."""
        return {"format": RECORD_FORMAT, "settings": asdict(self.settings),
                **self.inputs}

    def to_json(self) -> dict[str, Any]:
        return {**self.metadata(),
                "l1": [asdict(f) for f in self.l1], "l2": [asdict(f) for f in self.l2],
                "files": self.files}


def apply_l1(fits: Sequence[L1Fit], settings: DeriveSettings, pt: np.ndarray, eta: np.ndarray,
             area: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """L1-corrected pT [GeV] with the fitted parameters (the text file's formula and clamps)."""
    out = np.array(pt, dtype=np.float64)
    aeta = np.abs(eta)
    edges = list(settings.l1_eta_edges)
    edges[-1] = CMS_ETA_EDGE
    for i, f in enumerate(fits):
        sel = (aeta >= edges[i]) & (aeta < edges[i + 1])
        r = np.clip(rho[sel], 0.0, 200.0)
        p = np.clip(pt[sel], 1.0, 14000.0)
        a = np.clip(area[sel], 0.0, 10.0)
        out[sel] = pt[sel] * np.maximum(0.0001, 1 - a / p * l1_offset(f.params, r, p))
    return out


def derive(sample: JetSample, settings: DeriveSettings | None = None) -> Derivation:
    """Fit L1FastJet on the paired events, then L2Relative on every event after L1."""
    settings = settings or DeriveSettings()
    pairs = l1_pairs(sample, settings)
    l1 = fit_l1(pairs, settings)
    pt_l1 = apply_l1(l1, settings, sample.j_pt, sample.j_eta, sample.j_area,
                     sample.rho[sample.j_ev])
    l2 = fit_l2(pt_l1, sample, settings)
    inputs = {
        "R": sample.radius,
        "noise_mode": sample.noise_mode,
        "jets": f"{sample.jets} (stage {JET_COLLECTIONS[sample.jets][0]})",
        "truth": ("genjets (hard scatter)" if sample.reference == "genjets" else
                  f"{sample.reference} (offline, corrected)"),
        "rho": sample.run_config.get(RHO_COLLECTIONS[sample.jets]),
        "rho_collection": RHO_COLLECTIONS[sample.jets],
        "topocluster": sample.run_config.get("topocluster"),
        "run_facts": sample.run_config.get("facts"),
        "pileups": sample.pileups(),
        "events": {f"{p:g}": int((sample.pileup == p).sum()) for p in sample.pileups()},
        "files": sample.files,
        "generation": sample.generation,
        "estimator": ("generator-weighted" if settings.weighted else "unweighted")
                     + " median of pT_L1 / pT_truth per truth-pT bin",
    }
    return Derivation(settings, l1, l2, inputs)


def write_corrections(result: Derivation, out_dir: str | Path) -> dict[str, Path]:
    """Write the CMS text files, the correctionlib JSON and the derivation record into
    ``out_dir``; each read back by hltemu's reader before it is kept.  Returns name -> path."""
    from hltemu.jec.cms_text import parse_jec_text
    from hltemu.jec.correctionlib_json import write_correctionlib
    from hltemu.outputs import atomic_output

    s = result.settings
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {"L1FastJet": l1_text(result.l1, s), "L2Relative": l2_text(result.l2, s)}
    paths: dict[str, Path] = {}
    levels = []
    for level, text in texts.items():
        path = out / f"{s.era}_{level}_{s.algo}.txt"
        levels.append(parse_jec_text(text, source=str(path)))  # our own writer, checked
        with atomic_output(path, f"{level} text file") as tmp:
            tmp.path.write_text(text)
        paths[level] = path
    json_path = out / f"{s.era}.json"
    with atomic_output(json_path, "correctionlib file") as tmp:
        write_correctionlib(tmp.path, levels, compound=f"{s.era}_{s.algo}",
                            description=json.dumps(result.metadata(), sort_keys=True))
    paths["correctionlib"] = json_path
    rec = out / f"{s.era}_derivation.json"
    result.files = {k: str(v) for k, v in paths.items()} | {"derivation": str(rec)}
    with atomic_output(rec, "derivation record") as tmp:
        tmp.path.write_text(json.dumps(result.to_json(), indent=1, sort_keys=True) + "\n")
    paths["derivation"] = rec
    return paths
