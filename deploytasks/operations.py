"""What each task does: validate, connect, lock, read facts, plan, execute, record.

Validation happens before the first connection. Several hosts are one rollout (rollout.py):
every lock first, all hosts prepared at once, switched in batches, switched back together.
"""
from __future__ import annotations

import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable

from . import (backends, deploys, events, history, holder, lock, locking, maintenance, nginx, parallel, phases,
               probe, progress, releases, rollout, shas)
from .config import Config
from .remote.connection import connect
from .remote.console import Console, columns
from .errors import ConfigError, ConnectError, DeployError, StepFailed
from .remote.executor import Detached, Interrupt, Remote, Run, interruptible
from .remote.transport import TransportError
from .facts import HostState, parse, read_command, release_sha
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
    remote = open_remote(target, host, interrupt)
    try:
        yield remote
    finally:
        remote.close()


def open_remote(target: Target, host: str, interrupt: Interrupt | None = None) -> Remote:
    """One connection to `host`, which can reopen itself for undos after it broke."""
    def reopen():
        return connect(target.config, host, accept_new_host_key=target.accept_new_host_key)

    return Remote(reopen(), Console(host, target.config.secrets()), interrupt, reopen=reopen,
                  command_timeout=target.config.timeout_command)


def read_state(remote: Remote, config: Config) -> HostState:
    command = read_command(Layout.of(config), config.health_path, nginx.probe_host(config), bool(config.images))
    return parse(remote.check(command, "reading the host's state"))


@dataclass(frozen=True)
class Rollout:
    """How a task goes over several hosts: `batch` hosts (N, or N%) switched at a time, `wait`
    seconds between batches, and whether a failure switches the hosts already done back."""

    batch: str | int | None = None
    wait: float = 0.0
    rollback: bool = True

    @classmethod
    def of(cls, batch: str | int | None = None, wait: object = 0, rollback: bool = True) -> Rollout:
        """The CLI's options, checked before any connection opens."""
        try:
            seconds = float(wait or 0)
        except (TypeError, ValueError):
            seconds = -1.0
        if not 0 <= seconds <= 3600:
            raise ConfigError(f"--batch-wait {wait!r}: seconds between batches, 0 to 3600")
        rollout.batches(["a"], batch)  # refuses a malformed --batch
        return cls(batch, seconds, rollback)


def deploy(target: Target, sha: str, *, dry_run: bool = False, migrate: bool = True, force_unlock: bool = False,
           force: bool = False, lock_wait: float = 0, kind: str = "deploy", window: bool = False, fast: bool = False,
           over: Rollout = Rollout(), note: dict | None = None, probing: bool = True,
           echo: Callable[[str], None] = print) -> dict[str, str]:
    """Deploy `sha` to every host of the target; returns host -> SHA now serving. `window`:
    switch inside a maintenance window (for migrations the old version cannot run beside).
    `fast` (process releases): reuse dependencies and builds whose inputs did not change.
    `force_unlock`, `force`, `lock_wait`: what to do about a held lock (lock.policy). `over`:
    batches over several hosts; the migration runs once, on the first host. `note`: recorded in
    each host's history line (a promotion's source). `probing`: False for --no-probe."""
    policy = lock.policy(force_unlock, force, lock_wait)
    config = target.config
    events.check(config)  # a hook that cannot run is refused before connecting
    backend = backends.of(config, shas.check(sha), fast=fast)  # the artifact exists: checked before connecting
    if window and not backend.windows:
        raise ConfigError("--maintenance is for container releases (MODE=containers)")
    if window and len(target.hosts) > 1:
        raise ConfigError("--maintenance deploys one host at a time: run it with -H HOST for each host")
    sha = backend.sha

    def plan_for(state: HostState, primary: bool) -> Plan:
        return deploys.deploy(config, state, backend, sha, releases.name(sha), migrate=migrate and primary,
                              kind=kind, window=window, probing=probing)

    return _each_host(target, kind, sha, plan_for, dry_run=dry_run, policy=policy, echo=echo, over=over, note=note,
                      announce=True)


