"""Stage ``doublets``: the same doublet set on every backend, no pair lost by the binned search,
no truncation on overflow, cuts that do what the config says, truth metrics."""

from __future__ import annotations

import dataclasses
import math

import numba
import numpy as np
import pytest
from collection_asserts import rows_where
from hltemu.kernels import doublets as K
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hltemu.backends import cuda_status, get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError, GenerateConfig
from hltemu.geometry import (
    BARREL_LAYERS,
    C_LIGHT,
    N_PIXEL_LAYERS,
    default_geometry,
    is_barrel_layer,
)
from hltemu.metrics import doublet_metrics
from hltemu.pipeline import (
    PipelineError,
    config_from_dict,
    default_config,
    get_stage,
    load_config,
    run_batch,
)
from hltemu.stages.doublets import (
    DOUBLET_COLUMNS,
    GRID_CM,
    DoubletsConfig,
    build_hit_table,
    find_cuda,
    find_doublets,
    pair_table,
)


def cuda_usable() -> bool:
    """True on a GPU, or under the CUDA simulator (tests/conftest.py switches it on)."""
    return cuda_status()[0]

CFG = DoubletsConfig()
B_FIELD = 3.8
BARREL_R = (2.9, 6.8, 10.9, 16.0)
BARREL_HALF_LENGTH = 26.4
DISK_Z = (29.1, 39.6, 51.6)
DISK_R = (4.5, 16.1)
INT_COLUMNS = [c for c, (dt, _, _) in DOUBLET_COLUMNS.items() if dt.startswith("int")]
FLOAT_COLUMNS = [c for c, (dt, _, _) in DOUBLET_COLUMNS.items() if dt.startswith("float")]


# -- synthetic events: helices from the luminous region plus noise ------------------------------
def synthetic_event(rng: np.random.Generator, n_tracks: int, n_noise: int,
                    phi_range: tuple[float, float] = (-math.pi, math.pi)):
    """PixelHit and GenPart columns of one event: ``n_tracks`` charged helices from
    ``z0 ~ N(0, 5 cm)`` crossing the barrel cylinders and disks (hits smeared by 10-20 um,
    cluster sizes near the sensor-crossing prediction) and ``n_noise`` random hits."""
    pt = np.exp(rng.uniform(np.log(0.3), np.log(10.0), n_tracks))
    eta = rng.uniform(-2.8, 2.8, n_tracks)
    phi0 = rng.uniform(*phi_range, n_tracks)
    q = rng.choice([-1, 1], n_tracks)
    z0 = rng.normal(0.0, 5.0, n_tracks)
    radius = 100.0 * pt / (0.299792458 * B_FIELD)
    cot = np.sinh(eta)
    rows: list[tuple] = []  # (x, y, z, layer, size_y, sim)
    for t in range(n_tracks):
        two_r = 2.0 * radius[t]
        for lay, r in enumerate(BARREL_R):
            if r >= two_r:
                continue
            s = two_r * math.asin(r / two_r)
            z = z0[t] + s * cot[t]
            if abs(z) > BARREL_HALF_LENGTH:
                continue
            phi = phi0[t] - q[t] * math.asin(r / two_r) + rng.normal(0.0, 10e-4) / r
            size = max(1, round(1.9 * abs(cot[t]) + rng.uniform(0.0, 2.0)))
            rows.append((r * math.cos(phi), r * math.sin(phi), z + rng.normal(0, 20e-4), lay,
                         size, t))
        for k, zd in enumerate(DISK_Z):
            zd = zd if cot[t] > 0 else -zd
            s = (zd - z0[t]) / cot[t]
            if not 0.0 < s < math.pi * radius[t]:
                continue
            r = two_r * math.sin(s / two_r) + rng.normal(0.0, 20e-4)
            if not DISK_R[0] <= r < DISK_R[1]:
                continue
            phi = phi0[t] - q[t] * s / two_r + rng.normal(0.0, 10e-4) / r
            size = max(1, round(1.9 / abs(cot[t]) + rng.uniform(0.0, 2.0)))
            lay = 4 + k if cot[t] > 0 else 7 + k
            rows.append((r * math.cos(phi), r * math.sin(phi), zd, lay, size, t))
    for _ in range(n_noise):
        lay = int(rng.integers(0, N_PIXEL_LAYERS))
        phi = rng.uniform(*phi_range)
        if lay < 4:
            r, z = BARREL_R[lay], rng.uniform(-BARREL_HALF_LENGTH, BARREL_HALF_LENGTH)
        else:
            r = rng.uniform(*DISK_R)
            z = DISK_Z[(lay - 4) % 3] * (1.0 if lay < 7 else -1.0)
        rows.append((r * math.cos(phi), r * math.sin(phi), z, lay, int(rng.integers(1, 5)), -1))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    col = (lambda k, dt: np.array([row[k] for row in rows], dtype=dt))  # noqa: E731
    n = len(rows)
    hits = {
        "x": col(0, np.float32), "y": col(1, np.float32), "z": col(2, np.float32),
        "layer": col(3, np.int32), "size_x": rng.integers(1, 4, n).astype(np.int32),
        "size_y": col(4, np.int32), "sim_index": col(5, np.int32),
    }
    gen = {"pt": pt.astype(np.float32), "eta": eta.astype(np.float32),
           "charge": q.astype(np.int32), "vx": np.zeros(n_tracks, np.float32),
           "vy": np.zeros(n_tracks, np.float32), "vz": z0.astype(np.float32)}
    return hits, gen


