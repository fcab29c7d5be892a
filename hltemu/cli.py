"""The ``hltemu`` command line: ``info``, ``run``, ``bench`` (and ``generate`` once installed).

Errors a user can cause (bad file, branch, backend, stage or config) are printed as one line
naming the culprit and the valid choices, with exit status 1 (2 for bad usage); never a
traceback from deep inside uproot or a kernel.  Ctrl-C prints ``interrupted`` and exits 130,
leaving no output file (:mod:`hltemu.outputs`).

Imports are lazy: this module imports click and what the options need (the backend names), and
each command imports what it needs when it runs, so ``hltemu --help`` loads neither uproot,
awkward, torch, pythia8mc nor the pipeline, its stages or :mod:`hltemu.simulate`
(tests/test_source.py checks).  Commands that live beside their subsystem
(:data:`LAZY_COMMANDS`) are imported only when run or asked for their own help.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hltemu import __version__
from hltemu.backends import CHOICES

if TYPE_CHECKING:
    from hltemu.config import HLTConfig

#: Commands that live beside their subsystem: name -> (module, attribute, the first paragraph
#: of the command's help, which ``hltemu --help`` shows without importing the module; kept equal
#: to the command's own by tests/test_source.py).
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "generate": ("hltemu.simulate.command", "generate",
                 "Generate EVENTS Pythia 8 events with pileup through the CMS-like toy detector."),
    "derive-jec": ("hltemu.jec.command", "derive_jec",
                   "Derive L1FastJet and L2Relative jet corrections from FILES written by hltemu "
                   "run."),
    "train-doublet-cnn": ("hltemu.cnn_train", "train_doublet_cnn",
                          "Train the doublet CNN on generated FILES; write STEM.json + STEM.npz."),
    "train-jet-regression": ("hltemu.jet_regression_train", "train_jet_regression",
                             "Train the HLT jet-energy regression on FILES written by hltemu "
                             "run; write an .npz."),
    "study": ("hltemu.study.command", "study",
              "Studies of HLT (online) jets against offline jets: response and trigger "
              "turn-ons."),
}


#: Exit status after Ctrl-C (128 + SIGINT, as a shell reports a process killed by SIGINT).
EXIT_INTERRUPTED = 130


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors shown to the user as a one-line message."""
    from hltemu.backends import BackendError
    from hltemu.batch import BatchError
    from hltemu.config import ConfigError
    from hltemu.io import InputError
    from hltemu.outputs import OutputPathError
    from hltemu.pipeline import PipelineError
    from hltemu.scaleout import ScaleOutError

    return (BackendError, PipelineError, ConfigError, InputError, BatchError, ScaleOutError,
            OutputPathError)


def builtin_sample() -> Path:
    """Path of the small ttbar sample shipped with hltemu (``hltemu run`` with no file)."""
    path = Path(str(resources.files("hltemu") / "data" / "sample.root"))
    if not path.is_file():
        raise click.ClickException(
            f"the built-in sample {path} is not installed; give input files: hltemu run FILE.root"
        )
    return path


def _parse_stages(value: str | None) -> list[str] | None:
    if value is None or value.strip().lower() in ("", "all"):
        return None
    return [s.strip() for s in value.split(",") if s.strip()]


def _load_config(path: str | None) -> HLTConfig:
    from hltemu.pipeline import load_config

    return load_config(path or None)


def _print_plan(console: Any, summary: dict) -> None:
    """Print what a run will do (stages, those skipped and why, notes) before it starts."""
    from hltemu import ui

    for line in ui.plan_lines(summary):
        console.print(line)


def _lazy_command_names() -> list[str]:
    """The :data:`LAZY_COMMANDS` that are installed (``generate`` only where
    :mod:`hltemu.simulate` is), found without importing them: a spec of ``hltemu.<name>``
    imports nothing beyond ``hltemu``."""
    return [name for name, (module, _, _) in LAZY_COMMANDS.items()
            if importlib.util.find_spec(".".join(module.split(".")[:2])) is not None]


