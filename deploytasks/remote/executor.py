"""Running a plan on one host: each step timed and printed, stop at the first failure, undo.

This layer knows time and signals, and reaches the host only through a Transport; it knows
nothing of nginx, compose or gunicorn.
"""
from __future__ import annotations

import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from .console import Console
from .transport import Result, Transport, TransportError
from ..errors import DeployError, StepFailed
from ..plan import Cmd, Plan, Poll, Put, Step, Wait

TAIL_LINES = 15
PROGRESS_EVERY = 10.0  # seconds between 'still waiting' lines of a poll


class Interrupted(StepFailed):
    pass


class LockLost(Interrupted):
    """The deploy lock is no longer this deploy's (taken over as dead, or forced): it stops at
    once and undoes nothing, as the host may already be another deploy's."""


class Detached(StepFailed):
    """The connection was lost while a step whose command outlives it ran: that command may still
    be running on the host, so nothing was undone (see Step.outlives_connection)."""


@dataclass
class Outcome:
    steps: list[tuple[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class Interrupt:
    """Set by Ctrl-C or SIGTERM: the running command finishes, then the plan is undone and the
    rollout stops before the next host. A second Ctrl-C aborts at once (the lock is then kept)."""

    def __init__(self):
        self.requested = False
        self.lost: str | None = None  # why the deploy lock is no longer ours (set by the lease)

    def __bool__(self) -> bool:
        return self.requested or self.lost is not None


class Remote:
    """One host behind one transport (an SSH connection), reused by every command of a task.
    `reopen` opens a fresh one: undos must not give up because the connection they follow broke."""

    def __init__(self, transport: Transport, console: Console, interrupt: Interrupt | None = None,
                 reopen: Callable[[], Transport] | None = None):
        self.transport, self.console, self.reopen = transport, console, reopen
        self.interrupt = interrupt if interrupt is not None else Interrupt()
        self.step: str | None = None  # the step running now, for the lock's lease

    def reconnect(self) -> bool:
        """Replace the transport with a fresh one; False when that is impossible too."""
        if self.reopen is None:
            return False
        try:
            fresh = self.reopen()
        except DeployError as error:
            self.console(f"   ! cannot reconnect: {error}")
            return False
        try:
            self.transport.close()
        except Exception:  # the old one is broken: closing it may fail too
            pass
        self.transport = fresh
        self.console("   reconnected")
        return True

    @property
    def host(self) -> str:
        return self.transport.host

    def run(self, argv: tuple[str, ...], *, stream: bool = False) -> Result:
        if stream:
            out, err = self.console.writer(), self.console.writer()
            result = self.transport.run(shlex.join(argv), out=out, err=err)
            out.flush(), err.flush()
        else:
            result = self.transport.run(shlex.join(argv))
        return result

    def check(self, argv: tuple[str, ...], what: str) -> str:
        result = self.run(argv)
        if not result.ok:
            raise StepFailed(f"{self.host}: {what} failed (exit {result.exited})",
                             [self.console.mask(line) for line in tail(result)])
        return result.stdout

    def put(self, put: Put) -> None:
        self.transport.put(put.path, put.content, put.mode)

    def close(self) -> None:
        self.transport.close()


def tail(result, lines: int = TAIL_LINES) -> list[str]:
    text = "\n".join(part for part in (result.stdout, result.stderr) if part and part.strip())
    return text.strip().splitlines()[-lines:]


def execute(remote: Remote, plan: Plan) -> Outcome:
    """Run every step; on failure undo what was done (newest first) and raise StepFailed."""
    outcome = Outcome()
    done: list[Step] = []
    for step in plan.steps:
        started = time.monotonic()
        remote.step = step.name
        remote.console(f"-> {step.name}")
        try:
            try:
                for action in step.actions:
                    if not step.best_effort:  # past the switch, finishing is safer than undoing
                        _check_interrupt(remote)
                    _perform(remote, action)
            except TransportError as error:
                if step.outlives_connection:
                    raise Detached(f"{remote.host}: {step.name}: {error}") from error
                raise StepFailed(f"{remote.host}: {step.name}: {error}") from error
        except StepFailed as failure:
            if isinstance(failure, (LockLost, Detached)):  # the host is not ours to undo on
                failure.completed = [s.phase for s in done]
                raise
            if step.best_effort:
                outcome.warnings.append(f"{step.name}: {failure}")
                remote.console(f"   ! {step.name} failed after the switch (the new version serves): {failure}")
                continue
            if not isinstance(failure, Interrupted):
                _diagnose(remote, step)
            failure.undone = _undo(remote, done + [step])
            failure.completed = [s.phase for s in done]
            if not failure.undone:
                failure.details.append(UNDO_BLOCKED)
            raise
        seconds = time.monotonic() - started
        outcome.steps.append((step.phase, seconds))
        remote.console(f"   ok {step.name} ({seconds:.1f}s)")
        done.append(step)
    return outcome


def _perform(remote: Remote, action) -> None:
    if isinstance(action, Cmd):
        if action.unless and remote.run(action.unless).ok:
            return
        result = remote.run(action.argv, stream=action.stream)
        if not result.ok:
            raise StepFailed(f"{remote.host}: `{remote.console.mask(str(action))[:200]}` failed (exit {result.exited})",
                             [remote.console.mask(line) for line in tail(result)])
    elif isinstance(action, Put):
        remote.put(action)
    elif isinstance(action, Poll):
        _poll(remote, action)
    elif isinstance(action, Wait):
        time.sleep(action.seconds)


def _poll(remote: Remote, poll: Poll) -> None:
    started = time.monotonic()
    deadline, next_note = started + poll.timeout, started + PROGRESS_EVERY
    while True:
        result = remote.run(poll.argv)
        if result.ok and (poll.expect is None or poll.matches(result.stdout.strip())):
            return
        now = time.monotonic()
        if now >= next_note:
            remote.console(f"   ... still waiting ({now - started:.0f}s of {poll.timeout:g}s)")
            next_note += PROGRESS_EVERY
        if now >= deadline:
            seen = tail(result, 5) if not result.ok else [f"answered {result.stdout.strip()[:80]!r}, expected {poll.expect!r}"]
            raise StepFailed(f"{remote.host}: not ready after {poll.timeout:g}s", [remote.console.mask(s) for s in seen])
        _check_interrupt(remote)
        time.sleep(poll.interval)


def _diagnose(remote: Remote, step: Step) -> None:
    for action in step.diagnose:
        result = _try(remote, action)
        remote.console(f"   | $ {remote.console.mask(str(action))}"[:160])  # masked before it is cut
        for line in tail(result, 40) if result else ["(could not run)"]:
            remote.console(f"   | {remote.console.mask(line)}")


UNDO_BLOCKED = ("traffic could not be put back: what the switch pointed at keeps serving, and nothing it needs "
                "was removed; run `status`, then `rollback` or deploy again (either repairs the host)")
UNDO_RETRY_PAUSE = 1.0


def _undo(remote: Remote, steps: list[Step]) -> bool:
    """Undo newest first; every undo runs whatever the ones before it did, except behind a
    barrier that failed (see Step). True when everything that had to be undone was."""
    if any(step.undo for step in steps):
        remote.console("<- undoing what this plan changed")
    for step in reversed(steps):
        failed = [action for action in step.undo if not _undo_action(remote, action)]
        if failed and step.barrier:
            remote.console(f"   ! {step.name} could not be undone: the undos before it are skipped")
            return False
    return True


def _undo_action(remote: Remote, action: Cmd) -> bool:
    """One undo command, retried once: on a fresh connection if this one broke, else after a pause."""
    result = _try(remote, action)
    if result is not None and result.ok:
        return True
    if result is None and not remote.reconnect():
        remote.console(f"   ! undo `{remote.console.mask(str(action))[:160]}` failed: the connection failed")
        return False
    if result is not None:
        time.sleep(UNDO_RETRY_PAUSE)
    result = _try(remote, action)
    if result is not None and result.ok:
        return True
    reason = " ".join(tail(result, 2)) if result is not None else "the connection failed"
    remote.console(f"   ! undo `{remote.console.mask(str(action))[:160]}` failed: {remote.console.mask(reason)}")
    return False


def _try(remote: Remote, action: Cmd) -> Result | None:
    try:
        return remote.run(action.argv)
    except TransportError:
        return None


def _check_interrupt(remote: Remote) -> None:
    if remote.interrupt.lost:
        raise LockLost(remote.interrupt.lost)
    if remote.interrupt:
        raise Interrupted(f"{remote.host}: interrupted (Ctrl-C)")


@contextmanager
def interruptible():
    interrupt = Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield interrupt
        return

    def handler(signum, frame):
        if interrupt.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        interrupt.requested = True
        print("! interrupted: finishing the current command, then undoing (Ctrl-C again to abort now)",
              file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupt
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
