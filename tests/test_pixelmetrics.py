"""hltemu.pixelmetrics: truth metrics of pixel tracks and vertices on hand-built batches where
every number is known, the true helix against a numerically propagated one, and one run of
examples/pixel_tracking_performance.py on 2 events of the built-in sample."""

from __future__ import annotations

import io as pyio
import json
import math

import numpy as np
import pytest
from examples_loader import load_example

from hltemu.backends import get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.geometry import C_LIGHT
from hltemu.pixelmetrics import (
    PixelTruthConfig,
    assign_vertices,
    interaction_vertices,
    pixel_metrics,
    print_metrics,
    spread,
    track_truth,
    tracking_metrics,
    true_track_parameters,
    vertex_metrics,
)
from tests.pythia_inputs import SAMPLE

B = 3.8


# -- building batches ------------------------------------------------------------------------
def P(pt, eta, phi, charge, vertex, at, layers=(), status=1):  # noqa: N802 - a record maker
    """A particle produced at ``at`` = (vx, vy, vz) [cm] with one hit per entry of
    ``layers`` (the same layer twice: a looper's second turn)."""
    return {"pt": pt, "eta": eta, "phi": phi, "charge": charge, "vertex": vertex,
            "at": at, "layers": list(layers), "status": status}


def T(hits, pt, eta=0.0, phi=0.0, d0=0.0, z0=0.0):  # noqa: N802
    """A track of ``hits``: (particle, i) = the particle's i-th hit, ("noise", j) = noise
    hit j."""
    return {"hits": hits, "pt": pt, "eta": eta, "phi": phi, "d0": d0, "z0": z0}


def make_batch(events, with_sim_index=True):
    """``events``: dicts of particles, noise (layers of noise hits), tracks, vertices (z,
    PV first), pv_z, n_pileup."""
    gen_cols = {k: [] for k in ("pt", "eta", "phi", "charge", "status", "vx", "vy", "vz",
                                "vertex")}
    hit_cols = {"layer": [], "sim_index": []}
    trk_cols = {k: [] for k in ("pt", "eta", "phi", "d0", "z0", "chi2", "charge", "n_hits",
                                "hit0", "hit1", "hit2", "hit3", "hit4", "sim_index")}
    counts = {"gen": [], "hit": [], "trk": [], "vtx": []}
    vz_all = []
    for ev in events:
        row_of = {}
        n_hit = 0
        for i, p in enumerate(ev["particles"]):
            for c in ("pt", "eta", "phi", "charge", "status", "vertex"):
                gen_cols[c].append(p[c])
            for c, v in zip(("vx", "vy", "vz"), p["at"], strict=True):
                gen_cols[c].append(v)
            for j, layer in enumerate(p["layers"]):
                hit_cols["layer"].append(layer)
                hit_cols["sim_index"].append(i)
                row_of[(i, j)] = n_hit
                n_hit += 1
        for j, layer in enumerate(ev.get("noise", [])):
            hit_cols["layer"].append(layer)
            hit_cols["sim_index"].append(-1)
            row_of[("noise", j)] = n_hit
            n_hit += 1
        for t in ev.get("tracks", []):
            rows = [row_of[h] for h in t["hits"]] + [-1] * (5 - len(t["hits"]))
            for i, r in enumerate(rows):
                trk_cols[f"hit{i}"].append(r)
            owners = [h[0] for h in t["hits"] if h[0] != "noise"]
            best = max(set(owners), key=owners.count) if owners else -1
            ok = owners.count(best) * 4 >= 3 * len(t["hits"])
            trk_cols["sim_index"].append(best if ok else -1)
            trk_cols["n_hits"].append(len(t["hits"]))
            for c in ("pt", "eta", "phi", "d0", "z0"):
                trk_cols[c].append(t[c])
            trk_cols["chi2"].append(1.0)
            trk_cols["charge"].append(1)
        vz_all.extend(ev.get("vertices", []))
        counts["gen"].append(len(ev["particles"]))
        counts["hit"].append(n_hit)
        counts["trk"].append(len(ev.get("tracks", [])))
        counts["vtx"].append(len(ev.get("vertices", [])))
    f32 = ("pt", "eta", "phi", "vx", "vy", "vz")
    gen = Collection.from_counts(counts["gen"], {
        k: np.asarray(v, np.float32 if k in f32 else np.int32) for k, v in gen_cols.items()})
    hits = Collection.from_counts(counts["hit"], {k: np.asarray(v, np.int32)
                                                  for k, v in hit_cols.items()})
    ints = ("charge", "n_hits", "hit0", "hit1", "hit2", "hit3", "hit4", "sim_index")
    if not with_sim_index:
        del trk_cols["sim_index"]
    trk = Collection.from_counts(counts["trk"], {
        k: np.asarray(v, np.int32 if k in ints else np.float64) for k, v in trk_cols.items()})
    vtx = Collection.from_counts(counts["vtx"], {"z": np.asarray(vz_all, np.float64)})
    event = Collection.event_level({
        "pv_z": np.asarray([ev["pv_z"] for ev in events], np.float32),
        "n_pileup": np.asarray([ev["n_pileup"] for ev in events], np.int32)})
    return EventBatch(get_backend("reference"), len(events),
                      {"GenPart": gen, "PixelHit": hits, "pixeltracks": trk,
                       "pixelvertices": vtx, "Event": event})


