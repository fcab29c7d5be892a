"""Stage ``topocluster`` and the input's pileup: ``pileup_mu = "auto"`` resolved by the planner
(from the files' provenance, else their mean ``Event_n_pileup``; a number overrides; a clear
error for a file with neither and for files of different pileup), and the mean pileup energy
``pileup_mu * mean_1`` subtracted from every cell before the significance: exactly that per
cell, and the same clusters on reference, cpu and cuda."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pythia_inputs import SAMPLE  # the built-in sample: generated at pileup 50
from test_topocluster import (
    BACKENDS,
    all_backends,
    check_kinematics,
    oracle,
    random_case,
    run,
    seed_ids,
)

from hltemu import io
from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.calo_noise import load_table
from hltemu.config import ConfigError
from hltemu.geometry import default_geometry
from hltemu.pipeline import PipelineError, config_from_dict, plan, run_batch, run_files
from hltemu.stages.topocluster import LABEL_COLLECTION, TopoclusterConfig, noise_graph


def tiny_file(path, n_pileup=None, provenance=None, n_events=3):
    """A small input: a few CaloCell rows per event, ``Event_n_pileup`` when given."""
    rng = np.random.default_rng(1)
    cells = Collection.from_counts([4] * n_events, {
        "id": np.tile(np.array([0, 1, 2, 3], dtype=np.int32), n_events),
        "energy": rng.normal(0.0, 0.05, 4 * n_events).astype(np.float32)})
    cols = {"run": np.ones(n_events, dtype=np.uint32)}
    if n_pileup is not None:
        cols["n_pileup"] = np.asarray(n_pileup, dtype=np.int32)
    batch = EventBatch(get_backend("reference"), n_events,
                       {"CaloCell": cells, io.EVENT: Collection.event_level(cols)})
    with io.OutputWriter(path, provenance=provenance) as w:
        w.write(batch, [io.EVENT, "CaloCell"])
    return str(path)


def generated(mu):
    return {"kind": "generate", "pileup": {"mean_requested": mu, "mean_generated": mu + 0.3}}


def plan_topo(files, table=None):
    cfg = config_from_dict({"topocluster": table or {}})
    return plan(["topocluster"], ["CaloCell"], cfg, files)


# -- pileup_mu = "auto" -------------------------------------------------------------------------
def test_auto_is_the_default_and_reads_the_provenance():
    assert TopoclusterConfig().pileup_mu == "auto"
    assert TopoclusterConfig().subtract_pileup_mean is True
    p = plan_topo([str(SAMPLE)])  # the built-in sample: generated at <mu> = 50
    cfg = p.config["topocluster"]
    assert cfg.pileup_mu == 50.0 and isinstance(cfg.pileup_mu, float)
    assert p.notes == ["topocluster: noise, and pileup offset from each event's rho, for <mu> = 50 "
                       "(the input's provenance)"]
    facts = p.facts["topocluster"]
    assert facts["pileup_mu"] == 50.0 and facts["pileup_mu_from"] == "input"
    assert facts["inputs"] == {str(SAMPLE): {"mu": 50.0, "source": "provenance"}}
    assert facts["subtract_pileup_mean"] is True and facts["pileup_offset"] == "event"


def test_auto_uses_the_requested_mean_not_the_generated_one(tmp_path):
    f = tiny_file(tmp_path / "a.root", n_pileup=[1, 2, 3], provenance=generated(7.0))
    assert plan_topo([f]).config["topocluster"].pileup_mu == 7.0  # not 7.3, not 2


def test_auto_from_event_n_pileup_without_provenance(tmp_path):
    f = tiny_file(tmp_path / "a.root", n_pileup=[10, 20, 33])
    assert io.read_provenance(f) is None
    p = plan_topo([f])
    assert p.config["topocluster"].pileup_mu == pytest.approx(21.0)
    assert p.notes == ["topocluster: noise, and pileup offset from each event's rho, for <mu> = 21 "
                       "(the input's mean Event_n_pileup, 3 events)"]
    assert p.facts["topocluster"]["inputs"][f]["source"] == "Event_n_pileup"


def test_a_number_overrides_and_no_file_is_read(tmp_path, cms_nanoaod):
    f = tiny_file(tmp_path / "a.root", provenance=generated(200.0))
    for files in ([f], [str(cms_nanoaod)]):
        p = plan_topo(files, {"pileup_mu": 12})
        assert p.config["topocluster"].pileup_mu == 12.0
        assert p.notes == ["topocluster: noise, and pileup offset from each event's rho, for <mu> = 12 "
                           "([topocluster] pileup_mu)"]
        assert p.facts["topocluster"] == {"pileup_mu": 12.0, "pileup_mu_from": "config",
                                          "subtract_pileup_mean": True,
                                          "pileup_offset": "event"}
    p = plan_topo([f], {"pileup_mu": 0, "subtract_pileup_mean": False})
    assert p.notes == ["topocluster: electronic noise only, no pileup offset for <mu> = 0 "
                       "([topocluster] pileup_mu)"]
    p = plan_topo([f], {"subtract_pileup_mean": False})
    assert p.notes[0].startswith("topocluster: noise (mean pileup energy not subtracted) for "
                                 "<mu> = 200")


def test_a_file_with_neither_is_a_clear_error(tmp_path, cms_nanoaod):
    f = tiny_file(tmp_path / "bare.root")
    with pytest.raises(PipelineError, match=r"bare\.root records none.*set \[topocluster\] "
                                            r"pileup_mu"):
        plan_topo([f])
    # a NanoAOD file: no CaloCell, so the default chain skips topocluster without reading it
    collections = io.common_collections([str(cms_nanoaod)])
    assert "topocluster" in plan(None, collections, None, [str(cms_nanoaod)]).skipped
    with pytest.raises(PipelineError, match=r"nanoAOD_2015_CMS_Open_Data_ttbar\.root records "
                                            r"none"):
        plan_topo([str(cms_nanoaod)])


def test_files_of_different_pileup_are_refused_with_their_values(tmp_path):
    a = tiny_file(tmp_path / "pu0.root", provenance=generated(0.0))
    b = tiny_file(tmp_path / "pu200.root", n_pileup=[190, 200, 210])
    c = tiny_file(tmp_path / "pu0_again.root", provenance=generated(0.0))
    with pytest.raises(PipelineError, match=r"differ in mean pileup: .*pu0\.root 0 \(from its "
                                            r"provenance\), .*pu200\.root 200 \(from its "
                                            r"Event_n_pileup\).*run the files of each pileup "
                                            r"separately"):
        plan_topo([a, b])
    p = plan_topo([a, c])  # the same pileup: one value
    assert p.config["topocluster"].pileup_mu == 0.0
    assert p.notes == ["topocluster: electronic noise only, no pileup offset for <mu> = 0 "
                       "(the 2 inputs' provenance)"]
    assert plan_topo([a, b], {"pileup_mu": 50}).config["topocluster"].pileup_mu == 50.0


def test_dask_plans_with_the_files_on_the_client(tmp_path):
    """The client's plan sees every file: mixed pileup fails before a cluster starts."""
    pytest.importorskip("distributed")
    from hltemu.scaleout import run_files_dask

    a = tiny_file(tmp_path / "pu0.root", provenance=generated(0.0))
    b = tiny_file(tmp_path / "pu50.root", provenance=generated(50.0))
    with pytest.raises(PipelineError, match="differ in mean pileup"):
        run_files_dask([a, b], backend="cpu", stages=["topocluster"], n_workers=1)


