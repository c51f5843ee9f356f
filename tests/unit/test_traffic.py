"""traffic: the check through nginx (with or without VERSION_PATH), the static files' links the
switch moves, and the drain that waits for the old colour's connections. Plans as data, and
their small scripts run for real in `sh` against fakes or a real unix socket; no host."""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REL_NEW, REL_OLD, REPO, SHA_NEW, links

from deploytasks import config as configuration
from deploytasks import phases, traffic
from deploytasks.backends import containers
from deploytasks.layout import Layout
from deploytasks.plan import Cmd, Poll, Wait, cmd, sh

ROOT = "/srv/example"
linux_sh = pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("sh"), reason="needs a Linux sh")
needs_ss = pytest.mark.skipif(not shutil.which("ss"), reason="needs ss (iproute2)")


@pytest.fixture
def relayed_config(local_raw):
    """envs/local.env with its web service on a TCP port (WEB_PORT), and no VERSION_PATH."""
    return configuration.parse(REPO, "local", dict(local_raw, WEB_PORT="8000", WEB_HOST_PORTS="21000,21001",
                                                   VERSION_PATH=""), {})


@pytest.fixture
def static_config(local_config):
    return dataclasses.replace(local_config, static_url="/static/", static_path="/app/static")


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


# --- verify: the new version answers through nginx ---------------------------------------------------

def test_phases_put_the_static_files_between_ready_and_switch():
    assert phases.ALL.index(phases.READY) + 1 == phases.ALL.index(phases.ASSETS) == phases.ALL.index(phases.PROBE) - 1
    assert phases.ALL.index(phases.PROBE) + 1 == phases.ALL.index(phases.SWITCH), "the probe sees the switch"


def test_verify_with_version_path_expects_the_sha(local_config):
    step = traffic.verify(local_config, SHA_NEW, "green")
    [poll] = step.actions
    assert step.name == "check through nginx" and step.phase == phases.VERIFY
    assert poll.argv == ("curl", "-fsS", "--max-time", "5", "-H", "Host: localhost", "http://127.0.0.1:8080/version")
    assert poll.expect == SHA_NEW and poll.what == "GET /version (VERSION_PATH) through nginx"


def test_verify_with_version_path_expects_the_sha_when_relayed_too(relayed_config):
    [poll] = traffic.verify(dataclasses.replace(relayed_config, version_path="/version"), SHA_NEW, "green").actions
    assert poll.argv[0] == "curl" and poll.argv[-1] == "http://127.0.0.1:8080/version" and poll.expect == SHA_NEW


def test_verify_without_version_path_asks_the_health_path(local_config):
    config = dataclasses.replace(local_config, version_path="")
    [poll] = traffic.verify(config, SHA_NEW, "green").actions
    assert poll.argv == ("curl", "-fsS", "--max-time", "5", "-H", "Host: localhost", "http://127.0.0.1:8080/healthz")
    assert poll.expect is None, "a 2xx is all a health path promises"
    assert poll.what == "GET /healthz (HEALTH_PATH) through nginx"
    assert poll.timeout == min(config.health_timeout, 30) and poll.interval == config.health_interval


@pytest.mark.parametrize("colour", ["blue", "green"])
def test_verify_of_a_relayed_app_without_version_path_expects_the_colour(relayed_config, colour):
    [poll] = traffic.verify(relayed_config, SHA_NEW, colour).actions
    assert poll.argv == sh(traffic._ANSWERING_COLOUR, "-fsS", "--max-time", "5", "-H", "Host: localhost",
                           "http://127.0.0.1:8080/healthz")
    assert poll.expect == colour
    assert poll.what == f"GET /healthz (HEALTH_PATH) through nginx, answered by the {colour} colour (X-Deploy-Colour)"


FAKE_CURL = r"""#!/bin/sh
# answers with the headers in $FAKE_HEADERS (CRLF line ends, as a server sends them) on stdout
printf '%s\n' "$@" > "$FAKE_ARGS"
printf "$FAKE_HEADERS"
[ -n "$FAKE_STDERR" ] && echo "$FAKE_STDERR" >&2
exit "${FAKE_EXIT:-0}"
"""


def _answering(tmp_path, poll: Poll, headers: str, **env) -> subprocess.CompletedProcess:
    _executable(tmp_path / "bin" / "curl", FAKE_CURL)
    return subprocess.run(poll.argv, capture_output=True, text=True, timeout=10,
                          env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "FAKE_ARGS": str(tmp_path / "args"),
                               "FAKE_HEADERS": headers, **env})


