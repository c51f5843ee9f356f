"""What is on a host now, read in one round trip: a command plus the parser of its output.

Every plan starts from these facts; nothing about the host is remembered on the deploying
machine, so a deploy from a laptop that died half way is recovered by the next one from anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import holder as holders
from . import lock
from .holder import Holder, json_object
from .layout import COLOURS, RELEASE_VENV, Layout
from .plan import sh

_SCRIPT = lock.INSPECT + r"""
blue=$1; green=$2; live=$3; current=$4; flag=$5; releases=$6; history=$7; bluepid=$8; greenpid=$9
marker=${10}; health=${11}; site=${12}; venvs=${13}; venv=${14}; images=${15}
printf 'now %s\n' "$(date +%s)"
printf 'colour blue %s\n' "$(readlink "$blue" 2>/dev/null)"
printf 'colour green %s\n' "$(readlink "$green" 2>/dev/null)"
printf 'live %s\n' "$(readlink "$live" 2>/dev/null)"
# a live link of another name: the site still routes through it (WEB_SERVICE changed since)
for l in "$(dirname "$live")"/*.sock; do [ -L "$l" ] && [ "$l" != "$live" ] && printf 'other-live %s\n' "$(readlink "$l")"; done
printf 'current %s\n' "$(readlink "$current" 2>/dev/null)"
[ -e "$flag" ] && printf 'maintenance on %s\n' "$(head -c 64 "$flag" | tr -d '\n')"
for r in "$releases"/*/; do
  [ -d "$r" ] || continue
  printf 'release %s\n' "$(basename "$r")"
  [ -L "$r$venv" ] && printf 'release-venv %s %s\n' "$(basename "$r")" "$(readlink "$r$venv")"
done
for v in "$venvs"/*/; do [ -d "$v" ] && v=${v%/} && printf 'venv %s\n' "${v##*/}"; done
[ -d "$lock" ] && inspect "$lock"
tail -n 200 "$history" 2>/dev/null | sed 's/^/history /'
[ -d /run/systemd/system ] && echo 'systemd yes'
p=$(cat "$bluepid" 2>/dev/null) && kill -0 "$p" 2>/dev/null && printf 'process blue %s\n' "$p"
p=$(cat "$greenpid" 2>/dev/null) && kill -0 "$p" 2>/dev/null && printf 'process green %s\n' "$p"
[ -f "$marker" ] && printf 'deploying %s\n' "$(tr -d '\n' < "$marker")"
if [ -n "$health" ] && [ -L "$live" ]; then
  # what nginx reaches: the live link's socket, asked for the health path with the site's name
  if curl -fsS -o /dev/null --max-time 3 --unix-socket "$live" -H "Host: $site" "http://localhost$health" 2>/dev/null
  then echo 'answers yes'; else echo 'answers no'; fi
fi
if command -v docker >/dev/null 2>&1; then
  docker ps -a --filter "label=com.docker.compose.project" \
    --format 'container {{.Label "com.docker.compose.project"}}	{{.Label "com.docker.compose.service"}}	{{.State}}	{{.Status}}	{{.Image}}' 2>/dev/null
  # every tagged image, as docker names it (Docker Hub's without docker.io/library/): a prune
  # removes only those the host has
  [ "$images" = yes ] && docker image ls --filter dangling=false --format 'image {{.Repository}}:{{.Tag}}' \
    2>/dev/null && echo 'images listed'
