"""Stage ``vertices`` (primary vertex from track z0): a hand-built event with its vertices and
associations worked out here, the reference against an independent NumPy oracle (sort, gaps,
masked sums) on random tracks, the three backends bit for bit on random tracks and on the
tracks of Pythia events, the primary vertex of the built-in ttbar sample against its true
hard-scatter vertex, bad inputs and configs.

Tolerances: given the same tracks every backend gives the same bits (tolerance 0: the same
comparisons, the same sums in the same order, :mod:`hltemu.stages.vertices`).  The oracle adds
with ``np.sum`` in its own order: its vertex positions and sums agree to 1e-12 relative, its
discrete results (vertices, their order, n_tracks, associations) exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from collection_asserts import assert_collections_identical, one_collection_batch
from pythia_inputs import SAMPLE

from hltemu import io
from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError
from hltemu.pipeline import PipelineError, config_from_dict, get_stage
from hltemu.stages.vertices import VerticesConfig

TRACK_DEFAULTS = {"pt": 1.0, "eta": 0.0, "phi": 0.0, "d0": 0.0, "z0": 0.0, "sigma_d0": 0.01,
                  "sigma_z0": 0.01}


def track_batch(events: list[dict], backend: str = "reference") -> EventBatch:
    """A batch holding only ``tracks`` (one dict of columns per event; defaults above)."""
    return one_collection_batch("tracks", events, TRACK_DEFAULTS, backend)


def run_vertices(batch: EventBatch, cfg: VerticesConfig | None = None
                 ) -> tuple[Collection, Collection]:
    out = get_stage("vertices")(batch, cfg)
    return out["vertices"].to_host(), out["track_pv"].to_host()


def random_tracks(seed: int, n_events: int, n_vertices: int = 6, max_per: int = 12
                  ) -> list[dict]:
    """Tracks from a few vertices spread over a few cm (gaps near z_separation), with
    displaced, badly measured and soft tracks, and exact ties in z0."""
    rng = np.random.default_rng(seed)
    events = []
    for _ in range(n_events):
        zv = rng.normal(0.0, 1.0, rng.integers(0, n_vertices + 1))
        per = rng.integers(1, max_per + 1, zv.size)
        z_true = np.repeat(zv, per)
        n = z_true.size
        sz = rng.uniform(0.002, 0.06, n)
        sz[rng.random(n) < 0.05] = rng.uniform(1.0, 2.0)  # too badly measured
        sd = rng.uniform(0.001, 0.03, n)
        d0 = rng.normal(0, sd)
        d0[rng.random(n) < 0.1] = rng.uniform(-1.0, 1.0)  # displaced
        z0 = np.round(rng.normal(z_true, sz), 3)  # 10 um steps: exact ties happen
        # a few directions per event, so that track jets have several tracks or one
        axes = rng.uniform(-np.pi, np.pi, (3, 2)) * [0.8, 1.0]
        axis = axes[rng.integers(0, 3, n)]
        events.append({"pt": rng.exponential(2.0, n) + 0.1, "d0": d0, "z0": z0,
                       "sigma_d0": sd, "sigma_z0": sz,
                       "eta": axis[:, 0] + rng.normal(0, 0.3, n),
                       "phi": (axis[:, 1] + rng.normal(0, 0.3, n) + np.pi) % (2 * np.pi) - np.pi})
    return events


# -- an event worked out by hand -----------------------------------------------------------------
def test_a_hand_built_event():
    """With z_separation 0.1 cm, tracks (z0 [cm], pT [GeV]): a cluster at z ~ 0 of three
    (0.00, 0.05, 0.02; pT 1, 1, 2) and, 0.1 cm from it (not more: a gap is > z_separation), a
    fourth at 0.15 (pT 1); a second cluster at 1.00, 1.04 (pT 5, 1) with twice the first's
    sigma on 1.04; a lone track at 3.0 (no vertex: min_tracks 2); a displaced track at 0.01
    (d0 0.05 = 5 sigma_d0: not selected); a track at 1.02 with sigma_z0 1.5 cm (not
    selected).  With a fit window wide enough to keep every track (fit_sigmas 1e9), vertices:
    the second (sum pT^2 26) first, z = (1.00 w + 1.04 w/4) / (5 w / 4) = 1.008; then the
    first (sum pT^2 7, z = mean 0.055 of equal sigmas).  Every track points along eta = phi =
    0, so each vertex's tracks make one track jet: scores (sum of pT)^2 = 36 and 25.
    test_the_trimmed_fit has the default window."""
    ev = {"z0": [0.00, 0.05, 0.02, 0.15, 1.00, 1.04, 3.0, 0.01, 1.02],
          "pt": [1.0, 1.0, 2.0, 1.0, 5.0, 1.0, 9.0, 1.0, 1.0],
          "sigma_z0": [0.01, 0.01, 0.01, 0.01, 0.01, 0.02, 0.01, 0.01, 1.5],
          "d0": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.0]}
    cfg = VerticesConfig(z_separation=0.1, fit_sigmas=1e9)
    for b in ("reference", "cpu", "cuda"):
        v, a = run_vertices(track_batch([ev, {"z0": []}], b), cfg)
        assert v.counts.tolist() == [2, 0] and a.counts.tolist() == [9, 0], b
        np.testing.assert_allclose(v["z"], [1.008, 0.055], rtol=1e-14, err_msg=b)
        w = 1 / 0.01**2
        np.testing.assert_allclose(v["z_error"], [1 / math.sqrt(1.25 * w), 1 / math.sqrt(4 * w)],
                                   rtol=1e-14)
        assert v["n_tracks"].tolist() == [2, 4] and v["sum_pt2"].tolist() == [26.0, 7.0]
        np.testing.assert_allclose(v["score"], [36.0, 25.0], rtol=1e-14, err_msg=b)
        assert a["vertex"].tolist() == [1, 1, 1, 1, 0, 0, -1, -1, -1], b
        # |z0 - 1.008| < 3 sigma_z0: 1.00 (0.8 sigma), 1.04 (1.6 sigma of 0.02), 1.02 (sigma 1.5)
        assert a["pv"].tolist() == [False, False, False, False, True, True, False, False, True]
        assert v["n_tracks"].dtype == np.int32 and a["vertex"].dtype == np.int32
        assert a["pv"].dtype == bool
    # a smaller z_separation splits the first cluster at its 0.1 gap: 3 + 1 tracks
    v, a = run_vertices(track_batch([ev]), VerticesConfig(z_separation=0.09, fit_sigmas=1e9))
    assert v["n_tracks"].tolist() == [2, 3] and a["vertex"].tolist()[:4] == [1, 1, 1, -1]
    # min_tracks 1 makes the lone track a vertex, and the largest sum pT^2 (81)
    v, _ = run_vertices(track_batch([ev]), VerticesConfig(z_separation=0.1, min_tracks=1,
                                                          fit_sigmas=1e9))
    assert v["z"][0] == pytest.approx(3.0, rel=1e-15) and v["sum_pt2"].tolist() == [81.0, 26.0, 7.0]


def test_the_ranking_by_track_jets():
    """Vertex A at z = 0: tracks of 6 and 1 GeV back to back (sum pT^2 37; two track jets, 36 +
    1 = 37).  Vertex B at z = 1: four 3 GeV tracks at one phi, 0.1 apart in eta (sum pT^2 36;
    one track jet of 12 GeV: 144).  Track jets make B the primary vertex; sum_pt2 makes A it;
    so do track jets of radius 0.05, which leave B's four tracks apart (4 x 9 = 36)."""
    ev = {"z0": [0.0, 0.001, 1.0, 1.001, 1.002, 1.003], "pt": [6.0, 1.0, 3.0, 3.0, 3.0, 3.0],
          "eta": [0.5, -0.5, 1.0, 1.1, 1.2, 1.3], "phi": [0.0, 3.0, 2.0, 2.0, 2.0, 2.0]}
    for b in ("reference", "cpu", "cuda"):
        v, a = run_vertices(track_batch([ev], b))
        assert v["z"].tolist()[0] == pytest.approx(1.0015) and a["pv"].tolist()[2:] == [True] * 4
        np.testing.assert_allclose(v["score"], [144.0, 37.0], rtol=1e-12, err_msg=b)
        np.testing.assert_allclose(v["sum_pt2"], [36.0, 37.0], rtol=1e-14, err_msg=b)
        for cfg in (VerticesConfig(ranking="sum_pt2"), VerticesConfig(track_jet_radius=0.05)):
            v, a = run_vertices(track_batch([ev], b), cfg)
            assert v["z"].tolist()[0] == pytest.approx(0.0005), (b, cfg)
            assert a["pv"].tolist() == [True, True] + [False] * 4, (b, cfg)


