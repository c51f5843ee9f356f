"""Moving traffic between colours: readiness gate, switch, check through nginx, drain.

Shared by container and process releases: both put the new colour's web server on its own
unix socket, and both switch by swapping the live symlink nginx connects through.
"""
from __future__ import annotations

from . import nginx, phases
from .config import Config
from .errors import DeployError
from .facts import HostState, release_sha
from .layout import Layout, other
from .plan import Cmd, Poll, Step, Wait, cmd, sh

# After the swap no new connection reaches the old colour, but ones nginx opened an instant
# before may still sit in its accept queue; give the old workers time to take them.
SETTLE_SECONDS = 1.0


_POINT_LINKS = r"""
while [ "$#" -gt 1 ]; do
    # a temporary name of this run only: a leftover of a killed run cannot be in the way
    if [ -n "$1" ]; then rm -rf "$2.new.$$" && ln -s "$1" "$2.new.$$" && mv -fT "$2.new.$$" "$2"; else rm -f "$2"; fi || exit 1
    shift 2
done
"""


def point_links(*links: tuple[str | None, str]) -> Cmd:
    """Point each link at its target (None: remove it), in order, in one round trip. Each is
    replaced with rename(2): readers see the old target or the new one, never nothing."""
    return cmd(*sh(_POINT_LINKS, *(value for target, link in links for value in (target or "", link))))


def http_hints(key: str, path: str, host: str) -> tuple[tuple[str, str], ...]:
    """What curl's last words mean for a probe of `path` (set by `key`), for its failure message."""
    return (
        (r"returned error: (404)", rf"answered HTTP \1: the app has no {path}; set {key} to the path it answers"),
        (r"returned error: (400)", rf"answered HTTP \1: the app refuses the request, often its Host header ({host}, "
                                   "the first name of SERVER_NAME), as Django does for a name not in ALLOWED_HOSTS"),
        (r"returned error: (\d{3})", rf"answered HTTP \1"),
        (r"curl: \(7\)", "nothing answers on it (no server listening yet)"),
        (r"curl: \(28\)", "no answer within 5s"),
    )


def readiness(config: Config, colour: str, diagnose: tuple[Cmd, ...] = (), gone: tuple[str, ...] = ()) -> Step:
    """READY_PATH on the colour's own socket until it answers; `gone` prints why waiting is
    pointless (its server exited), so a crash fails the gate in seconds, not at HEALTH_TIMEOUT."""
    layout = Layout.of(config)
    # the site's own name, as nginx forwards it: apps that validate Host (Django's ALLOWED_HOSTS)
    # answer 400 to anything else and would never look ready
    host = nginx.probe_host(config)
    probe = ("curl", "-fsS", "--max-time", "5", "--unix-socket", layout.socket(colour),
             "-H", f"Host: {host}", f"http://localhost{config.ready_path}")
    if config.relayed:  # nginx's relay answers 502 while nothing listens on the colour's port
        listening = ((r"returned error: 502", f"nothing answers on the app's port: it must listen on "
                      f"{'0.0.0.0:' + str(config.web_port) if config.web_port else '127.0.0.1:$PORT'} "
                      f"(published for the {colour} colour on 127.0.0.1:{config.port(colour)})"),)
    else:
        listening = ((r"curl: \(7\)", f"nothing listens on the {colour} colour's socket: an app that binds a TCP "
                      "port (gunicorn --bind on its command line) needs WEB_PORT (LISTEN=port for processes)"),)
    poll = Poll(probe, config.health_timeout, config.health_interval,
                what=f"GET {config.ready_path} (READY_PATH) on the {colour} colour's socket",
                hints=listening + http_hints("READY_PATH", config.ready_path, host), gone=gone)
    return Step(phases.READY, (poll,), diagnose=diagnose, label=f"ready: {colour}")


def _static_links(config: Config, live: str | None, previous: str | None) -> tuple[tuple[str | None, str], ...]:
    """run/static/{previous,live} -> releases' static files (STATIC_URL), previous first: a page
    the old colour rendered still finds its assets once the new one's are live."""
    if not config.static_url:
        return ()
    layout = Layout.of(config)
    target = lambda release: release and f"../../releases/{release}/{layout.static_name}"  # noqa: E731
    return ((target(previous), layout.static_link("previous")), (target(live), layout.static_link("live")))


