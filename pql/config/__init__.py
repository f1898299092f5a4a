"""Run configuration: the schema, its presets, dotted keys, numeric ranges and files; nothing else of pql.

Precedence, lowest first: dataclass defaults < the task's preset (data in ``pql/presets.yaml``) < the
user's ``KEY=VALUE`` overrides. A user's value always wins, whatever it equals (the reference code applied
task overrides only while a value still equalled its default). Merging those layers into a checked config
is :mod:`pql.resolve`'s, which knows the algorithms and simulators.
"""

from pql.config.files import FAST_YAML_LOADER, load_config, read_yaml_mapping, yaml_problem
from pql.config.keys import (
    all_keys,
    describe,
    dotlist,
    dotted_overrides,
    parse_overrides,
    unknown_key_error,
    value_text,
)
from pql.config.presets_yaml import (
    SUPPORT_MARGIN,
    atom_range,
    presets,
    return_bounds,
    thresholds,
    value_support,
)
from pql.config.ranges import (
    INT64_MAX,
    NUMBER_RANGES,
    SEED_MAX,
    Range,
    check_numbers,
    number_problem,
    numeric_keys,
)
from pql.config.schema import (
    EVALS_PER_BUDGET,
    LR_SCHEDULES,
    MODES,
    NOISE_KINDS,
    AlgoConfig,
    Config,
    ConfigError,
    DeviceConfig,
    NoiseConfig,
    PPOConfig,
)
from pql.config.sections import config_from_dict, config_to_dict, schema

__all__ = [
    "EVALS_PER_BUDGET", "FAST_YAML_LOADER", "INT64_MAX", "LR_SCHEDULES", "MODES", "NOISE_KINDS", "NUMBER_RANGES",
    "SEED_MAX", "SUPPORT_MARGIN", "AlgoConfig", "Config", "ConfigError", "DeviceConfig", "NoiseConfig", "PPOConfig",
    "Range", "all_keys", "atom_range", "check_numbers", "config_from_dict", "config_to_dict", "describe", "dotlist",
    "dotted_overrides", "load_config", "number_problem", "numeric_keys", "parse_overrides", "presets",
    "read_yaml_mapping", "return_bounds", "schema", "thresholds", "unknown_key_error", "value_support", "value_text",
    "yaml_problem",
]
