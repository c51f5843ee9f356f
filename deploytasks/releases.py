"""Release directories: created per deploy, named <UTC-ts>-<sha>, pruned to the newest N that served.

Which releases stay is decided in one place, `select`, for the cleanup that ends every deploy and
for `prune` alike: never what serves, what a colour runs (the stopped one is the instant rollback)
or what `current` points at; beyond those, the newest KEEP_RELEASES releases whose deploy
succeeded. A release whose deploy failed or never finished (its directory is left when the
deploying machine died, or when the undo could not run) never takes one of those places.
"""
from __future__ import annotations

import dataclasses
import posixpath
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import phases, progress, shas
from .config import Config
from .facts import HostState, release_sha
from .layout import COLOURS, Layout, other
from .plan import Cmd, Plan, Step, cmd

if TYPE_CHECKING:
    from .backends import Backend

# what `name` writes: the UTC timestamp of the deploy, then the SHA
NAME_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{7,40}$")
STAMP_RE = re.compile(r"^\d{8}T\d{6}Z$")


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


@dataclass(frozen=True)
class Selection:
    """Every release on a host, kept or not, each with the reason (what `prune --dry-run` shows)."""

    keep: dict[str, str]
    drop: dict[str, str]

    @property
    def kept(self) -> list[str]:
        return sorted(self.keep)

    @property
    def doomed(self) -> list[str]:
        return sorted(self.drop)


def select(state: HostState, keep_count: int) -> Selection:
    """Which releases stay and which go, from the host's links and its history:

    - kept whatever happened: the live release, the previous one (the other colour's: the
      rollback target), any colour's, `current`'s, and directories not named <UTC-ts>-<sha>
      (not ours to remove);
    - kept besides: the newest `keep_count` releases whose deploy succeeded (an `ok` line in the
      history names them); the live release counts among them when it served successfully;
    - gone: every other release, among them any whose deploy failed, died or never finished:
      those never take one of the `keep_count` places.

    Releases older than the oldest history line the host keeps cannot be judged, and count as
    having served (as they did for the cleanups that kept them)."""
    live = state.release_of(state.live)
    protected: dict[str, str] = {}
    if live:
        protected[live] = "live"
        previous = state.release_of(other(state.live))
        if previous:
            protected[previous] = "previous (the rollback target)"
    for colour, release in sorted(state.colours.items()):
        protected.setdefault(release, f"the {colour} colour's")
    if state.current:
        protected.setdefault(state.current, "current")
    marker = state.in_progress or {}
    if marker.get("release") and not progress.left_behind(marker, state.lock, state.holder):
        protected.setdefault(marker["release"], f"its {marker.get('kind', 'deploy')} is under way")
    served, verdicts = _verdicts(state)
    newest = [r for r in sorted(state.releases, reverse=True) if r in served][:keep_count]
    keep, drop = {}, {}
    for release in state.releases:
        if release in protected:
            keep[release] = protected[release]
        elif not NAME_RE.match(release):
            keep[release] = "not named <UTC-ts>-<sha>: not a release of ours"
        elif release in newest:
            keep[release] = f"one of the newest {keep_count} that served"
        elif release in served:
            drop[release] = f"older than the newest {keep_count} that served"
        else:
            drop[release] = verdicts.get(release, "no successful deploy of it in the history (it never finished)")
    return Selection(keep, drop)


def _verdicts(state: HostState) -> tuple[set[str], dict[str, str]]:
    """The releases that served (an `ok` history line names them), and why the others did not."""
    stamps = [stamp for stamp in map(_stamp, (record.get("time") for record in state.history)) if stamp]
    oldest = min(stamps) if stamps else None
    served, failed = set(), {}
    for record in state.history:
        release = _named(record, state.releases)
        if not release:
            continue
        if record.get("outcome") == "ok":
            served.add(release)
        elif _created(record):  # a rollback that failed to restart a release says nothing of its deploy
            failed[release] = f"its {record.get('kind', 'deploy')} ended {record.get('outcome')!r}"
    for release in state.releases:
        if release not in failed and (oldest is None or timestamp(release) < oldest):
            served.add(release)  # older than the history: it cannot be judged
    return served, {release: why for release, why in failed.items() if release not in served}


