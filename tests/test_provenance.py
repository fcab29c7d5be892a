"""Provenance and event identifiers: NanoAOD's run, luminosityBlock, event in generated files and
run outputs, the provenance object inside the ROOT file (writer, reader, ``hltemu info FILE``),
what ``hltemu generate`` reproduces, coffea's NanoAODSchema reading an hltemu output, and the
``plots`` extra named when missing."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from click.testing import CliRunner

from hltemu import io, pipeline
from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.cli import builtin_sample, cli
from hltemu.config import ConfigError, GenerateConfig, param
from hltemu.ops import segment_sum

ROOT = Path(__file__).resolve().parent.parent
IDS = ("run", "luminosityBlock", "event")


def _generate(path: Path, *args: str) -> None:
    """``hltemu generate`` of 2 minimum-bias events without pileup (fast) into ``path``."""
    r = CliRunner().invoke(cli, ["generate", "-n", "2", "-p", "minbias", "--no-progress",
                                 "-o", str(path), *args])
    assert r.exit_code == 0, r.output


def _branches(path: Path) -> dict[str, ak.Array]:
    with uproot.open(path) as f:
        tree = f["Events"]
        return {name: tree[name].array(library="ak") for name in tree.keys()}


def _ids(path: Path) -> list[tuple[int, int, int]]:
    b = _branches(path)
    return list(zip(*(b[k].to_list() for k in IDS), strict=True))


def _event_batch(cols: dict[str, np.ndarray], n: int) -> EventBatch:
    return EventBatch(get_backend("reference"), n, {io.EVENT: Collection.event_level(cols)})


# -- event identifiers --------------------------------------------------------------------------
def test_identifiers_of_a_generated_file(tmp_path):
    """NanoAOD's branches and types; run = seed, lumi 1, events from 1; weight 1.0 (float32)."""
    path = tmp_path / "a.root"
    _generate(path, "--seed", "3")
    with uproot.open(path) as f:
        tree = f["Events"]
        assert [b.name for b in tree.branches][:3] == list(IDS)  # first, as in NanoAOD
        assert {k: tree[k].typename for k in (*IDS, "Event_weight")} == {
            "run": "uint32_t", "luminosityBlock": "uint32_t", "event": "uint64_t",
            "Event_weight": "float"}
        assert "Event_event" not in tree.keys()
    assert _ids(path) == [(3, 1, 1), (3, 1, 2)]
    assert _branches(path)["Event_weight"].to_list() == [1.0, 1.0]
    ev = io.read_collections(path, [io.EVENT])[io.EVENT]
    assert list(ev.columns) == [*IDS, "n_pileup", "pv_z", "weight"]
    assert ev["event"].dtype == np.uint64 and ev["run"].dtype == np.uint32


