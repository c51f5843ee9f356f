"""The Transport over an open Fabric connection: commands over SSH, files over SFTP.

Whatever Fabric, paramiko or the socket raise when the connection or a channel breaks becomes
a TransportError here, so nothing above this module catches library exceptions.
"""
from __future__ import annotations

import posixpath
import time
import uuid
from contextlib import contextmanager

import invoke
import paramiko
from fabric import Connection

from .keepalive import Keepalive
from .transport import KILL_AFTER, Result, Sink, TransportError, Unanswered, bounded

# what a dropped connection, a refused SFTP or a broken channel raises under Fabric
_BROKEN = (OSError, EOFError, paramiko.SSHException, invoke.exceptions.Failure)
# how much longer than the host's own bound (and its KILL) we wait for a command's end
ANSWER_SLACK = 20


@contextmanager
def _as_transport_error(what: str = ""):
    try:
        yield
    except invoke.exceptions.CommandTimedOut as exc:  # we stopped waiting: the channel is closed
        raise Unanswered(f"no answer within {exc.timeout:g}s") from exc
    except _BROKEN as exc:
        raise TransportError(f"{what}{type(exc).__name__}: {exc}") from exc


class FabricTransport:
    def __init__(self, conn: Connection, keepalive: Keepalive | None = None):
        self.conn, self.keepalive = conn, keepalive
        self.host: str = conn.host

    def run(self, command: str, *, out: Sink | None = None, err: Sink | None = None,
            timeout: float | None = None) -> Result:
        self._check_alive()
        line, wait = (command, None) if timeout is None else (bounded(command, timeout),
                                                              timeout + KILL_AFTER + ANSWER_SLACK)
        started = time.monotonic()
        # hide=True hides only the streams not given a sink: invoke shows output sent to out/err_stream
        with _as_transport_error():
            result = self.conn.run(line, warn=True, hide=True, in_stream=False, out_stream=out, err_stream=err,
                                   timeout=wait)
        if result.exited == -1:  # no exit status: the channel closed under the command
            self._check_alive()
            if wait is not None and time.monotonic() - started >= wait:
                # invoke closed it at `wait` but missed raising CommandTimedOut: it asks whether its
                # timer thread is still alive, and that thread may still be closing the channel
                raise Unanswered(f"no answer within {wait:g}s")
        return Result(result.exited, result.stdout, result.stderr)

    def put(self, path: str, content: bytes, mode: int) -> None:
        """Staged in a directory created 0700, so nobody can open the file before its mode is
        set (an fd opened while it was 0644 would read the secret as it lands), then renamed."""
        self._check_alive()
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

    def _check_alive(self) -> None:
        """A connection declared dead stays dead: Fabric would silently open a new one (without
        keepalive) for the next command, and every undo would wait CONNECT_TIMEOUT on it."""
        if self.keepalive and self.keepalive.dead:
            raise TransportError(self.keepalive.dead)
        transport = getattr(self.conn, "transport", None)
        if transport is not None and not transport.is_active():
            raise TransportError("the SSH connection closed")

    def close(self) -> None:
        if self.keepalive:
            self.keepalive.stop()
        self.conn.close()


def _quietly(call, path: str) -> None:
    """Clean up what may already be gone (the rename moved the file)."""
    try:
        call(path)
    except OSError:
        pass
