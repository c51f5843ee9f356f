"""Holding a host's deploy lock for a task: take it (waiting, or taking a dead holder's over),
keep its lease fresh, release it only when nothing registered in it still runs.

The judging is done on the host, by the scripts in lock.py; this module runs them, prints what
they found (holder.py) and renews the lease from a background thread.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from . import holder as holders
from . import lock
from .errors import StepFailed
from .layout import Layout
from .remote.executor import Detached, Interrupted, LockLost, Remote
from .remote.transport import TransportError

POLL_EVERY = 2.0  # seconds between attempts while --lock-wait waits
PROGRESS_EVERY = 10.0  # seconds between 'still waiting' lines


@contextmanager
def locked(remote: Remote, layout: Layout, task: str, sha: str | None, policy: lock.Policy = lock.Policy()):
    """Hold the host's deploy lock for the block (see Held.end for when it is kept)."""
    held = take(remote, layout, task, sha, policy)
    try:
        yield held.info
    except BaseException as error:
        held.end(error)
        raise
    held.end(None)


def take(remote: Remote, layout: Layout, task: str, sha: str | None, policy: lock.Policy = lock.Policy()) -> Held:
    """Take the host's deploy lock (breaking it first with --force-unlock) and start its lease."""
    if policy.force_unlock:
        force_unlock(remote, layout, policy.force)
    held = Held(remote, layout, acquire(remote, layout, lock.owner(task, sha), policy.wait))
    held.lease.start()
    return held


class Held:
    """A deploy lock this task holds on one host, its lease renewed until `end`."""

    def __init__(self, remote: Remote, layout: Layout, info: dict):
        self.remote, self.layout, self.info = remote, layout, info
        self.lease = Lease(remote, layout, info)

    def end(self, error: BaseException | None) -> None:
        """Release the lock, except: on a hard abort (a second Ctrl-C) it is kept, for the next
        deploy to take over once nothing it registered runs; when the connection was lost under a
        migration it is left to that migration; when it is no longer ours it is not touched."""
        remote = self.remote
        keep = detached = False
        if isinstance(error, KeyboardInterrupt):
            keep = True
            remote.console("! aborted mid-step: the deploy lock is kept, as the host may be half-way through a "
                           "command; the next deploy takes it over once this connection is gone and nothing it "
                           "registered still runs (`status` shows it)")
        elif isinstance(error, Detached):
            keep = detached = True
            remote.console("! the connection was lost while the migration ran: it keeps running on the host, "
                           "registered in the deploy lock, which stays held; nothing was undone; the next deploy "
                           "takes the lock over once it has ended (`status` shows it)")
        elif isinstance(error, LockLost):
            keep = True  # not ours to release
        self.lease.stop()
        if detached:
            leave(remote, self.layout, self.info)
        elif not keep:
            release(remote, self.layout, self.info)


def acquire(remote: Remote, layout: Layout, info: dict, wait: float = 0.0) -> dict:
    """Take the lock, waiting up to `wait` seconds for a holder that is alive (or whose migration
    still runs); returns the owner record as it was written. A holder whose connection is gone
    but whose lease is still fresh (a deployer just killed) is waited for without --lock-wait,
    until its lease lapses: the deploy run right after a killed one takes its lock over. After a
    takeover the record has `took_over` (not written to the lock): the dead holder's last step."""
    started = time.monotonic()
    next_note = started + PROGRESS_EVERY
    deadline: float | None = None
    while True:
        info = dict(info, since=int(time.time()))
        result = remote.run(lock.acquire_argv(layout, info))
        found = holders.parse(result.stdout.splitlines())
        if result.ok:
            if found and found.taken_over:
                remote.console(f"! {holders.took_over(found, time.time())}")
                return dict(info, took_over={"step": found.step})  # for the dead deploy's history line
            return info
        if result.exited != lock.HELD_EXIT:
            raise StepFailed(f"{remote.host}: cannot take the deploy lock: {result.stderr.strip()[:200]}")
        now = time.monotonic()
        if deadline is None:
            deadline = max(started + wait, now + _lapse(found))
            if deadline > started + wait:
                remote.console(f"   ... the deploy lock's holder has lost its connection: waiting up to "
                               f"{deadline - now:.0f}s for its lease to lapse")
        if now >= deadline:
            waited = now - started
            raise holders.held_error(remote.host, found, time.time(), waited=waited if waited >= 1 else None)
        if remote.interrupt:
            raise Interrupted(f"{remote.host}: interrupted while waiting for the deploy lock")
        if now >= next_note:
            remote.console(f"   ... waiting for the deploy lock ({holders.describe(found.info if found else None, time.time())}"
                           f"; {now - started:.0f}s of {deadline - started:g}s)")
            next_note += PROGRESS_EVERY
        time.sleep(min(POLL_EVERY, max(0.0, deadline - now)))


