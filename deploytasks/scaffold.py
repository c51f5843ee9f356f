"""`deploytasks init`: the files a user's repository needs, filled from what is already in it.

detect() reads the repository (its compose file, services, name), files() turns what it found into
the text of each file, write() creates the ones that are missing and never touches one that exists:
a user's tasks.py or env file is theirs. The keys of the env examples, their values and comments
are decided in env_entries() alone, so the key schema has one place to plug into.
"""
from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import keys
from .config import _blue_green_problems, compose_model, image_key
from .keys import IMAGE_RE, NAME_RE
from .errors import ConfigError

# Where Compose itself looks, in its order of preference, and where teams keep them.
COMPOSE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
COMPOSE_DIRS = (".", "compose", "docker")
# Images whose data outlives a release (never restarted by a deploy) ...
STATEFUL_IMAGES = ("postgres", "postgis", "mysql", "mariadb", "redis", "valkey", "keydb", "memcached", "mongo",
                   "rabbitmq", "elasticsearch", "opensearch", "minio", "clickhouse", "kafka", "zookeeper")
# ... and reverse proxies, whose job the host's nginx does.
PROXY_IMAGES = ("nginx", "openresty", "caddy", "traefik", "haproxy", "envoy", "proxy")
WEB_NAMES = ("web", "app", "api", "django", "server")
ENVS = {"staging": "staging.example.com", "production": "example.com"}  # env -> host placeholder
PLACEHOLDER_REGISTRY = "ghcr.io/your-org"  # valid as an image name, so the example loads as it is
GITIGNORE_LINES = ("envs/*.env", "envs/*.app.env")  # env files name hosts; app.env files hold secrets
STATELESS, STATEFUL, LEFT_OUT = "stateless", "stateful", "left out"

TASKS_PY = '''\
"""Deploy tasks: `inv --list` (or `fab --list`) shows deploy, rollback, promote, status, maintenance-on/off.

Tasks of your own join the same collection: define them here with `@invoke.task`, then
`ns.add_task(your_task)`.
"""
from deploytasks.tasks import ns  # noqa: F401
'''
FABFILE_PY = "from tasks import ns  # noqa: F401  (fab lists the same tasks as inv)\n"
APP_ENV = """\
# The app's runtime variables and secrets for {env}: KEY=value, one a line (APP_ENV_FILE).
# git ignores this file; each deploy uploads it to the hosts as app.env, mode 0600.
"""


@dataclass(frozen=True)
class Service:
    """A compose service, and which list of the env file it belongs to, and why."""

    name: str
    role: str  # STATELESS, STATEFUL or LEFT_OUT
    why: str
    image: str = ""  # IMAGE_<SERVICE>, stateless only
    image_note: str = ""
    placeholder: bool = False  # image is ours, not the compose file's: the user must edit it
    ports: bool = False
    problems: tuple[str, ...] = ()  # what the configuration check will refuse in it


@dataclass(frozen=True)
class Detected:
    root: Path
    app_name: str
    repository: str  # "" at the root of a git repository, else what is wrong
    compose_files: tuple[str, ...] = ()  # relative to root; none: process releases
    services: tuple[Service, ...] = ()
    web: str = ""
    unused: tuple[str, ...] = ()  # other compose files found
    migrate_command: str = ""
    app_module: str = ""  # processes: "" when not found

    @property
    def mode(self) -> str:
        return "containers" if self.compose_files else "processes"

    def role(self, role: str) -> tuple[Service, ...]:
        """The services of one role; the web service first."""
        return tuple(sorted((s for s in self.services if s.role == role), key=lambda s: s.name != self.web))


def detect(root: Path, compose_files: Sequence[Path] = ()) -> Detected:
    """What init can tell from the repository: the given compose files (else the one found), the
    role of each service, the app's name. Raises ConfigError for compose files it cannot use."""
    root = root.resolve()
    found = find_compose(root)
    chosen = [(root / p).resolve() for p in compose_files] or found[:1]
    outside = [str(p) for p in chosen if not p.is_relative_to(root)]
    if outside:
        raise ConfigError(f"compose files must be inside the repository {root}", outside)
    problems: list[str] = []
    model = compose_model(tuple(chosen), problems)
    if problems:
        raise ConfigError("cannot read the compose files", problems)
    names = tuple(p.relative_to(root).as_posix() for p in chosen)
    if chosen and not model["services"]:
        raise ConfigError(f"{', '.join(names)}: no services")
    services = tuple(classify(name, spec or {}) for name, spec in model["services"].items())
    stateless = [s for s in services if s.role == STATELESS]
    web = (next((s for s in stateless if s.ports), None) or next((s for s in stateless if s.name in WEB_NAMES), None)
           or (stateless[0] if stateless else None))
    django = (root / "manage.py").is_file()
    return Detected(
        root=root,
        app_name=app_name(root.name),
        repository=repository_problem(root),
        compose_files=names,
        services=services,
        web=web.name if web else "",
        unused=tuple(p.relative_to(root).as_posix() for p in found if p not in chosen) if not compose_files else (),
        migrate_command="python manage.py migrate" if django else "",
        app_module=_wsgi_module(root),
    )


