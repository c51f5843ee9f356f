"""locking: taking, waiting for, forcing, renewing and releasing the deploy lock, through the
in-memory transport (the scripts themselves run for real in test_lock_scripts.py)."""
from __future__ import annotations

import functools
import io
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time

import pytest

from deploytasks import holder, lock, locking
from deploytasks.errors import LockHeld, StepFailed
from deploytasks.layout import Layout
from deploytasks.remote.console import Console
from deploytasks.remote.executor import Detached, Interrupt, Interrupted, LockLost, Remote
from harness.memory import MemoryTransport

LAYOUT = Layout("/srv/example", "web")
ACQUIRE = re.compile(re.escape(shlex.quote(lock._ACQUIRE)))
RELEASE = re.compile(re.escape(shlex.quote(lock._RELEASE)))
FORCE = re.compile(re.escape(shlex.quote(lock._FORCE_RELEASE)))
RENEW = re.compile(re.escape(shlex.quote(lock._RENEW)))
INFO = {"token": "t0k", "user": "alice", "from": "laptop", "task": "deploy", "sha": "abc1234", "since": 1_000_000}


def held(verdict: str, *extra: str) -> str:
    return "\n".join([f"lock {json.dumps(INFO)}", *extra, f"lock-holder {verdict} 1000600"]) + "\n"


class Clock:
    """time for locking: sleeping moves both clocks at once."""

    def __init__(self):
        self.now, self.slept = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_000_600 + self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class StubLease:
    started = stopped = 0

    def __init__(self, remote, layout, info):
        self.info = info

    def start(self):
        StubLease.started += 1

    def stop(self):
        StubLease.stopped += 1


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(locking, "time", clock)
    StubLease.started = StubLease.stopped = 0
    monkeypatch.setattr(locking, "Lease", StubLease)
    return clock


@pytest.fixture
def host():
    transport, out = MemoryTransport("web1"), io.StringIO()
    remote = Remote(transport, Console("web1", [], stream=out), Interrupt())
    remote.printed = lambda: out.getvalue().splitlines()
    return remote


LAPSE = re.compile(re.escape(shlex.quote(lock._RENEW + 'touch -d @0 "$lease"\n')))


def scripts(remote) -> list[str]:
    names = {ACQUIRE: "acquire", RELEASE: "release", FORCE: "force", RENEW: "renew", LAPSE: "lease lapsed"}
    return [next((name for pattern, name in names.items() if pattern.search(c)), c) for c in remote.transport.commands]


def test_locked_takes_holds_with_a_lease_and_releases(host, clock):
    with locking.locked(host, LAYOUT, "deploy", "abc1234") as info:
        assert StubLease.started == 1 and StubLease.stopped == 0
        assert info["task"] == "deploy" and info["sha"] == "abc1234" and info["since"] == 1_000_600
    assert scripts(host) == ["acquire", "release"] and StubLease.stopped == 1
    assert info["token"] in host.transport.commands[1]


@pytest.mark.parametrize("error, released", [(StepFailed("boom"), True), (Interrupted("ctrl-c"), True),
                                             (KeyboardInterrupt(), False), (Detached("lost"), False),
                                             (LockLost("taken over"), False)])
def test_the_lock_is_kept_only_where_the_host_may_still_be_busy_or_is_not_ours(host, clock, error, released):
    with pytest.raises(type(error)):
        with locking.locked(host, LAYOUT, "deploy", None):
            raise error
    kept = ["acquire", "lease lapsed"] if isinstance(error, Detached) else ["acquire"]
    assert scripts(host) == (["acquire", "release"] if released else kept) and StubLease.stopped == 1
    if isinstance(error, Detached):
        assert "the connection was lost while the migration ran" in "\n".join(host.printed())


def test_a_dead_holders_lock_taken_over_is_one_line(host, clock):
    host.transport.answer(ACQUIRE, 0, held("dead", "lock-lease 95 migrate") + "lock-taken-over\n")
    with locking.locked(host, LAYOUT, "deploy", None):
        pass
    assert host.printed()[0] == ("[web1] ! took over the deploy lock of a dead deploy: alice@laptop (deploy abc1234), "
                                 "held since 1970-01-12T13:46:40Z (10m), last step: migrate")


