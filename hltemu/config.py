"""Configuration: one frozen dataclass per stage, loaded from and saved to TOML.

Every field is declared with :func:`param`, which records its unit and a one-line description,
so that ``hltemu info --config`` and the saved TOML say what each number means.  A TOML file has
one table per stage, named as the stage (``[antikt]``, ``[doublets]``, ...); a stage missing from
the file keeps its defaults.  Unknown tables or keys, and values of the wrong type, are errors
naming the file, the table, the key and the valid choices.

Stage modules register their config class with the stage (``Stage.config_type``); the config
classes themselves live here, one after another, so that every cut is found in one file.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

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


def param(default: Any, unit: str = "", doc: str = "", **kwargs: Any) -> Any:
    """A dataclass field with its unit (``"GeV"``, ``"cm"``, ``"rad"``, ``""``) and description.

    Mutable defaults (lists, dicts) are given as tuples; TOML arrays are read back as tuples.
    """
    return field(default=default, metadata={"unit": unit, "doc": doc}, **kwargs)


def describe(cfg: Any) -> list[tuple[str, Any, str, str]]:
    """``(name, value, unit, doc)`` for every field of a stage config."""
    return [
        (f.name, getattr(cfg, f.name), f.metadata.get("unit", ""), f.metadata.get("doc", ""))
        for f in dataclasses.fields(cfg)
    ]


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check a TOML value against the type of the field's default and convert arrays to tuples."""
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


def stage_config_from_dict(cls: type, table: Mapping[str, Any], where: str = "") -> Any:
    """Build the stage config ``cls`` from a TOML table, checking keys and types."""
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
    values = {k: _coerce(v, getattr(defaults, k), f"{where}.{k}") for k, v in table.items()}
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
    """The configuration of every registered stage, by stage name."""

    stages: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, stage: str) -> Any:
        if stage in self.stages:
            return self.stages[stage]
        from hltemu.pipeline import get_stage

        return get_stage(stage).config_type()

    @classmethod
    def default(cls) -> HLTConfig:
        from hltemu.pipeline import registered_stages

        return cls({name: s.config_type() for name, s in registered_stages().items()})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> HLTConfig:
        from hltemu.pipeline import registered_stages

        stages = registered_stages()
        out = {name: s.config_type() for name, s in stages.items()}
        for table, values in data.items():
            if table not in stages:
                raise ConfigError(
                    f"{source}: unknown stage table [{table}]; stages: {', '.join(sorted(stages))}"
                )
            if not isinstance(values, Mapping):
                raise ConfigError(f"{source}: [{table}] must be a table, got {values!r}")
            out[table] = stage_config_from_dict(
                stages[table].config_type, values, f"{source}: [{table}]"
            )
        return cls(out)

    @classmethod
    def load(cls, path: str | Path) -> HLTConfig:
        """Read a TOML file; errors name the file, table and key."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            name: {f.name: _to_toml_value(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
            for name, cfg in self.stages.items()
        }

    def save(self, path: str | Path) -> None:
        """Write every stage's settings as TOML, one table per stage."""
        Path(path).write_text(tomli_w.dumps(self.to_dict()))


# ------------------------------------------------------------------------------------------
# Stage configurations.  One frozen dataclass per stage, each field declared with param().
# ------------------------------------------------------------------------------------------


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
    seed: int = param(1, "", "random seed; the same seed gives the same file bit for bit")
    sqrt_s: float = param(13600.0, "GeV", "centre-of-mass energy")
    pthat_min: float = param(30.0, "GeV", "minimum pT-hat of the qcd process")
    beamspot_sigma_z: float = param(4.0, "cm", "luminous region length (Gaussian sigma in z)")
    beamspot_sigma_xy: float = param(0.0012, "cm", "luminous region width (sigma in x and y)")
    truth_eta_max: float = param(5.0, "", "final-state particles kept in GenPart up to this |eta|")

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
        if self.beamspot_sigma_z < 0 or self.beamspot_sigma_xy < 0 or self.truth_eta_max <= 0:
            raise ConfigError("beamspot sigmas must be >= 0 cm and truth_eta_max > 0")


