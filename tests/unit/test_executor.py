"""executor: what a plan does to a host when steps fail, undos fail, Ctrl-C comes or the
connection drops; run through the in-memory transport, with a fake clock, no host."""
from __future__ import annotations

import io
import os
import re
import shlex
import signal
import threading
import dataclasses
from dataclasses import dataclass

import pytest

from deploytasks.errors import StepFailed
from deploytasks.plan import Plan, Poll, Put, Step, Wait, cmd
from deploytasks.remote import executor
from deploytasks.remote.console import MASK, Console
from deploytasks.remote.executor import Detached, Interrupt, Interrupted, LockLost, Remote, execute
from deploytasks.remote.transport import TransportError
from harness.memory import MemoryTransport, Written

SECRET = "hunter2-secret"
SHA = "bbbbbbb"


class Clock:
    """time.monotonic and time.sleep for the executor: sleeping moves the clock, at once."""

    def __init__(self):
        self.now, self.slept = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(executor, "time", clock)
    return clock


@dataclass
class Host:
    transport: MemoryTransport
    remote: Remote
    interrupt: Interrupt
    out: io.StringIO

    def printed(self) -> list[str]:
        return self.out.getvalue().splitlines()

    def ctrl_c(self) -> None:
        self.interrupt.requested = True


def _host(secrets=(SECRET,)) -> Host:
    transport, interrupt, out = MemoryTransport("web1"), Interrupt(), io.StringIO()
    return Host(transport, Remote(transport, Console("web1", list(secrets), stream=out), interrupt), interrupt, out)


@pytest.fixture
def host() -> Host:
    return _host()


def line(action) -> str:
    """The command line the transport receives for a Cmd or a Poll."""
    return shlex.join(action.argv)


def lines(*actions) -> list[str]:
    return [line(action) for action in actions]


def plan(*steps: Step) -> Plan:
    return Plan("deploy", SHA, steps)


def test_every_step_runs_in_order_timed_and_printed(host):
    make, touch, undo = cmd("mkdir", "-p", "/srv/app"), cmd("touch", "/srv/app/a b"), cmd("rm", "-r", "/srv/app")
    outcome = execute(host.remote, plan(Step("prepare", (make, Wait(2, "settle")), undo=(undo,)),
                                        Step("start", (touch,))))
    assert host.transport.commands == ["mkdir -p /srv/app", "touch '/srv/app/a b'"]
    assert outcome.steps == [("prepare", 2.0), ("start", 0.0)] and outcome.warnings == []
    assert host.printed() == ["[web1] -> prepare", "[web1]    ok prepare (2.0s)",
                              "[web1] -> start", "[web1]    ok start (0.0s)"]


def test_a_command_is_skipped_when_its_unless_check_succeeds(host):
    present = cmd("ln", "-s", "a", "b", unless=("test", "-L", "b"))
    absent = cmd("ln", "-s", "c", "d", unless=("test", "-L", "d"))
    host.transport.answer("test -L d", exited=1)
    execute(host.remote, plan(Step("switch", (present, absent), label="links")))
    assert host.transport.commands == ["test -L b", "test -L d", "ln -s c d"]


def test_a_failure_undoes_completed_steps_newest_first_with_the_failing_steps_own_undo(host):
    a, b, c1, c2, c3, d = (cmd("do", n) for n in ("a", "b", "c1", "c2", "c3", "d"))
    undo_a, undo_b1, undo_b2, undo_c, undo_d = (cmd("undo", n) for n in ("a", "b1", "b2", "c", "d"))
    host.transport.answer(line(c2), exited=3, stderr=f"partial\nboom {SECRET}\n")
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("prepare", (a,), undo=(undo_a,), label="a"), Step("upload", (b,), undo=(undo_b1, undo_b2), label="b"),
                                  Step("pull", (c1, c2, c3), undo=(undo_c,), label="c"), Step("networks", (d,), undo=(undo_d,), label="d")))
    assert host.transport.commands == lines(a, b, c1, c2, undo_c, undo_b1, undo_b2, undo_a)
    assert type(failed.value) is StepFailed and failed.value.completed == ["prepare", "upload"], "phases, not labels"
    assert str(failed.value) == f"web1: `do c2` failed (exit 3):\n  - partial\n  - boom {MASK}"
    assert host.printed() == ["[web1] -> a", "[web1]    ok a (0.0s)", "[web1] -> b", "[web1]    ok b (0.0s)",
                              "[web1] -> c", "[web1] <- undoing what this plan changed"]


