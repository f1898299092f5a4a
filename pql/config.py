"""Run configuration: frozen dataclasses, merged and type-checked by OmegaConf.

Precedence, lowest first: dataclass defaults < the task's preset (data in
``pql/presets.yaml``) < the user's ``KEY=VALUE`` overrides. A user's value always
wins, whatever it equals (the reference code applied task overrides only while a
value still equalled its default).
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

# libyaml's loader where PyYAML was built with it (its wheels are): 10x faster on presets and config.yaml files
FAST_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
LR_SCHEDULES = ("adaptive", "fixed")
MODES = ("sync", "async")
EVALS_PER_BUDGET = 40  # a time budget's default evaluation cadence: max_time_s / 40
NOISE_KINDS = ("mixed", "fixed")


class ConfigError(ValueError):
    """A configuration the trainer refuses to run, with a message naming the culprit."""


def _opt(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    """A dataclass field with a default and a one-line meaning shown by ``--help``."""
    if isinstance(default, (list, dict, tuple)) or is_dataclass(default):
        return field(default_factory=lambda: default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class NoiseConfig:
    """Exploration noise added by the actor to its deterministic actions."""

    kind: str = _opt("mixed", "mixed: env i uses std linspace(sigma_min, sigma_max, N)[i]; fixed: std sigma for all")
    sigma_min: float = _opt(0.05, "smallest std of the mixed scheme")
    sigma_max: float = _opt(0.8, "largest std of the mixed scheme")
    sigma: float = _opt(0.8, "std of the fixed scheme")


@dataclass(frozen=True)
class PPOConfig:
    """PPO (rl_games style) settings; per-task values come from the presets."""

    horizon: int = _opt(16, "steps per environment in each rollout")
    minibatch_size: int = _opt(32768, "rows per gradient step (the rollout holds horizon x num_envs rows)")
    epochs: int = _opt(5, "passes over each rollout")
    lr: float = _opt(3e-4, "Adam learning rate (start value of the adaptive schedule)")
    lr_schedule: str = _opt("adaptive", "adaptive: divide/multiply lr by 1.5 when KL leaves [kl/2, 2 kl]; fixed")
    kl_threshold: float = _opt(0.008, "target KL of the adaptive schedule")
    clip: float = _opt(0.2, "clip range of the surrogate ratio and of the value change")
    value_clip: bool = _opt(True, "clip the value update around the rollout's values")
    value_coef: float = _opt(1.0, "weight of the value loss")
    entropy_coef: float = _opt(0.0, "weight of the entropy bonus (positive: rewards exploration)")
    gae_lambda: float = _opt(0.95, "lambda of generalised advantage estimation")
    normalize_value: bool = _opt(True, "learn values of running-normalised returns")
    normalize_advantage: bool = _opt(True, "standardise advantages in each minibatch")
    init_log_std: float = _opt(0.0, "initial log std of the Gaussian policy")
    stagger_episodes: bool = _opt(False, "start each exploring env's first episode at a random step of the time "
                                         "limit (rsl_rl's init_at_random_ep_len), so that the envs' episodes do "
                                         "not end together and each rollout holds every phase of an episode "
                                         "(the ppo preset sets it where the backend can)")
    bounds_loss_coef: float = _opt(0.0, "weight of rl_games' bounds loss, the squared distance of the policy mean "
                                        "beyond +-1.1, which keeps the mean where the action clip passes a "
                                        "gradient (0: off; the ppo preset sets IsaacGymEnvs' 1e-4)")


@dataclass(frozen=True)
class AlgoConfig:
    """Learning hyper-parameters (defaults: the reference code's)."""

    name: str = _opt("pql", "algorithm: pql (double-Q critic), pql-d (C51 critic), or the baselines ddpg "
                            "(DDPG(n)), sac (SAC(n)), ppo")
    batch_size: int = _opt(8192, "transitions per learner update")
    buffer_size: int = _opt(5_000_000, "replay capacity in transitions (V-learner) and observations (P-learner)")
    nstep: int = _opt(3, "n of the n-step return")
    gamma: float = _opt(0.99, "discount factor, used for the n-step sum and the bootstrap alike")
    tau: float = _opt(0.05, "soft target update rate, applied after each V-update")
    actor_lr: float = _opt(5e-4, "AdamW learning rate of the policy")
    critic_lr: float = _opt(5e-4, "AdamW learning rate of the critic")
    max_grad_norm: float = _opt(0.5, "gradient-norm clip of both learners (0 disables)")
    preact_penalty: float = _opt(0.0, "pql, pql-d, ddpg: weight of the mean squared pre-tanh output added to the "
                                      "actor's loss, which keeps the actor out of tanh's flat region (0: off, "
                                      "as in the paper)")
    critic_sample_ratio: float = _opt(8.0, "beta_a:v, V-updates per actor step")
    ratio_scale_envs: int | None = _opt(None, "null: beta_a:v fixed, as in the paper; N0: above N0 envs, "
                                              "beta_a:v is scaled by num_envs/N0, holding the update-to-data "
                                              "ratio of N0 envs (e.g. 1024 for Pendulum at 16384 envs)")
    critic_actor_ratio: float = _opt(2.0, "beta_p:v, V-updates per P-update")
    target_noise_std: float = _opt(0.8, "target policy smoothing: std of the noise on the target action")
    target_noise_clip: float = _opt(0.2, "target policy smoothing: the noise is clipped to +-this")
    warmup_steps: int = _opt(32, "random-action steps per env before learning starts")
    normalize_obs: bool = _opt(True, "running mean/std observation normalisation")
    obs_clip: float = _opt(5.0, "normalised observations are clamped to +-this")
    actor_hidden: tuple[int, ...] = _opt((512, 256, 128), "hidden layer widths of the policy MLP (ELU)")
    critic_hidden: tuple[int, ...] = _opt((512, 256, 128), "hidden layer widths of each Q MLP (ELU)")
    reward_scale: float = _opt(1.0, "rewards are multiplied by this before learning (metrics stay unscaled)")
    init_temperature: float = _opt(1.0, "sac: initial entropy temperature alpha (learned; target entropy -|A|)")
    alpha_lr: float = _opt(5e-3, "sac: AdamW learning rate of log(alpha) (the authors' 5e-3)")
    ppo: PPOConfig = _opt(PPOConfig(), "ppo only")
    num_atoms: int = _opt(51, "pql-d: atoms of the categorical value distribution")
    v_min: float | None = _opt(None, "pql-d: smallest atom; null: the task's lowest discounted return times "
                                     "reward_scale (presets.yaml rewards); a task without reward bounds needs it set")
    v_max: float | None = _opt(None, "pql-d: largest atom; null: the task's highest discounted return times "
                                     "reward_scale")


@dataclass(frozen=True)
class DeviceConfig:
    """Where each part runs: one, two or three devices ('auto', 'cpu', 'cuda:0', ...)."""

    sim: str = _opt("auto", "simulation and actor; auto: cuda:0 if present, else cpu")
    v_learner: str = _opt("auto", "V-learner and its replay buffer; auto: cuda:1 if two GPUs, else the sim device")
    p_learner: str = _opt("auto", "P-learner and its observation buffer; auto: the V-learner's device")


@dataclass(frozen=True)
class Config:
    """Everything one training run needs; saved resolved as ``config.yaml``."""

    task: str = _opt("classic/pendulum", "BACKEND/TASK: classic/pendulum, classic/mountaincar, gym/<gymnasium id>, "
                          "playground/<Env>, isaacgym/<Task>, isaaclab/<gym id>")
    algo: AlgoConfig = _opt(AlgoConfig(), "algorithm; 'algo=NAME' is short for 'algo.name=NAME'")
    num_envs: int = _opt(4096, "parallel training environments")
    seed: int = _opt(0, "seed of networks, noise, sampling and environments (0 to 2**31 - 1, what every "
                        "backend's seeding accepts)")
    mode: str = _opt("sync", "async: actor, V-learner and P-learner as concurrent processes (the preset of pql and "
                             "pql-d); sync: one process, interleaved by the ratios, deterministic (the baselines')")
    max_time_s: float | None = _opt(None, "stop after this much training wall-clock time")
    max_env_steps: int | None = _opt(None, "stop after this many environment steps (all envs counted)")
    out: str | None = _opt(None, "run directory; default results/runs/TASK-ALGO-sSEED-TIMESTAMP")
    resume: str | None = _opt(None, "continue the run in this directory from its checkpoint")
    noise: NoiseConfig = _opt(NoiseConfig(), "exploration noise")
    device: DeviceConfig = _opt(DeviceConfig(), "devices")
    gpu_model: str | None = _opt(None, "GPU model the run must get (e.g. A100, H100, RTX4090); null: any device")
    compile: str = _opt("off", "torch.compile the learners' updates and the actor's policy step (PPO: its "
                               "minibatch loss): off, default, reduce-overhead (CUDA graphs; CUDA only), "
                               "max-autotune; compilation runs before the clock starts (status.json compile_s)")
    amp: str = _opt("off", "mixed precision of the learners' forward passes: off (float32) or bf16 (autocast; "
                           "needs native bfloat16: a CUDA GPU from Ampere on, a CPU with AVX512-BF16 or AMX)")
    eval_envs: int = _opt(16, "deterministic evaluation: separate environments, one full episode each per "
                                "metrics row; with one simulation per process (Isaac Gym, Isaac Lab), the first "
                                "eval_envs training envs act without noise throughout and their finished "
                                "episodes are the evaluation; 0: none (figures use the training return)")
    eval_every_env_steps: int = _opt(100_000, "evaluate and write a metrics row every this many env steps")
    eval_every_s: float | None = _opt(None, "also evaluate once this much training time has passed since the last "
                                            "row; null: max_time_s / 40 when a time budget is set (so times to a "
                                            "threshold are resolved to 2.5% of the budget), else never")
    checkpoint_every_s: float = _opt(60.0, "write a checkpoint at most this often (and at the end)")
    watchdog_s: float = _opt(300.0, "mode=async: fail the run (resumable from its last checkpoint) when a worker "
                                    "has shown no sign of life for this many seconds once started: stopped, hung "
                                    "in a simulator call or deadlocked (building, compiling and evaluation are "
                                    "not counted); 0: no watchdog")
    progress: bool = _opt(True, "show a progress bar with return and env-steps/s")
    check_memory: bool = _opt(True, "pql train refuses, before allocating, a run whose memory estimate (as pql "
                                    "ablate --dry-run prints it) exceeds a device's total memory; false: skip it")
    tensorboard: bool = _opt(False, "also write TensorBoard events to RUN_DIR/tb (needs the tensorboard package)")
    wandb: bool = _opt(False, "also log the config and every metrics row to Weights & Biases, files in RUN_DIR/wandb "
                              "(needs the wandb package; WANDB_MODE=offline logs without a network)")
    wandb_project: str = _opt("pql", "W&B project of the run (with wandb=true)")


INT64_MAX = 2**63 - 1  # every integer key ends up in a tensor's size or index, or in a generator's seed
SEED_MAX = 2**31 - 1  # numpy's legacy seeding (Isaac Gym, Isaac Lab) takes < 2**32; the evaluation envs add 1_000_003


@dataclass(frozen=True)
class Range:
    """The values a numeric key accepts: finite, from ``low`` to ``high`` (None: unbounded on that side;
    ``low_open`` / ``high_open``: that bound itself excluded)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        """Whether ``value`` is finite and in the range."""
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def text(self) -> str:
        """The range as a message writes it: ``> 0``, ``>= 1``, ``in (0, 1]``, or empty when unbounded."""
        low, high = _number_text(self.low), _number_text(self.high)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {high}"
        return ""


def _number_text(value: float | None) -> str:
    """A bound as written in a message: whole numbers in full (2147483647, not 2.14748e+09)."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


ANY = Range()
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_1 = Range(1)
UNIT = Range(0, 1)  # a probability-like weight
# The range of every numeric key (ints, floats and the entries of tuples of ints), checked before anything
# is derived from them; a key of ``null`` is not checked. A numeric key missing here is still checked for
# being finite (and an integer for fitting int64); tests/test_config.py checks that none is missing.
NUMBER_RANGES: dict[str, Range] = {
    "num_envs": AT_LEAST_1, "seed": Range(0, SEED_MAX), "max_time_s": POSITIVE, "max_env_steps": AT_LEAST_1,
    "eval_envs": NON_NEGATIVE, "eval_every_env_steps": AT_LEAST_1, "eval_every_s": POSITIVE,
    "checkpoint_every_s": NON_NEGATIVE, "watchdog_s": NON_NEGATIVE,
    "noise.sigma_min": NON_NEGATIVE, "noise.sigma_max": NON_NEGATIVE, "noise.sigma": NON_NEGATIVE,
    "algo.batch_size": AT_LEAST_1, "algo.buffer_size": AT_LEAST_1, "algo.nstep": AT_LEAST_1,
    "algo.gamma": Range(0, 1, low_open=True), "algo.tau": Range(0, 1, low_open=True),
    "algo.actor_lr": POSITIVE, "algo.critic_lr": POSITIVE, "algo.max_grad_norm": NON_NEGATIVE,
    "algo.preact_penalty": NON_NEGATIVE, "algo.critic_sample_ratio": POSITIVE, "algo.ratio_scale_envs": AT_LEAST_1,
    "algo.critic_actor_ratio": POSITIVE, "algo.target_noise_std": NON_NEGATIVE,
    "algo.target_noise_clip": NON_NEGATIVE, "algo.warmup_steps": NON_NEGATIVE, "algo.obs_clip": POSITIVE,
    "algo.actor_hidden": AT_LEAST_1, "algo.critic_hidden": AT_LEAST_1, "algo.reward_scale": POSITIVE,
    "algo.init_temperature": POSITIVE, "algo.alpha_lr": POSITIVE, "algo.num_atoms": Range(2),
    "algo.v_min": ANY, "algo.v_max": ANY,
    "algo.ppo.horizon": AT_LEAST_1, "algo.ppo.minibatch_size": AT_LEAST_1, "algo.ppo.epochs": AT_LEAST_1,
    "algo.ppo.lr": POSITIVE, "algo.ppo.kl_threshold": POSITIVE, "algo.ppo.clip": POSITIVE,
    "algo.ppo.value_coef": NON_NEGATIVE, "algo.ppo.entropy_coef": ANY, "algo.ppo.gae_lambda": UNIT,
    "algo.ppo.init_log_std": Range(-20, 20),  # exp of it is the policy's std: finite and non-zero in float32
    "algo.ppo.bounds_loss_coef": NON_NEGATIVE,
}


def numeric_keys(cls: type = Config, prefix: str = "") -> dict[str, type]:
    """Every dotted key holding a number, with its kind: ``int``, ``float``, or ``tuple`` (of ints)."""
    hints = get_type_hints(cls)
    keys: dict[str, type] = {}
    for f in fields(cls):
        hint = hints[f.name]
        if is_dataclass(hint):
            keys.update(numeric_keys(hint, prefix + f.name + "."))
            continue
        if getattr(hint, "__origin__", None) is tuple:
            keys[prefix + f.name] = tuple
            continue
        kinds = {t for t in (getattr(hint, "__args__", None) or (hint,)) if t is not type(None)}
        if kinds and kinds <= {int, float}:
            keys[prefix + f.name] = float if float in kinds else int
    return keys


def number_problem(key: str, value: Any) -> str | None:
    """Why the value of the numeric ``key`` cannot make a run (not finite, out of its range, an integer that
    does not fit int64), naming the key and the value; None when it can, or when it is null."""
    if value is None:
        return None
    rule = NUMBER_RANGES.get(key, ANY)
    if isinstance(value, tuple):
        bad = [v for v in value if not rule.admits(v) or abs(v) > INT64_MAX]
        return f"{key} must hold integers {rule.text()}, got {value_text(value)}" if bad else None
    if isinstance(value, int) and not rule.admits(value):
        return f"{key} must be {rule.text()}, got {value}"
    if isinstance(value, int) and abs(value) > INT64_MAX:
        return f"{key} must fit a 64-bit integer (at most {INT64_MAX}), got {value}"
    if not isinstance(value, int) and not rule.admits(value):
        return f"{key} must be a finite number {rule.text()}".rstrip() + f", got {value}"
    return None


def check_numbers(cfg: Config) -> None:
    """ConfigError naming the first numeric key whose value is not finite or out of its range (see
    :data:`NUMBER_RANGES`); run on the values as given, before anything is derived from them."""
    for key in numeric_keys():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        problem = number_problem(key, value)
        if problem is not None:
            raise ConfigError(problem)


def _preset_table() -> dict[str, dict[str, Any]]:
    """``pql/presets.yaml``, a copy of it read once (a study's status or report builds every cell's config)."""
    return copy.deepcopy(_read_presets())


@functools.cache
def _read_presets() -> dict[str, dict[str, Any]]:
    text = resources.files("pql").joinpath("presets.yaml").read_text()
    return yaml.load(text, Loader=FAST_YAML_LOADER) or {}


def presets(task: str, algo: str) -> list[dict[str, Any]]:
    """The preset layers (nested dicts) for ``task`` and ``algo``, lowest precedence first: the
    algorithm's, the backend's (``backends``, by task-name prefix), the task's, then the task's for
    that algorithm (its ``by_algo`` entry)."""
    table = _preset_table()
    backend = next((layer for prefix, layer in table.get("backends", {}).items() if task.startswith(prefix)), {})
    task_layer = dict(table.get("tasks", {}).get(task, {}))
    by_algo = task_layer.pop("by_algo", {})
    return [table.get("algos", {}).get(algo, {}), backend, task_layer, by_algo.get(algo, {})]


def thresholds() -> dict[str, float]:
    """The evaluation return counted as solved, per task (``presets.yaml``'s ``thresholds``), for
    time- and steps-to-threshold in reports; no run's config reads it."""
    return {task: float(value) for task, value in (_preset_table().get("thresholds") or {}).items()}


def return_bounds(task: str, gamma: float) -> tuple[float, float] | None:
    """Bounds of a discounted return of ``task`` in its reward units (``presets.yaml``'s ``rewards``),
    or None for a task without reward bounds there."""
    entry = (_preset_table().get("rewards") or {}).get(task)
    if entry is None:
        return None
    step_lo, step_hi = entry["step"]
    terminal_lo, terminal_hi = entry.get("terminal", (0.0, 0.0))
    horizon = entry["horizon"]
    g = horizon if gamma == 1 else (1 - gamma**horizon) / (1 - gamma)
    return step_lo * g + min(0.0, terminal_lo), step_hi * g + max(0.0, terminal_hi)


def value_support(cfg: Config) -> tuple[float, float] | None:
    """The range of values a critic of ``cfg`` must represent: the task's return bounds at its gamma,
    times its reward scale (None when the task has none)."""
    bounds = return_bounds(cfg.task, cfg.algo.gamma)
    if bounds is None:
        return None
    lo, hi = (b * cfg.algo.reward_scale for b in bounds)
    return round(lo, 4), round(hi, 4)


SUPPORT_MARGIN = 0.05
"""Share of the return range added on each side of derived atoms: returns at a bound (Pendulum's best is 0)
then project two atoms inside the edges, so mass on the edge atoms means only returns out of range."""


def atom_range(support: tuple[float, float]) -> tuple[float, float]:
    """A categorical critic's (v_min, v_max) for returns in ``support``: the range widened by
    :data:`SUPPORT_MARGIN` of its width on each side."""
    lo, hi = support
    margin = SUPPORT_MARGIN * (hi - lo)
    return round(lo - margin, 4), round(hi + margin, 4)


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


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the config, in declaration order."""
    keys: list[str] = []
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys.extend(all_keys(type(default), prefix + f.name + "."))
        else:
            keys.append(prefix + f.name)
    return keys


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, meaning) for every leaf key, for ``--help``."""
    rows: list[tuple[str, Any, str]] = []
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            rows.extend(describe(type(default), prefix + f.name + "."))
        else:
            rows.append((prefix + f.name, default, f.metadata.get("help", "")))
    return rows


def _unknown_key_error(key: str) -> ConfigError:
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
            raise _unknown_key_error(key)
        out[key] = value
    return out


def build_config(overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the task's preset, then ``overrides`` (dotted keys); validated."""
    overrides = dict(overrides or {})
    if "algo" in overrides:  # the shorthand algo=NAME
        overrides["algo.name"] = overrides.pop("algo")
    base = OmegaConf.structured(Config)
    user = _dotlist(overrides)
    task = OmegaConf.select(user, "task", default=None) or base.task
    algo = OmegaConf.select(user, "algo.name", default=None) or base.algo.name
    return _merged(base, *presets(str(task), str(algo)), user)


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """``cfg`` with the dotted ``overrides`` applied, and no presets (a resolved config holds them
    already); validated. How a resumed run or a study's job gets its config."""
    return _merged(OmegaConf.structured(cfg), _dotlist(overrides))


@functools.cache
def _text_keys(cls: type = Config, prefix: str = "") -> frozenset[str]:
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


def _dotlist(overrides: dict[str, Any]) -> Any:
    text_keys = _text_keys()
    verbatim = {k: v for k, v in overrides.items() if k in text_keys and isinstance(v, str)}
    try:
        conf = OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items() if k not in verbatim])
        for key, value in verbatim.items():
            OmegaConf.update(conf, key, value, force_add=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad override: {str(err).splitlines()[0]}") from None
    return conf


def _merged(*layers: Any) -> Config:
    """The layers merged onto the schema, lowest first, as a validated Config (ConfigError naming the key)."""
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(*layers))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        if "not in" in str(err).split("\n")[0]:
            raise _unknown_key_error(str(key)) from None
        raise ConfigError(f"bad value for '{key}': {str(err).splitlines()[0]}") from None
    assert isinstance(cfg, Config)
    check_numbers(cfg)  # the values as given: a derived value must never take the blame for one of them
    cfg = _with_value_support(cfg)
    if cfg.eval_every_s is None and cfg.max_time_s is not None:
        every = cfg.max_time_s / EVALS_PER_BUDGET
        cfg = replace(cfg, eval_every_s=round(every, 4) or every)  # never rounded to 0 for a tiny budget
    validate(cfg)
    return cfg


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
