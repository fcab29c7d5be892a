"""Stages ``pfcandidates`` and ``pfjets``: the track extrapolation against the simulation's,
the link and neutral rules on hand-built events, charged-hadron subtraction, and cpu/cuda
against reference on random events and on the built-in Pythia sample."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_antikt import assert_cuda_jets_agree

from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.config import ConfigError
from hltemu.geometry import default_geometry
from hltemu.pion_response import load_table
from hltemu.pipeline import PipelineError, get_stage
from hltemu.stages.pfcandidates import PFCandidatesConfig, prepare, track_impact
from hltemu.stages.pfjets import PFJetsConfig

TRACK_COLS = ("pt", "eta", "phi", "charge", "z0", "sigma_z0")


def _batch(backend, tracks, clusters, vertices, sigmas=3.0):
    """An EventBatch of per-event lists of dicts (column -> values), with the tracks'
    association with the first vertex (|z0 - z| < sigmas sigma_z0) as stage vertices makes it."""
    for t, v in zip(tracks, vertices, strict=True):
        z = list(v.get("z", []))
        t["pv"] = [bool(z) and abs(z0 - z[0]) < sigmas * s
                   for z0, s in zip(t.get("z0", []), t.get("sigma_z0", []), strict=True)]
    return _batch_of(backend, tracks, clusters, vertices)


def _batch_of(backend, tracks, clusters, vertices):
    """An EventBatch of per-event lists of dicts (column -> values)."""
    def coll(events, cols, dtypes):
        counts = [len(next(iter(e.values()))) if e else 0 for e in events]
        data = {c: np.concatenate([np.asarray(e.get(c, []), dtype=dtypes.get(c, np.float64))
                                   for e in events]) if events else np.zeros(0)
                for c in cols}
        return Collection.from_counts(counts, data)

    n = len(tracks)
    host = {
        "tracks": coll(tracks, TRACK_COLS, {"charge": np.int32}),
        "clusters": coll(clusters, ("energy", "eta", "phi"), {}),
        "vertices": coll(vertices, ("z",), {}),
        "track_pv": coll([{"pv": t["pv"]} for t in tracks], ("pv",), {"pv": bool}),
    }
    return EventBatch(backend, n, {k: v.to(backend) for k, v in host.items()})


def _run(name, batch, cfg):
    out = get_stage(name)(batch, cfg)
    be = get_backend("reference")
    return {k: v.to(be) for k, v in out.items()}


# -- rule 1: the impact ------------------------------------------------------------------------
def test_impact_is_the_simulations():
    """The helix extrapolation lands where the detector simulation puts a particle from (0, 0,
    z0): barrel and endcap, both charges, soft tracks that curl up."""
    from hltemu.simulate.calorimeter import impact

    rng = np.random.default_rng(5)
    n = 4000
    pt = np.exp(rng.uniform(np.log(0.5), np.log(200.0), n))
    eta = rng.uniform(-2.5, 2.5, n)
    phi = rng.uniform(-math.pi, math.pi, n)
    q = rng.choice([-1.0, 1.0], n)
    z0 = rng.normal(0.0, 5.0, n)
    geom = default_geometry()
    ref = impact(geom, pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), q,
                 np.zeros(n), np.zeros(n), z0)
    prep = prepare(PFCandidatesConfig(), get_backend("reference"))
    reach, eta_i, phi_i = track_impact(pt, eta, phi, q, z0, prep, np)
    np.testing.assert_array_equal(reach, ref.reached)
    assert 0.005 < 1 - reach.mean() < 0.5  # soft tracks curl up: the test covers both
    np.testing.assert_allclose(eta_i[reach], ref.eta[reach], atol=1e-9)
    dphi = np.remainder(phi_i[reach] - ref.phi[reach] + math.pi, 2 * math.pi) - math.pi
    np.testing.assert_allclose(dphi, 0.0, atol=1e-9)


# -- rules 2-5 on hand-built events --------------------------------------------------------------
def _expected(p, eta):
    table = load_table(PFCandidatesConfig().pion_response)
    mean, sigma = table.expected_deposit(np.array([p]), np.array([eta]), np)
    return float(mean[0]), float(sigma[0])


def _central_track(pt, phi, z0=0.0, charge=1, sigma_z0=0.01):
    return {"pt": pt, "eta": 0.0, "phi": phi, "charge": charge, "z0": z0, "sigma_z0": sigma_z0}


def test_neutral_rules_on_hand_built_clusters(backend):
    """A cluster with no track is neutral; one whose energy exceeds its track's expected
    deposit by more than 1 sigma gives the excess; one that does not gives nothing."""
    cfg = PFCandidatesConfig()
    prep = prepare(cfg, get_backend("reference"))
    pt = 20.0
    r, eta_i, phi_i = track_impact(np.array([pt]), np.array([0.0]), np.array([0.3]),
                                   np.array([1.0]), np.array([0.0]), prep, np)
    assert r[0]
    mean, sigma = _expected(pt, float(eta_i[0]))
    assert 5.0 < mean < 20.0 and sigma > 0
    tracks = [{k: [v] for k, v in _central_track(pt, 0.3).items()},
              {k: [v] for k, v in _central_track(pt, 0.3).items()},
              {k: [] for k in TRACK_COLS}]
    big, small = mean + 3.0 * sigma, mean + 0.5 * sigma
    clusters = [  # event 0: linked cluster with an excess, plus a lone cluster far away
        {"energy": [big, 7.0], "eta": [float(eta_i[0]), 1.0], "phi": [float(phi_i[0]), -2.0]},
        # event 1: linked cluster within 1 sigma
        {"energy": [small], "eta": [float(eta_i[0])], "phi": [float(phi_i[0])]},
        # event 2: no tracks, one cluster of negative energy (noise) and one positive
        {"energy": [-1.0, 4.0], "eta": [0.0, 0.5], "phi": [0.0, 1.0]}]
    vertices = [{"z": [0.0]}, {"z": [0.0]}, {"z": []}]
    out = _run("pfcandidates", _batch(backend, tracks, clusters, vertices), cfg)["pfcandidates"]
    ev = [out.event(i) for i in range(3)]
    # event 0: the track, the excess, the lone cluster
    assert list(ev[0]["charge"]) == [1, 0, 0]
    assert list(ev[0]["cluster"]) == [0, 0, 1]
    np.testing.assert_allclose(ev[0]["pt"][1], (big - mean) / math.cosh(eta_i[0]), rtol=1e-12)
    np.testing.assert_allclose(ev[0]["pt"][2], 7.0 / math.cosh(1.0), rtol=1e-12)
    assert ev[0]["mass"][0] == pytest.approx(0.13957039) and ev[0]["mass"][1] == 0.0
    # event 1: the track only
    assert list(ev[1]["charge"]) == [1] and list(ev[1]["track"]) == [0]
    # event 2: the positive cluster only
    assert list(ev[2]["charge"]) == [0] and list(ev[2]["cluster"]) == [1]


def test_no_calorimeter_energy_no_neutral_candidates(backend):
    """Every cluster at zero or negative energy (a calorimeter with every cell zeroed makes no
    clusters at all): charged candidates only."""
    rng = np.random.default_rng(3)
    tracks, clusters, vertices = [], [], []
    for _ in range(6):
        n, m = int(rng.integers(0, 8)), int(rng.integers(0, 5))
        tracks.append({"pt": rng.uniform(1, 50, n), "eta": rng.uniform(-2.4, 2.4, n),
                       "phi": rng.uniform(-3, 3, n), "charge": rng.choice([-1, 1], n),
                       "z0": rng.normal(0, 3, n), "sigma_z0": np.full(n, 0.01)})
        clusters.append({"energy": -rng.uniform(0, 1, m), "eta": rng.uniform(-2.4, 2.4, m),
                         "phi": rng.uniform(-3, 3, m)})
        vertices.append({"z": [0.0]})
    out = _run("pfcandidates", _batch(backend, tracks, clusters, vertices),
               PFCandidatesConfig())["pfcandidates"]
    assert out.size == sum(len(t["pt"]) for t in tracks)
    assert np.all(np.asarray(out["charge"]) != 0)


def test_charged_hadron_subtraction_flags():
    """Charged candidates take the association with the primary vertex (here |z0 - z_PV| < 3
    sigma_z0); an event with no vertex keeps every track."""
    be = get_backend("reference")
    z0 = [0.0, 0.025, 0.035, -0.05, 5.0]
    tracks = [{"pt": [5.0] * 5, "eta": [0.1] * 5, "phi": [0.0, 1.0, 2.0, -1.0, -2.0],
               "charge": [1] * 5, "z0": z0, "sigma_z0": [0.01] * 5},
              {"pt": [5.0], "eta": [0.0], "phi": [0.0], "charge": [-1], "z0": [9.0],
               "sigma_z0": [0.01]}]
    clusters = [{"energy": [], "eta": [], "phi": []}] * 2
    out = _run("pfcandidates", _batch(be, tracks, clusters, [{"z": [0.005, 5.0]}, {"z": []}]),
               PFCandidatesConfig())["pfcandidates"]
    assert list(out.event(0)["from_pv"]) == [True, True, False, False, False]
    assert list(out.event(1)["from_pv"]) == [True]


def test_bad_settings_and_inputs_are_named():
    with pytest.raises(ConfigError, match="link_dr"):
        prepare(PFCandidatesConfig(link_dr=0.0), get_backend("reference"))
    with pytest.raises(ConfigError, match="pion_response"):
        prepare(PFCandidatesConfig(pion_response="/nonexistent/table.npz"),
                get_backend("reference"))
    be = get_backend("reference")
    batch = _batch(be, [{k: [1.0] for k in TRACK_COLS}], [{"energy": [1.0], "eta": [0.0],
                                                            "phi": [0.0]}], [{"z": [0.0]}])
    del batch["tracks"].columns["z0"]
    with pytest.raises(PipelineError, match="z0"):
        get_stage("pfcandidates")(batch, PFCandidatesConfig())
    batch = _batch(be, [{k: [1.0] for k in TRACK_COLS}], [{"energy": [math.nan], "eta": [0.0],
                                                            "phi": [0.0]}], [{"z": [0.0]}])
    with pytest.raises(PipelineError, match="'clusters' column 'energy'"):
        get_stage("pfcandidates")(batch, PFCandidatesConfig())


# -- backends agree ----------------------------------------------------------------------------
def _random_events(seed, n_events, max_tracks=25, max_clusters=15):
    rng = np.random.default_rng(seed)
    tracks, clusters, vertices = [], [], []
    for _ in range(n_events):
        n, m = int(rng.integers(0, max_tracks)), int(rng.integers(0, max_clusters))
        tracks.append({"pt": np.exp(rng.uniform(np.log(0.5), np.log(100), n)),
                       "eta": rng.uniform(-2.5, 2.5, n), "phi": rng.uniform(-np.pi, np.pi, n),
                       "charge": rng.choice([-1, 1], n), "z0": rng.normal(0, 4, n),
                       "sigma_z0": rng.uniform(0.002, 0.05, n)})
        # clusters near some track impacts, so that links, sums and both neutral cases occur
        clusters.append({"energy": rng.normal(8, 10, m), "eta": rng.uniform(-2.6, 2.6, m),
                         "phi": rng.uniform(-np.pi, np.pi, m)})
        vertices.append({"z": list(rng.normal(0, 4, int(rng.integers(0, 3))))})
    return tracks, clusters, vertices


def _assert_same(ref, other, discrete, floats):
    assert other.n_events == ref.n_events
    np.testing.assert_array_equal(np.asarray(other.offsets), np.asarray(ref.offsets))
    for c in discrete:
        np.testing.assert_array_equal(np.asarray(other[c]), np.asarray(ref[c]), err_msg=c)
    for c in floats:
        np.testing.assert_allclose(np.asarray(other[c]), np.asarray(ref[c]), rtol=1e-12,
                                   atol=1e-12, err_msg=c)


@pytest.mark.parametrize("name", ["cpu", "cuda"])
def test_backends_agree_on_random_events(name):
    """Identical candidate sets (links, charges, CHS flags, rows) and floats within 1e-12;
    the inputs make links, multi-track clusters and both neutral cases."""
    from conftest import cuda_usable

    if name == "cuda" and not cuda_usable():
        pytest.skip("cuda backend not usable")
    n_events = 40 if name == "cuda" else 300
    events = _random_events(11, n_events)
    cfg = PFCandidatesConfig(link_dr=0.4)
    ref = _run("pfcandidates", _batch(get_backend("reference"), *events), cfg)["pfcandidates"]
    out = _run("pfcandidates", _batch(get_backend(name), *events), cfg)["pfcandidates"]
    _assert_same(ref, out, ("charge", "from_pv", "track", "cluster"),
                 ("pt", "eta", "phi", "mass"))
    charged = np.asarray(ref["charge"]) != 0
    linked = np.asarray(ref["cluster"])[charged]
    assert (linked >= 0).sum() > 20 and (~charged).sum() > 20
    ev = np.repeat(np.arange(ref.n_events), np.diff(np.asarray(ref.offsets)))
    pairs = set(zip(ev[charged][linked >= 0], linked[linked >= 0], strict=True))
    assert len(pairs) < (linked >= 0).sum()  # some cluster has two tracks
    jets_ref = _run("pfjets", EventBatch(get_backend("reference"), ref.n_events,
                                         {"pfcandidates": ref}), PFJetsConfig())["pfjets"]
    be = get_backend(name)
    jets = _run("pfjets", EventBatch(be, ref.n_events, {"pfcandidates": ref.to(be)}),
                PFJetsConfig())["pfjets"]
    assert_cuda_jets_agree(jets.to(get_backend("reference")), jets_ref, name)


def test_pfjets_leave_pileup_tracks_out():
    """CHS: a charged candidate not from the primary vertex is in no jet; chs = false keeps
    it."""
    be = get_backend("reference")
    cands = Collection.from_counts([3], {
        "pt": np.array([30.0, 20.0, 10.0]), "eta": np.array([0.0, 0.1, -2.0]),
        "phi": np.array([0.0, 0.05, 2.0]), "mass": np.array([0.14, 0.0, 0.14]),
        "from_pv": np.array([True, True, False])})
    for chs, n_jets in ((True, 1), (False, 2)):
        out = get_stage("pfjets")(EventBatch(be, 1, {"pfcandidates": cands}),
                                  PFJetsConfig(chs=chs))
        assert out["pfjets"].size == n_jets
        assert (np.asarray(out["pfcandidate_jet"]["jet"])[2] >= 0) == (not chs)
    jet = get_stage("pfjets")(EventBatch(be, 1, {"pfcandidates": cands}), PFJetsConfig())
    assert np.asarray(jet["pfjets"]["pt"])[0] == pytest.approx(50.0, rel=1e-3)


def test_chain_on_the_pythia_sample_cpu_equals_reference():
    """tracks -> vertices -> topocluster -> pfcandidates -> pfjets on the built-in sample (ttbar,
    pileup 50): the cpu chain's products equal the reference chain's."""
    from pythia_inputs import SAMPLE

    from hltemu.io import read_collections
    from hltemu.pipeline import plan, run_batch

    stages = ["tracks", "vertices", "topocluster", "pfcandidates", "pfjets"]
    inputs = read_collections(str(SAMPLE), ["GenPart", "CaloCell", "Event"])
    n = inputs["Event"].n_events
    outs = {}
    for name in ("reference", "cpu"):
        be = get_backend(name)
        batch = EventBatch(be, n, {k: v.to(be) for k, v in inputs.items()})
        p = plan(stages, list(inputs), None, files=[str(SAMPLE)])
        run_batch(batch, p.stages, p.config)
        ref_be = get_backend("reference")
        outs[name] = {c: batch[c].to(ref_be) for c in ("pfcandidates", "pfjets")}
    _assert_same(outs["reference"]["pfcandidates"], outs["cpu"]["pfcandidates"],
                 ("charge", "from_pv", "track", "cluster"), ("pt", "eta", "phi", "mass"))
    # the tracks of reference and cpu agree to 1e-12 (libm in NumPy vs Numba), not bit for bit
    assert_cuda_jets_agree(outs["cpu"]["pfjets"], outs["reference"]["pfjets"], "cpu",
                           exact_momenta=False)
    cands = outs["reference"]["pfcandidates"]
    per_event = cands.size / n
    neutral = float(np.mean(np.asarray(cands["charge"]) == 0))
    assert 100 < per_event and 0.1 < neutral < 0.9