def test_the_trimmed_fit():
    """The default fit (3 sigma_z0) on the event above: the first cluster (z0 0.00, 0.02,
    0.05, 0.15, sigma 0.01) starts at its weighted median 0.02 (the second of four equal
    weights reaches half the sum), keeps 0.00 and 0.02 (0.05 is 0.03 + 2e-18 away, outside),
    refits to 0.01, keeps the same two: z = 0.01, two tracks, sum pT^2 1 + 4.  The second
    cluster keeps both its tracks (1.04 is 1.6 sigma from 1.008).  A cluster of two tracks 1 mm
    apart with sigma 0.1 mm keeps only the better measured track after its median: with
    min_tracks 2 it is no vertex, with min_tracks 1 a vertex of one track.  Every track of a
    cluster keeps its vertex row; n_tracks counts those in the fit."""
    ev = {"z0": [0.00, 0.05, 0.02, 0.15, 1.00, 1.04, 3.0, 3.1],
          "pt": [1.0, 1.0, 2.0, 1.0, 5.0, 1.0, 1.0, 1.0],
          "sigma_z0": [0.01, 0.01, 0.01, 0.01, 0.01, 0.02, 0.01, 0.02]}
    cfg = VerticesConfig(z_separation=0.11)
    for b in ("reference", "cpu", "cuda"):
        v, a = run_vertices(track_batch([ev], b), cfg)
        np.testing.assert_allclose(v["z"], [1.008, 0.01], rtol=1e-14, err_msg=b)
        assert v["n_tracks"].tolist() == [2, 2] and v["sum_pt2"].tolist() == [26.0, 5.0], b
        np.testing.assert_allclose(v["score"], [36.0, 9.0], rtol=1e-14, err_msg=b)
        assert a["vertex"].tolist() == [1, 1, 1, 1, 0, 0, -1, -1], b
        v, a = run_vertices(track_batch([ev], b), VerticesConfig(z_separation=0.11,
                                                                  min_tracks=1))
        assert v["z"].tolist()[2] == 3.0 and v["n_tracks"].tolist() == [2, 2, 1], b
        assert a["vertex"].tolist()[-2:] == [2, 2], b
    # one refit at most: the median's neighbours, without the second pass
    v, _ = run_vertices(track_batch([ev]), VerticesConfig(z_separation=0.11, fit_iterations=1))
    np.testing.assert_allclose(v["z"], [1.008, 0.01], rtol=1e-14)


