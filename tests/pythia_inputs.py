"""Pythia-generated inputs for the rho, jec and trigger tests.

The built-in sample (``hltemu/data/sample.root``: 10 Pythia 8 ttbar events with 50 pileup
interactions) provides its calorimeter cells (rho's input) and final-state particles.  The
particles stand in for calorimeter clusters (as massless objects, E = pT cosh(eta)), and
FastJet's anti-kT (R = 0.4, active areas) makes jets from them, so that these tests do not
depend on the topocluster and antikt stages.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from hltemu.batch import Collection

SAMPLE = Path(str(resources.files("hltemu") / "data" / "sample.root"))


@functools.lru_cache(maxsize=1)
def _final_state() -> list[dict[str, np.ndarray]]:
    from hltemu.io import read_collections

    if not SAMPLE.is_file():
        pytest.skip(f"built-in sample {SAMPLE} missing")
    gen = read_collections(str(SAMPLE), ["GenPart"])["GenPart"]
    events = []
    for i in range(gen.n_events):
        ev = gen.event(i)
        keep = ev["status"] == 1
        events.append({k: np.asarray(v[keep]) for k, v in ev.items()})
    return events


@functools.lru_cache(maxsize=1)
def sample_cells() -> Collection:
    """The sample's ``CaloCell`` (every cell, noise included): the input of stage ``rho``."""
    from hltemu.io import read_collections

    if not SAMPLE.is_file():
        pytest.skip(f"built-in sample {SAMPLE} missing")
    return read_collections(str(SAMPLE), ["CaloCell"])["CaloCell"]


def sample_clusters() -> Collection:
    """Final-state particles as massless clusters: columns energy [GeV], eta, phi [rad]."""
    events = _final_state()
    counts = [e["pt"].shape[0] for e in events]
    pt = np.concatenate([e["pt"] for e in events]).astype(np.float64)
    eta = np.concatenate([e["eta"] for e in events]).astype(np.float64)
    phi = np.concatenate([e["phi"] for e in events]).astype(np.float64)
    return Collection.from_counts(counts, {"energy": pt * np.cosh(eta), "eta": eta, "phi": phi})


@functools.lru_cache(maxsize=2)
def sample_jets(pt_min: float = 5.0) -> Collection:
    """Anti-kT R=0.4 jets (FastJet, active areas) of the sample's final-state particles, with
    the columns of the ``jets`` collection: pt, eta, phi, mass, px, py, pz, E, area,
    n_constituents."""
    fastjet = pytest.importorskip("fastjet")
    jet_def = fastjet.JetDefinition(fastjet.antikt_algorithm, 0.4)
    area_def = fastjet.AreaDefinition(fastjet.active_area, fastjet.GhostedAreaSpec(5.0))
    names = ("pt", "eta", "phi", "mass", "px", "py", "pz", "E", "area", "n_constituents")
    rows: dict[str, list[float]] = {k: [] for k in names}
    counts = []
    for ev in _final_state():
        pt, eta, phi, m = (ev[k].astype(np.float64) for k in ("pt", "eta", "phi", "mass"))
        px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        e = np.sqrt(px**2 + py**2 + pz**2 + m**2)
        parts = [fastjet.PseudoJet(*map(float, v)) for v in zip(px, py, pz, e, strict=True)]
        seq = fastjet.ClusterSequenceArea(parts, jet_def, area_def)
        jets = fastjet.sorted_by_pt(seq.inclusive_jets(pt_min))
        counts.append(len(jets))
        for j in jets:
            values = (j.pt(), j.eta(), j.phi_std(), j.m(), j.px(), j.py(), j.pz(), j.E(),
                      j.area(), len(j.constituents()))
            for k, v in zip(names, values, strict=True):
                rows[k].append(v)
    cols = {k: np.asarray(v, dtype=np.float64) for k, v in rows.items()}
    cols["n_constituents"] = cols["n_constituents"].astype(np.int64)
    return Collection.from_counts(counts, cols)
