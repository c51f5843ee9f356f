"""When things fail around a deploy, on the real testbed: an undo that cannot put traffic back must
leave the new colour serving (not a 502 for everyone), `status` must say so and exit non-zero, and
the next `rollback` must repair the host; a live colour that stops answering fails `status`; a
registry that hangs mid-pull is cut off at TIMEOUT_PULL with the old version serving and the lock
released for the next deploy."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from deploytasks import deploys, lock, operations, phases, releases
from deploytasks.backends.containers import Containers
from deploytasks.errors import DeployError, StepFailed
from deploytasks.layout import Layout
from deploytasks.plan import Cmd, Poll, Step

from .support import PUBLIC, serving, sha, target_of


def running(project: str) -> bool:
    out = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}"],
                         capture_output=True, text=True, check=True).stdout
    return bool(out.strip())


def test_a_switch_that_cannot_be_undone_keeps_the_new_colour_serving(fresh_host, capsys):
    config = fresh_host
    target = target_of(config)
    layout = Layout.of(config)
    operations.deploy(target, sha("v1"))
    new = sha("v2")

    def plan_for(state, primary=True):
        """The real v2 plan, with two faults after the switch: the run directory becomes immutable
        (so traffic cannot be put back) and the check through nginx fails."""
        plan = deploys.deploy(config, state, Containers(config, new), new, releases.name(new))
        steps = []
        for step in plan.steps:
            if step.phase == phases.VERIFY:
                step = Step(phases.VERIFY, (Cmd(("chattr", "+i", layout.run)), Poll(("false",), 1, 0.5)),
                            label="check through nginx (made to fail)")
            steps.append(step)
        return dataclasses.replace(plan, steps=tuple(steps))

    try:
        with pytest.raises(StepFailed) as failed:
            operations._each_host(target, "deploy", new, plan_for, dry_run=False, policy=lock.Policy(), echo=print)
        out = capsys.readouterr().out
        assert not failed.value.undone and "traffic could not be put back" in str(failed.value)
        assert "switch to green could not be undone: the undos before it are skipped" in out
        # what serves was left alone: v2 answers, nothing fails
        assert serving() == new and requests.get(f"{PUBLIC}/items", timeout=5).status_code == 200
        assert running(f"{config.app_name}-green") and running(f"{config.app_name}-blue")
        assert any(r.endswith(new) for r in os.listdir(layout.releases)), "its release is kept"
        last = json.loads(Path(layout.history).read_text().splitlines()[-1])
        assert last["outcome"] == "failed, not undone" and last["failed_after"][-1] == phases.SWITCH

        with pytest.raises(DeployError) as broken:
            operations.status(target)
        assert "HALF-DONE: deploy" in str(broken.value) and "stopped at step 'undo failed'" in str(broken.value)
    finally:
        subprocess.run(["chattr", "-i", layout.run], check=True)

    operations.rollback(target)  # the repair: back to v1, which still runs beside it
    assert serving() == sha("v1")
    capsys.readouterr()
    operations.status(target)  # whole again: exits 0
    assert "HALF-DONE" not in capsys.readouterr().out


def test_status_fails_when_the_live_colour_stops_answering(fresh_host, capsys):
    config = fresh_host
    target = target_of(config)
    operations.deploy(target, sha("v1"))
    operations.status(target)
    subprocess.run(["docker", "stop", "-t", "2", f"{config.app_name}-blue-web-1"], check=True, capture_output=True)
    assert requests.get(f"{PUBLIC}/version", timeout=5).status_code == 502
    with pytest.raises(DeployError) as broken:
        operations.status(target)
    assert "the live colour (blue) does not answer HEALTH_PATH /healthz" in str(broken.value)
    assert "!! the live colour does not answer HEALTH_PATH /healthz: visitors get 502" in capsys.readouterr().out


class _StallingRegistry(BaseHTTPRequestHandler):
    """In front of the testbed's registry: answers deploytasks' own image check (before it
    connects), and never answers dockerd, as a registry that hangs once the pull has begun."""

    release: threading.Event
    upstream = "http://127.0.0.1:5000"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        if "python-requests" not in self.headers.get("User-Agent", ""):  # dockerd pulling
            self.release.wait(120)  # hang
            return
        response = requests.head(self.upstream + self.path, headers={"Accept": self.headers.get("Accept", "")},
                                 timeout=5)
        self.send_response(response.status_code)
        for key in ("Content-Type", "Docker-Content-Digest", "Content-Length", "Docker-Distribution-Api-Version"):
            if key in response.headers:
                self.send_header(key, response.headers[key])
        self.end_headers()

    def do_GET(self):
        self.do_HEAD()


@pytest.fixture
def stalling_registry():
    handler = type("Handler", (_StallingRegistry,), {"release": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        handler.release.set()
        server.shutdown()
        server.server_close()


def test_a_registry_that_hangs_during_the_pull_is_bounded_and_changes_nothing(fresh_host, stalling_registry):
    config = fresh_host
    operations.deploy(target_of(config), sha("v1"))
    hanging = target_of(config, images={"web": f"{stalling_registry}/example/web"}, timeout_pull=8)
    pulled = f"{stalling_registry}/example/web:{sha('v2')}"
    subprocess.run(["docker", "image", "rm", pulled], capture_output=True)  # a port reused since: not ours
    started = time.monotonic()
    with pytest.raises(StepFailed) as failed:
        operations.deploy(hanging, sha("v2"))
    assert "timed out after 8s (TIMEOUT_PULL)" in str(failed.value)
    assert time.monotonic() - started < 60, "bounded: not the registry's hours"
    assert serving() == sha("v1") and failed.value.undone
    layout = Layout.of(config)
    assert not Path(layout.lock).exists(), "the lock was released"
    last = json.loads(Path(layout.history).read_text().splitlines()[-1])
    assert last["outcome"] == "failed" and phases.PULL not in last["failed_after"], "pull is where it stopped"
    operations.deploy(target_of(config), sha("v2"))  # the next deploy needs no unlock
    assert serving() == sha("v2")
