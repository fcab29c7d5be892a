"""Stage ``pfrho`` (the median pT density of all particle-flow candidates): hand-built events
with known answers on grids of odd and even cell counts, candidates on cell edges and outside
``eta_max``, empty events and batches, a plain-loop oracle, the three backends bit for bit on
random events and on the pfcandidates of the built-in Pythia sample, and bad inputs and configs.

Tolerances: none.  The oracle (``math.floor``, Python floats, ``sorted``) does the same IEEE
operations in the same order as the stage (see :mod:`hltemu.stages.pfrho`), so the reference
equals it, and cpu and cuda equal the reference, bit for bit.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ptx_runner import ptx_counts as run_ptx

from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError
from hltemu.ops import THREADS_PER_BLOCK
from hltemu.pipeline import PipelineError, config_from_dict, get_stage
from hltemu.stages.pfrho import PFRhoConfig, grid_cells, pfrho_grid
from hltemu.stages.rho import RhoConfig, rho_grid

BACKENDS = ("reference", "cpu", "cuda")


# -- helpers ------------------------------------------------------------------------------------
def cands_from(events: list[tuple], dtype=np.float64) -> Collection:
    """A pfcandidates collection (columns pt, eta, phi) from per-event ``(pt, eta, phi)``."""
    counts = [len(ev[0]) for ev in events]
    cols = {}
    for k, name in enumerate(("pt", "eta", "phi")):
        parts = [np.asarray(ev[k], dtype=dtype) for ev in events]
        cols[name] = np.concatenate(parts) if parts else np.zeros(0, dtype)
    return Collection.from_counts(counts, cols)


def run_pfrho(backend, cands: Collection, cfg: PFRhoConfig | None = None) -> np.ndarray:
    """Rho per event on ``backend`` through the registered stage."""
    be = get_backend(backend)
    out = get_stage("pfrho")(EventBatch(be, cands.n_events, {"pfcandidates": cands.to(be)}),
                             cfg)["pfrho"]
    assert out.per_event and out.n_events == cands.n_events and list(out.columns) == ["rho"]
    return be.to_host(out["rho"])


def oracle_rho(pt, eta, phi, cfg: PFRhoConfig) -> float:
    """Rho of one event by plain loops: ``round(2 eta_max / spacing)`` rows over ``[-eta_max,
    eta_max)``, ``round(2 pi / spacing)`` columns over ``[-pi, pi)`` (halves up, at least 1);
    a candidate inside goes to ``floor((eta + eta_max) / d_eta)``, ``floor((phi + pi) /
    d_phi)``, clipped; the median over every cell of its pT sum / area."""
    n_eta = max(1, math.floor(2.0 * cfg.eta_max / cfg.grid_spacing + 0.5))
    n_phi = max(1, math.floor(2.0 * math.pi / cfg.grid_spacing + 0.5))
    d_eta, d_phi = 2.0 * cfg.eta_max / n_eta, 2.0 * math.pi / n_phi
    sums = [[0.0] * n_phi for _ in range(n_eta)]
    for p, e, f in zip(np.asarray(pt, np.float64).tolist(), np.asarray(eta, np.float64).tolist(),
                       np.asarray(phi, np.float64).tolist(), strict=True):
        if not -cfg.eta_max <= e < cfg.eta_max:
            continue
        row = min(max(math.floor((e + cfg.eta_max) / d_eta), 0), n_eta - 1)
        col = min(max(math.floor((f + math.pi) / d_phi), 0), n_phi - 1)
        sums[row][col] += p
    area = d_eta * d_phi
    dens = sorted(s / area for r in sums for s in r)
    n = len(dens)
    return dens[n // 2] if n % 2 else 0.5 * (dens[n // 2 - 1] + dens[n // 2])


def oracle(cands: Collection, cfg: PFRhoConfig | None = None) -> np.ndarray:
    cfg = cfg or PFRhoConfig()
    return np.array([oracle_rho(ev["pt"], ev["eta"], ev["phi"], cfg)
                     for ev in (cands.event(i) for i in range(cands.n_events))], np.float64)


def cell_centres(cfg: PFRhoConfig) -> tuple[np.ndarray, np.ndarray]:
    """(eta, phi) of every grid cell's centre, in cell-index order."""
    g = cfg.grid
    row, col = np.divmod(np.arange(g.n_cells), g.n_phi)
    return -g.eta_max + (row + 0.5) * g.d_eta, -math.pi + (col + 0.5) * g.d_phi


