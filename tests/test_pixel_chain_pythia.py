"""Pixel tracks and vertices on freshly generated Pythia events (issue 19's backend checks):
reference = cpu on 2 ttbar events at pileup 200, cuda (the simulator without a GPU) = cpu =
reference on 2 ttbar events at pileup 0.  The events are generated here (seeds 8200 and 8000,
about 15 s), so the checks do not rest on the built-in sample alone.  The doublets are the cpu
stage's for every backend (their own backend checks are in tests/test_doublets.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_pixeltracks import assert_agree, assert_identical

from hltemu import io
from hltemu.backends import cuda_status, get_backend
from hltemu.batch import EventBatch
from hltemu.config import GenerateConfig
from hltemu.pipeline import get_stage


def _generated(tmp_path_factory, seed: int, pileup: float) -> EventBatch:
    from hltemu.simulate.generate import generate_file

    path = tmp_path_factory.mktemp(f"pythia{seed}") / "events.root"
    generate_file(path, GenerateConfig(events=2, process="ttbar", pileup=pileup, seed=seed))
    batch = next(io.iterate_batches([path], ["PixelHit"], batch_size=2, backend="cpu"))
    batch.add("doublets", get_stage("doublets")(batch)["doublets"])
    return batch


@pytest.fixture(scope="module")
def pu200(tmp_path_factory) -> EventBatch:
    return _generated(tmp_path_factory, 8200, 200.0)


@pytest.fixture(scope="module")
def pu0(tmp_path_factory) -> EventBatch:
    return _generated(tmp_path_factory, 8000, 0.0)


def _tracks(batch: EventBatch, backend: str):
    return get_stage("pixeltracks")(batch.to(backend))["pixeltracks"].to_host()


def _vertices(batch: EventBatch, tracks, backend: str):
    b = batch.to(backend)
    b.add("pixeltracks", tracks.to(backend))
    out = get_stage("pixelvertices")(b)
    return {k: v.to_host() for k, v in out.items()}


def test_reference_equals_cpu_at_pileup_200(pu200):
    want = _tracks(pu200, "reference")
    assert (want.counts > 1500).all()  # ~2,800 tracks per event at pileup 200
    got = _tracks(pu200, "cpu")
    assert_agree(got, want, "cpu, pileup 200")
    # the vertices of the same (cpu) tracks: bit for bit
    v_ref, v_cpu = _vertices(pu200, got, "reference"), _vertices(pu200, got, "cpu")
    assert (v_ref["pixelvertices"].counts > 40).all()
    for name in v_ref:
        assert_identical(v_cpu[name], v_ref[name], f"{name}, pileup 200")


def test_cuda_equals_cpu_and_reference_at_pileup_0(pu0):
    if not cuda_status()[0]:
        pytest.skip(cuda_status()[1])
    assert get_backend("cuda").name == "cuda"
    want = _tracks(pu0, "reference")
    assert (want.counts > 20).all()
    cpu, cuda = _tracks(pu0, "cpu"), _tracks(pu0, "cuda")
    assert_identical(cuda, cpu, "cuda vs cpu, pileup 0")
    assert_agree(cuda, want, "cuda, pileup 0")
    v = {be: _vertices(pu0, cpu, be) for be in ("reference", "cpu", "cuda")}
    for name in v["cpu"]:
        assert_identical(v["cuda"][name], v["cpu"][name], f"{name} cuda")
        assert_identical(v["reference"][name], v["cpu"][name], f"{name} reference")
    assert np.all(v["cpu"]["pixelvertices"].counts >= 1)
