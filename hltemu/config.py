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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w


class ConfigError(ValueError):
    """A configuration file or value that cannot be used."""


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
    unknown = sorted(set(table) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(sorted(names))}"
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
