"""``hltemu derive-jec``: matching, the statistics, the fits on synthetic paired samples with a
known response and offset, the written files against hltemu's, correctionlib's and coffea's
readers, and the command end to end."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from jec_synthetic import OFFSET_P1, make_events, to_sample, write_run_output

from hltemu import jec
from hltemu.cli import cli
from hltemu.jec.closure import closure_report
from hltemu.jec.derive import (
    DeriveError,
    apply_l1,
    cliffs,
    derive,
    l1_offset,
    load_sample,
    write_corrections,
)
from hltemu.jetmatch import delta_phi, match_jets, median_with_error, weighted_quantile


# -- matching and statistics ---------------------------------------------------------------------
def _greedy_reference(ev_a, eta_a, phi_a, ev_b, eta_b, phi_b, max_dr):
    """Event by event, all pairs sorted by Delta R, each jet used once (the plain rule)."""
    pairs = []
    for e in np.union1d(ev_a, ev_b):
        ia, ib = np.flatnonzero(ev_a == e), np.flatnonzero(ev_b == e)
        cand = []
        for a in ia:
            for b in ib:
                dr = np.hypot(eta_a[a] - eta_b[b], delta_phi(phi_a[a], phi_b[b]))
                if dr < max_dr:
                    cand.append((dr, a, b))
        used_a, used_b = set(), set()
        for _, a, b in sorted(cand):
            if a not in used_a and b not in used_b:
                used_a.add(a)
                used_b.add(b)
                pairs.append((a, b))
    return sorted(pairs)


@pytest.mark.parametrize("seed", range(6))
def test_matching_equals_the_plain_rule(seed):
    rng = np.random.default_rng(seed)
    n_ev = 40
    ev_a = np.sort(rng.integers(0, n_ev, 200))
    ev_b = np.sort(rng.integers(0, n_ev, 150))
    eta_a, eta_b = rng.uniform(-1, 1, 200), rng.uniform(-1, 1, 150)
    phi_a = rng.uniform(-np.pi, np.pi, 200)
    phi_b = np.where(rng.random(150) < 0.3, rng.choice([-3.1, 3.1], 150),
                     rng.uniform(-np.pi, np.pi, 150))  # across the phi wrap
    ia, ib = match_jets(ev_a, eta_a, phi_a, ev_b, eta_b, phi_b, 0.5, n_ev)
    assert ia.size > 20
    assert sorted(zip(ia.tolist(), ib.tolist(), strict=True)) == _greedy_reference(
        ev_a, eta_a, phi_a, ev_b, eta_b, phi_b, 0.5)


def test_matching_refuses_unsorted_events():
    with pytest.raises(ValueError, match="sorted"):
        match_jets(np.array([1, 0]), np.zeros(2), np.zeros(2), np.array([0]), np.zeros(1),
                   np.zeros(1), 0.2)


def test_weighted_quantile_and_median_error():
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 0.1, 4001)
    q = weighted_quantile(x, np.ones_like(x), np.array([0.16, 0.5, 0.84]))
    np.testing.assert_allclose(q, np.quantile(x, [0.16, 0.5, 0.84], method="hazen"), rtol=1e-12)
    # integer weights == repeated entries
    w = rng.integers(1, 4, x.size)
    np.testing.assert_allclose(weighted_quantile(x, w, 0.5),
                               np.quantile(np.repeat(x, w), 0.5, method="hazen"), atol=2e-4)
    m = median_with_error(x, np.ones_like(x))
    assert m["n_eff"] == pytest.approx(x.size)
    assert m["width"] == pytest.approx(0.1, rel=0.05)
    assert m["error"] == pytest.approx(1.2533 * 0.1 / np.sqrt(x.size), rel=0.05)
    # the error is right: medians of 200 independent samples scatter by it
    meds = [np.median(rng.normal(1.0, 0.1, 400)) for _ in range(200)]
    assert np.std(meds) == pytest.approx(median_with_error(x[:400], np.ones(400))["error"],
                                         rel=0.25)


# -- the fits on synthetic samples ---------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic():
    derivation = to_sample([make_events(3000, 0, 11), make_events(3000, 40, 11),
                            make_events(3000, 20, 13), make_events(3000, 0, 13)])
    held_out = to_sample([make_events(2500, 0, 21), make_events(2500, 40, 21),
                          make_events(2500, 30, 21)])
    return derivation, held_out, derive(derivation)


def test_l1_reproduces_the_offset(synthetic):
    sample, _, result = synthetic
    for f in result.l1:
        rho = np.linspace(*f.rho_range, 5)[1:-1]
        for pt in (20.0, 100.0):
            fitted = l1_offset(f.params, rho, np.full_like(rho, pt))
            true = OFFSET_P1 * rho
            np.testing.assert_allclose(fitted, true, rtol=0.04, err_msg=str(f.eta))


def test_l2_fits_have_no_cliffs_and_use_enough_jets(synthetic):
    _, _, result = synthetic
    for f in result.l2:
        assert cliffs(f) == [], f.eta
        assert f.n_jets >= 300
        assert f.chi2 / max(f.ndf, 1) < 4.0, (f.eta, f.chi2, f.ndf)


def test_closure_on_held_out_events(synthetic, tmp_path):
    """Median response after L1 + L2Relative within 3% of 1 for truth pT 30-500 at every
    pileup, 30 included (not in the derivation); the raw response is far from it."""
    _, held_out, result = synthetic
    paths = write_corrections(result, tmp_path)
    chain = jec.load_chain((str(paths["L1FastJet"]), str(paths["L2Relative"])))
    rep = closure_report(held_out, chain)
    last = rep["levels"][-1]
    checked = 0
    for b in rep["bins"]:
        if not (30 <= b["pt"][0] and b["pt"][1] <= 500):
            continue
        cor = b["levels"][last]
        assert abs(cor["median"] - 1) < 0.03 + 2 * cor["error"], b
        checked += 1
    assert checked == 3 * (4 + 4 + 3)  # forward: 30-50, 50-100, 100-500 GeV
    raw_low = [b["levels"]["raw"]["median"] for b in rep["bins"]
               if b["pileup"] == 0 and b["pt"] == [30.0, 50.0]]
    assert max(raw_low) < 0.8
    # the synthetic smearing is a constant 10%: the N, S, C fit finds C ~ 0.1
    for r in rep["resolution"]:
        if r["pileup"] == 0:
            assert r["fit"]["C"] == pytest.approx(0.1, abs=0.015), r["eta"]
    assert all(abs(d["difference"]) < 0.04 for d in rep["pileup_dependence"]
               if d["pt"][0] >= 30 and d["pt"][1] <= 500)


def test_written_files_agree_across_readers(synthetic, tmp_path):
    """hltemu's text reader, its correctionlib reader, correctionlib's evaluator and coffea's
    FactorizedJetCorrector give the same factors (the parameters are float32 values, as the
    tables of CMSSW and coffea hold them)."""
    _, held_out, result = synthetic
    paths = write_corrections(result, tmp_path)
    l1 = jec.read_jec_text(paths["L1FastJet"])
    l2 = jec.read_jec_text(paths["L2Relative"])
    rng = np.random.default_rng(4)
    n = 5000
    pts = {"JetEta": rng.uniform(-2.99, 2.99, n), "JetPt": np.exp(rng.uniform(np.log(6),
                                                                              np.log(3000), n)),
           "JetA": rng.uniform(0.3, 0.7, n), "Rho": rng.uniform(0, 40, n)}
    ours = jec.JecChain([l1, l2]).correct_reference(pts)[2]
    (j1,) = jec.read_correctionlib(paths["correctionlib"], jec.correction_name(l1))
    (j2,) = jec.read_correctionlib(paths["correctionlib"], jec.correction_name(l2))
    np.testing.assert_allclose(j1.evaluate(pts), ours[:, 0], rtol=1e-12)
    np.testing.assert_allclose(j2.evaluate({**pts, "JetPt": pts["JetPt"] * ours[:, 0]}),
                               ours[:, 1], rtol=1e-12)
    correctionlib = pytest.importorskip("correctionlib")
    cset = correctionlib.CorrectionSet.from_file(str(paths["correctionlib"]))
    stack = cset.compound[f"{result.settings.era}_{result.settings.algo}"]
    total = stack.evaluate(*[pts[i.name] for i in stack.inputs])
    np.testing.assert_allclose(total, ours.prod(axis=1), rtol=1e-9)
    described = json.loads(json.loads(paths["correctionlib"].read_text())["description"])
    assert described["R"] == 0.4 and described["format"] == "hltemu-jec-derivation/2"
    assert_coffea_agrees([paths["L1FastJet"], paths["L2Relative"]], pts, ours.prod(axis=1),
                         (*result.settings.l1_eta_edges, *result.settings.l2_eta_edges))


def assert_coffea_agrees(files, pts, ours, eta_edges):
    """coffea's FactorizedJetCorrector reads the text ``files`` itself; its total factor equals
    ``ours`` to 1e-6 away from the |eta| bin edges (which coffea compares in float32)."""
    pytest.importorskip("coffea")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from coffea.jetmet_tools import FactorizedJetCorrector
        from coffea.lookup_tools import extractor

        ext = extractor()
        ext.add_weight_sets([f"* * {f}" for f in files])
        ext.finalize()
        ev = ext.make_evaluator()
        names = [f.name.removesuffix(".txt") for f in files]
        corrector = FactorizedJetCorrector(**{nm: ev[nm] for nm in names})
        theirs = np.asarray(corrector.getCorrection(**{k: pts[k] for k in corrector.signature}))
    away = np.ones(ours.shape[0], dtype=bool)
    for e in eta_edges:
        away &= np.abs(np.abs(pts["JetEta"]) - e) > 1e-5
    np.testing.assert_allclose(theirs[away], ours[away], rtol=1e-6)
    assert away.mean() > 0.99


# -- the command ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_outputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    files = {}
    for name, (n, pu, seed) in {"d0": (2500, 0, 11), "d40": (2500, 40, 11),
                                "d20": (2500, 20, 13), "d20_0": (2500, 0, 13),
                                "v0": (1500, 0, 21), "v40": (1500, 40, 21)}.items():
        files[name] = d / f"{name}.root"
        write_run_output(files[name], make_events(n, pu, seed, run=seed), seed,
                         pfjets_scale=0.8)
    return files


def test_derive_jec_command(run_outputs, tmp_path):
    f = run_outputs
    out = tmp_path / "jec"
    r = CliRunner().invoke(cli, ["derive-jec", str(f["d0"]), str(f["d40"]), str(f["d20"]),
                                 str(f["d20_0"]), "--validate", str(f["v0"]), "--validate",
                                 str(f["v40"]), "-o", str(out), "--no-progress", "--no-plots"])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["hltemu_V2_MC.json", "hltemu_V2_MC_L1FastJet_AK4Calo.txt",
                     "hltemu_V2_MC_L2Relative_AK4Calo.txt", "hltemu_V2_MC_closure.json",
                     "hltemu_V2_MC_derivation.json"]
    closure = json.loads((out / "hltemu_V2_MC_closure.json").read_text())
    assert set(closure) == {"derivation", "held-out"}
    assert closure["held-out"]["pileups"] == [0.0, 40.0]
    rec = json.loads((out / "hltemu_V2_MC_derivation.json").read_text())
    assert rec["pileups"] == [0.0, 20.0, 40.0] and rec["R"] == 0.4
    assert [g["seed"] for g in rec["generation"]] == [11, 11, 13, 13]
    assert "closure (held-out)" in r.output
    # the corrections run in the chain's jec stage
    chain = jec.load_chain((str(out / "hltemu_V2_MC_L1FastJet_AK4Calo.txt"),
                            str(out / "hltemu_V2_MC_L2Relative_AK4Calo.txt")))
    assert chain.names == ["L1FastJet", "L2Relative"]


def test_derive_jec_plots(run_outputs, tmp_path):
    pytest.importorskip("mplhep")
    f = run_outputs
    r = CliRunner().invoke(cli, ["derive-jec", str(f["d0"]), str(f["d40"]), str(f["d20"]),
                                 str(f["d20_0"]), "-o", str(tmp_path), "--no-progress"])
    assert r.exit_code == 0, r.output
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["hltemu_V2_MC_closure_derivation.png", "hltemu_V2_MC_l1_offset.png",
                    "hltemu_V2_MC_l2_fit.png", "hltemu_V2_MC_resolution_derivation.png"]
    assert all((tmp_path / p).stat().st_size > 10_000 for p in pngs)


def test_derive_jec_errors(run_outputs, tmp_path):
    f = run_outputs
    runner = CliRunner()
    # no pileup-0 partner files
    r = runner.invoke(cli, ["derive-jec", str(f["d40"]), "-o", str(tmp_path), "--no-progress"])
    assert r.exit_code == 1 and "no pileup-0 input" in r.output
    # held-out events that are derivation events
    r = runner.invoke(cli, ["derive-jec", str(f["d0"]), str(f["d40"]), "--validate",
                            str(f["d40"]), "-o", str(tmp_path), "--no-progress"])
    assert r.exit_code == 1 and "also derivation events" in r.output
    # a file without the collections
    from hltemu.cli import builtin_sample

    r = runner.invoke(cli, ["derive-jec", str(builtin_sample()), "-o", str(tmp_path),
                            "--no-progress"])
    assert r.exit_code == 1
    assert "no collection 'jets', 'genjets', 'rho'" in r.output
    assert "--stages topocluster,antikt,genjets,rho" in r.output
    assert list(tmp_path.iterdir()) == []


def test_load_sample_refuses_mixed_radii(run_outputs, tmp_path):
    import uproot  # noqa: F401

    from hltemu.io.provenance import read_provenance

    prov = read_provenance(run_outputs["d0"])
    assert prov["config"]["antikt"]["R"] == 0.4
    sample = load_sample([run_outputs["d0"], run_outputs["d40"]])
    assert sample.pileups() == [0.0, 40.0]
    assert sample.weight.sum() == pytest.approx(2 * 2.0, rel=1e-6)  # sigma / weight_sum per file
    with pytest.raises(DeriveError, match="no input files"):
        load_sample([])
    calo_only = tmp_path / "calo_only.root"
    write_run_output(calo_only, make_events(100, 0, 31), 31)
    with pytest.raises(DeriveError, match="no collection 'pfjets', 'pfrho'.*--stages tracks,"
                       "vertices,topocluster,pfcandidates,pfjets,pfrho,genjets`"):
        load_sample([calo_only], jets="pfjets")
    with pytest.raises(DeriveError, match="derive-jec corrects jets or pfjets"):
        load_sample([run_outputs["d0"]], jets="clusters")


def test_weights_are_the_normalised_generator_weights_only_when_asked(run_outputs):
    from hltemu.jec.derive import DeriveSettings, jet_weights

    sample = load_sample([run_outputs["d0"], run_outputs["v0"]])
    rows = np.array([0, 1, 2600, 2601])
    np.testing.assert_array_equal(jet_weights(sample, rows, DeriveSettings()), np.ones(4))
    # each file: Event_weight 1 x sigma 2.0 / weight_sum (its events)
    np.testing.assert_allclose(jet_weights(sample, rows, DeriveSettings(weighted=True)),
                               [2 / 2500, 2 / 2500, 2 / 1500, 2 / 1500])


def test_jec_notes_corrections_derived_with_other_settings(synthetic, tmp_path):
    """The jec stage's plan notes a level derived with another jet radius, rho, noise mode or
    pileup range than the run's; none when they agree."""
    from hltemu.pipeline import config_from_dict, plan

    _, _, result = synthetic
    result.inputs["rho"] = {"eta_max": 3.0, "grid_spacing": 0.55}
    result.inputs["noise_mode"] = {"pileup_offset": "event", "subtract_pileup_mean": True}
    paths = write_corrections(result, tmp_path)
    levels = [str(paths["L1FastJet"]), str(paths["L2Relative"])]

    def notes(cfg, stages=("antikt", "rho", "topocluster", "jec")):
        p = plan(list(stages), ["CaloCell", "clusters"], config_from_dict(
            {"jec": {"levels": levels}, "topocluster": {"pileup_mu": 20.0}, **cfg}))
        return [n for n in p.notes if n.startswith("jec:")]

    assert notes({}) == []
    (n,) = notes({"antikt": {"R": 0.6}})
    assert "jets of R = 0.4, this run's are R = 0.6" in n and levels[0] in n
    assert levels[1] in n  # one note for both levels of one derivation
    (n,) = notes({"rho": {"grid_spacing": 0.6}})
    assert "grid_spacing" in n
    (n,) = notes({"topocluster": {"pileup_mu": 20.0, "pileup_offset": "mean"}})
    assert "pileup_offset = 'event' (this run: 'mean')" in n
    (n,) = notes({"topocluster": {"pileup_mu": 100.0}})
    assert "pileup 0-40, this run's <mu> is 100 (extrapolated)" in n
    result.inputs["jets"] = "pfjets (stage pfjets)"
    pf = write_corrections(result, tmp_path / "pf")
    levels[:] = [str(pf["L1FastJet"]), str(pf["L2Relative"])]
    (n,) = notes({})
    assert "pfjets, not the calorimeter jets that stage jec corrects" in n


