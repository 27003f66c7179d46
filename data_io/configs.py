"""Typed configs: dataclasses that reject unknown keys and badly typed values, and round-trip to YAML."""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from pathlib import Path
from typing import Any, Self

import yaml

from comical.data_io.errors import InputError


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every config: `from_dict` rejects unknown keys and mistyped values, `to_yaml`/`from_yaml` round-trip."""

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> Self:
        """The config of `values`, each checked against its field's type hint; `source` names them in errors.

        Ints must be ints (not booleans), floats ints or floats, or a string such as "1e-4" that YAML 1.1 leaves
        unparsed; booleans must be booleans, tuples lists whose elements are checked, nested configs mappings.
        """
        return cls._from_mapping(values, source, path="")

    @classmethod
    def _from_mapping(cls, values: dict[str, Any], source: str, path: str) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            where = f" in {path.rstrip('.')}" if path else ""
            raise InputError(f"{source}: unknown key(s) {unknown}{where} for {cls.__name__}; "
                             f"expected some of {sorted(names)}")
        hints = typing.get_type_hints(cls)
        checked = {}
        for name, value in values.items():
            kind = hints[name]
            if _is_config(kind) and isinstance(value, dict):  # nested configs arrive as mappings
                checked[name] = kind._from_mapping(value, source, path=f"{path}{name}.")
                continue
            try:
                checked[name] = _coerce(value, kind)
            except _WrongType:
                raise InputError(f"{source}: key {path}{name}: expected {_describe(kind)}, got {value!r}") from None
        try:
            return cls(**checked)
        except InputError:  # a check of the config's own: its message names the flag or key already
            raise
        except (TypeError, ValueError) as err:
            raise InputError(f"{source}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        return cls.from_dict(read_yaml(path), source=str(path))


def read_yaml(path: str | Path) -> dict:
    """A YAML config file's mapping, unchecked beyond being one (`Config.from_dict` checks its keys)."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err})".replace("\n", " ")) from None
    if not isinstance(values, dict):
        raise InputError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
    return values


class _WrongType(Exception):
    """A value that does not fit its field's type hint (`from_dict` turns it into an InputError)."""


def _is_config(kind) -> bool:
    return isinstance(kind, type) and issubclass(kind, Config)


def _coerce(value, kind):
    """`value` as the type hint `kind` wants it (ints to float, lists to tuples, "1e-4" to 1e-4), or _WrongType."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):  # `str | None`: the first arm that fits
        for arm in args:
            try:
                return _coerce(value, arm)
            except _WrongType:
                pass
        raise _WrongType
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _WrongType
        arms = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(arms) != len(value):
            raise _WrongType
        return tuple(_coerce(v, arm) for v, arm in zip(value, arms))
    if kind is type(None) and value is None:
        return None
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            number = float(value)
        except ValueError:
            raise _WrongType from None
        if math.isfinite(number):
            return number
    if kind is str and isinstance(value, str):
        return value
    if _is_config(kind) and isinstance(value, kind):
        return value
    if kind in (type(None), bool, int, float, str) or _is_config(kind):
        raise _WrongType
    return value  # a hint this check does not know: left to the dataclass


_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
          str: ("a string", "strings"), type(None): ("null", "nulls")}


def _describe(kind, *, plural: bool = False) -> str:
    """The type hint `kind` in words for an error message: `tuple[float, float]` -> "a list of 2 numbers"."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm, plural=plural) for arm in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0], plural=True)}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_describe(args[0], plural=True)}"
        return f"a list of {len(args)} values ({', '.join(_describe(arm) for arm in args)})"
    if _is_config(kind):
        return f"mappings of {kind.__name__} keys" if plural else f"a mapping of {kind.__name__} keys"
    if kind in _NAMES:
        return _NAMES[kind][plural]
    return getattr(kind, "__name__", str(kind))


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class source (the one after it on its line, else the block just above it), to
    its first sentence: the `--help` of the flag a field becomes, so a field's meaning is written once, beside it."""
    import inspect
    import re

    comments = {}
    for base in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(base) or base is Config:
            continue
        names = {f.name for f in dataclasses.fields(base)}
        above, trailing = [], None
        for line in inspect.getsource(base).splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                text = stripped.lstrip("# ")
                if trailing and text[:1].islower():  # a trailing comment that goes on below its field
                    comments[trailing] += " " + text
                else:
                    trailing = None
                    above.append(text)
                continue
            field = re.match(r"\s+(\w+)\s*:\s*[^=#]+?(?:=[^#]*)?(?:#\s*(.*))?$", line)
            trailing = None
            if field and field.group(1) in names and (field.group(2) or above):
                comments[field.group(1)] = field.group(2) or " ".join(above)
                trailing = field.group(1) if field.group(2) else None
            above = []
    return {name: _first_sentence(text) for name, text in comments.items()}


def _first_sentence(text: str) -> str:
    end = text.find(". ")
    return text if end < 0 else text[:end]
