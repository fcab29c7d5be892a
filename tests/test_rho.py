"""Stage ``rho`` (calorimeter towers): the towers and the grid of the default calorimeter, an
independent plain-loop oracle (cells -> towers -> grid -> median) against the reference, the
three backends bit for bit on random (hypothesis) and Pythia-generated events (the built-in
sample), signed negative towers, and bad inputs and configs named in one-line errors.

Tolerances: the reference against the oracle 1e-12 relative (plus 1e-12 GeV per unit area
absolute, for a median that sums to about 0): the same terms in the same order, but the
oracle finds towers and grid cells from cell and tower centres with its own arithmetic and
``math.cosh``.  cpu and cuda against the reference: equal (tolerance 0): the same float64
additions in the same order and the same divisions by the same host-made tables (see
:mod:`hltemu.stages.rho`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ptx_runner import ptx_counts as run_ptx

from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError, DetectorConfig
from hltemu.geometry import default_geometry, geometry_for
from hltemu.ops import THREADS_PER_BLOCK
from hltemu.pipeline import PipelineError, config_from_dict, get_stage
from hltemu.stages.rho import (
    RhoConfig,
    calo_towers,
    compute_rho,
    prepare_for,
    rho_grid,
)

CALO = default_geometry().calo
#: A calorimeter of the default's layers, 5 x coarser in eta and 4 x in phi (12 x 16 towers of
#: 0.5 x 0.39, 4,416 cells): random events that the CUDA simulator runs quickly.
SMALL = geometry_for(dataclasses.replace(
    DetectorConfig(), calo_n_eta=(48, 24, 12, 12, 12), calo_n_phi=(64, 32, 16, 16, 16))).calo


# -- helpers ------------------------------------------------------------------------------------
def cells_from(events: list[tuple[np.ndarray, np.ndarray]], dtype=np.float64) -> Collection:
    """A CaloCell collection from per-event ``(ids, energies)``: ids int32 (as the input
    schema), energies ``dtype`` (the schema's float32 in files; hand-made events float64)."""
    counts = [len(i) for i, _ in events]
    ids = np.concatenate([np.asarray(i, dtype=np.int32) for i, _ in events]) if events \
        else np.zeros(0, np.int32)
    energy = np.concatenate([np.asarray(e, dtype=dtype) for _, e in events]) if events \
        else np.zeros(0, dtype)
    return Collection.from_counts(counts, {"id": ids, "energy": energy})


def run_rho(backend, cells: Collection, cfg: RhoConfig | None = None, calo=None) -> np.ndarray:
    """Rho per event on ``backend``: through the registered stage for the default calorimeter,
    through :func:`compute_rho` with ``calo``'s tables otherwise."""
    be = get_backend(backend)
    dev = cells.to(be)
    if calo is None:
        out = get_stage("rho")(EventBatch(be, cells.n_events, {"CaloCell": dev}), cfg)["rho"]
        assert out.per_event and out.n_events == cells.n_events
        return be.to_host(out["rho"])
    return be.to_host(compute_rho(dev, prepare_for(cfg or RhoConfig(), be, calo), be))


def _grid_counts(cfg: RhoConfig) -> tuple[int, int]:
    """Rows and columns of the grid: ``round(2 eta_max / spacing)``, ``round(2 pi / spacing)``
    (halves up), at least 1."""
    return (max(1, math.floor(2 * cfg.eta_max / cfg.grid_spacing + 0.5)),
            max(1, math.floor(2 * math.pi / cfg.grid_spacing + 0.5)))


def oracle_rho(ids, energy, calo, cfg: RhoConfig, clip: bool = False) -> float:
    """Rho of one event by plain loops, from the calorimeter's cell centres only.

    Towers: the cells of the coarsest layer (fewest cells); a cell belongs to the tower whose
    eta-phi rectangle holds its centre.  Tower pT = (sum of its cells' energies, in ascending
    cell id) / cosh(eta of the tower's centre); ``clip``: negative tower pT counted as 0 (the
    alternative the stage does not take).  Grid: ``round(2 eta_max / spacing)`` rows over
    ``[-eta_max, eta_max)``, ``round(2 pi / spacing)`` columns over ``[-pi, pi)``; a tower goes
    to the grid cell holding its centre, whose area is the sum of its towers' areas.  Rho: the
    median over the grid cells of pT / area.
    """
    coarse = min(calo.layers, key=lambda lay: lay.n_cells)
    t_eta_max = coarse.eta_max
    t_deta = 2.0 * t_eta_max / coarse.n_eta
    t_dphi = 2.0 * math.pi / coarse.n_phi
    cell_eta, cell_phi = calo.cell_eta.tolist(), calo.cell_phi.tolist()
    tower_energy: dict[tuple[int, int], float] = {}
    for cid, e in sorted(zip(np.asarray(ids).tolist(), np.asarray(energy, np.float64).tolist(),
                             strict=True)):
        key = (math.floor((cell_eta[cid] + t_eta_max) / t_deta),
               math.floor((cell_phi[cid] + math.pi) / t_dphi))
        tower_energy[key] = tower_energy.get(key, 0.0) + e
    n_eta, n_phi = _grid_counts(cfg)
    d_eta, d_phi = 2.0 * cfg.eta_max / n_eta, 2.0 * math.pi / n_phi
    pt_sum = [[0.0] * n_phi for _ in range(n_eta)]
    n_towers = [[0] * n_phi for _ in range(n_eta)]
    for it in range(coarse.n_eta):
        for jt in range(coarse.n_phi):
            eta = -t_eta_max + (it + 0.5) * t_deta
            phi = -math.pi + (jt + 0.5) * t_dphi
            if not -cfg.eta_max <= eta < cfg.eta_max:
                continue
            row = min(math.floor((eta + cfg.eta_max) / d_eta), n_eta - 1)
            col = min(math.floor((phi + math.pi) / d_phi), n_phi - 1)
            pt = tower_energy.get((it, jt), 0.0) / math.cosh(eta)
            n_towers[row][col] += 1
            pt_sum[row][col] += max(pt, 0.0) if clip else pt
    densities = sorted(pt_sum[r][c] / (n_towers[r][c] * t_deta * t_dphi)
                       for r in range(n_eta) for c in range(n_phi))
    n = len(densities)
    return densities[n // 2] if n % 2 else 0.5 * (densities[n // 2 - 1] + densities[n // 2])


def oracle(cells: Collection, calo, cfg: RhoConfig | None = None) -> np.ndarray:
    cfg = cfg or RhoConfig()
    return np.array([oracle_rho(ev["id"], ev["energy"], calo, cfg)
                     for ev in (cells.event(i) for i in range(cells.n_events))])


def assert_oracle(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def sample_cells() -> Collection:
    """The built-in sample's CaloCell (10 ttbar events at pileup 50, every cell), read with
    hltemu.io."""
    from hltemu import io
    from hltemu.cli import builtin_sample

    return io.read_collections(str(builtin_sample()), ["CaloCell"])["CaloCell"]


# -- towers and grid ------------------------------------------------------------------------------
def test_towers_of_the_default_calorimeter():
    """60 x 64 towers of 0.1 x 0.098 (the HCAL's cells) over |eta| < 3; each holds 16 EM1,
    4 EM2 and 1 cell of each HCAL layer, in ascending id, and contains every member's
    centre."""
    t = calo_towers()
    assert (t.layer, t.n_eta, t.n_phi, t.n_towers) == ("HAD1", 60, 64, 3840)
    assert t.deta == pytest.approx(0.1) and t.dphi == pytest.approx(2 * math.pi / 64)
    counts = np.diff(t.offsets)
    assert (counts == 23).all() and t.offsets[-1] == CALO.n_cells
    assert sorted(t.cells.tolist()) == list(range(CALO.n_cells))  # every cell in one tower
    for k in range(t.n_towers):
        members = t.cells[t.offsets[k]:t.offsets[k + 1]]
        assert (np.diff(members) > 0).all()
        assert np.bincount(CALO.cell_layer[members], minlength=5).tolist() == [16, 4, 1, 1, 1]
    assert (t.cell_tower[t.cells] == np.repeat(np.arange(t.n_towers), 23)).all()
    centre = t.cell_tower
    assert (np.abs(CALO.cell_eta - t.eta[centre]) < t.deta / 2).all()
    assert (np.abs(CALO.cell_phi - t.phi[centre]) < t.dphi / 2).all()
    np.testing.assert_array_equal(t.cosh_eta, np.cosh(t.eta))


def test_grid_is_11_by_11_cells_made_of_whole_towers():
    t, g = calo_towers(), rho_grid(RhoConfig())
    assert (g.n_eta, g.n_phi, g.eta_max) == (11, 11, 3.0)
    assert g.d_eta == pytest.approx(6.0 / 11) and g.d_phi == pytest.approx(2 * math.pi / 11)
    assert (g.tower_cell >= 0).all()  # the grid covers the calorimeter
    n = np.bincount(g.tower_cell, minlength=121)
    assert sorted(set(n.tolist())) == [25, 30, 36]  # 5 or 6 tower rows times 5 or 6 columns
    np.testing.assert_allclose(g.area, n * t.area, rtol=1e-15)
    assert g.area.sum() == pytest.approx(6.0 * 2 * math.pi, rel=1e-12)
    row, col = np.divmod(g.tower_cell, 11)
    assert ((t.eta >= -3 + row * g.d_eta) & (t.eta < -3 + (row + 1) * g.d_eta)).all()
    assert ((t.phi >= -math.pi + col * g.d_phi) & (t.phi < -math.pi + (col + 1) * g.d_phi)).all()
    central = rho_grid(RhoConfig(eta_max=2.5))  # towers of |eta| > 2.5 in no grid cell
    assert (central.n_eta, central.n_phi) == (9, 11)
    assert ((central.tower_cell < 0) == (np.abs(t.eta) > 2.5)).all()


def test_the_stage_reads_calo_cells():
    stage = get_stage("rho")
    assert stage.needs_for() == ("CaloCell",) and stage.adds == ("rho",)


def test_towers_need_nested_layer_grids():
    odd = geometry_for(dataclasses.replace(DetectorConfig(), calo_n_phi=(256, 128, 64, 96, 64)))
    with pytest.raises(ConfigError, match="layer HAD2 .* does not nest into the towers of "
                                          "layer HAD1"):
        calo_towers(odd.calo)


# -- the oracle -----------------------------------------------------------------------------------
def test_oracle_on_hand_computed_events():
    """Every tower of the default calorimeter at pT 1 GeV (its energy cosh(eta) in the tower's
    HAD1 cell, or split over its 23 cells): rho = 1 GeV / tower area, since every grid cell
    holds n towers over n tower areas; with no cells, 0."""
    t = calo_towers()
    had1 = t.cells[t.offsets[1:] - 3]  # the HAD1 cell of each tower
    assert (CALO.cell_layer[had1] == 2).all()
    energy = np.cosh(t.eta)
    split = np.repeat(energy / 23.0, 23)
    cells = Collection.from_counts([t.n_towers, CALO.n_cells, 0], {
        "id": np.concatenate([had1, t.cells]).astype(np.int32),
        "energy": np.concatenate([energy, split])})
    want = [1.0 / t.area, 1.0 / t.area, 0.0]
    np.testing.assert_allclose(oracle(cells, CALO), want, rtol=1e-12)
    for b in ("reference", "cpu"):
        np.testing.assert_allclose(run_rho(b, cells), want, rtol=1e-12, err_msg=b)


def test_reference_equals_the_oracle_on_the_sample(sample_cells):
    ref = run_rho("reference", sample_cells)
    assert_oracle(ref, oracle(sample_cells, CALO))
    assert (ref > 10.0).all()  # pileup 50: every grid cell busy


def test_reference_equals_the_oracle_on_random_subsets():
    """Random subsets of the default calorimeter's cells in random order, energies of both
    signs, on three grids (central, default, coarse)."""
    rng = np.random.default_rng(5)
    for cfg in (RhoConfig(), RhoConfig(eta_max=2.5, grid_spacing=0.3),
                RhoConfig(eta_max=1.7, grid_spacing=1.3)):
        events = []
        for i in range(4):
            n = (0, 500, 20_000, CALO.n_cells)[i]
            ids = rng.permutation(CALO.n_cells)[:n]
            events.append((ids, rng.normal(0.3, 1.0, n) * rng.exponential(1.0, n)))
        cells = cells_from(events)
        ref = run_rho("reference", cells, cfg)
        assert_oracle(ref, oracle(cells, CALO, cfg))
        np.testing.assert_array_equal(run_rho("cpu", cells, cfg), ref)


# -- backends -------------------------------------------------------------------------------------
def test_backends_agree_on_the_sample(sample_cells, backend):
    """cpu and cuda give the reference's rho bit for bit on Pythia events (cuda: 2 events, the
    simulator is slow)."""
    cells = sample_cells if backend.name != "cuda" else sample_cells.select_events(3, 5)
    ref = run_rho("reference", cells)
    np.testing.assert_array_equal(run_rho(backend, cells), ref)


@st.composite
def random_events(draw):
    """Up to 5 events of the small calorimeter: random subsets of its cells (none, a few, all)
    in random order, energies of both signs and of very different sizes, and a grid."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    events = []
    for _ in range(draw(st.integers(1, 5))):
        n = draw(st.sampled_from([0, 1, 30, 1000, SMALL.n_cells]))
        ids = rng.permutation(SMALL.n_cells)[:n]
        energy = rng.normal(0.0, 1.0, n) * rng.choice([0.01, 1.0, 100.0], n) \
            + rng.exponential(0.5, n) * draw(st.sampled_from([0.0, 1.0]))
        events.append((ids, energy))
    cfg = RhoConfig(eta_max=draw(st.sampled_from([1.0, 2.5, 3.0])),
                    grid_spacing=draw(st.sampled_from([0.55, 0.8, 1.0, 2.0])))
    return cells_from(events, draw(st.sampled_from([np.float32, np.float64]))), cfg


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_events())
def test_backends_agree_on_random_events(args):
    cells, cfg = args
    ref = run_rho("reference", cells, cfg, SMALL)
    assert_oracle(ref, oracle(cells, SMALL, cfg))
    np.testing.assert_array_equal(run_rho("cpu", cells, cfg, SMALL), ref)
    np.testing.assert_array_equal(run_rho("cuda", cells, cfg, SMALL), ref)


def test_row_order_and_absent_cells_do_not_matter():
    """Cells are summed in ascending id whatever the input order: a permuted event gives the
    same bits; cells of energy 0 and absent cells are alike."""
    rng = np.random.default_rng(9)
    ids = rng.permutation(SMALL.n_cells)[:3000]
    energy = rng.normal(0.2, 1.0, 3000)
    zero = np.setdiff1d(np.arange(SMALL.n_cells), ids)
    order = rng.permutation(3000)
    cells = cells_from([(ids, energy), (ids[order], energy[order]),
                        (np.r_[ids, zero], np.r_[energy, np.zeros(zero.size)])])
    for b in ("reference", "cpu", "cuda"):
        r = run_rho(b, cells, RhoConfig(), SMALL)
        assert r[0] == r[1] == r[2], b


def test_cuda_launch_sizes(monkeypatch):
    """The production launch sizes under the simulator: 300 events of a tiny calorimeter (6 x
    8 towers of 1.0 x 0.79, 1,104 cells; random subsets of its cells, some empty), one thread
    per (event, tower) in 113 blocks of THREADS_PER_BLOCK (the last partly idle), then one per
    event in 3 blocks (the last partly idle); every event's rho its own, all equal to the
    reference's."""
    import hltemu.kernels.rho as K

    tiny = geometry_for(dataclasses.replace(
        DetectorConfig(), calo_n_eta=(24, 12, 6, 6, 6), calo_n_phi=(32, 16, 8, 8, 8))).calo
    cfg = RhoConfig(grid_spacing=1.0)  # 6 x 6 grid cells
    launches = []

    class Recorder:
        def __init__(self, kernel, name):
            self.kernel, self.name = kernel, name

        def __getitem__(self, config):
            launches.append((self.name, *config))
            return self.kernel[config]

    for name in ("tower_pt_cuda", "rho_cuda"):
        monkeypatch.setattr(K, name, Recorder(getattr(K, name), name))
    rng = np.random.default_rng(2)
    events = []
    for _ in range(300):
        ids = rng.permutation(tiny.n_cells)[:rng.integers(0, tiny.n_cells)]
        events.append((ids, rng.normal(0.5, 1.0, ids.size)))
    cells = cells_from(events)
    ref = run_rho("reference", cells, cfg, tiny)
    np.testing.assert_array_equal(run_rho("cuda", cells, cfg, tiny), ref)
    assert np.unique(ref).size > 250
    n_threads = 300 * calo_towers(tiny).n_towers  # 14,400
    assert launches == [("tower_pt_cuda", -(-n_threads // THREADS_PER_BLOCK), THREADS_PER_BLOCK),
                        ("rho_cuda", 3, THREADS_PER_BLOCK)]
    assert launches[0][1] == 113


_PTX_SCRIPT = """
import json, types
import numba.cuda.dispatcher as dispatcher
from numba import cuda
from numba import types as nt
if not cuda.is_available():  # device functions compile for the current device's cc
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))
from hltemu.kernels import rho as K
f8, i8, i4 = nt.float64, nt.int64, nt.int32
sigs = {"tower_pt_cuda": (i4[:, ::1], i8[::1], f8[::1], i8[::1], i4[::1], f8[::1], f8[:, ::1]),
        "rho_cuda": (f8[:, ::1], i4[::1], f8[::1], f8[::1])}
out = {}
for name, sig in sigs.items():
    ptx = cuda.compile_ptx(getattr(K, name).py_func, sig, cc=(9, 0))[0]
    out[name] = {k: ptx.count(k) for k in ("fma.rn.f64", "add.rn.f64", "div.rn.f64")}
print("PTX-COUNTS " + json.dumps(out))
"""


def test_cuda_kernels_have_no_fma():
    """The kernels' sm_90 PTX (compiled as tests/test_ptx.py does, in a process without the
    simulator; no GPU needed) adds and divides with exactly rounded instructions and holds no
    fused multiply-add: what lets a GPU give the reference's bits."""

    counts = run_ptx(["-c", _PTX_SCRIPT])
    for name, c in counts.items():
        assert c["fma.rn.f64"] == 0 and c["add.rn.f64"] >= 1 and c["div.rn.f64"] >= 1, (name, c)


# -- negative energies ----------------------------------------------------------------------------
def test_negative_towers_enter_signed():
    """Towers of negative energy have negative pT and lower their grid cell's sum.  Every tower
    of 70 of the 121 grid cells at pT -1 GeV, of the other 51 at +1 GeV: rho = -1 GeV / tower
    area (clipped at 0 it would be 0).  Then one grid cell with a +3 and a -1 GeV tower: the
    cell's sum is 2, not 3."""
    t, g = calo_towers(), rho_grid(RhoConfig())
    had1 = t.cells[t.offsets[1:] - 3]
    sign = np.where(g.tower_cell < 70, -1.0, 1.0)
    cells = cells_from([(had1, sign * np.cosh(t.eta))])
    want = -1.0 / t.area
    np.testing.assert_allclose(oracle(cells, CALO), [want], rtol=1e-12)
    assert oracle_rho(cells["id"], cells["energy"], CALO, RhoConfig(), clip=True) == 0.0
    for b in ("reference", "cpu", "cuda"):
        np.testing.assert_allclose(run_rho(b, cells), [want], rtol=1e-12, err_msg=b)
    # one grid cell: every tower at 0 but two; the median of 1 cell is that cell's density
    one = RhoConfig(eta_max=0.1, grid_spacing=7.0)
    members = np.flatnonzero(rho_grid(one).tower_cell == 0)  # 2 tower rows x 64
    two = had1[members[:2]]
    cells = cells_from([(two, np.array([3.0, -1.0]) * np.cosh(t.eta[members[:2]]))])
    want = 2.0 / (members.size * t.area)
    for b in ("reference", "cpu", "cuda"):
        np.testing.assert_allclose(run_rho(b, cells, one), [want], rtol=1e-12, err_msg=b)


def test_noise_alone_gives_rho_about_zero():
    """Events of the calorimeter's electronic noise only (Gaussian, every cell): signed towers
    give rho about 0 (-0.19 to 0.27 GeV per unit area here), towers clipped at 0 a noise floor
    of 5.6 to 6.3, the rho of about 10 pileup interactions (0.6 each)."""
    rng = np.random.default_rng(11)
    sigma = CALO.noise_sigma.astype(np.float64)
    events = [(np.arange(CALO.n_cells), rng.normal(0.0, sigma)) for _ in range(4)]
    cells = cells_from(events)
    rho = run_rho("cpu", cells)
    clipped = [oracle_rho(i, e, CALO, RhoConfig(), clip=True) for i, e in events]
    assert (np.abs(rho) < 0.5).all() and abs(rho.mean()) < 0.3, rho
    assert min(clipped) > 3.0, clipped


# -- bad inputs and configs -----------------------------------------------------------------------
@pytest.mark.parametrize("b", ["reference", "cpu", "cuda"])
@pytest.mark.parametrize("bad", [CALO.n_cells, -1, 10**6])
def test_cell_id_out_of_range_is_named(b, bad):
    cells = cells_from([([0, 1], [1.0, 2.0]), ([5, bad, 7], [1.0, 1.0, 1.0])])
    with pytest.raises(PipelineError) as err:
        run_rho(b, cells)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (f"stage 'rho': CaloCell.id has the value {bad} (event 1); cell ids of the "
                   f"calorimeter are 0-{CALO.n_cells - 1}")


@pytest.mark.parametrize("b", ["reference", "cpu", "cuda"])
def test_other_bad_inputs_are_named(b):
    twice = cells_from([([3], [1.0]), ([4, 9, 4], [1.0, 2.0, 3.0])])
    with pytest.raises(PipelineError, match=r"^stage 'rho': CaloCell.id 4 appears more than "
                                            r"once in event 1; each cell may be listed once"):
        run_rho(b, twice)
    nan = cells_from([([3, 8], [1.0, np.nan])])
    with pytest.raises(PipelineError, match=r"CaloCell.energy has the value nan GeV \(cell id "
                                            r"8, event 0\); energies must be finite"):
        run_rho(b, nan)
    no_energy = Collection.from_counts([1], {"id": np.zeros(1, np.int32)})
    with pytest.raises(PipelineError, match=r"needs CaloCell column\(s\) \['energy'\]"):
        run_rho(b, no_energy)
    float_ids = Collection.from_counts([1], {"id": np.zeros(1), "energy": np.ones(1)})
    with pytest.raises(PipelineError, match="CaloCell.id must be integers, got dtype float64"):
        run_rho(b, float_ids)


def test_empty_batches_and_events():
    for b in ("reference", "cpu", "cuda"):
        assert run_rho(b, cells_from([])).shape == (0,)
        np.testing.assert_array_equal(run_rho(b, cells_from([([], [])] * 2)), [0.0, 0.0])


def test_config_errors():
    assert RhoConfig().eta_max == 3.0
    with pytest.raises(ConfigError, match=r"hlt.toml: \[rho\]: eta_max = 5.0 is beyond the "
                                          r"calorimeter's acceptance \|eta\| < 3.0.*remove the "
                                          r"key \(default 3.0\) or set eta_max <= 3.0"):
        config_from_dict({"rho": {"eta_max": 5.0}}, "hlt.toml")
    assert config_from_dict({"rho": {"eta_max": 2.5}}, "hlt.toml")["rho"].eta_max == 2.5
    with pytest.raises(ConfigError, match=r"\[rho\]: eta_max must be finite and > 0"):
        config_from_dict({"rho": {"eta_max": -1.0}}, "hlt.toml")
    with pytest.raises(ConfigError, match="grid_spacing must be finite and > 0"):
        RhoConfig(grid_spacing=0.0)
    with pytest.raises(ConfigError, match="grid_spacing must be finite and > 0"):
        RhoConfig(grid_spacing=math.nan)
    cells = cells_from([([0], [1.0])])
    with pytest.raises(ConfigError, match="more than the 1024"):
        run_rho("cpu", cells, RhoConfig(grid_spacing=0.05))
    # 5 rows of 0.08 over |eta| < 0.2 and 79 columns: rows and columns without a tower centre
    with pytest.raises(ConfigError, match=r"5 x 79 grid cells, \d+ of which hold no "
                                          "calorimeter tower"):
        run_rho("cpu", cells, RhoConfig(eta_max=0.2, grid_spacing=0.08))
    with pytest.raises(ConfigError, match=r"eta_max = 3.0 is beyond the calorimeter's "
                                          r"acceptance \|eta\| < 2.0"):
        narrow = dataclasses.replace(DetectorConfig(), calo_eta_max=(2.0,) * 5)
        rho_grid(RhoConfig(), geometry_for(narrow).calo)
