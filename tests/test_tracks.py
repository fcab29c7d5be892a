"""Stage ``tracks`` (parameterised offline tracking): the random stream against SplitMix64's
published outputs and an independent re-implementation, candidates and impact parameters of
hand-built particles against geometry worked out here, the efficiency decision against an
oracle that predicts every kept particle, the resolution tables against the module's
documented values, the statistics of a large seeded input (pulls, efficiencies), the three
backends on random and Pythia-generated inputs, batch-size independence, bad inputs and configs.

Tolerances: the set of tracks (``sim_index``), ``charge`` and the ``sigma_*`` columns exactly
(an exact decision and exactly rounded arithmetic, :mod:`hltemu.stages.tracks`); ``pt``,
``d0``, ``z0`` within 1e-12 relative plus 1e-12 of the column's largest magnitude, the
agreement the module states (``log``/``cos``/``sin``/``sinh`` may differ in the last bit
between libdevice and the C library; under the CUDA simulator they are bit for bit equal).
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from hltemu.kernels import tracks as K
from ptx_runner import ptx_counts as run_ptx

from hltemu import io
from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError
from hltemu.pipeline import CannotRun, PipelineError, config_from_dict, get_stage, plan
from hltemu.stages.tracks import (
    TRACK_COLUMNS,
    TracksConfig,
    pixel_eta_reach,
    plan_tracks,
    tables,
)

SAMPLE = Path(str(resources.files("hltemu") / "data" / "sample.root"))
RTOL = 1e-12
ATOL_OF_MAX = 1e-12
MASK = 2**64 - 1
GAMMA = 0x9E3779B97F4A7C15
#: No smearing to speak of and every candidate kept: the stage's output is the truth.
EXACT = TracksConfig(efficiency=((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
                     muon_efficiency=((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
                     pt_res_a=(0.0, 0.0, 0.0), pt_res_b=(0.0, 0.0, 0.0),
                     d0_resolution=((1e-9,) * 3,) * 3, z0_resolution=((1e-9,) * 3,) * 3)


# -- inputs -----------------------------------------------------------------------------------
GEN_DTYPES = {"pt": np.float64, "eta": np.float64, "phi": np.float64, "charge": np.int32,
              "status": np.int32, "pdgId": np.int32, "vx": np.float64, "vy": np.float64,
              "vz": np.float64}


def gen_batch(events: list[dict], ids=None, backend="reference") -> EventBatch:
    """A batch of ``GenPart`` (one dict of columns per event; missing columns get defaults:
    status 1, pdgId 211, charge 1, vertex 0) and ``Event`` (``ids``: (run, lumi, event) per
    event, default (1, 1, i + 1))."""
    cols = {}
    for c, dt in GEN_DTYPES.items():
        default = {"status": 1, "pdgId": 211, "charge": 1}.get(c, 0.0)
        cols[c] = np.concatenate(
            [np.broadcast_to(np.asarray(e.get(c, default), dtype=dt),
                             np.shape(e["pt"])) for e in events]).astype(dt) \
            if events else np.zeros(0, dt)
    gen = Collection.from_counts([len(e["pt"]) for e in events], cols)
    ids = ids if ids is not None else [(1, 1, i + 1) for i in range(len(events))]
    ev = Collection.event_level({
        "run": np.array([i[0] for i in ids], dtype=np.uint32),
        "luminosityBlock": np.array([i[1] for i in ids], dtype=np.uint32),
        "event": np.array([i[2] for i in ids], dtype=np.uint64)})
    return EventBatch(get_backend("reference"), len(events),
                      {"GenPart": gen, "Event": ev}).to(backend)


def random_events(seed: int, n_events: int, max_n: int = 40) -> list[dict]:
    """Generator-like particles: every cut's both sides (status, charge, pT, |eta|, production
    radius and z), muons, electrons, photons."""
    rng = np.random.default_rng(seed)
    events = []
    for _ in range(n_events):
        n = int(rng.integers(0, max_n + 1))
        far = rng.random(n) < 0.1
        events.append({
            "pt": rng.exponential(3.0, n) + 0.2, "eta": rng.uniform(-3.0, 3.0, n),
            "phi": rng.uniform(-math.pi, math.pi, n),
            "charge": rng.choice([-1, 0, 1], n, p=[0.4, 0.2, 0.4]),
            "status": rng.choice([1, 2], n, p=[0.9, 0.1]),
            "pdgId": rng.choice([211, -211, 321, 13, -13, 11, 2212, 22], n),
            "vx": np.where(far, rng.uniform(-4, 4, n), rng.normal(0, 0.3, n)),
            "vy": np.where(far, rng.uniform(-4, 4, n), rng.normal(0, 0.3, n)),
            "vz": np.where(rng.random(n) < 0.05, rng.uniform(-40, 40, n), rng.normal(0, 5, n)),
        })
    return events


def run_tracks(batch: EventBatch, cfg: TracksConfig | None = None) -> Collection:
    return get_stage("tracks")(batch, cfg)["tracks"].to_host()


def assert_same_tracks(got: Collection, want: Collection, what: str) -> None:
    np.testing.assert_array_equal(got.offsets, want.offsets, err_msg=f"{what}: offsets")
    assert sorted(got.columns) == sorted(want.columns) == sorted(TRACK_COLUMNS)
    for c in TRACK_COLUMNS:
        x, y = got[c], want[c]
        assert x.dtype == y.dtype, (what, c)
        if c in ("pt", "d0", "z0"):
            scale = float(np.max(np.abs(y), initial=0.0))
            np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL_OF_MAX * scale,
                                       err_msg=f"{what}: {c}")
        else:
            np.testing.assert_array_equal(x, y, err_msg=f"{what}: {c}")


# -- the random stream --------------------------------------------------------------------------
def splitmix64(seed: int, n: int) -> list[int]:
    """The first ``n`` outputs of SplitMix64 seeded with ``seed`` (Vigna's splitmix64.c, written
    again here: add GAMMA to the state, then the finaliser)."""
    out, state = [], seed
    for _ in range(n):
        state = (state + GAMMA) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        out.append(z ^ (z >> 31))
    return out


def oracle_mix(z: int) -> int:
    """SplitMix64's finaliser alone: the output of a generator whose state is ``z - GAMMA``."""
    return splitmix64((z - GAMMA) & MASK, 1)[0]


