"""Doublet-CNN inference speed and physics on held-out ttbar pileup-50 events: reference
(NumPy), cpu (Numba, prange over hits and doublets) and cuda (on a GPU) scoring the same
doublets with the shipped model::

    python -m pytest benchmarks/bench_doublet_cnn.py --benchmark-group-by=group

The events are the shipped sample (``hltemu/data/sample.root``: 10 ttbar PU50 events, seed
2026; the shipped model was trained on seeds 1001/1002) unless ``HLTEMU_BENCH_FILE`` names
another generated file (e.g. ``hltemu generate --process ttbar --pileup 50 --events 20 --seed
2001``).  Timed: :func:`~hltemu.stages.doublet_cnn.score_doublets` (hit encoding, features,
head), the hits and doublets already on the backend.  ``extra_info`` of each result:
``doublets_per_second``, ``speedup_vs_reference`` (when the reference ran first), the ROC
AUC, the fraction of fake doublets removed and of true doublets kept at the working point,
and ``decisions_differing_from_reference`` (keep/drop differences, all within 1e-5 of the
working point).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from _common import SAMPLE, skip_unless_gpu

from hltemu.backends import get_backend
from hltemu.cnn import SCORE_TOLERANCE, load_model, roc_auc
from hltemu.io import read_collections
from hltemu.stages.doublet_cnn import score_doublets
from hltemu.stages.doublets import DoubletsConfig, find_doublets

FILE = Path(os.environ.get("HLTEMU_BENCH_FILE", SAMPLE))
BACKENDS = ["reference", "cpu", "cuda"]
ROUNDS = {"reference": 3, "cpu": 10, "cuda": 20}
_MEAN: dict[str, float] = {}
_SCORES: dict[str, np.ndarray] = {}


@pytest.fixture(scope="module")
def inputs():
    hits = read_collections(FILE, ["PixelHit"])["PixelHit"]
    doublets = find_doublets(hits, DoubletsConfig(), get_backend("cpu"))
    return hits, doublets, load_model("builtin:doublet_cnn")


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_doublet_cnn_inference(benchmark, backend_name, inputs):
    skip_unless_gpu(backend_name)
    hits, doublets, model = inputs
    be = get_backend(backend_name)
    h, d = hits.to(be), doublets.to(be)

    def run():
        out = score_doublets(h, d, model, be)
        be.synchronize()
        return out

    run()  # compile outside the timing
    benchmark.group = f"doublet CNN, {FILE.name}: {hits.n_events} events, {doublets.size} doublets"
    scores = be.to_host(benchmark.pedantic(run, rounds=ROUNDS[backend_name], iterations=1))
    mean = benchmark.stats.stats.mean
    _MEAN[backend_name] = mean
    _SCORES[backend_name] = scores
    true = doublets["sim_index"] >= 0
    wp = np.float32(model.working_point)
    info = benchmark.extra_info
    info["events"] = hits.n_events
    info["doublets"] = doublets.size
    info["true_doublets"] = int(true.sum())
    info["doublets_per_second"] = doublets.size / mean
    info["auc"] = roc_auc(scores, true)
    info["working_point"] = float(wp)
    info["true_kept"] = float((scores[true] >= wp).mean())
    info["fakes_removed"] = float((scores[~true] < wp).mean())
    info["doublets_kept"] = float((scores >= wp).mean())
    if backend_name != "reference" and "reference" in _MEAN:
        ref = _SCORES["reference"]
        info["speedup_vs_reference"] = _MEAN["reference"] / mean
        info["max_abs_score_difference"] = float(np.abs(scores - ref).max())
        differ = (scores >= wp) != (ref >= wp)
        info["decisions_differing_from_reference"] = int(differ.sum())
        assert np.all(np.abs(ref[differ] - wp) <= SCORE_TOLERANCE)
        assert np.abs(scores - ref).max() <= SCORE_TOLERANCE
    assert info["true_kept"] > 0.97
