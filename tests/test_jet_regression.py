"""Stage ``jet_regression``: the features against a plain-Python oracle, the network against a
plain-Python forward pass (and PyTorch's where installed), reference = cpu = cuda within the
stated tolerance on many random jets and on the built-in sample, no offline or truth input
reaching the predictions, clear errors, the weights file, and a one-epoch training smoke test
(skipped without PyTorch)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from hltemu.backends import cuda_status, get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.jet_regression import (
    DEFAULT_FEATURES,
    FEATURE_NAMES,
    MAX_FILE_BYTES,
    OUTPUT_RTOL,
    OUTPUT_TOLERANCE,
    RESIDUAL_ARRAYS,
    JetRegression,
    ModelError,
    Residual,
    calibrated_log_factor,
    constituent_rows,
    forward_reference,
    jet_features_reference,
    load_model,
    random_model,
    save_model,
    standardise,
)
from hltemu.pipeline import PipelineError, get_stage
from hltemu.stages.jet_regression import JetRegressionConfig

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed (hltemu[train])")
BACKENDS = ("reference", "cpu", "cuda")
JET_COLUMNS = ("pt", "eta", "phi", "mass", "px", "py", "pz", "E", "area", "n_constituents")


def backends() -> list[str]:
    return [b for b in BACKENDS if b != "cuda" or cuda_status()[0]]


# -- inputs ------------------------------------------------------------------------------------
def random_batch(seed: int, n_events: int = 40, extra: bool = False) -> dict[str, Collection]:
    """Random events: clusters (massless, energy > 0, some outside jets), jets whose
    constituents they are (4-vectors summed, as anti-kT's E-scheme), rho; with ``extra`` the
    offline and truth collections too (pfjets, genjets, GenPart)."""
    rng = np.random.default_rng(seed)
    cl_counts, jet_counts = [], []
    cl_cols = {k: [] for k in ("energy", "energy_em", "eta", "phi")}
    cl_jet, jets = [], {k: [] for k in JET_COLUMNS}
    for _ in range(n_events):
        n_jets = int(rng.integers(0, 6))
        n_cl = 0
        for j in range(n_jets):
            eta0, phi0 = rng.uniform(-2.8, 2.8), rng.uniform(-math.pi, math.pi)
            k = int(rng.integers(1, 12))
            e = rng.exponential(15.0, k) + 0.2
            eta = eta0 + rng.normal(0, 0.12, k)
            phi = (phi0 + rng.normal(0, 0.12, k) + math.pi) % (2 * math.pi) - math.pi
            em = e * rng.uniform(-0.2, 1.1, k)  # negative and > E parts: pileup-subtracted cells
            for c, v in zip(("energy", "energy_em", "eta", "phi"), (e, em, eta, phi),
                            strict=True):
                cl_cols[c].append(v)
            cl_jet.append(np.full(k, j))
            pt = e / np.cosh(eta)
            px, py, pz = (pt * np.cos(phi)).sum(), (pt * np.sin(phi)).sum(), \
                (pt * np.sinh(eta)).sum()
            jpt = math.hypot(px, py)
            energy = e.sum()
            for c, v in (("pt", jpt), ("eta", math.asinh(pz / jpt)), ("phi", math.atan2(py, px)),
                         ("mass", math.sqrt(max(energy ** 2 - px ** 2 - py ** 2 - pz ** 2, 0))),
                         ("px", px), ("py", py), ("pz", pz), ("E", energy),
                         ("area", 0.4 ** 2 * math.pi), ("n_constituents", k)):
                jets[c].append(v)
            n_cl += k
        k = int(rng.integers(0, 5))  # clusters in no jet
        for c, v in (("energy", rng.exponential(1.0, k)), ("energy_em", rng.normal(0, 1, k)),
                     ("eta", rng.uniform(-3, 3, k)), ("phi", rng.uniform(-math.pi, math.pi, k))):
            cl_cols[c].append(v)
        cl_jet.append(np.full(k, -1))
        cl_counts.append(n_cl + k)
        jet_counts.append(n_jets)
    clusters = Collection.from_counts(cl_counts, {
        c: np.concatenate(v) if v else np.zeros(0) for c, v in cl_cols.items()})
    out = {
        "clusters": clusters,
        "cluster_jet": Collection.from_counts(
            cl_counts, {"jet": np.concatenate(cl_jet).astype(np.int32) if cl_jet
                        else np.zeros(0, np.int32)}),
        "jets": Collection.from_counts(jet_counts, {
            c: np.asarray(v, dtype=np.int64 if c == "n_constituents" else np.float64)
            for c, v in jets.items()}),
        "rho": Collection.event_level({"rho": rng.uniform(0, 50, n_events)}),
    }
    if extra:
        for name, n in (("pfjets", 4), ("genjets", 5), ("GenPart", 30)):
            counts = rng.integers(0, n, n_events)
            out[name] = Collection.from_counts(counts, {
                c: rng.normal(0, 1, int(counts.sum())) for c in ("pt", "eta", "phi", "mass")})
    return out


def random_residual(seed: int) -> Residual:
    """A residual of three |eta| bins with random knots between 10 and 500 GeV and factors
    within +-20%."""
    rng = np.random.default_rng(seed)
    knots = np.sort(rng.uniform(np.log(10), np.log(500), (3, 6)), axis=1)
    return Residual(np.array([0.0, 1.3, 2.5, 3.0]), knots, rng.uniform(-0.2, 0.2, (3, 6)))


def model_file(tmp_path: Path, seed: int = 0, residual: bool = False, **kw) -> str:
    """A random model with a realistic standardisation (and a random residual), saved; its
    path."""
    from dataclasses import replace

    mean = np.array([3.5, 1.3, 0.5, 30, 0.4, 5, 0.8, 0.8, 0.5, 0.05])
    std = np.array([1.0, 0.8, 1.0, 10, 0.4, 3, 0.15, 0.15, 0.3, 0.05])
    m = random_model(seed, hidden=kw.pop("hidden", (48, 32)), mean=mean, std=std, **kw)
    if residual:
        m = replace(m, residual=random_residual(seed))
    return str(save_model(m, tmp_path / f"model{seed}{'r' if residual else ''}.npz"))


def run_stage(colls: dict[str, Collection], backend: str, weights: str) -> Collection:
    be = get_backend(backend)
    n = colls["jets"].n_events
    batch = EventBatch(get_backend("reference"), n, dict(colls)).to(be)
    out = get_stage("jet_regression")(batch, JetRegressionConfig(weights=weights))
    return out["regressed_jets"].to_host()


# -- features ----------------------------------------------------------------------------------
def oracle_features(jet: dict, rho: float, clusters: list[dict]) -> dict[str, float]:
    """The features of one jet as the module docstring defines them, in plain Python."""
    pts = [c["energy"] / math.cosh(c["eta"]) for c in clusters]
    out = {"log_pt_raw": math.log(jet["pt"]), "abs_eta": abs(jet["eta"]), "area": jet["area"],
           "rho": rho, "offset_fraction": rho * jet["area"] / jet["pt"],
           "n_clusters": float(len(clusters)), "n_pixel_vertices": 0.0}
    if not clusters:
        return {**out, "lead_fraction": 0.0, "pt_d": 0.0, "em_fraction": 0.0, "width": 0.0}
    s = sum(pts)
    drs = []
    for c in clusters:
        dphi = math.remainder(c["phi"] - jet["phi"], 2 * math.pi)
        drs.append(math.hypot(c["eta"] - jet["eta"], dphi))
    em = sum(c["energy_em"] for c in clusters) / sum(c["energy"] for c in clusters)
    return {**out, "lead_fraction": max(pts) / s, "pt_d": math.sqrt(sum(p * p for p in pts)) / s,
            "em_fraction": min(max(em, -1.0), 2.0),
            "width": sum(p * d for p, d in zip(pts, drs, strict=True)) / s}


def test_features_equal_the_definition():
    colls = random_batch(1, n_events=30)
    jets, cl, cj = colls["jets"], colls["clusters"], colls["cluster_jet"]
    rows = constituent_rows(jets.offsets, cl.offsets, cj["jet"])
    jev = jets.event_index()
    f = jet_features_reference({k: jets[k] for k in ("pt", "eta", "phi", "area")},
                               colls["rho"]["rho"][jev], np.zeros(jets.size),
                               {k: cl[k] for k in ("energy", "energy_em", "eta", "phi")}, rows)
    assert f.shape == (jets.size, len(FEATURE_NAMES)) and jets.size > 50
    for j in range(jets.size):
        members = [{k: float(cl[k][i]) for k in ("energy", "energy_em", "eta", "phi")}
                   for i in np.flatnonzero(rows == j)]
        want = oracle_features({k: float(jets[k][j]) for k in ("pt", "eta", "phi", "area")},
                               float(colls["rho"]["rho"][jev[j]]), members)
        for i, name in enumerate(FEATURE_NAMES):
            assert f[j, i] == pytest.approx(want[name], rel=1e-12, abs=1e-12), (j, name)


def member_rows(colls: dict[str, Collection]) -> tuple[np.ndarray, np.ndarray]:
    """Each cluster's global jet row (-1: none) and the constituent clusters grouped by jet,
    ascending within a jet (int64): the kernels' ``members``."""
    jets = colls["jets"]
    rows = constituent_rows(jets.offsets, colls["clusters"].offsets,
                            colls["cluster_jet"]["jet"])
    members = np.argsort(np.where(rows >= 0, rows, jets.size), kind="stable")
    return rows, members[rows[members] >= 0].astype(np.int64)


def test_cpu_features_kernel_equals_the_reference():
    from hltemu.kernels.jet_regression import features_cpu

    colls = random_batch(2, n_events=200)
    jets, cl = colls["jets"], colls["clusters"]
    rows, members = member_rows(colls)
    offsets = np.searchsorted(rows[members], np.arange(jets.size + 1))
    jet_rho = colls["rho"]["rho"][jets.event_index()]
    got = np.empty((jets.size, len(FEATURE_NAMES)))
    features_cpu(offsets.astype(np.int64), members.astype(np.int64), cl["energy"],
                 cl["energy_em"], cl["eta"], cl["phi"], jets["pt"], jets["eta"], jets["phi"],
                 jets["area"], jet_rho, np.zeros(jets.size), got)
    want = jet_features_reference({k: jets[k] for k in ("pt", "eta", "phi", "area")}, jet_rho,
                                  np.zeros(jets.size),
                                  {k: cl[k] for k in ("energy", "energy_em", "eta", "phi")}, rows)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_cpu_tiles_equal_the_per_jet_network_bit_for_bit():
    """The cpu kernel's tiled network (jets innermost, vectorised) gives exactly what the
    network run one jet at a time (as the CUDA kernel does) gives, for jet counts around the
    tile size."""
    import numba
    from hltemu.kernels.jet_regression import (
        MAX_WIDTH,
        N_FEATURES,
        TILE,
        features_cpu,
        forward,
        regress_jets_cpu,
    )

    from hltemu.jet_regression import flat_params

    per_jet = numba.njit(forward)

    @numba.njit
    def loop(f, fi, mean, std, params, layout, out):
        a = np.empty((MAX_WIDTH, 1), dtype=np.float32)
        b = np.empty((MAX_WIDTH, 1), dtype=np.float32)
        for j in range(f.shape[0]):  # one jet at a time, as a CUDA thread runs it
            per_jet(j, 1, f[j:j + 1], fi, mean, std, params, layout, a, b, out)

    m = random_model(21, hidden=(64, 64, 32), mean=np.full(10, 0.5), std=np.full(10, 2.0))
    params, layout = flat_params(m)
    model = (m.feature_index(), m.feature_mean, m.feature_std, params, layout)
    rng = np.random.default_rng(21)
    colls = random_batch(21, n_events=120)
    jets, cl = colls["jets"], colls["clusters"]
    rows, members = member_rows(colls)
    jet_rho = colls["rho"]["rho"][jets.event_index()] * rng.uniform(0.5, 2.0, jets.size)
    for n in (1, TILE - 1, TILE, TILE + 1, 5 * TILE + 3, jets.size):
        offsets = np.searchsorted(rows[members], np.arange(n + 1)).astype(np.int64)
        args = (offsets, members, cl["energy"], cl["energy_em"], cl["eta"], cl["phi"],
                *(jets[k][:n] for k in ("pt", "eta", "phi", "area")), jet_rho[:n],
                np.zeros(n))
        got = np.zeros((n, 2), np.float32)
        regress_jets_cpu(*args, *model, got)
        f = np.empty((n, N_FEATURES))
        features_cpu(*args, f)
        want = np.zeros((n, 2), np.float32)
        loop(f, *model, want)
        np.testing.assert_array_equal(got, want, err_msg=str(n))
        assert n == 1 or np.ptp(got[:, 0]) > 0


# -- the network -------------------------------------------------------------------------------
def test_forward_equals_a_plain_python_network():
    m = random_model(3, hidden=(5, 4))
    x = np.random.default_rng(0).normal(size=(7, len(m.features))).astype(np.float32)
    got = forward_reference(x, m)
    for row in range(x.shape[0]):
        h = [float(v) for v in x[row]]
        for i, (w, b) in enumerate(zip(m.weights, m.biases, strict=True)):
            h = [float(b[o]) + sum(float(w[o, k]) * h[k] for k in range(len(h)))
                 for o in range(w.shape[0])]
            if i < len(m.weights) - 1:
                h = [max(v, 0.0) for v in h]
        np.testing.assert_allclose(got[row], h, rtol=1e-5, atol=1e-5)


@needs_torch
def test_forward_equals_torch():
    import torch

    from hltemu.jet_regression_train import export, torch_network

    torch.manual_seed(0)
    net = torch_network(len(DEFAULT_FEATURES), (16, 8), 2)
    m = export(net, DEFAULT_FEATURES, np.zeros(10), np.ones(10), ("log_offline_over_raw",
                                                                  "log_truth_over_raw"))
    x = np.random.default_rng(1).normal(size=(50, 10)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(forward_reference(x, m), want, rtol=1e-5, atol=1e-6)


# -- the stage: backends agree -----------------------------------------------------------------
def assert_close(a: Collection, b: Collection) -> None:
    """Outputs within the stated tolerance, the scaled columns within it relative, the rest
    identical."""
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert set(a.columns) == set(b.columns)
    bound = OUTPUT_TOLERANCE + OUTPUT_RTOL * np.abs(a["log_offline_over_raw"])
    for name in ("log_offline_over_raw", "log_truth_over_raw"):
        np.testing.assert_allclose(a[name], b[name], rtol=OUTPUT_RTOL, atol=OUTPUT_TOLERANCE,
                                   err_msg=name)
    for name in ("pt", "E", "px", "py", "pz", "mass", "factor", "residual"):
        if name not in a.columns:
            continue
        diff = np.abs(a[name] - b[name])
        assert np.all(diff <= 1.01 * bound * np.abs(a[name]) + 1e-300), name
    for name in ("eta", "phi", "area", "n_constituents", "pt_raw"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("seed,residual", [(4, False), (5, True), (6, False), (7, True)])
def test_backends_agree_on_random_jets(tmp_path, seed, residual):
    colls = random_batch(seed, n_events=150)
    weights = model_file(tmp_path, seed, residual=residual)
    ref = run_stage(colls, "reference", weights)
    assert ref.size == colls["jets"].size > 200
    # the regressed jets: the raw ones scaled by exp(first output) (times the residual)
    jets = colls["jets"]
    res = ref["residual"] if residual else 1.0
    assert ("residual" in ref.columns) == residual
    if residual:  # the residual at the network's pT, by its definition
        net_pt = jets["pt"] * np.exp(ref["log_offline_over_raw"])
        r = random_residual(seed)
        row = np.clip(np.searchsorted(r.eta_edges, np.abs(jets["eta"]), side="right") - 1, 0,
                      2)
        want = [np.interp(np.log(max(p, 1e-300)), r.log_pt[i], r.log_factor[i])
                for p, i in zip(net_pt, row, strict=True)]
        np.testing.assert_allclose(np.log(res), want, rtol=1e-12, atol=1e-14)
        assert np.ptp(res) > 0.1
    np.testing.assert_allclose(ref["factor"], np.exp(ref["log_offline_over_raw"]) * res,
                               rtol=1e-14)
    np.testing.assert_allclose(ref["pt"], jets["pt"] * ref["factor"], rtol=1e-15)
    np.testing.assert_array_equal(ref["pt_raw"], jets["pt"])
    for b in backends()[1:]:
        assert_close(ref, run_stage(colls, b, weights))


def test_backends_agree_on_the_sample(tmp_path):
    from pythia_inputs import SAMPLE

    from hltemu.io import read_collections
    from hltemu.pipeline import plan, run_batch

    cells = read_collections(str(SAMPLE), ["CaloCell"])["CaloCell"].select_events(0, 4)
    batch = EventBatch(get_backend("cpu"), 4, {"CaloCell": cells})
    planned = plan(["topocluster", "antikt", "rho"], ["CaloCell"], None, [str(SAMPLE)])
    run_batch(batch, planned.stages, planned.config)
    colls = {k: batch[k].to_host() for k in ("jets", "clusters", "cluster_jet", "rho")}
    assert colls["jets"].size > 40
    for weights in (model_file(tmp_path, 7), "builtin:jet_regression_v2.npz"):
        ref = run_stage(colls, "reference", weights)
        for b in backends()[1:]:
            assert_close(ref, run_stage(colls, b, weights))


def test_offline_and_truth_inputs_do_not_change_the_predictions(tmp_path):
    """Every column of pfjets, genjets and GenPart permuted (and the collections dropped):
    the predictions are the same, on every backend."""
    colls = random_batch(8, n_events=60, extra=True)
    weights = model_file(tmp_path, 8)
    rng = np.random.default_rng(0)
    for b in backends():
        base = run_stage(colls, b, weights)
        shuffled = dict(colls)
        for name in ("pfjets", "genjets", "GenPart"):
            c = colls[name]
            shuffled[name] = Collection(c.offsets, {k: rng.permutation(v) + 1.0
                                                    for k, v in c.columns.items()})
        other = run_stage(shuffled, b, weights)
        without = run_stage({k: v for k, v in colls.items()
                             if k not in ("pfjets", "genjets", "GenPart")}, b, weights)
        for name in base.columns:
            np.testing.assert_array_equal(base[name], other[name], err_msg=name)
            np.testing.assert_array_equal(base[name], without[name], err_msg=name)


def test_pixel_vertex_count_feeds_a_model_that_uses_it(tmp_path):
    """A model with n_pixel_vertices reads each event's pixelvertices count, on every
    backend alike; other models ignore the collection."""
    colls = random_batch(16, n_events=50)
    rng = np.random.default_rng(16)
    counts = rng.integers(0, 60, 50)
    colls["pixelvertices"] = Collection.from_counts(counts, {"z": rng.normal(0, 5,
                                                                             counts.sum())})
    m = random_model(16, features=(*DEFAULT_FEATURES, "n_pixel_vertices"),
                     mean=np.r_[np.zeros(10), 30.0], std=np.r_[np.ones(10), 10.0])
    path = str(save_model(m, tmp_path / "vtx.npz"))
    ref = run_stage(colls, "reference", path)
    for b in backends()[1:]:
        assert_close(ref, run_stage(colls, b, path))
    colls["pixelvertices"] = Collection.from_counts(counts + 5, {"z": np.zeros(
        counts.sum() + 5 * 50)})
    moved = run_stage(colls, "reference", path)
    assert not np.array_equal(ref["factor"], moved["factor"])


def test_no_jets_and_jets_without_constituents(tmp_path):
    weights = model_file(tmp_path, 9)
    empty = random_batch(10, n_events=3)
    empty = {k: v.select_events(0, 0) if k != "rho" else Collection.event_level(
        {"rho": np.zeros(0)}) for k, v in empty.items()}
    for b in backends():
        assert run_stage(empty, b, weights).size == 0
    colls = random_batch(11, n_events=20)
    cj = colls["cluster_jet"]
    colls["cluster_jet"] = Collection(cj.offsets, {"jet": np.full(cj.size, -1, np.int32)})
    ref = run_stage(colls, "reference", weights)
    for b in backends()[1:]:
        assert_close(ref, run_stage(colls, b, weights))


# -- errors and the weights file ---------------------------------------------------------------
def test_missing_inputs_are_named(tmp_path):
    weights = model_file(tmp_path, 12)
    colls = random_batch(12, n_events=5)
    with pytest.raises(PipelineError, match=r"needs collection\(s\) \['cluster_jet'\]"):
        run_stage({k: v for k, v in colls.items() if k != "cluster_jet"}, "cpu", weights)
    cl = colls["clusters"]
    no_em = dict(colls, clusters=Collection(cl.offsets, {k: v for k, v in cl.columns.items()
                                                         if k != "energy_em"}))
    for b in backends():
        with pytest.raises(PipelineError, match="needs column 'energy_em' of collection "
                                                "'clusters'"):
            run_stage(no_em, b, weights)
    m = random_model(13, features=(*DEFAULT_FEATURES, "n_pixel_vertices"))
    path = str(save_model(m, tmp_path / "vtx.npz"))
    assert "pixelvertices" in get_stage("jet_regression").needs_for(JetRegressionConfig(path))
    with pytest.raises(PipelineError, match=r"needs collection\(s\) \['pixelvertices'\]"):
        run_stage(colls, "cpu", path)


def test_weights_file_round_trip_and_errors(tmp_path):
    m = random_model(14, hidden=(64, 64, 32))
    path = save_model(m, tmp_path / "m")
    assert path.suffix == ".npz" and path.stat().st_size < MAX_FILE_BYTES
    back = load_model(path)
    assert back.features == m.features and back.outputs == m.outputs
    for a, b in zip(back.weights + back.biases, m.weights + m.biases, strict=True):
        np.testing.assert_array_equal(a, b)
    arrays = m.arrays()
    bad = dict(arrays, **{"layer1.weight": np.zeros((64, 63), np.float32)})
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ModelError, match=r"bad.npz: array 'layer1.weight' has shape \(64, 63\), "
                                         r"expected \(64, 64\)"):
        load_model(tmp_path / "bad.npz")
    np.savez(tmp_path / "std.npz", **dict(arrays, feature_std=np.ones(3, np.float32)))
    with pytest.raises(ModelError, match=r"std.npz: array 'feature_std' has shape \(3,\)"):
        load_model(tmp_path / "std.npz")
    np.savez(tmp_path / "nolayer.npz", **{k: v for k, v in arrays.items() if k != "layer2.bias"})
    with pytest.raises(ModelError, match=r"missing array\(s\) \['layer2.bias'\]"):
        load_model(tmp_path / "nolayer.npz")
    meta = json.loads(str(arrays["meta"]))
    np.savez(tmp_path / "fmt.npz", **dict(arrays, meta=np.array(json.dumps({**meta,
                                                                           "format": "x"}))))
    with pytest.raises(ModelError, match="not a jet-regression file"):
        load_model(tmp_path / "fmt.npz")
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "absent.npz")
    with pytest.raises(ModelError, match="shipped: builtin:jet_regression_v2"):
        load_model("builtin:no_such_model.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="junk.npz: cannot read the weights"):
        load_model(tmp_path / "junk.npz")
    # the stage's planner check names the file
    from hltemu.pipeline import config_from_dict, plan

    cfg = config_from_dict({"jet_regression": {"weights": str(tmp_path / "bad.npz")}})
    with pytest.raises(ModelError, match="bad.npz"):
        plan(["jet_regression"], ["jets", "clusters", "cluster_jet", "rho"], cfg)


def test_residual_round_trip_and_errors(tmp_path):
    from dataclasses import replace

    m = replace(random_model(17), residual=random_residual(17))
    back = load_model(save_model(m, tmp_path / "r.npz"))
    for a, b in zip(back.residual.arrays().values(), m.residual.arrays().values(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert load_model(save_model(random_model(17), tmp_path / "n.npz")).residual is None
    arrays = m.arrays()
    np.savez(tmp_path / "part.npz", **{k: v for k, v in arrays.items()
                                       if k != "residual.log_factor"})
    with pytest.raises(ModelError, match=r"part.npz: a residual needs all of"):
        load_model(tmp_path / "part.npz")
    knots = arrays["residual.log_pt"].copy()
    knots[1, 3] = knots[1, 2]
    np.savez(tmp_path / "knots.npz", **dict(arrays, **{"residual.log_pt": knots}))
    with pytest.raises(ModelError, match=r"knots.npz: array 'residual.log_pt': knots must "
                                         "ascend strictly"):
        load_model(tmp_path / "knots.npz")
    np.savez(tmp_path / "rows.npz", **dict(arrays, **{"residual.log_factor": np.zeros((2, 6))}))
    with pytest.raises(ModelError, match=r"rows.npz: array 'residual.log_factor' has shape "
                                         r"\(2, 6\), expected \(3, K\)"):
        load_model(tmp_path / "rows.npz")
    np.savez(tmp_path / "edges.npz", **dict(arrays, **{"residual.eta_edges": np.array(
        [0.5, 1.3, 2.5, 3.0])}))
    with pytest.raises(ModelError, match="must ascend strictly from 0"):
        load_model(tmp_path / "edges.npz")
    assert set(RESIDUAL_ARRAYS) <= set(arrays)


def test_residual_interpolates_and_holds_beyond_its_knots():
    r = Residual(np.array([0.0, 1.0, 2.0]), np.log([[20.0, 40.0, 80.0], [30.0, 60.0, 120.0]]),
                 np.array([[0.1, 0.0, -0.1], [0.2, 0.2, 0.0]]))
    pt = np.array([10.0, 20.0, 40.0, np.sqrt(40 * 80.0), 500.0, 60.0, 60.0, 60.0])
    eta = np.array([0.5, -0.5, 0.2, 0.9, 0.1, 1.5, -2.7, 1.0])
    total, res = calibrated_log_factor(np.zeros(pt.size), pt, eta, r)
    np.testing.assert_allclose(res, [0.1, 0.1, 0.0, -0.05, -0.1, 0.2, 0.2, 0.2], atol=1e-15)
    np.testing.assert_array_equal(total, res)
    # the residual is looked up at the network's pT, pT_raw exp(log_net)
    _, res2 = calibrated_log_factor(np.full(1, np.log(2.0)), np.array([20.0]), np.array([0.0]),
                                    r)
    np.testing.assert_allclose(res2, [0.0], atol=1e-15)
    assert calibrated_log_factor(np.ones(3), np.ones(3), np.zeros(3), None)[1].tolist() == [0] * 3


def test_derive_residual_removes_a_known_bias():
    """Toy jets whose network reads low by a known pT-dependent amount, with a 15% spread:
    after the residual the median response per offline-pT bin is 1 within its error, and the
    knots and records are as documented."""
    from hltemu.jet_regression_train import derive_residual

    rng = np.random.default_rng(3)
    n = 60_000
    pt_off = np.exp(rng.uniform(np.log(20), np.log(600), n))
    eta = rng.uniform(-2.9, 2.9, n)
    bias = -0.08 * np.exp(-(pt_off - 30) / 40) - 0.02 * (np.abs(eta) > 1.3)
    pt_raw = pt_off * rng.uniform(0.4, 0.7, n)
    target = np.log(pt_off / pt_raw)
    log_net = target + bias + rng.normal(0, 0.15, n)
    res, records = derive_residual(log_net, target, pt_raw, eta, pt_off, eta, 30.0, 400)
    assert res.log_pt.shape[0] == 4 and all(r["pt"][0] >= 30 for r in records)
    assert min(r["jets"] for r in records) >= 400
    log_total = calibrated_log_factor(log_net, pt_raw, eta, res)[0]
    resp = np.exp(log_total - target)
    for lo, hi in ((30, 40), (40, 65), (65, 130), (130, 400)):
        for elo, ehi in ((0, 1.3), (1.3, 2.5)):
            sel = (pt_off >= lo) & (pt_off < hi) & (np.abs(eta) >= elo) & (np.abs(eta) < ehi)
            before = np.median(np.exp(log_net[sel] - target[sel]))
            err = 1.25 * 0.15 / np.sqrt(sel.sum())
            assert abs(np.median(resp[sel]) - 1) < max(4 * err, 0.004), (lo, elo)
            if lo == 30 and elo == 1.3:
                assert before < 0.92  # the bias was there to remove
    assert all(abs(r["response_after"] - 1) < 0.01 for r in records if "left_out" not in r)
    # an |eta| bin with too few jets gets no residual, and its record says so
    few = np.abs(eta) < 2.0
    res, records = derive_residual(log_net[few], target[few], pt_raw[few], eta[few],
                                   pt_off[few], eta[few], 30.0, 400)
    assert [r["eta"] for r in records if "left_out" in r] == [[2.0, 2.5], [2.5, 3.0]]
    edge = calibrated_log_factor(np.zeros(2), np.array([50.0, 50.0]), np.array([2.2, 2.7]),
                                 res)[1]
    assert edge.tolist() == [0.0, 0.0]


def test_shipped_model_is_small_and_documented():
    m = load_model("builtin:jet_regression_v2.npz")
    from hltemu.config import spec_path

    assert spec_path("builtin:jet_regression_v2.npz").stat().st_size <= MAX_FILE_BYTES
    assert m.features == DEFAULT_FEATURES and m.outputs[0] == "log_offline_over_raw"
    training = m.meta["training"]
    # (seed 2007's generator was killed before it wrote its provenance: no settings there)
    seeds = {(inp["settings"] or {}).get("seed") for f in training["files"]
             for inp in f["run_inputs"]} - {None}
    assert seeds == {2001, 2008}
    assert [f["file"] for f in training["files"]] == [
        "jr_v2001_pu50.root", "jr_v2007_pu50_partial.root", "jr_v2008_pu50.root"]
    assert training["jets"]["matched"] >= 30_000 and m.residual is not None
    assert isinstance(m, JetRegression) and m.n_parameters < 50_000


def test_standardise_uses_the_models_features():
    m = random_model(15, features=("rho", "abs_eta"), mean=np.array([10.0, 1.0]),
                     std=np.array([2.0, 0.5]))
    f = np.zeros((1, len(FEATURE_NAMES)))
    f[0, FEATURE_NAMES.index("rho")] = 14.0
    f[0, FEATURE_NAMES.index("abs_eta")] = 2.0
    np.testing.assert_allclose(standardise(f, m), [[2.0, 2.0]])


# -- training ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def training_file(tmp_path_factory) -> Path:
    """The sample's 10 events through the HLT and offline chains, as train-jet-regression
    reads them."""
    from pythia_inputs import SAMPLE

    from hltemu.pipeline import run_files

    out = tmp_path_factory.mktemp("jetreg") / "train.root"
    run_files([SAMPLE], backend="cpu", output=out,
              stages=["topocluster", "antikt", "rho", "jec", "tracks", "vertices",
                      "pfcandidates", "pfjets", "pfrho", "genjets"],
              drop=("pfcandidates", "pfcandidate_jet", "tracks", "track_pv", "cell_cluster"))
    return out


@needs_torch
def test_training_smoke_one_epoch(training_file, tmp_path):
    from click.testing import CliRunner

    from hltemu.cli import cli
    from hltemu.jet_regression_train import load_jets

    data = load_jets([training_file], pt_min=5.0)
    assert data.n >= 100  # about 200 matched jets
    out = tmp_path / "m.npz"
    res = CliRunner().invoke(cli, ["train-jet-regression", str(training_file), "-o", str(out),
                                   "--epochs", "1", "--pt-min", "5", "--hidden", "16,8",
                                   "--residual-pt-min", "10", "--residual-min-jets", "15"])
    assert res.exit_code == 0, res.output
    m = load_model(out)
    assert m.outputs == ("log_offline_over_raw", "log_truth_over_raw")
    t = m.meta["training"]
    assert t["options"]["epochs"] == 1 and t["options"]["seed"] == 1
    assert m.residual is not None and t["residual"]["bins"]
    assert t["jets"]["matched"] == data.n and t["files"][0]["file"] == "train.root"
    # the model runs in the stage
    from hltemu.io import read_collections

    colls = read_collections(str(training_file), ["jets", "clusters", "cluster_jet", "rho"])
    out_jets = run_stage(colls, "cpu", str(out))
    assert out_jets.size == colls["jets"].size and "residual" in out_jets.columns


def test_training_inputs_are_checked(training_file, tmp_path):
    from hltemu.jet_regression_train import TrainingError, flat_weights, load_jets

    with pytest.raises(TrainingError, match="no HLT jet matches"):
        load_jets([training_file], pt_min=1e5)
    w = flat_weights(np.array([25.0, 25.0, 300.0]), np.array([0.1, 0.2, 0.1]))
    assert w.mean() == pytest.approx(1.0) and w[0] == w[1] == w[2]  # bins under MIN_BIN_JETS


def test_training_without_torch_says_how_to_install(monkeypatch, tmp_path):
    import builtins

    from click.testing import CliRunner

    from hltemu.cli import cli

    real = builtins.__import__

    def no_torch(name, *a, **k):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("no torch")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    f = tmp_path / "x.root"
    f.write_bytes(b"")
    res = CliRunner().invoke(cli, ["train-jet-regression", str(f)])
    assert res.exit_code != 0 and "pip install 'hltemu[train]'" in res.output


def test_response_example_applies_the_stage(training_file):
    """``examples/jet_regression_response.py`` computes the regressed pT as the stage does
    (network and residual), matches each HLT jet to one offline jet, and tabulates."""
    from examples_loader import load_example

    from hltemu.io import read_collections

    ex = load_example("jet_regression_response")
    res = ex.responses(str(training_file), "builtin:jet_regression_v2.npz")
    colls = read_collections(str(training_file), ["jets", "clusters", "cluster_jet", "rho"])
    stage = run_stage(colls, "reference", "builtin:jet_regression_v2.npz")
    raw = np.asarray(colls["jets"]["pt"])
    # each matched jet's regressed/raw ratio is one of the stage's factors, in matching order
    ratio = res["regressed_jets"] / res["raw"]
    assert ratio.size >= 50
    assert np.all(np.min(np.abs(ratio[:, None] - stage["pt"][None, :] / raw[None, :]), axis=1)
                  < 1e-12)
    rows = ex.measure(res, n_boot=20, min_jets=2)
    assert sum(r["jets"] for r in rows) == np.count_nonzero(
        (res["pt_offline"] >= 30) & (res["pt_offline"] < 500) & (np.abs(res["eta_offline"]) < 3))
    lines = ex.table(rows, "sample")
    assert lines[0] == "**sample**" and "regressed_jets resolution" in lines[2]