def test_ties_in_z0_and_sum_pt2():
    """Equal z0 are taken in row order; equal sum pT^2 leave the lower z first."""
    ev = {"z0": [2.0, -1.0, 2.0, -1.0], "pt": [1.0, 1.0, 1.0, 1.0],
          "sigma_z0": [0.01, 0.02, 0.03, 0.04]}
    for b in ("reference", "cpu", "cuda"):
        v, a = run_vertices(track_batch([ev], b))
        assert v["z"].tolist() == [-1.0, 2.0] and a["vertex"].tolist() == [1, 0, 1, 0], b
        assert a["pv"].tolist() == [False, True, False, True]


# -- the oracle ----------------------------------------------------------------------------------
def trimmed_fit(z0: np.ndarray, sz: np.ndarray, pt: np.ndarray, cfg: VerticesConfig
                ) -> tuple[float, float, int, float, np.ndarray]:
    """One cluster's fit (tracks in ascending z0): sum of w, z, n, sum pT^2 and the mask of
    the tracks within fit_sigmas sigma_z0 of z, from the weighted median until z stays."""
    w = 1 / sz**2
    cw = np.cumsum(w)
    z = z0[np.searchsorted(cw, 0.5 * cw[-1])]
    for _ in range(cfg.fit_iterations):
        keep = np.abs(z0 - z) < cfg.fit_sigmas * sz
        z, previous = np.sum(w[keep] * z0[keep]) / np.sum(w[keep]), z
        if z == previous:
            break
    return np.sum(w[keep]), z, int(keep.sum()), np.sum(pt[keep] ** 2), keep


def fastjet_score(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, radius: float) -> float:
    """Sum of pT^2 [GeV^2] of FastJet's anti-kT jets of massless tracks."""
    fastjet = pytest.importorskip("fastjet")
    parts = [fastjet.PseudoJet(*(float(x) for x in (p * np.cos(f), p * np.sin(f),
                                                     p * np.sinh(e), p * np.cosh(e))))
             for p, e, f in zip(pt, eta, phi, strict=True)]
    jets = fastjet.ClusterSequence(parts, fastjet.JetDefinition(fastjet.antikt_algorithm,
                                                                radius)).inclusive_jets()
    return float(sum(j.pt() ** 2 for j in jets))


