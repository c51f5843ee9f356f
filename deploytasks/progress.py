"""The in-progress marker: which deploy is under way on a host.

Written when a plan starts (the step under way is in the lock's lease), removed when the plan ends with the host whole
(done, or failed and fully undone). A marker left behind names a deploy that died half way
(the deploying machine was killed, the connection cut for good) or a failure whose undo could
not put traffic back; `status` reports it and exits non-zero, and the next deploy or rollback,
which reads the host's own state, repairs it and clears it.
"""
from __future__ import annotations

import json
import time

from . import lock
from .holder import Holder
from .layout import Layout
from .plan import sh


def record(kind: str, sha: str | None, colour: str | None, owner: dict, step: str, since: float,
           release: str | None = None) -> dict:
    return {"kind": kind, "sha": sha, "colour": colour, "user": lock.who(owner),
            "token": owner.get("token"), "since": int(since), "step": step, **({"release": release} if release else {})}


def mark_argv(layout: Layout, marker: dict) -> tuple[str, ...]:
    return sh('printf "%s\\n" "$2" > "$1.tmp" && mv -f "$1.tmp" "$1"', layout.in_progress,
              json.dumps(marker, sort_keys=True))


def clear_argv(layout: Layout) -> tuple[str, ...]:
    return ("rm", "-f", layout.in_progress)


def describe(marker: dict, lock: dict | None, now: float, holder: Holder | None = None) -> str:
    """One line for `status`: under way (its lock is held by a live holder) or left behind."""
    age = max(0, int(now - marker.get("since", now)))
    what = f"{marker.get('kind', 'deploy')} {marker.get('sha') or ''} by {marker.get('user', '?')}".replace("  ", " ")
    ours = bool(lock) and lock.get("token") == marker.get("token")
    step = (holder.step if ours and holder and holder.step else None) or marker.get("step", "?")
    if left_behind(marker, lock, holder):
        return (f"HALF-DONE: {what} stopped at step {step!r} and did not finish (started {age}s ago); "
                "the next deploy or `rollback` repairs the host")
    return f"in progress: {what}, at step {step!r} (started {age}s ago)"


def left_behind(marker: dict | None, lock: dict | None, holder: Holder | None = None) -> bool:
    """A marker whose deploy no longer holds the lock, or holds it but is dead: nobody will
    finish or undo it (the next deploy takes the lock over and repairs the host)."""
    if not marker:
        return False
    if not lock or lock.get("token") != marker.get("token"):
        return True
    return bool(holder) and holder.verdict in ("dead", "running")


def unrecorded(marker: dict | None, owner: dict) -> bool:
    """A marker of another deploy that ended without a word in the history: its deployer was
    killed, or lost the host for good, before it could record anything (a failure it survived
    left UNDO_FAILED or LOST and its own history line)."""
    return bool(marker) and marker.get("token") != owner.get("token") and marker.get("step") == STARTED


def obituary(marker: dict, found_by: str, step: str | None, now: float) -> dict:
    """The history line the next deploy writes for one that died half way."""
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(marker.get("since", now))),
            "kind": marker.get("kind", "deploy"), "sha": marker.get("sha"), "colour": marker.get("colour"),
            "user": marker.get("user", "?"), "outcome": "died", "steps": {}, "step": step,
            **({"release": marker["release"]} if marker.get("release") else {}),
            "reason": (f"the deploying process or its connection died during step {step!r}" if step else
                       "the deploying process or its connection died") +
                      f"; found by the next {found_by}, which repaired the host"}


STARTED = "started"
UNDO_FAILED = "undo failed"
LOST = "connection lost while the migration ran"
