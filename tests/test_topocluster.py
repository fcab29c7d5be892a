"""Stage ``topocluster``: the 4-2-0 rule against an independent union-find oracle, hand-made
cases (merging, perimeter ties, phi wrap, negative cells), identical clusters on reference, cpu
and cuda for random graphs (hypothesis) and generated ttbar at pileup 0, 50 and 200, truth
metrics, input errors and the pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hltemu.backends import cuda_status, get_backend
from hltemu.batch import Collection, EventBatch
from hltemu.cell_graph import CellGraph, calorimeter_graph
from hltemu.config import ConfigError, GenerateConfig
from hltemu.metrics import topocluster_metrics
from hltemu.pipeline import (
    PipelineError,
    config_from_dict,
    default_config,
    get_stage,
    load_config,
    plan,
    run_batch,
)
from hltemu.stages.topocluster import (
    CLUSTER_COLUMNS,
    LABEL_COLLECTION,
    LABEL_COLUMN,
    TopoclusterConfig,
    labels_cuda,
    noise_graph,
    row_arrays,
    topocluster,
)

BACKENDS = ("reference", "cpu", "cuda")
#: Float columns agree to this (relative), and the energy to this times the cluster's sum |E|.
RTOL = 1e-12
#: The former default: noise and (now) the mean pileup energy of <mu> = 50 interactions.
PU50 = TopoclusterConfig(pileup_mu=50.0, pileup_offset="mean")
#: the default offset mode: each event's pileup from its calorimeter rho
PU50_EVENT = TopoclusterConfig(pileup_mu=50.0)
#: The same noise, the mean pileup energy not subtracted (thresholds only).
PU50_NO_OFFSET = TopoclusterConfig(pileup_mu=50.0, subtract_pileup_mean=False)


def cuda_usable() -> bool:
    return cuda_status()[0]


# -- building inputs ----------------------------------------------------------------------------
def graph_from_edges(n: int, edges, noise, eta=None, phi=None) -> CellGraph:
    """A CellGraph over ``n`` cells from undirected ``edges`` (pairs of ids)."""
    pairs = {(a, b) for a, b in edges if a != b} | {(b, a) for a, b in edges if a != b}
    pairs = sorted(pairs)
    src = np.array([p[0] for p in pairs], dtype=np.int64)
    dst = np.array([p[1] for p in pairs], dtype=np.int32)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=offsets[1:])
    return CellGraph.from_arrays(offsets, dst, noise, eta, phi)


def grid_graph(n_eta: int, n_phi: int, noise=1.0) -> CellGraph:
    """An eta-phi grid (id = i_eta * n_phi + i_phi), 8 neighbours, phi wrapping, cells of
    0.1 x 2 pi / n_phi centred at eta = 0.1 (i + 0.5) and phi in [-pi, pi)."""
    edges = []
    for ie in range(n_eta):
        for ip in range(n_phi):
            for de in (-1, 0, 1):
                for dp in (-1, 0, 1):
                    je, jp = ie + de, (ip + dp) % n_phi
                    if (de or dp) and 0 <= je < n_eta:
                        edges.append((ie * n_phi + ip, je * n_phi + jp))
    ie, ip = np.divmod(np.arange(n_eta * n_phi), n_phi)
    dphi = 2 * math.pi / n_phi
    return graph_from_edges(n_eta * n_phi, edges, np.full(n_eta * n_phi, noise),
                            0.1 * (ie + 0.5), -math.pi + dphi * (ip + 0.5))


def cells_from(events, true=None) -> Collection:
    """CaloCell collection from per-event ``(ids, energies)``."""
    counts = [len(ids) for ids, _ in events]
    ids = np.concatenate([np.asarray(i, dtype=np.int32) for i, _ in events]) if events else \
        np.zeros(0, np.int32)
    e = np.concatenate([np.asarray(x, dtype=np.float32) for _, x in events]) if events else \
        np.zeros(0, np.float32)
    cols = {"id": ids, "energy": e}
    if true is not None:
        cols["true_energy"] = np.concatenate([np.asarray(t, dtype=np.float32) for t in true])
    return Collection.from_counts(counts, cols)


def geometry_ecal() -> np.ndarray:
    """The default geometry's ECAL cells (bool per cell id), from its layer table."""
    from hltemu.geometry import default_geometry

    calo = default_geometry().calo
    ecal = [lay.index for lay in calo.layers if lay.section == "ECAL"]
    return np.isin(calo.cell_layer, ecal)


def em_of(graph: CellGraph | None) -> np.ndarray:
    """The ECAL cells the tests use with ``graph``: the geometry's for a graph of its size,
    else every third cell id (a made-up mask for small test graphs)."""
    ecal = geometry_ecal()
    if graph is None or graph.n_cells == ecal.shape[0]:
        return ecal
    return np.arange(graph.n_cells) % 3 == 0


