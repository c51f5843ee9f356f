"""What this deploy's users saw: a light probe on the host, through its nginx, from just before
the switch until the drain ends.

It is one bash loop of curl requests (both are on any host we deploy to), started in the
background over the deploy's own connection and stopped by a flag file, with a bound of its own
so a deploy that dies cannot leave it running. Each request is one line: when it started, the
HTTP status (000: no answer), how long it took, and the version that answered (VERSION_PATH's
body). The deploy reads the lines back once it is over and sums them up here; a failed request
is listed, never dropped, and never fails the deploy by itself.
"""
from __future__ import annotations

from . import nginx, phases, shas
from .config import Config
from .layout import Layout
from .plan import Step, cmd

LIMIT_SECONDS = 3600  # a probe nobody stopped (its deploy was killed) ends by itself
SHOWN_FAILURES = 5

_RUN = r"""
dir=$1; step=$2; limit=$3; shift 3   # step: microseconds from one request to the next
# ends when its directory goes (the next probe's start, or the app's removal) or its stop file
# appears; pauses on a fifo nobody writes, so a request costs one curl and nothing more
mkfifo "$dir/tick" && exec 4<>"$dir/tick" || exit 1
end=$((EPOCHSECONDS + limit))
while [ -d "$dir" ] && [ ! -e "$dir/stop" ] && [ "$EPOCHSECONDS" -lt "$end" ]; do
    t=${EPOCHREALTIME/,/.}
    w=$("$@" -s -o "$dir/body" -w '%{http_code} %{time_total}' 2>/dev/null)
    v=""; [ -s "$dir/body" ] && read -r -n 64 v < "$dir/body"
    printf '%s %s %s\n' "$t" "${w:-000 0}" "$v" >> "$dir/lines" 2>/dev/null
    now=${EPOCHREALTIME/,/.}; rest=$(( ${t/./} + step - ${now/./} ))
    if [ "$rest" -gt 0 ]; then printf -v pause '%d.%06d' $((rest / 1000000)) $((rest % 1000000)); read -r -t "$pause" -u 4; fi
done
[ -d "$dir" ] && : > "$dir/done"
"""

# a probe a killed deploy left ends once its directory is gone; this one's is named for the shell
# that starts it, and `current` points at it
_START = r"""
base=$1; script=$2; step=$3; limit=$4; shift 4   # "$@": the request
rm -rf "$base" && mkdir -p "$base/$$" && ln -s "$$" "$base/current" || exit 1
command -v bash >/dev/null && command -v setsid >/dev/null || { echo "probe: no bash or setsid on this host: not measured"; exit 0; }
setsid bash -c "$script" probe "$base/$$" "$step" "$limit" "$@" </dev/null >/dev/null 2>&1 &
"""

_COLLECT = r"""
base=$1; dir=$base/$(readlink "$base/current" 2>/dev/null)
[ -d "$dir" ] || exit 0
: > "$dir/stop"
i=0; while [ ! -e "$dir/done" ] && [ $i -lt 70 ]; do sleep 0.1; i=$((i + 1)); done  # a request in flight: 5 s at most
cat "$dir/lines" 2>/dev/null
rm -rf "$base"
"""


def directory(layout: Layout) -> str:
    return f"{layout.run}/probe"


def interval(config: Config, enabled: bool = True) -> float | None:
    """Seconds between the probe's requests; None when it does not run."""
    return 1 / config.probe_rate if enabled and config.probe_rate > 0 else None


def path(config: Config) -> str:
    """What it asks: the version (so it tells old answers from new), else the health URL."""
    return config.version_path or config.health_path


def start_step(config: Config, enabled: bool = True) -> list[Step]:
    """The probe's start, the step before the switch; nothing when PROBE_RATE is 0 or --no-probe."""
    if not interval(config, enabled):
        return []
    folder = directory(Layout.of(config))
    request = nginx.probe(config, path(config))
    start = cmd("sh", "-c", _START, "sh", folder, _RUN, str(round(1e6 / config.probe_rate)), str(LIMIT_SECONDS),
                *request, stream=True)  # stream: "not measured" is shown
    return [Step(phases.PROBE, (start,), best_effort=True, label=f"probe {config.probe_rate:g}/s through nginx")]


def collect_argv(layout: Layout) -> tuple[str, ...]:
    """Stops the probe and prints its lines (nothing if none ran)."""
    return ("sh", "-c", _COLLECT, "sh", directory(layout))


def summarize(text: str, new_sha: str | None, interval: float) -> dict | None:
    """The probe's figures: requests, failed (anything but 2xx), the failures themselves, the
    longest time without a successful answer beyond the probe's own spacing, answers of another
    version after the new one had answered, and the slowest answer."""
    lines = []
    for line in text.splitlines():
        parts = line.split()
        try:
            lines.append((float(parts[0]), parts[1], float(parts[2]), parts[3] if len(parts) > 3 else ""))
        except (IndexError, ValueError):
            continue
    if not lines:
        return None
    first = lines[0][0]
    ok = [(start + took, version) for start, code, took, version in lines if code.startswith("2")]
    failures = [f"+{start - first:.2f}s {'no answer' if code == '000' else 'HTTP ' + code}"
                for start, code, took, version in lines if not code.startswith("2")]
    ends = [first, *sorted(end for end, _ in ok), max(start + took for start, _, took, _ in lines)]
    gap = max((b - a - interval for a, b in zip(ends, ends[1:])), default=0.0)
    seen_new, regressions = False, 0
    for end, version in sorted(ok):
        if new_sha and version and shas.same(version, new_sha):
            seen_new = True
        elif seen_new and version:
            regressions += 1
    return {"requests": len(lines), "failed": len(failures), "failures": failures[:SHOWN_FAILURES],
            "gap_ms": round(max(gap, 0.0) * 1000), "slowest_ms": round(max(t for _, _, t, _ in lines) * 1000),
            "regressions": regressions if new_sha and any(v for _, v in ok) else None}


def describe(figures: dict, switched_back: bool = False) -> str:
    """switch: 0 failed of 412 requests, longest gap 18 ms, no old version after the new"""
    text = (f"{'switch and back' if switched_back else 'switch'}: {figures['failed']} failed of "
            f"{figures['requests']} requests, longest gap {figures['gap_ms']} ms")
    regressions = figures.get("regressions")
    if regressions is None:
        text += " (versions not told apart: no VERSION_PATH)"
    elif switched_back:
        text += f", the old version answered again ({regressions} answer(s) after the new)" if regressions else ""
    elif regressions:
        text += f", {regressions} answer(s) of the old version after the new"
    else:
        text += ", no old version after the new"
    failures = figures.get("failures") or []
    if failures:
        more = figures["failed"] - len(failures)
        text += "\n  failed: " + ", ".join(failures) + (f" and {more} more" if more > 0 else "")
    return text


def combined(each: list[dict]) -> dict:
    """Several hosts' figures as one: requests and failures summed, the longest gap of any."""
    each = [figures for figures in each if figures]
    if not each:
        return {}
    regressions = [f["regressions"] for f in each if f.get("regressions") is not None]
    return {"requests": sum(f["requests"] for f in each), "failed": sum(f["failed"] for f in each),
            "gap_ms": max(f["gap_ms"] for f in each), "regressions": sum(regressions) if regressions else None,
            "hosts": len(each)}