def test_unresolved_auto_is_an_error_naming_the_fix():
    with pytest.raises(PipelineError, match="pileup_mu = 'auto'.*give pileup_mu as a number"):
        noise_graph(TopoclusterConfig())
    p = plan(["topocluster"], ["CaloCell"])  # no files known (check_config): stays "auto"
    assert p.config["topocluster"].pileup_mu == "auto" and not p.notes


@pytest.mark.parametrize("value", ["Auto", "", "none", True, -1.0, float("nan")])
def test_pileup_mu_values_are_checked(value):
    with pytest.raises(ConfigError, match=r"\[topocluster\] pileup_mu must be 'auto' or"):
        TopoclusterConfig(pileup_mu=value)


def test_toml_takes_auto_or_a_number():
    assert config_from_dict({"topocluster": {"pileup_mu": "auto"}})["topocluster"].pileup_mu \
        == "auto"
    assert config_from_dict({"topocluster": {"pileup_mu": 3}})["topocluster"].pileup_mu == 3.0
    with pytest.raises(ConfigError, match=r"pileup_mu: expected a number or 'auto', got 'x'"):
        config_from_dict({"topocluster": {"pileup_mu": "x"}})
    with pytest.raises(ConfigError, match="subtract_pileup_mean"):
        config_from_dict({"topocluster": {"subtract_pileup_mean": 1}})


