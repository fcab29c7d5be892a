"""Stage ``trigger``: menu parsing and its errors, hand-checked decisions and prescales, the three
backends on random menus and events, the rho -> jec -> trigger chain on Pythia events, and
``hltemu run`` printing per-path accept counts."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pythia_inputs import sample_cells, sample_jets

from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError
from hltemu.pipeline import (
    CannotRun,
    PipelineError,
    config_from_dict,
    count_products,
    default_config,
    get_stage,
    plan,
    run_batch,
)
from hltemu.profiling import RunReport
from hltemu.stages.trigger import (
    ANY_PATH,
    TriggerConfig,
    TriggerPath,
    decide_reference,
    load_menu,
    parse_menu,
)


def write_menu(tmp_path: Path, text: str) -> str:
    path = tmp_path / "menu.toml"
    path.write_text(text)
    return str(path)


def run_trigger(backend, jets: Collection, cfg: TriggerConfig, extra=None,
                first_entry: int = 0, collection: str = "trigger") -> dict[str, np.ndarray]:
    """The stage's ``collection`` (``trigger`` or ``trigger_pre``) as host arrays."""
    be = get_backend(backend)
    colls = {"corrected_jets": jets.to(be), **{k: v.to(be) for k, v in (extra or {}).items()}}
    batch = EventBatch(be, jets.n_events, colls, first_entry=first_entry)
    out = get_stage("trigger")(batch, cfg)[collection]
    assert out.per_event
    return {k: be.to_host(v) for k, v in out.columns.items()}


def jets_from(events: list[list[tuple[float, float]]]) -> Collection:
    """Jets from per-event lists of (pt [GeV], eta)."""
    counts = [len(e) for e in events]
    flat = [j for e in events for j in e]
    pt = np.array([j[0] for j in flat], dtype=np.float64)
    eta = np.array([j[1] for j in flat], dtype=np.float64)
    return Collection.from_counts(counts, {"pt": pt, "eta": eta, "phi": np.zeros_like(pt)})


MENU = """
[[path]]
name = "J50"
type = "single_jet"
pt_min = 50.0
eta_max = 2.4

[[path]]
name = "Quad20"
type = "multi_jet"
n_min = 4
pt_min = 20.0
eta_max = 5.0

[[path]]
name = "HT100"
type = "ht"
ht_min = 100.0
jet_pt_min = 30.0
eta_max = 3.0

[[path]]
name = "Doublets5"
type = "doublets"
n_min = 5

[[path]]
name = "J50_PS3"
type = "single_jet"
pt_min = 50.0
eta_max = 5.0
prescale = 3

[[path]]
name = "Off"
type = "single_jet"
pt_min = 0.0
prescale = 0
"""


def test_default_menu_loads():
    paths = load_menu(TriggerConfig().menu)
    assert [p.kind for p in paths] == ["single_jet", "single_jet", "single_jet", "multi_jet",
                                       "ht", "ht", "doublets"]
    assert paths[-1].collection == "filtered_doublets" and paths[-1].n_min == 8000
    assert paths[0].prescale == 10 and paths[4].pt_min == 30.0 and paths[4].ht_min == 250.0
    # inside the calorimeter's acceptance, |eta| < 3, which is also the default
    assert all(p.eta_max <= 3.0 for p in paths if p.kind != "doublets")
    assert parse_menu({"path": [{"name": "J", "type": "single_jet", "pt_min": 1.0}]})[0].eta_max \
        == 3.0


def test_hand_checked_decisions(tmp_path, backend):
    menu = write_menu(tmp_path, MENU)
    events = [
        [(50.0, 2.4)],  # J50 at both thresholds (inclusive); HT 50 < 100
        [(49.999, 0.0), (60.0, 3.5)],  # J50 fails (pt, then eta), but J50_PS3 has no eta cut
        [(30.0, 0.0), (30.0, 1.0), (40.0, -2.9)],  # HT = 100 exactly (jet_pt_min inclusive)
        [(29.999, 0.0), (35.0, 0.0), (35.0, 0.0), (30.0, 3.1)],  # HT 70; 4 jets >= 20 GeV
        [(25.0, 4.0), (20.0, -4.9), (21.0, 0.0)],  # three jets >= 20: Quad20 fails
        [],
    ]
    doublets = Collection.from_counts([5, 4, 0, 10, 6, 5], {"x": np.zeros(30)})
    got = run_trigger(backend, jets_from(events), TriggerConfig(menu=menu),
                      {"doublets": doublets})
    expected = {
        "J50": [True, False, False, False, False, False],
        "Quad20": [False, False, False, True, False, False],
        "HT100": [False, False, True, False, False, False],
        "Doublets5": [True, False, False, True, True, True],
        # the prescaler passes events 3 and 6 (counting from 1): entries 2 and 5
        "J50_PS3": [False, False, False, False, False, False],
        "Off": [False] * 6,
    }
    for name, want in expected.items():
        assert got[name].tolist() == want, name
    assert got[ANY_PATH].tolist() == [True, False, True, True, True, True]
    # shifting the first entry moves the prescaler: entry 1 (event 2) now passes J50_PS3
    shifted = run_trigger(backend, jets_from(events), TriggerConfig(menu=menu),
                          {"doublets": doublets}, first_entry=1)
    assert shifted["J50_PS3"].tolist() == [False, True, False, False, False, False]
    # before the prescalers: J50_PS3 is its filter alone and Off is the pT > 0 filter
    pre = run_trigger(backend, jets_from(events), TriggerConfig(menu=menu),
                      {"doublets": doublets}, collection="trigger_pre")
    for name in ("J50", "Quad20", "HT100", "Doublets5"):
        assert pre[name].tolist() == expected[name], name
    assert pre["J50_PS3"].tolist() == [True, True, False, False, False, False]
    assert pre["Off"].tolist() == [True, True, True, True, True, False]
    assert pre[ANY_PATH].tolist() == [True, True, True, True, True, True]


