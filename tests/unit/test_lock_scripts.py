"""The lock scripts and the tracked-command wrapper, run for real in a local shell on a tmp dir:
acquire, refusal for a live holder, takeover of a dead one, refusal while a registered command
runs, racing takeovers, release by the owner only, --force-unlock, the lease, and the sshd
session process recorded under a fake sshd parent."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from deploytasks import holder, lock
from deploytasks.layout import Layout
from deploytasks.tracked import tracked

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("sh")
                                or not Path("/proc/self/stat").exists(), reason="needs Linux, /proc and a sh")

INFO = {"token": "t" * 32, "user": "alice", "from": "laptop", "task": "deploy", "sha": "abc1234", "since": 1_000_000}
BOOT = Path("/proc/sys/kernel/random/boot_id").read_text().strip() if Path(
    "/proc/sys/kernel/random/boot_id").exists() else ""


@pytest.fixture
def layout(tmp_path) -> Layout:
    return Layout(str(tmp_path / "srv"), "web")


def run(argv, **options) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, **options)


def mine(**changes) -> dict:
    return {**lock.owner("deploy", "bbbbbbb"), **changes}


def acquire(layout: Layout, info: dict, **options) -> tuple[int, holder.Holder | None]:
    result = run(lock.acquire_argv(layout, info), **options)
    assert result.stderr == ""
    return result.returncode, holder.parse(result.stdout.splitlines())


def start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def a_dead_process() -> tuple[int, str]:
    """The pid and start time of a process that has ended."""
    process = subprocess.Popen(["sleep", "0.2"])
    started = start_time(process.pid)
    process.wait()
    return process.pid, started


def make_dead(layout: Layout) -> None:
    """The holder is gone: its session process ended and its lease was last renewed a minute ago."""
    pid, started = a_dead_process()
    Path(layout.lock, "session").write_text(f"{pid} {started} {BOOT}\n")
    past = time.time() - 60
    os.utime(layout.lock_lease, (past, past))


def register(layout: Layout, name: str, pid: int, started: str, container: str = "-") -> None:
    Path(layout.lock_running, name).write_text(f"{pid} {started} {int(time.time())} {container} migration\n")


def leftovers(layout: Layout) -> list[str]:
    return sorted(p.name for p in Path(layout.state).iterdir())


# --- acquire and refusal ----------------------------------------------------------------------------

def test_acquire_writes_the_owner_the_session_and_a_fresh_lease(layout):
    assert acquire(layout, INFO) == (0, None)
    assert json.loads(Path(layout.lock_info).read_text()) == INFO
    pid, started, boot = Path(layout.lock, "session").read_text().split()
    assert int(pid) == os.getpid() and started == start_time(os.getpid()) and boot == BOOT  # not over ssh: our parent
    assert Path(layout.lock_lease).read_text() == "" and time.time() - Path(layout.lock_lease).stat().st_mtime < 5
    assert all(Path(path).is_dir() for path in (layout.lock_running, layout.lock_ended, layout.lock_output))
    assert leftovers(layout) == ["lock"]


def test_a_live_holder_is_refused_naming_it(layout):
    acquire(layout, INFO)
    code, found = acquire(layout, mine())
    assert code == lock.HELD_EXIT and found.info == INFO
    assert found.verdict == "alive" and found.session == "alive" and found.lease_age is not None
    assert json.loads(Path(layout.lock_info).read_text()) == INFO and leftovers(layout) == ["lock"]


def test_a_fresh_lease_keeps_a_holder_alive_whose_session_is_gone(layout):
    acquire(layout, INFO)
    pid, started = a_dead_process()
    Path(layout.lock, "session").write_text(f"{pid} {started} {BOOT}\n")
    code, found = acquire(layout, mine())
    assert code == lock.HELD_EXIT and found.verdict == "alive" and found.session == "gone"


def test_an_open_session_keeps_a_holder_alive_whose_lease_is_stale(layout):
    acquire(layout, INFO)  # our own process is the session: it lives
    past = time.time() - 600
    os.utime(layout.lock_lease, (past, past))
    code, found = acquire(layout, mine())
    assert code == lock.HELD_EXIT and found.verdict == "alive" and found.lease_age >= 600


@pytest.mark.parametrize("session", ["{pid} 1 {boot}", "{pid} {start} another-boot"],
                         ids=["a reused pid (other start time)", "another boot"])
def test_a_session_is_the_very_process_it_recorded(layout, session):
    acquire(layout, INFO)
    make_dead(layout)
    Path(layout.lock, "session").write_text(
        session.format(pid=os.getpid(), start=start_time(os.getpid()), boot=BOOT) + "\n")
    code, found = acquire(layout, mine())
    assert code == 0 and found.taken_over and found.session == "gone"


def test_a_lock_without_liveness_records_is_never_taken_over(layout):
    Path(layout.lock).mkdir(parents=True)  # as an older deploytasks wrote it
    Path(layout.lock_info).write_text(json.dumps(INFO))
    code, found = acquire(layout, mine())
    assert code == lock.HELD_EXIT and found.verdict == "unknown" and found.info == INFO


# --- takeover -----------------------------------------------------------------------------------------

def test_a_dead_holders_lock_is_taken_over_and_says_so(layout):
    acquire(layout, INFO)
    Path(layout.lock_lease).write_text("migrate\n")
    make_dead(layout)
    ours = mine()
    code, found = acquire(layout, ours)
    assert code == 0 and found.taken_over and found.verdict == "dead"
    assert found.info == INFO and found.step == "migrate" and found.lease_age >= 60
    assert json.loads(Path(layout.lock_info).read_text()) == ours
    assert not Path(layout.lock, "takeover").exists() and leftovers(layout) == ["lock"]
    line = holder.took_over(found, now=INFO["since"] + 720)
    assert line.startswith("took over the deploy lock of a dead deploy: alice@laptop (deploy abc1234), held since ")
    assert "(12m), last step: migrate" in line


def test_a_dead_holders_running_migration_refuses_then_its_end_lets_the_lock_be_taken_over(layout):
    acquire(layout, INFO)
    migration = subprocess.Popen(["sleep", "30"])
    try:
        register(layout, "migrate-x", migration.pid, start_time(migration.pid))
        make_dead(layout)
        code, found = acquire(layout, mine())
        assert code == lock.HELD_EXIT and found.verdict == "running"
        assert [(c.id, c.pid, c.running) for c in found.commands] == [("migrate-x", migration.pid, True)]
        assert "held by a dead deploy whose migration is still running (pid" in str(
            holder.held_error("web1", found, time.time()))
    finally:
        migration.kill()
        migration.wait()
    code, found = acquire(layout, mine())
    assert code == 0 and found.taken_over
    assert [(c.id, c.running, c.exit) for c in found.commands] == [("migrate-x", False, None)]
    assert "its migration had ended (its exit status was not recorded)" in holder.took_over(found, time.time())


def test_a_registered_container_counts_while_docker_says_it_runs(layout, tmp_path):
    acquire(layout, INFO)
    running = tmp_path / "container-running"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(
        f'#!/bin/sh\nif [ -e {shlex.quote(str(running))} ]; then echo true; '
        'else echo "Error: No such object: $4" >&2; exit 1; fi\n')
    (bin_dir / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    pid, started = a_dead_process()  # the compose client died; its container did not
    register(layout, "migrate-x", pid, started, container="shop-migrate-x")
    make_dead(layout)
    running.touch()
    code, found = acquire(layout, mine(), env=env)
    assert code == lock.HELD_EXIT and found.verdict == "running"
    assert found.running[0].container == "shop-migrate-x"
    running.unlink()
    code, found = acquire(layout, mine(), env=env)
    assert code == 0 and found.taken_over


def test_racing_takeovers_have_exactly_one_winner(layout):
    for _ in range(5):
        acquire(layout, INFO)
        make_dead(layout)
        racers = [mine() for _ in range(8)]
        with ThreadPoolExecutor(len(racers)) as pool:
            results = list(pool.map(lambda info: run(lock.acquire_argv(layout, info)), racers))
        winners = [info for info, result in zip(racers, results) if result.returncode == 0]
        assert len(winners) == 1, [(r.returncode, r.stdout, r.stderr) for r in results]
        assert all(r.returncode == lock.HELD_EXIT for r in results if r.returncode != 0)
        assert json.loads(Path(layout.lock_info).read_text()) == winners[0]
        assert leftovers(layout) == ["lock"] and not Path(layout.lock, "takeover").exists()
        subprocess.run(lock.release_argv(layout, winners[0]), check=True, timeout=30)


def test_an_interrupted_takeover_is_reported_not_repeated(layout):
    acquire(layout, INFO)
    make_dead(layout)
    Path(layout.lock, "takeover").mkdir()  # a racer died between its mkdir and its rename
    code, found = acquire(layout, mine())
    assert code == lock.HELD_EXIT and found.verdict == "dead" and found.takeover
    assert json.loads(Path(layout.lock_info).read_text()) == INFO
    assert "--force-unlock" in str(holder.held_error("web1", found, time.time()))


# --- release, force, lease -------------------------------------------------------------------------

def test_release_only_by_the_owner_and_never_under_a_running_command(layout):
    acquire(layout, INFO)
    assert run(lock.release_argv(layout, mine())).returncode == 0
    assert Path(layout.lock_info).is_file(), "someone else's token leaves the lock alone"
    migration = subprocess.Popen(["sleep", "30"])
    try:
        register(layout, "migrate-x", migration.pid, start_time(migration.pid))
        kept = run(lock.release_argv(layout, INFO))
        assert kept.returncode == lock.HELD_EXIT and Path(layout.lock_info).is_file()
        assert holder.kept(holder.parse(kept.stdout.splitlines())).startswith(
            f"deploy lock kept: its migration is still running (pid {migration.pid}, since ")
    finally:
        migration.kill()
        migration.wait()
    assert run(lock.release_argv(layout, INFO)).returncode == 0
    assert leftovers(layout) == []


def test_force_unlock_refuses_under_a_running_command_unless_forced(layout):
    assert run(lock.force_release_argv(layout)) .stdout == ""  # no lock: nothing to say
    acquire(layout, INFO)
    migration = subprocess.Popen(["sleep", "30"])
    try:
        register(layout, "migrate-x", migration.pid, start_time(migration.pid))
        refused = run(lock.force_release_argv(layout))
        assert refused.returncode == lock.HELD_EXIT and Path(layout.lock_info).is_file()
        forced = run(lock.force_release_argv(layout, force=True))
        assert forced.returncode == 0 and forced.stdout.splitlines()[-1] == "lock-removed"
        assert holder.parse(forced.stdout.splitlines()).running[0].pid == migration.pid
        assert leftovers(layout) == []
    finally:
        migration.kill()
        migration.wait()
    acquire(layout, INFO)
    assert run(lock.force_release_argv(layout)).returncode == 0 and leftovers(layout) == []  # a live holder too


def test_renew_writes_the_step_only_into_our_own_lock(layout):
    assert run(lock.renew_argv(layout, INFO, "prepare")).returncode == lock.LOST_EXIT
    assert not Path(layout.state).exists(), "no lock: renewing creates nothing"
    acquire(layout, INFO)
    past = time.time() - 60
    os.utime(layout.lock_lease, (past, past))
    assert run(lock.renew_argv(layout, INFO, "start green")).returncode == 0
    assert Path(layout.lock_lease).read_text() == "start green\n"
    assert time.time() - Path(layout.lock_lease).stat().st_mtime < 5
    assert run(lock.renew_argv(layout, mine(), "evil")).returncode == lock.LOST_EXIT
    assert Path(layout.lock_lease).read_text() == "start green\n"


# --- the sshd session process ------------------------------------------------------------------------

def _fake_sshd(tmp_path: Path) -> Path:
    """A shell binary named like OpenSSH's per-connection process (its comm is what the script matches)."""
    fake = tmp_path / "sshd-session"
    shutil.copy(os.path.realpath(shutil.which("sh")), fake)
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("login_shell", ["sh", "bash"])
def test_the_session_is_the_nearest_sshd_ancestor_and_lives_as_long_as_it(layout, tmp_path, login_shell):
    """As sshd runs a command: its connection process forks the user's login shell with
    `-c COMMAND`, which runs our `sh -c SCRIPT` (bash execs it, dash forks)."""
    if not shutil.which(login_shell):
        pytest.skip(f"no {login_shell}")
    fake = _fake_sshd(tmp_path)
    command = shlex.join(lock.acquire_argv(layout, INFO))
    connection = subprocess.Popen([str(fake), "-c", f'{login_shell} -c "$1"; sleep 30', "sshd", command])
    try:
        deadline = time.time() + 10
        while not Path(layout.lock, "session").exists() and time.time() < deadline:
            time.sleep(0.05)
        pid, started, boot = Path(layout.lock, "session").read_text().split()
        assert (int(pid), started, boot) == (connection.pid, start_time(connection.pid), BOOT)
        past = time.time() - 60
        os.utime(layout.lock_lease, (past, past))
        code, found = acquire(layout, mine())
        assert code == lock.HELD_EXIT and found.verdict == "alive" and found.session == "alive"
    finally:
        connection.kill()
        connection.wait()
    code, found = acquire(layout, mine())
    assert code == 0 and found.taken_over and found.session == "gone"


