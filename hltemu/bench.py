"""``hltemu bench``: the same batch through the chain on several backends, with ratios.

One batch of ``n_events`` events is read from the input files (the built-in sample when the
command is given none) and run through the chain on each backend: ``warmups`` untimed passes
(kernels compiled, device tables and memory pools set up), then ``repeat`` timed passes, each
stage timed as ``hltemu run`` times it (:class:`hltemu.profiling.StageTimer`: an NVTX range and
a clock read after synchronizing the backend at both ends).  Per backend and stage the result is
the median and the spread (min, max, quartiles, MAD) of seconds per event over the repeats,
events/s, and the speed-up over the first backend (the baseline).

Events to reach ``n_events``: when the files hold fewer, the batch is *tiled*: the events read
are repeated in order (``0..m-1, 0..m-1, ...``, the last copy cut short) until it has
``n_events`` (:func:`tile_batch`, recorded as ``tiling`` in the JSON), so that the cost at 500
events of pileup 200 needs only the few events a PU 200 file holds.  ``pileup`` checks the
files' pileup (their provenance, else the mean of ``Event_n_pileup``) against the value given
and labels the result: ``hltemu bench FILE_PU50 --events 500 --pileup 50 --json out.json``.

For statistically careful kernel comparisons use the pytest-benchmark suites in
``benchmarks/``; this command is the quick look a physicist wants after changing a cut or a
kernel, and the one command per pileup point of a cost-growth table.

JSON layout (:data:`BENCH_FORMAT`; :meth:`BenchResult.to_dict`)::

    format, created_utc, command, machine {cpu_model, cpu_count, cpus_usable, numba_threads,
    memory_gib, gpu, platform}, versions, inputs [{file, entries, pileup, pileup_source,
    provenance}], pileup {requested, inputs}, batch {events, source_events, tiled},
    tiling (null or {source_events, events, copies, full_copies, partial_copy_events, how}),
    stages, config, repeat, warmups, baseline, statistic,
    backends {name: {device, upload_seconds, warmup_seconds [..],
                     stages {stage or "total": ROW}, wall ROW}}

    ROW = {seconds [per repeat, whole batch], seconds_per_event {median, min, max, q1, q3,
           iqr, mad}, events_per_second (n / median), events_per_second_best (n / min),
           speedup (baseline median / median), speedup_best (baseline min / min)}

``total`` is the sum of the stage times of each repeat; ``wall`` the whole pass as the host saw
it (the chain plus the batch bookkeeping between stages).
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.pipeline import PipelineError, plan, run_batch
from hltemu.profiling import RunReport, StageTimer, versions

#: Version of the JSON layout (the ``format`` entry): bumped when a key changes meaning.
BENCH_FORMAT = "hltemu-bench/1"

#: What a ``seconds_per_event`` entry holds, in the JSON's ``statistic``.
STATISTIC = ("seconds per event of the batch (a stage's seconds / events) over the timed "
             "repeats: median, min, max, quartiles q1 q3 (linear interpolation), iqr = q3 - "
             "q1, mad = median absolute deviation from the median; speedup = the baseline's "
             "median / this backend's median (> 1: faster than the baseline); speedup_best "
             "the same of the minima")


class BenchError(PipelineError):
    """A bench that cannot run as asked (backends, events, pileup); one line for the user."""


# -- the batch ---------------------------------------------------------------------------------
def concat_batches(batches: Sequence[EventBatch]) -> EventBatch:
    """The events of ``batches`` (host batches with the same collections) one after the
    other, as one batch on the first one's backend; ``source`` the distinct sources joined."""
    if not batches:
        raise BenchError("no batch to join")
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    names = list(first.collections)
    for b in batches[1:]:
        if list(b.collections) != names:
            raise BenchError(f"cannot join batches with collections {names} and "
                             f"{list(b.collections)}")
    out: dict[str, Collection] = {}
    for name in names:
        parts = [b[name] for b in batches]
        offsets, shift = [np.zeros(1, dtype=np.int64)], 0
        for c in parts:
            off = np.asarray(c.offsets, dtype=np.int64)
            offsets.append(off[1:] - off[0] + shift)
            shift += int(off[-1] - off[0])
        columns = {col: np.concatenate([np.asarray(c.columns[col]) for c in parts])
                   for col in parts[0].columns}
        out[name] = Collection(np.concatenate(offsets), columns, parts[0].per_event)
    sources = list(dict.fromkeys(b.source for b in batches if b.source))
    return EventBatch(first.backend, sum(b.n_events for b in batches), out, ",".join(sources),
                      first.first_entry)


