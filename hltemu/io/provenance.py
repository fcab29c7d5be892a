"""Provenance: how a file was made, stored inside it as one JSON object.

:class:`~hltemu.io.OutputWriter` writes the provenance it was given (``provenance=`` or
:meth:`~hltemu.io.OutputWriter.set_provenance`) when it closes the file, as the ``TObjString``
:data:`~hltemu.io.schema.PROVENANCE_KEY` (``hltemu_provenance``) beside the tree; ROOT shows
it as a string, uproot reads it as ``str(f["hltemu_provenance"])``, :func:`read_provenance`
as a dict and ``hltemu info FILE.root`` prints it.

Every provenance starts with :func:`provenance_header`: ``format``
(:data:`PROVENANCE_FORMAT`), ``kind`` (``"generate"`` for ``hltemu generate``, ``"run"`` for
``hltemu run``), ``created_utc`` (ISO 8601), ``command`` (the command line) and ``versions``
(Python and the packages that make the content).  The rest depends on the kind: a generated
file records its settings, the detector, Pythia's cross-section and the pileup generated
(:func:`hltemu.simulate.record.generation_provenance`); a run output records its config,
stages and inputs (:func:`input_provenance`: each input's entries, event identifiers and own
provenance).  Values are plain JSON: numbers (finite), strings, booleans, ``null``, lists and
objects; a unit is part of the key (``sigma_gen_mb``) or given beside it (``units``).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hltemu.io.errors import InputError, OutputError
from hltemu.io.layout import _inspect, _open_tree, open_root
from hltemu.io.schema import EVENT, EVENT_ID_COLUMNS, PROVENANCE_KEY, TREE_NAME

#: Version of the provenance layout (the ``format`` entry): bumped when a key changes meaning.
PROVENANCE_FORMAT = "hltemu-provenance/1"

#: Packages whose versions every provenance records (those installed).
BASE_PACKAGES: tuple[str, ...] = ("hltemu", "numpy", "awkward", "uproot")


def _json_value(value: Any, where: str) -> Any:
    """``value`` as plain JSON types; :class:`OutputError` naming ``where`` (a key path)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise OutputError(f"{where} is {value}, which JSON cannot hold; use None")
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise OutputError(f"{where} has the key {k!r}, not a string")
            out[k] = _json_value(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise OutputError(f"{where} is a {type(value).__name__} ({value!r:.60}), which JSON cannot "
                      "hold; give numbers, strings, booleans, None, lists or dicts")


def dumps_provenance(provenance: Mapping[str, Any], what: str = "provenance") -> str:
    """``provenance`` as the JSON text written into a file (see the module docstring for the
    types allowed); :class:`OutputError` naming ``what`` and the key path otherwise."""
    if not isinstance(provenance, Mapping):
        raise OutputError(f"{what} must be a dict, got {type(provenance).__name__}")
    return json.dumps(_json_value(provenance, what), allow_nan=False)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command line of this process (``argv``: default :data:`sys.argv`), shell-quoted,
    with the program's path shortened to its name (``hltemu run a.root ...``)."""
    args = list(sys.argv if argv is None else argv)
    if args:
        args[0] = Path(args[0]).name
    return shlex.join(args)


def package_versions(packages: Iterable[str] = ()) -> dict[str, str]:
    """``python`` and the versions of :data:`BASE_PACKAGES` and ``packages`` that are
    installed (by distribution name, e.g. ``pythia8mc``)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in dict.fromkeys([*BASE_PACKAGES, *packages]):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def provenance_header(kind: str, command: str | None = None, packages: Iterable[str] = ()
                      ) -> dict[str, Any]:
    """The entries every provenance starts with: ``format``, ``kind`` (``"generate"``,
    ``"run"``), ``created_utc`` (now, ISO 8601 to the second), ``command`` (default: this
    process's :func:`command_line`) and ``versions`` (:func:`package_versions` of
    ``packages``)."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return {
        "format": PROVENANCE_FORMAT,
        "kind": kind,
        "created_utc": now.isoformat().replace("+00:00", "Z"),
        "command": command_line() if command is None else command,
        "versions": package_versions(packages),
    }


