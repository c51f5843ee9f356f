"""What each task does, host by host: validate, connect, lock, read facts, plan, execute, record.

Validation happens before the first connection; hosts are deployed one after another and the
first failure stops the rollout, so a bad release reaches one host at most.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from . import backends, deploys, history, lock, maintenance, phases, releases, shas
from .config import Config
from .remote.connection import connect
from .remote.console import Console
from .errors import ConfigError, ConnectError, DeployError, StepFailed
from .remote.executor import Interrupt, Interrupted, Remote, ending, execute, interruptible
from .remote.transport import TransportError
from .facts import HostState, json_object, parse, read_command, release_sha
from .layout import Layout
from .plan import Plan


@dataclass(frozen=True)
class Target:
    """An environment's configuration and the hosts a task acts on."""

    config: Config
    hosts: tuple[str, ...]
    accept_new_host_key: bool = False


@contextmanager
def session(target: Target, host: str, interrupt: Interrupt | None = None):
    console = Console(host, target.config.secrets())
    remote = Remote(connect(target.config, host, accept_new_host_key=target.accept_new_host_key), console, interrupt,
                    command_timeout=target.config.timeout_command)
    try:
        yield remote
    finally:
        remote.close()


def read_state(remote: Remote, layout: Layout) -> HostState:
    return parse(remote.check(read_command(layout), "reading the host's state"))


@contextmanager
def locked(remote: Remote, layout: Layout, task: str, sha: str | None, force_unlock: bool = False):
    """Hold the host's deploy lock for the block; released on every way out but a hard abort
    (a second Ctrl-C or SIGTERM), where the host may still be running a command."""
    if force_unlock:
        remote.check(lock.force_release_argv(layout), "removing the deploy lock")
        remote.console("! deploy lock removed (--force-unlock)")
    info = lock.owner(task, sha)
    result = remote.run(lock.acquire_argv(layout, info))
    if result.exited == lock.HELD_EXIT:
        holder = json_object(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "")
        raise lock.held_error(remote.host, holder, time.time())
    if not result.ok:
        reason = f"taking it {ending(result)}" if result.timed_out else result.stderr.strip()[:200]
        raise StepFailed(f"{remote.host}: cannot take the deploy lock: {reason}")
    aborted = False
    try:
        yield info
    except KeyboardInterrupt:
        aborted = True
        remote.console("! aborted mid-step: the deploy lock is kept, as the host may be half-way through a "
                       "command; check `status`, then rerun with --force-unlock")
        raise
    finally:
        if not aborted:
            remote.run(lock.release_argv(layout, info))


def deploy(target: Target, sha: str, *, dry_run: bool = False, migrate: bool = True, force_unlock: bool = False,
           kind: str = "deploy", window: bool = False, fast: bool = False,
           echo: Callable[[str], None] = print) -> dict[str, str]:
    """Deploy `sha` to every host of the target; returns host -> SHA now serving. `window`:
    switch inside a maintenance window (for migrations the old version cannot run beside).
    `fast` (process releases): reuse dependencies and builds whose inputs did not change."""
    config = target.config
    backend = backends.of(config, shas.check(sha), fast=fast)  # the artifact exists: checked before connecting
    if window and not backend.windows:
        raise ConfigError("--maintenance is for container releases (MODE=containers)")
    sha = backend.sha

    def plan_for(state: HostState) -> Plan:
        return deploys.deploy(config, state, backend, sha, releases.name(sha), migrate=migrate, kind=kind,
                              window=window)

    return _each_host(target, kind, sha, plan_for, dry_run=dry_run, force_unlock=force_unlock, echo=echo)


