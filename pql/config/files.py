"""Configs as files: ``config.yaml`` read back, and YAML mappings read with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pql.config.schema import Config, ConfigError
from pql.config.sections import config_from_dict

# libyaml's loader where PyYAML was built with it (its wheels are): 10x faster on presets and config.yaml files
FAST_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def yaml_problem(err: yaml.YAMLError) -> str:
    """A one-line description of a YAML syntax error with its line and column."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"not valid YAML: {getattr(err, 'problem', None) or err}{where}"


def read_yaml_mapping(path: Path, label: str, shape: str) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (empty file: {}); ConfigError starting with ``label`` when it
    is missing, unreadable, not YAML, or not a mapping (``shape`` says what it should hold)."""
    if not path.is_file():
        raise ConfigError(f"{label}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{label}: {yaml_problem(err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{label}: cannot be read ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping of {shape}, got {type(data).__name__}")
    return data


def load_config(path: str) -> Config:
    """Read a ``config.yaml`` written by :func:`config_to_dict` back into a Config (ConfigError naming
    the file if it is not one)."""
    try:
        with open(path) as fh:
            data = yaml.load(fh, Loader=FAST_YAML_LOADER)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {yaml_problem(err)}") from None
    except OSError as err:
        raise ConfigError(f"{path}: {err.strerror}") from None
    return config_from_dict(data, path)