@dataclass(frozen=True)
class RhoConfig:
    """Stage ``rho``: median pT density of clusters on a fixed eta-phi grid (CMS fixed-grid rho).

    The grid has ``round(2 eta_max / grid_spacing)`` rows in eta and ``round(2 pi /
    grid_spacing)`` columns in phi, so cells are close to ``grid_spacing`` square; CMS's
    ``fixedGridRhoFastjetAll`` uses eta_max 5.0 and spacing 0.55 (18 x 11 cells).
    """

    eta_max: float = param(5.0, "", "the grid covers -eta_max <= eta < eta_max")
    grid_spacing: float = param(0.55, "", "requested cell size in eta and in phi [rad]")

    def __post_init__(self) -> None:
        if not (self.eta_max > 0 and self.grid_spacing > 0):
            raise ConfigError(
                f"eta_max and grid_spacing must be > 0, got {self.eta_max} and {self.grid_spacing}"
            )


@dataclass(frozen=True)
class JecConfig:
    """Stage ``jec``: the factorized jet energy corrections applied to ``jets``, in order.

    Each entry is a CMS JEC text file (plain or gzipped; ``FILE#SECTION`` for one section of a
    multi-section file), a correctionlib JSON correction ``FILE.json#NAME`` (a compound
    correction's levels when NAME is one), or ``builtin:NAME`` for a file shipped in
    ``hltemu/models``.  The default is CMS's Fall17 MC L2Relative for AK4 calorimeter jets (L2
    and L3 in one level since 2017), shipped until ``derive-jec`` provides the emulator's own;
    an empty list applies no correction (every factor 1).
    """

    levels: tuple = param(
        ("builtin:Fall17_17Nov2017_V32_MC_L2Relative_AK4Calo.txt",), "",
        "correction levels in the order applied (L1FastJet, L2Relative, L3Absolute, ...)",
    )


@dataclass(frozen=True)
class TriggerConfig:
    """Stage ``trigger``: per-event decisions of the paths of a trigger menu (TOML).

    The menu lists paths (single jet pT, HT, n jets above pT, pixel-doublet multiplicity) with
    thresholds and prescales; see ``hltemu/data/menu.toml``.  ``builtin:NAME`` is a menu shipped
    in ``hltemu/data``.
    """

    menu: str = param("builtin:menu.toml", "", "trigger menu TOML file")
    paths: tuple = param((), "", "names of the menu paths to run (empty: every path)")


def _default_geometry() -> Any:
    """:func:`hltemu.geometry.default_geometry`, imported when first needed (hltemu.geometry
    imports this module)."""
    from hltemu.geometry import default_geometry

    return default_geometry()


