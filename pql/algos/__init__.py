"""The algorithm registry: one module per algorithm declares it (:class:`~pql.algos.base.Algorithm`); adding one
is its module, a line in :data:`MODULES` and its presets in ``pql/presets.yaml``.

A module outside the package registers the same way by name: ``PQL_ALGORITHMS=my_pkg.my_algo`` (comma-separated
module names, each with an ``ALGORITHM``). The variable reaches every process a run starts (async workers, a
study's jobs), and each imports the modules again, so a registered algorithm works in every mode.
"""

from __future__ import annotations

import copyreg
import importlib
import os

from pql.algos.base import Algorithm
from pql.config import ConfigError
from pql.config.sections import register_section

MODULES = ("pql.algos.pql", "pql.algos.pql_d", "pql.algos.ddpg", "pql.algos.sac", "pql.algos.ppo", "pql.algos.fast_td3",
           "pql.algos.fast_sac")
PLUGINS_VARIABLE = "PQL_ALGORITHMS"


def _declared(module: str) -> Algorithm:
    """The ``ALGORITHM`` of ``module`` (ConfigError naming the module and the variable when it has none)."""
    try:
        declared = importlib.import_module(module).ALGORITHM
    except ImportError as err:
        raise ConfigError(f"{PLUGINS_VARIABLE}: cannot import {module} ({err})") from None
    except AttributeError:
        raise ConfigError(f"{PLUGINS_VARIABLE}: {module} has no ALGORITHM") from None
    if not isinstance(declared, Algorithm):
        raise ConfigError(f"{PLUGINS_VARIABLE}: {module}.ALGORITHM is not a pql.algos.base.Algorithm")
    return declared


def plugin_modules() -> list[str]:
    """The module names in ``PQL_ALGORITHMS``."""
    return [m.strip() for m in os.environ.get(PLUGINS_VARIABLE, "").split(",") if m.strip()]


ALGORITHMS: dict[str, Algorithm] = {}
for _module in (*MODULES, *plugin_modules()):
    _algo = _declared(_module)
    if _algo.name in ALGORITHMS:
        raise ConfigError(f"{_module}: an algorithm called '{_algo.name}' is registered already")
    ALGORITHMS[_algo.name] = _algo
    if _algo.keys is not None:
        register_section(_algo.name, _algo.keys, _algo.key_ranges)
del _module, _algo


def algorithm(name: str) -> Algorithm:
    """The registered algorithm called ``name`` (KeyError naming the known ones)."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise KeyError(f"unknown algo '{name}'; known: {', '.join(ALGORITHMS)}") from None


def _by_name(declared: Algorithm) -> tuple[object, tuple[str]]:
    """Pickle a declaration by its name (its factories may be lambdas): the receiving process, a spawned worker
    among them, takes it from its own registry."""
    return algorithm, (declared.name,)


copyreg.pickle(Algorithm, _by_name)


def owners(key: str) -> list[str]:
    """The algorithms that own the dotted ``key`` (``algo.<owned>`` or below it, or their own section's);
    [] for a key every algorithm shares or one of the run's."""
    parts = key.split(".")
    if len(parts) < 2 or parts[0] != "algo":
        return []
    return [a.name for a in ALGORITHMS.values() if parts[1] in a.owns or (a.keys is not None and parts[1] == a.name)]


def identity_defaults() -> dict[str, str]:
    """Every algorithm's keys added since run-id schema 2, with the value at which they stay out of a run id."""
    return {k: v for a in ALGORITHMS.values() for k, v in a.identity_defaults.items()}
