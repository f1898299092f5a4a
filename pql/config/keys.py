"""Dotted keys: every key of the schema, ``--help``'s rows, ``KEY=VALUE`` words parsed, and overrides as an
OmegaConf layer (a plain ``str`` key's value kept as written)."""

from __future__ import annotations

import difflib
import functools
from dataclasses import fields, is_dataclass
from typing import Any, get_type_hints

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pql.config.schema import ConfigError
from pql.config.sections import schema


def all_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the config (``cls``: the schema with every algorithm's section), in declaration
    order."""
    keys: list[str] = []
    for f in fields(cls or schema()):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys.extend(all_keys(type(default), prefix + f.name + "."))
        else:
            keys.append(prefix + f.name)
    return keys


def describe(cls: type | None = None, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, meaning) for every leaf key, for ``--help``."""
    rows: list[tuple[str, Any, str]] = []
    for f in fields(cls or schema()):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            rows.extend(describe(type(default), prefix + f.name + "."))
        else:
            rows.append((prefix + f.name, default, f.metadata.get("help", "")))
    return rows


def unknown_key_error(key: str) -> ConfigError:
    """ConfigError for a key the schema does not have, with the closest known keys."""
    near = difflib.get_close_matches(key, all_keys(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else "; see 'pql train --help'"
    return ConfigError(f"unknown config key '{key}'{hint}")


def value_text(value: Any) -> str:
    """A value as the text of a ``KEY=VALUE`` override (YAML flow style)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(value_text(v) for v in value) + "]"
    return "null" if value is None else str(value)


def dotted_overrides(value: Any, prefix: str = "") -> dict[str, str]:
    """Dotted ``KEY=VALUE`` overrides for a nested ``value`` placed at ``prefix`` (``algo: X`` means algo.name)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(dotted_overrides(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {"algo.name" if prefix == "algo" else prefix: value_text(value)}


def parse_overrides(args: list[str]) -> dict[str, str]:
    """Split ``KEY=VALUE`` words into a dict, expanding ``algo=X`` to ``algo.name=X``."""
    out: dict[str, str] = {}
    valid = set(all_keys())
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got '{arg}'")
        if key == "algo":
            key = "algo.name"
        if key not in valid:
            raise unknown_key_error(key)
        out[key] = value
    return out


@functools.cache
def _text_keys(cls: type, prefix: str = "") -> frozenset[str]:
    """The dotted keys whose type is plain ``str``: their override values are kept as written (YAML would
    read ``compile=off`` as the boolean false)."""
    hints = get_type_hints(cls)
    keys: set[str] = set()
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            keys |= _text_keys(hints[f.name], prefix + f.name + ".")
        elif hints[f.name] is str:
            keys.add(prefix + f.name)
    return frozenset(keys)


def dotlist(overrides: dict[str, Any]) -> Any:
    """``overrides`` (dotted keys) as an OmegaConf layer; a plain ``str`` key's value kept as written."""
    text_keys = _text_keys(schema())
    verbatim = {k: v for k, v in overrides.items() if k in text_keys and isinstance(v, str)}
    try:
        conf = OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items() if k not in verbatim])
        for key, value in verbatim.items():
            OmegaConf.update(conf, key, value, force_add=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad override: {str(err).splitlines()[0]}") from None
    return conf