def switch(config: Config, state: HostState, colour: str, release: str) -> Step:
    """Send new connections to `colour`; undo puts back the live colour, the colour's old
    release and `current` as the host had them. Static files move first: the new colour's
    pages ask for its assets from the instant it serves."""
    layout = Layout.of(config)
    was = {"live": state.live, "colour": state.release_of(colour), "current": state.current}
    was_serving = state.release_of(state.live) if state.live else None
    static = (cmd("mkdir", "-p", f"{layout.run}/static"),) if config.static_url else ()
    return Step(
        phases.SWITCH,
        # what the colour runs before the live link: a crash after it leaves the host truthful, not
        # switched (static links first are harmless: the old pages' assets are found as `previous`)
        (*static,
         point_links(*_static_links(config, release, was_serving),
                     (layout.colour_target(release), layout.colour_link(colour)),
                     (layout.live_target(colour), layout.live_socket),
                     (layout.current_target(release), layout.current)),),
        undo=(point_links((was["live"] and layout.live_target(was["live"]), layout.live_socket),
                          (was["colour"] and layout.colour_target(was["colour"]), layout.colour_link(colour)),
                          (was["current"] and layout.current_target(was["current"]), layout.current),
                          # the new colour's pages of the last instant still find their assets
                          *_static_links(config, was_serving, release)),
              # as in drain: what nginx sent the new colour an instant before is answered before it stops
              cmd("sleep", f"{SETTLE_SECONDS:g}")),
        label=f"switch to {colour}",
        barrier=True,  # the new colour and its release may be removed only once traffic is back
    )


_ANSWERING_COLOUR = r"""
headers=$(curl "$@" -D - -o /dev/null) || exit $?
printf '%s\n' "$headers" | tr -d '\r' | sed -n 's/^[Xx]-[Dd]eploy-[Cc]olour: *//p'
"""


def verify(config: Config, sha: str, colour: str) -> Step:
    """The new version answers through the host's nginx, as users reach it: its SHA at VERSION_PATH;
    without one, HEALTH_PATH answers (and, relayed, from the new colour, by the relay's stamp)."""
    host = nginx.probe_host(config)
    if config.version_path:
        poll = Poll(nginx.probe(config, config.version_path, "-fsS"), min(config.health_timeout, 30),
                    config.health_interval, expect=sha, what=f"GET {config.version_path} (VERSION_PATH) through nginx",
                    hints=http_hints("VERSION_PATH", config.version_path, host))
    else:
        probe = nginx.probe(config, config.health_path, "-fsS")
        poll = Poll(sh(_ANSWERING_COLOUR, *probe[1:]) if config.relayed else probe, min(config.health_timeout, 30),
                    config.health_interval, expect=colour if config.relayed else None,
                    what=f"GET {config.health_path} (HEALTH_PATH) through nginx"
                         + (f", answered by the {colour} colour ({nginx.COLOUR_HEADER})" if config.relayed else ""),
                    hints=http_hints("HEALTH_PATH", config.health_path, host))
    return Step(phases.VERIFY, (poll,), label="check through nginx")


_WATCH = r"""
watch_ms=$1; interval=$2; live=$3; log=$4; sha=$5; host=$6; base=$7; ready=$8; version=$9; seconds=${10}
fail() { echo "watch: $*: switching back"; exit 1; }
ms() { local t=${EPOCHREALTIME/[.,]/}; now=$((t / 1000)); }
# the switch renamed the live link: the requests that began after it reached the new colour
since=$(find "$live" -maxdepth 0 -printf '%T@' 2>/dev/null); since=${since:-$EPOCHSECONDS.0}
f=${since#*.}000; since_ms=$(( ${since%%.*} * 1000 + 10#${f:0:3} ))
# nginx's lines for the app's 5xx ($msec $request_time ...): the last ones before this watch, then
# each as it is written; and a fifo nobody writes to pause on. One curl per round, nothing else.
exec 3< <(exec tail -n 100 -F -s 0.2 "$log" 2>/dev/null)
tail_pid=$!; trap 'kill "$tail_pid" 2>/dev/null' EXIT
fifo=$(mktemp -u) && mkfifo "$fifo" && exec 4<>"$fifo" && rm -f "$fifo" || exit 1
urls=("$base$ready"); [ -n "$version" ] && urls+=("$base$version")
ms; end=$((now + watch_ms))
while :; do
    # what has been written so far (a failing version writes on: this round reads at most 1000 lines)
    n=0; seen=""; lines=0
    while [ "$lines" -lt 1000 ] && read -r -t 0.02 -u 3 at took status method uri; do
        lines=$((lines + 1))
        [[ $at == *.* && $took == *.* ]] || continue
        (( ${at/./} - 10#${took/./} >= since_ms )) || continue
        n=$((n + 1)); seen="$seen$status $method $uri; "
        [ "$n" -lt 3 ] || break
    done
    [ "$n" -eq 0 ] || fail "nginx logged 5xx answers of the new version (${seen%; })"
    mapfile -t got < <(curl -sS --max-time 5 -H "Host: $host" -w '\n@@%{http_code}\n' "${urls[@]}" 2>&1)
    i=0; body=""
    for line in "${got[@]}"; do
        if [[ $line == @@* ]]; then
            code=${line#@@}; path=${urls[i]#"$base"}
            if [ "$i" -eq 0 ]; then
                [[ $code == 2* ]] || fail "GET $path (READY_PATH) through nginx: HTTP $code ${body:0:200}"
            else
                [[ $code == 2* ]] || fail "GET $path (VERSION_PATH) through nginx: HTTP $code ${body:0:200}"
                answer=${body%%[[:space:]]*}
                [ "${#answer}" -ge 7 ] && { [[ $sha == "$answer"* ]] || [[ $answer == "$sha"* ]]; } \
                    || fail "GET $path (VERSION_PATH) through nginx answered ${answer:0:64}, not $sha"
            fi
            i=$((i + 1)); body=""
        elif [ -z "$body" ]; then
            body=$line
        fi
    done
    [ "$i" -eq "${#urls[@]}" ] || fail "no answer through nginx at $base: ${got[*]:0:3}"
    ms; [ "$now" -lt "$end" ] || break
    read -r -t "$interval" -u 4
done
echo "watch: the new version passed every check for ${seconds}s"
"""

