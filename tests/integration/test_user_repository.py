"""deploytasks as a user meets it: a wheel installed into a fresh virtualenv outside this
repository, `deploytasks init` in the user's own git repository with its own compose app, one
env file added, then two deploys and a rollback with that repository's `inv` and `fab`.

The user's app is not the example app: its web service is called `api`, publishes a port,
reports its SHA from DEPLOY_SHA, and has a stateful `cache` beside it. "CI" here builds its
images tagged by the real git SHA of each commit and pushes them to the testbed's registry.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from dotenv import dotenv_values

from deploytasks import config as configuration
from harness import apps, testbed

from .support import ROOT

PORT = 8082
PUBLIC = f"http://127.0.0.1:{PORT}"
IMAGE = f"{testbed.REGISTRY}/shop/api"

APP = '''\
"""The shop's API: what a team's own small service looks like."""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "RELEASE")) as f:
    RELEASE = f.read().strip()


ALLOWED_HOSTS = os.environ.get("ALLOWED_HOSTS", "").split(",")


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if environ.get("HTTP_HOST", "").split(":")[0] not in ALLOWED_HOSTS:  # as Django checks Host
        start_response("400 Bad Request", [("Content-Type", "text/plain"), ("Content-Length", "12")])
        return [b"bad host!!!\\n"]
    if path in ("/healthz", "/readyz"):
        body = b"ok"
    elif path == "/version":
        body = os.environ.get("DEPLOY_SHA", "unknown").encode()
    else:
        body = json.dumps({"shop": RELEASE}).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

DOCKERFILE = f'''\
FROM {testbed.BASE_IMAGE_PUSHED}
COPY shop.py RELEASE /srv/shop/
CMD ["gunicorn", "--chdir", "/srv/shop", "--workers", "2", "shop:app"]
'''

COMPOSE = f'''\
services:
  api:
    image: {IMAGE}:${{DEPLOY_SHA:-latest}}
    ports:
      - "9000:8000"
    environment:
      ALLOWED_HOSTS: shop.test
    restart: unless-stopped
  cache:
    image: {testbed.BASE_IMAGE_PUSHED}
    command: ["redis-server", "--protected-mode", "no", "--dir", "/data"]
    volumes:
      - cachedata:/data
volumes:
  cachedata:
'''

# what the user changes in the example init wrote: where the server is and how to reach it
TESTBED_VALUES = {
    # SERVER_NAME: the app answers 400 to any other Host, so every probe must send it
    **apps.testbed_values(PORT, "shop.test"),
    "DEPLOY_PATH": "/srv/shop-user",
    "IMAGE_API": IMAGE,
    "HEALTH_TIMEOUT": "60",
    "DRAIN_TIMEOUT": "5",
    "MIGRATE_COMMAND": "",
    "APP_ENV_FILE": "",
}


def run(argv, cwd, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DEPLOY_ENV", "VIRTUAL_ENV", "PYTHONPATH")}
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=600, **kwargs)
    return proc


def ok(argv, cwd) -> str:
    proc = run(argv, cwd)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory, bed):
    """A virtualenv outside the repository with only the wheel built from this checkout."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"  # a clean copy: no stale build/ of an earlier wheel can leak into this one
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                                 "__pycache__", ".pytest_cache"))
    ok([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base / "dist"), str(source)], base)
    wheels = list((base / "dist").glob("deploytasks-*.whl"))
    assert len(wheels) == 1, wheels
    venv = base / "venv"
    ok([sys.executable, "-m", "venv", str(venv)], base)
    ok([str(venv / "bin" / "pip"), "install", "-q", str(wheels[0])], base)
    return venv / "bin"