@linux_sh
@pytest.mark.parametrize("headers, colour", [
    ("HTTP/1.1 200 OK\\r\\nServer: nginx\\r\\nX-Deploy-Colour: green\\r\\nContent-Length: 2\\r\\n\\r\\n", "green"),
    ("HTTP/2 200\\r\\nx-deploy-colour: blue\\r\\n\\r\\n", "blue"),  # HTTP/2 spells headers in lower case
    ("HTTP/1.1 200 OK\\r\\nServer: nginx\\r\\n\\r\\n", ""),  # not through a relay: no colour
])
def test_the_answering_colour_is_read_from_the_relay_header(tmp_path, relayed_config, headers, colour):
    [poll] = traffic.verify(relayed_config, SHA_NEW, "green").actions
    out = _answering(tmp_path, poll, headers)
    assert out.returncode == 0 and out.stdout.strip() == colour, out.stderr
    assert poll.matches(out.stdout.strip()) == (colour == "green")
    assert (tmp_path / "args").read_text().splitlines() == [
        "-fsS", "--max-time", "5", "-H", "Host: localhost", "http://127.0.0.1:8080/healthz", "-D", "-", "-o",
        "/dev/null"]


@linux_sh
def test_a_failed_request_for_the_answering_colour_fails_the_poll(tmp_path, relayed_config):
    [poll] = traffic.verify(relayed_config, SHA_NEW, "green").actions
    out = _answering(tmp_path, poll, "", FAKE_EXIT="22", FAKE_STDERR="curl: (22) The requested URL returned error: 502")
    assert out.returncode != 0 and "returned error: 502" in out.stderr


# --- the switch moves the static files first ----------------------------------------------------------

def test_switch_points_previous_then_live_static_files_first(static_config, blue_live_state):
    switch = traffic.switch(static_config, blue_live_state, "green", REL_NEW)
    mkdir, point = switch.actions
    assert mkdir.argv == ("mkdir", "-p", f"{ROOT}/run/static")
    assert links([point]) == [
        (f"../../releases/{REL_OLD}/.static", f"{ROOT}/run/static/previous"),
        (f"../../releases/{REL_NEW}/.static", f"{ROOT}/run/static/live"),
        (f"../releases/{REL_NEW}", f"{ROOT}/state/green"),
        ("green/web.sock", f"{ROOT}/run/web.sock"),
        (f"releases/{REL_NEW}", f"{ROOT}/current"),
    ]
    undo, settle = switch.undo
    # traffic back first, then the static files: the new colour's last pages still find theirs
    assert links([undo]) == [
        ("blue/web.sock", f"{ROOT}/run/web.sock"),
        (None, f"{ROOT}/state/green"),
        (f"releases/{REL_OLD}", f"{ROOT}/current"),
        (f"../../releases/{REL_NEW}/.static", f"{ROOT}/run/static/previous"),
        (f"../../releases/{REL_OLD}/.static", f"{ROOT}/run/static/live"),
    ]
    assert settle == cmd("sleep", "1")
    layout = Layout.of(static_config)
    for target, link in links([point])[:2]:  # relative targets: the deploy path can move
        resolved = os.path.normpath(os.path.join(os.path.dirname(link), target))
        assert resolved in (layout.static_dir(REL_OLD), layout.static_dir(REL_NEW))


def test_a_first_switch_has_no_previous_static_files(static_config, first_state):
    switch = traffic.switch(static_config, first_state, "blue", REL_NEW)
    assert links(switch.actions[1:])[:2] == [(None, f"{ROOT}/run/static/previous"),
                                             (f"../../releases/{REL_NEW}/.static", f"{ROOT}/run/static/live")]


def test_a_rollback_switch_serves_the_older_static_files_with_the_newer_as_fallback(static_config, green_live_state):
    switch = traffic.switch(static_config, green_live_state, "blue", REL_OLD)
    assert links(switch.actions[1:])[:2] == [(f"../../releases/{REL_NEW}/.static", f"{ROOT}/run/static/previous"),
                                             (f"../../releases/{REL_OLD}/.static", f"{ROOT}/run/static/live")]


def test_no_static_links_without_static_url(local_config, blue_live_state):
    switch = traffic.switch(local_config, blue_live_state, "green", REL_NEW)
    assert len(switch.actions) == 1 and not any("static" in link for _, link in links(switch.actions + switch.undo[:1]))