fi
true
"""


@dataclass(frozen=True)
class Container:
    project: str
    service: str
    state: str  # running | exited | created ...
    status: str  # "Up 3 minutes (healthy)"
    image: str

    @property
    def healthy(self) -> bool:
        return self.state == "running" and "unhealthy" not in self.status and "starting" not in self.status


@dataclass(frozen=True)
class HostState:
    now: int = 0
    colours: dict[str, str] = field(default_factory=dict)  # colour -> release name it runs
    live: str | None = None  # colour nginx sends traffic to
    live_elsewhere: bool = False  # found through a live link of another name (WEB_SERVICE changed)
    current: str | None = None  # release name `current` points at
    releases: tuple[str, ...] = ()
    maintenance: bool = False
    maintenance_by: str = ""  # who set it: maintenance.WINDOW (a window deploy), else the operator
    lock: dict | None = None  # who holds the deploy lock (its info.json)
    holder: Holder | None = None  # the same, with whether the holder lives (see holder.py)
    history: tuple[dict, ...] = ()
    containers: tuple[Container, ...] = ()
    processes: dict[str, int] = field(default_factory=dict)  # colour -> gunicorn master pid, if alive
    systemd: bool = False
    in_progress: dict | None = None  # the marker of a deploy under way, or one that died half way
    live_answers: bool | None = None  # the live link's socket answered the health path (None: not asked)
    venvs: tuple[str, ...] = ()  # process releases: the virtualenvs under shared/venvs (names)
    release_venvs: dict[str, str] = field(default_factory=dict)  # release -> the virtualenv it links (its path)
    images: tuple[str, ...] | None = None  # every tagged image, <repository>:<tag> as docker names it (None: not listed)

    @property
    def deployed(self) -> bool:
        return self.live is not None

    def release_of(self, colour: str | None) -> str | None:
        return self.colours.get(colour) if colour else None

    def containers_of(self, project: str) -> list[Container]:
        return [c for c in self.containers if c.project == project]


def read_command(layout: Layout, health_path: str = "", site: str = "localhost",
                 images: bool = False) -> tuple[str, ...]:
    """Every path comes from the layout: the script itself names none. With `health_path`, it
    also asks the live colour's socket whether it answers (as nginx would reach it); with
    `images`, it lists the images the host has (what a prune may remove)."""
    return sh(_SCRIPT, *lock.inspect_args(layout), layout.colour_link("blue"), layout.colour_link("green"),
              layout.live_socket, layout.current, layout.maintenance_flag, layout.releases, layout.history,
              layout.pidfile("blue"), layout.pidfile("green"), layout.in_progress, health_path, site,
              layout.venvs, RELEASE_VENV, "yes" if images else "")


def release_sha(release: str | None) -> str | None:
    """Release directories are named <UTC-ts>-<sha>."""
    return release.rsplit("-", 1)[-1] if release else None


def parse(output: str) -> HostState:
    fields: dict = {"colours": {}, "releases": [], "history": [], "containers": [], "processes": {}, "venvs": [],
                    "release_venvs": {}}
    images, images_listed = [], False
    lock_lines = []
    for line in output.splitlines():
        key, _, value = line.partition(" ")
        if key == "lock" or key.startswith("lock-"):
            lock_lines.append(line)
        elif key == "now" and value.isdigit():
            fields["now"] = int(value)
        elif key == "colour":
            colour, _, target = value.partition(" ")
            if colour in COLOURS and target:
                fields["colours"][colour] = target.rstrip("/").rsplit("/", 1)[-1]
        elif key == "live" and value:
            colour = value.split("/", 1)[0]
            fields["live"] = colour if colour in COLOURS else None
        elif key == "other-live" and value and "live" not in fields:
            colour = value.split("/", 1)[0]
            if colour in COLOURS:
                fields["live"], fields["live_elsewhere"] = colour, True
        elif key == "current" and value:
            fields["current"] = value.rstrip("/").rsplit("/", 1)[-1]
        elif key == "maintenance":
            fields["maintenance"] = True
            fields["maintenance_by"] = value.partition(" ")[2].strip()
        elif key == "release":
            fields["releases"].append(value)
        elif key == "release-venv":
            release, _, target = value.partition(" ")
            if release and target:
                fields["release_venvs"][release] = target.rstrip("/")
        elif key == "venv" and value:
            fields["venvs"].append(value)
        elif key == "image":
            if value and not value.endswith(":<none>"):
                images.append(value)
        elif key == "images" and value == "listed":
            images_listed = True
        elif key == "history":
            entry = json_object(value)
            if entry:
                fields["history"].append(entry)
        elif key == "systemd":
            fields["systemd"] = True
        elif key == "deploying":
            fields["in_progress"] = json_object(value) or {"raw": value}
        elif key == "answers":
            fields["live_answers"] = value == "yes"
        elif key == "process":
            colour, _, pid = value.partition(" ")
            if colour in COLOURS and pid.isdigit():
                fields["processes"][colour] = int(pid)
        elif key == "container":
            parts = value.split("\t")
            if len(parts) == 5:
                fields["containers"].append(Container(*parts))
    fields["holder"] = holders.parse(lock_lines)
    fields["lock"] = fields["holder"].info if fields["holder"] else None
    fields["releases"] = tuple(sorted(fields["releases"]))
    fields["venvs"] = tuple(sorted(fields["venvs"]))
    fields["images"] = tuple(sorted(set(images))) if images_listed else None
    fields["history"] = tuple(fields["history"])
    fields["containers"] = tuple(fields["containers"])
    return HostState(**fields)