def test_a_failed_commands_message_masks_secrets_in_the_command_and_its_output(host):
    script = cmd("sh", "-c", f"echo {SECRET}; exit 2")
    host.transport.answer(line(script), exited=2, stdout=f"{SECRET}\n")
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("build", (script,), label="script")))
    assert str(failed.value) == f"web1: `sh -c 'echo {MASK}; exit 2'` failed (exit 2):\n  - {MASK}"


def test_a_failing_steps_diagnostics_are_shown_before_its_undo(host):
    start, stop, logs, ps = cmd("start"), cmd("stop"), cmd("logs", "web"), cmd("ps")
    host.transport.answer("start", exited=1).answer("logs web", exited=1, stdout=f"booting\ntoken={SECRET}\n")
    host.transport.drop("ps")
    with pytest.raises(StepFailed):
        execute(host.remote, plan(Step("start", (start,), undo=(stop,), diagnose=(logs, ps))))
    assert host.transport.commands == ["start", "logs web", "ps", "stop"]
    assert host.printed() == ["[web1] -> start", "[web1]    | $ logs web", "[web1]    | booting",
                              f"[web1]    | token={MASK}", "[web1]    | $ ps", "[web1]    | (could not run)",
                              "[web1] <- undoing what this plan changed"]


def test_a_best_effort_step_failing_after_the_switch_only_warns_and_the_plan_finishes(host):
    switch, back = cmd("switch", "green"), cmd("switch", "blue")
    remove, prune, stop = cmd("rm", "old"), cmd("prune"), cmd("stop", "blue")
    host.transport.answer("rm old", exited=1, stderr="busy\n")
    outcome = execute(host.remote, plan(Step("switch", (switch,), undo=(back,)),
                                        Step("cleanup", (remove, prune), best_effort=True, diagnose=(cmd("df"),)),
                                        Step("drain", (stop,), best_effort=True, label="stop old")))
    # the failing step's remaining actions are skipped; no diagnosis, no undo; later steps run
    assert host.transport.commands == lines(switch, remove, stop)
    assert outcome.steps == [("switch", 0.0), ("drain", 0.0)]
    assert outcome.warnings == ["cleanup: web1: `rm old` failed (exit 1):\n  - busy"]
    assert host.printed()[3:5] == ["[web1]    ! cleanup failed after the switch (the new version serves): "
                                   "web1: `rm old` failed (exit 1):", "[web1]   - busy"]


def test_a_step_after_the_switch_that_is_not_best_effort_undoes_the_switch(host):
    start, stop, switch, back, verify = cmd("start", "green"), cmd("stop", "green"), cmd("switch", "green"), \
        cmd("switch", "blue"), cmd("verify")
    host.transport.answer("verify", exited=1)
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("start", (start,), undo=(stop,)), Step("switch", (switch,), undo=(back,)),
                                  Step("verify", (verify,)), Step("cleanup", (cmd("rm", "old"),), best_effort=True)))
    assert host.transport.commands == lines(start, switch, verify, back, stop)
    assert failed.value.completed == ["start", "switch"]


def test_a_failing_undo_is_reported_and_the_remaining_undos_still_run(host):
    a, b, c = cmd("do", "a"), cmd("do", "b"), cmd("do", "c")
    undo_a, undo_b1, undo_b2 = cmd("undo", "a"), cmd("undo", "b1"), cmd("undo", "b2")
    host.transport.answer("do c", exited=1).answer(re.compile(r"^undo b1$"), exited=1, stderr=f"cannot remove {SECRET}\n")
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("prepare", (a,), undo=(undo_a,), label="a"), Step("upload", (b,), undo=(undo_b1, undo_b2), label="b"),
                                  Step("pull", (c,), label="c")))
    assert host.transport.commands == lines(a, b, c, undo_b1, undo_b1, undo_b2, undo_a), "retried once, then on"
    assert f"[web1]    ! undo `undo b1` failed: cannot remove {MASK}" in host.printed()
    assert failed.value.undone, "no barrier failed: the old version is back"
    assert str(failed.value) == "web1: `do c` failed (exit 1)" and failed.value.completed == ["prepare", "upload"]


