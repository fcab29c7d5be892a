"""Configuration: one frozen dataclass per stage, loaded from and saved to TOML.

Every field is declared with :func:`param`, which records its unit and a one-line description,
so that ``hltemu info --config`` and the saved TOML say what each number means.  A TOML file has
one table per stage, named as the stage (``[antikt]``, ``[doublets]``, ...); a stage missing from
the file keeps its defaults.  Unknown tables or keys, and values of the wrong type, are errors
naming the file, the table, the key and the valid choices.

Each stage's config class lives in its stage module and is registered with the stage
(``Stage.config_type``); :class:`HLTConfig` is assembled from them by :mod:`hltemu.pipeline`.
This module imports nothing from the package, so a stage can be added without editing it.  It
also holds the detector description and the generator settings (:class:`DetectorConfig`,
:class:`GenerateConfig`), read by :mod:`hltemu.geometry` and :mod:`hltemu.simulate`.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w


class ConfigError(ValueError):
    """A configuration file or value that cannot be used."""


class MovedKeyWarning(FutureWarning):
    """A stage-table key that was removed because its value now has one source elsewhere (named
    in the message); the key is ignored.

    A :class:`FutureWarning` rather than a :class:`DeprecationWarning`: it is meant for whoever
    wrote the TOML file, a user rather than a developer of the code that reads it, and Python
    shows FutureWarning by default but hides DeprecationWarning outside ``__main__``.
    """


@dataclass(frozen=True)
class MovedKey:
    """A stage-table key removed from its config class because its value now comes from
    ``source`` (for messages, e.g. ``"the detector geometry (...)"``); ``current()`` gives that
    value (in ``unit``), ``hint`` says what to change instead.  The config class lists its
    moved keys in a ``MOVED_KEYS`` class attribute; :func:`stage_config_from_dict` accepts
    them (see :func:`check_moved_key`)."""

    source: str
    unit: str
    current: Callable[[], float]
    hint: str = ""


def check_moved_key(name: str, moved: MovedKey, value: Any, where: str) -> None:
    """Accept the value of the moved key ``name`` from a TOML table (``where``): a
    :class:`MovedKeyWarning` naming the new source when it equals the source's value (files
    saved before the move hold that value), a :class:`ConfigError` when it differs or is not a
    number.  A different value is an error, not a warning, because the key used to set what the
    stage computes and can no longer be honoured: ignoring it would change the results the file
    asks for without stopping the run, and a warning scrolls past unseen in a batch job or on
    a Dask worker's log.
    """
    unit = f" {moved.unit}" if moved.unit else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}.{name}: expected a number, got {value!r} (the key is no "
                          f"longer read: the value is {moved.source})")
    current = moved.current()
    if float(value) != current:
        raise ConfigError(
            f"{where} {name} = {value}{unit} differs from {moved.source} = {current}{unit}, the "
            f"value used now: the key is no longer read and {value}{unit} cannot be applied; "
            f"remove the key{'; ' + moved.hint if moved.hint else ''}")
    warnings.warn(f"{where} {name} is now taken from {moved.source} = {current}{unit}; the "
                  "key is ignored (remove it)", MovedKeyWarning, stacklevel=4)


#: Prefix of a file shipped with hltemu (``builtin:NAME``), never resolved against a directory.
BUILTIN_PREFIX = "builtin:"


def param(default: Any, unit: str = "", doc: str = "", path: bool = False,
          keywords: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """A dataclass field with its unit (``"GeV"``, ``"cm"``, ``"rad"``, ``""``) and description.

    Mutable defaults (lists, dicts) are given as tuples; TOML arrays are read back as tuples.
    ``path=True``: the value is a file (or a tuple of files), which a relative path in a TOML
    file names relative to that file's directory (:func:`resolve_path`).  ``keywords``: the
    value is a number (read as a float) or one of these strings (e.g. ``("auto",)``).
    """
    return field(default=default, metadata={"unit": unit, "doc": doc, "path": path,
                                            "keywords": tuple(keywords)}, **kwargs)


def shipped_dir(folder: str = "models") -> Path:
    """A folder of files shipped with hltemu: ``hltemu/models`` (corrections, CNN models,
    pileup-noise tables) or ``hltemu/data`` (menus, the sample)."""
    return Path(str(resources.files("hltemu") / folder))


def spec_path(spec: str | Path, folder: str = "models") -> Path:
    """The file a config value names: ``builtin:NAME`` is ``NAME`` in :func:`shipped_dir`
    (``folder``), anything else a path as written.  The one place ``builtin:`` is read."""
    spec = str(spec)
    if spec.startswith(BUILTIN_PREFIX):
        return shipped_dir(folder) / spec[len(BUILTIN_PREFIX):]
    return Path(spec)


def shipped_file(spec: str | Path, folder: str, what: str, suffixes: tuple[str, ...],
                 error: type[Exception] = ConfigError) -> Path:
    """:func:`spec_path` of ``spec``, checked when it is ``builtin:NAME``: a file shipped in
    ``hltemu/<folder>`` that does not exist raises ``error`` naming the shipped ones (those
    ending in one of ``suffixes``); other paths are returned unchecked."""
    path = spec_path(spec, folder)
    if str(spec).startswith(BUILTIN_PREFIX) and not path.is_file():
        root = shipped_dir(folder)
        shipped = sorted(p.name for p in root.iterdir()
                         if p.name.endswith(suffixes)) if root.is_dir() else []
        raise error(f"no built-in {what} {str(spec)[len(BUILTIN_PREFIX):]!r}; shipped: "
                    f"{', '.join(shipped) or 'none'}")
    return path


def resolve_path(value: str, base_dir: str | Path | None) -> str:
    """``value`` (a file name, ``builtin:NAME`` or ``FILE#SECTION``) relative to ``base_dir``:
    unchanged when it is absolute, built-in or ``base_dir`` is ``None``."""
    if base_dir is None or value.startswith(BUILTIN_PREFIX) or not value:
        return value
    if Path(value).is_absolute():
        return value
    return str(Path(base_dir) / value)


def describe(cfg: Any) -> list[tuple[str, Any, str, str]]:
    """``(name, value, unit, doc)`` for every field of a stage config."""
    return [
        (f.name, getattr(cfg, f.name), f.metadata.get("unit", ""), f.metadata.get("doc", ""))
        for f in dataclasses.fields(cfg)
    ]


def _coerce(value: Any, default: Any, where: str, keywords: tuple[str, ...] = ()) -> Any:
    """Check a TOML value against the type of the field's default and convert arrays to tuples;
    a field with ``keywords`` takes a number (as a float) or one of those strings."""
    if keywords:
        if isinstance(value, str) and value in keywords:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number or "
                              f"{' or '.join(map(repr, keywords))}, got {value!r}")
        return float(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected an array, got {value!r}")
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return value


def stage_config_from_dict(cls: type, table: Mapping[str, Any], where: str = "",
                           base_dir: str | Path | None = None) -> Any:
    """Build the stage config ``cls`` from a TOML table, checking keys and types; file-valued
    fields (``param(path=True)``) given as relative paths are taken relative to ``base_dir``
    (the directory of the TOML file; ``None``: left as written)."""
    defaults = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    moved: Mapping[str, MovedKey] = getattr(cls, "MOVED_KEYS", {})
    table = dict(table)
    for key in sorted(set(table) & set(moved) - names):
        check_moved_key(key, moved[key], table.pop(key), where)
    unknown = sorted(set(table) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(sorted(names))}"
        )
    keywords = {f.name: f.metadata.get("keywords", ()) for f in dataclasses.fields(cls)}
    values = {k: _coerce(v, getattr(defaults, k), f"{where}.{k}", keywords[k])
              for k, v in table.items()}
    for f in dataclasses.fields(cls):
        if f.metadata.get("path") and f.name in values:
            v = values[f.name]
            values[f.name] = (tuple(resolve_path(e, base_dir) if isinstance(e, str) else e
                                    for e in v) if isinstance(v, tuple)
                              else resolve_path(v, base_dir) if isinstance(v, str) else v)
    try:
        return dataclasses.replace(defaults, **values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _to_toml_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_toml_value(v) for v in value]
    return value


@dataclass(frozen=True)
class HLTConfig:
    """The configuration of a chain: one stage config per stage name.

    This module knows no stage: the tables a TOML file may hold come from the caller as
    ``config_types`` (stage name -> config dataclass), which :mod:`hltemu.pipeline` assembles
    from each registered stage's ``config_type`` (:func:`hltemu.pipeline.load_config`,
    :func:`~hltemu.pipeline.default_config`, :func:`~hltemu.pipeline.config_from_dict`).
    """

    stages: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, stage: str) -> Any:
        try:
            return self.stages[stage]
        except KeyError:
            raise ConfigError(f"no configuration for stage {stage!r}; the config has "
                              f"{', '.join(self.stages) or '(none)'}") from None

    def get(self, stage: str, config_type: type) -> Any:
        """The config of ``stage``, or the defaults of ``config_type`` when the config has none
        (a stage registered after the config was built)."""
        return self.stages[stage] if stage in self.stages else config_type()

    @classmethod
    def default(cls, config_types: Mapping[str, type]) -> HLTConfig:
        """Every stage of ``config_types`` (name -> config dataclass) at its defaults."""
        return cls({name: t() for name, t in config_types.items()})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config_types: Mapping[str, type],
                  source: str = "<dict>", base_dir: str | Path | None = None) -> HLTConfig:
        """One table per stage (``data[name]``), checked against ``config_types[name]``; a
        stage without a table keeps its defaults, an unknown table is a :class:`ConfigError`
        naming ``source`` and the valid tables.  Relative file names resolve against
        ``base_dir`` (see :func:`stage_config_from_dict`)."""
        out = {name: t() for name, t in config_types.items()}
        for table, values in data.items():
            if table not in config_types:
                raise ConfigError(f"{source}: unknown stage table [{table}]; stages: "
                                  f"{', '.join(sorted(config_types))}")
            if not isinstance(values, Mapping):
                raise ConfigError(f"{source}: [{table}] must be a table, got {values!r}")
            out[table] = stage_config_from_dict(config_types[table], values,
                                                f"{source}: [{table}]", base_dir)
        return cls(out)

    @classmethod
    def load(cls, path: str | Path, config_types: Mapping[str, type]) -> HLTConfig:
        """Read a TOML file (see :meth:`from_dict`); errors name the file, table and key.
        Relative file names in it (menu, correction files, model, noise table) are taken
        relative to the file's directory, not the working directory."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_dict(data, config_types, str(path), path.parent)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            name: {f.name: _to_toml_value(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
            for name, cfg in self.stages.items()
        }

    def save(self, path: str | Path) -> None:
        """Write every stage's settings as TOML, one table per stage."""
        Path(path).write_text(tomli_w.dumps(self.to_dict()))


