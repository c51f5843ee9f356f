"""Configuration: one env file per environment, read into a frozen, validated object.

Every problem in a file is collected and reported at once, by key, before any connection
opens: a deploy that fails on its fifth typo one SSH round trip at a time wastes a morning.
"""
from __future__ import annotations

import io
import os
import posixpath
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from dotenv import dotenv_values

from . import keys
from .errors import ConfigError

ENV_DIR = "envs"
# nginx templates: a file of this name in the project's nginx/ overrides the packaged default
TEMPLATES = {"site": "site.conf.template", "maintenance": "maintenance.html"}
PACKAGED_TEMPLATES = Path(__file__).resolve().parent / "templates"
SECRET_KEY_PATTERN = re.compile(r"SECRET|PASS|TOKEN|KEY|CREDENTIAL|PRIVATE|DSN|AUTH|SALT|COOKIE", re.I)
URL_PASSWORD = re.compile(r"://[^/:@\s]+:([^/@\s]+)@")  # postgres://user:PASSWORD@host
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; nginx adds "unix:" and the socket name

# what deploytasks writes into a release (compose.* are the overlay and the interpolation env)
RESERVED_IN_RELEASE = ("app.env", ".venv", ".deploytasks", "nginx", "RELEASE.json", "compose.deploy.yml", "compose.env")


@dataclass(frozen=True)
class EnvFile:
    """A file a compose service names in `env_file:`, uploaded with each release at its path in
    the repository (mode 0600), where compose on the host looks for it."""

    name: str  # relative to the repository root, as in the release
    content: bytes = field(repr=False)

    @property
    def values(self) -> dict[str, str]:
        return {k: v or "" for k, v in dotenv_values(stream=io.StringIO(self.content.decode(errors="replace"))).items()}


@dataclass(frozen=True)
class Config:
    """One environment, validated. Paths are absolute; lists are tuples."""

    env: str
    root: Path
    app_name: str
    hosts: tuple[str, ...]
    mode: str
    ssh_user: str
    ssh_port: int
    ssh_key: str
    known_hosts: str
    connect_timeout: float
    ssh_alive_seconds: float
    ssh_alive_count: int
    deploy_path: str
    compose_files: tuple[Path, ...]
    stateless: tuple[str, ...]
    stateful: tuple[str, ...]
    web_service: str
    images: dict[str, str]
    nginx_conf: str
    nginx_site_dir: str
    nginx_listen: int
    server_name: str
    health_path: str
    ready_path: str
    version_path: str
    health_timeout: float
    health_interval: float
    drain_timeout: float
    monitor_seconds: float
    nginx_access_log: str
    probe_rate: float
    web_port: int | None
    web_host_ports: tuple[int, int]
    static_url: str
    static_path: str
    media_url: str
    media_path: str
    migrate_command: tuple[str, ...]
    timeout_command: float
    timeout_pull: float
    timeout_migrate: float
    timeout_stop: float
    keep_releases: int
    app_env: dict[str, str] = field(repr=False)
    env_files: tuple[EnvFile, ...] = ()
    excluded: tuple[str, ...] = ()  # compose services left out of the deploy (EXCLUDE_SERVICES)
    maintenance_allow: tuple[str, ...] = ()
    hooks_dir: Path = Path(".deploytasks/hooks")  # absolute once parsed (HOOKS_DIR, relative to the root)
    hooks_per_host: tuple[str, ...] = ()
    hook_timeout: float = 300.0
    webhook_url: str = field(default="", repr=False)
    processes: "ProcessConfig | None" = None
    site_template: Path = PACKAGED_TEMPLATES / TEMPLATES["site"]
    maintenance_page: Path = PACKAGED_TEMPLATES / TEMPLATES["maintenance"]

    @property
    def relayed(self) -> bool:
        """Whether the app listens on a TCP port that nginx relays each colour's socket to (WEB_PORT,
        or a process server with LISTEN=port), rather than on the colour's unix socket itself."""
        if self.processes:
            return self.processes.listen == "port"
        return self.web_port is not None

    def port(self, colour: str) -> int:
        """The loopback port `colour` listens on when relayed."""
        return self.web_host_ports[0 if colour == "blue" else 1]

    @property
    def check_paths(self) -> tuple[str, ...]:
        """The app's paths deploytasks asks (each reaches the app in maintenance too), once each."""
        return tuple(dict.fromkeys(p for p in (self.health_path, self.ready_path, self.version_path) if p))

    @property
    def stop_grace(self) -> int:
        """Seconds a stopping colour gets to finish its requests before SIGKILL."""
        return int(self.drain_timeout) + 5

    def secrets(self) -> list[str]:
        """Values never to print: values whose key looks secret, and passwords in URLs, of the app
        env and of the compose services' env files; the webhook URL, and its path on its own (an
        HTTP library's error names the path without the host)."""
        envs = [self.app_env, *(env_file.values for env_file in self.env_files)]
        values = [v for env in envs for k, v in env.items() if v and SECRET_KEY_PATTERN.search(k)]
        values += [m for env in envs for v in env.values() for m in URL_PASSWORD.findall(v)]
        return values + webhook_secrets(self.webhook_url)