def run(cells: Collection, backend: str, cfg: TopoclusterConfig | None = None,
        graph: CellGraph | None = None) -> tuple[Collection, Collection]:
    be = get_backend(backend)
    em = None if graph is None or graph.n_cells == geometry_ecal().shape[0] else em_of(graph)
    out = topocluster(cells.to(be), cfg or PU50, be, graph, em)
    assert set(out) == {"clusters", LABEL_COLLECTION}
    clusters, labels = out["clusters"].to_host(), out[LABEL_COLLECTION].to_host()
    assert np.array_equal(labels.offsets, cells.offsets)
    assert clusters.n_events == cells.n_events
    for name, (dtype, _, _) in CLUSTER_COLUMNS.items():
        assert clusters[name].dtype == np.dtype(dtype), name
    assert labels[LABEL_COLUMN].dtype == np.int32
    return clusters, labels


def available_backends() -> list[str]:
    return [b for b in BACKENDS if b != "cuda" or cuda_usable()]


def assert_same(a: tuple[Collection, Collection], b: tuple[Collection, Collection]) -> None:
    """Identical membership and seeds; kinematics within RTOL."""
    (ca, la), (cb, lb) = a, b
    np.testing.assert_array_equal(la[LABEL_COLUMN], lb[LABEL_COLUMN])
    np.testing.assert_array_equal(ca.offsets, cb.offsets)
    for name in ("n_cells", "seed", "seed_significance"):
        np.testing.assert_array_equal(ca[name], cb[name], err_msg=name)
    np.testing.assert_allclose(ca["eta"], cb["eta"], rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(ca["phi"], cb["phi"], rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(ca["energy"], cb["energy"], rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(ca["energy_em"], cb["energy_em"], rtol=RTOL, atol=1e-9)


def all_backends(cells: Collection, cfg=None, graph=None) -> tuple[Collection, Collection]:
    """Run every usable backend, check they agree, return the reference's result."""
    ref = run(cells, "reference", cfg, graph)
    for name in available_backends()[1:]:
        assert_same(ref, run(cells, name, cfg, graph))
    return ref


# -- an independent oracle: the rule as stated, by union-find ----------------------------------
def corrected(ids, energy, graph: CellGraph) -> np.ndarray:
    """Energies less the graph's per-cell offset (the mean pileup energy), as documented."""
    e = np.asarray(energy, dtype=np.float64)
    return e if graph.offset is None else e - graph.offset[np.asarray(ids)]


def oracle(cells: Collection, graph: CellGraph, cfg: TopoclusterConfig) -> list[list[int]]:
    """Per event, the label seed's cell id of every row (-1 for none), from the definition:
    components of growing cells holding a seed; best seed by (significance, -id); perimeter
    cells join the best neighbouring cluster; energies less the graph's offset."""
    return [_oracle_event([int(v) for v in cells.event(i)["id"]],
                          corrected(cells.event(i)["id"], cells.event(i)["energy"],
                                    graph).tolist(), graph, cfg)
            for i in range(cells.n_events)]


def _oracle_event(ids: list[int], energy: list[float], graph: CellGraph,
                  cfg: TopoclusterConfig) -> list[int]:
    n = len(ids)
    sig = [abs(e) / float(graph.noise[c]) for c, e in zip(ids, energy, strict=True)]
    row = {c: r for r, c in enumerate(ids)}
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def nbrs(r):
        lo, hi = graph.nbr_offsets[ids[r]], graph.nbr_offsets[ids[r] + 1]
        return [row[int(d)] for d in graph.nbr_index[lo:hi] if int(d) in row]

    grow = [s > cfg.grow_threshold for s in sig]
    for r in range(n):
        if grow[r]:
            for q in nbrs(r):
                if grow[q]:
                    parent[find(r)] = find(q)
    best: dict[int, int] = {}
    for r in range(n):
        if sig[r] > cfg.seed_threshold:
            root = find(r)
            b = best.get(root)
            if b is None or (sig[r], -ids[r]) > (sig[b], -ids[b]):
                best[root] = r
    label = [-1] * n
    for r in range(n):
        if grow[r] and find(r) in best:
            label[r] = best[find(r)]
    for r in range(n):
        if label[r] < 0 and not grow[r] and sig[r] > cfg.perimeter_threshold:
            cands = [label[q] for q in nbrs(r) if grow[q] and label[q] >= 0]
            if cands:
                label[r] = max(cands, key=lambda s: (sig[s], -ids[s]))
    return [ids[s] if s >= 0 else -1 for s in label]


def seed_ids(result: tuple[Collection, Collection]) -> list[list[int]]:
    """Per event, the seed cell id of every row's cluster (-1 for none)."""
    clusters, labels = result
    out = []
    for i in range(labels.n_events):
        lab = labels.event(i)[LABEL_COLUMN]
        seeds = clusters.event(i)["seed"]
        assert np.all(lab < seeds.shape[0])
        out.append([int(seeds[k]) if k >= 0 else -1 for k in lab])
    return out


def check_kinematics(cells: Collection, graph: CellGraph,
                     result: tuple[Collection, Collection], max_clusters: int = 1000) -> None:
    """Cluster columns recomputed from their cells with the documented formulas (per event,
    the ``max_clusters`` largest clusters and as many others), from the cell energies less the
    graph's offset."""
    clusters, labels = result
    rng = np.random.default_rng(0)
    em = em_of(graph)
    for i in range(cells.n_events):
        ev, cl = dict(cells.event(i)), clusters.event(i)
        ev["energy"] = corrected(ev["id"], ev["energy"], graph)
        lab = labels.event(i)[LABEL_COLUMN]
        order = [(-s, seed) for s, seed in zip(cl["seed_significance"], cl["seed"], strict=True)]
        assert order == sorted(order)  # seed rank order
        n_cl = cl["seed"].shape[0]
        chosen = set(np.argsort(-cl["n_cells"])[:max_clusters].tolist())
        chosen |= set(rng.choice(n_cl, min(n_cl, max_clusters), replace=False).tolist())
        for k in sorted(chosen):
            m = lab == k
            e = ev["energy"][m].astype(np.float64)
            ids = ev["id"][m]
            assert cl["n_cells"][k] == m.sum() and cl["seed"][k] in ids
            s_seed = abs(float(ev["energy"][ev["id"] == cl["seed"][k]][0])) / \
                graph.noise[cl["seed"][k]]
            assert cl["seed_significance"][k] == s_seed
            assert cl["energy"][k] == pytest.approx(e.sum(), rel=1e-12, abs=1e-9)
            assert cl["energy_em"][k] == pytest.approx(e[em[ids]].sum(), rel=1e-12, abs=1e-9)
            w = np.abs(e)
            assert cl["eta"][k] == pytest.approx((w * graph.eta[ids]).sum() / w.sum(), abs=1e-12)
            phi0 = graph.phi[cl["seed"][k]]
            d = wrap(graph.phi[ids] - phi0)
            expect = wrap(phi0 + (w * d).sum() / w.sum())
            assert abs(wrap(cl["phi"][k] - expect)) < 1e-9
            assert -math.pi <= cl["phi"][k] < math.pi


def wrap(x):
    """Into [-pi, pi), as the stage documents (not (-pi, pi] as np.angle)."""
    return x - 2 * math.pi * np.floor((x + math.pi) / (2 * math.pi))


# -- hand-made cases ------------------------------------------------------------------------
def chain(n: int, noise=1.0) -> CellGraph:
    """Cells 0 - 1 - 2 - ... - n-1 in a line, at eta = id, phi = 0."""
    return graph_from_edges(n, [(i, i + 1) for i in range(n - 1)], np.full(n, noise),
                            np.arange(n, dtype=np.float64), np.zeros(n))


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_hand_made_chain(backend_name):
    if backend_name == "cuda" and not cuda_usable():
        pytest.skip("cuda not usable")
    g = chain(12, noise=0.5)
    # significance = 2 |E|:  cells 0-4: 1 3 9 3 1 | 5: 0.5 | 6-9: 3 10 -3 0 | 10, 11: 5, 1
    e = [0.5, 1.5, 4.5, 1.5, 0.5, 0.25, 1.5, 5.0, -1.5, 0.0, 2.5, 0.5]
    cells = cells_from([(list(range(12)), e)])
    clusters, labels = run(cells, backend_name, graph=g)
    # best seed first: cell 7 (S=10) -> cluster 0, cell 2 (S=9) -> cluster 1, cell 10 (S=5) -> 2
    assert clusters["seed"].tolist() == [7, 2, 10]
    assert labels[LABEL_COLUMN].tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0, -1, 2, 2]
    # cell 5 (S=0.5, perimeter) touches cluster 1's cell 4? no: 4 is perimeter (S=1). It
    # touches cell 6 (S=3, cluster 0's core): joins cluster 0.  Cell 9 (E=0) joins nothing.
    assert clusters["n_cells"].tolist() == [4, 5, 2]
    np.testing.assert_allclose(clusters["energy"], [0.25 + 1.5 + 5.0 - 1.5, 8.5, 3.0])
    # ECAL cells in run(): ids 0, 3, 6, 9 (every third): cluster 0 holds 6, cluster 1 0 and 3
    np.testing.assert_allclose(clusters["energy_em"], [1.5, 0.5 + 1.5, 0.0])
    w = np.array([0.25, 1.5, 5.0, 1.5])
    assert clusters["eta"][0] == pytest.approx((w * [5, 6, 7, 8]).sum() / w.sum(), abs=1e-14)
    np.testing.assert_allclose(clusters["phi"], 0.0, atol=0)
    np.testing.assert_array_equal(clusters["seed_significance"], [10.0, 9.0, 5.0])


def test_two_seeds_through_growing_cells_are_one_cluster():
    g = chain(5)
    cells = cells_from([(range(5), [5.0, 3.0, 3.0, 3.0, 6.0])])
    clusters, labels = all_backends(cells, graph=g)
    assert clusters["seed"].tolist() == [4] and labels[LABEL_COLUMN].tolist() == [0] * 5
    # the same seeds with a gap below the growth threshold: two clusters, the gap cell a
    # perimeter cell of the better one (seed 4, S=6), though both touch it
    cells = cells_from([(range(5), [5.0, 3.0, 1.0, 3.0, 6.0])])
    clusters, labels = all_backends(cells, graph=g)
    assert clusters["seed"].tolist() == [4, 0]
    assert labels[LABEL_COLUMN].tolist() == [1, 1, 0, 0, 0]


def test_ties_go_to_the_lowest_cell_id():
    g = chain(5)
    cells = cells_from([([4, 3, 2, 1, 0], [-7.0, 2.5, 1.0, 2.5, 7.0])])  # rows in reverse
    clusters, labels = all_backends(cells, graph=g)
    # seeds 0 and 4 tie at S = 7: cell 0 ranks first; the perimeter cell 2 joins it
    assert clusters["seed"].tolist() == [0, 4]
    assert labels[LABEL_COLUMN].tolist() == [1, 1, 0, 0, 0]
    assert clusters["energy"].tolist() == [7.0 + 2.5 + 1.0, -7.0 + 2.5]  # a negative cluster
    cells = cells_from([(range(5), [7.0, 3.0, 7.0, 3.0, 7.0])])  # one cluster, three tied seeds
    clusters, _ = all_backends(cells, graph=g)
    assert clusters["seed"].tolist() == [0] and clusters["n_cells"].tolist() == [5]


def test_perimeter_cells_do_not_grow_and_thresholds_are_strict():
    g = chain(6)
    cfg = TopoclusterConfig(seed_threshold=4.0, grow_threshold=2.0, perimeter_threshold=0.5)
    # S exactly at a threshold does not pass it
    cells = cells_from([(range(6), [4.0, 4.5, 2.0, 1.0, 0.5, 9.0])])
    clusters, labels = all_backends(cells, cfg, g)
    # seeds: 5 (S=9), 1 (S=4.5); cell 0 (S=4) grows; 2 (S=2) is perimeter of cluster 1;
    # 3 (S=1) touches no core cell (2 is perimeter, 4 is below); 4 (S=0.5) is nothing
    assert clusters["seed"].tolist() == [5, 1]
    assert labels[LABEL_COLUMN].tolist() == [1, 1, 1, -1, -1, 0]


def test_giant_cluster_across_the_phi_wrap():
    g = grid_graph(4, 10)
    rng = np.random.default_rng(3)
    e = rng.uniform(5.0, 6.0, 40)
    e[17] = 8.0
    e[23] = 8.0  # tie with cell 17: 17 is the label
    perm = rng.permutation(40)
    cells = cells_from([(perm, e[perm])])  # energies by cell id, rows in random order
    clusters, labels = all_backends(cells, graph=g)
    assert clusters["seed"].tolist() == [17] and clusters["n_cells"].tolist() == [40]
    assert np.all(labels[LABEL_COLUMN] == 0)
    check_kinematics(cells, g, (clusters, labels))
    # a cluster sitting on phi = +-pi: its phi must be near +-pi, not near 0
    e = np.zeros(40)
    e[[0, 9, 10, 19]] = [5.0, 5.0, 3.0, 3.0]  # i_phi 0 and 9: both sides of the wrap
    cells = cells_from([(range(40), e)])
    clusters, labels = all_backends(cells, graph=g)
    assert clusters["n_cells"].tolist() == [4]
    assert abs(abs(clusters["phi"][0]) - math.pi) < 1e-12
    check_kinematics(cells, g, (clusters, labels))


def test_empty_and_noise_only_events():
    g = grid_graph(3, 8)
    rng = np.random.default_rng(5)
    events = [
        ([], []),  # no cells
        (range(24), rng.uniform(-1.9, 1.9, 24)),  # noise below the growth threshold
        (range(24), np.zeros(24)),
        (range(0, 24, 3), rng.uniform(-3.9, 3.9, 8)),  # growing cells, no seed
    ]
    cells = cells_from(events)
    clusters, labels = all_backends(cells, graph=g)
    assert clusters.size == 0 and np.all(labels[LABEL_COLUMN] == -1)
    for name in available_backends():
        c, lab = run(cells_from([]), name, graph=g)  # a batch of no events
        assert c.n_events == 0 and lab.size == 0


# -- random graphs: every backend equals the oracle ------------------------------------------
def random_case(seed: int, n_cells: int, p_edge: float, n_events: int, ties: bool,
                subset: float):
    rng = np.random.default_rng(seed)
    edges = [(a, b) for a in range(n_cells) for b in range(a + 1, n_cells)
             if rng.random() < p_edge]
    noise = rng.choice([0.5, 1.0, 2.0], n_cells) if ties else rng.uniform(0.2, 2.0, n_cells)
    eta = rng.uniform(-3.0, 3.0, n_cells)
    phi = rng.uniform(-math.pi, math.pi, n_cells)
    g = graph_from_edges(n_cells, edges, noise, eta, phi)
    events = []
    for _ in range(n_events):
        ids = rng.permutation(n_cells)[: int(round(subset * n_cells))]
        if ties:  # significances from a small set: ties everywhere, values on thresholds
            s = rng.choice([0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], ids.shape[0])
        else:
            s = rng.exponential(2.5, ids.shape[0])
        sign = rng.choice([-1.0, 1.0], ids.shape[0])
        events.append((ids, sign * s * noise[ids]))
    return g, cells_from(events)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_cells=st.integers(1, 40),
       p_edge=st.sampled_from([0.0, 0.05, 0.15, 0.4, 1.0]), n_events=st.integers(0, 3),
       ties=st.booleans(), subset=st.sampled_from([1.0, 0.7, 0.3]),
       thresholds=st.sampled_from([(4.0, 2.0, 0.0), (4.0, 2.0, 1.0), (3.0, 3.0, 0.0),
                                   (5.0, 1.0, 1.0), (2.0, 2.0, 2.0)]))
def test_backends_equal_the_oracle_on_random_graphs(seed, n_cells, p_edge, n_events, ties,
                                                    subset, thresholds):
    g, cells = random_case(seed, n_cells, p_edge, n_events, ties, subset)
    cfg = TopoclusterConfig(*thresholds)
    ref = all_backends(cells, cfg, g)
    assert seed_ids(ref) == oracle(cells, g, cfg)
    check_kinematics(cells, g, ref)


def test_random_graphs_exercise_merges_ties_and_perimeter_contests():
    """The hypothesis cases are not trivial: count what the random inputs contain."""
    merged = contested = tied = 0
    cfg = TopoclusterConfig()
    for seed in range(40):
        g, cells = random_case(seed, 30, 0.15, 2, seed % 2 == 0, 1.0)
        clusters, labels = run(cells, "cpu", cfg, g)
        assert seed_ids((clusters, labels)) == oracle(cells, g, cfg)
        for i in range(cells.n_events):
            ev = cells.event(i)
            s = np.abs(ev["energy"].astype(np.float64)) / g.noise[ev["id"]]
            lab = labels.event(i)[LABEL_COLUMN]
            row = {int(c): r for r, c in enumerate(ev["id"])}
            n_seeds_in = np.bincount(lab[(s > 4) & (lab >= 0)], minlength=clusters.counts[i])
            merged += int((n_seeds_in > 1).sum())
            tied += int(len(np.unique(s[s > 4])) < (s > 4).sum())
            for r in np.flatnonzero((lab >= 0) & (s <= 2)):
                c = int(ev["id"][r])
                near = {int(lab[row[int(d)]]) for d in g.nbr_index[g.nbr_offsets[c]:
                                                                   g.nbr_offsets[c + 1]]
                        if int(d) in row and s[row[int(d)]] > 2 and lab[row[int(d)]] >= 0}
                contested += len(near) > 1
    assert merged > 10 and contested > 5 and tied > 5


def test_row_order_and_cell_subsets_do_not_matter():
    g, cells = random_case(11, 40, 0.12, 1, False, 1.0)
    ref_c, ref_l = run(cells, "reference", graph=g)
    ev = cells.event(0)
    perm = np.random.default_rng(2).permutation(cells.size)
    shuffled = cells_from([(ev["id"][perm], ev["energy"][perm])])
    for name in available_backends():
        c, lab = run(shuffled, name, graph=g)
        np.testing.assert_array_equal(c["seed"], ref_c["seed"])
        np.testing.assert_array_equal(lab[LABEL_COLUMN], ref_l[LABEL_COLUMN][perm])
    # dropping the cells below every threshold (E = 0) changes nothing
    keep = ev["energy"] != 0
    c, lab = run(cells_from([(ev["id"][keep], ev["energy"][keep])]), "cpu", graph=g)
    np.testing.assert_array_equal(c["seed"], ref_c["seed"])
    np.testing.assert_array_equal(lab[LABEL_COLUMN], ref_l[LABEL_COLUMN][keep])


def test_cuda_tag_propagation_needs_several_launches_on_a_long_chain():
    if not cuda_usable():
        pytest.skip("cuda not usable")
    n = 30
    g = chain(n)
    e = np.full(n, 3.0)
    e[0] = 5.0  # the only seed at one end: its tag must travel the whole chain
    cells = cells_from([(np.arange(n)[::-1].copy(), e[::-1].copy())])  # rows against the flow
    be = get_backend("cuda")
    rows = row_arrays(cells.to(be), g, be)
    label, launches = labels_cuda(rows, cells.offsets, g, TopoclusterConfig(), be)
    assert launches > 2
    assert np.all(be.to_host(label) == n - 1)  # the seed's row
    all_backends(cells, graph=g)


# -- generated ttbar ----------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[(0, 3), (50, 2), (200, 1)],
                ids=["pu0-3ev", "pu50-2ev", "pu200-1ev"])
