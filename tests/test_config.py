"""Stage configs: TOML round trip, and errors naming file, table, key and valid choices."""

from __future__ import annotations

import pytest
from stage_fixtures import CellSumConfig, cell_sum_stage  # noqa: F401

from hltemu.config import ConfigError, HLTConfig, describe, stage_config_from_dict


def test_toml_round_trip(tmp_path, cell_sum_stage):  # noqa: F811
    cfg = HLTConfig.from_dict({"cell_sum": {"scale": 2, "threshold": 0.5, "label": "E"}})
    assert cfg["cell_sum"] == CellSumConfig(scale=2.0, threshold=0.5, label="E")
    path = tmp_path / "hlt.toml"
    cfg.save(path)
    assert "[cell_sum]" in path.read_text()
    again = HLTConfig.load(path)
    assert again["cell_sum"] == cfg["cell_sum"]
    assert again.to_dict() == cfg.to_dict()


def test_units_are_recorded():
    rows = {name: unit for name, _value, unit, _doc in describe(CellSumConfig())}
    assert rows == {"scale": "", "threshold": "GeV", "label": ""}


def test_unknown_key_names_file_table_and_valid_keys(tmp_path, cell_sum_stage):  # noqa: F811
    path = tmp_path / "bad.toml"
    path.write_text("[cell_sum]\nthreshhold = 1.0\n")
    with pytest.raises(ConfigError, match=r"bad.toml: \[cell_sum\]: unknown key\(s\) 'threshhold'; valid keys: label, scale, threshold"):
        HLTConfig.load(path)


def test_unknown_stage_table(tmp_path, cell_sum_stage):  # noqa: F811
    path = tmp_path / "bad.toml"
    path.write_text("[no_such_stage]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"unknown stage table \[no_such_stage\]; stages: .*cell_sum"):
        HLTConfig.load(path)


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
        HLTConfig.load(tmp_path / "nope.toml")
    bad = tmp_path / "broken.toml"
    bad.write_text("[cell_sum\nscale = 1\n")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        HLTConfig.load(bad)