def oracle_key(seed: int, run: int, lumi: int, event: int) -> int:
    k = oracle_mix(K.SALT ^ seed)
    for x in (run, lumi, event):
        k = oracle_mix(k ^ x)
    return k


def oracle_uniform(key: int, row: int, draw: int) -> float:
    h = splitmix64(key, row * K.N_DRAWS + draw + 1)[-1]
    return ((h >> 11) + 0.5) / 2.0**53


def test_splitmix64_gives_its_known_outputs():
    """The oracle itself: SplitMix64 seeded with 1234567 starts with these outputs (the values
    ports of Vigna's generator check against)."""
    assert splitmix64(1234567, 5) == [6457827717110365317, 3203168211198807973,
                                      9817491932198370423, 4593380528125082431,
                                      16408922859458223821]


def test_stream_is_splitmix64_keyed_by_event_and_particle():
    rng = np.random.default_rng(5)
    for _ in range(20):
        seed, run, lumi = (int(rng.integers(0, 2**32)) for _ in range(3))
        event = int(rng.integers(0, 2**63)) * 2 + 1
        key = K.PY["event_key"](K.seed_key(seed), run, lumi, event)
        assert key == oracle_key(seed, run, lumi, event)
        row, draw = int(rng.integers(0, 10_000)), int(rng.integers(0, K.N_DRAWS))
        u = K.PY["uniform"](key, row, draw)
        assert u == oracle_uniform(key, row, draw)
        assert 0.0 < u < 1.0 and (u * 2.0**53 - 0.5).is_integer()
        # the Numba CPU functions give the same integers and doubles
        assert int(K._CPU["event_key"](np.uint64(K.seed_key(seed)), np.uint64(run),
                                       np.uint64(lumi), np.uint64(event))) == key
        assert K._CPU["uniform"](np.uint64(key), row, draw) == u
    # every identifier, the seed, the row and the draw change the numbers
    base = (K.seed_key(0), 1, 1, 1)
    keys = {K.PY["event_key"](*base), K.PY["event_key"](K.seed_key(1), 1, 1, 1),
            K.PY["event_key"](base[0], 2, 1, 1), K.PY["event_key"](base[0], 1, 2, 1),
            K.PY["event_key"](base[0], 1, 1, 2)}
    assert len(keys) == 5
    k = K.PY["event_key"](*base)
    draws = {K.PY["uniform"](k, r, d) for r in range(50) for d in range(K.N_DRAWS)}
    assert len(draws) == 50 * K.N_DRAWS