@dataclass(frozen=True)
class DoubletsConfig:
    """Stage ``doublets``: Patatrack-style pixel doublets on pairs of Phase-1 pixel layers.

    Layer ids: 0-3 barrel BPix1-4, 4-6 disks +z 1-3, 7-9 disks -z 1-3.  The 19 layer pairs are
    the ones CMS Patatrack builds (13 adjacent pairs, 2 barrel jumps, 4 forward jumps).  The
    per-pair tuples have one entry per pair, in the order of ``layer_pairs``.  Their defaults
    are the envelope of true doublets of prompt tracks with pT >= 0.8 GeV and |z0| <= 12 cm in
    the default geometry (phi window x 1.1 + 3 mrad, z window +- 1 cm, dr_max + 0.5 cm;
    ``tests/test_doublets.py`` checks the envelope).

    The solenoid field of the pT cut and the pixel pitch along local y and sensor thickness of
    the cluster-size cut are the detector's, read from :func:`hltemu.geometry.default_geometry`
    (``DetectorConfig.b_field``, ``pixel_pitch_y``, ``pixel_thickness``), not set here.  The
    former keys ``b_field``, ``pitch_y`` and ``sensor_thickness`` (:data:`MOVED_KEYS`) are still
    accepted in a ``[doublets]`` table with a :class:`MovedKeyWarning` when they hold the
    geometry's value, as every file saved before did; a different value is a
    :class:`ConfigError` (see :func:`check_moved_key`: the file asked for cuts this code can no
    longer make, and silently making others would change its results).
    """

    #: Keys removed from ``[doublets]``: their values are the detector geometry's.
    MOVED_KEYS: ClassVar[Mapping[str, MovedKey]] = MappingProxyType({
        "b_field": MovedKey(
            "the detector geometry (hltemu.geometry.default_geometry().b_field, "
            "DetectorConfig.b_field)", "T", lambda: _default_geometry().b_field,
            "the pT cut is set by [doublets] pt_min, which keeps the old curvature cut when "
            "scaled by geometry field / old field"),
        "pitch_y": MovedKey(
            "the detector geometry (hltemu.geometry.default_geometry().pixel.pitch_y, "
            "DetectorConfig.pixel_pitch_y)", "cm", lambda: _default_geometry().pixel.pitch_y,
            "the cluster-size cut is set by [doublets] size_below, size_above, "
            "cluster_cut_inner and cluster_cut_outer"),
        "sensor_thickness": MovedKey(
            "the detector geometry (hltemu.geometry.default_geometry().pixel.thickness, "
            "DetectorConfig.pixel_thickness)", "cm",
            lambda: _default_geometry().pixel.thickness,
            "the cluster-size cut is set by [doublets] size_below, size_above, "
            "cluster_cut_inner and cluster_cut_outer"),
    })

    layer_pairs: tuple = param(
        ((0, 1), (0, 4), (0, 7), (1, 2), (1, 4), (1, 7), (4, 5), (7, 8), (2, 3), (2, 4),
         (2, 7), (5, 6), (8, 9), (0, 2), (1, 3), (0, 5), (0, 8), (4, 6), (7, 9)),
        "", "(inner, outer) pixel layer ids of each layer pair; the pair id is the position")
    phi_window: tuple = param(
        (0.034, 0.107, 0.107, 0.036, 0.076, 0.076, 0.050, 0.050, 0.044, 0.044,
         0.044, 0.040, 0.040, 0.066, 0.076, 0.106, 0.106, 0.071, 0.071),
        "rad", "largest |phi_outer - phi_inner| per pair (below pi/2)")
    inner_z_min: tuple = param(
        (-20.0, -6.0, -24.0, -22.0, 4.0, -28.0, 28.0, -31.0, -23.0, 14.0,
         -28.0, 38.0, -41.0, -17.0, -20.0, -4.0, -28.0, 28.0, -31.0),
        "cm", "lowest z of the inner hit per pair")
    inner_z_max: tuple = param(
        (20.0, 24.0, 6.0, 22.0, 28.0, -4.0, 31.0, -28.0, 23.0, 28.0,
         -14.0, 41.0, -38.0, 17.0, 20.0, 28.0, 4.0, 31.0, -28.0),
        "cm", "highest z of the inner hit per pair")
    dr_max: tuple = param(
        (4.5, 14.0, 14.0, 5.0, 10.0, 10.0, 7.0, 7.0, 6.0, 6.0,
         6.0, 5.5, 5.5, 8.5, 10.0, 14.0, 14.0, 10.0, 10.0),
        "cm", "largest r_outer - r_inner per pair (r_outer > r_inner always)")
    z0_max: float = param(12.0, "cm",
                          "largest |z| where the doublet's r-z line meets the beam line "
                          "(luminous region: sigma_z = 4 cm)")
    eta_max: float = param(3.2, "", "largest |eta| of the doublet's r-z direction: "
                           "|dz/dr| <= sinh(eta_max)")
    pt_min: float = param(0.8, "GeV", "smallest pT of the circle through the beam line and both "
                          "hits (in the detector geometry's field)")
    cluster_cut_inner: bool = param(True, "", "cut on the inner hit's cluster length along "
                                    "local y against the doublet's r-z angle")
    cluster_cut_outer: bool = param(True, "", "the same cut on the outer hit")
    size_below: float = param(0.5, "pixels", "size_y may be this much below the prediction "
                              "thickness * |dz/dr| / pitch_y (barrel), * |dr/dz| (disks), "
                              "thickness and pitch_y of the detector geometry")
    size_above: float = param(2.5, "pixels", "size_y may be this much above the prediction")
    n_phi_bins: int = param(128, "", "phi bins of the search structure (per event and layer)")
    capacity: int = param(0, "doublets", "first size of the cuda output buffer (0: 4 per hit "
                          "+ 1024); grown and rerun when too small, never truncated")

    def __post_init__(self) -> None:
        import math

        n = len(self.layer_pairs)
        pairs = [tuple(p) for p in self.layer_pairs]
        if n == 0:
            raise ConfigError("[doublets] layer_pairs must list at least one (inner, outer) pair")
        for pair in pairs:
            if (len(pair) != 2 or not all(isinstance(v, int) and 0 <= v <= 9 for v in pair)
                    or pair[0] == pair[1]):
                raise ConfigError(
                    f"[doublets] layer_pairs: {pair!r} is not a pair of two different layer ids "
                    "0-9 (0-3 barrel, 4-6 disks +z, 7-9 disks -z)")
        if len(set(pairs)) != n:
            raise ConfigError(f"[doublets] layer_pairs lists a pair twice: {self.layer_pairs!r}")
        for name in ("phi_window", "inner_z_min", "inner_z_max", "dr_max"):
            value = getattr(self, name)
            if len(value) != n:
                raise ConfigError(f"[doublets] {name} needs {n} entries (one per layer pair), "
                                  f"got {len(value)}")
        for p, w in enumerate(self.phi_window):
            if not 0.0 < w < math.pi / 2:
                raise ConfigError(f"[doublets] phi_window[{p}] = {w} rad is not in (0, pi/2)")
        for p, (lo, hi) in enumerate(zip(self.inner_z_min, self.inner_z_max, strict=True)):
            if lo > hi:
                raise ConfigError(f"[doublets] inner_z_min[{p}] = {lo} cm > inner_z_max[{p}] = "
                                  f"{hi} cm")
        for name in ("z0_max", "eta_max", "pt_min"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"[doublets] {name} must be > 0, got {getattr(self, name)}")
        if self.size_below < 0 or self.size_above < 0:
            raise ConfigError("[doublets] size_below and size_above must be >= 0 pixels")
        if not 1 <= self.n_phi_bins <= 4096:
            raise ConfigError(f"[doublets] n_phi_bins must be 1-4096, got {self.n_phi_bins}")
        if self.capacity < 0:
            raise ConfigError(f"[doublets] capacity must be >= 0, got {self.capacity}")


