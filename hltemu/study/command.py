"""``hltemu study``: the command line of :mod:`hltemu.study` (``online-offline``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click


@click.group("study")
def study() -> None:
    """Studies of HLT (online) jets against offline jets: response and trigger turn-ons.

    Sub-commands read real CMS NanoAOD; on hltemu's own outputs they need the offline
    reconstruction (pfjets), which this version does not have yet."""


def _edges(text: str, what: str) -> tuple[float, ...]:
    try:
        edges = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated numbers", param_hint=what
                                 ) from None
    return edges


@study.command("online-offline")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), default="online-offline",
              show_default=True, help="Directory for summary.json and the figures.")
@click.option("--max-dr", type=click.FloatRange(min=0, min_open=True), default=0.2,
              show_default=True, help="Largest Delta R of a matched HLT-offline jet pair.")
@click.option("--eta-bins", default="0,1.3,2.5,3,5", show_default=True,
              help="Offline |eta| bin edges of the response.")
@click.option("--pt-bins", default="50,70,100,150,250,500,1000", show_default=True,
              help="Offline pT bin edges (GeV) of the response.")
@click.option("--reference", default="HLT_PFJet40", show_default=True,
              help="Reference path of the turn-ons (reference method) of every HLT_PFJet<N> "
                   "path above its threshold.")
@click.option("--hlt-jets", type=click.Choice(["pf", "all"]), default="pf", show_default=True,
              help="HLT jets: the HLT PF jets among the jet trigger objects (told from L1 and "
                   "calo jets by their filter bits), or every TrigObj_id == 1 entry.")
@click.option("--offline-pt", type=click.Choice(["corrected", "raw"]), default="corrected",
              show_default=True,
              help="Offline jet pT as stored (JEC-corrected) or raw (Jet_rawFactor undone).")
@click.option("--turn-on-eta", type=click.FloatRange(min=0, min_open=True), default=2.5,
              show_default=True,
              help="|eta| of the leading offline jet (reference method) and of the two "
                   "leading jets (tag and probe).")
@click.option("--min-rising", type=click.IntRange(min=1), default=20, show_default=True,
              help="Fewest events within mu +- 2 sigma for a turn-on fit to be reported.")
@click.option("--plots/--no-plots", default=True, show_default=True,
              help="Draw the figures (needs hltemu[plots]; skipped with a note without it).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar over the files (when there are several).")
def online_offline(files: tuple[str, ...], output_dir: str, max_dr: float, eta_bins: str,
                   pt_bins: str, reference: str, hlt_jets: str, offline_pt: str,
                   turn_on_eta: float, min_rising: int, plots: bool, progress: bool) -> None:
    """Compare HLT jets with offline jets in CMS NanoAOD FILES; measure PFJet turn-ons.

    HLT jets are the jet trigger objects (TrigObj_id == 1; by default only the HLT PF jets
    among them), offline jets the Jet collection (AK4 PUPPI in Run-3 NanoAOD).  They are matched
    one to one by Delta R, closest first; the response HLT pT / offline pT is measured per
    offline |eta| and pT bin (median, mean, Gaussian core, matching efficiency; bins below
    twice the lowest stored HLT jet pT are flagged).  Each HLT_PFJet<N> bit is compared with
    "an HLT jet above N GeV", and its turn-on measured by the reference method (against the
    leading offline jet, in events passing --reference) and by dijet tag and probe, with erf
    fits giving the pT of 50, 95 and 99 % efficiency.

    Writes OUTPUT_DIR/summary.json (every number, the number of events in each fit) and, with
    the plots extra, PNG figures; prints the tables on stderr.
    """
    from rich.console import Console

    from hltemu import ui
    from hltemu.extras import missing
    from hltemu.io import InputError
    from hltemu.outputs import OutputPathError, atomic_output, check_outputs
    from hltemu.study.online_offline import (
        StudyError,
        StudySettings,
        read_nanoaod,
        run_study,
    )

    console = Console(stderr=True)
    out = Path(output_dir)
    absent = missing("plots") if plots else []
    summary_path = out / "summary.json"
    try:
        settings = StudySettings(max_dr=max_dr, eta_edges=_edges(eta_bins, "--eta-bins"),
                                 pt_edges=_edges(pt_bins, "--pt-bins"), hlt_jets=hlt_jets,
                                 offline_pt=offline_pt, reference=reference,
                                 turn_on_eta=turn_on_eta, min_rising=min_rising)
        check_outputs([("summary", summary_path)], files)
        t0 = time.perf_counter()
        bar = ui.ProgressBar(len(files), "files read") if progress and len(files) > 1 else None
        try:
            sample = read_nanoaod(files, settings,
                                  progress=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        summary = run_study(sample, settings)
        figures: list[Path] = []
        names: list[str] = []
        if plots and not absent:
            from hltemu.study.online_offline_plots import figure_names

            names = figure_names(summary)
            check_outputs([("summary", summary_path),
                           *(("figure", out / n) for n in names)], files)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_output(summary_path, "summary") as tmp:
            tmp.path.write_text(json.dumps(summary, indent=1) + "\n")
        if names:
            from hltemu.study.online_offline_plots import draw_all

            figures = draw_all(summary, out)
        seconds = time.perf_counter() - t0
    except (StudyError, InputError, OutputPathError) as exc:
        raise click.ClickException(str(exc)) from None
    _print_summary(console, summary)
    for p in [summary_path, *figures]:
        console.print(f"wrote {p}")
    if plots and absent:
        console.print(f"figures not drawn: {', '.join(absent)} missing "
                      "(pip install 'hltemu[plots]')")
    console.print(f"study online-offline: {summary['input']['events']} events from "
                  f"{len(files)} file(s) in {seconds:.1f} s")


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def _pm(value: float | None, error: float | None, fmt: str = ".3f") -> str:
    if value is None:
        return "-"
    return f"{value:{fmt}} ± {error:{fmt}}" if error is not None else f"{value:{fmt}}"


def _print_summary(console: Any, summary: dict[str, Any]) -> None:
    from rich.table import Table

    h = summary["hlt_jets"]
    kinds = ", ".join(f"{k} {v}" for k, v in h["kinds"].items())
    console.print(f"offline: {summary['offline_algorithm']}, {summary['offline_pt']}; HLT jets: "
                  f"{h['selection']} ({h['used']} used; jet trigger objects: {kinds}); lowest "
                  f"stored HLT jet pT {_num(h['storage_threshold'], '.2f')} GeV")
    for note in summary["notes"]:
        console.print(f"note: {note}")
    t = Table(title=f"response pT(HLT) / pT(offline), ΔR < {summary['matching']['max_dr']:g} "
                    f"({summary['matching']['pairs']} pairs)")
    for c in ("|eta|", "pT (GeV)", "n", "median", "mean", "core mean", "core σ", "match eff",
              "flag"):
        t.add_column(c, justify="right")
    for b in summary["response"]:
        if not b["n_offline"]:
            continue
        t.add_row(f"{b['eta_min']:g}-{b['eta_max']:g}", f"{b['pt_min']:g}-{b['pt_max']:g}",
                  str(b["n"]), _pm(b["median"], b["median_error"]), _num(b["mean"]),
                  _pm(b["core_mean"], b["core_mean_error"]) if b["core_mean"] is not None
                  else b["core_status"], _pm(b["sigma"], b["sigma_error"]),
                  f"{b['match_efficiency']:.3f}" if b["match_efficiency"] is not None else "-",
                  f"< 2×{h['storage_threshold']:.1f}" if b["flagged"] else "")
    console.print(t)
    if summary["paths"]:
        t = Table(title="path bit vs an HLT jet above threshold (events)")
        for c in ("path", "both", "bit only", "object only", "neither", "agreement"):
            t.add_column(c, justify="right")
        for name, p in summary["paths"].items():
            t.add_row(name, str(p["both"]), str(p["bit_only"]), str(p["object_only"]),
                      str(p["neither"]), _num(p["agreement"]))
        console.print(t)
    if summary["turn_on"]:
        _print_turn_ons(console, summary["turn_on"])


def _print_turn_ons(console: Any, turn_on: dict[str, dict[str, Any]]) -> None:
    """The fits with events passing; the paths none passes and the empty tag and probe in a
    line each."""
    from rich.table import Table

    t = Table(title="turn-ons: erf fits (GeV of offline pT; rising: events in mu ± 2 sigma)")
    for c in ("path", "method", "events", "pass", "rising", "p50", "p95", "p99", "width",
              "plateau"):
        t.add_column(c, justify="right")
    silent, no_probe = [], []
    for name, methods in turn_on.items():
        if not any(r["n_pass"] for r in methods.values()):
            silent.append(name)
            continue
        for method, r in methods.items():
            if method == "tag_and_probe" and not r["n_events"]:
                no_probe.append(f"{name}: {r['reason']}")
                continue
            label = f"ref {r['reference']}" if method == "reference" else "tag & probe"
            if r["status"] == "ok":
                cells = [_pm(r["p50"], r["p50_error"], ".1f"), _pm(r["p95"], r["p95_error"], ".1f"),
                         _pm(r["p99"], r["p99_error"], ".1f") if r["p99"] is not None else "n/a",
                         _pm(r["width"], r["width_error"], ".1f"),
                         _pm(r["plateau"], r["plateau_error"], ".3f")
                         + (" fixed" if r["plateau_fixed"] else "")]
            else:
                cells = [r["status"], "", "", "", ""]
            t.add_row(name, label, str(r["n_events"]), str(r["n_pass"]), str(r["n_rising"]),
                      *cells)
    console.print(t)
    if silent:
        console.print(f"no event passes: {', '.join(silent)}")
    for line in no_probe:
        console.print(f"tag and probe, no probe for {line}")
