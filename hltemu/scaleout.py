"""Many files on a Dask cluster: one task per input file, reports combined on the client.

:func:`run_files_dask` validates every input and plans the chain on the client (so a bad file
or an unknown stage fails before anything is submitted), then submits one task per file to a
``dask.distributed`` cluster: a :class:`~distributed.LocalCluster` of ``n_workers`` processes
by default, or the scheduler at ``scheduler`` (``tcp://host:8786``), or a ``client`` you pass.
Each task runs :func:`hltemu.pipeline.run_files` on its file and writes that file's products
to its own ROOT file; the client merges the tasks' :class:`~hltemu.profiling.RunReport` s.

The merged report's per-stage ``seconds`` are summed over the tasks (time spent in the stage on
all workers together); ``total_seconds`` is the client's wall time from submission to the last
result, so the total events/s is the cluster's throughput.  Trigger decisions are identical to
a serial run: prescales count events from 1 in each file, and a task is one whole file.

Faults and outputs: every per-file output and the merged report are checked against the
inputs and each other before anything is read (:func:`hltemu.outputs.check_outputs`), and
written under a temporary name renamed only on success (:func:`hltemu.outputs.atomic_output`).
When a worker process dies, Dask runs its tasks again elsewhere (up to
``distributed.scheduler.allowed-failures`` times); the new attempt first removes the temporary
file the dead one left, so each output appears once, complete.  The merged report counts such
tasks (:attr:`~hltemu.profiling.RunReport.retried_tasks`).

GPU workers: start one worker per device (``dask-cuda``'s ``LocalCUDACluster`` or one
``dask worker`` per GPU with ``CUDA_VISIBLE_DEVICES``) and pass its scheduler address with
``--backend cuda``; each task then runs on its worker's device (not yet tried on a GPU).
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hltemu import ui
from hltemu.outputs import (
    AtomicOutput,
    NoOutputWarning,
    atomic_output,
    check_outputs,
    remove_temporaries,
)
from hltemu.pipeline import PipelineError, Plan, output_products, plan, run_files
from hltemu.profiling import RunReport


class ScaleOutError(RuntimeError):
    """Dask is missing, or the cluster could not be reached."""


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ScaleOutError(
            "running on a Dask cluster needs dask.distributed: pip install 'hltemu[dask]'"
        ) from None
    return distributed


def output_paths(files: Sequence[str | Path], output: str | Path) -> list[Path]:
    """One output file per input: ``<output stem>-<index>-<input stem>.root`` beside ``output``.

    The index keeps inputs of the same name (from different directories) apart.
    """
    out = Path(output)
    return [out.with_name(f"{out.stem}-{i:04d}-{Path(f).stem}{out.suffix or '.root'}")
            for i, f in enumerate(files)]


def _run_one(path: str, backend: str, stages: list[str] | None, config: Any, batch_size: int,
             output: str | None, warmup: bool, options: Mapping[str, Any] | None = None
             ) -> RunReport:
    """The task: the chain on one file (runs on a worker).  The file's output belongs to this
    task alone, so temporary files of it are those of an earlier attempt whose worker was
    killed, and are removed first."""
    if output is not None:
        remove_temporaries(output)
    return run_files([path], backend=backend, stages=stages, config=config,
                     batch_size=batch_size, output=output, progress=False, warmup=warmup,
                     **dict(options or {}))


def run_files_dask(
    files: Sequence[str | Path],
    backend: str = "auto",
    stages: Sequence[str] | None = None,
    config: Any = None,
    batch_size: int = 100,
    output: str | Path | None = None,
    report_path: str | Path | None = None,
    *,
    n_workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    progress: bool = False,
    warmup: bool = True,
    connect_timeout: float = 30.0,
    on_plan: Callable[[Plan], None] | None = None,
    keep: Sequence[str] = (),
    drop: Sequence[str] = (),
    compression: str = "zstd:1",
    pipeline: bool = True,
) -> tuple[RunReport, list[Path]]:
    """Run the chain over ``files`` on a Dask cluster, one task per file.

    Parameters
    ----------
    files, backend, stages, config, batch_size, warmup, keep, drop, compression, pipeline:
        As for :func:`hltemu.pipeline.run_files` (each task runs it on one file); ``backend``
        is resolved on each worker.
    output:
        Base name of the products: each input gets its own file (:func:`output_paths`);
        ``None`` writes nothing.
    report_path:
        JSON file for the merged report.
    n_workers:
        Worker processes of the :class:`~distributed.LocalCluster` started when neither
        ``scheduler`` nor ``client`` is given (``None``: Dask's default, one per core).
    scheduler:
        Address of a running Dask scheduler.
    client:
        A connected :class:`distributed.Client` to use as it is.
    connect_timeout:
        Seconds to wait for ``scheduler`` before giving up with :class:`ScaleOutError`.
    on_plan:
        Called with the chain's :class:`~hltemu.pipeline.Plan`, checked on the client before a
        cluster starts (as :func:`hltemu.pipeline.run_files`).

    Returns the merged report and the output files written (in input order; a file of 0
    events gets none, with a :class:`~hltemu.outputs.NoOutputWarning`).  An output that is the
    same file as an input, or an unwritable report or output directory, is an
    :class:`~hltemu.outputs.OutputPathError` before anything is submitted.
    """
    from hltemu import io

    files = [str(f) for f in files]
    if not files:
        raise PipelineError("no input files given")
    if batch_size < 1:
        raise PipelineError(f"batch size must be >= 1, got {batch_size}")
    if sum(x is not None for x in (n_workers, scheduler, client)) > 1:
        raise ScaleOutError("give at most one of n_workers, scheduler and client")
    outputs = output_paths(files, output) if output is not None else []
    check_outputs([*(("output file", p) for p in outputs), ("report file", report_path)], files)
    io.parse_compression(compression)  # a bad spec fails before a cluster starts
    io.count_events(files)  # validates every file (one clear error) before anything runs
    # the whole chain checked on the client (config, menu, correction files, model) before
    # a cluster starts; each worker plans the same chain again
    planned = plan(stages, io.common_collections(files), config, files)
    products = [n for st in planned.stages for n in st.adds]
    written, planned.counts_only = output_products(planned.stages, keep, drop)
    planned.not_written = [n for n in products if n not in written]
    if on_plan is not None:
        on_plan(planned)
    distributed = _import_distributed()
    if outputs:  # the workers write beside ``output``: fail now if that directory is not writable
        AtomicOutput(outputs[0], "output file").discard()

    with contextlib.ExitStack() as stack:
        rep = (stack.enter_context(atomic_output(report_path, "report file"))
               if report_path is not None else None)
        stack.callback(_sweep, outputs)  # what tasks killed with their worker left
        report, done = _submit_and_merge(
            distributed, files, outputs, planned.summary(), backend, stages, config, batch_size,
            warmup, progress, n_workers, scheduler, client, connect_timeout,
            {"keep": list(keep), "drop": list(drop), "compression": compression,
             "pipeline": pipeline})
        per_file = list(zip(outputs, done, strict=False))  # outputs: none, or one per file
        written = [p for p, events in per_file if events > 0]
        empty = [str(p) for p, events in per_file if events == 0]
        if report.events == 0 and rep is not None:
            rep.discard()
            empty.append(str(rep.final))
        if empty:
            warnings.warn(f"no events were processed: {', '.join(empty)} not written",
                          NoOutputWarning, stacklevel=2)
        if rep is not None and report.events > 0:
            rep.path.write_text(report.to_json())
            rep.commit()
    return report, written


def _sweep(outputs: Sequence[Path]) -> None:
    """Remove the temporary files of ``outputs`` left by tasks whose worker was killed."""
    for path in outputs:
        remove_temporaries(path)


def _lost_attempts(keys: list[str], dask_scheduler: Any = None) -> dict[str, int]:
    """Runs on the scheduler: task key -> how many times a worker the task was assigned to
    was lost (its process died) before the task finished; Dask then runs the task again."""
    tasks = dask_scheduler.tasks
    return {k: int(tasks[k].suspicious) for k in keys if k in tasks}


def _submit_and_merge(distributed: Any, files: list[str], outputs: list[Path],
                      plan_summary: dict[str, Any], backend: str,
                      stages: Sequence[str] | None, config: Any, batch_size: int, warmup: bool,
                      progress: bool, n_workers: int | None, scheduler: str | None, client: Any,
                      connect_timeout: float, options: Mapping[str, Any] | None = None
                      ) -> tuple[RunReport, list[int]]:
    """Connect (or start a cluster), run one task per file and merge the reports; returns the
    merged report and the events of each file (input order)."""
    own_cluster = None
    owns_client = client is None
    t_start = time.perf_counter()
    if owns_client:
        where = (f"cannot reach the Dask scheduler {scheduler!r}" if scheduler is not None
                 else "cannot start a local Dask cluster")
        try:
            if scheduler is not None:
                client = _connect(distributed, scheduler, connect_timeout)
            else:
                own_cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                                       dashboard_address=":0")
                client = distributed.Client(own_cluster)
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            if own_cluster is not None:
                own_cluster.close()
            raise ScaleOutError(f"{where}: {_one_line(exc)}") from None
    try:
        device = "dask: " + ", ".join(sorted(client.scheduler_info()["workers"]))[:200]
        report = RunReport(str(backend), device, inputs=files, plan=plan_summary,
                           startup_seconds=time.perf_counter() - t_start)
        stage_list = list(stages) if stages is not None else None
        t0 = time.perf_counter()
        futures = [
            client.submit(_run_one, f, str(backend), stage_list, config, batch_size,
                          str(outputs[i]) if outputs else None, warmup, dict(options or {}),
                          pure=False)
            for i, f in enumerate(files)
        ]
        index = {fut.key: i for i, fut in enumerate(futures)}
        events = [0] * len(files)
        bar = ui.ProgressBar(len(files), "files") if progress else None
        try:
            for fut in distributed.as_completed(futures):
                try:
                    one = fut.result()
                except distributed.KilledWorker:
                    import dask

                    raise ScaleOutError(
                        f"the task of {files[index[fut.key]]} was lost with its worker more than "
                        f"{dask.config.get('distributed.scheduler.allowed-failures')} times "
                        "(a worker process died each time); giving up") from None
                report.merge(one)
                events[index[fut.key]] = one.events
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        report.total_seconds = time.perf_counter() - t0
        try:
            lost = client.run_on_scheduler(_lost_attempts, list(index))
        except Exception:  # a scheduler that refuses to run functions: retries not counted
            lost = {}
        report.retried_tasks = sum(1 for n in lost.values() if n > 0)
        return report, events
    finally:
        if owns_client:
            client.close()
        if own_cluster is not None:
            own_cluster.close()


def _connect(distributed: Any, scheduler: str, timeout: float) -> Any:
    """A :class:`distributed.Client` of the scheduler at ``scheduler``, or an error within
    about ``timeout`` seconds (s).

    Dask's own ``timeout`` bounds the TCP connection only: a peer that accepts and then never
    answers (a firewall or proxy in front of the address, a service that is not Dask) keeps
    ``Client()`` waiting for ever, and one that answers with something else fails deep inside
    Dask's protocol (a ``MemoryError`` for a nonsense frame length).  The client is therefore
    made in a daemon thread that is given up on after ``timeout`` plus a grace second; every
    failure is an :class:`OSError` or :class:`TimeoutError` with a one-line reason.
    """
    box: dict[str, Any] = {}

    def make() -> None:
        try:
            box["client"] = distributed.Client(scheduler, timeout=f"{timeout}s")
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=make, name="hltemu-dask-connect", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if thread.is_alive():
        raise TimeoutError(f"no answer from the scheduler within {timeout:g} s "
                           "(is a Dask scheduler listening there?)")
    exc = box.get("error")
    if exc is None:
        return box["client"]
    if isinstance(exc, (OSError, TimeoutError, ValueError, TypeError)):
        raise exc
    raise OSError(f"the peer does not speak Dask's protocol ({type(exc).__name__}: "
                  f"{_one_line(exc)})")


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__

