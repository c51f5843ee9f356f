"""Running a plan on one host: each step timed and printed, stop at the first failure, undo.

This layer knows time and signals, and reaches the host only through a Transport; it knows
nothing of nginx, compose or gunicorn.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

from .console import Console
from .transport import TIMED_OUT_EXITS, Result, Transport, TransportError, Unanswered
from .. import keys
from ..errors import DeployError, StepFailed
from ..plan import Cmd, Plan, Poll, Put, Step, Wait

TAIL_LINES = 15
PROGRESS_EVERY = 10.0  # seconds between 'still waiting' lines of a poll
GONE_EVERY = 2.0  # seconds between asking whether what a poll waits for has exited
COMMAND_TIMEOUT_KEY = "TIMEOUT_COMMAND"  # the bound of every command without one of its own


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
    rollout stops before the next host. A second one, of either kind, aborts at once: the open
    connections are cut (the running command stops waiting on the host) and the lock is kept."""

    def __init__(self):
        self.requested = False
        self.lost: str | None = None  # why the deploy lock is no longer ours (set by the lease)
        self.aborted = False
        self._cut: list[Callable[[], object]] = []  # close() of each open connection

    def __bool__(self) -> bool:
        return self.requested or self.lost is not None

    def cut_on_abort(self, close: Callable[[], object]) -> None:
        self._cut.append(close)

    def abort(self) -> None:
        """Close every connection, each from a thread of its own: this runs in a signal handler,
        which may have interrupted the main thread inside the very lock a close needs."""
        self.aborted = True
        for close in self._cut:
            threading.Thread(target=close, name="abort-close", daemon=True).start()


class Remote:
    """One host behind one transport (an SSH connection), reused by every command of a task.
    Every command runs within a bound: its own (Cmd.timeout) or `command_timeout`. `reopen`
    opens a fresh connection: undos must not give up because the connection they follow broke."""

    def __init__(self, transport: Transport, console: Console, interrupt: Interrupt | None = None,
                 reopen: Callable[[], Transport] | None = None,
                 command_timeout: float = float(keys.BY_NAME[COMMAND_TIMEOUT_KEY].default)):
        self.transport, self.console, self.reopen = transport, console, reopen
        self.command_timeout = command_timeout
        self.interrupt = interrupt if interrupt is not None else Interrupt()
        self.interrupt.cut_on_abort(transport.close)
        self.step: str | None = None  # the step running now, for the lock's lease

    def reconnect(self) -> bool:
        """Replace the transport with a fresh one; False when that is impossible too."""
        if self.reopen is None or self.interrupt.aborted:
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
        self.interrupt.cut_on_abort(fresh.close)
        self.console("   reconnected")
        return True

    @property
    def host(self) -> str:
        return self.transport.host

    def run(self, argv: tuple[str, ...], *, stream: bool = False, timeout: float | None = None,
            timeout_key: str = "", quiet: str = "") -> Result:
        """argv on the host, stopped there after `timeout` seconds (the key `timeout_key`; without
        one, TIMEOUT_COMMAND). A command stopped at its bound comes back with `timed_out` set.
        Output lines matching `quiet` are dropped, streamed or kept."""
        seconds, key = (timeout, timeout_key) if timeout is not None else (self.command_timeout, COMMAND_TIMEOUT_KEY)
        line, started = shlex.join(argv), time.monotonic()
        try:
            if stream:
                out, err = self.console.writer(quiet=quiet), self.console.writer(quiet=quiet)
                result = self.transport.run(line, out=out, err=err, timeout=seconds)
                out.flush(), err.flush()
            else:
                result = self.transport.run(line, timeout=seconds)
        except Unanswered as error:
            raise Unanswered(f"`{self.console.mask(brief(argv, 120))}`: {error}, though the host stops it after "
                             f"{seconds:g}s ({key}): the host or the connection is stuck") from error
        if quiet:
            result = dataclasses.replace(result, stdout=_without(result.stdout, quiet),
                                         stderr=_without(result.stderr, quiet))
        # 124/137 is the bound only if the bound has passed: the command's own exit code otherwise
        if result.exited in TIMED_OUT_EXITS and time.monotonic() - started >= seconds:
            return dataclasses.replace(result, timed_out=f"{seconds:g}s ({key})")
        return result

    def command(self, action: Cmd, *, stream: bool = False) -> Result:
        """A plan's command, within its own bound."""
        return self.run(action.argv, stream=stream, timeout=action.timeout, timeout_key=action.timeout_key,
                        quiet=action.quiet)

    def check(self, argv: tuple[str, ...], what: str) -> str:
        result = self.run(argv)
        if not result.ok:
            raise StepFailed(f"{self.host}: {what} {ending(result)}",
                             [self.console.mask(line) for line in tail(result)])
        return result.stdout

    def put(self, put: Put) -> None:
        self.transport.put(put.path, put.content, put.mode)

    def close(self) -> None:
        self.transport.close()