def ttbar(request) -> EventBatch:
    from hltemu.simulate.generate import generate_batches

    pileup, events = request.param
    cfg = GenerateConfig(events=events, process="ttbar", pileup=pileup, seed=41 + pileup)
    return next(generate_batches(cfg, batch_size=events))


def window(cells: Collection, eta_c: float, phi_c: float, half: float) -> Collection:
    """The cells within ``half`` in eta and in phi (wrapping) of ``(eta_c, phi_c)``: a subset
    of every event, whose neighbours outside the window are absent."""
    calo_graph = calorimeter_graph()
    events = []
    true = []
    for i in range(cells.n_events):
        ev = cells.event(i)
        eta, phi = calo_graph.eta[ev["id"]], calo_graph.phi[ev["id"]]
        m = (np.abs(eta - eta_c) < half) & (np.abs(wrap(phi - phi_c)) < half)
        events.append((ev["id"][m], ev["energy"][m]))
        true.append(ev["true_energy"][m])
    return cells_from(events, true)


def test_generated_ttbar_reference_equals_cpu_and_cuda(ttbar):
    cells = ttbar["CaloCell"]
    ref = run(cells, "reference")
    assert_same(ref, run(cells, "cpu"))
    # the default offset, scaled per event by its own rho: identical too, and not the same
    ev = run(cells, "reference", PU50_EVENT)
    assert_same(ev, run(cells, "cpu", PU50_EVENT))
    assert ev[0].size != ref[0].size or not np.array_equal(ev[0]["energy"], ref[0]["energy"])
    # total noise, electronic and pileup at <mu> = 50, less the mean pileup energy
    check_kinematics(cells, noise_graph(PU50), ref, max_clusters=10)
    assert ref[0].size > 5 * cells.n_events
    # cuda: the simulator is slow, so windows of the calorimeter (subsets of the cells) around
    # the leading cluster and across phi = +-pi
    if cuda_usable():
        lead = int(np.argmax(ref[0].event(0)["energy"]))
        eta0, phi0 = ref[0].event(0)["eta"][lead], ref[0].event(0)["phi"][lead]
        for sub in (window(cells, eta0, phi0, 0.3), window(cells, 0.0, math.pi, 0.4)):
            sub_ref = run(sub, "reference")
            assert sub_ref[0].size > 0
            assert_same(sub_ref, run(sub, "cuda"))


