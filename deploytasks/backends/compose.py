"""Compose files as the team wrote them, plus one overlay per release that makes blue/green work.

The stateless services of each colour run as their own compose project (<app>-blue, <app>-green);
the stateful ones run once, in project <app>, and a deploy never recreates them. The overlay gives
each colour its image tag, its run directory (the socket nginx reaches it through), and shared
network and volume names so both colours reach the same database and the same data; it drops every
`build:` (images are built by CI, never on a host) and the services left out (EXCLUDE_SERVICES).
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..config import Config, compose_model
from ..layout import APP_ENV, CONTAINER_RUN_DIR, Layout

OVERLAY = "compose.deploy.yml"
INTERPOLATION_ENV = "compose.env"


class _Reset(list):
    """Compose's `!reset` tag: drop what the team's file sets (host ports would clash between colours)."""


class _Override(list):
    """Compose's `!override` tag: this list instead of the team's (not merged with it)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Reset, lambda dumper, data: dumper.represent_sequence("!reset", data))
_Dumper.add_representer(_Override, lambda dumper, data: dumper.represent_sequence("!override", data))
# PyYAML quotes what YAML 1.1 would not read as a string; compose reads YAML 1.2, which also takes
# e.g. 1e51234 (a SHA) for a number: quote whatever either could read as a number, bool or null.
_NOT_A_STRING_IN_YAML_1_2 = re.compile(
    r"^(?:[-+]?(?:[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)|[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)|true|True|TRUE|false|False|FALSE|null|Null|NULL|~|)$")


def _string(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = '"' if _NOT_A_STRING_IN_YAML_1_2.match(data) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _string)


def model(config: Config) -> dict:
    return compose_model(config.compose_files)


def release_files(config: Config) -> dict[str, bytes]:
    """Compose files keyed by their path relative to the project root, as they are in git."""
    return {name: path.read_bytes() for name, path in zip(release_files_names(config), config.compose_files)}


def shared_networks(config: Config, compose: dict) -> dict[str, str]:
    """Networks both colours and the stateful project join: created by the deploy, named per app."""
    named = {n: spec.get("name") for n, spec in compose["networks"].items() if not spec.get("external")}
    return {n: named.get(n) or f"{config.app_name}_{n}" for n in ["default", *named]}


def overlay(config: Config, compose: dict, layout: Layout, release_dir: str, sha: str, colour: str) -> str:
    services = {}
    for service in config.stateless:
        spec = compose["services"].get(service) or {}
        environment = {"DEPLOY_SHA": sha, "DEPLOY_COLOUR": colour, "DEPLOY_ENV": config.env}
        web = service == config.web_service
        if web:
            environment["APP_SOCKET"] = f"{CONTAINER_RUN_DIR}/{layout.web}.sock"
            # a --bind on the image's command line wins over these; without one, gunicorn binds here
            bind = f"0.0.0.0:{config.web_port}" if config.relayed else f"unix:{CONTAINER_RUN_DIR}/{layout.web}.sock"
            ours = f"--bind={bind} --graceful-timeout={int(config.drain_timeout)}"
            theirs = _environment(spec).get("GUNICORN_CMD_ARGS") or config.app_env.get("GUNICORN_CMD_ARGS", "")
            environment["GUNICORN_CMD_ARGS"] = f"{theirs} {ours}".strip()  # later options win in gunicorn
        volumes = [f"{layout.run_dir(colour)}:{CONTAINER_RUN_DIR}"]
        if config.media_url:  # uploads outlive releases, and nginx serves them without Docker's internals
            volumes.append(f"{layout.media}:{config.media_path.rstrip('/')}")
        theirs = spec.get("volumes") or []
        # the colours serve static files of their own image, not a volume both share (and a
        # migration's collectstatic writes into): one mounted at STATIC_PATH is left out, and so is
        # one where ours go (compose would otherwise mount two things at one path)
        replaced = {_target(v) for v in volumes} | ({config.static_path.rstrip("/")} if config.static_url else set())
        kept = [v for v in theirs if _target(v) not in replaced]
        override = {
            "image": f"{config.images[service]}:{sha}",
            "env_file": [f"{release_dir}/{APP_ENV}"],
            "environment": environment,
            "volumes": _Override(kept + volumes) if len(kept) < len(theirs) else volumes,
            "stop_grace_period": f"{config.stop_grace}s",
            "labels": {"deploytasks.sha": sha, "deploytasks.colour": colour},
        }
        if web and config.relayed:  # this colour's own loopback port, which nginx relays its socket to
            override["ports"] = _Override([f"127.0.0.1:{config.port(colour)}:{config.web_port}"])
        elif spec.get("ports"):
            override["ports"] = _Reset()
        if spec.get("container_name"):
            override["container_name"] = _Reset()  # two colours cannot share one name
        services[service] = override | _never_built(spec)
    for service in config.stateful:  # they run their compose image
        if _never_built(compose["services"].get(service) or {}):
            services[service] = _never_built(compose["services"][service])
    for service in config.excluded:  # gone from every project: nothing can pull, build or start it
        services[service] = _Reset()
    networks = {n: {"name": name, "external": True} for n, name in shared_networks(config, compose).items()}
    volumes = {
        v: {"name": f"{config.app_name}_{v}"}
        for v, spec in compose["volumes"].items()
        if not spec.get("external") and not spec.get("name")
    }
    document = {"services": services, "networks": networks}
    if volumes:
        document["volumes"] = volumes
    header = f"# Rendered by deploytasks for {config.app_name} {sha} ({colour}); do not edit.\n"
    return header + yaml.dump(document, Dumper=_Dumper, sort_keys=False)


