"""Orchestration: Pythia interactions + pileup -> truth, pixel hits, calorimeter cells -> batches.

One event: the hard scatter and ``Poisson(pileup)`` minimum-bias interactions, each at its own
vertex drawn from the luminous region (Gaussian: ``beamspot_sigma_xy`` in x and y,
``beamspot_sigma_z`` in z).  The stored final-state particles (``|eta| < truth_eta_max``) of
all interactions go through the tracker and the calorimeter.

Random numbers: every random number of event ``i`` (0-based within the run) of a run seeded
``seed`` comes from :class:`numpy.random.SeedSequence` children of ``(seed, i)`` and of
``(seed, i, k)`` for each interaction ``k`` (0: the hard scatter, k >= 1: pileup):

* ``(seed, i)`` (:func:`event_seeds`): the number of pileup interactions, and the noise
  applied after the interactions are summed: calorimeter electronic noise and pixel noise hits;
* ``(seed, i, k)`` (:func:`interaction_seeds`): the interaction's vertex, its Pythia event
  (the hard-scatter or minimum-bias Pythia is reseeded before each interaction) and its
  detector response (pixel clusters, calorimeter shower fluctuations).

Hence the hard scatter of event ``i`` (``pv_z``, its GenPart rows, its pixel hits, its cell
deposits) is the same whatever the pileup, pileup interaction ``k`` is the same whatever the
hard process, and the true cell energies of an event are the sum of those of its interactions.
Events do not depend on the events before them: the same seed and settings give the same
values in every branch, whatever the batch size or the number of processes (``jobs`` of
:func:`generate_file`), and the first ``n`` events of a longer run equal a run of ``n``
events.  The file's bytes differ from run to run: ROOT stamps every file with a UUID and
times, and the provenance records when the file was made.

What is not additive, and how it is handled: pixel clusters are digitised one by one (pixel
noise, threshold, ADC per cluster) and clusters sharing pixels are not merged, so the hits of
an event are the union of its interactions' hits plus its noise hits; calorimeter responses
(hadron non-linearity, fluctuations) are per particle, so deposits add, and cell noise and the
``calo_lsb`` digitisation act on the sum; no cell is zero-suppressed.  Pythia's initialisation
(seeded from ``seed``) is the same in every process.

Event identifiers (the scheme: :mod:`hltemu.io.schema`): ``run`` is the seed or
``GenerateConfig.run``, ``luminosityBlock`` is ``GenerateConfig.lumi``, ``event`` counts from
``GenerateConfig.first_event_number``; ``Event.weight`` is the hard scatter's Pythia weight
(1.0: every process here is generated unweighted).  When the file is complete its provenance
(:func:`~hltemu.simulate.record.generation_provenance`) is written into it.

GenPart rows of an event: the hard-process record (status 2: Pythia status 22/23, e.g. t, W, b
and the W decay products; their charge is rounded to an integer), then the hard scatter's
final-state particles (status 1), then those of pileup interaction 1, 2, ... (``vertex`` = 0
for the hard scatter, k for pileup k).  ``PixelHit.sim_index`` is a GenPart row of the event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hltemu import ui
from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import DetectorConfig, GenerateConfig
from hltemu.geometry import Geometry, geometry_for
from hltemu.io import EVENT, INPUT_SCHEMA
from hltemu.io.schema import MAX_EVENT
from hltemu.simulate.calorimeter import cell_columns, deposited_energies
from hltemu.simulate.pythia import MAX_PYTHIA_SEED, Interaction, PythiaError, PythiaGenerator
from hltemu.simulate.record import generation_provenance
from hltemu.simulate.tracker import finish_hits, particle_hits

#: Collections written by ``hltemu generate``, in this order.
COLLECTIONS: tuple[str, ...] = (EVENT, "GenPart", "PixelHit", "CaloCell")


class SimulationError(RuntimeError):
    """Event generation cannot run (bad settings, Pythia failure, unwritable output)."""


@dataclass
class EventStats:
    """Per-event figures of a run (one list entry per event)."""

    pixel_hits: list[int] = field(default_factory=list)
    charged: list[int] = field(default_factory=list)
    charged_central: list[int] = field(default_factory=list)
    cells_4sigma: list[int] = field(default_factory=list)
    pileup: list[int] = field(default_factory=list)
    weight: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


@dataclass
class GenerationStats:
    """What a run produced and how long it took (seconds include Pythia initialisation)."""

    config: GenerateConfig
    events: int = 0
    seconds: float = 0.0
    init_seconds: float = 0.0
    per_event: EventStats = field(default_factory=EventStats)
    #: Pythia's figures at the end of the run (:meth:`EventGenerator.pythia_statistics`).
    pythia: dict[str, Any] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")

    def means(self) -> dict[str, float]:
        """Mean per event of every figure in :attr:`per_event`."""
        pe = self.per_event
        return {
            "pileup interactions": float(np.mean(pe.pileup)) if pe.pileup else float("nan"),
            "charged particles (GenPart, |eta| < truth_eta_max)": _mean(pe.charged),
            "charged particles |eta| < 2.5": _mean(pe.charged_central),
            "pixel hits": _mean(pe.pixel_hits),
            "cells |E| > 4 sigma": _mean(pe.cells_4sigma),
            "generation time per event (s)": _mean(pe.seconds),
        }

    def summary(self) -> Any:
        """A rich table of the per-event means (:func:`hltemu.ui.generation_table`)."""
        return ui.generation_table(self)


def _mean(values: list) -> float:
    return float(np.mean(values)) if values else float("nan")


def _pythia_seed(ss: np.random.SeedSequence) -> int:
    return int(ss.generate_state(1, np.uint64)[0] % MAX_PYTHIA_SEED) + 1


#: ``spawn_key`` tags of the per-event and per-interaction seed sequences (:func:`event_seeds`,
#: :func:`interaction_seeds`).
_EVENT_KEY, _INTERACTION_KEY = 0, 1


def event_seeds(seed: int, index: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """``(pileup, noise)`` seed sequences of event ``index`` (0-based within the run) of a run
    seeded ``seed``: the number of pileup interactions, and the noise applied after the sum of
    the interactions (calorimeter electronic noise, pixel noise hits)."""
    ss = np.random.SeedSequence(seed, spawn_key=(_EVENT_KEY, index))
    pileup, noise = ss.spawn(2)
    return pileup, noise


def interaction_seeds(seed: int, index: int, k: int
                      ) -> tuple[np.random.SeedSequence, np.random.SeedSequence,
                                 np.random.SeedSequence]:
    """``(pythia, vertex, detector)`` seed sequences of interaction ``k`` (0: the hard scatter,
    k >= 1: pileup interaction k) of event ``index`` of a run seeded ``seed``."""
    ss = np.random.SeedSequence(seed, spawn_key=(_INTERACTION_KEY, index, k))
    pythia, vertex, detector = ss.spawn(3)
    return pythia, vertex, detector


class EventGenerator:
    """Generates events of a :class:`GenerateConfig` through the detector of a
    :class:`DetectorConfig`, one at a time (:meth:`event`, :meth:`event_at`) or as batches
    (:meth:`batches`).

    Every random number of event ``i`` comes from seed sequences of ``(seed, i)`` and
    ``(seed, i, k)`` (:func:`event_seeds`, :func:`interaction_seeds`): Pythia is reseeded
    before each interaction, and each interaction has its own vertex and detector streams.
    So event ``i`` does not depend on the events before it (``event_at(i)`` in any order, in
    any process, gives the same event), and the hard scatter (k = 0: vertex, particles, hits,
    cell deposits) does not depend on the pileup.
    """

    def __init__(self, cfg: GenerateConfig, detector: DetectorConfig | None = None) -> None:
        if not isinstance(cfg, GenerateConfig):
            raise SimulationError(f"expected a GenerateConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.geometry: Geometry = geometry_for(detector or DetectorConfig())
        # Initialisation seeds (Pythia's initialisation draws random numbers, e.g. to find
        # the maxima of the cross-sections): fixed by the run's seed, so that every process
        # of a --jobs run starts from the same state.
        hard_ss, pu_ss = np.random.SeedSequence(cfg.seed).spawn(2)
        t0 = time.perf_counter()
        try:
            self._hard = PythiaGenerator(cfg.process, cfg.sqrt_s, _pythia_seed(hard_ss),
                                         pthat_min=cfg.pthat_min, pthat_bias=cfg.pthat_bias)
            self._pileup = (PythiaGenerator("minbias", cfg.sqrt_s, _pythia_seed(pu_ss),
                                            keep_hard_process=False)
                            if cfg.pileup > 0 else None)
        except PythiaError as exc:
            raise SimulationError(str(exc)) from None
        self.init_seconds = time.perf_counter() - t0
        self._run = cfg.run_number
        self._index = 0

    def pythia_statistics(self) -> dict[str, Any]:
        """Pythia's figures so far (:meth:`PythiaGenerator.statistics`: cross-section in mb,
        tries, accepted events, weight sum) for ``hard_process`` and ``pileup`` (the
        minimum-bias generator; ``None`` without pileup)."""
        return {"hard_process": self._hard.statistics(),
                "pileup": self._pileup.statistics() if self._pileup is not None else None}

    # -- one event ----------------------------------------------------------------------------
    def event(self) -> dict[str, dict[str, np.ndarray]]:
        """The next event (:meth:`event_at` of an index counting from 0)."""
        ev = self.event_at(self._index)
        self._index += 1
        return ev

    def event_at(self, index: int) -> dict[str, dict[str, np.ndarray]]:
        """Event ``index`` (0-based) of the run: collection name -> column name -> array
        (schema dtypes).

        Interaction k (0: hard scatter) gets its vertex, its Pythia event and its detector
        response (pixel clusters, calorimeter deposits) from :func:`interaction_seeds`; the
        hits of all interactions are concatenated and the cell deposits summed, and only then
        are the event's noise hits and cell noise added (:func:`event_seeds`).
        """
        cfg = self.cfg
        number = cfg.first_event_number + index
        if number > MAX_EVENT:
            raise SimulationError(f"event number {number} does not fit uint64; lower "
                                  "first_event")
        pu_ss, noise_ss = event_seeds(cfg.seed, index)
        n_pu = int(np.random.default_rng(pu_ss).poisson(cfg.pileup)) if cfg.pileup > 0 else 0
        vtx = np.empty((n_pu + 1, 3))
        interactions, det_rngs = [], []
        try:
            for k in range(n_pu + 1):
                py_ss, vtx_ss, det_ss = interaction_seeds(cfg.seed, index, k)
                beam = np.random.default_rng(vtx_ss)
                vtx[k, :2] = beam.normal(0.0, cfg.beamspot_sigma_xy, 2)
                vtx[k, 2] = beam.normal(0.0, cfg.beamspot_sigma_z)
                pythia = self._hard if k == 0 else self._pileup
                pythia.reseed(_pythia_seed(py_ss))
                interactions.append(pythia.next())
                det_rngs.append(np.random.default_rng(det_ss))
        except PythiaError as exc:
            raise SimulationError(str(exc)) from None
        gen = _truth(interactions, vtx, cfg.truth_eta_max)
        geom = self.geometry
        hit_parts = []
        true_cells = np.zeros(geom.calo.n_cells)
        meas_cells = np.zeros(geom.calo.n_cells)
        for k, rng in enumerate(det_rngs):
            final = np.flatnonzero((gen["status"] == 1) & (gen["vertex"] == k))
            g = {c: v[final] for c, v in gen.items()}
            hits = particle_hits(geom, g["px"], g["py"], g["pz"], g["charge"], g["vx"],
                                 g["vy"], g["vz"], rng)
            hits["sim_index"] = final[hits["sim_index"]]
            hit_parts.append(hits)
            t, m = deposited_energies(geom, g["px"], g["py"], g["pz"], g["e"], g["mass"],
                                      g["pdgId"], g["charge"], g["vx"], g["vy"], g["vz"], rng)
            true_cells += t
            meas_cells += m
        noise = np.random.default_rng(noise_ss)
        hits = finish_hits(geom, hit_parts, noise)
        cells = cell_columns(geom, true_cells, meas_cells, noise)
        event = {"run": np.array([self._run], np.uint32),
                 "luminosityBlock": np.array([cfg.lumi], np.uint32),
                 "event": np.array([number], np.uint64), "n_pileup": np.array([n_pu]),
                 "pv_z": np.array([vtx[0, 2]]), "weight": np.array([interactions[0].weight])}
        out = {EVENT: event, "GenPart": gen, "PixelHit": hits, "CaloCell": cells}
        return {name: _cast(name, cols) for name, cols in out.items()}

    def events(self, start: int, stop: int,
               on_event: Callable[[dict[str, dict[str, np.ndarray]], float], None] | None = None,
               ) -> list[dict[str, dict[str, np.ndarray]]]:
        """Events ``start`` .. ``stop - 1`` (:meth:`event_at`); ``on_event(event, seconds)``
        after each."""
        out = []
        for i in range(start, stop):
            t0 = time.perf_counter()
            ev = self.event_at(i)
            out.append(ev)
            if on_event is not None:
                on_event(ev, time.perf_counter() - t0)
        return out

    # -- batches ------------------------------------------------------------------------------
    def batches(self, n_events: int, batch_size: int = 10,
                on_event: Callable[[dict[str, dict[str, np.ndarray]], float], None] | None = None,
                ) -> Iterator[EventBatch]:
        """The next ``n_events`` events as :class:`EventBatch` es of ``batch_size`` on the
        reference backend.  ``on_event(event, seconds)`` is called after each event
        (progress, stats)."""
        if batch_size < 1:
            raise SimulationError(f"batch size must be >= 1, got {batch_size}")
        backend = get_backend("reference")
        done = 0
        while done < n_events:
            n = min(batch_size, n_events - done)
            events = self.events(self._index, self._index + n, on_event)
            self._index += n
            yield _to_batch(events, backend, first_entry=done)
            done += n


def _truth(interactions: list[Interaction], vtx: np.ndarray, eta_max: float
           ) -> dict[str, np.ndarray]:
    """GenPart columns (plus px, py, pz, e for the simulation) of all interactions."""
    pieces = []
    for k, it in enumerate(interactions):
        pt = np.hypot(it.px, it.py)
        with np.errstate(divide="ignore", invalid="ignore"):
            eta = np.arcsinh(it.pz / pt)
        keep_final = it.final & (pt > 0) & (np.abs(eta) < eta_max)
        hard = ~it.final & (pt > 0) if k == 0 else np.zeros(len(it), bool)
        for mask, status in ((hard, 2), (keep_final, 1)):
            rows = np.flatnonzero(mask)
            pieces.append({
                "px": it.px[rows], "py": it.py[rows], "pz": it.pz[rows], "e": it.e[rows],
                "pt": pt[rows], "eta": eta[rows], "phi": np.arctan2(it.py[rows], it.px[rows]),
                "mass": it.mass[rows], "pdgId": it.pdg_id[rows],
                "charge": np.rint(it.charge[rows]).astype(np.int32),
                "status": np.full(rows.shape[0], status, np.int32),
                "vx": vtx[k, 0] + it.vx[rows], "vy": vtx[k, 1] + it.vy[rows],
                "vz": vtx[k, 2] + it.vz[rows],
                "vertex": np.full(rows.shape[0], k, np.int32),
            })
    return {key: np.concatenate([p[key] for p in pieces]) for key in pieces[0]}


def _cast(name: str, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Exactly the schema's columns of collection ``name``, in its dtypes."""
    spec = INPUT_SCHEMA[name]
    return {c: np.ascontiguousarray(cols[c], dtype=s.dtype) for c, s in spec.columns.items()}


