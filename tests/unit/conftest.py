"""Shared fixtures of the unit tests: no host, no docker, no network beyond 127.0.0.1."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

REPO = Path(__file__).resolve().parents[2]
for _path in (REPO, Path(__file__).resolve().parent):  # deploytasks, tasks.py, and `from conftest import ...`
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from deploytasks import config as configuration  # noqa: E402
from deploytasks import deploys  # noqa: E402
from deploytasks.backends.containers import Containers  # noqa: E402
from deploytasks.backends.processes import Processes  # noqa: E402
from deploytasks.facts import HostState  # noqa: E402

SHA_OLD = "aaaaaaa"
SHA_NEW = "bbbbbbb"
REL_OLD = f"20240101T000000Z-{SHA_OLD}"
REL_NEW = f"20240102T000000Z-{SHA_NEW}"

# A minimal compose file: one stateless web service that publishes a port, one stateful db.
COMPOSE = """\
services:
  web:
    image: example/web:latest
    ports: ["8000:8000"]
  db:
    image: redis
    volumes: [dbdata:/data]
volumes:
  dbdata:
"""

# A valid env file for a throwaway root (no APP_ENV_FILE: app values come from passthrough).
GOOD_ENV = """\
APP_NAME=shop
HOSTS=app1.example.com,10.0.0.5
SSH_USER=deploy
SSH_PORT=22
DEPLOY_PATH=/srv/shop
COMPOSE_FILES=compose/compose.yml
STATELESS_SERVICES=web
STATEFUL_SERVICES=db
IMAGE_WEB=ghcr.io/acme/shop-web
NGINX_LISTEN=8081
MIGRATE_COMMAND=python3 manage.py migrate
MAINTENANCE_ALLOW=10.1.0.0/16,192.0.2.7
"""


def replace_keys(text: str, **changes: str | None) -> str:
    """An env file's text with keys changed (value) or removed (None); new keys appended."""
    lines, seen = [], set()
    for line in text.splitlines():
        key = line.split("=", 1)[0]
        if key in changes:
            seen.add(key)
            if changes[key] is not None:
                lines.append(f"{key}={changes[key]}")
        else:
            lines.append(line)
    lines += [f"{k}={v}" for k, v in changes.items() if k not in seen and v is not None]
    return "\n".join(lines) + "\n"


def container_deploy(config, state, sha, release, **options):
    """The deploy plan of a container release (no registry: the images are taken as present)."""
    return deploys.deploy(config, state, Containers(config, sha), sha, release, **options)


def container_rollback(config, state):
    return deploys.rollback(config, state, Containers(config))


def process_deploy(config, state, code, release, *, fast=False, **options):
    return deploys.deploy(config, state, Processes(config, code, fast=fast), code.sha, release, **options)


def process_rollback(config, state):
    return deploys.rollback(config, state, Processes(config))


def step_named(plan, name: str):
    matches = [s for s in plan.steps if s.name == name]
    assert len(matches) == 1, [s.name for s in plan.steps]
    return matches[0]


def step_names(plan) -> list[str]:
    return [s.name for s in plan.steps]


def links(commands) -> list[tuple[str | None, str]]:
    """(target, link) pairs of traffic.point_links commands, in order; None: the link is removed."""
    pairs = []
    for command in commands:
        args = command.argv[4:]
        pairs += [(target or None, link) for target, link in zip(args[::2], args[1::2])]
    return pairs


class StubLease:
    """The lock's lease renewal, which needs a live host: nothing, for in-memory hosts."""

    def __init__(self, *args, **kwargs):
        pass

    def start(self):
        pass

    def stop(self):
        pass