class LazyGroup(click.Group):
    """A group that imports each of :data:`LAZY_COMMANDS` the first time it is looked up (to run
    it or show its own help); the group's help lists them from their stored summary."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_lazy_command_names()})

    def invoke(self, ctx: click.Context) -> object:
        """Run the command; Ctrl-C (``KeyboardInterrupt``) prints ``interrupted`` and exits
        with :data:`EXIT_INTERRUPTED` (click alone would print ``Aborted!`` and exit 1).  The
        command's outputs have already removed their temporary files on the way out
        (:func:`hltemu.outputs.atomic_output`)."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _lazy_command_names():
            module, attr, _ = LAZY_COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As :meth:`click.Group.format_commands`, but a lazy command not imported yet shows its
        stored summary instead of being imported."""
        rows: list[tuple[str, click.Command | None]] = []
        for name in self.list_commands(ctx):
            cmd = self.commands.get(name)
            if cmd is None and name not in LAZY_COMMANDS:
                continue
            if cmd is not None and cmd.hidden:
                continue
            rows.append((name, cmd))
        if not rows:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in rows)
        with formatter.section("Commands"):
            formatter.write_dl([
                (name, (cmd if cmd is not None else _summary_command(name))
                 .get_short_help_str(limit))
                for name, cmd in rows])


def _summary_command(name: str) -> click.Command:
    """A stand-in command holding a lazy command's stored help summary (shortened by click's
    own rule, :meth:`click.Command.get_short_help_str`), so that listing it imports nothing."""
    return click.Command(name, help=LAZY_COMMANDS[name][2])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hltemu")
def cli() -> None:
    """hltemu: emulate an HLT reconstruction chain on reference, cpu (Numba) or cuda backends."""


@cli.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Show the settings of this TOML config instead of the defaults.")
def info(file: str | None, config_path: str | None) -> None:
    """Versions, usable backends (GPU name or why none), stages and their settings.

    With --config, the file is checked as a run would check it before reading any event (keys
    and types, every file it names, the menu's paths): a broken config exits 1.

    With FILE (a ROOT file), what it holds instead: entries, collections, event identifiers
    (runs, lumi blocks, event numbers, duplicates) and its provenance, the JSON object that
    hltemu generate and hltemu run write into their outputs (settings, versions, command
    line; for generate Pythia's cross-section and the pileup generated)."""
    if file is not None:
        if config_path is not None:
            raise click.UsageError("give FILE or --config, not both")
        _file_info(file)
        return
    from rich.console import Console

    from hltemu import ui
    from hltemu.backends import get_backend, usable_backends
    from hltemu.config import ConfigError, describe
    from hltemu.pipeline import PipelineError, check_config, registered_stages
    from hltemu.profiling import nvtx_available, versions

    console = Console()
    nvtx_state = "on" if nvtx_available() else "off (pip install 'hltemu[nvtx]')"
    console.print(ui.versions_table(f"hltemu {__version__}", versions(), nvtx_state))
    console.print(ui.backends_table(usable_backends(), get_backend("auto").name))

    try:
        cfg = _load_config(config_path)
        check_config(cfg)
    except (ConfigError, PipelineError) as exc:
        raise click.ClickException(str(exc)) from None
    stages = registered_stages()
    console.print(ui.stages_table(stages, cfg))
    console.print(ui.settings_table({name: describe(cfg[name]) for name in stages}))


def _file_info(path: str) -> None:
    """``hltemu info FILE``: the file's table (:func:`hltemu.ui.file_table`) and provenance."""
    import json

    from rich.console import Console

    from hltemu import io, ui

    try:
        collections = io.common_collections([path])
        entries = io.count_events([path])
        ids = io.event_id_summary(path)
        provenance = io.read_provenance(path)
    except io.InputError as exc:
        raise click.ClickException(str(exc)) from None
    console = Console()
    console.print(ui.file_table(path, entries, collections, ids))
    if provenance is None:
        console.print(f"{path}: no provenance (no {io.PROVENANCE_KEY!r} object: not written by "
                      "hltemu generate or run, or written before they recorded it)")
        return
    console.print(f"[bold]provenance[/bold] ({provenance.get('kind', 'unknown kind')}):")
    console.print_json(json.dumps(provenance))


@cli.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--backend", "-b", type=click.Choice(CHOICES), default="auto", show_default=True,
              help="Where to run: reference (NumPy oracle), cpu (Numba), cuda (GPU), auto.")
@click.option("--stages", "-s", default=None,
              help="Comma-separated stages in order (default: every stage the input can feed).")
@click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True,
              help="Events per batch.")
