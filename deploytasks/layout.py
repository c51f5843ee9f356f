"""Where everything lives on a host, in one place, so every plan agrees on it.

    <deploy_path>/
      releases/<UTC-ts>-<sha>/   what was deployed (compose files, rendered config, app.env 0600)
      current -> releases/...    the release now serving
      shared/                    persistent files
      run/<colour>/<web>.sock    the socket each colour's web service listens on
      run/<web>.sock -> <colour>/<web>.sock   the live link nginx connects through
      state/<colour> -> ../releases/...       what each colour runs
      state/history.jsonl, state/lock/, state/maintenance
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import Config

COLOURS = ("blue", "green")
CONTAINER_RUN_DIR = "/run/deploytasks"  # where a container sees its colour's run directory
APP_ENV = "app.env"  # the app's runtime variables in each release (mode 0600)


def other(colour: str | None) -> str:
    """The colour a deploy starts: the one not serving (blue for a first deploy)."""
    return "green" if colour == "blue" else "blue"


@dataclass(frozen=True)
class Layout:
    root: str
    web: str

    @classmethod
    def of(cls, config: Config) -> "Layout":
        return cls(config.deploy_path, config.web_service or "web")

    @property
    def releases(self) -> str:
        return f"{self.root}/releases"

    def release(self, name: str) -> str:
        return f"{self.releases}/{name}"

    @property
    def current(self) -> str:
        return f"{self.root}/current"

    @property
    def shared(self) -> str:
        return f"{self.root}/shared"

    @property
    def state(self) -> str:
        return f"{self.root}/state"

    @property
    def run(self) -> str:
        return f"{self.root}/run"

    def run_dir(self, colour: str) -> str:
        return f"{self.run}/{colour}"

    def socket(self, colour: str) -> str:
        return f"{self.run_dir(colour)}/{self.web}.sock"

    @property
    def live_socket(self) -> str:
        return f"{self.run}/{self.web}.sock"

    def colour_link(self, colour: str) -> str:
        return f"{self.state}/{colour}"

    @property
    def history(self) -> str:
        return f"{self.state}/history.jsonl"

    @property
    def lock(self) -> str:
        return f"{self.state}/lock"

    @property
    def maintenance_flag(self) -> str:
        return f"{self.state}/maintenance"

    @property
    def nginx_dir(self) -> str:
        return f"{self.root}/nginx"
