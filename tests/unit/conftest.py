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


@pytest.fixture(autouse=True)
def _clean_process_env(monkeypatch):
    """Tests never depend on the caller's DEPLOY_ENV, registry credentials or proxies."""
    for name in ("DEPLOY_ENV", "REGISTRY_USER", "REGISTRY_PASSWORD", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def make_root(base: Path, envs: dict[str, str], compose: str = COMPOSE) -> Path:
    """A throwaway project root: envs/<name>.env files, compose/compose.yml and the repo's nginx/."""
    (base / "envs").mkdir(parents=True, exist_ok=True)
    (base / "compose").mkdir(exist_ok=True)
    (base / "compose" / "compose.yml").write_text(compose)
    if not (base / "nginx").exists():
        shutil.copytree(REPO / "nginx", base / "nginx")
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
