"""Many files on Dask: one task per file, reports merged, products identical to a serial run."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from stage_fixtures import cell_sum_stage  # noqa: F401
from test_cli import _write_small_file

from hltemu import io
from hltemu.cli import builtin_sample, cli
from hltemu.pipeline import PipelineError, registered_stages, run_files
from hltemu.scaleout import ScaleOutError, output_paths, run_files_dask

distributed = pytest.importorskip("distributed", reason="scale-out needs hltemu[dask]")


@pytest.fixture(scope="module")
def client():
    """An in-process cluster (threads), so that test-only stages are registered on it."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        yield c


def _files(tmp_path, n=3):
    paths = []
    for i in range(n):
        p = tmp_path / f"in{i}.root"
        _write_small_file(p, n_events=10 + 7 * i, seed=i)
        paths.append(p)
    return paths


def test_tasks_merge_into_the_serial_result(tmp_path, client, cell_sum_stage):  # noqa: F811
    files = _files(tmp_path)
    report, written = run_files_dask(files, backend="cpu", stages=["cell_sum"], batch_size=4,
                                     output=tmp_path / "out.root", client=client,
                                     report_path=tmp_path / "r.json")
    assert written == output_paths(files, tmp_path / "out.root")
    assert [p.name for p in written] == ["out-0000-in0.root", "out-0001-in1.root",
                                         "out-0002-in2.root"]
    assert report.events == 10 + 17 + 24 and report.backend == "cpu"
    # 3 + 5 + 6 batches of at most 4 events
    assert report.stages["cell_sum"].calls == 14 and report.stages["cell_sum"].events == 51
    assert json.loads((tmp_path / "r.json").read_text())["events"] == 51
    for f, out in zip(files, written, strict=True):
        serial = run_files([f], backend="cpu", stages=["cell_sum"], batch_size=4,
                           output=tmp_path / "serial.root")
        assert serial.events == io.read_collections(out)["cell_sum"].n_events
        np.testing.assert_array_equal(io.read_collections(out)["cell_sum"]["sum"],
                                      io.read_collections(tmp_path / "serial.root")["cell_sum"]["sum"])


def test_bad_input_fails_before_submitting(tmp_path, client, cell_sum_stage,  # noqa: F811
                                           monkeypatch):
    submitted = []
    monkeypatch.setattr(client, "submit", lambda *a, **k: submitted.append(a))
    files = [*_files(tmp_path, 1), tmp_path / "missing.root"]
    with pytest.raises(io.InputError, match="missing.root"):
        run_files_dask(files, stages=["cell_sum"], client=client)
    registered = ", ".join(registered_stages())
    assert "cell_sum" in registered
    with pytest.raises(PipelineError, match=re.escape(
            f"unknown stage 'nope'; registered stages: {registered}")) as info:
        run_files_dask(files[:1], stages=["nope"], client=client)
    assert type(info.value) is PipelineError
    assert submitted == []


def test_unreachable_scheduler_is_a_clear_error(tmp_path, cell_sum_stage):  # noqa: F811
    with pytest.raises(ScaleOutError, match="cannot reach the Dask scheduler 'tcp://127.0.0.1:9'"):
        run_files_dask(_files(tmp_path, 1), stages=["cell_sum"], scheduler="tcp://127.0.0.1:9",
                       connect_timeout=1.0)


def test_cli_workers_on_real_stages_equal_serial(tmp_path):
    """`hltemu run --workers 2` (worker processes) on two copies of the sample: the same
    clusters, jets and trigger-free products as a serial run of each file."""
    a, b = tmp_path / "a.root", tmp_path / "b.root"
    shutil.copy(builtin_sample(), a)
    shutil.copy(builtin_sample(), b)
    stages = "topocluster,antikt,rho,jec"
    out, rep = tmp_path / "d.root", tmp_path / "d.json"
    r = CliRunner().invoke(cli, ["run", str(a), str(b), "--workers", "2", "-b", "cpu",
                                 "-s", stages, "-o", str(out), "-r", str(rep), "--no-progress",
                                 "--drop", "cell_cluster"])
    assert r.exit_code == 0, r.output
    assert "d-0000-a.root" in r.output and "d-0001-b.root" in r.output
    report = json.loads(rep.read_text())
    assert report["events"] == 20 and report["stages"]["antikt"]["events"] == 20
    # the report says where time went and what was written: Dask start-up apart from the
    # stages, per-file events and seconds, each per-file output
    assert report["startup_seconds"] > 0
    assert sorted(report["outputs"]) == [str(tmp_path / "d-0000-a.root"),
                                         str(tmp_path / "d-0001-b.root")]
    assert {k: v["events"] for k, v in report["files"].items()} == {str(a): 10, str(b): 10}
    assert all(v["seconds"] > 0 for v in report["files"].values())
    assert report["plan"]["stages"] == stages.split(",")
    assert report["plan"]["not_written"] == ["cell_cluster"]  # --drop, on every worker
    assert "cell_cluster" not in io.common_collections([str(tmp_path / "d-0000-a.root")])
    assert report["config"]["antikt"] == {"R": 0.4, "pt_min": 5.0}
    serial = tmp_path / "s.root"
    run_files([a], backend="cpu", stages=stages.split(","), output=serial)
    want = io.read_collections(serial, ["clusters", "corrected_jets"])
    for name in ("d-0000-a.root", "d-0001-b.root"):
        got = io.read_collections(tmp_path / name, ["clusters", "corrected_jets"])
        for coll in ("clusters", "corrected_jets"):
            np.testing.assert_array_equal(got[coll].offsets, want[coll].offsets)
            for col in want[coll].columns:
                np.testing.assert_array_equal(got[coll][col], want[coll][col], err_msg=col)


def test_cli_max_events_with_workers_is_refused(tmp_path):
    r = CliRunner().invoke(cli, ["run", "--workers", "2", "-n", "5"])
    assert r.exit_code == 2 and "--max-events applies to a local run" in r.output
