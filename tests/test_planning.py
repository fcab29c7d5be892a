"""What the planner decides on real inputs, through ``hltemu run``: a calorimeter-only file runs
``topocluster,antikt,rho,jec,trigger`` (the menu's doublet path is dropped with a note), a
``--stages trigger`` rerun reads what the menu needs from hltemu's own output, and a CMS NanoAOD
file says which stages are skipped and why."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hltemu import io
from hltemu.backends import get_backend
from hltemu.batch import EventBatch
from hltemu.cli import builtin_sample, cli


def _flat(output: str) -> str:
    return " ".join(output.split())


def _run(tmp_path, *args: str, name: str = "out"):
    out, report = tmp_path / f"{name}.root", tmp_path / f"{name}.json"
    result = CliRunner().invoke(cli, ["run", *args, "--no-progress", "-o", str(out),
                                      "-r", str(report)])
    return result, out, report


def test_calorimeter_only_file_runs_the_calo_chain(tmp_path):
    sample = builtin_sample()
    colls = io.read_collections(str(sample), ["CaloCell", io.EVENT])
    calo_only = tmp_path / "calo.root"
    be = get_backend("reference")
    with io.OutputWriter(calo_only) as w:
        batch = EventBatch(be, next(iter(colls.values())).n_events, colls).select_events(0, 6)
        w.write(batch, ["CaloCell", io.EVENT])
    result, out, report = _run(tmp_path, str(calo_only), "--backend", "cpu", "--stages",
                               "topocluster,antikt,rho,jec,trigger")
    assert result.exit_code == 0, result.output
    text = _flat(result.output)
    assert "stages: topocluster, antikt, rho, jec, trigger" in text
    assert ("trigger: path HLT_PixelDoublets8000 dropped: needs 'filtered_doublets' (made by "
            "stage 'doublet_cnn')") in text
    back = io.read_collections(str(out), ["trigger", "trigger_pre"])
    assert "HLT_PixelDoublets8000" not in back["trigger"].columns
    assert "HLT_CaloJet80" in back["trigger"].columns and back["trigger"].n_events == 6
    plan = json.loads(report.read_text())["plan"]
    assert plan["facts"]["trigger"]["dropped_paths"] == ["HLT_PixelDoublets8000"]
    # the default chain on the same file skips the pixel stages and genjets, saying why
    result, _, report = _run(tmp_path, str(calo_only), "--backend", "cpu", name="auto")
    assert result.exit_code == 0, result.output
    skipped = json.loads(report.read_text())["plan"]["skipped"]
    assert sorted(skipped) == ["doublet_cnn", "doublets", "genjets", "jet_regression",
                               "pfcandidates", "pfjets", "pfrho", "pixeltracks",
                               "pixelvertices", "tracks", "vertices"]
    assert skipped["tracks"] == skipped["jet_regression"] == (
        "not in the default chain (it runs when named): name it in --stages")
    assert skipped["doublets"] == ("needs 'PixelHit', which neither the input nor an earlier "
                                   "stage provides")
    assert "skipped doublets: needs 'PixelHit'" in _flat(result.output)


def test_trigger_rerun_on_hltemu_output(tmp_path):
    """The menu's doublet path reads filtered_doublets from the file: nothing is dropped and
    the decisions equal the first run's."""
    first, out, _ = _run(tmp_path, str(builtin_sample()), "--backend", "cpu", "-n", "8")
    assert first.exit_code == 0, first.output
    again, out2, report = _run(tmp_path, str(out), "--backend", "cpu", "--stages", "trigger",
                               name="again")
    assert again.exit_code == 0, again.output
    assert "dropped" not in again.output
    a = io.read_collections(str(out), ["trigger"])["trigger"]
    b = io.read_collections(str(out2), ["trigger"])["trigger"]
    assert set(a.columns) == set(b.columns)
    for name in a.columns:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert json.loads(report.read_text())["plan"]["inputs"] == ["corrected_jets",
                                                                "filtered_doublets"]


