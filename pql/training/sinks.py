"""Where a run's metrics rows go besides ``metrics.csv``: the progress bar, TensorBoard, Weights & Biases.

Each sink is called with every row and closed when the run ends.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from pql.config import Config, ConfigError, config_to_dict
from pql.training.loop import Progress


class ProgressDisplay:
    """A tqdm bar over the run's budget (time or env steps) showing returns and env-steps/s.

    A resumed run's bar starts where its checkpoint left off (its rate and remaining time
    count only this session), and the position never passes the budget, so the bar ends at
    100% with no negative remaining time.
    """

    def __init__(self, cfg: Config, enabled: bool, start: Progress | None = None) -> None:
        self.bar = None
        if not enabled:
            return
        from tqdm import tqdm

        self.by_time = cfg.max_env_steps is None
        self.total = cfg.max_time_s if self.by_time else cfg.max_env_steps
        initial = 0.0 if start is None else self._position(start.wall_s, start.env_steps)
        unit = "s" if self.by_time else "step"
        layout = "{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}{postfix}]"
        self.bar = tqdm(total=self.total, initial=initial, unit=unit, desc=f"{cfg.task} {cfg.algo.name}",
                        dynamic_ncols=True, bar_format=layout)

    def _position(self, wall_s: float, env_steps: float) -> float:
        value = wall_s if self.by_time else env_steps
        return value if self.total is None else min(value, self.total)

    def __call__(self, row: dict[str, float]) -> None:
        """Move the bar to the row's position and show its return and throughput."""
        if self.bar is None:
            return
        self.bar.n = self._position(row["wall_s"], row["env_steps"])
        fmt = lambda x: "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"  # noqa: E731
        self.bar.set_postfix_str(f"eval {fmt(row['eval_return'])} train {fmt(row['train_return'])} "
                                 f"{row['env_steps_per_s'] or 0:,.0f} env-steps/s", refresh=True)

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()


class TensorBoardSink:
    """Writes every metrics row as scalars against env steps, to RUN_DIR/tb."""

    def __init__(self, path: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError("tensorboard=true needs the tensorboard package: pip install tensorboard") from err
        self.writer = SummaryWriter(str(path))

    def __call__(self, row: dict[str, float]) -> None:
        """Write the row's finite numbers at its env step."""
        for key, value in row.items():
            if key != "env_steps" and isinstance(value, (int, float)) and not math.isnan(value):
                self.writer.add_scalar(key, value, int(row["env_steps"]))
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the writer."""
        self.writer.close()


class WandbSink:
    """Logs the resolved config once and every metrics row (``env_steps`` as its x axis) to Weights &
    Biases, the W&B files under RUN_DIR/wandb. A resumed run continues the same W&B run."""

    def __init__(self, cfg: Config, path: Path) -> None:
        try:
            import wandb
        except ImportError as err:
            raise ConfigError("wandb=true needs the wandb package: pip install wandb") from err
        path.mkdir(exist_ok=True)
        run_id = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(project=cfg.wandb_project, dir=str(path), id=run_id, resume="allow",
                              name=path.parent.name, config=config_to_dict(cfg),
                              settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("*", step_metric="env_steps")

    def __call__(self, row: dict[str, float]) -> None:
        """Log the row's finite numbers."""
        self.run.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and not math.isnan(v)})

    def close(self) -> None:
        """Finish the W&B run."""
        self.run.finish()