def rollback(target: Target, *, to: str | None = None, migrate: bool = False, dry_run: bool = False,
             force_unlock: bool = False, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Without `to`: back to the colour that served before. With `to`: redeploy an earlier SHA
    from history, without migrations unless asked (process releases reuse what they can)."""
    if to:
        return deploy(target, to, dry_run=dry_run, migrate=migrate, force_unlock=force_unlock,
                      kind="rollback", fast=target.config.mode == "processes", echo=echo)
    backend = backends.of(target.config)
    return _each_host(target, "rollback", None, lambda state: deploys.rollback(target.config, state, backend),
                      dry_run=dry_run, force_unlock=force_unlock, echo=echo)


def set_maintenance(target: Target, on: bool, *, dry_run: bool = False, force_unlock: bool = False,
                    echo: Callable[[str], None] = print) -> None:
    """maintenance-on / maintenance-off on every host; takes the deploy lock so it cannot race a deploy."""
    kind = "maintenance-on" if on else "maintenance-off"
    _each_host(target, kind, None, lambda state: maintenance.toggle(target.config, state, on),
               dry_run=dry_run, force_unlock=force_unlock, echo=echo)


def _each_host(target: Target, kind: str, sha: str | None, plan_for: Callable[[HostState], Plan], *,
               dry_run: bool, force_unlock: bool, echo) -> dict[str, str]:
    layout = Layout.of(target.config)
    serving: dict[str, str] = {}
    with interruptible() as interrupt:
        for host in target.hosts:
            if interrupt:
                raise Interrupted(f"interrupted: stopped before {host}; done: {', '.join(serving) or 'no host'}")
            with session(target, host, interrupt) as remote:
                if dry_run:
                    plan = plan_for(read_state(remote, layout))
                    remote.console(f"dry run: {plan.kind} {plan.sha} to {plan.summary.get('colour')}; "
                                   "nothing will be changed")
                    for line in plan.describe():
                        remote.console(line)
                    continue
                with locked(remote, layout, kind, sha, force_unlock) as owner:
                    state = read_state(remote, layout)
                    if kind == "rollback" and sha and not history.served(state.history, sha):
                        raise DeployError(f"{host}: {sha} never served here (not in the history as a successful "
                                          "deploy); use deploy --sha to ship it")
                    plan = plan_for(state)
                    serving[host] = _run_and_record(remote, layout, plan, owner)
    if not dry_run and any(serving.values()):
        echo("summary: " + ", ".join(f"{host} serves {sha}" for host, sha in serving.items()))
    return serving


def _run_and_record(remote: Remote, layout: Layout, plan: Plan, owner: dict) -> str:
    started = time.time()
    colour = plan.summary.get("colour")
    if plan.sha:
        remote.console(f"{plan.kind} {plan.sha} -> {colour} (was {plan.summary.get('previous') or 'nothing'})")
    try:
        outcome = execute(remote, plan)
    except StepFailed as failure:
        try:  # best effort: the connection may be what failed
            remote.run(history.append_argv(layout, history.entry(plan.kind, plan.sha, colour, owner, "failed",
                                                                 started, [], failed_after=failure.completed)))
        except TransportError:
            remote.console("! could not record the failure in the host's history")
        if plan.summary.get("window") and phases.MIGRATE in failure.completed:
            failure.details.append("the migration had already run: the previous version was started again on the "
                                   "new schema; see `status` for whether maintenance mode is still on")
        raise
    window = maintenance.window_seconds(outcome.steps)
    record = history.entry(plan.kind, plan.sha, colour, owner, "ok", started, outcome.steps,
                           warnings=outcome.warnings, **({"window_s": window} if window is not None else {}))
    remote.run(history.append_argv(layout, record))
    if window is not None:
        remote.console(f"maintenance window: {window:.2f}s")
    remote.console(f"done: {plan.sha} serves from {colour} ({record['duration_s']}s)" if plan.sha
                   else f"done: {plan.kind} ({record['duration_s']}s)")
    return plan.sha


def status(target: Target) -> None:
    """Every host's state; a host that cannot be read is reported and the others still shown."""
    layout = Layout.of(target.config)
    unreachable = []
    for host in target.hosts:
        try:
            with session(target, host) as remote:
                for line in describe_state(target.config, read_state(remote, layout)):
                    remote.console(line)
        except ConnectError as error:
            if len(target.hosts) == 1:
                raise
            Console(host)(f"cannot read: {error}")
            unreachable.append(host)
    if unreachable:
        raise ConnectError(f"{len(unreachable)} of {len(target.hosts)} host(s) could not be read", unreachable)


def describe_state(config: Config, state: HostState) -> list[str]:
    lines = []
    if not state.deployed:
        lines.append(f"{config.app_name} ({config.env}): nothing deployed yet")
    else:
        live_release = state.release_of(state.live)
        lines.append(f"{config.app_name} ({config.env}): {release_sha(live_release)} serving from {state.live}"
                     f" (release {live_release})")
        if state.maintenance:
            lines.append("maintenance mode: ON (visitors get the maintenance page)")
        for colour, release in sorted(state.colours.items()):
            if colour != state.live:
                lines.append(f"standby {colour}: {release_sha(release)} (rollback target)")
    if state.lock:
        lines.append(f"deploy lock: {lock.describe(state.lock, state.now or time.time())}")
    for colour, pid in sorted(state.processes.items()):
        lines.append(f"  gunicorn {colour:5} pid {pid} running {release_sha(state.release_of(colour)) or '?'}")
    for project in [config.app_name] + [f"{config.app_name}-{c}" for c in ("blue", "green")]:
        for container in state.containers_of(project):
            mark = "  " if container.healthy or container.state != "running" else "!!"
            lines.append(f"{mark}{project:>16} {container.service:10} {container.status:28} {container.image}")
    if state.history:
        lines.append("recent deploys:")
        lines.extend("  " + history.format_line(record) for record in state.history[-5:])
    return lines

