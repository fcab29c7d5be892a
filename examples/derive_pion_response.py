"""Derive the single charged-pion response table E/p (hltemu/models/pion_response.npz).

Single pi+ / pi- (:mod:`hltemu.simulate.particle_gun`) from the nominal interaction point through
the toy calorimeter, electronic noise and no pileup; stage ``topocluster`` (``pileup_mu = 0``)
clusters every event; ``E`` = the sum of the clusters of positive energy within ``Delta R <
--dr`` of the pion's impact point on the ECAL front.  The pions are shot in one block per |eta|
bin of the table (|eta| at the vertex uniform in the bin, either sign; p log-uniform from
--p-min to --p-max), the same number in each, and binned by the *impact point's* |eta| (where a
track extrapolation lands).  The table format and evaluation: :mod:`hltemu.pion_response`.

Beside the table, ``<output stem>.json`` records the seed, pions, bins, command and run time,
and for comparison the same statistics with E = the nearest cluster of positive energy (any
distance) and the shift between the impact point's |eta| and the vertex direction's.

The shipped table (about 5 minutes on 2 cores)::

    python examples/derive_pion_response.py --events 36000 --seed 3001 \\
        -o hltemu/models/pion_response.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from hltemu import __version__, ui
from hltemu.pion_response import bin_statistics, log_edges, save_table, summary
from hltemu.simulate.particle_gun import GunConfig, shoot_and_cluster

#: |eta| bins of the table: barrel, endcap inside the tracker, endcap beyond it to the
#: calorimeter's end (geometry: every calorimeter layer covers |eta| < 3.0).
ABS_ETA_EDGES = (0.0, 1.3, 2.5, 3.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=36000,
                        help="pions in all (split equally over the |eta| bins)")
    parser.add_argument("--seed", type=int, default=3001)
    parser.add_argument("-o", "--output", default="hltemu/models/pion_response.npz",
                        help="output .npz (the JSON record is written beside it)")
    parser.add_argument("--p-min", type=float, default=1.0, help="GeV")
    parser.add_argument("--p-max", type=float, default=500.0, help="GeV")
    parser.add_argument("--p-bins", type=int, default=12, help="log bins from p-min to p-max")
    parser.add_argument("--dr", type=float, default=0.2, help="cone around the impact point")
    parser.add_argument("--backend", default="cpu", choices=("reference", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.output)
    if out.suffix != ".npz":
        parser.error(f"-o must end in .npz, got {out}")
    command = "python examples/derive_pion_response.py " + " ".join(
        sys.argv[1:] if argv is None else argv)

    p_edges = log_edges(args.p_min, args.p_max, args.p_bins)
    n_blocks = len(ABS_ETA_EDGES) - 1
    per_block = args.events // n_blocks
    t0 = time.perf_counter()
    bar = None if args.no_progress else ui.ProgressBar(per_block * n_blocks, "pions")
    parts = []
    try:
        for k in range(n_blocks):
            cfg = GunConfig(pdg_ids=(211, -211), p_min=args.p_min, p_max=args.p_max,
                            eta_min=ABS_ETA_EDGES[k], eta_max=ABS_ETA_EDGES[k + 1],
                            mirror=True, seed=args.seed)
            parts.append(shoot_and_cluster(
                cfg, per_block, start=k * per_block, backend=args.backend,
                batch_size=args.batch_size, dr=args.dr,
                on_batch=None if bar is None else bar.update))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    pions = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}

    reached = pions["reached"] & np.isfinite(pions["impact_eta"])
    abs_eta = np.abs(pions["impact_eta"])
    inside = reached & (abs_eta < ABS_ETA_EDGES[-1])
    sel = {c: v[inside] for c, v in pions.items()}
    provenance = {
        "what": "single charged-pion response E/p of the toy calorimeter",
        "particles": "pi+ and pi- (pdgId +-211), equal odds, from (0, 0, 0)",
        "energy": f"sum of the topoclusters with energy > 0 within Delta R < {args.dr:g} of "
                  "the impact point on the ECAL front; 0 for none",
        "eta": "|eta| of the impact point on the ECAL front (not the vertex direction)",
        "momentum": f"log-uniform {args.p_min:g}-{args.p_max:g} GeV",
        "topocluster": "stage defaults, pileup_mu = 0 (electronic noise only)",
        "backend": args.backend, "seed": args.seed, "events": per_block * n_blocks,
        "events_per_eta_block": per_block, "eta_blocks": list(ABS_ETA_EDGES),
        "pions_in_table": int(inside.sum()), "not_reaching": int((~reached).sum()),
        "beyond_calorimeter": int((reached & ~inside).sum()),
        "p_edges": [round(float(x), 6) for x in p_edges], "abs_eta_edges": list(ABS_ETA_EDGES),
        "dr": args.dr, "command": command, "seconds": round(seconds, 1),
        "seconds_per_pion": round(seconds / max(per_block * n_blocks, 1), 5),
        "hltemu": __version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    table = bin_statistics(sel["p"], np.abs(sel["impact_eta"]), sel["cone"], p_edges,
                           ABS_ETA_EDGES, provenance)
    nearest = bin_statistics(sel["p"], np.abs(sel["impact_eta"]), sel["nearest"], p_edges,
                             ABS_ETA_EDGES)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_table(out, table)

    # The shift of the impact point's |eta| from the vertex direction's, per p bin.
    ip = np.clip(np.searchsorted(p_edges, sel["p"], side="right") - 1, 0, args.p_bins - 1)
    shift = np.abs(sel["impact_eta"]) - np.abs(sel["eta"])
    record = {
        **provenance,
        "table": out.name,
        "cone": _compact(table),
        "nearest_cluster": {"energy": "the cluster with energy > 0 nearest the impact point "
                                      "(any distance); 0 for none", **_compact(nearest)},
        "impact_minus_vertex_abs_eta_median": [
            round(float(np.median(shift[ip == a])), 4) for a in range(args.p_bins)],
    }
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out} and {json_path.name}: {per_block * n_blocks} pions, seed {args.seed}, "
          f"{seconds:.0f} s ({provenance['seconds_per_pion'] * 1e3:.1f} ms per pion)")
    print(summary(table))
    print("\nnearest cluster instead of the cone:")
    print(summary(nearest))
    return 0


def _compact(table) -> dict:
    """Mean, sigma and zero fraction per bin, rounded: rows p bins, columns |eta| bins."""
    return {name: np.round(getattr(table, name), 4).tolist()
            for name in ("mean", "sigma", "zero_fraction")} | {"n": table.n.tolist()}


if __name__ == "__main__":
    raise SystemExit(main())
