"""Stand-in for ``isaacgymenvs.tasks``: the task map (one toy task under the name Ant)."""

from isaacgymenvs.tasks.ant import Ant

isaacgym_task_map = {"Ant": Ant}