def test_paths_selection_and_missing_doublets(tmp_path):
    menu = write_menu(tmp_path, MENU)
    jets = jets_from([[(60.0, 0.0)]])
    with pytest.raises(PipelineError, match=r"'trigger' needs collection\(s\) \['doublets'\]"):
        run_trigger("cpu", jets, TriggerConfig(menu=menu))
    got = run_trigger("cpu", jets, TriggerConfig(menu=menu, paths=("HT100", "J50")))
    assert sorted(got) == ["HT100", "J50", ANY_PATH]  # menu order kept, doublets not needed
    with pytest.raises(ConfigError, match=r"\['J60'\] not in menu.*J50, Quad20"):
        run_trigger("cpu", jets, TriggerConfig(menu=menu, paths=("J60",)))


def test_needs_come_from_the_menu(tmp_path):
    stage = get_stage("trigger")
    menu = write_menu(tmp_path, MENU)
    assert stage.needs_for(TriggerConfig(menu=menu)) == ("corrected_jets", "doublets")
    assert stage.needs_for(TriggerConfig(menu=menu, paths=("J50",))) == ("corrected_jets",)
    assert stage.needs_for(TriggerConfig(menu=menu, paths=("Doublets5",))) == ("doublets",)
    assert stage.needs_for() == ("corrected_jets", "filtered_doublets")  # the default menu


def test_planner_drops_paths_the_chain_cannot_feed(tmp_path):
    """Default chain on calorimeter-only input: the doublet path is dropped with a note and a
    fact; the jet paths run; a path named in [trigger] paths is an error instead."""
    menu = write_menu(tmp_path, MENU)
    cfg = config_from_dict({"trigger": {"menu": menu}})
    p = plan(["topocluster", "antikt", "rho", "jec", "trigger"], ["CaloCell"], cfg)
    assert [st.name for st in p.stages] == ["topocluster", "antikt", "rho", "jec", "trigger"]
    assert p.config["trigger"].paths == ("J50", "Quad20", "HT100", "J50_PS3", "Off")
    facts = p.facts["trigger"]
    assert facts["dropped_paths"] == ["Doublets5"] and facts["menu_file"] == menu
    assert facts["prescales"] == {"J50": 1, "Quad20": 1, "HT100": 1, "J50_PS3": 3, "Off": 0}
    assert facts["paths"][:3] == [
        {"name": "J50", "type": "single_jet", "pt_min": 50.0, "eta_max": 2.4, "prescale": 1},
        {"name": "Quad20", "type": "multi_jet", "n_min": 4, "pt_min": 20.0, "eta_max": 5.0,
         "prescale": 1},
        {"name": "HT100", "type": "ht", "ht_min": 100.0, "jet_pt_min": 30.0, "eta_max": 3.0,
         "prescale": 1}]
    assert p.notes == ["trigger: path Doublets5 dropped: needs 'doublets' (made by stage "
                       "'doublets'), which this chain does not have"]
    named = config_from_dict({"trigger": {"menu": menu, "paths": ["J50", "Doublets5"]}})
    with pytest.raises(PipelineError, match=r"\[trigger\] paths names Doublets5, which needs "
                                            r"'doublets' \(made by stage 'doublets'\)"):
        plan(["topocluster", "antikt", "rho", "jec", "trigger"], ["CaloCell"], named)
    # with pixels the whole menu runs and nothing is noted
    full = plan(None, ["CaloCell", "PixelHit"], cfg)
    assert full.config["trigger"].paths == () and not full.notes
    assert full.facts["trigger"]["prescales"] == {
        "J50": 1, "Quad20": 1, "HT100": 1, "J50_PS3": 3, "Off": 0, "Doublets5": 1}
    assert "dropped_paths" not in full.facts["trigger"]
    assert full.facts["trigger"]["paths"][3] == {"name": "Doublets5", "type": "doublets",
                                                 "n_min": 5, "collection": "doublets",
                                                 "prescale": 1}


def test_planner_skips_a_trigger_with_nothing_to_run(tmp_path):
    menu = write_menu(tmp_path, MENU.split("[[path]]\nname = \"J50\"")[0] + """
[[path]]
name = "D1"
type = "doublets"
n_min = 1
""")
    cfg = config_from_dict({"trigger": {"menu": menu}})
    p = plan(None, ["CaloCell"], cfg)
    assert "trigger" not in [st.name for st in p.stages]
    assert "no path of menu" in p.skipped["trigger"] and "D1 needs 'doublets'" in p.skipped["trigger"]
    with pytest.raises(CannotRun, match="no path of menu"):
        plan(["topocluster", "antikt", "rho", "jec", "trigger"], ["CaloCell"], cfg)
    # a doublets-only menu runs without any jets
    got = run_trigger("cpu", jets_from([[], [(60.0, 0.0)]]), TriggerConfig(menu=menu),
                      {"doublets": Collection.from_counts([0, 2], {"x": np.zeros(2)})})
    assert got["D1"].tolist() == [False, True]


def test_broken_menu_fails_at_planning(tmp_path):
    bad = write_menu(tmp_path, "[[path]]\nname = 'X'\ntype = 'nope'\n")
    with pytest.raises(ConfigError, match="'type' = 'nope'"):
        plan(None, ["CaloCell"], config_from_dict({"trigger": {"menu": bad}}))