@dataclass(frozen=True)
class ProcessConfig:
    """How a process release is built and run (MODE=processes)."""

    source_repo: Path
    source_path: str
    app_module: str
    workers: int
    python: str
    requirements: str
    start_command: tuple[str, ...]
    listen: str
    build_command: tuple[str, ...]
    build_inputs: tuple[str, ...]
    build_output: str
    shared_paths: tuple[str, ...]
    supervisor: str
    timeout_dependencies: float
    timeout_build: float


def webhook_secrets(url: str) -> list[str]:
    """A webhook URL carries its token in the path (Slack's /services/T/B/TOKEN, Discord's
    /api/webhooks/ID/TOKEN): the URL and, apart, its path and query."""
    if not url:
        return []
    rest = url.split("://", 1)[-1]
    path = rest[rest.index("/"):] if "/" in rest else ""
    return [url] + ([path] if len(path.strip("/")) >= 3 else [])


def env_file(root: Path, env: str) -> Path:
    return root / ENV_DIR / f"{env}.env"


def available_envs(root: Path) -> list[str]:
    return sorted(p.name[: -len(".env")] for p in (root / ENV_DIR).glob("*.env"))


def select_env(root: Path, env: str | None, host: str | None = None) -> str:
    """--env, else DEPLOY_ENV, else (for `fab -H HOST`) the one environment listing HOST."""
    env = env or os.environ.get("DEPLOY_ENV")
    if env:
        if not keys.NAME_RE.match(env) or not env_file(root, env).is_file():
            raise ConfigError(f"unknown environment {env!r}: expected one of {', '.join(available_envs(root)) or 'none'} in {ENV_DIR}/")
        return env
    if not host:
        raise ConfigError("no environment selected: pass --env ENV or set DEPLOY_ENV")
    matches = [e for e in available_envs(root) if host in keys.split(dotenv_values(env_file(root, e)).get("HOSTS") or "")]
    if len(matches) != 1:
        found = f"several: {', '.join(matches)}" if matches else "none"
        raise ConfigError(f"host {host!r} must be listed in the HOSTS of exactly one environment ({found}); pass --env ENV")
    return matches[0]


def load(root: Path, env: str, environ: dict[str, str] | None = None) -> Config:
    """Read envs/<env>.env (process environment overrides nothing: the file is the record)."""
    path = env_file(root, env)
    if not path.is_file():
        raise ConfigError(f"environment file {path} not found")
    return parse(root, env, {k: (v or "") for k, v in dotenv_values(path).items()},
                 os.environ if environ is None else environ)


