"""What a held deploy lock says about its holder: the lines the lock scripts print, parsed, and
the text users read (refusals, takeovers, `status`).

The judgement itself (alive, dead, dead with a migration still running) is made on the host by
the scripts in lock.py, in the same script that acts on it; this module only reports it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Iterable

from .errors import LockHeld

ALIVE, DEAD, RUNNING, UNKNOWN = "alive", "dead", "running", "unknown"


@dataclass(frozen=True)
class Command:
    """A command the holder registered in the lock because it outlives the connection (a migration)."""

    id: str
    what: str
    pid: int | None = None
    since: int | None = None
    container: str | None = None
    running: bool = False
    exit: int | None = None  # once ended, if it could record its status

    def named(self) -> str:
        """`pid 4242 / container shop-migrate-x, since 2024-01-02T03:04:05Z`"""
        names = " / ".join(part for part in (self.pid and f"pid {self.pid}",
                                             self.container and f"container {self.container}") if part)
        return ", ".join(part for part in (names, self.since and f"since {utc(self.since)}") if part)


@dataclass(frozen=True)
class Holder:
    """A held lock: its owner's record and, when the scripts judged it, the holder's liveness."""

    info: dict
    verdict: str | None = None  # alive | dead | running | unknown; None: not judged
    session: str | None = None  # the holder's sshd session: alive | gone; None: not recorded
    lease_age: int | None = None  # seconds since the holder last renewed its lease
    step: str | None = None  # the step the holder last reported
    commands: tuple[Command, ...] = ()
    takeover: bool = False  # a takeover marker is in the lock (one under way, or one interrupted)
    taken_over: bool = False  # the acquire that printed this took the lock over

    @property
    def running(self) -> tuple[Command, ...]:
        return tuple(c for c in self.commands if c.running)

    @property
    def ended(self) -> tuple[Command, ...]:
        return tuple(c for c in self.commands if not c.running)


def parse(lines: Iterable[str]) -> Holder | None:
    """The `lock...` lines of a lock script's (or the host-state read's) output; None: no lock."""
    info, fields, commands = None, {}, []
    for line in lines:
        key, _, value = line.partition(" ")
        parts = value.split(" ")
        if key == "lock":
            info = json_object(value) or {"raw": value}
        elif key == "lock-session" and len(parts) == 2:
            fields["session"] = parts[1]
        elif key == "lock-lease" and parts[0].lstrip("-").isdigit():
            fields["lease_age"] = max(0, int(parts[0]))
            fields["step"] = " ".join(parts[1:]).strip() or None
        elif key == "lock-running" and len(parts) >= 5:
            id_, state, pid, since, container = parts[:5]
            commands.append(Command(id_, " ".join(parts[5:]) or "a command", _int(pid), _int(since),
                                    _container(container), running=state == "running"))
        elif key == "lock-ended" and len(parts) >= 7:
            id_, status, _ended, pid, _start, since, container = parts[:7]
            commands.append(Command(id_, " ".join(parts[7:]) or "a command", _int(pid), _int(since),
                                    _container(container), exit=_int(status)))
        elif key == "lock-takeover":
            fields["takeover"] = True
        elif key == "lock-taken-over":
            fields["taken_over"] = True
        elif key == "lock-holder" and parts[0] in (ALIVE, DEAD, RUNNING, UNKNOWN):
            fields["verdict"] = parts[0]
    if info is None:
        return None
    # a command both running and ended (its record moved while the lock was read) has ended
    ended = {c.id for c in commands if not c.running}
    commands = [c for c in commands if not (c.running and c.id in ended)]
    return Holder(info, commands=tuple(commands), **fields)


def describe(info: dict | None, now: float) -> str:
    info = info or {}
    age = max(0, int(now - info.get("since", now)))
    who = f"{info.get('user', 'someone')}@{info.get('from', '?')}"
    what = f"{info.get('task', 'a task')} {info.get('sha') or ''}".strip()
    return f"held by {who} ({what}) for {duration(age)}"


def liveness(holder: Holder) -> str:
    """How the holder was judged, with the evidence; empty when it was not judged."""
    step = f", last step: {holder.step}" if holder.step else ""
    if holder.verdict == ALIVE:
        sign = "its connection is open" if holder.session == ALIVE else _lease(holder, "renewed")
        running = "".join(f"; its {c.what} runs ({c.named()})" for c in holder.running)
        return f"its holder is alive: {sign}{step}{running}"
    if holder.verdict == RUNNING:
        return "; ".join(f"its holder is gone, but its {c.what} is still running ({c.named()})"
                         for c in holder.running) + step
    if holder.verdict == DEAD:
        return f"its holder is gone (no connection, {_lease(holder, 'last renewed')}){step}"
    if holder.verdict == UNKNOWN:
        return "whether its holder lives is not recorded (a lock of an older deploytasks)"
    return ""


def status_line(holder: Holder, now: float) -> str:
    """`status`: who holds the lock and whether it lives."""
    text = f"deploy lock: {describe(holder.info, now)}"
    if holder.verdict == DEAD:
        return f"{text}; {liveness(holder)}: the next deploy takes it over"
    return f"{text}; {liveness(holder)}" if holder.verdict else text


def held_error(host: str, holder: Holder | None, now: float, waited: float | None = None) -> LockHeld:
    holder = holder or Holder({})
    held = describe(holder.info, now)
    waited_text = f" (waited {waited:.0f}s)" if waited else ""
    if holder.verdict == RUNNING:
        first = holder.running[0]
        step = f", last step: {holder.step}" if holder.step else ""
        return LockHeld(f"{host}: deploy lock held by a dead deploy whose {first.what} is still running "
                        f"({first.named()}): {held[len('held by '):]}{step}{waited_text}; the next deploy takes the "
                        "lock over once it has ended (--lock-wait SECONDS waits for that; --force-unlock --force "
                        "breaks the lock anyway)")
    if holder.verdict == ALIVE:
        return LockHeld(f"{host}: deploy lock {held} ({liveness(holder)}){waited_text}; --lock-wait SECONDS waits "
                        "for it; --force-unlock only if you know that deploy is dead")
    if holder.verdict == DEAD:
        return LockHeld(f"{host}: deploy lock {held}; its holder is gone and another deploy is taking it over"
                        f"{waited_text} (if this persists, a takeover was cut short: rerun with --force-unlock)")
    return LockHeld(f"{host}: deploy lock {held}{waited_text}; if that deploy is dead, rerun with --force-unlock")


def took_over(holder: Holder, now: float) -> str:
    """The one line printed when a dead holder's lock was taken over."""
    info = holder.info
    since = info.get("since")
    held = describe(info, now)[len("held by "):].rsplit(" for ", 1)[0]
    when = f" since {utc(since)} ({duration(max(0, int(now - since)))})" if isinstance(since, int) else ""
    step = f", last step: {holder.step}" if holder.step else ""
    ended = "".join(f"; its {c.what} had ended ({_exit(c)})" for c in holder.ended)
    return f"took over the deploy lock of a dead deploy: {held}, held{when}{step}{ended}"