def test_generated_ttbar_matches_the_oracle_in_a_window(ttbar):
    sub = window(ttbar["CaloCell"], 0.0, 0.0, 1.0)
    for cfg in (PU50, PU50_NO_OFFSET, TopoclusterConfig(pileup_mu=0.0)):
        ref = run(sub, "cpu", cfg)
        assert ref[0].size >= sub.n_events
        assert seed_ids(ref) == oracle(sub, noise_graph(cfg), cfg)


# -- metrics ------------------------------------------------------------------------------------
def test_metrics_by_hand():
    g = chain(6)
    cells = cells_from([(range(6), [5.0, 3.0, 0.0, 0.0, 5.0, 1.0]), ([0, 1], [0.0, 0.0])],
                       true=[[4.0, 2.5, 1.5, 0.0, 0.0, 0.0], [2.0, 0.0]])
    clusters, labels = run(cells, "reference", graph=g)
    m = topocluster_metrics(cells, labels, clusters)
    # clusters: {0, 1} (true 6.5) and {4, 5} (true 0: noise); true total 10
    assert (m.n_events, m.n_clusters, m.n_noise_clusters) == (2, 2, 1)
    assert m.containment == pytest.approx(6.5 / 10.0)
    assert m.clusters_per_event == 1.0 and m.noise_clusters_per_event == 0.5
    no_truth = cells_from([(range(6), [5.0, 3.0, 0.0, 0.0, 5.0, 1.0])])
    m = topocluster_metrics(no_truth, *reversed(run(no_truth, "cpu", graph=g)))
    assert m.n_clusters == 2 and math.isnan(m.containment)