HS0, PU0 = (0.0, 0.0, 1.0), (0.001, 0.0, -3.0)  # event 0: hard scatter and pileup 1


def event0():
    """Hard scatter at z = 1 cm, pileup interaction 1 at z = -3 cm."""
    parts = [
        P(3.0, 0.6, 0.3, +1, 0, HS0, [0, 1, 2, 3, 0, 1, 2]),  # 0: den; a looper: 2 tracks
        P(1.5, -1.2, -2.0, -1, 0, HS0, [0, 1, 2]),           # 1: den; a 3/4 track
        P(0.5, 0.0, 1.0, +1, 0, HS0, [0, 1, 2]),             # 2: pT below 0.9 GeV
        P(2.0, 0.2, 2.0, +1, 0, (1.0, 0.0, 1.0), [1, 2, 3]),  # 3: displaced by 1 cm
        P(4.0, 0.4, -1.0, -1, 0, HS0, [0, 1]),                # 4: hits on 2 layers only
        P(5.0, 0.3, 0.0, 0, 0, HS0),                          # 5: neutral
        P(1.2, 2.1, 0.5, +1, 1, PU0, [4, 5, 6]),              # 6: den (disks), no track
        P(6.0, 0.1, -0.5, -1, 1, PU0, [0, 1, 2, 3]),          # 7: den, one track
        P(2.0, 0.5, 0.5, 0, 1, PU0),                          # 8: neutral
        P(50.0, 0.2, 0.1, +1, 0, HS0, [0, 1, 2], status=2),  # 9: hard-process record
    ]
    tracks = [
        T([(0, 0), (0, 1), (0, 2), (0, 3)], 3.03, 0.601, 0.3005, 0.001, 1.002),  # A
        T([(0, 4), (0, 5), (0, 6)], 2.94, 0.599, 0.2995, -0.002, 0.997),         # B dup
        T([(1, 0), (1, 1), (1, 2), ("noise", 0)], 1.53, -1.2, -2.0, 0.0, 1.0),  # C 3/4
        T([(2, 0), (2, 1), (2, 2)], 0.55, 0.0, 1.0),                              # D soft
        T([(4, 0), (4, 1), (3, 0)], 2.0, 0.3, 0.0),                               # E fake
        T([(7, 0), (7, 1), (7, 2), (7, 3)], 6.06, 0.1, -0.5, 0.0005, -3.0),        # F
        T([(9, 0), (3, 1), (3, 2)], 1.5, 2.7, 0.0),                               # G |eta|
    ]
    return {"particles": parts, "noise": [3], "tracks": tracks, "vertices": [1.02, -3.5],
            "pv_z": 1.0, "n_pileup": 1}


