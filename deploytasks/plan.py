"""The plan: named steps of argv commands and files, each with an optional undo.

A plan is plain data. It is what `--dry-run` prints, what unit tests compare, and what the
executor runs; nothing here imports fabric or knows how a command reaches a host.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass, field

from . import phases, shas


@dataclass(frozen=True)
class Cmd:
    """One remote command. `unless`: skip it when that command succeeds (idempotence).
    `timeout`: seconds the host lets it run, from the setting named by `timeout_key`; None: the
    bound of every other command (TIMEOUT_COMMAND), which the executor applies. `quiet`: a regex
    of output lines that are expected noise, never shown (a warning about what we do on purpose)."""

    argv: tuple[str, ...]
    unless: tuple[str, ...] | None = None
    stream: bool = False  # show output live (pulls, migrations) instead of only on failure
    timeout: float | None = None
    timeout_key: str = ""
    quiet: str = ""

    def bounded(self, seconds: float, key: str) -> Cmd:
        """This command with a bound of its own: `seconds`, set by the key `key`."""
        return dataclasses.replace(self, timeout=seconds, timeout_key=key)

    def __str__(self) -> str:
        notes = [f"unless: {shlex.join(self.unless)}"] if self.unless else []
        if self.timeout is not None:
            notes.append(f"timeout: {self.timeout:g}s ({self.timeout_key})")
        line = shlex.join(self.argv)
        return f"{line}    # {'; '.join(notes)}" if notes else line


@dataclass(frozen=True)
class Put:
    """A file written atomically (temp name, then rename) with the given mode."""

    path: str
    content: bytes = field(repr=False)
    mode: int = 0o644
    secret: bool = False  # never print its content

    def __str__(self) -> str:
        return f"put {self.path} (mode {self.mode:04o}, {len(self.content)} bytes)"


@dataclass(frozen=True)
class Poll:
    """Run argv every `interval` s until it succeeds (and prints `expect`, if set) or `timeout` s pass.
    `what` names what is asked (and the key that sets it) and `hints` say what a last output means,
    so the failure says "GET /readyz (READY_PATH) ...: answered HTTP 404", not only curl's words."""

    argv: tuple[str, ...]
    timeout: float
    interval: float
    expect: str | None = None
    what: str = ""
    hints: tuple[tuple[str, str], ...] = ()  # (regex over the last output, its meaning; \1: its group)
    # prints why waiting on is pointless (the server has exited), checked now and then while the
    # probe fails; empty output: keep waiting
    gone: tuple[str, ...] = ()

    def matches(self, output: str) -> bool:
        """The expected text (a SHA may be answered in full for an abbreviated one, or back)."""
        return output == self.expect or shas.same(output, self.expect)

    def gave_up(self, output: str) -> str:
        """Why the poll failed: what it asked, for how long, and what its last output means."""
        said = f"{self.what}: " if self.what else ""
        meaning = next((found.expand(text) for pattern, text in self.hints
                        for found in [re.search(pattern, output)] if found), "")
        return f"{said}not ready after {self.timeout:g}s" + (f": {meaning}" if meaning else "")

    def __str__(self) -> str:
        want = f" and prints {self.expect!r}" if self.expect else ""
        return f"poll every {self.interval:g}s for {self.timeout:g}s until it succeeds{want}: {shlex.join(self.argv)}"


@dataclass(frozen=True)
class Wait:
    """A pause with a reason: time for something we cannot observe from here to settle."""

    seconds: float
    why: str

    def __str__(self) -> str:
        return f"wait {self.seconds:g}s ({self.why})"


Action = Cmd | Put | Poll | Wait


@dataclass(frozen=True)
class Step:
    """One phase of a plan (see phases.py), shown as `label`. `undo` runs (in reverse plan
    order) when this or a later step fails; `diagnose` commands are run and shown when this
    step fails. A `best_effort` step comes after the point of no return: its failure is a
    warning, never a reason to undo. A `barrier` step's undo is what the undos before it
    depend on (the switch: traffic must be back before the new colour is removed): when it
    cannot be undone, they are skipped, so nothing that serves is taken away.
    An `outlives_connection` step's command keeps running on
    the host when the connection is lost (a tracked migration): nothing can then be undone under
    it, so nothing is, and the deploy lock stays until it ends."""

    phase: str
    actions: tuple[Action, ...]
    undo: tuple[Cmd, ...] = ()
    diagnose: tuple[Cmd, ...] = ()
    best_effort: bool = False
    label: str = ""
    barrier: bool = False
    outlives_connection: bool = False

    def __post_init__(self):
        if self.phase not in phases.ALL:
            raise ValueError(f"unknown phase {self.phase!r}")

    @property
    def name(self) -> str:
        """What users read: the label, or the phase itself."""
        return self.label or self.phase


@dataclass(frozen=True)
class Plan:
    """What one task will do on one host, and what to record when it is done."""

    kind: str  # deploy | rollback | maintenance ...
    sha: str
    steps: tuple[Step, ...]
    summary: dict = field(default_factory=dict)

    def __post_init__(self):
        seen = [step.phase for step in self.steps]
        twice = sorted({phase for phase in seen if seen.count(phase) > 1})
        if twice:  # history and hooks key on phases: each names one step
            raise ValueError(f"phase(s) {', '.join(twice)} appear twice in the {self.kind} plan")

    def describe(self) -> list[str]:
        """The plan as text: every command and every file, secrets masked."""
        lines = []
        for number, step in enumerate(self.steps, 1):
            lines.append(f"{number}. {step.name}")
            for action in step.actions:
                lines.append(f"     {action}")
                if isinstance(action, Put):
                    lines.extend(f"       | {line}" for line in _preview(action))
            lines.extend(f"     undo: {cmd}" for cmd in step.undo)
        return lines


PREVIEW_BYTES = 8192


def _preview(put: Put) -> list[str]:
    """A rendered file's text; not secrets, archives or anything large."""
    if put.secret:
        return ["<secret values not shown>"]
    if b"\0" in put.content or len(put.content) > PREVIEW_BYTES:
        return [f"<{len(put.content)} bytes, not shown>"]
    try:
        return put.content.decode().splitlines()
    except UnicodeDecodeError:
        return ["<binary>"]


def cmd(*argv: str, unless: tuple[str, ...] | list[str] | None = None, stream: bool = False) -> Cmd:
    return Cmd(tuple(str(a) for a in argv), tuple(unless) if unless else None, stream)


def sh(script: str, *args: str) -> tuple[str, ...]:
    """A small fixed shell script with values passed as positional arguments, never spliced in."""
    return ("sh", "-c", script, "sh", *args)