def commit_and_push(repo: Path, release: str) -> str:
    """A commit of the user's app, and CI's image of it tagged by the commit's full SHA."""
    (repo / "RELEASE").write_text(release + "\n")
    ok(["git", "add", "-A"], repo)
    ok(["git", "-c", "user.name=dev", "-c", "user.email=dev@shop.invalid", "commit", "-qm", f"shop {release}"], repo)
    sha = ok(["git", "rev-parse", "HEAD"], repo).strip()
    ok(["docker", "build", "-q", "-t", f"{IMAGE}:{sha}", str(repo)], repo)
    ok(["docker", "push", f"{IMAGE}:{sha}"], repo)
    return sha


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory, installed):
    repo = tmp_path_factory.mktemp("users") / "shop"
    repo.mkdir()
    ok(["git", "init", "-q", "-b", "main"], repo)
    (repo / "shop.py").write_text(APP)
    (repo / "Dockerfile").write_text(DOCKERFILE)
    (repo / "compose.yml").write_text(COMPOSE)
    return repo


SITE = {"Host": "shop.test"}


def served() -> str:
    response = requests.get(f"{PUBLIC}/version", headers=SITE, timeout=5)
    assert response.status_code == 200, response.text
    return response.text.strip()


def test_installed_wheel_inits_a_new_repository_and_deploys_it(installed, user_repo):
    bin_ = installed
    # the dev harness is not part of the product
    for module in ("deploytasks.testbed", "harness", "deploytasks.bench"):
        assert run([str(bin_ / "python"), "-c", f"import {module}"], user_repo).returncode != 0, module
    assert ok([str(bin_ / "deploytasks"), "--version"], user_repo).startswith("deploytasks ")

    out = ok([str(bin_ / "deploytasks"), "init"], user_repo)
    for written in ("tasks.py", "fabfile.py", "envs/staging.env.example", "envs/production.env.example", ".gitignore"):
        assert (user_repo / written).exists(), (written, out)
    example = dotenv_values(user_repo / "envs" / "staging.env.example")
    assert example["APP_NAME"] == "shop" and example["WEB_SERVICE"] == "api", example
    assert example["STATELESS_SERVICES"] == "api" and example["STATEFUL_SERVICES"] == "cache", example
    before = {path: path.read_bytes() for path in user_repo.rglob("*") if path.is_file() and ".git" not in path.parts}
    ok([str(bin_ / "deploytasks"), "init"], user_repo)  # a second run changes nothing
    assert before == {path: path.read_bytes() for path in user_repo.rglob("*")
                      if path.is_file() and ".git" not in path.parts}
    assert not (user_repo / "nginx").exists(), "nginx templates come from the package"

    # the one file the user adds: the example with the server's values
    values = {**{k: v or "" for k, v in example.items()}, **TESTBED_VALUES}
    (user_repo / "envs" / "staging.env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    config = configuration.load(user_repo, "staging", environ={})
    testbed.reset_app(config)
    status = ok(["git", "status", "--porcelain", "--ignored"], user_repo)
    assert "!! envs/staging.env" in status, "the filled-in env file is ignored by git"

    inv, fab = str(bin_ / "inv"), str(bin_ / "fab")
    assert ok([inv, "--list"], user_repo).split() == ok([fab, "--list"], user_repo).split()

    first = commit_and_push(user_repo, "v1")
    second = commit_and_push(user_repo, "v2")
    try:
        deployed = ok([inv, "deploy", "--env", "staging", "--sha", first], user_repo)
        assert f"serves {first}" in deployed
        assert served() == first and requests.get(PUBLIC, headers=SITE, timeout=5).json() == {"shop": "v1"}
        assert requests.get(PUBLIC, headers={"Host": "other.test"}, timeout=5).status_code == 400, "the app checks Host"
        cache_started = ok(["docker", "inspect", "-f", "{{.State.StartedAt}}", "shop-cache-1"], user_repo)

        ok([fab, "-H", "127.0.0.1", "deploy", f"--sha={second}"], user_repo)
        assert served() == second and requests.get(PUBLIC, headers=SITE, timeout=5).json() == {"shop": "v2"}

        ok([inv, "rollback", "--env", "staging"], user_repo)
        assert served() == first
        assert ok(["docker", "inspect", "-f", "{{.State.StartedAt}}", "shop-cache-1"], user_repo) == cache_started
        status = ok([inv, "status", "--env", "staging"], user_repo)
        assert f"{first} serving" in status and "rollback" in status
        history = Path(config.deploy_path, "state", "history.jsonl").read_text().splitlines()
        assert len(history) == 3
    finally:
        testbed.reset_app(config)
