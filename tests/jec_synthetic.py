"""Synthetic paired jet samples with a known response and pileup offset, for the derive-jec
tests: truth jets, reco jets = truth x response(pT, eta) x (1 + 10% Gaussian) + offset, where
the offset per unit area is ``OFFSET_P1 * rho`` (the anchored form with b = 0), plus
pileup jets with no truth partner.  Written as ``hltemu run`` outputs by :func:`write_run_output`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hltemu.jec.derive import JetSample

OFFSET_P1 = 0.8  # per rho unit
RHO_PER_INTERACTION = 0.6  # GeV / area
R = 0.4


def response(pt: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """The synthetic detector's median response (no pileup): rises with pT, falls with |eta|."""
    return 0.95 - 0.45 / (1.0 + pt / 25.0) - 0.04 * np.abs(eta)


def make_events(n_events: int, pileup: float, seed: int, run: int | None = None) -> dict:
    """Columns of ``n_events`` events at mean ``pileup`` (Poisson): the truth and the pileup-0
    reco jets depend on ``seed`` only (paired), the pileup and its offset on (seed, pileup).
    Events are numbered 1..n in run ``run`` (default: the seed)."""
    rng = np.random.default_rng(seed)
    n_truth = rng.integers(2, 5, n_events)
    t_ev = np.repeat(np.arange(n_events), n_truth)
    n = t_ev.size
    t_pt = np.exp(rng.uniform(np.log(12.0), np.log(1500.0), n))
    t_eta = rng.uniform(-3.0, 3.0, n)
    t_phi = rng.uniform(-np.pi, np.pi, n)
    smear = rng.normal(1.0, 0.1, n)
    d_eta, d_phi = rng.normal(0, 0.02, n), rng.normal(0, 0.02, n)
    area = rng.normal(0.5, 0.03, n)
    pu_rng = np.random.default_rng([seed, int(pileup * 1000) + 1])
    n_pu = pu_rng.poisson(pileup, n_events).astype(np.float64) if pileup > 0 \
        else np.zeros(n_events)
    rho = RHO_PER_INTERACTION * n_pu + np.abs(pu_rng.normal(0, 0.05, n_events))
    j_pt = t_pt * response(t_pt, t_eta) * smear
    if pileup > 0:
        j_pt = j_pt + area * OFFSET_P1 * rho[t_ev] + pu_rng.normal(0, 1.0, n)
    # pileup jets: no truth partner, 0-2 per event at pileup
    n_extra = pu_rng.integers(0, 3, n_events) if pileup > 0 else np.zeros(n_events, int)
    x_ev = np.repeat(np.arange(n_events), n_extra)
    m = x_ev.size
    jets = {
        "ev": np.concatenate([t_ev, x_ev]),
        "pt": np.concatenate([j_pt, pu_rng.uniform(5, 15, m)]),
        "eta": np.concatenate([t_eta + d_eta, pu_rng.uniform(-3, 3, m)]),
        "phi": np.concatenate([(t_phi + d_phi + np.pi) % (2 * np.pi) - np.pi,
                               pu_rng.uniform(-np.pi, np.pi, m)]),
        "area": np.concatenate([area, pu_rng.normal(0.5, 0.03, m)]),
    }
    keep = jets["pt"] >= 5.0
    order = np.argsort(jets["ev"][keep], kind="stable")
    jets = {k: v[keep][order] for k, v in jets.items()}
    return {"n_events": n_events, "run": seed if run is None else run, "pileup": float(pileup), "n_pu": n_pu, "rho": rho,
            "t_ev": t_ev, "t_pt": t_pt, "t_eta": t_eta, "t_phi": t_phi, "jets": jets}


