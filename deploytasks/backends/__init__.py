"""Backends: how a release of one kind is staged on a host and how one colour of it runs.

Container releases (Compose projects per colour) and process releases (gunicorn per colour)
differ only here; the deploy and rollback skeleton (deploys.py), the switch (traffic.py), the
lock, history and maintenance mode are shared. A new kind of release (Swarm) is a new
module implementing these two protocols.
"""
from __future__ import annotations

from typing import Protocol

from ..config import Config
from ..errors import ConfigError
from ..facts import HostState
from ..plan import Cmd, Step
from ..releases import Freed


class Colour(Protocol):
    """One colour (blue or green) running one release."""

    colour: str
    release: str

    def start(self, *, fresh: bool) -> Step:
        """Start it: `fresh` for a release just staged (nothing of it runs yet), else start
        again what a previous deploy left stopped (a rollback)."""

    def restart(self) -> tuple[Cmd, ...]:
        """Start again a colour that was stopped a moment ago (commands only: usable as an undo)."""

    def ready(self) -> Step:
        """Gate on its readiness endpoint, on its own socket (no traffic reaches it yet)."""

    def stop(self) -> Cmd:
        """Stop it gracefully: in-flight requests finish within DRAIN_TIMEOUT."""

    def assets(self) -> tuple[Step, ...]:
        """Once it is ready, before the switch: publish its static files for nginx (if any)."""

    def listener(self) -> tuple[str, tuple[str, ...]]:
        """The socket nginx's connections to it end at, as its server bound it, and a command
        printing the server's pids when that path is not its own alone (() when it is)."""

    def migrate(self) -> Step:
        """Run MIGRATE_COMMAND once, with this release's code and environment."""

    def diagnostics(self) -> tuple[Cmd, ...]:
        """What to show when one of its steps fails."""


class Backend(Protocol):
    """A kind of release: checks its artifact before connecting, stages it, frees it."""

    sha: str | None  # the full SHA of the artifact checked, once checked
    windows: bool  # whether `deploy --maintenance` is supported

    def colour(self, state: HostState, colour: str, release: str) -> Colour: ...

    def stage(self, state: HostState, new: Colour) -> list[Step]:
        """Everything between `prepare` and the nginx site: upload, pull, dependencies, build."""

    def freed(self, state: HostState, doomed: list[str], kept: list[str]) -> Freed:
        """What only the `doomed` releases used (their images, their virtualenvs), to remove once
        they are gone; never what a `kept` release or a container uses."""


def full_sha(config: Config, sha: str) -> str:
    """The full 40-hex SHA that `sha` as typed (7 to 40 hex) names: the one tag of the web image
    starting with it in the registry (containers), or the one commit of SOURCE_REPO (processes).
    Asked before any connection opens; none or several is a ConfigError."""
    from .. import shas, source
    from . import containers

    sha = shas.check(sha)
    if config.mode == "processes":
        return source.resolve(config, sha)
    return containers.full_sha(config, sha)


def of(config: Config, sha: str | None = None, *, fast: bool = False) -> Backend:
    """The environment's backend; with a SHA, its artifact is checked (registry or git) before
    any connection opens, so a typo changes nothing. An abbreviated SHA is expanded first: the
    backend's `sha` is the full one, which names the release, its images and its history."""
    from .. import source
    from . import containers, processes

    if config.mode == "processes":
        return processes.Processes(config, source.read(config, sha) if sha else None, fast=fast)
    if fast:
        raise ConfigError("--fast is for process releases (MODE=processes): container images are prebuilt")
    if sha:
        sha = containers.full_sha(config, sha)
        containers.check_images(config, sha)
    return containers.Containers(config, sha)
