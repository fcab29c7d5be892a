"""Stage timers, NVTX ranges and the run report."""

from __future__ import annotations

import json
import time

from rich.console import Console

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


def test_nvtx_range_is_usable_with_or_without_nvtx():
    with nvtx_range("unit-test"):
        x = 1
    assert x == 1
