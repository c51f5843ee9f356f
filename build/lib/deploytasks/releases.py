"""Release directories: created per deploy, named <UTC-ts>-<sha>, pruned to the newest N.

Cleanup never removes what a colour runs or what `current` points at: those are the
instant rollbacks.
"""
from __future__ import annotations

import posixpath
import time

from . import phases
from .facts import HostState
from .layout import COLOURS, Layout
from .plan import Cmd, Step, cmd

def name(sha: str, now: float | None = None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time())) + f"-{sha}"


def timestamp(release: str) -> str:
    return release.split("-", 1)[0]


def prepare_step(layout: Layout, release: str) -> Step:
    release_dir = layout.release(release)
    dirs = [release_dir, posixpath.dirname(layout.rendered_site(release)), layout.shared, layout.state,
            layout.nginx_dir, *(layout.run_dir(colour) for colour in COLOURS)]
    # nginx's workers reach the live socket through these and check the maintenance flag in state/,
    # whatever the SSH session's umask
    reachable = (layout.root, layout.state, layout.run, *(layout.run_dir(c) for c in COLOURS))
    return Step(phases.PREPARE, (cmd("mkdir", "-p", *dirs), cmd("chmod", "755", *reachable)),
                undo=(cmd("rm", "-rf", release_dir),))


def to_delete(state: HostState, keep_count: int, keep: tuple[str, ...] = ()) -> list[str]:
    protected = set(keep) | set(state.colours.values()) | ({state.current} if state.current else set())
    candidates = sorted(set(state.releases) | set(keep))
    newest = set(candidates[-keep_count:])
    return [r for r in candidates if r not in newest and r not in protected]


def cleanup_step(layout: Layout, doomed: list[str], then: tuple[Cmd, ...] = ()) -> Step:
    """Remove the `doomed` releases, then whatever the backend frees with them (`then`)."""
    actions = (cmd("rm", "-rf", *(layout.release(r) for r in doomed)),) if doomed else ()
    return Step(phases.CLEANUP, (*actions, *then), best_effort=True, label=f"cleanup ({len(doomed)} old release(s))")