def _lapse(found: holders.Holder | None) -> float:
    """Seconds until a holder that is alive only by its lease (its connection is gone) is judged
    dead; 0 for any other holder. One poll more, for the clocks of the two machines."""
    if found is None or found.verdict != holders.ALIVE or found.session != "gone" or found.lease_age is None:
        return 0.0
    return max(0.0, lock.LEASE_BOUND - found.lease_age) + POLL_EVERY


def release(remote: Remote, layout: Layout, info: dict) -> None:
    try:
        result = remote.run(lock.release_argv(layout, info))
    except TransportError:
        remote.console("! could not release the deploy lock (the connection is gone); the next deploy takes it "
                       "over once nothing it registered still runs")
        return
    if result.exited == lock.HELD_EXIT:
        remote.console(f"! {holders.kept(holders.parse(result.stdout.splitlines()))}")


def leave(remote: Remote, layout: Layout, info: dict) -> None:
    """Leave the lock to the migration that outlived the connection: the lease lapses now, so the
    lock is free the moment the migration has ended, not LEASE_BOUND seconds after this exits."""
    try:
        remote.run(lock.renew_argv(layout, info, remote.step, lapse=True))
    except TransportError:
        pass  # the lease lapses on its own within LEASE_BOUND


def force_unlock(remote: Remote, layout: Layout, force: bool) -> None:
    """--force-unlock: break the lock whoever holds it, but not under a running migration unless --force."""
    result = remote.run(lock.force_release_argv(layout, force))
    found = holders.parse(result.stdout.splitlines())
    if result.exited == lock.HELD_EXIT:
        raise holders.force_refused(remote.host, found, time.time())
    if not result.ok:
        raise StepFailed(f"{remote.host}: removing the deploy lock failed (exit {result.exited}): "
                         f"{result.stderr.strip()[:200]}")
    remote.console(f"! {holders.forced(found, time.time())}")


class Lease(threading.Thread):
    """Renews the lock's lease every lock.LEASE_RENEW seconds, and at once when the step changes,
    from a thread of its own over the task's own connection (a channel beside the step's).

    Renewing at each step instead would add a round trip to every step and leave the lease
    unrenewed through a long one (a 20-minute migration); from here a deploy blocked in any
    command keeps renewing, and no step waits for it. When the host answers that the lock is
    no longer ours, the deploy is told to stop (executor.LockLost)."""

    def __init__(self, remote: Remote, layout: Layout, info: dict, every: float = lock.LEASE_RENEW,
                 check: float = 0.5):
        super().__init__(name=f"lease-{remote.host}", daemon=True)
        self.remote, self.layout, self.info = remote, layout, info
        self.every, self.check = every, check
        self.renewed_step: str | None = None
        self.renewals = 0
        self._halt = threading.Event()

    def run(self) -> None:
        last = time.monotonic()
        while not self._halt.wait(self.check):
            step = self.remote.step
            if step == self.renewed_step and time.monotonic() - last < self.every:
                continue
            self.renew(step)
            last = time.monotonic()

    def renew(self, step: str | None) -> None:
        try:
            result = self.remote.run(lock.renew_argv(self.layout, self.info, step))
        except TransportError:
            return  # the connection is gone: the lease goes stale, as it should
        if result.exited == lock.LOST_EXIT and not self._halt.is_set():
            self.remote.interrupt.lost = (f"{self.remote.host}: the deploy lock is no longer this deploy's (taken "
                                          "over or removed): stopped here, nothing undone")
            self._halt.set()
        elif result.ok:
            self.renewed_step, self.renewals = step, self.renewals + 1

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=2 * self.check + 1)
