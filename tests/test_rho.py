"""Stage ``rho``: FastJet's grid-median estimator as the oracle, hand-computed grids, and the
three backends on random (hypothesis) and Pythia-generated events."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pythia_inputs import sample_clusters

from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError
from hltemu.pipeline import PipelineError, config_from_dict, get_stage
from hltemu.stages.rho import RhoConfig, cluster_pt, rho_grid

RTOL = 1e-12  # backends: the same sums in the same order; cosh may differ in the last bit


def run_rho(backend, clusters: Collection, cfg: RhoConfig | None = None) -> np.ndarray:
    be = get_backend(backend)
    batch = EventBatch(be, clusters.n_events, {"clusters": clusters.to(be)})
    out = get_stage("rho")(batch, cfg)["rho"]
    assert out.per_event and out.n_events == clusters.n_events
    return be.to_host(out["rho"])


def clusters_from(pt_events, eta_events, phi_events) -> Collection:
    counts = [len(p) for p in pt_events]
    cat = lambda parts: np.concatenate([np.asarray(p, dtype=np.float64) for p in parts]) \
        if parts else np.zeros(0)  # noqa: E731
    pt, eta, phi = cat(pt_events), cat(eta_events), cat(phi_events)
    return Collection.from_counts(counts, {"energy": pt * np.cosh(eta), "eta": eta, "phi": phi})


def fastjet_rho(pt, eta, phi, cfg: RhoConfig) -> float:
    fastjet = pytest.importorskip("fastjet")
    est = fastjet.GridMedianBackgroundEstimator(cfg.eta_max, cfg.grid_spacing)
    est.set_particles([
        fastjet.PseudoJet(p * math.cos(f), p * math.sin(f), p * math.sinh(e), p * math.cosh(e))
        for p, e, f in zip(pt, eta, phi, strict=True) if p > 0
    ])
    return est.rho()


def test_grid_is_the_cms_fixed_grid():
    g = rho_grid(RhoConfig())
    assert (g.n_eta, g.n_phi) == (18, 11)
    assert g.d_eta == pytest.approx(10.0 / 18) and g.d_phi == pytest.approx(2 * math.pi / 11)


@pytest.mark.parametrize("cfg", [RhoConfig(), RhoConfig(eta_max=2.5, grid_spacing=0.3),
                                 RhoConfig(eta_max=4.0, grid_spacing=1.1)],
                         ids=["cms", "fine-central", "coarse"])
def test_rho_equals_fastjet_grid_median(cfg):
    rng = np.random.default_rng(12)
    pts, etas, phis = [], [], []
    n_cells = rho_grid(cfg).n_cells
    for i in range(120):
        n = int(rng.integers(0, 4 * n_cells)) if i % 10 else 0
        pts.append(rng.exponential(2.0, n))
        etas.append(rng.uniform(-cfg.eta_max - 1, cfg.eta_max + 1, n))
        phis.append(rng.uniform(-math.pi, math.pi, n))
    clusters = clusters_from(pts, etas, phis)
    ours = run_rho("cpu", clusters, cfg)
    theirs = np.array([fastjet_rho(p, e, f, cfg) for p, e, f in zip(pts, etas, phis, strict=True)])
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-300)
    assert (theirs > 0).mean() > 0.5


def test_rho_equals_fastjet_on_pythia_events():
    clusters = sample_clusters()
    cfg = RhoConfig()
    ours = run_rho("reference", clusters, cfg)
    theirs = []
    for i in range(clusters.n_events):
        ev = clusters.event(i)
        pt = ev["energy"] / np.cosh(ev["eta"])
        theirs.append(fastjet_rho(pt, ev["eta"], ev["phi"], cfg))
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert (ours > 1.0).all()  # 50 pileup interactions: every cell busy


def test_pythia_events_agree_across_backends(backend):
    clusters = sample_clusters()
    if backend.name == "cuda":
        clusters = clusters.select_events(0, 2)  # the simulator is slow
    ref = run_rho("reference", clusters)
    np.testing.assert_allclose(run_rho(backend, clusters), ref, rtol=RTOL)


def test_hand_computed_medians():
    cfg = RhoConfig()
    g = rho_grid(cfg)
    n = g.n_cells  # 198: the median is the mean of the 99th and 100th smallest densities
    centres_eta = -g.eta_max + g.d_eta * (np.arange(n) // g.n_phi + 0.5)
    centres_phi = g.d_phi * (np.arange(n) % g.n_phi + 0.5)
    pt = np.full(n, 6.0)
    events = [
        (pt, centres_eta, centres_phi, 6.0 / g.cell_area),  # every cell: 6 GeV
        (pt[:100], centres_eta[:100], centres_phi[:100], 6.0 / g.cell_area),  # 100 full cells
        (pt[:99], centres_eta[:99], centres_phi[:99], 3.0 / g.cell_area),  # 99: (0 + 6) / 2
        (pt[:1], centres_eta[:1], centres_phi[:1], 0.0),  # one cell
        ([], [], [], 0.0),  # no clusters
        # the same cell filled twice per cell: densities add up
        (np.r_[pt, pt], np.r_[centres_eta, centres_eta], np.r_[centres_phi, centres_phi],
         12.0 / g.cell_area),
    ]
    clusters = clusters_from([e[0] for e in events], [e[1] for e in events],
                             [e[2] for e in events])
    expected = [e[3] for e in events]
    for b in ("reference", "cpu", "cuda"):
        np.testing.assert_allclose(run_rho(b, clusters, cfg), expected, rtol=1e-14, err_msg=b)


def test_phi_wrapping_and_eta_edges():
    cfg = RhoConfig()
    rng = np.random.default_rng(3)
    n = 400
    pt, eta = rng.exponential(3.0, n), rng.uniform(-4.9, 4.9, n)
    phi = rng.uniform(-math.pi, math.pi, n)
    shifted = clusters_from([pt, pt], [eta, eta], [phi, phi + 2 * math.pi])
    r = run_rho("cpu", shifted, cfg)
    assert r[0] == pytest.approx(r[1], rel=1e-12)
    # -eta_max is inside the grid, +eta_max and beyond are not: on a 2 x 11 grid, filling the
    # row at -eta_max puts half the cells above zero (median = half a cell's density)
    small = RhoConfig(eta_max=0.55, grid_spacing=0.55)
    g = rho_grid(small)
    ring = g.d_phi * (np.arange(g.n_phi) + 0.5)
    edge = clusters_from([[5.0] * g.n_phi] * 4,
                         [[-0.55] * g.n_phi, [0.55] * g.n_phi, [0.6] * g.n_phi, [-0.6] * g.n_phi],
                         [ring] * 4)
    for b in ("reference", "cpu", "cuda"):
        np.testing.assert_allclose(run_rho(b, edge, small), [2.5 / g.cell_area, 0, 0, 0],
                                   rtol=1e-14, err_msg=b)


def test_non_positive_energies_are_left_out():
    """Every cell of the CMS grid holds a 2 GeV cluster; 120 of the 198 cells also hold a
    cluster of energy -30 GeV and 40 more one of energy 0.  Left out, rho is 2 GeV / cell area;
    summed as negative pT it would be 1.07 GeV / cell area, as |E| 2.93."""
    cfg = RhoConfig()
    g = rho_grid(cfg)
    row, col = np.divmod(np.arange(g.n_cells), g.n_phi)
    eta = -g.eta_max + g.d_eta * (row + 0.5)
    phi = g.d_phi * (col + 0.5)
    pt = np.full(g.n_cells, 2.0)
    energy = pt * np.cosh(eta)
    noisy, zero = np.arange(0, 120), np.arange(120, 160)
    clusters = Collection.from_counts([g.n_cells + noisy.size + zero.size], {
        "energy": np.concatenate([energy, np.full(noisy.size, -30.0), np.zeros(zero.size)]),
        "eta": np.concatenate([eta, eta[noisy], eta[zero]]),
        "phi": np.concatenate([phi, phi[noisy], phi[zero]])})
    pts = cluster_pt(clusters, np)
    np.testing.assert_array_equal(pts[g.n_cells:], 0.0)
    np.testing.assert_allclose(pts[:g.n_cells], 2.0, rtol=1e-15)
    want = 2.0 / g.cell_area
    assert fastjet_rho(pts[:g.n_cells], eta, phi, cfg) == pytest.approx(want, rel=1e-12)
    for b in ("reference", "cpu", "cuda"):
        np.testing.assert_allclose(run_rho(b, clusters, cfg), [want], rtol=1e-12, err_msg=b)


@st.composite
def random_events(draw):
    n_events = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    counts = [int(draw(st.integers(0, 250))) for _ in range(n_events)]
    m = sum(counts)
    energy = rng.exponential(5.0, m) * rng.choice([1.0, -0.1], m, p=[0.9, 0.1])
    eta = rng.uniform(-6.0, 6.0, m)
    phi = rng.uniform(-2 * math.pi, 2 * math.pi, m)
    cfg = RhoConfig(eta_max=draw(st.sampled_from([1.0, 2.5, 5.0])),
                    grid_spacing=draw(st.sampled_from([0.35, 0.55, 0.8, 2.0])))
    return Collection.from_counts(counts, {"energy": energy, "eta": eta, "phi": phi}), cfg


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_events())
def test_backends_agree_on_random_events(args):
    clusters, cfg = args
    ref = run_rho("reference", clusters, cfg)
    np.testing.assert_allclose(run_rho("cpu", clusters, cfg), ref, rtol=RTOL, atol=0)
    np.testing.assert_allclose(run_rho("cuda", clusters, cfg), ref, rtol=RTOL, atol=0)


def test_config_errors():
    with pytest.raises(ConfigError, match="grid_spacing must be > 0|must be > 0"):
        RhoConfig(grid_spacing=0.0)
    with pytest.raises(ConfigError, match=r"\[rho\]: eta_max"):
        config_from_dict({"rho": {"eta_max": -1.0}}, "hlt.toml")
    clusters = clusters_from([[1.0]], [[0.0]], [[0.0]])
    with pytest.raises(ConfigError, match="more than the 1024"):
        run_rho("cpu", clusters, RhoConfig(grid_spacing=0.05))


def test_missing_cluster_column_is_named():
    coll = Collection.from_counts([1], {"energy": np.ones(1), "eta": np.zeros(1)})
    with pytest.raises(PipelineError, match="'phi'.*'clusters'"):
        run_rho("cpu", coll)