def tile_batch(batch: EventBatch, n_events: int) -> tuple[EventBatch, dict[str, Any]]:
    """``batch``'s events repeated in order until there are ``n_events`` (the last copy cut
    short), and the record of it (the JSON's ``tiling``)."""
    m = batch.n_events
    if m < 1:
        raise BenchError("cannot tile a batch of 0 events")
    full, rest = divmod(int(n_events), m)
    parts = [batch] * full + ([batch.select_events(0, rest)] if rest else [])
    tiled = concat_batches(parts) if len(parts) > 1 else parts[0]
    return tiled, {
        "source_events": m,
        "events": int(n_events),
        "copies": full + (1 if rest else 0),
        "full_copies": full,
        "partial_copy_events": rest,
        "how": (f"the {m} events read repeated in order (event i of the batch is event i mod "
                f"{m} of the input{'s' if ',' in batch.source else ''}; event identifiers "
                f"repeat too): {full} full cop{'y' if full == 1 else 'ies'}"
                + (f" and the first {rest} events once more" if rest else "")),
    }


def read_batch(files: Sequence[str], needed: Sequence[str], n_events: int, *,
               tile: bool = True) -> tuple[EventBatch, dict[str, Any] | None]:
    """The first ``n_events`` events of ``files`` (the collections ``needed`` plus ``Event``
    where the files have it), on the host; when the files hold fewer, tiled to ``n_events``
    (:func:`tile_batch`; the record is the second value, ``None`` when not tiled), or with
    ``tile=False`` a :class:`BenchError`."""
    from hltemu import io

    present = io.common_collections(files)
    to_read = list(dict.fromkeys([*needed, *([io.EVENT] if io.EVENT in present else [])]))
    batches = [b for b in io.iterate_batches(files, {n: None for n in to_read},
                                             batch_size=n_events, max_events=n_events)
               if b.n_events]
    if not batches:
        raise BenchError(f"no events in {', '.join(files)}")
    batch = concat_batches(batches)
    if batch.n_events >= n_events:
        return batch, None
    if not tile:
        raise BenchError(f"{', '.join(files)} hold{'s' if len(files) == 1 else ''} only "
                         f"{batch.n_events} events, fewer than --events {n_events}; give more "
                         "files, fewer --events, or let the batch be tiled (drop --no-tile)")
    return tile_batch(batch, n_events)


# -- pileup ------------------------------------------------------------------------------------
def pileup_tolerance(mu: float, source: str | None, events: int) -> float:
    """How far a file's pileup may be from the one asked for: none beyond rounding for the
    generated mean of the provenance; for the mean of ``Event_n_pileup`` over ``events``
    events, 4 standard deviations of a Poisson mean (at least 0.5)."""
    if source == "provenance":
        return 1e-6 * max(1.0, abs(mu))
    return max(0.5, 4.0 * math.sqrt(max(mu, 1.0) / max(events, 1)))


def input_pileups(files: Sequence[str], requested: float | None) -> list[dict[str, Any]]:
    """Each file's pileup (:func:`hltemu.io.input_pileup`); with ``requested``, a
    :class:`BenchError` naming the file and both values when one differs or does not say."""
    from hltemu import io

    out = []
    for path in files:
        pu = io.input_pileup(path)
        out.append(pu)
        if requested is None:
            continue
        if pu["mu"] is None:
            raise BenchError(f"--pileup {requested:g}: input file {path} does not record its "
                             "pileup (no pileup in its provenance, no Event_n_pileup branch); "
                             "drop --pileup to bench it unlabelled")
        tol = pileup_tolerance(pu["mu"], pu["source"], pu["events"])
        if abs(pu["mu"] - requested) > tol:
            how = ("its provenance" if pu["source"] == "provenance"
                   else f"the mean of {pu['source']} over {pu['events']} events")
            raise BenchError(f"input file {path} has pileup {pu['mu']:g} ({how}), not "
                             f"--pileup {requested:g}; give a file generated at pileup "
                             f"{requested:g} or --pileup {pu['mu']:g}")
    return out


