"""The algorithm registry: one module per algorithm declares it (:class:`~pql.algos.base.Algorithm`);
adding one is its module, a line here and its presets in ``pql/presets.yaml``."""

from __future__ import annotations

from pql.algos import ddpg, ppo, pql, pql_d, sac
from pql.algos.base import Algorithm

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (pql.ALGORITHM, pql_d.ALGORITHM, ddpg.ALGORITHM,
                                                        sac.ALGORITHM, ppo.ALGORITHM)}


def algorithm(name: str) -> Algorithm:
    """The registered algorithm called ``name`` (KeyError naming the known ones)."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise KeyError(f"unknown algo '{name}'; known: {', '.join(ALGORITHMS)}") from None
