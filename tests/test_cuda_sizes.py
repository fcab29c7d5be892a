"""The cuda backend in its production launch configuration and at production sizes.

Two kinds of tests, each comparing the ``cuda`` backend with ``cpu`` through the stage API
(:func:`hltemu.pipeline.get_stage` / :func:`~hltemu.pipeline.run_batch`):

* **simulator-sized** (run everywhere; under Numba's CUDA simulator without a GPU): every cuda
  kernel path (anti-kT, doublets, topocluster, rho, jec, trigger, segment sums; the doublet CNN
  is covered in ``test_doublet_cnn.py``) with the block size the stages really launch,
  :data:`hltemu.ops.THREADS_PER_BLOCK` = 128 threads, several blocks, and for anti-kT one event
  of more than 300 inputs, so that each of the 128 threads owns several slots.  Under the
  simulator :data:`hltemu.kernels.antikt_cuda.CUDA_THREADS` is 32 (every thread is a Python
  thread); the anti-kT test sets it to the 128 of a real GPU (its kernel reads the constant at
  run time in the simulator).  Every test records the launches it makes and checks their grid
  and block sizes, so that a smaller input cannot slip back in unnoticed.
* ``@pytest.mark.gpu`` (real device only; ``tests/conftest.py`` skips them elsewhere):
  anti-kT on the sample's generator particles (5,000-9,000 inputs per event) and the full
  default chain on the built-in pileup-50 sample, 10 events and the sample tiled to 100.

Agreement rules (:func:`assert_same_products`):

* discrete outputs exactly: offsets, every integer and boolean column (constituent assignment
  ``cluster_jet``, doublet sets, cluster labels ``cell_cluster``, trigger bits, counts);
* float64 columns within ``F64_RTOL`` = 1e-12 relative (the agreement the stages document:
  topocluster and jec state 1e-12, rho is bit-identical; anti-kT merges in the same order on every backend) plus
  an absolute ``F64_ATOL_OF_MAX`` = 1e-12 of the column's largest magnitude, for values that are
  sums which cancel to about zero (a jet's px, a noise cluster's energy);
* jet ``mass`` within ``MASS_ATOL_OF_E`` = 4e-7 of the jet's energy besides: ``m^2 = E^2 - p^2``
  cancels for nearly massless jets, so a last-bit difference of the inputs (CuPy's and NumPy's
  ``cos``/``sinh`` may differ by one ulp on a GPU) moves ``m`` by up to ~1e-8 E;
* float32 doublet features within ``F32_RTOL`` = 2.5e-7, two float32 ulps: they are float64
  results (``arctan2`` may differ by one ulp between CuPy and NumPy) rounded to float32;
* doublet-CNN ``score`` within :data:`hltemu.cnn.SCORE_TOLERANCE` (1e-5, absolute), and
  ``filtered_doublets`` the same doublets except those whose score is that close to the working
  point (the documented contract of stage ``doublet_cnn``).

Under the simulator the results are bit for bit those of ``cpu`` except ``jec`` (factors differ
by ~4e-15 relative: the simulator evaluates the formulas with Python/NumPy scalar maths, ``cpu``
with Numba's), so the bounds hold with a wide margin there; they are sized for a real GPU.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from hltemu import io
from hltemu.backends import cuda_status, get_backend
from hltemu.batch import Collection, EventBatch, counts_to_offsets
from hltemu.cnn import SCORE_TOLERANCE, load_model
from hltemu.ops import THREADS_PER_BLOCK
from hltemu.pipeline import get_stage, plan, run_batch
from hltemu.stages.doublet_cnn import DoubletCnnConfig
from hltemu.stages.doublets import DoubletsConfig
from hltemu.stages.topocluster import TopoclusterConfig

SAMPLE = Path(str(resources.files("hltemu") / "data" / "sample.root"))

F64_RTOL = 1e-12
F64_ATOL_OF_MAX = 1e-12
MASS_ATOL_OF_E = 4e-7  # 10x the 3.9e-8 E measured on an H200 (hltemu.stages.antikt)
F32_RTOL = 2.5e-7

#: Python's thread switch interval for the simulated anti-kT kernel [s].  The simulator's block
#: manager polls its threads while holding the GIL; at the default 5 ms, each of the ~20
#: barriers per clustering step of a 128-thread block waits for GIL hand-offs (409 inputs took
#: 98 s); at 1 ms the same kernel runs 2-4 times faster.  Scheduling only: results are the same.
SIM_SWITCH_INTERVAL = 1e-3


def cuda_backend():
    ok, why = cuda_status()
    if not ok:
        pytest.skip(f"cuda backend not usable here: {why}")
    return get_backend("cuda")


# ------------------------------------------------------------------------------------------
# Helpers: host collections, launches, comparison
# ------------------------------------------------------------------------------------------
def pick_events(coll: Collection, events: list[int]) -> Collection:
    """The rows of ``events`` (in that order) as a new host collection."""
    host = coll.to_host()
    rows = [np.arange(host.offsets[e], host.offsets[e + 1]) for e in events]
    rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    counts = [int(host.offsets[e + 1] - host.offsets[e]) for e in events]
    return Collection(counts_to_offsets(counts), {k: v[rows] for k, v in host.columns.items()},
                      host.per_event)


def tile(coll: Collection, k: int) -> tuple[Collection, np.ndarray]:
    """``coll`` (host) with its events repeated ``k`` times, and each row's copy index."""
    host = coll.to_host()
    counts = np.tile(np.diff(host.offsets), k)
    cols = {n: np.concatenate([v] * k) for n, v in host.columns.items()}
    copy = np.repeat(np.arange(k), host.size)
    return Collection(counts_to_offsets(counts), cols, host.per_event), copy