def parse(root: Path, env: str, raw: dict[str, str], environ: dict[str, str]) -> Config:
    """Check every key by its definition (deploytasks.keys), then what lies between keys."""
    problems: list[str] = []
    values = _read(raw, keys.GENERAL, problems)
    mode = values["MODE"]
    if mode == "processes":  # process keys mean nothing to containers: read (and checked) only here
        values.update(_read(raw, keys.PROCESSES, problems))
    app_name, stateless, stateful = values["APP_NAME"], values["STATELESS_SERVICES"], values["STATEFUL_SERVICES"]
    if mode == "containers" and not stateless:
        problems.append("STATELESS_SERVICES: missing (required for MODE=containers)")
    if mode == "processes" and not stateless:
        stateless = ("web",)  # the gunicorn of each colour is the one stateless "service"
    web = values["WEB_SERVICE"] or (stateless[0] if stateless else "")
    if web and web not in stateless:
        problems.append(f"WEB_SERVICE: {web!r} must be one of STATELESS_SERVICES")
    both = sorted(set(stateless) & set(stateful))
    if both:
        problems.append(f"STATEFUL_SERVICES: {', '.join(both)} cannot also be stateless")
    excluded = values["EXCLUDE_SERVICES"]
    deployed = sorted(set(excluded) & {*stateless, *stateful})
    if deployed:
        problems.append(f"EXCLUDE_SERVICES: {', '.join(deployed)} cannot also be deployed (stateless or stateful)")
    compose_files = _compose_files(root, values["COMPOSE_FILES"], problems)
    env_files: tuple[EnvFile, ...] = ()
    services: dict[str, dict] = {}
    if mode == "containers":
        services = _check_compose(compose_files, stateless, stateful, excluded, problems)
        env_files = _env_files(root, compose_files[0].parent, services, problems) if services else ()
    images = _images(raw, stateless if mode == "containers" else (), services, problems)
    problems.extend(f"{k}: unknown key" for k in sorted(raw) if not keys.defined(k))
    app_env = _app_env(root, values["APP_ENV_FILE"], values["APP_ENV_PASSTHROUGH"], environ, problems)

    config = Config(
        env=env,
        root=root,
        app_name=app_name,
        hosts=values["HOSTS"],
        mode=mode,
        ssh_user=values["SSH_USER"],
        ssh_port=values["SSH_PORT"],
        ssh_key=values["SSH_KEY"],
        known_hosts=values["KNOWN_HOSTS"],
        connect_timeout=values["CONNECT_TIMEOUT"],
        ssh_alive_seconds=values["SSH_ALIVE_SECONDS"],
        ssh_alive_count=values["SSH_ALIVE_COUNT"],
        deploy_path=values["DEPLOY_PATH"] or f"/srv/{app_name}",
        compose_files=compose_files,
        stateless=stateless,
        stateful=stateful,
        web_service=web,
        images=images,
        nginx_conf=values["NGINX_CONF"],
        nginx_site_dir=values["NGINX_SITE_DIR"],
        nginx_listen=values["NGINX_LISTEN"],
        server_name=values["SERVER_NAME"],
        health_path=values["HEALTH_PATH"],
        ready_path=values["READY_PATH"] or values["HEALTH_PATH"],
        version_path=values["VERSION_PATH"],
        health_timeout=values["HEALTH_TIMEOUT"],
        health_interval=values["HEALTH_INTERVAL"],
        drain_timeout=values["DRAIN_TIMEOUT"],
        monitor_seconds=values["MONITOR_SECONDS"],
        nginx_access_log=values["NGINX_ACCESS_LOG"],
        probe_rate=values["PROBE_RATE"],
        web_port=values["WEB_PORT"],
        web_host_ports=_host_ports(values["WEB_HOST_PORTS"], app_name, problems),
        static_url=values["STATIC_URL"],
        static_path=values["STATIC_PATH"],
        media_url=values["MEDIA_URL"],
        media_path=values["MEDIA_PATH"],
        migrate_command=values["MIGRATE_COMMAND"],
        timeout_command=values["TIMEOUT_COMMAND"],
        timeout_pull=values["TIMEOUT_PULL"],
        timeout_migrate=values["TIMEOUT_MIGRATE"],
        timeout_stop=values["TIMEOUT_STOP"] or values["DRAIN_TIMEOUT"] + keys.STOP_MARGIN,
        keep_releases=values["KEEP_RELEASES"],
        app_env=app_env,
        env_files=env_files,
        excluded=excluded,
        maintenance_allow=values["MAINTENANCE_ALLOW"],
        hooks_dir=_local_path(root, values["HOOKS_DIR"]),
        hooks_per_host=values["HOOKS_PER_HOST"],
        hook_timeout=values["HOOK_TIMEOUT"],
        webhook_url=values["WEBHOOK_URL"],
        processes=_processes(root, values, problems) if mode == "processes" else None,
        site_template=template(root, "site", problems),
        maintenance_page=template(root, "maintenance", problems),
    )
    _check_consistency(config, problems)
    if problems:
        raise ConfigError(f"{env_file(root, env).relative_to(root) if root else env}: {len(problems)} problem(s)", problems)
    return config