def test_ctrl_c_mid_step_lets_the_command_finish_then_undoes_instead_of_going_on(host):
    a, b1, b2, c = cmd("do", "a"), cmd("do", "b1"), cmd("do", "b2"), cmd("do", "c")
    undo_a, undo_b = cmd("undo", "a"), cmd("undo", "b")
    host.transport.on("do b1", host.ctrl_c)
    with pytest.raises(Interrupted) as stopped:
        execute(host.remote, plan(Step("prepare", (a,), undo=(undo_a,), label="a"),
                                  Step("upload", (b1, b2), undo=(undo_b,), diagnose=(cmd("logs"),), label="b"), Step("pull", (c,), label="c")))
    # b1 ran to its end; b2 never started; no diagnosis of an interruption
    assert host.transport.commands == lines(a, b1, undo_b, undo_a)
    assert str(stopped.value) == "web1: interrupted (Ctrl-C)" and stopped.value.completed == ["prepare"]


def test_ctrl_c_during_a_poll_stops_waiting(host, clock):
    poll = Poll(("curl", "-fsS", "http://127.0.0.1/ready"), timeout=60, interval=5)
    host.transport.answer(line(poll), exited=7).on(line(poll), host.ctrl_c)
    with pytest.raises(Interrupted):
        execute(host.remote, plan(Step("ready", (poll,), undo=(cmd("stop"),))))
    assert host.transport.commands == [line(poll), "stop"] and clock.slept == []


def test_ctrl_c_after_the_switch_lets_best_effort_steps_finish(host):
    switch, remove, prune = cmd("switch", "green"), cmd("rm", "old"), cmd("prune")
    host.transport.on("switch green", host.ctrl_c)
    outcome = execute(host.remote, plan(Step("switch", (switch,), undo=(cmd("switch", "blue"),)),
                                        Step("cleanup", (remove, prune), best_effort=True)))
    assert host.transport.commands == lines(switch, remove, prune)
    assert [name for name, _ in outcome.steps] == ["switch", "cleanup"] and outcome.warnings == []


def test_a_dropped_connection_mid_step_fails_that_step_and_undo_failures_are_reported(host):
    a, b1, b2, logs = cmd("do", "a"), cmd("do", "b1"), cmd("do", "b2"), cmd("logs")
    undo_a, undo_b = cmd("undo", "a"), cmd("undo", "b")
    host.transport.drop(lambda command: command.endswith(" b2"), stays=True)
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("prepare", (a,), undo=(undo_a,), label="a"),
                                  Step("upload", (b1, b2), undo=(undo_b,), diagnose=(logs,), label="b"), Step("pull", (cmd("do", "c"),), label="c")))
    assert type(failed.value) is StepFailed and isinstance(failed.value.__cause__, TransportError)
    assert str(failed.value) == "web1: b: connection dropped (memory transport)"
    assert failed.value.completed == ["prepare"]
    # every diagnosis and undo was attempted, and each failure reported, none raised
    assert host.transport.commands == lines(a, b1, b2, logs, undo_b, undo_a)
    assert host.printed()[3:] == ["[web1]    | $ logs", "[web1]    | (could not run)",
                                  "[web1] <- undoing what this plan changed",
                                  "[web1]    ! undo `undo b` failed: the connection failed",
                                  "[web1]    ! undo `undo a` failed: the connection failed"]


def test_a_lost_connection_under_a_command_that_outlives_it_undoes_nothing(host):
    """A tracked migration keeps running on the host: undoing under it (removing its release,
    restarting the old colour on a half-migrated schema) is worse than leaving the host as it is."""
    a, migrate, logs = cmd("do", "a"), cmd("tracked", "migrate"), cmd("logs")
    host.transport.drop(line(migrate))
    with pytest.raises(Detached) as failed:
        execute(host.remote, plan(Step("prepare", (a,), undo=(cmd("undo", "a"),)),
                                  Step("migrate", (migrate,), undo=(cmd("undo", "m"),), diagnose=(logs,),
                                       outlives_connection=True),
                                  Step("start", (cmd("do", "start"),))))
    assert isinstance(failed.value, StepFailed) and failed.value.completed == ["prepare"]
    assert str(failed.value) == "web1: migrate: connection dropped (memory transport)"
    assert host.transport.commands == lines(a, migrate), "no diagnosis, no undo"


def test_a_deploy_whose_lock_was_taken_stops_before_its_next_command_and_undoes_nothing(host):
    a, b = cmd("do", "a"), cmd("do", "b")
    host.transport.on(line(a), lambda: setattr(host.interrupt, "lost", "web1: the deploy lock is no longer ours"))
    with pytest.raises(LockLost, match="^web1: the deploy lock is no longer ours$") as failed:
        execute(host.remote, plan(Step("prepare", (a,), undo=(cmd("undo", "a"),)), Step("upload", (b,))))
    assert host.transport.commands == [line(a)] and failed.value.completed == ["prepare"]