def test_metrics_on_ttbar_pu0():
    from hltemu.simulate.generate import generate_batches

    batch = next(generate_batches(GenerateConfig(events=2, process="ttbar", pileup=0, seed=7),
                                  batch_size=2))
    cells = batch["CaloCell"]
    # noise tuned for the events' pileup (none): electronic noise only
    clusters, labels = run(cells, "cpu", TopoclusterConfig(pileup_mu=0.0))
    m = topocluster_metrics(cells, labels, clusters)
    # most deposited energy is clustered, few clusters hold no deposited energy
    assert 0.7 < m.containment < 1.0
    assert 20 < m.clusters_per_event < 1000
    assert m.n_noise_clusters < 0.2 * m.n_clusters
    # thresholds on the noise of <mu> = 50 are higher: fewer clusters, less energy inside
    clusters, labels = run(cells, "cpu", PU50_NO_OFFSET)
    m50 = topocluster_metrics(cells, labels, clusters)
    assert 0.5 < m50.containment < m.containment
    assert 10 < m50.clusters_per_event < m.clusters_per_event


def test_noise_only_events_make_few_noise_clusters():
    """Events without particles: every cluster is noise.  With two-sided seeds at 4 sigma of
    the electronic noise (pileup_mu = 0) the calorimeter's 88,320 cells hold on average 5.6
    seeds; clusters are at most that.  With the total noise at <mu> = 50 fewer still."""
    from hltemu.geometry import default_geometry
    from hltemu.simulate.calorimeter import simulate_calorimeter

    geom = default_geometry()
    rng = np.random.default_rng(9)
    empty = np.zeros(0)
    events = [simulate_calorimeter(geom, *([empty] * 10), rng) for _ in range(4)]
    cells = cells_from([(e["id"], e["energy"]) for e in events],
                       true=[e["true_energy"] for e in events])
    clusters, labels = run(cells, "cpu", TopoclusterConfig(pileup_mu=0.0))
    m = topocluster_metrics(cells, labels, clusters)
    assert m.n_noise_clusters == m.n_clusters and m.true_energy == 0
    assert 1.0 <= m.clusters_per_event <= 12.0
    clusters, labels = run(cells, "cpu", PU50_NO_OFFSET)
    assert clusters.size <= m.n_clusters


