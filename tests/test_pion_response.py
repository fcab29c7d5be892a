"""The single charged-pion response table (hltemu.pion_response) and the particle gun
(hltemu.simulate.particle_gun): file format and its errors, the evaluation by hand, the shipped
table's shape, and the shipped table against a fresh simulation."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from hltemu import strictxp
from hltemu.batch import Collection
from hltemu.pion_response import (
    DEFAULT_TABLE,
    PionResponseError,
    PionResponseTable,
    bin_statistics,
    expected_deposit,
    load_table,
    log_edges,
    save_table,
    summary,
    table_path,
)

P_EDGES = np.array([1.0, 4.0, 16.0, 64.0])  # centres 2, 8, 32 GeV: log-spaced by ln 4
ETA_EDGES = np.array([0.0, 1.3, 2.5, 3.0])


def hand_table() -> PionResponseTable:
    """A 3 x 3 table whose values say where they come from: mean = 0.1 (p bin + 1) + 0.01 eta
    bin, sigma = mean / 10, rms = mean / 5."""
    a, b = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    mean = 0.1 * (a + 1) + 0.01 * b
    return PionResponseTable(
        P_EDGES, ETA_EDGES, n=np.full((3, 3), 7, np.int64), mean=mean, median=mean - 0.01,
        sigma=mean / 10, rms=mean / 5, zero_fraction=np.full((3, 3), 0.25),
        provenance={"seed": 1, "what": "hand-made"})


# -- the file -----------------------------------------------------------------------------------
def test_round_trip(tmp_path):
    t = hand_table()
    save_table(tmp_path / "t.npz", t)
    back = load_table(tmp_path / "t.npz")
    for name in ("p_edges", "abs_eta_edges", "n", "mean", "median", "sigma", "rms",
                 "zero_fraction"):
        assert np.array_equal(getattr(back, name), getattr(t, name)), name
    assert back.n.dtype == np.int64 and back.mean.dtype == np.float64
    assert back.provenance == t.provenance
    assert back.shape == (3, 3)
    assert np.allclose(back.p_centres, [2.0, 8.0, 32.0])
    assert summary(back).count("\n") == 9


def arrays_of(t: PionResponseTable) -> dict:
    return {"p_edges": t.p_edges, "abs_eta_edges": t.abs_eta_edges, "n": t.n, "mean": t.mean,
            "median": t.median, "sigma": t.sigma, "rms": t.rms,
            "zero_fraction": t.zero_fraction, "provenance": np.asarray(json.dumps({"seed": 1}))}


def _set(name, value):
    def change(a):
        a[name] = value
        return a
    return change


def _cell(name, value):
    def change(a):
        v = np.array(a[name], dtype=np.float64 if name != "n" else np.int64)
        v[1, 2] = value
        a[name] = v
        return a
    return change


BROKEN = {
    "missing array": (lambda a: {k: v for k, v in a.items() if k != "sigma"},
                      r"missing array\(s\) \['sigma'\]"),
    "int mean": (_set("mean", np.ones((3, 3), np.int64)),
                 r"array 'mean' has dtype int64, expected kind 'f'"),
    "edges not increasing": (_set("p_edges", np.array([1.0, 4.0, 4.0, 64.0])),
                             r"array 'p_edges' must be finite, increasing and > 0"),
    "negative eta edge": (_set("abs_eta_edges", np.array([-0.5, 1.3, 2.5, 3.0])),
                          r"array 'abs_eta_edges' must be finite, increasing and >= 0"),
    "one edge": (_set("abs_eta_edges", np.array([0.0])),
                 r"array 'abs_eta_edges' must hold at least 2 bin edges"),
    "wrong shape": (_set("median", np.ones((3, 2))),
                    r"array 'median' has shape \(3, 2\), expected \(3, 3\)"),
    "n shape": (_set("n", np.ones(9, np.int64)), r"array 'n' has shape \(9,\), expected"),
    "empty bin": (_cell("n", 0), r"array 'n' is 0 in bin \(1, 2\); every bin needs pions"),
    "nan mean": (_cell("mean", np.nan), r"array 'mean' has the value nan in bin \(1, 2\)"),
    "negative sigma": (_cell("sigma", -0.1), r"array 'sigma' .* values must be finite and >= 0"),
    "zero fraction > 1": (_cell("zero_fraction", 1.5),
                          r"array 'zero_fraction' has the value 1.5 .* must be in \[0, 1\]"),
    "provenance not JSON": (_set("provenance", np.asarray("{seed")),
                            r"provenance is not JSON"),
    "provenance not an object": (_set("provenance", np.asarray("[1, 2]")),
                                 r"provenance must be a JSON object, got list"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_files_are_named_with_the_bad_field(tmp_path, case):
    change, message = BROKEN[case]
    path = tmp_path / "broken.npz"
    np.savez(path, **change(arrays_of(hand_table())))
    with pytest.raises(PionResponseError, match=message) as err:
        load_table(path)
    assert f"pion-response table {path}" in str(err.value)


def test_missing_unreadable_and_unknown_builtin_files(tmp_path):
    with pytest.raises(PionResponseError, match=r"'.*nope.npz': no such file"):
        load_table(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(PionResponseError, match=r"junk.npz: cannot read it as .npz"):
        load_table(tmp_path / "junk.npz")
    with pytest.raises(PionResponseError, match=r"no built-in pion-response table "
                       r"'nope.npz'; shipped: .*pion_response.npz"):
        load_table("builtin:nope.npz")
    assert table_path(DEFAULT_TABLE).name == "pion_response.npz"


def test_bin_statistics_by_hand():
    p = np.array([2.0, 2.0, 2.0, 2.0, 10.0, 10.0, 3.0, 1000.0])
    eta = np.array([0.1, 0.2, 0.3, 0.4, 1.0, 2.0, 1.5, 0.1])
    energy = np.array([0.0, 1.0, 1.0, 2.0, 5.0, 6.0, 0.0, 1.0])
    t = bin_statistics(p, eta, energy, [1.0, 5.0, 20.0], [0.0, 1.3, 2.5], {"seed": 3})
    assert t.n.tolist() == [[4, 1], [1, 1]]  # p = 1000 is outside the bins
    r = np.array([0.0, 0.5, 0.5, 1.0])
    assert t.mean[0, 0] == pytest.approx(0.5) and t.median[0, 0] == pytest.approx(0.5)
    assert t.rms[0, 0] == pytest.approx(r.std())
    q16, q84 = np.quantile(r, (0.16, 0.84))
    assert t.sigma[0, 0] == pytest.approx(0.5 * (q84 - q16))
    assert t.zero_fraction.tolist() == [[0.25, 1.0], [0.0, 0.0]]
    assert t.mean[1, 1] == pytest.approx(0.6) and t.sigma[1, 1] == 0.0
    with pytest.raises(PionResponseError, match=r"no pion in the bin p 5-20 GeV, \|eta\| 0-1.3"):
        bin_statistics(p[:4], eta[:4], energy[:4], [1.0, 5.0, 20.0], [0.0, 1.3])
    assert np.allclose(log_edges(1.0, 500.0, 12)[[0, 6, 12]], [1.0, math.sqrt(500.0), 500.0])


# -- the evaluation -----------------------------------------------------------------------------
def test_expected_deposit_is_exact_at_the_centres_and_linear_in_log_p():
    t = hand_table()
    centres = np.array([2.0, 8.0, 32.0])
    for b, eta in enumerate((0.5, -1.9, 2.7)):  # bin of |eta|; the sign does not matter
        mean, sigma = t.expected_deposit(centres, np.full(3, eta))
        assert np.allclose(mean, t.mean[:, b] * centres, rtol=1e-14)
        assert np.allclose(sigma, t.sigma[:, b] * centres, rtol=1e-14)
    # halfway in log p between the centres 2 and 8 (p = 4): the average of the two responses
    mean, sigma = t.response(np.array([4.0, 16.0]), np.array([0.0, 1.3]))
    assert np.allclose(mean, [(0.1 + 0.2) / 2, (0.21 + 0.31) / 2], rtol=1e-14)
    # a quarter of the way (p = 2 * 4**0.25)
    mean, _ = t.response(2.0 * 4.0**0.25, 0.0)
    assert float(mean) == pytest.approx(0.1 + 0.25 * 0.1, rel=1e-14)


def test_expected_deposit_clamps_outside_the_table():
    t = hand_table()
    p = np.array([0.5, 1.0, 2.0, 32.0, 64.0, 1e4])
    mean, sigma = t.response(p, np.full(p.shape, 3.7))  # |eta| beyond 3: the last bin
    assert np.allclose(mean, [0.12, 0.12, 0.12, 0.32, 0.32, 0.32], rtol=1e-14)
    dep, dsig = t.expected_deposit(p, 3.7)
    assert np.allclose(dep, mean * p) and np.allclose(dsig, sigma * p)
    assert np.array_equal(expected_deposit(p, 3.7, table=t)[0], dep)
    # 2-D inputs keep their shape; rms as the spread
    p2 = np.array([[2.0, 8.0], [32.0, 100.0]])
    mean, spread = t.expected_deposit(p2, np.zeros((2, 2)), spread="rms")
    assert mean.shape == (2, 2)
    assert np.allclose(spread, t.rms[[0, 1, 2, 2], 0].reshape(2, 2) * p2)
    with pytest.raises(PionResponseError, match=r"spread must be one of \['sigma', 'rms'\]"):
        t.response(p, 0.0, spread="width")


def test_expected_deposit_with_one_momentum_bin():
    t = hand_table()
    one = PionResponseTable(np.array([1.0, 100.0]), ETA_EDGES, t.n[:1], t.mean[:1],
                            t.median[:1], t.sigma[:1], t.rms[:1], t.zero_fraction[:1], {})
    mean, _ = one.response(np.array([0.1, 10.0, 1e3]), np.array([0.0, 1.5, 2.9]))
    assert np.allclose(mean, t.mean[0])


def test_expected_deposit_runs_on_cupy_strict_arrays():
    """Only array operations on ``xp``: on the CuPy-strict stand-in (which refuses host arrays
    in device arithmetic and hidden reads) the result equals NumPy's."""
    xp = strictxp.strict_numpy
    t = hand_table()
    p = np.geomspace(0.5, 200.0, 17)
    eta = np.linspace(-3.2, 3.2, 17)
    want = t.expected_deposit(p, eta)
    got = t.expected_deposit(xp.asarray(p), xp.asarray(eta), xp=xp)
    assert all(isinstance(g, strictxp.DeviceArray) for g in got)
    assert np.array_equal(got[0].get(), want[0]) and np.array_equal(got[1].get(), want[1])
    with strictxp.record_uploads() as uploads:  # the table goes up once per module
        t.expected_deposit(xp.asarray(p), xp.asarray(eta), xp=xp)
    assert len(uploads) == 2  # p and eta only