def event1():
    """Hard scatter at z = 0, pileup 1 at z = 5.0 and pileup 2 at 5.06 cm (each with two
    denominator particles), no track; vertices at 0.3 (the PV, too far) and 5.05 cm."""
    hs, pu1, pu2 = (0.0, 0.0, 0.0), (0.0, 0.0, 5.0), (0.0, 0.0, 5.06)
    parts = [P(1.0, 0.0, 0.0, +1, 0, hs, [0, 1, 2]), P(2.5, 1.1, 1.0, -1, 0, hs, [0, 1, 2, 3]),
             P(1.1, -0.3, 2.0, +1, 1, pu1, [0, 1, 2]), P(7.0, 0.7, 3.0, -1, 1, pu1, [0, 1, 2]),
             P(1.3, 1.6, -1.0, +1, 2, pu2, [0, 1, 4]), P(3.0, -1.9, -2.0, +1, 2, pu2, [0, 7, 8])]
    return {"particles": parts, "vertices": [0.3, 5.05], "pv_z": 0.0, "n_pileup": 2}


@pytest.fixture
def batch():
    return make_batch([event0(), event1()])


# -- the hand-built numbers -------------------------------------------------------------------
def test_track_truth_rule():
    """>= 75% of the hits: 3/3, 3/4, 4/5 match; 2/3 and 3/5 do not; noise counts against."""
    parts = [P(1.0, 0, 0, 1, 0, HS0, [0, 1, 2, 3, 0, 1, 2, 3]), P(1.0, 0, 0, 1, 0, HS0, [4, 5])]
    tracks = [T([(0, 0), (0, 1), (0, 2)], 1.0),
              T([(0, 0), (0, 1), (1, 0)], 1.0),
              T([(0, 0), (0, 1), (0, 2), ("noise", 0)], 1.0),
              T([(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)], 1.0),
              T([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)], 1.0),
              T([(1, 0), (1, 1), ("noise", 0)], 1.0),
              T([(1, 0), (0, 5), (0, 6), (0, 7)], 1.0)]
    b = make_batch([{"particles": parts, "noise": [3], "tracks": tracks, "pv_z": 1.0,
                     "n_pileup": 0}])
    got = track_truth(b["pixeltracks"], b["PixelHit"])
    assert got.tolist() == [0, -1, 0, 0, -1, -1, 0]
    assert got.tolist() == b["pixeltracks"]["sim_index"].tolist()


def test_interaction_vertices(batch):
    iv = interaction_vertices(batch["GenPart"])
    assert iv["event"].tolist() == [0, 0, 1, 1, 1]
    assert iv["interaction"].tolist() == [0, 1, 0, 1, 2]
    # event 0's hard scatter: 5 status-1 particles at (0, 0, 1), one displaced (not chosen)
    np.testing.assert_allclose(iv["z"], [1.0, -3.0, 0.0, 5.0, 5.06], rtol=1e-6)
    np.testing.assert_allclose(iv["x"][:2], [0.0, 0.001], rtol=1e-6)
    assert iv["n_particles"].tolist() == [6, 3, 2, 2, 2]