# ------------------------------------------------------------------------------------------
# Event generation (``hltemu generate``): the detector description and the run settings.
# Not stage tables: read by hltemu.geometry and hltemu.simulate.
# ------------------------------------------------------------------------------------------
def _check_lengths(cls_name: str, n: int, **tuples: tuple) -> None:
    for name, value in tuples.items():
        if len(value) != n:
            raise ConfigError(f"{cls_name}.{name} needs {n} entries (one per layer), got {value!r}")


@dataclass(frozen=True)
class DetectorConfig:
    """The CMS-like toy detector: Phase-1 pixel tracker in a solenoid, ECAL + HCAL cell grids.

    Calorimeter tuples have one entry per calorimeter layer, inner to outer (``calo_names``).
    Lateral shower widths are Gaussian sigmas in cm at the ECAL front face; the angular width
    is ``width / r_impact`` in both eta and phi.
    """

    b_field: float = param(3.8, "T", "solenoid field along +z")
    # -- pixel tracker (CMS Phase-1) --------------------------------------------------------
    pixel_pitch_x: float = param(0.0100, "cm", "pixel pitch along module-local x (r-phi)")
    pixel_pitch_y: float = param(0.0150, "cm", "pixel pitch along module-local y (z or r)")
    pixel_thickness: float = param(0.0285, "cm", "sensor thickness")
    barrel_radii: tuple = param((2.9, 6.8, 10.9, 16.0), "cm", "BPix layer radii")
    barrel_ladders: tuple = param((12, 28, 44, 64), "", "ladders (modules in phi) per BPix layer")
    barrel_half_length: float = param(26.4, "cm", "BPix half-length in z")
    barrel_modules_z: int = param(8, "", "modules along z per ladder")
    disk_z: tuple = param((29.1, 39.6, 51.6), "cm", "|z| of the FPix disks (mirrored at -z)")
    disk_ring_radii: tuple = param((4.5, 10.5, 16.1), "cm", "FPix ring boundaries in r")
    disk_ring_modules: tuple = param((22, 34), "", "modules (blades) per FPix ring")
    hit_efficiency: float = param(0.99, "", "probability that a crossing gives a hit")
    noise_hits_per_layer: float = param(1.0, "", "mean number of noise hits per layer/disk/event")
    pixel_threshold: float = param(1000.0, "electrons", "pixel readout threshold")
    pixel_noise: float = param(100.0, "electrons", "Gaussian electronic noise per pixel")
    pixel_adc_step: float = param(50.0, "electrons", "digitisation step of pixel charges")
    charge_mpv_per_cm: float = param(7.5e5, "electrons/cm", "most probable MIP ionisation")
    landau_width: float = param(0.09, "", "Landau (Moyal) width relative to the MPV")
    lorentz_tan_barrel: float = param(0.40, "", "tan of the Lorentz angle in BPix (drift along x)")
    lorentz_tan_disk: float = param(0.10, "", "tan of the effective drift angle in FPix")
    diffusion_sigma: float = param(0.0008, "cm", "charge diffusion sigma at the pixel plane")
    tracker_radius: float = param(110.0, "cm", "outer radius of the tracker volume (loopers)")
    # -- calorimeter ------------------------------------------------------------------------
    ecal_radius: float = param(129.0, "cm", "ECAL barrel front radius")
    ecal_endcap_z: float = param(317.0, "cm", "ECAL endcap front |z|")
    calo_names: tuple = param(("EM1", "EM2", "HAD1", "HAD2", "HAD3"), "", "layer names")
    calo_sections: tuple = param(("ECAL", "ECAL", "HCAL", "HCAL", "HCAL"), "", "ECAL or HCAL")
    calo_eta_max: tuple = param((3.0, 3.0, 3.0, 3.0, 3.0), "", "|eta| coverage per layer")
    calo_n_eta: tuple = param((240, 120, 60, 60, 60), "", "cells in eta per layer")
    calo_n_phi: tuple = param((256, 128, 64, 64, 64), "", "cells in phi per layer")
    calo_noise: tuple = param((0.030, 0.050, 0.120, 0.150, 0.200), "GeV",
                              "electronic noise sigma per cell at eta = 0")
    calo_noise_eta_slope: float = param(0.5, "", "relative noise increase from eta 0 to eta_max")
    calo_noise_spread: float = param(0.10, "", "relative cell-to-cell spread of the noise sigma")
    calo_lsb: tuple = param((2.0**-8, 2.0**-8, 2.0**-6, 2.0**-6, 2.0**-6), "GeV",
                            "digitisation step of the cell energy (3.9 MeV ECAL, 15.6 MeV HCAL)")
    calo_truth_step: float = param(2.0**-17, "GeV",
                                   "storage step of the cells' true energy (7.6 keV)")
    calo_em_fraction: tuple = param((0.78, 0.21, 0.01, 0.0, 0.0), "",
                                    "share of an EM shower in each layer")
    calo_had_fraction: tuple = param((0.20, 0.10, 0.35, 0.25, 0.10), "",
                                     "share of a hadron shower in each layer")
    calo_mip: tuple = param((0.20, 0.10, 0.70, 0.70, 0.70), "GeV", "muon (MIP) deposit per layer")
    calo_em_width: tuple = param((1.0, 1.5, 3.0, 3.0, 3.0), "cm", "EM shower lateral sigma")
    calo_had_width: tuple = param((3.0, 4.0, 8.0, 10.0, 12.0), "cm", "hadron shower lateral sigma")
    calo_window: tuple = param((2, 1, 1, 1, 1), "cells", "half-width of the shower window")
    em_stochastic: float = param(0.03, "sqrt(GeV)", "EM energy resolution, stochastic term")
    em_constant: float = param(0.005, "", "EM energy resolution, constant term")
    had_stochastic: float = param(1.0, "sqrt(GeV)", "hadron energy resolution, stochastic term")
    had_constant: float = param(0.05, "", "hadron energy resolution, constant term")
    had_h_over_e: float = param(0.45, "", "h/e of the non-compensating calorimeter")
    had_e0: float = param(1.0, "GeV", "Groom's E0: hadronic fraction is (E/E0)^(m-1)")
    had_m: float = param(0.83, "", "Groom's exponent m")

    def __post_init__(self) -> None:
        n = len(self.calo_names)
        _check_lengths(
            "DetectorConfig", n, calo_sections=self.calo_sections, calo_eta_max=self.calo_eta_max,
            calo_n_eta=self.calo_n_eta, calo_n_phi=self.calo_n_phi, calo_noise=self.calo_noise,
            calo_lsb=self.calo_lsb, calo_em_fraction=self.calo_em_fraction,
            calo_had_fraction=self.calo_had_fraction, calo_mip=self.calo_mip,
            calo_em_width=self.calo_em_width, calo_had_width=self.calo_had_width,
            calo_window=self.calo_window,
        )
        _check_lengths("DetectorConfig", len(self.barrel_radii), barrel_ladders=self.barrel_ladders)
        _check_lengths("DetectorConfig", len(self.disk_ring_radii) - 1,
                       disk_ring_modules=self.disk_ring_modules)
        for s in self.calo_sections:
            if s not in ("ECAL", "HCAL"):
                raise ConfigError(f"DetectorConfig.calo_sections: {s!r} is not 'ECAL' or 'HCAL'")
        for name in ("calo_em_fraction", "calo_had_fraction"):
            total = sum(getattr(self, name))
            if abs(total - 1.0) > 1e-6:
                raise ConfigError(f"DetectorConfig.{name} must sum to 1, sums to {total}")
        if not 0.0 < self.hit_efficiency <= 1.0:
            raise ConfigError(
                f"DetectorConfig.hit_efficiency must be in (0, 1], got {self.hit_efficiency}")
        if self.b_field <= 0:
            raise ConfigError(f"DetectorConfig.b_field must be > 0 T, got {self.b_field}")


