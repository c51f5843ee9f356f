"""Plans for container releases: deploy a SHA beside the live colour, or roll back to the other.

    prepare -> upload -> pull -> networks -> stateful -> nginx site -> migrate -> start colour
            -> ready -> switch -> check through nginx -> drain old -> cleanup

Everything before the switch happens beside the live colour, which keeps serving; a failure
anywhere stops the new colour and, past the switch, swaps traffic back.

With `maintenance` (migrations the old version cannot run beside), the new colour boots
before the window, and the window covers only: stop old, migrate, ready, switch.
"""
from __future__ import annotations

import json
import posixpath

from .. import maintenance, nginx, traffic
from ..config import Config
from . import compose
from ..facts import HostState, release_sha
from ..layout import APP_ENV, Layout, other
from ..plan import Cmd, Plan, Put, Step, cmd, sh
from ..releases import cleanup_step, prepare_step, to_delete


class _Colour:
    """Compose commands for one colour of one release."""

    def __init__(self, config: Config, colour: str, release: str, project: str | None = None):
        self.config, self.colour, self.release = config, colour, release
        self.dir = Layout.of(config).release(release)
        self.project = project or compose.project(config, colour)

    def __call__(self, *args: str, stream: bool = False) -> Cmd:
        return Cmd(compose.command(self.config, self.dir, self.project, *args), stream=stream)

    def diagnostics(self) -> tuple[Cmd, ...]:
        return self("ps", "-a"), self("logs", "--no-color", "--tail", "30", *self.config.stateless)

    def start(self, *, recreate: bool) -> Step:
        """Bring the colour up and wait for its containers' health checks; undo removes what a
        deploy created, or stops again what a rollback started."""
        services = self.config.stateless
        flags = ("--force-recreate",) if recreate else ()
        undo = self("rm", "-f", "-s", *services) if recreate else self("stop", "-t", "5", *services)
        # a recreated colour binds a fresh socket; one still running (a rollback after a failed
        # drain) keeps listening on the one it has
        fresh_socket = (cmd("rm", "-f", Layout.of(self.config).socket(self.colour)),) if recreate else ()
        return Step(
            f"start {self.colour}",
            (*fresh_socket,
             self("up", "-d", "--no-deps", *flags, "--wait", "--wait-timeout",
                  str(int(self.config.health_timeout)), *services)),
            undo=(undo,),
            diagnose=self.diagnostics(),
        )

    def ready(self) -> Step:
        return traffic.readiness(self.config, self.colour, diagnose=self.diagnostics())

    def stop(self) -> Cmd:
        return self("stop", "-t", str(int(self.config.drain_timeout) + 5), *self.config.stateless)


def deploy(config: Config, state: HostState, sha: str, release: str, *, migrate: bool = True,
           kind: str = "deploy", window: bool = False) -> Plan:
    layout = Layout.of(config)
    live = state.live
    new = _Colour(config, other(live), release)
    old = _Colour(config, live, state.release_of(live)) if live and state.release_of(live) else None
    model = compose.model(config)
    shared = _Colour(config, "shared", release, project=compose.project(config))

    steps = [
        prepare_step(layout, new.dir),
        _upload_step(_uploads(config, model, layout, new.dir, sha, new.colour)),
        Step("pull images", (new("pull", *config.stateless, stream=True),)),
        Step("networks", tuple(
            cmd("docker", "network", "create", name, unless=("docker", "network", "inspect", name))
            for name in compose.shared_networks(config, model).values()
        )),
    ]
    if config.stateful:
        steps.append(Step("stateful services", (shared("up", "-d", "--no-recreate", *config.stateful),)))
    steps.append(nginx.install_step(config, f"{new.dir}/nginx/site.conf"))
    migration = [Step("migrate", (new("run", "--rm", "--no-deps", "-T", config.web_service,
                                      *config.migrate_command, stream=True),))] if migrate and config.migrate_command else []
    if window:
        # the new colour boots outside the window (ready only after the migration); a window the
        # operator opened before the deploy stays open after it
        own_window = not state.maintenance
        steps.append(new.start(recreate=True))
        steps += [maintenance.window_on_step(config, live)] if own_window else []
        if old:
            steps.append(Step(f"stop {old.colour}", (old.stop(),), undo=(old("up", "-d", "--no-deps", "--wait", *config.stateless),)))
        steps += [*migration, new.ready(), traffic.switch(config, state, new.colour, release),
                  *([maintenance.off_step(config)] if own_window else []), traffic.verify(config, sha)]
    else:
        steps += [*migration, new.start(recreate=True), new.ready(),
                  *traffic.switch_over(config, state, new.colour, release, sha, (old.stop(),) if old else ())]
    steps.append(_cleanup(config, state, release))
    return Plan(kind, sha, tuple(steps), {"colour": new.colour, "release": release,
                                          "previous": release_sha(state.release_of(live)), "window": window})


def rollback(config: Config, state: HostState) -> Plan:
    """Back to the colour that served before: its containers are stopped, not gone, so this is
    a start, a gate and a switch, with no pull and no migration."""
    colour, release, sha = traffic.rollback_target(state)
    target = _Colour(config, colour, release)
    old = _Colour(config, state.live, state.release_of(state.live))
    steps = [target.start(recreate=False), target.ready(),
             *traffic.switch_over(config, state, colour, release, sha, (old.stop(),))]
    return Plan("rollback", sha, tuple(steps), {"colour": colour, "release": release,
                                                "previous": release_sha(state.release_of(state.live))})


def _cleanup(config: Config, state: HostState, release: str) -> Step:
    """Old releases, and their images unless a kept release uses them (in use: docker refuses)."""
    doomed = to_delete(state, config.keep_releases, (release,))
    kept = {release_sha(r) for r in {*state.releases, release} - set(doomed)}
    images = sorted(f"{config.images[service]}:{sha}" for sha in {release_sha(r) for r in doomed} - kept
                    for service in config.stateless)
    step = cleanup_step(Layout.of(config), state, config.keep_releases, keep=(release,))
    prune = (cmd(*sh('docker image rm "$@" >/dev/null 2>&1; true', *images)),) if images else ()
    return Step(step.name, (*step.actions, *prune), best_effort=True)


def _upload_step(files: tuple[Put, ...]) -> Step:
    folders = sorted({posixpath.dirname(put.path) for put in files})
    return Step("upload release", (cmd("mkdir", "-p", *folders), *files))


def _uploads(config, model, layout, release_dir, sha, colour) -> tuple[Put, ...]:
    files = [Put(f"{release_dir}/{name}", content) for name, content in compose.release_files(config).items()]
    files += [
        Put(f"{release_dir}/{compose.OVERLAY}", compose.overlay(config, model, layout, release_dir, sha, colour).encode()),
        Put(f"{release_dir}/{compose.INTERPOLATION_ENV}", compose.interpolation_env(config, sha, colour).encode()),
        Put(f"{release_dir}/{APP_ENV}", compose.app_env(config.app_env).encode(), mode=0o600, secret=True),
        Put(f"{release_dir}/RELEASE.json", (json.dumps({"sha": sha, "colour": colour, "env": config.env}) + "\n").encode()),
    ]
    return tuple(files)
