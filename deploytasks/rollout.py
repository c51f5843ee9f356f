"""One release to many hosts: prepare all at once, switch in batches, and undo like a circuit breaker.

    prepare (every host, in parallel: up to the start of the new colour)
    -> migrate (the first host alone) -> start (every host, in parallel: the new colour started, ready)
    -> switch batch 1 (switch, check through that host's nginx, watch it MONITOR_SECONDS) -> [--batch-wait]
    -> batch 2 ...
    -> finish (every host, in parallel: drain the old colour, clean up)

The old colour of every host keeps running until every batch has switched and passed its check,
so on the first failure the hosts already switched are switched back (their old colour is still
there) and the others drop what they prepared; with `rollback=False` the switched hosts keep the
new version. A single host is a fleet of one: the same steps, in the same order, as ever.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import parallel, phases, shas
from .errors import ConfigError, StepFailed
from .remote.console import columns
from .remote.executor import Run

# what became of a host
OK = "ok"
FAILED = "failed"  # its own step failed (and it undid itself, unless the failure says otherwise)
ROLLED_BACK = "rolled back"  # switched, then switched back because another host failed
UNDONE = "undone"  # prepared, never switched, what it prepared removed because another host failed
KEPT = "kept"  # switched, and kept on the new version after another host failed (--no-rollback)


@dataclass
class Member:
    """One host's part in a rollout: its run of its own plan, and what became of it."""

    host: str
    run: Run
    outcome: str = ""
    error: StepFailed | None = None
    because: str = ""  # for a host undone for another's failure: that failure
    was_switched: bool = False  # switched when the circuit breaker undid it
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    @property
    def switched(self) -> bool:
        return phases.SWITCH in self.run.phases


def batches(hosts: Sequence[str], batch: str | int | None) -> list[list[str]]:
    """The hosts in switch order: `batch` hosts at a time (`N`), or a share of them (`N%`, at
    least one); None: one host at a time, so a bad release meets one host's visitors first."""
    size = _batch_size(len(hosts), batch)
    return [list(hosts[i:i + size]) for i in range(0, len(hosts), size)]


def _batch_size(count: int, batch: str | int | None) -> int:
    text = str(batch).strip() if batch is not None else "1"
    try:
        if text.endswith("%"):
            share = float(text[:-1])
            if not 0 < share <= 100:
                raise ValueError
            return max(1, math.floor(count * share / 100))
        size = int(text)
        if size < 1:
            raise ValueError
        return size
    except ValueError:
        raise ConfigError(f"--batch {batch!r}: a number of hosts (1 or more) or a percentage (1% to 100%)") from None


def roll(members: Sequence[Member], order: list[list[str]], *, batch_wait: float = 0.0, rollback: bool = True,
         echo: Callable[[str], None] = print, on_switched: Callable[[Member], object] | None = None,
         on_all_switched: Callable[[], object] | None = None) -> None:
    """Run every member's plan as above; raises the first failure once every host is settled.
    `on_switched(member)`: in that host's thread, once its traffic moved and its check passed,
    before the next batch; `on_all_switched()`: once every batch has, before the finish. Neither
    may raise (a raise is that host's failure)."""
    by_host = {member.host: member for member in members}
    try:
        # prepared up to the new colour's start, then the migration (the first host's plan alone
        # has one), then every new colour starts: as on one host, none boots before its schema
        for stage, migrates_only in ((lambda m: m.run.before(phases.MIGRATE, phases.START), False),
                                     (lambda m: m.run.through(phases.MIGRATE), True),
                                     (lambda m: m.run.before(phases.PROBE, phases.SWITCH), False)):
            who = [m for m in members if not migrates_only or m.run.next_phase == phases.MIGRATE]
            failed = _parallel(who, stage)
            if failed:
                _settle(members, failed, rollback, echo)
        for number, hosts in enumerate(order, start=1):
            batch = [by_host[host] for host in hosts]
            if len(order) > 1:
                echo(f"batch {number} of {len(order)}: {', '.join(hosts)}")
            failed = _parallel(batch, lambda m: _switch(m, on_switched))
            if failed:
                _settle(members, failed, rollback, echo)
            if batch_wait and number < len(order):
                echo(f"waiting {batch_wait:g}s before the next batch (--batch-wait)")
                time.sleep(batch_wait)
        if on_all_switched:
            on_all_switched()
        failed = _parallel(members, lambda m: m.run.through())
        for member in members:
            member.outcome = FAILED if member in failed else OK
        if failed:  # a lost lock or connection (drain and cleanup are best effort): past every check,
            raise failed[0].error  # the other hosts are not switched back to colours being drained
    finally:
        for member in members:
            member.seconds = member.seconds or time.monotonic() - member.started


