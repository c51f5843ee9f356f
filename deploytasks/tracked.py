"""Remote commands that must outlive the SSH connection (migrations), registered in the deploy lock.

sshd does not stop a command when its client goes away: the command dies only when it next
writes to the connection's closed pipe, and a `docker compose run` container does not even
notice. So a tracked command never writes to the connection: it runs beside a small keeper
that sends its output to a file in the lock (streamed to the deployer with `tail`), records its
pid, start time and container in `running/` before anything can ask, and moves that record to
`ended/` with the exit status when it ends. The lock scripts read `running/`: while a recorded
command runs, nobody releases or takes the lock over, so it is never both released and running.
"""
from __future__ import annotations

from .layout import Layout
from .plan import sh

_TRACK = r"""
running=$1; ended=$2; output=$3; id=$4; what=$5; container=$6; shift 6
# the directories are the lock's: without them (lock removed) nothing may run unregistered
if [ ! -d "$running" ] || [ ! -d "$ended" ] || [ ! -d "$output" ]; then
    echo "the deploy lock is gone: $what not started" >&2; exit 1
fi
log="$output/$id"
: > "$log" || exit 1
(
    "$@" < /dev/null >> "$log" 2>&1 &
    pid=$!
    start=0
    read -r stat 2>/dev/null < "/proc/$pid/stat" && { set -- ${stat##*) }; start=${20}; }
    printf '%s %s %s %s %s\n' "$pid" "$start" "$(date +%s)" "${container:--}" "$what" > "$running/.$id" \
        && mv "$running/.$id" "$running/$id"
    wait "$pid"; status=$?
    { printf '%s %s ' "$status" "$(date +%s)"; cat "$running/$id"; } > "$ended/.$id" && mv "$ended/.$id" "$ended/$id"
    rm -f "$running/$id"
    exit "$status"
) < /dev/null >> "$log" 2>&1 &
keeper=$!
if tail -n +1 -s 0.2 -f --pid="$keeper" "$log" 2>/dev/null; then wait "$keeper"; exit; fi
wait "$keeper"; status=$?; cat "$log"; exit "$status"  # a tail that cannot follow (busybox): all at the end
"""


def tracked(layout: Layout, id: str, what: str, argv: tuple[str, ...] | list[str],
            container: str | None = None) -> tuple[str, ...]:
    """`argv` registered in the lock as `id` (a file name), described as `what` (a word), with the
    one-off `container` it runs in, if any: docker's word on it counts when its client is gone."""
    return sh(_TRACK, layout.lock_running, layout.lock_ended, layout.lock_output, id, what, container or "", *argv)
