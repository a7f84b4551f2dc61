"""Configs: frozen dataclasses whose defaults are the settings (an experiment's: the paper's), with
nested groups such as `mask: MaskConfig` (dotted keys: `mask.beta`), named presets, and `key=value`
overrides checked against the fields (unknown key or wrong type: an error that lists the valid keys).

Per-variant defaults: a field left None takes the value of the config's `variant_defaults()`
(e.g. the SCAN Transformer's beta), filled in when the config is resolved, so config.json records
the values used. Aliases (the flat keys of modmask 0.1, `beta`, `mask_lr`, ..., in runs/legacy.py)
are passed in by the caller.

The ground floor of the package: imports no other modmask module.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Mapping


class ConfigError(ValueError):
    pass


def flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """{'mask': {'beta': 1e-4}} -> {'mask.beta': 1e-4} (dotted keys pass through)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        else:
            flat[key] = value
    return flat


def nest(values: dict[str, Any]) -> dict[str, Any]:
    """{"mask.beta": 1e-4, "hidden": [..]} -> {"mask": {"beta": 1e-4}, "hidden": [..]}."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        group, _, name = key.rpartition(".")
        target = nested
        for part in filter(None, group.split(".")):
            target = target.setdefault(part, {})
        target[name] = value
    return nested


def _convert(name: str, text: str, kind) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):  # "none", or the first of the types that takes the text
        if text.lower() == "none" and type(None) in typing.get_args(kind):
            return None
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        for option in options[:-1]:
            try:
                return _convert(name, text, option)
            except ConfigError:
                pass
        return _convert(name, text, options[-1])
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} expects true or false, not {text!r}")
    if origin is tuple:
        item = typing.get_args(kind)[0]
        return tuple(_convert(name, part, item) for part in text.split(",") if part)
    if kind is Any:
        return text
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} expects a {getattr(kind, '__name__', kind)}, not {text!r}") from None


def field_types(config_class) -> dict[str, Any]:
    """Every key of a config class, nested groups as dotted keys ('mask.beta'), with its type."""
    hints = typing.get_type_hints(config_class)
    types_ = {}
    for field in dataclasses.fields(config_class):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            types_.update({f"{field.name}.{k}": v for k, v in field_types(kind).items()})
        else:
            types_[field.name] = kind
    return types_


def _canonical(config_class, values: Mapping[str, Any], aliases: Mapping[str, str]) -> dict[str, Any]:
    """Dotted keys, aliases replaced; unknown keys are an error that lists the valid ones."""
    types_ = field_types(config_class)
    flat = {aliases.get(k, k): v for k, v in flatten(values).items()}
    unknown = sorted(set(flat) - set(types_))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {', '.join(types_)}")
    return flat


def parse_overrides(config_class, pairs: list[str], aliases: Mapping[str, str] | None = None) -> dict[str, Any]:
    """['mask.beta=1e-4', 'hidden=400,400,200'] -> typed values by dotted key; an alias (`beta`)
    gives its dotted key. Errors name the valid keys."""
    types_ = field_types(config_class)
    aliases = aliases or {}
    values = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not key=value")
        key, text = pair.split("=", 1)
        key = aliases.get(key, key)
        if key not in types_:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(types_)}")
        values[key] = _convert(key, text, types_[key])
    return values


def build(config_class, values: Mapping[str, Any]):
    """A config from dotted (or nested) values over the class defaults; per-variant defaults filled."""
    nested = nest(flatten(values))
    try:
        kwargs = {f.name: dataclasses.replace(f.default, **nested[f.name]) if isinstance(nested[f.name], dict)
                  else nested[f.name]  # a group: its values over the group's default
                  for f in dataclasses.fields(config_class) if f.name in nested}
        config = config_class(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None
    return fill_defaults(config, config.variant_defaults()) if hasattr(config, "variant_defaults") else config


def fill_defaults(config, defaults: Mapping[str, Any]):
    """The config with every field that is None and has an entry in `defaults` (dotted keys) set to it."""
    current = flatten(to_dict(config))
    missing = {k: v for k, v in flatten(defaults).items() if current.get(k, 0) is None}
    if not missing:
        return config
    groups = nest(missing)
    changes = {name: dataclasses.replace(getattr(config, name), **value) if isinstance(value, dict) else value
               for name, value in groups.items()}
    return dataclasses.replace(config, **changes)


_POSITIVE = ("steps", "size", "every", "images", "tasks")


def check_values(config) -> None:
    """Counts that must be positive (names ending in steps, size, every, images, tasks) or not
    negative (draws), for every key at once, before any work starts."""
    values = {k: v for k, v in flatten(to_dict(config)).items() if isinstance(v, int) and not isinstance(v, bool)}
    bad = [f"{k}={v}: must be positive" for k, v in values.items() if k.endswith(_POSITIVE) and v < 1]
    bad += [f"{k}={v}: must be 0 or more" for k, v in values.items() if k.endswith("draws") and v < 0]
    if bad:
        raise ConfigError("; ".join(bad))


def resolve(config_class, presets: Mapping[str, Mapping[str, Any]], preset: str,
            overrides: Mapping[str, Any] | None = None, aliases: Mapping[str, str] | None = None):
    """The config of a preset with overrides (dotted keys or aliases) applied, checked."""
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(presets)}")
    values = {**_canonical(config_class, presets[preset], aliases or {}),
              **_canonical(config_class, overrides or {}, aliases or {})}
    config = build(config_class, values)
    check_values(config)
    return config


def to_dict(config) -> dict:
    return {f.name: getattr(config, f.name) if not dataclasses.is_dataclass(getattr(config, f.name))
            else to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}


def to_json(config) -> dict:
    return json.loads(json.dumps(to_dict(config)))
