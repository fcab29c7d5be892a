"""The stage registry and the chain that runs stages over event batches.

A :class:`Stage` names the collections it needs and adds, its config dataclass, and one
implementation per backend: ``fn(batch, cfg) -> {name: Collection}``, called with the batch
already on that backend, returning collections on the same backend.  :func:`run_batch` runs a
chain on one batch and keeps everything on the device between stages; :func:`run_files` reads
ROOT files in batches, runs the chain, writes the products and returns a
:class:`~hltemu.profiling.RunReport`.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hltemu import ui
from hltemu.backends import Backend, get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import HLTConfig
from hltemu.profiling import RunReport, StageTimer
from hltemu.strictxp import stage_scope

StageFn = Callable[..., Mapping[str, Collection]]
T = TypeVar("T")
PrepareFn = Callable[[Any, Backend], Any]

#: Stage modules imported to fill the registry (each calls :func:`register` on import).  The
#: chain order is derived from what the stages need and add (:func:`chain_order`); stages that
#: could run in either order keep their registration order.
STAGE_MODULES: tuple[str, ...] = ("hltemu.stages",)

#: How many prepared results (device tables, weights, compiled formulas) the pipeline keeps,
#: one per (stage, config, backend); the least recently used goes first.
PREPARED_CACHE_SIZE = 64


class PipelineError(ValueError):
    """A chain that cannot run: unknown stage, missing input collection, no implementation."""


def dispatch(variants: Mapping[str, T], backend: Backend, what: str) -> T:
    """The entry of ``variants`` (backend name -> implementation) for ``backend``: the one
    place a backend's name picks code.  Stages hand their implementations to :class:`Stage`;
    a stage module's public helper that runs one step on a given backend (e.g.
    :func:`hltemu.stages.topocluster.topocluster`) calls this with its own table.  A missing
    entry is a :class:`PipelineError` naming ``what`` and the backends it has."""
    try:
        return variants[backend.name]
    except KeyError:
        raise PipelineError(f"{what} has no {backend.name!r} implementation; it has "
                            f"{', '.join(sorted(variants))}") from None


@dataclass(frozen=True)
class Stage:
    """One step of the chain.

    Attributes
    ----------
    name:
        Stage name used on the command line, in TOML tables and in the report.
    needs:
        Collections the stage reads (from the input file or from earlier stages).
    adds:
        Collections the stage returns.
    config_type:
        Frozen dataclass holding the stage's settings (defined in the stage's module, its
        fields declared with :func:`hltemu.config.param`).
    implementations:
        Backend name (``reference``, ``cpu``, ``cuda``) -> implementation,
        ``fn(batch, cfg) -> {name: Collection}``, or ``fn(batch, cfg, prepared)`` when the
        stage has a ``prepare``.
    doc:
        One line for ``hltemu info``.
    prepare:
        Optional ``prepare(cfg, backend) -> prepared``: what does not depend on the events
        (device tables, weights, compiled formulas, neighbour graphs), built once per
        (config, backend) and cached by the pipeline (:func:`prepared`), then passed to the
        implementation as its third argument.
    """

    name: str
    needs: tuple[str, ...]
    adds: tuple[str, ...]
    config_type: type
    implementations: Mapping[str, StageFn] = field(default_factory=dict)
    doc: str = ""
    prepare: PrepareFn | None = None

    def __call__(self, batch: EventBatch, cfg: Any = None) -> dict[str, Collection]:
        """Run on ``batch`` (on its backend) and return the added collections."""
        fn = dispatch(self.implementations, batch.backend, f"stage {self.name!r}")
        missing = [n for n in self.needs if n not in batch]
        if missing:
            raise PipelineError(
                f"stage {self.name!r} needs collection(s) {missing}; the batch has {sorted(batch)}"
            )
        cfg = cfg if cfg is not None else self.config_type()
        with stage_scope(self.name):
            if self.prepare is None:
                out = dict(fn(batch, cfg))
            else:
                out = dict(fn(batch, cfg, prepared(self, cfg, batch.backend)))
        if set(out) != set(self.adds):
            raise PipelineError(
                f"stage {self.name!r} returned {sorted(out)}, declared {sorted(self.adds)}"
            )
        return out


_REGISTRY: dict[str, Stage] = {}
_LOADED = False


_PREPARED: OrderedDict[tuple[Any, ...], Any] = OrderedDict()


def register(stage: Stage) -> Stage:
    """Add ``stage`` to the registry (replacing a stage of the same name)."""
    _REGISTRY[stage.name] = stage
    return stage


def prepared(stage: Stage, cfg: Any, backend: Backend) -> Any:
    """``stage.prepare(cfg, backend)``, built once per (stage, config, backend) and then reused
    (a config is a frozen dataclass, hence a key; an unhashable one is keyed by identity)."""
    try:
        hash(cfg)
        cfg_key: Any = cfg
    except TypeError:
        cfg_key = ("id", id(cfg))
    key = (stage.name, stage.prepare, cfg_key, backend.name, backend.device)
    if key in _PREPARED:
        _PREPARED.move_to_end(key)
        return _PREPARED[key]
    assert stage.prepare is not None
    value = stage.prepare(cfg, backend)
    _PREPARED[key] = value
    while len(_PREPARED) > PREPARED_CACHE_SIZE:
        _PREPARED.popitem(last=False)
    return value


def chain_order(stages: Sequence[Stage]) -> list[Stage]:
    """``stages`` ordered so that each comes after every stage that adds what it needs (a
    topological sort); among stages free to run, the earliest registered goes first.  A cycle
    is a :class:`PipelineError` naming its stages."""
    index = {st.name: i for i, st in enumerate(stages)}
    makers: dict[str, set[str]] = {}
    for st in stages:
        for coll in st.adds:
            makers.setdefault(coll, set()).add(st.name)
    after = {st.name: {m for n in st.needs for m in makers.get(n, ()) if m != st.name}
             for st in stages}
    done: list[Stage] = []
    left = {st.name: st for st in stages}
    while left:
        ready = [n for n in left if not (after[n] & left.keys())]
        if not ready:
            raise PipelineError(f"stages {sorted(left)} need each other's collections (a cycle)")
        first = min(ready, key=index.__getitem__)
        done.append(left.pop(first))
    return done


def registered_stages() -> dict[str, Stage]:
    """All registered stages, in chain order (:func:`chain_order`)."""
    global _LOADED
    if not _LOADED:
        for mod in STAGE_MODULES:
            importlib.import_module(mod)
        _LOADED = True
    return {st.name: st for st in chain_order(list(_REGISTRY.values()))}


def get_stage(name: str) -> Stage:
    stages = registered_stages()
    try:
        return stages[name]
    except KeyError:
        raise PipelineError(
            f"unknown stage {name!r}; registered stages: {', '.join(stages) or '(none)'}"
        ) from None


def config_types() -> dict[str, type]:
    """Stage name -> config dataclass of every registered stage, in chain order: the tables a
    config file may hold."""
    return {name: st.config_type for name, st in registered_stages().items()}


def default_config() -> HLTConfig:
    """Every registered stage at its defaults."""
    return HLTConfig.default(config_types())


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> HLTConfig:
    """A config from one table per stage (as a parsed TOML file); see
    :meth:`~hltemu.config.HLTConfig.from_dict`."""
    return HLTConfig.from_dict(data, config_types(), source)


def load_config(path: str | Path | None = None) -> HLTConfig:
    """The config in the TOML file ``path`` (``None``: :func:`default_config`), with a table
    for any registered stage; errors name the file, table and key."""
    return default_config() if path is None else HLTConfig.load(path, config_types())


def plan_chain(
    requested: Sequence[str] | None, available: Iterable[str]
) -> tuple[list[Stage], list[str]]:
    """Order and check a chain; return the stages and the input collections they need.

    ``requested=None`` means every registered stage that can run on ``available`` input
    collections (in chain order).  An explicit list keeps its order and must be runnable:
    every need comes from the input or from an earlier stage, else :class:`PipelineError`
    names the stage, the missing collection and the stages that would add it.
    """
    stages = registered_stages()
    available = set(available)
    if requested is None:
        chain, have = [], set(available)
        for st in stages.values():
            if all(n in have for n in st.needs):
                chain.append(st)
                have |= set(st.adds)
    else:
        chain = [get_stage(n) for n in requested]
    have, inputs = set(available), []
    for st in chain:
        for need in st.needs:
            if need in have:
                if need in available and need not in inputs:
                    inputs.append(need)
                continue
            makers = [s.name for s in stages.values() if need in s.adds]
            hint = f"; add stage {' or '.join(map(repr, makers))} before it" if makers else ""
            raise PipelineError(
                f"stage {st.name!r} needs collection {need!r}, which neither the input "
                f"(has {sorted(available)}) nor an earlier stage provides{hint}"
            )
        have |= set(st.adds)
    return chain, inputs


def run_batch(
    batch: EventBatch, chain: Sequence[Stage], config: Any = None, timer: StageTimer | None = None
) -> EventBatch:
    """Run ``chain`` on ``batch`` in place (products added to it) and return it.

    ``config`` is an :class:`~hltemu.config.HLTConfig` (``None``: every stage's defaults).
    """
    for st in chain:
        cfg = config.get(st.name, st.config_type) if config is not None else st.config_type()
        if timer is None:
            products = st(batch, cfg)
        else:
            with timer.stage(st.name, batch.n_events):
                products = st(batch, cfg)
        for name, coll in products.items():
            batch.add(name, coll)
    return batch


def run_files(
    files: Sequence[str | Path],
    backend: str | Backend = "auto",
    stages: Sequence[str] | None = None,
    config: Any = None,
    batch_size: int = 100,
    max_events: int | None = None,
    output: str | Path | None = None,
    report_path: str | Path | None = None,
    progress: bool = False,
    warmup: bool = True,
) -> RunReport:
    """Read ``files`` in batches, run the chain on ``backend``, write products and a report.

    Parameters
    ----------
    files:
        Input ROOT files in the hltemu input schema (or any file with the collections the
        chain needs, e.g. CMS NanoAOD ``GenPart`` for ``genjets``).
    stages:
        Stage names, or ``None`` for every registered stage the input can feed.
    batch_size, max_events:
        Events per batch; stop after this many events in total.
    output:
        ROOT file for the products (the collections the stages add, plus ``Event``).
    report_path:
        JSON file for the throughput report.
    warmup:
        Before timing, run the chain once on the first event of the first batch so that the
        Numba (CUDA) kernels are compiled outside the measurement (``cpu`` and ``cuda``; the
        ``reference`` backend compiles nothing).  Its wall time is reported as
        ``warmup_seconds``; its products are discarded.
    """
    import time

    from hltemu import io

    if batch_size < 1:
        raise PipelineError(f"batch size must be >= 1, got {batch_size}")
    if max_events is not None and max_events < 0:
        raise PipelineError(f"max_events must be >= 0, got {max_events}")
    be = get_backend(backend)
    files = [str(f) for f in files]
    if not files:
        raise PipelineError("no input files given")
    present = io.common_collections(files)
    chain, inputs = plan_chain(stages, present)
    to_read = list(dict.fromkeys([*inputs, *([io.EVENT] if io.EVENT in present else [])]))
    products = [name for st in chain for name in st.adds]
    n_total = io.count_events(files)
    if max_events is not None:
        n_total = min(n_total, max_events)

    report = RunReport(be.name, be.device, inputs=files)
    timer = StageTimer(be, report)
    writer = io.OutputWriter(output) if output is not None else None
    bar = _progress(progress, n_total)
    t0 = time.perf_counter()
    try:
        batches = io.iterate_batches(
            files, {n: None for n in to_read}, batch_size=batch_size, max_events=max_events,
            backend=be,
        )
        while True:
            with timer.stage("read", 0):
                batch = next(batches, None)
            if batch is None:
                break
            report.stages["read"].events += batch.n_events
            if warmup and be.name != "reference" and batch.n_events and chain:
                report.warmup_seconds += _warm_up(batch, chain, config)
                warmup = False
            run_batch(batch, chain, config, timer)
            _count_decisions(batch, report)
            if writer is not None:
                with timer.stage("write", batch.n_events):
                    writer.write(batch, [*([io.EVENT] if io.EVENT in batch else []), *products])
            report.events += batch.n_events
            if bar is not None:
                bar.update(batch.n_events)
    finally:
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
    report.total_seconds = time.perf_counter() - t0 - report.warmup_seconds
    if report_path is not None:
        report.save(report_path)
    return report


def _warm_up(batch: EventBatch, chain: Sequence[Stage], config: Any) -> float:
    """Run ``chain`` on a copy of the first event of ``batch`` (compiles the kernels); seconds."""
    import time

    t0 = time.perf_counter()
    run_batch(batch.select_events(0, 1), chain, config)
    batch.backend.synchronize()
    return time.perf_counter() - t0


def _count_decisions(batch: EventBatch, report: RunReport) -> None:
    """Accumulate per-path accept counts from a ``trigger`` collection, when there is one."""
    if "trigger" not in batch:
        return
    trig = batch["trigger"]
    for name, col in trig.columns.items():
        if col.dtype == bool:
            report.count("trigger accepts", name, int(batch.backend.to_host(col).sum()))


def _progress(enabled: bool, total: int) -> ui.ProgressBar | None:
    """The run's progress bar over ``total`` events (:class:`hltemu.ui.ProgressBar`), or
    ``None``; a hook that tests may replace."""
    return ui.ProgressBar(total) if enabled else None
