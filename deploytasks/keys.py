"""The env-file keys, each defined once: name, default, check, and the line the README shows.

config.parse validates by these definitions, and the README's configuration tables are rendered
from them (`python -m deploytasks.keys`; a unit test keeps the two equal), so a key cannot be
documented one way and checked another. Checks between keys (services against compose files,
images, the app's env) need the project on disk and stay in config.py. Pure: no fabric, no files.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .hooks import NAMES as HOOK_NAMES

GENERAL, PROCESSES = "general", "processes"
MODES = ("containers", "processes")
SUPERVISORS = ("auto", "systemd", "pidfile")

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
SERVICE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
IMAGE_RE = re.compile(r"^[a-z0-9]+([._:/-][a-z0-9]+)*$")
PATH_RE = re.compile(r"^(/[A-Za-z0-9_-][A-Za-z0-9._-]*)+/?$")
URL_PATH_RE = re.compile(r"^/[A-Za-z0-9._~/-]*$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]*$")
CIDR_RE = re.compile(r"^[0-9a-fA-F:.]+(/\d{1,3})?$")
SERVER_NAMES_RE = re.compile(r"^[A-Za-z0-9_.*-]+( [A-Za-z0-9_.*-]+)*$")
REL_PATH_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.()]*$")
INTERPRETER_RE = re.compile(r"^[A-Za-z0-9_./-]+$")
HOOK_RE = re.compile(f"^({'|'.join(map(re.escape, HOOK_NAMES))})$")
URL_RE = re.compile(r"^https?://[^\s/?#]+(/\S*)?$")


def split(value: str) -> list[str]:
    """A comma-separated value's items, blanks dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


# --- checks: each turns a key's text into its value and records what is wrong as "KEY: ..." ---

Check = Callable[[str, str, list[str]], Any]  # (key, text, problems) -> value


@dataclass(frozen=True)
class Text:
    """Any text: what it must be depends on other keys (checked in config.py)."""

    def __call__(self, key: str, value: str, problems: list[str]) -> str:
        return value


@dataclass(frozen=True)
class LocalPath:
    """A file on the deploying machine; `~` is expanded."""

    def __call__(self, key: str, value: str, problems: list[str]) -> str:
        return os.path.expanduser(value)


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]

    def __call__(self, key: str, value: str, problems: list[str]) -> str:
        if value not in self.options:
            problems.append(f"{key}: {value!r} must be one of {', '.join(self.options)}")
        return value


@dataclass(frozen=True)
class Number:
    """A number within low..high (a bad one reads as `low`, so later checks still run). `blank`:
    empty reads as None, for a default config.py computes from other keys."""

    low: float
    high: float
    blank: bool = False
    whole = False

    def __call__(self, key: str, value: str, problems: list[str]) -> float | None:
        if self.blank and not value:
            return None
        kind = int if self.whole else float
        try:
            number = kind(value)
        except ValueError:
            problems.append(f"{key}: {value!r} is not a {'whole ' if self.whole else ''}number")
            return kind(self.low)
        if not self.low <= number <= self.high:
            problems.append(f"{key}: {value} is out of range {self.low}..{self.high}")
        return number


@dataclass(frozen=True)
class Integer(Number):
    whole = True


@dataclass(frozen=True)
class Match:
    """Text of one shape; `what` names the shape in the problem."""

    pattern: re.Pattern
    what: str

    def ok(self, value: str) -> bool:
        return bool(self.pattern.match(value))

    def __call__(self, key: str, value: str, problems: list[str]) -> str:
        if value and not self.ok(value):
            problems.append(f"{key}: {value!r} is not {self.what}")
        return value


@dataclass(frozen=True)
class HostPath(Match):
    """An absolute path on the host, without `..` (it lands in commands and the nginx site)."""

    pattern: re.Pattern = PATH_RE
    what: str = "an absolute path"

    def ok(self, value: str) -> bool:
        return super().ok(value) and ".." not in value.split("/")

    def __call__(self, key: str, value: str, problems: list[str]) -> str:
        return super().__call__(key, value, problems).rstrip("/")


@dataclass(frozen=True)
class Image(Match):
    """A registry image name without tag: deploys tag it with the SHA."""

    pattern: re.Pattern = IMAGE_RE
    what: str = "an image name without tag"

    def ok(self, value: str) -> bool:
        return super().ok(value) and ":" not in value.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Items:
    """A comma-separated list whose items match `pattern` (any items, without one)."""

    pattern: re.Pattern | None = None
    what: str = ""

    def ok(self, item: str) -> bool:
        return self.pattern is None or bool(self.pattern.match(item))

    def __call__(self, key: str, value: str, problems: list[str]) -> tuple[str, ...]:
        items = split(value)
        bad = [item for item in items if not self.ok(item)]
        if bad:
            problems.append(f"{key}: {', '.join(map(repr, bad))} not {self.what}")
        return tuple(items)