# -- timing ------------------------------------------------------------------------------------
class BackendTimes(dict):
    """The seconds of one backend: as a dict, the best (minimum) over the repeats per stage and
    ``total`` (what :func:`time_backend` has always returned); the attributes hold every
    repeat (``samples``: stage or ``total`` -> seconds per repeat; ``wall``: the whole pass per
    repeat), the warm-ups' seconds, the upload's and the device."""

    def __init__(self, backend: str, device: str, samples: Mapping[str, Sequence[float]],
                 wall: Sequence[float], warmup_seconds: Sequence[float],
                 upload_seconds: float) -> None:
        super().__init__({name: min(v) for name, v in samples.items()})
        self.backend = backend
        self.device = device
        self.samples = {name: list(v) for name, v in samples.items()}
        self.wall = list(wall)
        self.warmup_seconds = list(warmup_seconds)
        self.upload_seconds = upload_seconds


def time_backend(
    batch: EventBatch, backend: str, chain: Sequence[Any], config: Any, repeat: int,
    *, warmups: int = 1, on_pass: Callable[[], None] | None = None,
) -> BackendTimes:
    """Seconds per stage on ``backend`` over ``repeat`` timed passes of the chain on ``batch``,
    after ``warmups`` untimed ones (:class:`BackendTimes`: best of the repeats per stage and
    ``total``, every repeat kept).  Each pass starts from the same uploaded inputs; stages are
    timed by :class:`~hltemu.profiling.StageTimer` (synchronized on the device);
    ``on_pass`` is called after every pass (the progress bar)."""
    if repeat < 1:
        raise BenchError(f"--repeat must be >= 1, got {repeat}")
    if warmups < 0:
        raise BenchError(f"--warmups must be >= 0, got {warmups}")
    be = get_backend(backend)
    be.synchronize()
    t0 = time.perf_counter()
    inputs = batch.to(be)
    be.synchronize()
    upload = time.perf_counter() - t0

    def fresh() -> EventBatch:
        return EventBatch(be, inputs.n_events, dict(inputs.collections), inputs.source,
                          inputs.first_entry)

    warm = []
    for _ in range(warmups):
        t0 = time.perf_counter()
        run_batch(fresh(), chain, config)
        be.synchronize()
        warm.append(time.perf_counter() - t0)
        if on_pass is not None:
            on_pass()
    samples: dict[str, list[float]] = {st.name: [] for st in chain}
    wall = []
    for _ in range(repeat):
        report = RunReport(be.name, be.device)
        timer = StageTimer(be, report)
        be.synchronize()
        t0 = time.perf_counter()
        run_batch(fresh(), chain, config, timer)
        be.synchronize()
        wall.append(time.perf_counter() - t0)
        for name in samples:
            st = report.stages.get(name)
            samples[name].append(st.seconds if st is not None else 0.0)
        if on_pass is not None:
            on_pass()
    samples["total"] = [sum(v[i] for v in samples.values()) for i in range(repeat)]
    return BackendTimes(be.name, be.device, samples, wall, warm, upload)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max, quartiles (``q1``, ``q3``, linear interpolation), ``iqr`` and ``mad``
    (median absolute deviation from the median) of ``values``."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise BenchError("no repeat to summarize")
    q1, med, q3 = (float(x) for x in np.percentile(a, [25, 50, 75]))
    return {"median": med, "min": float(a.min()), "max": float(a.max()), "q1": q1, "q3": q3,
            "iqr": q3 - q1, "mad": float(np.median(np.abs(a - med)))}


def _row(seconds: Sequence[float], n_events: int,
         base: Sequence[float] | None) -> dict[str, Any]:
    """One stage (or ``total``, ``wall``) of one backend in the JSON (see the module doc)."""
    per_event = spread([s / n_events for s in seconds])

    def ratio(a: float, b: float) -> float | None:
        return a / b if b > 0 else None

    def rate(s: float) -> float | None:
        return 1.0 / s if s > 0 else None

    row: dict[str, Any] = {
        "seconds": [float(s) for s in seconds],
        "seconds_per_event": per_event,
        "events_per_second": rate(per_event["median"]),
        "events_per_second_best": rate(per_event["min"]),
    }
    if base is not None:
        b = spread([s / n_events for s in base])
        row["speedup"] = ratio(b["median"], per_event["median"])
        row["speedup_best"] = ratio(b["min"], per_event["min"])
    return row


# -- the machine -------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gpu_names(timed: Mapping[str, BackendTimes]) -> list[str] | None:
    """The GPU(s): the cuda backend's device when it was timed, else what ``nvidia-smi``
    lists (none when it is absent); ``None`` when there is none."""
    cuda = timed.get("cuda")
    if cuda is not None:
        return [cuda.device]
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        r = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    names = [n.strip() for n in r.stdout.splitlines() if n.strip()]
    return names if r.returncode == 0 and names else None