def test_run_records_the_resolved_pileup(tmp_path):
    out = tmp_path / "out.root"
    report = run_files([str(SAMPLE)], backend="cpu", stages=["topocluster"], output=out,
                       max_events=1, warmup=False)
    assert report.config["topocluster"]["pileup_mu"] == 50.0
    prov = io.read_provenance(out)
    assert prov["config"]["topocluster"]["pileup_mu"] == 50.0
    assert prov["plan"]["facts"]["topocluster"]["pileup_mu"] == 50.0
    assert any("<mu> = 50 (the input's provenance)" in n for n in prov["plan"]["notes"])


# -- the mean pileup energy subtracted ----------------------------------------------------------
def test_offset_is_mu_times_mean1_of_the_cells_ring():
    calo = default_geometry().calo
    table = load_table("builtin:pileup_noise.npz")
    ring = table.ring_offset[np.asarray(calo.cell_layer)] + np.asarray(calo.cell_ieta)
    g = noise_graph(TopoclusterConfig(pileup_mu=80.0))
    np.testing.assert_array_equal(g.offset, 80.0 * table.mean1[ring])
    assert np.median(g.offset) > 0
    assert noise_graph(TopoclusterConfig(pileup_mu=80.0, subtract_pileup_mean=False)).offset \
        is None
    np.testing.assert_array_equal(
        noise_graph(TopoclusterConfig(pileup_mu=80.0, subtract_pileup_mean=False)).noise, g.noise)
    assert noise_graph(TopoclusterConfig(pileup_mu=0.0)).offset is None


@pytest.fixture(scope="module")
def sample_cells():
    cells = io.read_collections(str(SAMPLE), ["CaloCell"])["CaloCell"]
    return cells.select_events(0, 2)


def test_subtraction_changes_each_cell_by_exactly_mu_mean1(sample_cells):
    """Subtraction on = subtraction off on cells already lowered by mu * mean1: the same
    clusters, bit for bit; the cluster energies drop by the sum of mu * mean1 over members."""
    mu = 50.0
    on = TopoclusterConfig(pileup_mu=mu, pileup_offset="mean")
    off = TopoclusterConfig(pileup_mu=mu, subtract_pileup_mean=False)
    offset = noise_graph(on).offset
    ids = sample_cells["id"]
    lowered = Collection(sample_cells.offsets.copy(), {
        "id": ids, "energy": sample_cells["energy"].astype(np.float64) - offset[ids]})
    for backend in ("reference", "cpu"):
        c_on, l_on = run(sample_cells, backend, on)
        c_low, l_low = run(lowered, backend, off)
        np.testing.assert_array_equal(l_on["cluster"], l_low["cluster"])
        for name in c_on.columns:
            np.testing.assert_array_equal(c_on[name], c_low[name], err_msg=name)
    # against the raw energies of the same members: lower by exactly sum(mu * mean1)
    c_on, l_on = run(sample_cells, "cpu", on)
    raw = sample_cells["energy"].astype(np.float64)
    label = l_on["cluster"]
    event = sample_cells.event_index()
    inside = label >= 0
    k = c_on.offsets[event[inside]] + label[inside]
    raw_sum = np.bincount(k, weights=raw[inside], minlength=c_on.size)
    off_sum = np.bincount(k, weights=offset[ids[inside]], minlength=c_on.size)
    np.testing.assert_allclose(raw_sum - c_on["energy"], off_sum, rtol=1e-9, atol=1e-9)
    assert off_sum.sum() > 0
    # and it matters: off, the clusters differ (the significance moved)
    c_off, l_off = run(sample_cells, "cpu", off)
    assert not np.array_equal(l_off["cluster"], l_on["cluster"])