def test_the_running_step_is_known_for_the_lease(host):
    seen = []
    host.transport.on("do a", lambda: seen.append(host.remote.step))
    execute(host.remote, plan(Step("prepare", (cmd("do", "a"),), label="prepare release")))
    assert seen == ["prepare release"]


def test_a_put_the_connection_drops_on_fails_its_step_and_undo_runs(host):
    put = Put("/srv/app/site.conf", b"server {}\n")
    host.transport.drop(call=2)  # the put: a broken channel, the connection itself survives
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("upload", (cmd("mkdir", "/srv/app"), put), undo=(cmd("rm", "-r", "/srv/app"),), label="config")))
    assert str(failed.value) == "web1: config: connection dropped (memory transport)"
    assert host.transport.calls == ["mkdir /srv/app", Written(put.path, put.content, 0o644), "rm -r /srv/app"]


def test_a_put_goes_through_the_transport_with_its_mode_and_secret_content_is_never_printed():
    host = _host(secrets=())  # nothing masked: the content must not be printed at all
    env = Put("/srv/app/app.env", f"SECRET_KEY={SECRET}\n".encode(), mode=0o600, secret=True)
    after = cmd("chown", "app", env.path)
    host.transport.answer(line(after), exited=1)
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("upload", (env, after), undo=(cmd("rm", env.path),),
                                       diagnose=(cmd("ls", "-l", env.path),), label="env file")))
    assert host.transport.calls == [Written(env.path, env.content, 0o600), line(after),
                                    f"ls -l {env.path}", f"rm {env.path}"]
    assert SECRET not in host.out.getvalue() and SECRET not in str(failed.value)


def test_streamed_output_is_shown_line_by_line_prefixed_and_masked(host):
    pull, config = cmd("docker", "compose", "pull", stream=True), cmd("docker", "compose", "config")
    host.transport.answer(line(pull), stdout=f"pulling web\nlogin {SECRET} ok\nlast", stderr="warning: slow\n")
    host.transport.answer(line(config), stdout="captured, not shown\n")
    execute(host.remote, plan(Step("pull", (pull, config))))
    assert host.printed() == ["[web1] -> pull", "[web1]     pulling web", f"[web1]     login {MASK} ok",
                              "[web1]     warning: slow", "[web1]     last", "[web1]    ok pull (0.0s)"]


def test_quiet_lines_are_dropped_from_streamed_output_and_from_failures(host):
    noise = "noise: volume [a-z]+ again"
    up = dataclasses.replace(cmd("docker", "compose", "run", stream=True), quiet=noise)
    host.transport.answer(line(up), stdout="migrating\n", stderr="noise: volume media again\nreal problem\n")
    execute(host.remote, plan(Step("migrate", (up,))))
    assert host.printed()[1:3] == ["[web1]     migrating", "[web1]     real problem"]
    failing = dataclasses.replace(cmd("docker", "compose", "up"), quiet=noise)
    host.transport.answer(line(failing), exited=1, stderr="noise: volume media again\nno such image\n")
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("start", (failing,))))
    assert failed.value.details == ["no such image"]


def test_a_poll_retries_until_it_answers_what_is_expected(host, clock):
    poll = Poll(("curl", "-fsS", "http://127.0.0.1/version"), timeout=30, interval=10, expect=SHA)
    host.transport.answer(line(poll), exited=7, stderr="connection refused\n", times=1)
    host.transport.answer(line(poll), stdout="aaaaaaa\n", times=1)
    host.transport.answer(line(poll), stdout=SHA + "0" * 33 + "\n")  # the full SHA of the abbreviated one
    outcome = execute(host.remote, plan(Step("ready", (poll,))))
    assert host.transport.commands == [line(poll)] * 3 and clock.slept == [10, 10]
    assert outcome.steps == [("ready", 20.0)]
    assert "[web1]    ... still waiting (10s of 30s)" in host.printed()


def test_a_poll_times_out_naming_its_last_answer(host, clock):
    poll = Poll(("curl", "-fsS", "http://127.0.0.1/version"), timeout=30, interval=10, expect=SHA)
    host.transport.answer(line(poll), stdout="aaaaaaa\n")
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("ready", (poll,), undo=(cmd("stop"),))))
    assert host.transport.commands == [line(poll)] * 4 + ["stop"] and clock.now == 30
    assert str(failed.value) == f"web1: not ready after 30s:\n  - answered 'aaaaaaa', expected '{SHA}'"


