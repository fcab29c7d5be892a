"""The default chain end to end, through the command line: ``hltemu generate`` makes 3 ttbar
events at pileup 40 (seed 7), ``hltemu run`` runs every stage on cpu in batches of 2 (the doublet
collections written whole: ``--keep '*doublets'``), and the output is read back with uproot (not hltemu's reader) and checked for consistency: every
product collection with its branches and 3 entries, counters equal to the jagged lengths, the
links cell -> cluster -> jet against the counts they imply, jets against their constituents,
rho against a plain-loop oracle of the calorimeter towers, and each trigger bit against the corrected jets and the menu.

About 10 s with Numba's cache warm, 45-60 s on a 2-core machine when the kernels compile.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from click.testing import CliRunner

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from hltemu import io
from hltemu.cli import cli

N_EVENTS = 3
#: Enough pileup that rho is clearly above zero (about 0.6 GeV per unit area per interaction)
#: and that every kind of path (single jet, multi-jet, HT, pixel doublets) fires in some events and not
#: in others; still a few seconds.
PILEUP = 40

JET_COLUMNS = ["pt", "eta", "phi", "mass", "px", "py", "pz", "E", "area", "n_constituents"]
DOUBLET_COLUMNS = ["inner", "outer", "pair", "inner_layer", "outer_layer", "r_inner", "z_inner",
                   "r_outer", "z_outer", "dr", "dz", "dphi", "z0", "curvature", "inner_size_x",
                   "inner_size_y", "outer_size_x", "outer_size_y", "sim_index"]
MENU = tomllib.loads((Path(str(resources.files("hltemu") / "data")) / "menu.toml").read_text())

#: Collections of the default chain: name -> (jagged, columns).  ``Event`` is copied from the
#: input (its identifiers are the top-level branches run, luminosityBlock, event); the input
#: collections (GenPart, PixelHit, CaloCell) are not written.
PRODUCTS: dict[str, tuple[bool, list[str]]] = {
    "Event": (False, ["run", "luminosityBlock", "event", "n_pileup", "pv_z", "weight"]),
    "doublets": (True, DOUBLET_COLUMNS),
    "filtered_doublets": (True, [*DOUBLET_COLUMNS, "score"]),
    "clusters": (True, ["energy", "energy_em", "eta", "phi", "n_cells", "seed",
                        "seed_significance"]),
    "cell_cluster": (True, ["cluster"]),
    "jets": (True, JET_COLUMNS),
    "cluster_jet": (True, ["jet"]),
    "genjets": (True, JET_COLUMNS),
    "rho": (False, ["rho"]),
    "corrected_jets": (True, [*JET_COLUMNS, "pt_raw", "factor", "factor_L1FastJet",
                              "factor_L2Relative"]),
    "trigger": (False, [*(p["name"] for p in MENU["path"]), "any_path"]),
    "trigger_pre": (False, [*(p["name"] for p in MENU["path"]), "any_path"]),
}
STAGES = ["doublets", "doublet_cnn", "topocluster", "antikt", "genjets", "rho", "jec", "trigger"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(output branches, input branches, report, command output) of one generate + run."""
    d = tmp_path_factory.mktemp("chain")
    events, out, rep = d / "events.root", d / "out.root", d / "report.json"
    runner = CliRunner(env={"COLUMNS": "200"})
    r = runner.invoke(cli, ["generate", "-n", str(N_EVENTS), "-p", "ttbar", "--pileup",
                            str(PILEUP), "--seed", "7", "-o", str(events), "--no-progress"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["run", str(events), "-b", "cpu", "--batch-size", "2", "-o", str(out),
                            "-r", str(rep), "--no-progress", "--keep", "*doublets"])
    assert r.exit_code == 0, r.output
    with uproot.open(out) as f:
        tree = f["Events"]
        assert tree.num_entries == N_EVENTS
        got = {name: tree[name].array(library="ak") for name in tree.keys()}
    with uproot.open(events) as f:
        tree = f["Events"]
        inputs = {name: tree[name].array(library="ak")
                  for name in ("run", "luminosityBlock", "event", "Event_n_pileup",
                               "nCaloCell", "CaloCell_id", "CaloCell_energy")}
    return got, inputs, json.loads(rep.read_text()), r.output


def _np(a) -> np.ndarray:
    return ak.to_numpy(a)


def _events(branches, name: str, columns: list[str]):
    """Per event, a dict of NumPy arrays of collection ``name``."""
    for i in range(N_EVENTS):
        yield {c: _np(branches[f"{name}_{c}"][i]) for c in columns}


def test_every_product_with_its_branches_and_events(run):
    out, inputs, report, _ = run
    want = set()
    for name, (jagged, columns) in PRODUCTS.items():
        want |= {io.branch_name(name, c, not jagged) for c in columns}
        if jagged:
            want.add(f"n{name}")
    assert set(out) == want, (sorted(set(out) - want), sorted(want - set(out)))
    for name, arr in out.items():
        assert len(arr) == N_EVENTS, name
    for name in ("run", "luminosityBlock", "event"):  # the input's identifiers, copied
        np.testing.assert_array_equal(_np(out[name]), _np(inputs[name]))
        assert out[name].type.content == inputs[name].type.content, name
    np.testing.assert_array_equal(_np(out["event"]), np.arange(1, N_EVENTS + 1))
    np.testing.assert_array_equal(_np(out["run"]), np.full(N_EVENTS, 7))  # the seed
    np.testing.assert_array_equal(_np(out["Event_n_pileup"]), _np(inputs["Event_n_pileup"]))
    assert list(report["stages"]) == ["read", *STAGES, "write"]
    assert report["events"] == N_EVENTS and report["backend"] == "cpu"
    for st in STAGES:  # batches of 2: two calls per stage, every event once
        assert (report["stages"][st]["calls"], report["stages"][st]["events"]) == (2, N_EVENTS), st


def test_counters_equal_the_jagged_lengths(run):
    out, inputs, _, _ = run
    for name, (jagged, columns) in PRODUCTS.items():
        if not jagged:
            for c in columns:
                assert out[io.branch_name(name, c)].ndim == 1, (name, c)
            continue
        n = _np(out[f"n{name}"])
        for c in columns:
            np.testing.assert_array_equal(_np(ak.num(out[f"{name}_{c}"], axis=1)), n,
                                          err_msg=f"{name}_{c}")
    # links have one row per row of what they link
    np.testing.assert_array_equal(_np(out["ncell_cluster"]), _np(inputs["nCaloCell"]))
    np.testing.assert_array_equal(_np(out["ncluster_jet"]), _np(out["nclusters"]))
    np.testing.assert_array_equal(_np(out["ncorrected_jets"]), _np(out["njets"]))
    assert (_np(out["nfiltered_doublets"]) <= _np(out["ndoublets"])).all()
    for key in ("nclusters", "njets", "ngenjets", "ndoublets", "nfiltered_doublets"):
        assert (_np(out[key]) > 0).all(), key


def test_filtered_doublets_are_doublets_in_order(run):
    out, _, _, _ = run
    from hltemu.cnn import load_model

    wp = np.float32(load_model("builtin:doublet_cnn").working_point)
    for d, f in zip(_events(out, "doublets", DOUBLET_COLUMNS),
                    _events(out, "filtered_doublets", [*DOUBLET_COLUMNS, "score"]), strict=True):
        rows = {(a, b): i for i, (a, b) in enumerate(zip(d["inner"], d["outer"], strict=True))}
        assert len(rows) == d["inner"].size  # a hit pair is one doublet
        idx = np.array([rows[(a, b)] for a, b in zip(f["inner"], f["outer"], strict=True)])
        assert (np.diff(idx) > 0).all()  # a subsequence, in the doublets' order
        for c in DOUBLET_COLUMNS:
            np.testing.assert_array_equal(f[c], d[c][idx], err_msg=c)
        assert (f["score"] >= wp).all() and (f["score"] <= 1).all()


def test_cells_clusters_and_jets_link_up(run):
    """cell -> cluster -> jet: the counts each link implies are the counts written; jets'
    n_constituents sum to the clustered clusters and their 4-vectors to their constituents'."""
    from hltemu.stages.topocluster import TopoclusterConfig, noise_graph

    out, inputs, report, _ = run
    # topocluster's pileup_mu = "auto": the generated pileup, from the input's provenance; the
    # clusters sum the cell energies less the mean energy of the event's own pileup estimate,
    # n = (rho - rho_zero_pileup) / rho_per_interaction from its calorimeter rho (the same as
    # the rho stage's), i.e. the offset of <mu> interactions times n / <mu>
    topo = TopoclusterConfig(**report["config"]["topocluster"])
    assert topo.pileup_mu == PILEUP and topo.subtract_pileup_mean
    assert topo.pileup_offset == "event"
    offset = noise_graph(topo).offset
    rho = _np(out["rho_rho"])
    n_scale = np.maximum(rho - topo.rho_zero_pileup, 0.0) / topo.rho_per_interaction / PILEUP
    clustered_any = 0
    for i, (cl, jets) in enumerate(zip(
            _events(out, "clusters", PRODUCTS["clusters"][1]),
            _events(out, "jets", JET_COLUMNS), strict=True)):
        cell_cluster = _np(out["cell_cluster_cluster"][i])
        cluster_jet = _np(out["cluster_jet_jet"][i])
        n_cl, n_jets = cl["energy"].size, jets["pt"].size
        # cells -> clusters
        assert cell_cluster.min() >= -1 and cell_cluster.max() == n_cl - 1
        np.testing.assert_array_equal(np.bincount(cell_cluster[cell_cluster >= 0],
                                                  minlength=n_cl), cl["n_cells"])
        cell_e = _np(inputs["CaloCell_energy"][i]).astype(np.float64) \
            - n_scale[i] * offset[_np(inputs["CaloCell_id"][i])]
        members = np.bincount(cell_cluster[cell_cluster >= 0],
                              weights=cell_e[cell_cluster >= 0], minlength=n_cl)
        scale = np.bincount(cell_cluster[cell_cluster >= 0],
                            weights=np.abs(cell_e[cell_cluster >= 0]), minlength=n_cl)
        assert (np.abs(members - cl["energy"]) <= 1e-12 * scale).all()
        seed_row = np.searchsorted(_np(inputs["CaloCell_id"][i]), cl["seed"])
        np.testing.assert_array_equal(cell_cluster[seed_row], np.arange(n_cl))
        # clusters -> jets
        assert cluster_jet.min() >= -1 and cluster_jet.max() == n_jets - 1
        assert (cluster_jet[cl["energy"] <= 0] == -1).all()  # noise clusters are not clustered
        per_jet = np.bincount(cluster_jet[cluster_jet >= 0], minlength=n_jets)
        np.testing.assert_array_equal(jets["n_constituents"], per_jet)
        assert jets["n_constituents"].sum() == (cluster_jet >= 0).sum()
        clustered_any += int((cluster_jet >= 0).sum())
        # E-scheme sums of massless clusters
        on = cluster_jet >= 0
        pt = cl["energy"] / np.cosh(cl["eta"])
        comps = {"E": cl["energy"], "px": pt * np.cos(cl["phi"]), "py": pt * np.sin(cl["phi"]),
                 "pz": pt * np.sinh(cl["eta"])}
        for c, v in comps.items():
            total = np.bincount(cluster_jet[on], weights=v[on], minlength=n_jets)
            scale = np.bincount(cluster_jet[on], weights=np.abs(v[on]), minlength=n_jets)
            assert (np.abs(total - jets[c]) <= 1e-12 * scale).all(), c
        np.testing.assert_allclose(jets["pt"], np.hypot(jets["px"], jets["py"]), rtol=1e-14)
        assert (np.diff(jets["pt"]) <= 0).all() and (jets["pt"] >= 5.0).all()  # antikt pt_min
    assert clustered_any > 0


def test_rho_and_corrected_jets(run):
    out, inputs, _, _ = run
    from test_rho import oracle_rho

    from hltemu.geometry import default_geometry
    from hltemu.stages.rho import RhoConfig

    cfg, calo = RhoConfig(), default_geometry().calo
    rho = _np(out["rho_rho"])
    for i, (jets, cj) in enumerate(zip(
            _events(out, "jets", JET_COLUMNS),
            _events(out, "corrected_jets", PRODUCTS["corrected_jets"][1]), strict=True)):
        # rho from the input's calorimeter towers, by the plain-loop oracle of tests/test_rho.py
        want = oracle_rho(_np(inputs["CaloCell_id"][i]), _np(inputs["CaloCell_energy"][i]), calo,
                          cfg)
        assert rho[i] == pytest.approx(want, rel=1e-12, abs=1e-12)
        # row i of corrected_jets is row i of jets, scaled by its factor
        np.testing.assert_array_equal(cj["pt_raw"], jets["pt"])
        np.testing.assert_array_equal(cj["eta"], jets["eta"])
        np.testing.assert_array_equal(cj["n_constituents"], jets["n_constituents"])
        # the default levels, the emulator's own L1FastJet then L2Relative
        np.testing.assert_array_equal(cj["factor"],
                                      cj["factor_L1FastJet"] * cj["factor_L2Relative"])
        for c in ("pt", "E", "px", "py", "pz", "mass"):
            np.testing.assert_allclose(cj[c], jets[c] * cj["factor"], rtol=1e-14, err_msg=c)
        assert ((cj["factor_L2Relative"] > 0.5) & (cj["factor_L2Relative"] < 3.0)).all()
        assert ((cj["factor_L1FastJet"] > 0) & (cj["factor_L1FastJet"] <= 1.5)).all()
    assert (rho > 0).all()


def _decide(path: dict, pt: np.ndarray, eta: np.ndarray, n_filtered: int, entry: int | None
            ) -> bool:
    """A menu path on one event, from the menu's own description (hltemu/data/menu.toml);
    ``entry=None``: before the prescaler."""
    prescale = path.get("prescale", 1)
    if entry is not None and (prescale == 0 or (entry + 1) % prescale):  # every N-th, from 1
        return False
    kind = path["type"]
    if kind == "doublets":
        assert path["collection"] == "filtered_doublets"
        return n_filtered >= path["n_min"]
    if kind == "ht":
        good = (pt >= path["jet_pt_min"]) & (np.abs(eta) <= path.get("eta_max", 3.0))
        return pt[good].sum() >= path["ht_min"]
    good = (pt >= path["pt_min"]) & (np.abs(eta) <= path.get("eta_max", 3.0))
    return good.sum() >= (path["n_min"] if kind == "multi_jet" else 1)


def test_trigger_bits_follow_the_corrected_jets(run):
    out, _, report, text = run
    bits = {}
    for p in MENU["path"]:
        b = out[f"trigger_{p['name']}"]
        assert str(b.type.content) == "bool", p["name"]
        bits[p["name"]] = _np(b)
    n_filtered = _np(out["nfiltered_doublets"])
    pre = {p["name"]: _np(out[f"trigger_pre_{p['name']}"]) for p in MENU["path"]}
    for i, cj in enumerate(_events(out, "corrected_jets", ["pt", "eta"])):
        for p in MENU["path"]:
            want = _decide(p, cj["pt"], cj["eta"], int(n_filtered[i]), i)
            assert bits[p["name"]][i] == want, (i, p["name"], cj["pt"][:4])
            want_pre = _decide(p, cj["pt"], cj["eta"], int(n_filtered[i]), None)
            assert pre[p["name"]][i] == want_pre, (i, p["name"], cj["pt"][:4])
        # a single-jet path fires iff some corrected jet passes its threshold (unprescaled)
        passing = (cj["pt"] >= 260.0) & (np.abs(cj["eta"]) <= 3.0)
        assert bits["HLT_CaloJet260"][i] == passing.any()
    any_path = _np(out["trigger_any_path"])
    np.testing.assert_array_equal(any_path, np.logical_or.reduce(list(bits.values())))
    # not trivial: every kind of path both fires and does not, in some events
    for kind in ("single_jet", "multi_jet", "ht", "doublets"):
        both = [p["name"] for p in MENU["path"] if p["type"] == kind
                and bits[p["name"]].any() and not bits[p["name"]].all()]
        assert both, f"no {kind} path both fires and not: choose another seed"
    assert not bits["HLT_CaloJet40"].any()  # prescale 10: the 10th event would be the first
    assert pre["HLT_CaloJet40"].any()  # before its prescaler the path fires
    # the report's and the printed accept counts are the sums of the bits, with the prescale
    accepts = report["counters"]["trigger accepts"]
    before = report["counters"]["trigger accepts before prescale"]
    pre_any = _np(out["trigger_pre_any_path"])
    rows = {cells[0]: cells[1:] for line in text.splitlines() if line.startswith("│")
            for cells in [[c.strip() for c in line.strip("│").split("│")]]}
    prescales = {p["name"]: p.get("prescale", 1) for p in MENU["path"]}
    for name, b in {**bits, "any_path": any_path}.items():
        k_pre = int((pre[name] if name in pre else pre_any).sum())
        assert accepts[name] == int(b.sum()) and before[name] == k_pre, name
        ps = prescales.get(name)
        shown_ps = "" if ps is None else "off (0)" if ps == 0 else "1" if ps == 1 else f"1/{ps}"
        assert rows[name] == [shown_ps, f"{k_pre} ({100 * k_pre / b.size:.2f}%)",
                              str(int(b.sum())), f"{100 * b.mean():.2f}%"], name