def test_a_held_lock_is_refused_at_once_by_default(host, clock):
    host.transport.answer(ACQUIRE, lock.HELD_EXIT, held("alive", "lock-session 77 alive"))
    with pytest.raises(LockHeld, match=r"^web1: deploy lock held by alice@laptop \(deploy abc1234\) for 10m "
                                       r"\(its holder is alive: its connection is open\); --lock-wait"):
        with locking.locked(host, LAYOUT, "deploy", None):
            pass
    assert scripts(host) == ["acquire"] and clock.slept == [] and StubLease.started == 0


def test_lock_wait_polls_with_a_progress_line_every_ten_seconds_then_takes_it(host, clock):
    host.transport.answer(ACQUIRE, lock.HELD_EXIT, held("alive"), times=12)
    with locking.locked(host, LAYOUT, "deploy", None, lock.Policy(wait=60)) as info:
        pass
    assert scripts(host) == ["acquire"] * 13 + ["release"]
    assert clock.slept == [locking.POLL_EVERY] * 12
    assert [line for line in host.printed() if "waiting" in line] == [
        f"[web1]    ... waiting for the deploy lock (held by alice@laptop (deploy abc1234) for 10m; {n}s of 60s)"
        for n in (10, 20)]
    assert info["since"] == int(clock.time()), "the lock says since when it was taken, not since when it was wanted"


def test_lock_wait_gives_up_after_its_time_saying_so(host, clock):
    host.transport.answer(ACQUIRE, lock.HELD_EXIT, held("running", "lock-running m running 42 1000000 - migration"))
    with pytest.raises(LockHeld, match=r"whose migration is still running \(pid 42, since .*\(waited 25s\)"):
        locking.acquire(host, LAYOUT, INFO, wait=25)
    assert sum(clock.slept) == 25 and clock.slept[-1] == 1.0


def test_ctrl_c_stops_the_waiting(host, clock):
    host.transport.answer(ACQUIRE, lock.HELD_EXIT, held("alive"))
    host.transport.on(ACQUIRE, lambda: setattr(host.interrupt, "requested", True))
    with pytest.raises(Interrupted, match="interrupted while waiting for the deploy lock"):
        locking.acquire(host, LAYOUT, INFO, wait=600)
    assert clock.slept == []


def test_a_failing_acquire_is_a_step_failure(host, clock):
    host.transport.answer(ACQUIRE, 1, stderr="mkdir: Permission denied\n")
    with pytest.raises(StepFailed, match="cannot take the deploy lock: mkdir: Permission denied"):
        locking.acquire(host, LAYOUT, INFO)


def test_release_refused_while_a_migration_runs_says_the_lock_is_kept(host, clock):
    host.transport.answer(RELEASE, lock.HELD_EXIT, held("alive", "lock-running m running 42 1000000 - migration"))
    with locking.locked(host, LAYOUT, "deploy", None):
        pass
    assert host.printed()[-1].startswith("[web1] ! deploy lock kept: its migration is still running (pid 42, since ")


def test_release_over_a_lost_connection_is_a_line_not_an_error(host, clock):
    host.transport.drop(RELEASE)
    with locking.locked(host, LAYOUT, "deploy", None):
        pass
    assert "could not release the deploy lock (the connection is gone)" in host.printed()[-1]


def test_force_unlock_runs_first_and_says_what_it_broke(host, clock):
    host.transport.answer(FORCE, 0, held("alive", "lock-session 77 alive") + "lock-removed\n")
    with locking.locked(host, LAYOUT, "deploy", None, lock.Policy(force_unlock=True)):
        pass
    assert scripts(host) == ["force", "acquire", "release"]
    assert host.transport.commands[0].endswith(" no")
    assert host.printed()[0] == ("[web1] ! deploy lock removed (--force-unlock): it was held by alice@laptop "
                                 "(deploy abc1234) for 10m (its holder is alive: its connection is open)")


