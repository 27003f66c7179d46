"""Typed configs: dataclasses that reject unknown keys and round-trip to YAML."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Self

import yaml

from comical.data_io.errors import InputError


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every config: `from_dict` rejects unknown keys, `to_yaml`/`from_yaml` round-trip."""

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> Self:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"{source}: unknown key(s) {unknown} for {cls.__name__}; expected some of {sorted(names)}")
        hints = typing.get_type_hints(cls)
        values = dict(values)
        for name, value in values.items():  # nested configs arrive as mappings
            kind = hints[name]
            if isinstance(value, dict) and isinstance(kind, type) and issubclass(kind, Config):
                values[name] = kind.from_dict(value, source=f"{source}: {name}")
            elif isinstance(value, list):
                values[name] = tuple(value)
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise InputError(f"{source}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise InputError(f"{path}: config file not found") from None
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML ({err})".replace("\n", " ")) from None
        if not isinstance(values, dict):
            raise InputError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
        return cls.from_dict(values, source=str(path))
