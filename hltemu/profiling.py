"""Stage timing and NVTX ranges, and the run report.

:func:`stage` wraps one stage call: an NVTX range ``hltemu:<name>`` (seen in Nsight Systems;
a no-op when the ``nvtx`` package is absent) and a wall-clock timer that synchronizes the backend
before reading the clock at the start and at the end, so that asynchronous GPU work is charged to
the stage that queued it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import platform
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hltemu import ui
from hltemu.backends import Backend

try:  # optional dependency: pip install 'hltemu[nvtx]'
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - exercised where nvtx is not installed
    _nvtx = None

NVTX_DOMAIN = "hltemu"


def nvtx_available() -> bool:
    return _nvtx is not None


@contextlib.contextmanager
def nvtx_range(name: str) -> Iterator[None]:
    """An NVTX range ``hltemu:<name>`` (no-op without the ``nvtx`` package)."""
    if _nvtx is None:
        yield
        return
    with _nvtx.annotate(f"{NVTX_DOMAIN}:{name}", domain=NVTX_DOMAIN):
        yield


@dataclass
class StageStats:
    """Accumulated calls, events and seconds of one stage."""

    calls: int = 0
    events: int = 0
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {
            "calls": self.calls,
            "events": self.events,
            "seconds": self.seconds,
            "events_per_second": self.events_per_second,
        }


@dataclass
class RunReport:
    """Per-stage throughput of one run, plus what ran where.

    ``stages`` keeps insertion order (the order of the chain).  ``io`` stages (``read``,
    ``write``) are timed like the others; ``total_seconds`` is the wall time of the whole run,
    warm-up excluded.  ``warmup_seconds`` is the time of the untimed warm-up pass that compiles
    the Numba (CUDA) kernels before the measurement (0 when there was none).
    """

    backend: str
    device: str
    stages: dict[str, StageStats] = field(default_factory=dict)
    events: int = 0
    total_seconds: float = 0.0
    counters: dict[str, dict[str, float]] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    warmup_seconds: float = 0.0
    #: The planned chain (:meth:`hltemu.pipeline.Plan.summary`): stages run, skipped and why,
    #: notes, facts such as the trigger's ``dropped_paths``.
    plan: dict[str, Any] = field(default_factory=dict)
    #: Dask tasks that ran again because the worker they were assigned to was lost (its
    #: process died) before they finished; 0 for a local run (:mod:`hltemu.scaleout`).
    retried_tasks: int = 0
    #: The resolved configuration of every stage that ran (TOML tables as dicts; file names as
    #: the run used them).
    config: dict[str, Any] = field(default_factory=dict)
    #: The command line (``sys.argv``) and when the run started (UTC, ISO 8601).
    command: str = field(default_factory=lambda: shlex.join(sys.argv))
    started_utc: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"))
    #: Files written (the ROOT output(s); the report itself is not listed).
    outputs: list[str] = field(default_factory=list)
    #: Per input file: ``{"events": n, "seconds": s}``, ``seconds`` the sum of its batches'
    #: timed steps (read, stages, write; warm-up excluded): in a run in sequence the wall time
    #: of its batches, in a pipelined one more, the steps of different batches overlapping.
    files: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Seconds to start or reach the Dask cluster (0 for a local run), not in ``total_seconds``'s
    #: stage rows.
    startup_seconds: float = 0.0

    def record(self, name: str, n_events: int, seconds: float) -> None:
        s = self.stages.setdefault(name, StageStats())
        s.calls += 1
        s.events += n_events
        s.seconds += seconds

    def merge(self, other: RunReport) -> None:
        """Add ``other``'s stage times, events, counters and warm-up into this report (for runs
        split over workers); ``total_seconds`` is left to the caller (a wall time)."""
        for name, s in other.stages.items():
            mine = self.stages.setdefault(name, StageStats())
            mine.calls += s.calls
            mine.events += s.events
            mine.seconds += s.seconds
        self.events += other.events
        self.warmup_seconds += other.warmup_seconds
        self.retried_tasks += other.retried_tasks
        self.outputs.extend(o for o in other.outputs if o not in self.outputs)
        for name, figures in other.files.items():
            mine_f = self.files.setdefault(name, {"events": 0, "seconds": 0.0})
            for key, value in figures.items():
                mine_f[key] = mine_f.get(key, 0) + value
        if not self.config:
            self.config = dict(other.config)
        for group, values in other.counters.items():
            for key, value in values.items():
                self.count(group, key, value)
        if self.backend == "auto":
            self.backend = other.backend

    def count(self, group: str, key: str, value: float) -> None:
        """Add ``value`` to a named counter (e.g. trigger accepts per path)."""
        g = self.counters.setdefault(group, {})
        g[key] = g.get(key, 0) + value

    @property
    def events_per_second(self) -> float:
        return self.events / self.total_seconds if self.total_seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "device": self.device,
            "inputs": self.inputs,
            "events": self.events,
            "total_seconds": self.total_seconds,
            "warmup_seconds": self.warmup_seconds,
            "events_per_second": self.events_per_second,
            "stages": {k: v.to_dict() for k, v in self.stages.items()},
            "counters": self.counters,
            "plan": self.plan,
            "retried_tasks": self.retried_tasks,
            "startup_seconds": self.startup_seconds,
            "command": self.command,
            "started_utc": self.started_utc,
            "config": self.config,
            "outputs": self.outputs,
            "files": self.files,
            "versions": versions(),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, default=float) + "\n"

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path`` atomically (:func:`hltemu.outputs.atomic_output`:
        a complete file or none, never a truncated one)."""
        from hltemu.outputs import atomic_output

        with atomic_output(path, "report file") as out:
            out.path.write_text(self.to_json())

    def table(self) -> Any:
        """A :class:`rich.table.Table` of the per-stage throughput
        (:func:`hltemu.ui.report_table`)."""
        return ui.report_table(self)