def find_compose(root: Path) -> list[Path]:
    return [root / d / n for d in COMPOSE_DIRS for n in COMPOSE_NAMES if (root / d / n).is_file()]


def repository_problem(root: Path) -> str:
    if (root / ".git").exists():
        return ""
    top = next((p for p in root.parents if (p / ".git").exists()), None)
    if top:
        return f"{root} is inside the git repository {top}, not at its root"
    return f"{root} is not a git repository"


def app_name(directory: str) -> str:
    """APP_NAME from the repository's directory: lowercase, letters, digits and '-'."""
    name = re.sub(r"[^a-z0-9]+", "-", directory.lower())
    name = re.sub(r"^[^a-z]+", "", name)[:40].strip("-")
    return name if NAME_RE.match(name) else "app"


_VARIABLE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*)|:?[?+][^}]*)?\}|\$[A-Za-z_][A-Za-z0-9_]*")


def image_name(image: str) -> str:
    """`registry/org/name` of a compose `image:`: ${VAR:-default} replaced by its default (other
    interpolations dropped), tag and digest removed; "" when what is left is not an image name."""
    name = _VARIABLE.sub(lambda m: m.group(1) or "", image).split("@", 1)[0]
    head, _, last = name.rpartition("/")
    name = (f"{head}/" if head else "") + last.split(":", 1)[0]
    name = name.strip("/").lower()
    return name if IMAGE_RE.match(name) else ""


def _well_known(name: str, known: tuple[str, ...]) -> str:
    """The well-known name that starts a word of the last part of an image, service or directory name."""
    base = name.rsplit("/", 1)[-1].lower()
    return next((k for k in known if re.search(rf"(^|[-_.]){k}", base)), "")


def _named_volumes(spec: dict) -> list[str]:
    names = []
    for volume in spec.get("volumes") or []:
        if isinstance(volume, dict):
            source = str(volume.get("source") or "") if volume.get("type") == "volume" else ""
        else:
            source = str(volume).split(":")[0] if ":" in str(volume) else ""
        if source and not source.startswith(("/", ".", "~", "$")):
            names.append(source)
    return names


def classify(name: str, spec: dict) -> Service:
    """Stateless: the app's own image (or a `build:`, whose image CI pushes), switched blue/green.
    Stateful: a well-known data image or an image with named volumes. Proxies and build-only
    services that are not the app are left out (EXCLUDE_SERVICES): deploytasks never builds on a host."""
    image, build, ports = str(spec.get("image") or ""), spec.get("build"), bool(spec.get("ports"))
    problems = tuple(_blue_green_problems(name, spec))
    if image:
        found = image_name(image)
        stateful, proxy = _well_known(found or image, STATEFUL_IMAGES), _well_known(found or image, PROXY_IMAGES)
        volumes = _named_volumes(spec)
        if stateful:
            return Service(name, STATEFUL, f"image {stateful}")
        if proxy:
            return Service(name, LEFT_OUT, f"image {proxy}: a reverse proxy, which the host's nginx replaces",
                           ports=ports)
        if volumes and build is None:
            return Service(name, STATEFUL, f"named volume {', '.join(volumes)}")
        if found:
            return Service(name, STATELESS, f"image {found}", found, f"compose: image: {image}", False, ports, problems)
        return Service(name, STATELESS, f"image {image}", _placeholder(name),
                       f"placeholder: no image name in {image!r}", True, ports, problems)
    if build is None:
        return Service(name, LEFT_OUT, "neither image: nor build:")
    context = str((build.get("context") if isinstance(build, dict) else build) or ".")
    known = STATEFUL_IMAGES + PROXY_IMAGES
    kind = _well_known(name, known) or _well_known(context.rstrip("/"), known)
    if kind:
        what = ": a reverse proxy, which the host's nginx replaces" if kind in PROXY_IMAGES else f" ({kind})"
        return Service(name, LEFT_OUT, f"only build: {context}{what}; deploytasks never builds on a host",
                       ports=ports)
    return Service(name, STATELESS, f"build: {context}", _placeholder(name),
                   f"placeholder: {name} only has build: {context}; CI builds it and pushes it here, tagged by SHA",
                   True, ports, problems)


