"""The schema of a run's configuration: frozen dataclasses of every key, each with its default and meaning."""

from __future__ import annotations

from dataclasses import dataclass, field, is_dataclass
from typing import Any

LR_SCHEDULES = ("adaptive", "fixed")
MODES = ("sync", "async")
EVALS_PER_BUDGET = 40  # a time budget's default evaluation cadence: max_time_s / 40
NOISE_KINDS = ("mixed", "fixed", "per_episode")


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

    kind: str = _opt("mixed", "mixed: env i uses std linspace(sigma_min, sigma_max, N)[i]; fixed: std sigma for all; "
                              "per_episode: each env's std drawn from U[sigma_min, sigma_max], redrawn when its "
                              "episode ends (FastTD3's)")
    sigma_min: float = _opt(0.05, "smallest std of the mixed and per_episode schemes")
    sigma_max: float = _opt(0.8, "largest std of the mixed and per_episode schemes")
    sigma: float = _opt(0.8, "std of the fixed scheme")
    correlation: float = _opt(0.0, "rho in [0, 1) of each env's noise as an AR(1) process, n_t = rho n_(t-1) + "
                                   "sqrt(1 - rho^2) e_t (standard normal whatever rho; 0: white noise, a new draw "
                                   "each step; 0.99: about 100 steps of persistence), drawn afresh when the env's "
                                   "episode ends")


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
                            "(DDPG(n)), sac (SAC(n)), ppo, fast_td3 (FastTD3), fast_sac (FastSAC)")
    batch_size: int = _opt(8192, "transitions per learner update")
    buffer_size: int = _opt(5_000_000, "replay capacity in transitions (V-learner) and observations (P-learner)")
    nstep: int = _opt(3, "n of the n-step return")
    gamma: float = _opt(0.99, "discount factor, used for the n-step sum and the bootstrap alike")
    tau: float = _opt(0.05, "soft target update rate, applied after each V-update")
    actor_lr: float = _opt(5e-4, "AdamW learning rate of the policy")
    critic_lr: float = _opt(5e-4, "AdamW learning rate of the critic")
    max_grad_norm: float = _opt(0.5, "gradient-norm clip of both learners (0 disables)")
    weight_decay: float = _opt(0.01, "AdamW weight decay of both learners (torch's default 0.01; FastTD3: 0.1)")
    adam_beta1: float = _opt(0.9, "AdamW beta1 of both learners (torch's default)")
    adam_beta2: float = _opt(0.999, "AdamW beta2 of both learners (torch's default)")
    activation: str = _opt("elu", "hidden layers' activation of every network: elu (the reference code's), relu "
                                  "(FastTD3's), silu or tanh")
    layer_norm: bool = _opt(False, "a LayerNorm after each hidden layer, before its activation, in every policy, "
                                   "critic and value MLP (FastSAC's)")
    actor_out_init_std: float | None = _opt(None, "null: the policy's last layer keeps torch's default init; STD: its "
                                                  "weights drawn from N(0, STD) and its bias 0 (FastTD3: 0.01)")
    preact_penalty: float = _opt(0.0, "weight of the mean squared pre-tanh output added to the "
                                      "actor's loss, which keeps the actor out of tanh's flat region (0: off, "
                                      "as in the paper)")
    per_env_sampling: bool = _opt(False, "false: a batch is drawn uniformly from the whole buffer; true: "
                                         "equally from every env's transitions, max(1, batch_size // num_envs) "
                                         "each (FastTD3's per-env buffer; the batch is then num_envs x that)")
    buffer_per_env: int | None = _opt(None, "null: buffer_size as set; N: buffer_size is N x num_envs (FastTD3 "
                                            "sizes its buffer per env: 51200, 10240 on Playground and Isaac Lab)")
    obs_norm_replay: bool = _opt(False, "false: the observation normaliser folds in the actor's observations; true: "
                                        "also every V-update batch's observations and next observations, as FastTD3 "
                                        "normalises its replay samples (the V-learner then owns the normaliser)")
    obs_norm_acting: bool = _opt(True, "with obs_norm_replay: true: the V-learner also folds in each stored step's "
                                       "observations (FastTD3's, which normalises the acting ones with updates); "
                                       "false: only the batches' (FastSAC's, whose acting normalisation does not "
                                       "update)")
    critic_sample_ratio: float = _opt(8.0, "beta_a:v, V-updates per actor step")
    ratio_scale_envs: int | None = _opt(None, "null: beta_a:v fixed, as in the paper; N0: above N0 envs, "
                                              "beta_a:v is scaled by num_envs/N0, holding the update-to-data "
                                              "ratio of N0 envs (e.g. 1024 for Pendulum at 16384 envs)")
    critic_actor_ratio: float = _opt(2.0, "beta_p:v, V-updates per P-update")
    target_noise_std: float = _opt(0.8, "target policy smoothing: std of the noise on the target action")
    target_noise_clip: float = _opt(0.2, "target policy smoothing: the noise is clipped to +-this")
    warmup_steps: int = _opt(32, "actor steps before learning starts (random actions unless warmup_random=false)")
    warmup_random: bool = _opt(True, "true: the warm-up steps act uniformly at random (the reference code's); false: "
                                     "with the exploring policy, learning still waiting for them (FastTD3's)")
    normalize_obs: bool = _opt(True, "running mean/std observation normalisation")
    obs_clip: float = _opt(5.0, "normalised observations are clamped to +-this")
    actor_hidden: tuple[int, ...] = _opt((512, 256, 128), "hidden layer widths of the policy MLP (ELU)")
    critic_hidden: tuple[int, ...] = _opt((512, 256, 128), "hidden layer widths of each Q MLP (ELU)")
    reward_scale: float = _opt(1.0, "rewards are multiplied by this before learning (metrics stay unscaled)")
    init_temperature: float = _opt(1.0, "initial entropy temperature alpha (learned; target entropy -|A| for SAC, "
                                        "-|A| x algo.fast_sac.target_entropy_ratio for FastSAC)")
    alpha_lr: float = _opt(5e-3, "AdamW learning rate of log(alpha) (the SAC authors' 5e-3; FastSAC's 3e-4)")
    ppo: PPOConfig = _opt(PPOConfig(), "ppo only")
    num_atoms: int = _opt(51, "atoms of the categorical value distribution")
    v_min: float | None = _opt(None, "smallest atom; null: the task's lowest discounted return times "
                                     "reward_scale (presets.yaml rewards); a task without reward bounds needs it set")
    v_max: float | None = _opt(None, "largest atom; null: the task's highest discounted return times "
                                     "reward_scale")
    cdq_after_projection: bool = _opt(False, "clipped double-Q of the categorical critic: false: the target is "
                                             "the projection of the target critic of lower mean (ours); true: "
                                             "both projected, then the one of lower mean (FastTD3's)")


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
    matmul_precision: str = _opt("auto", "float32 matmul precision of each process: highest (exact float32), "
                                         "high (TF32 tensor cores on CUDA GPUs from Ampere on), medium (bf16 "
                                         "passes); auto: high in a process computing on a CUDA device, else "
                                         "highest (status.json records what each part ran at)")
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
    eval_max_share: float = _opt(0.25, "at most this share of real time goes to rows due by env steps (evaluation, "
                                       "parking the workers, writing, checkpoints): after a row that took c "
                                       "seconds the next such row waits for c * (1 - share) / share seconds of "
                                       "training, in env steps at the last interval's rate; rows by time "
                                       "(eval_every_s) stay as due; 0: rows exactly as due, whatever they cost")
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