def test_a_poll_that_never_succeeds_shows_the_tail_of_its_output(host):
    poll = Poll(("curl", "-fsS", "http://127.0.0.1/ready"), timeout=5, interval=5)
    host.transport.answer(line(poll), exited=22, stderr=f"curl: (22) 503 {SECRET}\n")
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("ready", (poll,))))
    assert str(failed.value) == f"web1: not ready after 5s:\n  - curl: (22) 503 {MASK}"


@pytest.mark.parametrize("stderr, meaning", [
    ("curl: (22) The requested URL returned error: 404", "answered HTTP 404: the app has no /readyz; set READY_PATH "
                                                         "to the path it answers"),
    ("curl: (22) The requested URL returned error: 400 Bad Request",
     "answered HTTP 400: the app refuses the request, often its Host header (localhost, the first name of "
     "SERVER_NAME), as Django does for a name not in ALLOWED_HOSTS"),
    ("curl: (22) The requested URL returned error: 503", "answered HTTP 503"),
    ("curl: (7) Couldn't connect to server", "nothing listens on the green colour's socket: an app that binds a "
                                             "TCP port (gunicorn --bind on its command line) needs WEB_PORT "
                                             "(LISTEN=port for processes)"),
    ("something else", ""),
])
def test_a_readiness_gate_that_fails_names_its_key_and_the_answer(host, clock, local_config, stderr, meaning):
    from deploytasks import traffic

    [poll] = traffic.readiness(local_config, "green").actions
    host.transport.answer(line(poll), exited=22, stderr=stderr + "\n")
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("ready", (poll,))))
    headline = f"web1: GET /readyz (READY_PATH) on the green colour's socket: not ready after {poll.timeout:g}s"
    assert str(failed.value) == f"{headline}{': ' + meaning if meaning else ''}:\n  - {stderr}"


def test_the_check_through_nginx_names_version_path(host, clock, local_config):
    from deploytasks import traffic

    [poll] = traffic.verify(local_config, SHA, "green").actions
    host.transport.answer(line(poll), exited=22, stderr="curl: (22) The requested URL returned error: 502\n")
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("verify", (poll,))))
    assert str(failed.value).splitlines()[0] == ("web1: GET /version (VERSION_PATH) through nginx: not ready after "
                                                 f"{poll.timeout:g}s: answered HTTP 502:")


def test_the_check_through_nginx_without_version_path_names_health_path(host, clock, local_config):
    from deploytasks import traffic

    config = dataclasses.replace(local_config, version_path="")
    [poll] = traffic.verify(config, SHA, "green").actions
    host.transport.answer(line(poll), exited=22, stderr="curl: (22) The requested URL returned error: 404\n")
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("verify", (poll,))))
    assert str(failed.value).splitlines()[0] == (
        f"web1: GET /healthz (HEALTH_PATH) through nginx: not ready after {poll.timeout:g}s: answered HTTP 404: the "
        "app has no /healthz; set HEALTH_PATH to the path it answers:")


# --- undo that knows what serves ---------------------------------------------------------------------

def test_a_switch_that_cannot_be_undone_keeps_what_serves(host):
    """The switch's undo fails: removing the new colour would leave nginx pointing at nothing."""
    start, switch, verify = cmd("compose", "up", "green"), cmd("links", "green"), cmd("curl", "version")
    remove, back = cmd("compose", "rm", "green"), cmd("links", "blue")
    host.transport.answer("curl version", exited=1).answer("links blue", exited=1, stderr="mv: cannot move\n")
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("start", (start,), undo=(remove,)),
                                  Step("switch", (switch,), undo=(back,), barrier=True), Step("verify", (verify,))))
    assert host.transport.commands == lines(start, switch, verify, back, back), "the new colour is never removed"
    assert not failed.value.undone and executor.UNDO_BLOCKED in failed.value.details
    assert "[web1]    ! switch could not be undone: the undos before it are skipped" in host.printed()


def test_a_barrier_undone_lets_the_older_undos_run(host):
    start, switch, verify = cmd("compose", "up", "green"), cmd("links", "green"), cmd("curl", "version")
    remove, back = cmd("compose", "rm", "green"), cmd("links", "blue")
    host.transport.answer("curl version", exited=1)
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("start", (start,), undo=(remove,)),
                                  Step("switch", (switch,), undo=(back,), barrier=True), Step("verify", (verify,))))
    assert host.transport.commands == lines(start, switch, verify, back, remove) and failed.value.undone


