"""hltemu's own outputs as input to the online-offline study (:func:`read_emulator`).

An ``hltemu run`` output with the HLT chain and the offline one,
``--stages topocluster,antikt,rho,jec,trigger,tracks,vertices,pfcandidates,pfjets``
(:data:`RUN_STAGES`), holds both sides of the comparison:

* HLT jets: the calorimeter jets at each JEC level, from ``corrected_jets`` (stage ``jec``):
  ``raw`` (``pt_raw``, the ``jets`` of stage ``antikt``), the product of the levels up to each
  intermediate one (``L1FastJet``: ``pt_raw * factor_L1FastJet``, from the ``factor_<level>``
  columns in chain order) and ``full`` (``pt``).  A file with ``jets`` and no
  ``corrected_jets`` gives ``raw`` alone.  Where the files have ``regressed_jets`` (stage
  ``jet_regression``: a network calibrating each raw jet to the offline pT, an alternative to
  the factorized JEC), one more flavour, :data:`REGRESSED` (its ``pt``), after ``full``; every
  file must have it then, or none (:func:`read_emulator` names the one that lacks it).  Every
  level has the same jets (rows, eta, phi), checked for ``regressed_jets``;
* offline jets: ``pfjets`` (stage ``pfjets``: anti-kT R = 0.4 on particle-flow candidates with
  charged-hadron subtraction, CMS's AK4 PF CHS), corrected with ``StudySettings.offline_jec``
  (default :data:`DEFAULT_OFFLINE_JEC`, hltemu's own corrections for them; an empty tuple:
  raw pfjets), evaluated by :meth:`hltemu.jec.JecChain.correct_reference` with ``JetA`` the
  jet area and ``Rho`` the event's ``rho`` (stage ``rho``, calorimeter cells), as
  ``hltemu derive-jec --jets pfjets`` derived them;
* path decisions: ``trigger_pre`` (stage ``trigger``, before the prescalers: the reference
  path's prescale does not thin the turn-ons' events), the ``single_jet`` paths of the run's
  menu, each with its cut (:class:`~hltemu.study.online_offline.PathCut`: ``pt >= pt_min``
  and ``|eta| <= eta_max`` on the full-JEC jets).  The menu is the one the run's provenance
  records (``plan.facts.trigger.paths``), else its ``[trigger] menu`` file, else hltemu's
  shipped menu (with a note).

Events count equally in the responses and turn-ons: ``Event_weight`` is not used there (a
sample generated with a pT-hat bias has a flatter spectrum than nature's, which changes how many
events each offline pT bin holds, not the efficiency or the response in it; the summary records
the bias).  It is used for accept rates (the threshold comparison at equal rate,
:mod:`hltemu.study.threshold_width`), which depend on the spectrum: :func:`rate_weights`
normalises each file's weights to its cross-section as ``hltemu derive-jec --weighted`` does
(:func:`hltemu.jec.derive.generation_provenance`: ``Event_weight * sigma_gen / weight_sum``
of the hard process), or, when some file's provenance has no cross-section, every file's to its
summed weights (a note says so).  For an output of a run over a run output (stages rerun on
it), the generation is looked up through the chain of runs
(:func:`hltemu.io.provenance.generation_run`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hltemu.batch import counts_to_offsets
from hltemu.io.provenance import generation_run
from hltemu.jec.derive import (
    OFFLINE_LEVELS,
    RHO_COLLECTIONS,
    cross_section_scale,
    generation_provenance,
)
from hltemu.study.online_offline import Jets, PathCut, StudyError, StudySample, StudySettings

#: The ``hltemu run --stages`` that make a study input: the HLT calorimeter chain with its
#: JEC and menu, and the offline chain (tracks, vertices, pfcandidates, pfjets).
RUN_STAGES = "topocluster,antikt,rho,jec,trigger,tracks,vertices,pfcandidates,pfjets,pfrho"

#: The offline chain's stages, which need topocluster's clusters beside them.
OFFLINE_STAGES = "tracks,vertices,pfcandidates,pfjets,pfrho"

#: Corrections of the offline pfjets (``hltemu derive-jec --jets pfjets``, shipped; their
#: L1FastJet reads the particle-flow rho, ``pfrho``).
DEFAULT_OFFLINE_JEC: tuple[str, ...] = OFFLINE_LEVELS

#: The rho the offline corrections read (``pfrho``, as derive-jec's).
OFFLINE_RHO = RHO_COLLECTIONS["pfjets"]

#: What the offline jets are.
OFFLINE_ALGORITHM = "AK4 PF CHS (hltemu pfjets)"

#: Names of the first and last HLT levels.
RAW, FULL = "raw", "full"

#: The HLT level of stage ``jet_regression``'s ``regressed_jets``, and that collection.
REGRESSED, REGRESSED_COLLECTION = "regressed", "regressed_jets"

#: Collections read when present: the HLT jets (``corrected_jets``, else ``jets``), then the
#: rest.
_HLT_COLLECTIONS = ("corrected_jets", "jets")


def _missing_error(path: str, missing: Sequence[str]) -> StudyError:
    names = [f"{m!r} (or 'jets')" if m == "corrected_jets" else repr(m) for m in missing]
    what = (f"collection {names[0]}" if len(names) == 1 else
            f"collections {', '.join(names[:-1])} and {names[-1]}")
    from hltemu.io import left_out_hint

    hint = left_out_hint(path, [*missing, *(["jets"] if "corrected_jets" in missing else [])])
    return StudyError(
        f"{path} is an hltemu file without the {what}: "
        + (f"{hint}" if hint else
           f"the study compares HLT calorimeter jets with the offline pfjets; make its input "
           f"with `hltemu run INPUT --stages {RUN_STAGES}` (the offline chain "
           f"{OFFLINE_STAGES} beside topocluster)"))


def hlt_level_pts(coll: Any) -> dict[str, np.ndarray]:
    """pT (GeV) of the HLT jets at each level (:data:`RAW`, the intermediate JEC levels,
    :data:`FULL`) from ``corrected_jets`` (a :class:`~hltemu.batch.Collection`), or
    :data:`RAW` alone from ``jets``."""
    if "pt_raw" not in coll:
        return {RAW: np.asarray(coll["pt"], dtype=np.float64)}
    cum = np.asarray(coll["pt_raw"], dtype=np.float64)
    out = {RAW: cum}
    factors = [c for c in coll.columns if c.startswith("factor_")]
    for c in factors[:-1]:
        cum = cum * np.asarray(coll[c], dtype=np.float64)
        out[c[len("factor_"):]] = cum
    out[FULL] = np.asarray(coll["pt"], dtype=np.float64)
    return out


def _menu_cuts(path: str, prov: dict[str, Any], notes: list[str]) -> dict[str, PathCut]:
    """The ``single_jet`` paths of the menu the run used, as cuts (on the HLT jet level of
    their ``jets``: :func:`_path_level`)."""
    from hltemu.config import ConfigError
    from hltemu.stages.trigger import load_menu, path_summary

    tables = ((((prov.get("plan") or {}).get("facts") or {}).get("trigger") or {})
              .get("paths"))
    if not tables:
        menu = ((prov.get("config") or {}).get("trigger") or {}).get("menu")
        try:
            tables = [path_summary(p) for p in load_menu(menu or "builtin:menu.toml")]
        except ConfigError:
            tables = [path_summary(p) for p in load_menu("builtin:menu.toml")]
            notes.append(f"{path}: its menu {menu!r} is not readable here; path cuts from "
                         "hltemu's shipped menu")
        if not menu:
            notes.append(f"{path}: no menu in its provenance; path cuts from hltemu's "
                         "shipped menu")
    return {t["name"]: PathCut(float(t["pt_min"]), float(t.get("eta_max", np.inf)), True,
                               _path_level(t.get("jets")))
            for t in tables if t.get("type") == "single_jet"}


def _path_level(jets: str | None) -> str | None:
    """The study's HLT level of a menu path's ``jets``: None for the corrected jets (the
    default), :data:`REGRESSED` for ``regressed_jets``, else the collection's name (a level
    the study does not have: its path tables say so)."""
    if not jets or jets == "corrected_jets":
        return None
    return REGRESSED if jets == REGRESSED_COLLECTION else jets


def _offline_chain(entries: tuple[str, ...]) -> Any:
    from hltemu.jec import JecError, load_chain

    try:
        return load_chain(entries)
    except (JecError, OSError) as exc:
        raise StudyError(f"offline JEC {', '.join(entries)}: {exc}") from None


def _generation(prov: dict[str, Any]) -> dict[str, Any]:
    """How the run's input was generated (pileup, pT-hat bias, cross-section and weight sum of
    the hard process), where its provenance says."""
    from hltemu.io.provenance import provenance_pileup

    run = generation_run(prov)
    hard = generation_provenance(run)  # derive-jec's reading of the same provenance
    inputs = run.get("inputs") or []
    gen = inputs[0].get("provenance") if len(inputs) == 1 else None
    settings = (gen or {}).get("settings") or {}
    return {"pileup": provenance_pileup(prov), "process": settings.get("process"),
            "seed": settings.get("seed"), "pthat_min": settings.get("pthat_min"),
            "pthat_bias": settings.get("pthat_bias"), "sigma_gen_mb": hard.get("sigma_gen_mb"),
            "weight_sum": hard.get("weight_sum")}


def rate_weights(parts: Sequence[dict[str, Any]], notes: list[str]
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-event weights of the accept rates, concatenated over ``parts`` (:func:`_read_one`),
    and what they are.

    With a cross-section and weight sum of the hard process in every file's generation
    provenance, each event weighs ``Event_weight * sigma_gen / weight_sum`` (mb; the
    normalisation of ``hltemu derive-jec --weighted``, which reads the same provenance), so
    files of one process or of several pT-hat ranges combine into one spectrum.  Otherwise every
    file's weights are divided by their sum (each file then weighs 1; a note names the first
    file without a cross-section), never the two mixed.  A file without ``Event_weight`` has
    weights 1 (a note)."""
    raw = []
    for q in parts:
        if q["weight"] is None:
            notes.append(f"{q['path']} has no Event_weight: its events weigh 1 in the rates")
            raw.append(np.ones(q["events"]))
        else:
            raw.append(q["weight"])
    gens = [q["generation"] for q in parts]
    scales = [cross_section_scale(g) for g in gens]
    lacking = next((q["path"] for q, k in zip(parts, scales, strict=True) if k is None), None)
    if lacking is None:
        w = [r * k for r, k in zip(raw, scales, strict=True)]
        info = {"normalisation": "cross-section",
                "rule": "Event_weight * sigma_gen / weight_sum per file (as derive-jec "
                        "--weighted)", "unit": "mb"}
    else:
        w = [r / r.sum() if r.sum() > 0 else r for r in raw]
        info = {"normalisation": "weight sum", "rule": "Event_weight / its sum per file",
                "unit": "fraction of the events' weight"}
        notes.append(f"{lacking}: no cross-section of the hard process in its provenance: the "
                     "rates' weights are each file's Event_weight normalised to its sum")
    out = np.concatenate(w) if w else np.zeros(0)
    info["sum"] = float(out.sum())
    info["effective_events"] = (float(out.sum() ** 2 / np.sum(out ** 2))
                                if np.any(out > 0) else 0.0)
    return out, info


