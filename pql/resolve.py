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
    atom_range,
    check_numbers,
    dotlist,
    presets,
    unknown_key_error,
    value_support,
)


def build_config(overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the task's preset, then ``overrides`` (dotted keys); validated."""
    overrides = dict(overrides or {})
    if "algo" in overrides:  # the shorthand algo=NAME
        overrides["algo.name"] = overrides.pop("algo")
    base = OmegaConf.structured(Config)
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
    cfg = _with_value_support(cfg)
    if cfg.eval_every_s is None and cfg.max_time_s is not None:
        every = cfg.max_time_s / EVALS_PER_BUDGET
        cfg = replace(cfg, eval_every_s=round(every, 4) or every)  # never rounded to 0 for a tiny budget
    validate(cfg)
    return cfg


def _with_value_support(cfg: Config) -> Config:
    """``cfg`` with a categorical critic's null v_min / v_max filled from :func:`value_support`, widened
    by :func:`atom_range`."""
    from pql.algos import ALGORITHMS  # local: the algorithms import torch

    declared = ALGORITHMS.get(cfg.algo.name)
    a = cfg.algo
    if declared is None or not declared.categorical or (a.v_min is not None and a.v_max is not None):
        return cfg
    support = value_support(cfg)
    if support is None:
        return cfg
    support = atom_range(support)
    v_min = a.v_min if a.v_min is not None else support[0]
    v_max = a.v_max if a.v_max is not None else support[1]
    return replace(cfg, algo=replace(a, v_min=v_min, v_max=v_max))


def validate(cfg: Config) -> None:
    """Raise ConfigError for values that cannot make a run, before any work starts: every number out of its
    range (:func:`check_numbers`), then what the keys must satisfy together."""
    from pql.algos import ALGORITHMS  # local: the algorithms and envs import torch
    from pql.envs import ONE_SIMULATION_PER_PROCESS, task_problem
    from pql.speed import AMP_MODES, COMPILE_MODES

    a, n = cfg.algo, cfg.noise

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    check_numbers(cfg)
    problem = task_problem(cfg.task)
    need(problem is None, str(problem))
    need(a.name in ALGORITHMS, f"unknown algo '{a.name}'; known: {', '.join(ALGORITHMS)}")
    need(cfg.mode in MODES, f"mode must be one of {', '.join(MODES)}, got '{cfg.mode}'")
    need(cfg.mode == "sync" or not ALGORITHMS[a.name].sequential,
         f"algo={a.name} is a sequential baseline: it runs with mode=sync only")
    yaml_hint = " (in a YAML file write 'off' in quotes: a bare off reads as false)"
    need(cfg.compile in COMPILE_MODES, f"compile must be one of {', '.join(COMPILE_MODES)}, got '{cfg.compile}'"
                                       + (yaml_hint if cfg.compile == "False" else ""))
    need(cfg.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}, got '{cfg.amp}'"
                               + (yaml_hint if cfg.amp == "False" else ""))
    need(n.kind in NOISE_KINDS, f"noise.kind must be one of {', '.join(NOISE_KINDS)}, got '{n.kind}'")
    need(cfg.eval_envs < cfg.num_envs or not cfg.task.startswith(ONE_SIMULATION_PER_PROCESS),
         f"eval_envs ({cfg.eval_envs}) must be below num_envs ({cfg.num_envs}) for {cfg.task}: its simulator runs "
         f"one simulation per process, so the evaluation is the first eval_envs training envs acting without "
         f"noise, and the rest must explore")
    need(n.sigma_min <= n.sigma_max, f"noise.sigma_min ({n.sigma_min}) must not exceed noise.sigma_max ({n.sigma_max})")
    need(a.batch_size <= a.buffer_size,
         f"algo.batch_size ({a.batch_size}) is larger than algo.buffer_size ({a.buffer_size})")
    penalised = [name for name, alg in ALGORITHMS.items() if getattr(alg.make_objective, "uses_preact_penalty", False)]
    need(a.preact_penalty == 0 or a.name in penalised,
         f"algo.preact_penalty ({a.preact_penalty}) applies to the deterministic tanh actor of "
         f"{', '.join(penalised)}; {a.name} has none, so leave it 0")
    ppo = a.ppo
    need(ppo.lr_schedule in LR_SCHEDULES, f"algo.ppo.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                                          f"got '{ppo.lr_schedule}'")
    explorers = cfg.num_envs - (cfg.eval_envs if cfg.task.startswith(ONE_SIMULATION_PER_PROCESS) else 0)
    need(ALGORITHMS[a.name].trainer != "ppo" or ppo.minibatch_size <= ppo.horizon * explorers,
         f"algo.ppo.minibatch_size ({ppo.minibatch_size}) is larger than a rollout "
         f"(algo.ppo.horizon x {'the exploring envs' if explorers < cfg.num_envs else 'num_envs'} = "
         f"{ppo.horizon * explorers})")
    if ALGORITHMS[a.name].categorical:
        need(a.v_min is not None and a.v_max is not None,
             f"algo={a.name} needs algo.v_min and algo.v_max: {cfg.task} has no reward bounds in presets.yaml "
             f"to derive them from (the authors used -10 and 10 on Isaac Gym)")
        assert a.v_min is not None and a.v_max is not None
        need(a.v_min < a.v_max, f"algo.v_min ({a.v_min}) must be below algo.v_max ({a.v_max})")
        support = value_support(cfg)
        need(support is None or (a.v_min <= support[0] and a.v_max >= support[1]),
             f"algo.v_min/v_max [{a.v_min}, {a.v_max}] cannot hold {cfg.task}'s returns: at gamma {a.gamma} and "
             f"reward_scale {a.reward_scale} they lie in {list(support or ())}; widen the range or leave "
             f"v_min and v_max null to use that")
    need(cfg.max_time_s is not None or cfg.max_env_steps is not None or cfg.resume is not None,
         "set a budget: max_time_s=SECONDS and/or max_env_steps=STEPS")
