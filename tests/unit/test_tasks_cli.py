"""The tasks as users call them: bad input ends as one message and exit 1, before any connection."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import fabric
import pytest
from conftest import GOOD_ENV, REPO, make_root
from invoke import Context, Exit

from deploytasks import tasks
from deploytasks import operations, registry
from deploytasks.remote import connection

BAD_ENV = """\
APP_NAME=shop
SSH_PORT=99999
STATELESS_SERVICES=web,worker
IMAGE_WEB=ghcr.io/acme/web:latest
DEPLOY_PATH=/srv/shop; rm -rf /
COLOUR=blue
"""


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach a host or a registry fails the test."""
    calls = []

    def forbidden(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"a connection was attempted: {args!r}")

    monkeypatch.setattr(connection, "connect", forbidden)
    monkeypatch.setattr(operations, "connect", forbidden)
    monkeypatch.setattr(connection, "Connection", forbidden)
    monkeypatch.setattr(fabric, "Connection", forbidden)
    monkeypatch.setattr(registry, "missing", forbidden)
    monkeypatch.setattr(registry, "exists", forbidden)
    monkeypatch.setattr(registry, "tags", forbidden)
    return calls


@pytest.fixture
def bad_root(tmp_path, monkeypatch):
    root = make_root(tmp_path, {"bad": BAD_ENV, "good": GOOD_ENV})
    monkeypatch.chdir(root)  # `inv` run from the user's repository
    return root


def _exit_of(call) -> Exit:
    with pytest.raises(Exit) as caught:
        call()
    return caught.value


@pytest.mark.parametrize("call", [
    lambda: tasks.deploy(Context(), "abc1234", env="bad"),
    lambda: tasks.deploy(Context(), "abc1234", env="bad", dry_run=True),
    lambda: tasks.status(Context(), env="bad"),
    lambda: tasks.rollback(Context(), env="bad"),
], ids=["deploy", "deploy-dry-run", "status", "rollback"])
def test_bad_config_exits_1_naming_every_problem_without_connecting(no_network, bad_root, call):
    exit_ = _exit_of(call)
    assert exit_.code == 1
    message = str(exit_.message)
    assert message.startswith("error: envs/bad.env: ")
    for key in ("HOSTS", "SSH_PORT", "STATELESS_SERVICES", "IMAGE_WEB", "IMAGE_WORKER", "DEPLOY_PATH", "COLOUR"):
        assert re.search(rf"^  - {key}: ", message, re.M), (key, message)
    assert no_network == []


def test_deploy_env_selects_the_bad_file_too(no_network, bad_root, monkeypatch):
    monkeypatch.setenv("DEPLOY_ENV", "bad")
    exit_ = _exit_of(lambda: tasks.deploy(Context(), "abc1234"))
    assert exit_.code == 1 and "SSH_PORT: 99999 is out of range" in exit_.message
    assert no_network == []


def test_no_environment_selected(no_network, bad_root):
    exit_ = _exit_of(lambda: tasks.status(Context()))
    assert exit_.code == 1 and "no environment selected" in exit_.message


def test_unknown_environment(no_network, bad_root):
    exit_ = _exit_of(lambda: tasks.deploy(Context(), "abc1234", env="prod"))
    assert exit_.code == 1 and "expected one of bad, good" in exit_.message


def test_bad_sha_with_a_good_config_stops_before_the_registry(no_network, bad_root):
    exit_ = _exit_of(lambda: tasks.deploy(Context(), "not-a-sha", env="good"))
    assert exit_.code == 1 and "is not a git SHA" in exit_.message
    exit_ = _exit_of(lambda: tasks.rollback(Context(), to="xyz", env="good"))
    assert exit_.code == 1 and "is not a git SHA" in exit_.message
    assert no_network == []


FULL = "abc1234" + "0" * 33


def test_missing_image_stops_before_connecting(bad_root, monkeypatch):
    called = []
    monkeypatch.setattr(registry, "tags", lambda image: [FULL])
    monkeypatch.setattr(registry, "missing", lambda images, tag: [f"{images['web']}:{tag}"])
    monkeypatch.setattr(operations, "connect", lambda *a, **k: called.append(a))
    exit_ = _exit_of(lambda: tasks.deploy(Context(), "abc1234", env="good"))
    assert exit_.code == 1
    assert "not in the registry; nothing was changed" in exit_.message
    assert f"ghcr.io/acme/shop-web:{FULL}" in exit_.message, "checked by the full SHA its tag has"
    assert called == []


def test_an_abbreviation_no_image_is_tagged_with_stops_before_connecting(bad_root, monkeypatch):
    called = []
    monkeypatch.setattr(registry, "tags", lambda image: ["latest", FULL])
    monkeypatch.setattr(registry, "missing", lambda images, tag: called.append(tag) or [])
    monkeypatch.setattr(operations, "connect", lambda *a, **k: called.append(a))
    exit_ = _exit_of(lambda: tasks.deploy(Context(), "3f2c1e9", env="good"))
    assert exit_.code == 1
    assert exit_.message == ("error: no image of ghcr.io/acme/shop-web is tagged with a SHA starting 3f2c1e9; "
                             "nothing was changed")
    assert called == []


LOCK_TASKS = {
    "deploy": lambda **options: tasks.deploy(Context(), "abc1234", env="good", **options),
    "rollback": lambda **options: tasks.rollback(Context(), env="good", **options),
    "maintenance-on": lambda **options: tasks.maintenance_on(Context(), env="good", **options),
    "maintenance-off": lambda **options: tasks.maintenance_off(Context(), env="good", **options),
}