def synthetic_batch(seed: int, n_events: int, n_tracks: int, n_noise: int,
                    phi_range: tuple[float, float] = (-math.pi, math.pi)) -> EventBatch:
    rng = np.random.default_rng(seed)
    events = [synthetic_event(rng, n_tracks, n_noise, phi_range) for _ in range(n_events)]
    colls = {}
    for k, name in enumerate(("PixelHit", "GenPart")):
        counts = [len(next(iter(ev[k].values()))) for ev in events]
        cols = {c: np.concatenate([ev[k][c] for ev in events]) for c in events[0][k]}
        colls[name] = Collection.from_counts(counts, cols)
    return EventBatch(get_backend("reference"), n_events, colls)


def phi_wedge(hits: Collection, lo: float, hi: float) -> Collection:
    """The hits with lo <= phi < hi (small inputs for the CUDA simulator)."""
    phi = np.arctan2(hits["y"], hits["x"])
    return rows_where(hits, (phi >= lo) & (phi < hi))


# -- helpers ------------------------------------------------------------------------------------
def run_backend(hits: Collection, cfg: DoubletsConfig, name: str) -> Collection:
    be = get_backend(name)
    return find_doublets(hits.to(be), cfg, be).to_host()


def assert_same(a: Collection, b: Collection) -> None:
    np.testing.assert_array_equal(a.offsets, b.offsets)
    for c in INT_COLUMNS:
        np.testing.assert_array_equal(a[c], b[c], err_msg=c)
    for c in FLOAT_COLUMNS:  # identical on CPU backends; cupy's atan2/sqrt may differ in a bit
        np.testing.assert_allclose(a[c], b[c], rtol=1e-6, atol=1e-6, err_msg=c)


def triples(d: Collection) -> set[tuple[int, int, int, int]]:
    ev = d.event_index()
    return set(zip(ev.tolist(), d["inner"].tolist(), d["outer"].tolist(), d["pair"].tolist(),
                   strict=True))


@numba.njit(cache=False)
def _brute_force(x, y, z, r, s, layer, event, pair_inner, pair_outer, pair_cuts, cuts):
    """Every (inner, outer) hit pair of every layer pair in one event tested with the cut:
    no binning, no windows.  Returns (inner, outer, pair) sorted-hit indices."""
    n = x.shape[0]
    out = []
    for p in range(pair_inner.shape[0]):
        for i in range(n):
            if layer[i] != pair_inner[p]:
                continue
            for o in range(n):
                if layer[o] != pair_outer[p] or event[o] != event[i]:
                    continue
                if K._passes_cpu(x[i], y[i], z[i], r[i], s[i], x[o], y[o], z[o], r[o], s[o],
                                 pair_cuts, p, cuts):
                    out.append((i, o, p))
    return out


def brute_force_triples(hits: Collection, cfg: DoubletsConfig) -> set[tuple[int, int, int, int]]:
    """All doublets by testing every pair of hits; as (event, inner row, outer row, pair)."""
    be = get_backend("reference")
    table = build_hit_table(hits, cfg.n_phi_bins, be)
    pairs = pair_table(cfg)
    found = _brute_force(table.x, table.y, table.z, table.r, table.size_y, table.layer,
                         table.event, pairs.inner, pairs.outer, pairs.cuts, pairs.global_cuts)
    first = hits.offsets
    return {(int(table.event[i]), int(table.row[i] - first[table.event[i]]),
             int(table.row[o] - first[table.event[o]]), int(p)) for i, o, p in found}