def machine(timed: Mapping[str, BackendTimes] | None = None) -> dict[str, Any]:
    """Where the bench ran: CPU model, logical CPUs (``cpu_count``) and those this process may
    use (``cpus_usable``), Numba's threads, memory, GPU(s) (the cuda backend's device when
    ``timed`` has it), platform."""
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    try:
        import numba

        threads: int | None = int(numba.config.NUMBA_NUM_THREADS)
    except Exception:  # pragma: no cover - numba is a dependency
        threads = None
    return {"cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
            "numba_threads": threads, "memory_gib": _memory_gib(), "gpu": _gpu_names(timed or {}),
            "platform": platform.platform()}


# -- the bench ---------------------------------------------------------------------------------
@dataclass
class BenchResult:
    """What :func:`run_bench` measured and on what; :meth:`to_dict` is the JSON,
    :meth:`tables` what the command prints."""

    times: dict[str, BackendTimes]
    backends: list[str]
    stages: list[str]
    n_events: int
    repeat: int
    warmups: int
    tiling: dict[str, Any] | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    pileup: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    created_utc: str = ""
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> list[str]:
        return [*self.stages, "total"]

    def to_dict(self) -> dict[str, Any]:
        base = self.times[self.backends[0]]
        backends = {}
        for name in self.backends:
            t = self.times[name]
            backends[name] = {
                "device": t.device,
                "upload_seconds": t.upload_seconds,
                "warmup_seconds": t.warmup_seconds,
                "stages": {row: _row(t.samples[row], self.n_events, base.samples[row])
                           for row in self.rows},
                "wall": _row(t.wall, self.n_events, base.wall),
            }
        mus = {i["pileup"] for i in self.inputs}
        return {
            "format": BENCH_FORMAT,
            "created_utc": self.created_utc,
            "command": self.command,
            "machine": self.machine,
            "versions": versions(),
            "inputs": self.inputs,
            "pileup": {"requested": self.pileup,
                       "inputs": mus.pop() if len(mus) == 1 else None},
            "batch": {"events": self.n_events,
                      "source_events": (self.tiling["source_events"] if self.tiling
                                        else self.n_events),
                      "tiled": self.tiling is not None},
            "tiling": self.tiling,
            "stages": list(self.stages),
            "config": self.config,
            "repeat": self.repeat,
            "warmups": self.warmups,
            "baseline": self.backends[0],
            "statistic": STATISTIC,
            "backends": backends,
        }

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def tables(self) -> list[Any]:
        """The best-of table (:func:`hltemu.ui.bench_table`: events/s and speed-ups of the
        fastest repeat) and :func:`hltemu.ui.spread_table` (median and spread per stage and
        backend)."""
        from hltemu import ui

        return [ui.bench_table(self.times, self.backends, self.rows, self.n_events,
                               self.repeat),
                ui.spread_table(self.to_dict(), self.backends, self.rows, self.n_events,
                                self.repeat)]

    def summary_lines(self) -> list[str]:
        """The batch (tiled or not) and the pileup, one line each."""
        files = ", ".join(Path(i["file"]).name for i in self.inputs)
        if self.tiling:
            t = self.tiling
            lines = [f"batch: {self.n_events} events tiled from the {t['source_events']} "
                     f"events of {files} ({t['copies']} copies)"]
        else:
            lines = [f"batch: {self.n_events} events of {files}"]
        lines.append(f"{self.warmups} warm-up pass(es) and {self.repeat} timed repeat(s) per "
                     "backend")
        if self.pileup is not None:
            lines.append(f"pileup {self.pileup:g} (checked against the inputs)")
        return lines


def parse_backends(backends: Sequence[str] | str) -> list[str]:
    """Backend names, resolved (``auto`` -> what it picks), checked usable here and distinct;
    :class:`BenchError` or :class:`~hltemu.backends.BackendError` naming the culprit."""
    names = ([b.strip() for b in backends.split(",")] if isinstance(backends, str)
             else [str(b).strip() for b in backends])
    names = [n for n in names if n]
    if not names:
        raise BenchError("give at least one backend to compare (--backends reference,cpu)")
    resolved = [get_backend(n).name for n in names]
    seen: dict[str, str] = {}
    for given, name in zip(names, resolved, strict=True):
        if name in seen:
            also = f" ({seen[name]!r} is {name!r} here)" if seen[name] != name else ""
            raise BenchError(f"backend {given!r} is given twice in --backends "
                             f"{','.join(names)}{also}; list each backend once")
        seen[name] = given
    return resolved


