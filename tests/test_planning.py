"""What the planner decides on real inputs, through ``hltemu run``: a calorimeter-only file runs
``topocluster,antikt,rho,jec,trigger`` (the menu's doublet path is dropped with a note), a
``--stages trigger`` rerun reads what the menu needs from hltemu's own output, and a CMS NanoAOD
file says which stages are skipped and why."""

from __future__ import annotations

import json

import numpy as np
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
    assert sorted(skipped) == ["doublet_cnn", "doublets", "genjets"]
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
    result, _, report = _run(tmp_path, str(cms_nanoaod), "--backend", "cpu", "-n", "5")
    assert result.exit_code == 0, result.output
    plan = json.loads(report.read_text())["plan"]
    assert plan["stages"] == ["genjets"]
    assert set(plan["skipped"]) == {"doublets", "doublet_cnn", "topocluster", "antikt", "rho",
                                    "jec", "trigger"}
    text = _flat(result.output)
    for stage, why in plan["skipped"].items():
        assert f"skipped {stage}: {why}" in text
    assert plan["skipped"]["trigger"].startswith("no path of menu 'builtin:menu.toml' can run: "
                                                 "HLT_CaloJet40 needs 'corrected_jets'")
