"""Hooks: the team's own executables in HOOKS_DIR, run on the deploying machine at fixed moments.

    pre-deploy     every host locked and read, nothing changed yet: failing aborts the deploy
    post-switch    traffic moved (once, after the last batch; or on each host as it switched)
    post-deploy    the deploy succeeded
    deploy-failed  it failed (undone, rolled back, or left for a repair)

This module finds and runs them; when they run and what a failure means is events.py's. A hook
runs in its own process group, so its timeout (HOOK_TIMEOUT) stops everything it started, and
its output comes back line by line as it is written. Nothing here knows about hosts.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PRE_DEPLOY, POST_SWITCH, POST_DEPLOY, DEPLOY_FAILED = "pre-deploy", "post-switch", "post-deploy", "deploy-failed"
NAMES = (PRE_DEPLOY, POST_SWITCH, POST_DEPLOY, DEPLOY_FAILED)
TAIL_LINES = 10  # the last lines of a failed hook's output, repeated in its error
KILL_GRACE = 5.0  # seconds between the TERM of a hook past its timeout and the KILL
READER_GRACE = 2.0  # seconds to wait for output still in the pipe once the hook has ended
POLL = 0.1


def problems(directory: Path) -> list[str]:
    """Hooks that are there but cannot run, found before any connection opens (a missing hook
    is simply not run: only a hook that exists was meant to)."""
    if directory.exists() and not directory.is_dir():
        return [f"HOOKS_DIR: {directory} is not a directory"]
    found = []
    for name in NAMES:
        path = directory / name
        if path.is_dir():
            found.append(f"HOOKS_DIR: {path} is a directory, not an executable")
        elif path.exists() and not os.access(path, os.X_OK):
            found.append(f"HOOKS_DIR: {path} is not executable: `chmod +x` it, or remove it")
    return found


def present(directory: Path) -> list[str]:
    """The hooks `directory` holds, in the order they would run."""
    return [name for name in NAMES if (directory / name).is_file()]


@dataclass(frozen=True)
class Ran:
    """How a hook ended: its exit code (negative: the signal that ended it), or why it was stopped."""

    name: str
    exited: int | None
    stopped: str = ""  # "timed out after 300s (HOOK_TIMEOUT)", "interrupted", "could not start: ..."
    tail: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.stopped and self.exited == 0

    def ending(self) -> str:
        if self.stopped:
            return self.stopped
        if self.exited is not None and self.exited < 0:
            return f"killed by signal {-self.exited}"
        return f"exit {self.exited}"


def run(path: Path, environment: Mapping[str, str], *, timeout: float, cwd: Path | None = None,
        show: Callable[[str], None] = print, stop: Callable[[], bool] = lambda: False) -> Ran:
    """Run one hook to its end, each line of its output (stdout and stderr) passed to `show` as
    it comes. Past `timeout` seconds, or once `stop()` says so (Ctrl-C), its process group gets
    TERM, then KILL KILL_GRACE seconds later."""
    started = time.monotonic()
    try:
        process = subprocess.Popen([str(path)], cwd=cwd, env=dict(environment), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as error:  # no shebang, a bad interpreter, a permission the check could not see
        return Ran(path.name, None, f"could not start: {error.strerror or error}")
    tail: deque[str] = deque(maxlen=TAIL_LINES)

    def read() -> None:
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            tail.append(line)
            show(line)

    reader = threading.Thread(target=read, name=f"hook-{path.name}", daemon=True)
    reader.start()
    stopped = ""
    try:
        while process.poll() is None:
            if stop():
                stopped = "interrupted"
            elif time.monotonic() - started >= timeout:
                stopped = f"timed out after {timeout:g}s (HOOK_TIMEOUT)"
            if stopped:
                _end(process)
                break
            time.sleep(POLL)
    except BaseException:  # Ctrl-C outside a deploy's own handling: the hook's group goes too
        _end(process)
        raise
    reader.join(READER_GRACE)  # a process the hook left behind may hold the pipe: not waited for
    return Ran(path.name, process.returncode, stopped, list(tail), time.monotonic() - started)


def _end(process: subprocess.Popen) -> None:
    """TERM to the hook's process group; KILL_GRACE seconds later (or as soon as the hook has
    gone), KILL to whatever of the group is left, so nothing it started outlives it."""
    _signal(process, signal.SIGTERM)
    try:
        process.wait(KILL_GRACE)
    except subprocess.TimeoutExpired:
        pass
    _signal(process, signal.SIGKILL)
    process.wait()


def _signal(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