def read_provenance(path: str | os.PathLike) -> dict[str, Any] | None:
    """The provenance stored in the ROOT file ``path`` (:data:`PROVENANCE_KEY`), or ``None``
    when it has none (a file not written by hltemu, or written before provenance existed).

    Raises :class:`InputError` naming the file for a missing, non-ROOT or truncated file, and
    for a provenance object that is not a JSON object.
    """
    path = os.fspath(path)
    f = open_root(path)
    with f:
        if PROVENANCE_KEY not in f.keys(cycle=False):
            return None
        try:
            value = json.loads(str(f[PROVENANCE_KEY]))
        except Exception as exc:
            raise InputError(f"input file {path}: its {PROVENANCE_KEY!r} object is not JSON: "
                             f"{exc}") from None
    if not isinstance(value, dict):
        raise InputError(f"input file {path}: its {PROVENANCE_KEY!r} object is not a JSON "
                         f"object but a {type(value).__name__}")
    return value


def left_out_hint(path: str | os.PathLike, names: Sequence[str]) -> str:
    """Why the ``hltemu run`` output ``path`` lacks (or holds only the counts of) the
    collections ``names``, from its provenance: ``""`` when the run did not leave them out,
    else a sentence naming them and the ``--keep`` that restores them."""
    prov = read_provenance(path) or {}
    summary = prov.get("plan") if prov.get("kind") == "run" else None
    if not isinstance(summary, dict):
        return ""
    dropped = [n for n in names if n in summary.get("not_written", ())]
    counted = [n for n in names if n in summary.get("counts_only", ())]
    parts = []
    if dropped:
        parts.append(f"the run that wrote it left out {', '.join(map(repr, dropped))} "
                     "(its --drop)")
    if counted:
        parts.append(f"it wrote only the per-event counts of {', '.join(map(repr, counted))}")
    if not parts:
        return ""
    keep = " ".join(f"--keep {n}" for n in (*dropped, *counted))
    return f"{'; '.join(parts)}: rerun it with {keep}"


def event_id_summary(path: str | os.PathLike, tree: str = TREE_NAME) -> dict[str, Any] | None:
    """What the event identifiers of ``path`` hold (``None``: the file has none of
    ``run``, ``luminosityBlock``, ``event``, nor a legacy ``Event_event``).

    Returns ``{"events": entries, "columns": [identifier columns present], "runs": [up to 20
    distinct run numbers, ascending], "n_runs", "luminosityBlock": [min, max], "event": [min,
    max], "duplicates": entries whose identifiers (those present) an earlier entry already
    has}``; absent identifiers are left out.  The identifiers are the columns of the ``Event``
    collection (:data:`~hltemu.io.schema.EVENT_ID_COLUMNS`), read whole.
    """
    path = os.fspath(path)
    lay = _inspect(path, tree)
    cl = lay.collections.get(EVENT)
    if cl is None or not cl.per_event or cl.problems:
        return None
    cols = {c: cl.columns[c] for c in EVENT_ID_COLUMNS if c in cl.columns}
    if not cols:
        return None
    with _open_tree(path, tree) as (_, t):
        try:
            arrays = t.arrays([c.branch for c in cols.values()], library="np")
        except Exception as exc:
            raise InputError(f"input file {path}, tree {tree!r}: cannot read the event "
                             f"identifiers {[c.branch for c in cols.values()]}: {exc}") from None
    values = {name: np.asarray(arrays[c.branch]).astype(np.uint64, copy=False)
              for name, c in cols.items()}
    out: dict[str, Any] = {"events": lay.entries, "columns": list(values)}
    if lay.entries == 0:
        out["duplicates"] = 0
        return out
    if "run" in values:
        runs = np.unique(values["run"])
        out["runs"] = [int(r) for r in runs[:20]]
        out["n_runs"] = int(runs.size)
    for name in ("luminosityBlock", "event"):
        if name in values:
            out[name] = [int(values[name].min()), int(values[name].max())]
    keys = [values[c] for c in reversed(list(values))]
    order = np.lexsort(keys)
    stacked = np.stack([v[order] for v in values.values()])
    same = np.all(stacked[:, 1:] == stacked[:, :-1], axis=0)
    out["duplicates"] = int(same.sum())
    return out