@linux_sh
def test_the_switch_and_its_undo_move_the_static_files_on_disk(tmp_path, static_config, blue_live_state):
    config = dataclasses.replace(static_config, deploy_path=str(tmp_path))
    for release, text in ((REL_OLD, "old"), (REL_NEW, "new")):
        (tmp_path / "releases" / release / ".static").mkdir(parents=True)
        (tmp_path / "releases" / release / ".static" / "app.css").write_text(text)
    (tmp_path / "run").mkdir(), (tmp_path / "state").mkdir()
    switch = traffic.switch(config, blue_live_state, "green", REL_NEW)
    for action in switch.actions:
        subprocess.run(action.argv, check=True, capture_output=True, timeout=10)
    static = tmp_path / "run" / "static"
    assert (static / "live" / "app.css").read_text() == "new" and (static / "previous" / "app.css").read_text() == "old"
    subprocess.run(switch.undo[0].argv, check=True, capture_output=True, timeout=10)
    assert (static / "live" / "app.css").read_text() == "old" and (static / "previous" / "app.css").read_text() == "new"


# --- the drain waits for the old colour's connections ------------------------------------------------

def test_drain_waits_for_connections_then_stops(local_config):
    stop = cmd("stop", "blue")
    step = traffic.drain(local_config, "blue", (stop,), None, ("print", "pid"))
    assert step.phase == phases.DRAIN and step.name == "drain blue" and step.best_effort
    settle, connections, stopping = step.actions
    assert isinstance(settle, Wait) and settle.seconds == traffic.SETTLE_SECONDS
    assert connections.argv == sh(traffic._DRAIN, f"{ROOT}/run/blue/web.sock", "10", "print", "pid")
    assert (connections.timeout, connections.timeout_key) == (10 + 30, "DRAIN_TIMEOUT")
    assert stopping == stop


def test_drain_without_a_namespace_asks_this_host(local_config):
    config = dataclasses.replace(local_config, drain_timeout=0)
    _, connections, _ = traffic.drain(config, "green", (cmd("stop"),)).actions
    assert connections.argv == sh(traffic._DRAIN, f"{ROOT}/run/green/web.sock", "0")
    assert (connections.timeout, connections.timeout_key) == (30, "DRAIN_TIMEOUT")


def test_a_relayed_colour_drains_nginx_relay_socket_on_this_host(relayed_config, blue_live_state):
    from conftest import container_deploy

    plan = container_deploy(relayed_config, blue_live_state, SHA_NEW, REL_NEW)
    drain = next(s for s in plan.steps if s.name == "drain blue")
    assert drain.actions[1].argv == sh(traffic._DRAIN, f"{ROOT}/run/blue/web.relay.sock", "10")


def test_a_container_colour_drains_its_socket_by_the_path_its_server_bound(local_config, blue_live_state):
    from conftest import container_deploy

    plan = container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW)
    connections = next(s for s in plan.steps if s.name == "drain blue").actions[1]
    assert connections.argv[4] == "/run/deploytasks/web.sock"


class _Old:
    colour = "blue"

    def stop(self) -> Cmd:
        return cmd("stop", "blue")

    def listener(self) -> tuple[str, tuple[str, ...]]:
        return "/run/app/blue.sock", ("pid", "of", "blue")


def test_switch_over_drains_the_old_colour_with_its_stop_and_namespace(local_config, blue_live_state, first_state):
    switch, verify, watch, drain = traffic.switch_over(local_config, blue_live_state, "green", REL_NEW, SHA_NEW, _Old())
    assert (switch.name, verify.name, watch.name, drain.name) == ("switch to green", "check through nginx", "watch 2s",
                                                                  "drain blue"), "the old colour drains after the watch"
    assert drain.actions[1].argv[-3:] == ("pid", "of", "blue") and drain.actions[2] == cmd("stop", "blue")
    assert [s.name for s in traffic.switch_over(local_config, first_state, "blue", REL_NEW, SHA_NEW, None)] == [
        "switch to blue", "check through nginx"]


def _drain_run(config, colour, *netns, path="/usr/bin:/bin") -> subprocess.Popen:
    connections = traffic.drain(config, colour, (), None, netns).actions[1]
    return subprocess.Popen(connections.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PATH": path})


@pytest.fixture
def listening(tmp_path, local_config):
    """(config, server socket, sockets to close): blue's socket listening, DEPLOY_PATH under tmp_path."""
    config = dataclasses.replace(local_config, deploy_path=str(tmp_path / "srv"), drain_timeout=10)
    path = Layout.of(config).socket("blue")
    Path(path).parent.mkdir(parents=True)
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)
    opened = [server]
    yield config, server, opened
    for s in opened:
        s.close()


def _connect(config, opened) -> socket.socket:
    client = socket.socket(socket.AF_UNIX)
    client.connect(Layout.of(config).socket("blue"))
    opened.append(client)
    return client


@linux_sh
@needs_ss
def test_drain_ends_at_once_without_connections(listening):
    config, _, _ = listening
    out, err = _drain_run(config, "blue").communicate(timeout=10)
    assert out.startswith("drain: no connection left after ") and not err


