"""Device synchronisations of one batch of the default chain on cuda, against a budget.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) with the CuPy-strict shim
(:mod:`hltemu.strictxp`), every device-to-host read a GPU would make is seen: explicit reads
(``backend.to_host``, ``backend.item``, ``.get()``, ``.tolist()``) and the operations whose
result is sized by the data (``nonzero``, boolean-mask indexing, ``unique``), for which CuPy
reads a count back (:func:`hltemu.strictxp.record_reads`).  ``Backend.synchronize`` calls are
counted by wrapping it.  On a GPU each is a wait of the host for the device, so a new one in a
stage is a regression to justify: the budget below fails the test first.

Measured per batch (one event: a 0.7 rad wedge in phi of the built-in sample's first event,
every stage of the default chain), before and after issue 18's changes:

=============== ============ ============ ===================================================
stage           reads before reads after  what they are
=============== ============ ============ ===================================================
doublets        6            6            buffer size of the count pass, overflow check
doublet_cnn     7            7            kept-doublet count (nonzero), table checks
topocluster     17           13           the ``changed`` flag after every propagation
                                          launch, now one read per 4 launches (on the
                                          whole event: 20 -> 14), nonzero of seeds,
                                          perimeter cells, cluster heads
antikt          6            6            input and jet counts, finite checks
genjets         7            7            the same on the generator particles
rho             3            3            grid checks
jec, trigger    0            0
(pipeline)      16           1            the trigger's accept counters: one download per
                                          path column, now one for all
synchronize     16           9            the stage timer: both ends of each stage, now once
                                          between two stages (n_stages + 1)
=============== ============ ============ ===================================================

The writer's downloads of the products (one per written column) are not counted: they are
the output.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
from collection_asserts import rows_where

from hltemu import io, strictxp
from hltemu.backends import Backend, cuda_status, get_backend
from hltemu.batch import EventBatch
from hltemu.cli import builtin_sample
from hltemu.geometry import default_geometry
from hltemu.pipeline import count_products, plan, run_batch
from hltemu.profiling import RunReport, StageTimer

pytestmark = pytest.mark.skipif(
    not (cuda_status()[0] and get_backend("cuda").simulated and strictxp.enabled()),
    reason="needs the CUDA simulator with the CuPy-strict shim (NUMBA_ENABLE_CUDASIM=1)")

#: Largest device reads per stage and batch (``None``: the pipeline, outside stages).
READ_BUDGET = {"doublets": 6, "doublet_cnn": 7, "topocluster": 13, "antikt": 6, "genjets": 7,
               "rho": 3, "jec": 0, "trigger": 0, None: 1}
#: ``Backend.synchronize`` calls per batch: the stage timer's, one more than the stages.
SYNC_BUDGET = len(READ_BUDGET) - 1 + 1


def _small_batch(be: Backend, chain_inputs: list[str]) -> EventBatch:  # host arrays
    """The first event of the sample, cut to 0 <= phi < 0.7 rad (hits, cells, particles)."""
    host = next(io.iterate_batches([builtin_sample()], {n: None for n in chain_inputs},
                                   batch_size=1))
    two_pi = 2 * np.pi
    cell_phi = default_geometry().calo.cell_phi
    cols = dict(host.collections)
    hits, cells, gen = cols["PixelHit"], cols["CaloCell"], cols["GenPart"]
    cols["PixelHit"] = rows_where(hits, np.arctan2(hits["y"], hits["x"]) % two_pi < 0.7)
    cols["CaloCell"] = rows_where(cells, cell_phi[cells["id"]] % two_pi < 0.7)
    cols["GenPart"] = rows_where(gen, gen["phi"] % two_pi < 0.7)
    return EventBatch(host.backend, 1, cols)


def test_default_chain_device_reads_and_syncs_within_budget(monkeypatch):
    be = get_backend("cuda")
    files = [str(builtin_sample())]
    planned = plan(None, io.common_collections(files), None, files)
    assert [s.name for s in planned.stages] == [k for k in READ_BUDGET if k is not None]
    small = _small_batch(be, planned.inputs)
    assert small["PixelHit"].offsets[-1] > 500 and small["CaloCell"].offsets[-1] > 5000
    batch = small.to(be)

    syncs = collections.Counter()
    real_sync = Backend.synchronize

    def counted_sync(self: Backend) -> None:
        syncs[strictxp.current_stage()] += 1
        real_sync(self)

    monkeypatch.setattr(Backend, "synchronize", counted_sync)
    report = RunReport(be.name, be.device)
    with strictxp.record_reads() as reads:
        run_batch(batch, planned.stages, planned.config, StageTimer(be, report))
        count_products(batch, planned.stages, report)
    per_stage = collections.Counter(r.stage for r in reads)
    over = {st: (per_stage[st], budget) for st, budget in READ_BUDGET.items()
            if per_stage[st] > budget}
    assert not over, f"device reads over budget (got, budget): {over}; " + str(
        collections.Counter((r.stage, r.kind) for r in reads))
    assert set(per_stage) <= set(READ_BUDGET), per_stage
    assert sum(syncs.values()) <= SYNC_BUDGET, syncs
    # the counters are right: one download gave every path's accepts
    accepts = report.counters["trigger accepts"]
    host = batch["trigger"].to_host()
    assert accepts == {k: int(v.sum()) for k, v in host.columns.items()}