def _to_batch(events: list[dict[str, dict[str, np.ndarray]]], backend: Any, first_entry: int
              ) -> EventBatch:
    colls = {}
    for name in COLLECTIONS:
        cols = {c: np.concatenate([ev[name][c] for ev in events]) for c in events[0][name]}
        if INPUT_SCHEMA[name].per_event:
            colls[name] = Collection.event_level(cols)
        else:
            counts = [ev[name][next(iter(ev[name]))].shape[0] for ev in events]
            colls[name] = Collection.from_counts(counts, cols)
    return EventBatch(backend, len(events), colls, source="", first_entry=first_entry)


def generate_batches(cfg: GenerateConfig, detector: DetectorConfig | None = None,
                     batch_size: int = 10) -> Iterator[EventBatch]:
    """``cfg.events`` events as reference-backend :class:`EventBatch` es with the collections
    ``Event``, ``GenPart``, ``PixelHit`` and ``CaloCell`` of :data:`hltemu.io.INPUT_SCHEMA`."""
    return EventGenerator(cfg, detector).batches(cfg.events, batch_size)


def _event_stats(stats: EventStats, geom: Geometry, ev: dict[str, dict[str, np.ndarray]],
                 seconds: float) -> None:
    gen = ev["GenPart"]
    charged = (gen["status"] == 1) & (gen["charge"] != 0)
    stats.pixel_hits.append(int(ev["PixelHit"]["x"].shape[0]))
    stats.charged.append(int(charged.sum()))
    stats.charged_central.append(int((charged & (np.abs(gen["eta"]) < 2.5)).sum()))
    cells = ev["CaloCell"]
    stats.cells_4sigma.append(int((np.abs(cells["energy"]) > 4.0 * geom.calo.noise_sigma).sum()))
    stats.pileup.append(int(ev[EVENT]["n_pileup"][0]))
    stats.weight.append(float(ev[EVENT]["weight"][0]))
    stats.seconds.append(seconds)


