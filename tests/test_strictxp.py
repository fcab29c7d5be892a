"""The CuPy-strict simulator shim: each call CuPy refuses, or that hides a device sync, is refused.

Under ``NUMBA_ENABLE_CUDASIM=1`` the ``cuda`` backend's ``xp`` is :data:`hltemu.strictxp.
strict_numpy`.  Each audited trap is planted in a small stage run through the pipeline, and must
be refused with an error naming the call; the same computation written the CuPy-safe way
(:mod:`hltemu.xpsafe`, :meth:`Backend.item`) passes.
"""

from __future__ import annotations

import numpy as np
import pytest

from hltemu import strictxp, xpsafe
from hltemu.backends import cuda_simulator_enabled, get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.pipeline import Stage, run_batch

pytestmark = pytest.mark.skipif(
    not (cuda_simulator_enabled() and strictxp.enabled()),
    reason="the strict shim is the xp of the CUDA simulator (on a GPU, xp is CuPy itself)",
)


def _batch(counts=(3, 0, 2)) -> EventBatch:
    be = get_backend("cuda")
    n = int(sum(counts))
    coll = Collection.from_counts(np.asarray(counts), {"x": np.arange(n, dtype=np.float64)})
    return EventBatch(get_backend("cpu"), len(counts), {"Obj": coll}).to(be)


def _stage(fn) -> Stage:
    from hltemu.stages.antikt import AntiKtConfig  # any frozen config dataclass will do

    impl = {"cuda": lambda batch, cfg: {"out": fn(batch)}}
    return Stage("planted", ("Obj",), ("out",), AntiKtConfig, impl)


def _event_level(batch, values):
    return Collection.event_level({"v": values}, batch.backend.xp)


def _run(fn):
    batch = _batch()
    return run_batch(batch, [_stage(fn)])


def test_shim_is_the_simulator_xp():
    be = get_backend("cuda")
    assert be.xp is strictxp.strict_numpy
    assert isinstance(_batch()["Obj"]["x"], strictxp.DeviceArray)


@pytest.mark.parametrize("trap, message", [
    ("repeat", r"xp\.repeat\(a, repeats\) with an array of repeats"),
    ("bincount_empty", r"xp\.bincount of an empty array"),
    ("asarray", r"np\.asarray/np\.array of device data"),
    ("int", r"int\(\) of a device array inside stage 'planted'"),
    ("bool", r"bool\(\) of a device array inside stage 'planted'"),
    ("float", r"float\(\) of a device array inside stage 'planted'"),
    ("host_mix", r"host NumPy array .* mixed with device arrays"),
    ("index", r"operator\.index\(\) of a device array"),
])
def test_planted_trap_is_refused(trap, message):
    def planted(batch):
        obj, xp = batch["Obj"], batch.backend.xp
        counts = obj.offsets[1:] - obj.offsets[:-1]
        if trap == "repeat":
            ev = xp.repeat(xp.arange(batch.n_events), counts)
            return _event_level(batch, xp.zeros(batch.n_events) + ev.shape[0])
        if trap == "bincount_empty":
            return _event_level(batch, xp.bincount(xp.zeros(0, dtype=xp.int64),
                                                   minlength=batch.n_events))
        if trap == "asarray":
            return _event_level(batch, xp.asarray(np.asarray(counts) * 1.0))
        if trap == "int":
            n = int(obj.offsets[-1])
            return _event_level(batch, xp.full(batch.n_events, n))
        if trap == "bool":
            if (obj["x"] > 1).any():
                pass
            return _event_level(batch, counts)
        if trap == "float":
            return _event_level(batch, xp.full(batch.n_events, float(obj["x"].sum())))
        if trap == "index":
            return _event_level(batch, obj["x"][: obj.offsets[-1]])
        if trap == "host_mix":
            return _event_level(batch, counts + np.ones(batch.n_events, dtype=np.int64))
        raise AssertionError(trap)

    with pytest.raises(strictxp.StrictXPError, match=message):
        _run(planted)


def test_the_safe_forms_pass():
    def safe(batch):
        obj, xp, be = batch["Obj"], batch.backend.xp, batch.backend
        ev = xpsafe.event_index(obj.offsets, obj["x"].shape[0], xp)
        per_event = xpsafe.bincount(ev, batch.n_events, xp)
        empty = xpsafe.bincount(xp.zeros(0, dtype=xp.int64), batch.n_events, xp)
        n = be.item(obj.offsets[-1])  # explicit read: allowed
        host = be.to_device(np.ones(batch.n_events, dtype=np.int64))  # explicit upload
        return _event_level(batch, per_event + empty + host + n)

    out = _run(safe)["out"].to_host()
    np.testing.assert_array_equal(out["v"], [3 + 1 + 5, 0 + 1 + 5, 2 + 1 + 5])


def test_outside_stages_explicit_conversions_still_work():
    x = _batch()["Obj"]["x"]
    assert int(x[1]) == 1 and float(x[2]) == 2.0 and bool(x[1])  # not inside a stage
    np.testing.assert_array_equal(get_backend("cuda").to_host(x), np.arange(5.0))
    with pytest.raises(strictxp.StrictXPError, match="np.asarray"):
        np.asarray(x)  # CuPy refuses this everywhere


def test_repeat_back_in_antikt_fails_the_stage(monkeypatch):
    """What the suite would say if someone put ``xp.repeat(arange, counts)`` back into antikt."""
    from hltemu.stages import antikt

    def event_index_by_repeat(offsets, n_rows, xp):
        return xp.repeat(xp.arange(offsets.shape[0] - 1, dtype=xp.int64),
                         offsets[1:] - offsets[:-1])

    monkeypatch.setattr(antikt, "event_index", event_index_by_repeat)
    be = get_backend("cuda")
    px = np.array([10.0, 5.0, -3.0, 8.0])
    zeros = np.zeros(4)
    e = np.hypot(px, 1.0)
    with pytest.raises(strictxp.StrictXPError, match=r"xp\.repeat"):
        antikt.antikt_jets(*(be.to_device(a) for a in (px, np.ones(4), zeros, e)),
                           be.to_device(np.array([0, 2, 4])), 0.4, 0.0, be)


def test_event_index_matches_repeat_on_random_offsets():
    rng = np.random.default_rng(7)
    for _ in range(50):
        counts = rng.integers(0, 4, size=rng.integers(0, 8))
        offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
        want = np.repeat(np.arange(len(counts)), counts)
        np.testing.assert_array_equal(xpsafe.event_index(offsets, int(offsets[-1])), want)
