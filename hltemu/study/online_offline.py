"""Online (HLT) jets against offline jets: matching, response, path bits and trigger turn-ons,
on CMS NanoAOD or on hltemu's own outputs.  No plotting
(:mod:`hltemu.study.online_offline_plots`), no printing (:mod:`hltemu.study.command`).

Input
-----
:func:`read_inputs` tells the two kinds apart (:func:`input_kind`: an ``hltemu_metadata`` object
or hltemu's ``corrected_jets`` branches mark an hltemu output) and reads them into one
:class:`StudySample`.  hltemu outputs (``hltemu run`` with the offline chain) are read by
:mod:`hltemu.study.emulator_input`: HLT calorimeter jets at each JEC level against the offline
``pfjets``, path cuts from the run's menu.  The rest of this section is about NanoAOD.

CMS NanoAOD files (one ``Events`` tree), read with uproot, by content rather than by one
version's names:

* offline jets: ``Jet_pt``, ``Jet_eta``, ``Jet_phi`` (GeV, rad) and, where present,
  ``Jet_rawFactor`` (raw pT = pT (1 - rawFactor)) and ``Jet_area``.  The offline algorithm is
  told from the file's generation: NanoAOD v12 and later (Run 3; rho in the ``Rho`` table,
  ``Rho_fixedGridRhoFastjetAll``) store AK4 PUPPI jets as ``Jet``, earlier versions
  (``fixedGridRhoFastjetAll``) AK4 PF CHS jets;
* HLT objects: ``TrigObj_id``, ``TrigObj_pt``, ``TrigObj_eta``, ``TrigObj_phi`` and
  ``TrigObj_filterBits``; jets are ``TrigObj_id == 1``.  The jagged branches are read whatever
  counts them (``nTrigObj``, or v15's per-column ``nTrigObj_pt``, ...);
* path decisions: every ``HLT_PFJet<N>`` bit (N in GeV) the file has.

The jet trigger objects are three kinds of object, not one: L1 jets (from L1 seed filters,
pT in steps of 0.5 GeV), HLT calo jets and HLT PF jets, each stored as its own entry when it
passed one of the filters NanoAOD keeps (so a jet is often there two or three times).
:func:`classify_hlt_jets` tells them apart by their filter bits (Run-3 layout,
:data:`L1_JET_BITS`, :data:`CALO_JET_BITS`), checked against the content (L1 jets must be
0.5 GeV multiples); by default the study uses the PF jets (``hlt_jets="pf"``), whose pT the
``HLT_PFJet<N>`` paths cut on; ``"all"`` takes every ``id == 1`` entry.  HLT objects are
stored only when they passed a stored filter: the lowest stored pT (the *storage threshold*,
about 25 GeV) is measured from the file, and response bins starting below twice it are flagged.

What is computed (:func:`run_study`)
------------------------------------
* one-to-one Delta R matching of offline and HLT jets, closest pairs first
  (:func:`hltemu.jetmatch.match_jets`);
* the response HLT pT / offline pT per HLT level (NanoAOD: one, ``"as stored"``; hltemu:
  ``raw``, each intermediate JEC level, ``full`` and, where the files have them,
  ``regressed``), offline |eta| and pT bin: entries, median
  with error, mean, Gaussian core (:func:`hltemu.study.fits.gaussian_core_fit`), matching
  efficiency (the fraction of offline jets with an HLT partner);
* per single-jet path (``HLT_PFJet<N>``; hltemu: the menu's ``single_jet`` paths, from the
  ``trigger_pre`` bits): agreement of the bit with "an HLT jet passing the path's cut"
  (:class:`PathCut`; 2x2 table);
* per such path above the reference path's threshold, turn-ons with erf fits
  (:func:`hltemu.study.fits.fit_turn_on`): the reference method against the leading offline
  jet's pT, and object-level tag and probe against the probe jet's pT;
* hltemu only: the turn-on width of a single-jet selection on corrected HLT jets against the
  same selection on every other HLT jet flavour (raw, each intermediate JEC level, and the
  ``regressed`` jets of stage ``jet_regression`` where the files have them) at the threshold
  that gives the same offline p50, and at the one that gives the same (generator-weighted)
  accept rate (:mod:`hltemu.study.threshold_width`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from hltemu.batch import counts_to_offsets
from hltemu.jetmatch import delta_phi, match_jets, median_with_error
from hltemu.study.fits import clopper_pearson, fit_turn_on, gaussian_core_fit

#: ``TrigObj_id`` of jets.
JET_ID = 1

#: TrigObj_filterBits of jet objects set only by L1 seed filters (Run-3 NanoAOD, v12-v15,
#: PhysicsTools/NanoAOD triggerObjects_cff.py): 7 = hltL1sTripleJet...VBFIorHTTIorDoubleJetC
#: IorSingleJet, 10 = hltL1sQuadJetC60IorHTT380IorHTT280QuadJetIorHTT300QuadJet (or the
#: C50to60 variant).  An object with bits among these only is an L1 jet.
L1_JET_BITS: tuple[int, ...] = (7, 10)

#: TrigObj_filterBits of jet objects set only by HLT calo-jet filters (the same layout):
#: 5 = hltQuadCentralJet30, 11 = hltBTagCaloDeepCSVp17Double.  An object with bits among these
#: only is an HLT calo jet; every other jet object is an HLT PF jet.
CALO_JET_BITS: tuple[int, ...] = (5, 11)

#: Kinds of jet trigger object (:func:`classify_hlt_jets`), by code.
HLT_KINDS: tuple[str, ...] = ("l1", "calo", "pf")

#: The rho branch by NanoAOD generation: the first found tells the offline algorithm.
RHO_BRANCHES: dict[str, str] = {
    "Rho_fixedGridRhoFastjetAll": "AK4 PUPPI (NanoAOD v12+ Jet, Run 3)",
    "fixedGridRhoFastjetAll": "AK4 PF CHS (NanoAOD up to v11 Jet, Run 2)",
}

#: Single-jet path bits: HLT_PFJet<threshold in GeV>, nothing after.
PATH_PATTERN = re.compile(r"^HLT_PFJet(\d+)$")

#: Branch-name prefixes that mark a file as an hltemu run output (beside its metadata): the
#: ``corrected_jets`` collection of stage ``jec``.
_HLTEMU_MARKERS = ("corrected_jets", "ncorrected_jets")

#: The reference path of the turn-ons by input kind (:func:`input_kind`), when
#: ``StudySettings.reference`` does not name one.
DEFAULT_REFERENCE: dict[str, str] = {"nanoaod": "HLT_PFJet40", "hltemu": "HLT_CaloJet40"}

#: The HLT level of NanoAOD input: the trigger objects' pT as stored.
AS_STORED = "as stored"


class StudyError(ValueError):
    """An input the study cannot use, or settings it cannot apply; the message is one line
    naming the file or setting, what is wrong and what was expected."""


@dataclass(frozen=True)
class StudySettings:
    """What the study computes; pT in GeV, Delta R and eta dimensionless, Delta phi in rad."""

    max_dr: float = 0.2
    eta_edges: tuple[float, ...] = (0.0, 1.3, 2.5, 3.0, 5.0)
    pt_edges: tuple[float, ...] = (50.0, 70.0, 100.0, 150.0, 250.0, 500.0, 1000.0)
    hlt_jets: str = "pf"
    offline_pt: str = "corrected"
    reference: str | None = None  # None: DEFAULT_REFERENCE of the input kind
    turn_on_eta: float = 2.5
    tag_eta: float = 1.3
    min_dphi: float = 2.7
    third_jet_fraction: float = 0.2
    min_rising: int = 20
    core_window: float = 1.5
    min_core: int = 20
    #: hltemu input: the corrections of the offline pfjets (None: DEFAULT_OFFLINE_JEC of
    #: :mod:`hltemu.study.emulator_input`; empty: raw pfjets)
    offline_jec: tuple[str, ...] | None = None
    #: hltemu input: the single-jet path whose cut the threshold-width comparison emulates
    width_path: str = "HLT_CaloJet80"
    #: ... the offline jets' |eta| acceptance there (None: the path's own eta cut, so that
    #: online and offline jets cover the same region)
    width_eta: float | None = None
    #: ... the raw threshold's step (GeV) and how close its p50 must come to the corrected one's
    threshold_step: float = 0.25
    p50_tolerance: float = 1.0
    #: ... resamples of the events for the error of the width difference (0: none)
    bootstrap: int = 0
    #: ... the offline pT (GeV) where each selection's fitted efficiency is reported (None:
    #: the path's threshold + threshold_width.EFFICIENCY_OFFSET, 90 GeV for HLT_CaloJet80)
    efficiency_at: float | None = None

    def __post_init__(self) -> None:
        for name in ("eta_edges", "pt_edges"):
            edges = getattr(self, name)
            if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
                raise StudyError(f"{name} {list(edges)}: give at least two increasing edges")
            if edges[0] < 0:
                raise StudyError(f"{name} {list(edges)}: edges must not be negative")
        if self.hlt_jets not in ("pf", "all"):
            raise StudyError(f"hlt_jets {self.hlt_jets!r}: choose 'pf' or 'all'")
        if self.offline_pt not in ("corrected", "raw"):
            raise StudyError(f"offline_pt {self.offline_pt!r}: choose 'corrected' or 'raw'")
        if not self.max_dr > 0:
            raise StudyError(f"max_dr {self.max_dr}: must be positive")
        if not (self.threshold_step > 0 and self.p50_tolerance > 0):
            raise StudyError(f"threshold_step {self.threshold_step}, p50_tolerance "
                             f"{self.p50_tolerance}: must be positive")
        if self.bootstrap < 0:
            raise StudyError(f"bootstrap {self.bootstrap}: must not be negative")
        if self.efficiency_at is not None and not self.efficiency_at > 0:
            raise StudyError(f"efficiency_at {self.efficiency_at}: give a positive offline pT "
                             "(GeV)")


class PathCut(NamedTuple):
    """What "an HLT jet passing a single-jet path" means: pT above ``pt_min`` (GeV) and |eta|
    within ``eta_max``; ``inclusive``: pT >= pt_min and |eta| <= eta_max (hltemu's stage
    ``trigger``), else pT > pt_min (NanoAOD's ``HLT_PFJet<N>`` against HLT objects);
    ``level``: the HLT jet level the path cuts on when not the study's HLT jets (hltemu: a
    path with ``jets = "regressed_jets"`` cuts on level ``regressed``)."""

    pt_min: float
    eta_max: float = math.inf
    inclusive: bool = False
    level: str | None = None

    def passes(self, pt: np.ndarray, eta: np.ndarray) -> np.ndarray:
        if self.inclusive:
            return (pt >= self.pt_min) & (np.abs(eta) <= self.eta_max)
        return (pt > self.pt_min) & (np.abs(eta) < self.eta_max)


@dataclass
class Jets:
    """One jet collection of many events as flat columns plus CSR ``offsets``."""

    offsets: np.ndarray
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_events(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def event(self) -> np.ndarray:
        """The event row of every jet."""
        return np.repeat(np.arange(self.n_events), np.diff(self.offsets))

    def select(self, mask: np.ndarray) -> Jets:
        """The jets where ``mask`` is true (offsets recomputed)."""
        counts = np.bincount(self.event[mask], minlength=self.n_events)
        return Jets(counts_to_offsets(counts), self.pt[mask], self.eta[mask], self.phi[mask],
                    {k: v[mask] for k, v in self.extra.items()})


@dataclass
class StudySample:
    """The jets and path bits of the input files (:func:`read_inputs`).

    ``hlt``: NanoAOD's jet trigger objects (every kind, told apart by ``extra["kind"]``), or
    hltemu's HLT jets at the full JEC level; ``levels``: hltemu's HLT jets per JEC level
    (empty for NanoAOD); ``cuts``: each path's :class:`PathCut` (empty: from the path's name,
    :func:`path_threshold`); ``info``: what the summary reports about an hltemu input (its
    JEC, the offline corrections, the generation, how the weights were normalised);
    ``weight``: hltemu's per-event generator weights normalised per file (``None``: events
    count equally), used for accept rates only."""

    files: list[dict[str, Any]]
    offline: Jets
    hlt: Jets
    paths: dict[str, np.ndarray]
    rho: np.ndarray | None
    rho_branch: str | None
    offline_algorithm: str
    notes: list[str] = field(default_factory=list)
    kind: str = "nanoaod"
    levels: dict[str, Jets] = field(default_factory=dict)
    cuts: dict[str, PathCut] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    weight: np.ndarray | None = None

    @property
    def n_events(self) -> int:
        return self.offline.n_events


# -- reading -----------------------------------------------------------------------------------
def input_kind(path: str) -> str:
    """``"hltemu"`` for a file hltemu wrote (its ``hltemu_metadata`` object, or the branches
    of hltemu's ``corrected_jets``), else ``"nanoaod"``."""
    from hltemu.io import METADATA_KEY, TREE_NAME
    from hltemu.io.layout import open_root

    with open_root(path) as f:
        keys = set(f.keys(cycle=False))
        if METADATA_KEY in keys:
            return "hltemu"
        if TREE_NAME in keys and hasattr(f[TREE_NAME], "keys") and any(
                n.startswith(_HLTEMU_MARKERS) for n in f[TREE_NAME].keys()):
            return "hltemu"
    return "nanoaod"


def read_inputs(paths: Sequence[str], settings: StudySettings | None = None,
                progress: Callable[[int], None] | None = None) -> StudySample:
    """Read ``paths``, all NanoAOD (:func:`read_nanoaod`) or all hltemu outputs
    (:func:`hltemu.study.emulator_input.read_emulator`), by :func:`input_kind`."""
    settings = settings or StudySettings()
    if not paths:
        raise StudyError("no input files")
    kinds = {str(p): input_kind(str(p)) for p in paths}
    if len(set(kinds.values())) > 1:
        emu = [p for p, k in kinds.items() if k == "hltemu"]
        nano = [p for p, k in kinds.items() if k == "nanoaod"]
        raise StudyError(f"{emu[0]} is an hltemu output but {nano[0]} is not: study hltemu "
                         "outputs and CMS NanoAOD apart")
    if next(iter(kinds.values())) == "hltemu":
        from hltemu.study.emulator_input import read_emulator

        return read_emulator([str(p) for p in paths], settings, progress)
    if settings.offline_jec is not None:
        raise StudyError("offline_jec (--offline-jec) corrects hltemu's pfjets; NanoAOD's "
                         "Jet_pt is corrected already (--offline-pt raw undoes it)")
    return read_nanoaod(paths, settings, progress)


def _hltemu_error(path: str, why: str) -> StudyError:
    return StudyError(
        f"{path} is an hltemu file ({why}): read_nanoaod reads CMS NanoAOD only; read hltemu "
        "outputs (with the offline 'pfjets') with read_inputs")


def _flat(array: Any) -> tuple[np.ndarray, np.ndarray]:
    """A jagged awkward array as (counts, flat NumPy values)."""
    import awkward as ak

    return (np.asarray(ak.num(array, axis=1), dtype=np.int64),
            np.asarray(ak.to_numpy(ak.flatten(array, axis=1))))


def _read_file(path: str, need_bits: bool, need_raw: bool) -> dict[str, Any]:
    from hltemu.io import METADATA_KEY, TREE_NAME
    from hltemu.io.layout import open_root

    with open_root(path) as f:
        keys = set(f.keys(cycle=False))
        if METADATA_KEY in keys:
            raise _hltemu_error(path, f"it has the {METADATA_KEY!r} object")
        if TREE_NAME not in keys:
            raise StudyError(f"{path} has no {TREE_NAME!r} tree: not NanoAOD "
                             f"(objects: {', '.join(sorted(keys)) or 'none'})")
        tree = f[TREE_NAME]
        names = set(tree.keys())
        marker = next((n for n in sorted(names) if n.startswith(_HLTEMU_MARKERS)), None)
        if marker is not None:
            raise _hltemu_error(path, f"it has the branch {marker!r}")
        trig = ["TrigObj_id", "TrigObj_pt", "TrigObj_eta", "TrigObj_phi"]
        if need_bits:
            trig.append("TrigObj_filterBits")
        if not any(n.startswith("TrigObj_") for n in names):
            raise StudyError(f"{path} has no HLT objects: no TrigObj_* branches (NanoAOD "
                             "without the trigger-object table); the study needs "
                             f"{', '.join(trig)}")
        jets = ["Jet_pt", "Jet_eta", "Jet_phi"]
        if need_raw:
            jets.append("Jet_rawFactor")
        missing = [b for b in trig + jets if b not in names]
        if missing:
            hint = (" (or use --hlt-jets all, which needs no filter bits)"
                    if missing == ["TrigObj_filterBits"] else "")
            raise StudyError(f"{path} lacks the branch(es) {', '.join(missing)}{hint}")
        optional = [b for b in ("Jet_rawFactor", "Jet_area", "TrigObj_l1pt")
                    if b in names and b not in jets]
        rho_branch = next((b for b in RHO_BRANCHES if b in names), None)
        paths = sorted((n for n in names if PATH_PATTERN.match(n)),
                       key=lambda n: int(PATH_PATTERN.match(n).group(1)))
        wanted = trig + jets + optional + paths + ([rho_branch] if rho_branch else [])
        try:
            arrays = tree.arrays(wanted, library="ak")
        except Exception as exc:  # uproot's errors name no file
            raise StudyError(f"{path}: cannot read the branches {', '.join(wanted)}: "
                             f"{exc}") from None
    out: dict[str, Any] = {"path": path, "events": len(arrays), "rho_branch": rho_branch,
                           "paths": {p: np.asarray(arrays[p], dtype=bool) for p in paths},
                           "rho": (np.asarray(arrays[rho_branch], dtype=np.float64)
                                   if rho_branch else None)}
    for coll, branches in (("TrigObj", trig + [b for b in optional if b.startswith("TrigObj")]),
                           ("Jet", jets + [b for b in optional if b.startswith("Jet")])):
        counts = None
        for b in branches:
            c, values = _flat(arrays[b])
            if counts is None:
                counts = c
            elif not np.array_equal(c, counts):
                raise StudyError(f"{path}: branch {b!r} has other per-event counts than "
                                 f"{branches[0]!r} (a broken {coll} collection)")
            out[b] = values
        out[f"n{coll}"] = counts
    return out


def classify_hlt_jets(filter_bits: np.ndarray) -> np.ndarray:
    """The kind of each jet trigger object from its filter bits: 0 = L1 jet (bits among
    :data:`L1_JET_BITS` only), 1 = HLT calo jet (among :data:`CALO_JET_BITS` only), 2 = HLT PF
    jet (any other bit, or none); codes index :data:`HLT_KINDS`."""
    bits = np.asarray(filter_bits).astype(np.uint64)
    l1 = np.uint64(sum(1 << b for b in L1_JET_BITS))
    calo = np.uint64(sum(1 << b for b in CALO_JET_BITS))
    kind = np.full(bits.shape, 2, dtype=np.int8)
    kind[(bits != 0) & ((bits & ~calo) == 0)] = 1
    kind[(bits != 0) & ((bits & ~l1) == 0)] = 0
    return kind


def _on_half_gev(pt: np.ndarray) -> np.ndarray:
    """Whether each pT (GeV) is a multiple of 0.5 GeV, as L1 jet pT are."""
    return np.asarray(pt, dtype=np.float64) * 2 == np.round(np.asarray(pt, dtype=np.float64) * 2)


def check_classification(kind: np.ndarray, pt: np.ndarray, l1pt: np.ndarray | None,
                         where: str) -> None:
    """Check :func:`classify_hlt_jets` against the content: at least 90 % of the L1 jets have
    pT on a 0.5 GeV step, and under 10 % of the PF jets look like L1 jets (a 0.5 GeV step and
    pT equal to the L1 pT matched to them, where ``TrigObj_l1pt`` exists).  Raise
    :class:`StudyError` otherwise: the file's filter bits follow another layout."""
    l1 = kind == 0
    if l1.any() and _on_half_gev(pt[l1]).mean() < 0.9:
        raise StudyError(
            f"{where}: {100 * (1 - _on_half_gev(pt[l1]).mean()):.0f}% of the jet trigger "
            f"objects with only L1 filter bits {list(L1_JET_BITS)} have a pT off the 0.5 GeV "
            "steps of L1 jets: the filter bits do not follow the Run-3 NanoAOD layout the "
            "study knows; use --hlt-jets all")
    pf = kind == 2
    if l1pt is not None and pf.any():
        looks_l1 = _on_half_gev(pt[pf]) & (pt[pf] == l1pt[pf])
        if looks_l1.mean() >= 0.1:
            raise StudyError(
                f"{where}: {100 * looks_l1.mean():.0f}% of the jet trigger objects taken as HLT "
                "PF jets look like L1 jets (pT on 0.5 GeV steps, equal to their L1 pT): the "
                "filter bits do not follow the Run-3 NanoAOD layout the study knows; use "
                "--hlt-jets all")


def read_nanoaod(paths: Sequence[str], settings: StudySettings | None = None,
                 progress: Callable[[int], None] | None = None) -> StudySample:
    """Read the jets, jet trigger objects, ``HLT_PFJet<N>`` bits and rho of NanoAOD ``paths``.

    HLT jets are the ``TrigObj_id == 1`` objects of the kind ``settings.hlt_jets`` asks for
    (:func:`classify_hlt_jets`, checked by :func:`check_classification`); offline pT is the
    stored (JEC-corrected) ``Jet_pt`` or, with ``offline_pt="raw"``, ``Jet_pt * (1 -
    Jet_rawFactor)``.  Paths missing from some files are dropped with a note.  ``progress`` is
    called with 1 after each file.  Raises :class:`StudyError` (a file with no ``TrigObj``,
    an hltemu output, missing branches) or :class:`hltemu.io.InputError` (not a ROOT file).
    """
    settings = settings or StudySettings()
    if not paths:
        raise StudyError("no input files")
    parts = []
    for p in paths:
        parts.append(_read_file(str(p), need_bits=settings.hlt_jets == "pf",
                                need_raw=settings.offline_pt == "raw"))
        if progress is not None:
            progress(1)
    notes: list[str] = []
    algos = {RHO_BRANCHES.get(q["rho_branch"] or "", "") for q in parts}
    if len(algos) > 1:
        raise StudyError("the files are of different NanoAOD generations (rho branches "
                         f"{sorted({str(q['rho_branch']) for q in parts})}): their Jet "
                         "collections are different offline algorithms; study them apart")
    algo = algos.pop() or "AK4 (NanoAOD Jet; no rho branch to tell the generation)"
    common = set(parts[0]["paths"])
    for q in parts[1:]:
        common &= set(q["paths"])
    dropped = sorted(set().union(*(q["paths"] for q in parts)) - common)
    if dropped:
        notes.append(f"paths not in every file, left out: {', '.join(dropped)}")
    path_names = sorted(common, key=lambda n: int(PATH_PATTERN.match(n).group(1)))

    def cat(key: str) -> np.ndarray:
        return np.concatenate([q[key] for q in parts])

    ids = cat("TrigObj_id")
    hlt_counts = np.concatenate([q["nTrigObj"] for q in parts])
    hlt_all = Jets(counts_to_offsets(hlt_counts), cat("TrigObj_pt").astype(np.float64),
                   cat("TrigObj_eta").astype(np.float64), cat("TrigObj_phi").astype(np.float64))
    has_l1pt = all("TrigObj_l1pt" in q for q in parts)
    if has_l1pt:
        hlt_all.extra["l1pt"] = cat("TrigObj_l1pt").astype(np.float64)
    if settings.hlt_jets == "pf":
        hlt_all.extra["kind"] = np.where(ids == JET_ID, classify_hlt_jets(
            cat("TrigObj_filterBits")), -1).astype(np.int8)
    jets = hlt_all.select(ids == JET_ID)
    if settings.hlt_jets == "pf":
        where = paths[0] if len(paths) == 1 else f"{len(paths)} files"
        check_classification(jets.extra["kind"], jets.pt, jets.extra.get("l1pt"), where)
    else:
        jets.extra["kind"] = np.full(jets.pt.size, -1, dtype=np.int8)
    off_counts = np.concatenate([q["nJet"] for q in parts])
    pt = cat("Jet_pt").astype(np.float64)
    extra: dict[str, np.ndarray] = {"corrected_pt": pt}
    if all("Jet_rawFactor" in q for q in parts):
        extra["raw_factor"] = cat("Jet_rawFactor").astype(np.float64)
    if all("Jet_area" in q for q in parts):
        extra["area"] = cat("Jet_area").astype(np.float64)
    if settings.offline_pt == "raw":
        pt = pt * (1.0 - extra["raw_factor"])
    offline = Jets(counts_to_offsets(off_counts), pt, cat("Jet_eta").astype(np.float64),
                   cat("Jet_phi").astype(np.float64), extra)
    rho = cat("rho") if all(q["rho"] is not None for q in parts) else None
    return StudySample(
        files=[{"path": q["path"], "events": q["events"]} for q in parts], offline=offline,
        hlt=jets, paths={p: _cat_paths(parts, p) for p in path_names}, rho=rho,
        rho_branch=parts[0]["rho_branch"], offline_algorithm=algo, notes=notes)


def _cat_paths(parts: list[dict[str, Any]], name: str) -> np.ndarray:
    """The bit ``name`` of every event of the files read (:func:`_read_file` results)."""
    return np.concatenate([q["paths"][name] for q in parts]).astype(bool)


def hlt_selection(sample: StudySample, which: str) -> Jets:
    """The HLT jets of ``which`` kind: ``"pf"`` (HLT PF jets) or ``"all"`` (every jet trigger
    object); on hltemu input its HLT jets whatever ``which`` says."""
    if which == "all" or sample.kind == "hltemu":
        return sample.hlt
    kind = sample.hlt.extra["kind"]
    if kind.size and np.all(kind < 0):
        raise StudyError(f"the HLT jets were read without their kinds: read with "
                         f"hlt_jets={which!r} to select {which!r} jets")
    return sample.hlt.select(kind == HLT_KINDS.index(which))


def path_threshold(name: str) -> int:
    """The pT threshold (GeV) of ``HLT_PFJet<N>``."""
    m = PATH_PATTERN.match(name)
    if m is None:
        raise StudyError(f"{name!r} is not a single-jet path HLT_PFJet<N>")
    return int(m.group(1))


def path_cut(sample: StudySample, name: str) -> PathCut:
    """The cut of path ``name``: the sample's (hltemu: from the menu), else from the name."""
    return sample.cuts[name] if name in sample.cuts else PathCut(path_threshold(name))


def cut_jets(cut: PathCut, hlt: Jets, levels: dict[str, Jets] | None = None) -> Jets | None:
    """The HLT jets ``cut`` applies to: ``hlt``, or its ``level`` among ``levels`` (the same
    rows as ``hlt``, other pT); None when that level is not there."""
    if cut.level is None:
        return hlt
    return (levels or {}).get(cut.level)


# -- matching and response ---------------------------------------------------------------------
def match(offline: Jets, hlt: Jets, max_dr: float) -> np.ndarray:
    """For every offline jet, the index of its HLT partner (one to one, Delta R < ``max_dr``,
    closest pairs first), or -1."""
    io, ih = match_jets(offline.event, offline.eta, offline.phi, hlt.event, hlt.eta, hlt.phi,
                        max_dr, n_events=offline.n_events)
    partner = np.full(offline.pt.size, -1, dtype=np.int64)
    partner[io] = ih
    return partner


#: Response histogram of every bin (for the figures): 0 to 2 in steps of 0.05.
RESPONSE_EDGES = np.linspace(0.0, 2.0, 41)


def response_bins(offline: Jets, hlt: Jets, partner: np.ndarray, settings: StudySettings,
                  storage_threshold: float) -> list[dict[str, Any]]:
    """Response HLT pT / offline pT per offline |eta| and pT bin.

    Per bin: ``n`` (matched jets), ``median`` with ``median_error``
    (:func:`hltemu.jetmatch.median_with_error`), ``mean``, the Gaussian core (``core_mean``,
    ``core_mean_error``, ``sigma``, ``sigma_error``, ``core_status``, ``n_core``:
    :func:`hltemu.study.fits.gaussian_core_fit`; "too few events" with fewer than
    ``settings.min_core`` jets in its window), ``match_efficiency`` (matched / all offline
    jets of the bin, with a Clopper-Pearson 68 % interval), ``flagged`` (``pt_min`` below twice
    the HLT jets' ``storage_threshold``: the HLT side is cut there) and ``hist`` (counts in
    :data:`RESPONSE_EDGES`)."""
    aeta = np.abs(offline.eta)
    matched = partner >= 0
    response = np.full(offline.pt.size, np.nan)
    response[matched] = hlt.pt[partner[matched]] / offline.pt[matched]
    rows = []
    for e0, e1 in zip(settings.eta_edges, settings.eta_edges[1:], strict=False):
        for p0, p1 in zip(settings.pt_edges, settings.pt_edges[1:], strict=False):
            in_bin = (aeta >= e0) & (aeta < e1) & (offline.pt >= p0) & (offline.pt < p1)
            n_off = int(in_bin.sum())
            r = response[in_bin & matched]
            row: dict[str, Any] = {
                "eta_min": e0, "eta_max": e1, "pt_min": p0, "pt_max": p1, "n": int(r.size),
                "n_offline": n_off, "median": None, "median_error": None, "mean": None,
                "core_mean": None, "core_mean_error": None, "sigma": None, "sigma_error": None,
                "core_status": "no events", "match_efficiency": None,
                "match_efficiency_interval": None,
                "flagged": bool(p0 < 2.0 * storage_threshold),
                "hist": np.histogram(r, RESPONSE_EDGES)[0].tolist(),
            }
            if n_off:
                lo, hi = clopper_pearson(np.array([r.size]), np.array([n_off]))
                row["match_efficiency"] = r.size / n_off
                row["match_efficiency_interval"] = [float(lo[0]), float(hi[0])]
            if r.size:
                med = median_with_error(r, np.ones(r.size))
                core = gaussian_core_fit(r, window=settings.core_window,
                                         min_entries=settings.min_core)
                row.update(median=med["median"], median_error=med["error"],
                           mean=float(r.mean()), core_mean=core["mean"],
                           core_mean_error=core["mean_error"], sigma=core["sigma"],
                           sigma_error=core["sigma_error"], core_status=core["status"],
                           n_core=core["n_core"])
            rows.append(row)
    return rows


def pt_histogram(offline: Jets, hlt: Jets, partner: np.ndarray) -> dict[str, Any]:
    """Matched pairs in (offline pT, HLT pT), 40 log bins per axis from 20 to 2000 GeV."""
    edges = np.geomspace(20.0, 2000.0, 41)
    m = partner >= 0
    counts, _, _ = np.histogram2d(offline.pt[m], hlt.pt[partner[m]], bins=[edges, edges])
    return {"offline_pt_edges": edges.tolist(), "hlt_pt_edges": edges.tolist(),
            "counts": counts.astype(int).tolist(), "pairs": int(m.sum())}


# -- paths -------------------------------------------------------------------------------------
def leading_pt(jets: Jets, eta_max: float = math.inf) -> np.ndarray:
    """Per event, the highest pT (GeV) among the jets with |eta| <= ``eta_max``; 0 when there
    is none."""
    out = np.zeros(jets.n_events)
    sel = np.abs(jets.eta) <= eta_max
    np.maximum.at(out, jets.event[sel], jets.pt[sel])
    return out


def path_agreement(paths: dict[str, np.ndarray], hlt: Jets,
                   cuts: dict[str, PathCut] | None = None,
                   levels: dict[str, Jets] | None = None) -> dict[str, dict[str, Any]]:
    """Per single-jet path: events where the bit and "an HLT jet passing the path's cut"
    (``cuts``, else ``HLT_PFJet<N>``: pT > N; on the path's own HLT jet level,
    :func:`cut_jets`) agree or not: ``both``, ``bit_only``, ``object_only``, ``neither`` and
    the agreeing fraction (None, with a ``note``, when the path's level is not in the files)."""
    cuts = cuts or {}
    out = {}
    for name, bit in paths.items():
        cut = cuts[name] if name in cuts else PathCut(path_threshold(name))
        jets = cut_jets(cut, hlt, levels)
        level = {} if cut.level is None else {"level": cut.level}
        if jets is None:
            out[name] = {"threshold": cut.pt_min, **level, "events": int(bit.size),
                         "agreement": None,
                         "note": f"the path cuts on HLT jets {cut.level!r}, not in the files"}
            continue
        obj = np.bincount(jets.event[cut.passes(jets.pt, jets.eta)],
                          minlength=jets.n_events) > 0
        table = {"threshold": cut.pt_min, **level, **({"eta_max": cut.eta_max}
                                                      if math.isfinite(cut.eta_max) else {}),
                 "events": int(bit.size), "both": int(np.sum(bit & obj)),
                 "bit_only": int(np.sum(bit & ~obj)), "object_only": int(np.sum(~bit & obj)),
                 "neither": int(np.sum(~bit & ~obj))}
        table["agreement"] = ((table["both"] + table["neither"]) / bit.size if bit.size
                              else None)
        out[name] = table
    return out


# -- turn-ons ----------------------------------------------------------------------------------
def ranked(jets: Jets, mask: np.ndarray | None = None, depth: int = 3) -> np.ndarray:
    """``(n_events, depth)`` indices of the leading, second, ... jets by pT among ``mask``
    (all jets by default); -1 where an event has fewer."""
    mask = np.ones(jets.pt.size, dtype=bool) if mask is None else mask
    idx = np.nonzero(mask)[0]
    ev = jets.event[idx]
    order = idx[np.lexsort((-jets.pt[idx], ev))]
    ev_sorted = jets.event[order]
    first = np.searchsorted(ev_sorted, np.arange(jets.n_events), side="left")
    rank = np.arange(order.size) - first[ev_sorted]
    out = np.full((jets.n_events, depth), -1, dtype=np.int64)
    keep = rank < depth
    out[ev_sorted[keep], rank[keep]] = order[keep]
    return out


def turn_on_edges(threshold: float) -> np.ndarray:
    """Display bins (GeV) of a turn-on of a path at ``threshold``: 0 to 3 x threshold in steps
    of 5 GeV per 40 GeV of threshold."""
    step = 5.0 * math.ceil(threshold / 40.0)
    return np.arange(0.0, 3.0 * threshold + step, step)


def efficiency_points(x: np.ndarray, passed: np.ndarray, edges: np.ndarray
                      ) -> list[dict[str, Any]]:
    """Binned efficiency with Clopper-Pearson 68 % intervals (non-empty bins only)."""
    total = np.histogram(x, edges)[0]
    npass = np.histogram(x[passed], edges)[0]
    lo, hi = clopper_pearson(npass, total)
    return [{"pt_min": float(edges[i]), "pt_max": float(edges[i + 1]), "n": int(total[i]),
             "n_pass": int(npass[i]), "efficiency": float(npass[i] / total[i]),
             "low": float(lo[i]), "high": float(hi[i])}
            for i in range(total.size) if total[i]]


def reference_turn_on(sample: StudySample, path: str, reference: str, settings: StudySettings
                      ) -> dict[str, Any]:
    """Efficiency of ``path`` in events passing ``reference`` against the leading offline jet's
    pT (GeV) among jets with |eta| < ``settings.turn_on_eta``: eps = N(ref and path) / N(ref),
    fitted per event (:func:`hltemu.study.fits.fit_turn_on`)."""
    lead = ranked(sample.offline, np.abs(sample.offline.eta) < settings.turn_on_eta, 1)[:, 0]
    sel = sample.paths[reference] & (lead >= 0)
    x = sample.offline.pt[lead[sel]]
    passed = sample.paths[path][sel]
    fit = fit_turn_on(x, passed, min_rising=settings.min_rising)
    return {"method": "reference", "path": path, "reference": reference,
            "x": f"leading offline jet pT, |eta| < {settings.turn_on_eta:g}", **fit,
            "points": efficiency_points(x, passed, turn_on_edges(path_cut(sample, path).pt_min))}


def tag_and_probe(sample: StudySample, hlt: Jets, partner: np.ndarray, path: str,
                  settings: StudySettings) -> dict[str, Any]:
    """Object-level tag and probe for ``path`` against the probe's offline pT (GeV).

    Events passing ``path`` whose two leading offline jets both have |eta| <
    ``settings.turn_on_eta``, are back to back (|Delta phi| > ``settings.min_dphi``) and,
    where there is a third jet, have it below ``settings.third_jet_fraction`` times their mean
    pT.  Each of the two serves as tag in turn: a tag has |eta| < ``settings.tag_eta`` and an
    HLT partner (:func:`match`) above the path's threshold; the other jet is then a probe,
    passing when its own HLT partner is above the threshold (passes the path's cut,
    :func:`path_cut`, on the path's HLT jet level: :func:`cut_jets`, the same rows as
    ``hlt``, so ``partner`` holds for it)."""
    cut = path_cut(sample, path)
    hlt = cut_jets(cut, hlt, sample.levels)
    if hlt is None:
        fit = fit_turn_on(np.zeros(0), np.zeros(0, dtype=bool))
        fit["reason"] = f"the path cuts on HLT jets {cut.level!r}, not in the files"
        return {"method": "tag_and_probe", "path": path, "reference": None,
                "x": "probe offline jet pT", "cut_flow": {}, **fit, "points": []}
    off = sample.offline
    top = ranked(off, None, 3)
    j1, j2, j3 = top[:, 0], top[:, 1], top[:, 2]
    ok = sample.paths[path] & (j1 >= 0) & (j2 >= 0)
    i1, i2 = j1[ok], j2[ok]
    central = (np.abs(off.eta[i1]) < settings.turn_on_eta) & \
        (np.abs(off.eta[i2]) < settings.turn_on_eta)
    back = np.abs(delta_phi(off.phi[i1], off.phi[i2])) > settings.min_dphi
    mean12 = 0.5 * (off.pt[i1] + off.pt[i2])
    i3 = j3[ok]
    third = np.where(i3 >= 0, off.pt[np.maximum(i3, 0)], 0.0)
    veto = (i3 < 0) | (third < settings.third_jet_fraction * mean12)
    good = central & back & veto
    has = partner >= 0
    online_ok = np.zeros(partner.size, dtype=bool)
    online_ok[has] = cut.passes(hlt.pt[partner[has]], hlt.eta[partner[has]])

    def online(i: np.ndarray) -> np.ndarray:
        return online_ok[i]

    probes_x, probes_pass = [], []
    for tag, probe in ((i1, i2), (i2, i1)):
        use = good & (np.abs(off.eta[tag]) < settings.tag_eta) & online(tag)
        probes_x.append(off.pt[probe[use]])
        probes_pass.append(online(probe[use]))
    x = np.concatenate(probes_x)
    passed = np.concatenate(probes_pass)
    fit = fit_turn_on(x, passed, min_rising=settings.min_rising)
    cut_flow = {"path_fired": int(sample.paths[path].sum()), "two_jets": int(ok.sum()),
                "both_central": int(central.sum()), "back_to_back": int((central & back).sum()),
                "third_jet_veto": int(good.sum()), "probes": int(x.size)}
    if x.size == 0:
        fit["reason"] = (
            f"of {cut_flow['two_jets']} events passing the path with two jets, "
            f"{cut_flow['both_central']} have both at |eta| < {settings.turn_on_eta:g}, "
            f"{cut_flow['back_to_back']} also back to back, {cut_flow['third_jet_veto']} also "
            f"a third jet below {settings.third_jet_fraction:g} <pT12>")
    return {"method": "tag_and_probe", "path": path, "reference": None,
            "x": "probe offline jet pT", "cut_flow": cut_flow, **fit,
            "points": efficiency_points(x, passed, turn_on_edges(cut.pt_min))}


# -- the study ---------------------------------------------------------------------------------
def storage_threshold(hlt: Jets) -> float | None:
    """The lowest stored HLT jet pT (GeV): below it no HLT jet was kept."""
    return float(hlt.pt.min()) if hlt.pt.size else None


def hlt_levels(sample: StudySample, settings: StudySettings) -> dict[str, Jets]:
    """The HLT jets compared with the offline jets, per level: hltemu's JEC levels (the same
    jets, rows and directions at every level, pT differing), or NanoAOD's selected trigger
    objects :data:`AS_STORED`."""
    return dict(sample.levels) or {AS_STORED: hlt_selection(sample, settings.hlt_jets)}


def _hlt_summary(sample: StudySample, settings: StudySettings, hlt: Jets,
                 levels: dict[str, Jets]) -> dict[str, Any]:
    threshold = storage_threshold(hlt)
    out: dict[str, Any] = {"used": int(hlt.pt.size), "levels": list(levels),
                           "storage_threshold": threshold,
                           "flag_below": None if threshold is None else 2.0 * threshold}
    if sample.kind == "hltemu":
        out.update(sample.info["hlt_jets"])
        out["storage_thresholds"] = {k: storage_threshold(j) for k, j in levels.items()}
        return out
    kinds = ({k: int(np.sum(sample.hlt.extra["kind"] == i)) for i, k in enumerate(HLT_KINDS)}
             if settings.hlt_jets == "pf" else {"all": int(sample.hlt.pt.size)})
    return {"selection": settings.hlt_jets, "objects": "TrigObj_id == 1", "kinds": kinds,
            "rule": (f"filter bits only among {list(L1_JET_BITS)}: L1 jet; only among "
                     f"{list(CALO_JET_BITS)}: HLT calo jet; else HLT PF jet"
                     if settings.hlt_jets == "pf" else "every jet trigger object"), **out}


def run_study(sample: StudySample, settings: StudySettings) -> dict[str, Any]:
    """Everything the command writes to ``summary.json`` (and the figures draw)."""
    hlt = hlt_selection(sample, settings.hlt_jets)
    levels = hlt_levels(sample, settings)
    threshold = storage_threshold(hlt)
    partner = match(sample.offline, hlt, settings.max_dr)  # directions: the same at any level
    reference = settings.reference or DEFAULT_REFERENCE[sample.kind]
    used = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}
    used["reference"] = reference
    if sample.kind == "hltemu":
        used["offline_jec"] = sample.info["offline_jec"]
        offline_pt = sample.info["offline_pt"]
    else:
        offline_pt = ("JEC-corrected Jet_pt as stored" if settings.offline_pt == "corrected"
                      else "raw: Jet_pt * (1 - Jet_rawFactor)")
    summary: dict[str, Any] = {
        "input": {"kind": sample.kind, "files": sample.files, "events": sample.n_events},
        "offline_algorithm": sample.offline_algorithm,
        "offline_pt": offline_pt,
        "settings": used,
        "hlt_jets": _hlt_summary(sample, settings, hlt, levels),
        "rho": {"branch": sample.rho_branch,
                "median": None if sample.rho is None else float(np.median(sample.rho))},
        "offline": {"jets": int(sample.offline.pt.size),
                    "median_raw_factor": _median(sample.offline.extra.get("raw_factor")),
                    "median_area": _median(sample.offline.extra.get("area"))},
        "matching": {"max_dr": settings.max_dr, "pairs": int(np.sum(partner >= 0)),
                     "offline_jets": int(sample.offline.pt.size), "hlt_jets": int(hlt.pt.size)},
        "notes": list(sample.notes),
    }
    if sample.kind == "hltemu":
        summary["offline_jec"] = sample.info["offline_jec"]
        summary["generation"] = sample.info["generation"]
    if threshold is None:
        summary["notes"].append("no HLT jets of the kind selected: nothing to match")
    summary["response"] = [
        {"level": name, **row}
        for name, jets in levels.items()
        for row in response_bins(sample.offline, jets, partner, settings,
                                 storage_threshold(jets) or 0.0)]
    summary["hlt_vs_offline"] = pt_histogram(sample.offline, hlt, partner)
    summary["paths"] = path_agreement(sample.paths, hlt, sample.cuts, sample.levels)
    summary["turn_on"] = _turn_ons(sample, hlt, partner, reference, settings, summary["notes"])
    if sample.kind == "hltemu":
        # imported here: threshold_width builds on this module's helpers
        from hltemu.study.threshold_width import threshold_width_study

        summary["threshold_width"] = threshold_width_study(sample, settings)
    return summary