@dataclass(frozen=True)
class Networks(Items):
    """IP addresses and CIDR ranges: the characters first (they reach nginx), then the address."""

    pattern: re.Pattern | None = CIDR_RE
    what: str = "IP addresses or CIDR ranges"

    def ok(self, item: str) -> bool:
        try:
            return super().ok(item) and bool(ipaddress.ip_network(item, strict=False))
        except ValueError:
            return False


@dataclass(frozen=True)
class Command:
    """A command line, split as a shell would (it runs as an argument list, never through a shell)."""

    def __call__(self, key: str, value: str, problems: list[str]) -> tuple[str, ...]:
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            problems.append(f"{key}: cannot be split into arguments ({exc})")
            return ()


@dataclass(frozen=True)
class SecretUrl:
    """An http(s) URL that is a secret (a webhook's token is in its path): a problem names the
    key, never the value."""

    def __call__(self, key: str, value: str, problems: list[str]) -> str:
        if value and not URL_RE.match(value):
            problems.append(f"{key}: not an http:// or https:// URL (the value is a secret: not shown)")
        return value


# --- the keys ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Key:
    """One env-file key: a row of the README's tables and how parse reads it."""

    name: str
    default: str | None  # the value when unset or empty; None: required
    check: Check
    meaning: str  # the README's "meaning" column
    group: str = GENERAL
    shown: str = ""  # the README's "default" column, when the value alone would mislead (computed defaults)

    @property
    def default_text(self) -> str:
        if self.shown:
            return self.shown
        return "required" if self.default is None else f"`{self.default}`" if self.default else "empty"

    def read(self, raw: Mapping[str, str], problems: list[str]) -> Any:
        """This key's value in an env file: stripped, defaulted and checked; problems recorded by key."""
        text = raw.get(self.name, "").strip()
        if not text and self.default is None:
            problems.append(f"{self.name}: missing (required)")
        value = self.check(self.name, text or self.default or "", problems)
        if text and self.default is None and not value:
            problems.append(f"{self.name}: empty (required)")
        return value


PORT = Integer(1, 65535)
URL_PATH = Match(URL_PATH_RE, "a URL path")
SERVICES = Items(SERVICE_RE, "compose service names")
REL_PATH = Match(REL_PATH_RE, "a relative path without '..'")
REL_PATHS = Items(REL_PATH_RE, "relative paths")
# Every remote command runs under a bound (TIMEOUT_*): the host stops it, so a hung registry or
# migration cannot hold the deploy lock for hours.
TIMEOUT_MAX = 86400
TIMEOUT = Number(1, TIMEOUT_MAX)
STOP_MARGIN = 30  # TIMEOUT_STOP's default above DRAIN_TIMEOUT: the grace before SIGKILL, then the kill itself

# One entry per key, in the README's order. IMAGES stands for the IMAGE_<SERVICE> keys, one per
# stateless service: which exist depends on STATELESS_SERVICES, so config.py reads them.
IMAGES = Key("IMAGE_<SERVICE>", None, Image(),
             "image name without tag for that service (`IMAGE_WEB=ghcr.io/org/web`); the tag is the SHA",
             shown="required per stateless service")
IMAGE_PREFIX = "IMAGE_"

