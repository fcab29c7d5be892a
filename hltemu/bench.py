"""``hltemu bench``: the same batch through the chain on several backends, with ratios.

For statistically careful comparisons use the pytest-benchmark suites in ``benchmarks/``; this
command is the quick look a physicist wants after changing a cut or a kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hltemu.backends import get_backend
from hltemu.batch import EventBatch
from hltemu.pipeline import PipelineError, plan, run_batch
from hltemu.profiling import RunReport, StageTimer


def _read_one_batch(files: Sequence[str], needed: Sequence[str], n_events: int) -> EventBatch:
    from hltemu import io

    batch = next(
        io.iterate_batches(files, {n: None for n in needed}, batch_size=n_events,
                           max_events=n_events),
        None,
    )
    if batch is None or batch.n_events == 0:
        raise PipelineError(f"no events in {', '.join(files)}")
    return batch


def time_backend(
    batch: EventBatch, backend: str, chain: Sequence[Any], config: Any, repeat: int
) -> dict[str, float]:
    """Best-of-``repeat`` seconds per stage on ``backend`` (after one untimed warm-up run)."""
    be = get_backend(backend)
    inputs = batch.to(be)
    run_batch(EventBatch(be, inputs.n_events, dict(inputs.collections)), chain, config)  # warm-up
    best: dict[str, float] = {}
    for _ in range(repeat):
        report = RunReport(be.name, be.device)
        run_batch(EventBatch(be, inputs.n_events, dict(inputs.collections)), chain, config,
                  StageTimer(be, report))
        for name, st in report.stages.items():
            best[name] = min(best.get(name, math.inf), st.seconds)
    best["total"] = sum(v for k, v in best.items())
    return best


def compare_backends(
    files: Sequence[str],
    backends: Sequence[str],
    stages: Sequence[str] | None = None,
    n_events: int = 100,
    repeat: int = 3,
    config: Any = None,
) -> Any:
    """A rich table: per stage, events/s on each backend and its speed-up over the first
    (:func:`hltemu.ui.bench_table`)."""
    from hltemu import io, ui

    if not backends:
        raise PipelineError("give at least one backend to compare")
    planned = plan(stages, io.common_collections(files), config, files)
    chain, inputs, config = planned.stages, planned.inputs, planned.config
    if not chain:
        raise PipelineError("no stage to time: the input feeds none of the registered stages")
    batch = _read_one_batch(files, inputs, n_events)
    times = {b: time_backend(batch, b, chain, config, repeat) for b in backends}
    return ui.bench_table(times, backends, [*(st.name for st in chain), "total"],
                          batch.n_events, repeat)
