"""Everything printed goes through here: one prefix per host, secret values masked."""
from __future__ import annotations

import re
import sys
import threading

MASK = "********"
_lock = threading.Lock()


def columns(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells as aligned lines (the end-of-rollout and `status` tables)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


class Console:
    def __init__(self, host: str = "", secrets: list[str] | None = None, stream=None):
        self.prefix = f"[{host}] " if host else ""
        self.secrets = sorted((s for s in (secrets or []) if len(s) >= 3), key=len, reverse=True)
        self.stream = stream

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def __call__(self, text: str = "") -> None:
        stream = self.stream or sys.stdout
        with _lock:
            for line in (text.splitlines() or [""]):
                stream.write(f"{self.prefix}{self.mask(line)}\n")
            stream.flush()

    def writer(self, indent: str = "    ", quiet: str = "") -> "LineWriter":
        return LineWriter(self, indent, quiet)


class LineWriter:
    """A file-like sink for a remote command's live output, printed line by line; lines matching
    `quiet` (a regex) are expected noise and dropped."""

    def __init__(self, console: Console, indent: str, quiet: str = ""):
        self.console, self.indent, self.quiet, self.buffer = console, indent, quiet, ""

    def write(self, data: str) -> int:
        self.buffer += data.replace("\r", "\n")
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self._show(line)
        return len(data)

    def flush(self) -> None:
        self._show(self.buffer)
        self.buffer = ""

    def _show(self, line: str) -> None:
        if line.strip() and not (self.quiet and re.search(self.quiet, line)):
            self.console(self.indent + line)