def test_the_shipped_default_corrections():
    """The default [jec] levels are derive-jec's output: the record beside them says how they
    were derived; the L2Relative has no cliffs (C(pT + 1 GeV) / C(pT) within 5% from 8 GeV) in
    any |eta| bin, and hltemu's reader and its correctionlib copy agree."""
    from hltemu.jec.derive import L2Fit
    from hltemu.jec.record import derivation_record
    from hltemu.stages.jec import JecConfig

    levels = JecConfig().levels
    record = derivation_record(levels[0])
    assert record is not None and record == derivation_record(levels[1])
    assert record["R"] == 0.4 and record["pileups"] == [0.0, 20.0, 50.0]
    assert record["noise_mode"]["pileup_offset"] == "event"
    assert {g["seed"] for g in record["generation"]} == {1001, 1002, 1003, 1004, 1005, 1006}
    full = json.loads((jec.chain.builtin_path("hltemu_V2_MC_derivation.json")).read_text())
    for f in full["l2"]:
        fit = L2Fit(**{**f, "eta": tuple(f["eta"]), "pt_range": tuple(f["pt_range"])})
        assert cliffs(fit) == [], fit.eta
        assert fit.n_jets >= 300
    text = jec.load_chain(levels)
    lib = jec.load_chain((f"{levels[0].rsplit('_L1FastJet', 1)[0]}.json#hltemu_V2_MC_AK4Calo",))
    rng = np.random.default_rng(9)
    pts = {"JetEta": rng.uniform(-2.99, 2.99, 3000), "JetPt": rng.uniform(6, 2000, 3000),
           "JetA": rng.uniform(0.3, 0.7, 3000), "Rho": rng.uniform(0, 60, 3000)}
    np.testing.assert_allclose(lib.correct_reference(pts)[0], text.correct_reference(pts)[0],
                               rtol=1e-12)
    settings = full["settings"]
    assert_coffea_agrees([jec.chain.builtin_path(e.removeprefix("builtin:")) for e in levels],
                         pts, text.correct_reference(pts)[2].prod(axis=1),
                         (*settings["l1_eta_edges"], *settings["l2_eta_edges"]))