def test_undo_after_a_dropped_connection_runs_on_a_fresh_one():
    broken, fresh, interrupt, out = MemoryTransport("web1"), MemoryTransport("web1"), Interrupt(), io.StringIO()
    remote = Remote(broken, Console("web1", stream=out), interrupt, reopen=lambda: fresh)
    start, switch = cmd("compose", "up", "green"), cmd("links", "green")
    remove, back = cmd("compose", "rm", "green"), cmd("links", "blue")
    broken.drop(lambda command: command == "curl version", stays=True)
    with pytest.raises(StepFailed) as failed:
        execute(remote, plan(Step("start", (start,), undo=(remove,)),
                             Step("switch", (switch,), undo=(back,), barrier=True), Step("verify", (cmd("curl", "version"),))))
    assert fresh.commands == lines(back, remove) and failed.value.undone
    assert remote.transport is fresh and "[web1]    reconnected" in out.getvalue().splitlines()


def test_undo_when_no_connection_can_be_had_stops_at_the_barrier():
    broken, interrupt, out = MemoryTransport("web1"), Interrupt(), io.StringIO()

    def unreachable():
        raise TransportError("host unreachable")

    remote = Remote(broken, Console("web1", stream=out), interrupt, reopen=unreachable)
    broken.drop(lambda command: command == "curl version", stays=True)
    with pytest.raises(StepFailed) as failed:
        execute(remote, plan(Step("start", (cmd("up"),), undo=(cmd("rm"),)),
                             Step("switch", (cmd("links", "green"),), undo=(cmd("links", "blue"),), barrier=True),
                             Step("verify", (cmd("curl", "version"),))))
    assert not failed.value.undone
    assert broken.commands.count("rm") == 0 and "cannot reconnect: host unreachable" in out.getvalue()


# --- bounds: every command runs within its timeout on the host --------------------------------------

def test_every_command_goes_to_the_host_with_its_own_bound_or_timeout_command():
    transport = MemoryTransport("web1")
    remote = Remote(transport, Console("web1", stream=io.StringIO()), Interrupt(), command_timeout=45)
    pull = cmd("docker", "compose", "pull", stream=True).bounded(600, "TIMEOUT_PULL")
    link = cmd("ln", "-s", "a", "b", unless=("test", "-L", "b"))
    stop = cmd("docker", "compose", "stop").bounded(40, "TIMEOUT_STOP")
    probe = Poll(("curl", "-fsS", "http://127.0.0.1/ready"), timeout=5, interval=1)
    transport.answer("test -L b", exited=1).answer("false", exited=1)
    with pytest.raises(StepFailed):
        execute(remote, plan(Step("pull", (pull,)), Step("switch", (link, probe), undo=(stop,)),
                             Step("verify", (cmd("false"),), diagnose=(cmd("docker", "compose", "ps"),))))
    assert transport.bounds == [("docker compose pull", 600), ("test -L b", 45), ("ln -s a b", 45),
                                (line(probe), 45), ("false", 45), ("docker compose ps", 45),
                                ("docker compose stop", 40)]


def _stopped_at_its_bound(host, clock, command: str, seconds: float, exited: int = 124) -> None:
    """The host's `timeout` ends `command` after `seconds`: that much time passes, then its exit code."""
    host.transport.answer(command, exited=exited).on(command, lambda: clock.sleep(seconds))


@pytest.mark.parametrize("exited", [124, 137], ids=["ended on TERM", "had to be killed"])
def test_a_command_stopped_at_its_bound_fails_its_step_naming_the_key(host, clock, exited):
    pull = cmd("docker", "compose", "pull", stream=True).bounded(600, "TIMEOUT_PULL")
    undo = cmd("rm", "-rf", "/srv/app/releases/new")
    _stopped_at_its_bound(host, clock, "docker compose pull", 600, exited)
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("prepare", (cmd("mkdir", "/srv/app"),), undo=(undo,)),
                                  Step("pull", (pull,), label="pull images")))
    assert str(failed.value) == "web1: `docker compose pull` timed out after 600s (TIMEOUT_PULL)"
    assert host.transport.commands == ["mkdir /srv/app", "docker compose pull", line(undo)], "undone as any failure"


def test_exit_124_before_the_bound_is_the_commands_own_exit_code(host):
    host.transport.answer("check", exited=124)
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("verify", (cmd("check").bounded(600, "TIMEOUT_PULL"),))))
    assert str(failed.value) == "web1: `check` failed (exit 124)"