# -- fixtures: generated ttbar events -----------------------------------------------------------
@pytest.fixture(scope="session")
def ttbar_pu0() -> EventBatch:
    from hltemu.simulate.generate import generate_batches

    return next(generate_batches(GenerateConfig(events=3, process="ttbar", pileup=0, seed=31),
                                 batch_size=3))


@pytest.fixture(scope="session")
def ttbar_pu50() -> EventBatch:
    from hltemu.simulate.generate import generate_batches

    return next(generate_batches(GenerateConfig(events=2, process="ttbar", pileup=50, seed=32),
                                 batch_size=2))


# -- the same set on every backend ----------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_events=st.integers(1, 3), n_tracks=st.integers(0, 6),
       n_noise=st.integers(0, 30), n_bins=st.sampled_from([1, 2, 5, 16, 128, 1000]),
       pt_min=st.floats(0.02, 2.0), phi_scale=st.floats(0.3, 3.0), size_cut=st.booleans(),
       dense=st.booleans())
def test_backends_agree_on_random_events(seed, n_events, n_tracks, n_noise, n_bins, pt_min,
                                         phi_scale, size_cut, dense):
    """Random helices + noise, random binning and cuts: reference, cpu and cuda (simulator
    off a GPU) give the same collection, and the binned search equals the brute force.
    ``dense`` puts everything in a 0.3 rad wedge (many fake combinations); a low ``pt_min``
    with scaled phi windows makes the phi window the cut that decides."""
    phi_range = (1.0, 1.3) if dense else (-math.pi, math.pi)
    batch = synthetic_batch(seed, n_events, n_tracks, n_noise, phi_range)
    windows = tuple(min(w * phi_scale, 1.5) for w in CFG.phi_window)
    cfg = dataclasses.replace(CFG, n_phi_bins=n_bins, pt_min=pt_min, phi_window=windows,
                              cluster_cut_inner=size_cut, cluster_cut_outer=size_cut)
    hits = batch["PixelHit"]
    ref = run_backend(hits, cfg, "reference")
    assert_same(ref, run_backend(hits, cfg, "cpu"))
    if cuda_usable():
        assert_same(ref, run_backend(hits, cfg, "cuda"))
    assert triples(ref) == brute_force_triples(hits, cfg)


def test_random_events_make_doublets_and_fakes():
    """The random events of the property test are not trivial: they have true and fake
    doublets on barrel and disk pairs (so the agreement above is not of empty sets)."""
    d = run_backend(synthetic_batch(7, 20, 6, 12)["PixelHit"], CFG, "cpu")
    assert (d["sim_index"] >= 0).sum() > 50
    dense = run_backend(synthetic_batch(7, 20, 6, 12, (1.0, 1.3))["PixelHit"], CFG, "cpu")
    assert (dense["sim_index"] < 0).sum() > 50
    assert set(np.unique(d["pair"])) >= {0, 3, 8, 13, 14}  # barrel pairs and jumps
    assert np.isin(d["pair"], [1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 15, 16, 17, 18]).any()


def test_phi_wrap_and_dense_bins():
    """Tracks all near phi = +-pi (the bin wrap) with many noise hits there."""
    batch = synthetic_batch(3, 2, 8, 30, phi_range=(math.pi - 0.08, math.pi + 0.08))
    hits = batch["PixelHit"]
    for n_bins in (4, 128, 1024):
        cfg = dataclasses.replace(CFG, n_phi_bins=n_bins)
        ref = run_backend(hits, cfg, "reference")
        assert_same(ref, run_backend(hits, cfg, "cpu"))
        assert triples(ref) == brute_force_triples(hits, cfg)
        assert (ref["dphi"] != 0).any() and ref.size > 10
        # doublets across the wrap exist: inner and outer on opposite sides of phi = pi
        phi_i = np.arctan2(hits["y"][hits.offsets[ref.event_index()] + ref["inner"]],
                           hits["x"][hits.offsets[ref.event_index()] + ref["inner"]])
        phi_o = phi_i + ref["dphi"]
        assert ((phi_o > math.pi) | (phi_o < -math.pi)).any()