def test_l1_leaves_pileup_0_jets_as_they_are(synthetic):
    """The offset is zero at pileup 0 by definition: the fit is anchored at the pileup-0
    events' median rho, so L1 changes a pileup-0 jet by far less than its offset at pileup."""
    sample, _, result = synthetic
    at0 = sample.pileup[sample.j_ev] == 0
    args = (sample.j_pt[at0], sample.j_eta[at0], sample.j_area[at0], sample.rho[sample.j_ev][at0])
    shift = apply_l1(result.l1, result.settings, *args) / args[0] - 1
    assert np.abs(np.median(shift)) < 1e-3
    assert np.quantile(np.abs(shift), 0.99) < 0.01
    for f in result.l1:
        assert f.params[2] == pytest.approx(np.median(sample.rho[sample.pileup == 0]), rel=1e-6)


def test_pileup_0_events_with_the_same_ids_are_refused():
    """Two pileup-0 files numbered alike would pair a pileup event with either: an error naming
    both files, not a silent choice."""
    sample = to_sample([make_events(200, 0, 11, run=1), make_events(200, 0, 13, run=1),
                        make_events(200, 40, 11, run=1)])
    with pytest.raises(DeriveError, match="synthetic0 and synthetic1"):
        derive(sample)


def test_the_shipped_pfjets_corrections():
    """hltemu_PF_V2_MC (derive-jec --jets pfjets) is shipped with its record: derived for
    pfjets, with R 0.4, the derivation's pileups and the particle-flow rho, and its L2Relative
    has no cliffs."""
    from hltemu.jec.derive import L2Fit
    from hltemu.jec.record import derivation_record

    levels = ("builtin:hltemu_PF_V2_MC_L1FastJet_AK4PFchs.txt",
              "builtin:hltemu_PF_V2_MC_L2Relative_AK4PFchs.txt")
    assert list(jec.load_chain(levels).names) == ["L1FastJet", "L2Relative"]
    record = derivation_record(levels[0])
    assert record is not None and record["jets"] == "pfjets (stage pfjets)"
    assert record["R"] == 0.4 and record["pileups"] == [0.0, 20.0, 50.0]
    assert record["rho_collection"] == "pfrho"
    full = json.loads(jec.chain.builtin_path("hltemu_PF_V2_MC_derivation.json").read_text())
    for f in full["l2"]:
        fit = L2Fit(**{**f, "eta": tuple(f["eta"]), "pt_range": tuple(f["pt_range"])})
        assert cliffs(fit) == [], fit.eta


