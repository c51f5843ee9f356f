"""The host's deploy lock: one directory, created by rename(2) with its owner already inside.

A directory cannot be half-created, and a rename onto a non-empty one fails, so two deploys
can never both hold it. Besides who holds it, the lock records what tells whether its holder
still lives, so a dead deploy's lock is taken over instead of blocking every deploy after it:

- `session`: the holder's sshd session process (pid, start time, boot id), written by the acquire
  script itself. sshd runs every command of one connection as a child of that connection's own
  process, so it exists exactly as long as the deploying machine's connection does.
- `lease`: renewed every few seconds by the holder (see locking.Lease), with the step it is at.
- `running/`: commands that must outlive the connection (a migration, see tracked.py); while one
  runs, nobody releases or takes over the lock, so it is never both released and running.

The holder is alive while its session process exists or its lease is fresh; a lock whose holder
is gone and whose registered commands have ended is taken over by the next acquire, atomically.
"""
from __future__ import annotations

import getpass
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass

from .errors import ConfigError
from .layout import LOCK_NAMES, Layout
from .plan import sh

HELD_EXIT = 3  # acquire: held by someone else; release: kept (a registered command runs); force: refused
LOST_EXIT = 4  # renew: the lock is no longer ours
LEASE_RENEW = 5.0  # seconds between renewals of the lease
LEASE_BOUND = 15  # seconds after which an unrenewed lease is stale: 3 renewals missed
MAX_WAIT = 86_400  # --lock-wait: a day at most

# Shared head of the scripts that judge a lock: $1 the lock, $2 the lease bound, $3..$9 the names
# of its files (layout.LOCK_NAMES); the script's own arguments follow.
INSPECT = r"""
lock=$1; bound=$2; n_info=$3; n_session=$4; n_lease=$5; n_running=$6; n_ended=$7; n_output=$8; n_takeover=$9
shift 9
proc() {  # proc PID: its state, parent, start time (clock ticks since boot) and name; fails if it is gone
    case $1 in ''|*[!0-9]*) return 1;; esac
    p_stat=; read -r p_stat 2>/dev/null < "/proc/$1/stat" || return 1
    p_comm=${p_stat#*(}; p_comm=${p_comm%)*}
    set -- ${p_stat##*) }
    p_state=$1; p_ppid=$2; p_start=${20}
    [ -n "$p_start" ]
}
alive() {  # alive PID START: that very process still runs (a reused pid has another start time)
    proc "$1" && [ "$p_start" = "$2" ] && [ "$p_state" != Z ]
}
container_running() {  # docker's word on a registered container; no clear "not running" counts as running
    c_state=$(docker inspect --format '{{.State.Running}}' "$1" 2>&1)
    case $c_state in false|*"No such"*) return 1;; esac
}
inspect() {  # inspect DIR: print what the lock says of its holder; set $verdict, $busy and $seen (its owner)
    l=$1; seen=; busy=; s_state=; fresh=; now=$(date +%s)
    if [ -f "$l/$n_info" ]; then
        seen=$(cat "$l/$n_info"); printf 'lock %s\n' "$(printf '%s' "$seen" | tr -d '\n')"
    else
        printf 'lock {"since": %s}\n' "$(stat -c %Y "$l" 2>/dev/null || echo "$now")"
    fi
    if read -r r_pid r_start r_boot 2>/dev/null < "$l/$n_session"; then
        boot=; read -r boot 2>/dev/null < /proc/sys/kernel/random/boot_id
        s_state=gone
        [ "$r_boot" = "$boot" ] && alive "$r_pid" "$r_start" && s_state=alive
        printf 'lock-session %s %s\n' "$r_pid" "$s_state"
    fi
    if m=$(stat -c %Y "$l/$n_lease" 2>/dev/null); then
        step=; read -r step 2>/dev/null < "$l/$n_lease"
        printf 'lock-lease %s %s\n' "$((now - m))" "$step"
        [ "$((now - m))" -lt "$bound" ] && fresh=yes
    fi
    for r in "$l/$n_running"/*; do
        [ -f "$r" ] || continue
        r_pid=; read -r r_pid r_start r_since r_container r_what 2>/dev/null < "$r"
        r_state=ended
        if alive "$r_pid" "$r_start"; then r_state=running
        elif [ -n "$r_container" ] && [ "$r_container" != - ] && container_running "$r_container"; then r_state=running
        fi
        [ "$r_state" = running ] && busy=yes
        printf 'lock-running %s %s %s %s %s %s\n' "${r##*/}" "$r_state" "$r_pid" "$r_since" "$r_container" "$r_what"
    done
    for r in "$l/$n_ended"/*; do
        [ -f "$r" ] && read -r e_line 2>/dev/null < "$r" && printf 'lock-ended %s %s\n' "${r##*/}" "$e_line"
    done
    [ -d "$l/$n_takeover" ] && echo 'lock-takeover'
    if [ -z "$s_state" ] && [ -z "$m" ]; then verdict=unknown
    elif [ "$s_state" = alive ] || [ -n "$fresh" ]; then verdict=alive
    elif [ -n "$busy" ]; then verdict=running
    else verdict=dead
    fi
    printf 'lock-holder %s %s\n' "$verdict" "$now"
}
"""