def test_identifiers_are_unique_across_a_production(tmp_path):
    """Files of one production: different seeds (each its own run), or one --run with a
    --lumi per file (event numbers then continue from file to file)."""
    files = {"s5": ["--seed", "5"], "s6": ["--seed", "6"],
             "l1": ["--seed", "7", "--run", "100", "--lumi", "1"],
             "l2": ["--seed", "8", "--run", "100", "--lumi", "2"],
             "l3": ["--seed", "9", "--run", "100", "--lumi", "3", "--first-event", "1000"]}
    ids = {}
    for name, args in files.items():
        _generate(tmp_path / f"{name}.root", *args)
        ids[name] = _ids(tmp_path / f"{name}.root")
    assert ids["s5"] == [(5, 1, 1), (5, 1, 2)] and ids["s6"] == [(6, 1, 1), (6, 1, 2)]
    assert ids["l1"] == [(100, 1, 1), (100, 1, 2)] and ids["l2"] == [(100, 2, 3), (100, 2, 4)]
    assert ids["l3"] == [(100, 3, 1000), (100, 3, 1001)]
    everything = [i for v in ids.values() for i in v]
    assert len(set(everything)) == len(everything)
    summary = io.event_id_summary(tmp_path / "l2.root")
    assert summary == {"events": 2, "columns": list(IDS), "runs": [100], "n_runs": 1,
                       "luminosityBlock": [2, 2], "event": [3, 4], "duplicates": 0}


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": 2**32}, "seed 4294967296 is too large for a run number (uint32"),
    ({"run": 2**32}, "run must be between 0 and 4294967295 (uint32), got 4294967296"),
    ({"lumi": 0}, "lumi must be between 1 and 4294967295"),
    ({"first_event": 2**64 - 1, "events": 2}, "the last event number 18446744073709551616 is "
                                              "too large (uint64"),
])
def test_identifier_settings_out_of_range(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        GenerateConfig(**kwargs)


def test_identifier_defaults():
    cfg = GenerateConfig(events=50, seed=12, lumi=4)
    assert (cfg.run_number, cfg.lumi, cfg.first_event_number) == (12, 4, 151)
    assert GenerateConfig(seed=2**40, run=1).run_number == 1  # a large seed needs --run


@dataclass(frozen=True)
class JetHtConfig:
    """Settings of the test stage ``jet_ht``."""

    pt_min: float = param(0.0, "GeV", "jets above this pT are summed")


def _jet_ht(batch: EventBatch, cfg: JetHtConfig) -> dict[str, Collection]:
    be = batch.backend
    pt = batch["Jet"]["pt"]
    ht = segment_sum(be.xp.where(pt > cfg.pt_min, pt, 0.0), batch["Jet"].offsets, be)
    return {"jet_ht": Collection.event_level({"ht": ht}, be.xp)}


@pytest.fixture
def jet_ht_stage():
    """A stage that runs on CMS NanoAOD (its Jet), registered for one test."""
    stage = pipeline.Stage("jet_ht", needs=("Jet",), adds=("jet_ht",), config_type=JetHtConfig,
                           implementations={"reference": _jet_ht, "cpu": _jet_ht},
                           doc="scalar sum of jet pT (test stage)")
    pipeline.registered_stages()
    pipeline.register(stage)
    yield stage
    pipeline._REGISTRY.pop(stage.name, None)


def test_run_output_carries_the_input_identifiers(tmp_path, cms_nanoaod, jet_ht_stage):
    """hltemu run copies run, luminosityBlock, event (types too) from a file it did not
    write: CMS NanoAOD."""
    out = tmp_path / "nano-out.root"
    r = CliRunner().invoke(cli, ["run", str(cms_nanoaod), "-b", "cpu", "-s", "jet_ht", "-n", "7",
                                 "-o", str(out), "-r", str(tmp_path / "r.json"), "--no-progress"])
    assert r.exit_code == 0, r.output
    with uproot.open(cms_nanoaod) as f, uproot.open(out) as g:
        assert set(g["Events"].keys()) == {*IDS, "jet_ht_ht"}
        for name in IDS:
            want, got = f["Events"][name].array(library="np")[:7], g["Events"][name]
            np.testing.assert_array_equal(got.array(library="np"), want)
            assert got.typename == f["Events"][name].typename, name


def test_legacy_event_branch_is_the_event_column(tmp_path):
    """A file written before the identifiers (Event_event, int64) is still read; a file with
    both event and Event_event is refused, naming both."""
    legacy = tmp_path / "legacy.root"
    with uproot.recreate(legacy) as f:
        f.mktree("Events", {"Event_event": np.int64, "Event_pv_z": np.float32})
        f["Events"].extend({"Event_event": np.arange(3), "Event_pv_z": np.zeros(3, np.float32)})
    ev = io.read_collections(legacy, [io.EVENT])[io.EVENT]
    assert ev["event"].tolist() == [0, 1, 2] and ev["event"].dtype == np.uint64
    assert io.event_id_summary(legacy)["columns"] == ["event"]
    both = tmp_path / "both.root"
    with uproot.recreate(both) as f:
        f.mktree("Events", {"event": np.uint64, "Event_event": np.int64})
        f["Events"].extend({"event": np.arange(3, dtype=np.uint64), "Event_event": np.arange(3)})
    with pytest.raises(io.InputError, match=r"both\.root, tree 'Events': collection 'Event': "
                                            r"branches 'event' and 'Event_event' both hold "
                                            r"column 'event'"):
        io.read_collections(both, [io.EVENT])


def test_duplicated_identifiers_are_counted(tmp_path):
    path = tmp_path / "dup.root"
    cols = {"run": np.array([1, 1, 2, 1], np.uint32),
            "luminosityBlock": np.array([1, 1, 1, 1], np.uint32),
            "event": np.array([5, 6, 5, 5], np.uint64)}
    with io.OutputWriter(path) as w:
        w.write(_event_batch(cols, 4))
    s = io.event_id_summary(path)
    assert s["duplicates"] == 1 and s["runs"] == [1, 2] and s["event"] == [5, 6]


# -- the provenance object ----------------------------------------------------------------------
def test_writer_writes_the_last_provenance_at_close(tmp_path):
    path = tmp_path / "p.root"
    cols = {"event": np.arange(1, 4, dtype=np.uint64)}
    with io.OutputWriter(path, provenance={"kind": "first"}) as w:
        w.write(_event_batch(cols, 3))
        w.set_provenance({"kind": "run", "n": np.int64(3), "x": np.float32(0.5),
                          "files": (Path("a.root"),), "arr": np.arange(2), "none": None})
        assert w.provenance["kind"] == "run"
        assert io.read_provenance(path) is None  # not before close
    assert io.read_provenance(path) == {"kind": "run", "n": 3, "x": 0.5, "files": ["a.root"],
                                        "arr": [0, 1], "none": None}
    with uproot.open(path) as f:
        assert f.classnames()[f"{io.PROVENANCE_KEY};1"] == "TObjString"
        assert json.loads(str(f[io.PROVENANCE_KEY]))["kind"] == "run"
    with pytest.raises(io.OutputError, match="is closed"):
        w.set_provenance({})


@pytest.mark.parametrize("value, message", [
    ({"a": {"b": math.nan}}, r"provenance of .*\['a'\]\['b'\] is nan, which JSON cannot hold; "
                             r"use None"),
    ({"a": [1, object()]}, r"\['a'\]\[1\] is a object"),
    ({1: 2}, r"has the key 1, not a string"),
    ([1], r"must be a dict, got list"),
])
def test_provenance_that_json_cannot_hold_is_refused_at_once(tmp_path, value, message):
    with io.OutputWriter(tmp_path / "bad.root") as w:
        with pytest.raises(io.OutputError, match=message):
            w.set_provenance(value)


def test_read_provenance_of_other_files(tmp_path, cms_nanoaod):
    assert io.read_provenance(cms_nanoaod) is None
    with pytest.raises(io.InputError, match="does not exist"):
        io.read_provenance(tmp_path / "missing.root")
    bad = tmp_path / "bad.root"
    with uproot.recreate(bad) as f:
        f[io.PROVENANCE_KEY] = "[1, 2]"
    with pytest.raises(io.InputError, match=r"bad\.root: its 'hltemu_provenance' object is not "
                                            r"a JSON object but a list"):
        io.read_provenance(bad)


def test_provenance_of_a_generated_file(tmp_path):
    path = tmp_path / "g.root"
    r = CliRunner().invoke(cli, ["generate", "-n", "3", "-p", "ttbar", "--pileup", "2",
                                 "--seed", "21", "--lumi", "2", "-o", str(path),
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    p = io.read_provenance(path)
    assert p["format"] == io.PROVENANCE_FORMAT and p["kind"] == "generate"
    assert p["versions"]["pythia8mc"] == "8.317.2" and "hltemu" in p["versions"]
    assert p["command"].startswith("hltemu generate --events 3 --process ttbar --pileup 2 "
                                   "--seed 21 --run 21 --lumi 2 --first-event 4 ")
    s = p["settings"]
    assert (s["process"], s["pileup"], s["seed"], s["events"], s["sqrt_s"]) == (
        "ttbar", 2.0, 21, 3, 13600.0)
    assert p["units"]["sqrt_s"] == "GeV" and p["events"] == 3
    assert p["event_ids"] == {"run": 21, "luminosityBlock": 2, "first_event": 4,
                              "last_event": 6}
    assert _ids(path) == [(21, 2, 4), (21, 2, 5), (21, 2, 6)]
    hard = p["pythia"]["hard_process"]
    assert hard["process"] == "ttbar" and hard["n_accepted"] == 3
    # Pythia's ttbar estimate from 3 events: hundreds of pb, with a large statistical error
    assert 1e-8 < hard["sigma_gen_mb"] < 1e-5 and 0 < hard["sigma_err_mb"] < hard["sigma_gen_mb"]
    assert p["pythia"]["pileup"]["process"] == "minbias"
    n_pu = _branches(path)["Event_n_pileup"].to_list()
    assert p["pileup"]["mean_requested"] == 2.0
    assert p["pileup"]["mean_generated"] == pytest.approx(np.mean(n_pu))
    assert p["pileup"]["total"] == sum(n_pu) == p["pythia"]["pileup"]["n_accepted"]
    assert p["weights"] == {"sum": 3.0, "all_one": True}
    det = p["detector"]
    assert det["default"] and det["non_default"] == {} and det["calorimeter_cells"] == 88320


def test_builtin_sample_has_identifiers_and_provenance():
    sample = builtin_sample()
    p = io.read_provenance(sample)
    assert p["kind"] == "generate" and p["settings"]["seed"] == 2026
    assert p["pileup"]["mean_requested"] == 50.0 and p["events"] == 10
    assert _ids(sample) == [(2026, 1, e) for e in range(1, 11)]


# -- hltemu info FILE ---------------------------------------------------------------------------
def test_info_file_prints_identifiers_and_provenance(tmp_path, cms_nanoaod):
    path = tmp_path / "g.root"
    _generate(path, "--seed", "4", "--run", "77")
    runner = CliRunner(env={"COLUMNS": "200"})
    r = runner.invoke(cli, ["info", str(path)])
    assert r.exit_code == 0, r.output
    assert "entries" in r.output and "Event, GenPart, PixelHit, CaloCell" in r.output
    assert "77" in r.output and "1 to 2" in r.output  # run; event numbers
    start = r.output.index("{")
    shown = json.loads(r.output[start:])
    assert shown == io.read_provenance(path)
    r = runner.invoke(cli, ["info", str(cms_nanoaod)])
    assert r.exit_code == 0, r.output
    assert "no provenance" in r.output and "duplicated identifiers" in r.output
    r = runner.invoke(cli, ["info", str(tmp_path / "missing.root")])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "does not exist" in r.output
    r = runner.invoke(cli, ["info", str(path), "--config", "x.toml"])
    assert r.exit_code == 2 and "give FILE or --config, not both" in r.output


# -- what hltemu generate reproduces --------------------------------------------------------------
def test_same_seed_gives_every_branch_the_same_values(tmp_path):
    a, b = tmp_path / "a.root", tmp_path / "b.root"
    for path in (a, b):
        r = CliRunner().invoke(cli, ["generate", "-n", "2", "-p", "ttbar", "--pileup", "3",
                                     "--seed", "13", "--batch-size", "1", "-o", str(path),
                                     "--no-progress"])
        assert r.exit_code == 0, r.output
    ba, bb = _branches(a), _branches(b)
    assert list(ba) == list(bb) and len(ba) > 30
    for name in ba:
        assert ba[name].type == bb[name].type, name
        if ba[name].ndim > 1:
            np.testing.assert_array_equal(ak.to_numpy(ak.num(ba[name], axis=1)),
                                          ak.to_numpy(ak.num(bb[name], axis=1)), err_msg=name)
        np.testing.assert_array_equal(ak.to_numpy(ak.ravel(ba[name])),
                                      ak.to_numpy(ak.ravel(bb[name])), err_msg=name)
    # ... but not the same bytes (what the help says)
    assert a.read_bytes() != b.read_bytes()
    pa, pb = io.read_provenance(a), io.read_provenance(b)
    for p in (pa, pb):
        for key in ("created_utc", "seconds", "command"):
            p.pop(key)
    assert pa == pb


def test_generate_help_says_what_is_reproducible():
    r = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["generate", "--help"])
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "bit for bit" not in text
    assert "the same seed and options give the same values in every branch" in text
    for option in ("--run", "--lumi", "--first-event"):
        assert option in text


# -- the plots extra --------------------------------------------------------------------------------
def test_plots_without_the_extra_fail_before_pythia(tmp_path, monkeypatch):
    """No Pythia event, no output file: one line naming the extra."""
    from hltemu import extras
    from hltemu.simulate import generate

    def must_not_run(*args, **kwargs):
        raise AssertionError("Pythia started although the plots extra is missing")

    monkeypatch.setattr(generate, "EventGenerator", must_not_run)
    monkeypatch.setitem(sys.modules, "mplhep", None)  # find_spec() says: not installed
    assert extras.missing("plots") == ["mplhep"]
    out = tmp_path / "g.root"
    r = CliRunner().invoke(cli, ["generate", "-n", "1", "-o", str(out), "--plots",
                                 str(tmp_path / "plots"), "--no-progress"])
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert r.output == ("Error: --plots needs the 'plots' extra (mplhep not installed): pip "
                        "install 'hltemu[plots]'\n")
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script, args", [
    ("plot_simulation.py", []),
    ("plot_doublet_cnn_roc.py", []),
    ("plot_topoclusters.py", ["--plot", "x.png", "--pileups", "0", "--events", "1"]),
])
def test_examples_name_the_missing_extra(tmp_path, script, args):
    """Without matplotlib, hist, mplhep: one line on stderr, exit 1, no traceback."""
    code = ("import runpy, sys\n"
            "for m in ('matplotlib', 'hist', 'mplhep'):\n"
            "    sys.modules[m] = None\n"
            f"sys.argv = [{script!r}, *{args!r}]\n"
            f"runpy.run_path({str(ROOT / 'examples' / script)!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "needs the 'plots' extra" in proc.stderr
    assert "pip install 'hltemu[plots]'" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_examples_find_the_extra_when_installed():
    """The check passes where the extra is installed (so the examples above fail because of
    the missing modules, not because the check always fails)."""
    pytest.importorskip("mplhep")
    pytest.importorskip("hist")
    from hltemu.extras import missing, require

    assert missing("plots") == []
    require("plots", "this test")


# -- coffea reads an hltemu output --------------------------------------------------------------
@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    d = tmp_path_factory.mktemp("coffea")
    out = d / "out.root"
    r = CliRunner().invoke(cli, ["run", str(builtin_sample()), "-n", "5", "--backend", "cpu",
                                 "-o", str(out), "-r", str(d / "r.json"), "--no-progress"])
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.filterwarnings("ignore:Missing cross-reference:RuntimeWarning")
def test_coffea_nanoaod_schema_reads_an_hltemu_output(run_output):
    """NanoAODSchema (which refuses files without run, luminosityBlock, event) opens the
    output of hltemu run; jets' pT, a trigger bit and the identifiers, materialised, equal
    uproot's read of the same branches."""
    coffea_nanoevents = pytest.importorskip("coffea.nanoevents")
    factory = coffea_nanoevents.NanoEventsFactory.from_root(
        {str(run_output): "Events"}, schemaclass=coffea_nanoevents.NanoAODSchema)
    events = factory.events()
    assert len(events) == 5
    with uproot.open(run_output) as f:
        tree = f["Events"]
        want_pt = tree["jets_pt"].array(library="ak")
        want_bit = tree["trigger_HLT_CaloJet80"].array(library="np")
        want_ids = {k: tree[k].array(library="np") for k in IDS}
    pt = ak.materialize(events.jets.pt)
    assert ak.num(pt, axis=0) == 5 and ak.sum(ak.num(pt, axis=1)) > 0
    assert pt.to_list() == want_pt.to_list()
    bit = ak.to_numpy(ak.materialize(events.trigger.HLT_CaloJet80))
    np.testing.assert_array_equal(bit, want_bit)
    assert bit.dtype == np.bool_
    for k in IDS:
        np.testing.assert_array_equal(ak.to_numpy(ak.materialize(events[k])), want_ids[k])
    assert ak.to_numpy(ak.materialize(events.event)).tolist() == [1, 2, 3, 4, 5]


def test_a_run_provenance_from_its_parts(tmp_path):
    """What run_files records (header, config, plan, inputs) goes through the writer as is."""
    from hltemu.pipeline import default_config, plan

    sample = builtin_sample()
    config = default_config()
    planned = plan(None, io.common_collections([sample]), config)
    prov = io.provenance_header("run", command="hltemu run x.root")
    prov.update({"config": planned.config.to_dict(), "plan": planned.summary(),
                 "inputs": io.input_provenance([sample])})
    path = tmp_path / "run.root"
    with io.OutputWriter(path, provenance=prov):
        pass
    back = io.read_provenance(path)
    assert back["kind"] == "run" and back["command"] == "hltemu run x.root"
    assert back["format"] == io.PROVENANCE_FORMAT and back["versions"]["hltemu"]
    assert back["plan"]["stages"] == [st.name for st in planned.stages]
    (inp,) = back["inputs"]
    assert inp["file"] == str(sample) and inp["entries"] == 10
    assert inp["event_ids"]["runs"] == [2026] and inp["event_ids"]["duplicates"] == 0
    assert inp["provenance"] == io.read_provenance(sample)
    assert back["config"]["antikt"]["R"] == planned.config["antikt"].R


def test_generation_is_found_through_a_chain_of_runs():
    """A run over a run output (stages rerun on it) still finds how its events were generated:
    derive-jec --weighted and the study's rates normalise such outputs too."""
    from hltemu.io.provenance import generation_run
    from hltemu.jec.derive import generation_provenance

    gen = {"kind": "generate", "settings": {"seed": 7, "pileup": 50.0, "process": "qcd",
                                            "pthat_bias": 4.0},
           "pythia": {"hard_process": {"sigma_gen_mb": 2.1, "weight_sum": 12.5}}}
    first = {"kind": "run", "inputs": [{"file": "raw.root", "provenance": gen}]}
    second = {"kind": "run", "inputs": [{"file": "run1.root", "provenance": first}]}
    third = {"kind": "run", "inputs": [{"file": "run2.root", "provenance": second}]}
    for prov in (first, second, third):
        assert generation_run(prov) is first
        g = generation_provenance(prov)
        assert (g["seed"], g["sigma_gen_mb"], g["weight_sum"], g["file"]) == (7, 2.1, 12.5,
                                                                              "raw.root")
    two = {"kind": "run", "inputs": [{"file": "a", "provenance": first},
                                     {"file": "b", "provenance": first}]}
    assert generation_run(two) is two and generation_provenance(two) == {}