def test_phi_window_edge_is_searched():
    """With the pT cut off, the phi window decides: pairs with |dphi| just inside the window
    are found, just outside are not, for any binning (no pair lost at a bin edge)."""
    rows, r_in, r_out = [], BARREL_R[0], BARREL_R[1]
    window = CFG.phi_window[0]  # pair (0, 1)
    rng = np.random.default_rng(2)
    for k in range(40):
        phi_i = rng.uniform(-math.pi, math.pi)
        # k odd: inside by 0.1-0.34 mrad, k even: outside (well above the 1 um grid's effect)
        delta = window * (1.0 + (-1) ** k * rng.uniform(3e-3, 1e-2))
        phi_o = phi_i + (delta if k % 4 < 2 else -delta)
        rows += [(r_in * math.cos(phi_i), r_in * math.sin(phi_i), 0.0, 0, -1),
                 (r_out * math.cos(phi_o), r_out * math.sin(phi_o), 0.0, 1, -1)]
    hits, _ = _one_event(rows, [(1.0, 0.0)])
    for n_bins in (1, 7, 128, 4096):
        cfg = dataclasses.replace(CFG, pt_min=1e-3, n_phi_bins=n_bins, cluster_cut_inner=False,
                                  cluster_cut_outer=False)
        d = run_backend(hits, cfg, "cpu")
        inside = {(2 * k, 2 * k + 1) for k in range(40) if k % 2 == 1}
        found = {(i, o) for i, o in zip(d["inner"].tolist(), d["outer"].tolist(), strict=True)
                 if o == i + 1}
        assert found == inside, n_bins
        assert triples(d) == brute_force_triples(hits, cfg)
        assert_same(d, run_backend(hits, cfg, "reference"))


def test_generated_ttbar_pu0_all_backends(ttbar_pu0):
    hits = ttbar_pu0["PixelHit"]
    ref = run_backend(hits, CFG, "reference")
    assert_same(ref, run_backend(hits, CFG, "cpu"))
    assert triples(ref) == brute_force_triples(hits, CFG)
    assert ref.size > 300 and (ref["sim_index"] >= 0).sum() > 100
    if cuda_usable():
        wedge = phi_wedge(hits, 0.3, 0.6)
        assert 20 <= wedge.size <= 200
        small = run_backend(wedge, CFG, "cpu")
        assert small.size > 0
        assert_same(small, run_backend(wedge, CFG, "cuda"))


def test_generated_ttbar_pu50_all_backends(ttbar_pu50):
    hits = ttbar_pu50["PixelHit"]
    one = Collection.from_counts(hits.counts[:1], {k: v[: hits.offsets[1]]
                                                   for k, v in hits.columns.items()})
    ref = run_backend(one, CFG, "reference")
    cpu = run_backend(hits, CFG, "cpu")
    assert_same(ref, cpu.select_events(0, 1))
    assert triples(cpu) == brute_force_triples(hits, CFG)
    assert cpu.size > 10000
    if cuda_usable():
        wedge = phi_wedge(hits, -0.02, 0.02)
        assert 20 <= wedge.size <= 300
        small = run_backend(wedge, CFG, "cpu")
        assert small.size > 0
        assert_same(small, run_backend(wedge, CFG, "cuda"))


def test_builtin_sample_reference_equals_cpu():
    """All 10 events of the built-in ttbar pileup-50 sample: the same doublets on both."""
    from hltemu.cli import builtin_sample
    from hltemu.io import read_collections

    hits = read_collections(builtin_sample(), ["PixelHit"])["PixelHit"]
    ref = run_backend(hits, CFG, "reference")
    assert_same(ref, run_backend(hits, CFG, "cpu"))
    assert ref.n_events == 10 and ref.size > 200_000


# -- overflow ---------------------------------------------------------------------------------
@pytest.mark.skipif(not cuda_usable(), reason="cuda backend not usable here")
@pytest.mark.parametrize("capacity", [1, 7])
def test_cuda_overflow_grows_and_reruns(capacity):
    batch = synthetic_batch(11, 2, 5, 6)
    hits = batch["PixelHit"]
    full = run_backend(hits, CFG, "cpu")
    assert full.size > capacity * 2
    be = get_backend("cuda")
    table = build_hit_table(hits.to(be), CFG.n_phi_bins, be)
    inner, outer, pair, launches = find_cuda(table, pair_table(CFG), be, capacity=capacity)
    assert launches == 2 and int(inner.shape[0]) == full.size
    small = dataclasses.replace(CFG, capacity=capacity)
    assert_same(full, run_backend(hits, small, "cuda"))


@pytest.mark.skipif(not cuda_usable(), reason="cuda backend not usable here")
def test_cuda_capacity_large_enough_runs_once():
    hits = synthetic_batch(11, 1, 4, 4)["PixelHit"]
    be = get_backend("cuda")
    table = build_hit_table(hits.to(be), CFG.n_phi_bins, be)
    *_, launches = find_cuda(table, pair_table(CFG), be, capacity=100000)
    assert launches == 1