@pytest.mark.parametrize("task", LOCK_TASKS)
@pytest.mark.parametrize("options, message", [
    ({"force": True}, "error: --force goes with --force-unlock"),
    ({"lock_wait": "soon"}, "error: --lock-wait takes seconds from 0 to 86400, not 'soon'"),
    ({"lock_wait": "-1"}, "error: --lock-wait takes seconds"),
], ids=["force-alone", "lock-wait-words", "lock-wait-negative"])
def test_lock_options_are_checked_before_connecting(no_network, bad_root, task, options, message):
    exit_ = _exit_of(lambda: LOCK_TASKS[task](**options))
    assert exit_.code == 1 and exit_.message.startswith(message)
    assert no_network == []


@pytest.mark.parametrize("task, operation", [("deploy", "deploy"), ("rollback", "rollback"),
                                             ("maintenance-on", "set_maintenance"),
                                             ("maintenance-off", "set_maintenance")])
def test_lock_options_reach_the_operation(bad_root, monkeypatch, task, operation):
    seen = {}
    monkeypatch.setattr(operations, operation, lambda *args, **options: seen.update(options))
    LOCK_TASKS[task](force_unlock=True, force=True, lock_wait="120")
    assert (seen["force_unlock"], seen["force"], seen["lock_wait"]) == (True, True, "120")


def test_lock_options_on_the_command_line():
    out = subprocess.run([sys.executable, "-m", "invoke", "--help", "deploy"], cwd=REPO, capture_output=True,
                         text=True, timeout=30, check=True).stdout
    for flag in ("--force-unlock", "--force ", "--lock-wait=STRING"):
        assert flag in out, out
    for name in ("rollback", "maintenance-on", "maintenance-off"):
        out = subprocess.run([sys.executable, "-m", "invoke", "--help", name], cwd=REPO, capture_output=True,
                             text=True, timeout=30, check=True).stdout
        assert "--force " in out and "--lock-wait" in out, (name, out)


def test_fab_host_outside_the_environment(no_network, bad_root):
    class HostContext(Context):
        host = "elsewhere.example.com"

    exit_ = _exit_of(lambda: tasks.status(HostContext(), env="good"))
    assert exit_.code == 1 and "'elsewhere.example.com' is not in HOSTS of environment 'good'" in exit_.message


def test_fab_host_selects_its_environment(bad_root):
    class HostContext(Context):
        host = "10.0.0.5"

    target = tasks._target(HostContext(), None)
    assert target.config.env == "good" and target.hosts == ("10.0.0.5",)
    assert tasks._target(Context(), "good").hosts == ("app1.example.com", "10.0.0.5")


# --- the same tasks from inv and fab ---------------------------------------------------------------

def _task_names(collection: dict, prefix: str = "") -> list[str]:
    names = [prefix + t["name"] for t in collection["tasks"]]
    for sub in collection["collections"]:
        names += _task_names(sub, f"{prefix}{sub['name']}.")
    return names


def test_inv_and_fab_list_the_same_tasks():
    # the interpreter's own scripts first: `.venv/bin/inv test` runs with .venv/bin not on PATH
    scripts = str(Path(sys.executable).parent)
    exes = {tool: shutil.which(tool, path=scripts) or shutil.which(tool) for tool in ("inv", "fab")}
    assert all(exes.values()), f"not installed: {[t for t, e in exes.items() if not e]}"
    runs = {(tool, fmt): subprocess.Popen([exe, "--list", *(["--list-format", "json"] if fmt == "json" else [])],
                                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for tool, exe in exes.items() for fmt in ("json", "text")}
    out = {}
    for key, proc in runs.items():
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, (key, stderr)
        out[key] = stdout
    inv_names = sorted(_task_names(json.loads(out["inv", "json"])))
    fab_names = sorted(_task_names(json.loads(out["fab", "json"])))
    assert inv_names == fab_names
    assert {"deploy", "rollback", "status", "maintenance-on", "maintenance-off", "test", "demo", "bench",
            "testbed.up", "testbed.down", "testbed.status"} <= set(inv_names)
    assert out["inv", "text"] == out["fab", "text"]  # the plain listing is identical too


def test_fab_with_several_hosts_is_one_rollout_run_by_the_first_call(bad_root, monkeypatch):
    """fab calls a task once per -H host: the first call rolls out to all of them, the others do nothing."""
    monkeypatch.setattr(sys, "argv", ["fab", "-H", "root@app1.example.com:22,10.0.0.5", "status", "--env", "good"])
    monkeypatch.setattr(tasks, "_COVERED", set())
    calls = []

    class First(Context):
        host = "app1.example.com"

    class Second(Context):
        host = "10.0.0.5"

    calls.append(tasks._target(First(), None, task_name="status"))
    calls.append(tasks._target(Second(), None, task_name="status"))
    assert calls[0].hosts == ("app1.example.com", "10.0.0.5") and calls[1] is None
    again = tasks._target(Second(), None, task_name="status")
    assert again.hosts == ("app1.example.com", "10.0.0.5"), "a second `status` on the command line runs again"


@pytest.mark.parametrize("argv, host, expected", [
    (["fab", "-H", "a,b,c", "deploy"], "a", ("a", "b", "c")),
    (["fab", "--hosts=a,b", "deploy"], "b", ("a", "b")),
    (["fab", "-Hroot@a:2222,[::1]:22", "deploy"], "::1", ("a", "::1")),
    (["fab", "-H", "a", "deploy"], "a", ("a",)),
    (["fab", "deploy"], "x", ("x",)),
])
def test_fab_hosts_reads_fabrics_host_list(argv, host, expected):
    assert tasks.fab_hosts(argv, host) == expected
