"""fabric_transport: how commands and files go through a Fabric connection, and what its
failures become; against a stand-in connection, no host."""
from __future__ import annotations

import io
import re

import invoke
import paramiko
import pytest

from deploytasks.remote.fabric_transport import FabricTransport
from deploytasks.remote.transport import Result, TransportError


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


class FakeConnection:
    host = "web1"

    def __init__(self, error: Exception | None = None):
        self.calls, self.error = [], error

    def run(self, command, **options):
        self.calls.append(("run", command, options))
        if self.error:
            raise self.error
        return invoke.runners.Result(stdout="out\n", stderr="err\n", exited=3)

    def sftp(self):
        return FakeSFTP(self.calls, self.error)


def test_run_never_reads_stdin_never_raises_on_exit_and_shows_only_what_has_a_sink():
    conn, sink = FakeConnection(), io.StringIO()
    transport = FabricTransport(conn)
    assert transport.host == "web1"
    assert transport.run("ls /srv", out=sink) == Result(3, "out\n", "err\n")
    assert conn.calls == [("run", "ls /srv", {"warn": True, "hide": True, "in_stream": False,
                                              "out_stream": sink, "err_stream": None})]


@pytest.mark.parametrize("error, shown", [
    (EOFError(), "EOFError: "),
    (OSError(32, "Broken pipe"), "BrokenPipeError: [Errno 32] Broken pipe"),
    (paramiko.SSHException("SSH session not active"), "SSHException: SSH session not active"),
    (invoke.exceptions.CommandTimedOut(invoke.runners.Result(), 5), "CommandTimedOut: Command did not complete"),
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
