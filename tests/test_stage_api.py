"""A complete stage defined here, in tests/, with no package module edited.

It has a config dataclass, a ``prepare`` (a device table built from the config) and three
distinct implementations.  The planner must place it by what it needs and adds, a TOML table
must configure it, ``hltemu info`` must list its settings, and ``prepare`` must run once per
(config, backend) however many batches go through.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from click.testing import CliRunner

from hltemu import pipeline
from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import param
from hltemu.pipeline import Stage, config_from_dict, load_config, plan_chain, run_batch


@dataclass(frozen=True)
class ClusterWeightConfig:
    """Settings of the test stage ``cluster_weight``."""

    n_bins: int = param(8, "", "eta bins of the weight table over |eta| < 4")
    slope: float = param(0.5, "1/unit eta", "weight = 1 + slope * |eta| at the bin centre")


PREPARE_CALLS: list[tuple[str, ClusterWeightConfig]] = []


def prepare(cfg: ClusterWeightConfig, backend) -> dict:
    """The weight per eta bin (float64, ``(n_bins,)``), uploaded once to ``backend``."""
    PREPARE_CALLS.append((backend.name, cfg))
    centres = (np.arange(cfg.n_bins) + 0.5) * (4.0 / cfg.n_bins)
    return {"table": backend.to_device(1.0 + cfg.slope * centres)}


def _bins(eta, cfg, xp):
    return xp.clip((xp.abs(eta) * (cfg.n_bins / 4.0)).astype(xp.int64), 0, cfg.n_bins - 1)


def weight_reference(batch: EventBatch, cfg: ClusterWeightConfig, prep: dict) -> dict:
    cl = batch["clusters"]
    table = np.asarray(prep["table"])
    w = np.array([cl["energy"][i] * table[min(int(abs(cl["eta"][i]) * cfg.n_bins / 4.0),
                                                cfg.n_bins - 1)] for i in range(cl.size)],
                 dtype=np.float64)
    return {"cluster_weight": Collection(cl.offsets, {"weighted_energy": w})}


def weight_cpu(batch: EventBatch, cfg: ClusterWeightConfig, prep: dict) -> dict:
    cl = batch["clusters"]
    w = cl["energy"] * prep["table"][_bins(cl["eta"], cfg, np)]
    return {"cluster_weight": Collection(cl.offsets, {"weighted_energy": w.astype(np.float64)})}


def weight_cuda(batch: EventBatch, cfg: ClusterWeightConfig, prep: dict) -> dict:
    xp, cl = batch.backend.xp, batch["clusters"]
    w = cl["energy"] * prep["table"][_bins(cl["eta"], cfg, xp)]
    return {"cluster_weight": Collection(cl.offsets, {"weighted_energy": w.astype(xp.float64)})}


STAGE = Stage("cluster_weight", needs=("clusters",), adds=("cluster_weight",),
              config_type=ClusterWeightConfig, prepare=prepare,
              implementations={"reference": weight_reference, "cpu": weight_cpu,
                               "cuda": weight_cuda},
              doc="cluster energy times an eta-dependent weight (test stage)")


@pytest.fixture
def weight_stage():
    pipeline.registered_stages()  # the package's stages first
    pipeline.register(STAGE)
    PREPARE_CALLS.clear()
    yield STAGE
    pipeline._REGISTRY.pop(STAGE.name, None)


def _clusters(seed: int, n_events: int) -> EventBatch:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 12, n_events)
    n = int(counts.sum())
    cl = Collection.from_counts(counts, {"energy": rng.exponential(5.0, n),
                                         "eta": rng.uniform(-4.5, 4.5, n),
                                         "phi": rng.uniform(-np.pi, np.pi, n)})
    return EventBatch(get_backend("reference"), n_events, {"clusters": cl})


def test_the_planner_places_it_by_needs_and_adds(weight_stage):
    chain, inputs = plan_chain(None, ["CaloCell"])
    names = [s.name for s in chain]
    assert "cluster_weight" in names and inputs == ["CaloCell"]
    assert names.index("cluster_weight") > names.index("topocluster")
    # on clusters given as input it needs no stage before it
    chain, inputs = plan_chain(["cluster_weight"], ["clusters"])
    assert [s.name for s in chain] == ["cluster_weight"] and inputs == ["clusters"]
    # the package's own order is unchanged by it
    assert [n for n in pipeline.registered_stages() if n != "cluster_weight"] == [
        "doublets", "doublet_cnn", "topocluster", "antikt", "genjets", "rho", "jec", "trigger",
        "jet_regression", "pixeltracks", "pixelvertices", "tracks", "vertices", "pfcandidates",
        "pfjets", "pfrho"]


def test_a_toml_table_configures_it_and_prepare_runs_once_per_config_and_backend(
        weight_stage, tmp_path):
    toml = tmp_path / "hlt.toml"
    toml.write_text("[cluster_weight]\nn_bins = 4\nslope = 2.0\n")
    cfg = load_config(toml)
    assert cfg["cluster_weight"] == ClusterWeightConfig(n_bins=4, slope=2.0)
    results = {}
    for name in ("reference", "cpu", "cuda"):
        be = get_backend(name)
        out = []
        for seed in range(3):  # three batches, one config
            batch = _clusters(seed, 5).to(be)
            run_batch(batch, [STAGE], cfg)
            out.append(batch["cluster_weight"].to_host()["weighted_energy"])
        results[name] = np.concatenate(out)
    assert sorted(PREPARE_CALLS, key=str) == sorted(
        [(b, ClusterWeightConfig(n_bins=4, slope=2.0)) for b in ("reference", "cpu", "cuda")],
        key=str)
    # the config reached the implementations: weight = 1 + 2 * bin centre, 4 bins over |eta| < 4
    cl = [_clusters(seed, 5)["clusters"] for seed in range(3)]
    energy, eta = (np.concatenate([c[k] for c in cl]) for k in ("energy", "eta"))
    expect = energy * (1.0 + 2.0 * (np.minimum(np.abs(eta).astype(int), 3) + 0.5))
    for name, got in results.items():
        np.testing.assert_allclose(got, expect, rtol=1e-15, err_msg=name)
    # another config is prepared anew, the first one is still cached
    run_batch(_clusters(9, 2), [STAGE], config_from_dict({"cluster_weight": {"n_bins": 2}}))
    run_batch(_clusters(9, 2), [STAGE], cfg)
    assert len(PREPARE_CALLS) == 4 and PREPARE_CALLS[-1][1].n_bins == 2


def test_hltemu_info_lists_its_settings(weight_stage):
    from hltemu.cli import cli

    result = CliRunner().invoke(cli, ["info"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in result.output.splitlines()
            if line.count("│") >= 4]
    assert ["cluster_weight", "n_bins", "8", ""] in rows
    assert ["", "slope", "0.5", "1/unit eta"] in rows
    assert "cluster energy times an eta-dependent weight" in result.output  # the stages table