def rollback(target: Target, *, to: str | None = None, migrate: bool = False, dry_run: bool = False,
             force_unlock: bool = False, force: bool = False, lock_wait: float = 0, over: Rollout = Rollout(),
             probing: bool = True, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Without `to`: back to the colour that served before, refused unless that is the same
    version on every host. With `to`: redeploy an earlier SHA every host served, without
    migrations unless asked (process releases reuse what they can)."""
    if to:
        return deploy(target, to, dry_run=dry_run, migrate=migrate, force_unlock=force_unlock, force=force,
                      lock_wait=lock_wait, kind="rollback", fast=target.config.mode == "processes", over=over,
                      probing=probing, echo=echo)
    policy = lock.policy(force_unlock, force, lock_wait)
    events.check(target.config)
    backend = backends.of(target.config)
    return _each_host(target, "rollback", None,
                      lambda state, primary: deploys.rollback(target.config, state, backend, probing=probing),
                      dry_run=dry_run, policy=policy, echo=echo, over=over, announce=True)


def promote(source: Target, target: Target, sha: str, *, force: bool = False, dry_run: bool = False,
            force_unlock: bool = False, unlock_force: bool = False, lock_wait: float = 0, over: Rollout = Rollout(),
            probing: bool = True, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Deploy to `target` exactly what `source` ran for `sha`: the same images by SHA (or the same
    commit), never rebuilt, and only once `source`'s history shows it served there (`force`
    skips that check, and the history line says so)."""
    lock.policy(force_unlock, unlock_force, lock_wait)
    problems = same_artifacts(source.config, target.config)
    if problems:
        raise ConfigError(f"{target.config.env} does not deploy what {source.config.env} runs", problems)
    full = backends.of(target.config, shas.check(sha)).sha  # resolved, and its artifact exists
    if force:
        echo(f"! --force: not checking that {source.config.env} served {full}")
    else:
        never = [host for host, history_ in _histories(source).items() if not history.served(history_, full)]
        if never:
            raise DeployError(f"{source.config.env} never served {full} (no successful deploy of it in the history "
                              f"of {', '.join(never)}): promote ships only what {source.config.env} ran; "
                              "--force skips this check")
    note = {"promoted_from": source.config.env, **({"forced": True} if force else {})}
    return deploy(target, full, dry_run=dry_run, force_unlock=force_unlock, force=unlock_force, lock_wait=lock_wait,
                  over=over, note=note, probing=probing, echo=echo)


def same_artifacts(source: Config, target: Config) -> list[str]:
    """Why `target` would not run what `source` ran for a SHA: another kind of release, other
    images, or another directory of the repository."""
    if source.mode != target.mode:
        return [f"MODE: {source.env} is {source.mode}, {target.env} is {target.mode}"]
    if source.processes and target.processes:  # a commit is the same commit in every clone
        if source.processes.source_path != target.processes.source_path:
            return [f"SOURCE_PATH: {source.env} has {source.processes.source_path!r}, "
                    f"{target.env} {target.processes.source_path!r}"]
        return []
    return [f"IMAGE_{service.upper()}: {source.env} has {source.images.get(service) or 'none'}, "
            f"{target.env} {target.images.get(service) or 'none'}"
            for service in sorted({*source.images, *target.images})
            if source.images.get(service) != target.images.get(service)]


def _histories(target: Target) -> dict[str, tuple[dict, ...]]:
    """Each host's deploy history, read without the lock (nothing is changed)."""
    found = {}
    for host in target.hosts:
        with session(target, host) as remote:
            found[host] = read_state(remote, target.config).history
    return found


def set_maintenance(target: Target, on: bool, *, dry_run: bool = False, force_unlock: bool = False,
                    force: bool = False, lock_wait: float = 0, echo: Callable[[str], None] = print) -> None:
    """maintenance-on / maintenance-off on every host; takes the deploy lock so it cannot race a deploy."""
    policy = lock.policy(force_unlock, force, lock_wait)
    kind = "maintenance-on" if on else "maintenance-off"
    _each_host(target, kind, None, lambda state, primary: maintenance.toggle(target.config, state, on),
               dry_run=dry_run, policy=policy, echo=echo)


def prune(target: Target, *, dry_run: bool = False, force_unlock: bool = False, force: bool = False,
          lock_wait: float = 0, echo: Callable[[str], None] = print) -> None:
    """Remove, on every host, the releases `releases.select` drops and what only they used (images,
    virtualenvs): never the live release, the previous one, a colour's, nor one of the newest
    KEEP_RELEASES that served. Takes the deploy lock, so it cannot race a deploy; `dry_run` lists
    what would go on each host and changes nothing."""
    policy = lock.policy(force_unlock, force, lock_wait)
    backend = backends.of(target.config)
    _each_host(target, "prune", None, lambda state, primary: releases.prune(target.config, state, backend),
               dry_run=dry_run, policy=policy, echo=echo)


def _each_host(target: Target, kind: str, sha: str | None, plan_for: Callable[[HostState, bool], Plan], *,
               dry_run: bool, policy: lock.Policy, echo, over: Rollout = Rollout(),
               note: dict | None = None, announce: bool = False) -> dict[str, str]:
    """Lock every host (all or none), plan each from its own state (the first host's plan alone
    migrates), then the rollout (rollout.py), then each host's history. `plan_for(state, primary)`.
    `announce`: run the hooks and send the notices (events.py) of a deploy or rollback."""
    ident = uuid.uuid4().hex[:12]
    told = events.Events(target.config, kind, ident, echo) if announce else None
    if dry_run:
        _dry_run(target, plan_for)
        if told:
            told.dry_run()
        return {}
    order = rollout.batches(target.hosts, over.batch)  # a bad --batch is refused before connecting
    layout = Layout.of(target.config)
    fleet = ident if len(target.hosts) > 1 else None
    members: list[Crew] = []
    aborted: BaseException | None = None
    failure: BaseException | None = None
    with interruptible() as interrupt, ExitStack() as connections:
        try:
            members = _lock_every_host(target, layout, kind, sha, policy, interrupt, connections)
            states = _all(members, lambda crew: read_state(crew.remote, target.config))
            plans = [plan_for(state, index == 0) for index, state in enumerate(states)]
            _check_fleet(kind, sha, members, states, plans)
            if told:  # pre-deploy: a failure stops here, every lock released, nothing changed
                told.starting(target.hosts, plans, lock.who(members[0].held.info), stop=lambda: bool(interrupt))
            notes = {**({"fleet": fleet} if fleet else {}), **(note or {})}
            _all(list(zip(members, states, plans)), lambda m: m[0].begin(layout, kind, m[1], m[2], notes))
            try:
                rollout.roll([crew.member for crew in members], order, batch_wait=over.wait,
                             rollback=over.rollback, echo=echo,
                             on_switched=(lambda member: told.switched(member.host)) if told else None,
                             on_all_switched=told.all_switched if told else None)
            except KeyboardInterrupt:
                raise  # a hard abort records nothing: the lock is kept, the next deploy writes what happened
            except BaseException:
                _settled(members, layout, echo)
                raise
            _settled(members, layout, echo)
        except KeyboardInterrupt as error:
            aborted = error
            raise
        except BaseException as error:
            failure = error
            raise
        finally:
            parallel.each(members, lambda crew: crew.held.end(aborted or (crew.member.error if crew.member else None)),
                          lambda crew: crew.host)
            if told and not aborted:  # post-deploy or deploy-failed, and the notice, once the locks are free
                told.figures = probe.combined([crew.figures for crew in members])
                told.finished({crew.host: crew.outcome for crew in members}, failure)
    serving = {crew.host: crew.plan.sha for crew in members}
    if any(serving.values()):
        echo("summary: " + ", ".join(f"{host} serves {sha}" for host, sha in serving.items()))
    return serving


def _lock_every_host(target: Target, layout: Layout, kind: str, sha: str | None, policy: lock.Policy,
                     interrupt: Interrupt, connections: ExitStack) -> list[Crew]:
    """Connect to every host and take its lock, all at once: all or none. If a host cannot be
    reached or its lock is held, the locks taken are released before anything changed."""
    def connect_and_lock(host: str) -> Crew:
        remote = open_remote(target, host, interrupt)
        try:
            return Crew(remote, locking.take(remote, layout, kind, sha, policy))
        except BaseException:
            remote.close()
            raise

    results = parallel.each(target.hosts, connect_and_lock)
    crews = [result for result in results if isinstance(result, Crew)]
    for crew in crews:
        connections.callback(crew.remote.close)
    errors = parallel.failures(results)
    if errors:
        parallel.each(crews, lambda crew: crew.held.end(None), lambda crew: crew.host)
        if len(errors) > 1 and isinstance(errors[0], DeployError):
            errors[0].details.extend(str(error) for error in errors[1:])
        raise errors[0]
    return crews


def _all(items: list, work: Callable) -> list:
    """work(item) on every host at once; the first failure (in host order) is raised."""
    results = parallel.each(items, work, lambda item: "")
    errors = parallel.failures(results)
    if errors:
        raise errors[0]
    return results


def _settled(members: list[Crew], layout: Layout, echo) -> None:
    """Each host's history line, and with several hosts the rollout's table."""
    _all(members, lambda crew: crew.record(layout))
    if len(members) > 1:
        for line in rollout.table([c.member for c in members], {c.host: c.before for c in members},
                                  {c.host: c.now for c in members}):
            echo(line)


def _dry_run(target: Target, plan_for: Callable[[HostState, bool], Plan]) -> None:
    for index, host in enumerate(target.hosts):
        with session(target, host) as remote:
            plan = plan_for(read_state(remote, target.config), index == 0)
            what = " ".join(filter(None, (plan.kind, plan.sha, plan.summary.get("colour") and
                                          f"to {plan.summary['colour']}")))
            remote.console(f"dry run: {what}; nothing will be changed")
            for line in (*plan.summary.get("listing", ()), *plan.describe()):
                remote.console(line)


def _check_fleet(kind: str, sha: str | None, members: list[Crew], states: list[HostState], plans: list[Plan]) -> None:
    """Before anything changes: a rollback --to SHA every host served, and a rollback that takes
    every host to the same version."""
    if kind == "rollback" and sha:
        never = [crew.host for crew, state in zip(members, states) if not history.served(state.history, sha)]
        if never:
            raise DeployError(f"{', '.join(never)}: {sha} never served here (not in the history as a successful "
                              "deploy); use deploy --sha to ship it")
    if kind == "rollback" and not sha and len({plan.sha for plan in plans}) > 1:
        targets = ", ".join(f"{crew.host} -> {plan.sha}" for crew, plan in zip(members, plans))
        common = [good for good in history.last_good(states[0].history)
                  if all(history.served(state.history, good) for state in states[1:])
                  and not all(shas.same(good, release_sha(state.release_of(state.live))) for state in states)]
        hint = (f"rollback --to {common[0]} (served by every host)" if common else
                "deploy --sha SHA (no earlier version was served by every host)")
        raise DeployError(f"the hosts would go back to different versions ({targets}): refused; use {hint}")


class Crew:
    """One host of a task: its connection, its lock, and its run of the plan."""

    def __init__(self, remote: Remote, held: locking.Held):
        self.remote, self.held = remote, held
        self.host = remote.host
        self.member: rollout.Member | None = None
        self.plan: Plan | None = None
        self.before: str | None = None
        self.started = time.time()
        self.note: dict = {}
        self.figures: dict | None = None  # what its probe saw

    @property
    def outcome(self) -> str:
        """What became of the host (rollout.py's words), or that the rollout never reached it."""
        return self.member.outcome if self.member and self.member.outcome else "not started"

    @property
    def now(self) -> str | None:
        """What the host serves after the rollout: the new SHA unless it went back or never switched."""
        if self.member is None or self.plan is None:
            return self.before
        return self.plan.sha if self.member.outcome in (rollout.OK, rollout.KEPT) else self.before

    def begin(self, layout: Layout, kind: str, state: HostState, plan: Plan, note: dict) -> None:
        """The dead deploy's obituary if one is owed, the header line, and the in-progress marker."""
        remote, owner = self.remote, self.held.info
        if progress.unrecorded(state.in_progress, owner):
            step = (owner.get("took_over") or {}).get("step")
            remote.run(history.append_argv(layout, progress.obituary(state.in_progress, kind, step,
                                                                     state.now or time.time())))
        self.plan, self.note, self.before = plan, note, release_sha(state.release_of(state.live))
        self.started = time.time()
        if plan.sha:
            remote.console(f"{plan.kind} {plan.sha} -> {plan.summary.get('colour')} "
                           f"(was {plan.summary.get('previous') or 'nothing'})")
        for line in plan.summary.get("listing", ()):
            remote.console(line)
        # the step under way is in the lock's lease; the marker outlives the lock, so a deploy that
        # never finished is still named after its lock was released or taken over
        remote.run(progress.mark_argv(layout, self._marker(progress.STARTED)))
        self.member = rollout.Member(self.host, Run(remote, plan))

    def _marker(self, step: str) -> dict:
        return progress.record(self.plan.kind, self.plan.sha, self.plan.summary.get("colour"), self.held.info, step,
                               self.started, release=self.plan.summary.get("release"))

    def record(self, layout: Layout) -> None:
        """The host's history line for what became of it, and its marker cleared (or left saying
        what the next deploy must know)."""
        member, plan, remote = self.member, self.plan, self.remote
        if member is None:
            return
        if not member.outcome and member.error is None:  # the rollout stopped before it ran anything here
            _record(remote, (progress.clear_argv(layout),), "the end of the deploy")
            return
        # the release the line is about (what `prune` judges releases by), and what the plan adds
        extra = {**self.note, **({"release": plan.summary["release"]} if plan.summary.get("release") else {}),
                 **plan.summary.get("record", {})}
        figures = self.figures = self._probe(layout)
        extra.update({"probe": figures} if figures else {})
        colour = plan.summary.get("colour")
        if member.outcome == rollout.OK or member.outcome == rollout.KEPT:
            window = maintenance.window_seconds(member.run.outcome.steps)
            extra.update({"window_s": window} if window is not None else {})
            extra.update({"kept_after": member.because} if member.because else {})
            record = history.entry(plan.kind, plan.sha, colour, self.held.info, "ok", self.started,
                                   member.run.outcome.steps, warnings=member.run.outcome.warnings, **extra)
            _record(remote, (history.append_argv(layout, record), progress.clear_argv(layout)), "the deploy")
            if window is not None:
                remote.console(f"maintenance window: {window:.2f}s")
            remote.console(f"done: {plan.sha} serves from {colour} ({record['duration_s']}s)" if plan.sha
                           else f"done: {plan.kind} ({record['duration_s']}s)")
            return
        failure = member.error
        if member.outcome in (rollout.ROLLED_BACK, rollout.UNDONE):
            outcome, left, reason = member.outcome, None, member.because
            completed = [phase for phase, _ in member.run.outcome.steps]
        else:
            ended = "lost" if isinstance(failure, Detached) else "failed"  # lost: the migration may still run
            undone = failure is not None and failure.undone
            outcome = ended if undone else "failed, not undone"
            left = progress.UNDO_FAILED if not undone else progress.LOST if ended == "lost" else None
            reason = str(failure).splitlines()[0] if failure else "interrupted"
            completed = failure.completed if failure else []
        reason = remote.console.mask(reason)[:300]
        _record(remote, (
            history.append_argv(layout, history.entry(plan.kind, plan.sha, colour, self.held.info, outcome,
                                                      self.started, [], failed_after=completed, reason=reason,
                                                      **extra)),
            progress.mark_argv(layout, self._marker(left)) if left else progress.clear_argv(layout)), "the failure")
        if failure and plan.summary.get("window") and phases.MIGRATE in completed:
            failure.details.append("the migration had already run: the previous version was started again on the "
                                   "new schema; see `status` for whether maintenance mode is still on")


    def _probe(self, layout: Layout) -> dict | None:
        """The probe's figures, once it is stopped (after the drain, or after an undo), shown as
        the deploy's last words; a probe that cannot be read is a warning, never a failure."""
        interval = self.plan.summary.get("probe_interval")
        failure = self.member.error
        started = [phase for phase, _ in self.member.run.outcome.steps] + list(getattr(failure, "completed", None) or [])
        if not interval or phases.PROBE not in started:
            return None
        for attempt in (1, 2):  # on a fresh connection if the plan's broke, as the history line
            try:
                lines = self.remote.run(probe.collect_argv(layout)).stdout
                break
            except DeployError as error:
                if attempt == 2 or not isinstance(error, TransportError) or not self.remote.reconnect():
                    self.remote.console(f"! the probe's requests could not be read: {str(error).splitlines()[0]}")
                    return None
        figures = probe.summarize(lines, self.plan.sha, interval)
        if figures:
            switched = phases.SWITCH in started
            back = switched and self.member.outcome in (rollout.ROLLED_BACK, rollout.UNDONE) or \
                switched and failure is not None and getattr(failure, "undone", False)
            self.remote.console(probe.describe(figures, switched_back=back))
        return figures


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


def status(target: Target, echo: Callable[[str], None] = print) -> None:
    """Every host's state; a host that cannot be read is reported and the others still shown.
    With several hosts, a table side by side ends it, and hosts that differ are flagged."""
    unreachable, broken = [], []
    states: dict[str, HostState] = {}
    for host in target.hosts:
        try:
            with session(target, host) as remote:
                state = states[host] = read_state(remote, target.config)
                for line in describe_state(target.config, state):
                    remote.console(line)
                broken += [f"{host}: {problem}" for problem in problems(target.config, state)]
        except ConnectError as error:
            if len(target.hosts) == 1:
                raise
            Console(host)(f"cannot read: {error}")
            unreachable.append(host)
    if len(target.hosts) > 1:
        for line in fleet_table(target.hosts, states):
            echo(line)
        broken += fleet_problems(states)
    if unreachable:
        raise ConnectError(f"{len(unreachable)} of {len(target.hosts)} host(s) could not be read", unreachable)
    if broken:
        raise DeployError("the host needs attention" if len(broken) == 1 else "hosts need attention", broken)


def fleet_table(hosts: tuple[str, ...], states: dict[str, HostState]) -> list[str]:
    """The hosts side by side: what each serves, from which colour, and its last deploy."""
    rows = [("host", "serving", "colour", "maintenance", "lock", "last deploy")]
    for host in hosts:
        state = states.get(host)
        if state is None:
            rows.append((host, "?", "?", "?", "?", "could not be read"))
            continue
        last = state.history[-1] if state.history else {}
        rows.append((host, (release_sha(state.release_of(state.live)) or "-")[:12], state.live or "-",
                     "on" if state.maintenance else "off", "held" if state.lock else "-",
                     f"{last.get('kind', '')} {str(last.get('sha') or '')[:12]} {last.get('outcome', '')}".strip()
                     or "-"))
    lines = columns(rows)
    serving = {row[1] for row in rows[1:] if row[1] != "?"}
    return lines + ([f"!! the hosts serve different versions: {', '.join(sorted(serving))}"] if len(serving) > 1 else [])


def fleet_problems(states: dict[str, HostState]) -> list[str]:
    """Hosts of one environment that serve different versions (a rollout stopped half way, or
    kept with --no-rollback): `deploy` or `rollback --to` brings them together."""
    serving = {host: release_sha(state.release_of(state.live)) for host, state in states.items()}
    if len(set(serving.values())) <= 1:
        return []
    listing = ", ".join(f"{host} {(sha or 'nothing')[:12]}" for host, sha in serving.items())
    return [f"the hosts serve different versions ({listing}): deploy one SHA to all, or rollback --to one"]


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

