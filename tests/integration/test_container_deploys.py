"""Container deploys on the real testbed: deploy, redeploy, both rollbacks, and every way to fail.

Each failure must leave the old SHA serving and the shared database untouched.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from deploytasks import config as configuration
from deploytasks import lock, operations
from deploytasks.errors import ConfigError, DeployError, LockHeld, StepFailed
from deploytasks.layout import Layout

from .support import PUBLIC, ROOT, containers, history, serving, sha, target_of


def deploy(config, name, **kwargs):
    return operations.deploy(target_of(config), sha(name), **kwargs)


def db_started_at() -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.Id}} {{.State.StartedAt}}", "example-db-1"],
                          capture_output=True, text=True, check=True).stdout.strip()


def items() -> list[str]:
    return requests.get(f"{PUBLIC}/items", timeout=5).json()


def releases(config) -> list[str]:
    return sorted(os.listdir(Path(config.deploy_path, "releases")))


def test_deploy_redeploy_and_both_rollbacks_keep_the_data(fresh_host, capsys):
    config = fresh_host
    assert deploy(config, "v1") == {"127.0.0.1": sha("v1")}
    assert serving() == sha("v1")
    assert requests.post(f"{PUBLIC}/items", data="written under v1", timeout=5).status_code == 201
    db = db_started_at()

    deploy(config, "v2")
    assert serving() == sha("v2")
    assert containers("example-green") == {"web": "running"}
    assert containers("example-blue") == {"web": "exited"}, "the old colour is stopped, kept for rollback"
    assert os.readlink(Path(config.deploy_path, "run", "web.sock")) == "green/web.sock"
    assert os.readlink(Path(config.deploy_path, "current")).endswith(sha("v2"))

    capsys.readouterr()
    operations.rollback(target_of(config))
    assert serving() == sha("v1")
    assert containers("example-blue") == {"web": "running"}
    assert containers("example-green") == {"web": "exited"}
    assert "migrate" not in capsys.readouterr().out

    operations.rollback(target_of(config), to=sha("v2"))
    assert serving() == sha("v2")
    last = history(config)[-1]
    assert (last["kind"], last["sha"], last["outcome"]) == ("rollback", sha("v2"), "ok")
    assert "migrate" not in last["steps"] and "switch" in last["steps"] and last["colour"] == "green"

    with pytest.raises(DeployError, match="never served here"):
        operations.rollback(target_of(config), to=sha("v3"))

    assert "written under v1" in items()
    assert db_started_at() == db, "the stateful service was never restarted"
    env_file = Path(os.readlink(Path(config.deploy_path, "current")))
    mode = os.stat(Path(config.deploy_path, env_file, "app.env")).st_mode & 0o777
    assert mode == 0o600

    capsys.readouterr()
    operations.status(target_of(config))
    out = capsys.readouterr().out
    assert f"{sha('v2')} serving from green" in out
    assert f"standby blue: {sha('v1')}" in out
    assert "(healthy)" in out and "recent deploys:" in out
    assert "local-testbed-not-a-secret" not in out


def test_failures_leave_the_old_sha_serving(fresh_host, capsys):
    config = fresh_host
    deploy(config, "v1")
    requests.post(f"{PUBLIC}/items", data="before the failures", timeout=5)
    db = db_started_at()
    before = releases(config)

    fast = target_of(config, health_timeout=8.0)
    with pytest.raises(StepFailed, match="not ready after 8s"):
        operations.deploy(fast, sha("never-ready"))
    out = capsys.readouterr().out
    assert "undoing" in out and "| $ docker compose" in out, "the new colour's logs are shown"
    assert serving() == sha("v1")
    assert containers("example-green") == {}, "the failed colour is removed"
    assert history(config)[-1]["outcome"] == "failed"

    with pytest.raises(StepFailed) as failure:
        deploy(config, "bad-migration")
    assert "ERROR: migration 0002 failed: duplicate column" in str(failure.value)
    assert serving() == sha("v1")

    with pytest.raises(ConfigError, match="not in the registry"):
        operations.deploy(target_of(config), "deadbeef" * 5)
    with pytest.raises(ConfigError, match="not a git SHA"):
        operations.deploy(target_of(config), "v1; rm -rf /")

    assert releases(config) == before, "failed deploys leave no release behind"
    assert serving() == sha("v1")
    assert "before the failures" in items()
    assert db_started_at() == db


def test_held_lock_refuses_and_force_unlock_recovers(fresh_host):
    config = fresh_host
    deploy(config, "v1")
    layout = Layout.of(config)
    stale = {"token": "x", "user": "alice", "from": "laptop", "task": "deploy", "sha": "abc1234",
             "since": int(time.time()) - 3600}
    subprocess.run(lock.acquire_argv(layout, stale), check=True)

    with pytest.raises(LockHeld) as held:
        deploy(config, "v2")
    message = str(held.value)
    assert "alice@laptop" in message and "abc1234" in message and "60m" in message
    assert "--force-unlock" in message
    assert serving() == sha("v1")

    deploy(config, "v2", force_unlock=True)
    assert serving() == sha("v2")
    assert not Path(layout.lock).exists(), "the lock is released after the deploy"


def test_dry_run_prints_the_plan_and_changes_nothing(fresh_host, capsys):
    config = fresh_host
    deploy(config, "v1")
    before = (releases(config), Path(config.deploy_path, "state", "history.jsonl").read_text())
    capsys.readouterr()
    deploy(config, "v2", dry_run=True)
    out = capsys.readouterr().out
    assert "dry run" in out and "docker compose -p example-green" in out and "switch to green" in out
    assert "green/web.sock /srv/example/run/web.sock" in out, "the switch, with its arguments"
    assert "local-testbed-not-a-secret" not in out
    assert (releases(config), Path(config.deploy_path, "state", "history.jsonl").read_text()) == before
    assert serving() == sha("v1")


def test_broken_nginx_config_never_reaches_nginx(fresh_host, tmp_path):
    config = fresh_host
    deploy(config, "v1")
    site = Path(config.nginx_site_dir, "example.conf")
    installed = site.read_text()

    root = tmp_path / "repo"  # the user's own nginx/site.conf.template overrides the packaged one
    for part in ("envs", "compose"):
        shutil.copytree(ROOT / part, root / part)
    (root / "nginx").mkdir()
    template = root / "nginx" / "site.conf.template"
    template.write_text(config.site_template.read_text().replace("proxy_read_timeout 120s;", "proxy_read_timeout forever;"))
    broken = target_of(configuration.load(root, "local"))
    assert broken.config.site_template == template

    with pytest.raises(StepFailed, match="nginx"):
        operations.deploy(broken, sha("v2"))
    assert site.read_text() == installed
    assert serving() == sha("v1")


def test_hostile_app_env_values_reach_the_app_literally(fresh_host):
    hostile = "a b;$(touch /tmp/pwned)`id`\"q' #x $HOME"
    config = fresh_host
    app_env = dict(config.app_env, HOSTILE_SECRET=hostile)
    operations.deploy(target_of(config, app_env=app_env), sha("v1"))
    seen = subprocess.run(["docker", "exec", "example-blue-web-1", "printenv", "HOSTILE_SECRET"],
                          capture_output=True, text=True, check=True).stdout
    assert seen == hostile + "\n"
    assert not Path("/tmp/pwned").exists()


def test_ctrl_c_during_a_deploy_undoes_it_and_releases_the_lock(fresh_host):
    config = fresh_host
    deploy(config, "v1")
    process = subprocess.Popen(["timeout", "180", sys.executable, "-m", "invoke", "deploy", "--env", "local",
                                "--sha", sha("v2")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = []
    for line in process.stdout:
        output.append(line)
        if "-> start green" in line:
            subprocess.run(["pkill", "-INT", "-P", str(process.pid)], check=True)
            break
    output.extend(process.stdout)
    assert process.wait(timeout=120) == 1, "".join(output)
    text = "".join(output)
    assert "interrupted" in text and "undoing" in text
    assert serving() == sha("v1")
    assert not Path(Layout.of(config).lock).exists()
    assert containers("example-green") == {}