def _switch(member: Member, then: Callable[[Member], object] | None) -> None:
    """A host's switch, its check and its watch; then `then`, if its traffic did move (a plan may
    have no switch)."""
    member.run.before(phases.DRAIN, phases.CLEANUP)
    if then and member.switched:
        then(member)


def _settle(members: Sequence[Member], failed: list[Member], rollback: bool, echo) -> None:
    """The circuit breaker: the failed hosts undid themselves; every other host goes back to
    where it was (or, with rollback=False, a switched one finishes on the new version)."""
    cause = failed[0]
    because = f"{cause.host} failed: {str(cause.error).splitlines()[0] if cause.error else 'interrupted'}"
    for member in failed:
        member.outcome = FAILED
    others = [m for m in members if m not in failed]
    keep = [m for m in others if m.switched and not rollback]
    back = [m for m in others if m not in keep]
    if back:
        echo(f"circuit breaker: {because}; undoing on {', '.join(m.host for m in back)}")
    undo_failed = _parallel(back, lambda m: _undo(m))
    for member in back:
        member.because = because
        if member not in undo_failed:
            member.outcome = ROLLED_BACK if member.was_switched else UNDONE
    if keep:
        echo(f"--no-rollback: {', '.join(m.host for m in keep)} keep(s) the new version")
        _parallel(keep, lambda m: m.run.through())
        for member in keep:
            member.outcome, member.because = KEPT, because
    raise cause.error or StepFailed(because)


def _undo(member: Member) -> None:
    member.was_switched = member.switched
    completed = member.run.phases
    if not member.run.undo():
        member.outcome = FAILED
        failure = StepFailed(f"{member.host}: could not undo what this deploy changed after another host failed")
        failure.undone, failure.completed = False, completed
        raise failure


def _parallel(members: Sequence[Member], work: Callable[[Member], object]) -> list[Member]:
    """`work` on every member at once; the members whose work failed (their StepFailed kept on them)."""

    def one(member: Member) -> None:
        try:
            work(member)
        finally:
            member.seconds = time.monotonic() - member.started

    failed = []
    for member, result in zip(members, parallel.each(members, one, lambda m: m.host)):
        if isinstance(result, Exception):  # a bug must not leave the other hosts unsettled either
            member.error = member.error or (result if isinstance(result, StepFailed) else
                                            StepFailed(f"{member.host}: {result.__class__.__name__}: {result}"))
            failed.append(member)
    return failed


def table(members: Sequence[Member], before: dict[str, str | None], now: dict[str, str | None]) -> list[str]:
    """The rollout's last lines: host, SHA before, SHA now, outcome, duration."""
    rows = [("host", "before", "now", "outcome", "duration")]
    for m in members:
        rows.append((m.host, _short(before.get(m.host)), _short(now.get(m.host)), m.outcome or "-",
                     f"{m.seconds:.1f}s"))
    return columns(rows)


def _short(sha: str | None) -> str:
    return sha[:12] if sha and shas.SHA_RE.match(sha) else (sha or "-")