def input_provenance(paths: Sequence[str | os.PathLike], tree: str = TREE_NAME
                     ) -> list[dict[str, Any]]:
    """One entry per input file, for a run's provenance: ``{"file": path, "entries",
    "event_ids": event_id_summary (or None), "provenance": the file's own provenance (or
    None)}``.  Raises :class:`InputError` as :func:`read_provenance` does."""
    out = []
    for p in paths:
        path = os.fspath(p)
        out.append({
            "file": path,
            "entries": _inspect(path, tree).entries,
            "event_ids": event_id_summary(path, tree),
            "provenance": read_provenance(path),
        })
    return out


def provenance_pileup(provenance: Mapping[str, Any] | None) -> float | None:
    """The mean pileup a file was made with, from its provenance: a generated file's
    ``pileup.mean_requested`` (the Poisson mean ``hltemu generate --pileup`` drew from), or
    for an ``hltemu run`` output its inputs' value when they all record the same one;
    ``None`` when the provenance does not tell."""
    if not isinstance(provenance, Mapping):
        return None
    pileup = provenance.get("pileup")
    if isinstance(pileup, Mapping):
        mu = pileup.get("mean_requested")
        if isinstance(mu, (int, float)) and not isinstance(mu, bool) and math.isfinite(mu) \
                and mu >= 0:
            return float(mu)
    inputs = provenance.get("inputs")
    if provenance.get("kind") == "run" and isinstance(inputs, list) and inputs:
        values = {provenance_pileup(i.get("provenance") if isinstance(i, Mapping) else None)
                  for i in inputs}
        if len(values) == 1 and None not in values:
            return values.pop()
    return None


def input_pileup(path: str | os.PathLike, tree: str = TREE_NAME) -> dict[str, Any]:
    """The mean pileup of the input file ``path``: ``{"file", "mu", "source", "events"}``.

    ``source`` is ``"provenance"`` (:func:`provenance_pileup` of the file's provenance: the
    generated Poisson mean), else ``"Event_n_pileup"`` (the mean of the file's
    ``Event_n_pileup`` branch over its ``events`` entries), else ``None`` with ``mu`` ``None``
    (a file with neither, e.g. CMS NanoAOD, or an empty file without provenance).  Raises
    :class:`InputError` naming the file when it cannot be read.
    """
    path = os.fspath(path)
    lay = _inspect(path, tree)
    out: dict[str, Any] = {"file": path, "mu": None, "source": None, "events": lay.entries}
    mu = provenance_pileup(read_provenance(path))
    if mu is not None:
        out.update(mu=mu, source="provenance")
        return out
    cl = lay.collections.get(EVENT)
    col = cl.columns.get("n_pileup") if cl is not None and cl.per_event else None
    if col is None or cl.problems or lay.entries == 0:
        return out
    with _open_tree(path, tree) as (_, t):
        try:
            n_pu = np.asarray(t[col.branch].array(library="np"), dtype=np.float64)
        except Exception as exc:
            raise InputError(f"input file {path}, tree {tree!r}: cannot read {col.branch!r}: "
                             f"{exc}") from None
    if n_pu.ndim != 1 or not np.all(np.isfinite(n_pu) & (n_pu >= 0)):
        raise InputError(f"input file {path}: {col.branch!r} must hold one finite count >= 0 "
                         "per event")
    out.update(mu=float(n_pu.mean()), source="Event_n_pileup")
    return out


def generation_run(prov: dict[str, Any]) -> dict[str, Any]:
    """The provenance of the run that read the generated file: ``prov`` itself, or, for a run
    over a run output (stages rerun on it, one input each), the innermost such run."""
    for _ in range(100):  # a chain of runs, not a loop
        inputs = prov.get("inputs") or []
        inner = inputs[0].get("provenance") if len(inputs) == 1 else None
        if not (isinstance(inner, dict) and inner.get("kind") == "run"):
            break
        prov = inner
    return prov