def test_gaussians_are_box_muller_of_two_draws():
    key = oracle_key(0, 7, 3, 11)
    for row in range(5):
        u1, u2 = oracle_uniform(key, row, K.DRAW_D0), oracle_uniform(key, row, K.DRAW_D0 + 1)
        want = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
        assert K.PY["gaussian"](key, row, K.DRAW_D0) == pytest.approx(want, rel=1e-15)


# -- candidates, impact parameters, resolutions ---------------------------------------------------
def test_candidates_on_both_sides_of_every_cut():
    """Particles on each side of each rule; with every efficiency 1 the candidates are the
    tracks (boundaries: pT = pt_min kept, |eta| = eta_max, r = r_max and |vz| = z_max not)."""
    cases = [  # (pt, eta, vx, vy, vz, charge, status, kept)
        (1.0, 0.0, 0.0, 0.0, 0.0, 1, 1, True),
        (1.0, 0.0, 0.0, 0.0, 0.0, 0, 1, False),  # neutral
        (1.0, 0.0, 0.0, 0.0, 0.0, -1, 2, False),  # not final state
        (0.5, 0.0, 0.0, 0.0, 0.0, -1, 1, True),  # pT = pt_min
        (0.4999, 0.0, 0.0, 0.0, 0.0, 1, 1, False),
        (1.0, 2.4999, 0.0, 0.0, 0.0, 1, 1, True),
        (1.0, -2.5, 0.0, 0.0, 0.0, 1, 1, False),  # |eta| = eta_max
        (1.0, 0.0, 1.5, 1.9, 0.0, 1, 1, True),  # r = 2.42 cm
        (1.0, 0.0, 1.5, 2.0, 0.0, 1, 1, False),  # r = 2.5 cm
        (1.0, 0.0, 0.0, 0.0, -29.9, 1, 1, True),
        (1.0, 0.0, 0.0, 0.0, 30.0, 1, 1, False),  # |vz| = z_max
        (50.0, 1.0, 0.0, 0.0, 0.0, 2, 1, True),  # |charge| 2
    ]
    cols = {k: np.array([c[i] for c in cases]) for i, k in
            enumerate(("pt", "eta", "vx", "vy", "vz", "charge", "status"))}
    cols["phi"] = np.zeros(len(cases))
    want = [i for i, c in enumerate(cases) if c[-1]]
    for b in ("reference", "cpu", "cuda"):
        got = run_tracks(gen_batch([cols], backend=b), EXACT)
        assert got["sim_index"].tolist() == want, b
        np.testing.assert_array_equal(got["charge"], cols["charge"][want])
        np.testing.assert_allclose(got["pt"], cols["pt"][want], rtol=1e-15)


def test_impact_parameters_of_known_geometry():
    """Straight lines whose closest approach to the beam line is worked out here: produced at
    (x, y) with direction phi, the line's point of closest approach is (x, y) - ((x, y) . u) u
    (u the unit direction); d0 is its distance, signed as the z component of (x, y) x u (CMS's
    d0()), and z0 the z there, the vertex's minus the transverse path back times
    pz / pT = sinh(eta).  With every efficiency 1 and resolutions of 1e-9 um."""
    rng = np.random.default_rng(3)
    n = 200
    r = rng.uniform(0.0, 2.4, n)
    a = rng.uniform(-math.pi, math.pi, n)
    x, y = r * np.cos(a), r * np.sin(a)
    phi, eta, z = rng.uniform(-math.pi, math.pi, n), rng.uniform(-2.4, 2.4, n), rng.normal(0, 5, n)
    cols = {"pt": rng.uniform(1, 50, n), "eta": eta, "phi": phi, "vx": x, "vy": y, "vz": z}
    ux, uy = np.cos(phi), np.sin(phi)
    s = x * ux + y * uy  # signed transverse path from the closest approach to the vertex
    px, py = x - s * ux, y - s * uy
    want_d0 = np.hypot(px, py) * np.sign(x * uy - y * ux)
    want_z0 = z - s * np.sinh(eta)  # dz/ds_T = pz/pT = sinh(eta)
    # four by hand: produced 1 cm from the beam line, moving across it or along the radius
    cols["vx"][:4] = [1.0, 1.0, 0.0, 1.0]
    cols["vy"][:4] = [0.0, 0.0, 1.0, 0.0]
    cols["phi"][:4] = [math.pi / 2, -math.pi / 2, 0.0, 0.0]
    cols["eta"][:4] = [0.0, 0.0, 1.0, 1.0]
    cols["vz"][:4] = [2.0, 2.0, 2.0, 2.0]
    want_d0[:4] = [1.0, -1.0, -1.0, 0.0]
    want_z0[:4] = [2.0, 2.0, 2.0, 2.0 - math.sinh(1.0)]
    for b in ("reference", "cpu", "cuda"):
        got = run_tracks(gen_batch([cols], backend=b), EXACT)
        assert got["sim_index"].tolist() == list(range(n)), b
        np.testing.assert_allclose(got["d0"], want_d0, rtol=0, atol=1e-12, err_msg=b)
        np.testing.assert_allclose(got["z0"], want_z0, rtol=0, atol=1e-11, err_msg=b)


