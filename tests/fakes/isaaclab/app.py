"""Stand-in for ``isaaclab.app``: AppLauncher starts no simulator, it records that it was started."""

from __future__ import annotations

launched: list[dict] = []


class AppLauncher:
    def __init__(self, launcher_args: object = None, **kwargs: object) -> None:
        launched.append(dict(kwargs))
        self.app = object()