# -- errors, config, pipeline -------------------------------------------------------------------
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_bad_inputs_are_named(backend_name):
    if backend_name == "cuda" and not cuda_usable():
        pytest.skip("cuda not usable")
    g = chain(4)
    with pytest.raises(PipelineError, match=r"CaloCell.id has the value 7 \(event 1\).*0-3"):
        run(cells_from([([0, 1], [1.0, 1.0]), ([2, 7], [1.0, 1.0])]), backend_name, graph=g)
    with pytest.raises(PipelineError, match=r"CaloCell.id has the value -1"):
        run(cells_from([([0, -1], [1.0, 1.0])]), backend_name, graph=g)
    with pytest.raises(PipelineError, match=r"CaloCell.id 2 appears more than once in event 1"):
        run(cells_from([([0, 1], [1.0, 1.0]), ([2, 3, 2], [1.0, 1.0, 1.0])]), backend_name,
            graph=g)
    with pytest.raises(PipelineError, match=r"CaloCell.energy has the value nan GeV \(cell id 1"):
        run(cells_from([([0, 1], [1.0, float("nan")])]), backend_name, graph=g)
    cells = Collection.from_counts([1], {"id": np.zeros(1, np.int32)})
    with pytest.raises(PipelineError, match=r"needs CaloCell column\(s\) \['energy'\]"):
        run(cells, backend_name, graph=g)