def test_force_unlock_refuses_under_a_running_migration_unless_forced(host, clock):
    host.transport.answer(FORCE, lock.HELD_EXIT, held("running", "lock-running m running 42 1000000 - migration"),
                          times=1)
    with pytest.raises(LockHeld, match="refuses to break the deploy lock .* add --force to break it anyway"):
        with locking.locked(host, LAYOUT, "deploy", None, lock.Policy(force_unlock=True)):
            pass
    assert scripts(host) == ["force"]
    locking.force_unlock(host, LAYOUT, force=True)
    assert host.transport.commands[-1].endswith(" yes")


# --- the lease --------------------------------------------------------------------------------------

def test_a_renewal_writes_the_current_step(host):
    lease = locking.Lease(host, LAYOUT, INFO)
    host.step = "start green"
    lease.renew(host.step)
    assert host.transport.commands == [shlex.join(lock.renew_argv(LAYOUT, INFO, "start green"))]
    assert lease.renewed_step == "start green" and lease.renewals == 1 and not host.interrupt


def test_a_lost_lock_stops_the_deploy_and_a_lost_connection_does_nothing(host):
    lease = locking.Lease(host, LAYOUT, INFO)
    host.transport.drop(RENEW)
    lease.renew("migrate")
    assert lease.renewals == 0 and not host.interrupt
    host.transport._drops.clear()
    host.transport.answer(RENEW, lock.LOST_EXIT)
    lease.renew("migrate")
    assert host.interrupt.lost.startswith("web1: the deploy lock is no longer this deploy's")


def test_the_lease_thread_renews_on_each_step_and_every_interval_until_stopped(host):
    renewed = threading.Event()
    host.transport.on(RENEW, renewed.set)
    lease = locking.Lease(host, LAYOUT, INFO, every=0.2, check=0.01)
    lease.start()
    try:
        host.step = "prepare"
        assert renewed.wait(5)
        deadline = time.time() + 5
        while lease.renewals < 3 and time.time() < deadline:  # the same step: renewed by time
            time.sleep(0.02)
        host.step = "migrate"
        while lease.renewed_step != "migrate" and time.time() < deadline:
            time.sleep(0.02)
    finally:
        lease.stop()
    assert not lease.is_alive() and lease.renewals >= 4 and lease.renewed_step == "migrate"
    count = len(host.transport.commands)
    time.sleep(0.1)
    assert len(host.transport.commands) == count, "stopped means stopped"


def test_a_lease_stopped_before_the_host_answered_lost_stops_nothing(host):
    lease = locking.Lease(host, LAYOUT, INFO)
    host.transport.answer(RENEW, lock.LOST_EXIT)
    lease.stop()  # released: our own release is why the lock is gone
    lease.renew("cleanup")
    assert not host.interrupt


def test_holder_parse_of_nothing_is_none():
    assert holder.parse([]) is None


# --- a whole deploy over the in-memory transport --------------------------------------------------

@pytest.fixture
def memory_host(monkeypatch, clock):
    """operations.deploy against one in-memory host (a fresh one: every command answers 0 and nothing)."""
    from deploytasks import operations, registry

    transport = MemoryTransport("127.0.0.1")
    monkeypatch.setattr(operations, "connect", lambda config, host, **options: transport)
    monkeypatch.setattr(registry, "missing", lambda images, tag: [])
    return transport


