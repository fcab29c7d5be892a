"""What the command line shows: the progress bar and the rich tables.

Presentation only: each builder takes figures already computed (a
:class:`~hltemu.profiling.RunReport`, a dict of timings, the registered stages) and returns a
:class:`rich.table.Table` for the caller to print; nothing here measures, reads files or runs
stages.  rich is imported inside the functions, so importing this module (as
:mod:`hltemu.pipeline` and :mod:`hltemu.profiling` do) loads no rich.

* :class:`ProgressBar`: the one progress bar, over events (``hltemu run``, ``hltemu
  generate``) or files (a Dask run);
* :func:`report_table`: per-stage throughput of a run (``hltemu run``,
  :meth:`RunReport.table <hltemu.profiling.RunReport.table>`);
* :func:`versions_table`, :func:`backends_table`, :func:`stages_table`,
  :func:`settings_table`: the four tables of ``hltemu info``;
* :func:`bench_table`: events/s per backend and the speed-ups (``hltemu bench``);
* :func:`generation_table`: per-event means of ``hltemu generate``
  (:meth:`GenerationStats.summary <hltemu.simulate.generate.GenerationStats.summary>`);
* :func:`file_table`: what a ROOT file holds (``hltemu info FILE``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hltemu.profiling import RunReport


# -- progress ---------------------------------------------------------------------------------
class ProgressBar:
    """A rich progress bar over ``total`` items named ``label`` (events, files), with elapsed
    and remaining time (a thin wrapper so that the pipeline stays testable).

    ``text`` replaces the bar's leading text (default: ``label`` in bold); ``console`` is the
    :class:`rich.console.Console` to draw on (default: rich's global one).  The bar is drawn
    from construction until :meth:`close`.
    """

    def __init__(self, total: int, label: str = "events", *, text: str | None = None,
                 console: Any = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._p = Progress(
            TextColumn(f"[bold]{label}" if text is None else text), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
            transient=False,
        )
        self._p.start()
        self._task = self._p.add_task(label, total=total)

    def update(self, n: int) -> None:
        self._p.advance(self._task, n)

    def close(self) -> None:
        self._p.stop()


# -- hltemu run -------------------------------------------------------------------------------
def report_table(report: RunReport) -> Any:
    """A :class:`rich.table.Table` of the per-stage throughput of ``report``."""
    from rich.table import Table

    t = Table(title=f"hltemu run: {report.events} events on {report.backend} ({report.device})")
    notes = []
    if report.warmup_seconds > 0:
        notes.append(f"not counted: {report.warmup_seconds:.2f} s of warm-up on the first "
                     "event (kernels compiled or loaded from Numba's cache, device tables, "
                     "calorimeter graph, imports)")
    if report.startup_seconds > 0:
        notes.append(f"not counted: {report.startup_seconds:.2f} s to start or reach the Dask "
                     "cluster")
    if report.retried_tasks:
        notes.append(f"{report.retried_tasks} Dask task(s) run again after their worker was "
                        "lost")
    if notes:
        t.caption = "\n".join(notes)
    t.add_column("stage")
    t.add_column("calls", justify="right")
    t.add_column("events", justify="right")
    t.add_column("seconds", justify="right")
    t.add_column("events/s", justify="right")
    t.add_column("share", justify="right")
    for name, s in report.stages.items():
        share = s.seconds / report.total_seconds if report.total_seconds > 0 else float("nan")
        t.add_row(
            name, str(s.calls), str(s.events), f"{s.seconds:.4f}",
            f"{s.events_per_second:,.1f}", f"{100 * share:.1f}%",
        )
    t.add_row(
        "total", "", str(report.events), f"{report.total_seconds:.4f}",
        f"{report.events_per_second:,.1f}", "100.0%", style="bold",
    )
    return t


# -- hltemu info ------------------------------------------------------------------------------
def versions_table(title: str, versions: Mapping[str, str], nvtx_state: str) -> Any:
    """Package versions (:func:`hltemu.profiling.versions`) and whether NVTX ranges are on."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=title, show_header=False)
    for k, v in versions.items():
        t.add_row(k, escape(v))
    t.add_row("nvtx ranges", escape(nvtx_state))
    return t


def backends_table(usable: Mapping[str, tuple[bool, str]], auto: str) -> Any:
    """Each backend, whether it is usable and its device or why not
    (:func:`hltemu.backends.usable_backends`), and the backend ``auto`` picks."""
    from rich.markup import escape
    from rich.table import Table

    b = Table(title="backends")
    b.add_column("backend")
    b.add_column("usable")
    b.add_column("device / reason", overflow="fold")
    for name, (ok, why) in usable.items():
        b.add_row(name, "yes" if ok else "no", escape(why))
    b.add_row("auto", "yes", auto)
    return b


def stages_table(stages: Mapping[str, Any], config: Any = None) -> Any:
    """The registered stages (name -> :class:`~hltemu.pipeline.Stage`, in chain order), with
    their needs under ``config`` (an :class:`~hltemu.config.HLTConfig`; ``None``: defaults)."""
    from rich.markup import escape
    from rich.table import Table

    s = Table(title="stages (chain order)")
    for col in ("stage", "needs", "adds", "backends", "what it does"):
        s.add_column(col, overflow="fold")
    if not stages:
        s.add_row("(none registered)", "", "", "", "")
    for name, st in stages.items():
        cfg = config.get(name, st.config_type) if config is not None else None
        s.add_row(name, ", ".join(st.needs_for(cfg)), ", ".join(st.adds),
                  ", ".join(sorted(st.implementations)), escape(st.doc))
    return s


def settings_table(settings: Mapping[str, Sequence[tuple[str, Any, str, str]]]) -> Any:
    """Every stage's settings: stage name -> its rows ``(key, value, unit, doc)``
    (:func:`hltemu.config.describe`)."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape("settings (override with --config FILE.toml, one [stage] table "
                           "each)"))
    for col in ("stage", "setting", "value", "unit"):
        t.add_column(col, overflow="fold")
    for name, rows in settings.items():
        for i, (key, value, unit, _doc) in enumerate(rows):
            t.add_row(name if i == 0 else "", key, escape(str(value)), escape(unit),
                      end_section=i == len(rows) - 1)
    return t


# -- hltemu bench -----------------------------------------------------------------------------
def bench_table(times: Mapping[str, Mapping[str, float]], backends: Sequence[str],
                rows: Sequence[str], n_events: int, repeat: int) -> Any:
    """Per row (stage names, then ``total``): events/s on each backend and its speed-up over
    the first; ``times[backend][row]`` is the best of ``repeat`` in seconds for ``n_events``."""
    from rich.table import Table

    base = backends[0]
    t = Table(title=f"hltemu bench: {n_events} events, best of {repeat}")
    t.add_column("stage")
    for b in backends:
        t.add_column(f"{b} events/s", justify="right")
    for b in backends[1:]:
        t.add_column(f"{b}/{base}", justify="right")
    for name in rows:
        row = [name]
        row += [f"{n_events / times[b][name]:,.1f}" for b in backends]
        row += [f"{times[base][name] / times[b][name]:.2f}x" for b in backends[1:]]
        t.add_row(*row)
    return t


# -- hltemu generate --------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    """Seconds as milliseconds with 4 significant digits (``470.9``, ``0.02431``)."""
    return f"{1e3 * seconds:#.4g}".rstrip(".")


def spread_table(figures: Mapping[str, Any], backends: Sequence[str], rows: Sequence[str],
                 n_events: int, repeat: int) -> Any:
    """``hltemu bench``'s second table, from :meth:`hltemu.bench.BenchResult.to_dict`
    (``figures``): per stage (then ``total``) and backend, milliseconds per event (median,
    min, max, interquartile range over the repeats), events/s of the median and the speed-up
    of the median over the baseline (the first backend)."""
    from rich import box
    from rich.table import Table

    base = backends[0]
    t = Table(title=f"ms per event: {n_events} events, {repeat} repeat(s); speed-up over {base}",
              box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("stage", "backend", "median", "min", "max", "IQR", "events/s", "speed-up"):
        t.add_column(col, justify="left" if col in ("stage", "backend") else "right",
                     no_wrap=True)
    for row in rows:
        for i, b in enumerate(backends):
            r = figures["backends"][b]["stages"][row]
            s = r["seconds_per_event"]
            eps, sp = r["events_per_second"], r.get("speedup")
            t.add_row(row if i == 0 else "", b, _ms(s["median"]), _ms(s["min"]), _ms(s["max"]),
                      _ms(s["iqr"]), f"{eps:,.1f}" if eps is not None else "inf",
                      f"{sp:.2f}x" if sp is not None else "n/a",
                      end_section=len(backends) > 1 and i == len(backends) - 1,
                      style="bold" if row == "total" else None)
    return t


def generation_table(stats: Any) -> Any:
    """The per-event means of a generation run
    (:class:`~hltemu.simulate.generate.GenerationStats`)."""
    from rich.table import Table

    c = stats.config
    t = Table(title=f"{c.events} {c.process} events, pileup {c.pileup:g}, seed {c.seed}")
    t.add_column("per event (mean)")
    t.add_column("value", justify="right")
    for k, v in stats.means().items():
        t.add_row(k, f"{v:.3f}" if "time" in k else f"{v:.1f}")
    t.add_row("Pythia initialisation (s)", f"{stats.init_seconds:.2f}")
    hard = (getattr(stats, "pythia", None) or {}).get("hard_process")
    if hard:  # Pythia's estimate from the events generated, mb -> pb
        t.add_row(f"{c.process} cross-section, Pythia (pb)",
                  f"{hard['sigma_gen_mb'] * 1e9:.4g} ± {hard['sigma_err_mb'] * 1e9:.2g}")
    return t


# -- hltemu info FILE -------------------------------------------------------------------------
def file_table(path: str, entries: int, collections: Sequence[str],
               ids: Mapping[str, Any] | None) -> Any:
    """What a ROOT file holds (``hltemu info FILE``): entries, collections and its event
    identifiers (:func:`hltemu.io.event_id_summary`: runs, lumi-block and event ranges,
    duplicated identifiers)."""
    from rich.table import Table

    t = Table(title=path, show_header=False)
    t.add_column("key")
    t.add_column("value")
    t.add_row("entries", str(entries))
    t.add_row("collections", ", ".join(collections) or "none")
    if ids is None:
        t.add_row("event identifiers", "none (no run, luminosityBlock, event branches)")
        return t
    t.add_row("event identifiers", ", ".join(ids["columns"]))
    if "runs" in ids:
        more = f" (and {ids['n_runs'] - len(ids['runs'])} more)" if ids["n_runs"] > len(
            ids["runs"]) else ""
        t.add_row("runs", ", ".join(map(str, ids["runs"])) + more)
    for key in ("luminosityBlock", "event"):
        if key in ids:
            lo, hi = ids[key]
            t.add_row(key, f"{lo} to {hi}")
    dup = ids["duplicates"]
    t.add_row("duplicated identifiers", "none" if dup == 0 else f"[red]{dup} entries[/red]")
    return t


def plan_lines(summary: Mapping[str, Any]) -> list[str]:
    """What a run will do, from :meth:`hltemu.pipeline.Plan.summary`: the stages that run, each
    stage left out and why, and the planner's notes (one line each, rich markup)."""
    from rich.markup import escape

    lines = [f"[bold]stages:[/bold] {escape(', '.join(summary['stages']) or '(none)')}"]
    lines += [f"[yellow]skipped[/yellow] {escape(name)}: {escape(why)}"
              for name, why in summary["skipped"].items()]
    lines += [f"[yellow]note[/yellow] {escape(note)}" for note in summary["notes"]]
    if summary.get("not_written"):
        lines.append(f"[yellow]not written[/yellow] (--drop): "
                     f"{escape(', '.join(summary['not_written']))}")
    if summary.get("counts_only"):
        lines.append(f"[yellow]counts only[/yellow] (--keep NAME writes them whole): "
                     f"{escape(', '.join(summary['counts_only']))}")
    return lines


#: Report counter groups the trigger table shows (filled by the trigger stage's count hook).
TRIGGER_GROUPS = ("trigger accepts", "trigger accepts before prescale")


def trigger_table(report: RunReport) -> Any:
    """Accepts per trigger path of ``report``: prescale, events passing the path's filter
    (before the prescaler) and events accepted, with fractions of all events; ``None`` when
    the run had no trigger."""
    from rich.table import Table

    after = report.counters.get(TRIGGER_GROUPS[0])
    if not after:
        return None
    before = report.counters.get(TRIGGER_GROUPS[1], {})
    prescales = report.plan.get("facts", {}).get("trigger", {}).get("prescales", {})
    t = Table(title="trigger paths")
    for col, justify in (("path", "left"), ("prescale", "right"), ("before prescale", "right"),
                         ("accepted", "right"), ("accepted %", "right")):
        t.add_column(col, justify=justify)
    n = report.events

    def pct(k: float) -> str:
        return f"{100 * k / n:.2f}%" if n else "n/a"

    for name, k in after.items():
        ps = prescales.get(name)
        shown = "off (0)" if ps == 0 else "" if ps is None else f"1/{ps}" if ps > 1 else "1"
        t.add_row(name, shown, f"{int(before.get(name, 0))} ({pct(before.get(name, 0))})",
                  str(int(k)), pct(k))
    return t