@click.option("--max-events", "-n", type=click.IntRange(min=-1), default=None,
              help="Stop after this many events (-1: all).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default="hltemu-output.root",
              show_default=True, help="ROOT file for the products.")
@click.option("--report", "-r", "report_path", type=click.Path(dir_okay=False),
              default="hltemu-report.json", show_default=True,
              help="JSON file for the per-stage throughput report.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML file with stage settings (see `hltemu info`).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar over events.")
@click.option("--warmup/--no-warmup", default=True, show_default=True,
              help="Compile the kernels on the first event before timing (cpu, cuda).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Run one task per file on a local Dask cluster of this many worker "
                   "processes; each file gets its own output (OUTPUT-<i>-<file>.root).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run one task per file on the Dask cluster of this scheduler "
                   "(tcp://host:8786); outputs as with --workers.")
@click.option("--drop", multiple=True, metavar="PATTERN",
              help="Leave the products matching this shell-style pattern out of the output "
                   "(e.g. --drop 'pfcandidates' --drop '*doublets'); repeatable.")
@click.option("--keep", multiple=True, metavar="PATTERN",
              help="Write the products matching this pattern whole, even if a --drop matches "
                   "them; the doublet collections are written as per-event counts only "
                   "unless kept (--keep doublets, --keep '*').")
@click.option("--compression", default="zstd:1", show_default=True, metavar="ALGO[:LEVEL]",
              help="Output compression: zstd, zlib, lz4 or lzma, with a level (zstd:3), or "
                   "none.")
@click.option("--pipeline/--no-pipeline", default=True, show_default=True,
              help="Read the next batch and write the previous ones while the stages run on "
                   "the current one (threads; same output). --no-pipeline runs them in "
                   "sequence.")
@click.option("--timeline", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Write the run's timeline to FILE: host start and end of every read, stage "
                   "and write per batch, as a Chrome trace JSON (open it in ui.perfetto.dev). "
                   "A local run only.")