def kept(holder: Holder | None) -> str:
    """The release was refused: a registered command still runs."""
    running = holder.running if holder else ()
    what = "; ".join(f"its {c.what} is still running ({c.named()})" for c in running) or "a command still runs"
    return (f"deploy lock kept: {what}; the next deploy takes the lock over once it has ended "
            "(`status` shows it)")


def forced(holder: Holder | None, now: float) -> str:
    if holder is None:
        return "--force-unlock: there was no deploy lock"
    running = "".join(f"; its {c.what} was still running ({c.named()})" for c in holder.running)
    judged = f" ({liveness(holder)})" if holder.verdict and not running else ""
    return f"deploy lock removed (--force-unlock): it was {describe(holder.info, now)}{judged}{running}"


def force_refused(host: str, holder: Holder | None, now: float) -> LockHeld:
    running = holder.running if holder else ()
    what = "; ".join(f"its {c.what} is still running ({c.named()})" for c in running) or "a command still runs"
    held = describe(holder.info if holder else None, now)
    return LockHeld(f"{host}: --force-unlock refuses to break the deploy lock ({held}): {what}; wait for it to end "
                    "(the next deploy then takes the lock over) or add --force to break it anyway")


def duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def utc(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _lease(holder: Holder, verb: str) -> str:
    return f"lease {verb} {holder.lease_age}s ago" if holder.lease_age is not None else "no lease"


def _exit(command: Command) -> str:
    return f"exit {command.exit}" if command.exit is not None else "its exit status was not recorded"


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _container(text: str) -> str | None:
    return None if text in ("", "-") else text


def json_object(text: str) -> dict | None:
    """A JSON object from one line of remote output, or None for anything else."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