@dataclass(frozen=True)
class TopoclusterConfig:
    """Stage ``topocluster``: ATLAS-style 4-2-0 topological clustering of calorimeter cells.

    Thresholds are on the cell significance ``|E| / sigma_noise`` (two-sided, as ATLAS), in
    units of the cell's total noise ``sigma_noise = sqrt(sigma_el**2 + pileup_mu *
    sigma_1**2)``: its electronic noise ``sigma_el`` (:mod:`hltemu.geometry`) and the pileup
    noise of ``pileup_mu`` interactions, ``sigma_1`` being the RMS energy one minimum-bias
    interaction leaves in the cell (per layer and eta ring, from the table ``pileup_noise``:
    ``builtin:NAME`` in ``hltemu/models`` or a path; format: :mod:`hltemu.calo_noise`).
    ``pileup_mu = 0``: electronic noise only (the table is then not read).  A cell passes a
    threshold when its significance is strictly above it.  Seeds must pass ``seed_threshold``,
    cells that grow a cluster (and merge clusters) ``grow_threshold``, the perimeter cells added
    last ``perimeter_threshold``; ``0 <= perimeter_threshold <= grow_threshold <=
    seed_threshold``.
    """

    seed_threshold: float = param(4.0, "sigma_noise", "seed cells: |E| / sigma above this")
    grow_threshold: float = param(2.0, "sigma_noise", "growing cells: |E| / sigma above this")
    perimeter_threshold: float = param(0.0, "sigma_noise",
                                       "perimeter cells: |E| / sigma above this")
    pileup_mu: float = param(50.0, "interactions", "<mu> the noise is tuned for: sigma_noise^2 "
                             "= sigma_el^2 + pileup_mu sigma_1^2; 0 = electronic noise only")
    pileup_noise: str = param("builtin:pileup_noise.npz", "",
                              "table of sigma_1 per layer and eta ring (builtin:NAME or path)")

    def __post_init__(self) -> None:
        import math

        values = (self.perimeter_threshold, self.grow_threshold, self.seed_threshold)
        if not all(math.isfinite(v) for v in values) or not (
                0.0 <= self.perimeter_threshold <= self.grow_threshold <= self.seed_threshold):
            raise ConfigError(
                "[topocluster] thresholds must be finite with 0 <= perimeter_threshold <= "
                f"grow_threshold <= seed_threshold, got perimeter_threshold="
                f"{self.perimeter_threshold}, grow_threshold={self.grow_threshold}, "
                f"seed_threshold={self.seed_threshold}")
        if not (math.isfinite(self.pileup_mu) and self.pileup_mu >= 0.0):
            raise ConfigError(f"[topocluster] pileup_mu must be finite and >= 0 interactions, "
                              f"got {self.pileup_mu}")
        if not self.pileup_noise:
            raise ConfigError("[topocluster] pileup_noise must name a table (builtin:NAME or a "
                              "path), got an empty string")


