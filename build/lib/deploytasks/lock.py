"""The host's deploy lock: one directory, created by rename(2) with its owner already inside.

A directory cannot be half-created, and a rename onto a non-empty one fails, so two deploys
can never both hold it; a deploy that died leaves a lock that names who held it and since when.
"""
from __future__ import annotations

import getpass
import json
import os
import socket
import time
import uuid

from .errors import LockHeld
from .layout import LOCK_INFO, Layout
from .plan import sh

HELD_EXIT = 3

_ACQUIRE = r"""
lock=$1; name=$2; info=$3
mkdir -p "$(dirname "$lock")" || exit 1
tmp=$(mktemp -d "$lock.XXXXXX") || exit 1
printf '%s\n' "$info" > "$tmp/$name"
if mv -T "$tmp" "$lock" 2>/dev/null; then exit 0; fi
rm -rf "$tmp"
cat "$lock/$name" 2>/dev/null || printf '{"since": %s}\n' "$(stat -c %Y "$lock")"
exit 3
"""

_RELEASE = r"""grep -qF "$3" "$2" 2>/dev/null && rm -rf "$1"; true"""


def owner(task: str, sha: str | None) -> dict:
    return {
        "token": uuid.uuid4().hex,
        "user": _user(),
        "from": socket.gethostname(),
        "task": task,
        "sha": sha,
        "since": int(time.time()),
    }


def _user() -> str:
    """Who deploys: the login name, or the uid in CI containers that have none."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def acquire_argv(layout: Layout, info: dict) -> tuple[str, ...]:
    return sh(_ACQUIRE, layout.lock, LOCK_INFO, json.dumps(info, sort_keys=True))


def release_argv(layout: Layout, info: dict) -> tuple[str, ...]:
    """Remove the lock only if it is still ours (someone may have forced it since)."""
    return sh(_RELEASE, layout.lock, layout.lock_info, info["token"])


def force_release_argv(layout: Layout) -> tuple[str, ...]:
    return ("rm", "-rf", layout.lock)


def describe(info: dict | None, now: float) -> str:
    info = info or {}
    age = max(0, int(now - info.get("since", now)))
    who = f"{info.get('user', 'someone')}@{info.get('from', '?')}"
    what = f"{info.get('task', 'a task')} {info.get('sha') or ''}".strip()
    return f"held by {who} ({what}) for {_duration(age)}"


def held_error(host: str, info: dict | None, now: float) -> LockHeld:
    return LockHeld(
        f"{host}: deploy lock {describe(info, now)}; if that deploy is dead, rerun with --force-unlock"
    )


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