def test_backends_identical_with_subtraction_on_random_graphs():
    """Random graphs with a random per-cell offset: reference, cpu and cuda give the same
    clusters, equal to the oracle's on the corrected energies."""
    n_clusters = 0
    for seed in range(12):
        g, cells = random_case(seed, 40, 0.12, 3, seed % 3 == 0, 0.8)
        rng = np.random.default_rng(1000 + seed)
        offset = rng.choice([0.0, 0.5, 1.0, 3.0], g.n_cells) * g.noise * rng.choice([-1, 1])
        g = g.with_noise(g.noise, offset)
        raw = cells["energy"].astype(np.float64) + offset[cells["id"]]
        cells = Collection(cells.offsets, {"id": cells["id"], "energy": raw})
        ref = all_backends(cells, TopoclusterConfig(pileup_mu=1.0, pileup_offset="mean"), g)
        assert seed_ids(ref) == oracle(cells, g, TopoclusterConfig())
        check_kinematics(cells, g, ref)
        n_clusters += ref[0].size
    assert n_clusters > 40


def test_backends_identical_with_subtraction_on_the_calorimeter_at_pu200():
    """The calorimeter's graph at <mu> = 200 with the offset subtracted, 12 random events of
    pileup-like energies (offset + total noise, some deposits) in an eta-phi window (so that
    the reference and the CUDA simulator are quick): identical membership on every backend."""
    cfg = TopoclusterConfig(pileup_mu=200.0, pileup_offset="mean")
    g = noise_graph(cfg)
    rng = np.random.default_rng(2026)
    events = []
    for _ in range(12):
        eta_c, phi_c = rng.uniform(-2.6, 2.6), rng.uniform(-math.pi, math.pi)
        dphi = (g.phi - phi_c + math.pi) % (2 * math.pi) - math.pi
        ids = np.flatnonzero((np.abs(g.eta - eta_c) < 0.25) & (np.abs(dphi) < 0.25))
        ids = rng.permutation(ids)
        e = g.offset[ids] + g.noise[ids] * rng.normal(0.0, 1.0, ids.shape[0])
        hot = rng.random(ids.shape[0]) < 0.04
        e[hot] += rng.exponential(8.0, hot.sum()) * g.noise[ids[hot]]
        events.append((ids, e))
    counts = [len(i) for i, _ in events]
    cells = Collection.from_counts(counts, {"id": np.concatenate([i for i, _ in events])
                                            .astype(np.int32),
                                            "energy": np.concatenate([e for _, e in events])})
    ref = all_backends(cells, cfg)
    assert ref[0].size > 3 * cells.n_events
    assert seed_ids(ref) == oracle(cells, g, cfg)
    assert set(BACKENDS) == {"reference", "cpu", "cuda"}
    # the default "event" offset: each event's own pileup estimate from its rho scales the
    # offset; identical on every backend, and the clusters differ from the "mean" ones
    event = TopoclusterConfig(pileup_mu=200.0)
    ev_ref = all_backends(cells, event)
    assert ev_ref[0].size > 3 * cells.n_events
    assert seed_ids(ev_ref) != seed_ids(ref)


def test_stage_in_a_planned_chain(sample_cells):
    p = plan(["topocluster"], ["CaloCell"], None, [str(SAMPLE)])
    batch = EventBatch(get_backend("cpu"), 2, {"CaloCell": sample_cells})
    run_batch(batch, p.stages, p.config)
    assert batch["clusters"].size > 100 and batch[LABEL_COLLECTION].size == sample_cells.size