def test_efficiency_fakes_duplicates(batch):
    t = tracking_metrics(batch)
    eff = t["efficiency"]
    # denominator: event 0 particles 0, 1 (HS, found), 6 (PU, not), 7 (PU, found); event 1
    # six particles, none found.  Not in it: 2 (soft), 3 (displaced), 4 (2 layers), 5 and 8
    # (neutral), 9 (status 2)
    assert (eff["hard_scatter"]["passed"], eff["hard_scatter"]["total"]) == (2, 4)
    assert (eff["pileup"]["passed"], eff["pileup"]["total"]) == (1, 6)
    assert (eff["all"]["passed"], eff["all"]["total"]) == (3, 10)
    assert eff["all"]["value"] == pytest.approx(0.3)
    assert [(b["passed"], b["total"]) for b in eff["all"]["pt_bins"]] == [(1, 5), (1, 3),
                                                                           (1, 2)]
    assert [(b["passed"], b["total"]) for b in eff["all"]["eta_bins"]] == [
        (1, 3), (1, 2), (1, 2), (0, 2), (0, 1)]
    # Clopper-Pearson 68.27%: 3/10 -> [0.1417, 0.5083] (beta quantiles)
    lo, hi = eff["all"]["interval"]
    assert lo == pytest.approx(0.14167, abs=2e-4) and hi == pytest.approx(0.50827, abs=2e-4)
    assert eff["hard_scatter"]["interval"][0] < 0.5 < eff["hard_scatter"]["interval"][1]
    # tracks with pT > 0.9, |eta| < 2.5: A, B, C, E, F (D soft, G at |eta| 2.7); E unmatched
    assert (t["fake_rate"]["passed"], t["fake_rate"]["total"]) == (1, 5)
    # matched among them: A, B (both particle 0), C, F: one duplicate of 4
    assert (t["duplicate_rate"]["passed"], t["duplicate_rate"]["total"]) == (1, 4)
    assert t["tracks"] == 7 and t["events"] == 2
    assert t["checks"] == {"sim_index_mismatches": 0, "n_hits_mismatches": 0}
    assert t["pulls"] is None and "covariance" in t["pulls_note"]


def test_looser_and_tighter_selection(batch):
    """The displaced particle (1 cm) enters with max_dxy 2 cm; 2 layers with min_layers 2;
    the soft one with pt_min 0.4 GeV."""
    base = tracking_metrics(batch)["efficiency"]["all"]["total"]
    for cfg, extra in ((PixelTruthConfig(max_dxy=2.0), 1), (PixelTruthConfig(min_layers=2), 1),
                       (PixelTruthConfig(pt_min=0.4), 1), (PixelTruthConfig(min_layers=4), -7)):
        assert tracking_metrics(batch, cfg)["efficiency"]["all"]["total"] == base + extra


def test_resolutions(batch):
    t = tracking_metrics(batch)
    r = t["resolution"]
    # tracks of denominator particles: A, B (particle 0, pT 3), C (1.5), F (6)
    pt_rel = np.array([3.03 / 3 - 1, 2.94 / 3 - 1, 1.53 / 1.5 - 1, 6.06 / 6 - 1])
    true7 = true_track_parameters([6.0], [0.1], [-0.5], [-1], [0.001], [0.0], [-3.0])
    d0 = np.array([0.001, -0.002, 0.0, 0.0005 - true7["d0"][0]])
    z0 = np.array([0.002, -0.003, 0.0, -3.0 - true7["z0"][0]])
    assert r["all"]["pt_rel"]["n"] == 4
    for key, want in (("pt_rel", pt_rel), ("d0_cm", d0), ("z0_cm", z0)):
        w = spread(want)
        got = r["all"][key]
        assert got["median"] == pytest.approx(w["median"], abs=1e-6)
        assert got["half_width_68"] == pytest.approx(w["half_width_68"], abs=1e-6)
    bins = r["pt_bins"]
    assert [b["pt_rel"]["n"] for b in bins] == [1, 2, 1]
    assert bins[0]["pt_rel"]["median"] == pytest.approx(0.02, abs=1e-6)
    assert bins[1]["pt_rel"]["median"] == pytest.approx(-0.005, abs=1e-6)
    assert bins[1]["pt_rel"]["half_width_68"] == pytest.approx(
        (np.percentile([0.01, -0.02], 84.135) - np.percentile([0.01, -0.02], 15.865)) / 2)
    assert bins[2]["eta"]["median"] == pytest.approx(0.0, abs=1e-6)
    # particle 7 at (0.001, 0, -3) with phi -0.5: d0 ~ -vx sin(phi), z0 ~ vz - vx cos(phi) sinh
    assert true7["d0"][0] == pytest.approx(0.001 * math.sin(0.5), rel=1e-3)
    assert true7["z0"][0] == pytest.approx(-3.0 - 0.001 * math.cos(0.5) * math.sinh(0.1),
                                           abs=1e-7)


