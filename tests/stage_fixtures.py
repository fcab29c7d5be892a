"""A small real stage used to test the pipeline machinery (registered only inside tests)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hltemu import pipeline
from hltemu.batch import Collection, EventBatch
from hltemu.config import param
from hltemu.ops import segment_sum


@dataclass(frozen=True)
class CellSumConfig:
    """Settings of the test stage ``cell_sum``."""

    scale: float = param(1.0, "", "factor applied to the per-event sum")
    threshold: float = param(0.0, "GeV", "only cells with energy above this are summed")
    label: str = param("sum", "", "name of the output column")


def _cell_sum(batch: EventBatch, cfg: CellSumConfig) -> dict[str, Collection]:
    be = batch.backend
    cells = batch["CaloCell"]
    e = cells["energy"]
    e = be.xp.where(e > cfg.threshold, e, 0.0)
    total = segment_sum(e, cells.offsets, be) * cfg.scale
    return {"cell_sum": Collection.event_level({cfg.label: total}, be.xp)}


CELL_SUM = pipeline.Stage(
    "cell_sum",
    needs=("CaloCell",),
    adds=("cell_sum",),
    config_type=CellSumConfig,
    implementations={"reference": _cell_sum, "cpu": _cell_sum, "cuda": _cell_sum},
    doc="per-event sum of calorimeter cell energies (test stage)",
)


@pytest.fixture
def cell_sum_stage():
    """Register the test stage for one test, then remove it."""
    pipeline.registered_stages()  # load the real stages first
    pipeline.register(CELL_SUM)
    yield CELL_SUM
    pipeline._REGISTRY.pop(CELL_SUM.name, None)
