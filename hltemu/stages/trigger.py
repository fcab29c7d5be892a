"""Stage ``trigger``: the paths of a trigger menu decide on every event.

A menu is a TOML file of ``[[path]]`` tables (the default, ``hltemu/data/menu.toml``, documents
the format)::

    [[path]]
    name = "HLT_CaloJet80"     # a valid branch name, unique in the menu
    type = "single_jet"        # single_jet | multi_jet | ht | doublets | pixeltracks |
                               # pixelvertices
    pt_min = 80.0              # GeV
    eta_max = 3.0
    prescale = 1               # accept every N-th event the path sees; 0 disables the path

Kinds and their keys (``prescale`` everywhere, default 1):

``single_jet``  ``pt_min`` [GeV], ``eta_max`` (default 3.0, the calorimeter's acceptance): a
                jet with pT >= pt_min and |eta| <= eta_max; ``jets`` (every jet kind; default
                ``corrected_jets``): the jet collection cut on, e.g. ``regressed_jets``
                (stage ``jet_regression``)
``multi_jet``   ``n_min``, ``pt_min``, ``eta_max``: at least n_min such jets
``ht``          ``ht_min`` [GeV], ``jet_pt_min`` [GeV], ``eta_max``: scalar sum of the pT of
                jets passing jet_pt_min and eta_max >= ht_min
``doublets``    ``n_min``, ``collection`` (default ``doublets``): at least n_min objects
                (pixel doublets) in that collection
``pixeltracks`` ``n_min``, ``pt_min`` [GeV], ``eta_max``, ``min_hits`` (default 3: every
                pixel track), ``dz_max`` [cm] (default: no cut): at least n_min pixel tracks
                with pT >= pt_min, |eta| <= eta_max, n_hits >= min_hits and, when dz_max is
                given, |z0 - z(PV)| <= dz_max, PV the event's primary pixel vertex (row 0 of
                ``pixelvertices``; an event without one has no such track)
``pixelvertices`` ``n_min``, ``min_tracks`` (default 0: every vertex): at least n_min pixel
                vertices of at least min_tracks tracks

For example, a high-multiplicity path (CMS's ``HLT_PixelTracks_Multiplicity`` family cuts
alike) on a chain that runs ``doublets, pixeltracks, pixelvertices``::

    [[path]]
    name = "HLT_PixelTracks40"
    type = "pixeltracks"
    n_min = 40
    pt_min = 0.4        # GeV
    eta_max = 2.4
    min_hits = 4        # quadruplets and longer
    dz_max = 0.12       # cm from the primary pixel vertex

Jets are ``corrected_jets`` (stage ``jec``) unless a path names others with ``jets``.  The
stage's needs come from its menu: each jet path's jets, the counted collection for
``doublets`` paths, ``pixeltracks`` for ``pixeltracks`` paths (and ``pixelvertices`` when
they cut on dz), ``pixelvertices`` for ``pixelvertices`` paths.  Before any event is read the
planner drops the menu's paths whose collection the chain will not have, with a note (and
``dropped_paths`` in the report); ``any_path`` is the OR of the paths that run.  A path named
in ``[trigger] paths`` that cannot run is an error, as is a chain where no path can run.

Adds ``trigger`` (decisions after the prescalers: what the HLT keeps) and ``trigger_pre`` (the
same before the prescalers: each path's filter alone, for rates and efficiencies free of
prescales): one row per event, one bool column per path, plus ``any_path`` (the OR).  The run
report counts both per path ("trigger accepts", "trigger accepts before prescale"), and
``hltemu run`` prints them with each path's prescale.  Decisions are discrete and identical on every
backend (HT is summed in the same order everywhere).
"""

from __future__ import annotations

import functools
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from hltemu.batch import Collection, EventBatch
from hltemu.config import BUILTIN_PREFIX, ConfigError, param, shipped_file
from hltemu.ops import THREADS_PER_BLOCK, blocks
from hltemu.pipeline import CannotRun, PipelineError, Planned, Stage, register


@dataclass(frozen=True)
class TriggerConfig:
    """Stage ``trigger``: per-event decisions of the paths of a trigger menu (TOML).

    The menu lists paths (single jet pT, HT, n jets above pT, pixel-doublet, pixel-track and
    pixel-vertex multiplicities) with
    thresholds and prescales; see ``hltemu/data/menu.toml``.  ``builtin:NAME`` is a menu shipped
    in ``hltemu/data``.
    """

    menu: str = param("builtin:menu.toml", "", "trigger menu TOML file", path=True)
    paths: tuple = param((), "", "names of the menu paths to run (empty: every path)")