@pytest.mark.parametrize("text, message", [
    ("", "no \\[\\[path\\]\\] tables"),
    ("title = 'x'\n", "unknown top-level key"),
    ("[[path]]\nname = 'A'\ntype = 'jet'\npt_min = 1.0\n", "'type' = 'jet'; choices: single_jet"),
    ("[[path]]\nname = '9A'\ntype = 'ht'\n", "valid identifier"),
    ("[[path]]\ntype = 'ht'\n", "path #1: 'name'"),
    ("[[path]]\nname = 'A'\ntype = 'ht'\nht_min = 1.0\n", "missing key.*jet_pt_min"),
    ("[[path]]\nname = 'A'\ntype = 'single_jet'\npt_min = 1.0\nn_min = 2\n",
     "unknown key.*n_min.*valid keys: eta_max, jets, name, prescale, pt_min, type"),
    ("[[path]]\nname = 'A'\ntype = 'single_jet'\npt_min = -1.0\n", "'pt_min' must be a non-neg"),
    ("[[path]]\nname = 'A'\ntype = 'single_jet'\npt_min = true\n", "'pt_min' must be"),
    ("[[path]]\nname = 'A'\ntype = 'multi_jet'\npt_min = 1.0\nn_min = 2.5\n", "'n_min' must be"),
    ("[[path]]\nname = 'A'\ntype = 'doublets'\nn_min = 2\nprescale = 1.5\n", "'prescale' must"),
    ("[[path]]\nname = 'A'\ntype = 'doublets'\nn_min = 2\ncollection = ''\n", "'collection'"),
    ("[[path]]\nname = 'A'\ntype = 'doublets'\nn_min = 2\n[[path]]\nname = 'A'\n"
     "type = 'doublets'\nn_min = 3\n", "used twice"),
    ("[[path]]\nname = 'any_path'\ntype = 'doublets'\nn_min = 2\n", "reserved"),
    ("[[path]\n", "not valid TOML"),
])
def test_menu_errors_name_file_path_and_key(tmp_path, text, message):
    path = write_menu(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_menu(path)
    assert path in str(info.value)


def test_missing_menu_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_menu("/no/such/menu.toml")
    with pytest.raises(ConfigError, match="no built-in menu 'nope.toml'; shipped: .*menu.toml"):
        load_menu("builtin:nope.toml")


KINDS = ["single_jet", "multi_jet", "ht", "doublets"]


@st.composite
def menus_and_events(draw):
    n_paths = draw(st.integers(1, 6))
    paths = []
    for i in range(n_paths):
        kind = draw(st.sampled_from(KINDS))
        thr = draw(st.sampled_from([0.0, 10.0, 30.0, 55.5, 80.0]))
        paths.append(TriggerPath(
            f"P{i}", kind, pt_min=thr, eta_max=draw(st.sampled_from([1.0, 2.5, 5.0])),
            ht_min=draw(st.sampled_from([0.0, 50.0, 100.0, 200.0])),
            n_min=draw(st.integers(0, 5)), prescale=draw(st.integers(0, 4)),
            collection="doublets" if kind == "doublets" else ""))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_events = draw(st.integers(1, 12))
    counts = rng.integers(0, 9, n_events)
    m = int(counts.sum())
    # thresholds hit exactly now and then: pt drawn from a grid that contains them
    pt = np.where(rng.random(m) < 0.3, rng.choice([10.0, 30.0, 55.5, 80.0], m),
                  rng.exponential(40.0, m))
    eta = np.where(rng.random(m) < 0.2, rng.choice([-2.5, 1.0, 5.0], m), rng.uniform(-5, 5, m))
    jets = Collection.from_counts(counts, {"pt": pt, "eta": eta, "phi": np.zeros(m)})
    dcounts = rng.integers(0, 8, n_events)
    doublets = Collection.from_counts(dcounts, {"x": np.zeros(int(dcounts.sum()))})
    return tuple(paths), jets, doublets, draw(st.integers(0, 1000))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(menus_and_events())
def test_backends_agree_on_random_menus(case):
    paths, jets, doublets, first_entry = case
    ref = decide_reference(jets["pt"], jets["eta"], jets.offsets,
                           {"doublets": doublets.counts}, first_entry, paths)
    for b in ("cpu", "cuda"):
        got = _kernel_decisions(b, paths, jets, doublets, first_entry)
        for p in paths:
            np.testing.assert_array_equal(got.accept[p.name], ref.accept[p.name],
                                          err_msg=f"{b} {p}")
            np.testing.assert_array_equal(got.before_prescale[p.name],
                                          ref.before_prescale[p.name], err_msg=f"{b} {p}")


def _kernel_decisions(backend, paths, jets, doublets, first_entry):
    from hltemu.stages import trigger as T

    be = get_backend(backend)
    batch = EventBatch(be, jets.n_events, {"corrected_jets": jets.to(be),
                                           "doublets": doublets.to(be)}, first_entry=first_entry)
    prep = T.prepare_paths(paths, be)
    out = T.decide_cpu(batch, prep) if backend == "cpu" else T.decide_cuda(batch, prep)
    return T.Decisions(*({k: be.to_host(v) for k, v in d.items()} for d in out))


def test_reference_against_a_plain_loop():
    """The reference's vectorised decisions against a per-event loop over jets."""
    rng = np.random.default_rng(9)
    jets = sample_jets()
    paths = load_menu(TriggerConfig().menu)
    pt = jets["pt"] * rng.uniform(0.8, 2.0, jets.size)  # spread the thresholds' reach
    n_doublets = rng.integers(4000, 12000, size=jets.n_events)
    counts = {"filtered_doublets": n_doublets}
    ref = decide_reference(pt, jets["eta"], jets.offsets, counts, 0, paths)
    for i in range(jets.n_events):
        lo, hi = jets.offsets[i], jets.offsets[i + 1]
        for p in paths:
            good = [k for k in range(lo, hi)
                    if pt[k] >= p.pt_min and abs(jets["eta"][k]) <= p.eta_max]
            passed = {"single_jet": len(good) >= 1, "multi_jet": len(good) >= p.n_min,
                      "ht": sum(pt[k] for k in good) >= p.ht_min,
                      "doublets": n_doublets[i] >= p.n_min}[p.kind]
            assert ref.before_prescale[p.name][i] == passed, (p.name, i)
            passed = passed and p.prescale > 0 and (i + 1) % p.prescale == 0
            assert ref.accept[p.name][i] == passed, (p.name, i)


def test_chain_on_pythia_events(backend, tmp_path):
    """rho -> jec -> trigger on the sample's calorimeter cells and FastJet jets of its
    particles, on every backend."""
    cells, jets = sample_cells(), sample_jets()
    n = jets.n_events
    if backend.name == "cuda":
        cells, jets, n = cells.select_events(0, 2), jets.select_events(0, 2), 2
    chain = [get_stage(s) for s in ("rho", "jec", "trigger")]
    # stand-in CNN-filtered doublets (only their multiplicity matters), either side of 8000
    doublets = Collection.from_counts(np.arange(n) * 1000 + 5000,
                                      {"score": np.zeros(int((np.arange(n) * 1000 + 5000).sum()))})
    out = {}
    for b in ("reference", backend.name):
        be = get_backend(b)
        batch = EventBatch(be, n, {"CaloCell": cells.to(be), "jets": jets.to(be),
                                   "filtered_doublets": doublets.to(be)})
        run_batch(batch, chain, default_config())
        out[b] = batch
    ref, got = out["reference"], out[backend.name]
    np.testing.assert_allclose(got["rho"].to_host()["rho"], ref["rho"]["rho"], rtol=1e-12)
    np.testing.assert_allclose(got["corrected_jets"].to_host()["pt"], ref["corrected_jets"]["pt"],
                               rtol=1e-12)
    for name, col in ref["trigger"].columns.items():
        np.testing.assert_array_equal(got["trigger"].to_host()[name], col, err_msg=name)
    report = RunReport(backend.name, backend.device)
    count_products(got, chain, report)
    counts = report.counters["trigger accepts"]
    assert set(counts) == set(ref["trigger"].columns)
    assert counts[ANY_PATH] == int(ref["trigger"][ANY_PATH].sum()) > 0
    expect = (np.arange(n) * 1000 + 5000) >= 8000
    np.testing.assert_array_equal(ref["trigger"]["HLT_PixelDoublets8000"], expect)


def test_cli_run_prints_per_path_accept_counts(tmp_path):
    """`hltemu run` on a file holding calorimeter cells and jets prints each path's accepts."""
    from hltemu import io
    from hltemu.cli import cli

    cells, jets = sample_cells(), sample_jets()
    path = tmp_path / "jets.root"
    be = get_backend("reference")
    with io.OutputWriter(path) as w:
        w.write(EventBatch(be, jets.n_events, {"CaloCell": cells, "jets": jets}),
                ["CaloCell", "jets"])
    out_root, report = tmp_path / "out.root", tmp_path / "report.json"
    args = ["run", str(path), "--backend", "cpu", "--stages", "rho,jec,trigger", "--no-progress",
            "--output", str(out_root), "--report", str(report)]
    # the default menu's doublet path needs stages doublets and doublet_cnn: it is dropped
    # before the run, with a note naming the path, the collection and the stage that makes it
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    note = " ".join(result.output.split())
    assert ("note trigger: path HLT_PixelDoublets8000 dropped: needs 'filtered_doublets' (made "
            "by stage 'doublet_cnn')") in note
    assert "stages: rho, jec, trigger" in note
    assert json.loads(report.read_text())["plan"]["facts"]["trigger"]["dropped_paths"] == [
        "HLT_PixelDoublets8000"]
    jet_paths = [p.name for p in load_menu(TriggerConfig().menu) if p.kind != "doublets"]
    # naming the doublet path explicitly is an error, before anything is read
    cfg_path = tmp_path / "named.toml"
    cfg_path.write_text('[trigger]\npaths = ["HLT_CaloJet80", "HLT_PixelDoublets8000"]\n')
    named = CliRunner().invoke(cli, [*args, "--config", str(cfg_path)])
    assert named.exit_code == 1
    assert "[trigger] paths names HLT_PixelDoublets8000" in " ".join(named.output.split())
    batch = EventBatch(be, jets.n_events, {"CaloCell": cells, "jets": jets})
    cfg = config_from_dict({"trigger": {"paths": jet_paths}})
    run_batch(batch, [get_stage(s) for s in ("rho", "jec", "trigger")], cfg)
    assert "trigger paths" in result.output
    rows = {cells[0]: cells[1:] for line in result.output.splitlines() if line.startswith("│")
            for cells in [[c.strip() for c in line.strip("│").split("│")]]}
    for name, col in batch["trigger"].columns.items():
        k, k_pre = int(col.sum()), int(batch["trigger_pre"][name].sum())
        assert rows[name][1:] == [f"{k_pre} ({100 * k_pre / jets.n_events:.2f}%)", str(k),
                                  f"{100 * k / jets.n_events:.2f}%"], rows[name]
    assert rows["HLT_CaloJet40"][0] == "1/10" and rows["HLT_CaloJet80"][0] == "1"
    back = io.read_collections(str(out_root), ["trigger", "corrected_jets"])
    np.testing.assert_array_equal(back["trigger"]["HLT_CaloJet80"],
                                  batch["trigger"]["HLT_CaloJet80"])
    assert math.isclose(float(back["corrected_jets"]["pt"][0]),
                        float(batch["corrected_jets"]["pt"][0]), rel_tol=1e-12)


# ---- pixel-track and pixel-vertex multiplicity paths -------------------------------------------

PIXEL_MENU = """
[[path]]
name = "J50"
type = "single_jet"
pt_min = 50.0

[[path]]
name = "Trk1"
type = "pixeltracks"
n_min = 1
pt_min = 0.9
eta_max = 2.4

[[path]]
name = "Trk2QuadDz"
type = "pixeltracks"
n_min = 2
pt_min = 0.9
eta_max = 2.4
min_hits = 4
dz_max = 0.25

[[path]]
name = "Vtx2"
type = "pixelvertices"
n_min = 2

[[path]]
name = "Vtx1Big"
type = "pixelvertices"
n_min = 1
min_tracks = 5
"""


def pixel_objects_from(tracks: list[list[tuple[float, float, int, float]]],
                       vertices: list[list[tuple[float, int]]]) -> dict[str, Collection]:
    """``pixeltracks`` from per-event (pt [GeV], eta, n_hits, z0 [cm]) and ``pixelvertices``
    from per-event (z [cm], n_tracks), primary vertex first."""
    flat = [t for e in tracks for t in e]
    trk = Collection.from_counts([len(e) for e in tracks], {
        "pt": np.array([t[0] for t in flat], dtype=np.float64),
        "eta": np.array([t[1] for t in flat], dtype=np.float64),
        "n_hits": np.array([t[2] for t in flat], dtype=np.int32),
        "z0": np.array([t[3] for t in flat], dtype=np.float64)})
    vflat = [v for e in vertices for v in e]
    vtx = Collection.from_counts([len(e) for e in vertices], {
        "z": np.array([v[0] for v in vflat], dtype=np.float64),
        "n_tracks": np.array([v[1] for v in vflat], dtype=np.int32)})
    return {"pixeltracks": trk, "pixelvertices": vtx}


def test_pixel_menu_parses_and_states_its_needs(tmp_path):
    menu = write_menu(tmp_path, PIXEL_MENU)
    paths = {p.name: p for p in load_menu(menu)}
    assert paths["Trk1"].min_hits == 3 and math.isinf(paths["Trk1"].dz_max)
    assert paths["Trk2QuadDz"].min_hits == 4 and paths["Trk2QuadDz"].dz_max == 0.25
    assert paths["Vtx2"].min_tracks == 0 and paths["Vtx1Big"].min_tracks == 5
    stage = get_stage("trigger")
    assert stage.needs_for(TriggerConfig(menu=menu, paths=("Trk1",))) == ("pixeltracks",)
    assert stage.needs_for(TriggerConfig(menu=menu, paths=("Trk2QuadDz",))) == (
        "pixeltracks", "pixelvertices")
    assert stage.needs_for(TriggerConfig(menu=menu, paths=("Vtx2",))) == ("pixelvertices",)
    from hltemu.stages.trigger import path_summary

    assert path_summary(paths["Trk1"]) == {"name": "Trk1", "type": "pixeltracks", "n_min": 1,
                                           "pt_min": 0.9, "eta_max": 2.4, "min_hits": 3,
                                           "prescale": 1}
    assert path_summary(paths["Trk2QuadDz"])["dz_max"] == 0.25
    assert path_summary(paths["Vtx1Big"]) == {"name": "Vtx1Big", "type": "pixelvertices",
                                              "n_min": 1, "min_tracks": 5, "prescale": 1}


@pytest.mark.parametrize("text, message", [
    ("[[path]]\nname = 'T'\ntype = 'pixeltracks'\nn_min = 2\npt_min = 0.5\n",
     "missing key.*eta_max"),
    ("[[path]]\nname = 'T'\ntype = 'pixeltracks'\nn_min = 2\npt_min = 0.5\neta_max = 2.4\n"
     "min_hits = 3.5\n", "'min_hits' must be a non-negative integer, got 3.5"),
    ("[[path]]\nname = 'T'\ntype = 'pixeltracks'\nn_min = 2\npt_min = 0.5\neta_max = 2.4\n"
     "dz_max = 0.0\n", "'dz_max' must be a positive distance \\[cm\\].*got 0.0"),
    ("[[path]]\nname = 'T'\ntype = 'pixeltracks'\nn_min = 2\npt_min = 0.5\neta_max = 2.4\n"
     "dz_max = -0.1\n", "'dz_max' must be a non-negative number"),
    ("[[path]]\nname = 'T'\ntype = 'pixeltracks'\nn_min = 2\npt_min = 0.5\neta_max = 2.4\n"
     "min_tracks = 2\n", "unknown key.*min_tracks.*valid keys: dz_max, eta_max, min_hits"),
    ("[[path]]\nname = 'V'\ntype = 'pixelvertices'\nn_min = 2\nmin_tracks = -1\n",
     "'min_tracks' must be a non-negative integer"),
    ("[[path]]\nname = 'V'\ntype = 'pixelvertices'\nn_min = 2\npt_min = 1.0\n",
     "unknown key.*pt_min.*for type 'pixelvertices'"),
])
def test_pixel_menu_errors(tmp_path, text, message):
    path = write_menu(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_menu(path)
    assert path in str(info.value)


def test_hand_checked_pixel_decisions(tmp_path, backend):
    """Thresholds hit exactly (inclusive cuts), a dz cut to the PV only, an event without a
    vertex, an empty event; all three backends."""
    menu = write_menu(tmp_path, PIXEL_MENU)
    tracks = [
        [(1.0, 2.4, 4, 1.25),   # Trk1; Trk2QuadDz at its eta and dz edges (PV at 1.0)
         (0.9, 0.0, 3, 1.0),    # Trk1 at its pT edge; 3 hits: not Trk2QuadDz
         (2.0, -1.0, 5, 6.0),   # at the second vertex, 5 cm from the PV
         (3.0, 0.5, 4, 0.75)],  # Trk2QuadDz (dz 0.25): two tracks pass
        [(5.0, 0.0, 4, 0.0), (5.0, 0.1, 4, 0.0)],  # no vertex: no track passes a dz cut
        [],
        [(0.899, 0.0, 4, -3.0),  # below pT
         (1.0, 2.41, 4, -3.0),   # beyond eta
         (1.0, 1.0, 4, -3.0),    # passes everything
         (1.0, -2.5, 4, -2.75)], # beyond eta: one track for Trk2QuadDz
    ]
    vertices = [[(1.0, 5), (6.0, 2)], [], [], [(-3.0, 5)]]
    extra = pixel_objects_from(tracks, vertices)
    jets = jets_from([[(60.0, 0.0)], [], [], []])
    expected = {"J50": [True, False, False, False],
                "Trk1": [True, True, False, True],
                "Trk2QuadDz": [True, False, False, False],
                "Vtx2": [True, False, False, False],
                "Vtx1Big": [True, False, False, True]}
    for coll in ("trigger", "trigger_pre"):
        got = run_trigger(backend, jets, TriggerConfig(menu=menu), extra, collection=coll)
        for name, want in expected.items():
            assert got[name].tolist() == want, (coll, name)
        assert got[ANY_PATH].tolist() == [True, True, False, True]
    # a pixel-only menu runs without jets; its collections checked by the stage
    only = TriggerConfig(menu=menu, paths=("Trk2QuadDz", "Vtx2"))
    be = get_backend(backend)
    batch = EventBatch(be, 4, {k: v.to(be) for k, v in extra.items()})
    out = get_stage("trigger")(batch, only)["trigger"]
    assert be.to_host(out["Trk2QuadDz"]).tolist() == expected["Trk2QuadDz"]
    no_vertices = EventBatch(be, 4, {"pixeltracks": extra["pixeltracks"].to(be)})
    with pytest.raises(PipelineError, match=r"needs collection\(s\) \['pixelvertices'\]"):
        get_stage("trigger")(no_vertices, only)


def test_pixel_paths_need_their_stages_in_the_chain(tmp_path):
    """The default chain has no pixeltracks: the pixel paths are planned out with a note naming
    the stage that makes what they read; a chain with pixeltracks but no pixelvertices keeps
    the track path without a dz cut only."""
    menu = write_menu(tmp_path, PIXEL_MENU)
    cfg = config_from_dict({"trigger": {"menu": menu}})
    p = plan(None, ["CaloCell", "PixelHit"], cfg)
    assert "pixeltracks" not in [st.name for st in p.stages]
    assert p.config["trigger"].paths == ("J50",)
    assert p.facts["trigger"]["dropped_paths"] == ["Trk1", "Trk2QuadDz", "Vtx2", "Vtx1Big"]
    assert ("trigger: path Trk2QuadDz dropped: needs 'pixeltracks' (made by stage "
            "'pixeltracks'), 'pixelvertices' (made by stage 'pixelvertices'), which this chain "
            "does not have") in p.notes
    p = plan(["doublets", "pixeltracks", "trigger"], ["PixelHit"], cfg)
    assert p.config["trigger"].paths == ("Trk1",)
    p = plan(["doublets", "pixeltracks", "pixelvertices", "trigger"], ["PixelHit"], cfg)
    assert p.config["trigger"].paths == ("Trk1", "Trk2QuadDz", "Vtx2", "Vtx1Big")
    # the default menu plans exactly as before: no pixel paths, nothing more to note
    default = plan(None, ["CaloCell", "PixelHit"], default_config())
    assert not default.notes and default.config["trigger"].paths == ()


def _pixel_loop(p: TriggerPath, trk: Collection, vtx: Collection, i: int) -> bool:
    """Path ``p``'s filter on event ``i``, one object at a time (the oracle of the random
    test)."""
    if p.kind == "pixelvertices":
        rows = range(vtx.offsets[i], vtx.offsets[i + 1])
        return sum(int(vtx["n_tracks"][j]) >= p.min_tracks for j in rows) >= p.n_min
    has_pv = vtx.offsets[i + 1] > vtx.offsets[i]
    n = 0
    for j in range(trk.offsets[i], trk.offsets[i + 1]):
        ok = (trk["pt"][j] >= p.pt_min and abs(trk["eta"][j]) <= p.eta_max
              and trk["n_hits"][j] >= p.min_hits)
        if math.isfinite(p.dz_max):
            ok = ok and has_pv and abs(trk["z0"][j] - vtx["z"][vtx.offsets[i]]) <= p.dz_max
        n += ok
    return n >= p.n_min


@st.composite
def pixel_menus_and_events(draw):
    paths = []
    for i in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["pixeltracks", "pixelvertices"]))
        paths.append(TriggerPath(
            f"P{i}", kind, pt_min=draw(st.sampled_from([0.0, 0.5, 0.9, 2.0])),
            eta_max=draw(st.sampled_from([1.0, 2.4, 3.0])), n_min=draw(st.integers(0, 6)),
            prescale=draw(st.integers(0, 3)),
            min_hits=draw(st.integers(3, 5)) if kind == "pixeltracks" else 0,
            dz_max=draw(st.sampled_from([math.inf, 0.05, 0.25, 1.0]))
            if kind == "pixeltracks" else math.inf,
            min_tracks=draw(st.integers(0, 6)) if kind == "pixelvertices" else 0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_events = draw(st.integers(1, 10))
    n_vtx = rng.integers(0, 4, n_events)
    n_vtx[rng.random(n_events) < 0.3] = 0  # events without a primary vertex
    m_v = int(n_vtx.sum())
    vtx = Collection.from_counts(n_vtx, {"z": rng.uniform(-10, 10, m_v),
                                         "n_tracks": rng.integers(2, 8, m_v).astype(np.int32)})
    n_trk = rng.integers(0, 12, n_events)
    m = int(n_trk.sum())
    event = np.repeat(np.arange(n_events), n_trk)
    pv = np.where(n_vtx > 0, np.concatenate([vtx["z"], [0.0]])[vtx.offsets[:-1]], 0.0)
    # thresholds hit exactly now and then: values drawn from grids that contain them
    pt = np.where(rng.random(m) < 0.3, rng.choice([0.5, 0.9, 2.0], m), rng.exponential(1.5, m))
    eta = np.where(rng.random(m) < 0.3, rng.choice([-2.4, 1.0, 3.0], m), rng.uniform(-3, 3, m))
    z0 = pv[event] + np.where(rng.random(m) < 0.3, rng.choice([-0.25, 0.05, 1.0], m),
                              rng.normal(0.0, 0.5, m))
    trk = Collection.from_counts(n_trk, {"pt": pt, "eta": eta, "z0": z0,
                                         "n_hits": rng.integers(3, 6, m).astype(np.int32)})
    return tuple(paths), trk, vtx, draw(st.integers(0, 1000))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pixel_menus_and_events())
def test_pixel_paths_agree_on_every_backend(case):
    """Reference against a per-object loop, cpu and cuda (the simulator where there is no GPU)
    against the reference, on random menus, tracks and vertices."""
    from hltemu.stages import trigger as T

    paths, trk, vtx, first_entry = case
    n = trk.n_events
    pix = T.PixelObjects(trk["pt"], trk["eta"], trk["n_hits"].astype(np.int64), trk["z0"],
                         trk.offsets, vtx["z"], vtx["n_tracks"].astype(np.int64), vtx.offsets)
    ref = decide_reference(np.zeros(0), np.zeros(0), np.zeros(n + 1, dtype=np.int64), {},
                           first_entry, paths, pix)
    for p in paths:
        want = [_pixel_loop(p, trk, vtx, i) for i in range(n)]
        assert ref.before_prescale[p.name].tolist() == want, p
    for b in ("cpu", "cuda"):
        be = get_backend(b)
        batch = EventBatch(be, n, {"pixeltracks": trk.to(be), "pixelvertices": vtx.to(be)},
                           first_entry=first_entry)
        prep = T.prepare_paths(paths, be)
        got = T.decide_cpu(batch, prep) if b == "cpu" else T.decide_cuda(batch, prep)
        for p in paths:
            np.testing.assert_array_equal(be.to_host(got.accept[p.name]), ref.accept[p.name],
                                          err_msg=f"{b} {p}")
            np.testing.assert_array_equal(be.to_host(got.before_prescale[p.name]),
                                          ref.before_prescale[p.name], err_msg=f"{b} {p}")


def test_pixel_paths_end_to_end_match_the_written_products(tmp_path):
    """`run_files` with stages doublets, pixeltracks, pixelvertices, trigger on the built-in
    sample: each pixel path's decisions equal the tracks and vertices counted by hand from the
    output file; the jet path is dropped with a note.  A first run (every n_min 0) gives the
    counts per event; the second puts each path's n_min at their median, so that each path
    passes some events and fails others whatever the tracking's details."""
    import awkward as ak
    import uproot

    from hltemu.pipeline import run_files

    sample = Path(str(resources.files("hltemu") / "data" / "sample.root"))
    paths = """
[[path]]
name = "J50"
type = "single_jet"
pt_min = 50.0

[[path]]
name = "Trk"
type = "pixeltracks"
n_min = {Trk}
pt_min = 0.5
eta_max = 2.4

[[path]]
name = "TrkQuadDz"
type = "pixeltracks"
n_min = {TrkQuadDz}
pt_min = 0.9
eta_max = 2.4
min_hits = 4
dz_max = 0.25

[[path]]
name = "Vtx"
type = "pixelvertices"
n_min = {Vtx}

[[path]]
name = "VtxTrk3"
type = "pixelvertices"
n_min = {VtxTrk3}
min_tracks = 3
"""

    def run(n_min: dict[str, int], out: Path) -> tuple[dict[str, np.ndarray], ak.Array, list]:
        notes: list[str] = []
        menu = tmp_path / f"{out.stem}.toml"
        menu.write_text(paths.format(**n_min))
        report = run_files([sample], backend="cpu", output=out,
                           stages=["doublets", "pixeltracks", "pixelvertices", "trigger"],
                           config=config_from_dict({"trigger": {"menu": str(menu)}}),
                           on_plan=lambda p: notes.extend(p.notes))
        with uproot.open(out) as f:
            a = f["Events"].arrays(library="ak")
        pt, eta, nh, z0 = (a[f"pixeltracks_{c}"] for c in ("pt", "eta", "n_hits", "z0"))
        vz, vn = a["pixelvertices_z"], a["pixelvertices_n_tracks"]
        pv = ak.fill_none(ak.firsts(vz), np.nan)  # no vertex: NaN fails every dz cut
        by_hand = {
            "Trk": ak.sum((pt >= 0.5) & (abs(eta) <= 2.4), axis=1),
            "TrkQuadDz": ak.sum((pt >= 0.9) & (abs(eta) <= 2.4) & (nh >= 4)
                                & (abs(z0 - pv) <= 0.25), axis=1),
            "Vtx": ak.num(vz),
            "VtxTrk3": ak.sum(vn >= 3, axis=1),
        }
        return {k: ak.to_numpy(v) for k, v in by_hand.items()}, a, [notes, report]

    first, _, _ = run({"Trk": 0, "TrkQuadDz": 0, "Vtx": 0, "VtxTrk3": 0}, tmp_path / "a.root")
    medians = {k: int(np.median(v)) for k, v in first.items()}
    counts, a, (notes, report) = run(medians, tmp_path / "b.root")
    assert notes == ["trigger: path J50 dropped: needs 'corrected_jets' (made by stage 'jec'), "
                     "which this chain does not have"]
    for name, n in counts.items():
        np.testing.assert_array_equal(n, first[name], err_msg=name)  # the same products
        want = n >= medians[name]
        assert 0 < want.sum() < len(a), name  # the path passes some events, fails others
        np.testing.assert_array_equal(ak.to_numpy(a[f"trigger_{name}"]), want, err_msg=name)
        np.testing.assert_array_equal(ak.to_numpy(a[f"trigger_pre_{name}"]), want, err_msg=name)
        assert report.counters["trigger accepts"][name] == int(want.sum())
    assert "trigger_J50" not in a.fields


# -- jet paths on other jet collections (issue 20: regressed_jets) -----------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(menus_and_events(), st.integers(0, 2**32 - 1))
def test_paths_on_two_jet_collections_agree_on_every_backend(case, seed):
    """Each jet path cuts on its own collection (``jets``): the decisions of a menu mixing
    corrected_jets and regressed_jets paths equal, path by path, those of the same path run on
    that collection alone, on the reference, cpu and cuda (the simulator without a GPU)."""
    from hltemu.stages import trigger as T

    paths, jets, doublets, first_entry = case
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 6, jets.n_events)
    m = int(counts.sum())
    other = Collection.from_counts(counts, {"pt": rng.exponential(50.0, m),
                                            "eta": rng.uniform(-4, 4, m), "phi": np.zeros(m)})
    paths = tuple(replace(p, jets="regressed_jets") if p.kind in T.JET_KINDS and i % 2 else p
                  for i, p in enumerate(paths))
    colls = {"corrected_jets": jets, "regressed_jets": other}
    want = {}
    for p in paths:
        j = colls[T.jet_collection(p)] if p.kind in T.JET_KINDS else jets
        want[p.name] = decide_reference(j["pt"], j["eta"], j.offsets,
                                        {"doublets": doublets.counts}, first_entry, (p,))
    for b in ("reference", "cpu", "cuda"):
        be = get_backend(b)
        batch = EventBatch(be, jets.n_events, {**{k: v.to(be) for k, v in colls.items()},
                                               "doublets": doublets.to(be)},
                           first_entry=first_entry)
        prep = T.prepare_paths(paths, be)
        got = {"reference": T.decide_batch_reference, "cpu": T.decide_cpu,
               "cuda": T.decide_cuda}[b](batch, prep)
        for p in paths:
            np.testing.assert_array_equal(be.to_host(got.accept[p.name]),
                                          want[p.name].accept[p.name], err_msg=f"{b} {p}")
            np.testing.assert_array_equal(be.to_host(got.before_prescale[p.name]),
                                          want[p.name].before_prescale[p.name],
                                          err_msg=f"{b} {p}")