def test_resolutions_are_the_documented_values():
    """sigma_pt/pt = a (+) b pT, and d0/z0 at the table's nodes and as the module's docstring
    states between and below them (at 0.5 GeV: 138, 172, 300 um for d0, 193, 362, 1289 for
    z0)."""
    cfg = TracksConfig()
    tab = tables(cfg)

    def res(pt, eta):
        return K.PY["resolutions"](pt, eta, *tables(cfg)[5:])

    for j, eta in enumerate((0.3, 1.2, 2.0)):
        for pt in (0.5, 1.0, 10.0, 100.0, 500.0):
            a, b = cfg.pt_res_a[j], cfg.pt_res_b[j]
            assert res(pt, eta)[0] / pt == pytest.approx(math.hypot(a, b * pt), rel=1e-15)
        for k, pt in enumerate(cfg.ip_pt_nodes):
            _, d0, z0 = res(pt, -eta)
            assert d0 == pytest.approx(cfg.d0_resolution[j][k] * 1e-4, rel=1e-14)
            assert z0 == pytest.approx(cfg.z0_resolution[j][k] * 1e-4, rel=1e-14)
        assert res(1000.0, eta)[1] == res(100.0, eta)[1]  # constant above the first node
        # linear in 1/pT: 20 GeV lies 4/9 of the way from 100 to 10 GeV
        d100, d10 = cfg.d0_resolution[j][0], cfg.d0_resolution[j][1]
        assert res(20.0, eta)[1] == pytest.approx((d100 + (d10 - d100) * 4 / 9) * 1e-4,
                                                  rel=1e-12)
    assert [round(res(0.5, eta)[1] * 1e4) for eta in (0.3, 1.2, 2.0)] == [138, 172, 300]
    assert [round(res(0.5, eta)[2] * 1e4) for eta in (0.3, 1.2, 2.0)] == [193, 362, 1289]
    assert tab.ip_nodes.tolist() == [0.01, 0.1, 1.0]


def test_efficiency_decision_is_predicted_exactly():
    """Every candidate is kept exactly when its oracle draw is below its bin's efficiency
    (muons: their table); on random inputs with every cut's both sides, all three backends."""
    cfg = TracksConfig()
    events = random_events(11, 30)
    ids = [(7, 3, 1000 + i) for i in range(len(events))]
    want = []
    for e, ev in enumerate(events):
        key = oracle_key(cfg.seed, *ids[e])
        for r in range(len(ev["pt"])):
            pt, eta = ev["pt"][r], ev["eta"][r]
            cand = (ev["status"][r] == 1 and ev["charge"][r] != 0 and pt >= cfg.pt_min
                    and abs(eta) < cfg.eta_max and ev["vx"][r] ** 2 + ev["vy"][r] ** 2 < 6.25
                    and abs(ev["vz"][r]) < cfg.z_max)
            if not cand:
                continue
            table = cfg.muon_efficiency if abs(ev["pdgId"][r]) == 13 else cfg.efficiency
            i = int(pt >= 0.9)
            j = int(abs(eta) >= 0.9) + int(abs(eta) >= 1.5)
            if oracle_uniform(key, r, K.DRAW_EFFICIENCY) < table[i][j]:
                want.append((e, r))
    assert 100 < len(want) < 600
    for b in ("reference", "cpu", "cuda"):
        got = run_tracks(gen_batch(events, ids, backend=b))
        ev_of = np.repeat(np.arange(got.n_events), np.diff(got.offsets))
        assert list(zip(ev_of.tolist(), got["sim_index"].tolist(), strict=True)) == want, b


