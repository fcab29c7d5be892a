"""Topoclusters of generated events: figures of merit from truth, and an eta-phi display.

Generates (once, cached under ``~/.cache/hltemu``) ttbar events at several pileups, runs the
``topocluster`` stage and prints per pileup: clusters per event, the fraction of the true
deposited energy inside clusters, clusters per event that hold no true energy, clusters per
event with more than 1000 cells, the largest cluster's cells and energy, and the same for
events without particles (noise only).  The noise and the mean pileup energy subtracted are
those of each sample's own pileup, as ``pileup_mu = "auto"`` takes them in a run;
``--pileup-mu`` fixes them, ``--no-subtract`` keeps the mean pileup energy in the cells::

    python examples/plot_topoclusters.py --events 50 --pileups 0 50 200 --plot topo.png
    python examples/plot_topoclusters.py --pileup-mu 50 --no-subtract   # thresholds only

``--plot`` (needs ``pip install 'hltemu[plots]'``) draws the first event of the first
pileup: EM1 cells coloured by cluster.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hltemu.backends import get_backend
from hltemu.batch import Collection
from hltemu.config import GenerateConfig
from hltemu.extras import require_or_exit
from hltemu.io import read_collections
from hltemu.metrics import topocluster_metrics
from hltemu.stages.topocluster import TopoclusterConfig, topocluster

CACHE = Path.home() / ".cache" / "hltemu"


def cached_cells(pileup: float, events: int, seed: int) -> Collection:
    """CaloCell of ``events`` ttbar events at ``pileup``, generated once into the cache."""
    from hltemu.simulate.generate import generate_file

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"topocluster_ttbar_pu{pileup:g}_n{events}_seed{seed}.root"
    if not path.is_file():
        tmp = path.with_suffix(".tmp.root")
        generate_file(tmp, GenerateConfig(events=events, process="ttbar", pileup=pileup,
                                          seed=seed))
        tmp.rename(path)
    return read_collections(path, ["CaloCell"])["CaloCell"]


def noise_only_cells(events: int, seed: int) -> Collection:
    """Events without particles: electronic noise only, digitised as ``hltemu generate`` does."""
    from hltemu.geometry import default_geometry
    from hltemu.simulate.calorimeter import simulate_calorimeter

    geom = default_geometry()
    rng = np.random.default_rng(seed)
    empty = np.zeros(0)
    evs = [simulate_calorimeter(geom, *([empty] * 10), rng) for _ in range(events)]
    cols = {k: np.concatenate([e[k] for e in evs]) for k in evs[0]}
    return Collection.from_counts([e["id"].shape[0] for e in evs], cols)


def figures(cells: Collection, backend: str, cfg: TopoclusterConfig) -> tuple[dict, dict]:
    be = get_backend(backend)
    out = topocluster(cells.to(be), cfg, be)
    clusters, labels = out["clusters"].to_host(), out["cell_cluster"].to_host()
    m = topocluster_metrics(cells, labels, clusters)
    row = {
        "events": m.n_events,
        "clusters/event": m.clusters_per_event,
        "E>0 clusters/event": m.n_positive_clusters / m.n_events,
        "containment": m.containment,
        "no-truth clusters/event": m.noise_clusters_per_event,
        ">1000-cell clusters/event": float((clusters["n_cells"] > 1000).sum()) / m.n_events,
        "largest cluster cells (mean)": float(np.mean([
            clusters.event(i)["n_cells"].max(initial=0) for i in range(m.n_events)])),
        "largest cluster GeV (mean)": float(np.mean([
            _largest_energy(clusters.event(i)) for i in range(m.n_events)])),
    }
    return row, {"clusters": clusters, "labels": labels}


def _largest_energy(cl: dict) -> float:
    """Energy (GeV) of the cluster with the most cells (0 for none)."""
    return float(cl["energy"][np.argmax(cl["n_cells"])]) if cl["n_cells"].size else 0.0


def plot_event(cells: Collection, clusters: Collection, labels: Collection, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hltemu.geometry import default_geometry

    calo = default_geometry().calo
    ev = cells.event(0)
    lab = labels.event(0)["cluster"]
    em1 = calo.cell_layer[ev["id"]] == 0
    eta, phi = calo.cell_eta[ev["id"]][em1], calo.cell_phi[ev["id"]][em1]
    k = lab[em1]
    rng = np.random.default_rng(1)
    colours = rng.permutation(max(int(clusters.counts[0]), 1))
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.scatter(eta[k < 0], phi[k < 0], s=0.2, c="0.9", marker="s")
    ax.scatter(eta[k >= 0], phi[k >= 0], s=0.5, c=colours[k[k >= 0]], cmap="tab20",
               marker="s")
    cl = clusters.event(0)
    big = cl["energy"] > 10.0
    ax.scatter(cl["eta"][big], cl["phi"][big], s=12, facecolors="none", edgecolors="k")
    ax.set(xlabel="eta", ylabel="phi [rad]", title="EM1 cells by topocluster (circles: E > 10 GeV)")
    fig.savefig(path, dpi=150, bbox_inches="tight")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50, help="events per pileup")
    ap.add_argument("--pileups", type=float, nargs="+", default=[0.0, 50.0, 200.0])
    ap.add_argument("--max-events-pu200", type=int, default=20,
                    help="cap on events at pileup >= 200 (0.6-0.8 s per event to generate)")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--pileup-mu", type=float, default=None,
                    help="[topocluster] pileup_mu for every sample (default: each sample's own "
                         "pileup, as 'auto'; the noise-only row uses 0)")
    ap.add_argument("--no-subtract", action="store_true",
                    help="[topocluster] subtract_pileup_mean = false")
    ap.add_argument("--plot", default=None, help="PNG path for an event display")
    args = ap.parse_args()
    if args.plot:  # before generating anything
        require_or_exit("plots", "examples/plot_topoclusters.py --plot", modules=("matplotlib",))
    def config(pileup: float) -> TopoclusterConfig:
        mu = pileup if args.pileup_mu is None else args.pileup_mu
        return TopoclusterConfig(pileup_mu=mu, subtract_pileup_mean=not args.no_subtract)

    rows = {}
    first = None
    for pu in args.pileups:
        n = min(args.events, args.max_events_pu200) if pu >= 200 else args.events
        cells = cached_cells(pu, n, args.seed)
        rows[f"ttbar PU{pu:g}"], res = figures(cells, args.backend, config(pu))
        if first is None:
            first = (cells, res)
    rows["noise only"], _ = figures(noise_only_cells(args.events, args.seed), args.backend,
                                    config(0.0))
    keys = list(next(iter(rows.values())))
    print(f"{'sample':16s}" + "".join(f"{k:>29s}" for k in keys))
    for name, row in rows.items():
        print(f"{name:16s}" + "".join(f"{row[k]:29.4g}" for k in keys))
    if args.plot and first is not None:
        plot_event(first[0], first[1]["clusters"], first[1]["labels"], args.plot)


if __name__ == "__main__":
    main()