def test_energy_em_is_the_ecal_layers_part():
    """Default geometry: ECAL cells are those of layers EM1 and EM2; a cluster's energy_em sums
    its ECAL cells' corrected energies (negative ones too), energy - energy_em its HCAL ones."""
    from hltemu.geometry import default_geometry

    calo = default_geometry().calo
    em2, had1 = calo.layer_index("EM2"), calo.layer_index("HAD1")
    assert [lay.name for lay in calo.layers if lay.section == "ECAL"] == ["EM1", "EM2"]
    # a 3 x 3 EM2 patch and the HAD1 cells behind it (neighbours across the ECAL/HCAL
    # boundary), no pileup: one cluster
    ie, ip = np.meshgrid(np.arange(59, 62), np.arange(9, 12), indexing="ij")
    em_ids = calo.cell_id(em2, ie.ravel(), ip.ravel())
    had_ids = np.unique(calo.find_cells(had1, calo.cell_eta[em_ids], calo.cell_phi[em_ids]))
    e_em = np.full(em_ids.shape[0], 0.5)
    e_em[4] = 20.0
    e_em[0] = -0.4  # a negative cell, above the grow threshold: in the cluster
    e_had = np.full(had_ids.shape[0], 3.0)
    cells = cells_from([(np.concatenate([em_ids, had_ids]), np.concatenate([e_em, e_had]))])
    cfg = TopoclusterConfig(pileup_mu=0.0)
    results = [run(cells, b, cfg) for b in available_backends()]
    for clusters, labels in results:
        assert clusters.size == 1 and (labels[LABEL_COLUMN] == 0).all()
        e32 = lambda x: np.asarray(x, dtype=np.float32).astype(np.float64)  # noqa: E731
        assert clusters["energy_em"][0] == pytest.approx(e32(e_em).sum(), rel=1e-12)
        assert clusters["energy"][0] - clusters["energy_em"][0] == pytest.approx(
            e32(e_had).sum(), rel=1e-12)
    # a graph of another calorimeter needs its own mask
    g = chain(4)
    with pytest.raises(PipelineError, match="ECAL mask has 88320 cells, the cell graph 4"):
        topocluster(cells_from([([0, 1], [5.0, 1.0])]), PU50, get_backend("cpu"), g)
    with pytest.raises(PipelineError, match="1-D boolean array"):
        topocluster(cells_from([([0, 1], [5.0, 1.0])]), PU50, get_backend("cpu"), g,
                    np.zeros((2, 2), dtype=bool))