def test_reference_pfjets_calibrates_to_the_corrected_offline_jets(run_outputs, tmp_path):
    """--reference pfjets: the reference jets are the offline pfjets with their corrections
    applied (here pT x 0.8, corrected by a flat 1.25 back to the truth), so the HLT correction
    derived against them equals the one derived against truth; a file without pfjets and a
    reference equal to the jets corrected are refused."""
    flat = tmp_path / "flat_L2Relative_AK4PFchs.txt"
    flat.write_text("{1 JetEta 1 JetPt [0] Correction L2Relative}\n-5.191 5.191 3 1 14000 1.25\n")
    files = [run_outputs[k] for k in ("d0", "d40", "d20", "d20_0")]
    truth = load_sample(files)
    offline = load_sample(files, reference="pfjets", reference_levels=[str(flat)])
    assert offline.reference == "pfjets"
    np.testing.assert_allclose(offline.t_pt, truth.t_pt, rtol=1e-12)
    a, b = derive(truth), derive(offline)
    from hltemu.jec.derive import l2_correction

    for fa, fb in zip(a.l2, b.l2, strict=True):
        pts = np.geomspace(*fa.pt_range, 20)
        np.testing.assert_allclose(l2_correction(fb.params, pts), l2_correction(fa.params, pts),
                                   rtol=1e-4)
    assert b.inputs["truth"] == "pfjets (offline, corrected)"
    with pytest.raises(DeriveError, match="reference 'jets'"):
        load_sample(files, reference="jets")
    with pytest.raises(DeriveError, match="reference 'pfjets'"):
        load_sample(files, jets="pfjets", reference="pfjets")
