"""The doublet CNN measured downstream: doublets, their truth efficiency per pT bin and layer
pair, fake rejection, and ``pixeltracks`` (time, tracks, efficiency, fake and duplicate
rates) with all doublets, the CNN's single working point and its observable-only table.

Two commands::

    # the table (printed as TOML for [doublet_cnn]), chosen on a training file
    python examples/doublet_cnn_downstream.py choose /work/samples/tt/t5050_pu50.root \\
        --events 200
    # the measurement on held-out events
    python examples/doublet_cnn_downstream.py measure /work/samples/tt/t6060_pu50.root \\
        --events 100 [--config hlt.toml] [--backend cpu] [-o result.json]

Files are ``hltemu generate`` output (``PixelHit`` with ``sim_index``, ``GenPart``), e.g.
``hltemu generate -n 200 -s 5050 --pileup 50 --process ttbar -o t5050_pu50.root``.

Definitions (units GeV, cm)
---------------------------
* A doublet is *true* when both hits come from one particle (``doublets.sim_index >= 0``),
  a *fake* otherwise.  Its particle is *signal* when it is charged, status 1, ``pT > 0.9``,
  ``|eta| < 2.5`` and prompt: produced within 0.2 cm transversely and 1 cm in z of its own
  interaction's vertex (the selection of :class:`hltemu.pixelmetrics.PixelTruthConfig`, with
  the vertex of :func:`hltemu.pixelmetrics.interaction_vertices`; no condition on the
  number of layers, which a doublet does not need).
* *Doublet efficiency* = signal doublets kept / signal doublets, per true-pT bin (0.9-2,
  2-5, > 5 GeV), per layer pair, and per both; *fake rejection* = fakes removed / fakes.
* Tracks: :func:`hltemu.pixelmetrics.tracking_metrics` (efficiency of prompt particles above
  0.9 GeV with hits on >= 3 layers; fake and duplicate rates of tracks above 0.9 GeV within
  |eta| < 2.5).  ``pixeltracks`` reads the collection ``doublets``; to run it on the
  CNN-kept doublets this script puts them in its place in a batch of its own and calls the
  stage (its config from ``--config``); its time is the stage's wall time per event (after a
  warm-up that compiles the kernels), the device synchronised.

The choice (``choose``)
-----------------------
Every doublet of a pair of ``[doublet_cnn] table_pairs`` falls in a cell (layer pair,
|curvature| bin of ``curvature_edges``).  Starting from threshold 0 everywhere (every doublet
kept), the threshold of one cell at a time is raised along a grid of scores (81 values,
0 and 0.003-0.9 geometrically, 4 decimals), always taking the step that removes the most fakes
per signal doublet lost, as long as the signal kept stays >= ``--target`` (99.45%) per layer
pair and per pT bin and >= ``--target-cell`` (99%) per layer pair and pT bin together.  A cell
whose threshold is above 0 is charged ``--prior`` (1) signal doublet more than it loses (shared
over the pT bins as its signal is): a guard against fitting the gaps between the few
high-pT doublets of a cell.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

PT_BINS: tuple[tuple[float, float], ...] = ((0.9, 2.0), (2.0, 5.0), (5.0, math.inf))
#: Score grid of the choice: 0, then 80 values from 0.003 to 0.9 (geometric, 4 decimals).
GRID = np.unique(np.r_[0.0, np.round(np.geomspace(0.003, 0.9, 80), 4)]).astype(np.float32)


# -- truth ---------------------------------------------------------------------------------------
def signal_particles(gen: Any, pt_min: float = 0.9, eta_max: float = 2.5, max_dxy: float = 0.2,
                     max_dz: float = 1.0) -> np.ndarray:
    """Per GenPart row (host collection): charged, status 1, ``pt > pt_min`` [GeV], ``|eta| <
    eta_max``, produced within ``max_dxy`` [cm] transversely and ``max_dz`` [cm] in z of its
    interaction's vertex."""
    from hltemu.pixelmetrics import interaction_vertices

    iv = interaction_vertices(gen)
    event, k = gen.event_index(), np.asarray(gen["vertex"], dtype=np.int64)
    key = event * (1 << 20) + k
    iv_key = iv["event"] * (1 << 20) + iv["interaction"]
    pos = np.minimum(np.searchsorted(iv_key, key), max(iv_key.size - 1, 0))
    found = iv_key[pos] == key if iv_key.size else np.zeros(key.size, dtype=bool)
    vx, vy, vz = (np.asarray(gen[c], dtype=np.float64) for c in ("vx", "vy", "vz"))
    with np.errstate(invalid="ignore"):
        prompt = found & (np.hypot(vx - iv["x"][pos], vy - iv["y"][pos]) < max_dxy) \
            & (np.abs(vz - iv["z"][pos]) < max_dz) if iv_key.size else found
    pt, eta = np.asarray(gen["pt"], np.float64), np.asarray(gen["eta"], np.float64)
    charged = (np.asarray(gen["status"]) == 1) & (np.asarray(gen["charge"]) != 0)
    return charged & (pt > pt_min) & (np.abs(eta) < eta_max) & prompt