class LaunchLog:
    """Records the ``[blocks, threads]`` of CUDA kernel launches.

    The stages look their kernels up in the kernel modules when they run, so replacing the
    module attribute with a recording proxy sees every launch without changing it.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.launches: list[tuple[str, int, int]] = []
        self._mp = monkeypatch

    def watch(self, module, *names: str) -> None:
        for name in names:
            self._mp.setattr(module, name, _Recorder(getattr(module, name), name, self))

    def of(self, name: str) -> list[tuple[int, int]]:
        got = [(b, t) for n, b, t in self.launches if n == name]
        assert got, (f"kernel {name} was not launched (launches seen: {self.launches}); does "
                     "the stage still look its kernel up in the kernel module at run time?")
        return got


class _Recorder:
    def __init__(self, kernel, name: str, log: LaunchLog) -> None:
        self._kernel, self._name, self._log = kernel, name, log

    def __getitem__(self, config):
        blocks, threads = config[0], config[1]
        self._log.launches.append((self._name, int(np.prod(blocks)), int(np.prod(threads))))
        return self._kernel[config]

    def __getattr__(self, attr):
        return getattr(self._kernel, attr)


def _float_problem(name: str, x: np.ndarray, y: np.ndarray, atol) -> str | None:
    """None when |x - y| <= atol + rtol |y| everywhere (x, y of one float dtype), else a line."""
    rtol = F32_RTOL if x.dtype == np.float32 else F64_RTOL
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    same_nan = np.isnan(x64) & np.isnan(y64)
    diff = np.where(same_nan, 0.0, np.abs(x64 - y64))
    bad = ~(diff <= atol + rtol * np.abs(y64))
    if not bad.any():
        return None
    i = int(np.flatnonzero(bad)[0])
    return (f"{name}: {int(bad.sum())} of {x.size} values differ beyond rtol {rtol:g} + atol; "
            f"first at {i}: {x64.flat[i]!r} vs {y64.flat[i]!r}")


def collection_problems(name: str, a: Collection, b: Collection) -> list[str]:
    """Differences between two host collections under the rules of the module docstring."""
    out = []
    if not np.array_equal(a.offsets, b.offsets):
        return [f"{name}: offsets differ (sizes {a.size} vs {b.size}; counts differ in "
                f"{int(np.count_nonzero(np.diff(a.offsets) != np.diff(b.offsets)))} events)"]
    if sorted(a.columns) != sorted(b.columns):
        return [f"{name}: columns {sorted(a.columns)} vs {sorted(b.columns)}"]
    for col in a.columns:
        x, y, what = a[col], b[col], f"{name}.{col}"
        if x.dtype != y.dtype or x.shape != y.shape:
            out.append(f"{what}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
        elif x.dtype.kind in "biu":
            n = int(np.count_nonzero(x != y))
            if n:
                i = int(np.flatnonzero(x != y)[0])
                out.append(f"{what}: {n} of {x.size} differ; first at {i}: {x[i]} vs {y[i]}")
        elif col == "score":
            bad = ~(np.abs(x.astype(np.float64) - y) <= SCORE_TOLERANCE)
            if bad.any():
                out.append(f"{what}: {int(bad.sum())} scores differ by more than "
                           f"{SCORE_TOLERANCE}")
        else:
            scale = max(float(np.max(np.abs(x), initial=0.0)),
                        float(np.max(np.abs(y), initial=0.0)))
            atol = F64_ATOL_OF_MAX * scale if x.dtype == np.float64 else 0.0
            if col == "mass" and "E" in a.columns:
                atol = atol + MASS_ATOL_OF_E * np.abs(a["E"].astype(np.float64))
            problem = _float_problem(what, x, y, atol)
            if problem:
                out.append(problem)
    return out


#: topocluster on the sample as a run resolves ``pileup_mu = "auto"``: the sample's pileup 50.
SAMPLE_TOPOCLUSTER = TopoclusterConfig(pileup_mu=50.0)


def assert_same_products(cpu: dict[str, Collection], cuda: dict[str, Collection]) -> None:
    """Every collection of ``cuda`` (on ``backend``) agrees with ``cpu``; lists all problems."""
    assert sorted(cpu) == sorted(cuda)
    problems = []
    for name in cpu:
        problems += collection_problems(name, cpu[name].to_host(), cuda[name].to_host())
    assert not problems, "cuda vs cpu:\n" + "\n".join(problems)


def run_stage(name: str, batch: EventBatch, cfg=None) -> dict[str, Collection]:
    if cfg is None and name == "topocluster":
        cfg = SAMPLE_TOPOCLUSTER
    return get_stage(name)(batch, cfg)


# ------------------------------------------------------------------------------------------
# Inputs: the built-in sample (10 ttbar events at pileup 50) and cpu products of it
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample() -> EventBatch:
    """The sample's 10 events on the cpu backend: PixelHit, CaloCell, GenPart."""
    if not SAMPLE.is_file():
        pytest.skip(f"built-in sample {SAMPLE} missing")
    batch = next(io.iterate_batches([str(SAMPLE)], ["PixelHit", "CaloCell", "GenPart"],
                                    batch_size=10))
    assert batch.n_events == 10
    return batch.to("cpu")


