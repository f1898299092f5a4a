"""Algorithms' own key sections: an algorithm that brings keys of its own declares them as a dataclass, and they
appear under ``algo.<its name>.*`` (as PPO's under ``algo.ppo.*``), with their ranges, without a line here or in
the schema. The registry (:mod:`pql.algos`) registers each on import; :func:`schema` is the run config's class
with every registered section, the one :mod:`pql.config` reads, merges and lists keys against; a config as a
plain dict and back."""

from __future__ import annotations

import functools
import importlib
from dataclasses import asdict, dataclass, fields, make_dataclass
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pql.config.schema import AlgoConfig, Config, ConfigError, _opt

REGISTRY_MODULE = "pql.algos"  # imported by name on the first schema() (this layer imports nothing else of pql)


@dataclass(frozen=True)
class Section:
    """One algorithm's keys: their dataclass (defaults, types, ``help`` metadata) and ranges by key name."""

    owner: str  # the algorithm's name, and the section's: algo.<owner>.*
    keys: type
    ranges: dict[str, Any]  # key name (within the section) -> pql.config.ranges.Range


_SECTIONS: dict[str, Section] = {}


def register_section(owner: str, keys: type, ranges: dict[str, Any]) -> None:
    """Add ``owner``'s keys as the section ``algo.<owner>``; ValueError where that name is already a key."""
    taken = {f.name for f in fields(AlgoConfig)}
    if owner in taken:
        raise ValueError(f"algo.{owner} is already a key; an algorithm's section needs a name of its own")
    _SECTIONS[owner] = Section(owner, keys, dict(ranges))
    schema.cache_clear()


def sections() -> dict[str, Section]:
    """The registered sections by owner (the registry loaded first)."""
    schema()
    return dict(_SECTIONS)


def _reduce(cfg: Config) -> tuple[Any, tuple[Any, ...]]:
    """Pickle a config of the extended schema by value: a worker process rebuilds its class from the registry."""
    return config_from_dict, (config_to_dict(cfg), "a pickled config")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), as written to ``config.yaml``: the fields in their order, as
    OmegaConf writes them (a test holds the two equal), without its cost (a status or report makes one per
    run)."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, tuple | list) else value

    data = plain(asdict(cfg))
    for owner in sections():  # another algorithm's own section is not part of this run's config
        if owner != cfg.algo.name:
            data["algo"].pop(owner, None)
    return data


def config_from_dict(data: Any, source: str) -> Config:
    """A Config from the nested dict of :func:`config_to_dict` (ConfigError naming ``source`` if it is
    not one: a key this version does not know, a bad value). Not validated."""
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema()), data))
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"{source} is not a pql config: {str(err).splitlines()[0]}") from None
    assert isinstance(cfg, Config)
    return cfg
@functools.cache
def schema() -> type[Config]:
    """The run config's class: :class:`Config`, its ``algo`` extended by every registered section."""
    importlib.import_module(REGISTRY_MODULE)  # registers the built-in and the plugin algorithms' sections
    if not _SECTIONS:
        return Config
    algo_fields = [(s.owner, s.keys, _opt(s.keys(), f"{s.owner} only")) for s in _SECTIONS.values()]
    algo = make_dataclass("AlgoConfig", algo_fields, bases=(AlgoConfig,), frozen=True,
                          namespace={"__doc__": AlgoConfig.__doc__, "__module__": __name__})
    help_text = next(f.metadata["help"] for f in fields(Config) if f.name == "algo")
    return make_dataclass("Config", [("algo", algo, _opt(algo(), help_text))], bases=(Config,), frozen=True,
                          namespace={"__doc__": Config.__doc__, "__reduce__": _reduce, "__module__": __name__})