def run(files: tuple[str, ...], backend: str, stages: str | None, batch_size: int,
        max_events: int | None, output: str, report_path: str, config_path: str | None,
        progress: bool, warmup: bool, workers: int | None, scheduler: str | None,
        keep: tuple[str, ...], drop: tuple[str, ...], timeline: str | None,
        compression: str, pipeline: bool) -> None:
    """Run the HLT chain over FILES (default: the built-in ttbar sample)."""
    import warnings

    from rich.console import Console

    from hltemu.outputs import NoOutputWarning, check_outputs
    from hltemu.pipeline import run_files

    console = Console()
    inputs = list(files) or [str(builtin_sample())]
    distributed = workers is not None or scheduler is not None
    if max_events == -1:
        max_events = None
    if distributed and max_events is not None:
        raise click.UsageError("--max-events applies to a local run, not with --workers or "
                               "--scheduler (a Dask task is a whole file)")
    if distributed and timeline is not None:
        raise click.UsageError("--timeline records a local run, not one with --workers or "
                               "--scheduler")
    caught: list[warnings.WarningMessage] = []
    try:
        # the config file is an input too: no output may replace it
        check_outputs([("output file", None if distributed else output),
                       ("report file", report_path), ("timeline file", timeline)],
                      [config_path])
        cfg = _load_config(config_path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NoOutputWarning)
            if distributed:
                from hltemu.scaleout import run_files_dask

                report, written = run_files_dask(
                    inputs, backend=backend, stages=_parse_stages(stages), config=cfg,
                    batch_size=batch_size, output=output, report_path=report_path,
                    n_workers=workers, scheduler=scheduler, progress=progress, warmup=warmup,
                    on_plan=lambda p: _print_plan(console, p.summary()), keep=keep, drop=drop,
                    compression=compression, pipeline=pipeline,
                )
                output = ", ".join(map(str, written))
            else:
                report = run_files(
                    inputs, backend=backend, stages=_parse_stages(stages), config=cfg,
                    batch_size=batch_size, max_events=max_events, output=output,
                    report_path=report_path, progress=progress, warmup=warmup,
                    on_plan=lambda p: _print_plan(console, p.summary()), keep=keep, drop=drop,
                    timeline=timeline, pipeline=pipeline, compression=compression,
                )
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        for w in caught:  # a run of 0 events writes nothing: one line says so; others as usual
            if issubclass(w.category, NoOutputWarning):
                click.echo(f"warning: {w.message}", err=True)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
    from hltemu import ui

    console.print(report.table())
    trigger = ui.trigger_table(report)
    if trigger is not None:
        console.print(trigger)
    for group, counts in report.counters.items():
        if group in ui.TRIGGER_GROUPS:
            continue
        console.print(f"[bold]{group}[/bold]")
        for key, value in counts.items():
            frac = value / report.events if report.events else float("nan")
            console.print(f"  {key:<32s} {int(value):>8d}  ({100 * frac:.2f}%)")
    if report.events:
        console.print(f"output: {output}\nreport: {report_path}")
        if timeline is not None:
            console.print(f"timeline: {timeline}")


@cli.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--backends", default="reference,cpu", show_default=True,
              help="Comma-separated backends to compare (first one is the baseline).")
@click.option("--stages", "-s", default=None, help="Comma-separated stages (default: all).")
@click.option("--events", "-n", type=click.IntRange(min=1), default=100, show_default=True,
              help="Events in the batch; tiled from the input's events when it holds fewer.")
@click.option("--pileup", type=click.FloatRange(min=0), default=None, metavar="P",
              help="Refuse an input whose pileup (provenance, else the mean of "
                   "Event_n_pileup) is not P, and label the result with it.")
@click.option("--tile/--no-tile", default=True, show_default=True,
              help="Repeat the input's events to reach --events (--no-tile: refuse instead).")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed repetitions per backend (after the warm-ups).")
@click.option("--warmups", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed passes per backend before the repeats (kernels compiled).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="Write the figures as JSON to FILE: per backend and stage "
              "median and spread of seconds per event, events/s, speed-ups, machine, inputs.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar (stderr) over warm-ups and repeats.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML file with stage settings (see `hltemu info`).")
def bench(files: tuple[str, ...], backends: str, stages: str | None, events: int,
          pileup: float | None, tile: bool, repeat: int, warmups: int, json_path: str | None,
          progress: bool, config_path: str | None) -> None:
    """Time the chain on several backends over the same batch and print ratios.

    FILES default to the built-in ttbar sample (pileup 50).  The batch is the first --events
    events, repeated in order when the files hold fewer (the JSON records the tiling), so
    that one command per pileup measures the cost's growth:

    \b
        hltemu bench FILE_PU200 --events 500 --pileup 200 --json pu200.json"""
    from rich.console import Console

    from hltemu.bench import run_bench

    inputs = list(files) or [str(builtin_sample())]
    try:
        result = run_bench(
            inputs, backends, stages=_parse_stages(stages), n_events=events, repeat=repeat,
            config=_load_config(config_path), warmups=warmups, pileup=pileup, tile=tile,
            progress=progress, json_path=json_path, config_path=config_path,
        )
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    console = Console()
    for line in result.summary_lines():
        console.print(line, highlight=False)
    for table in result.tables():
        console.print(table)
    if json_path is not None:
        console.print(f"json: {json_path}", highlight=False)


def main() -> None:
    """Entry point of the ``hltemu`` script."""
    cli(prog_name="hltemu")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