def _never_built(spec: dict) -> dict:
    """What keeps compose from building a service on the host: without its `build:` section
    (and a `pull_policy: build`, which needs one), a missing image is pulled, or the step fails."""
    if spec.get("build") is None:
        return {}
    return {"build": _Reset(), **({"pull_policy": "missing"} if spec.get("pull_policy") == "build" else {})}


def _target(volume) -> str:
    """Where a compose volume entry (short `src:target[:mode]` or long syntax) is mounted."""
    if isinstance(volume, dict):
        return str(volume.get("target", "")).rstrip("/")
    parts = str(volume).split(":")
    return (parts[1] if len(parts) > 1 else parts[0]).rstrip("/")


def _environment(spec: dict) -> dict[str, str]:
    """A service's `environment:`, whether written as a mapping or as a list of KEY=VALUE."""
    environment = spec.get("environment") or {}
    if isinstance(environment, dict):
        return {k: str(v) for k, v in environment.items() if v is not None}
    return dict(item.split("=", 1) for item in environment if "=" in item)


def interpolation_env(config: Config, sha: str, colour: str) -> str:
    """Variables the team's compose files may interpolate: ${DEPLOY_SHA} and friends."""
    return f"DEPLOY_SHA={sha}\nDEPLOY_COLOUR={colour}\nDEPLOY_ENV={config.env}\nAPP_NAME={config.app_name}\n"


def app_env(values: dict[str, str]) -> str:
    """The app's runtime variables in compose's env_file syntax, quoted so `$`, `#`, spaces stay literal."""
    return "".join(f"{key}={_quote(value)}\n" for key, value in values.items())


def _quote(value: str) -> str:
    if "'" not in value and not value.endswith("\\"):
        return f"'{value}'"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$") + '"'


def command(config: Config, release_dir: str, project: str, *args: str) -> tuple[str, ...]:
    files = [f"{release_dir}/{name}" for name in release_files_names(config)] + [f"{release_dir}/{OVERLAY}"]
    argv = ["docker", "compose", "-p", project, "--env-file", f"{release_dir}/{INTERPOLATION_ENV}"]
    for file in files:
        argv += ["-f", file]
    return (*argv, *args)


def release_files_names(config: Config) -> list[str]:
    return [str(Path(p).relative_to(config.root)) for p in config.compose_files]


def shared_volume_warning(config: Config) -> str:
    """The line compose prints on every `up` and `run` of a project using a volume another of the
    app's projects created (`volume "shop_media" already exists but was created for project
    "shop-blue"`): sharing is the point here, so the line is dropped from what we show. Declaring
    the volumes `external: true` instead would be wrong: the stateful project reads the same overlay
    and could no longer create them on a fresh host, no project creates a volume only stateless
    services use, and compose refuses `external` beside the team's `driver_opts`."""
    app = re.escape(config.app_name)
    return rf'volume \\?"[^"\\]+\\?" already exists but was created for project \\?"{app}(-blue|-green)?\\?"'


def project(config: Config, colour: str | None = None) -> str:
    return f"{config.app_name}-{colour}" if colour else config.app_name