def test_first_capacity_follows_the_last_batch():
    from hltemu.stages.doublets import CAPACITY_MARGIN, first_capacity

    assert first_capacity(500, 100, 30.0) == 500  # the config's size wins
    assert first_capacity(0, 100, None) == 4 * 100 + 1024
    assert first_capacity(0, 1000, 11.3) == int(CAPACITY_MARGIN * 11.3 * 1000) + 1024


@pytest.mark.skipif(not cuda_usable(), reason="cuda backend not usable here")
def test_cuda_buffer_sized_from_the_previous_batch():
    """Dense events (more than 4 doublets per hit): the first batch runs the search twice, the
    next one, sized from the first's doublets per hit, once; the doublets are the cpu's."""
    from hltemu.pipeline import get_stage, prepared

    be = get_backend("cuda")
    st = get_stage("doublets")
    prep = prepared(st, CFG, be)
    prep.sizing.clear()
    # ~1,900 hits in a 0.3 rad wedge: ~5.6 doublets per hit
    batches = [synthetic_batch(seed, 1, 100, 1500, (0.0, 0.3)) for seed in (21, 22)]
    launches = []
    for batch in batches:
        got = st(batch.to(be), CFG)["doublets"]
        assert_same(run_backend(batch["PixelHit"], CFG, "cpu"), got.to_host())
        launches.append(prep.sizing["launches"])
        assert got.size > 4 * batch["PixelHit"].size + 1024
    assert launches == [2, 1]


# -- the cuts do what the config says ---------------------------------------------------------
def test_every_doublet_passes_the_configured_cuts(ttbar_pu50):
    cfg = CFG
    d = run_backend(ttbar_pu50["PixelHit"], cfg, "cpu")
    window = np.asarray(cfg.phi_window)[d["pair"]]
    assert (np.abs(d["dphi"]) <= window + 1e-6).all()
    assert (np.abs(d["z0"]) <= cfg.z0_max + 1e-3).all()
    assert (d["dr"] > 0).all() and (d["dr"] <= np.asarray(cfg.dr_max)[d["pair"]] + 1e-6).all()
    geom = default_geometry()
    pt_est = 0.00299792458 * geom.b_field / np.abs(d["curvature"])
    assert (pt_est >= cfg.pt_min * (1 - 1e-5)).all()
    assert (np.abs(d["dz"]) <= math.sinh(cfg.eta_max) * d["dr"] + 1e-4).all()
    lo = np.asarray(cfg.inner_z_min)[d["pair"]] - 1e-4
    hi = np.asarray(cfg.inner_z_max)[d["pair"]] + 1e-4
    assert ((d["z_inner"] >= lo) & (d["z_inner"] <= hi)).all()
    pairs = np.asarray(cfg.layer_pairs)
    np.testing.assert_array_equal(pairs[d["pair"], 0], d["inner_layer"])
    np.testing.assert_array_equal(pairs[d["pair"], 1], d["outer_layer"])
    # cluster size of the inner hit against the doublet's angle
    barrel = is_barrel_layer(d["inner_layer"])
    with np.errstate(divide="ignore"):  # np.where evaluates both branches
        slope = np.where(barrel, np.abs(d["dz"]) / d["dr"], d["dr"] / np.abs(d["dz"]))
    pred = geom.pixel.thickness / geom.pixel.pitch_y * slope
    resid = d["inner_size_y"] - pred
    assert (resid >= -cfg.size_below - 1e-4).all() and (resid <= cfg.size_above + 1e-4).all()