@pytest.fixture(autouse=True)
def _clean_process_env(monkeypatch):
    """Tests never depend on the caller's DEPLOY_ENV, registry credentials or proxies."""
    for name in ("DEPLOY_ENV", "REGISTRY_USER", "REGISTRY_PASSWORD", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def make_root(base: Path, envs: dict[str, str], compose: str = COMPOSE) -> Path:
    """A throwaway project root: envs/<name>.env files and compose/compose.yml (nginx templates: packaged)."""
    (base / "envs").mkdir(parents=True, exist_ok=True)
    (base / "compose").mkdir(exist_ok=True)
    (base / "compose" / "compose.yml").write_text(compose)
    for name, text in envs.items():
        (base / "envs" / f"{name}.env").write_text(text)
    return base


def raw_of(text: str) -> dict[str, str]:
    import io

    return {k: (v or "") for k, v in dotenv_values(stream=io.StringIO(text)).items()}


@pytest.fixture
def local_config():
    """The repo's own envs/local.env, as the testbed uses it."""
    return configuration.load(REPO, "local", environ={})


@pytest.fixture
def local_raw():
    return {k: (v or "") for k, v in dotenv_values(REPO / "envs" / "local.env").items()}


@pytest.fixture
def first_state():
    return HostState(now=1_700_000_000)


@pytest.fixture
def blue_live_state():
    """blue serves REL_OLD; green never ran."""
    return HostState(now=1_700_000_000, colours={"blue": REL_OLD}, live="blue", current=REL_OLD, releases=(REL_OLD,))


# --- process releases (MODE=processes): a tiny local git repository and configs around it ------

# The files of each commit of the session repository (None: delete). SOURCE_PATH is `app`;
# README.md lives outside it, so commit "readme" changes nothing a release contains.
PROCESS_COMMITS: list[tuple[str, dict[str, str | None]]] = [
    ("v1", {"README.md": "readme v1\n", "app/app.py": "VERSION = 1\n", "app/requirements.txt": "flask==3.0\n",
            "app/assets/site.css": "body { color: black }\n",
            "app/build.sh": 'mkdir -p static && cp assets/* static/ && echo "$DEPLOY_SHA" >> "$BUILD_LOG"\n'}),
    ("readme", {"README.md": "readme v2\n"}),
    ("code", {"app/app.py": "VERSION = 2\n"}),
    ("assets", {"app/assets/site.css": "body { color: red }\n"}),
    ("requirements", {"app/requirements.txt": "flask==3.1\n"}),
    ("build-script", {"app/build.sh": 'mkdir -p static && cp -r assets/. static/\n'
                                      'echo "$DEPLOY_SHA" >> "$BUILD_LOG"\n'}),
    ("requirements-back", {"app/requirements.txt": "flask==3.0\n"}),
]

_GIT_ENV = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}  # no user config in the way


def _git_repo(path: Path, commits: list[tuple[str, dict[str, str | None]]]) -> dict[str, str]:
    """A git repository at `path` with one commit per entry; returns message -> full SHA.

    One `git fast-import` writes every commit (a dozen `git commit` runs would cost ~0.1 s)."""
    import os
    import subprocess

    env = {**os.environ, **_GIT_ENV}
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "-C", str(path), "init", "-q"], env=env, check=True, capture_output=True, timeout=30)
    stream = []
    for mark, (message, files) in enumerate(commits, 1):
        msg = message.encode()
        stream.append(b"commit refs/heads/main\nmark :%d\ncommitter Test <test@example.com> %d +0000\n"
                      b"data %d\n%s\n" % (mark, 1_704_067_200 + mark, len(msg), msg))
        if mark > 1:
            stream.append(b"from :%d\n" % (mark - 1))
        for name, text in files.items():
            if text is None:
                stream.append(b"D %s\n" % name.encode())
            else:
                data = text.encode()
                stream.append(b"M 100644 inline %s\ndata %d\n%s\n" % (name.encode(), len(data), data))
    marks = path / ".git" / "test-marks"
    subprocess.run(["git", "-C", str(path), "fast-import", "--quiet", f"--export-marks={marks}"],
                   input=b"".join(stream), env=env, check=True, capture_output=True, timeout=30)
    subprocess.run(["git", "-C", str(path), "symbolic-ref", "HEAD", "refs/heads/main"], env=env, check=True,
                   capture_output=True, timeout=30)
    by_mark = dict(line.split() for line in marks.read_text().splitlines())
    return {message: by_mark[f":{mark}"] for mark, (message, _) in enumerate(commits, 1)}


@pytest.fixture
def git_repo():
    """Factory: git_repo(path, [(message, {file: text or None}), ...]) -> {message: full SHA}."""
    if not shutil.which("git"):
        pytest.skip("needs git")
    return _git_repo


@pytest.fixture(scope="session")
def process_repo(tmp_path_factory):
    """The session's read-only source repository: (path, {commit message: full SHA})."""
    if not shutil.which("git"):
        pytest.skip("needs git")
    path = tmp_path_factory.mktemp("process-repo")
    return path, _git_repo(path, PROCESS_COMMITS)


@pytest.fixture
def local_process_raw():
    """The repo's own envs/local-process.env, as raw keys."""
    return {k: (v or "") for k, v in dotenv_values(REPO / "envs" / "local-process.env").items()}


@pytest.fixture
def process_config(local_process_raw, process_repo):
    """envs/local-process.env with SOURCE_REPO pointing at the session repository (SOURCE_PATH=app)."""
    raw = dict(local_process_raw, SOURCE_REPO=str(process_repo[0]), SOURCE_PATH="app")
    return configuration.parse(REPO, "local-process", raw, {})


@pytest.fixture
def green_live_state():
    """green serves REL_NEW, blue keeps REL_OLD (stopped): what a rollback returns to."""
    return HostState(now=1_700_000_000, colours={"blue": REL_OLD, "green": REL_NEW}, live="green", current=REL_NEW,
                     releases=(REL_OLD, REL_NEW))
