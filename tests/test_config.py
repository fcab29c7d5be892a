"""Stage configs: TOML round trip, and errors naming file, table, key and valid choices."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import pytest
import tomli_w
from stage_fixtures import CellSumConfig, cell_sum_stage  # noqa: F401

from hltemu.config import (
    ConfigError,
    MovedKey,
    MovedKeyWarning,
    describe,
    param,
    stage_config_from_dict,
)
from hltemu.geometry import default_geometry
from hltemu.pipeline import config_from_dict, default_config, load_config
from hltemu.stages.doublets import DoubletsConfig


def test_toml_round_trip(tmp_path, cell_sum_stage):  # noqa: F811
    cfg = config_from_dict({"cell_sum": {"scale": 2, "threshold": 0.5, "label": "E"}})
    assert cfg["cell_sum"] == CellSumConfig(scale=2.0, threshold=0.5, label="E")
    path = tmp_path / "hlt.toml"
    cfg.save(path)
    assert "[cell_sum]" in path.read_text()
    again = load_config(path)
    assert again["cell_sum"] == cfg["cell_sum"]
    assert again.to_dict() == cfg.to_dict()


def test_units_are_recorded():
    rows = {name: unit for name, _value, unit, _doc in describe(CellSumConfig())}
    assert rows == {"scale": "", "threshold": "GeV", "label": ""}


def test_unknown_key_names_file_table_and_valid_keys(tmp_path, cell_sum_stage):  # noqa: F811
    path = tmp_path / "bad.toml"
    path.write_text("[cell_sum]\nthreshhold = 1.0\n")
    with pytest.raises(ConfigError, match=r"bad.toml: \[cell_sum\]: unknown key\(s\) 'threshhold'; valid keys: label, scale, threshold"):
        load_config(path)


def test_unknown_stage_table(tmp_path, cell_sum_stage):  # noqa: F811
    path = tmp_path / "bad.toml"
    path.write_text("[no_such_stage]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"unknown stage table \[no_such_stage\]; stages: .*cell_sum"):
        load_config(path)


@pytest.mark.parametrize(
    "table, match",
    [
        ({"scale": "big"}, r"\[cell_sum\]\.scale: expected a number, got 'big'"),
        ({"label": 3}, r"\.label: expected a string, got 3"),
        ({"threshold": True}, r"\.threshold: expected a number, got True"),
    ],
)
def test_wrong_types(table, match):
    with pytest.raises(ConfigError, match=match):
        stage_config_from_dict(CellSumConfig, table, "f.toml: [cell_sum]")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file .*nope.toml' does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "broken.toml"
    bad.write_text("[cell_sum\nscale = 1\n")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        load_config(bad)


# -- keys that moved elsewhere -----------------------------------------------------------------
@dataclass(frozen=True)
class _MovedConfig:
    """A config whose former key ``width`` now comes from elsewhere (2.5 cm)."""

    MOVED_KEYS: ClassVar = MappingProxyType({
        "width": MovedKey("the test source (W)", "cm", lambda: 2.5, "use scale")})
    scale: float = param(1.0, "", "a factor")


def test_moved_key_equal_value_warns_and_is_ignored():
    assert issubclass(MovedKeyWarning, FutureWarning)
    assert [f.name for f in dataclasses.fields(_MovedConfig)] == ["scale"]
    with pytest.warns(MovedKeyWarning) as rec:
        cfg = stage_config_from_dict(_MovedConfig, {"width": 2.5, "scale": 3}, "f.toml: [t]")
    assert cfg == _MovedConfig(scale=3.0)
    assert [str(w.message) for w in rec] == [
        "f.toml: [t] width is now taken from the test source (W) = 2.5 cm; the key is ignored "
        "(remove it)"]


@pytest.mark.parametrize("value, match", [
    (3.0, r"f.toml: \[t\] width = 3.0 cm differs from the test source \(W\) = 2.5 cm, the "
          r"value used now: the key is no longer read and 3.0 cm cannot be applied; remove the "
          r"key; use scale"),
    ("wide", r"f.toml: \[t\].width: expected a number, got 'wide' \(the key is no longer read: "
             r"the value is the test source \(W\)\)"),
    (True, r"\.width: expected a number, got True"),
])
def test_moved_key_other_value_is_an_error(value, match):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an error, and no warning before it
        with pytest.raises(ConfigError, match=match):
            stage_config_from_dict(_MovedConfig, {"width": value}, "f.toml: [t]")


#: The [doublets] keys that moved to the detector geometry, with the geometry's values.
DOUBLETS_MOVED = {"b_field": (3.8, "T", "default_geometry().b_field, DetectorConfig.b_field"),
                  "pitch_y": (0.015, "cm", "default_geometry().pixel.pitch_y, "
                              "DetectorConfig.pixel_pitch_y"),
                  "sensor_thickness": (0.0285, "cm", "default_geometry().pixel.thickness, "
                                       "DetectorConfig.pixel_thickness")}


def test_doublets_keys_moved_to_the_geometry():
    geom = default_geometry()
    assert set(DoubletsConfig.MOVED_KEYS) == set(DOUBLETS_MOVED)
    names = {f.name for f in dataclasses.fields(DoubletsConfig)}
    assert not names & set(DOUBLETS_MOVED)
    current = {k: m.current() for k, m in DoubletsConfig.MOVED_KEYS.items()}
    assert current == {"b_field": geom.b_field, "pitch_y": geom.pixel.pitch_y,
                       "sensor_thickness": geom.pixel.thickness}
    assert current == {k: v for k, (v, _, _) in DOUBLETS_MOVED.items()}


def test_old_doublets_file_loads_with_warnings_and_the_same_config(tmp_path):
    """A [doublets] table as the code before the move saved it (every key, the moved ones at
    their defaults) loads with one MovedKeyWarning per moved key naming the geometry, and gives
    the configuration (hence the cuts and the results) of a file without them."""
    old = default_config().to_dict()["doublets"]
    old.update({k: v for k, (v, _, _) in DOUBLETS_MOVED.items()})
    path = tmp_path / "old.toml"
    path.write_text(tomli_w.dumps({"doublets": old}))
    with pytest.warns(MovedKeyWarning) as rec:
        cfg = load_config(path)
    messages = sorted(str(w.message) for w in rec if w.category is MovedKeyWarning)
    assert messages == sorted(
        f"{path}: [doublets] {k} is now taken from the detector geometry (hltemu.geometry."
        f"{src}) = {v} {unit}; the key is ignored (remove it)"
        for k, (v, unit, src) in DOUBLETS_MOVED.items())
    assert cfg["doublets"] == DoubletsConfig()
    saved = tmp_path / "new.toml"
    cfg.save(saved)
    assert not set(DOUBLETS_MOVED) & set(load_config(saved).to_dict()["doublets"])


@pytest.mark.parametrize("key, value", [("b_field", 2.0), ("pitch_y", 0.01),
                                        ("sensor_thickness", 0.03)])
def test_doublets_moved_key_with_another_value_is_an_error(tmp_path, key, value):
    path = tmp_path / "old.toml"
    path.write_text(tomli_w.dumps({"doublets": {key: value}}))
    geo, unit, src = DOUBLETS_MOVED[key]
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(
        f"{path}: [doublets] {key} = {value} {unit} differs from the detector geometry "
        f"(hltemu.geometry.{src}) = {geo} {unit}, the value used now")
