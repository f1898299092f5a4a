"""Configs as files: ``config.yaml`` written and read back, and YAML mappings read with errors that name the file."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pql.config.schema import Config, ConfigError

# libyaml's loader where PyYAML was built with it (its wheels are): 10x faster on presets and config.yaml files
FAST_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), as written to ``config.yaml``: the fields in their order, as
    OmegaConf writes them (a test holds the two equal), without its cost (a status or report makes one per
    run)."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, tuple | list) else value

    return plain(asdict(cfg))


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


def config_from_dict(data: Any, source: str) -> Config:
    """A Config from the nested dict of :func:`config_to_dict` (ConfigError naming ``source`` if it is
    not one: a key this version does not know, a bad value). Not validated."""
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"{source} is not a pql config: {str(err).splitlines()[0]}") from None
    assert isinstance(cfg, Config)
    return cfg
