"""Stage timers, NVTX ranges and the run report."""

from __future__ import annotations

import json
import time

import pytest
from rich.console import Console

from hltemu import profiling
from hltemu.backends import get_backend
from hltemu.profiling import RunReport, StageTimer, nvtx_range, stage


class _CountingBackend:
    """Records synchronize() calls, to check the timer synchronizes around a stage."""

    name, device = "cpu", "test"

    def __init__(self):
        self.syncs = 0

    def synchronize(self):
        self.syncs += 1


def test_timer_synchronizes_and_accumulates():
    be = _CountingBackend()
    timer = StageTimer(be)
    for _ in range(3):
        with timer.stage("work", 10):
            time.sleep(0.002)
    s = timer.report.stages["work"]
    assert (s.calls, s.events) == (3, 30)
    assert s.seconds >= 0.006
    assert be.syncs == 6
    assert abs(s.events_per_second - 30 / s.seconds) < 1e-9


def test_report_json_and_table(tmp_path):
    report = RunReport("cpu", "CPU (Numba)", inputs=["a.root"])
    with stage("read", get_backend("cpu"), report, n_events=5):
        pass
    report.record("antikt", 5, 0.5)
    report.events, report.total_seconds = 5, 1.0
    report.count("trigger accepts", "HLT_PFJet100", 2)
    report.count("trigger accepts", "HLT_PFJet100", 1)
    path = tmp_path / "r.json"
    report.save(path)
    data = json.loads(path.read_text())
    assert data["backend"] == "cpu" and data["events"] == 5
    assert data["stages"]["antikt"]["events_per_second"] == 10.0
    assert data["counters"]["trigger accepts"]["HLT_PFJet100"] == 3
    assert "numpy" in data["versions"] and "python" in data["versions"]
    console = Console(record=True, width=120)
    console.print(report.table())
    text = console.export_text()
    assert "antikt" in text and "total" in text and "50.0%" in text


class _FakeNvtx:
    """Stands in for the ``nvtx`` package: records ``annotate`` calls and range entry/exit."""

    def __init__(self, log):
        self.log = log

    def annotate(self, message, domain=None):
        log = self.log

        class Range:
            def __enter__(self):
                log.append(("push", message, domain))

            def __exit__(self, *exc):
                log.append(("pop", message, domain))
                return False  # never swallows an exception

        return Range()


def test_nvtx_range_without_nvtx_runs_the_body_once_and_propagates_errors(monkeypatch):
    monkeypatch.setattr(profiling, "_nvtx", None)
    assert not profiling.nvtx_available()
    body = []
    with nvtx_range("unit-test"):
        body.append("ran")
    assert body == ["ran"]
    with pytest.raises(KeyError, match="inside"), nvtx_range("unit-test"):
        raise KeyError("inside")


def test_nvtx_range_with_nvtx_opens_a_named_range_around_the_body(monkeypatch):
    log = []
    monkeypatch.setattr(profiling, "_nvtx", _FakeNvtx(log))
    assert profiling.nvtx_available()
    with nvtx_range("unit-test"):
        log.append("body")
    assert log == [("push", "hltemu:unit-test", "hltemu"), "body",
                   ("pop", "hltemu:unit-test", "hltemu")]
    # the range is closed when the body raises, and the error reaches the caller
    log.clear()
    with pytest.raises(RuntimeError, match="boom"), nvtx_range("failing"):
        raise RuntimeError("boom")
    assert log == [("push", "hltemu:failing", "hltemu"), ("pop", "hltemu:failing", "hltemu")]


def test_stage_timer_range_encloses_both_synchronizations(monkeypatch):
    """Nsight sees the whole stage, device waits included: the range ``hltemu:<stage>`` opens
    before the first synchronize and closes after the last."""
    log = []
    monkeypatch.setattr(profiling, "_nvtx", _FakeNvtx(log))

    class Backend(_CountingBackend):
        def synchronize(self):
            super().synchronize()
            log.append("sync")

    timer = StageTimer(Backend())
    with timer.stage("antikt", 4):
        log.append("body")
    assert log == [("push", "hltemu:antikt", "hltemu"), "sync", "body", "sync",
                   ("pop", "hltemu:antikt", "hltemu")]
    assert timer.report.stages["antikt"].calls == 1


def test_timeline_is_a_chrome_trace_of_every_step(tmp_path):
    """`hltemu run --timeline FILE`: one complete event per read, stage and write of every
    batch (the batch's events in args), in time order within a batch, the warm-up apart;
    refused with --workers; no file after 0 events."""
    from click.testing import CliRunner

    from hltemu.cli import cli

    tl, out, rep = tmp_path / "t.json", tmp_path / "o.root", tmp_path / "r.json"
    stages = ["topocluster", "antikt", "rho"]
    res = CliRunner().invoke(cli, ["run", "-n", "6", "--batch-size", "4", "-b", "cpu",
                                   "--stages", ",".join(stages), "--no-progress", "-o", str(out),
                                   "-r", str(rep), "--timeline", str(tl)])
    assert res.exit_code == 0, res.output
    assert f"timeline: {tl}" in res.output
    trace = json.loads(tl.read_text())
    steps = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    warm = [e for e in steps if e["name"].startswith("warm-up")]
    assert len(warm) == 1
    for b, n in ((0, 4), (1, 2)):
        mine = [e for e in steps if e["args"]["batch"] == b and e not in warm]
        assert [e["name"] for e in mine] == ["read", *stages, "write"]
        assert all(e["args"]["events"] == n for e in mine[1:])
        ends = [e["ts"] + e["dur"] for e in mine]
        assert all(nxt["ts"] >= end - 1e-3 for nxt, end in zip(mine[1:], ends, strict=False))
    report = json.loads(rep.read_text())
    for st in stages:  # the trace's durations are the report's seconds
        total = sum(e["dur"] for e in steps if e["name"] == st) / 1e6
        assert total == pytest.approx(report["stages"][st]["seconds"], rel=1e-3, abs=1e-5)
    res = CliRunner().invoke(cli, ["run", "--workers", "2", "--timeline", str(tl)])
    assert res.exit_code != 0 and "--timeline records a local run" in res.output
    empty = tmp_path / "e.json"
    res = CliRunner().invoke(cli, ["run", "-n", "0", "--stages", "rho", "--no-progress",
                                   "-o", str(tmp_path / "e.root"), "--timeline", str(empty)])
    assert res.exit_code == 0 and not empty.exists()
