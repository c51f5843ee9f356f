"""Hooks and notifications on the real testbed: a failing pre-deploy hook changes nothing on the
host, a dead webhook never fails a deploy, and a deploy runs its hooks and sends its notices once
each, at the right moments, with the right values.

The hooks are shell scripts in a temporary directory (HOOKS_DIR), run on this machine (the
deploying one); the webhook receiver is an HTTP server on 127.0.0.1, as a team's Slack would be.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deploytasks import events, operations
from deploytasks.layout import Layout

from .support import PUBLIC, serving, sha, target_of

TOKEN = "T0TESTBED/B0TESTBED/XXXXwebhooktokenXXXX"  # the secret part of the URL: never printed


def history(config) -> list[dict]:
    path = Path(config.deploy_path, "state", "history.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def snapshot(config) -> dict:
    """What a deploy could have changed on the host: what serves, the releases, the links, the
    state directory (history, lock, marker), the nginx site and the containers of both colours."""
    base = Path(config.deploy_path)
    return {
        "serving": serving(),
        "releases": sorted(os.listdir(base / "releases")),
        "current": os.readlink(base / "current"),
        "web.sock": os.readlink(base / "run" / "web.sock"),
        "state": sorted(os.listdir(base / "state")),
        "history": (base / "state" / "history.jsonl").read_text(),
        "site": Path(config.nginx_site_dir, f"{config.app_name}.conf").read_text(),
        "containers": {colour: containers(f"{config.app_name}-{colour}") for colour in ("blue", "green")},
    }


def containers(project: str) -> dict[str, str]:
    """service -> id and state of a compose project's containers (a recreated one has a new id)."""
    out = subprocess.run(["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={project}",
                          "--format", '{{.Label "com.docker.compose.service"}} {{.ID}} {{.State}}'],
                         capture_output=True, text=True, check=True).stdout
    return {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines()}


def write_hook(directory: Path, name: str, log: Path, then: str = "") -> None:
    """A hook that appends one JSON line to `log` (its DEPLOY_* variables), then runs `then`."""
    directory.mkdir(parents=True, exist_ok=True)
    dump = ("import json, os, sys; print(json.dumps({k: v for k, v in os.environ.items() "
            "if k.startswith('DEPLOY_')}))")
    path = directory / name
    path.write_text(f"#!/bin/sh\n{shlex.quote(sys.executable)} -c {shlex.quote(dump)} >> {shlex.quote(str(log))}\n"
                    f"{then}")
    path.chmod(0o755)


def runs(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


class Receiver:
    """A webhook on 127.0.0.1: every POST's JSON body, answered 200."""

    def __init__(self):
        self.bodies: list[dict] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                bodies.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0))))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/{TOKEN}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_failing_pre_deploy_hook_changes_nothing(fresh_host, tmp_path, receiver):
    config = fresh_host
    operations.deploy(target_of(config), sha("v1"))
    before = snapshot(config)
    hooks_dir, log = tmp_path / "hooks", tmp_path / "hooks.log"
    write_hook(hooks_dir, "pre-deploy", log, then='echo "CI is red for $DEPLOY_SHA"\nexit 3\n')
    for name in ("post-switch", "post-deploy", "deploy-failed"):
        write_hook(hooks_dir, name, log)

    with pytest.raises(events.HookFailed) as failed:
        operations.deploy(target_of(config, hooks_dir=hooks_dir, webhook_url=receiver.url), sha("v2"))
    assert str(failed.value).startswith("hook pre-deploy failed (exit 3): the deploy stopped before anything changed")
    assert f"CI is red for {sha('v2')}" in failed.value.details

    assert snapshot(config) == before, "the host is exactly as it was"
    assert not Path(Layout.of(config).lock).exists(), "the lock is free"
    assert not Path(Layout.of(config).in_progress).exists()
    assert [run["DEPLOY_HOOK"] for run in runs(log)] == ["pre-deploy"], "no other hook ran"
    pre = runs(log)[0]
    assert (pre["DEPLOY_SHA"], pre["DEPLOY_PREVIOUS_SHA"], pre["DEPLOY_COLOUR"]) == (sha("v2"), sha("v1"), "green")
    assert receiver.bodies == [], "nothing started: nothing sent"

    operations.deploy(target_of(config), sha("v2"))  # and the next deploy goes through
    assert serving() == sha("v2")


