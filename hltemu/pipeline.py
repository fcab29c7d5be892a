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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hltemu import ui
from hltemu.backends import Backend, get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import HLTConfig
from hltemu.profiling import RunReport, StageTimer, Timeline
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


class CannotRun(PipelineError):
    """A stage that has nothing to do with the collections the chain will have (raised by the
    planner or a stage's ``plan``): the default chain leaves it out and says why, an explicit
    ``--stages`` list fails with the message."""


@dataclass(frozen=True)
class Planned:
    """What a stage's ``plan`` hook returns: the config to run with (narrowed to what the chain
    provides), notes to print (one line each), and facts for the report and the output's
    provenance (JSON values, e.g. ``{"dropped_paths": [...]}``)."""

    config: Any
    notes: tuple[str, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=dict)


#: A stage's ``plan`` hook: ``plan(cfg, available, inputs) -> Planned`` (see :class:`Stage`).
PlanHook = Callable[[Any, frozenset[str], tuple[str, ...]], Planned]


def check_only(check: Callable[[Any], Any]) -> PlanHook:
    """A ``plan`` hook that runs ``check(cfg)`` (reads and checks the files the config names,
    raising an error that names them) and keeps the config as it is."""

    def plan_hook(cfg: Any, available: frozenset[str], inputs: tuple[str, ...] = ()) -> Planned:
        check(cfg)
        return Planned(cfg)

    plan_hook.__doc__ = f"Check the config with {getattr(check, '__name__', check)} before the run."
    return plan_hook


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
        Collections the stage reads (from the input file or from earlier stages): a tuple, or
        a function of the stage's config returning one (the trigger's come from its menu).
        :meth:`needs_for` gives them for a config; the chain order uses the defaults'.
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
    plan:
        Optional ``plan(cfg, available, inputs) -> Planned``, called by the planner before any
        event is read, with the collections the chain will have when the stage runs and the
        run's input files (``inputs``, a tuple of paths; empty when the chain is planned
        without files, e.g. :func:`check_config`): it reads and checks every file the config
        names (menu, correction files, model), raising :class:`~hltemu.config.ConfigError` or
        :class:`PipelineError` naming it, and may narrow the config to what ``available``
        allows or resolve a setting from the inputs (:class:`Planned`; topocluster's
        ``pileup_mu = "auto"``), or raise :class:`CannotRun` when nothing is left to do.
    count:
        Optional ``count(products, backend) -> {group: {key: value}}``: figures of one batch's
        products (e.g. the trigger's accepts per path) that the run report adds up
        (:meth:`~hltemu.profiling.RunReport.count`).
    cross_check:
        Optional ``cross_check(cfg, configs, chain, inputs) -> notes``, called once the whole
        chain is planned with every stage's planned config (``configs``: name -> config), the
        names of the chain's stages and the input files: warnings that depend on other stages'
        settings (the ``jec`` stage: corrections derived with another jet radius, rho or noise
        mode than this run's), printed with the plan's notes.
    in_default_chain:
        False for a stage that runs only when asked for by name (``--stages``): the offline
        reconstruction (``tracks``, ``vertices``, ``pfcandidates``, ``pfjets``, ``pfrho``), the
        pixel tracking (``pixeltracks``, ``pixelvertices``) and the jet regression are not
        part of the HLT that ``hltemu run`` emulates by default; the default chain lists them
        among the stages left out, with that reason.
    counts_only:
        Products that ``hltemu run`` writes as their per-event counts only (the counter
        ``nC``, no column) unless a ``--keep`` pattern names them: collections too large to
        write by default (the doublets: 0.9 MB per event at pileup 50, 97% of a full output)
        whose counts are what later commands read (:func:`output_products`).
    counts_suffice:
        Needs of which the stage reads only the per-event counts (the offsets), so that an
        input holding only those counts feeds it (the trigger's doublet paths): a tuple, or a
        function of the stage's config returning one.  A stage given a counts-only input
        collection it needs the columns of is refused by the planner, naming the
        ``--keep`` that restores them.
    """

    name: str
    needs: tuple[str, ...] | Callable[[Any], Sequence[str]]
    adds: tuple[str, ...]
    config_type: type
    implementations: Mapping[str, StageFn] = field(default_factory=dict)
    doc: str = ""
    prepare: PrepareFn | None = None
    plan: PlanHook | None = None
    count: Callable[[Mapping[str, Collection], Backend], Mapping[str, Mapping[str, float]]] | None \
        = None
    cross_check: Callable[[Any, Mapping[str, Any], tuple[str, ...], tuple[str, ...]],
                          Sequence[str]] | None = None
    in_default_chain: bool = True
    counts_only: tuple[str, ...] = ()
    counts_suffice: tuple[str, ...] | Callable[[Any], Sequence[str]] = ()

    def counts_suffice_for(self, cfg: Any = None) -> tuple[str, ...]:
        """The needs of which the stage reads only the counts, with ``cfg``."""
        if not callable(self.counts_suffice):
            return tuple(self.counts_suffice)
        return tuple(self.counts_suffice(cfg if cfg is not None else self.config_type()))

    def needs_for(self, cfg: Any = None) -> tuple[str, ...]:
        """The collections the stage reads with ``cfg`` (``None``: the defaults)."""
        if not callable(self.needs):
            return tuple(self.needs)
        return tuple(self.needs(cfg if cfg is not None else self.config_type()))

    def __call__(self, batch: EventBatch, cfg: Any = None) -> dict[str, Collection]:
        """Run on ``batch`` (on its backend) and return the added collections."""
        fn = dispatch(self.implementations, batch.backend, f"stage {self.name!r}")
        cfg = cfg if cfg is not None else self.config_type()
        missing = [n for n in self.needs_for(cfg) if n not in batch]
        if missing:
            raise PipelineError(
                f"stage {self.name!r} needs collection(s) {missing}; the batch has {sorted(batch)}"
            )
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
    after = {st.name: {m for n in st.needs_for() for m in makers.get(n, ()) if m != st.name}
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


@dataclass
class Plan:
    """A chain checked before any event is read (:func:`plan`).

    ``stages`` in run order; ``inputs``: the input collections they read; ``config``: the
    config to run with (each stage's as its ``plan`` hook narrowed it); ``skipped``: stage ->
    why the default chain leaves it out; ``notes``: lines to print; ``facts``: stage -> what
    its plan hook reports (e.g. the trigger's ``dropped_paths``), for the report and the
    output's provenance.
    """

    stages: list[Stage]
    inputs: list[str]
    config: HLTConfig
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: products the run leaves out of its output (``--drop``)
    not_written: list[str] = field(default_factory=list)
    #: products the run writes as per-event counts only (:attr:`Stage.counts_only`)
    counts_only: list[str] = field(default_factory=list)
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the stages run, those skipped and why, the notes and facts."""
        return {"stages": [st.name for st in self.stages], "inputs": list(self.inputs),
                "skipped": dict(self.skipped), "notes": list(self.notes),
                "facts": {k: dict(v) for k, v in self.facts.items()},
                "not_written": list(self.not_written), "counts_only": list(self.counts_only)}


def _missing_need(st: Stage, need: str, available: set[str], stages: Mapping[str, Stage],
                  short: bool = False) -> str:
    makers = [s.name for s in stages.values() if need in s.adds]
    if short:
        return f"needs {need!r}, which neither the input nor an earlier stage provides"
    hint = f"; add stage {' or '.join(map(repr, makers))} before it" if makers else ""
    return (f"stage {st.name!r} needs collection {need!r}, which neither the input "
            f"(has {sorted(available)}) nor an earlier stage provides{hint}")


def _counts_only_inputs(files: Sequence[str], available: set[str]) -> dict[str, str]:
    """Input collections that a file of ``files`` holds as per-event counts only -> that
    file."""
    if not files:
        return {}
    from hltemu import io

    out: dict[str, str] = {}
    for f in files:
        for name in io.counts_only_collections([f]):
            if name in available:
                out.setdefault(name, f)
    return out


def _left_out(files: Sequence[str], need: str, short: bool) -> str:
    """``; <file>: <why>`` when an input is an ``hltemu run`` output that left ``need`` out
    (:func:`hltemu.io.left_out_hint`), else ``""``."""
    if short or not files:
        return ""
    from hltemu import io

    for f in files:
        hint = io.left_out_hint(f, [need])
        if hint:
            return f"; {f}: {hint}"
    return ""


def _counts_only_need(st: Stage, need: str, path: str, short: bool = False) -> str:
    if short:
        return (f"needs the columns of {need!r}, of which the input holds only the per-event "
                f"counts (rerun the run that wrote it with --keep {need})")
    return (f"stage {st.name!r} needs the columns of collection {need!r}, of which {path} "
            f"holds only the per-event counts (hltemu run writes {need!r} so by default): "
            f"rerun the run that wrote it with --keep {need}")


def plan(requested: Sequence[str] | None, available: Iterable[str], config: Any = None,
         files: Sequence[str | Path] = ()) -> Plan:
    """Order and check a chain before any event is read.

    ``requested=None`` means every registered stage that can run on the ``available`` input
    collections, in chain order; each stage left out is in :attr:`Plan.skipped` with the
    reason.  An explicit list keeps its order and must be runnable: a need that neither the
    input nor an earlier stage provides is a :class:`PipelineError` naming the stage, the
    collection and the stages that would add it.  ``config`` (an
    :class:`~hltemu.config.HLTConfig`, ``None``: defaults) gives each stage's needs and goes
    through each stage's ``plan`` hook, which checks the files it names and may narrow it or
    resolve settings from the input ``files`` (the run's inputs; empty: none known).
    """
    stages = registered_stages()
    available = set(available)
    chain = list(stages.values()) if requested is None else [get_stage(n) for n in requested]
    config = config if config is not None else HLTConfig({})
    result = Plan([], [], config)
    fitted: dict[str, Any] = dict(config.stages)
    have = set(available)
    inputs = tuple(str(f) for f in files)
    counts_in = _counts_only_inputs(inputs, available)
    for st in chain:
        if requested is None and not st.in_default_chain:
            result.skipped[st.name] = ("not in the default chain (it runs when named): "
                                       "name it in --stages")
            continue
        cfg = config.get(st.name, st.config_type)
        try:
            if st.plan is not None:
                try:
                    planned = st.plan(cfg, frozenset(have), inputs)
                except CannotRun as exc:
                    if requested is None:
                        raise
                    raise CannotRun(f"stage {st.name!r}: {exc}") from None
                cfg = planned.config
            else:
                planned = Planned(cfg)
            for need in st.needs_for(cfg):
                if need not in have:
                    raise CannotRun(_missing_need(st, need, available, stages,
                                                  short=requested is None)
                                    + _left_out(inputs, need, requested is None))
                if need in counts_in and need not in st.counts_suffice_for(cfg):
                    raise CannotRun(_counts_only_need(st, need, counts_in[need],
                                                      short=requested is None))
        except CannotRun as exc:
            if requested is not None:
                raise
            result.skipped[st.name] = str(exc)
            continue
        for need in st.needs_for(cfg):
            if need in available and need not in result.inputs:
                result.inputs.append(need)
        result.stages.append(st)
        fitted[st.name] = cfg
        result.notes.extend(planned.notes)
        if planned.facts:
            result.facts[st.name] = dict(planned.facts)
        have |= set(st.adds)
        for name in st.adds:  # a stage's product replaces the input's
            counts_in.pop(name, None)
    names = tuple(st.name for st in result.stages)
    for st in result.stages:
        if st.cross_check is not None:
            result.notes.extend(st.cross_check(fitted[st.name], fitted, names, inputs))
    result.config = HLTConfig(fitted)
    return result


def check_config(config: HLTConfig) -> Plan:
    """Check every stage's settings as a run would before reading (each stage's ``plan`` hook:
    the files the config names are read, the menu's paths checked), as if every collection a
    stage needs or adds were there; the error names the stage, file or key."""
    stages = registered_stages()
    everything = {c for st in stages.values()
                  for c in (*st.needs_for(config.get(st.name, st.config_type)), *st.adds)}
    for st in stages.values():  # the stages the default chain leaves out are checked too
        if not st.in_default_chain and st.plan is not None:
            st.plan(config.get(st.name, st.config_type), frozenset(everything), ())
    return plan(None, everything, config)


def plan_chain(
    requested: Sequence[str] | None, available: Iterable[str], config: Any = None
) -> tuple[list[Stage], list[str]]:
    """The stages and input collections of :func:`plan` (same rules and errors)."""
    p = plan(requested, available, config)
    return p.stages, p.inputs


def run_batch(
    batch: EventBatch, chain: Sequence[Stage], config: Any = None, timer: StageTimer | None = None
) -> EventBatch:
    """Run ``chain`` on ``batch`` in place (products added to it) and return it.

    ``config`` is an :class:`~hltemu.config.HLTConfig` (``None``: every stage's defaults).
    """
    for i, st in enumerate(chain):
        cfg = config.get(st.name, st.config_type) if config is not None else st.config_type()
        if timer is None:
            products = st(batch, cfg)
        else:  # one synchronisation between two stages: the end of one is the next's start
            with timer.stage(st.name, batch.n_events, sync_start=i == 0):
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
    on_plan: Callable[[Plan], None] | None = None,
    keep: Sequence[str] = (),
    drop: Sequence[str] = (),
    timeline: str | Path | None = None,
    pipeline: bool = True,
    compression: str = "zstd:1",  # io.DEFAULT_COMPRESSION (io is imported lazily)
) -> RunReport:
    """Read ``files`` in batches, run the chain on ``backend``, write products and a report.

    Parameters
    ----------
    files:
        Input ROOT files in the hltemu input schema (or any file with the collections the
        chain needs, e.g. an hltemu output for ``--stages trigger``).
    stages:
        Stage names, or ``None`` for every registered stage the input can feed.
    batch_size, max_events:
        Events per batch; stop after this many events in total.
    output:
        ROOT file for the products (the collections the stages add, plus ``Event``).
    report_path:
        JSON file for the throughput report.

        Neither may be the same file as an input or as each other
        (:class:`~hltemu.outputs.OutputPathError` before anything is read).  Both are written
        to temporary files beside them, created before the first event is read (so a missing
        or unwritable directory fails then), and renamed to their names only when the whole
        run succeeded (:func:`~hltemu.outputs.atomic_output`); an error or Ctrl-C leaves
        neither.  A run of 0 events writes neither and warns
        (:class:`~hltemu.outputs.NoOutputWarning`).
    warmup:
        Before timing, run the chain once on the first event of the first batch so that the
        Numba (CUDA) kernels are compiled outside the measurement (``cpu`` and ``cuda``; the
        ``reference`` backend compiles nothing).  Its wall time is reported as
        ``warmup_seconds``; its products are discarded.
    on_plan:
        Called with the :class:`Plan` (stages run and skipped, notes) once the chain is
        checked, before any event is read; its summary is also in the report (``plan``).
    keep, drop:
        Which products are written (:func:`output_products`): those matching a ``drop``
        pattern are left out unless a ``keep`` pattern matches them; the report's plan lists
        them (``not_written``).  The stages' :attr:`~Stage.counts_only` products are written
        as per-event counts unless a ``keep`` pattern names them (``counts_only`` in the
        plan).
    timeline:
        JSON file for the run's timeline (:class:`~hltemu.profiling.Timeline`: host start and
        end of every read, stage and write, per batch; a Chrome trace for Perfetto), written
        like the report.
    pipeline:
        Overlap reading the next batch and writing the previous ones with the stages on the
        current one (two threads, :class:`_BatchSteps`); the same output as ``False``, which
        runs read, stages and write of each batch in sequence.  The stages' kernels release
        Python's GIL, so the threads' work proceeds while they run.  In the report, ``read``
        and ``write`` then overlap the stages: the rows add up to more than the total.
    compression:
        The output's compression, ``ALGO[:LEVEL]`` or ``none``
        (:func:`hltemu.io.parse_compression`; default :data:`hltemu.io.DEFAULT_COMPRESSION`,
        checked before anything is read).
    """
    import contextlib
    import time

    from hltemu import io
    from hltemu.outputs import atomic_output, check_outputs

    if batch_size < 1:
        raise PipelineError(f"batch size must be >= 1, got {batch_size}")
    if max_events is not None and max_events < 0:
        raise PipelineError(f"max_events must be >= 0, got {max_events}")
    be = get_backend(backend)
    files = [str(f) for f in files]
    if not files:
        raise PipelineError("no input files given")
    check_outputs([("output file", output), ("report file", report_path),
                   ("timeline file", timeline)], files)
    io.parse_compression(compression)  # a bad spec fails before anything is read
    present = io.common_collections(files)
    planned = plan(stages, present, config, files)
    chain, inputs, config = planned.stages, planned.inputs, planned.config
    to_read = list(dict.fromkeys([*inputs, *([io.EVENT] if io.EVENT in present else [])]))
    planned.notes.extend(io.reading_notes(files, {n: None for n in to_read}))
    added = [name for st in chain for name in st.adds]
    products, counts_only = output_products(chain, keep, drop) if chain else ([], [])
    planned.not_written = [n for n in added if n not in products]
    planned.counts_only = counts_only
    if on_plan is not None:
        on_plan(planned)
    if not chain:
        raise PipelineError(
            f"no stage can run on {', '.join(files)}: "
            + "; ".join(f"{n} {why}" for n, why in planned.skipped.items())
            if planned.skipped else f"no stage to run on {', '.join(files)}")
    n_total = io.count_events(files)
    if max_events is not None:
        n_total = min(n_total, max_events)

    report = RunReport(be.name, be.device, inputs=files, plan=planned.summary(),
                       config={st.name: config.to_dict().get(st.name, {}) for st in chain})
    trace = Timeline(be) if timeline is not None else None
    timer = StageTimer(be, report, trace)
    with contextlib.ExitStack() as outs:
        # temporary files now: a missing or unwritable directory fails before the first event
        out = (outs.enter_context(atomic_output(output, "output file"))
               if output is not None else None)
        rep = (outs.enter_context(atomic_output(report_path, "report file"))
               if report_path is not None else None)
        tl = (outs.enter_context(atomic_output(timeline, "timeline file"))
              if timeline is not None else None)
        writer = (io.OutputWriter(out.path, name=out.final, compression=compression)
                  if out is not None else None)
        names = [*([io.EVENT] if io.EVENT in to_read else []), *products]
        bar = _progress(progress, n_total)
        t0 = time.perf_counter()
        steps = _BatchSteps(
            io.iterate_batches(files, {n: None for n in to_read}, batch_size=batch_size,
                               max_events=max_events, backend=be),
            timer, report, writer, names, counts_only, pipeline)
        try:
            while (batch := steps.next_batch()) is not None:
                if warmup and be.name != "reference" and batch.n_events and chain:
                    t_warm = time.perf_counter()
                    report.warmup_seconds += _warm_up(batch, chain, config)
                    if trace is not None:
                        trace.add("warm-up (not counted)", t_warm, time.perf_counter(), 1)
                    warmup = False
                if trace is not None:
                    trace.batch = steps.current
                steps.read_ahead()  # after the warm-up: it must not hide the next read
                before = _chain_seconds(report, chain)
                run_batch(batch, chain, config, timer)
                steps.add_seconds(batch.source, _chain_seconds(report, chain) - before)
                count_products(batch, chain, report)
                steps.write(batch)
                report.events += batch.n_events
                if bar is not None:
                    bar.update(batch.n_events)
            steps.finish()
            if writer is not None:
                writer.set_provenance(_run_provenance(be, planned, files, report, batch_size,
                                                      max_events))
        finally:
            steps.close()  # the reading and writing threads end before the file is closed
            if writer is not None:
                writer.close()
            if bar is not None:
                bar.close()
        report.total_seconds = time.perf_counter() - t0 - report.warmup_seconds
        if tl is not None and trace is not None and report.events > 0:
            tl.path.write_text(trace.to_json({"inputs": files, "backend": be.name,
                                              "device": be.device,
                                              "warmup_seconds": report.warmup_seconds}))
        _commit_outputs(report, out, rep, tl)
    return report


def _chain_seconds(report: RunReport, chain: Sequence[Stage]) -> float:
    """Seconds the report holds for the stages of ``chain`` so far."""
    return sum(report.stages[st.name].seconds for st in chain if st.name in report.stages)


#: Batches a pipelined run writes behind the stages at most (each held in memory until
#: written).
WRITES_IN_FLIGHT = 2


class _BatchSteps:
    """Reading and writing of a run's batches, in sequence with the stages or, when
    ``pipelined``, overlapping them: one thread reads the next batch (decompression, reading
    checks, upload to the device) while the stages run on the current one, another writes the
    previous ones (download, compression), at most :data:`WRITES_IN_FLIGHT` behind.  Each
    thread handles its batches in order, so the output's events and products are those of a
    run in sequence.  An error in either thread is raised in the caller's at the next
    :meth:`next_batch`, :meth:`write` or :meth:`finish`.

    The run's per-file seconds (:attr:`RunReport.files`) are the sums of its batches' timed
    steps (read + stages + write, as the report's rows count them), which in a pipelined run
    overlap other batches' steps.
    """

    def __init__(self, batches: Iterator[EventBatch], timer: StageTimer, report: RunReport,
                 writer: Any, names: Sequence[str], counts_only: Sequence[str],
                 pipelined: bool) -> None:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.batches, self.timer, self.report = batches, timer, report
        self.writer, self.names, self.pipelined = writer, list(names), pipelined
        self.counts_only = list(counts_only)
        self.n_read = 0  # batches read (one more than the current one while reading ahead)
        self.current = -1  # index of the batch the stages run on
        self._source: str | None = None
        self._reading: Any = None
        self._writes: deque[Any] = deque()
        self._read_pool = (ThreadPoolExecutor(1, thread_name_prefix="hltemu-read")
                           if pipelined else None)
        self._write_pool = (ThreadPoolExecutor(1, thread_name_prefix="hltemu-write")
                            if pipelined and writer is not None else None)

    def _file(self, source: str) -> dict[str, float]:
        """The report's figures of input ``source``."""
        return self.report.files.setdefault(source, {"events": 0, "seconds": 0.0})

    def add_seconds(self, source: str, seconds: float) -> None:
        self._file(source)["seconds"] += seconds

    def _read(self) -> tuple[EventBatch | None, float]:
        with self.timer.stage("read", 0, sync=not self.pipelined, batch=self.n_read) as took:
            batch = next(self.batches, None)
        if batch is not None:
            self.n_read += 1
        return batch, took[0]

    def next_batch(self) -> EventBatch | None:
        """The next batch (``None`` after the last), counted into the report's ``read``."""
        if self._reading is not None:
            batch, seconds = self._reading.result()
            self._reading = None
        else:
            batch, seconds = self._read()
        if batch is not None:
            self.current += 1
            self.timer.add_events("read", batch.n_events)
            self._source = batch.source
            self._file(batch.source)["events"] += batch.n_events
        if self._source is not None:  # the read that found the end: the last file's
            self.add_seconds(self._source, seconds)
        return batch

    def read_ahead(self) -> None:
        """Start reading the batch after the current one (pipelined; otherwise nothing)."""
        if self._read_pool is not None and self._reading is None:
            self._reading = self._read_pool.submit(self._read)

    def _write(self, batch: EventBatch, index: int) -> float:
        sync = not self.pipelined
        with self.timer.stage("write", batch.n_events, sync=sync, batch=index) as took:
            self.writer.write(batch, self.names, self.counts_only)
        return took[0]

    def write(self, batch: EventBatch) -> None:
        """Write ``batch``'s products (in sequence, or queued behind the ones in flight)."""
        if self.writer is None:
            return
        index = self.current
        if self._write_pool is None:
            self.add_seconds(batch.source, self._write(batch, index))
            return
        while len(self._writes) >= WRITES_IN_FLIGHT:
            self._collect()
        self._writes.append((batch.source, self._write_pool.submit(self._write, batch, index)))

    def _collect(self) -> None:
        source, done = self._writes.popleft()
        self.add_seconds(source, done.result())

    def finish(self) -> None:
        """Wait for the writes in flight (their errors raised here)."""
        while self._writes:
            self._collect()

    def close(self) -> None:
        """End the threads: a read or write in progress finishes, queued ones are cancelled
        (after an error or Ctrl-C; the output is then discarded)."""
        for pool in (self._read_pool, self._write_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def _run_provenance(be: Backend, planned: Plan, files: Sequence[str], report: RunReport,
                    batch_size: int, max_events: int | None) -> dict[str, Any]:
    """What an output of :func:`run_files` records about how it was made (written into the
    file, :func:`hltemu.io.read_provenance`): backend and device, the planned chain (stages,
    skipped and why, notes, the trigger's dropped paths), the resolved config of the stages
    that ran, every input with its own provenance, the events and the batch size."""
    from hltemu import io

    prov = io.provenance_header("run")
    prov.update({
        "backend": be.name, "device": be.device, "stages": [st.name for st in planned.stages],
        "config": report.config, "plan": planned.summary(), "inputs": io.input_provenance(files),
        "events": report.events, "batch_size": batch_size, "max_events": max_events,
    })
    return prov


def _commit_outputs(report: RunReport, out: Any, rep: Any, *extra: Any) -> None:
    """Finish a run's outputs (:class:`~hltemu.outputs.AtomicOutput` s or ``None``; ``extra``
    ones already written, e.g. the timeline): write the report into its temporary file, then
    rename all to their names.  After 0 events all are discarded instead, with a
    :class:`~hltemu.outputs.NoOutputWarning` naming them."""
    import warnings

    from hltemu.outputs import NoOutputWarning

    pending = [o for o in (out, rep, *extra) if o is not None]
    if report.events == 0:
        for o in pending:
            o.discard()
        if pending:
            names = " and ".join(str(o.final) for o in pending)
            warnings.warn(f"no events were processed: {names} not written", NoOutputWarning,
                          stacklevel=3)
        return
    if out is not None:
        report.outputs.append(str(out.final))
    if rep is not None:
        rep.path.write_text(report.to_json())
    for o in pending:
        o.commit()


def _warm_up(batch: EventBatch, chain: Sequence[Stage], config: Any) -> float:
    """Run ``chain`` on a copy of the first event of ``batch`` (compiles the kernels); seconds."""
    import time

    t0 = time.perf_counter()
    run_batch(batch.select_events(0, 1), chain, config)
    batch.backend.synchronize()
    return time.perf_counter() - t0


def written_products(products: Sequence[str], keep: Sequence[str] = (),
                     drop: Sequence[str] = ()) -> list[str]:
    """The ``products`` (collection names) an output holds: all but those matching one of the
    shell-style ``drop`` patterns (``pfcandidates``, ``*doublets``), unless one of the ``keep``
    patterns matches them.  A pattern that matches no product is a :class:`PipelineError`
    naming it and the products (a typo would otherwise silently write everything)."""
    import fnmatch

    for what, patterns in (("keep", keep), ("drop", drop)):
        for pat in patterns:
            if not any(fnmatch.fnmatchcase(n, pat) for n in products):
                raise PipelineError(f"--{what} {pat!r} matches no collection this chain adds: "
                                    f"{', '.join(products)}")
    return [n for n in products
            if not any(fnmatch.fnmatchcase(n, p) for p in drop)
            or any(fnmatch.fnmatchcase(n, p) for p in keep)]


def output_products(chain: Sequence[Stage], keep: Sequence[str] = (),
                    drop: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """What a run of ``chain`` writes: (the products written, those of them written as
    per-event counts only).  :func:`written_products` chooses the first; a product a stage
    declares :attr:`~Stage.counts_only` is written as counts unless a ``keep`` pattern names
    it (``--keep doublets``; ``--keep '*'`` writes everything whole)."""
    import fnmatch

    added = [name for st in chain for name in st.adds]
    written = written_products(added, keep, drop)
    heavy = {name for st in chain for name in st.counts_only}
    counts = [n for n in written
              if n in heavy and not any(fnmatch.fnmatchcase(n, p) for p in keep)]
    return written, counts


def count_products(batch: EventBatch, chain: Sequence[Stage], report: RunReport) -> None:
    """Add each stage's figures of ``batch``'s products (its ``count`` hook) to ``report``."""
    for st in chain:
        if st.count is not None:
            counts = st.count({name: batch[name] for name in st.adds}, batch.backend)
            for group, values in counts.items():
                for key, value in values.items():
                    report.count(group, key, value)


def _progress(enabled: bool, total: int) -> ui.ProgressBar | None:
    """The run's progress bar over ``total`` events (:class:`hltemu.ui.ProgressBar`), or
    ``None``; a hook that tests may replace."""
    return ui.ProgressBar(total) if enabled else None