def _local_path(root: Path, value: str) -> Path:
    """A path on the deploying machine: as given if absolute, else in the repository."""
    path = Path(value)
    return path if path.is_absolute() else root / path


def _read(raw: dict[str, str], group: str, problems: list[str]) -> dict:
    """The checked value of every key of `group`, by name; each problem recorded by key."""
    return {key.name: key.read(raw, problems) for key in keys.of(group)}


def template(root: Path, kind: str, problems: list[str] | None = None) -> Path:
    """The project's nginx/<name> if it has one, else the packaged default; unreadable is a problem."""
    own = root / "nginx" / TEMPLATES[kind]
    path = own if own.exists() else PACKAGED_TEMPLATES / TEMPLATES[kind]
    try:
        path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        if problems is None:
            raise
        problems.append(f"nginx template {path}: cannot be read ({exc.__class__.__name__})")
    return path


def _check_consistency(config: "Config", problems: list[str]) -> None:
    """Problems between keys, that nginx or the kernel would only report after connecting."""
    if len(set(config.hosts)) != len(config.hosts):
        problems.append("HOSTS: a host is listed twice")
    if config.mode == "processes" and config.web_port is not None:
        problems.append("WEB_PORT: for containers; a process server on a port is LISTEN=port (it gets $PORT)")
    if config.processes and config.processes.listen == "port" and not config.processes.start_command:
        problems.append("LISTEN: port needs START_COMMAND (gunicorn of APP_MODULE listens on its socket)")
    from . import nginx  # nginx renders from a Config: imported here, not at the top

    if config.site_template.exists():
        problems.extend(nginx.template_problems(config))
    _check_files_url(config, "STATIC", config.static_url, config.static_path, problems)
    _check_files_url(config, "MEDIA", config.media_url, config.media_path, problems)
    if config.static_url and config.static_url == config.media_url:
        problems.append("MEDIA_URL: must differ from STATIC_URL")
    if config.timeout_stop <= config.stop_grace:
        problems.append(f"TIMEOUT_STOP: {config.timeout_stop:g} leaves no time to stop a colour: it gets "
                        f"DRAIN_TIMEOUT + 5 = {config.stop_grace}s before SIGKILL")
    socket = f"{config.deploy_path}/run/green/{config.web_service or 'web'}.sock"
    if len(socket) > SOCKET_PATH_MAX:
        problems.append(f"DEPLOY_PATH: too long for a unix socket path ({socket} is {len(socket)} bytes, "
                        f"at most {SOCKET_PATH_MAX})")


def _host_ports(listed: tuple[str, ...], app_name: str, problems: list[str]) -> tuple[int, int]:
    """WEB_HOST_PORTS, or two ports derived from the app's name (apps on one host rarely meet)."""
    if not listed:
        base = 20000 + 2 * (zlib.crc32((app_name or "").encode()) % 5000)
        return base, base + 1
    if not all(p.isdigit() for p in listed):
        return 20000, 20001  # the check has said what is wrong with them
    ports = tuple(int(p) for p in listed)
    if len(ports) != 2 or ports[0] == ports[1] or not all(1024 <= p <= 65535 for p in ports):
        problems.append(f"WEB_HOST_PORTS: {','.join(listed)!r} must be two different ports in 1024..65535 "
                        "(blue's, then green's)")
        return 20000, 20001
    return ports[0], ports[1]