def _read_one(path: str, chain: Any) -> dict[str, Any]:
    from hltemu.io import read_collections
    from hltemu.io.layout import common_collections
    from hltemu.io.provenance import read_provenance
    from hltemu.jec.chain import jet_values

    have = set(common_collections([path]))
    hlt_name = next((c for c in _HLT_COLLECTIONS if c in have), None)
    missing = [c for c in ("pfjets",) if c not in have]
    if hlt_name is None:
        missing.insert(0, "corrected_jets")
    if "Rho" in chain.variables and OFFLINE_RHO not in have:
        missing.append(OFFLINE_RHO)
    if missing:
        raise _missing_error(path, missing)
    wanted = [hlt_name, "pfjets", *(c for c in ("rho", OFFLINE_RHO, "Event", "trigger_pre",
                                                REGRESSED_COLLECTION) if c in have)]
    c = read_collections(path, wanted)
    prov = read_provenance(path) or {}
    hlt, pf = c[hlt_name], c["pfjets"]
    n = pf.n_events
    rho = np.asarray(c["rho"]["rho"], dtype=np.float64) if "rho" in c else None
    values = jet_values(pf, c.get(OFFLINE_RHO))
    pf_pt, _, _ = chain.correct_reference(values)
    notes: list[str] = []
    levels = hlt_level_pts(hlt)
    if REGRESSED_COLLECTION in c:
        levels[REGRESSED] = _regressed_pt(path, c[REGRESSED_COLLECTION], hlt, hlt_name)
    ev = c.get("Event")
    return {
        "path": path, "events": n, "prov": prov, "hlt_name": hlt_name,
        "hlt_counts": np.asarray(hlt.counts), "hlt_eta": np.asarray(hlt["eta"], np.float64),
        "hlt_phi": np.asarray(hlt["phi"], np.float64), "levels": levels,
        "weight": (np.asarray(ev["weight"], dtype=np.float64)
                   if ev is not None and "weight" in ev else None),
        "generation": _generation(prov),
        "pf_counts": np.asarray(pf.counts), "pf_pt": pf_pt, "pf_raw": values["JetPt"],
        "pf_eta": values["JetEta"], "pf_phi": values["JetPhi"], "pf_area": values["JetA"],
        "rho": rho, "n_pileup": (np.asarray(c["Event"]["n_pileup"], dtype=np.float64)
                                 if "Event" in c and "n_pileup" in c["Event"] else None),
        "trigger_pre": ({k: np.asarray(v, dtype=bool) for k, v in c["trigger_pre"].columns.items()}
                        if "trigger_pre" in c else None),
        "cuts": _menu_cuts(path, prov, notes), "notes": notes,
    }