_ACQUIRE = INSPECT + r"""
info=$1
mkdir -p "${lock%/*}" || exit 1
tmp=$(mktemp -d "$lock.XXXXXX") || exit 1
if ! { printf '%s\n' "$info" > "$tmp/$n_info" && : > "$tmp/$n_lease" \
       && mkdir "$tmp/$n_running" "$tmp/$n_ended" "$tmp/$n_output"; }; then rm -rf "$tmp"; exit 1; fi
# our connection's own sshd process: the nearest sshd ancestor (the user's shell may sit between);
# none (not over ssh): the process that ran us
s_pid=$PPID; found=
while [ "$s_pid" -gt 1 ] 2>/dev/null && proc "$s_pid"; do
    case $p_comm in sshd*|dropbear) found=yes; break;; esac
    s_pid=$p_ppid
done
[ -n "$found" ] || { s_pid=$PPID; proc "$s_pid"; } || p_start=
boot=; read -r boot 2>/dev/null < /proc/sys/kernel/random/boot_id
[ -n "$p_start" ] && printf '%s %s %s\n' "$s_pid" "$p_start" "$boot" > "$tmp/$n_session"
if mv -T "$tmp" "$lock" 2>/dev/null; then exit 0; fi
inspect "$lock"
# a dead holder's lock is taken over by the one deploy whose mkdir of its marker succeeds, and
# only while the lock is still the one judged dead (a racer may have replaced it already)
if [ "$verdict" = dead ] && [ -n "$seen" ] && mkdir "$lock/$n_takeover" 2>/dev/null; then
    if [ "$(cat "$lock/$n_info" 2>/dev/null)" = "$seen" ] && mv -T "$lock" "$tmp.dead"; then
        if mv -T "$tmp" "$lock" 2>/dev/null; then rm -rf "$tmp.dead"; echo 'lock-taken-over'; exit 0; fi
        rm -rf "$tmp.dead" "$tmp"; inspect "$lock"; exit 3  # a third deploy took the free lock meanwhile
    fi
    rmdir "$lock/$n_takeover" 2>/dev/null
fi
rm -rf "$tmp"
exit 3
"""

# Only the owner releases, and never while a command it registered still runs; renamed away
# first, so a late lease renewal cannot write into a half-removed lock.
_RELEASE = INSPECT + r"""
token=$1
grep -qF "$token" "$lock/$n_info" 2>/dev/null || exit 0
inspect "$lock"
[ -n "$busy" ] && exit 3
mv -T "$lock" "$lock.$token" && rm -rf "$lock.$token"
"""

_FORCE_RELEASE = INSPECT + r"""
force=$1
[ -d "$lock" ] || exit 0
inspect "$lock"
[ -n "$busy" ] && [ "$force" != yes ] && exit 3
mv -T "$lock" "$lock.forced.$$" && rm -rf "$lock.forced.$$" && echo 'lock-removed'
"""

_RENEW = r"""
info=$1; lease=$2; token=$3; step=$4
grep -qF "$token" "$info" 2>/dev/null || exit 4
printf '%s\n' "$step" > "$lease"
"""


@dataclass(frozen=True)
class Policy:
    """What a task may do about a held lock: break it first (`force_unlock`, and with `force`
    even while its migration runs), or wait up to `wait` seconds for it."""

    force_unlock: bool = False
    force: bool = False
    wait: float = 0.0


def policy(force_unlock: bool = False, force: bool = False, wait: object = 0) -> Policy:
    """The CLI's lock options, checked before any connection opens."""
    if force and not force_unlock:
        raise ConfigError("--force goes with --force-unlock (it lets it break a lock whose migration still runs)")
    try:
        seconds = float(wait or 0)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT:
        raise ConfigError(f"--lock-wait takes seconds from 0 to {MAX_WAIT}, not {wait!r}")
    return Policy(bool(force_unlock), bool(force), seconds)


def who(owner: dict) -> str:
    """The holder as history, the marker and messages name it: user@machine."""
    return f"{owner['user']}@{owner['from']}"


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


def inspect_args(layout: Layout) -> tuple[str, ...]:
    """The head arguments of every script that judges the lock (INSPECT)."""
    return (layout.lock, str(LEASE_BOUND), *LOCK_NAMES)


def acquire_argv(layout: Layout, info: dict) -> tuple[str, ...]:
    """Exit 0: ours (after taking a dead holder's lock over if it printed `lock-taken-over`);
    HELD_EXIT: held, with what the lock says of its holder on stdout (holder.parse)."""
    return sh(_ACQUIRE, *inspect_args(layout), json.dumps(info, sort_keys=True))


def release_argv(layout: Layout, info: dict) -> tuple[str, ...]:
    """Remove the lock only if it is still ours (someone may have forced it since) and nothing it
    registered still runs (HELD_EXIT: kept)."""
    return sh(_RELEASE, *inspect_args(layout), info["token"])


def force_release_argv(layout: Layout, force: bool = False) -> tuple[str, ...]:
    """--force-unlock: HELD_EXIT (refused) while a registered command runs, unless `force`."""
    return sh(_FORCE_RELEASE, *inspect_args(layout), "yes" if force else "no")


def renew_argv(layout: Layout, info: dict, step: str | None, *, lapse: bool = False) -> tuple[str, ...]:
    """Renew the lease with the step the holder is at; LOST_EXIT if the lock is not ours any more.
    `lapse`: a holder leaving a lock to its migration dates its lease back, so that the lock is
    judged by the migration alone (taken over the moment it has ended)."""
    return sh(_RENEW + ('touch -d @0 "$lease"\n' if lapse else ""), layout.lock_info, layout.lock_lease,
              info["token"], " ".join((step or "").split()))