# -- statistics on a large seeded input ---------------------------------------------------------
@pytest.fixture(scope="module")
def large():
    """200,000 particles in 2,000 events (cpu): the inputs, the tracks and each track's truth."""
    rng = np.random.default_rng(2024)
    n_ev, per = 2000, 100
    n = n_ev * per
    cols = {"pt": np.exp(rng.uniform(math.log(0.4), math.log(200.0), n)),
            "eta": rng.uniform(-2.6, 2.6, n), "phi": rng.uniform(-math.pi, math.pi, n),
            "charge": rng.choice([-1, 1], n), "status": np.ones(n, np.int32),
            "pdgId": rng.choice([211, 13], n, p=[0.8, 0.2]),
            "vx": rng.normal(0, 0.01, n), "vy": rng.normal(0, 0.01, n), "vz": rng.normal(0, 4, n)}
    events = [{k: v[i * per:(i + 1) * per] for k, v in cols.items()} for i in range(n_ev)]
    got = run_tracks(gen_batch(events, [(9, 1, i) for i in range(n_ev)], backend="cpu"))
    row = np.repeat(np.arange(n_ev) * per, np.diff(got.offsets)) + got["sim_index"]
    return cols, got, row


def test_pulls_have_mean_0_and_width_1(large):
    cols, got, row = large
    n = got.size
    assert n > 100_000
    q, pt = cols["charge"][row], cols["pt"][row]
    eta, phi = cols["eta"][row], cols["phi"][row]
    x, y, z = cols["vx"][row], cols["vy"][row], cols["vz"][row]
    d0 = x * np.sin(phi) - y * np.cos(phi)
    z0 = z - (x * np.cos(phi) + y * np.sin(phi)) * np.sinh(eta)
    kappa = got["charge"] / got["pt"]
    pulls = {"q/pt": (kappa - q / pt) / (got["sigma_pt"] / pt / pt),
             "d0": (got["d0"] - d0) / got["sigma_d0"],
             "z0": (got["z0"] - z0) / got["sigma_z0"]}
    # pT = 1 / |q/pT|: its pull (pT' - pT) / sigma_pt = -g + r g^2 - ... (r = sigma_pt / pT)
    # has mean r (+ O(r^3)); where r < 2% it is otherwise Gaussian to ~2%
    rel = got["sigma_pt"] / pt
    low = rel < 0.02
    pulls["pt"] = ((got["pt"] - pt) / got["sigma_pt"])[low]
    bias = {"pt": rel[low].mean()}
    for name, p in pulls.items():
        m = p.size
        assert abs(p.mean() - bias.get(name, 0.0)) < 5 / math.sqrt(m), (name, p.mean())
        assert abs(p.std() - 1) < 5 / math.sqrt(2 * m), (name, p.std())
        # Gaussian tails: 4.55% beyond 2 sigma
        frac = np.mean(np.abs(p) > 2)
        assert abs(frac - 0.0455) < 5 * math.sqrt(0.0455 * 0.9545 / m), (name, frac)
    # the sigmas are those of the true pT and eta
    cfg = TracksConfig()
    want = [K.PY["resolutions"](pt[i], eta[i], *tables(cfg)[5:]) for i in range(0, n, 997)]
    np.testing.assert_array_equal(np.array(want)[:, 1], got["sigma_d0"][::997])
    # charge flips where the curvature changes sign: rare, only where sigma/pt is large
    flipped = got["charge"] != q
    assert flipped.sum() < 20 and (got["sigma_pt"][flipped] / pt[flipped] > 0.1).all()


