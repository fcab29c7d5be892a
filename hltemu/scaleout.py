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

GPU workers: start one worker per device (``dask-cuda``'s ``LocalCUDACluster`` or one
``dask worker`` per GPU with ``CUDA_VISIBLE_DEVICES``) and pass its scheduler address with
``--backend cuda``; each task then runs on its worker's device (not yet tried on a GPU).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hltemu import ui
from hltemu.pipeline import PipelineError, plan, run_files
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
             output: str | None, warmup: bool) -> RunReport:
    """The task: the chain on one file (runs on a worker)."""
    return run_files([path], backend=backend, stages=stages, config=config,
                     batch_size=batch_size, output=output, progress=False, warmup=warmup)


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
) -> tuple[RunReport, list[Path]]:
    """Run the chain over ``files`` on a Dask cluster, one task per file.

    Parameters
    ----------
    files, backend, stages, config, batch_size, warmup:
        As for :func:`hltemu.pipeline.run_files`; ``backend`` is resolved on each worker.
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

    Returns the merged report and the output files written (in input order).
    """
    from hltemu import io

    files = [str(f) for f in files]
    if not files:
        raise PipelineError("no input files given")
    if batch_size < 1:
        raise PipelineError(f"batch size must be >= 1, got {batch_size}")
    if sum(x is not None for x in (n_workers, scheduler, client)) > 1:
        raise ScaleOutError("give at most one of n_workers, scheduler and client")
    io.count_events(files)  # validates every file (one clear error) before anything runs
    # the whole chain checked on the client (config, menu, correction files, model) before
    # a cluster starts; each worker plans the same chain again
    planned = plan(stages, io.common_collections(files), config)
    outputs = output_paths(files, output) if output is not None else []
    distributed = _import_distributed()

    own_cluster = None
    owns_client = client is None
    if owns_client:
        try:
            if scheduler is not None:
                client = distributed.Client(scheduler, timeout=f"{connect_timeout}s")
            else:
                own_cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                                       dashboard_address=":0")
                client = distributed.Client(own_cluster)
        except (OSError, TimeoutError) as exc:
            raise ScaleOutError(f"cannot reach the Dask scheduler {scheduler!r}: {exc}") from None
    device = "dask: " + ", ".join(sorted(client.scheduler_info()["workers"]))[:200]
    report = RunReport(str(backend), device, inputs=files, plan=planned.summary())
    stage_list = list(stages) if stages is not None else None
    t0 = time.perf_counter()
    try:
        futures = [
            client.submit(_run_one, f, str(backend), stage_list, config, batch_size,
                          str(outputs[i]) if outputs else None, warmup, pure=False)
            for i, f in enumerate(files)
        ]
        bar = ui.ProgressBar(len(files), "files") if progress else None
        try:
            for fut in distributed.as_completed(futures):
                report.merge(fut.result())
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    finally:
        if owns_client:
            client.close()
        if own_cluster is not None:
            own_cluster.close()
    report.total_seconds = time.perf_counter() - t0
    if report_path is not None:
        report.save(report_path)
    return report, outputs