#: Column of the ``trigger`` collection holding the OR of all paths.
ANY_PATH = "any_path"
#: The decisions after the prescalers (what the HLT keeps) and before them (the filters alone).
OUTPUT, OUTPUT_PRE = "trigger", "trigger_pre"

#: The jets a jet path cuts on unless its ``jets`` key names others.
JETS = "corrected_jets"
#: The path kinds that cut on jets.
JET_KINDS: tuple[str, ...] = ("single_jet", "multi_jet", "ht")
#: Default ``eta_max`` of jet paths: the calorimeter's acceptance (|eta| < 3 in every layer of
#: the default geometry, ``DetectorConfig.calo_eta_max``); no jet is found beyond it.
DEFAULT_ETA_MAX = 3.0
#: Path kind -> (required keys, optional keys with defaults).
PATH_KINDS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "single_jet": (("pt_min",), {"eta_max": DEFAULT_ETA_MAX, "jets": JETS}),
    "multi_jet": (("n_min", "pt_min"), {"eta_max": DEFAULT_ETA_MAX, "jets": JETS}),
    "ht": (("ht_min", "jet_pt_min"), {"eta_max": DEFAULT_ETA_MAX, "jets": JETS}),
    "doublets": (("n_min",), {"collection": "doublets"}),
    "pixeltracks": (("n_min", "pt_min", "eta_max"), {"min_hits": 3, "dz_max": math.inf}),
    "pixelvertices": (("n_min",), {"min_tracks": 0}),
}
#: The collections pixel-track and pixel-vertex paths read (stages pixeltracks, pixelvertices).
TRACKS, VERTICES = "pixeltracks", "pixelvertices"
_COMMON_KEYS = {"name": None, "type": None, "prescale": 1}
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class TriggerPath:
    """One path of a menu.

    ``pt_min`` is the jet threshold [GeV] (for ``ht`` paths, the per-jet threshold
    ``jet_pt_min``; for ``pixeltracks`` paths the track threshold); ``ht_min`` [GeV];
    ``n_min`` the jet or object multiplicity; ``collection`` the collection a ``doublets``
    path counts; ``min_hits`` the hits of a counted pixel track; ``dz_max`` [cm] its distance
    in z from the primary pixel vertex (``inf``: no cut); ``min_tracks`` the tracks of a
    counted pixel vertex; ``jets`` the collection a jet path cuts on.
    """

    name: str
    kind: str
    pt_min: float = 0.0
    eta_max: float = math.inf
    ht_min: float = 0.0
    n_min: int = 1
    prescale: int = 1
    collection: str = ""
    min_hits: int = 0
    dz_max: float = math.inf
    min_tracks: int = 0
    jets: str = ""


def builtin_menu(name: str) -> Path:
    """A menu shipped in ``hltemu/data``."""
    return shipped_file(BUILTIN_PREFIX + name, "data", "menu", (".toml",))


def _menu_path(spec: str) -> Path:
    return shipped_file(spec, "data", "menu", (".toml",))


def load_menu(spec: str) -> tuple[TriggerPath, ...]:
    """Read a menu (a path, or ``builtin:NAME``); errors name the file, the path and the key."""
    path = _menu_path(spec)
    try:
        stamp = path.stat().st_mtime
    except FileNotFoundError:
        raise ConfigError(f"trigger menu {str(path)!r} does not exist") from None
    return _load_menu_cached(str(path), stamp)


@functools.lru_cache(maxsize=16)
def _load_menu_cached(path: str, stamp: float) -> tuple[TriggerPath, ...]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_menu(data, path)