def test_efficiency_matches_the_table_within_binomial_errors(large):
    cols, got, row = large
    cfg = TracksConfig()
    kept = np.zeros(cols["pt"].size, bool)
    kept[row] = True
    pt, aeta, muon = cols["pt"], np.abs(cols["eta"]), cols["pdgId"] == 13
    cand = (pt >= cfg.pt_min) & (aeta < cfg.eta_max)
    assert kept[~cand].sum() == 0
    i = (pt >= 0.9).astype(int)
    j = (aeta >= 0.9).astype(int) + (aeta >= 1.5)
    for is_mu, table in ((False, cfg.efficiency), (True, cfg.muon_efficiency)):
        for a in range(2):
            for b in range(3):
                sel = cand & (i == a) & (j == b) & (muon == is_mu)
                m, e = int(sel.sum()), table[a][b]
                assert m > 500
                assert abs(kept[sel].mean() - e) < 5 * math.sqrt(e * (1 - e) / m), \
                    (is_mu, a, b, kept[sel].mean(), e)


# -- backends, Pythia inputs, batches -------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_backends_agree_on_random_events(seed):
    events = random_events(100 + seed, 8)
    ids = [(seed, 2, 10 * i + 1) for i in range(len(events))]
    ref = run_tracks(gen_batch(events, ids))
    assert ref.size > 10
    for b in ("cpu", "cuda"):
        assert_same_tracks(run_tracks(gen_batch(events, ids, backend=b)), ref, b)


@pytest.fixture(scope="module")
def sample_batch() -> EventBatch:
    """The built-in sample's 10 events (ttbar, pileup 50): GenPart and Event."""
    if not SAMPLE.is_file():
        pytest.skip(f"built-in sample {SAMPLE} missing")
    return next(io.iterate_batches([str(SAMPLE)], ["GenPart", "Event"], batch_size=10))


def test_backends_agree_on_pythia_events(sample_batch):
    """cpu on the 10 events, cuda (the simulator) on the two smallest, against the reference."""
    ref = run_tracks(sample_batch)
    assert ref.size > 4000 and (np.diff(ref.offsets) > 300).all()
    assert_same_tracks(run_tracks(sample_batch.to("cpu")), ref, "cpu")
    gen = sample_batch["GenPart"]
    two = np.argsort(np.diff(gen.offsets))[:2]
    sub = EventBatch(sample_batch.backend, 2, {
        n: _pick(sample_batch[n], two) for n in ("GenPart", "Event")})
    assert_same_tracks(run_tracks(sub.to("cuda")), run_tracks(sub), "cuda")


def _pick(coll: Collection, events) -> Collection:
    rows = np.concatenate([np.arange(coll.offsets[e], coll.offsets[e + 1]) for e in events])
    return Collection.from_counts(np.diff(coll.offsets)[events],
                                  {k: v[rows] for k, v in coll.columns.items()}) \
        if not coll.per_event else Collection.event_level(
            {k: v[rows] for k, v in coll.columns.items()})


def test_pythia_tracks_look_like_tracks(sample_batch):
    """On ttbar at pileup 50: every track a final-state charged GenPart in the acceptance, the
    fraction of candidates kept the table's mean over them (0.75: most are soft pileup
    particles) within binomial errors, and the hard scatter's tracks with d0 of tens of um."""
    got = run_tracks(sample_batch.to("cpu"))
    gen = sample_batch["GenPart"]
    row = np.repeat(gen.offsets[:-1], np.diff(got.offsets)) + got["sim_index"]
    assert (gen["status"][row] == 1).all() and (gen["charge"][row] != 0).all()
    assert (np.abs(gen["eta"][row]) < 2.5).all() and (gen["pt"][row] >= 0.5).all()
    cand = ((gen["status"] == 1) & (gen["charge"] != 0) & (gen["pt"] >= 0.5)
            & (np.abs(gen["eta"]) < 2.5)
            & (gen["vx"].astype(float) ** 2 + gen["vy"].astype(float) ** 2 < 6.25)
            & (np.abs(gen["vz"]) < 30))
    cfg = TracksConfig()
    pt, aeta = gen["pt"][cand], np.abs(gen["eta"][cand])
    i, j = (pt >= 0.9).astype(int), (aeta >= 0.9).astype(int) + (aeta >= 1.5)
    eff = np.where(np.abs(gen["pdgId"][cand]) == 13, np.array(cfg.muon_efficiency)[i, j],
                   np.array(cfg.efficiency)[i, j])
    n, want = int(cand.sum()), eff.mean()
    assert abs(got.size / n - want) < 5 * math.sqrt(want * (1 - want) / n)
    assert 0.7 < want < 0.8
    hard = gen["vertex"][row] == 0
    assert np.median(np.abs(got["d0"][hard])) < 0.01


