"""``hltemu study online-offline`` with every HLT jet flavour (raw, JEC levels, full, the
``regressed_jets`` of stage ``jet_regression``) and thresholds matched at equal p50 and at
equal (generator-weighted) accept rate, on synthetic hltemu outputs with known answers
(tests/study_synthetic.py), and the efficiency-at-pT error of the turn-on fit against toys."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from study_synthetic import (
    CENTRAL_RESPONSE,
    ETA_SPLIT,
    FORWARD_RESPONSE,
    OFFLINE_JEC_TEXT,
    write_study_output,
)

from hltemu.cli import cli
from hltemu.study.fits import (
    efficiency_at,
    erf_turn_on,
    fit_turn_on,
    numerical_gradient,
)
from hltemu.study.online_offline import StudyError, StudySettings, read_inputs
from hltemu.study.threshold_width import accept_rates, match_rate, threshold_width_study

STEP = StudySettings().threshold_step


def _settings(jec) -> StudySettings:
    return StudySettings(offline_jec=(str(jec),), eta_edges=(0.0, 1.3, 2.5),
                         pt_edges=(30.0, 60.0, 120.0))


@pytest.fixture(scope="module")
def jec(tmp_path_factory):
    path = tmp_path_factory.mktemp("jec") / "offline_L2Relative.txt"
    path.write_text(OFFLINE_JEC_TEXT)
    return path


def _width(tmp_path, jec, name="run.root", n_events=2500, **kw):
    path = tmp_path / name
    events = write_study_output(path, n_events=n_events, **kw)
    settings = _settings(jec)
    return threshold_width_study(read_inputs([str(path)], settings), settings), events


# -- the rate-matched threshold ----------------------------------------------------------------
def test_match_rate_on_hand_built_events():
    lead = np.array([50.0, 60.0, 70.0, 80.0, 90.0])
    w = np.ones(5)
    assert accept_rates(lead, w, np.array([70.0, 70.25, 80.0, 90.25])).tolist() == [3, 2, 2, 0]
    # rate 2: any threshold in (70, 80]; the run of grid points sharing it, and its middle
    m = match_rate(lead, w, 2.0, 0.25)
    assert m["threshold_range"] == [70.25, 80.0] and m["rate"] == 2.0
    assert m["threshold"] == pytest.approx(75.0, abs=0.25)
    # ... or the grid point of that run nearest a preferred threshold (the p50-matched one)
    assert match_rate(lead, w, 2.0, 0.25, prefer=72.1)["threshold"] == 72.0
    assert match_rate(lead, w, 2.0, 0.25, prefer=99.0)["threshold"] == 80.0
    # weights decide: the 90 GeV event weighs 10, so a target of 10.4 is nearest 10 (> 80)
    w2 = np.array([1.0, 1.0, 1.0, 1.0, 10.0])
    m = match_rate(lead, w2, 10.4, 0.25)
    assert m["rate"] == 10.0 and m["threshold_range"] == [80.25, 90.0]
    # equally near two rates (10 and 11): the one whose run holds the preferred threshold
    m = match_rate(lead, w2, 10.5, 0.25, prefer=75.0)
    assert m["rate"] == 11.0 and m["threshold_range"] == [70.25, 80.0]
    assert m["threshold"] == 75.0
    assert match_rate(lead, w, 0.0, 0.25)["threshold"] is None


# -- flavours with known thresholds ------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 1.1])
def test_a_scaled_copy_of_the_corrected_jets_gets_the_scaled_threshold(tmp_path, jec, scale):
    w, _ = _width(tmp_path, jec, regressed_scale=scale)
    assert w["status"] == "ok" and w["threshold"] == 80.0 and w["efficiency_at"] == 90.0
    full = w["selections"]["full"]
    expected = 80.0 * scale
    for table in ("selections", "rate_matched"):
        r = w[table]["regressed"]
        assert r["status"] == "ok", (table, r)
        assert abs(r["threshold"] - expected) <= STEP + 1e-9, (table, r["threshold"])
        # the same accepted events as the full cut: the same turn-on and the same rate
        assert r["p50"] == pytest.approx(full["p50"], abs=0.3)
        assert r["efficiency"] == pytest.approx(full["efficiency"], abs=0.02)
        assert r["rate_ratio"] == pytest.approx(1.0, abs=0.01)
    # at equal rate exactly the same events pass, bit for bit
    r = w["rate_matched"]["regressed"]
    assert r["rate"] == full["rate"] and r["n_accepted"] == full["n_accepted"]
    assert r["threshold"] == w["selections"]["regressed"]["threshold"]
    # the other flavours are compared both ways as well
    assert set(w["selections"]) == {"full", "raw", "L1FastJet", "regressed"}
    assert set(w["rate_matched"]) == {"raw", "L1FastJet", "regressed"}


def _forward_lead(e):
    """Per event: is the leading jet (the first of each pair) beyond ETA_SPLIT?"""
    return np.abs(e["eta"][0::2]) >= ETA_SPLIT


@pytest.mark.parametrize("heavy, expected", [("forward", FORWARD_RESPONSE),
                                             ("central", CENTRAL_RESPONSE)])
def test_weights_move_the_rate_matched_raw_threshold(tmp_path, jec, heavy, expected):
    # raw pT is 0.7 (central) or 0.9 (forward) x the full pT; when the events of one kind
    # weigh 1000 times more, equal rate means the raw cut keeps that kind's events: a raw
    # threshold of response x 80 GeV; the p50 matching (unweighted) lies in between and does
    # not depend on the weights
    def weight(e):
        fwd = _forward_lead(e)
        return np.where(fwd if heavy == "forward" else ~fwd, 1000.0, 1.0)

    w, _ = _width(tmp_path, jec, weight=weight, sigma_gen_mb=1.0)
    assert w["rate"]["normalisation"] == "cross-section"
    t_rate = w["rate_matched"]["raw"]["threshold"]
    t_p50 = w["selections"]["raw"]["threshold"]
    assert abs(t_rate - expected * 80.0) <= 0.5, t_rate
    assert CENTRAL_RESPONSE * 80 + 2 < t_p50 < FORWARD_RESPONSE * 80 - 2
    if heavy == "forward":
        assert t_rate > t_p50 + 3
    else:
        assert t_rate < t_p50 - 3
    unweighted, _ = _width(tmp_path, jec, name="flat.root")
    assert unweighted["selections"]["raw"]["threshold"] == t_p50
    assert unweighted["rate"]["normalisation"] == "weight sum"


def test_rates_are_normalised_to_each_files_cross_section(tmp_path, jec):
    a, b = tmp_path / "a.root", tmp_path / "b.root"
    ea = write_study_output(a, n_events=1500, seed=5, sigma_gen_mb=2.0)
    eb = write_study_output(b, n_events=1000, seed=6, sigma_gen_mb=0.5,
                            weight=lambda e: np.full(e["t"].size // 2, 3.0))
    settings = _settings(jec)
    w = threshold_width_study(read_inputs([str(a), str(b)], settings), settings)

    def accepted(e):
        return np.mean(e["full"].reshape(-1, 2).max(axis=1) >= 80.0)

    # each file: sigma x its weighted fraction accepted
    expected = 2.0 * accepted(ea) + 0.5 * accepted(eb)
    assert w["rate"]["unit"] == "mb" and w["rate"]["sum"] == pytest.approx(2.5)
    assert w["selections"]["full"]["rate"] == pytest.approx(expected, rel=1e-6)
    assert w["rate"]["target"] == pytest.approx(expected, rel=1e-6)
    # one file without a cross-section: every file normalised to its summed weights, said so
    c = tmp_path / "c.root"
    ec = write_study_output(c, n_events=1000, seed=7)
    s = read_inputs([str(a), str(c)], settings)
    w = threshold_width_study(s, settings)
    assert w["rate"]["normalisation"] == "weight sum"
    assert w["selections"]["full"]["rate"] == pytest.approx(accepted(ea) + accepted(ec),
                                                            rel=1e-6)
    assert any(str(c) in n and "no cross-section" in n for n in s.notes)


def test_a_file_without_regressed_jets_among_files_with_them_is_refused(tmp_path, jec):
    a, b = tmp_path / "with.root", tmp_path / "without.root"
    write_study_output(a, n_events=200, regressed_scale=1.0)
    write_study_output(b, n_events=200, seed=6)
    for files in ([a, b], [b, a]):
        with pytest.raises(StudyError) as exc:
            read_inputs([str(f) for f in files], _settings(jec))
        msg = str(exc.value)
        assert msg.startswith(f"{b} has no regressed_jets") and str(a) in msg
        assert "--stages jet_regression" in msg
    # files that all lack it are studied as before
    s = read_inputs([str(b), str(b)], _settings(jec))
    assert list(s.levels) == ["raw", "L1FastJet", "full"]


# -- the command -------------------------------------------------------------------------------
def test_command_shows_every_flavour_in_both_matchings(tmp_path, jec):
    path = tmp_path / "run.root"
    write_study_output(path, n_events=2000, regressed_scale=1.1)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["study", "online-offline", str(path), "-o", str(out),
                                      "--offline-jec", str(jec), "--pt-bins", "30,60,120",
                                      "--eta-bins", "0,1.3,2.5", "--efficiency-at", "95",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    s = json.loads((out / "summary.json").read_text())
    assert s["hlt_jets"]["levels"] == ["raw", "L1FastJet", "full", "regressed"]
    assert "regressed_jets" in s["hlt_jets"]["level_definitions"]["regressed"]
    # the regressed response is 1.1 in every bin
    for b in s["response"]:
        if b["level"] == "regressed":
            assert abs(b["median"] - 1.1) < 4 * b["median_error"] + 1e-3
    w = s["threshold_width"]
    assert w["efficiency_at"] == 95.0 and s["settings"]["efficiency_at"] == 95.0
    for table in ("selections", "rate_matched"):
        r = w[table]["regressed"]
        assert r["efficiency"] is not None and 0 < r["efficiency_error"] < 0.1
        assert abs(r["threshold"] - 88.0) <= STEP + 1e-9
    # the efficiency at 95 GeV of the full cut: offline pT x (1 + 10 % Gaussian) >= 80
    truth = 0.5 * (1 + math.erf((95 - 80) / (0.1 * 95) / math.sqrt(2)))
    full = w["selections"]["full"]
    assert abs(full["efficiency"] - truth) < 3 * full["efficiency_error"] + 0.02
    assert "turn-ons at equal p50" in result.output
    assert "turn-ons at equal accept rate" in result.output
    assert "regressed" in result.output and "Event_weight normalised" in result.output
    assert (out / "threshold_width.png").read_bytes()[:4] == b"\x89PNG"


# -- efficiency at a pT, from the fit's covariance ---------------------------------------------
def test_efficiency_at_matches_numerical_propagation():
    rng = np.random.default_rng(31)
    x = rng.uniform(40, 140, 2000)
    f = fit_turn_on(x, rng.random(x.size) < erf_turn_on(x, 80.0, 8.0, 0.97))
    assert f["status"] == "ok" and not f["plateau_fixed"]
    e = efficiency_at(f, 90.0)
    assert e["efficiency"] == pytest.approx(float(erf_turn_on(90.0, f["mu"], f["sigma"],
                                                              f["plateau"])))
    theta = np.array([f["mu"], f["sigma"], f["plateau"]])
    grad = numerical_gradient(lambda t: float(erf_turn_on(90.0, *t)), theta,
                              np.array([1e-4, 1e-4, 1e-6]))
    cov = np.asarray(f["covariance"])
    assert e["efficiency_error"] == pytest.approx(math.sqrt(grad @ cov @ grad), rel=1e-4)
    # every parameter's term counts (leaving any out changes the error)
    for k in range(3):
        g = grad.copy()
        g[k] = 0.0
        assert abs(math.sqrt(g @ cov @ g) / e["efficiency_error"] - 1) > 0.01, k
    # no numbers from a failed fit
    bad = fit_turn_on(x[:30], x[:30] > 80)
    assert efficiency_at(bad, 90.0)["efficiency"] is None


def test_efficiency_at_error_covers_toys():
    # 120 pseudo-experiments of 1000 events: the efficiency at 90 GeV of a turn-on with mu 80,
    # sigma 8, plateau 0.97 (0.868); its pulls have width 1
    truth = float(erf_turn_on(90.0, 80.0, 8.0, 0.97))
    pulls = []
    for seed in range(120):
        rng = np.random.default_rng(500 + seed)
        x = rng.uniform(40, 140, 1000)
        e = efficiency_at(fit_turn_on(x, rng.random(x.size) < erf_turn_on(x, 80.0, 8.0, 0.97)),
                          90.0)
        pulls.append((e["efficiency"] - truth) / e["efficiency_error"])
    pulls = np.asarray(pulls)
    assert 0.8 < pulls.std() < 1.25 and abs(pulls.mean()) < 0.3


def test_turn_on_fit_survives_an_abnormal_line_search(monkeypatch):
    """When L-BFGS-B's line search ends abnormally, the fit restarts and then polishes with
    Nelder-Mead: the same turn-on as an undisturbed fit, status ok."""
    import scipy.optimize

    from hltemu.study.fits import fit_turn_on

    rng = np.random.default_rng(5)
    x = rng.uniform(40, 140, 3000)
    k = rng.random(3000) < 0.5 * (1 + np.vectorize(math.erf)((x - 80) / (math.sqrt(2) * 7)))
    want = fit_turn_on(x, k)
    real = scipy.optimize.minimize
    calls = {"lbfgsb": 0, "nm": 0}

    def flaky(f, x0, method=None, **kw):
        res = real(f, x0, method=method, **kw)
        if method == "L-BFGS-B":
            calls["lbfgsb"] += 1
            res.success = False
            res.message = "ABNORMAL_TERMINATION_IN_LNSRCH"
        else:
            calls["nm"] += 1
        return res

    monkeypatch.setattr(scipy.optimize, "minimize", flaky)
    got = fit_turn_on(x, k)
    assert calls["nm"] >= 1 and calls["lbfgsb"] >= 2
    assert want["status"] == got["status"] == "ok"
    assert got["p50"] == pytest.approx(want["p50"], abs=0.05 * want["p50_error"])
    assert got["p95"] == pytest.approx(want["p95"], abs=0.05 * want["p95_error"])


def test_a_path_on_regressed_jets_is_checked_against_them(tmp_path, jec):
    """A menu path with ``jets = "regressed_jets"``: its bit agrees with "a regressed jet
    above the threshold" in every event (against the corrected jets it would not: they are
    1.1 times lower)."""
    from study_synthetic import REGRESSED_PATH

    from hltemu.study.online_offline import run_study

    path = tmp_path / "run.root"
    write_study_output(path, n_events=2000, regressed_scale=1.1, regressed_path=True)
    settings = StudySettings(offline_jec=(str(jec),), pt_edges=(30.0, 60.0, 120.0),
                             eta_edges=(0.0, 1.3, 2.5))
    sample = read_inputs([str(path)], settings)
    name = REGRESSED_PATH[0]
    assert sample.cuts[name].level == "regressed" and sample.cuts["HLT_CaloJet80"].level is None
    s = run_study(sample, settings)
    table = s["paths"][name]
    assert table["level"] == "regressed" and table["agreement"] == 1.0
    assert table["bit_only"] == table["object_only"] == 0 and table["both"] > 100
    assert s["paths"]["HLT_CaloJet80"]["agreement"] == 1.0
    # its reference-method turn-on (from the bit) sits lower: 80 GeV of regressed pT is
    # 80 / 1.1 of corrected pT
    ref, full_ref = (s["turn_on"][n]["reference"] for n in (name, "HLT_CaloJet80"))
    assert ref["status"] == full_ref["status"] == "ok"
    assert abs(ref["p50"] - full_ref["p50"] / 1.1) < 3 * (ref["p50_error"] + full_ref["p50_error"])
    assert s["turn_on"][name]["tag_and_probe"]["cut_flow"]["path_fired"] == table["both"]