KEYS: tuple[Key, ...] = (
    Key("APP_NAME", None, Match(NAME_RE, "lowercase letters, digits and '-', starting with a letter"),
        "lowercase name: compose projects `<app>`, `<app>-blue`, `<app>-green`, the nginx site `<app>.conf`"),
    Key("HOSTS", None, Items(HOST_RE, "hostnames or IP addresses"),
        "comma-separated hostnames or addresses; several are one rollout (see Several hosts), the first "
        "runs the migration"),
    Key("MODE", "containers", Choice(MODES),
        "`containers` (Compose) or `processes` (gunicorn on the host)"),
    Key("SSH_USER", "root", Match(USER_RE, "a Unix user name"),
        "SSH user; needs to run `docker` and `nginx` and write `DEPLOY_PATH` and `NGINX_SITE_DIR`"),
    Key("SSH_PORT", "22", PORT,
        "SSH port"),
    Key("SSH_KEY", "", LocalPath(),
        "private key file", shown="agent / default keys"),
    Key("KNOWN_HOSTS", "~/.ssh/known_hosts", LocalPath(),
        "the only host keys trusted; an unknown key is refused (see `--accept-new-host-key`)"),
    Key("CONNECT_TIMEOUT", "10", Number(1, 300),
        "seconds to reach a host and finish the SSH handshake"),
    Key("SSH_ALIVE_SECONDS", "5", Number(1, 300),
        "seconds between keepalive requests the host must answer; with no answer for `SSH_ALIVE_COUNT` of "
        "these intervals the connection is declared dead and closed, so a silent network cut fails the "
        "running step in seconds"),
    Key("SSH_ALIVE_COUNT", "3", Integer(1, 100),
        "keepalive intervals without an answer before the connection is declared dead"),
    Key("DEPLOY_PATH", "", HostPath(),
        "the app's directory on the host (layout below)", shown="`/srv/<APP_NAME>`"),
    Key("COMPOSE_FILES", "compose/compose.yml", Items(),
        "comma-separated compose files inside this repository, deployed as they are"),
    Key("STATELESS_SERVICES", "", SERVICES,
        "services switched blue/green (the web service and workers)", shown="required for containers"),
    Key("STATEFUL_SERVICES", "", SERVICES,
        "services shared by both colours and never restarted by a deploy (databases, caches); "
        "every compose service must be in one of the two lists or in `EXCLUDE_SERVICES`"),
    Key("EXCLUDE_SERVICES", "", SERVICES,
        "compose services left out of the deploy: never pulled, built or started (the app's own reverse "
        "proxy, which the host's nginx replaces; dev tools); a deployed service may not depend on one"),
    Key("WEB_SERVICE", "", Text(),
        "the stateless service nginx routes to", shown="first stateless"),
    IMAGES,
    Key("NGINX_CONF", "/etc/nginx/nginx.conf", HostPath(),
        "the host's main nginx config (for `nginx -t` and reload)"),
    Key("NGINX_SITE_DIR", "/etc/nginx/conf.d", HostPath(),
        "a directory the main config includes; the site is written as `<app>.conf`"),
    Key("NGINX_LISTEN", "80", PORT,
        "port the site listens on"),
    Key("NGINX_ACCESS_LOG", "/var/log/nginx/access.log",
        Match(re.compile(r"^(off|/[A-Za-z0-9_./-]+( [A-Za-z0-9_]+)?)$"), "`off`, or a path and an optional log_format"),
        "the site's access log, as nginx's `access_log` takes it (a path, then a `log_format` name if not "
        "`combined`): the site also logs its app's 5xx answers apart, to `/var/log/nginx/<app>-5xx.log` (for the "
        "watch after the switch), and an nginx server with an access_log of its own no longer inherits the http "
        "level's, so the site sets this one again (Debian's and Ubuntu's default path); `off`: none"),
    Key("SERVER_NAME", "_", Match(SERVER_NAMES_RE, "nginx server names"),
        "nginx `server_name` (space-separated names)"),
    Key("HEALTH_PATH", "/healthz", URL_PATH,
        "liveness endpoint (process up), answering 2xx; always passes maintenance mode. One URL is enough: "
        "readiness and the check after the switch use it unless `READY_PATH` / `VERSION_PATH` are set"),
    Key("READY_PATH", "", URL_PATH,
        "readiness endpoint (database reachable, schema compatible); gates every switch",
        shown="`HEALTH_PATH`"),
    Key("VERSION_PATH", "", URL_PATH,
        "optional: answers the SHA the app was built from, checked through nginx after the switch; without it "
        "the check asks `HEALTH_PATH` through nginx and, for a relayed app (`WEB_PORT`), the colour nginx "
        "stamps on the answer (`X-Deploy-Colour`)", shown="empty (no version endpoint)"),
    Key("WEB_PORT", "", Integer(1, 65535, blank=True),
        "the TCP port the web service listens on inside its container (`gunicorn --bind 0.0.0.0:8000` on the "
        "image's command line, a Node or Go server): each colour is published on a loopback port of its own "
        "(`WEB_HOST_PORTS`) and nginx relays that colour's fixed unix socket to it, so a deploy is still one "
        "rename with no reload", shown="empty (the app listens on the unix socket `$APP_SOCKET`)"),
    Key("WEB_HOST_PORTS", "", Items(re.compile(r"^\d{1,5}$"), "port numbers"),
        "the two loopback ports the blue and green colours listen on when relayed (`WEB_PORT`, "
        "`LISTEN=port`); they must be free on every host",
        shown="two ports from 20000-29999 derived from `APP_NAME`"),
    Key("STATIC_URL", "", URL_PATH,
        "URL prefix of the app's static files (`/static/`), served by the host's nginx from each release: a "
        "page of either version finds its assets while both serve", shown="empty (the app serves them)"),
    Key("STATIC_PATH", "", Text(),
        "where those files are: a directory inside the web image (containers: copied out of the new colour once "
        "it runs, so `collectstatic` at build or at start both work) or in the release (processes)",
        shown="required with `STATIC_URL`"),
    Key("MEDIA_URL", "", URL_PATH,
        "URL prefix of user uploads (`/media/`), served by the host's nginx from `shared/media/` "
        "(never from Docker's own directories)", shown="empty"),
    Key("MEDIA_PATH", "", Text(),
        "where the app writes uploads: a directory inside the web containers (containers: `shared/media` is "
        "mounted there, owned by the user the image runs as) or in the release (processes: linked to "
        "`shared/media`)", shown="required with `MEDIA_URL`"),
    Key("HEALTH_TIMEOUT", "120", Number(1, 3600),
        "seconds the new colour has to become healthy and then ready"),
    Key("HEALTH_INTERVAL", "1", Number(0.1, 60),
        "seconds between readiness polls"),
    Key("DRAIN_TIMEOUT", "30", Number(0, 3600),
        "seconds the old colour keeps serving the connections it has after the switch (long requests, "
        "WebSockets): it stops once they have all closed or this has passed, whichever is first; also gunicorn's "
        "`--graceful-timeout` (compose stop grace is this + 5)"),
    Key("MONITOR_SECONDS", "5", Number(0, 600),
        "after the switch, seconds the new colour is watched while the old one still runs: readiness and version "
        "through nginx, and the 5xx answers nginx logs for the site; a failure sends traffic back to the old "
        "colour at once and fails the deploy. 0: no watch"),
    Key("PROBE_RATE", "10", Number(0, 100),
        "requests per second of the probe each deploy and rollback runs on the host through its nginx, from just "
        "before the switch until the drain ends (what the deploy's users saw: failed requests, longest gap, old "
        "answers after new); 0 turns it off, as `--no-probe` does for one deploy"),
    Key("MIGRATE_COMMAND", "", Command(),
        "command run in a one-off container of the new web image before any traffic moves",
        shown="empty (no migrations)"),
    Key("TIMEOUT_COMMAND", "120", TIMEOUT,
        "seconds any remote command without a bound of its own may run (reading the host's state, the lock, "
        "links, the nginx site, cleanup, each readiness probe)"),
    Key("TIMEOUT_PULL", "600", TIMEOUT,
        "seconds `docker compose pull` may run (and the start of the stateful services, which may pull "
        "their images)"),
    Key("TIMEOUT_MIGRATE", "1800", TIMEOUT,
        "seconds `MIGRATE_COMMAND` may run"),
    Key("TIMEOUT_STOP", "", Number(1, TIMEOUT_MAX, blank=True),
        "seconds stopping a colour may take (drain, undoing a start, a systemd restart); more than "
        "`DRAIN_TIMEOUT` + 5, the graceful stop before SIGKILL",
        shown=f"`DRAIN_TIMEOUT` + {STOP_MARGIN}"),
    Key("KEEP_RELEASES", "5", Integer(2, 100),
        "releases kept on each host: the newest this many whose deploy succeeded (one that failed or never "
        "finished takes no place), and always the live one, the previous one (the rollback target) and each "
        "colour's; the others go after each deploy and with `prune`, with the images or virtualenvs only they "
        "used"),
    Key("APP_ENV_FILE", "", LocalPath(),
        "the app's runtime variables and secrets: an untracked dotenv file, uploaded per release as "
        "`app.env`, mode 0600"),
    Key("APP_ENV_PASSTHROUGH", "", Items(),
        "comma-separated names of process environment variables (CI secrets) added to `app.env`"),
    Key("MAINTENANCE_ALLOW", "", Networks(),
        "addresses / CIDR ranges that bypass maintenance mode"),
    Key("HOOKS_DIR", ".deploytasks/hooks", LocalPath(),
        "directory (in this repository, or absolute) of the executables run on this machine around each deploy "
        "and rollback: `pre-deploy`, `post-switch`, `post-deploy`, `deploy-failed` (see Hooks and notifications); "
        "a missing one is skipped, one that is not executable is refused before connecting"),
    Key("HOOKS_PER_HOST", "", Items(HOOK_RE, "hook names (" + ", ".join(HOOK_NAMES) + ")"),
        "comma-separated hooks run once per host (with `DEPLOY_HOST`) instead of once per deploy"),
    Key("HOOK_TIMEOUT", "300", TIMEOUT,
        "seconds a hook may run: then it is stopped (TERM, KILL 5 s later) and counts as failed"),
    Key("WEBHOOK_URL", "", SecretUrl(),
        "Slack- or Discord-compatible incoming webhook told when a deploy or rollback starts, succeeds or fails; "
        "a secret, masked in every line printed (`WEBHOOK_URL=${SLACK_WEBHOOK_URL}` reads it from the process "
        "environment); one it cannot reach is a warning, never a failed deploy",
        shown="empty (no notifications)"),

    Key("SOURCE_REPO", ".", LocalPath(),
        "local git repository whose commits are deployed (the host needs no access to it)", group=PROCESSES),
    Key("SOURCE_PATH", "", REL_PATH,
        "subdirectory of the repository that is the app", group=PROCESSES, shown="empty (whole tree)"),
    Key("APP_MODULE", "app:app", Match(MODULE_RE, "a WSGI module:callable"),
        "the WSGI callable gunicorn serves", group=PROCESSES),
    Key("START_COMMAND", "", Command(),
        "the app server to run instead of gunicorn (a Node, uvicorn or Go server), in the release with the "
        "app's env and virtualenv; it listens on `$PORT` (`LISTEN=port`) or `$APP_SOCKET`, stops gracefully "
        "on SIGTERM and stays in the foreground", group=PROCESSES, shown="empty (gunicorn `APP_MODULE`)"),
    Key("LISTEN", "socket", Choice(("socket", "port")),
        "where the app server listens: `socket` (`$APP_SOCKET`, a unix socket) or `port` (`$PORT` on "
        "127.0.0.1, relayed by nginx like `WEB_PORT`)", group=PROCESSES),
    Key("WORKERS", "4", Integer(1, 64),
        "gunicorn workers per colour", group=PROCESSES),
    Key("PYTHON", "python3", Match(INTERPRETER_RE, "an interpreter name or path"),
        "interpreter on the host that creates the virtualenvs", group=PROCESSES),
    Key("REQUIREMENTS", "requirements.txt", REL_PATH,
        "requirements file in the app (its git blob id keys the virtualenv)", group=PROCESSES),
    Key("BUILD_COMMAND", "", Command(),
        "command run in the release with the app's env and virtualenv",
        group=PROCESSES, shown="empty (no build)"),
    Key("BUILD_INPUTS", "", REL_PATHS,
        "paths whose content decides whether `--fast` may reuse the build",
        group=PROCESSES, shown="empty (the whole app)"),
    Key("BUILD_OUTPUT", "", REL_PATH,
        "what the build produces, copied from the live release by `--fast`",
        group=PROCESSES, shown="required with a build"),
    Key("SHARED_PATHS", "", REL_PATHS,
        "paths linked from `shared/` into every release", group=PROCESSES),
    Key("SUPERVISOR", "auto", Choice(SUPERVISORS),
        "`auto` (systemd if the host runs it, else pid files), `systemd` or `pidfile`", group=PROCESSES),
    Key("TIMEOUT_DEPENDENCIES", "900", TIMEOUT,
        "seconds creating a virtualenv and `pip install` may take", group=PROCESSES),
    Key("TIMEOUT_BUILD", "1800", TIMEOUT,
        "seconds `BUILD_COMMAND` may run", group=PROCESSES),
)

# the keys an env file may set by name (the IMAGE_<SERVICE> keys aside)
BY_NAME: dict[str, Key] = {key.name: key for key in KEYS if key is not IMAGES}


def of(group: str) -> list[Key]:
    """The keys of a group that an env file sets by name, in order."""
    return [key for key in BY_NAME.values() if key.group == group]


def defined(name: str) -> bool:
    """Whether an env file may set `name` (anything else is reported as an unknown key)."""
    return name in BY_NAME or name.startswith(IMAGE_PREFIX)


# --- the README's tables -----------------------------------------------------------------------

PROCESSES_INTRO = "Keys for `MODE=processes` (container keys about compose and images do not apply):"


def table(group: str) -> str:
    """One markdown table of the README: every key of `group`, IMAGE_<SERVICE> included."""
    rows = [f"| `{key.name}` | {key.default_text} | {key.meaning} |" for key in KEYS if key.group == group]
    return "\n".join(["| key | default | meaning |", "| --- | --- | --- |", *rows])


def tables() -> str:
    """The README's configuration tables, as they appear there: general, then process keys."""
    return f"{table(GENERAL)}\n\n{PROCESSES_INTRO}\n\n{table(PROCESSES)}\n"


if __name__ == "__main__":
    print(tables(), end="")
