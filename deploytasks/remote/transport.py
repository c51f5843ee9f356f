"""How a command or a file reaches a host: the one boundary the executor depends on.

Fabric implements it for real hosts (fabric_transport); the dev harness has an in-memory one
(harness/memory) so the executor's failure paths are unit-tested without a host.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..errors import DeployError


class TransportError(DeployError):
    """The connection is gone or its channel broke, or a file could not be written: what the
    command did, if anything, is unknown. A command's non-zero exit is not this: it is a Result.
    Outside a plan's steps (reading state, the lock) it reaches the user as one clear line."""


class Unanswered(TransportError):
    """A command outlived its bound on the host by more than the host needs to stop it: the host
    or the connection is stuck, and we stopped waiting."""


KILL_AFTER = 10  # seconds the host waits between the TERM and the KILL of a command past its bound
TIMED_OUT_EXITS = (124, 137)  # coreutils timeout: the command ended on the TERM / had to be killed


def bounded(command: str, seconds: float) -> str:
    """`command` under coreutils `timeout` on the host. At the bound it signals the command's
    whole process group, so the children of an `sh -c` script and the docker CLI's compose
    plugin stop too; KILL follows KILL_AFTER seconds later. `&& true` keeps the login shell from
    exec'ing `timeout` itself: its KILL takes its own group, itself included, and an exec'd
    timeout would end the session with a signal instead of exit 137."""
    return f"timeout -k {KILL_AFTER} {seconds:g} {command} && true"


@dataclass(frozen=True)
class Result:
    """A command that ran to its end. Always true, unlike invoke's Result (false when it failed):
    the executor's `if result` means "the command ran", a failed one included."""

    exited: int
    stdout: str = ""
    stderr: str = ""
    timed_out: str = ""  # set by the executor when the host stopped it at its bound: "600s (TIMEOUT_PULL)"

    @property
    def ok(self) -> bool:
        return self.exited == 0


class Sink(Protocol):
    """Where streamed output goes as it arrives (Console.writer() makes prefixed, masked lines of it)."""

    def write(self, data: str) -> object: ...

    def flush(self) -> None: ...


class Transport(Protocol):
    """One open connection to one host, reused by every command of a task."""

    host: str

    def run(self, command: str, *, out: Sink | None = None, err: Sink | None = None,
            timeout: float | None = None) -> Result:
        """Run a shell command line, no stdin; its output is captured, and also written to
        out/err when given. Raises TransportError, never on a non-zero exit. With `timeout`, the
        host stops the command after that many seconds (`bounded`: exit 124 or 137), and the
        caller is not kept waiting much longer than that (Unanswered)."""
        ...

    def put(self, path: str, content: bytes, mode: int) -> None:
        """Write a file atomically: a temp name with the final mode set before any byte lands,
        then a rename, so a reader never sees it half-written or briefly too open."""
        ...

    def close(self) -> None: ...