def doublet_truth(doublets: Any, gen: Any) -> dict[str, np.ndarray]:
    """Per doublet (host collections): ``true``, ``signal`` (its particle passes
    :func:`signal_particles`), ``pt_bin`` (index into :data:`PT_BINS` of its particle's pT
    for signal doublets, -1 otherwise)."""
    sim = np.asarray(doublets["sim_index"], dtype=np.int64)
    true = sim >= 0
    row = np.where(true, gen.offsets[doublets.event_index()] + np.maximum(sim, 0), 0)
    signal = true & signal_particles(gen)[row]
    pt = np.asarray(gen["pt"], dtype=np.float64)[row]
    pt_bin = np.full(sim.size, -1, dtype=np.int64)
    for i, (lo, hi) in enumerate(PT_BINS):
        pt_bin[signal & (pt >= lo) & (pt < hi)] = i
    return {"true": true, "signal": signal, "pt_bin": pt_bin}


# -- the doublets of every batch, scored ---------------------------------------------------------
def scored_batches(files: Sequence[str], events: int | None, backend: str, config: Any,
                   batch_size: int) -> Iterator[tuple[Any, Any, Any]]:
    """``(batch, doublets, scores)`` per batch: the doublets stage and the CNN scores of every
    doublet (``config``'s ``[doublets]`` and ``[doublet_cnn] weights``), on ``backend``."""
    from hltemu import io
    from hltemu.pipeline import get_stage
    from hltemu.stages.doublet_cnn import ENGINES, prepare, score_with

    prep = prepare(config["doublet_cnn"], _backend(backend))
    for batch in io.iterate_batches(files, {"PixelHit": None, "GenPart": None},
                                    batch_size=batch_size, max_events=events, backend=backend):
        doublets = get_stage("doublets")(batch, config["doublets"])["doublets"]
        scores = score_with(batch["PixelHit"], doublets, prep, batch.backend,
                            ENGINES[batch.backend.name], config["doublet_cnn"].chunk_size)
        yield batch, doublets, scores


def _backend(name: str) -> Any:
    from hltemu.backends import get_backend

    return get_backend(name)


def pair_index(doublets: Any, table_pairs: Sequence[Sequence[int]]) -> np.ndarray:
    """Row of ``table_pairs`` of each doublet (host), -1 for a pair it does not list."""
    lut = np.full((16, 16), -1, dtype=np.int64)
    for i, (a, b) in enumerate(table_pairs):
        lut[a, b] = i
    return lut[np.asarray(doublets["inner_layer"], np.int64),
               np.asarray(doublets["outer_layer"], np.int64)]