def _regressed_pt(path: str, reg: Any, hlt: Any, hlt_name: str) -> np.ndarray:
    """pT (GeV) of ``regressed_jets``, after checking that its rows are those of the HLT jets
    ``hlt`` (same counts per event, same eta)."""
    if not np.array_equal(np.asarray(reg.counts), np.asarray(hlt.counts)) or not np.allclose(
            np.asarray(reg["eta"], np.float64), np.asarray(hlt["eta"], np.float64),
            rtol=0, atol=1e-5):
        raise StudyError(f"{path}: {REGRESSED_COLLECTION} ({reg.n_events} events, "
                         f"{len(reg['pt'])} jets) does not have the rows of {hlt_name} "
                         f"({hlt.n_events} events, {len(hlt['pt'])} jets); stage jet_regression "
                         "writes one row per jet in the same order: rerun it on this file")
    return np.asarray(reg["pt"], dtype=np.float64)


def read_emulator(paths: Sequence[str], settings: StudySettings | None = None,
                  progress: Callable[[int], None] | None = None) -> StudySample:
    """Read hltemu run outputs (module docstring) into a :class:`StudySample`.

    Raises :class:`StudyError` for a file without ``pfjets`` or HLT jets (naming the stages
    that make them), a file without ``regressed_jets`` among files with them (naming it), a
    ``regressed_jets`` whose rows are not the HLT jets', files whose HLT JEC levels or menus
    differ, or settings that apply to NanoAOD only (``offline_pt="raw"``: use
    ``offline_jec=()``)."""
    settings = settings or StudySettings()
    if not paths:
        raise StudyError("no input files")
    if settings.offline_pt != "corrected":
        raise StudyError("offline_pt 'raw' (--offline-pt raw) undoes NanoAOD's Jet_rawFactor; "
                         "on hltemu outputs the offline pfjets are raw with --offline-jec none")
    entries = DEFAULT_OFFLINE_JEC if settings.offline_jec is None else settings.offline_jec
    chain = _offline_chain(tuple(entries))
    parts = []
    for p in paths:
        parts.append(_read_one(str(p), chain))
        if progress is not None:
            progress(1)
    first = parts[0]
    with_reg = [q["path"] for q in parts if REGRESSED in q["levels"]]
    if with_reg and len(with_reg) < len(parts):
        lacking = next(q["path"] for q in parts if REGRESSED not in q["levels"])
        raise StudyError(f"{lacking} has no {REGRESSED_COLLECTION} (stage jet_regression) but "
                         f"{with_reg[0]} has: the {REGRESSED} HLT jets would come from some "
                         f"files only; add them with `hltemu run {lacking} --stages "
                         "jet_regression` (the study needs every collection in one file), or "
                         "study the files apart")
    for q in parts[1:]:
        if list(q["levels"]) != list(first["levels"]):
            raise StudyError(f"{q['path']} has the HLT levels {list(q['levels'])}, "
                             f"{first['path']} {list(first['levels'])}: study them apart")
        if q["cuts"] != first["cuts"]:
            raise StudyError(f"{q['path']} was run with other single-jet paths than "
                             f"{first['path']} ({q['cuts']} vs {first['cuts']}): study them "
                             "apart")
    notes = [n for q in parts for n in q["notes"]]

    def cat(key: str) -> np.ndarray:
        return np.concatenate([q[key] for q in parts])

    hlt_off = counts_to_offsets(cat("hlt_counts"))
    eta, phi = cat("hlt_eta"), cat("hlt_phi")
    levels = {name: Jets(hlt_off, np.concatenate([q["levels"][name] for q in parts]), eta, phi)
              for name in first["levels"]}
    offline = Jets(counts_to_offsets(cat("pf_counts")), cat("pf_pt"), cat("pf_eta"),
                   cat("pf_phi"), {"raw_pt": cat("pf_raw"), "area": cat("pf_area")})
    if len(entries):
        offline.extra["raw_factor"] = 1.0 - offline.extra["raw_pt"] / np.where(
            offline.pt > 0, offline.pt, np.nan)
    cuts = first["cuts"]
    paths_out: dict[str, np.ndarray] = {}
    if all(q["trigger_pre"] is not None for q in parts):
        names = [n for n in cuts if all(n in q["trigger_pre"] for q in parts)]
        absent = [n for n in cuts if n not in names]
        if absent:
            notes.append(f"single-jet paths without decisions in trigger_pre, left out: "
                         f"{', '.join(absent)}")
        paths_out = {n: np.concatenate([q["trigger_pre"][n] for q in parts]) for n in names}
    elif any(q["trigger_pre"] is not None for q in parts):
        notes.append("trigger_pre is not in every file: no path decisions used")
    rho = cat("rho") if all(q["rho"] is not None for q in parts) else None
    generation = [{"file": q["path"], **q["generation"]} for q in parts]
    pileups = sorted({g["pileup"] for g in generation}, key=lambda v: (v is None, v))
    if len(pileups) > 1:
        notes.append(f"files of different pileup ({', '.join(map(str, pileups))}) studied "
                     "together")
    biases = sorted({g["pthat_bias"] for g in generation if g["pthat_bias"]})
    notes.append("events count equally in the responses and turn-ons (Event_weight used for "
                 "the accept rates only)"
                 + (f"; the samples were generated with a pT-hat bias {biases}, so the offline "
                    "pT spectrum is flatter than nature's (the efficiency and response at a "
                    "given offline pT are not weighted)" if biases else ""))
    weight, weight_info = rate_weights(parts, notes)
    jec = [((q["prov"].get("config") or {}).get("jec") or {}).get("levels") for q in parts]
    hlt_name = first["hlt_name"]
    if hlt_name == "jets":
        notes.append("no corrected_jets (stage jec) in the files: the HLT jets are raw only; "
                     "no threshold-width comparison")
    info = {
        "offline_jec": list(entries),
        "offline_pt": ("raw pfjets pT (no offline JEC)" if not len(entries) else
                       f"pfjets pT corrected with {', '.join(entries)}"),
        "generation": generation,
        "hlt_jets": {
            "selection": f"hltemu {hlt_name} (HLT calorimeter jets, stage antikt"
                         + (", corrected by stage jec)" if hlt_name == "corrected_jets" else ")"),
            "objects": hlt_name,
            "jec": jec[0] if all(j == jec[0] for j in jec) else jec,
            "level_definitions": _level_definitions(list(first["levels"])),
        },
        "weights": weight_info,
    }
    return StudySample(
        files=[{"path": q["path"], "events": q["events"],
                "pileup": q["generation"]["pileup"],
                "mean_n_pileup": (None if q["n_pileup"] is None
                                  else float(np.mean(q["n_pileup"])))} for q in parts],
        offline=offline, hlt=levels[FULL if FULL in levels else RAW], paths=paths_out, rho=rho,
        rho_branch="rho_rho" if rho is not None else None, offline_algorithm=OFFLINE_ALGORITHM,
        notes=notes, kind="hltemu", levels=levels, cuts=cuts, info=info, weight=weight)


def _level_definitions(names: list[str]) -> dict[str, str]:
    out = {}
    done: list[str] = []
    for name in names:
        if name == RAW:
            out[name] = "pt_raw (stage antikt's jets)"
        elif name == FULL:
            out[name] = "pt (corrected_jets, every level of the run's JEC)"
        elif name == REGRESSED:
            out[name] = ("pt (regressed_jets of stage jet_regression: the raw jets calibrated to "
                         "the offline pT by a network)")
        else:
            done.append(name)
            out[name] = "pt_raw * " + " * ".join(f"factor_{d}" for d in done)
    return out