@pytest.fixture(scope="module")
def cpu_products(sample) -> EventBatch:
    """clusters, jets, rho and corrected_jets of the 10 events, by the cpu backend."""
    batch = EventBatch(sample.backend, sample.n_events, {"CaloCell": sample["CaloCell"]})
    planned = plan(["topocluster", "antikt", "rho", "jec"], ["CaloCell"], None, [str(SAMPLE)])
    run_batch(batch, planned.stages, planned.config)
    return batch


@pytest.fixture
def fast_block_sync():
    old = sys.getswitchinterval()
    sys.setswitchinterval(SIM_SWITCH_INTERVAL)
    yield
    sys.setswitchinterval(old)


# ------------------------------------------------------------------------------------------
# Simulator-sized tests in the production launch configuration
# ------------------------------------------------------------------------------------------
def test_antikt_cuda_128_threads_on_a_300_input_event(cpu_products, monkeypatch,
                                                      fast_block_sync):
    """Stage ``antikt``: a real event of >= 300 clusters (each of 128 threads owns 3 slots at
    the start), between a small event and one whose clusters all have E <= 0 (no inputs)."""
    import hltemu.kernels.antikt_cuda as K

    be = cuda_backend()
    monkeypatch.setattr(K, "CUDA_THREADS", THREADS_PER_BLOCK)  # 32 in the simulator
    log = LaunchLog(monkeypatch)
    log.watch(K, "antikt_cuda")
    clusters = cpu_products["clusters"].to_host()
    positive = np.array([int((clusters.event(i)["energy"] > 0).sum())
                         for i in range(clusters.n_events)])
    big = int(np.argmin(np.where(positive >= 300, positive, 10**9)))
    assert positive[big] >= 300, positive
    small = int(np.argmin(positive))
    chosen = pick_events(clusters, [small, big])
    a = chosen.event(0)
    cols = {k: np.concatenate([a[k][:12], chosen.event(1)[k],
                               clusters[k][clusters["energy"] <= 0]]) for k in chosen.columns}
    n_noise = int((clusters["energy"] <= 0).sum())
    three = Collection.from_counts([12, int(chosen.counts[1]), n_noise], cols)
    batch = EventBatch(get_backend("cpu"), 3, {"clusters": three.to("cpu")})

    want = run_stage("antikt", batch)
    got = run_stage("antikt", batch.to(be))
    assert log.of("antikt_cuda") == [(3, THREADS_PER_BLOCK)]
    assert_same_products(want, got)
    jets = want["jets"]
    assert jets.counts[1] > 10 and int(jets["n_constituents"].max()) > 5
    assert np.all(want["cluster_jet"]["jet"][three.offsets[2]:] == -1)


