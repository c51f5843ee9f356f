"""A dead peer, a hung command and a hard abort over a real SSH connection (paramiko, Fabric and
our connect()), to an SSH server inside this process whose network a test can cut silently
(tests/unit/fake_sshd.py). Intervals are shortened to tenths of seconds; the logic is the same."""
from __future__ import annotations

import dataclasses
import io
import os
import signal
import threading
import time

import paramiko
import pytest
from fake_sshd import FakeSSHD

from deploytasks.remote import executor, fabric_transport
from deploytasks.remote.connection import connect
from deploytasks.remote.console import Console
from deploytasks.remote.executor import Remote
from deploytasks.remote.transport import TransportError, Unanswered


@pytest.fixture
def sshd():
    server = FakeSSHD()
    yield server
    server.close()


@pytest.fixture
def config(local_config, sshd, tmp_path):
    """The local environment pointed at the fake server: its key known, ours accepted, keepalive every 0.2 s."""
    known_hosts, key = tmp_path / "known_hosts", tmp_path / "id_ecdsa"
    known_hosts.write_text(sshd.known_hosts_line())
    paramiko.ECDSAKey.generate().write_private_key_file(str(key))
    return dataclasses.replace(local_config, ssh_port=sshd.port, ssh_user="deploy", ssh_key=str(key),
                               known_hosts=str(known_hosts), connect_timeout=5, ssh_alive_seconds=0.2,
                               ssh_alive_count=3)


@pytest.fixture
def transport(config):
    transport = connect(config, "127.0.0.1")
    yield transport
    transport.close()


def _remote(transport, interrupt=None) -> Remote:
    return Remote(transport, Console("127.0.0.1", stream=io.StringIO()), interrupt, command_timeout=7)


def _later(seconds: float, action) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.start()
    return timer


def test_each_command_reaches_the_host_under_its_bound(transport, sshd):
    result = _remote(transport).run(("echo", "a b"))
    assert result.ok and result.stdout == "ok\n"
    assert sshd.commands == ["timeout -k 10 7 echo 'a b' && true"]


def test_a_host_that_answers_its_keepalives_keeps_the_connection(transport):
    result = _remote(transport).run(("sleep-1.5",))  # seven keepalive intervals, each answered
    assert result.ok and transport.keepalive.dead == ""


def test_a_silent_network_cut_fails_the_running_command_within_seconds(transport, sshd):
    remote = _remote(transport)
    _later(0.3, sshd.cut)
    started = time.monotonic()
    with pytest.raises(TransportError) as failed:
        remote.run(("hang",))  # without the keepalive: until TCP gives up, many minutes
    assert time.monotonic() - started < 3, "SSH_ALIVE_SECONDS x SSH_ALIVE_COUNT is 0.6 s here"
    assert str(failed.value) == ("the host stopped answering: no answer to an SSH keepalive within 0.6s "
                                 "(SSH_ALIVE_SECONDS=0.2 x SSH_ALIVE_COUNT=3); the connection was closed")
    started = time.monotonic()
    with pytest.raises(TransportError, match="^the host stopped answering"):
        remote.run(("echo",))  # an undo after it: no reconnection, no CONNECT_TIMEOUT wait
    with pytest.raises(TransportError, match="^the host stopped answering"):
        remote.transport.put("/srv/app/app.env", b"", 0o600)
    assert time.monotonic() - started < 0.5


def test_a_command_the_host_never_ends_is_given_up_on_and_the_connection_still_serves(transport, sshd, monkeypatch):
    monkeypatch.setattr(fabric_transport, "KILL_AFTER", 0)  # the local wait: bound + KILL_AFTER + ANSWER_SLACK
    monkeypatch.setattr(fabric_transport, "ANSWER_SLACK", 0.5)
    remote = Remote(transport, Console("127.0.0.1", stream=io.StringIO()), command_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(Unanswered) as failed:
        remote.run(("hang",))
    assert 0.9 < time.monotonic() - started < 3
    assert str(failed.value) == ("`hang`: no answer within 1s, though the host stops it after 0.5s "
                                 "(TIMEOUT_COMMAND): the host or the connection is stuck")
    assert _remote(transport).run(("echo",)).ok, "a stuck command is no dead connection"


def test_a_second_sigterm_mid_command_aborts_at_once(config, sshd):
    """Without cutting the connection, invoke would wait for the remote command's output to end
    before letting the KeyboardInterrupt out (it joins its reader threads first)."""
    with executor.interruptible() as interrupt:
        remote = _remote(connect(config, "127.0.0.1"), interrupt)
        for at in (0.3, 0.6):
            _later(at, lambda: os.kill(os.getpid(), signal.SIGTERM))
        guard = _later(10, remote.close)  # the test must end even if the abort does not
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            remote.run(("hang",))
        guard.cancel()
    assert time.monotonic() - started < 3
    assert not remote.transport.conn.is_connected