def test_bad_graphs_are_rejected():
    with pytest.raises(ValueError, match="symmetric"):
        CellGraph.from_arrays([0, 1, 1], [1], [1.0, 1.0])
    with pytest.raises(ValueError, match="own neighbour"):
        CellGraph.from_arrays([0, 1, 1], [0], [1.0, 1.0])
    with pytest.raises(ValueError, match="noise"):
        CellGraph.from_arrays([0, 0, 0], [], [1.0, 0.0])


@pytest.mark.parametrize("kwargs", [{"seed_threshold": 1.0}, {"perimeter_threshold": -1.0},
                                    {"grow_threshold": float("nan")}])
def test_config_errors(kwargs):
    with pytest.raises(ConfigError, match=r"\[topocluster\] thresholds"):
        TopoclusterConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"pileup_mu": -1.0}, {"pileup_mu": float("inf")},
                                    {"pileup_noise": ""}])
def test_pileup_config_errors(kwargs):
    with pytest.raises(ConfigError, match=r"\[topocluster\] pileup_"):
        TopoclusterConfig(**kwargs)


def test_config_toml_round_trip(tmp_path):
    path = tmp_path / "hlt.toml"
    path.write_text("[topocluster]\nseed_threshold = 6\ngrow_threshold = 3.0\n")
    cfg = load_config(path)["topocluster"]
    assert cfg == TopoclusterConfig(6.0, 3.0, 0.0)
    path.write_text("[topocluster]\npileup_mu = 200\npileup_noise = \"my.npz\"\n")
    cfg = load_config(path)["topocluster"]
    assert cfg.pileup_mu == 200.0 and isinstance(cfg.pileup_mu, float)
    assert cfg.pileup_noise == str(tmp_path / "my.npz")  # relative to the config file
    with pytest.raises(ConfigError, match="perimeter_threshold"):
        config_from_dict({"topocluster": {"perimeter_threshold": 5.0}})


def test_calorimeter_graph_is_the_geometry_and_cached():
    from hltemu.geometry import default_geometry

    calo = default_geometry().calo
    g = calorimeter_graph()
    assert g is calorimeter_graph(calo) and g.n_cells == calo.n_cells == 88320
    offsets, index = calo.neighbours()
    np.testing.assert_array_equal(g.nbr_index, index)
    np.testing.assert_array_equal(g.noise, calo.noise_sigma.astype(np.float64))
    be = get_backend("cpu")
    assert g.on(be) is g.on(be)


def test_stage_in_pipeline_feeds_rho_and_writes(tmp_path):
    from pythia_inputs import SAMPLE

    from hltemu.io import OutputWriter, read_collections

    cells = read_collections(str(SAMPLE), ["CaloCell"])["CaloCell"].select_events(0, 2)
    be = get_backend("cpu")
    batch = EventBatch(be, 2, {"CaloCell": cells})
    planned = plan(["topocluster", "rho"], ["CaloCell"], default_config(), [str(SAMPLE)])
    assert planned.inputs == ["CaloCell"]
    assert planned.config["topocluster"].pileup_mu == 50.0  # "auto": the sample's pileup
    run_batch(batch, planned.stages, planned.config)
    assert batch["clusters"].size > 100 and batch[LABEL_COLLECTION].size == cells.size
    rho = be.to_host(batch["rho"]["rho"])
    assert np.all(rho > 0)
    stage = get_stage("topocluster")
    assert stage.adds == ("clusters", LABEL_COLLECTION) and stage.needs == ("CaloCell",)
    path = tmp_path / "out.root"
    with OutputWriter(path) as w:
        w.write(batch, ["clusters", LABEL_COLLECTION])
    back = read_collections(path, ["clusters", LABEL_COLLECTION])
    np.testing.assert_array_equal(back["clusters"]["seed"], batch["clusters"]["seed"])
    np.testing.assert_array_equal(back["clusters"]["energy"], batch["clusters"]["energy"])
    np.testing.assert_array_equal(back[LABEL_COLLECTION][LABEL_COLUMN],
                                  batch[LABEL_COLLECTION][LABEL_COLUMN])