@linux_sh
@needs_ss
@pytest.mark.parametrize("accepted", [True, False])
def test_drain_waits_until_the_last_connection_closes(listening, accepted):
    """An accepted connection (a long request, a WebSocket) and one still queued on the listening
    socket both keep the old colour draining."""
    config, server, opened = listening
    client = _connect(config, opened)
    conn = server.accept()[0] if accepted else None
    run = _drain_run(config, "blue")
    time.sleep(0.8)
    assert run.poll() is None, "still waiting for the open connection"
    if conn:
        conn.close()
    client.close()
    if not accepted:  # a queued connection stays until the server takes it
        server.accept()[0].close()
    started = time.monotonic()
    out, err = run.communicate(timeout=10)
    assert run.returncode == 0 and out.startswith("drain: no connection left after "), (out, err)
    assert time.monotonic() - started < 3


@linux_sh
@needs_ss
def test_drain_gives_up_after_drain_timeout_and_lets_the_stop_run(listening):
    config, server, opened = listening
    _connect(config, opened)
    opened.append(server.accept()[0])
    out, _ = _drain_run(dataclasses.replace(config, drain_timeout=0), "blue").communicate(timeout=10)
    assert out == "drain: 1 connection(s) still open after 0s (DRAIN_TIMEOUT): stopping the colour\n"


@linux_sh
@needs_ss
def test_drain_counts_only_the_connections_the_named_server_holds(listening):
    """A container's socket path is the same in both colours (and other apps): its connections are
    told apart by the pids holding them, which the command prints."""
    config, server, opened = listening
    _connect(config, opened)
    opened.append(server.accept()[0])  # held by this process
    ours = _drain_run(dataclasses.replace(config, drain_timeout=1), "blue", "echo", str(os.getpid()))
    out, err = ours.communicate(timeout=10)
    assert out == "drain: 1 connection(s) still open after 1s (DRAIN_TIMEOUT): stopping the colour\n", (out, err)
    other = _drain_run(dataclasses.replace(config, drain_timeout=1), "blue", "echo", "1")
    out, err = other.communicate(timeout=10)
    assert out.startswith("drain: no connection left after 0s"), (out, err)


@linux_sh
@pytest.mark.parametrize("printed", ["", "PID"])
def test_drain_does_not_wait_for_a_server_that_is_not_running(listening, printed):
    config, _, _ = listening
    out, err = _drain_run(config, "blue", "echo", printed).communicate(timeout=10)
    assert out == "drain: the colour's server is not running: no connection to wait for\n", (out, err)


def test_a_relayed_gate_that_gets_nginx_502_says_what_the_app_must_listen_on(relayed_config):
    [poll] = traffic.readiness(relayed_config, "green").actions
    assert poll.gave_up("curl: (22) The requested URL returned error: 502").endswith(
        "nothing answers on the app's port: it must listen on 0.0.0.0:8000 (published for the green colour on "
        "127.0.0.1:21001)")


@linux_sh
@pytest.mark.parametrize("states, said", [
    ("web running 0\nworker running 0", ""),
    ("web exited 3\nworker running 0", "its web container has exited (exit code 3): see its logs below"),
    ("web restarting 1", "its web container keeps restarting (last exit code 1): see its logs below"),
    ("", ""),
])
def test_a_container_colour_says_when_its_containers_stopped_for_good(local_config, states, said):
    [poll] = containers.ContainerColour(local_config, "green", REL_NEW).ready().actions
    script, args = poll.gone[2], poll.gone[4:]
    assert args[:2] == ("docker", "compose") and args[-5:] == ("ps", "-a", "--format",
                                                                "{{.Service}} {{.State}} {{.ExitCode}}", "web")
    out = subprocess.run(["sh", "-c", script, "sh", "printf", "%s\\n", states], capture_output=True, text=True)
    assert out.stdout.strip() == said


@linux_sh
def test_a_process_colour_says_when_its_server_has_exited(tmp_path, process_config):
    from deploytasks.backends import processes
    from deploytasks.facts import HostState

    config = dataclasses.replace(process_config, deploy_path=str(tmp_path))
    server = processes.AppServer(config, HostState(), "green", REL_NEW)
    [poll] = server.ready().actions
    Path(server.pidfile).parent.mkdir(parents=True)
    run = lambda: subprocess.run(poll.gone, capture_output=True, text=True).stdout.strip()  # noqa: E731
    assert run() == "", "no pid file yet: it may still be starting"
    Path(server.pidfile).write_text(f"{os.getpid()}\n")
    assert run() == ""
    dead = subprocess.Popen(["true"])
    dead.wait()
    Path(server.pidfile).write_text(f"{dead.pid}\n")
    assert run() == f"its server (pid {dead.pid}) has exited: see its log below"