# -- choose ----------------------------------------------------------------------------------
def choose_table(score: np.ndarray, cell: np.ndarray, n_cells: int, pair_of_cell: np.ndarray,
                 n_pairs: int, pt_bin: np.ndarray, pair: np.ndarray, fake: np.ndarray,
                 target: float, target_cell: float, prior: float) -> np.ndarray:
    """Thresholds per cell (float32, from :data:`GRID`) by the greedy choice of the module
    docstring.  ``cell`` (per doublet, -1: not in the table), ``pt_bin`` (-1: not signal),
    ``pair`` (row of the pair), ``fake`` per doublet; ``pair_of_cell`` per cell."""
    n_grid, nb = GRID.size, len(PT_BINS)
    step = np.searchsorted(GRID, score, side="right") - 1  # removed at GRID[j] iff step < j
    inside = cell >= 0
    fakes = np.zeros((n_cells, n_grid))
    np.add.at(fakes, (cell[inside & fake], step[inside & fake]), 1)
    fakes_removed = np.concatenate([np.zeros((n_cells, 1)), np.cumsum(fakes, 1)[:, :-1]], 1)
    sig = inside & (pt_bin >= 0)
    lost = np.zeros((n_cells, n_grid, nb))
    np.add.at(lost, (cell[sig], step[sig], pt_bin[sig]), 1)
    per_bin = lost.sum(axis=1)
    lost = np.concatenate([np.zeros((n_cells, 1, nb)), np.cumsum(lost, 1)[:, :-1]], 1)
    share = per_bin / np.maximum(per_bin.sum(axis=1, keepdims=True), 1)
    lost[:, 1:, :] += prior * share[:, None, :]
    n_pb = np.zeros((n_pairs, nb))
    np.add.at(n_pb, (pair[sig], pt_bin[sig]), 1)
    budget_cell = (1 - target_cell) * n_pb
    budget_pair = (1 - target) * n_pb.sum(axis=1)
    budget_bin = (1 - target) * n_pb.sum(axis=0)
    used = np.zeros((n_pairs, nb))
    at = np.zeros(n_cells, dtype=np.int64)

    def best_step(c: int) -> tuple[float, int] | None:
        p, best = pair_of_cell[c], None
        for j in range(at[c] + 1, n_grid):
            d_lost = lost[c, j] - lost[c, at[c]]
            u = used[p] + d_lost
            if (np.any(u > budget_cell[p]) or u.sum() > budget_pair[p]
                    or np.any(used.sum(axis=0) + d_lost > budget_bin)):
                break
            d_fakes = fakes_removed[c, j] - fakes_removed[c, at[c]]
            ratio = d_fakes / (d_lost.sum() + 1e-3)
            if d_fakes > 0 and (best is None or ratio > best[0]):
                best = (ratio, j)
        return best

    heap = [(-b[0], c, b[1]) for c in range(n_cells) if (b := best_step(c))]
    heapq.heapify(heap)
    while heap:
        ratio, c, j = heapq.heappop(heap)
        b = best_step(c)
        if b is None:
            continue
        if b[1] != j or b[0] != -ratio:  # stale: the budgets moved since it was pushed
            heapq.heappush(heap, (-b[0], c, b[1]))
            continue
        used[pair_of_cell[c]] += lost[c, j] - lost[c, at[c]]
        at[c] = j
        if (b := best_step(c)):
            heapq.heappush(heap, (-b[0], c, b[1]))
    return GRID[at]


def cmd_choose(args: argparse.Namespace) -> int:
    config = _config(args.config)
    cnn = config["doublet_cnn"]
    edges = np.asarray(cnn.curvature_edges, dtype=np.float64)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("score", "pair", "bin", "pt_bin",
                                                          "fake")}
    n_events = 0
    for batch, doublets, scores in scored_batches(args.files, args.events, args.backend,
                                                  config, args.batch_size):
        d = doublets.to_host()
        truth = doublet_truth(d, batch["GenPart"].to_host())
        parts["score"].append(np.asarray(batch.backend.to_host(scores)))
        parts["pair"].append(pair_index(d, cnn.table_pairs))
        parts["bin"].append(np.searchsorted(edges, np.abs(np.asarray(d["curvature"],
                                                                     np.float64)), "right"))
        parts["pt_bin"].append(truth["pt_bin"])
        parts["fake"].append(~truth["true"])
        n_events += batch.n_events
    a = {k: np.concatenate(v) for k, v in parts.items()}
    n_bins, n_pairs = edges.size + 1, len(cnn.table_pairs)
    cell = np.where(a["pair"] >= 0, a["pair"] * n_bins + a["bin"], -1)
    thresholds = choose_table(a["score"], cell, n_pairs * n_bins,
                              np.arange(n_pairs * n_bins) // n_bins, n_pairs, a["pt_bin"],
                              a["pair"], a["fake"], args.target, args.target_cell, args.prior)
    table = thresholds.reshape(n_pairs, n_bins)
    print(f"# chosen on {', '.join(args.files)}: {n_events} events, {a['score'].size} doublets; "
          f"target {args.target}, per cell {args.target_cell}, prior {args.prior}")
    print("[doublet_cnn]\nthreshold_mode = \"table\"")
    print(f"curvature_edges = {list(map(float, edges))}")
    print(f"table_pairs = {[list(p) for p in cnn.table_pairs]}")
    print("thresholds = [")
    for p, row in zip(cnn.table_pairs, table, strict=True):
        print(f"    [{', '.join(f'{float(v):.4f}' for v in row)}],  # {tuple(p)}")
    print("]")
    return 0


# -- measure ---------------------------------------------------------------------------------
def _config(path: str | None) -> Any:
    from hltemu.pipeline import load_config

    return load_config(path)


