"""Process releases on the real testbed: gunicorn on the host, code from git, --fast reuse."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from deploytasks import operations
from harness import testbed
from deploytasks.errors import ConfigError, StepFailed

from .support import target_of

PUBLIC = "http://127.0.0.1:8081"


def psha(name: str) -> str:
    return testbed.process_sha(name)


def serving() -> str:
    return requests.get(f"{PUBLIC}/version", timeout=5).text.strip()


def live_release(config) -> Path:
    return Path(config.deploy_path, os.readlink(Path(config.deploy_path, "current")))


def gunicorn_pid(config, colour: str) -> int:
    return int(Path(config.deploy_path, "run", colour, "gunicorn.pid").read_text())


def test_deploy_fast_redeploy_and_rollbacks(proc_host, capsys):
    config = proc_host
    target = target_of(config)
    operations.deploy(target, psha("v1"))
    assert serving() == psha("v1")
    first = live_release(config)
    assert first.name.endswith(psha("v1")) and (first / "app.py").is_file()
    assert (first / "static" / "app.css").is_file(), "the build step ran"
    assert os.readlink(first / "uploads") == f"{config.deploy_path}/shared/uploads"
    assert (os.stat(first / "app.env").st_mode & 0o777) == 0o600
    pid = gunicorn_pid(config, "blue")
    assert os.readlink(f"/proc/{pid}/cwd") == str(first), "gunicorn runs from the release itself, not `current`"
    requests.post(f"{PUBLIC}/items", data="kept", timeout=5)

    capsys.readouterr()
    operations.deploy(target, psha("v2"), fast=True)
    out = capsys.readouterr().out
    assert "dependencies: reused" in out and "build: reused static" in out
    second = live_release(config)
    assert os.readlink(second / ".venv") == os.readlink(first / ".venv"), "the same virtualenv, not a copy"
    assert serving() == psha("v2")
    assert not Path(f"/proc/{pid}").exists(), "the old colour's gunicorn was drained and stopped"

    operations.deploy(target, psha("v3"), fast=True)
    out = capsys.readouterr().out
    assert "dependencies: installed" in out and "build: ran" in out, "changed requirements and assets are rebuilt"
    assert os.readlink(live_release(config) / ".venv") != os.readlink(second / ".venv")

    operations.rollback(target)
    assert serving() == psha("v2")
    operations.rollback(target, to=psha("v1"))
    assert serving() == psha("v1")
    assert "kept" in requests.get(f"{PUBLIC}/items", timeout=5).json()

    capsys.readouterr()
    operations.status(target)
    out = capsys.readouterr().out
    assert f"{psha('v1')} serving from" in out and "gunicorn" in out
    backups = sorted(os.listdir(Path(config.deploy_path, ".backups")))
    assert 1 <= len(backups) <= config.keep_releases
    assert (Path(config.deploy_path, ".backups", backups[-1]) / "deploy.tar").is_file()


def test_failures_leave_the_old_release_serving(proc_host):
    config = proc_host
    operations.deploy(target_of(config), psha("v1"), fast=True)
    with pytest.raises(StepFailed) as failure:
        operations.deploy(target_of(config), psha("bad-migration"), fast=True)
    assert "ERROR: migration 0002 failed" in str(failure.value)
    assert serving() == psha("v1")

    with pytest.raises(StepFailed, match="not ready"):
        operations.deploy(target_of(config, health_timeout=6.0), psha("never-ready"), fast=True)
    assert serving() == psha("v1")
    assert not Path(config.deploy_path, "run", "green", "gunicorn.pid").exists(), "the new gunicorn was stopped"

    with pytest.raises(ConfigError, match="not a commit"):
        operations.deploy(target_of(config), "0123456789abcdef0123")
    releases = os.listdir(Path(config.deploy_path, "releases"))
    assert len(releases) == 1, "failed deploys leave no release behind"


def test_cleanup_keeps_the_newest_and_never_the_current_or_previous(proc_host):
    config = proc_host
    target = target_of(config)
    for name in ("v1", "v2", "v3", "v2", "v1"):
        operations.deploy(target, psha(name), fast=True)
    releases = sorted(os.listdir(Path(config.deploy_path, "releases")))
    assert len(releases) == config.keep_releases == 3
    colours = {Path(os.readlink(Path(config.deploy_path, "state", c))).name for c in ("blue", "green")}
    assert live_release(config).name in colours and colours <= set(releases), "current and previous are kept"
    used = {Path(os.readlink(Path(config.deploy_path, "releases", r, ".venv"))).name for r in releases}
    assert set(os.listdir(Path(config.deploy_path, "shared", "venvs"))) == used, "unused virtualenvs are removed"


def test_hostile_file_names_and_env_values(proc_host, tmp_path):
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(testbed.PROCESS_REPO), str(repo)], check=True)
    hostile_name = "we ird;$(touch x) 'q\".txt"
    (repo / hostile_name).write_text("hostile\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "v1"], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "hostile"], check=True, env=env)
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    hostile = "a b;$(touch /tmp/pwned-proc)`id`\"q' #x $HOME \\"
    config = proc_host
    processes = config.processes.__class__(**{**config.processes.__dict__, "source_repo": repo})
    target = target_of(config, processes=processes, app_env=dict(config.app_env, HOSTILE_SECRET=hostile))
    operations.deploy(target, sha, fast=True)
    release = live_release(config)
    assert (release / hostile_name).read_text() == "hostile\n"
    environ = Path(f"/proc/{gunicorn_pid(config, 'blue')}/environ").read_bytes().split(b"\0")
    assert f"HOSTILE_SECRET={hostile}".encode() in environ
    assert not Path("/tmp/pwned-proc").exists()
    assert not (release / "x").exists()
    history = [json.loads(line) for line in Path(config.deploy_path, "state", "history.jsonl").read_text().splitlines()]
    assert history[-1]["sha"] == sha and history[-1]["outcome"] == "ok"
    shutil.rmtree(repo)
