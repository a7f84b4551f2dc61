"""Experiment configs: frozen dataclasses with the paper's settings as defaults, named presets,
and `key=value` overrides checked against the fields (unknown key or wrong type: an error that
lists the valid keys)."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Mapping


class ConfigError(ValueError):
    pass


def _convert(name: str, text: str, kind) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):  # Optional[X]: "none" or an X
        if text.lower() == "none":
            return None
        return _convert(name, text, next(a for a in typing.get_args(kind) if a is not type(None)))
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} expects true or false, not {text!r}")
    if origin is tuple:
        item = typing.get_args(kind)[0]
        return tuple(_convert(name, part, item) for part in text.split(",") if part)
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} expects a {getattr(kind, '__name__', kind)}, not {text!r}") from None


def field_types(config_class) -> dict[str, Any]:
    hints = typing.get_type_hints(config_class)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_class)}


def parse_overrides(config_class, pairs: list[str]) -> dict[str, Any]:
    """['beta=1e-4', 'hidden=400,400,200'] -> typed values; errors name the valid keys."""
    types = field_types(config_class)
    values = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not key=value")
        key, text = pair.split("=", 1)
        if key not in types:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(types)}")
        values[key] = _convert(key, text, types[key])
    return values


def resolve(config_class, presets: Mapping[str, Mapping[str, Any]], preset: str,
            overrides: Mapping[str, Any] | None = None):
    """The config of a preset with overrides applied."""
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(presets)}")
    types = field_types(config_class)
    values = {**presets[preset], **(overrides or {})}
    unknown = set(values) - set(types)
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(unknown)}; valid keys: {', '.join(types)}")
    return config_class(**values)


def to_json(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))