def cmd_measure(args: argparse.Namespace) -> int:
    from hltemu.batch import Collection, EventBatch
    from hltemu.pipeline import get_stage
    from hltemu.pixelmetrics import tracking_metrics
    from hltemu.stages.doublet_cnn import (
        doublet_thresholds,
        prepare,
        select_doublets,
        working_point,
    )

    config = _config(args.config)
    cnn = config["doublet_cnn"]
    be = _backend(args.backend)
    single = replace(cnn, threshold_mode="single")
    table = replace(cnn, threshold_mode="table")
    prep_table = prepare(table, be)
    wp = working_point(single, prep_table.model)
    variants = ("all doublets", f"CNN single {wp:.4f}", "CNN table")
    tracks_stage, tracks_cfg = get_stage("pixeltracks"), config["pixeltracks"]
    acc: dict[str, dict[str, Any]] = {v: {"seconds": 0.0, "doublets": 0, "batches": []}
                                      for v in variants}
    eff = {v: {"kept": [], "pair": [], "pt_bin": [], "fake": []} for v in variants[1:]}
    n_events, warm = 0, False
    for batch, doublets, scores in scored_batches(args.files, args.events, args.backend,
                                                  config, args.batch_size):
        xp = be.xp
        kept = {variants[0]: doublets,
                variants[1]: select_doublets(doublets, scores, wp, xp),
                variants[2]: select_doublets(doublets, scores,
                                             doublet_thresholds(doublets, prep_table, xp), xp)}
        d = doublets.to_host()
        truth = doublet_truth(d, batch["GenPart"].to_host())
        host_scores = np.asarray(be.to_host(scores))
        thr = {variants[1]: np.float32(wp),
               variants[2]: np.asarray(be.to_host(doublet_thresholds(doublets, prep_table, xp)))}
        for v in variants[1:]:
            eff[v]["kept"].append(host_scores >= thr[v])
            eff[v]["pair"].append(pair_index(d, cnn.table_pairs))
            eff[v]["pt_bin"].append(truth["pt_bin"])
            eff[v]["fake"].append(~truth["true"])
        hits = batch["PixelHit"]
        if not warm:  # compile the kernels outside the measurement
            first = EventBatch(be, 1, {"PixelHit": hits.select_events(0, 1),
                                       "doublets": doublets.select_events(0, 1)})
            tracks_stage(first, tracks_cfg)
            warm = True
        for v, dbl in kept.items():
            run = EventBatch(be, batch.n_events, {"PixelHit": hits, "doublets": dbl},
                             batch.source, batch.first_entry)
            be.synchronize()
            start = time.perf_counter()
            tracks = tracks_stage(run, tracks_cfg)["pixeltracks"]
            be.synchronize()
            acc[v]["seconds"] += time.perf_counter() - start
            acc[v]["doublets"] += int(dbl.size)
            small = {"PixelHit": Collection(hits.offsets, {k: hits[k] for k in ("layer",
                                                                               "sim_index")}),
                     "GenPart": batch["GenPart"], "pixeltracks": tracks}
            acc[v]["batches"].append(EventBatch(be, batch.n_events, small).to("reference"))
        n_events += batch.n_events
        print(f"  {n_events} events", file=sys.stderr, flush=True)
    result = summarise(acc, eff, n_events, cnn.table_pairs, tracking_metrics)
    result["run"] = {"files": list(args.files), "events": n_events, "backend": args.backend,
                     "config": args.config, "single_working_point": wp}
    print_result(result)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1, allow_nan=False, default=float)
            f.write("\n")
        print(f"wrote {args.output}")
    return 0


def summarise(acc: dict[str, dict[str, Any]], eff: dict[str, dict[str, list[np.ndarray]]],
              n_events: int, table_pairs: Sequence[Sequence[int]], tracking_metrics: Any
              ) -> dict[str, Any]:
    """The figures of each variant (JSON-ready: NaN becomes None)."""
    out: dict[str, Any] = {"variants": {}}
    for v, a in acc.items():
        m = tracking_metrics(a["batches"])
        row: dict[str, Any] = {
            "doublets_per_event": a["doublets"] / n_events,
            "pixeltracks_ms_per_event": 1e3 * a["seconds"] / n_events,
            "tracks_per_event": m["tracks_per_event"],
            "track_efficiency": m["efficiency"]["all"]["value"],
            "track_efficiency_pt_bins": [b["value"] for b in m["efficiency"]["all"]["pt_bins"]],
            "fake_rate": m["fake_rate"]["value"],
            "duplicate_rate": m["duplicate_rate"]["value"],
        }
        if v in eff:
            e = {k: np.concatenate(x) for k, x in eff[v].items()}
            sig = e["pt_bin"] >= 0
            row["fake_rejection"] = float(1.0 - e["kept"][e["fake"]].mean())
            row["doublet_efficiency"] = float(e["kept"][sig].mean())
            row["doublet_efficiency_pt_bins"] = [float(e["kept"][e["pt_bin"] == i].mean())
                                                 for i in range(len(PT_BINS))]
            pairs = {}
            for i, p in enumerate(table_pairs):
                m_p = sig & (e["pair"] == i)
                pairs[f"{p[0]}-{p[1]}"] = {
                    "all": _frac(e["kept"][m_p]),
                    "pt_bins": [_frac(e["kept"][m_p & (e["pt_bin"] == b)])
                                for b in range(len(PT_BINS))],
                    "n_pt_bins": [int((m_p & (e["pt_bin"] == b)).sum())
                                  for b in range(len(PT_BINS))]}
            row["doublet_efficiency_pairs"] = pairs
        out["variants"][v] = row
    return _clean(out)