def test_vertices(batch):
    v = vertex_metrics(batch)
    # eligible: event 0 HS and PU1, event 1 HS, PU1, PU2 (2 denominator particles each)
    e = v["efficiency"]
    assert (e["all"]["passed"], e["all"]["total"]) == (2, 5)
    # event 0: HS <- 1.02 (dz 0.02), PU1 (-3.0) has none (-3.5 is 0.5 away); event 1: the
    # vertex at 5.05 goes to PU2 (dz 0.01) before PU1 (0.05), the HS at 0 has none (0.3)
    assert (e["hard_scatter"]["passed"], e["hard_scatter"]["total"]) == (1, 2)
    assert (e["pileup"]["passed"], e["pileup"]["total"]) == (1, 3)
    assert (v["pv_within"]["passed"], v["pv_within"]["total"]) == (1, 2)
    assert v["vertices"] == 4 and v["vertices_unassigned"] == 2
    assert v["eligible_interactions"] == 5 and v["interactions"] == 5
    pe = v["per_event"]
    assert pe["n_vertices"] == [2, 2] and pe["n_interactions"] == [2, 3]
    assert pe["mean_vertices"] == 2.0 and pe["mean_interactions"] == 2.5
    assert v["checks"]["hs_vertex_minus_pv_z_cm"] == 0.0
    assert v["pv_abs_dz_median_cm"] == pytest.approx((0.02 + 0.3) / 2, abs=1e-6)


def test_assign_vertices_nearest_first():
    assert assign_vertices([5.0, 5.06], [5.05], 0.1).tolist() == [-1, 0]
    assert assign_vertices([0.0, 1.0], [0.05, 0.95, 0.5], 0.1).tolist() == [0, 1]
    assert assign_vertices([0.0], [0.2], 0.1).tolist() == [-1]
    assert assign_vertices([], [0.2], 0.1).tolist() == []


def test_sim_index_cross_check_and_lists(batch):
    bad = make_batch([event0(), event1()])
    sim = bad["pixeltracks"]["sim_index"]
    sim[4] = 3  # the fake track E said to be particle 3's
    t = tracking_metrics([bad.select_events(0, 1), bad.select_events(1, 2)])
    assert t["checks"]["sim_index_mismatches"] == 1
    # the recomputed truth is used: E is still a fake; a list of batches adds up
    assert (t["fake_rate"]["passed"], t["fake_rate"]["total"]) == (1, 5)
    assert t["efficiency"]["all"]["total"] == 10
    no_sim = make_batch([event0(), event1()], with_sim_index=False)
    assert tracking_metrics(no_sim)["checks"]["sim_index_mismatches"] is None


def test_json_and_printing(batch):
    result = pixel_metrics(batch)
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text)["tracking"]["fake_rate"]["passed"] == 1
    assert result["selection"]["pt_bins"][-1] is None  # inf
    no_vertex = make_batch([event0()])
    del no_vertex.collections["pixelvertices"]
    assert pixel_metrics(no_vertex)["vertices"] is None
    for plain in (True, False):
        out = pyio.StringIO()
        print_metrics(result, plain=plain, file=out)
        assert "fake rate" in out.getvalue() and "vertex efficiency" in out.getvalue()