def parse_menu(data: Mapping[str, Any], source: str = "<menu>") -> tuple[TriggerPath, ...]:
    """Paths from a parsed menu (``{"path": [{...}, ...]}``), checked key by key."""
    extra = sorted(set(data) - {"path"})
    if extra:
        raise ConfigError(f"{source}: unknown top-level key(s) {extra}; a menu has [[path]] "
                          "tables only")
    tables = data.get("path", [])
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{source}: no [[path]] tables")
    paths: list[TriggerPath] = []
    for i, table in enumerate(tables):
        where = f"{source}: path #{i + 1}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: expected a table, got {table!r}")
        name = table.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(f"{where}: 'name' must be a valid identifier (letters, digits, _), "
                              f"got {name!r}")
        where = f"{source}: path {name!r}"
        if name == ANY_PATH or name in (p.name for p in paths):
            why = "reserved" if name == ANY_PATH else "used twice"
            raise ConfigError(f"{where}: the name is {why}")
        kind = table.get("type")
        if kind not in PATH_KINDS:
            raise ConfigError(f"{where}: 'type' = {kind!r}; choices: {', '.join(PATH_KINDS)}")
        required, optional = PATH_KINDS[kind]
        allowed = {*_COMMON_KEYS, *required, *optional}
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown} for type {kind!r}; valid keys: "
                              f"{', '.join(sorted(allowed))}")
        missing = [k for k in required if k not in table]
        if missing:
            raise ConfigError(f"{where}: missing key(s) {missing} for type {kind!r}")
        values = {**optional, "prescale": 1,
                  **{k: table[k] for k in table if k not in ("name", "type")}}
        paths.append(_make_path(name, kind, values, where))
    return tuple(paths)


def _number(values: Mapping[str, Any], key: str, where: str, integer: bool = False) -> Any:
    v = values[key]
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or v < 0:
        kind = "a non-negative integer" if integer else "a non-negative number"
        raise ConfigError(f"{where}: {key!r} must be {kind}, got {v!r}")
    return int(v) if integer else float(v)


def _make_path(name: str, kind: str, values: Mapping[str, Any], where: str) -> TriggerPath:
    prescale = _number(values, "prescale", where, integer=True)
    if kind == "doublets":
        coll = values["collection"]
        if not isinstance(coll, str) or not coll:
            raise ConfigError(f"{where}: 'collection' must be a collection name, got {coll!r}")
        return TriggerPath(name, kind, n_min=_number(values, "n_min", where, True),
                           prescale=prescale, collection=coll)
    if kind == "pixeltracks":
        dz_max = _number(values, "dz_max", where)
        if dz_max == 0.0 or math.isnan(dz_max):
            raise ConfigError(f"{where}: 'dz_max' must be a positive distance [cm] (leave it "
                              f"out for no cut), got {values['dz_max']!r}")
        return TriggerPath(name, kind, pt_min=_number(values, "pt_min", where),
                           eta_max=_number(values, "eta_max", where),
                           n_min=_number(values, "n_min", where, True), prescale=prescale,
                           min_hits=_number(values, "min_hits", where, True), dz_max=dz_max)
    if kind == "pixelvertices":
        return TriggerPath(name, kind, n_min=_number(values, "n_min", where, True),
                           prescale=prescale,
                           min_tracks=_number(values, "min_tracks", where, True))
    eta_max = _number(values, "eta_max", where)
    jets = values["jets"]
    if not isinstance(jets, str) or not _NAME_RE.match(jets):
        raise ConfigError(f"{where}: 'jets' must be a jet collection's name (e.g. "
                          f"{JETS!r}, 'regressed_jets'), got {jets!r}")
    if kind == "ht":
        return TriggerPath(name, kind, pt_min=_number(values, "jet_pt_min", where),
                           eta_max=eta_max, ht_min=_number(values, "ht_min", where),
                           prescale=prescale, jets=jets)
    n_min = _number(values, "n_min", where, True) if kind == "multi_jet" else 1
    return TriggerPath(name, kind, pt_min=_number(values, "pt_min", where), eta_max=eta_max,
                       n_min=n_min, prescale=prescale, jets=jets)


def menu_paths(cfg: TriggerConfig) -> tuple[TriggerPath, ...]:
    """The menu's paths selected by ``cfg.paths`` (all when empty), in menu order."""
    paths = load_menu(cfg.menu)
    if not cfg.paths:
        return paths
    names = [p.name for p in paths]
    unknown = [p for p in cfg.paths if p not in names]
    if unknown:
        raise ConfigError(f"[trigger] paths: {unknown} not in menu {cfg.menu!r}; it has "
                          f"{', '.join(names)}")
    return tuple(p for p in paths if p.name in cfg.paths)


def jet_collection(path: TriggerPath) -> str:
    """The jet collection a jet path cuts on (:data:`JETS` unless its ``jets`` key says)."""
    return path.jets or JETS