def _placeholder(service: str) -> str:
    return f"{PLACEHOLDER_REGISTRY}/{re.sub(r'[^a-z0-9]+', '-', service.lower()).strip('-') or 'app'}"


def _wsgi_module(root: Path) -> str:
    """Django's <project>/wsgi.py, or a top-level app.py; "" when neither is there."""
    for path in sorted(root.glob("*/wsgi.py")):
        if path.parent.name.isidentifier():
            return f"{path.parent.name}.wsgi:application"
    return "app:app" if (root / "app.py").is_file() else ""


def _default(key: str) -> str:
    return keys.BY_NAME[key].default or ""


def _meaning(key: str) -> str:
    """The key's meaning as the README's table states it (keys.py), without markdown."""
    definition = keys.IMAGES if key.startswith(keys.IMAGE_PREFIX) else keys.BY_NAME[key]
    return definition.meaning.replace("`", "")


def env_entries(d: Detected, env: str) -> list[tuple[str, str, str]]:
    """(key, value, comment) of envs/<env>.env.example, in order: the one list of what init writes.
    Each comment is the key's meaning from keys.py, then what init found out about its value."""
    host = ENVS[env]
    stateless, stateful, left_out = d.role(STATELESS), d.role(STATEFUL), d.role(LEFT_OUT)
    entries = [  # (key, value, what init adds to the key's meaning)
        ("APP_NAME", d.app_name, "from the repository's directory name"),
        ("HOSTS", host, "placeholder: edit"),
        ("MODE", d.mode, ""),
        ("SSH_USER", _default("SSH_USER"), ""),
        ("SSH_PORT", _default("SSH_PORT"), ""),
        ("SSH_KEY", "", "empty: the SSH agent and your default keys"),
        ("KNOWN_HOSTS", _default("KNOWN_HOSTS"), ""),
        ("CONNECT_TIMEOUT", _default("CONNECT_TIMEOUT"), ""),
        ("DEPLOY_PATH", f"/srv/{d.app_name}", ""),
    ]
    if d.mode == "containers":
        unused = f"also found, not used: {', '.join(d.unused)}" if d.unused else ""
        entries += [
            ("COMPOSE_FILES", ",".join(d.compose_files), unused),
            ("STATELESS_SERVICES", ",".join(s.name for s in stateless),
             "\n".join([*(f"{s.name}: {s.why}" for s in stateless),
                        *(f"check: {p}" for s in stateless for p in s.problems)])),
            ("STATEFUL_SERVICES", ",".join(s.name for s in stateful), "\n".join(f"{s.name}: {s.why}" for s in stateful)),
            ("EXCLUDE_SERVICES", ",".join(s.name for s in left_out), "\n".join(f"{s.name}: {s.why}" for s in left_out)),
            ("WEB_SERVICE", d.web, "it publishes a port" if any(s.ports for s in stateless if s.name == d.web) else ""),
        ]
        entries += [(image_key(s.name), s.image, f"a deploy pulls <image>:<sha>, so CI pushes one tagged by each "
                                                 f"git SHA\n{s.image_note}".strip()) for s in stateless]
    else:
        entries += [
            ("SOURCE_REPO", _default("SOURCE_REPO"), ""),
            ("SOURCE_PATH", "", "empty: the whole tree"),
            ("APP_MODULE", d.app_module or _default("APP_MODULE"), "" if d.app_module else "placeholder: edit"),
            ("WORKERS", _default("WORKERS"), ""),
            ("PYTHON", _default("PYTHON"), ""),
            ("REQUIREMENTS", _default("REQUIREMENTS"), "gunicorn among them"),
            ("BUILD_COMMAND", "", "empty: no build"),
            ("BUILD_INPUTS", "", "empty: the whole app"),
            ("BUILD_OUTPUT", "", ""),
            ("SHARED_PATHS", "", "uploads and the like"),
            ("SUPERVISOR", _default("SUPERVISOR"), ""),
        ]
    entries += [
        ("MIGRATE_COMMAND", d.migrate_command, "guessed from manage.py: check it" if d.migrate_command else ""),
        ("NGINX_CONF", _default("NGINX_CONF"), ""),
        ("NGINX_SITE_DIR", _default("NGINX_SITE_DIR"), ""),
        ("NGINX_LISTEN", _default("NGINX_LISTEN"), ""),
        ("SERVER_NAME", host, "placeholder: edit"),
        ("HEALTH_PATH", _default("HEALTH_PATH"), ""),
        ("READY_PATH", _default("READY_PATH"), ""),
        ("VERSION_PATH", _default("VERSION_PATH"), ""),
        ("HEALTH_TIMEOUT", _default("HEALTH_TIMEOUT"), ""),
        ("HEALTH_INTERVAL", _default("HEALTH_INTERVAL"), ""),
        ("DRAIN_TIMEOUT", _default("DRAIN_TIMEOUT"), ""),
        ("KEEP_RELEASES", _default("KEEP_RELEASES"), ""),
        ("APP_ENV_FILE", f"envs/{env}.app.env", "init created it, empty; git ignores it"),
        ("APP_ENV_PASSTHROUGH", "", ""),
        ("MAINTENANCE_ALLOW", "", ""),
    ]
    return [(key, value, "\n".join(part for part in (_meaning(key), note) if part)) for key, value, note in entries]