# -- the true helix against a propagated one ---------------------------------------------------
@pytest.mark.parametrize("q,pt,phi,vx,vy,eta", [
    (+1, 1.0, 0.3, 0.05, -0.02, 0.5), (-1, 0.9, -2.0, -0.1, 0.15, -1.8),
    (+1, 20.0, 3.0, 0.0012, 0.0008, 2.4), (-1, 2.0, 1.0, 1.5, 0.7, 0.0),
    (0, 1.0, 0.7, 0.1, 0.05, 1.0)])
def test_true_track_parameters_against_propagation(q, pt, phi, vx, vy, eta):
    """Minimise the distance to the beam line along the helix (bending clockwise for q > 0
    seen from +z), then d0 = PCA . (-sin phi, cos phi), z at the PCA."""
    from scipy.optimize import minimize_scalar

    vz = 0.7
    r = pt / (0.01 * C_LIGHT * B)

    def at(s):
        if q == 0:
            return vx + s * math.cos(phi), vy + s * math.sin(phi), phi
        a = phi - q * s / r
        return (vx - r / q * (math.sin(a) - math.sin(phi)),
                vy + r / q * (math.cos(a) - math.cos(phi)), a)

    best = minimize_scalar(lambda s: math.hypot(*at(s)[:2]), bounds=(-5.0, 5.0),
                           method="bounded", options={"xatol": 1e-12})
    x, y, a = at(best.x)
    got = true_track_parameters([pt], [eta], [phi], [q], [vx], [vy], [vz], b_field=B)
    assert got["d0"][0] == pytest.approx(-x * math.sin(a) + y * math.cos(a), abs=1e-8)
    assert got["z0"][0] == pytest.approx(vz + best.x * math.sinh(eta), abs=1e-6)
    assert math.remainder(got["phi"][0] - a, 2 * math.pi) == pytest.approx(0.0, abs=1e-7)


# -- the built-in sample -----------------------------------------------------------------------
def test_example_on_two_sample_events(tmp_path):
    """2 ttbar events at pileup 50 through doublets, pixeltracks, pixelvertices (cpu).

    Bounds: pixeltracks measured 97.8% efficiency on the sample's 10 events (3,254
    particles) with the same denominator; these 2 events give 93.7% (732/781), a binomial
    sigma of 0.9%, so >= 0.9 fails only on a real loss (which an efficiency of 1 would hide
    as little as it shows a bug in the matching).  Fake rate: 8.3% on the 10 events (13.3%
    with the old fit and its chi2 < 9), so < 0.2 catches a broken matching (all tracks
    unmatched) or a broken fit selection, with room for the sample's spread."""
    if not SAMPLE.is_file():
        pytest.skip(f"built-in sample {SAMPLE} missing")
    mod = load_example("pixel_tracking_performance")
    out = tmp_path / "perf.json"
    assert mod.main([str(SAMPLE), "--events", "2", "--backend", "cpu", "-o", str(out),
                     "--plain"]) == 0
    result = json.loads(out.read_text())
    t, v = result["tracking"], result["vertices"]
    assert result["run"]["events"] == 2
    eff = t["efficiency"]["all"]
    assert eff["total"] > 500 and 0.9 <= eff["value"] <= 1.0
    assert t["efficiency"]["hard_scatter"]["total"] > 30
    assert t["fake_rate"]["value"] < 0.2
    assert t["duplicate_rate"]["value"] < 0.02
    assert t["checks"] == {"sim_index_mismatches": 0, "n_hits_mismatches": 0}
    assert t["resolution"]["all"]["pt_rel"]["half_width_68"] < 0.02
    # pulls with pixeltracks' covariance: core widths 0.92, 0.90, 0.93 (q/pT, d0, z0) on
    # these 732 tracks, each +-0.04; 0.8-1.2 is issue 19's requirement
    for name in ("qoverpt", "d0", "z0"):
        core = t["pulls"]["all"][name]
        assert core["status"] == "ok" and 0.8 < core["sigma"] < 1.2, (name, core)
    assert v["pv_within"]["passed"] == 2
    assert v["checks"]["hs_vertex_minus_pv_z_cm"] == 0.0
