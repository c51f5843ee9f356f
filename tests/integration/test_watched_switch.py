"""Every deploy measures itself (the probe), and a release that fails after its switch is taken
back by the watch while the old colour still runs. Real testbed: sshd, dockerd, nginx."""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from deploytasks import operations
from deploytasks.errors import DeployError

from .support import PUBLIC, history, serving, sha, target_of


def test_the_probe_figures_are_in_the_output_the_history_and_status(fresh_host, capsys):
    config = fresh_host
    operations.deploy(target_of(config), sha("v1"))
    capsys.readouterr()
    operations.deploy(target_of(config), sha("v2"))
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if "] switch: " in line]
    assert len(said) == 1 and "switch: 0 failed of " in said[0] and "no old version after the new" in said[0], out
    figures = history(config)[-1]["probe"]
    assert figures["failed"] == 0 and figures["regressions"] == 0
    assert figures["requests"] >= 10, "10 a second from before the switch to the end of the drain"
    assert f"switch: 0 failed of {figures['requests']} requests" in said[0]
    operations.status(target_of(config))
    assert f"probe: 0 failed of {figures['requests']} requests, longest gap {figures['gap_ms']} ms" in capsys.readouterr().out
    assert not Path(config.deploy_path, "run", "probe").exists(), "the probe was stopped and its lines read"

    operations.rollback(target_of(config), probing=False)  # --no-probe
    out = capsys.readouterr().out
    assert "switch: " not in out and "probe" not in history(config)[-1]
    assert serving() == sha("v1")


def started_at(container: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", container],
                          capture_output=True, text=True, check=True).stdout.strip()


def running(container: str) -> bool:
    found = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", container], capture_output=True, text=True)
    return found.stdout.strip() == "true"


class Visitors:
    """Two browsers on the site's pages (a release's pages break only once it has visitors)."""

    def __init__(self):
        self.stop = threading.Event()
        self.answers: list[tuple[int, str]] = []
        self.threads = [threading.Thread(target=self.visit, daemon=True) for _ in range(2)]

    def visit(self):
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    r = session.get(f"{PUBLIC}/", timeout=5)
                    self.answers.append((r.status_code, r.headers.get("X-App-Version", "")))
                except requests.RequestException as exc:
                    self.answers.append((0, type(exc).__name__))
                time.sleep(0.02)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join()


def test_a_release_that_breaks_after_its_switch_is_taken_back_while_the_old_colour_runs(fresh_host, capsys):
    config = fresh_host
    operations.deploy(target_of(config), sha("v2"))
    blue_started = started_at("example-blue-web-1")
    capsys.readouterr()
    with Visitors() as visitors, pytest.raises(DeployError) as failed:
        operations.deploy(target_of(config), sha("v5-breaks"))
    out = capsys.readouterr().out
    assert "watch: nginx logged 5xx answers of the new version (500 GET /" in str(failed.value)
    assert serving() == sha("v2")
    record = history(config)[-1]
    assert record["sha"] == sha("v5-breaks") and record["outcome"] == "failed" and record["failed_after"][-1] == "verify"
    assert "switch and back: " in out, out
    # what the visitors saw: the bad release's own 500s, then only v2 again; never a connection error or a 502
    bad = [(code, version) for code, version in visitors.answers if code != 200]
    assert bad and all(code == 500 and version == sha("v5-breaks") for code, version in bad), bad
    last_bad = max(i for i, (code, _) in enumerate(visitors.answers) if code != 200)
    assert all(version == sha("v2") for _, version in visitors.answers[last_bad + 1:])
    # the old colour never stopped (it drains only after a watch that passed); the new one is gone
    assert started_at("example-blue-web-1") == blue_started
    assert not running("example-green-web-1")
