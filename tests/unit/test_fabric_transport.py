"""fabric_transport: how commands and files go through a Fabric connection, and what its
failures become; against a stand-in connection, no host."""
from __future__ import annotations

import io
import re
import types

import invoke
import paramiko
import pytest

from deploytasks.remote import fabric_transport
from deploytasks.remote.fabric_transport import FabricTransport
from deploytasks.remote.transport import Result, TransportError, Unanswered


class FakeSFTP:
    def __init__(self, calls: list, error: Exception | None):
        self.calls, self.error = calls, error

    def open(self, path, mode):
        if self.error:
            raise self.error
        self.calls.append(("open", path, mode))
        sftp = self

        class Handle:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                sftp.calls.append(("close",))

            def chmod(self, mode):
                sftp.calls.append(("chmod", mode))

            def write(self, data):
                sftp.calls.append(("write", data))

        return Handle()

    def posix_rename(self, old, new):
        self.calls.append(("rename", old, new))

    def mkdir(self, path, mode=0o777):
        if self.error:
            raise self.error
        self.calls.append(("mkdir", path, mode))

    def remove(self, path):
        self.calls.append(("remove", path))
        raise FileNotFoundError(path)  # the rename moved it

    def rmdir(self, path):
        self.calls.append(("rmdir", path))


class FakeParamikoTransport:
    def __init__(self):
        self.active = True

    def is_active(self):
        return self.active


class FakeConnection:
    host = "web1"

    def __init__(self, error: Exception | None = None, exited: int = 3):
        self.calls, self.error, self.exited = [], error, exited
        self.transport = FakeParamikoTransport()

    def run(self, command, **options):
        self.calls.append(("run", command, options))
        if self.error:
            raise self.error
        return invoke.runners.Result(stdout="out\n", stderr="err\n", exited=self.exited)

    def sftp(self):
        return FakeSFTP(self.calls, self.error)


def test_run_never_reads_stdin_never_raises_on_exit_and_shows_only_what_has_a_sink():
    conn, sink = FakeConnection(), io.StringIO()
    transport = FabricTransport(conn)
    assert transport.host == "web1"
    assert transport.run("ls /srv", out=sink) == Result(3, "out\n", "err\n")
    assert conn.calls == [("run", "ls /srv", {"warn": True, "hide": True, "in_stream": False,
                                              "out_stream": sink, "err_stream": None, "timeout": None})]


def test_a_bounded_command_runs_under_timeout_on_the_host_and_is_awaited_a_little_longer():
    conn = FakeConnection()
    FabricTransport(conn).run("sh -c 'pip install -r r.txt' sh", timeout=900)
    (_, line, options), = conn.calls
    # TERM at 900 s to the command's process group, KILL 10 s later; `&& true`: the login shell
    # forks timeout instead of exec'ing it, so even the KILL ends as exit 137
    assert line == "timeout -k 10 900 sh -c 'pip install -r r.txt' sh && true"
    assert options["timeout"] == 930


def test_a_command_outliving_the_local_wait_is_unanswered():
    timed_out = invoke.exceptions.CommandTimedOut(invoke.runners.Result(), 930)
    with pytest.raises(Unanswered) as raised:
        FabricTransport(FakeConnection(timed_out)).run("docker compose pull", timeout=900)
    assert str(raised.value) == "no answer within 930s" and raised.value.__cause__ is timed_out


def test_a_local_wait_that_ran_out_is_unanswered_even_when_invoke_misses_it(monkeypatch):
    """invoke closes the channel at `timeout` but raises CommandTimedOut only if its timer thread
    has already ended: racing it, it returns a result without an exit status instead."""
    clock = iter([0.0, 930.0])
    monkeypatch.setattr(fabric_transport, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    with pytest.raises(Unanswered, match="^no answer within 930s$"):
        FabricTransport(FakeConnection(exited=-1)).run("docker compose pull", timeout=900)


class DeadKeepalive:
    dead = "the host stopped answering: no answer to an SSH keepalive within 15s"


def test_a_channel_closed_under_a_command_is_a_transport_error_not_an_exit_code():
    conn = FakeConnection(exited=-1)  # what fabric returns when the channel closes without an exit status
    conn.transport.active = False
    with pytest.raises(TransportError, match="^the SSH connection closed$"):
        FabricTransport(conn).run("docker compose pull", timeout=600)
    alive = FakeConnection(exited=-1)  # killed by a signal, the connection still up: an exit code
    assert FabricTransport(alive).run("true").exited == -1


def test_a_connection_the_keepalive_declared_dead_fails_every_call_at_once():
    conn = FakeConnection(exited=-1)
    transport = FabricTransport(conn, DeadKeepalive())
    with pytest.raises(TransportError, match="^the host stopped answering"):
        transport.run("true")
    with pytest.raises(TransportError, match="^the host stopped answering"):
        transport.put("/srv/app/app.env", b"", 0o600)
    assert conn.calls == [], "fabric would open a new connection for it: it is never asked"


@pytest.mark.parametrize("error, shown", [
    (EOFError(), "EOFError: "),
    (OSError(32, "Broken pipe"), "BrokenPipeError: [Errno 32] Broken pipe"),
    (paramiko.SSHException("SSH session not active"), "SSHException: SSH session not active"),
])
def test_what_fabric_raises_when_the_connection_breaks_is_a_transport_error(error, shown):
    with pytest.raises(TransportError) as raised:
        FabricTransport(FakeConnection(error)).run("true")
    assert str(raised.value).startswith(shown) and raised.value.__cause__ is error


def test_put_sets_the_mode_before_any_byte_lands_then_renames():
    conn = FakeConnection()
    FabricTransport(conn).put("/srv/app/app.env", b"KEY=value\n", 0o600)
    private = conn.calls[0][1]
    assert re.fullmatch(r"/srv/app/\.deploytasks-put-[0-9a-f]{8}", private)
    staged = f"{private}/app.env"
    # created inside a directory only its owner can enter, so no one can open it before the chmod
    assert conn.calls == [("mkdir", private, 0o700), ("open", staged, "wb"), ("chmod", 0o600),
                          ("write", b"KEY=value\n"), ("close",), ("rename", staged, "/srv/app/app.env"),
                          ("remove", staged), ("rmdir", private)]


def test_a_refused_write_is_a_transport_error_naming_the_file():
    with pytest.raises(TransportError, match=r"^cannot write /srv/app/app\.env: PermissionError: .*denied"):
        FabricTransport(FakeConnection(PermissionError(13, "Permission denied"))).put("/srv/app/app.env", b"", 0o600)