def test_nanoaod_says_what_is_skipped(tmp_path, cms_nanoaod):
    """No stage can run on CMS NanoAOD (genjets refuses its pruned GenPart): every stage is
    listed with its reason, then one error; nothing is written."""
    result, out, report = _run(tmp_path, str(cms_nanoaod), "--backend", "cpu", "-n", "5")
    assert result.exit_code == 1, result.output
    text = _flat(result.output)
    assert "stages: (none)" in text
    for stage in ("doublets", "doublet_cnn", "topocluster", "antikt", "rho", "jec", "trigger",
                  "genjets"):
        assert f"skipped {stage}: " in text
    assert "skipped genjets: the input's 'GenPart' is CMS NanoAOD's pruned generator record" in text
    assert f"Error: no stage can run on {cms_nanoaod}: doublets needs 'PixelHit'" in text
    assert not out.exists() and not report.exists()


def _calo_file(tmp_path, name: str, **dtypes) -> str:
    """The sample's first 4 events of CaloCell (+ Event), columns cast to ``dtypes``."""
    colls = io.read_collections(str(builtin_sample()), ["CaloCell", io.EVENT])
    be = get_backend("reference")
    batch = EventBatch(be, next(iter(colls.values())).n_events, colls).select_events(0, 4)
    cells = batch["CaloCell"]
    for col, dtype in dtypes.items():
        cells.columns[col] = np.asarray(cells.columns[col]).astype(dtype)
    path = tmp_path / name
    with io.OutputWriter(path) as w:
        w.write(batch, ["CaloCell", io.EVENT])
    return str(path)


def test_float64_energies_are_read_as_float32_with_a_note(tmp_path):
    f64 = _calo_file(tmp_path, "f64.root", energy=np.float64)
    f32 = _calo_file(tmp_path, "f32.root")
    notes = io.reading_notes([f64], ["CaloCell"])
    assert notes == [f"{f64}: branch 'CaloCell_energy' is float64, read as float32 (rounded to "
                     "float32 precision)"]
    a = next(io.iterate_batches(f64, ["CaloCell"]))["CaloCell"]
    b = next(io.iterate_batches(f32, ["CaloCell"]))["CaloCell"]
    assert a["energy"].dtype == np.float32
    np.testing.assert_array_equal(a["energy"], b["energy"])  # float32 -> float64 -> float32
    result, out, _ = _run(tmp_path, f64, "--backend", "cpu", "--stages", "topocluster")
    assert result.exit_code == 0, result.output
    assert "read as float32" in _flat(result.output)


def test_integers_that_do_not_fit_are_an_error(tmp_path):
    ok = _calo_file(tmp_path, "i64.root", id=np.int64)
    assert io.reading_notes([ok], ["CaloCell"]) == [
        f"{ok}: branch 'CaloCell_id' is int64, read as int32"]
    colls = io.read_collections(ok, ["CaloCell", io.EVENT])
    ids = colls["CaloCell"]["id"].astype(np.int64)
    ids[3] = 2**40
    colls["CaloCell"].columns["id"] = ids
    bad = tmp_path / "overflow.root"
    with io.OutputWriter(bad) as w:
        w.write(EventBatch(get_backend("reference"), 4, colls), ["CaloCell", io.EVENT])
    with pytest.raises(io.InputError, match=r"branch 'CaloCell_id' holds 1099511627776, which "
                                            r"does not fit int32 \(entries 0-3\)"):
        next(io.iterate_batches(str(bad), ["CaloCell"]))
    # a float branch where the schema has integers is refused, naming the branch
    flt = _calo_file(tmp_path, "fid.root", id=np.float32)
    with pytest.raises(io.InputError, match="'CaloCell_id' of collection 'CaloCell' has dtype "
                                            "float32, expected int32"):
        io.reading_notes([flt], ["CaloCell"])