def _check_files_url(config: "Config", kind: str, url: str, path: str, problems: list[str]) -> None:
    """STATIC_URL/STATIC_PATH and MEDIA_URL/MEDIA_PATH: both or neither, and a path of the right kind."""
    if bool(url) != bool(path):
        problems.append(f"{kind}_URL, {kind}_PATH: set both or neither")
        return
    if not url:
        return
    if not url.endswith("/") or url == "/":
        problems.append(f"{kind}_URL: {url!r} must be a prefix ending in '/', not '/' itself")
    if url in config.check_paths:
        problems.append(f"{kind}_URL: {url!r} is also one of HEALTH_PATH, READY_PATH, VERSION_PATH")
    shape = keys.REL_PATH if config.mode == "processes" else keys.HostPath()
    what = "a path in the release" if config.mode == "processes" else "an absolute path inside the web image"
    if not shape.ok(path.rstrip("/")):
        problems.append(f"{kind}_PATH: {path!r} is not {what}")


def _processes(root: Path, values: dict, problems: list[str]) -> ProcessConfig:
    """The process keys' values, and what a key cannot tell alone: the repository, shared paths, the build."""
    repo = Path(values["SOURCE_REPO"])
    repo = repo if repo.is_absolute() else root / repo
    if not (repo / ".git").exists() and not (repo / "HEAD").exists():
        problems.append(f"SOURCE_REPO: {repo} is not a git repository")
    shared = values["SHARED_PATHS"]
    reserved = [p for p in shared if p.split("/")[0] in RESERVED_IN_RELEASE]
    if reserved:
        problems.append(f"SHARED_PATHS: {', '.join(reserved)} would replace what deploytasks writes into a release")
    if values["BUILD_COMMAND"] and not values["BUILD_OUTPUT"]:
        problems.append("BUILD_OUTPUT: required with BUILD_COMMAND (what the build produces, reused by --fast)")
    return ProcessConfig(
        source_repo=repo,
        source_path=values["SOURCE_PATH"],
        app_module=values["APP_MODULE"],
        start_command=values["START_COMMAND"],
        listen=values["LISTEN"],
        workers=values["WORKERS"],
        python=values["PYTHON"],
        requirements=values["REQUIREMENTS"],
        build_command=values["BUILD_COMMAND"],
        build_inputs=values["BUILD_INPUTS"],
        build_output=values["BUILD_OUTPUT"],
        shared_paths=shared,
        supervisor=values["SUPERVISOR"],
        timeout_dependencies=values["TIMEOUT_DEPENDENCIES"],
        timeout_build=values["TIMEOUT_BUILD"],
    )


def image_key(service: str) -> str:
    return keys.IMAGE_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", service).upper()


def _compose_files(root: Path, names: tuple[str, ...], problems: list[str]) -> tuple[Path, ...]:
    """Compose files live inside the project: they are uploaded under the same relative path."""
    inside = []
    for name in names:
        path = (root / name).resolve()
        if Path(name).is_absolute() or not path.is_relative_to(root.resolve()):
            problems.append(f"COMPOSE_FILES: {name!r} must be a path inside the project")
        else:
            inside.append(root / name)
    return tuple(inside)


def _images(raw: dict[str, str], stateless: tuple[str, ...], services: dict[str, dict],
            problems: list[str]) -> dict[str, str]:
    images = {}
    for service in stateless:
        key = image_key(service)
        image = raw.get(key, "").strip()
        if not image and _build_only(services.get(service) or {}):
            problems.append(f"{key}: missing: service {service!r} only has build:, and deploytasks never builds on "
                            f"a host: set {key} to the image CI builds and pushes (tagged by SHA), or leave the "
                            "service out (EXCLUDE_SERVICES)")
        elif not image:
            problems.append(f"{key}: missing (the image of stateless service {service!r}, tagged by SHA at deploy)")
        else:
            keys.IMAGES.check(key, image, problems)
        images[service] = image
    expected = {image_key(s) for s in stateless}
    problems.extend(f"{k}: no stateless service of that name" for k in raw if k.startswith(keys.IMAGE_PREFIX) and k not in expected and stateless)
    return images