def test_module_imports_no_numba_and_no_generator():
    code = ("import sys, hltemu.pion_response; "
            "print(sorted(m for m in sys.modules if m.startswith(('numba', 'hltemu.simulate'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the shipped table --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped() -> PionResponseTable:
    return load_table(DEFAULT_TABLE)


def test_shipped_table_bins_and_record(shipped):
    assert np.allclose(shipped.p_edges, log_edges(1.0, 500.0, 12))
    assert shipped.abs_eta_edges.tolist() == [0.0, 1.3, 2.5, 3.0]
    assert shipped.n.min() >= 500
    prov = shipped.provenance
    assert prov["seed"] == 3001 and prov["dr"] == 0.2
    record = json.loads(table_path(DEFAULT_TABLE).with_suffix(".json").read_text())
    for key in ("seed", "events", "command", "seconds", "p_edges", "abs_eta_edges"):
        assert record[key] == prov[key], key
    assert record["cone"]["n"] == shipped.n.tolist()
    # the module-level function reads the shipped table by default
    assert expected_deposit(50.0, 0.5) == shipped.expected_deposit(50.0, 0.5)


def test_shipped_table_is_physical(shipped):
    """Response rises with p (within 3 standard errors of the difference); it is in [0, 1.1]
    everywhere and in [0.3, 1.1] where most pions make a cluster (zero fraction < 16%, so the
    16-84% width is the shower's); there sigma / mean falls with p (within 10%, the error of
    a width from 500+ pions); pions leave no cluster more often at low p."""
    se = shipped.rms / np.sqrt(shipped.n)
    step = np.diff(shipped.mean, axis=0)
    assert np.all(step > -3.0 * np.hypot(se[1:], se[:-1])), shipped.mean
    assert np.all((shipped.mean >= 0.0) & (shipped.mean <= 1.1))
    clustered = shipped.zero_fraction < 0.16
    assert np.all((shipped.mean[clustered] > 0.3) & (shipped.mean[clustered] < 1.1))
    assert clustered[-4:].all()  # above ~60 GeV every pion makes a cluster
    rel = shipped.sigma / shipped.mean
    both = clustered[1:] & clustered[:-1]
    assert np.all((rel[1:] <= 1.1 * rel[:-1])[both]), rel
    assert np.all(np.diff(shipped.zero_fraction, axis=0) <= 0.05)
    assert shipped.zero_fraction[0].min() > 0.9  # 1-1.7 GeV pions hardly ever seed a cluster
    assert np.all(shipped.median <= 1.1) and np.all(shipped.sigma >= 0)


def test_particle_gun_agrees_with_the_shipped_table(shipped):
    """50 fresh pions at 50 GeV (another seed than the table's) through the simulation and the
    real topocluster stage: their mean response agrees with the table within 3 standard
    errors (the gun's and the table bin's)."""
    from hltemu.simulate.particle_gun import GunConfig, shoot_and_cluster

    cfg = GunConfig(p_min=50.0, p_max=50.0, eta_min=0.0, eta_max=1.2, seed=77)
    pions = shoot_and_cluster(cfg, 50, backend="cpu", batch_size=50)
    assert pions["reached"].all() and np.all(pions["p"] == 50.0)
    assert set(np.unique(pions["pdgId"])) == {211, -211}
    response = pions["cone"] / 50.0
    expected, _ = shipped.response(pions["p"], pions["impact_eta"])
    j = np.searchsorted(shipped.abs_eta_edges, np.abs(pions["impact_eta"]), side="right") - 1
    a = np.searchsorted(shipped.p_edges, 50.0) - 1
    se_table = (shipped.rms / np.sqrt(shipped.n))[a, j].mean()
    se = math.hypot(response.std(ddof=1) / math.sqrt(50), se_table)
    assert abs(response.mean() - expected.mean()) < 3.0 * se, (response.mean(), expected.mean())
    assert 0.6 < response.mean() < 0.85


# -- the particle gun ---------------------------------------------------------------------------
def test_particles_do_not_depend_on_the_range_they_are_shot_in():
    from hltemu.simulate.particle_gun import GUN_COLLECTION, GunConfig, shoot

    cfg = GunConfig(p_min=2.0, p_max=200.0, seed=5)
    whole, part = shoot(cfg, 0, 4), shoot(cfg, 2, 4)
    cells = whole["CaloCell"].select_events(2, 4)
    for c in ("id", "energy", "true_energy"):
        assert np.array_equal(cells[c], part["CaloCell"][c]), c
    g, h = whole[GUN_COLLECTION], part[GUN_COLLECTION]
    assert g["index"].tolist() == [0, 1, 2, 3] and h["index"].tolist() == [2, 3]
    assert np.array_equal(g["p"][2:], h["p"])
    assert np.all((g["p"] >= 2.0) & (g["p"] <= 200.0))
    assert np.all(np.abs(g["eta"]) <= 3.0) and np.all(g["reached"])
    # the deposit is centred on the impact point, not on the vertex direction
    assert part["CaloCell"].n_events == 2 and part.first_entry == 2


def test_cluster_energies_by_hand():
    from hltemu.simulate.particle_gun import cluster_energies

    # event 0: impact (0, 3.1); clusters at dR 0.05 across the phi wrap (+10 GeV), 0.15
    # (+2 GeV), 0.1 (-1 GeV: ignored), 0.5 (+7 GeV: outside).  Event 1: no cluster.
    # Event 2: one cluster at dR 0.3 only.
    cols = {"energy": np.array([10.0, 2.0, -1.0, 7.0, 4.0]),
            "eta": np.array([0.0, 0.15, 0.1, 0.5, 1.3]),
            "phi": np.array([3.1 + 0.05 - 2 * math.pi, 3.1, 3.1, 3.1, 0.0])}
    clusters = Collection.from_counts([4, 0, 1], cols)
    out = cluster_energies(clusters, np.array([0.0, 0.0, 1.0]), np.array([3.1, 0.0, 0.0]), 0.2)
    assert np.allclose(out["cone"], [12.0, 0.0, 0.0])
    assert out["n_cone"].tolist() == [2, 0, 0]
    assert np.allclose(out["nearest"], [10.0, 0.0, 4.0])
    assert np.allclose(out["nearest_dr"], [0.05, np.inf, 0.3])


@pytest.mark.parametrize("kwargs, message", [
    ({"pdg_ids": (999,)}, r"pdg_ids must be ids the gun knows"),
    ({"p_min": 5.0, "p_max": 1.0}, r"0 < p_min <= p_max"),
    ({"p_min": 0.0}, r"0 < p_min <= p_max"),
    ({"eta_min": 1.0, "eta_max": 0.5}, r"eta_min <= eta_max"),
])
def test_gun_config_errors(kwargs, message):
    from hltemu.simulate.particle_gun import GunConfig, GunError

    with pytest.raises(GunError, match=message):
        GunConfig(**kwargs)