#: ``--compression`` choices: name -> :func:`hltemu.io.parse_compression` spec.  LZMA makes
#: files about 30% smaller than ZLIB, and slower to write.
COMPRESSIONS: dict[str, str] = {"zlib": "zlib:1", "lzma": "lzma:9", "zstd": "zstd:9"}


def _compression(name: str) -> str:
    if name not in COMPRESSIONS:
        raise SimulationError(f"unknown compression {name!r}; choices: {', '.join(COMPRESSIONS)}")
    return COMPRESSIONS[name]


def generate_file(path: str | Path, cfg: GenerateConfig, detector: DetectorConfig | None = None,
                  batch_size: int = 10, progress: bool = False, console: Any = None,
                  compression: str = "zlib", command: str | None = None,
                  jobs: int = 1) -> GenerationStats:
    """Generate ``cfg.events`` events into the ROOT file ``path`` (schema: hltemu.io).

    ``progress`` shows a rich progress bar (on ``console``); ``compression`` is a key of
    :data:`COMPRESSIONS`; ``command`` is the command line recorded in the file's provenance
    (default: this process's).  ``jobs`` > 1 generates ranges of events in that many processes
    (:class:`concurrent.futures.ProcessPoolExecutor`); this process writes them in order, and
    every branch holds the same values as with ``jobs = 1`` (only Pythia's statistics in the
    provenance are combined over the processes).  Returns the run's statistics.

    The file is written under a temporary name beside ``path``, created before Pythia starts
    (a missing or unwritable directory is an :class:`~hltemu.outputs.OutputPathError` at
    once), and renamed to ``path`` only once every event and the provenance
    (:func:`~hltemu.simulate.record.generation_provenance`) are in it
    (:func:`~hltemu.outputs.atomic_output`): an
    error or Ctrl-C leaves no file at ``path`` (an earlier file there stays as it was) and no
    temporary file.
    """
    from hltemu.io import OutputWriter
    from hltemu.outputs import atomic_output

    codec = _compression(compression)
    if batch_size < 1:
        raise SimulationError(f"batch size must be >= 1, got {batch_size}")
    if jobs < 1:
        raise SimulationError(f"jobs must be >= 1, got {jobs}")
    jobs = max(1, min(jobs, cfg.events))

    t_start = time.perf_counter()
    bar: ui.ProgressBar | None = None
    with atomic_output(path, "output file") as out:
        gen = EventGenerator(cfg, detector) if jobs == 1 else None
        geometry = gen.geometry if gen is not None else geometry_for(detector or DetectorConfig())
        stats = GenerationStats(cfg, init_seconds=gen.init_seconds if gen is not None else 0.0)

        def on_event(ev: dict[str, dict[str, np.ndarray]], seconds: float) -> None:
            _event_stats(stats.per_event, geometry, ev, seconds)
            if bar is not None:
                bar.update(1)

        try:
            writer = OutputWriter(out.path, compression=codec, name=path)
        except Exception as exc:
            raise SimulationError(f"cannot write {path}: {exc}") from None
        try:
            def start_bar() -> None:
                nonlocal bar
                if progress:
                    bar = ui.ProgressBar(cfg.events, "events", console=console,
                                         text=f"generating {cfg.process}, pileup "
                                              f"{cfg.pileup:g}")

            with writer:
                if gen is not None:
                    start_bar()
                    for batch in gen.batches(cfg.events, batch_size, on_event):
                        writer.write(batch, list(COLLECTIONS))
                    stats.pythia = gen.pythia_statistics()
                else:
                    stats.pythia, stats.init_seconds = _generate_parallel(
                        cfg, detector, jobs, batch_size, on_event,
                        lambda batch: writer.write(batch, list(COLLECTIONS)), start_bar)
                stats.events = cfg.events
                stats.seconds = time.perf_counter() - t_start
                writer.set_provenance(generation_provenance(
                    stats, detector, command=command, compression=compression,
                    geometry=geometry))
        finally:
            if bar is not None:
                bar.close()
    stats.seconds = time.perf_counter() - t_start
    return stats