def compose_model(files: tuple[Path, ...], problems: list[str] | None = None) -> dict:
    """The team's compose files merged at top level: services, volumes, networks. Files that
    cannot be read are reported in `problems` (or raise, without it)."""
    merged: dict = {"services": {}, "volumes": {}, "networks": {}}
    for path in files:
        try:
            data = yaml.safe_load(path.read_text()) or {}
            for key in merged:
                for name, spec in (data.get(key) or {}).items():
                    spec, before = dict(spec or {}), merged[key].setdefault(name, {})
                    if key == "services" and "env_file" in before and "env_file" in spec:
                        # compose appends a later file's env files to the earlier ones' (it
                        # reads them in order: a later one's values win)
                        spec["env_file"] = _listed(before["env_file"]) + _listed(spec["env_file"])
                    before.update(spec)
        except (OSError, yaml.YAMLError, AttributeError) as exc:
            if problems is None:
                raise
            problems.append(f"COMPOSE_FILES: cannot read {path}: {str(exc).splitlines()[0]}")
    return merged


def _listed(value) -> list:
    """A compose field that may be one item or a list of them, as a list."""
    return list(value) if isinstance(value, list) else [value] if value else []


def env_file_entries(spec: dict) -> list[tuple[str, bool]]:
    """A service's `env_file:` as (path, required), in any of compose's forms: a string, a list
    of strings, `{path:, required:}` entries."""
    entries = []
    for item in _listed(spec.get("env_file")):
        if isinstance(item, dict):
            entries.append((str(item.get("path") or ""), item.get("required", True) not in (False, "false")))
        else:
            entries.append((str(item), True))
    return entries


def _check_compose(files, stateless, stateful, excluded, problems) -> dict[str, dict]:
    """The services of the deploy against the compose files; returns the deployed ones' specs."""
    if not files:
        problems.append("COMPOSE_FILES: empty (required for MODE=containers)")
        return {}
    read_problems: list[str] = []
    model = compose_model(files, read_problems)
    problems.extend(read_problems)
    if read_problems:
        return {}
    services = set(model["services"])
    for name in stateless:
        problems.extend(_blue_green_problems(name, model["services"].get(name) or {}))
    for key, names in (("STATELESS_SERVICES", stateless), ("STATEFUL_SERVICES", stateful), ("EXCLUDE_SERVICES", excluded)):
        unknown = [n for n in names if n not in services]
        if unknown:
            problems.append(f"{key}: unknown service {', '.join(map(repr, unknown))} (compose defines {', '.join(sorted(services))})")
    unclassified = sorted(services - set(stateless) - set(stateful) - set(excluded))
    if unclassified:
        problems.append(f"STATEFUL_SERVICES: compose service {', '.join(map(repr, unclassified))} is neither stateless "
                        "nor stateful (nor in EXCLUDE_SERVICES)")
    deployed = {n: model["services"][n] or {} for n in (*stateless, *stateful) if n in services}
    for name, spec in deployed.items():
        if name in stateful and _build_only(spec):
            problems.append(f"COMPOSE_FILES: service {name!r} only has build:, and deploytasks never builds on a host: "
                            "give it an image: that CI pushes, or leave it out (EXCLUDE_SERVICES)")
        needed = sorted(set(_services_used(spec)) & set(excluded))
        if needed:
            problems.append(f"EXCLUDE_SERVICES: service {name!r} needs {', '.join(map(repr, needed))} (depends_on, "
                            "links, volumes_from or network_mode), which is never started: compose would refuse the "
                            "project; remove that dependency or deploy the service")
    return deployed


def _build_only(spec: dict) -> bool:
    return spec.get("build") is not None and not spec.get("image")


