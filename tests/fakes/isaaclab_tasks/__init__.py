"""Stand-in for ``isaaclab_tasks``: importing it registers the Isaac-* gymnasium ids (one toy task)."""

import gymnasium as gym
import isaaclab.app

if not isaaclab.app.launched:
    raise RuntimeError("isaaclab_tasks imported before the AppLauncher started Isaac Sim")

if "Isaac-Ant-Direct-v0" not in gym.registry:
    gym.register(id="Isaac-Ant-Direct-v0", entry_point="isaaclab_tasks.direct_ant:AntEnv",
                 disable_env_checker=True, kwargs={"env_cfg_entry_point": "isaaclab_tasks.direct_ant:AntEnvCfg"})