# -- several processes ------------------------------------------------------------------------
_WORKER: EventGenerator | None = None


def _worker_start(cfg: GenerateConfig, detector: DetectorConfig | None) -> None:
    global _WORKER
    _WORKER = EventGenerator(cfg, detector)


def _worker_events(start: int, stop: int) -> tuple[list, list[float], dict[str, Any], int,
                                                    float]:
    """Events ``start .. stop - 1`` of this process's generator, their times, its Pythia
    statistics so far, its process id and its initialisation time."""
    import os

    assert _WORKER is not None
    seconds: list[float] = []
    events = _WORKER.events(start, stop, lambda ev, sec: seconds.append(sec))
    return events, seconds, _WORKER.pythia_statistics(), os.getpid(), _WORKER.init_seconds


def _generate_parallel(cfg: GenerateConfig, detector: DetectorConfig | None, jobs: int,
                       batch_size: int,
                       on_event: Callable[[dict[str, dict[str, np.ndarray]], float], None],
                       write: Callable[[EventBatch], None],
                       started: Callable[[], None] | None = None,
                       ) -> tuple[dict[str, Any], float]:
    """Generate ``cfg.events`` events in ``jobs`` processes (chunks of at most
    ``batch_size`` events, several per process for an even load); ``on_event`` and ``write``
    (batches of ``batch_size``) are called in event order in this process, ``started`` once
    the processes run.  Returns Pythia's statistics combined over the processes and the
    longest initialisation time.

    On Linux the processes are forked (they inherit the imported modules and compiled
    kernels: about 2 s less per process than "spawn"), before ``started`` (which may start
    threads, e.g. the progress bar's) is called; elsewhere they are spawned."""
    import math
    import multiprocessing
    import sys
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    n = cfg.events
    chunk = max(1, min(batch_size, math.ceil(n / (4 * jobs))))
    starts = list(range(0, n, chunk))
    backend = get_backend("reference")
    done: dict[int, tuple] = {}
    per_process: dict[int, dict[str, Any]] = {}
    init = 0.0
    pending_events: list = []
    written = 0
    next_start = 0
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_start,
                             initargs=(cfg, detector)) as pool:
        try:
            # With "fork" the first submit starts every process: no thread of ours exists yet.
            futures = {pool.submit(_worker_events, a, min(a + chunk, n)): a for a in starts}
            if started is not None:
                started()
            waiting = set(futures)
            while waiting:
                finished, waiting = wait(waiting, return_when=FIRST_COMPLETED)
                for fut in finished:
                    # popped: a finished future holds its events until it is dropped
                    start = futures.pop(fut)
                    try:
                        done[start] = fut.result()
                    except SimulationError:
                        raise
                    except Exception as exc:
                        raise SimulationError(f"a generation process failed: {exc}") from None
                while next_start in done:
                    events, seconds, pythia, pid, init_s = done.pop(next_start)
                    per_process[pid] = pythia
                    init = max(init, init_s)
                    for ev, sec in zip(events, seconds, strict=True):
                        on_event(ev, sec)
                    pending_events += events
                    next_start += len(events)
                    while len(pending_events) >= batch_size or (
                            pending_events and next_start == n):
                        part = pending_events[:batch_size]
                        pending_events = pending_events[batch_size:]
                        write(_to_batch(part, backend, first_entry=written))
                        written += len(part)
        except BaseException:  # an error or Ctrl-C: drop the chunks not started
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return combine_pythia_statistics(list(per_process.values())), init


def combine_pythia_statistics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Pythia statistics (:meth:`EventGenerator.pythia_statistics`) of several processes as
    one: counts and weight sums added, cross-sections averaged with the accepted events as
    weights (errors combined accordingly)."""
    out: dict[str, Any] = {}
    for key in ("hard_process", "pileup"):
        stats = [p[key] for p in parts if p.get(key) is not None]
        if not stats:
            out[key] = None
            continue
        w = np.array([s["n_accepted"] for s in stats], dtype=np.float64)
        w = w / w.sum() if w.sum() > 0 else np.full(len(stats), 1.0 / len(stats))
        out[key] = {
            "process": stats[0]["process"],
            "sigma_gen_mb": float(np.sum(w * [s["sigma_gen_mb"] for s in stats])),
            "sigma_err_mb": float(np.sqrt(np.sum((w * [s["sigma_err_mb"] for s in stats]) ** 2))),
            **{c: int(sum(s[c] for s in stats)) for c in ("n_tried", "n_selected", "n_accepted")},
            "weight_sum": float(sum(s["weight_sum"] for s in stats)),
        }
    return out
