"""Connections through the real sshd: known host keys only, clear errors, bounded waits."""
from __future__ import annotations

import socket
import subprocess
import time

import pytest

from deploytasks import operations
from deploytasks.errors import ConnectError

from .support import target_of


def test_status_over_ssh_says_nothing_deployed(fresh_host, capsys):
    operations.status(target_of(fresh_host))
    assert "[127.0.0.1] example (local): nothing deployed yet" in capsys.readouterr().out


def test_unknown_host_key_is_refused_with_how_to_accept(local_config, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(ConnectError) as error:
        operations.status(target_of(local_config, known_hosts=str(empty)))
    message = str(error.value)
    assert "host key unknown" in message
    assert f"ssh-keyscan -p 2222 127.0.0.1 >> {empty}" in message
    assert "--accept-new-host-key" in message
    assert empty.read_text() == ""


def test_accepting_a_new_host_key_saves_it(local_config, tmp_path, capsys):
    known = tmp_path / "known_hosts"
    target = target_of(local_config, known_hosts=str(known))
    operations.status(operations.Target(target.config, target.hosts, accept_new_host_key=True))
    assert known.read_text().startswith("[127.0.0.1]:2222 ssh-ed25519 ")
    operations.status(target)  # now known: no opt-in needed
    assert "example (local)" in capsys.readouterr().out


def test_changed_host_key_is_refused(local_config, tmp_path):
    forged = tmp_path / "known_hosts"
    # a valid ed25519 key that is not the server's
    forged.write_text("[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    with pytest.raises(ConnectError, match="host key CHANGED"):
        operations.status(target_of(local_config, known_hosts=str(forged)))


def test_refused_port_fails_at_once(local_config):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ConnectError, match=r"unreachable"):
        operations.status(target_of(local_config, ssh_port=free_port))
    assert time.monotonic() - started < 3


def test_silent_host_fails_within_connect_timeout(local_config):
    """A host whose SSH never answers (accept queue full: SYNs are dropped) fails after
    CONNECT_TIMEOUT with a clear message, not after the OS's minutes-long default."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectError, match=r"unreachable|SSH failed"):
            operations.status(target_of(local_config, ssh_port=port, connect_timeout=2.0))
        elapsed = time.monotonic() - started
        assert 1.5 <= elapsed < 6, elapsed
    finally:
        for filler in fillers:
            filler.close()
        server.close()


def test_refused_key_is_an_auth_error(local_config, tmp_path):
    other_key = tmp_path / "id_other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    with pytest.raises(ConnectError, match="authentication refused"):
        operations.status(target_of(local_config, ssh_key=str(other_key)))