def placeholders(d: Detected) -> list[str]:
    """The keys whose example value the user must replace."""
    keys = ["HOSTS", "SERVER_NAME"] + [image_key(s.name) for s in d.role(STATELESS) if s.placeholder]
    return keys + ([] if d.app_module or d.mode == "containers" else ["APP_MODULE"])


def env_example(d: Detected, env: str) -> str:
    source = ([f"# Filled from {', '.join(d.compose_files)}: check the services' lists below."] if d.compose_files else
              ["# No compose file was found, so this deploys the app as gunicorn processes on the host. For",
               "# Compose, delete the examples and run `deploytasks init --compose FILE`."])
    lines = [
        f"# Copy to envs/{env}.env (git ignores it) and edit the placeholders: {', '.join(placeholders(d))}.",
        f"# Secrets never go in this file (it is committed) nor in envs/{env}.env: the app's secrets go in",
        f"# envs/{env}.app.env (APP_ENV_FILE, untracked) or come from CI (APP_ENV_PASSTHROUGH).",
        f"# deploytasks environment {env!r} (MODE={d.mode}), written by `deploytasks init`.",
        *source,
    ]
    for key, value, comment in env_entries(d, env):
        lines.append("")
        for paragraph in comment.splitlines():
            lines += textwrap.wrap(paragraph, 100, initial_indent="# ", subsequent_indent="#   ")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def files(d: Detected) -> dict[str, str]:
    """Relative path -> text of every file init creates (when it does not exist yet)."""
    texts = {"tasks.py": TASKS_PY, "fabfile.py": FABFILE_PY}
    texts.update({f"envs/{env}.env.example": env_example(d, env) for env in ENVS})
    texts.update({f"envs/{env}.app.env": APP_ENV.format(env=env) for env in ENVS})
    return texts


def write(root: Path, texts: dict[str, str], dry_run: bool = False) -> tuple[list[str], list[str]]:
    """Create each file that does not exist (app env files mode 0600); skip every one that does,
    even a dangling symlink. Returns (written, skipped) relative paths."""
    written, skipped = [], []
    for name, text in texts.items():
        path = root / name
        if os.path.lexists(path):
            skipped.append(name)
            continue
        if not dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
            mode = 0o600 if name.endswith(".app.env") else 0o644
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            except FileExistsError:  # created since we looked
                skipped.append(name)
                continue
            with os.fdopen(fd, "w") as file:
                file.write(text)
        written.append(name)
    return written, skipped


def missing_lines(text: str, lines: Sequence[str] = GITIGNORE_LINES) -> list[str]:
    present = {line.strip() for line in text.splitlines()}
    return [line for line in lines if line not in present]


def append_gitignore(root: Path, dry_run: bool = False) -> list[str]:
    """Append the lines that keep env files and secrets out of git, when missing; returns them."""
    path = root / ".gitignore"
    text = path.read_text() if path.exists() else ""
    missing = missing_lines(text)
    if missing and not dry_run:
        with path.open("a") as file:
            file.write(("\n" if text and not text.endswith("\n") else "") + "\n".join(missing) + "\n")
    return missing