def _named(record: dict, releases: tuple[str, ...]) -> str | None:
    """The release a history line is about: the one it names; a line written before lines named
    their release, the newest release of its SHA made before it started (the deploy made it)."""
    if "release" in record:
        return record["release"] if record["release"] in releases else None
    sha, when = record.get("sha"), _stamp(record.get("time"))
    if not isinstance(sha, str) or not when or not _created(record):
        return None
    made = [r for r in releases if NAME_RE.match(r) and shas.same(release_sha(r), sha) and timestamp(r) <= when]
    return max(made) if made else None


def _created(record: dict) -> bool:
    """Whether the line is about a deploy that made a release (a deploy or a `rollback --to`), not a
    rollback that restarted one."""
    ran = {*(record.get("steps") or {}), *(record.get("failed_after") or ())}
    return record.get("kind", "deploy") == "deploy" or phases.PREPARE in ran


def _stamp(when: object) -> str | None:
    """A history time (2024-01-02T03:04:05Z) as a release timestamp (20240102T030405Z); None if it is not one."""
    stamp = when.replace("-", "").replace(":", "") if isinstance(when, str) else ""
    return stamp if STAMP_RE.match(stamp) else None


@dataclass(frozen=True)
class Freed:
    """What goes with the doomed releases besides their directories (`items`: ("image", name),
    ("virtualenv", name)), and the commands that remove it."""

    items: tuple[tuple[str, str], ...] = ()
    commands: tuple[Cmd, ...] = ()


def after_switch(state: HostState, colour: str, release: str) -> HostState:
    """The host as the cleanup at the end of a deploy finds it: `release` serves from `colour`, the
    colour that served before holds the rollback target, and the deploy has succeeded (its
    history line is written after the cleanup)."""
    record = {"kind": "deploy", "sha": release_sha(release), "release": release, "outcome": "ok"}
    return dataclasses.replace(state, colours={**state.colours, colour: release}, live=colour, current=release,
                               releases=tuple(sorted({*state.releases, release})),
                               history=(*state.history, record))


def cleanup(config: Config, state: HostState, backend: Backend, colour: str, release: str) -> Step:
    """The last step of a deploy (best effort: the new version already serves): what `prune`
    would remove once `release` serves from `colour`."""
    after = after_switch(state, colour, release)
    chosen = select(after, config.keep_releases)
    return cleanup_step(Layout.of(config), chosen.doomed, then=backend.freed(after, chosen.doomed, chosen.kept).commands)


def cleanup_step(layout: Layout, doomed: list[str], then: tuple[Cmd, ...] = ()) -> Step:
    """Remove the `doomed` releases, then whatever the backend frees with them (`then`)."""
    actions = (cmd("rm", "-rf", *(layout.release(r) for r in doomed)),) if doomed else ()
    return Step(phases.CLEANUP, (*actions, *then), best_effort=True, label=f"cleanup ({len(doomed)} old release(s))")


def prune(config: Config, state: HostState, backend: Backend) -> Plan:
    """`prune`: what `select` drops and what only those releases used, nothing else; the listing
    (kept and removed, each with why) is printed before it runs, and is all `--dry-run` needs."""
    chosen = select(state, config.keep_releases)
    freed = backend.freed(state, chosen.doomed, chosen.kept)
    images = [name for kind, name in freed.items if kind == "image"]
    venvs = [name for kind, name in freed.items if kind == "virtualenv"]
    counts = f"{len(chosen.doomed)} release(s), {len(images)} image(s), {len(venvs)} virtualenv(s)"
    step = dataclasses.replace(cleanup_step(Layout.of(config), chosen.doomed, then=freed.commands),
                               best_effort=False, label=f"prune ({counts})")
    if chosen.doomed or freed.items:
        head = f"prune: {counts} to remove; KEEP_RELEASES={config.keep_releases}"
    else:
        head = f"prune: nothing to remove ({len(chosen.keep)} release(s) kept; KEEP_RELEASES={config.keep_releases})"
    width = max((len(r) for r in state.releases), default=0)
    listing = [head,
               *(f"  keep    release {r:{width}}  {chosen.keep[r]}" for r in chosen.kept),
               *(f"  remove  release {r:{width}}  {chosen.drop[r]}" for r in chosen.doomed),
               *(f"  remove  {kind} {name}" for kind, name in freed.items)]
    return Plan("prune", "", (step,), {"listing": listing, "record": {
        "prune": {"releases": chosen.doomed, "images": images, "virtualenvs": venvs}}})