def test_a_connection_lost_under_the_migration_keeps_the_lock_records_lost_and_undoes_nothing(
        memory_host, local_config, capsys):
    from deploytasks import operations

    memory_host.drop(re.compile("example-migrate-"))
    with pytest.raises(Detached):
        operations.deploy(operations.Target(local_config, ("127.0.0.1",)), "b" * 40)
    commands = memory_host.commands
    migrate = next(i for i, c in enumerate(commands) if "example-migrate-" in c)
    after = commands[migrate + 1:]
    assert len(after) == 3 and "history.jsonl" in after[0] and '"outcome": "lost"' in after[0], after
    assert "state/deploying" in after[1] and "connection lost while the migration ran" in after[1], "status names it"
    assert LAPSE.search(after[2]), "the lease lapses: the lock is the migration's alone"
    assert not any(RELEASE.search(c) for c in commands), "the lock stays with the migration"
    out = capsys.readouterr().out
    assert "the connection was lost while the migration ran" in out and "undoing" not in out


def test_lock_options_are_checked_before_any_connection(memory_host, local_config):
    from deploytasks import operations
    from deploytasks.errors import ConfigError

    target = operations.Target(local_config, ("127.0.0.1",))
    for call in (lambda: operations.deploy(target, "b" * 40, force=True),
                 lambda: operations.rollback(target, lock_wait="soon"),
                 lambda: operations.set_maintenance(target, True, lock_wait=-1)):
        with pytest.raises(ConfigError):
            call()
    assert memory_host.calls == []


# --- the same, with the real scripts in a local shell --------------------------------------------------

class LocalTransport:
    """Commands run by a local sh, as sshd would run them (the lock scripts for real)."""

    host = "local"

    def run(self, command, *, out=None, err=None, timeout=None):
        import subprocess

        from deploytasks.remote.transport import Result

        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=min(timeout or 30, 30))
        return Result(done.returncode, done.stdout, done.stderr)

    def close(self):
        pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux and /proc")
def test_a_real_lock_held_renewed_used_by_a_migration_and_released(tmp_path, monkeypatch):
    from deploytasks.tracked import tracked

    monkeypatch.setattr(locking, "Lease", functools.partial(locking.Lease, every=0.1, check=0.02))
    layout = Layout(str(tmp_path / "srv"), "web")
    out = io.StringIO()
    remote = Remote(LocalTransport(), Console("local", [], stream=out), Interrupt())
    with locking.locked(remote, layout, "deploy", "abc1234") as info:
        remote.step = "migrate"
        result = remote.run(tracked(layout, "migrate-r", "migration", ("sh", "-c", "echo migrated")))
        assert (result.exited, result.stdout) == (0, "migrated\n")
        deadline = time.time() + 5
        while open(layout.lock_lease).read() != "migrate\n" and time.time() < deadline:
            time.sleep(0.02)
        assert open(layout.lock_lease).read() == "migrate\n"
        assert json.load(open(layout.lock_info)) == info
    assert not os.path.exists(layout.lock) and os.listdir(layout.state) == [] and out.getvalue() == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux and /proc")
def test_a_real_dead_lock_is_taken_over_with_one_line(tmp_path):
    import subprocess

    layout = Layout(str(tmp_path / "srv"), "web")
    subprocess.run(lock.acquire_argv(layout, INFO), check=True, timeout=30)
    with open(layout.lock_lease, "w") as lease:
        lease.write("start green\n")
    with open(f"{layout.lock}/session", "w") as session:
        session.write("1 1 another-boot\n")
    os.utime(layout.lock_lease, (time.time() - 60, time.time() - 60))
    out = io.StringIO()
    remote = Remote(LocalTransport(), Console("local", [], stream=out), Interrupt())
    info = locking.acquire(remote, layout, lock.owner("deploy", None))
    taken = info.pop("took_over")
    assert json.load(open(layout.lock_info)) == info and taken == {"step": "start green"}, \
        "the record as written, and the dead holder's last step for its history line"
    assert out.getvalue().startswith("[local] ! took over the deploy lock of a dead deploy: alice@laptop (deploy "
                                     "abc1234), held since 1970-01-12T13:46:40Z (")
    assert out.getvalue().endswith("last step: start green\n")