def path_needs(path: TriggerPath) -> tuple[str, ...]:
    """The collections ``path`` reads: its counted collection, the pixel tracks (and vertices
    when it cuts on dz), the pixel vertices, or the jets."""
    if path.kind == "doublets":
        return (path.collection,)
    if path.kind == "pixeltracks":
        return (TRACKS, VERTICES) if math.isfinite(path.dz_max) else (TRACKS,)
    if path.kind == "pixelvertices":
        return (VERTICES,)
    return (jet_collection(path),)


def counted_only(cfg: TriggerConfig) -> tuple[str, ...]:
    """The needs of which the selected paths read only the per-event counts: the collections
    of ``doublets`` paths (so a rerun on ``hltemu run``'s default output, which holds the
    doublets' counts only, still decides them), unless a path of another kind reads them too."""
    paths = menu_paths(cfg)
    counted = {p.collection for p in paths if p.kind == "doublets"}
    whole = {n for p in paths if p.kind != "doublets" for n in path_needs(p)}
    return tuple(sorted(counted - whole))


def path_summary(path: TriggerPath) -> dict[str, Any]:
    """A path as its menu table states it (name, type, its kind's keys, prescale), for the run
    report and provenance."""
    keys = {"single_jet": ("pt_min", "eta_max"), "multi_jet": ("n_min", "pt_min", "eta_max"),
            "ht": ("ht_min", "pt_min", "eta_max"), "doublets": ("n_min", "collection"),
            "pixeltracks": ("n_min", "pt_min", "eta_max", "min_hits", "dz_max"),
            "pixelvertices": ("n_min", "min_tracks")}
    out: dict[str, Any] = {"name": path.name, "type": path.kind}
    for key in keys[path.kind]:
        if key == "dz_max" and not math.isfinite(path.dz_max):
            continue  # no cut: the key was left out of the menu
        out["jet_pt_min" if path.kind == "ht" and key == "pt_min" else key] = getattr(path, key)
    if path.kind in JET_KINDS and jet_collection(path) != JETS:
        out["jets"] = path.jets
    out["prescale"] = path.prescale
    return out


def needs(cfg: TriggerConfig) -> tuple[str, ...]:
    """The stage's needs: what the selected paths of the menu read (the menu is read once)."""
    return tuple(dict.fromkeys(n for p in menu_paths(cfg) for n in path_needs(p)))


def _makers(name: str) -> str:
    from hltemu.pipeline import registered_stages

    makers = [s.name for s in registered_stages().values() if name in s.adds]
    return f"stage {' or '.join(map(repr, makers))}" if makers else "no stage"


def plan(cfg: TriggerConfig, available: frozenset[str], inputs: tuple[str, ...] = ()
         ) -> Planned:
    """Read and check the menu before any event; keep the paths whose collections the chain
    will have.  A path left out is a note and a ``dropped_paths`` fact when the menu's paths
    are taken by default, an error when ``[trigger] paths`` names it; no path left is
    :class:`~hltemu.pipeline.CannotRun`.  The facts also give each kept path's ``prescales``
    (for the run's trigger table)."""
    paths = menu_paths(cfg)
    missing = {p.name: [n for n in path_needs(p) if n not in available] for p in paths}
    dropped = [p for p in paths if missing[p.name]]
    menu = {"menu_file": str(_menu_path(cfg.menu))}
    if not dropped:
        return Planned(cfg, facts={**menu, "paths": [path_summary(p) for p in paths],
                                   "prescales": {p.name: p.prescale for p in paths}})
    why = {p.name: ", ".join(f"{n!r} (made by {_makers(n)})" for n in missing[p.name])
           for p in dropped}
    if cfg.paths:
        raise PipelineError(
            "[trigger] paths names " + "; ".join(f"{n}, which needs {w}" for n, w in why.items())
            + f", not in the input or made by an earlier stage (the chain will have "
            f"{sorted(available)}); add the stage or leave the path out")
    kept = [p for p in paths if not missing[p.name]]
    if not kept:
        raise CannotRun(f"no path of menu {cfg.menu!r} can run: "
                        + "; ".join(f"{n} needs {w}" for n, w in why.items()))
    notes = tuple(f"trigger: path {n} dropped: needs {w}, which this chain does not have"
                  for n, w in why.items())
    return Planned(replace(cfg, paths=tuple(p.name for p in kept)), notes,
                   {**menu, "paths": [path_summary(p) for p in kept],
                    "prescales": {p.name: p.prescale for p in kept},
                    "dropped_paths": list(why)})