def test_cut_tables_take_field_pitch_and_thickness_from_the_geometry():
    """pair_table reads the solenoid field, the pitch along local y and the sensor thickness
    from the detector geometry (the default one unless given), and the barrel flags from
    is_barrel_layer; with the default geometry the tables are exactly those of the constants
    the config used to restate (3.8 T, 0.0150 cm, 0.0285 cm), so the products do not move."""
    geom = default_geometry()
    table = pair_table(CFG)
    g, um = table.global_cuts, 1.0 / GRID_CM
    r_min_um = 100.0 * CFG.pt_min / (0.299792458 * 3.8) * um
    assert C_LIGHT == 0.299792458
    assert g[K.CUT_KAPPA2_MAX] == 1.0 / (r_min_um * r_min_um)
    assert (g[K.CUT_PITCH], g[K.CUT_THICKNESS]) == (150.0, 285.0)
    assert (g[K.CUT_PITCH], g[K.CUT_THICKNESS]) == (round(geom.pixel.pitch_y * um),
                                                    round(geom.pixel.thickness * um))
    pairs = np.asarray(CFG.layer_pairs)
    for col, side in ((K.PAIR_INNER_BARREL, 0), (K.PAIR_OUTER_BARREL, 1)):
        np.testing.assert_array_equal(table.cuts[:, col], np.isin(pairs[:, side], BARREL_LAYERS))
    explicit = pair_table(CFG, geom)
    for name in ("inner", "outer", "window", "cuts", "global_cuts", "by_layer", "layer_offsets"):
        np.testing.assert_array_equal(getattr(explicit, name), getattr(table, name))
    # another detector: the tables follow it
    other = dataclasses.replace(geom, b_field=2.0, pixel=dataclasses.replace(
        geom.pixel, pitch_y=0.0100, thickness=0.0300))
    g2 = pair_table(CFG, other).global_cuts
    r2 = 100.0 * CFG.pt_min / (C_LIGHT * 2.0) * um
    assert g2[K.CUT_KAPPA2_MAX] == 1.0 / (r2 * r2)
    assert (g2[K.CUT_PITCH], g2[K.CUT_THICKNESS]) == (100.0, 300.0)


def test_old_config_keys_warn_and_do_not_change_the_doublets(tmp_path):
    """[doublets] b_field, pitch_y and sensor_thickness at the geometry's values (as files
    saved before they moved hold them) give a MovedKeyWarning each and the same doublets."""
    from hltemu.config import MovedKeyWarning

    path = tmp_path / "old.toml"
    path.write_text("[doublets]\nb_field = 3.8\npitch_y = 0.015\nsensor_thickness = 0.0285\n"
                    "pt_min = 0.8\n")
    with pytest.warns(MovedKeyWarning, match="detector geometry") as rec:
        cfg = load_config(path)["doublets"]
    assert len([w for w in rec if w.category is MovedKeyWarning]) == 3
    assert cfg == CFG
    hits = synthetic_batch(11, 3, 6, 20)["PixelHit"]
    assert_same(run_backend(hits, cfg, "cpu"), run_backend(hits, CFG, "cpu"))


def test_tighter_cuts_give_subsets(ttbar_pu0):
    hits = ttbar_pu0["PixelHit"]
    base = triples(run_backend(hits, CFG, "cpu"))
    for change in ({"pt_min": 2.0}, {"z0_max": 3.0}, {"size_above": 1.0},
                   {"phi_window": tuple(w / 2 for w in CFG.phi_window)}):
        tight = triples(run_backend(hits, dataclasses.replace(CFG, **change), "cpu"))
        assert tight < base, change
    loose = triples(run_backend(hits, dataclasses.replace(
        CFG, cluster_cut_inner=False, cluster_cut_outer=False), "cpu"))
    assert loose > base


def test_defaults_keep_every_prompt_track_above_threshold():
    """The per-pair windows are the geometric envelope: every pair of crossings of a prompt
    track with pT >= 0.85 GeV and |z0| < 11.9 cm (exact positions, cluster sizes as the
    sensor-crossing prediction) passes every cut of the default configuration."""
    from hltemu.simulate.tracker import propagate

    geom = default_geometry()
    rng = np.random.default_rng(5)
    n = 3000
    pt = np.exp(rng.uniform(np.log(0.85), np.log(50.0), n))
    eta, phi = rng.uniform(-3.0, 3.0, n), rng.uniform(-math.pi, math.pi, n)
    z0 = rng.uniform(-11.9, 11.9, n)
    cross = propagate(geom, pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta),
                      rng.choice([-1, 1], n), np.zeros(n), np.zeros(n), z0)
    barrel = is_barrel_layer(cross.layer)
    cot = np.abs(np.sinh(eta[cross.particle]))
    ratio = geom.pixel.thickness / geom.pixel.pitch_y  # 1.9
    pred = np.where(barrel, ratio * cot, ratio / cot)  # thickness / pitch * slope
    hits = Collection.from_counts([len(cross)], {
        "x": cross.x.astype(np.float32), "y": cross.y.astype(np.float32),
        "z": cross.z.astype(np.float32), "layer": cross.layer.astype(np.int32),
        "size_x": np.ones(len(cross), np.int32),
        "size_y": np.round(pred + 1.0).astype(np.int32),  # pred + 0.5 .. 1.5 pixels
        "sim_index": cross.particle.astype(np.int32)})
    gen = Collection.from_counts([n], {"pt": pt.astype(np.float32), "eta": eta.astype(np.float32),
                                       "charge": np.ones(n, np.int32),
                                       "vx": np.zeros(n, np.float32),
                                       "vy": np.zeros(n, np.float32),
                                       "vz": z0.astype(np.float32)})
    d = run_backend(hits, CFG, "cpu")
    m = doublet_metrics(hits, d, gen, CFG, pt_min=0.85, eta_max=3.0)
    assert m.n_true_selected > 5000
    assert m.n_found_selected == m.n_true_selected