def _services_used(spec: dict) -> list[str]:
    """The other services a service cannot run without, in compose's every way of saying so."""
    depends = spec.get("depends_on") or []
    used = [str(n) for n in (depends if isinstance(depends, (list, dict)) else [])]
    used += [str(link).split(":")[0] for link in _listed(spec.get("links"))]
    used += [str(v).split(":")[0] for v in _listed(spec.get("volumes_from")) if not str(v).startswith("container:")]
    mode = str(spec.get("network_mode") or "")
    return used + ([mode.split(":", 1)[1]] if mode.startswith("service:") else [])


def _env_files(root: Path, base: Path, services: dict[str, dict], problems: list[str]) -> tuple[EnvFile, ...]:
    """Each service's env files, read now: a relative path is relative to the first compose file's
    directory (compose's project directory, for every file given with -f), inside the repository,
    and goes up with the release at the same place. An absolute one is a file on the host."""
    found: dict[str, EnvFile] = {}
    for service, spec in services.items():
        for entry, required in env_file_entries(spec):
            problem = f"COMPOSE_FILES: service {service}: env_file {entry!r}"
            if entry.startswith(("/", "~")):
                continue  # the host's own file: compose reads it there
            if "$" in entry:
                problems.append(f"{problem} uses a variable: write the path out (it is read before connecting)")
                continue
            path = base / entry
            name = posixpath.normpath(path.relative_to(root).as_posix()) if path.is_relative_to(root) else ""
            if not name or name == ".." or name.startswith("../") or not path.resolve().is_relative_to(root.resolve()):
                problems.append(f"{problem} is outside the repository: only files inside it are uploaded")
            elif name.split("/")[0] in RESERVED_IN_RELEASE:
                problems.append(f"{problem} would replace {name.split('/')[0]}, which deploytasks writes into "
                                "each release: move or rename it")
            elif name not in found:
                try:
                    found[name] = EnvFile(name, path.read_bytes())
                except OSError as exc:
                    if required or path.exists():
                        problems.append(f"{problem}: cannot read {path} ({exc.strerror or exc.__class__.__name__})")
    return tuple(found.values())


def _blue_green_problems(name: str, spec: dict) -> list[str]:
    """What in a stateless service cannot run twice side by side, or cannot travel in a release."""
    found = []
    replicas = (spec.get("deploy") or {}).get("replicas") or spec.get("scale") or 1
    if str(replicas).isdigit() and int(replicas) > 1:
        found.append(f"{name}: replicas {replicas}: each colour runs one container per service "
                     "(use gunicorn workers for concurrency)")
    for volume in spec.get("volumes") or []:
        source = volume.get("source", "") if isinstance(volume, dict) else str(volume).split(":")[0]
        if source.startswith((".", "~")):
            found.append(f"{name}: bind mount {source!r} is relative to the repository: only the compose files "
                         "and env files are uploaded; bake the files into the image or use an absolute host path")
    return [f"COMPOSE_FILES: service {problem}" for problem in found]


def _app_env(root: Path, file: str, passthrough: tuple[str, ...], environ, problems: list[str]) -> dict[str, str]:
    """The app's runtime variables: its own untracked file, then named process variables."""
    values: dict[str, str] = {}
    if file:
        path = Path(file)
        path = path if path.is_absolute() else root / path
        if path.is_file():
            values.update({k: v or "" for k, v in dotenv_values(path).items()})
        else:
            problems.append(f"APP_ENV_FILE: {file} not found")
    for name in passthrough:
        if name in environ:
            values[name] = environ[name]
        else:
            problems.append(f"APP_ENV_PASSTHROUGH: {name} is not set in the environment")
    bad = [k for k in values if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k)]
    problems.extend(f"APP_ENV_FILE: {k!r} is not a variable name" for k in bad)
    multiline = [k for k, v in values.items() if "\n" in v]
    problems.extend(f"APP_ENV_FILE: {k} spans several lines (not supported by compose env files)" for k in multiline)
    return values