def prescaler_pass(entries: np.ndarray, prescale: int) -> np.ndarray:
    """CMS prescaler with offset 0: event number ``entry + 1`` passes when divisible."""
    if prescale <= 0:
        return np.zeros(entries.shape[0], dtype=bool)
    return (entries + 1) % prescale == 0


class Decisions(NamedTuple):
    """Per-path decisions, path name -> bool ``(n_events,)``: ``accept`` after the prescaler
    (what the HLT keeps), ``before_prescale`` the path's filter alone (for rates and
    efficiencies free of prescales)."""

    accept: dict[str, Any]
    before_prescale: dict[str, Any]


class PixelObjects(NamedTuple):
    """What pixel-track and pixel-vertex paths read, as host or device arrays: tracks ``pt``
    [GeV], ``eta``, ``n_hits``, ``z0`` [cm] with CSR ``track_offsets``; vertices ``z`` [cm]
    and ``n_tracks`` with ``vertex_offsets`` (primary vertex first in every event).  A
    collection the chain does not have is empty in every event."""

    pt: Any
    eta: Any
    n_hits: Any
    z0: Any
    track_offsets: Any
    vertex_z: Any
    vertex_n_tracks: Any
    vertex_offsets: Any


def _pixel_tracks_passing(p: TriggerPath, pix: PixelObjects, n: int) -> np.ndarray:
    """Pixel tracks per event that pass path ``p``'s cuts (NumPy)."""
    event = np.repeat(np.arange(n), np.diff(pix.track_offsets))
    good = ((pix.pt >= p.pt_min) & (np.abs(pix.eta) <= p.eta_max)
            & (pix.n_hits >= p.min_hits))
    if math.isfinite(p.dz_max):
        has_pv = np.diff(pix.vertex_offsets) > 0
        pv_z = np.zeros(n)
        pv_z[has_pv] = pix.vertex_z[pix.vertex_offsets[:-1][has_pv]]  # row 0: the PV
        good &= has_pv[event] & (np.abs(pix.z0 - pv_z[event]) <= p.dz_max)
    return np.bincount(event[good], minlength=n)


def _pixel_vertices_passing(p: TriggerPath, pix: PixelObjects, n: int) -> np.ndarray:
    """Pixel vertices per event with at least ``p.min_tracks`` tracks (NumPy)."""
    event = np.repeat(np.arange(n), np.diff(pix.vertex_offsets))
    return np.bincount(event[pix.vertex_n_tracks >= p.min_tracks], minlength=n)


def _no_pixel_objects(n_events: int, xp: Any = np) -> PixelObjects:
    f, i = xp.zeros(0, dtype=xp.float64), xp.zeros(0, dtype=xp.int64)
    return PixelObjects(f, f, i, f, xp.zeros(n_events + 1, dtype=xp.int64), f, i,
                        xp.zeros(n_events + 1, dtype=xp.int64))


def decide_reference(pt: np.ndarray, eta: np.ndarray, offsets: np.ndarray,
                     counts: Mapping[str, np.ndarray], first_entry: int,
                     paths: Sequence[TriggerPath], pixel: PixelObjects | None = None,
                     jet_sets: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
                     | None = None) -> Decisions:
    """Decisions per path and event (NumPy, written to be read).

    ``pt`` [GeV], ``eta``, ``offsets``: the jets; with ``jet_sets`` (collection name ->
    ``(pt, eta, offsets)``) each jet path reads its own collection from it instead.
    ``counts`` maps a collection name to its objects per event (for ``doublets`` paths);
    ``pixel`` holds the pixel tracks and vertices (for ``pixeltracks`` and ``pixelvertices``
    paths; none in every event when not given).
    """
    n = offsets.shape[0] - 1
    pix = _no_pixel_objects(n) if pixel is None else pixel
    entries = first_entry + np.arange(n, dtype=np.int64)
    out = Decisions({}, {})
    for p in paths:
        if p.kind == "doublets":
            passed = counts[p.collection] >= p.n_min
        elif p.kind == "pixeltracks":
            passed = _pixel_tracks_passing(p, pix, n) >= p.n_min
        elif p.kind == "pixelvertices":
            passed = _pixel_vertices_passing(p, pix, n) >= p.n_min
        else:
            jpt, jeta, joff = (pt, eta, offsets) if jet_sets is None else \
                jet_sets[jet_collection(p)]
            event = np.repeat(np.arange(n), np.diff(joff))
            good = (jpt >= p.pt_min) & (np.abs(jeta) <= p.eta_max)
            n_good = np.bincount(event[good], minlength=n)
            ht = np.bincount(event[good], weights=jpt[good], minlength=n)
            if p.kind == "single_jet":
                passed = n_good >= 1
            elif p.kind == "multi_jet":
                passed = n_good >= p.n_min
            else:
                passed = ht >= p.ht_min
        out.before_prescale[p.name] = np.asarray(passed, dtype=bool)
        out.accept[p.name] = prescaler_pass(entries, p.prescale) & passed
    return out


