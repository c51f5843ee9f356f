"""The Transport over an open Fabric connection: commands over SSH, files over SFTP.

Whatever Fabric, paramiko or the socket raise when the connection or a channel breaks becomes
a TransportError here, so nothing above this module catches library exceptions.
"""
from __future__ import annotations

import posixpath
import uuid
from contextlib import contextmanager

import invoke
import paramiko
from fabric import Connection

from .transport import Result, Sink, TransportError

# what a dropped connection, a refused SFTP or a broken channel raises under Fabric
_BROKEN = (OSError, EOFError, paramiko.SSHException, invoke.exceptions.Failure)


@contextmanager
def _as_transport_error(what: str = ""):
    try:
        yield
    except _BROKEN as exc:
        raise TransportError(f"{what}{type(exc).__name__}: {exc}") from exc


class FabricTransport:
    def __init__(self, conn: Connection):
        self.conn = conn
        self.host: str = conn.host

    def run(self, command: str, *, out: Sink | None = None, err: Sink | None = None) -> Result:
        # hide=True hides only the streams not given a sink: invoke shows output sent to out/err_stream
        with _as_transport_error():
            result = self.conn.run(command, warn=True, hide=True, in_stream=False, out_stream=out, err_stream=err)
        return Result(result.exited, result.stdout, result.stderr)

    def put(self, path: str, content: bytes, mode: int) -> None:
        """Staged in a directory created 0700, so nobody can open the file before its mode is
        set (an fd opened while it was 0644 would read the secret as it lands), then renamed."""
        private = f"{posixpath.dirname(path)}/.deploytasks-put-{uuid.uuid4().hex[:8]}"
        staged = f"{private}/{posixpath.basename(path)}"
        with _as_transport_error(f"cannot write {path}: "):
            sftp = self.conn.sftp()
            sftp.mkdir(private, mode=0o700)
            try:
                with sftp.open(staged, "wb") as handle:
                    handle.chmod(mode)
                    handle.write(content)
                sftp.posix_rename(staged, path)
            finally:
                _quietly(sftp.remove, staged)
                _quietly(sftp.rmdir, private)

    def close(self) -> None:
        self.conn.close()


def _quietly(call, path: str) -> None:
    """Clean up what may already be gone (the rename moved the file)."""
    try:
        call(path)
    except OSError:
        pass