class Timeline:
    """The host's start and end of every timed step of a run (read, each stage, write), per
    batch: a Chrome trace (``traceEvents`` of complete events ``"ph": "X"``, microseconds from
    the run's start) that Perfetto (ui.perfetto.dev) and chrome://tracing open.  The steps are
    synchronized with the device at both ends (:class:`StageTimer`), so on ``cuda`` a step's
    span holds its kernels.

    Each step lies on one of three tracks (trace threads): ``read``, ``stages`` and ``write``,
    so that a pipelined run (:func:`hltemu.pipeline.run_files`), whose reading of the next
    batch and writing of the previous one overlap the stages of the current one, shows the
    overlap.  :meth:`add` may be called from several threads.
    """

    #: Track (trace thread id) of a step: reading and writing on their own, the rest on
    #: ``stages``.
    TRACKS: dict[str, int] = {"stages": 1, "read": 2, "write": 3}

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.t0 = time.perf_counter()
        self.batch = -1
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, name: str, start: float, end: float, n_events: int,
            batch: int | None = None) -> None:
        """A step ``name`` from ``start`` to ``end`` (``time.perf_counter`` seconds) of batch
        ``batch`` (default: :attr:`batch`, the batch whose stages run)."""
        track = self.TRACKS.get(name, self.TRACKS["stages"])
        event = {
            "name": name, "cat": "read/write" if name in ("read", "write") else "stage",
            "ph": "X", "ts": round((start - self.t0) * 1e6, 3),
            "dur": round((end - start) * 1e6, 3), "pid": 1, "tid": track,
            "args": {"batch": self.batch if batch is None else batch, "events": n_events}}
        with self._lock:
            self.events.append(event)

    def to_json(self, meta: dict[str, Any] | None = None) -> str:
        """The Chrome trace JSON (steps in time order); ``meta`` goes into ``otherData``."""
        names = [{"name": "process_name", "ph": "M", "pid": 1, "tid": 1,
                  "args": {"name": f"hltemu run ({self.backend.name})"}}]
        names += [{"name": "thread_name", "ph": "M", "pid": 1, "tid": tid,
                   "args": {"name": track}} for track, tid in self.TRACKS.items()]
        steps = sorted(self.events, key=lambda e: e["ts"])
        return json.dumps({"traceEvents": names + steps, "displayTimeUnit": "ms",
                           "otherData": dict(meta or {})}, indent=1)


class StageTimer:
    """Times stages into a :class:`RunReport` (and a :class:`Timeline`, when given),
    synchronizing ``backend`` around each one.  Safe to use from several threads (the reading
    and writing threads of a pipelined run)."""

    def __init__(self, backend: Backend, report: RunReport | None = None,
                 timeline: Timeline | None = None) -> None:
        self.backend = backend
        self.report = report if report is not None else RunReport(backend.name, backend.device)
        self.timeline = timeline
        self._lock = threading.Lock()

    def add_events(self, name: str, n_events: int) -> None:
        """Count ``n_events`` more events for step ``name`` (the reading thread of a pipelined
        run times a read before it knows the batch's size)."""
        with self._lock:
            self.report.stages.setdefault(name, StageStats()).events += n_events

    @contextlib.contextmanager
    def stage(self, name: str, n_events: int, *, sync: bool = True, sync_start: bool = True,
              batch: int | None = None) -> Iterator[list[float]]:
        """Time the block as step ``name`` of ``n_events`` events (of batch ``batch`` in the
        timeline).  ``sync=False`` reads the clock without synchronizing the device (a step
        that only moves data between host and device with synchronous copies, on a thread
        that must not wait for the kernels another thread queued); ``sync_start=False`` skips
        the synchronisation at the start only (the step follows one that ended with it, as
        the stages of a batch do).  Yields a list that holds the step's seconds once the
        block is left."""
        took: list[float] = []
        with nvtx_range(name):
            if sync and sync_start:
                self.backend.synchronize()
            t0 = time.perf_counter()
            try:
                yield took
            finally:
                if sync:
                    self.backend.synchronize()
                t1 = time.perf_counter()
                took.append(t1 - t0)
                with self._lock:
                    self.report.record(name, n_events, t1 - t0)
                if self.timeline is not None:
                    self.timeline.add(name, t0, t1, n_events, batch)


@contextlib.contextmanager
def stage(
    name: str, backend: Backend, report: RunReport | None = None, n_events: int = 0
) -> Iterator[None]:
    """NVTX range ``hltemu:<name>`` plus a synchronized timer recorded into ``report``."""
    timer = StageTimer(backend, report)
    with timer.stage(name, n_events):
        yield


def versions() -> dict[str, str]:
    """Versions of Python, hltemu and the packages that matter for results and speed."""
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("hltemu", "numpy", "numba", "numba-cuda", "awkward", "uproot", "cupy-cuda12x",
                "cupy-cuda13x", "cupy", "nvtx", "pythia8mc", "fastjet", "correctionlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out