@pytest.mark.parametrize("n_events,capacity", [(2, 0), (1, 1000)],
                         ids=["2-events-default-buffer", "1-event-overflow-rerun"])
def test_doublets_cuda_on_full_events(sample, monkeypatch, n_events, capacity):
    """Stage ``doublets`` on the smallest full pileup-50 events of the sample (6,237 and 6,664
    hits: ~19,000 (hit, layer pair) threads per event, ~150 blocks of 128); with a 1,000-doublet
    first buffer the atomic counter overflows across blocks and the kernel reruns once."""
    import hltemu.kernels.doublets as K

    be = cuda_backend()
    log = LaunchLog(monkeypatch)
    log.watch(K, "find_doublets_cuda")
    hits = sample["PixelHit"]
    events = sorted(np.argsort(np.asarray(hits.counts))[:n_events].tolist())
    batch = EventBatch(get_backend("cpu"), n_events, {"PixelHit": pick_events(hits, events)})
    cfg = DoubletsConfig(capacity=capacity)

    want = run_stage("doublets", batch, cfg)
    got = run_stage("doublets", batch.to(be), cfg)
    launches = log.of("find_doublets_cuda")
    assert {t for _, t in launches} == {THREADS_PER_BLOCK}
    assert launches[0][0] > 100
    assert len(launches) == (2 if capacity else 1)
    assert want["doublets"].size > 10_000 * n_events  # production scale: 13k-15k per event
    assert_same_products(want, got)