def test_a_holder_whose_connection_is_gone_is_waited_for_until_its_lease_lapses(host, clock):
    """The deploy run right after a killed one: no --lock-wait needed, its lease lapses in seconds."""
    host.transport.answer(ACQUIRE, lock.HELD_EXIT, held("alive", "lock-session 77 gone", "lock-lease 10 migrate"),
                          times=3)
    host.transport.answer(ACQUIRE, 0, held("dead", "lock-session 77 gone", "lock-lease 16 migrate") + "lock-taken-over\n")
    locking.acquire(host, LAYOUT, INFO)
    assert scripts(host) == ["acquire"] * 4
    assert sum(clock.slept) == 3 * locking.POLL_EVERY
    printed = "\n".join(host.printed())
    assert f"lost its connection: waiting up to {lock.LEASE_BOUND - 10 + locking.POLL_EVERY:.0f}s" in printed
    assert "took over the deploy lock of a dead deploy" in printed


def test_the_lease_grace_is_given_once_not_renewed_by_a_holder_that_reconnected(host, clock):
    """A holder that lost one connection but renews its lease over another is alive: wait no longer
    than the first lapse promised, then refuse."""
    host.transport.answer(ACQUIRE, lock.HELD_EXIT, held("alive", "lock-session 77 gone", "lock-lease 1 start"))
    with pytest.raises(LockHeld, match=r"its holder is alive.*\(waited 16s\)"):
        locking.acquire(host, LAYOUT, INFO)
    assert sum(clock.slept) == lock.LEASE_BOUND - 1 + locking.POLL_EVERY


def test_a_holder_with_an_open_connection_gets_no_grace(host, clock):
    host.transport.answer(ACQUIRE, lock.HELD_EXIT, held("alive", "lock-session 77 alive", "lock-lease 14 start"))
    with pytest.raises(LockHeld):
        locking.acquire(host, LAYOUT, INFO)
    assert clock.slept == []


def test_a_lease_lapsed_on_leaving_is_dated_back_and_only_by_its_holder(tmp_path):
    """Detached: the holder leaves its lock to the migration; the lease then says nothing for it."""
    layout = Layout(str(tmp_path / "srv"), "web")
    os.makedirs(layout.lock)
    with open(layout.lock_info, "w") as info:
        json.dump(INFO, info)
    with open(layout.lock_lease, "w") as lease:
        lease.write("start\n")
    other = subprocess.run(lock.renew_argv(layout, dict(INFO, token="not-ours"), "migrate", lapse=True))
    assert other.returncode == lock.LOST_EXIT and os.stat(layout.lock_lease).st_mtime > 0
    ours = subprocess.run(lock.renew_argv(layout, INFO, "migrate", lapse=True))
    assert ours.returncode == 0 and os.stat(layout.lock_lease).st_mtime == 0
    assert open(layout.lock_lease).read() == "migrate\n"


def test_a_deploy_whose_connection_drops_after_its_last_step_records_ok_on_a_fresh_one(
        memory_host, local_config, capsys):
    """Finished is finished: not 'failed' for the deployer, nor 'died' for the next deploy."""
    from deploytasks import operations

    from deploytasks.remote.transport import TransportError

    memory_host.answer(re.compile(r"8080/version"), 0, "b" * 40)  # the check through nginx sees the new SHA
    dropped = []

    def drop_once():
        if not dropped:
            dropped.append(True)
            raise TransportError("connection dropped (memory transport)")

    memory_host.on(re.compile(r'history\.jsonl.*"outcome": "ok"'), drop_once)
    serving = operations.deploy(operations.Target(local_config, ("127.0.0.1",)), "b" * 40)
    assert serving == {"127.0.0.1": "b" * 40}
    appends = [c for c in memory_host.commands if "history.jsonl" in c and '"outcome": "ok"' in c]
    assert len(appends) == 2, "dropped once, then recorded on a fresh connection"
    last = max(i for i, c in enumerate(memory_host.commands) if c == appends[-1])
    after = memory_host.commands[last + 1:]
    assert after and "rm -f /srv/example/state/deploying" in after[0], "the marker is cleared too"
    out = capsys.readouterr().out
    assert "reconnected" in out and "could not record" not in out