def _frac(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else float("nan")


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _bin(lo: float, hi: float) -> str:
    return f"> {lo:g} GeV" if math.isinf(hi) else f"{lo:g}-{hi:g} GeV"


def print_result(result: dict[str, Any]) -> None:
    run, variants = result["run"], result["variants"]
    print(f"doublet CNN downstream: {', '.join(run['files'])}, {run['events']} events, "
          f"backend {run['backend']}")
    names = list(variants)
    rows = [("doublets / event", lambda r: f"{r['doublets_per_event']:.0f}"),
            ("signal doublets kept", lambda r: _pct(r.get("doublet_efficiency"))),
            *[(f"  true pT {_bin(lo, hi)}", lambda r, i=i: _pct(
                (r.get("doublet_efficiency_pt_bins") or [None] * 3)[i]))
              for i, (lo, hi) in enumerate(PT_BINS)],
            ("fakes removed", lambda r: _pct(r.get("fake_rejection"))),
            ("pixeltracks ms / event", lambda r: f"{r['pixeltracks_ms_per_event']:.1f}"),
            ("tracks / event", lambda r: f"{r['tracks_per_event']:.1f}"),
            ("track efficiency", lambda r: _pct(r["track_efficiency"])),
            *[(f"  true pT {_bin(lo, hi)}", lambda r, i=i: _pct(
                r["track_efficiency_pt_bins"][i])) for i, (lo, hi) in enumerate(PT_BINS)],
            ("track fake rate", lambda r: _pct(r["fake_rate"])),
            ("track duplicate rate", lambda r: _pct(r["duplicate_rate"]))]
    width = max(len(n) for n in names) + 2
    print(f"{'':26s}" + "".join(f"{n:>{width}s}" for n in names))
    for label, f in rows:
        print(f"{label:26s}" + "".join(f"{f(variants[n]):>{width}s}" for n in names))
    for n in names[1:]:
        print(f"\nsignal doublets kept per layer pair ({n}): all, 0.9-2, 2-5, > 5 GeV (n)")
        for pair, e in variants[n]["doublet_efficiency_pairs"].items():
            bins = "  ".join(f"{_pct(x, 1):>7s} ({k})" for x, k in zip(e["pt_bins"],
                                                                         e["n_pt_bins"],
                                                                         strict=True))
            print(f"  {pair:>5s}  {_pct(e['all']):>7s}   {bins}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("choose", "measure"):
        p = sub.add_parser(name)
        p.add_argument("files", nargs="+", help="hltemu generate output (with GenPart truth)")
        p.add_argument("--events", "-n", type=int, default=None, help="events in all")
        p.add_argument("--batch-size", type=int, default=10, help="events per batch")
        p.add_argument("--backend", default="cpu", help="reference, cpu or cuda (default cpu)")
        p.add_argument("--config", default=None, help="hltemu config TOML ([doublets], "
                       "[doublet_cnn], [pixeltracks]; default: the defaults)")
    choose = sub.choices["choose"]
    choose.add_argument("--target", type=float, default=0.9945,
                        help="signal kept per layer pair and per pT bin, at least")
    choose.add_argument("--target-cell", type=float, default=0.99,
                        help="signal kept per layer pair and pT bin together, at least")
    choose.add_argument("--prior", type=float, default=1.0,
                        help="signal doublets charged to a cell with a threshold above 0")
    sub.choices["measure"].add_argument("--output", "-o", default=None, help="JSON to write")
    args = ap.parse_args(argv)
    if args.events is not None and args.events < 1:
        ap.error("--events must be >= 1")
    return cmd_choose(args) if args.command == "choose" else cmd_measure(args)


if __name__ == "__main__":
    sys.exit(main())