def test_topocluster_cuda_on_a_full_event(sample, monkeypatch):
    """Stage ``topocluster`` on one full event (88,320 cells at pileup 50): thousands of
    growing cells in tens of blocks, several propagation launches, > 256 clusters (the
    kinematics kernel in 3 blocks)."""
    import hltemu.kernels.topocluster as K

    be = cuda_backend()
    log = LaunchLog(monkeypatch)
    kernels = ("propagate_tags_cuda", "mark_perimeter_cuda", "assign_perimeter_cuda",
               "cluster_kinematics_cuda")
    log.watch(K, *kernels)
    cells = sample["CaloCell"]
    batch = EventBatch(get_backend("cpu"), 1, {"CaloCell": pick_events(cells, [2])})

    want = run_stage("topocluster", batch)
    got = run_stage("topocluster", batch.to(be))
    for name in kernels:
        assert {t for _, t in log.of(name)} == {THREADS_PER_BLOCK}, name
    grow = log.of("propagate_tags_cuda")
    assert len(grow) >= 2 and grow[0][0] >= 10
    n_clusters = want["clusters"].size
    assert n_clusters > 2 * THREADS_PER_BLOCK
    assert log.of("cluster_kinematics_cuda") == [(-(-n_clusters // THREADS_PER_BLOCK),
                                                  THREADS_PER_BLOCK)]
    assert_same_products(want, got)


def test_jec_cuda_on_1000_jets(cpu_products, monkeypatch):
    """Stage ``jec`` (default levels), one thread per jet: the sample's jets four times, at
    half, once, 1.5 and twice their momenta (and rho), > 1,000 jets in > 8 blocks."""
    from hltemu.kernels import jec as K

    be = cuda_backend()
    log = LaunchLog(monkeypatch)
    log.watch(K, "correct_jets_cuda")
    jets, copy = tile(cpu_products["jets"], 4)
    scale = np.array([0.5, 1.0, 1.5, 2.0])
    for col in ("pt", "mass", "px", "py", "pz", "E"):
        jets.columns[col] = jets.columns[col] * scale[copy]
    rho, rcopy = tile(cpu_products["rho"], 4)
    rho.columns["rho"] = rho.columns["rho"] * scale[rcopy]
    batch = EventBatch(get_backend("cpu"), 40, {"jets": jets, "rho": rho})

    want = run_stage("jec", batch)
    got = run_stage("jec", batch.to(be))
    n = jets.size
    assert n > 1000
    assert log.of("correct_jets_cuda") == [(-(-n // THREADS_PER_BLOCK), THREADS_PER_BLOCK)]
    assert_same_products(want, got)


def test_trigger_cuda_on_300_events(sample, cpu_products, monkeypatch):
    """Stage ``trigger`` (default menu), one thread per event: the sample's corrected jets tiled
    to 300 events at 0.55-2.0 times their pT, doublet multiplicities spread across the 8,000 of
    the pixel path, first entry 3 (the prescaled path's counter starts mid-cycle)."""
    from hltemu.kernels import trigger as K

    be = cuda_backend()
    log = LaunchLog(monkeypatch)
    log.watch(K, "trigger_cuda")
    jets, copy = tile(cpu_products["corrected_jets"], 30)
    scale = 0.55 + 0.05 * np.arange(30)
    jets.columns["pt"] = jets.columns["pt"] * scale[copy]
    n_hits = np.asarray(sample["PixelHit"].counts)
    n_doublets = (np.tile(n_hits, 30) * np.repeat(scale, 10)).astype(np.int64)
    doublets = Collection(counts_to_offsets(n_doublets), {})
    batch = EventBatch(get_backend("cpu"), 300,
                       {"corrected_jets": jets, "filtered_doublets": doublets}, first_entry=3)

    want = run_stage("trigger", batch)
    got = run_stage("trigger", batch.to(be))
    assert log.of("trigger_cuda") == [(3, THREADS_PER_BLOCK)]
    bits = want["trigger"].columns
    mixed = [p for p, v in bits.items() if 0 < int(v.sum()) < v.size]
    assert len(mixed) >= 5, {p: int(v.sum()) for p, v in bits.items()}
    assert_same_products(want, got)


def test_segment_sum_cuda_on_300_events(sample, monkeypatch):
    """:func:`hltemu.ops.segment_sum` through a stage (``cell_sum`` of tests/stage_fixtures.py),
    one thread per event: 300 events of 0-700 real cell energies (3 blocks, empty events and
    negative energies included)."""
    import hltemu.kernels.segments as K
    from stage_fixtures import CELL_SUM

    be = cuda_backend()
    log = LaunchLog(monkeypatch)
    log.watch(K, "segment_sum_cuda")
    rng = np.random.default_rng(300)
    energy = np.asarray(sample["CaloCell"]["energy"])
    counts = rng.integers(0, 700, 300)
    counts[::37] = 0
    starts = rng.integers(0, energy.size - 700, 300)
    values = np.concatenate([energy[s:s + c] for s, c in zip(starts, counts, strict=True)])
    cells = Collection.from_counts(counts, {"energy": values})
    batch = EventBatch(get_backend("cpu"), 300, {"CaloCell": cells})

    want = CELL_SUM(batch)
    got = CELL_SUM(batch.to(be))
    assert log.of("segment_sum_cuda") == [(3, THREADS_PER_BLOCK)]
    assert (values < 0).any() and np.count_nonzero(want["cell_sum"]["sum"]) >= 290
    assert_same_products(want, got)


# ------------------------------------------------------------------------------------------
# Real-device sizes (a lent GPU only; no reference backend at these sizes)
# ------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_antikt_on_generator_particles(sample, monkeypatch):
    """Anti-kT with 5,000-9,000 inputs per event: the sample's final-state generator particles
    as massless clusters through stage ``antikt`` (constituent assignment exactly), and stage
    ``genjets`` on the GenPart collection itself."""
    import hltemu.kernels.antikt_cuda as K
    from pythia_inputs import sample_clusters

    be = cuda_backend()
    assert K.CUDA_THREADS == THREADS_PER_BLOCK  # the block size the simulator tests use
    log = LaunchLog(monkeypatch)
    log.watch(K, "antikt_cuda")
    clusters = sample_clusters()
    assert int(np.asarray(clusters.counts).min()) >= 2000
    batch = EventBatch(get_backend("cpu"), clusters.n_events,
                       {"clusters": clusters.to("cpu"), "GenPart": sample["GenPart"]})
    on_gpu = batch.to(be)
    want = {**run_stage("antikt", batch), **run_stage("genjets", batch)}
    got = {**run_stage("antikt", on_gpu), **run_stage("genjets", on_gpu)}
    assert log.of("antikt_cuda") == [(10, THREADS_PER_BLOCK)] * 2
    assert_same_products(want, got)


def _filtered_doublets_problems(cpu: Collection, cuda: Collection) -> list[str]:
    """``filtered_doublets``: the same doublets except ones whose score is within
    SCORE_TOLERANCE of the working point; the shared ones agree column by column."""
    wp = DoubletCnnConfig().working_point
    if wp < 0:
        wp = load_model(DoubletCnnConfig().weights).working_point

    def keys(c: Collection) -> np.ndarray:
        ev = np.repeat(np.arange(c.n_events, dtype=np.int64), np.diff(c.offsets))
        return (ev << 42) | (c["inner"].astype(np.int64) << 21) | c["outer"].astype(np.int64)

    ka, kb = keys(cpu), keys(cuda)
    only_a, only_b = ~np.isin(ka, kb), ~np.isin(kb, ka)
    if not only_a.any() and not only_b.any():
        return collection_problems("filtered_doublets", cpu, cuda)
    out = []
    for side, c, only in (("cpu", cpu, only_a), ("cuda", cuda, only_b)):
        far = only & (np.abs(c["score"].astype(np.float64) - wp) > SCORE_TOLERANCE)
        if far.any():
            out.append(f"filtered_doublets: {int(far.sum())} doublets only on {side} with "
                       f"scores away from the working point {wp}")
    sa, sb = np.flatnonzero(~only_a), np.flatnonzero(~only_b)
    for col in cpu.columns:
        x, y = cpu[col][sa], cuda[col][sb]
        if col == "score":
            if not np.all(np.abs(x.astype(np.float64) - y) <= SCORE_TOLERANCE):
                out.append("filtered_doublets.score: shared doublets' scores differ")
        elif x.dtype.kind in "biu" and not np.array_equal(x, y):
            out.append(f"filtered_doublets.{col}: shared doublets differ")
        elif x.dtype.kind == "f":
            problem = _float_problem(f"filtered_doublets.{col}", x, y, 0.0)
            if problem:
                out.append(problem)
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("copies", [1, 10], ids=["10-events", "100-events"])
def test_gpu_full_default_chain_on_the_sample(sample, copies):
    """Every stage of the default chain (doublets, doublet_cnn, topocluster, antikt, genjets,
    rho, jec, trigger) on the sample, once and tiled to 100 events: every product of cuda
    agrees with cpu."""
    be = cuda_backend()
    present = io.common_collections([str(SAMPLE)])
    planned = plan(None, present, None, [str(SAMPLE)])  # topocluster: the sample's <mu>
    chain, inputs, config = planned.stages, planned.inputs, planned.config
    assert [s.name for s in chain][:3] == ["doublets", "doublet_cnn", "topocluster"]
    colls = {name: tile(sample[name], copies)[0] for name in inputs}
    batch = EventBatch(get_backend("cpu"), 10 * copies, colls)
    on_gpu = batch.to(be)
    run_batch(batch, chain, config)
    run_batch(on_gpu, chain, config)
    be.synchronize()
    products = [n for st in chain for n in st.adds]
    want = {n: batch[n].to_host() for n in products}
    got = {n: on_gpu[n].to_host() for n in products}
    problems = _filtered_doublets_problems(want.pop("filtered_doublets"),
                                           got.pop("filtered_doublets"))
    for name in want:
        problems += collection_problems(name, want[name], got[name])
    assert not problems, "cuda vs cpu:\n" + "\n".join(problems)
    assert want["jets"].size > 300 * copies and want["doublets"].size > 250_000 * copies


# ------------------------------------------------------------------------------------------
# Offline tracks and primary vertices (simulator-sized, production launch configuration)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_events() -> Collection:
    """The sample's ``Event`` collection (run, luminosityBlock, event: the tracks' random
    stream)."""
    return io.read_collections(str(SAMPLE), [io.EVENT])[io.EVENT]


def test_tracks_cuda_on_two_full_events(sample, sample_events, monkeypatch):
    """Stage ``tracks``, one thread per GenPart row: the sample's two smallest pileup-50 events
    (> 10,000 rows: ~80 blocks of 128, the last partly idle), the same tracks as cpu."""
    import hltemu.kernels.tracks as K

    be = cuda_backend()
    log = LaunchLog(monkeypatch)
    log.watch(K, "tracks_cuda")
    gen = sample["GenPart"]
    events = sorted(np.argsort(np.asarray(gen.counts))[:2].tolist())
    batch = EventBatch(get_backend("cpu"), 2, {"GenPart": pick_events(gen, events),
                                               io.EVENT: pick_events(sample_events, events)})

    want = run_stage("tracks", batch)
    got = run_stage("tracks", batch.to(be))
    n = batch["GenPart"].size
    assert n > 10_000 and want["tracks"].size > 700
    assert log.of("tracks_cuda") == [(-(-n // THREADS_PER_BLOCK), THREADS_PER_BLOCK)]
    assert_same_products(want, got)


def test_vertices_cuda_on_300_events(sample, sample_events, monkeypatch):
    """Stage ``vertices``: 300 events of 0-45 consecutive tracks (in GenPart order, so
    neighbouring interactions' tracks mix) cut from the cpu tracks of the sample's first two
    events; the selection one thread per track (> 40 blocks), the clustering one thread per
    event (3 blocks, the last partly idle); vertices and associations as cpu.  The primary
    vertex by sum pT^2 (``ranking = "sum_pt2"``): the track jets' anti-kT, a block per vertex,
    would take the simulator ~0.5 s per vertex here (its launches: tests/test_antikt.py, and
    tests/test_vertices.py runs the track-jet ranking on cuda)."""
    import hltemu.kernels.vertices as K

    from hltemu.stages.vertices import VerticesConfig

    be = cuda_backend()
    log = LaunchLog(monkeypatch)
    log.watch(K, "select_cuda", "cluster_cuda")
    two = EventBatch(get_backend("cpu"), 2, {"GenPart": pick_events(sample["GenPart"], [0, 1]),
                                             io.EVENT: pick_events(sample_events, [0, 1])})
    tracks = run_stage("tracks", two)["tracks"].to_host()
    rng = np.random.default_rng(301)
    counts = rng.integers(0, 46, 300)
    counts[::50] = 0
    starts = rng.integers(0, tracks.size - 45, 300)
    rows = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts, strict=True)])
    cut = Collection.from_counts(counts, {k: v[rows] for k, v in tracks.columns.items()})
    batch = EventBatch(get_backend("cpu"), 300, {"tracks": cut})

    cfg = VerticesConfig(ranking="sum_pt2")
    want = run_stage("vertices", batch, cfg)
    got = run_stage("vertices", batch.to(be), cfg)
    n = cut.size
    assert n > 40 * THREADS_PER_BLOCK
    assert log.of("select_cuda") == [(-(-n // THREADS_PER_BLOCK), THREADS_PER_BLOCK)]
    assert log.of("cluster_cuda") == [(3, THREADS_PER_BLOCK)]
    assert want["vertices"].size > 300 and int(np.count_nonzero(want["track_pv"]["pv"])) > 1000
    assert_same_products(want, got)
