"""A synthetic ``hltemu run`` output for the online-offline study on emulator input, with known
relations between the HLT and the offline jets.

Each event has a leading jet of true pT ``t`` (log-uniform, 20-300 GeV) and a soft one at
``0.2 t``; |eta| < 2.4, so every jet is within both the offline (2.5) and the HLT path (3.0)
acceptances.  Per jet, with ``s`` a Gaussian smearing of mean 1 and sigma :data:`SMEAR`:

* offline ``pfjets``: raw pT ``t / OFFLINE_SCALE``, so that the constant offline correction
  :data:`OFFLINE_JEC_TEXT` (a factor ``OFFLINE_SCALE``) gives back ``t`` exactly;
* HLT ``corrected_jets``: ``pt_raw = RAW_RESPONSE(eta) * t * s`` (0.7 at |eta| < 1.3, 0.9
  beyond: an eta-dependent calorimeter response), ``factor_L1FastJet`` = :data:`L1_FACTOR`,
  ``factor_L2Relative`` = ``1 / (L1_FACTOR * RAW_RESPONSE(eta))``, so the full pT is ``t * s``;
* ``trigger_pre``: HLT_CaloJet40 and HLT_CaloJet80 of the shipped menu (full pT >= 40, 80 GeV,
  |eta| <= 3), which the provenance lists as the run's paths, as ``hltemu run`` records them.

Optionally (:func:`write_study_output`): ``regressed_jets`` (stage ``jet_regression``'s
collection, one row per HLT jet) with pT ``regressed_scale`` times the full pT; per-event
generator weights ``Event_weight``; a cross-section of the hard process in the generation
provenance (``sigma_gen_mb``, with ``weight_sum`` the weights' sum, as ``hltemu generate``
records them).

So, against offline jets corrected by :data:`OFFLINE_JEC_TEXT`, the median responses are
``RAW_RESPONSE`` (raw), ``L1_FACTOR * RAW_RESPONSE`` (L1FastJet) and 1 (full); with raw
offline jets each is ``OFFLINE_SCALE`` times larger.  An 80 GeV cut on the full pT has its
p50 at an offline pT of 80 GeV; a cut on raw pT mixes two responses, so its turn-on is wider.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

SMEAR = 0.10
OFFLINE_SCALE = 1.25
L1_FACTOR = 1.1
ETA_SPLIT = 1.3
CENTRAL_RESPONSE, FORWARD_RESPONSE = 0.7, 0.9

#: A CMS text file correcting every jet by ``OFFLINE_SCALE``.
OFFLINE_JEC_TEXT = (f"{{1 JetEta 1 JetPt max(0.0001,[0]+0*x) Correction L2Relative}}\n"
                    f"-5.191 5.191 3 1 14000 {OFFLINE_SCALE}\n")

#: The run's single-jet paths (as ``hltemu run`` records its menu in the provenance).
PATHS = {"HLT_CaloJet40": 40.0, "HLT_CaloJet80": 80.0}
#: A path on the regressed jets (``write_study_output(regressed_path=True)``) and its cut.
REGRESSED_PATH = ("HLT_RegJet80", 80.0)


def raw_response(eta: np.ndarray) -> np.ndarray:
    return np.where(np.abs(eta) < ETA_SPLIT, CENTRAL_RESPONSE, FORWARD_RESPONSE)


def make_events(n_events: int, seed: int) -> dict[str, np.ndarray]:
    """The per-jet columns (two jets per event, the leading first) and the event rows."""
    rng = np.random.default_rng(seed)
    lead = np.exp(rng.uniform(np.log(20.0), np.log(300.0), n_events))
    t = np.stack([lead, 0.2 * lead], axis=1).ravel()
    eta = rng.uniform(-2.4, 2.4, t.size)
    phi = rng.uniform(-np.pi, np.pi, t.size)
    s = rng.normal(1.0, SMEAR, t.size)
    raw = raw_response(eta) * t * s
    return {"ev": np.repeat(np.arange(n_events), 2), "t": t, "eta": eta, "phi": phi,
            "raw": raw, "full": t * s,
            "l2": 1.0 / (L1_FACTOR * raw_response(eta))}


def write_study_output(path: Path, n_events: int = 3000, seed: int = 5,
                       with_pfjets: bool = True, with_jec: bool = True,
                       regressed_scale: float | None = None,
                       weight: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None,
                       sigma_gen_mb: float | None = None, regressed_path: bool = False
                       ) -> dict[str, np.ndarray]:
    """Write :func:`make_events` as an ``hltemu run`` output; ``with_pfjets=False`` leaves out
    the offline jets, ``with_jec=False`` writes ``jets`` (raw) instead of ``corrected_jets``
    and no ``trigger_pre``; ``regressed_scale`` adds ``regressed_jets`` with pT that many times
    the full pT; ``weight`` gives ``Event_weight`` from the columns (default 1);
    ``sigma_gen_mb`` records a hard-process cross-section (mb) and the weights' sum in the
    generation provenance; ``regressed_path`` (with ``regressed_scale``) adds a menu path
    :data:`REGRESSED_PATH` on ``regressed_jets`` (``jets = "regressed_jets"``), with its bit.
    Returns the columns, with ``"weight"`` per event."""
    from hltemu.backends import get_backend
    from hltemu.batch import Collection, EventBatch
    from hltemu.io.writer import OutputWriter

    e = make_events(n_events, seed)
    e["weight"] = (np.ones(n_events) if weight is None
                   else np.asarray(weight(e), dtype=np.float64))
    counts = np.bincount(e["ev"], minlength=n_events)
    n_jets = e["t"].size
    area = np.full(n_jets, np.pi * 0.4 ** 2)
    collections = {
        "Event": Collection.event_level({
            "run": np.full(n_events, 1, dtype=np.uint32),
            "luminosityBlock": np.ones(n_events, dtype=np.uint32),
            "event": np.arange(1, n_events + 1, dtype=np.uint64),
            "weight": e["weight"].astype(np.float32),
            "n_pileup": np.zeros(n_events, dtype=np.int32)}),
        "rho": Collection.event_level({"rho": np.full(n_events, 2.0)}),
    }
    if with_jec:
        collections["corrected_jets"] = Collection.from_counts(counts, {
            "pt": e["full"], "eta": e["eta"], "phi": e["phi"], "area": area,
            "pt_raw": e["raw"], "factor": e["full"] / e["raw"],
            "factor_L1FastJet": np.full(n_jets, L1_FACTOR), "factor_L2Relative": e["l2"]})
        lead_full = e["full"].reshape(-1, 2).max(axis=1)
        bits = {name: lead_full >= cut for name, cut in PATHS.items()}
        if regressed_path and regressed_scale is not None:
            bits[REGRESSED_PATH[0]] = regressed_scale * lead_full >= REGRESSED_PATH[1]
        collections["trigger_pre"] = Collection.event_level(bits)
        if regressed_scale is not None:
            collections["regressed_jets"] = Collection.from_counts(counts, {
                "pt": regressed_scale * e["full"], "eta": e["eta"], "phi": e["phi"],
                "area": area, "pt_raw": e["raw"],
                "factor": regressed_scale * e["full"] / e["raw"]})
    else:
        collections["jets"] = Collection.from_counts(counts, {
            "pt": e["raw"], "eta": e["eta"], "phi": e["phi"], "area": area})
    if with_pfjets:
        collections["pfjets"] = Collection.from_counts(counts, {
            "pt": e["t"] / OFFLINE_SCALE, "eta": e["eta"], "phi": e["phi"], "area": area})
        collections["pfrho"] = Collection.event_level({"rho": np.full(n_events, 1.0)})
    batch = EventBatch(get_backend("reference"), n_events, collections)
    w = OutputWriter(path)
    w.set_provenance({
        "format": "hltemu-provenance/1", "kind": "run",
        "config": {"jec": {"levels": ["synthetic_L1FastJet.txt", "synthetic_L2Relative.txt"]}},
        "plan": {"facts": {"trigger": {"paths": [
            {"name": name, "type": "single_jet", "pt_min": cut, "eta_max": 3.0, "prescale": 1}
            for name, cut in PATHS.items()] + ([
                {"name": REGRESSED_PATH[0], "type": "single_jet", "pt_min": REGRESSED_PATH[1],
                 "eta_max": 3.0, "jets": "regressed_jets", "prescale": 1}]
                if regressed_path and regressed_scale is not None else [])}}}
        if with_jec else {},
        "inputs": [{"file": f"gen{seed}.root", "provenance": {
            "kind": "generate", "settings": {"seed": seed, "pileup": 0.0, "process": "qcd",
                                             "pthat_min": 15.0, "pthat_bias": 4.0},
            **({"pythia": {"hard_process": {
                "process": "qcd", "sigma_gen_mb": sigma_gen_mb,
                "weight_sum": float(e["weight"].astype(np.float32).sum())}}}
               if sigma_gen_mb is not None else {})}}],
    })
    with w:
        w.write(batch)
    return e