def test_a_dead_webhook_does_not_fail_the_deploy(fresh_host, capsys):
    config = fresh_host
    url = f"http://127.0.0.1:{closed_port()}/services/{TOKEN}"
    assert operations.deploy(target_of(config, webhook_url=url), sha("v1")) == {"127.0.0.1": sha("v1")}
    assert serving() == sha("v1")
    assert history(config)[-1]["outcome"] == "ok"
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("! webhook")]
    assert warnings == ["! webhook: the start notice was not delivered: could not connect (a warning only)",
                        "! webhook: the success notice was not delivered: could not connect (a warning only)"]
    assert TOKEN not in out


def test_a_deploy_notifies_start_and_success_and_runs_its_hooks_once(fresh_host, tmp_path, receiver, capsys):
    config = fresh_host
    operations.deploy(target_of(config), sha("v1"))
    hooks_dir, log = tmp_path / "hooks", tmp_path / "hooks.log"
    seen = tmp_path / "seen-by-post-switch"
    probe = f"import urllib.request; print(urllib.request.urlopen('{PUBLIC}/version', timeout=5).read().decode())"
    write_hook(hooks_dir, "post-switch", log, then=(
        f"{shlex.quote(sys.executable)} -c {shlex.quote(probe)} > {shlex.quote(str(seen))}\n"
        "docker ps --filter label=com.docker.compose.project=example-blue --format '{{.State}}' "
        f">> {shlex.quote(str(seen))}\n"))
    for name in ("pre-deploy", "post-deploy", "deploy-failed"):
        write_hook(hooks_dir, name, log)

    target = target_of(config, hooks_dir=hooks_dir, webhook_url=receiver.url)
    assert operations.deploy(target, sha("v2"), echo=print) == {"127.0.0.1": sha("v2")}
    assert serving() == sha("v2")

    assert [run["DEPLOY_HOOK"] for run in runs(log)] == ["pre-deploy", "post-switch", "post-deploy"]
    for run in runs(log):
        assert (run["DEPLOY_KIND"], run["DEPLOY_SHA"], run["DEPLOY_PREVIOUS_SHA"], run["DEPLOY_ENV"],
                run["DEPLOY_HOSTS"], run["DEPLOY_COLOUR"]) == ("deploy", sha("v2"), sha("v1"), "local", "127.0.0.1",
                                                               "green")
        assert "DEPLOY_HOST" not in run and run["DEPLOY_APP"] == "example"
    assert runs(log)[2]["DEPLOY_OUTCOME"] == "ok" and float(runs(log)[2]["DEPLOY_SECONDS"]) > 0
    assert seen.read_text().split() == [sha("v2"), "running"], \
        "post-switch ran once the new version served, before the old colour was drained"

    assert [body["deploytasks"]["event"] for body in receiver.bodies] == ["start", "success"]
    start, success = (body["deploytasks"] for body in receiver.bodies)
    assert (start["sha"], start["env"], start["hosts"], start["previous_sha"]) == \
        (sha("v2"), "local", ["127.0.0.1"], sha("v1"))
    assert success["outcome"] == "ok" and success["outcomes"] == {"127.0.0.1": "ok"} and success["duration_s"] > 0
    assert success["id"] == start["id"]
    assert success["probe"]["failed"] == 0 and success["probe"]["requests"] > 0, "the probe's figures are sent"
    assert f"(probe: requests {success['probe']['requests']}, failed 0" in receiver.bodies[1]["text"]
    assert all(body["text"] == body["content"] and sha("v2")[:12] in body["text"] for body in receiver.bodies)

    out = capsys.readouterr().out
    assert "hook post-switch: ok (" in out and TOKEN not in out