class Prepared(NamedTuple):
    """What :func:`prepare` builds once per (config, backend): the selected paths, the
    collections the counting paths read, the jet collections the jet paths read
    (``jet_names``; :data:`JETS` when none does), and the kernels' menu arrays (kind, pt_min,
    eta_max, ht_min, n_min, prescale, count column, min_hits, dz_max, min_tracks, jet set; one
    entry per path) on the backend's device."""

    paths: tuple[TriggerPath, ...]
    count_names: tuple[str, ...]
    arrays: tuple[Any, ...]
    jet_names: tuple[str, ...] = (JETS,)


def prepare_paths(paths: Sequence[TriggerPath], backend: Any) -> Prepared:
    """:class:`Prepared` for ``paths`` on ``backend`` (the menu arrays uploaded once)."""
    from hltemu.kernels import trigger as K

    kinds = {"single_jet": K.KIND_SINGLE_JET, "multi_jet": K.KIND_MULTI_JET, "ht": K.KIND_HT,
             "doublets": K.KIND_COUNT, "pixeltracks": K.KIND_TRACKS,
             "pixelvertices": K.KIND_VERTICES}
    count_names = tuple(dict.fromkeys(p.collection for p in paths if p.kind == "doublets"))
    jet_names = tuple(dict.fromkeys(jet_collection(p) for p in paths if p.kind in JET_KINDS)
                      ) or (JETS,)
    arrays = (
        np.array([kinds[p.kind] for p in paths], dtype=np.int64),
        np.array([p.pt_min for p in paths], dtype=np.float64),
        np.array([p.eta_max for p in paths], dtype=np.float64),
        np.array([p.ht_min for p in paths], dtype=np.float64),
        np.array([p.n_min for p in paths], dtype=np.int64),
        np.array([p.prescale for p in paths], dtype=np.int64),
        np.array([count_names.index(p.collection) if p.kind == "doublets" else 0
                  for p in paths], dtype=np.int64),
        np.array([p.min_hits for p in paths], dtype=np.int64),
        np.array([p.dz_max for p in paths], dtype=np.float64),
        np.array([p.min_tracks for p in paths], dtype=np.int64),
        np.array([jet_names.index(jet_collection(p)) if p.kind in JET_KINDS else 0
                  for p in paths], dtype=np.int64),
    )
    return Prepared(tuple(paths), count_names, tuple(backend.to_device(a) for a in arrays),
                    jet_names)


def prepare(cfg: TriggerConfig, backend: Any) -> Prepared:
    """The menu of ``cfg`` (read and checked once) prepared for ``backend``."""
    return prepare_paths(menu_paths(cfg), backend)


def check_counted(batch: EventBatch, prep: Prepared) -> None:
    """:class:`PipelineError` when a counting path's collection (doublets, pixel tracks or
    vertices) is not in the batch."""
    counted = dict.fromkeys(n for p in prep.paths if p.kind not in ("single_jet", "multi_jet",
                                                                     "ht")
                            for n in path_needs(p))
    for name in counted:
        if name not in batch:
            users = [p.name for p in prep.paths if name in path_needs(p)]
            from hltemu.pipeline import registered_stages

            makers = [s.name for s in registered_stages().values() if name in s.adds]
            hint = f" (stage {' or '.join(map(repr, makers))} makes it)" if makers else ""
            raise PipelineError(
                f"trigger path(s) {users} count collection {name!r}, which the batch lacks "
                f"(it has {sorted(batch)}); run the stage that makes it before 'trigger'{hint}, "
                "or leave those paths out with [trigger] paths = [...]"
            )