ELIDED = "…"
BRIEF_HEAD = 4  # leading arguments kept: what runs, and on what (`docker compose -p shop-green`)


def brief(argv: tuple[str, ...], limit: int = 150) -> str:
    """A command as messages show it, in about `limit` characters: whole arguments only (a path cut
    in the middle reads as another path), the middle ones elided. The first few say what runs, the
    last ones what it does (`... up -d --wait web`); a script or any argument too long to show
    whole is elided too."""
    words = [shlex.quote(arg) for arg in argv]
    if len(" ".join(words)) <= limit:
        return " ".join(words)
    fits = lambda word: "\n" not in word and len(word) <= limit // 3  # noqa: E731
    head: list[str] = []
    for word in words[:BRIEF_HEAD]:
        if not fits(word):
            break
        head.append(word)
    room, last = limit - len(" ".join(head)) - len(ELIDED) - 2, []
    for word in reversed(words[len(head):]):
        if not fits(word) or len(word) + 1 > room:
            break
        last.insert(0, word)
        room -= len(word) + 1
    return " ".join(part for part in (" ".join(head), ELIDED, " ".join(last)) if part)


def _without(text: str, quiet: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not re.search(quiet, line))


def tail(result, lines: int = TAIL_LINES) -> list[str]:
    text = "\n".join(part for part in (result.stdout, result.stderr) if part and part.strip())
    return text.strip().splitlines()[-lines:]


def ending(result: Result) -> str:
    """How a failed command ended, as messages say it: its exit code, or the bound that stopped it."""
    return f"timed out after {result.timed_out}" if result.timed_out else f"failed (exit {result.exited})"


def execute(remote: Remote, plan: Plan) -> Outcome:
    """Run every step; on failure undo what was done (newest first) and raise StepFailed."""
    return Run(remote, plan).through()


class Run:
    """A plan run in parts. What the parts did stays undoable until the run is undone, so a
    rollout can prepare every host, switch them batch by batch, and still switch back the hosts
    of an earlier batch when a later one fails. A step that fails undoes the whole run at once."""

    def __init__(self, remote: Remote, plan: Plan):
        self.remote, self.plan = remote, plan
        self.outcome = Outcome()
        self.done: list[Step] = []  # what an undo would take back
        self.position = 0  # the next step to run

    @property
    def finished(self) -> bool:
        return self.position == len(self.plan.steps)

    @property
    def phases(self) -> list[str]:
        return [step.phase for step in self.done]

    @property
    def next_phase(self) -> str | None:
        return None if self.finished else self.plan.steps[self.position].phase

    def before(self, *phases: str) -> Outcome:
        """The steps up to the first one of any of `phases` (all of them if none is left)."""
        while not self.finished and self.next_phase not in phases:
            self._step(self.plan.steps[self.position])
        return self.outcome

    def through(self, phase: str | None = None) -> Outcome:
        """The steps up to and including the one of `phase` (None: to the end)."""
        while not self.finished:
            step = self.plan.steps[self.position]
            self._step(step)
            if step.phase == phase:
                break
        return self.outcome

    def undo(self) -> bool:
        """Undo every step this run did, newest first (traffic back first, for a switched host)."""
        undone = _undo(self.remote, self.done)
        self.done = []
        return undone

    def _step(self, step: Step) -> None:
        remote = self.remote
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
                failure.completed = self.phases
                raise
            if step.best_effort:
                self.outcome.warnings.append(f"{step.name}: {failure}")
                remote.console(f"   ! {step.name} failed after the switch (the new version serves): {failure}")
                self.position += 1
                return
            if not isinstance(failure, Interrupted):
                _diagnose(remote, step)
            failure.completed = self.phases
            failure.undone = _undo(remote, self.done + [step])
            self.done = []
            if not failure.undone:
                failure.details.append(UNDO_BLOCKED)
            raise
        seconds = time.monotonic() - started
        self.outcome.steps.append((step.phase, seconds))
        remote.console(f"   ok {step.name} ({seconds:.1f}s)")
        self.done.append(step)
        self.position += 1