#: Processes ``hltemu generate`` knows (see hltemu.simulate.pythia for the Pythia settings).
GENERATE_PROCESSES: tuple[str, ...] = ("ttbar", "qcd", "zbb", "zqq", "minbias")

#: Largest mean pileup ``hltemu generate`` accepts.
MAX_PILEUP: float = 200.0


@dataclass(frozen=True)
class GenerateConfig:
    """One ``hltemu generate`` run: what Pythia makes, how much pileup, where the beams meet."""

    events: int = param(10, "", "number of events")
    process: str = param("ttbar", "", f"hard process: {', '.join(GENERATE_PROCESSES)}")
    pileup: float = param(0.0, "", "mean number of pileup interactions (Poisson), 0-200")
    seed: int = param(1, "", "random seed; the same seed and settings give the same values in "
                             "every branch")
    sqrt_s: float = param(13600.0, "GeV", "centre-of-mass energy")
    pthat_min: float = param(30.0, "GeV", "minimum pT-hat of the qcd process")
    pthat_bias: float = param(0.0, "", "qcd only: events drawn with an extra weight "
                                       "(pT-hat/pthat_min)^pthat_bias (Pythia's "
                                       "PhaseSpace:bias2Selection) and written with the inverse as "
                                       "Event_weight; 0: unweighted")
    beamspot_sigma_z: float = param(4.0, "cm", "luminous region length (Gaussian sigma in z)")
    beamspot_sigma_xy: float = param(0.0012, "cm", "luminous region width (sigma in x and y)")
    truth_eta_max: float = param(5.0, "", "final-state particles kept in GenPart up to this |eta|")
    # -- event identifiers (the scheme: hltemu.io.schema) -------------------------------------
    run: int | None = param(None, "", "run number of every event (uint32); None: the seed")
    lumi: int = param(1, "", "luminosity block of every event (uint32, >= 1): the index of the "
                             "file within a production that shares a run number")
    first_event: int | None = param(None, "", "number of the first event (uint64); None: "
                                              "(lumi - 1) * events + 1")

    @property
    def run_number(self) -> int:
        """The run number written: :attr:`run`, or the seed when it is ``None``."""
        return self.seed if self.run is None else self.run

    @property
    def first_event_number(self) -> int:
        """The first event number written: :attr:`first_event`, or ``(lumi - 1) * events + 1``
        (files of equal ``events`` and consecutive lumi blocks number their events
        consecutively)."""
        if self.first_event is not None:
            return self.first_event
        return (self.lumi - 1) * self.events + 1

    def __post_init__(self) -> None:
        if self.process not in GENERATE_PROCESSES:
            raise ConfigError(
                f"unknown process {self.process!r}; choices: {', '.join(GENERATE_PROCESSES)}"
            )
        if not 0.0 <= self.pileup <= MAX_PILEUP:
            raise ConfigError(f"pileup must be between 0 and {MAX_PILEUP:g}, got {self.pileup}")
        if self.events < 0:
            raise ConfigError(f"events must be >= 0, got {self.events}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be between 0 and 2**63 - 1, got {self.seed}")
        if self.sqrt_s <= 0 or self.pthat_min < 0:
            raise ConfigError(
                f"sqrt_s must be > 0 and pthat_min >= 0 GeV, got {self.sqrt_s} and {self.pthat_min}"
            )
        if not 0.0 <= self.pthat_bias <= 8.0:
            raise ConfigError(f"pthat_bias must be between 0 and 8, got {self.pthat_bias}")
        if self.pthat_bias > 0 and self.process != "qcd":
            raise ConfigError(f"pthat_bias applies to the qcd process only, not {self.process!r}")
        if self.beamspot_sigma_z < 0 or self.beamspot_sigma_xy < 0 or self.truth_eta_max <= 0:
            raise ConfigError("beamspot sigmas must be >= 0 cm and truth_eta_max > 0")
        self._check_event_ids()

    def _check_event_ids(self) -> None:
        """Run and lumi block fit uint32, every event number uint64 (the branch types)."""
        max_u32, max_u64 = 2**32 - 1, 2**64 - 1
        for name in ("run", "lumi", "first_event"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        if self.run is None and self.seed > max_u32:
            raise ConfigError(f"seed {self.seed} is too large for a run number (uint32, at most "
                              f"{max_u32}); set the run number (--run)")
        if self.run is not None and not 0 <= self.run <= max_u32:
            raise ConfigError(f"run must be between 0 and {max_u32} (uint32), got {self.run}")
        if not 1 <= self.lumi <= max_u32:
            raise ConfigError(f"lumi must be between 1 and {max_u32} (uint32), got {self.lumi}")
        if self.first_event is not None and self.first_event < 0:
            raise ConfigError(f"first_event must be >= 0, got {self.first_event}")
        last = self.first_event_number + max(self.events, 1) - 1
        if last > max_u64:
            raise ConfigError(f"the last event number {last} is too large (uint64, at most "
                              f"{max_u64}); lower first_event or lumi")


