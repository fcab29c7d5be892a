"""Stage registry, chain planning and running a chain on batches on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from stage_fixtures import CELL_SUM, cell_sum_stage  # noqa: F401

from hltemu import pipeline
from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.pipeline import PipelineError, config_from_dict, plan_chain, run_batch
from hltemu.profiling import RunReport, StageTimer


def _cells_batch(seed: int, n_events: int) -> EventBatch:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 30, size=n_events)
    n = int(counts.sum())
    cells = Collection.from_counts(counts, {"energy": rng.normal(0.5, 1.0, size=n).astype(np.float32)})
    return EventBatch(get_backend("reference"), n_events, {"CaloCell": cells})


def test_plan_chain_orders_and_checks_inputs(cell_sum_stage):  # noqa: F811
    chain, inputs = plan_chain(["cell_sum"], ["CaloCell", "PixelHit"])
    assert [s.name for s in chain] == ["cell_sum"] and inputs == ["CaloCell"]
    auto, _ = plan_chain(None, ["CaloCell"])
    assert "cell_sum" in [s.name for s in auto]
    auto_without, _ = plan_chain(None, ["PixelHit"])
    assert "cell_sum" not in [s.name for s in auto_without]


def test_plan_chain_errors(cell_sum_stage):  # noqa: F811
    with pytest.raises(PipelineError, match=r"stage 'cell_sum' needs collection 'CaloCell', which neither the input \(has \['PixelHit'\]\)"):
        plan_chain(["cell_sum"], ["PixelHit"])
    with pytest.raises(PipelineError, match="unknown stage 'nope'; registered stages: .*cell_sum"):
        plan_chain(["nope"], ["CaloCell"])


def test_stage_call_errors(cell_sum_stage):  # noqa: F811
    batch = _cells_batch(1, 3)
    empty = EventBatch(batch.backend, 3, {})
    with pytest.raises(PipelineError, match=r"stage 'cell_sum' needs collection\(s\) \['CaloCell'\]"):
        CELL_SUM(empty)
    only_ref = pipeline.Stage("x", ("CaloCell",), ("y",), CELL_SUM.config_type, {"reference": lambda b, c: {}})
    with pytest.raises(PipelineError, match="stage 'x' has no 'cpu' implementation; it has reference"):
        only_ref(batch.to("cpu"))
    with pytest.raises(PipelineError, match=r"stage 'x' returned \[\], declared \['y'\]"):
        only_ref(batch)


@pytest.mark.parametrize("seed", range(5))
def test_chain_agrees_across_backends_and_is_timed(cell_sum_stage, backend, seed):  # noqa: F811
    cfg = config_from_dict({"cell_sum": {"threshold": 0.25, "scale": 2.0}})
    ref = run_batch(_cells_batch(seed, 7), [CELL_SUM], cfg)["cell_sum"]["sum"]
    batch = _cells_batch(seed, 7).to(backend)
    report = RunReport(backend.name, backend.device)
    run_batch(batch, [CELL_SUM], cfg, StageTimer(backend, report))
    got = backend.to_host(batch["cell_sum"]["sum"])
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    # the config was applied: recompute by hand
    e = _cells_batch(seed, 7)["CaloCell"]
    expect = [2.0 * e.event(i)["energy"][e.event(i)["energy"] > 0.25].astype(np.float64).sum() for i in range(7)]
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    assert report.stages["cell_sum"].calls == 1 and report.stages["cell_sum"].events == 7
    assert report.stages["cell_sum"].seconds > 0