def to_sample(parts: list[dict]) -> JetSample:
    """A :class:`JetSample` of several :func:`make_events` results."""
    cols: dict[str, list] = {k: [] for k in ("key", "pileup", "n_pileup", "rho", "weight", "file",
                                             "j_ev", "j_pt", "j_eta", "j_phi", "j_area", "t_ev",
                                             "t_pt", "t_eta", "t_phi")}
    off = 0
    for i, p in enumerate(parts):
        n = p["n_events"]
        key = np.stack([np.full(n, p["run"]), np.ones(n), np.arange(1, n + 1)], axis=1)
        cols["key"].append(key.astype(np.uint64))
        cols["pileup"].append(np.full(n, p["pileup"]))
        cols["n_pileup"].append(p["n_pu"])
        cols["rho"].append(p["rho"])
        cols["weight"].append(np.ones(n))
        cols["file"].append(np.full(n, i))
        j = p["jets"]
        cols["j_ev"].append(j["ev"] + off)
        cols["j_pt"].append(j["pt"])
        cols["j_eta"].append(j["eta"])
        cols["j_phi"].append(j["phi"])
        cols["j_area"].append(j["area"])
        cols["t_ev"].append(p["t_ev"] + off)
        for k in ("t_pt", "t_eta", "t_phi"):
            cols[k].append(p[k])
        off += n
    cat = {k: np.concatenate(v) for k, v in cols.items()}
    return JetSample(files=[f"synthetic{i}" for i in range(len(parts))], radius=R,
                     run_config={"antikt": {"R": R}}, **cat)


def write_run_output(path: Path, p: dict, seed: int, pfjets_scale: float | None = None) -> None:
    """Write :func:`make_events` columns as an ``hltemu run`` output (Event, jets, genjets,
    rho) with a run provenance naming the generation settings; with ``pfjets_scale``, also
    ``pfjets``: the truth jets with pT times that scale (area 0.5), as offline jets, and their
    ``pfrho`` (0.7 rho)."""
    from hltemu.backends import get_backend
    from hltemu.batch import Collection, EventBatch
    from hltemu.io.writer import OutputWriter

    n = p["n_events"]
    j = p["jets"]
    event = Collection.event_level({
        "run": np.full(n, p["run"], dtype=np.uint32),
        "luminosityBlock": np.ones(n, dtype=np.uint32),
        "event": np.arange(1, n + 1, dtype=np.uint64),
        "weight": np.ones(n, dtype=np.float32),
        "n_pileup": p["n_pu"].astype(np.int32),
    })
    jets = Collection.from_counts(np.bincount(j["ev"], minlength=n), {
        "pt": j["pt"], "eta": j["eta"], "phi": j["phi"], "area": j["area"]})
    gj = Collection.from_counts(np.bincount(p["t_ev"], minlength=n), {
        "pt": p["t_pt"], "eta": p["t_eta"], "phi": p["t_phi"]})
    rho = Collection.event_level({"rho": p["rho"]})
    colls = {"Event": event, "jets": jets, "genjets": gj, "rho": rho}
    config = {"antikt": {"R": R, "pt_min": 5.0},
              "genjets": {"R": R, "pt_min": 5.0, "vertices": "hard_scatter"},
              "rho": {"eta_max": 3.0, "grid_spacing": 0.55}}
    if pfjets_scale is not None:
        colls["pfjets"] = Collection.from_counts(np.bincount(p["t_ev"], minlength=n), {
            "pt": p["t_pt"] * pfjets_scale, "eta": p["t_eta"], "phi": p["t_phi"],
            "area": np.full(p["t_pt"].shape[0], 0.5)})
        config["pfjets"] = {"R": R, "pt_min": 5.0, "chs": True}
        colls["pfrho"] = Collection.event_level({"rho": 0.7 * p["rho"]})
        config["pfrho"] = {"eta_max": 3.0, "grid_spacing": 0.55}
    batch = EventBatch(get_backend("reference"), n, colls)
    w = OutputWriter(path)
    w.set_provenance({
        "format": "hltemu-provenance/1", "kind": "run",
        "config": config,
        "inputs": [{"file": f"gen{seed}.root", "provenance": {
            "kind": "generate", "command": "synthetic",
            "settings": {"seed": seed, "pileup": p["pileup"], "process": "qcd"},
            "events": n, "pythia": {"hard_process": {"sigma_gen_mb": 2.0, "weight_sum": n}}}}],
    })
    with w:
        w.write(batch)