def test_results_do_not_depend_on_the_batch(sample_batch):
    """The same events in batches of 1 and of 10 give the same tracks (cpu), and so does each
    event read on its own into the reference."""
    whole = run_tracks(sample_batch.to("cpu"))
    for e in (0, 7):
        one = EventBatch(sample_batch.backend, 1, {
            n: sample_batch[n].select_events(e, e + 1) for n in ("GenPart", "Event")})
        for b in ("reference", "cpu"):
            got = run_tracks(one.to(b))
            lo, hi = whole.offsets[e], whole.offsets[e + 1]
            for c in TRACK_COLUMNS:
                np.testing.assert_array_equal(got[c], whole[c][lo:hi], err_msg=f"{b} {c}")


def test_the_seed_and_the_event_identifiers_change_the_draws():
    ev = random_events(4, 1, 40)
    base = run_tracks(gen_batch(ev, [(1, 1, 1)]), TracksConfig())
    other_seed = run_tracks(gen_batch(ev, [(1, 1, 1)]), TracksConfig(seed=1))
    other_event = run_tracks(gen_batch(ev, [(1, 1, 2)]))
    same = run_tracks(gen_batch(ev, [(1, 1, 1)]))
    assert_same_tracks(same, base, "same")
    for o in (other_seed, other_event):
        assert o.size != base.size or not np.array_equal(o["d0"], base["d0"])


def test_empty_batches_and_events():
    for b in ("reference", "cpu", "cuda"):
        assert run_tracks(gen_batch([], backend=b)).size == 0
        got = run_tracks(gen_batch([{"pt": []}, {"pt": []}], backend=b))
        assert got.n_events == 2 and got.size == 0
        assert got["sim_index"].dtype == np.int32 and got["charge"].dtype == np.int32


# -- the planner, bad inputs and configs ----------------------------------------------------------
def test_eta_reach_of_the_toy_pixel_detector():
    """3 pixel layers up to asinh(39.6 / 4.5) (second disk, inner ring), as documented."""
    assert pixel_eta_reach() == pytest.approx(math.asinh(39.6 / 4.5), abs=1e-12)
    assert pixel_eta_reach() == pytest.approx(2.871, abs=5e-4)
    assert pixel_eta_reach(min_layers=1) == pytest.approx(math.asinh(51.6 / 4.5), abs=1e-12)
    with pytest.raises(ConfigError, match=r"eta_max = 2.9 is beyond \|eta\| = 2.871"):
        plan_tracks(TracksConfig(eta_max=2.9), frozenset({"GenPart", "Event"}))


def test_nanoaod_genpart_is_refused_with_the_reason():
    p = plan(None, ["GenPart", "GenJet", "Event"])
    assert "tracks" in p.skipped and "vertices" in p.skipped  # not in the default chain
    with pytest.raises(CannotRun, match="pruned generator record.*cannot make tracks"):
        plan(["tracks", "vertices"], ["GenPart", "GenJet", "Event"])
    with pytest.raises(CannotRun, match="stage 'tracks': the input's 'GenPart' is CMS NanoAOD"):
        plan(["tracks"], ["GenPart", "GenJet", "Event"])
    nano = {"pt": [5.0], "eta": [0.1], "phi": [0.2], "charge": [1], "status": [1],
            "pdgId": [211], "statusFlags": [0], "genPartIdxMother": [-1]}
    gen = Collection.from_counts([1], {k: np.asarray(v) for k, v in nano.items()})
    batch = gen_batch([{"pt": [1.0]}])
    batch.add("GenPart", gen)
    with pytest.raises(PipelineError, match=r"^stage 'tracks': collection 'GenPart' is CMS "
                                            r"NanoAOD's pruned generator record .*no 'vx', "
                                            r"'vy', 'vz'.*cannot make tracks"):
        run_tracks(batch)