# --- tracked commands ----------------------------------------------------------------------------------

def test_a_tracked_command_streams_its_output_and_records_its_exit(layout):
    acquire(layout, INFO)
    result = run(tracked(layout, "migrate-x", "migration", ("sh", "-c", "echo one; echo two >&2; exit 7")))
    assert result.returncode == 7 and result.stdout == "one\ntwo\n"
    assert os.listdir(layout.lock_running) == []
    status, _ended, pid, _start, _since, container, what = Path(layout.lock_ended, "migrate-x").read_text().split()
    assert (status, container, what) == ("7", "-", "migration") and int(pid) > 1
    assert Path(layout.lock_output, "migrate-x").read_text() == "one\ntwo\n"
    code, found = acquire(layout, mine())
    assert [(c.id, c.exit, c.running) for c in found.commands] == [("migrate-x", 7, False)]


def test_a_tracked_command_outlives_the_connection_and_holds_the_lock_while_it_runs(layout, tmp_path):
    """The deployer's end of the pipe closes mid-migration (the connection is lost): the
    migration keeps writing (to its file), finishes, records its status; meanwhile the lock
    is neither released nor taken over."""
    acquire(layout, INFO)
    done, go = tmp_path / "done", tmp_path / "go"
    script = f"echo started; while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.05; done; " \
             f"for i in 1 2 3; do echo more $i; done; touch {shlex.quote(str(done))}"
    wrapper = subprocess.Popen(tracked(layout, "migrate-x", "migration", ("sh", "-c", script)),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert wrapper.stdout.readline() == b"started\n"
    wrapper.stdout.close()  # the connection is gone: nobody reads any more
    make_dead(layout)
    code, found = acquire(layout, mine())
    assert code == lock.HELD_EXIT and found.verdict == "running" and found.running[0].what == "migration"
    assert run(lock.release_argv(layout, INFO)).returncode == lock.HELD_EXIT
    go.touch()
    deadline = time.time() + 10
    while not Path(layout.lock_ended, "migrate-x").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert done.exists(), "the migration ran to its end"
    assert Path(layout.lock_ended, "migrate-x").read_text().split()[0] == "0"
    assert "more 3" in Path(layout.lock_output, "migrate-x").read_text()
    wrapper.wait(timeout=10)
    code, found = acquire(layout, mine())
    assert code == 0 and found.taken_over and "its migration had ended (exit 0)" in holder.took_over(found, time.time())


def test_a_tracked_command_never_runs_without_the_lock(layout, tmp_path):
    marker = tmp_path / "ran"
    result = run(tracked(layout, "migrate-x", "migration", ("touch", str(marker))))
    assert result.returncode == 1 and "the deploy lock is gone: migration not started" in result.stderr
    assert not marker.exists()


def test_without_a_tail_that_follows_the_output_comes_at_the_end(layout, tmp_path):
    acquire(layout, INFO)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tail").write_text("#!/bin/sh\necho 'tail: unrecognized option' >&2; exit 1\n")
    (bin_dir / "tail").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = run(tracked(layout, "migrate-x", "migration", ("sh", "-c", "echo one; exit 3")), env=env)
    assert (result.returncode, result.stdout) == (3, "one\n")
