"""Pileup noise of the topoclustering: the shipped per-ring table, its derivation from simulated
minimum-bias interactions, total noise sqrt(sigma_el^2 + mu sigma_1^2) in the stage on every
backend, pileup_mu = 0 as electronic noise only, and errors for bad tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hltemu.backends import cuda_status, get_backend
from hltemu.batch import Collection
from hltemu.calo_noise import (
    PileupNoiseError,
    PileupNoiseTable,
    load_table,
    save_table,
    total_noise,
)
from hltemu.cell_graph import CellGraph, calorimeter_graph
from hltemu.geometry import default_geometry
from hltemu.pipeline import PipelineError, config_from_dict
from hltemu.simulate.pileup_noise import derive_pileup_noise, main
from hltemu.stages.topocluster import (
    LABEL_COLLECTION,
    TopoclusterConfig,
    noise_graph,
    topocluster,
)

BUILTIN = "builtin:pileup_noise.npz"


@pytest.fixture(scope="module")
def calo():
    return default_geometry().calo


@pytest.fixture(scope="module")
def table() -> PileupNoiseTable:
    return load_table(BUILTIN)


@pytest.fixture(scope="module")
def sample_cells() -> Collection:
    from pythia_inputs import SAMPLE

    from hltemu.io import read_collections

    return read_collections(str(SAMPLE), ["CaloCell"])["CaloCell"].select_events(0, 2)


def cluster(cells: Collection, backend: str, cfg: TopoclusterConfig,
            graph: CellGraph | None = None) -> tuple[Collection, Collection]:
    be = get_backend(backend)
    out = topocluster(cells.to(be), cfg, be, graph)
    return out["clusters"].to_host(), out[LABEL_COLLECTION].to_host()


def assert_identical(a, b) -> None:
    (ca, la), (cb, lb) = a, b
    np.testing.assert_array_equal(la["cluster"], lb["cluster"])
    np.testing.assert_array_equal(ca.offsets, cb.offsets)
    for name in ca.columns:
        np.testing.assert_array_equal(ca[name], cb[name], err_msg=name)


# -- the shipped table ------------------------------------------------------------------------
def test_shipped_table_matches_the_geometry(table, calo):
    assert table.layer_names == tuple(lay.name for lay in calo.layers)
    assert table.n_eta.tolist() == [lay.n_eta for lay in calo.layers]
    s1 = table.cell_sigma1(calo)
    assert s1.shape == (calo.n_cells,) and s1.dtype == np.float64
    # every cell of the default geometry sees some pileup; well below a GeV per interaction
    assert np.all(s1 > 0) and np.all(s1 < 0.5)
    # phi symmetry: every cell of a ring has its ring's value; eta -> -eta mirror symmetry
    for i, lay in enumerate(calo.layers):
        grid = s1[calo.layer_offset[i]:calo.layer_offset[i + 1]].reshape(lay.n_eta, lay.n_phi)
        assert np.all(grid == grid[:, :1])
        np.testing.assert_array_equal(table.layer(i), table.layer(i)[::-1])
        np.testing.assert_array_equal(grid[:, 0], table.layer(i))
        # pileup energy per cell grows towards the forward region
        assert table.layer(i)[0] > 2.0 * table.layer(i)[lay.n_eta // 2]
    assert np.all(table.sigma1_rel_err < 0.1) and np.all(table.sigma1_rel_err > 0)
    assert np.all(table.mean1 > 0) and np.all(table.mean1 <= table.sigma1)
    prov = table.provenance
    assert prov["interactions"] >= 10000 and prov["sqrt_s_GeV"] == 13600.0
    for key in ("seed", "hltemu_version", "pythia8mc_version", "command", "seconds"):
        assert key in prov


def test_total_noise_scales_with_mu(table, calo):
    el = calo.noise_sigma.astype(np.float64)
    s1 = table.cell_sigma1(calo)
    np.testing.assert_array_equal(total_noise(calo.noise_sigma, s1, 0.0), el)
    previous = el
    for mu in (1.0, 50.0, 200.0):
        tot = total_noise(calo.noise_sigma, s1, mu)
        assert np.all(tot >= el) and np.all(tot > previous)
        np.testing.assert_allclose(tot**2 - el**2, mu * s1**2, rtol=1e-9)
        previous = tot
    # the stage's graph carries exactly that noise, built once per (mu, table)
    for mu in (50.0, 200.0):
        cfg = TopoclusterConfig(pileup_mu=mu)
        g = noise_graph(cfg)
        assert g is noise_graph(TopoclusterConfig(pileup_mu=mu))
        np.testing.assert_array_equal(g.noise, total_noise(calo.noise_sigma, s1, mu))
        base = calorimeter_graph()
        assert g.nbr_index is base.nbr_index and g.eta is base.eta
    # forward cells at <mu> = 50: pileup noise dominates the electronic noise
    fwd = np.abs(calo.cell_eta) > 2.5
    assert np.median(np.sqrt(50.0) * s1[fwd] / el[fwd]) > 1.0


def test_device_copies_are_cached_and_share_the_neighbours():
    g = noise_graph(TopoclusterConfig(pileup_mu=50.0))
    be = get_backend("cpu")
    dev = g.on(be)
    assert g.on(be) is dev
    assert dev.nbr_index is calorimeter_graph().on(be).nbr_index
    np.testing.assert_array_equal(be.to_host(dev.noise), g.noise)
    np.testing.assert_array_equal(be.to_host(dev.offset), g.offset)  # the mean pileup energy


# -- clustering with and without pileup noise --------------------------------------------------
def test_pileup_mu_zero_is_electronic_noise_only(sample_cells, calo):
    cfg0 = TopoclusterConfig(pileup_mu=0.0, pileup_noise="/no/such/table.npz")  # not read
    assert noise_graph(cfg0) is calorimeter_graph()
    # a graph built independently from the geometry's electronic noise gives the same clusters
    offsets, index = calo.neighbours()
    electronic = CellGraph.from_arrays(offsets, index, calo.noise_sigma, calo.cell_eta,
                                       calo.cell_phi)
    ref = cluster(sample_cells, "cpu", cfg0)
    assert_identical(ref, cluster(sample_cells, "cpu", TopoclusterConfig(), electronic))
    one = sample_cells.select_events(0, 1)
    assert_identical(cluster(one, "reference", cfg0),
                     cluster(one, "reference", TopoclusterConfig(), electronic))


def test_pileup_noise_tames_the_forward_percolation(sample_cells):
    """Sample events have pileup 50: with electronic noise only, forward cells percolate
    into giant clusters; thresholds on the total noise at <mu> = 50 break them up (here
    without the mean pileup energy subtracted: the thresholds alone)."""
    be = get_backend("cpu")
    thresholds_only = TopoclusterConfig(pileup_mu=50.0, subtract_pileup_mean=False)
    c0, _ = cluster(sample_cells, "cpu", TopoclusterConfig(pileup_mu=0.0))
    c50, l50 = cluster(sample_cells, "cpu", thresholds_only)
    for i in range(sample_cells.n_events):
        assert c50.event(i)["n_cells"].max() * 4 < c0.event(i)["n_cells"].max()
    # the significance is |E| / sigma_tot on the cpu backend's arrays
    g = noise_graph(thresholds_only)
    seed = c50["seed"][0]
    e_seed = np.asarray(sample_cells.event(0)["energy"])[sample_cells.event(0)["id"] == seed][0]
    assert c50["seed_significance"][0] == abs(float(e_seed)) / g.noise[seed]
    assert be.name == "cpu" and l50.size == sample_cells.size


def test_backends_agree_with_pileup_noise(sample_cells):
    """Every backend with the total noise: identical clusters (cuda on a window, under the
    simulator)."""
    from test_topocluster import assert_same, window

    cells = sample_cells.select_events(0, 1)
    cfg = TopoclusterConfig(pileup_mu=200.0)
    ref = cluster(cells, "reference", cfg)
    assert_same(ref, cluster(cells, "cpu", cfg))
    if cuda_status()[0]:
        # around the most significant forward cluster, where pileup noise matters most
        cl = ref[0]
        k = int(np.flatnonzero(np.abs(cl["eta"]) > 2.5)[0])
        sub = window(cells, cl["eta"][k], cl["phi"][k], 0.3)
        sub_ref = cluster(sub, "reference", cfg)
        assert sub_ref[0].size > 0
        assert_same(sub_ref, cluster(sub, "cuda", cfg))


# -- derivation -------------------------------------------------------------------------------
def test_derivation_runs_and_is_reproducible(tmp_path, calo):
    t = derive_pileup_noise(4, seed=11)
    n_rings = sum(lay.n_eta for lay in calo.layers)
    for a in (t.sigma1, t.sigma1_true, t.sigma1_rel_err, t.mean1):
        assert a.shape == (n_rings,) and np.all(np.isfinite(a)) and np.all(a >= 0)
    assert t.sigma1.max() > 0 and t.provenance["interactions"] == 4
    assert t.provenance["seed"] == 11
    t.cell_sigma1(calo)  # fits the geometry
    path = tmp_path / "pn.npz"
    assert main(["--interactions", "4", "--seed", "11", "--output", str(path)]) == 0
    back = load_table(path)
    np.testing.assert_array_equal(back.sigma1, t.sigma1)  # same seed, same table
    np.testing.assert_array_equal(back.sigma1_true, t.sigma1_true)
    assert back.provenance["command"].endswith(f"--output {path}")
    # a table of one's own is used by the stage
    cfg = TopoclusterConfig(pileup_mu=10.0, pileup_noise=str(path))
    np.testing.assert_array_equal(noise_graph(cfg).noise,
                                  total_noise(calo.noise_sigma, t.cell_sigma1(calo), 10.0))
    with pytest.raises(PileupNoiseError, match="interactions must be >= 1"):
        derive_pileup_noise(0, seed=1)


# -- bad tables -------------------------------------------------------------------------------
def write_table(path, table: PileupNoiseTable, **changes) -> str:
    arrays = {"sigma1": table.sigma1, "sigma1_true": table.sigma1_true,
              "sigma1_rel_err": table.sigma1_rel_err, "mean1": table.mean1,
              "n_eta": table.n_eta, "layer_names": np.asarray(table.layer_names),
              "provenance": np.asarray(json.dumps(table.provenance))}
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def stage_error(spec: str, match: str) -> None:
    with pytest.raises(PipelineError, match=match):
        noise_graph(TopoclusterConfig(pileup_mu=50.0, pileup_noise=spec))


def test_bad_tables_are_named(tmp_path, table):
    stage_error("builtin:nope.npz", r"no such file .*nope.npz; shipped .npz files: .*"
                                    r"pileup_noise.npz")
    stage_error(str(tmp_path / "missing.npz"), r"missing.npz.*no such file")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    stage_error(str(garbage), r"garbage.npz: cannot read it as .npz")
    # rings of another calorimeter
    short = write_table(tmp_path / "short.npz", table, n_eta=np.array([120, 120, 60, 60, 60]),
                        sigma1=table.sigma1[:420], sigma1_true=table.sigma1_true[:420],
                        sigma1_rel_err=table.sigma1_rel_err[:420], mean1=table.mean1[:420])
    stage_error(short, r"short.npz.* does not match the calorimeter: expected layers "
                       r"\['EM1', 'EM2', 'HAD1', 'HAD2', 'HAD3'\] with \[240, 120, 60, 60, 60\] "
                       r"eta rings, got .* \[120, 120, 60, 60, 60\] rings")
    stage_error(write_table(tmp_path / "len.npz", table, sigma1=table.sigma1[:-1]),
                r"len.npz: array 'sigma1' has shape \(539,\), expected \(540,\)")
    bad = table.sigma1.copy()
    bad[7] = np.nan
    stage_error(write_table(tmp_path / "nan.npz", table, sigma1=bad),
                r"nan.npz: array 'sigma1' has the value nan at ring 7")
    stage_error(write_table(tmp_path / "noname.npz", table, layer_names=None),
                r"noname.npz: missing array\(s\) \['layer_names'\]")
    with pytest.raises(PileupNoiseError, match="provenance is not JSON"):
        load_table(write_table(tmp_path / "prov.npz", table, provenance=np.asarray("{bad")))
    # the error reaches the stage's caller as a PipelineError through the pipeline too
    from hltemu.batch import EventBatch
    from hltemu.pipeline import plan_chain, run_batch

    be = get_backend("cpu")
    cells = Collection.from_counts([1], {"id": np.zeros(1, np.int32),
                                         "energy": np.ones(1, np.float32)})
    batch = EventBatch(be, 1, {"CaloCell": cells})
    chain, _ = plan_chain(["topocluster"], ["CaloCell"])
    cfg = config_from_dict({"topocluster": {"pileup_mu": 50, "pileup_noise": str(garbage)}})
    with pytest.raises(PipelineError, match="garbage.npz"):
        run_batch(batch, chain, cfg)


def test_save_and_load_round_trip(tmp_path, table):
    path = tmp_path / "copy.npz"
    save_table(path, table)
    back = load_table(path)
    for name in ("sigma1", "sigma1_true", "sigma1_rel_err", "mean1", "n_eta"):
        np.testing.assert_array_equal(getattr(back, name), getattr(table, name))
    assert back.layer_names == table.layer_names and back.provenance == table.provenance


def test_simulate_reexports_the_reconstruction_names():
    """The table and total noise live in hltemu.calo_noise (reconstruction, no generator);
    hltemu.simulate.pileup_noise re-exports the same objects for existing importers."""
    import hltemu.calo_noise as calo_noise
    import hltemu.simulate.pileup_noise as derivation

    for name in ("BUILTIN", "TABLE_ARRAYS", "PileupNoiseError", "PileupNoiseTable", "load_table",
                 "models_dir", "save_table", "table_path", "total_noise"):
        assert getattr(derivation, name) is getattr(calo_noise, name), name