@pytest.mark.parametrize("b", ["reference", "cpu", "cuda"])
def test_bad_inputs_are_named(b):
    good = {"pt": [1.0, 2.0], "eta": [0.1, 0.2], "phi": [0.0, 1.0]}
    batch = gen_batch([good])
    del batch["GenPart"].columns["vz"]
    with pytest.raises(PipelineError, match=r"^stage 'tracks' needs column 'vz' in collection "
                                            r"'GenPart'; it has \["):
        run_tracks(batch.to(b))
    batch = gen_batch([dict(good, vx=[0.0, np.nan])])
    with pytest.raises(PipelineError, match=r"collection 'GenPart' column 'vx' has a non-finite "
                                            r"value nan at row 1"):
        run_tracks(batch.to(b))
    batch = gen_batch([good])
    batch["GenPart"].columns["charge"] = np.array([1.0, -1.0])
    with pytest.raises(PipelineError, match=r"GenPart.charge must be integers, got dtype "
                                            r"float64"):
        run_tracks(batch.to(b))
    batch = gen_batch([good])
    del batch["Event"].columns["luminosityBlock"]
    with pytest.raises(PipelineError, match=r"needs column 'luminosityBlock' in collection "
                                            r"'Event' \(the event identifiers"):
        run_tracks(batch.to(b))
    batch = gen_batch([good])
    del batch.collections["Event"]
    with pytest.raises(PipelineError, match=r"needs collection\(s\) \['Event'\]"):
        run_tracks(batch.to(b))


def test_config_errors():
    assert config_from_dict({"tracks": {"efficiency": [[1, 1, 1], [0.5, 0.5, 0.5]]}})[
        "tracks"].efficiency == ((1, 1, 1), (0.5, 0.5, 0.5))
    bad = [({"efficiency": [[0.9, 0.9], [0.9, 0.9]]}, r"efficiency must be 2 x 3"),
           ({"muon_efficiency": [[1.1, 1, 1], [1, 1, 1]]}, r"muon_efficiency values must lie "
                                                           r"in \[0, 1\]"),
           ({"eff_eta_edges": [1.5, 0.9]}, "eff_eta_edges must be finite and ascending"),
           ({"ip_pt_nodes": [1.0, 10.0, 100.0]}, "ip_pt_nodes must be pT values > 0 GeV in "
                                                 "descending order"),
           ({"d0_resolution": [[1, 2], [1, 2], [1, 2]]}, r"d0_resolution must be 3 x 3"),
           ({"z0_resolution": [[1, 2, 0], [1, 2, 3], [1, 2, 3]]}, "z0_resolution values must "
                                                                  "be > 0 um"),
           ({"pt_res_b": [1e-4, 1e-4]}, r"pt_res_b must be 1 x 3"),
           ({"pt_min": 0.0}, r"pt_min must be a finite number > 0"),
           ({"seed": -1}, r"seed must be an integer in 0 \.\. 2\^64 - 1")]
    for table, msg in bad:
        with pytest.raises(ConfigError, match=r"\[tracks\].*" + msg):
            config_from_dict({"tracks": table})


# -- no FMA where the backends must agree bit for bit --------------------------------------------
_PTX_SCRIPT = """
import json, re, types
import numba.cuda.dispatcher as dispatcher
from numba import cuda
from numba import types as nt
if not cuda.is_available():
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))
from hltemu.kernels import tracks as K
f8, i4 = nt.float64, nt.int32
a, a2 = f8[::1], f8[:, ::1]
sigs = {"candidate": (i4, i4, f8, f8, f8, f8, f8, a),
        "resolutions": (f8, f8, a, a, a, a, a, a2, a2, a2, a2)}
out = {}
for name, sig in sigs.items():
    ptx = cuda.compile_ptx(K._CUDA[name].py_func, sig, device=True, cc=(9, 0))[0]
    out[name] = {k: len(re.findall(k, ptx)) for k in (r"\\bfma\\.rn\\.f64", r"\\bmul\\.rn\\.f64")}
print("PTX-COUNTS " + json.dumps(out))
"""


def test_cuda_decisions_and_sigmas_have_no_fma():
    """The candidate test and the resolutions compiled for sm_90 (in a process without the
    simulator; NVVM, no GPU): exactly rounded products, no fused multiply-add, so a GPU keeps
    the same candidates and reports the reference's sigma bits."""

    for name, c in run_ptx(["-c", _PTX_SCRIPT]).items():
        assert c[r"\bfma\.rn\.f64"] == 0 and c[r"\bmul\.rn\.f64"] >= 2, (name, c)