def assert_all_backends(cands: Collection, want, cfg: PFRhoConfig | None = None) -> None:
    """Every backend gives exactly ``want``, and so does the oracle."""
    want = np.asarray(want, dtype=np.float64)
    np.testing.assert_array_equal(oracle(cands, cfg), want, err_msg="oracle")
    for b in BACKENDS:
        np.testing.assert_array_equal(run_pfrho(b, cands, cfg), want, err_msg=b)


# -- the stage and its grid ----------------------------------------------------------------------
def test_the_stage_reads_pfcandidates_and_is_offline():
    stage = get_stage("pfrho")
    assert stage.needs_for() == ("pfcandidates",) and stage.adds == ("pfrho",)
    assert stage.in_default_chain is False
    cfg = PFRhoConfig()
    assert (cfg.eta_max, cfg.grid_spacing) == (3.0, 0.55)


@pytest.mark.parametrize("eta_max, spacing", [(3.0, 0.55), (2.5, 0.3), (1.7, 1.3), (3.0, 1.0)])
def test_grid_counts_are_rhos(eta_max, spacing):
    """The same rows and columns (and cell sizes) as stage rho's grid, 11 x 11 by default;
    uniform cells of d_eta x d_phi."""
    g, calo = pfrho_grid(eta_max, spacing), rho_grid(RhoConfig(eta_max, spacing))
    assert (g.n_eta, g.n_phi, g.d_eta, g.d_phi) == (calo.n_eta, calo.n_phi, calo.d_eta,
                                                    calo.d_phi)
    if (eta_max, spacing) == (3.0, 0.55):
        assert (g.n_eta, g.n_phi) == (11, 11)
        assert g.area == pytest.approx(6.0 / 11 * 2 * math.pi / 11, rel=1e-15)


def test_cells_of_candidates_on_edges():
    """Rows and columns on a grid with exact eta edges (eta_max 2, 8 rows of 0.5; 13 columns):
    -eta_max is in row 0, an edge starts its row, eta_max and beyond are outside (-1), the
    largest eta below eta_max is in the last row, phi = -pi in column 0, phi = pi and beyond are
    clipped to the last column, phi below -pi to the first."""
    g = pfrho_grid(2.0, 0.5)
    assert (g.n_eta, g.n_phi, g.d_eta) == (8, 13, 0.5)
    below = math.nextafter(2.0, 0.0)
    eta = np.array([-2.0, -1.5, math.nextafter(-1.5, -2.0), 0.0, below, 2.0, -2.000001, 7.0,
                    0.1, 0.1, 0.1, 0.1, 0.1])
    phi = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -math.pi, math.pi, 4.0, -4.0, 1e300])
    cell = grid_cells(eta, phi, g, np)
    assert cell.dtype == np.int32
    col0 = int(math.floor(math.pi / g.d_phi))  # phi = 0
    rows = [0, 1, 0, 4, 7, -1, -1, -1, 4, 4, 4, 4, 4]
    cols = [col0] * 8 + [0, 12, 12, 0, 12]
    want = [r * 13 + c if r >= 0 else -1 for r, c in zip(rows, cols, strict=True)]
    assert cell.tolist() == want


