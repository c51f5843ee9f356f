"""Plans for container releases: deploy a SHA beside the live colour, or roll back to the other.

    prepare -> upload -> pull -> networks -> stateful -> migrate -> start colour -> ready
            -> nginx site -> switch -> check through nginx -> drain old -> cleanup

Everything before the switch happens beside the live colour, which keeps serving; a failure
anywhere stops the new colour and, past the switch, swaps traffic back.
"""
from __future__ import annotations

import json
import posixpath

from . import compose, nginx, traffic
from .config import Config
from .errors import DeployError
from .facts import HostState, release_sha
from .layout import Layout, other
from .plan import Cmd, Plan, Put, Step, cmd, sh
from .releases import cleanup_step, prepare_step


def deploy(config: Config, state: HostState, sha: str, release: str, *, migrate: bool = True,
           kind: str = "deploy", maintenance: bool = False) -> Plan:
    layout = Layout.of(config)
    live = state.live
    colour = other(live)
    release_dir = layout.release(release)
    model = compose.model(config)

    def new(*args: str) -> Cmd:
        return Cmd(compose.command(config, release_dir, compose.project(config, colour), *args))

    def shared(*args: str) -> Cmd:
        return Cmd(compose.command(config, release_dir, compose.project(config), *args))

    steps = [
        prepare_step(layout, release_dir),
        _upload_step(_uploads(config, model, layout, release_dir, sha, colour)),
        Step("pull images", (Cmd(new("pull", *config.stateless).argv, stream=True),)),
        Step("networks", tuple(
            cmd("docker", "network", "create", name, unless=("docker", "network", "inspect", name))
            for name in compose.shared_networks(config, model).values()
        )),
    ]
    if config.stateful:
        steps.append(Step("stateful services", (shared("up", "-d", "--no-recreate", *config.stateful),)))
    if migrate and config.migrate_command:
        steps.append(Step("migrate", (
            Cmd(new("run", "--rm", "--no-deps", "-T", config.web_service, *config.migrate_command).argv, stream=True),
        )))
    steps += _bring_up(config, state, colour, release, release_dir, recreate=True)
    steps.append(nginx.install_step(config, f"{release_dir}/nginx/site.conf"))
    steps += _switch_over(config, state, colour, release, sha)
    steps.append(cleanup_step(layout, state, config.keep_releases, keep=(release,)))
    return Plan(kind, sha, tuple(steps), {"colour": colour, "release": release, "previous": release_sha(state.release_of(live))})


def rollback(config: Config, state: HostState) -> Plan:
    """Back to the colour that served before: its containers are stopped, not gone, so this is
    a start, a gate and a switch, with no pull and no migration."""
    layout = Layout.of(config)
    if not state.live:
        raise DeployError("nothing is deployed on this host: nothing to roll back")
    colour = other(state.live)
    release = state.release_of(colour)
    if not release or release not in state.releases:
        raise DeployError(f"no previous release on the {colour} side to roll back to; use rollback --to SHA")
    sha = release_sha(release)
    steps = _bring_up(config, state, colour, release, layout.release(release), recreate=False)
    steps += _switch_over(config, state, colour, release, sha)
    return Plan("rollback", sha, tuple(steps), {"colour": colour, "release": release, "previous": release_sha(state.release_of(state.live))})


def _bring_up(config, state, colour, release, release_dir, *, recreate: bool) -> list[Step]:
    project = compose.project(config, colour)

    def new(*args: str) -> tuple[str, ...]:
        return compose.command(config, release_dir, project, *args)

    logs = (Cmd(new("ps", "-a")), Cmd(new("logs", "--no-color", "--tail", "30", *config.stateless)))
    recreate_flags = ("--force-recreate",) if recreate else ()
    start = Step(
        f"start {colour}",
        (
            cmd("rm", "-f", Layout.of(config).socket(colour)),
            Cmd(new("up", "-d", "--no-deps", *recreate_flags, "--wait", "--wait-timeout",
                    str(int(config.health_timeout)), *config.stateless)),
        ),
        undo=(Cmd(new("stop", "-t", "5", *config.stateless)),) if not recreate else (Cmd(new("rm", "-f", "-s", *config.stateless)),),
        diagnose=logs,
    )
    return [start, traffic.readiness(config, colour, diagnose=logs)]


def _switch_over(config, state: HostState, colour: str, release: str, sha: str) -> list[Step]:
    previous = {"live": state.live, "colour": state.release_of(colour), "current": state.current}
    steps = [traffic.switch(config, colour, release, previous), traffic.verify(config, sha)]
    old_release = state.release_of(state.live)
    if state.live and old_release:
        old_dir = Layout.of(config).release(old_release)
        stop = Cmd(compose.command(config, old_dir, compose.project(config, state.live), "stop", "-t",
                                   str(int(config.drain_timeout) + 5), *config.stateless))
        steps.append(traffic.drain(state.live, (stop,)))
    return steps


def _upload_step(files: tuple[Put, ...]) -> Step:
    folders = sorted({posixpath.dirname(put.path) for put in files})
    return Step("upload release", (cmd("mkdir", "-p", *folders), *files))


def _uploads(config, model, layout, release_dir, sha, colour) -> tuple[Put, ...]:
    files = [Put(f"{release_dir}/{name}", content) for name, content in compose.release_files(config).items()]
    files += [
        Put(f"{release_dir}/{compose.OVERLAY}", compose.overlay(config, model, layout, release_dir, sha, colour).encode()),
        Put(f"{release_dir}/{compose.INTERPOLATION_ENV}", compose.interpolation_env(config, sha, colour).encode()),
        Put(f"{release_dir}/{compose.APP_ENV}", compose.app_env(config.app_env).encode(), mode=0o600, secret=True),
        Put(f"{release_dir}/nginx/site.conf", nginx.site(config).encode()),
        Put(f"{release_dir}/RELEASE.json", (json.dumps({"sha": sha, "colour": colour, "env": config.env}) + "\n").encode()),
    ]
    return tuple(files)
