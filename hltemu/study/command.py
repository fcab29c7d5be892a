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

    Sub-commands read real CMS NanoAOD, or hltemu's own outputs made with the offline
    reconstruction (pfjets) beside the HLT chain."""


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
@click.option("--reference", default=None,
              help="Reference path of the turn-ons (reference method) of every single-jet "
                   "path above its threshold.  [default: HLT_PFJet40 on NanoAOD, "
                   "HLT_CaloJet40 (before its prescale) on hltemu output]")
@click.option("--hlt-jets", type=click.Choice(["pf", "all"]), default="pf", show_default=True,
              help="NanoAOD: the HLT PF jets among the jet trigger objects (told from L1 and "
                   "calo jets by their filter bits), or every TrigObj_id == 1 entry.")
@click.option("--offline-pt", type=click.Choice(["corrected", "raw"]), default="corrected",
              show_default=True,
              help="NanoAOD: offline jet pT as stored (JEC-corrected) or raw (Jet_rawFactor "
                   "undone); on hltemu output see --offline-jec.")
@click.option("--offline-jec", default=None, metavar="FILES|none",
              help="hltemu output: corrections of the offline pfjets, comma-separated level "
                   "files in order (builtin:NAME for shipped ones; their L1FastJet reads the "
                   "file's pfrho), or 'none' for raw pfjets.  [default: the shipped "
                   "pfjets corrections, hltemu_PF_V2_MC]")
@click.option("--width-path", default="HLT_CaloJet80", show_default=True,
              help="hltemu output: the single-jet path whose cut is emulated on corrected and "
                   "on raw HLT jets to compare turn-on widths.")
@click.option("--width-eta", type=click.FloatRange(min=0, min_open=True), default=None,
              help="hltemu output: |eta| of the offline jets in the width comparison.  "
                   "[default: the --width-path's own eta cut]")
@click.option("--bootstrap", type=click.IntRange(min=0), default=0, show_default=True,
              help="hltemu output: event resamples for the error of the width difference "
                   "(each costs two fits per HLT level).")
@click.option("--efficiency-at", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="GEV",
              help="hltemu output: offline pT where each selection of the width comparison "
                   "reports its fitted efficiency.  [default: the --width-path's threshold "
                   "+ 10 GeV]")
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
                   pt_bins: str, reference: str | None, hlt_jets: str, offline_pt: str,
                   offline_jec: str | None, width_path: str, width_eta: float | None,
                   bootstrap: int, efficiency_at: float | None,
                   turn_on_eta: float, min_rising: int, plots: bool, progress: bool) -> None:
    """Compare HLT jets with offline jets in FILES (CMS NanoAOD, or hltemu run outputs with
    pfjets); measure single-jet turn-ons.

    NanoAOD: HLT jets are the jet trigger objects (TrigObj_id == 1; by default only the HLT PF
    jets among them), offline jets the Jet collection (AK4 PUPPI in Run-3 NanoAOD), paths the
    HLT_PFJet<N> bits.  hltemu output (from `hltemu run FILE --stages
    topocluster,antikt,rho,jec,trigger,tracks,vertices,pfcandidates,pfjets`): HLT jets are the
    calorimeter jets at each JEC level (raw, L1FastJet, full), offline jets the pfjets
    corrected with --offline-jec, paths the menu's single-jet paths before prescale
    (trigger_pre).

    Jets are matched one to one by Delta R, closest first; the response HLT pT / offline pT is
    measured per HLT level, offline |eta| and pT bin (median, mean, Gaussian core, matching
    efficiency; bins below twice the lowest stored HLT jet pT are flagged).  Each path bit is
    compared with "an HLT jet passing its cut", and its turn-on measured by the reference
    method (against the leading offline jet, in events passing --reference) and by dijet tag
    and probe, with erf fits giving the pT of 50, 95 and 99 % efficiency.  On hltemu output
    the --width-path cut is also emulated on every HLT jet flavour (raw, each JEC level and,
    where the files have regressed_jets of stage jet_regression, the regressed jets), each
    other flavour's threshold set once to give the same offline p50 and once to give the same
    accept rate (Event_weight normalised to each file's cross-section), and the turn-ons
    compared (p50, p95, width p95 - p50, efficiency at --efficiency-at).  Turn-ons and
    responses count events equally (no generator weights); only the rates use them.

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
        read_inputs,
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
                                 offline_jec=_jec_entries(offline_jec), width_path=width_path,
                                 width_eta=width_eta, bootstrap=bootstrap,
                                 efficiency_at=efficiency_at,
                                 turn_on_eta=turn_on_eta,
                                 min_rising=min_rising)
        check_outputs([("summary", summary_path)], files)
        t0 = time.perf_counter()
        bar = ui.ProgressBar(len(files), "files read") if progress and len(files) > 1 else None
        try:
            sample = read_inputs(files, settings,
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


def _jec_entries(text: str | None) -> tuple[str, ...] | None:
    """``--offline-jec``: ``None`` (the default corrections), ``()`` for "none", else the
    comma-separated entries."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    entries = tuple(e.strip() for e in text.split(",") if e.strip())
    if not entries:
        raise click.BadParameter(f"{text!r}: give correction files or 'none'",
                                 param_hint="--offline-jec")
    return entries


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def _pm(value: float | None, error: float | None, fmt: str = ".3f") -> str:
    if value is None:
        return "-"
    return f"{value:{fmt}} ± {error:{fmt}}" if error is not None else f"{value:{fmt}}"


def _print_summary(console: Any, summary: dict[str, Any]) -> None:
    from rich.table import Table

    h = summary["hlt_jets"]
    if summary["input"]["kind"] == "hltemu":
        what = f"levels {', '.join(h['levels'])}; HLT JEC {h['jec']}"
    else:
        what = "jet trigger objects: " + ", ".join(f"{k} {v}" for k, v in h["kinds"].items())
    console.print(f"offline: {summary['offline_algorithm']}, {summary['offline_pt']}; HLT jets: "
                  f"{h['selection']} ({h['used']} used; {what}); lowest "
                  f"stored HLT jet pT {_num(h['storage_threshold'], '.2f')} GeV")
    for note in summary["notes"]:
        console.print(f"note: {note}")
    t = Table(title=f"response pT(HLT) / pT(offline), ΔR < {summary['matching']['max_dr']:g} "
                    f"({summary['matching']['pairs']} pairs)")
    for c in ("level", "|eta|", "pT (GeV)", "n", "median", "mean", "core mean", "core σ",
              "match eff", "flag"):
        t.add_column(c, justify="right")
    thresholds = h.get("storage_thresholds") or {}
    for b in summary["response"]:
        if not b["n_offline"]:
            continue
        low = thresholds.get(b["level"], h["storage_threshold"]) or 0.0
        t.add_row(b["level"], f"{b['eta_min']:g}-{b['eta_max']:g}",
                  f"{b['pt_min']:g}-{b['pt_max']:g}",
                  str(b["n"]), _pm(b["median"], b["median_error"]), _num(b["mean"]),
                  _pm(b["core_mean"], b["core_mean_error"]) if b["core_mean"] is not None
                  else b["core_status"], _pm(b["sigma"], b["sigma_error"]),
                  f"{b['match_efficiency']:.3f}" if b["match_efficiency"] is not None else "-",
                  f"< 2×{low:.1f}" if b["flagged"] else "")
    console.print(t)
    if summary["paths"]:
        t = Table(title="path bit vs an HLT jet above threshold (events)")
        for c in ("path", "both", "bit only", "object only", "neither", "agreement"):
            t.add_column(c, justify="right")
        for name, p in summary["paths"].items():
            label = name + (f" ({p['level']})" if p.get("level") else "")
            if p["agreement"] is None and "note" in p:
                t.add_row(label, "-", "-", "-", "-", p["note"])
                continue
            t.add_row(label, str(p["both"]), str(p["bit_only"]), str(p["object_only"]),
                      str(p["neither"]), _num(p["agreement"]))
        console.print(t)
    if summary["turn_on"]:
        _print_turn_ons(console, summary["turn_on"])
    if "threshold_width" in summary:
        _print_threshold_width(console, summary["threshold_width"])


def _print_threshold_width(console: Any, w: dict[str, Any]) -> None:
    """The full selection and each other flavour's at equal p50, then at equal rate: a table
    each, one row per selection."""
    if w["status"] == "not done":
        console.print(f"threshold width of {w['path']}: not done: {w['reason']}")
        return
    boot = w.get("bootstrap") or {}
    where = (f"{w['path']}'s cut (|eta| <= {w['eta_max']:g}) per HLT jet flavour (GeV of "
             f"{w['x']}; {w['n_events']} events)")
    _width_table(console, f"turn-ons at equal p50: {where}", w["selections"],
                 boot.get("difference_sd") or {}, w["efficiency_at"])
    if w.get("rate_matched"):
        r, full = w["rate"], w["selections"]["full"]
        to = "its cross-section" if r["normalisation"] == "cross-section" else "its sum"
        error = (f", full's ± {100 * full['rate_error'] / full['rate']:.1f} %"
                 if full.get("rate") else "")
        _width_table(console, f"turn-ons at equal accept rate: {where}; rates: Event_weight "
                              f"normalised per file to {to}, {r['events']} events "
                              f"({r['effective_events']:.0f} effective){error}",
                     {"full": w["selections"]["full"], **w["rate_matched"]},
                     boot.get("rate_difference_sd") or {}, w["efficiency_at"])
    if "bit_check" in w:
        b = w["bit_check"]
        console.print(f"{w['path']}: emulated full-JEC cut agrees with its trigger_pre bit in "
                      f"{b['agree']} of {b['events']} events")


def _width_table(console: Any, title: str, selections: dict[str, dict[str, Any]],
                 difference_sd: dict[str, float | None], pt_eff: float) -> None:
    """One row per selection: threshold, rate relative to the full selection's, the fit's
    p50, p95, width, efficiency at ``pt_eff`` (GeV) and p50 shift."""
    from rich.table import Table

    t = Table(title=title)
    for c in ("level", "threshold", "rate / full", "p50", "p95", "width", "width / full",
              f"eff. at {pt_eff:g}", "Δp50"):
        t.add_column(c, justify="right")
    for name, r in selections.items():
        if r.get("threshold") is None or r["status"] != "ok":
            t.add_row(name, _num(r.get("threshold"), "g"), r["status"],
                      r.get("reason") or "", "", "", "", "", "")
            continue
        diff = r.get("p50_difference")
        ratio = r.get("width_ratio")
        sd = difference_sd.get(name)
        rate = r.get("rate_ratio")
        t.add_row(name, f"{r['threshold']:g}", _num(rate),
                  _pm(r["p50"], r["p50_error"], ".1f"), _pm(r["p95"], r["p95_error"], ".1f"),
                  _pm(r["width"], r["width_error"], ".1f"),
                  "-" if ratio is None else f"{ratio:.3f}"
                  + ("" if sd is None else f" (Δw ± {sd:.1f} boot.)"),
                  _pm(r.get("efficiency"), r.get("efficiency_error")),
                  "-" if diff is None or name == "full" else f"{diff:+.2f}"
                  + ("" if r.get("matched", True) else " not matched"))
    console.print(t)


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