def _turn_ons(sample: StudySample, hlt: Jets, partner: np.ndarray, reference: str,
              settings: StudySettings, notes: list[str]) -> dict[str, dict[str, Any]]:
    """Both methods' turn-ons of every single-jet path above ``reference``'s threshold."""
    if not sample.paths:
        notes.append("no HLT_PFJet<N> bits in the files: no path tables or turn-ons"
                     if sample.kind == "nanoaod" else
                     "no single-jet path decisions (trigger_pre of stage trigger) in the "
                     "files: no path tables or reference-method turn-ons")
        return {}
    if reference not in sample.paths:
        which = "HLT_PFJet" if sample.kind == "nanoaod" else "single-jet"
        raise StudyError(f"reference path {reference!r} is not in the files; their {which} "
                         f"paths: {', '.join(sample.paths)}")
    ref_n = path_cut(sample, reference).pt_min
    out = {}
    for name in sample.paths:
        if path_cut(sample, name).pt_min <= ref_n:
            continue
        out[name] = {
            "reference": reference_turn_on(sample, name, reference, settings),
            "tag_and_probe": tag_and_probe(sample, hlt, partner, name, settings),
        }
    return out


def _median(values: np.ndarray | None) -> float | None:
    return None if values is None or values.size == 0 else float(np.median(values))