def test_a_command_without_a_class_is_stopped_at_timeout_command(host, clock):
    _stopped_at_its_bound(host, clock, "nginx -s reload", 120)
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("nginx-site", (cmd("nginx", "-s", "reload"),))))
    assert str(failed.value) == "web1: `nginx -s reload` timed out after 120s (TIMEOUT_COMMAND)"


def test_reading_state_that_hangs_says_it_timed_out(host, clock):
    _stopped_at_its_bound(host, clock, "sh -c 'docker ps'", 120, exited=137)
    with pytest.raises(StepFailed, match=r"^web1: reading the host's state timed out after 120s \(TIMEOUT_COMMAND\)$"):
        host.remote.check(("sh", "-c", "docker ps"), "reading the host's state")


def test_a_timed_out_undo_or_diagnosis_says_so_and_the_rest_still_run(host, clock):
    stop, remove = cmd("docker", "compose", "stop").bounded(40, "TIMEOUT_STOP"), cmd("rm", "-rf", "/srv/new")
    host.transport.answer("start", exited=1)
    _stopped_at_its_bound(host, clock, "docker compose stop", 40)
    _stopped_at_its_bound(host, clock, "docker compose ps", 120)
    with pytest.raises(StepFailed):
        execute(host.remote, plan(Step("prepare", (cmd("mkdir", "/srv/new"),), undo=(remove,)),
                                  Step("start", (cmd("start"),), undo=(stop,), diagnose=(cmd("docker", "compose", "ps"),))))
    assert host.printed()[3:] == ["[web1]    | $ docker compose ps", "[web1]    | timed out after 120s (TIMEOUT_COMMAND)",
                                  "[web1] <- undoing what this plan changed",
                                  "[web1]    ! undo `docker compose stop` failed: timed out after 40s (TIMEOUT_STOP)"]
    assert host.transport.commands[-1] == "rm -rf /srv/new"


def test_a_command_never_answered_fails_its_step_naming_its_bound_and_undo_runs(host):
    migrate = cmd("docker", "compose", "run", "web", "migrate", f"--token={SECRET}").bounded(1800, "TIMEOUT_MIGRATE")
    host.transport.stall(re.compile("migrate"))
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("prepare", (cmd("mkdir", "/srv/new"),), undo=(cmd("rm", "-r", "/srv/new"),)),
                                  Step("migrate", (migrate,))))
    assert str(failed.value) == (f"web1: migrate: `docker compose run web migrate --token={MASK}`: no answer (memory "
                                 "transport), though the host stops it after 1800s (TIMEOUT_MIGRATE): the host or the "
                                 "connection is stuck")
    assert host.transport.commands[-1] == "rm -r /srv/new"


# --- Ctrl-C and SIGTERM, for real: signals sent to this process inside interruptible() ---------------

def _signal(signum: int) -> None:
    os.kill(os.getpid(), signum)  # the handler runs in this (the main) thread before os.kill returns to us


def _closed(transport: MemoryTransport) -> bool:
    """The abort closes connections from a thread of its own: give it a moment."""
    for thread in [t for t in threading.enumerate() if t.name == "abort-close"]:
        thread.join(5)
    return transport.closed


@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGTERM),
                                           (signal.SIGINT, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT)],
                         ids=["INT INT", "TERM TERM", "INT TERM", "TERM INT"])
def test_the_second_signal_of_either_kind_aborts_at_once_and_says_so_once(capsys, first, second):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    transport = MemoryTransport("web1")
    with executor.interruptible() as interrupt:
        remote = Remote(transport, Console("web1", stream=io.StringIO()), interrupt)
        _signal(first)
        assert interrupt and not interrupt.aborted and not transport.closed, "the first only asks to stop"
        with pytest.raises(KeyboardInterrupt):
            _signal(second)
        assert interrupt.aborted and _closed(transport), "the connection is cut: no command waits on the host"
        with pytest.raises(KeyboardInterrupt):
            _signal(signal.SIGTERM)  # a third is not needed, and says nothing more
    assert capsys.readouterr().err.splitlines() == [
        "! interrupted: finishing the current command, then undoing (Ctrl-C again to abort now)",
        "! interrupted again: aborting now, without undoing; the deploy lock is kept"]
    assert {sig: signal.getsignal(sig) for sig in before} == before
    remote.close()