def _jets(batch: EventBatch, prep: Prepared) -> tuple[Any, Any, Any]:
    """``(pt, eta, offsets)``: the jets of every collection in ``prep.jet_names`` one after the
    other, ``offsets`` int64 ``(n_collections, n_events + 1)`` into them.  A collection the
    batch lacks has no jets in any event (only a menu without paths on it runs so: the stage
    checks its needs first)."""
    xp = batch.backend.xp
    pts, etas, offs, start = [], [], [], 0
    for name in prep.jet_names:
        if name not in batch:
            offs.append(xp.full(batch.n_events + 1, start, dtype=xp.int64))
            continue
        jets = batch[name]
        pts.append(xp.asarray(jets["pt"], dtype=xp.float64))
        etas.append(xp.asarray(jets["eta"], dtype=xp.float64))
        offs.append(xp.asarray(jets.offsets, dtype=xp.int64) + start)
        start += jets.size
    if len(pts) == 1:
        pt, eta = pts[0], etas[0]
    elif pts:
        pt, eta = xp.concatenate(pts), xp.concatenate(etas)
    else:
        pt = eta = xp.zeros(0, dtype=xp.float64)
    return pt, eta, xp.stack(offs)


def pixel_objects(batch: EventBatch) -> PixelObjects:
    """The batch's pixel tracks and vertices as the kernels read them (float64, int64); a
    collection the batch lacks is empty in every event (only a menu without the paths that
    read it runs so: :func:`check_counted` comes first)."""
    xp = batch.backend.xp
    pix = _no_pixel_objects(batch.n_events, xp)
    if TRACKS in batch:
        t = batch[TRACKS]
        pix = pix._replace(**{k: xp.ascontiguousarray(xp.asarray(t[c], dtype=d)) for k, c, d in (
            ("pt", "pt", xp.float64), ("eta", "eta", xp.float64),
            ("n_hits", "n_hits", xp.int64), ("z0", "z0", xp.float64))},
            track_offsets=xp.asarray(t.offsets, dtype=xp.int64))
    if VERTICES in batch:
        v = batch[VERTICES]
        pix = pix._replace(
            vertex_z=xp.ascontiguousarray(xp.asarray(v["z"], dtype=xp.float64)),
            vertex_n_tracks=xp.ascontiguousarray(xp.asarray(v["n_tracks"], dtype=xp.int64)),
            vertex_offsets=xp.asarray(v.offsets, dtype=xp.int64))
    return pix


def decide_kernel_inputs(batch: EventBatch, prep: Prepared) -> tuple[Any, ...]:
    """``(pt, eta, offsets, counts, *pixel objects, first_entry)`` for the kernels;
    ``counts`` is ``(n_events, n_counted)`` int64 (objects per event of each counted
    collection), the pixel objects those of :func:`pixel_objects`."""
    xp = batch.backend.xp
    check_counted(batch, prep)
    counts = xp.zeros((batch.n_events, max(len(prep.count_names), 1)), dtype=xp.int64)
    for c, name in enumerate(prep.count_names):
        counts[:, c] = batch[name].counts
    return (*_jets(batch, prep), counts, *pixel_objects(batch), batch.first_entry)


def _columns(out: Any, out_pre: Any, prep: Prepared, xp: Any) -> Decisions:
    return Decisions({p.name: xp.ascontiguousarray(out[:, i]) for i, p in enumerate(prep.paths)},
                     {p.name: xp.ascontiguousarray(out_pre[:, i])
                      for i, p in enumerate(prep.paths)})


def decide_cpu(batch: EventBatch, prep: Prepared) -> Decisions:
    """Decisions per path (bool ``(n_events,)``) with the Numba kernel."""
    from hltemu.kernels.trigger import trigger_cpu

    out = np.zeros((batch.n_events, len(prep.paths)), dtype=bool)
    out_pre = np.zeros_like(out)
    args = decide_kernel_inputs(batch, prep)
    if batch.n_events and prep.paths:
        trigger_cpu(*args, *prep.arrays, out, out_pre)
    return _columns(out, out_pre, prep, np)