def oracle(events: list[dict], cfg: VerticesConfig) -> list[tuple[np.ndarray, ...]]:
    """Per event: (z, z_error, n_tracks, sum_pt2, score) of its vertices in PV-first order,
    each track's vertex row and PV association, with NumPy's sort, diff, cumsum and masks and
    FastJet's track jets."""
    out = []
    for ev in events:
        pt, eta, phi, d0, z0, sd, sz = (np.asarray(ev[c], dtype=np.float64) for c in
                                        ("pt", "eta", "phi", "d0", "z0", "sigma_d0",
                                         "sigma_z0"))
        sel = np.flatnonzero((pt >= cfg.pt_min) & (sz < cfg.max_sigma_z0)
                             & (np.abs(d0) < cfg.max_d0_significance * sd))
        sel = sel[np.lexsort((sel, z0[sel]))]
        cluster = np.concatenate([[0], np.cumsum(np.diff(z0[sel]) > cfg.z_separation)]) \
            if sel.size else np.zeros(0, np.int64)
        m = int(cluster.max()) + 1 if sel.size else 0
        fits = [trimmed_fit(z0[sel][cluster == k], sz[sel][cluster == k],
                            pt[sel][cluster == k], cfg) for k in range(m)]
        sw, z, n, pt2 = (np.array([f[i] for f in fits]) for i in range(4))
        score = pt2.copy()
        if cfg.ranking == "track_jets":
            for k, f in enumerate(fits):
                rows = sel[cluster == k][f[4]]
                score[k] = fastjet_score(pt[rows], eta[rows], phi[rows], cfg.track_jet_radius)
        keep = np.flatnonzero(n >= cfg.min_tracks)
        keep = keep[np.lexsort((keep, -score[keep]))]
        row = np.full(m, -1)
        row[keep] = np.arange(keep.size)
        vertex = np.full(z0.size, -1)
        vertex[sel] = row[cluster]
        pv = (np.abs(z0 - z[keep[0]]) < cfg.association_sigmas * sz) if keep.size \
            else np.zeros(z0.size, bool)
        out.append((z[keep], 1 / np.sqrt(sw[keep]), n[keep], pt2[keep], score[keep], vertex,
                    pv))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_reference_equals_the_oracle_on_random_tracks(seed):
    cfg = [VerticesConfig(), VerticesConfig(z_separation=0.1, min_tracks=3),
           VerticesConfig(ranking="sum_pt2", fit_sigmas=2.0)][seed % 3]
    events = random_tracks(seed, 20)
    v, a = run_vertices(track_batch(events), cfg)
    want = oracle(events, cfg)
    assert v.counts.tolist() == [w[0].size for w in want]
    assert sum(w[0].size for w in want) > 20
    for e, w in enumerate(want):
        got = v.event(e)
        np.testing.assert_allclose(got["z"], w[0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(got["z_error"], w[1], rtol=1e-12)
        np.testing.assert_array_equal(got["n_tracks"], w[2])
        np.testing.assert_allclose(got["sum_pt2"], w[3], rtol=1e-12)
        np.testing.assert_allclose(got["score"], w[4], rtol=1e-12)
        np.testing.assert_array_equal(a.event(e)["vertex"], w[5])
        np.testing.assert_array_equal(a.event(e)["pv"], w[6])


def assert_identical(got: tuple[Collection, Collection], want: tuple[Collection, Collection],
                     what: str) -> None:
    assert_collections_identical(got, want, ("vertices", "track_pv"), what)


@pytest.mark.parametrize("seed", range(4))
def test_backends_agree_bit_for_bit_on_random_tracks(seed):
    events = random_tracks(50 + seed, 12)
    want = run_vertices(track_batch(events))
    assert want[0].size > 10
    assert_identical(run_vertices(track_batch(events, "cpu")), want, "cpu")
    # the simulator runs the track jets' anti-kT a block (vertex) at a time, ~0.5 s each
    few = run_vertices(track_batch(events[:3]))
    assert few[0].size >= 3
    assert_identical(run_vertices(track_batch(events[:3], "cuda")), few, "cuda")


# -- Pythia events -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_tracks() -> tuple[EventBatch, Collection]:
    """The built-in sample (10 ttbar events at pileup 50): its Event collection and the tracks
    of stage ``tracks`` (cpu)."""
    if not SAMPLE.is_file():
        pytest.skip(f"built-in sample {SAMPLE} missing")
    batch = next(io.iterate_batches([str(SAMPLE)], ["GenPart", "Event"], batch_size=10))
    batch = batch.to("cpu")
    batch.add("tracks", get_stage("tracks")(batch)["tracks"])
    return batch, batch["tracks"].to_host()


def test_backends_agree_on_the_tracks_of_pythia_events(sample_tracks):
    _, tracks = sample_tracks
    batch = EventBatch(get_backend("reference"), tracks.n_events, {"tracks": tracks})
    want = run_vertices(batch)
    assert (want[0].counts > 10).all()
    assert_identical(run_vertices(batch.to("cpu")), want, "cpu")
    # cuda (the simulator: ~0.5 s per vertex for the track jets) on two events' tracks above
    # 1.5 GeV, a tenth of them: still ~10 vertices per event
    two = tracks.select_events(3, 5)
    hard = np.asarray(two["pt"]) > 1.5
    two = Collection.from_counts(np.add.reduceat(hard, two.offsets[:-1]),
                                 {c: np.asarray(v)[hard] for c, v in two.columns.items()})
    two = EventBatch(batch.backend, 2, {"tracks": two})
    want = run_vertices(two)
    assert (want[0].counts >= 5).all()
    assert_identical(run_vertices(two.to("cuda")), want, "cuda")


def test_the_primary_vertex_of_ttbar_events_is_the_hard_scatter(sample_tracks):
    """At pileup 50 (30-70 vertices found per event), the vertex of largest sum pT^2 lies
    within 100 um of the true hard-scatter vertex (Event.pv_z) in all 10 events (2.5-44 um),
    91% of the hard scatter's tracks are associated with it (the others: decay products,
    displaced, and the 3 sigma tails) and 1.2% of the pileup tracks."""
    batch, tracks = sample_tracks
    v, a = run_vertices(EventBatch(batch.backend, 10, {"tracks": batch["tracks"]}))
    pv_z = np.asarray(batch["Event"]["pv_z"], dtype=np.float64)
    dz = np.abs(v["z"][v.offsets[:-1]] - pv_z)
    assert (v.counts >= 30).all() and (dz < 0.005).all(), dz
    gen = batch["GenPart"]
    row = np.repeat(gen.offsets[:-1], np.diff(tracks.offsets)) + tracks["sim_index"]
    hard = gen["vertex"][row] == 0
    assert 0.88 < a["pv"][hard].mean() < 0.95
    assert a["pv"][~hard].mean() < 0.02


# -- bad inputs and configs ---------------------------------------------------------------------
@pytest.mark.parametrize("b", ["reference", "cpu", "cuda"])
def test_bad_inputs_are_named(b):
    batch = track_batch([{"z0": [0.0, 0.1]}])
    del batch["tracks"].columns["sigma_z0"]
    with pytest.raises(PipelineError, match=r"^stage 'vertices' needs column 'sigma_z0' in "
                                            r"collection 'tracks'; it has \["):
        run_vertices(batch.to(b))
    with pytest.raises(PipelineError, match=r"collection 'tracks' column 'z0' has a non-finite "
                                            r"value inf at row 1"):
        run_vertices(track_batch([{"z0": [0.0, np.inf]}], b))
    with pytest.raises(PipelineError, match=r"collection 'tracks' column 'sigma_d0' has 0.0 cm "
                                            r"at row 0; resolutions must be > 0"):
        run_vertices(track_batch([{"z0": [0.0], "sigma_d0": [0.0]}], b))


def test_empty_batches_and_events():
    for b in ("reference", "cpu", "cuda"):
        v, a = run_vertices(track_batch([], b))
        assert v.n_events == 0 and a.size == 0
        v, a = run_vertices(track_batch([{"z0": []}, {"z0": [1.0]}, {"z0": [0.0, 5.0]}], b))
        assert v.counts.tolist() == [0, 0, 0] and a["vertex"].tolist() == [-1, -1, -1]
        assert a["pv"].tolist() == [False, False, False] and v["z"].dtype == np.float64


def test_config_errors():
    assert config_from_dict({"vertices": {"z_separation": 0.2}})["vertices"].z_separation == 0.2
    for table, msg in (({"z_separation": -0.1}, "z_separation must be a finite number >= 0"),
                       ({"max_sigma_z0": math.nan}, "max_sigma_z0 must be a finite number"),
                       ({"min_tracks": 0}, "min_tracks must be >= 1"),
                       ({"fit_sigmas": 0.0}, "fit_sigmas must be a finite number > 0"),
                       ({"fit_iterations": 0}, "fit_iterations must be >= 1")):
        with pytest.raises(ConfigError, match=r"\[vertices\].*" + msg):
            config_from_dict({"vertices": table})