# -- hand-built events ----------------------------------------------------------------------------
def test_hand_built_event():
    """The module docstring's worked example.  Default grid (121 cells of A = 0.3116): 61 cells
    at 1 GeV (one candidate each) and 60 empty give 1 / A = 3.2096; 60 at 1 GeV give 0.  An 8 x
    13 grid (eta_max 2, spacing 0.5; A = 0.5 x 2 pi / 13 = pi / 13): 52 cells at 2 GeV (two
    candidates of 0.5 and 1.5, one of them on the cell's lower eta edge) and 52 empty give
    0.5 (0 + 2 / A) = 1 / A = 4.1380."""
    cfg = PFRhoConfig()
    eta, phi = cell_centres(cfg)
    a = cfg.grid.area
    assert a == pytest.approx(0.311563, abs=1e-6) and 1.0 / a == pytest.approx(3.20962, abs=1e-5)
    cands = cands_from([(np.ones(61), eta[:61], phi[:61]), (np.ones(60), eta[61:], phi[61:])])
    assert_all_backends(cands, [1.0 / a, 0.0], cfg)

    even = PFRhoConfig(eta_max=2.0, grid_spacing=0.5)
    g = even.grid
    assert (g.n_eta, g.n_phi, g.d_eta) == (8, 13, 0.5)
    assert g.area == pytest.approx(math.pi / 13, rel=1e-15)
    eta, phi = cell_centres(even)
    lower_edge = -g.eta_max + (np.arange(g.n_cells) // g.n_phi) * g.d_eta  # exact: -2, -1.5...
    assert (grid_cells(lower_edge, phi, g, np) == np.arange(g.n_cells)).all()
    pick = np.arange(0, g.n_cells, 2)  # every other cell: 52 of 104
    ev = (np.r_[np.full(52, 0.5), np.full(52, 1.5)], np.r_[eta[pick], lower_edge[pick]],
          np.r_[phi[pick], phi[pick]])
    want = 0.5 * (0.0 + 2.0 / g.area)
    assert want == 1.0 / g.area and want == pytest.approx(4.13803, abs=1e-5)
    assert_all_backends(cands_from([ev]), [want], even)


def test_odd_and_even_cell_counts():
    """One cell (eta_max 0.5, spacing 7: 1 x 1): rho is its density.  Two cells (spacing pi:
    1 x 2): the mean of the two.  Three cells (spacing 2: 1 x 3): the middle one.  Six cells
    (eta_max 2, spacing 2.5: round(1.6) = 2 rows, round(2.51) = 3 columns): the mean of the 3rd
    and 4th smallest."""
    def run(cfg, pts):
        eta, phi = cell_centres(cfg)
        assert len(pts) == cfg.grid.n_cells
        return cands_from([(pts, eta, phi)]), cfg.grid.area

    cands, a = run(PFRhoConfig(eta_max=0.5, grid_spacing=7.0), [3.0])
    assert_all_backends(cands, [3.0 / a], PFRhoConfig(eta_max=0.5, grid_spacing=7.0))
    cfg = PFRhoConfig(eta_max=0.5, grid_spacing=math.pi)
    cands, a = run(cfg, [1.0, 4.0])
    assert_all_backends(cands, [0.5 * (1.0 / a + 4.0 / a)], cfg)
    cfg = PFRhoConfig(eta_max=0.5, grid_spacing=2.0)
    cands, a = run(cfg, [9.0, 1.0, 4.0])
    assert_all_backends(cands, [4.0 / a], cfg)
    cfg = PFRhoConfig(eta_max=2.0, grid_spacing=2.5)
    assert (cfg.grid.n_eta, cfg.grid.n_phi) == (2, 3)
    cands, a = run(cfg, [6.0, 0.0, 2.0, 5.0, 1.0, 3.0])
    assert_all_backends(cands, [0.5 * (2.0 / a + 3.0 / a)], cfg)


def test_candidates_outside_eta_max_add_nothing():
    """A 1,000 GeV candidate at eta = eta_max (or beyond, or below -eta_max) changes nothing;
    with a wider grid it counts.  Several candidates in one cell add up."""
    cfg = PFRhoConfig(eta_max=0.5, grid_spacing=7.0)  # one cell over |eta| < 0.5
    a = cfg.grid.area
    ev = ([1.0, 2.0, 1000.0, 1000.0, 1000.0], [0.0, -0.5, 0.5, 2.0, -0.6], [0.0, 3.1, 0.0, 1.0, 1.0])
    cands = cands_from([ev])
    assert_all_backends(cands, [3.0 / a], cfg)
    wide = PFRhoConfig(eta_max=2.5, grid_spacing=7.0)
    assert_all_backends(cands, [(1.0 + 2.0 + 1000.0 + 1000.0 + 1000.0) / wide.grid.area], wide)


def test_empty_events_and_batches():
    for b in BACKENDS:
        assert run_pfrho(b, cands_from([])).shape == (0,)
        np.testing.assert_array_equal(run_pfrho(b, cands_from([([], [], [])] * 3)), [0.0] * 3)
    eta, phi = cell_centres(PFRhoConfig())
    full = (np.full(121, 2.0), eta, phi)
    outside = ([5.0, 5.0], [3.0, -3.5], [0.0, 0.0])  # in no cell
    cands = cands_from([([], [], []), full, outside, ([], [], []), full])
    a = PFRhoConfig().grid.area
    assert_all_backends(cands, [0.0, 2.0 / a, 0.0, 0.0, 2.0 / a])


# -- backends -------------------------------------------------------------------------------------
def _random_event(rng, n: int, eta_max: float, cfg: PFRhoConfig):
    """``n`` candidates: eta over +-(eta_max + 1), phi over [-pi, pi] with some exactly on
    +-pi and on cell edges, pT over six decades; a few exactly on row edges."""
    g = cfg.grid
    eta = rng.uniform(-eta_max - 1.0, eta_max + 1.0, n)
    phi = rng.uniform(-math.pi, math.pi, n)
    pt = np.exp(rng.uniform(math.log(0.01), math.log(1e4), n))
    k = n // 10
    if k:
        eta[:k] = -g.eta_max + rng.integers(0, g.n_eta + 1, k) * g.d_eta
        phi[k:2 * k] = -math.pi + rng.integers(0, g.n_phi + 1, k) * g.d_phi
        phi[2 * k:2 * k + 2] = [-math.pi, math.pi]
    return pt, eta, phi


def test_backends_agree_on_random_events(monkeypatch):
    """130 random events (two blocks of THREADS_PER_BLOCK on cuda), 0 to 400 candidates each,
    on an odd (11 x 11) and an even (10 x 13) grid: reference == oracle == cpu == cuda."""
    import hltemu.kernels.rho as K

    launches = []
    kernel = K.candidate_rho_cuda

    class Recorder:
        def __getitem__(self, config):
            launches.append(config)
            return kernel[config]

    monkeypatch.setattr(K, "candidate_rho_cuda", Recorder())
    rng = np.random.default_rng(7)
    for cfg in (PFRhoConfig(), PFRhoConfig(eta_max=2.5, grid_spacing=0.5)):
        assert cfg.grid.n_cells % 2 == (1 if cfg == PFRhoConfig() else 0)
        events = [_random_event(rng, int(rng.choice([0, 1, 5, 60, 200, 400, 800])), cfg.eta_max, cfg)
                  for _ in range(130)]
        cands = cands_from(events)
        ref = run_pfrho("reference", cands, cfg)
        np.testing.assert_array_equal(ref, oracle(cands, cfg))
        np.testing.assert_array_equal(run_pfrho("cpu", cands, cfg), ref)
        np.testing.assert_array_equal(run_pfrho("cuda", cands, cfg), ref)
        assert np.unique(ref).size > 35 and (ref > 0).sum() > 35  # 54 and 53, 48 and 47
    assert launches == [(2, THREADS_PER_BLOCK)] * 2


@st.composite
def random_batches(draw):
    """Up to 6 events of random candidates (float32 or float64 columns) and a grid."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    cfg = PFRhoConfig(eta_max=draw(st.sampled_from([0.4, 1.0, 2.5, 3.0, 5.0])),
                      grid_spacing=draw(st.sampled_from([0.3, 0.55, 0.8, 1.0, 2.0, 7.0])))
    events = [_random_event(rng, draw(st.sampled_from([0, 1, 3, 40, 300])), cfg.eta_max, cfg)
              for _ in range(draw(st.integers(1, 6)))]
    return cands_from(events, draw(st.sampled_from([np.float32, np.float64]))), cfg


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_batches())
def test_backends_agree_on_random_grids(args):
    cands, cfg = args
    ref = run_pfrho("reference", cands, cfg)
    np.testing.assert_array_equal(ref, oracle(cands, cfg))
    np.testing.assert_array_equal(run_pfrho("cpu", cands, cfg), ref)
    np.testing.assert_array_equal(run_pfrho("cuda", cands, cfg), ref)


@pytest.fixture(scope="module")
def sample_candidates() -> Collection:
    """The pfcandidates of 3 events of the built-in sample (ttbar, pileup 50), by the cpu chain
    tracks -> vertices -> topocluster -> pfcandidates."""
    from pythia_inputs import SAMPLE

    from hltemu.io import read_collections
    from hltemu.pipeline import plan, run_batch

    if not SAMPLE.is_file():
        pytest.skip(f"built-in sample {SAMPLE} missing")
    inputs = read_collections(str(SAMPLE), ["GenPart", "CaloCell", "Event"])
    be = get_backend("cpu")
    batch = EventBatch(be, 3, {k: v.select_events(0, 3).to(be) for k, v in inputs.items()})
    p = plan(["tracks", "vertices", "topocluster", "pfcandidates"], list(inputs), None,
             files=[str(SAMPLE)])
    run_batch(batch, p.stages, p.config)
    return batch["pfcandidates"].to(get_backend("reference"))


def test_backends_agree_on_the_sample(sample_candidates):
    """The three backends give the same bits on Pythia events at pileup 50 (and the oracle's),
    and every event has a positive rho, above the charged-hadron-subtracted candidates'."""
    cands = sample_candidates
    assert cands.size > 1000
    ref = run_pfrho("reference", cands)
    np.testing.assert_array_equal(ref, oracle(cands))
    for b in ("cpu", "cuda"):
        np.testing.assert_array_equal(run_pfrho(b, cands), ref, err_msg=b)
    assert (ref > 1.0).all(), ref
    chs = np.asarray(cands["from_pv"])
    ev = np.repeat(np.arange(cands.n_events), np.diff(np.asarray(cands.offsets)))
    kept = cands_from([tuple(np.asarray(cands[c])[chs & (ev == i)] for c in ("pt", "eta", "phi"))
                       for i in range(cands.n_events)])
    assert (run_pfrho("cpu", kept) < ref).all()


_PTX_SCRIPT = """
import json, types
import numba.cuda.dispatcher as dispatcher
from numba import cuda
from numba import types as nt
if not cuda.is_available():  # device functions compile for the current device's cc
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))
from hltemu.kernels import rho as K
f8, i8, i4 = nt.float64, nt.int64, nt.int32
sig = (i8[::1], i4[::1], f8[::1], f8[::1], f8[::1])
ptx = cuda.compile_ptx(K.candidate_rho_cuda.py_func, sig, cc=(9, 0))[0]
out = {"candidate_rho_cuda": {k: ptx.count(k) for k in ("fma.rn.f64", "add.rn.f64",
                                                         "div.rn.f64", "mul.rn.f64")}}
print("PTX-COUNTS " + json.dumps(out))
"""


def test_cuda_kernel_has_no_fma():
    """The kernel's sm_90 PTX adds, divides and halves with exactly rounded instructions and
    holds no fused multiply-add (as tests/test_rho.py checks for the towers' kernels)."""
    c = run_ptx(["-c", _PTX_SCRIPT])["candidate_rho_cuda"]
    assert c["fma.rn.f64"] == 0 and c["add.rn.f64"] >= 2 and c["div.rn.f64"] >= 1, c


# -- bad inputs and configs -----------------------------------------------------------------------
@pytest.mark.parametrize("b", BACKENDS)
def test_bad_inputs_are_named(b):
    good = cands_from([([1.0], [0.0], [0.0]), ([2.0, 3.0], [0.5, 1.0], [1.0, 2.0])])
    for col in ("pt", "eta", "phi"):
        cols = {k: v for k, v in good.columns.items() if k != col}
        with pytest.raises(PipelineError, match=rf"^stage 'pfrho' needs column '{col}' in "
                                                r"collection 'pfcandidates'"):
            run_pfrho(b, Collection(good.offsets, cols))
        for bad in (np.nan, np.inf, -np.inf):
            cols = {k: np.array(v) for k, v in good.columns.items()}
            cols[col][2] = bad
            with pytest.raises(PipelineError, match=rf"^stage 'pfrho': collection 'pfcandidates' "
                                                    rf"column '{col}' has a non-finite value "
                                                    rf"{re.escape(repr(bad))} at row 2$"):
                run_pfrho(b, Collection(good.offsets, cols))
    with pytest.raises(PipelineError, match=r"stage 'pfrho' needs collection\(s\) "
                                            r"\['pfcandidates'\]"):
        get_stage("pfrho")(EventBatch(get_backend(b), 0, {}))


def test_config_errors():
    for bad in (-1.0, 0.0, math.nan, math.inf):
        with pytest.raises(ConfigError, match=r"^hlt.toml: \[pfrho\]: eta_max must be finite "
                                              r"and > 0, got"):
            config_from_dict({"pfrho": {"eta_max": bad}}, "hlt.toml")
    for bad in (-0.5, 0.0, math.nan, math.inf):
        with pytest.raises(ConfigError, match="grid_spacing must be finite and > 0"):
            PFRhoConfig(grid_spacing=bad)
    with pytest.raises(ConfigError, match=r"grid_spacing=0.05 with eta_max=3.0 gives 120 x 126 "
                                          r"= 15120 cells, more than the 1024 the kernels"):
        config_from_dict({"pfrho": {"grid_spacing": 0.05}}, "hlt.toml")
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({"pfrho": {"max_rapidity": 5.0}}, "hlt.toml")
    wide = config_from_dict({"pfrho": {"eta_max": 5.0}}, "hlt.toml")["pfrho"]  # CMS's 5.0: allowed
    assert (wide.grid.n_eta, wide.grid.n_phi) == (18, 11)