@dataclass(frozen=True)
class DoubletCnnConfig:
    """Stage ``doublet_cnn``: a small CNN scores each pixel doublet; doublets with a score below
    the working point are dropped (kept ones go to ``filtered_doublets``).

    ``weights`` names a model as ``builtin:NAME`` (shipped in ``hltemu/models``) or a path to
    ``NAME.json`` + ``NAME.npz`` (either file or the common stem), e.g. one written by
    ``hltemu train-doublet-cnn``.
    """

    weights: str = param("builtin:doublet_cnn", "", "doublet-CNN model (NAME.json + NAME.npz)")
    working_point: float = param(-1.0, "", "keep doublets with score >= this (0-1); negative: "
                                 "the model's own, which keeps 99% of true doublets")
    chunk_size: int = param(262144, "", "hits or doublets per kernel launch (bounds memory)")

    def __post_init__(self) -> None:
        if not self.working_point <= 1.0:
            raise ConfigError(f"[doublet_cnn] working_point must be <= 1 (negative: the model's "
                              f"own), got {self.working_point}")
        if self.chunk_size < 1:
            raise ConfigError(f"[doublet_cnn] chunk_size must be >= 1, got {self.chunk_size}")


@dataclass(frozen=True)
class AntiKtConfig:
    """Stage ``antikt``: anti-kT jets of calorimeter clusters (E-scheme), identical to FastJet.

    Jets carry the nominal area ``pi R^2`` (see :mod:`hltemu.stages.antikt`).
    """

    R: float = param(0.4, "", "jet radius in the rapidity-azimuth plane")
    pt_min: float = param(5.0, "GeV", "jets with pT below this are dropped (pT^2 >= pt_min^2 "
                          "kept, as FastJet's inclusive_jets)")

    def __post_init__(self) -> None:
        import math

        if not (self.R > 0 and math.isfinite(self.R)):
            raise ConfigError(f"[antikt] R must be a finite number > 0, got {self.R}")
        if not (self.pt_min >= 0 and math.isfinite(self.pt_min)):
            raise ConfigError(f"[antikt] pt_min must be >= 0 GeV, got {self.pt_min}")


@dataclass(frozen=True)
class GenJetsConfig:
    """Stage ``genjets``: anti-kT jets of generator final-state particles (``GenPart`` with
    status 1), identical to FastJet; neutrinos are left out unless ``include_neutrinos``."""

    R: float = param(0.4, "", "jet radius in the rapidity-azimuth plane")
    pt_min: float = param(5.0, "GeV", "generator jets with pT below this are dropped")
    include_neutrinos: bool = param(False, "", "cluster neutrinos (|pdgId| 12, 14, 16) too")

    def __post_init__(self) -> None:
        import math

        if not (self.R > 0 and math.isfinite(self.R)):
            raise ConfigError(f"[genjets] R must be a finite number > 0, got {self.R}")
        if not (self.pt_min >= 0 and math.isfinite(self.pt_min)):
            raise ConfigError(f"[genjets] pt_min must be >= 0 GeV, got {self.pt_min}")
