"""What each task does, host by host: validate, connect, lock, read facts, plan, execute, record.

Validation happens before the first connection; hosts are deployed one after another and the
first failure stops the rollout, so a bad release reaches one host at most.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from . import backends, deploys, history, holder, lock, maintenance, nginx, phases, progress, releases, shas
from .config import Config
from .remote.connection import connect
from .remote.console import Console
from .errors import ConfigError, ConnectError, DeployError, StepFailed
from .remote.executor import Detached, Interrupt, Interrupted, Remote, execute, interruptible
from .remote.transport import TransportError
from .facts import HostState, parse, read_command, release_sha
from .layout import Layout
from .locking import locked
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

    def reopen():  # a fresh connection for undos after this one broke
        return connect(target.config, host, accept_new_host_key=target.accept_new_host_key)

    remote = Remote(reopen(), console, interrupt, reopen=reopen, command_timeout=target.config.timeout_command)
    try:
        yield remote
    finally:
        remote.close()


def read_state(remote: Remote, config: Config) -> HostState:
    command = read_command(Layout.of(config), config.health_path, nginx.probe_host(config))
    return parse(remote.check(command, "reading the host's state"))


def deploy(target: Target, sha: str, *, dry_run: bool = False, migrate: bool = True, force_unlock: bool = False,
           force: bool = False, lock_wait: float = 0, kind: str = "deploy", window: bool = False, fast: bool = False,
           echo: Callable[[str], None] = print) -> dict[str, str]:
    """Deploy `sha` to every host of the target; returns host -> SHA now serving. `window`:
    switch inside a maintenance window (for migrations the old version cannot run beside).
    `fast` (process releases): reuse dependencies and builds whose inputs did not change.
    `force_unlock`, `force`, `lock_wait`: what to do about a held lock (lock.policy)."""
    policy = lock.policy(force_unlock, force, lock_wait)
    config = target.config
    backend = backends.of(config, shas.check(sha), fast=fast)  # the artifact exists: checked before connecting
    if window and not backend.windows:
        raise ConfigError("--maintenance is for container releases (MODE=containers)")
    sha = backend.sha

    def plan_for(state: HostState) -> Plan:
        return deploys.deploy(config, state, backend, sha, releases.name(sha), migrate=migrate, kind=kind,
                              window=window)

    return _each_host(target, kind, sha, plan_for, dry_run=dry_run, policy=policy, echo=echo)


def rollback(target: Target, *, to: str | None = None, migrate: bool = False, dry_run: bool = False,
             force_unlock: bool = False, force: bool = False, lock_wait: float = 0,
             echo: Callable[[str], None] = print) -> dict[str, str]:
    """Without `to`: back to the colour that served before. With `to`: redeploy an earlier SHA
    from history, without migrations unless asked (process releases reuse what they can)."""
    if to:
        return deploy(target, to, dry_run=dry_run, migrate=migrate, force_unlock=force_unlock, force=force,
                      lock_wait=lock_wait, kind="rollback", fast=target.config.mode == "processes", echo=echo)
    policy = lock.policy(force_unlock, force, lock_wait)
    backend = backends.of(target.config)
    return _each_host(target, "rollback", None, lambda state: deploys.rollback(target.config, state, backend),
                      dry_run=dry_run, policy=policy, echo=echo)


def set_maintenance(target: Target, on: bool, *, dry_run: bool = False, force_unlock: bool = False,
                    force: bool = False, lock_wait: float = 0, echo: Callable[[str], None] = print) -> None:
    """maintenance-on / maintenance-off on every host; takes the deploy lock so it cannot race a deploy."""
    policy = lock.policy(force_unlock, force, lock_wait)
    kind = "maintenance-on" if on else "maintenance-off"
    _each_host(target, kind, None, lambda state: maintenance.toggle(target.config, state, on),
               dry_run=dry_run, policy=policy, echo=echo)


def _each_host(target: Target, kind: str, sha: str | None, plan_for: Callable[[HostState], Plan], *,
               dry_run: bool, policy: lock.Policy, echo) -> dict[str, str]:
    layout = Layout.of(target.config)
    serving: dict[str, str] = {}
    with interruptible() as interrupt:
        for host in target.hosts:
            if interrupt:
                raise Interrupted(f"interrupted: stopped before {host}; done: {', '.join(serving) or 'no host'}")
            with session(target, host, interrupt) as remote:
                if dry_run:
                    plan = plan_for(read_state(remote, target.config))
                    remote.console(f"dry run: {plan.kind} {plan.sha} to {plan.summary.get('colour')}; "
                                   "nothing will be changed")
                    for line in plan.describe():
                        remote.console(line)
                    continue
                with locked(remote, layout, kind, sha, policy) as owner:
                    state = read_state(remote, target.config)
                    if kind == "rollback" and sha and not history.served(state.history, sha):
                        raise DeployError(f"{host}: {sha} never served here (not in the history as a successful "
                                          "deploy); use deploy --sha to ship it")
                    plan = plan_for(state)
                    if progress.unrecorded(state.in_progress, owner):
                        step = (owner.get("took_over") or {}).get("step")
                        remote.run(history.append_argv(layout, progress.obituary(state.in_progress, kind, step,
                                                                                 state.now or time.time())))
                    serving[host] = _run_and_record(remote, layout, plan, owner)
    if not dry_run and any(serving.values()):
        echo("summary: " + ", ".join(f"{host} serves {sha}" for host, sha in serving.items()))
    return serving


def _run_and_record(remote: Remote, layout: Layout, plan: Plan, owner: dict) -> str:
    started = time.time()
    colour = plan.summary.get("colour")
    if plan.sha:
        remote.console(f"{plan.kind} {plan.sha} -> {colour} (was {plan.summary.get('previous') or 'nothing'})")
    # the step under way is in the lock's lease; the marker outlives the lock, so a deploy that
    # never finished is still named after its lock was released or taken over
    remote.run(progress.mark_argv(layout, progress.record(plan.kind, plan.sha, colour, owner, progress.STARTED, started)))
    try:
        outcome = execute(remote, plan)
    except StepFailed as failure:
        ended = "lost" if isinstance(failure, Detached) else "failed"  # lost: the migration may still run
        reason = remote.console.mask(str(failure).splitlines()[0])[:300]
        outcome = ended if failure.undone else "failed, not undone"
        left = progress.UNDO_FAILED if not failure.undone else progress.LOST if ended == "lost" else None
        _record(remote, (
            history.append_argv(layout, history.entry(plan.kind, plan.sha, colour, owner, outcome, started, [],
                                                      failed_after=failure.completed, reason=reason)),
            progress.mark_argv(layout, progress.record(plan.kind, plan.sha, colour, owner, left, started))
            if left else progress.clear_argv(layout)), "the failure")
        if plan.summary.get("window") and phases.MIGRATE in failure.completed:
            failure.details.append("the migration had already run: the previous version was started again on the "
                                   "new schema; see `status` for whether maintenance mode is still on")
        raise
    window = maintenance.window_seconds(outcome.steps)
    record = history.entry(plan.kind, plan.sha, colour, owner, "ok", started, outcome.steps,
                           warnings=outcome.warnings, **({"window_s": window} if window is not None else {}))
    _record(remote, (history.append_argv(layout, record), progress.clear_argv(layout)), "the deploy")
    if window is not None:
        remote.console(f"maintenance window: {window:.2f}s")
    remote.console(f"done: {plan.sha} serves from {colour} ({record['duration_s']}s)" if plan.sha
                   else f"done: {plan.kind} ({record['duration_s']}s)")
    return plan.sha


def _record(remote: Remote, commands: tuple[tuple[str, ...], ...], what: str) -> None:
    """The outcome's history line and marker, on a fresh connection if the one the plan ran on
    broke (a deploy that finished must not end as failed, nor be called dead by the next one,
    because its connection dropped after the last step)."""
    for attempt in (1, 2):
        try:
            for argv in commands:
                remote.run(argv)
            return
        except TransportError:
            if attempt == 2 or not remote.reconnect():
                break
    remote.console(f"! could not record {what} in the host's history")


def status(target: Target) -> None:
    """Every host's state; a host that cannot be read is reported and the others still shown."""
    unreachable, broken = [], []
    for host in target.hosts:
        try:
            with session(target, host) as remote:
                state = read_state(remote, target.config)
                for line in describe_state(target.config, state):
                    remote.console(line)
                broken += [f"{host}: {problem}" for problem in problems(target.config, state)]
        except ConnectError as error:
            if len(target.hosts) == 1:
                raise
            Console(host)(f"cannot read: {error}")
            unreachable.append(host)
    if unreachable:
        raise ConnectError(f"{len(unreachable)} of {len(target.hosts)} host(s) could not be read", unreachable)
    if broken:
        raise DeployError("the host needs attention" if len(broken) == 1 else "hosts need attention", broken)


