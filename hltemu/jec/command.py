"""``hltemu derive-jec``: the command line of :mod:`hltemu.jec.derive`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click


@click.command("derive-jec")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), default="jec",
              show_default=True, help="Directory for the corrections, records and figures.")
@click.option("--validate", "validate", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="hltemu run outputs of events NOT used to derive (held-out seeds; paired "
                   "pileups welcome): the closure is measured on them.  Repeat for each file.")
@click.option("--era", default="hltemu_V2_MC", show_default=True,
              help="Name of the corrections, CMS style ERA_VERSION_MC (which coffea also "
                   "parses): files <era>_L1FastJet_<algo>.txt, ...")
@click.option("--jets", "jets", type=click.Choice(["jets", "pfjets"]), default="jets",
              show_default=True,
              help="The jets to correct: calorimeter jets (stage antikt) or the offline "
                   "particle-flow jets (stage pfjets; FILES then from `hltemu run --stages "
                   "tracks,vertices,topocluster,pfcandidates,pfjets,pfrho,genjets`; their "
                   "L1FastJet reads the particle-flow rho, pfrho).")
@click.option("--reference", "reference", type=click.Choice(["genjets", "pfjets"]),
              default="genjets", show_default=True,
              help="What the jets are calibrated to: hard-scatter truth jets, or the offline "
                   "particle-flow jets corrected with the shipped hltemu_PF_V2_MC (HLT/offline "
                   "= 1 after the correction; FILES then also need the pfjets stages).")
@click.option("--algo", default=None,
              help="Jet algorithm label of the file names  [default: AK4Calo for jets, "
                   "AK4PFchs for pfjets]")
@click.option("--weighted/--unweighted", default=False, show_default=True,
              help="Medians weighted by the generator weights (Event_weight, normalised per file "
                   "to its cross-section: the physical spectrum within each bin) or not (every "
                   "jet counts once: more effective jets from a --pthat-bias sample).")
@click.option("--plots/--no-plots", default=True, show_default=True,
              help="Draw the figures (needs hltemu[plots]; skipped with a note without it).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show progress bars.")
def derive_jec(files: tuple[str, ...], output_dir: str, validate: tuple[str, ...], era: str,
               jets: str, reference: str, algo: str | None, weighted: bool, plots: bool,
               progress: bool) -> None:
    """Derive L1FastJet and L2Relative jet corrections from FILES written by hltemu run.

    FILES are `hltemu run FILE --stages topocluster,antikt,genjets,rho` outputs of a paired
    production: events generated with the same seeds at pileup 0 and at one or more pileups
    (same run, luminosityBlock and event).  L1FastJet: the offset pT(PU) - pT(PU 0) of matched
    jets of paired events, fitted per |eta| bin in CMS's hybrid form anchored at pileup 0,
    A (rho - rho0) (a + b ln pT), rho0 the pileup-0 events' median rho.  L2Relative: the median
    response of L1-corrected jets to hard-scatter truth jets (genjets, |eta| < 3, Delta R <
    R/2) per truth-pT bin, inverted numerically and fitted in CMS's standard form per |eta| bin;
    every jet counts once, or (--weighted) with its event's generator weight (hltemu generate
    --pthat-bias) normalised per file to its cross-section.

    Writes to OUTPUT_DIR: CMS text files <era>_L1FastJet_<algo>.txt and
    <era>_L2Relative_<algo>.txt, the correctionlib JSON <era>.json, <era>_derivation.json (what
    they were derived with and the fits), <era>_closure.json (median response vs truth pT after
    each level, per pileup, on FILES and on the --validate files, with the resolution's N, S, C
    fit) and PNG figures.  Use them with [jec] levels = ["DIR/<era>_L1FastJet_<algo>.txt",
    "DIR/<era>_L2Relative_<algo>.txt"].
    """
    from rich.console import Console

    from hltemu import ui
    from hltemu.extras import missing
    from hltemu.jec import load_chain
    from hltemu.jec.closure import closure_report
    from hltemu.jec.derive import (
        DeriveError,
        DeriveSettings,
        derive,
        load_sample,
        write_corrections,
    )
    from hltemu.outputs import OutputPathError, atomic_output, check_outputs

    console = Console(stderr=True)
    out = Path(output_dir)
    algo = algo or {"jets": "AK4Calo", "pfjets": "AK4PFchs"}[jets]
    settings = DeriveSettings(era=era, algo=algo, weighted=weighted)
    absent = missing("plots") if plots else []
    try:
        era_files = [f"{era}_L1FastJet_{algo}.txt", f"{era}_L2Relative_{algo}.txt",
                     f"{era}.json", f"{era}_derivation.json", f"{era}_closure.json"]
        check_outputs([("output file", out / n) for n in era_files], [*files, *validate])
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        bar = ui.ProgressBar(len(files) + len(validate), "files read") if progress else None
        step = bar.update if bar is not None else None
        try:
            sample = load_sample(files, progress=step, jets=jets, reference=reference)
            held_out = (load_sample(validate, progress=step, jets=jets, reference=reference)
                        if validate else None)
        finally:
            if bar is not None:
                bar.close()
        if held_out is not None:
            _check_disjoint(sample, held_out)
        result = derive(sample, settings)
        paths = write_corrections(result, out)
        chain = load_chain((str(paths["L1FastJet"]), str(paths["L2Relative"])))
        closures = {"derivation": closure_report(sample, chain, settings)}
        if held_out is not None:
            closures["held-out"] = closure_report(held_out, chain, settings)
        closure_path = out / f"{era}_closure.json"
        with atomic_output(closure_path, "closure report") as tmp:
            tmp.path.write_text(json.dumps(closures, indent=1) + "\n")
        seconds = time.perf_counter() - t0
    except (DeriveError, OutputPathError) as exc:
        raise click.ClickException(str(exc)) from None
    figures = []
    if plots and not absent:
        from hltemu.jec.derive_plots import draw_all

        figures = draw_all(result, closures, out)
    _print_summary(console, result, closures)
    for p in [*paths.values(), closure_path, *figures]:
        console.print(f"wrote {p}")
    if plots and absent:
        console.print(f"figures not drawn: {', '.join(absent)} missing "
                      "(pip install 'hltemu[plots]')")
    console.print(f"derive-jec: {sample.n_events} events"
                  + (f" + {held_out.n_events} held out" if held_out is not None else "")
                  + f" in {seconds:.1f} s")


def _check_disjoint(sample, held_out) -> None:
    """Held-out events must not be derivation events (the same run, lumi block and event)."""
    from hltemu.jec.derive import DeriveError

    a = {tuple(k) for k in sample.key.tolist()}
    shared = sum(1 for k in held_out.key.tolist() if tuple(k) in a)
    if shared:
        raise DeriveError(f"{shared} --validate events are also derivation events (the same "
                          "run, luminosityBlock and event): validate on other seeds")


def _print_summary(console, result, closures) -> None:
    from rich.table import Table

    t = Table(title="L1FastJet: offset = A (rho - rho0) (a + b ln pT)")
    for c in ("|eta|", "a", "b", "rho0", "chi2/ndf", "pairs"):
        t.add_column(c, justify="right")
    for f in result.l1:
        t.add_row(f"{f.eta[0]:g}-{f.eta[1]:g}", *(f"{p:.4g}" for p in f.params),
                  f"{f.chi2:.1f}/{f.ndf}", str(f.n_pairs))
    console.print(t)
    t = Table(title="L2Relative (standard parameterisation, pT clamped)")
    for c in ("|eta|", "pT range (GeV)", "chi2/ndf", "jets"):
        t.add_column(c, justify="right")
    for f in result.l2:
        t.add_row(f"{f.eta[0]:g}-{f.eta[1]:g}", f"{f.pt_range[0]:.0f}-{f.pt_range[1]:.0f}",
                  f"{f.chi2:.1f}/{f.ndf}", str(f.n_jets))
    console.print(t)
    for label, rep in closures.items():
        last = rep["levels"][-1]
        t = Table(title=f"closure ({label}): median pT/pT_truth raw -> corrected")
        t.add_column("PU", justify="right")
        t.add_column("|eta|", justify="right")
        t.add_column("truth pT", justify="right")
        t.add_column("jets", justify="right")
        t.add_column("raw", justify="right")
        t.add_column("corrected", justify="right")
        for b in rep["bins"]:
            if not b["levels"]:
                continue
            raw, cor = b["levels"]["raw"], b["levels"][last]
            t.add_row(f"{b['pileup']:g}", f"{b['eta'][0]:g}-{b['eta'][1]:g}",
                      f"{b['pt'][0]:g}-{b['pt'][1]:g}", str(b["n_matched"]),
                      f"{raw['median']:.3f}", f"{cor['median']:.3f} ± {cor['error']:.3f}")
        console.print(t)