def test_a_hard_abort_inside_the_lock_keeps_the_lock(local_config, capsys):
    from deploytasks import locking
    from deploytasks.layout import Layout

    transport, out = MemoryTransport("web1"), io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        with executor.interruptible() as interrupt:
            remote = Remote(transport, Console("web1", stream=out), interrupt)
            with locking.locked(remote, Layout.of(local_config), "deploy", SHA):
                _signal(signal.SIGTERM)
                _signal(signal.SIGTERM)
    assert "mktemp" in transport.commands[0], "taken"
    assert not any('"$lock.$token"' in command for command in transport.commands), "never released"
    assert _closed(transport)
    assert out.getvalue().splitlines()[-1] == (
        "[web1] ! aborted mid-step: the deploy lock is kept, as the host may be half-way through a command; "
        "the next deploy takes it over once this connection is gone and nothing it registered still runs "
        "(`status` shows it)")


# --- commands in messages are shortened by whole arguments -------------------------------------------

RELEASE_DIR = "/srv/shop/releases/20240102T000000Z-" + "b" * 40
UP = ("docker", "compose", "-p", "shop-green", "--env-file", f"{RELEASE_DIR}/compose.env",
      "-f", f"{RELEASE_DIR}/compose/compose.yml", "-f", f"{RELEASE_DIR}/compose.deploy.yml",
      "up", "-d", "--no-deps", "--force-recreate", "--wait", "--wait-timeout", "120", "web")


@pytest.mark.parametrize("argv", [UP, ("sh", "-c", "set -e\n" + "echo step\n" * 40, "sh", "/srv/shop/run/web.sock"),
                                  ("ls", "x" * 400), tuple("abcdefghij" * 30), ("cp", f"{RELEASE_DIR}/a", "/tmp/b")])
@pytest.mark.parametrize("limit", [80, 120, 150, 200])
def test_brief_elides_whole_arguments_only(argv, limit):
    shown = executor.brief(argv, limit)
    assert len(shown) <= limit
    whole = {shlex.quote(arg) for arg in argv} | {executor.ELIDED}
    assert all(word in whole for word in shown.split(" ")), shown  # no argument cut in the middle
    if len(shlex.join(argv)) <= limit:
        assert shown == shlex.join(argv)


def test_brief_keeps_what_runs_and_what_it_does():
    assert executor.brief(UP) == ("docker compose -p shop-green … up -d --no-deps --force-recreate --wait "
                                  "--wait-timeout 120 web")
    assert executor.brief(("sh", "-c", "a\nb\n" * 50, "sh", "/srv/shop/run/web.sock")) == \
        "sh -c … sh /srv/shop/run/web.sock"


def test_a_failed_commands_message_shows_it_briefly_and_masked(host):
    failing = cmd(*UP[:-1], SECRET)
    host.transport.answer(line(failing), exited=1, stderr="boom\n")
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("start", (failing,))))
    assert str(failed.value).splitlines()[0] == (
        f"web1: `docker compose -p shop-green … up -d --no-deps --force-recreate --wait --wait-timeout 120 {MASK}` "
        "failed (exit 1):")


def test_a_gate_whose_server_has_exited_fails_at_once_saying_so(host, clock):
    """A crashed colour fails the gate in seconds, not at HEALTH_TIMEOUT: the poll asks `gone`."""
    gone = ("sh", "-c", "compose ps")
    poll = Poll(("curl", "ready"), 120, 0.5, what="GET /readyz (READY_PATH)", gone=gone)
    host.transport.answer(line(poll), exited=7, stderr="curl: (7) Couldn't connect to server\n")
    host.transport.answer(shlex.join(gone), stdout="its web container has exited (exit code 3): see its logs below\n")
    with pytest.raises(StepFailed) as failed:
        execute(host.remote, plan(Step("ready", (poll,))))
    assert str(failed.value).startswith("web1: GET /readyz (READY_PATH): not ready and never will be: its web "
                                        "container has exited (exit code 3)")
    assert clock.now < 5, "it did not wait for the timeout"


def test_a_gate_keeps_waiting_while_gone_says_nothing_and_asks_it_only_now_and_then(host, clock):
    gone = ("sh", "-c", "compose ps")
    poll = Poll(("curl", "ready"), 10, 0.5, what="GET /readyz (READY_PATH)", gone=gone)
    host.transport.answer(line(poll), exited=7, stderr="curl: (7) Couldn't connect to server\n")
    host.transport.answer(shlex.join(gone), stdout="")
    with pytest.raises(StepFailed, match="not ready after 10s"):
        execute(host.remote, plan(Step("ready", (poll,))))
    probes, asked = host.transport.commands.count(line(poll)), host.transport.commands.count(shlex.join(gone))
    assert probes >= 20 and 1 <= asked <= probes // 3, (probes, asked)