def problems(config: Config, state: HostState) -> list[str]:
    """What makes `status` exit non-zero: visitors get errors now, or a deploy stopped half way."""
    found = []
    if state.deployed and state.live_answers is False:
        found.append(f"the live colour ({state.live}) does not answer HEALTH_PATH {config.health_path} on its socket: "
                     "nginx answers 502; `rollback` or a deploy repairs it")
    if state.maintenance and state.maintenance_by == maintenance.WINDOW and not state.lock:
        found.append("maintenance mode was left on by a maintenance-window deploy that did not finish")
    if state.in_progress and progress.left_behind(state.in_progress, state.lock, state.holder):
        found.append(progress.describe(state.in_progress, state.lock, state.now or time.time(), state.holder))
    return found


def _standby(state: HostState, colour: str, release: str) -> str:
    """Whether `rollback` can return to the standby colour: its release must still be on the host,
    and no deploy may have failed on that colour since (its undo removed what the colour ran)."""
    if release not in state.releases:
        return "its release was removed: not a rollback target; use rollback --to SHA"
    last = next((r for r in reversed(state.history) if r.get("colour") == colour), None)
    staged = last and (last.get("kind") != "rollback" or phases.PREPARE in (last.get("failed_after") or ()))
    if last and last.get("outcome") != "ok" and staged:
        return (f"left by the {last.get('outcome')} {last.get('kind')} of {last.get('sha')}: not a rollback target; "
                "use rollback --to SHA")
    return "rollback target"


