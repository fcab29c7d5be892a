"""Pixel tracks and pixel vertices against truth: efficiency, fakes, duplicates, resolutions,
pulls of the fit's covariance, vertex efficiency and primary-vertex purity (issue 19, "Truth
metrics").

Runs stages ``doublets,pixeltracks,pixelvertices`` (default configs, or ``--config``) through
hltemu's own API (:func:`hltemu.pipeline.plan`, :func:`hltemu.io.iterate_batches`,
:func:`hltemu.pipeline.run_batch`) on generated files (which carry ``GenPart``,
``PixelHit.sim_index`` and ``Event``), computes :func:`hltemu.pixelmetrics.pixel_metrics`
(definitions and units in :mod:`hltemu.pixelmetrics`), prints a table and writes the JSON::

    python examples/pixel_tracking_performance.py /work/samples/tt/t5000_pu0.root \\
        --events 50 --backend cpu -o pixelperf_pu0.json
    python examples/pixel_tracking_performance.py /work/samples/tt/t5050_pu50.root \\
        --events 50 --backend cpu -o pixelperf_pu50.json
    python examples/pixel_tracking_performance.py /work/samples/tt/t7200_pu200.root \\
        --events 24 --batch-size 8 --backend cpu -o pixelperf_pu200.json
    # the built-in sample (10 ttbar events at pileup 50)
    python examples/pixel_tracking_performance.py hltemu/data/sample.root -o sample.json

Inputs made with e.g. ``hltemu generate --process ttbar --pileup 50 --events 200 --seed 5050
--output t5050_pu50.root`` (pileup 200: ``--pileup 200 --events 24 --seed 7200``, ~1 s per
event).  Pulls ``(fit - true) / sigma`` of q/pT, phi, d0, cot theta and z0 are shown as the
width of their Gaussian core (should be ~1) per track type.  Several files are read in
order (``--events`` counts over all).  The JSON holds the figures (``tracking``,
``vertices``), the selection, the definitions, and ``run`` (files, events, backend, chain,
seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", help="hltemu input ROOT files (with GenPart truth)")
    ap.add_argument("--events", "-n", type=int, default=None, help="events in all (default: "
                    "every event)")
    ap.add_argument("--batch-size", type=int, default=50, help="events per batch")
    ap.add_argument("--backend", default="cpu", help="reference, cpu or cuda (default cpu)")
    ap.add_argument("--config", default=None, help="hltemu config TOML (default: defaults)")
    ap.add_argument("--output", "-o", default=None, help="JSON file to write")
    ap.add_argument("--plain", action="store_true", help="plain text instead of a rich table")
    args = ap.parse_args(argv)

    from hltemu import io
    from hltemu.batch import Collection, EventBatch
    from hltemu.outputs import atomic_output
    from hltemu.pipeline import load_config, plan, run_batch
    from hltemu.pixelmetrics import pixel_metrics, print_metrics

    if args.events is not None and args.events < 1:
        ap.error("--events must be >= 1")
    stages = ["doublets", "pixeltracks", "pixelvertices"]
    present = io.common_collections(args.files)
    missing = [c for c in ("GenPart", "PixelHit") if c not in present]
    if missing:
        ap.error(f"the files lack {missing}: truth metrics need hltemu generate's truth")
    planned = plan(stages, present, load_config(args.config), args.files)
    truth = ["GenPart", *([io.EVENT] if io.EVENT in present else [])]
    to_read = {name: None for name in dict.fromkeys([*planned.inputs, *truth])}

    start = time.perf_counter()
    batches = []
    for batch in io.iterate_batches(args.files, to_read, batch_size=args.batch_size,
                                    max_events=args.events, backend=args.backend):
        run_batch(batch, planned.stages, planned.config)
        # keep, on the host, only what the metrics read (the pixel-charge pads are large)
        hits = batch["PixelHit"]
        kept = {"PixelHit": Collection(hits.offsets, {k: hits[k] for k in ("layer",
                                                                           "sim_index")})}
        kept.update({name: batch[name] for name in ("GenPart", io.EVENT, "pixeltracks",
                                                    "pixelvertices") if name in batch})
        batches.append(EventBatch(batch.backend, batch.n_events, kept, batch.source,
                                  batch.first_entry).to("reference"))
    seconds = time.perf_counter() - start
    if not batches:
        print("no events read", file=sys.stderr)
        return 1
    result = pixel_metrics(batches)
    result["run"] = {"files": list(args.files), "events": sum(b.n_events for b in batches),
                     "backend": args.backend, "stages": [s.name for s in planned.stages],
                     "config": args.config, "seconds": round(seconds, 2)}
    print_metrics(result, plain=args.plain,
                  title=f"pixel tracks and vertices vs truth: {', '.join(args.files)}, "
                        f"{result['run']['events']} events, {args.backend}")
    if args.output:
        with atomic_output(args.output, "JSON file") as out:
            with open(out.path, "w") as f:
                json.dump(result, f, indent=1, allow_nan=False)
                f.write("\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