# -- truth metrics ----------------------------------------------------------------------------
def _one_event(rows, gen_rows) -> tuple[Collection, Collection]:
    hits = Collection.from_counts([len(rows)], {
        "x": np.array([r[0] for r in rows], np.float32),
        "y": np.array([r[1] for r in rows], np.float32),
        "z": np.array([r[2] for r in rows], np.float32),
        "layer": np.array([r[3] for r in rows], np.int32),
        "size_x": np.ones(len(rows), np.int32), "size_y": np.ones(len(rows), np.int32),
        "sim_index": np.array([r[4] for r in rows], np.int32)})
    gen = Collection.from_counts([len(gen_rows)], {
        "pt": np.array([g[0] for g in gen_rows], np.float32),
        "eta": np.array([g[1] for g in gen_rows], np.float32),
        "charge": np.ones(len(gen_rows), np.int32), "vx": np.zeros(len(gen_rows), np.float32),
        "vy": np.zeros(len(gen_rows), np.float32), "vz": np.zeros(len(gen_rows), np.float32)})
    return hits, gen


def test_metrics_count_by_hand():
    """A straight track (particle 0, 5 GeV) on the four barrel layers at z = 0 gives the true
    doublets of pairs (0,1), (1,2), (2,3), (0,2), (1,3); particle 1 (0.5 GeV) is outside the
    selection; a noise hit next to particle 0's layer-2 hit makes one fake per inner hit."""
    rows = [(r, 0.0, 0.0, lay, 0) for lay, r in enumerate(BARREL_R)]
    rows.append((BARREL_R[2], 0.001, 0.0, 2, -1))  # noise, 10 um away in r-phi
    rows.append((0.0, BARREL_R[0], 0.0, 0, 1))  # particle 1, a single hit: no pair
    hits, gen = _one_event(rows, [(5.0, 0.0), (0.5, 0.0)])
    d = run_backend(hits, CFG, "reference")
    m = doublet_metrics(hits, d, gen, CFG)
    assert m.n_true_selected == 5 and m.n_found_selected == 5
    assert m.efficiency == 1.0
    # fakes: (0 -> noise) on pair (0,2), (1 -> noise) on (1,2), (noise -> 3) on (2,3)
    assert m.n_fake == 3 and m.n_doublets == 8
    assert m.fake_fraction == pytest.approx(3 / 8) and m.doublets_per_event == 8.0
    eff = np.array(m.per_pair_efficiency)
    assert np.isnan(eff[1]) and eff[0] == 1.0 and eff[13] == 1.0
    # dropping the layer-3 hit loses pairs (2,3) and (1,3): 3 true doublets left, all found
    hits2, _ = _one_event([r for r in rows if r[3] != 3], [(5.0, 0.0), (0.5, 0.0)])
    m2 = doublet_metrics(hits2, run_backend(hits2, CFG, "cpu"), gen, CFG)
    assert (m2.n_true_selected, m2.n_found_selected) == (3, 3)
    # pt_min = 1e4 GeV: the straight track (zero curvature) still passes, the noise pairs
    # (curvature of a few hundred GeV) do not
    m3 = doublet_metrics(hits, run_backend(hits, dataclasses.replace(CFG, pt_min=1e4), "cpu"),
                         gen, CFG)
    assert (m3.n_found_selected, m3.n_fake) == (5, 0)
    # without GenPart: fake fraction only
    m4 = doublet_metrics(hits, d, None, CFG)
    assert m4.efficiency is None and m4.n_fake == 3


def test_metrics_on_ttbar_pu0(ttbar_pu0):
    d = run_backend(ttbar_pu0["PixelHit"], CFG, "cpu")
    m = doublet_metrics(ttbar_pu0["PixelHit"], d, ttbar_pu0["GenPart"], CFG)
    assert m.n_true_selected > 500
    assert m.efficiency > 0.97
    assert 0.2 < m.fake_fraction < 0.9