def run_bench(
    files: Sequence[str],
    backends: Sequence[str] | str,
    stages: Sequence[str] | None = None,
    n_events: int = 100,
    repeat: int = 3,
    config: Any = None,
    *,
    warmups: int = 1,
    pileup: float | None = None,
    tile: bool = True,
    progress: bool = False,
    json_path: str | os.PathLike | None = None,
    config_path: str | os.PathLike | None = None,
    console: Any = None,
) -> BenchResult:
    """Bench ``stages`` (``None``: every stage the input feeds) on each of ``backends`` (the
    first is the baseline) over one batch of ``n_events`` events of ``files``, tiled when they
    hold fewer (``tile``); ``pileup``: refuse files of another pileup and label the result.

    ``progress``: a progress bar on stderr (``console``: the rich console to draw it on) over
    every warm-up and repeat.  ``json_path``: write :meth:`BenchResult.to_json` there
    atomically (:func:`hltemu.outputs.atomic_output`; the temporary file is made before any
    work, so a missing directory fails at once; it may be no input nor ``config_path``).
    """
    import contextlib

    from hltemu import io, ui
    from hltemu.outputs import atomic_output, check_outputs

    files = [os.fspath(f) for f in files]
    if not files:
        raise BenchError("no input files given")
    if n_events < 1:
        raise BenchError(f"--events must be >= 1, got {n_events}")
    if repeat < 1:
        raise BenchError(f"--repeat must be >= 1, got {repeat}")
    if warmups < 0:
        raise BenchError(f"--warmups must be >= 0, got {warmups}")
    if pileup is not None and not (math.isfinite(pileup) and pileup >= 0):
        raise BenchError(f"--pileup must be a number >= 0, got {pileup}")
    names = parse_backends(backends)
    check_outputs([("JSON file", json_path)], [*files, config_path])
    created = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    command = io.command_line()
    with contextlib.ExitStack() as stack:
        out = (stack.enter_context(atomic_output(json_path, "JSON file"))
               if json_path is not None else None)
        pileups = input_pileups(files, pileup)
        planned = plan(stages, io.common_collections(files), config, files)
        chain, needed, config = planned.stages, planned.inputs, planned.config
        if not chain:
            raise BenchError("no stage to time: the input feeds none of the registered stages"
                             + ("; " + "; ".join(f"{n} {why}" for n, why in
                                                 planned.skipped.items())
                                if planned.skipped else ""))
        batch, tiling = read_batch(files, needed, n_events, tile=tile)
        bar = None
        if progress:
            if console is None:
                from rich.console import Console

                console = Console(stderr=True)
            bar = ui.ProgressBar(len(names) * (warmups + repeat), "passes",
                                 text="[bold]bench[/bold] warm-ups and repeats", console=console)
        try:
            times = {b: time_backend(batch, b, chain, config, repeat, warmups=warmups,
                                     on_pass=(lambda: bar.update(1)) if bar else None)
                     for b in names}
        finally:
            if bar is not None:
                bar.close()
        result = BenchResult(
            times=times, backends=names, stages=[st.name for st in chain],
            n_events=batch.n_events, repeat=repeat, warmups=warmups, tiling=tiling,
            inputs=[_input_record(p, pu) for p, pu in zip(files, pileups, strict=True)],
            pileup=pileup,
            config={st.name: config.to_dict().get(st.name, {}) for st in chain},
            command=command, created_utc=created.isoformat().replace("+00:00", "Z"),
            machine=machine(times),
        )
        if out is not None:
            out.path.write_text(result.to_json())
    return result


def _input_record(path: str, pileup: Mapping[str, Any]) -> dict[str, Any]:
    """One input in the JSON: file, entries, pileup (and where it comes from), provenance."""
    from hltemu import io

    return {"file": path, "entries": pileup["events"], "pileup": pileup["mu"],
            "pileup_source": pileup["source"], "provenance": io.read_provenance(path)}


def compare_backends(
    files: Sequence[str],
    backends: Sequence[str],
    stages: Sequence[str] | None = None,
    n_events: int = 100,
    repeat: int = 3,
    config: Any = None,
) -> Any:
    """The best-of table of :func:`run_bench` (:func:`hltemu.ui.bench_table`: per stage,
    events/s on each backend and its speed-up over the first)."""
    return run_bench(files, backends, stages, n_events, repeat, config).tables()[0]