def decide_cuda(batch: EventBatch, prep: Prepared) -> Decisions:
    """Decisions per path with the CUDA kernel, one thread per event."""
    from hltemu.kernels.trigger import trigger_cuda

    xp, n = batch.backend.xp, batch.n_events
    out = xp.zeros((n, len(prep.paths)), dtype=bool)
    out_pre = xp.zeros((n, len(prep.paths)), dtype=bool)
    args = decide_kernel_inputs(batch, prep)
    if n and prep.paths:
        trigger_cuda[blocks(n), THREADS_PER_BLOCK](*args, *prep.arrays, out, out_pre)
    return _columns(out, out_pre, prep, xp)


def decide_batch_reference(batch: EventBatch, prep: Prepared) -> Decisions:
    """Decisions per path with :func:`decide_reference` (NumPy)."""
    check_counted(batch, prep)
    counts = {c: np.asarray(batch[c].counts) for c in prep.count_names}
    n = batch.n_events
    none = (np.zeros(0), np.zeros(0), np.zeros(n + 1, dtype=np.int64))
    jet_sets = {name: (np.asarray(batch[name]["pt"], dtype=np.float64),
                       np.asarray(batch[name]["eta"], dtype=np.float64),
                       np.asarray(batch[name].offsets)) if name in batch else none
                for name in prep.jet_names}
    pix = PixelObjects(*(np.asarray(a) for a in pixel_objects(batch)))
    return decide_reference(*none, counts, batch.first_entry, prep.paths, pix,
                            jet_sets=jet_sets)


def _with_any(decisions: Mapping[str, Any], prep: Prepared, xp: Any, n_events: int
              ) -> Collection:
    cols = dict(decisions)
    any_path = xp.zeros(n_events, dtype=bool)
    for p in prep.paths:
        any_path = any_path | cols[p.name]
    cols[ANY_PATH] = any_path
    return Collection.event_level(cols, xp)


def trigger_collection(decisions: Decisions, prep: Prepared, xp: Any,
                       n_events: int) -> dict[str, Collection]:
    """``trigger`` (after the prescalers) and ``trigger_pre`` (before): one bool column per path
    plus ``any_path``, their OR."""
    return {OUTPUT: _with_any(decisions.accept, prep, xp, n_events),
            OUTPUT_PRE: _with_any(decisions.before_prescale, prep, xp, n_events)}


def accept_counts(products: Mapping[str, Collection], backend: Any
                  ) -> dict[str, dict[str, float]]:
    """The run report's counters: events accepted per path, after and before the prescalers
    (the pipeline adds them up over batches)."""
    groups = (("trigger accepts", OUTPUT), ("trigger accepts before prescale", OUTPUT_PRE))
    names = [(group, name) for group, coll in groups for name in products[coll].columns]
    cols = [products[coll][name] for group, coll in groups for name in products[coll].columns]
    xp = backend.xp
    # one download for every path of both collections (a synchronisation on a GPU)
    sums = backend.to_host(xp.stack([c.astype(xp.int64) for c in cols]).sum(axis=1))
    out: dict[str, dict[str, float]] = {group: {} for group, _ in groups}
    for (group, name), n in zip(names, sums.tolist(), strict=True):
        out[group][name] = int(n)
    return out


def run_reference(batch: EventBatch, cfg: TriggerConfig, prep: Prepared) -> dict[str, Collection]:
    return trigger_collection(decide_batch_reference(batch, prep), prep, np, batch.n_events)


def run_cpu(batch: EventBatch, cfg: TriggerConfig, prep: Prepared) -> dict[str, Collection]:
    return trigger_collection(decide_cpu(batch, prep), prep, np, batch.n_events)


def run_cuda(batch: EventBatch, cfg: TriggerConfig, prep: Prepared) -> dict[str, Collection]:
    return trigger_collection(decide_cuda(batch, prep), prep, batch.backend.xp, batch.n_events)


STAGE = register(Stage(
    name="trigger",
    needs=needs,
    adds=(OUTPUT, OUTPUT_PRE),
    config_type=TriggerConfig,
    prepare=prepare,
    plan=plan,
    count=accept_counts,
    counts_suffice=counted_only,
    implementations={"reference": run_reference, "cpu": run_cpu, "cuda": run_cuda},
    doc="trigger menu: single jet, multi-jet, HT, pixel-doublet, pixel-track and pixel-vertex "
        "paths with prescales",
))