# -- stage, config, errors --------------------------------------------------------------------
def test_stage_in_pipeline_and_output_is_writable(ttbar_pu0, tmp_path):
    from hltemu.io import OutputWriter, read_collections

    stage = get_stage("doublets")
    assert stage.needs == ("PixelHit",) and stage.adds == ("doublets",)
    batch = EventBatch(get_backend("cpu"), ttbar_pu0.n_events,
                       {"PixelHit": ttbar_pu0["PixelHit"]})
    run_batch(batch, [stage], default_config())
    d = batch["doublets"]
    assert set(d.columns) == set(DOUBLET_COLUMNS)
    for name, (dtype, _, _) in DOUBLET_COLUMNS.items():
        assert d[name].dtype == np.dtype(dtype), name
    path = tmp_path / "doublets.root"
    with OutputWriter(path) as w:
        w.write(batch, ["doublets"])
    back = read_collections(path, ["doublets"])["doublets"]
    assert_same(d, back)


def test_hit_rows_point_at_the_right_hits(ttbar_pu0):
    hits = ttbar_pu0["PixelHit"]
    d = run_backend(hits, CFG, "cpu")
    first = hits.offsets[d.event_index()]
    zi = hits["z"][first + d["inner"]]
    np.testing.assert_allclose(zi, d["z_inner"], atol=GRID_CM)
    np.testing.assert_array_equal(hits["layer"][first + d["outer"]], d["outer_layer"])
    ev, inner, outer = d.event_index(), d["inner"], d["outer"]
    key = (ev * 10**6 + inner) * 10**6 + outer
    assert (np.diff(key) > 0).all()  # sorted by (event, inner, outer), no duplicates


def test_empty_events_and_batches():
    for counts in ([0], [0, 0, 0]):
        hits = Collection.from_counts(counts, {c: np.zeros(0, dt) for c, dt in (
            ("x", np.float32), ("y", np.float32), ("z", np.float32), ("layer", np.int32),
            ("size_x", np.int32), ("size_y", np.int32), ("sim_index", np.int32))})
        for name in ("reference", "cpu") + (("cuda",) if cuda_usable() else ()):
            d = run_backend(hits, CFG, name)
            assert d.n_events == len(counts) and d.size == 0


def test_bad_layer_and_missing_column_are_named():
    hits = synthetic_batch(1, 1, 2, 2)["PixelHit"]
    hits.columns["layer"] = hits["layer"].copy()
    hits.columns["layer"][0] = 12
    with pytest.raises(PipelineError, match=r"PixelHit.layer has the value 12; valid .* 0-9"):
        run_backend(hits, CFG, "cpu")
    del hits.columns["size_y"]
    with pytest.raises(PipelineError, match="size_y"):
        run_backend(hits, CFG, "reference")
    hits = synthetic_batch(1, 1, 2, 2)["PixelHit"]
    hits.columns["z"] = hits["z"].copy()
    hits.columns["z"][1] = np.nan
    with pytest.raises(PipelineError, match="PixelHit.z has the value nan cm; .* finite"):
        run_backend(hits, CFG, "cpu")
    hits.columns["z"][1] = 2e3
    with pytest.raises(PipelineError, match=r"PixelHit.z has the value 2000.0 cm; .*\+-1000 cm"):
        run_backend(hits, CFG, "reference")


@pytest.mark.parametrize("change, message", [
    ({"layer_pairs": ((0, 1), (0, 12))}, "not a pair of two different layer ids"),
    ({"layer_pairs": ((0, 1), (0, 1))}, "lists a pair twice"),
    ({"phi_window": (0.1,) * 3}, "phi_window needs 19 entries"),
    ({"phi_window": (2.0,) * 19}, r"phi_window\[0\] = 2.0 rad is not in"),
    ({"inner_z_min": (30.0,) * 19}, r"inner_z_min\[0\] = 30.0 cm > inner_z_max"),
    ({"pt_min": 0.0}, "pt_min must be > 0"),
    ({"n_phi_bins": 0}, "n_phi_bins must be 1-4096"),
])
def test_config_errors(change, message):
    kwargs = dict(change)
    if "layer_pairs" in kwargs:  # keep the per-pair tuples as long as the pairs
        n = len(kwargs["layer_pairs"])
        for name in ("phi_window", "inner_z_min", "inner_z_max", "dr_max"):
            kwargs[name] = getattr(CFG, name)[:n]
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(CFG, **kwargs)


def test_config_toml_round_trip(tmp_path):
    cfg = config_from_dict({"doublets": {"pt_min": 1.2, "n_phi_bins": 64}})
    path = tmp_path / "hlt.toml"
    cfg.save(path)
    back = load_config(path)["doublets"]
    assert back == dataclasses.replace(CFG, pt_min=1.2, n_phi_bins=64)
    assert back.layer_pairs == CFG.layer_pairs