def _perform(remote: Remote, action) -> None:
    if isinstance(action, Cmd):
        if action.unless and remote.run(action.unless).ok:
            return
        result = remote.command(action, stream=action.stream)
        if not result.ok:
            command = remote.console.mask(brief(action.argv, 200))
            raise StepFailed(f"{remote.host}: `{command}` {ending(result)}",
                             [remote.console.mask(line) for line in tail(result)])
    elif isinstance(action, Put):
        remote.put(action)
    elif isinstance(action, Poll):
        _poll(remote, action)
    elif isinstance(action, Wait):
        time.sleep(action.seconds)


def _poll(remote: Remote, poll: Poll) -> None:
    started = time.monotonic()
    deadline, next_note, next_gone = started + poll.timeout, started + PROGRESS_EVERY, started
    while True:
        result = remote.run(poll.argv)
        if result.ok and (poll.expect is None or poll.matches(result.stdout.strip())):
            return
        now = time.monotonic()
        if poll.gone and now >= next_gone:
            next_gone = now + GONE_EVERY
            why = remote.run(poll.gone)
            if why.ok and why.stdout.strip():
                seen = tail(result, 5)
                raise StepFailed(f"{remote.host}: {remote.console.mask(poll.what)}: not ready and never will be: "
                                 f"{remote.console.mask(why.stdout.strip())}", [remote.console.mask(s) for s in seen])
        if now >= next_note:
            remote.console(f"   ... still waiting ({now - started:.0f}s of {poll.timeout:g}s)")
            next_note += PROGRESS_EVERY
        if now >= deadline:
            seen = tail(result, 5) if not result.ok else [f"answered {result.stdout.strip()[:80]!r}, expected {poll.expect!r}"]
            raise StepFailed(f"{remote.host}: {remote.console.mask(poll.gave_up(chr(10).join(seen)))}",
                             [remote.console.mask(s) for s in seen])
        _check_interrupt(remote)
        time.sleep(poll.interval)


def _diagnose(remote: Remote, step: Step) -> None:
    for action in step.diagnose:
        result = _try(remote, action)
        remote.console(f"   | $ {remote.console.mask(brief(action.argv))}")
        shown = tail(result, 40) + ([ending(result)] if result.timed_out else []) if result else ["(could not run)"]
        for line in shown:
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
        remote.console(f"   ! undo `{remote.console.mask(brief(action.argv))}` failed: the connection failed")
        return False
    if result is not None:
        time.sleep(UNDO_RETRY_PAUSE)
    result = _try(remote, action)
    if result is not None and result.ok:
        return True
    reason = ("the connection failed" if result is None else ending(result) if result.timed_out
              else " ".join(tail(result, 2)))
    remote.console(f"   ! undo `{remote.console.mask(brief(action.argv))}` failed: {remote.console.mask(reason)}")
    return False


def _try(remote: Remote, action: Cmd) -> Result | None:
    try:
        return remote.command(action)
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
        if interrupt.requested:  # the second Ctrl-C or SIGTERM, of either kind
            if not interrupt.aborted:
                print("! interrupted again: aborting now, without undoing; the deploy lock is kept",
                      file=sys.stderr, flush=True)
                interrupt.abort()
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
