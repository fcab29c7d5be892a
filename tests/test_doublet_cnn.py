"""Stage ``doublet_cnn``: weights files, the NumPy forward pass against PyTorch, training,
cross-backend agreement (reference / cpu / cuda) and the stage in the pipeline."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.cnn import (
    SCORE_TOLERANCE,
    ModelError,
    encode_reference,
    head_reference,
    load_model,
    model_paths,
    random_model,
    roc_auc,
    save_model,
    working_point_for,
)
from hltemu.config import ConfigError, DoubletCnnConfig, DoubletsConfig
from hltemu.io import read_collections
from hltemu.pipeline import PipelineError, get_stage, run_batch
from hltemu.stages.doublet_cnn import OUTPUT, get_model, score_doublets, select_doublets
from hltemu.stages.doublets import find_doublets

SAMPLE = Path(__file__).resolve().parents[1] / "hltemu" / "data" / "sample.root"
HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(
    not HAS_TORCH, reason="PyTorch not installed (optional extra hltemu[train]; CI installs "
    "only .[test])")


# -- shared inputs -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_hits() -> Collection:
    """PixelHit of the first 2 events of the shipped ttbar PU50 sample (held out from training:
    the shipped model was trained on other seeds)."""
    return read_collections(SAMPLE, ["PixelHit"])["PixelHit"].select_events(0, 2)


@pytest.fixture(scope="module")
def sample_doublets(sample_hits) -> Collection:
    return find_doublets(sample_hits, DoubletsConfig(), get_backend("cpu"))


def subset(doublets: Collection, rows: np.ndarray) -> Collection:
    """Doublets ``rows`` (sorted) of ``doublets``, keeping their events."""
    rows = np.sort(rows)
    ev = np.searchsorted(doublets.offsets[1:], rows, side="right")
    counts = np.bincount(ev, minlength=doublets.n_events)
    return Collection.from_counts(counts, {k: v[rows] for k, v in doublets.columns.items()})


def scores_on(name: str, hits: Collection, doublets: Collection, model) -> np.ndarray:
    be = get_backend(name)
    return be.to_host(score_doublets(hits.to(be), doublets.to(be), model, be))


# -- the shipped model -------------------------------------------------------------------------
def test_shipped_model_loads_and_is_small():
    m = load_model("builtin:doublet_cnn")
    json_path, npz_path = model_paths("builtin:doublet_cnn")
    assert npz_path.stat().st_size + json_path.stat().st_size < 200_000
    assert 0.0 < m.working_point < 1.0
    assert m.working_point_efficiency == pytest.approx(0.99)
    t = m.training
    assert t["options"]["seed"] >= 0 and t["train_events"] >= 20
    assert t["validation_auc"] > 0.8
    assert all("generate" in f and f["generate"]["pileup"] == 50.0 for f in t["train_files"])
    assert get_model("builtin:doublet_cnn") is get_model("builtin:doublet_cnn")  # cached


def test_shipped_model_keeps_99_percent_of_true_doublets(sample_hits, sample_doublets):
    """On held-out events the default working point keeps ~99% of true doublets and removes a
    good share of fakes."""
    m = load_model("builtin:doublet_cnn")
    s = scores_on("cpu", sample_hits, sample_doublets, m)
    true = sample_doublets["sim_index"] >= 0
    kept_true = (s[true] >= np.float32(m.working_point)).mean()
    removed_fake = (s[~true] < np.float32(m.working_point)).mean()
    assert kept_true > 0.975, kept_true
    assert removed_fake > 0.3, removed_fake
    assert roc_auc(s, true) > 0.85


# -- the NumPy forward against PyTorch ---------------------------------------------------------
@needs_torch
def test_reference_forward_matches_torch():
    """Same layouts as PyTorch: conv (out, in, k, k) cross-correlation, dense (out, in),
    flatten in (channel, row, column) order, one-hot layers after the features."""
    import torch

    from hltemu.cnn_train import export, torch_network

    torch.manual_seed(3)
    net = torch_network(3, 5, 3, 2, 6, 7, 15)
    rng = np.random.default_rng(0)
    n_hits, n = 50, 200
    pads = (rng.random((n_hits, 8, 8)) * (rng.random((n_hits, 8, 8)) < 0.2) * 3e4
            ).astype(np.float32)
    inner, outer = rng.integers(0, n_hits, n), rng.integers(0, n_hits, n)
    feats = rng.standard_normal((n, 15)).astype(np.float32)
    li, lo = rng.integers(0, 10, n), rng.integers(0, 10, n)
    m = export(net, tuple(random_model().features), np.zeros(15), np.ones(15), 1e4)
    with torch.no_grad():
        t = torch.sigmoid(net(torch.from_numpy(pads / np.float32(1e4)), torch.from_numpy(inner),
                              torch.from_numpy(outer), torch.from_numpy(feats),
                              torch.from_numpy(li), torch.from_numpy(lo))).numpy()
    emb = encode_reference(m, pads)
    ref = head_reference(m, emb[inner], emb[outer], feats, li, lo)
    np.testing.assert_allclose(ref, t, atol=SCORE_TOLERANCE, rtol=0)


# -- training ------------------------------------------------------------------------------------
@needs_torch
def test_training_tiny_dataset_is_reproducible(tmp_path):
    """Two runs with one seed give the same weights; the CLI writes a model the stage runs."""
    from click.testing import CliRunner

    from hltemu.cli import cli
    from hltemu.cnn_train import Dataset, build_dataset, train

    data = build_dataset([SAMPLE], max_events=3)
    assert len(data.events) == 3 and data.n_true > 0
    tr, va = Dataset(data.events[:2]), Dataset(data.events[2:])
    kw = dict(epochs=2, seed=5, batch_size=16384, conv1=2, conv2=3, embed=4, hidden=8)
    r1, r2 = train(tr, va, **kw), train(tr, va, **kw)
    for k, v in r1.model.arrays.items():
        np.testing.assert_array_equal(v, r2.model.arrays[k], err_msg=k)
    assert r1.history == r2.history
    assert r1.history[-1]["val_auc"] > 0.6  # it learns something in two short epochs
    r3 = train(tr, va, **{**kw, "seed": 6, "epochs": 1})
    assert not np.array_equal(r3.model.arrays["conv1.weight"], r1.model.arrays["conv1.weight"])

    out = tmp_path / "tiny"
    res = CliRunner().invoke(cli, ["train-doublet-cnn", str(SAMPLE), "--max-events", "3",
                                   "--epochs", "1", "--conv1", "2", "--conv2", "2", "--embed",
                                   "3", "--hidden", "4", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "validation AUC" in res.output
    m = load_model(out.with_suffix(".json"))
    assert m.training["train_events"] == 3 - 1 and m.training["validation_events"] == 1
    assert m.n_embed == 3 and m.n_hidden == 4


def test_training_without_torch_says_how_to_install(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from hltemu.cli import cli

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    res = CliRunner().invoke(cli, ["train-doublet-cnn", str(SAMPLE), "-o", str(tmp_path / "m")])
    assert res.exit_code == 1
    assert "pip install 'hltemu[train]'" in res.output


# -- cross-backend agreement ---------------------------------------------------------------------
def _agreement(ref: np.ndarray, other: np.ndarray, wp: float) -> int:
    """Assert scores within tolerance and decisions equal away from the working point; return
    the number of decisions that differ (all within the tolerance of the working point)."""
    np.testing.assert_allclose(other, ref, atol=SCORE_TOLERANCE, rtol=0)
    differ = (ref >= np.float32(wp)) != (other >= np.float32(wp))
    assert np.all(np.abs(ref[differ] - wp) <= SCORE_TOLERANCE)
    return int(differ.sum())


def test_cpu_matches_reference_on_many_doublets(sample_hits, sample_doublets):
    """Shipped model, ~68k doublets of 2 PU50 events."""
    m = load_model("builtin:doublet_cnn")
    ref = scores_on("reference", sample_hits, sample_doublets, m)
    cpu = scores_on("cpu", sample_hits, sample_doublets, m)
    assert ref.shape == (sample_doublets.size,) and sample_doublets.size > 50_000
    assert np.abs(cpu - ref).max() < 2e-6  # float32, different summation order
    assert _agreement(ref, cpu, m.working_point) <= 5


def test_cuda_matches_reference(sample_hits, sample_doublets, backend):
    """A spread of doublets from both events (kept small: the CUDA simulator is slow)."""
    m = load_model("builtin:doublet_cnn")
    rows = np.linspace(0, sample_doublets.size - 1, 48).astype(np.int64)
    sub = subset(sample_doublets, rows)
    ref = scores_on("reference", sample_hits, sub, m)
    got = scores_on(backend.name, sample_hits, sub, m)
    _agreement(ref, got, m.working_point)
    # another architecture (kernel sizes 2 and 4, odd widths) on random inputs
    m = random_model(9, conv1=3, conv2=5, kernel1=2, kernel2=4, embed=7, hidden=11)
    hits, doublets = random_inputs(np.random.default_rng(9), 24)
    _agreement(scores_on("reference", hits, doublets, m), scores_on(backend.name, hits,
                                                                     doublets, m), 0.5)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), conv1=st.integers(1, 5), conv2=st.integers(1, 6),
       k1=st.integers(1, 4), k2=st.integers(1, 4), embed=st.integers(1, 12),
       hidden=st.integers(1, 20), n=st.integers(1, 300))
def test_random_models_agree_cpu_reference(seed, conv1, conv2, k1, k2, embed, hidden, n):
    """Random architectures, weights, pads and doublets: cpu equals reference."""
    if k1 + k2 - 1 > 8:
        k2 = 8 - k1 + 1
    m = random_model(seed, conv1, conv2, k1, k2, embed, hidden)
    hits, doublets = random_inputs(np.random.default_rng(seed), n)
    ref = scores_on("reference", hits, doublets, m)
    _agreement(ref, scores_on("cpu", hits, doublets, m), m.working_point)


def random_inputs(rng: np.random.Generator, n: int) -> tuple[Collection, Collection]:
    """Two events of random hits (sparse pads) and ``n`` random doublets between them."""
    n_hits = [int(rng.integers(2, 40)), int(rng.integers(2, 40))]
    total = sum(n_hits)
    pads = (rng.random((total, 8, 8)) * (rng.random((total, 8, 8)) < 0.15) * 4e4
            ).astype(np.float32)
    hits = Collection.from_counts(n_hits, {"pad": pads})
    counts = [n // 2, n - n // 2]
    ev = np.repeat([0, 1], counts)
    limit = np.array(n_hits)[ev]
    f32 = lambda lo, hi: rng.uniform(lo, hi, n).astype(np.float32)  # noqa: E731
    i32 = lambda lo, hi: rng.integers(lo, hi, n).astype(np.int32)  # noqa: E731
    cols = {"inner": (rng.random(n) * limit).astype(np.int32),
            "outer": (rng.random(n) * limit).astype(np.int32),
            "inner_layer": i32(0, 10), "outer_layer": i32(0, 10), "r_inner": f32(2, 16),
            "z_inner": f32(-30, 30), "r_outer": f32(5, 17), "z_outer": f32(-50, 50),
            "dr": f32(0.01, 14), "dz": f32(-20, 20), "dphi": f32(-0.1, 0.1),
            "z0": f32(-12, 12), "curvature": f32(-0.01, 0.01), "inner_size_x": i32(1, 6),
            "inner_size_y": i32(1, 9), "outer_size_x": i32(1, 6), "outer_size_y": i32(1, 9)}
    return hits, Collection.from_counts(counts, cols)


# -- the stage -----------------------------------------------------------------------------------
def test_stage_in_pipeline(sample_hits, backend):
    """doublets -> doublet_cnn on each backend: filtered_doublets is the doublets with score >=
    the working point, in order, with every column plus ``score``."""
    hits = sample_hits.select_events(0, 1) if backend.name != "cuda" else None
    if hits is None:  # cuda simulator: a handful of hits near one another
        hits = sample_hits.select_events(0, 1)
        keep = np.nonzero((hits["layer"] < 2) & (np.abs(np.arctan2(hits["y"], hits["x"]))
                                                 < 0.05) & (np.abs(hits["z"]) < 5))[0]
        hits = Collection.from_counts([keep.size], {k: v[keep] for k, v in hits.columns.items()})
    batch = EventBatch(backend, hits.n_events, {"PixelHit": hits.to(backend)})
    run_batch(batch, [get_stage("doublets"), get_stage("doublet_cnn")])
    d, f = batch["doublets"].to_host(), batch[OUTPUT].to_host()
    assert 0 < f.size < d.size
    assert set(f.columns) == set(d.columns) | {"score"}
    m = load_model("builtin:doublet_cnn")
    s = scores_on("reference", hits, d, m)
    keep = s >= np.float32(m.working_point)
    if backend.name == "reference":
        np.testing.assert_array_equal(f["score"], s[keep])
    near = np.abs(s - m.working_point) <= SCORE_TOLERANCE
    assert f.size == keep.sum() or near.any()
    kept_pairs = set(zip(f["inner"].tolist(), f["outer"].tolist(), strict=True))
    want = set(zip(d["inner"][keep & ~near].tolist(), d["outer"][keep & ~near].tolist(),
                   strict=True))
    assert want <= kept_pairs
    assert np.all(f["score"] >= np.float32(m.working_point))


def test_working_point_setting(sample_hits, sample_doublets):
    m = load_model("builtin:doublet_cnn")
    s = scores_on("cpu", sample_hits, sample_doublets, m)
    all_kept = select_doublets(sample_doublets, s, 0.0, np)
    assert all_kept.size == sample_doublets.size
    np.testing.assert_array_equal(all_kept.offsets, sample_doublets.offsets)
    half = select_doublets(sample_doublets, s, 0.5, np)
    assert half.size == int((s >= 0.5).sum())
    np.testing.assert_array_equal(np.diff(half.offsets), [
        int((s[a:b] >= 0.5).sum()) for a, b in zip(sample_doublets.offsets[:-1],
                                                   sample_doublets.offsets[1:], strict=True)])
    wp = working_point_for(s, sample_doublets["sim_index"] >= 0, 0.95)
    assert (s[sample_doublets["sim_index"] >= 0] >= np.float32(wp)).mean() >= 0.95
    with pytest.raises(ConfigError, match="working_point"):
        DoubletCnnConfig(working_point=1.5)
    with pytest.raises(ConfigError, match="chunk_size"):
        DoubletCnnConfig(chunk_size=0)


def test_chunks_do_not_change_scores(sample_hits, sample_doublets):
    m = load_model("builtin:doublet_cnn")
    sub = subset(sample_doublets, np.arange(0, sample_doublets.size, 37))
    for name in ("reference", "cpu"):
        be = get_backend(name)
        a = score_doublets(sample_hits, sub, m, be, chunk_size=1 << 18)
        b = score_doublets(sample_hits, sub, m, be, chunk_size=97)
        # the same sums, but BLAS (reference) and vectorised loops (cpu) may block them
        # differently for other array sizes
        np.testing.assert_allclose(a, b, atol=SCORE_TOLERANCE / 10, rtol=0)


# -- bad weights files and inputs ----------------------------------------------------------------
@pytest.fixture
def saved(tmp_path) -> Path:
    stem = tmp_path / "model"
    save_model(random_model(1), stem)
    return stem


def test_save_load_round_trip(saved):
    m, r = load_model(saved), random_model(1)
    for k, v in r.arrays.items():
        np.testing.assert_array_equal(m.arrays[k], v)
    assert load_model(saved.with_suffix(".npz")).features == r.features


def test_corrupt_npz_is_a_clear_error(saved):
    npz = saved.with_suffix(".npz")
    npz.write_bytes(npz.read_bytes()[:200])
    with pytest.raises(ModelError, match=r"model\.npz: cannot read the weights"):
        load_model(saved)
    npz.write_bytes(b"not a zip file at all")
    with pytest.raises(ModelError, match=r"model\.npz: cannot read the weights"):
        load_model(saved)


def test_mismatched_shapes_are_a_clear_error(saved):
    other = random_model(2, embed=12)
    np.savez(saved.with_suffix(".npz"), **other.arrays)
    with pytest.raises(ModelError, match=r"model\.npz: array 'embed.weight' has shape "
                                         r"\(12, 128\), model\.json declares \(16, 128\)"):
        load_model(saved)
    # a JSON and npz that agree with each other but not with the architecture
    desc = json.loads(saved.with_suffix(".json").read_text())
    desc["features"] = desc["features"][:-1]
    desc["feature_mean"], desc["feature_std"] = desc["feature_mean"][:-1], desc["feature_std"][:-1]
    save_model(random_model(1), saved)
    saved.with_suffix(".json").write_text(json.dumps(desc))
    with pytest.raises(ModelError, match=r"array 'hidden.weight' has shape \(32, 67\), "
                                         r"expected \(32, 66\)"):
        load_model(saved)


def test_missing_array_and_bad_json_are_clear_errors(saved):
    arrays = dict(random_model(1).arrays)
    del arrays["conv2.bias"]
    np.savez(saved.with_suffix(".npz"), **arrays)
    with pytest.raises(ModelError, match=r"array 'conv2.bias' \(declared in model.json\) is "
                                         "missing"):
        load_model(saved)
    saved.with_suffix(".json").write_text("{ not json")
    with pytest.raises(ModelError, match=r"model\.json: not valid JSON"):
        load_model(saved)
    saved.with_suffix(".json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ModelError, match="not a doublet-CNN description"):
        load_model(saved)
    with pytest.raises(ModelError, match=r"nope\.json does not exist"):
        load_model(saved.parent / "nope")
    with pytest.raises(ModelError, match="shipped models: builtin:doublet_cnn"):
        load_model("builtin:nope")


def test_stage_reports_bad_weights_and_inputs(saved, sample_hits):
    be = get_backend("reference")
    hits = sample_hits.select_events(0, 1)
    batch = EventBatch(be, 1, {"PixelHit": hits})
    stage = get_stage("doublet_cnn")
    run_batch(batch, [get_stage("doublets")])
    saved.with_suffix(".npz").write_bytes(b"garbage")
    with pytest.raises(PipelineError, match=r"\[doublet_cnn\] weights: .*model\.npz: cannot read"):
        stage(batch, DoubletCnnConfig(weights=str(saved)))
    no_pad = EventBatch(be, 1, {"PixelHit": Collection(hits.offsets, {
        k: v for k, v in hits.columns.items() if k != "pad"}), "doublets": batch["doublets"]})
    with pytest.raises(PipelineError, match="needs the PixelHit column 'pad'"):
        stage(no_pad, DoubletCnnConfig())
    d = batch["doublets"]
    bad = dict(d.columns, outer=d["outer"] + hits.size)
    broken = EventBatch(be, 1, {"PixelHit": hits, "doublets": Collection(d.offsets, bad)})
    with pytest.raises(PipelineError, match=r"doublets\.outer = \d+ in event 0 is not a "
                                            "PixelHit row"):
        stage(broken, DoubletCnnConfig())
    nan = dict(d.columns, dz=np.where(np.arange(d.size) == 5, np.nan, d["dz"]).astype(np.float32))
    broken = EventBatch(be, 1, {"PixelHit": hits, "doublets": Collection(d.offsets, nan)})
    with pytest.raises(PipelineError, match="feature 'dz' is not finite for doublet row 5"):
        stage(broken, DoubletCnnConfig())


def test_config_round_trip():
    cfg = DoubletCnnConfig(weights="some/path", working_point=0.25)
    assert dataclasses.replace(cfg).working_point == 0.25
    assert get_stage("doublet_cnn").config_type is DoubletCnnConfig
