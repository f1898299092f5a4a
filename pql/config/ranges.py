"""The range of every numeric key, and the check that refuses a value out of it (or not finite), naming the key."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, get_type_hints

from pql.config.keys import value_text
from pql.config.schema import Config, ConfigError
from pql.config.sections import schema, sections

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
    "eval_max_share": Range(0, 1, high_open=True),
    "checkpoint_every_s": NON_NEGATIVE, "watchdog_s": NON_NEGATIVE,
    "noise.sigma_min": NON_NEGATIVE, "noise.sigma_max": NON_NEGATIVE, "noise.sigma": NON_NEGATIVE,
    "noise.correlation": Range(0, 1, high_open=True),
    "algo.batch_size": AT_LEAST_1, "algo.buffer_size": AT_LEAST_1, "algo.buffer_per_env": AT_LEAST_1,
    "algo.nstep": AT_LEAST_1,
    "algo.gamma": Range(0, 1, low_open=True), "algo.tau": Range(0, 1, low_open=True),
    "algo.actor_lr": POSITIVE, "algo.critic_lr": POSITIVE, "algo.max_grad_norm": NON_NEGATIVE,
    "algo.weight_decay": NON_NEGATIVE, "algo.adam_beta1": Range(0, 1, high_open=True),
    "algo.adam_beta2": Range(0, 1, high_open=True), "algo.actor_out_init_std": POSITIVE,
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


def key_ranges() -> dict[str, Range]:
    """:data:`NUMBER_RANGES` and the ranges of every algorithm's own section (``algo.<name>.<key>``)."""
    own = {f"algo.{s.owner}.{key}": rule for s in sections().values() for key, rule in s.ranges.items()}
    return {**NUMBER_RANGES, **own}


def numeric_keys(cls: type | None = None, prefix: str = "") -> dict[str, type]:
    """Every dotted key holding a number, with its kind: ``int``, ``float``, or ``tuple`` (of ints)."""
    cls = cls or schema()
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


def number_problem(key: str, value: Any, ranges: dict[str, Range] | None = None) -> str | None:
    """Why the value of the numeric ``key`` cannot make a run (not finite, out of its range, an integer that
    does not fit int64), naming the key and the value; None when it can, or when it is null."""
    if value is None:
        return None
    rule = (ranges if ranges is not None else key_ranges()).get(key, ANY)
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
    ranges = key_ranges()
    for key in numeric_keys(type(cfg)):
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        problem = number_problem(key, value, ranges)
        if problem is not None:
            raise ConfigError(problem)
