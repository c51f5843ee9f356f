"""Deploy history: one JSON line per deploy or rollback in state/history.jsonl on each host."""
from __future__ import annotations

import json
import time

from . import lock, probe, shas
from .layout import Layout
from .plan import sh


def entry(kind: str, sha: str, colour: str | None, owner: dict, outcome: str,
          started: float, steps: list[tuple[str, float]], **extra) -> dict:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "kind": kind,
        "sha": sha,
        "colour": colour,
        "user": lock.who(owner),
        "outcome": outcome,
        "duration_s": round(time.time() - started, 2),
        "steps": {name: round(seconds, 3) for name, seconds in steps},
        **extra,
    }


def append_argv(layout: Layout, record: dict) -> tuple[str, ...]:
    return sh('mkdir -p "$(dirname "$1")" && printf "%s\\n" "$2" >> "$1"', layout.history,
              json.dumps(record, sort_keys=True))


def last_good(history: tuple[dict, ...] | list[dict]) -> list[str]:
    """SHAs that were serving after a successful deploy or rollback, newest first, unique."""
    seen: list[str] = []
    for record in reversed(list(history)):
        sha = record.get("sha")
        if record.get("outcome") == "ok" and sha and sha not in seen:
            seen.append(sha)
    return seen


def served(history: tuple[dict, ...] | list[dict], sha: str) -> bool:
    return any(shas.same(sha, good) for good in last_good(history))


def format_line(record: dict) -> str:
    """One history line for `status`; a failure says where it stopped and why."""
    line = (f"{record.get('time', '?'):20} {record.get('kind', '?'):9} {str(record.get('sha', '?'))[:12]:12} "
            f"{record.get('colour') or '-':5} {record.get('outcome', '?'):8} {record.get('duration_s', '?')}s "
            f"{record.get('user', '')}")
    if record.get("probe"):  # what the deploy's own probe saw through nginx
        line += "\n      probe: " + probe.describe(record["probe"]).split(": ", 1)[1].replace("\n", "\n      ")
    if record.get("outcome") == "died":  # written by the deploy that found it (progress.obituary)
        line += f"\n      {record.get('reason', 'no reason recorded')}"
    elif record.get("outcome", "ok") != "ok":
        after = record.get("failed_after") or []
        line += f"\n      failed after {after[-1] if after else 'nothing'}: {record.get('reason', 'no reason recorded')}"
    return line