def describe_state(config: Config, state: HostState) -> list[str]:
    lines = []
    if not state.deployed:
        lines.append(f"{config.app_name} ({config.env}): nothing deployed yet")
    else:
        live_release = state.release_of(state.live)
        lines.append(f"{config.app_name} ({config.env}): {release_sha(live_release)} serving from {state.live}"
                     f" (release {live_release})")
        if state.live_answers is False:
            lines.append(f"!! the live colour does not answer HEALTH_PATH {config.health_path}: visitors get 502")
        if state.maintenance and state.maintenance_by == maintenance.WINDOW:
            lines.append("!! maintenance mode: ON, left by a maintenance-window deploy that did not finish (the "
                         "migration may have run): the next `deploy --maintenance` lifts it, or `maintenance-off`")
        elif state.maintenance:
            lines.append("maintenance mode: ON (visitors get the maintenance page)")
        for colour, release in sorted(state.colours.items()):
            if colour != state.live:
                lines.append(f"standby {colour}: {release_sha(release)} ({_standby(state, colour, release)})")
    if state.in_progress:
        lines.append(("!! " if progress.left_behind(state.in_progress, state.lock, state.holder) else "")
                     + progress.describe(state.in_progress, state.lock, state.now or time.time(), state.holder))
    if state.lock:
        lines.append(holder.status_line(state.holder or holder.Holder(state.lock), state.now or time.time()))
    server = "server" if config.processes and config.processes.start_command else "gunicorn"
    for colour, pid in sorted(state.processes.items()):
        lines.append(f"  {server} {colour:5} pid {pid} running {release_sha(state.release_of(colour)) or '?'}")
    for project in [config.app_name] + [f"{config.app_name}-{c}" for c in ("blue", "green")]:
        for container in state.containers_of(project):
            mark = "  " if container.healthy or container.state != "running" else "!!"
            lines.append(f"{mark}{project:>16} {container.service:10} {container.status:28} {container.image}")
    if state.history:
        lines.append("recent deploys:")
        lines.extend("  " + history.format_line(record) for record in state.history[-5:])
    return lines