def test_jets_key_of_a_menu(tmp_path):
    """``jets`` names the collection a jet path needs; the default is corrected_jets and is
    not repeated in the path's summary; a bad value names the path; a chain without the
    collection drops the path with a note naming the stage that makes it."""
    from hltemu.stages import trigger as T

    menu = tmp_path / "menu.toml"
    menu.write_text('[[path]]\nname = "A"\ntype = "single_jet"\npt_min = 80.0\n\n'
                    '[[path]]\nname = "B"\ntype = "ht"\nht_min = 300.0\njet_pt_min = 30.0\n'
                    'jets = "regressed_jets"\n')
    a, b = load_menu(str(menu))
    assert T.path_needs(a) == ("corrected_jets",) and T.path_needs(b) == ("regressed_jets",)
    assert "jets" not in T.path_summary(a) and T.path_summary(b)["jets"] == "regressed_jets"
    cfg = TriggerConfig(menu=str(menu))
    planned = T.plan(cfg, frozenset({"corrected_jets"}))
    assert planned.config.paths == ("A",)
    assert any("path B dropped" in n and "jet_regression" in n for n in planned.notes)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[path]]\nname = "C"\ntype = "single_jet"\npt_min = 80.0\njets = 3\n')
    with pytest.raises(ConfigError, match=r"path 'C': 'jets' must be a jet collection's name"):
        load_menu(str(bad))
    pix = tmp_path / "pix.toml"
    pix.write_text('[[path]]\nname = "D"\ntype = "doublets"\nn_min = 1\njets = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['jets'\] for type 'doublets'"):
        load_menu(str(pix))