def test_collections_not_in_every_file_are_named(tmp_path, cms_nanoaod):
    calo = _calo_file(tmp_path, "calo.root")
    notes = io.reading_notes([calo, str(cms_nanoaod)], [])
    # NanoAOD's run, luminosityBlock, event are the Event collection: common to both files
    assert notes[0] == f"{calo}: collection(s) CaloCell not in every input file, so not read"
    assert notes[1].startswith(f"{cms_nanoaod}: collection(s) HTXS, btagWeight, CaloMET, ")
    assert notes[1].endswith(" more not in every input file, so not read") and len(notes) == 2


def test_report_records_config_command_time_outputs_and_files(tmp_path):
    import datetime

    cfg = tmp_path / "c.toml"
    cfg.write_text("[antikt]\nR = 0.6\n")
    result, out, report = _run(tmp_path, str(builtin_sample()), "--backend", "cpu", "-n", "7",
                               "--batch-size", "3", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    rep = json.loads(report.read_text())
    assert rep["config"]["antikt"] == {"R": 0.6, "pt_min": 5.0}
    assert rep["config"]["trigger"]["menu"] == "builtin:menu.toml"
    assert rep["plan"]["facts"]["trigger"]["menu_file"].endswith("menu.toml")
    assert [p["name"] for p in rep["plan"]["facts"]["trigger"]["paths"]][:2] == [
        "HLT_CaloJet40", "HLT_CaloJet80"]
    assert rep["outputs"] == [str(out)]
    assert rep["files"][str(builtin_sample())]["events"] == 7
    # one file: its seconds are the sum of the report's rows (read, stages, write), which
    # overlap in a pipelined run
    assert rep["files"][str(builtin_sample())]["seconds"] == pytest.approx(
        sum(s["seconds"] for s in rep["stages"].values()), rel=1e-9)
    started = datetime.datetime.fromisoformat(rep["started_utc"])
    now = datetime.datetime.now(datetime.timezone.utc)
    assert started.tzinfo is not None and 0 <= (now - started).total_seconds() < 600
    assert isinstance(rep["command"], str) and rep["command"]
    assert rep["startup_seconds"] == 0
    # the output records the same inside the file
    prov = io.read_provenance(out)
    assert prov["kind"] == "run" and prov["backend"] == "cpu" and prov["events"] == 7
    assert prov["stages"] == rep["plan"]["stages"] and prov["config"] == rep["config"]
    assert prov["plan"]["facts"]["trigger"]["prescales"]["HLT_CaloJet40"] == 10
    (inp,) = prov["inputs"]
    assert inp["file"] == str(builtin_sample()) and inp["provenance"]["kind"] == "generate"
    shown = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["info", str(out)])
    assert shown.exit_code == 0 and '"kind": "run"' in shown.output


def test_drop_and_keep_choose_the_written_products(tmp_path):
    """--drop leaves products out of the output (the report's plan lists them), --keep brings
    one back, and a pattern that matches nothing is a one-line error naming it."""
    out, rep = tmp_path / "o.root", tmp_path / "r.json"
    args = ["run", "--stages", "topocluster,antikt,rho", "-n", "2", "--backend", "reference",
            "--no-progress", "-o", str(out), "-r", str(rep)]
    res = CliRunner().invoke(cli, [*args, "--drop", "*cluster*", "--keep", "clusters"])
    assert res.exit_code == 0, res.output
    written = set(io.common_collections([str(out)]))
    assert {"clusters", "jets", "rho", "Event"} <= written
    assert not written & {"cell_cluster", "cluster_jet"}
    assert json.loads(rep.read_text())["plan"]["not_written"] == ["cell_cluster", "cluster_jet"]
    assert "not written (--drop): cell_cluster, cluster_jet" in _flat(res.output)
    res = CliRunner().invoke(cli, [*args, "--drop", "pfjets"])
    assert res.exit_code != 0
    assert "--drop 'pfjets' matches no collection this chain adds" in res.output