WATCH_INTERVAL = 0.5  # at most: a version that fails is caught within this


def monitor(config: Config, sha: str) -> list[Step]:
    """MONITOR_SECONDS after the switch, while the old colour still runs: readiness and the version
    through nginx, and the app's 5xx answers nginx logged since the switch. A failure is a failed
    step, so the switch is undone at once and the new colour stopped; the old one was never drained."""
    if config.monitor_seconds <= 0:
        return []
    layout = Layout.of(config)
    watch = cmd("bash", "-c", _WATCH, "watch", str(round(config.monitor_seconds * 1000)),
                f"{min(config.health_interval, WATCH_INTERVAL):g}", layout.live_socket, nginx.errors_log(config), sha,
                nginx.probe_host(config), f"http://127.0.0.1:{config.nginx_listen}", config.ready_path,
                config.version_path, f"{config.monitor_seconds:g}",
                stream=True).bounded(config.monitor_seconds + 30, "MONITOR_SECONDS")
    return [Step(phases.MONITOR, (watch,), label=f"watch {config.monitor_seconds:g}s")]


_DRAIN = r"""
socket=$1; limit=$2; shift 2
# "$@", if given, prints the pids of the colour's server: a container's socket has the path the app
# bound inside it, which the other colour (and other apps) share; its connections live on this
# host's side, where only their owner tells them apart
pids=""
if [ "$#" -gt 0 ]; then
    pids=$("$@" 2>/dev/null | grep -E '^[0-9]+$' | paste -sd '|' -)
    [ -n "$pids" ] || { echo "drain: the colour's server is not running: no connection to wait for"; exit 0; }
fi
open() {
    if [ -n "$pids" ]; then
        ss -Hxp state connected src "$socket" 2>/dev/null | grep -Ec "pid=($pids),"
    else
        # accepted connections, plus those still queued on the listening socket
        c=$(ss -Hx state connected src "$socket" 2>/dev/null | wc -l)
        q=$(ss -Hxl src "$socket" 2>/dev/null | awk '{ n += $3 } END { print n + 0 }')
        echo $((c + q))
    fi
}
start=$(date +%s)
while n=$(open); [ "${n:-0}" -gt 0 ]; do
    if [ $(( $(date +%s) - start )) -ge "$limit" ]; then
        echo "drain: $n connection(s) still open after ${limit}s (DRAIN_TIMEOUT): stopping the colour"; exit 0
    fi
    sleep 0.2
done
echo "drain: no connection left after $(( $(date +%s) - start ))s"
"""


def drain(config: Config, colour: str, stop: tuple[Cmd, ...], socket: str | None = None,
          owners: tuple[str, ...] = ()) -> Step:
    """Let the old colour finish what it has: the connections nginx opened to it (long requests,
    WebSockets) end, or DRAIN_TIMEOUT passes; then stop it (kept for an instant rollback).
    `socket` is the path as the listening side bound it; `owners`, a command printing the pids of
    the colour's server, when that path is not the colour's alone."""
    limit = int(config.drain_timeout)
    wait = cmd(*sh(_DRAIN, socket or Layout.of(config).socket(colour), str(limit), *owners),
               stream=True).bounded(limit + 30, "DRAIN_TIMEOUT")
    return Step(phases.DRAIN, (Wait(SETTLE_SECONDS, "let the old colour accept what nginx already sent it"), wait, *stop),
                best_effort=True, label=f"drain {colour}")


def switch_over(config: Config, state: HostState, colour: str, release: str, sha: str, old) -> list[Step]:
    """Switch, check through nginx, watch the new colour while the old one still runs (if there is
    one), then drain the colour that served before."""
    steps = [switch(config, state, colour, release), verify(config, sha, colour)]
    if state.live and old:
        steps += [*monitor(config, sha), drain(config, state.live, (old.stop(),), *old.listener())]
    return steps


def rollback_target(state: HostState) -> tuple[str, str, str]:
    """The colour that served before, its release and SHA: what `rollback` returns to."""
    if not state.live:
        raise DeployError("nothing is deployed on this host: nothing to roll back")
    colour = other(state.live)
    release = state.release_of(colour)
    if not release or release not in state.releases:
        raise DeployError(f"no previous release on the {colour} side to roll back to; use rollback --to SHA")
    return colour, release, release_sha(release)
