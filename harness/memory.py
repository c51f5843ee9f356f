"""An in-memory Transport: the executor's paths (failures, undo, Ctrl-C, a dropped connection,
a command stopped at its bound or never answering) unit-tested without a host.

It records every command and put in order (and each command's bound), answers each command
with the first answer that matches it (exit 0 and no output when none does), and breaks where
a test says. A match is the exact command line, a regex searched in it, or a predicate on it;
for a put, on its path. A command the host stops at its bound is its exit code, 124 or 137,
once its bound has passed: `answer(match, exited=124)` plus an `on(match, ...)` that moves the
test's clock on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from deploytasks.remote.transport import Result, Sink, TransportError, Unanswered

Match = str | re.Pattern | Callable[[str], bool]


@dataclass(frozen=True)
class Written:
    """A put, as recorded."""

    path: str
    content: bytes
    mode: int


@dataclass
class _Answer:
    match: Match
    result: Result
    times: int | None  # uses left; None: every time


def _matches(match: Match, text: str) -> bool:
    if isinstance(match, str):
        return text == match
    if isinstance(match, re.Pattern):
        return match.search(text) is not None
    return match(text)


class MemoryTransport:
    def __init__(self, host: str = "memory"):
        self.host = host
        self.calls: list[str | Written] = []  # every command and put, in order, failed ones included
        self.bounds: list[tuple[str, float | None]] = []  # every command with the `timeout` it was given
        self.closed = False
        self.dropped = False  # a drop that stays happened: every call raises
        self._answers: list[_Answer] = []
        self._drops: list[tuple[Match | None, int | None, bool]] = []
        self._callbacks: list[tuple[Match, Callable[[], object]]] = []
        self._stalls: list[Match] = []

    @property
    def commands(self) -> list[str]:
        return [call for call in self.calls if isinstance(call, str)]

    @property
    def puts(self) -> list[Written]:
        return [call for call in self.calls if isinstance(call, Written)]

    def answer(self, match: Match, exited: int = 0, stdout: str = "", stderr: str = "", *,
               times: int | None = None, first: bool = False) -> MemoryTransport:
        """Answer matching commands so; `times`: only the next that many, then later answers apply;
        `first`: before the answers given earlier (which are asked in the order they were given)."""
        self._answers.insert(0 if first else len(self._answers), _Answer(match, Result(exited, stdout, stderr), times))
        return self

    def drop(self, match: Match | None = None, *, call: int | None = None, stays: bool = False) -> MemoryTransport:
        """Raise TransportError on matching calls, or on the `call`th call (1-based, commands and
        puts); `stays`: the connection is gone, so every later call raises too."""
        assert (match is None) != (call is None), "drop(match) or drop(call=N)"
        self._drops.append((match, call, stays))
        return self

    def on(self, match: Match, callback: Callable[[], object]) -> MemoryTransport:
        """Run callback() as a matching command runs (the command still completes), e.g. to set
        the Interrupt as if Ctrl-C arrived mid-command."""
        self._callbacks.append((match, callback))
        return self

    def stall(self, match: Match) -> MemoryTransport:
        """Matching commands never end: the caller's wait for them runs out (Unanswered)."""
        self._stalls.append(match)
        return self

    def run(self, command: str, *, out: Sink | None = None, err: Sink | None = None,
            timeout: float | None = None) -> Result:
        self.bounds.append((command, timeout))
        self._call(command, command)
        if any(_matches(match, command) for match in self._stalls):
            raise Unanswered("no answer (memory transport)")
        result = self._answer(command)
        for sink, text in ((out, result.stdout), (err, result.stderr)):
            if sink is not None and text:
                sink.write(text)
        return result

    def put(self, path: str, content: bytes, mode: int) -> None:
        self._call(path, Written(path, content, mode))

    def close(self) -> None:
        self.closed = True

    def _call(self, text: str, record: str | Written) -> None:
        self.calls.append(record)
        if self.dropped:
            raise TransportError("connection dropped (memory transport)")
        for match, call, stays in self._drops:
            if call == len(self.calls) if call is not None else _matches(match, text):
                self.dropped = stays
                raise TransportError("connection dropped (memory transport)")
        for match, callback in self._callbacks:
            if _matches(match, text):
                callback()

    def _answer(self, command: str) -> Result:
        for answer in self._answers:
            if answer.times != 0 and _matches(answer.match, command):
                if answer.times is not None:
                    answer.times -= 1
                return answer.result
        return Result(0)
