"""A run's resolved config: defaults, then presets, then the user's overrides, merged, its derived values filled in
(a categorical critic's atoms, a time budget's evaluation cadence) and checked against the algorithms and
simulators, before any work starts. Above :mod:`pql.config` (which imports nothing else of pql), below the
training that runs it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pql.config import (
    EVALS_PER_BUDGET,
    LR_SCHEDULES,
    MODES,
    NOISE_KINDS,
    Config,
    ConfigError,
    check_numbers,
    dotlist,
    presets,
    unknown_key_error,
)
from pql.config.sections import schema


def build_config(overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the task's preset, then ``overrides`` (dotted keys); validated."""
    overrides = dict(overrides or {})
    if "algo" in overrides:  # the shorthand algo=NAME
        overrides["algo.name"] = overrides.pop("algo")
    base = OmegaConf.structured(schema())
    user = dotlist(overrides)
    task = OmegaConf.select(user, "task", default=None) or base.task
    algo = OmegaConf.select(user, "algo.name", default=None) or base.algo.name
    return _merged(base, *presets(str(task), str(algo)), user)


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """``cfg`` with the dotted ``overrides`` applied, and no presets (a resolved config holds them
    already); validated. How a resumed run or a study's job gets its config."""
    return _merged(OmegaConf.structured(cfg), dotlist(overrides))


def _merged(*layers: Any) -> Config:
    """The layers merged onto the schema, lowest first, as a validated Config (ConfigError naming the key)."""
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(*layers))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        if "not in" in str(err).split("\n")[0]:
            raise unknown_key_error(str(key)) from None
        raise ConfigError(f"bad value for '{key}': {str(err).splitlines()[0]}") from None
    assert isinstance(cfg, Config)
    check_numbers(cfg)  # the values as given: a derived value must never take the blame for one of them
    from pql.algos import ALGORITHMS  # here: the algorithms import torch, which a job imports after its simulator

    if cfg.algo.buffer_per_env is not None:
        cfg = replace(cfg, algo=replace(cfg.algo, buffer_size=cfg.algo.buffer_per_env * cfg.num_envs))
    declared = ALGORITHMS.get(cfg.algo.name)
    if declared is not None and declared.derive is not None:
        cfg = declared.derive(cfg)
    if cfg.eval_every_s is None and cfg.max_time_s is not None:
        every = cfg.max_time_s / EVALS_PER_BUDGET
        cfg = replace(cfg, eval_every_s=round(every, 4) or every)  # never rounded to 0 for a tiny budget
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Raise ConfigError for values that cannot make a run, before any work starts: every number out of its
    range (:func:`check_numbers`), then what the keys must satisfy together, then the algorithm's own check."""
    from pql.algos import ALGORITHMS  # local: the algorithms and envs import torch
    from pql.envs import ONE_SIMULATION_PER_PROCESS, task_problem
    from pql.nets import ACTIVATIONS
    from pql.speed import AMP_MODES, COMPILE_MODES, MATMUL_PRECISIONS

    a, n = cfg.algo, cfg.noise

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    check_numbers(cfg)
    problem = task_problem(cfg.task)
    need(problem is None, str(problem))
    need(a.name in ALGORITHMS, f"unknown algo '{a.name}'; known: {', '.join(ALGORITHMS)}")
    declared = ALGORITHMS[a.name]
    need(cfg.mode in MODES, f"mode must be one of {', '.join(MODES)}, got '{cfg.mode}'")
    need(cfg.mode in declared.modes, f"algo={a.name} is a sequential baseline: it runs with mode=sync only"
         if declared.sequential else f"algo={a.name} runs with mode={' or '.join(declared.modes)} only")
    yaml_hint = " (in a YAML file write 'off' in quotes: a bare off reads as false)"
    need(cfg.compile in COMPILE_MODES, f"compile must be one of {', '.join(COMPILE_MODES)}, got '{cfg.compile}'"
                                       + (yaml_hint if cfg.compile == "False" else ""))
    need(cfg.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}, got '{cfg.amp}'"
                               + (yaml_hint if cfg.amp == "False" else ""))
    need(cfg.matmul_precision in MATMUL_PRECISIONS, f"matmul_precision must be one of "
         f"{', '.join(MATMUL_PRECISIONS)}, got '{cfg.matmul_precision}'")
    need(a.activation in ACTIVATIONS, f"algo.activation must be one of {', '.join(ACTIVATIONS)}, "
                                      f"got '{a.activation}'")
    need(n.kind in NOISE_KINDS, f"noise.kind must be one of {', '.join(NOISE_KINDS)}, got '{n.kind}'")
    need(cfg.eval_envs < cfg.num_envs or not cfg.task.startswith(ONE_SIMULATION_PER_PROCESS),
         f"eval_envs ({cfg.eval_envs}) must be below num_envs ({cfg.num_envs}) for {cfg.task}: its simulator runs "
         f"one simulation per process, so the evaluation is the first eval_envs training envs acting without "
         f"noise, and the rest must explore")
    need(n.sigma_min <= n.sigma_max, f"noise.sigma_min ({n.sigma_min}) must not exceed noise.sigma_max ({n.sigma_max})")
    need(a.batch_size <= a.buffer_size,
         f"algo.batch_size ({a.batch_size}) is larger than algo.buffer_size ({a.buffer_size})")
    need(not a.per_env_sampling or a.buffer_size >= cfg.num_envs,
         f"algo.per_env_sampling keeps whole steps of num_envs ({cfg.num_envs}) rows: algo.buffer_size "
         f"({a.buffer_size}) holds none")
    need(a.obs_norm_acting or a.obs_norm_replay, "algo.obs_norm_acting=false folds no observation into the "
         "normaliser unless algo.obs_norm_replay=true (or turn it off: algo.normalize_obs=false)")
    ppo = a.ppo
    need(ppo.lr_schedule in LR_SCHEDULES, f"algo.ppo.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                                          f"got '{ppo.lr_schedule}'")
    foreign = _foreign_key_problem(cfg)
    need(foreign is None, str(foreign))
    own = declared.check(cfg) if declared.check is not None else None
    need(own is None, str(own))
    need(cfg.max_time_s is not None or cfg.max_env_steps is not None or cfg.resume is not None,
         "set a budget: max_time_s=SECONDS and/or max_env_steps=STEPS")


def _foreign_key_problem(cfg: Config) -> str | None:
    """Why a key that other algorithms own exclusively is set for this one (e.g. the deterministic actors'
    pre-tanh penalty, for SAC), or None."""
    from pql.algos import ALGORITHMS  # local: the algorithms import torch

    name = cfg.algo.name
    for key, off in {k: v for a in ALGORITHMS.values() for k, v in a.exclusive.items()}.items():
        value = getattr(cfg.algo, key)
        if key not in ALGORITHMS[name].owns and value != off:
            holders = ", ".join(a.name for a in ALGORITHMS.values() if key in a.exclusive)
            return f"algo.{key} ({value}) is a key of {holders} only; {name} does not read it, so leave it {off}"
    return None
