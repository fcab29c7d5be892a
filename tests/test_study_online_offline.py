"""``hltemu study online-offline``: matching, statistics and fits on inputs with known answers,
the command on the real Run-3 NanoAOD test file (200 ttbar events with TrigObj), and on a
synthetic hltemu output with known HLT-offline relations (tests/study_synthetic.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from study_synthetic import (
    CENTRAL_RESPONSE,
    FORWARD_RESPONSE,
    L1_FACTOR,
    OFFLINE_JEC_TEXT,
    OFFLINE_SCALE,
    write_study_output,
)

from hltemu.batch import counts_to_offsets
from hltemu.cli import builtin_sample, cli
from hltemu.study.fits import (
    erf_turn_on,
    fit_turn_on,
    gaussian_core_fit,
    turn_on_point,
)
from hltemu.study.online_offline import (
    Jets,
    StudyError,
    StudySample,
    StudySettings,
    check_classification,
    classify_hlt_jets,
    leading_pt,
    match,
    path_agreement,
    read_inputs,
    read_nanoaod,
    reference_turn_on,
    response_bins,
    run_study,
    tag_and_probe,
)
from hltemu.study.threshold_width import match_threshold

DATA = Path(__file__).resolve().parent / "data"
RUN3 = DATA / "nanoAOD_v15_Run3_ttbar_TrigObj.root"
NO_TRIGOBJ = DATA / "nanoAOD_2015_CMS_Open_Data_ttbar.root"


def jets(per_event: list[list[tuple[float, float, float]]]) -> Jets:
    """Jets from ``[[(pt, eta, phi), ...] per event]``."""
    flat = [j for ev in per_event for j in ev]
    arr = np.array(flat, dtype=np.float64).reshape(-1, 3)
    return Jets(counts_to_offsets([len(ev) for ev in per_event]), arr[:, 0], arr[:, 1],
                arr[:, 2])


def sample(offline: Jets, hlt: Jets, paths: dict[str, list[bool]]) -> StudySample:
    return StudySample(files=[], offline=offline, hlt=hlt,
                      paths={k: np.array(v, dtype=bool) for k, v in paths.items()}, rho=None,
                      rho_branch=None, offline_algorithm="test")


# -- matching and response ---------------------------------------------------------------------
def test_match_is_one_to_one_closest_first():
    # event 0: HLT jet A (eta 0.05) is closest to offline 1 (eta 0.06), so offline 0 (eta 0.0)
    # gets B (eta -0.1) although A is its nearest too; event 1: nothing within 0.2
    off = jets([[(100, 0.0, 0.0), (90, 0.06, 0.0)], [(50, 1.0, 1.0)]])
    hlt = jets([[(95, 0.05, 0.0), (80, -0.1, 0.0)], [(40, 1.0, 1.5)]])
    assert match(off, hlt, 0.2).tolist() == [1, 0, -1]
    # azimuth wraps: phi = pi - 0.05 and -pi + 0.05 are 0.1 apart
    off = jets([[(100, 0.0, math.pi - 0.05)]])
    hlt = jets([[(100, 0.0, -math.pi + 0.05)]])
    assert match(off, hlt, 0.2).tolist() == [0]


def test_response_bins_recover_a_known_scale_and_efficiency():
    rng = np.random.default_rng(7)
    n_ev = 4000
    pt = rng.uniform(60, 95, n_ev)
    eta = rng.uniform(-1.2, 1.2, n_ev)
    phi = rng.uniform(-np.pi, np.pi, n_ev)
    off = Jets(counts_to_offsets(np.ones(n_ev)), pt, eta, phi)
    # HLT jet: 1.1 x offline with a 5 % Gaussian smearing plus 10 % far tail at 0.5; every
    # fourth event has none
    scale = 1.1 * (1 + 0.05 * rng.normal(size=n_ev))
    tail = rng.random(n_ev) < 0.1
    scale[tail] = rng.uniform(0.4, 0.6, tail.sum())
    keep = np.arange(n_ev) % 4 != 0
    hlt = Jets(counts_to_offsets(keep.astype(int)), (pt * scale)[keep], eta[keep], phi[keep])
    settings = StudySettings(eta_edges=(0.0, 1.3), pt_edges=(60.0, 95.0))
    (row,) = response_bins(off, hlt, match(off, hlt, 0.2), settings, storage_threshold=25.0)
    assert row["n_offline"] == n_ev and row["n"] == keep.sum()
    assert row["match_efficiency"] == pytest.approx(0.75)
    assert row["core_status"] == "ok"
    assert abs(row["core_mean"] - 1.1) < 3 * row["core_mean_error"]
    assert abs(row["sigma"] - 0.055) < 3 * row["sigma_error"]
    # the mean is pulled down by the tail; the core is not
    assert row["mean"] < 1.1 - 10 * row["core_mean_error"]
    assert row["flagged"] is False
    (row,) = response_bins(off, hlt, match(off, hlt, 0.2), settings, storage_threshold=31.0)
    assert row["flagged"] is True  # 60 GeV < 2 x 31 GeV


# -- fits --------------------------------------------------------------------------------------
def test_gaussian_core_fit_ignores_a_tail_and_its_errors_cover():
    rng = np.random.default_rng(3)
    v = np.concatenate([rng.normal(0.95, 0.08, 20000), rng.uniform(0.2, 0.75, 3000)])
    f = gaussian_core_fit(v)
    assert f["status"] == "ok"
    assert abs(f["mean"] - 0.95) < 3 * f["mean_error"]
    assert abs(f["sigma"] - 0.08) < 3 * f["sigma_error"]
    assert v.std() > 0.12  # what a plain RMS would have said
    # pulls over toys: the errors are the M-estimator's (a plain RMS / sqrt(n) would give
    # pulls 1.8 times too wide for the mean, 3 times for sigma)
    pulls_mu, pulls_sigma = [], []
    for seed in range(150):
        r = np.random.default_rng(100 + seed)
        toy = gaussian_core_fit(np.concatenate([r.normal(1.0, 0.1, 300),
                                                r.uniform(0.2, 0.6, 40)]))
        assert toy["status"] == "ok"
        pulls_mu.append((toy["mean"] - 1.0) / toy["mean_error"])
        pulls_sigma.append((toy["sigma"] - 0.1) / toy["sigma_error"])
    assert 0.8 < np.std(pulls_mu) < 1.2 and abs(np.mean(pulls_mu)) < 0.25
    assert 0.8 < np.std(pulls_sigma) < 1.25 and abs(np.mean(pulls_sigma)) < 0.3


def test_gaussian_core_fit_with_too_few_entries_gives_no_numbers():
    f = gaussian_core_fit([1.0, 1.1, 0.9])
    assert f["status"] == "too few events"
    assert f["mean"] is None and f["sigma"] is None


def test_turn_on_fit_recovers_mu_sigma_plateau():
    rng = np.random.default_rng(11)
    x = rng.uniform(20, 200, 5000)
    passed = rng.random(x.size) < erf_turn_on(x, 80.0, 10.0, 0.97)
    f = fit_turn_on(x, passed)
    assert f["status"] == "ok" and not f["plateau_fixed"]
    assert abs(f["mu"] - 80) < 3 * f["mu_error"]
    assert abs(f["sigma"] - 10) < 3 * f["sigma_error"]
    assert abs(f["plateau"] - 0.97) < 3 * f["plateau_error"]
    # points are fractions of 1, not of the plateau: 50 % is above mu when the plateau < 1
    assert f["p50"] == pytest.approx(turn_on_point(0.5, f["mu"], f["sigma"], f["plateau"]))
    assert f["p50"] > f["mu"]
    assert abs(f["p50"] - turn_on_point(0.5, 80, 10, 0.97)) < 3 * f["p50_error"]
    assert f["p99"] is None and "n/a" in f["p99_note"]  # a 0.97 plateau never reaches 99 %
    assert f["width"] == pytest.approx(f["p95"] - f["p50"])
    assert 0 < f["width_error"] < f["width"]


def test_turn_on_fit_at_full_plateau():
    rng = np.random.default_rng(12)
    x = rng.uniform(20, 200, 3000)
    passed = rng.random(x.size) < erf_turn_on(x, 110.0, 15.0)
    f = fit_turn_on(x, passed)
    assert f["status"] == "ok" and f["plateau_fixed"] and f["plateau"] == 1.0
    assert f["plateau_error"] is None
    assert abs(f["mu"] - 110) < 3 * f["mu_error"]
    assert abs(f["sigma"] - 15) < 3 * f["sigma_error"]
    assert f["p95"] == pytest.approx(f["mu"] + 1.6449 * f["sigma"], rel=1e-4)
    assert f["p99"] == pytest.approx(f["mu"] + 2.3263 * f["sigma"], rel=1e-4)
    assert f["p50_error"] == pytest.approx(f["mu_error"], rel=1e-3)


def test_turn_on_fit_with_too_few_events_gives_no_numbers():
    rng = np.random.default_rng(13)
    x = rng.uniform(20, 200, 40)  # about 9 events within mu +- 2 sigma
    f = fit_turn_on(x, rng.random(x.size) < erf_turn_on(x, 80.0, 10.0))
    assert f["status"] == "too few events" and f["n_events"] == 40
    assert f["n_rising"] < 20 and "20" in f["reason"]
    assert all(f[k] is None for k in ("mu", "p50", "p50_error", "p95", "width", "plateau"))
    # a step the data cannot resolve (every event below 80 fails, above passes)
    f = fit_turn_on(np.arange(1.0, 201.0), np.arange(1.0, 201.0) > 80)
    assert f["status"] == "not converged" and f["p50"] is None


# -- turn-on methods and path tables on hand-built events --------------------------------------
def test_reference_method_on_hand_built_events():
    # leading offline jet within |eta| < 2.5 per event; event 2's hardest jet is forward
    off = jets([[(30, 0.0, 0.0)], [(70, 1.0, 0.0)], [(300, 3.0, 0.0), (75, 0.5, 1.0)],
                [(90, 0.1, 0.0)], [(95, -2.0, 0.0)], [(130, 0.0, 0.0)], [(200, 4.0, 0.0)]])
    paths = {"HLT_PFJet40": [1, 1, 1, 1, 0, 1, 1], "HLT_PFJet80": [0, 0, 1, 0, 1, 1, 1]}
    s = sample(off, jets([[]] * 7), paths)
    r = reference_turn_on(s, "HLT_PFJet80", "HLT_PFJet40", StudySettings(min_rising=1))
    # event 4 fails the reference; event 6 has no central jet
    assert r["n_events"] == 5 and r["n_pass"] == 2
    got = {(p["pt_min"], p["n"], p["n_pass"]) for p in r["points"]}
    assert got == {(30.0, 1, 0), (70.0, 2, 1), (90.0, 1, 0), (130.0, 1, 1)}


def test_tag_and_probe_on_hand_built_events():
    off = jets([
        [(100, 0.2, 0.0), (95, -0.5, 3.0)],                     # both tag: two passing probes
        [(100, 0.2, 0.0), (95, 2.0, 3.0)],                      # tag 1 only; probe fails
        [(100, 0.2, 0.0), (95, -0.5, 3.0), (40, 1.0, 1.5)],     # third jet 40 > 0.2 x 97.5
        [(100, 0.2, 0.0), (95, -0.5, 1.0)],                     # not back to back
        [(100, 0.2, 0.0), (95, -0.5, 3.0)],                     # path not fired
    ])
    hlt = jets([
        [(98, 0.2, 0.0), (90, -0.5, 3.0)],
        [(98, 0.2, 0.0), (70, 2.0, 3.0)],
        [(98, 0.2, 0.0), (90, -0.5, 3.0)],
        [(98, 0.2, 0.0), (90, -0.5, 1.0)],
        [(98, 0.2, 0.0), (90, -0.5, 3.0)],
    ])
    s = sample(off, hlt, {"HLT_PFJet80": [1, 1, 1, 1, 0]})
    r = tag_and_probe(s, hlt, match(off, hlt, 0.2), "HLT_PFJet80", StudySettings())
    assert r["cut_flow"] == {"path_fired": 4, "two_jets": 4, "both_central": 4,
                             "back_to_back": 3, "third_jet_veto": 2, "probes": 3}
    assert r["n_events"] == 3 and r["n_pass"] == 2
    assert r["status"] == "too few events"  # 3 probes fit nothing


def test_path_agreement_table():
    hlt = jets([[(85, 0, 0)], [(75, 0, 0)], [(120, 0, 0), (30, 1, 1)], []])
    table = path_agreement({"HLT_PFJet80": np.array([1, 1, 0, 0], dtype=bool)}, hlt)
    assert table["HLT_PFJet80"] == {"threshold": 80, "events": 4, "both": 1, "bit_only": 1,
                                    "object_only": 1, "neither": 1, "agreement": 0.5}


def test_jet_trigger_objects_are_classified_by_filter_bits():
    bits = np.array([1 << 7, (1 << 7) | (1 << 10), 1 << 5, (1 << 5) | (1 << 11),
                     (1 << 5) | (1 << 3), 1 << 42, 0], dtype=np.uint64)
    assert classify_hlt_jets(bits).tolist() == [0, 0, 1, 1, 2, 2, 2]
    kind = np.array([0, 0, 2])
    check_classification(kind, np.array([56.5, 1023.5, 61.3]), None, "x")
    with pytest.raises(StudyError, match="0.5 GeV"):
        check_classification(kind, np.array([56.3, 41.7, 61.3]), None, "x")
    with pytest.raises(StudyError, match="look like L1"):
        check_classification(np.array([2, 2]), np.array([56.5, 60.0]),
                             np.array([56.5, 60.0]), "x")


# -- the real Run-3 NanoAOD file ---------------------------------------------------------------
@pytest.fixture(scope="module")
def run3_bits():
    """The HLT_PFJet bits and jet trigger objects read independently with uproot."""
    import uproot

    with uproot.open(RUN3) as f:
        return f["Events"].arrays(["HLT_PFJet40", "HLT_PFJet80", "TrigObj_id"], library="np")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("online-offline")
    result = CliRunner().invoke(cli, ["study", "online-offline", str(RUN3), "-o", str(out),
                                      "--no-progress"])
    return result, out


def test_command_on_run3_nanoaod(cli_run, run3_bits):
    result, out = cli_run
    assert result.exit_code == 0, result.output
    s = json.loads((out / "summary.json").read_text())
    assert s["input"]["events"] == 200 and s["input"]["files"][0]["events"] == 200
    assert s["input"]["kind"] == "nanoaod" and "threshold_width" not in s
    assert s["offline_algorithm"].startswith("AK4 PUPPI")
    # one HLT level, the trigger objects as stored; the default reference is NanoAOD's
    assert {b["level"] for b in s["response"]} == {"as stored"}
    assert s["settings"]["reference"] == "HLT_PFJet40"
    assert s["rho"]["branch"] == "Rho_fixedGridRhoFastjetAll"
    # the response starts at offline pT 50 GeV, every eta bin
    assert min(b["pt_min"] for b in s["response"]) == 50
    assert {(b["eta_min"], b["eta_max"]) for b in s["response"]} == \
        {(0, 1.3), (1.3, 2.5), (2.5, 3), (3, 5)}
    # HLT jets are stored from ~25 GeV: the 50-70 GeV bins start below twice that
    h = s["hlt_jets"]
    assert 20 < h["storage_threshold"] < 30
    assert all(b["flagged"] == (b["pt_min"] < 2 * h["storage_threshold"]) for b in s["response"])
    central = next(b for b in s["response"] if b["eta_max"] == 1.3 and b["pt_min"] == 70)
    assert central["n"] > 50 and 0.9 < central["median"] < 1.1 and central["sigma"] is not None
    # the three kinds add up to the jet trigger objects
    assert sum(h["kinds"].values()) == int(np.sum(np.concatenate(run3_bits["TrigObj_id"]) == 1))
    # agreement tables: 2x2 counts over the 200 events; the bit's own count is the file's
    for name in ("HLT_PFJet60", "HLT_PFJet80", "HLT_PFJet110", "HLT_PFJet140"):
        p = s["paths"][name]
        assert p["both"] + p["bit_only"] + p["object_only"] + p["neither"] == 200
        # an event with the bit always stored an HLT PF jet above the threshold
        assert p["bit_only"] == 0
    p = s["paths"]["HLT_PFJet80"]
    assert p["both"] == int(run3_bits["HLT_PFJet80"].sum())
    # PFJet80 by the reference method with PFJet40 (which fires in every event of the file)
    r = s["turn_on"]["HLT_PFJet80"]["reference"]
    assert r["method"] == "reference" and r["reference"] == "HLT_PFJet40"
    assert r["n_events"] == int(run3_bits["HLT_PFJet40"].sum()) == 200
    assert r["status"] == "ok" and r["n_rising"] >= 20
    assert 65 < r["p50"] < 95 and 0 < r["p50_error"] < 10
    assert r["p95"] > r["p50"] and r["width"] == pytest.approx(r["p95"] - r["p50"])
    # ttbar events have no dijet topology: tag and probe says so instead of fitting
    tp = s["turn_on"]["HLT_PFJet80"]["tag_and_probe"]
    assert tp["n_events"] == 0 and tp["status"] == "no events" and tp["p50"] is None
    assert "third jet" in tp["reason"]
    # the console: the tables and the fit, on stderr with the rest
    assert "HLT_PFJet80" in result.output and "tag and probe, no probe" in result.output
    for name in ("hlt_vs_offline_pt.png", "response.png", "response_distributions.png",
                 "turn_on_HLT_PFJet80.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_two_copies_of_a_file_double_the_counts():
    one = run_study(read_nanoaod([str(RUN3)]), StudySettings())
    two = run_study(read_nanoaod([str(RUN3), str(RUN3)]), StudySettings())
    assert two["input"]["events"] == 400
    assert two["matching"]["pairs"] == 2 * one["matching"]["pairs"]
    for name, p in one["paths"].items():
        assert two["paths"][name]["both"] == 2 * p["both"]
    ref1 = one["turn_on"]["HLT_PFJet80"]["reference"]
    ref2 = two["turn_on"]["HLT_PFJet80"]["reference"]
    assert ref2["p50"] == pytest.approx(ref1["p50"], rel=1e-3)
    assert ref2["p50_error"] == pytest.approx(ref1["p50_error"] / math.sqrt(2), rel=0.05)


def test_every_jet_object_counts_with_hlt_jets_all():
    s = read_nanoaod([str(RUN3)], StudySettings(hlt_jets="all"))
    out = run_study(s, StudySettings(hlt_jets="all"))
    assert out["hlt_jets"]["used"] == s.hlt.pt.size > 1500
    # L1 and calo copies above threshold make "object only" events (PF alone: fewer)
    pf = run_study(read_nanoaod([str(RUN3)]), StudySettings())
    assert out["paths"]["HLT_PFJet110"]["object_only"] > pf["paths"]["HLT_PFJet110"]["object_only"]


@pytest.mark.parametrize("path, expected", [
    (NO_TRIGOBJ, "has no HLT objects: no TrigObj_* branches"),
    (None, "is an hltemu file"),
])
def test_unusable_inputs_are_one_line_errors(tmp_path, path, expected):
    path = path or builtin_sample()
    result = CliRunner().invoke(cli, ["study", "online-offline", str(path), "-o",
                                      str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(path) in lines[0]
    assert expected in lines[0]
    if "hltemu" in expected:
        assert "pfjets" in lines[0]
    assert not (tmp_path / "o" / "summary.json").exists()


def test_a_file_with_corrected_jets_is_an_hltemu_file(tmp_path):
    import awkward as ak
    import uproot

    path = tmp_path / "run.root"
    with uproot.recreate(path) as f:
        f["Events"] = {"corrected_jets": ak.zip({"pt": ak.Array([[50.0], []])})}
    with pytest.raises(StudyError, match="corrected_jets.*read_inputs"):
        read_nanoaod([str(path)])
    # no metadata, but hltemu's branches: read as emulator output, which lacks the pfjets
    with pytest.raises(StudyError, match="without the collections 'pfjets' and 'pfrho'.*--stages"):
        read_inputs([str(path)])


def test_unknown_reference_path_names_the_paths(tmp_path):
    result = CliRunner().invoke(cli, ["study", "online-offline", str(RUN3), "-o",
                                      str(tmp_path), "--reference", "HLT_PFJet45",
                                      "--no-plots", "--no-progress"])
    assert result.exit_code == 1
    assert "HLT_PFJet45" in result.output and "HLT_PFJet40, HLT_PFJet60" in result.output


def test_bad_bins_are_usage_errors(tmp_path):
    result = CliRunner().invoke(cli, ["study", "online-offline", str(RUN3), "-o",
                                      str(tmp_path), "--pt-bins", "50,x"])
    assert result.exit_code == 2 and "--pt-bins" in result.output
    result = CliRunner().invoke(cli, ["study", "online-offline", str(RUN3), "-o",
                                      str(tmp_path), "--eta-bins", "0,2,1", "--no-plots"])
    assert result.exit_code == 1 and "increasing" in result.output


def test_help():
    runner = CliRunner()
    result = runner.invoke(cli, ["study", "--help"])
    assert result.exit_code == 0 and "online-offline" in result.output
    result = runner.invoke(cli, ["study", "online-offline", "--help"])
    assert result.exit_code == 0
    for option in ("--max-dr", "--reference", "--hlt-jets", "--pt-bins", "--no-progress"):
        assert option in result.output
    result = runner.invoke(cli, ["--help"])
    assert "study" in result.output


# -- hltemu output as input (tests/study_synthetic.py) -----------------------------------------
@pytest.fixture(scope="module")
def emu_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("emu")
    path = d / "run.root"
    events = write_study_output(path)
    jec = d / "offline_L2Relative.txt"
    jec.write_text(OFFLINE_JEC_TEXT)
    return path, jec, events


@pytest.fixture(scope="module")
def emu_run(emu_file, tmp_path_factory):
    path, jec, _ = emu_file
    out = tmp_path_factory.mktemp("emu-study")
    result = CliRunner().invoke(cli, ["study", "online-offline", str(path), "-o", str(out),
                                      "--offline-jec", str(jec), "--pt-bins", "30,60,120",
                                      "--eta-bins", "0,1.3,2.5", "--no-progress"])
    assert result.exit_code == 0, result.output
    return result, json.loads((out / "summary.json").read_text()), out


def _medians(summary):
    return {(b["level"], b["eta_min"], b["pt_min"]): b for b in summary["response"]}


def test_emulator_input_response_per_level(emu_run):
    result, s, out = emu_run
    assert s["input"]["kind"] == "hltemu" and s["input"]["events"] == 3000
    assert s["offline_algorithm"] == "AK4 PF CHS (hltemu pfjets)"
    assert s["offline_jec"] == [s["settings"]["offline_jec"][0]] and \
        s["offline_jec"][0].endswith("offline_L2Relative.txt")
    assert s["hlt_jets"]["levels"] == ["raw", "L1FastJet", "full"]
    assert s["hlt_jets"]["jec"] == ["synthetic_L1FastJet.txt", "synthetic_L2Relative.txt"]
    rows = _medians(s)
    for eta0, raw in ((0.0, CENTRAL_RESPONSE), (1.3, FORWARD_RESPONSE)):
        for pt0 in (30.0, 60.0):
            expected = {"raw": raw, "L1FastJet": L1_FACTOR * raw, "full": 1.0}
            for level, value in expected.items():
                b = rows[(level, eta0, pt0)]
                assert b["n"] > 200 and b["match_efficiency"] == 1.0
                assert abs(b["median"] - value) < 4 * b["median_error"] + 1e-3, (level, b)
                # the smearing is 10 % of the full pT at every level
                assert abs(b["sigma"] / b["core_mean"] - 0.10) < 0.02
    # the pT-hat bias of the generation is stated; events count equally
    assert any("pT-hat bias" in n and "count equally" in n for n in s["notes"])
    assert "level" in result.output and "L1FastJet" in result.output


def test_emulator_input_paths_and_reference_turn_on(emu_run, emu_file):
    _, s, _ = emu_run
    _, _, e = emu_file
    assert s["settings"]["reference"] == "HLT_CaloJet40"
    p = s["paths"]["HLT_CaloJet80"]
    assert p["threshold"] == 80.0 and p["eta_max"] == 3.0
    assert p["bit_only"] == 0 and p["object_only"] == 0
    assert p["both"] == int(np.sum(e["full"].reshape(-1, 2).max(axis=1) >= 80))
    r = s["turn_on"]["HLT_CaloJet80"]["reference"]
    assert r["status"] == "ok" and r["reference"] == "HLT_CaloJet40"
    # full pT = offline pT x (1 + 10 % Gaussian): 50 % efficiency at 80 GeV offline
    assert abs(r["p50"] - 80.0) < 3 * r["p50_error"] + 0.5
    assert "HLT_CaloJet40" not in s["turn_on"]  # the reference itself has no turn-on


def test_emulator_raw_threshold_matches_the_corrected_p50(emu_run, emu_file):
    _, s, out = emu_run
    _, _, e = emu_file
    w = s["threshold_width"]
    assert w["status"] == "ok" and w["threshold"] == 80.0 and w["eta_max"] == 3.0
    assert w["bit_check"] == {"path_bit": "trigger_pre", "events": 3000, "agree": 3000}
    full, raw = w["selections"]["full"], w["selections"]["raw"]
    assert abs(full["p50"] - 80.0) < 3 * full["p50_error"] + 0.5
    t_raw = raw["threshold"]
    assert raw["matched"] and abs(raw["p50"] - full["p50"]) <= 1.0
    assert t_raw == pytest.approx(round(t_raw / 0.25) * 0.25)  # on the 0.25 GeV grid
    # between the central and the forward responses' thresholds
    assert CENTRAL_RESPONSE * 80 < t_raw < FORWARD_RESPONSE * 80
    # refitted here, from the events themselves: the raw cut at T_raw has the same p50
    lead_t, lead_raw = e["t"][0::2], e["raw"].reshape(-1, 2).max(axis=1)
    check = fit_turn_on(lead_t, lead_raw >= t_raw)
    assert abs(check["p50"] - full["p50"]) <= 1.0 + 1e-6
    # two responses mixed: the raw cut's turn-on is much wider than the corrected one's
    assert raw["width"] - full["width"] > 3 * math.hypot(raw["width_error"],
                                                         full["width_error"])
    # L1FastJet only scales the raw pT here: its threshold is L1_FACTOR times the raw one
    l1 = w["selections"]["L1FastJet"]
    assert abs(l1["threshold"] - L1_FACTOR * t_raw) <= 0.5
    assert (out / "threshold_width.png").read_bytes()[:4] == b"\x89PNG"


def test_match_threshold_finds_a_known_threshold():
    # a jet of response 0.6 with 10 % smearing: a cut at T has its p50 at T / 0.6
    rng = np.random.default_rng(21)
    x = np.exp(rng.uniform(np.log(20), np.log(300), 4000))
    lead = 0.6 * x * rng.normal(1.0, 0.1, x.size)
    m = match_threshold(x, lead, target=100.0, start=80.0, step=0.25, min_rising=20)
    assert abs(m["p50"] - 100.0) <= 1.0
    assert abs(m["threshold"] - 60.0) < 1.5
    assert len(m["scan"]) < 20  # a bisection, not a scan


def test_leading_pt_respects_the_eta_cut():
    j = jets([[(100, 2.9, 0), (50, 0.1, 0)], [(90, 3.1, 0)], []])
    assert leading_pt(j, 3.0).tolist() == [100, 0, 0]
    assert leading_pt(j, 2.5).tolist() == [50, 0, 0]


def test_offline_jec_none_compares_raw_pfjets(emu_file, tmp_path):
    path, _, _ = emu_file
    settings = StudySettings(offline_jec=(), eta_edges=(0.0, 1.3), pt_edges=(30.0, 60.0))
    s = read_inputs([str(path)], settings)
    out = run_study(s, settings)
    assert out["offline_jec"] == [] and "raw pfjets" in out["offline_pt"]
    rows = _medians(out)
    # offline raw pT is the true pT / OFFLINE_SCALE: every response OFFLINE_SCALE times larger
    for level, value in (("raw", CENTRAL_RESPONSE), ("full", 1.0)):
        b = rows[(level, 0.0, 30.0)]
        assert abs(b["median"] - OFFLINE_SCALE * value) < 4 * b["median_error"] + 1e-3
    # the command spells it "none"; the default records the shipped pfjets corrections
    result = CliRunner().invoke(cli, ["study", "online-offline", str(path), "-o",
                                      str(tmp_path / "a"), "--offline-jec", "none",
                                      "--no-plots", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["offline_jec"] == []
    s = read_inputs([str(path)], StudySettings())
    assert run_study(s, StudySettings(eta_edges=(0.0, 2.5), pt_edges=(30.0, 1000.0))
                     )["offline_jec"] == [
        "builtin:hltemu_PF_V2_MC_L1FastJet_AK4PFchs.txt",
        "builtin:hltemu_PF_V2_MC_L2Relative_AK4PFchs.txt"]


def test_emulator_output_without_pfjets_is_a_one_line_error(tmp_path):
    path = tmp_path / "hlt_only.root"
    write_study_output(path, n_events=20, with_pfjets=False)
    result = CliRunner().invoke(cli, ["study", "online-offline", str(path), "-o",
                                      str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0]
    assert "without the collections 'pfjets' and 'pfrho'" in lines[0]
    assert "tracks,vertices,pfcandidates,pfjets,pfrho" in lines[0] and "topocluster" in lines[0]
    assert not (tmp_path / "o" / "summary.json").exists()


def test_emulator_output_with_raw_jets_only(tmp_path):
    path = tmp_path / "raw.root"
    write_study_output(path, n_events=300, with_jec=False)
    settings = StudySettings(offline_jec=(), pt_edges=(30.0, 1000.0))
    out = run_study(read_inputs([str(path)], settings), settings)
    assert out["hlt_jets"]["levels"] == ["raw"]
    assert out["threshold_width"]["status"] == "not done"
    assert out["turn_on"] == {} and any("trigger_pre" in n for n in out["notes"])


def test_nanoaod_only_and_emulator_only_settings_are_refused(emu_file):
    path, _, _ = emu_file
    with pytest.raises(StudyError, match="--offline-jec none"):
        read_inputs([str(path)], StudySettings(offline_pt="raw"))
    with pytest.raises(StudyError, match="NanoAOD's Jet_pt is corrected already"):
        read_inputs([str(RUN3)], StudySettings(offline_jec=()))
    with pytest.raises(StudyError, match="study hltemu outputs and CMS NanoAOD apart"):
        read_inputs([str(path), str(RUN3)])
