"""The in-progress marker: which deploy is under way on a host, and at which step.

Written when a plan starts and at each step, removed when the plan ends with the host whole
(done, or failed and fully undone). A marker left behind names a deploy that died half way
(the deploying machine was killed, the connection cut for good) or a failure whose undo could
not put traffic back; `status` reports it and exits non-zero, and the next deploy or rollback,
which reads the host's own state, repairs it and clears it.
"""
from __future__ import annotations

import json
import time

from .layout import Layout
from .plan import sh


def record(kind: str, sha: str | None, colour: str | None, owner: dict, step: str, since: float) -> dict:
    return {"kind": kind, "sha": sha, "colour": colour, "user": f"{owner['user']}@{owner['from']}",
            "token": owner.get("token"), "since": int(since), "step": step}


def mark_argv(layout: Layout, marker: dict) -> tuple[str, ...]:
    return sh('printf "%s\\n" "$2" > "$1.tmp" && mv -f "$1.tmp" "$1"', layout.in_progress,
              json.dumps(marker, sort_keys=True))


def clear_argv(layout: Layout) -> tuple[str, ...]:
    return ("rm", "-f", layout.in_progress)


def describe(marker: dict, lock: dict | None, now: float) -> str:
    """One line for `status`: under way (its lock is held) or left behind."""
    age = max(0, int(now - marker.get("since", now)))
    what = f"{marker.get('kind', 'deploy')} {marker.get('sha') or ''} by {marker.get('user', '?')}".replace("  ", " ")
    if left_behind(marker, lock):
        return (f"HALF-DONE: {what} stopped at step {marker.get('step', '?')!r} {age}s ago and did not finish; "
                "the next deploy or `rollback` repairs the host")
    return f"in progress: {what}, at step {marker.get('step', '?')!r} for {age}s"


def left_behind(marker: dict | None, lock: dict | None) -> bool:
    """A marker whose deploy no longer holds the lock: nobody will finish or undo it."""
    return bool(marker) and (not lock or lock.get("token") != marker.get("token"))


UNDO_FAILED = "undo failed"
