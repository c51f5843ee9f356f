"""The deploy's own probe and the watch after the switch: their sums, and their scripts run for
real (bash, curl, awk) against an HTTP server on 127.0.0.1 standing in for the host's nginx."""
from __future__ import annotations

import dataclasses
import http.server
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import SHA_NEW, step_named

from deploytasks import nginx, probe, traffic
from deploytasks.layout import Layout

OLD = "a" * 40
NEW = "b" * 40


def test_summarize_counts_failures_gaps_and_old_answers_after_new():
    text = "\n".join([
        f"100.00 200 0.010 {OLD}",
        f"100.10 200 0.010 {NEW}",
        f"100.20 502 0.001 ",
        f"100.30 000 0 ",
        f"100.40 200 0.020 {OLD}",  # an old answer after the new: a regression
        f"100.50 200 0.010 {NEW}",
        "garbage line",
    ])
    figures = probe.summarize(text, NEW, 0.1)
    assert figures["requests"] == 6 and figures["failed"] == 2
    assert figures["failures"] == ["+0.20s HTTP 502", "+0.30s no answer"], "each failure is listed, not dropped"
    # successes end at 100.01, 100.11, 100.42: the longest wait beyond the 0.1 s spacing is 0.21 s
    assert figures["gap_ms"] == 210
    assert figures["regressions"] == 1 and figures["slowest_ms"] == 20


def test_summarize_without_versions_cannot_tell_old_from_new():
    figures = probe.summarize("1.0 200 0.01 \n1.1 200 0.01 ", NEW, 0.1)
    assert figures["regressions"] is None
    assert "versions not told apart" in probe.describe(figures)
    assert probe.summarize("", NEW, 0.1) is None


def test_describe_says_what_the_switch_cost():
    figures = {"requests": 412, "failed": 0, "gap_ms": 18, "regressions": 0, "failures": []}
    assert probe.describe(figures) == "switch: 0 failed of 412 requests, longest gap 18 ms, no old version after the new"
    failed = {**figures, "failed": 7, "failures": ["+1.00s HTTP 502"] * 5}
    assert probe.describe(failed).endswith("failed: " + ", ".join(["+1.00s HTTP 502"] * 5) + " and 2 more")
    back = probe.describe({**figures, "regressions": 3}, switched_back=True)
    assert back.startswith("switch and back: 0 failed of 412") and "old version answered again" in back


def test_no_probe_when_turned_off(local_config):
    assert probe.start_step(local_config, enabled=False) == []
    assert probe.start_step(dataclasses.replace(local_config, probe_rate=0)) == []
    assert probe.interval(local_config) == pytest.approx(0.1)


class _App(http.server.BaseHTTPRequestHandler):
    version = NEW
    status = 200

    def do_GET(self):  # noqa: N802
        body = (self.version + "\n").encode() if self.path in ("/version",) else b"ok\n"
        self.send_response(self.status if self.path not in ("/readyz",) else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def site(tmp_path, local_config, monkeypatch):
    """An HTTP server where the host's nginx would be, and a config whose deploy path is tmp_path."""
    handler = type("App", (_App,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = dataclasses.replace(local_config, deploy_path=str(tmp_path), nginx_listen=server.server_address[1],
                                 probe_rate=20.0)
    (tmp_path / "run").mkdir()
    (tmp_path / "log").mkdir()
    monkeypatch.setattr(nginx, "ERRORS_LOG_DIR", str(tmp_path / "log"))
    yield config, handler, server
    server.shutdown()


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, **kwargs)


def test_the_probe_runs_in_the_background_and_reports_what_it_saw(site):
    config, app, server = site
    (step,) = probe.start_step(config)
    assert step.best_effort, "a probe that cannot start never fails the deploy"
    started = _run(step.actions[0].argv)
    assert started.returncode == 0, started.stderr
    time.sleep(0.6)
    app.status = 500  # the app fails for a moment
    time.sleep(0.3)
    app.status = 200
    time.sleep(0.3)
    collected = _run(probe.collect_argv(Layout.of(config)))
    figures = probe.summarize(collected.stdout, NEW, probe.interval(config))
    assert figures["requests"] >= 10 and 3 <= figures["failed"] <= 10, figures
    assert all(f.endswith("HTTP 500") for f in figures["failures"])
    assert figures["regressions"] == 0
    assert not Path(probe.directory(Layout.of(config))).exists(), "collected once, then gone"
    assert _run(probe.collect_argv(Layout.of(config))).stdout == "", "nothing left to read"


def _probes_of(folder: Path) -> list[int]:
    """The live (not zombie) processes whose command line names a probe directory under `folder`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(folder) in (proc / "cmdline").read_bytes().decode(errors="replace") \
                    and "\nState:\tZ" not in (proc / "status").read_text():
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def test_a_second_probe_ends_the_one_a_killed_deploy_left(site):
    config, app, server = site
    (step,) = probe.start_step(config)
    folder = Path(probe.directory(Layout.of(config)))
    _run(step.actions[0].argv)
    first = folder / (folder / "current").readlink()
    time.sleep(0.3)
    assert _probes_of(first), "running"
    _run(step.actions[0].argv)  # the next deploy's, with nobody having stopped the first
    time.sleep(0.5)
    assert not first.exists() and _probes_of(first) == [], "its directory gone, it ended by itself"
    assert _probes_of(folder), "the new one runs"
    assert probe.summarize(_run(probe.collect_argv(Layout.of(config))).stdout, NEW, 0.05)["requests"] >= 3
    time.sleep(0.2)
    assert _probes_of(folder) == [] and not folder.exists()


def _watch(config, sha=NEW) -> subprocess.CompletedProcess:
    (step,) = traffic.monitor(config, sha)
    return _run(step.actions[0].argv)


def test_the_watch_passes_a_version_that_keeps_answering(site):
    config, app, server = site
    config = dataclasses.replace(config, monitor_seconds=1.0)
    Path(Layout.of(config).live_socket).symlink_to("blue/web.sock")
    started = time.monotonic()
    result = _watch(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 0.9 <= time.monotonic() - started < 5
    assert "passed every check for 1s" in result.stdout


def test_the_watch_fails_on_5xx_logged_since_the_switch_and_not_before(site):
    config, app, server = site
    config = dataclasses.replace(config, monitor_seconds=2.0)
    log = Path(nginx.errors_log(config))
    log.write_text(f"{time.time() - 60:.3f} 0.002 500 GET /before-the-switch\n")
    Path(Layout.of(config).live_socket).symlink_to("blue/web.sock")
    time.sleep(0.05)
    assert _watch(dataclasses.replace(config, monitor_seconds=0.5)).returncode == 0, "older 5xx are the old colour's"
    Path(Layout.of(config).live_socket).unlink()
    Path(Layout.of(config).live_socket).symlink_to("green/web.sock")  # the switch
    time.sleep(0.05)
    # a long request the old colour took before the switch, ending in a 504 now: not the new version's
    log.open("a").write(f"{time.time():.3f} 5.000 504 GET /export\n")
    threading.Timer(0.4, lambda: log.open("a").write(f"{time.time():.3f} 0.010 502 POST /orders\n")).start()
    started = time.monotonic()
    result = _watch(config)
    assert result.returncode == 1 and time.monotonic() - started < 1.8, "caught within a poll or two"
    assert "nginx logged 5xx answers of the new version (502 POST /orders): switching back" in result.stdout


def test_the_watch_fails_when_another_version_answers(site):
    config, app, server = site
    config = dataclasses.replace(config, monitor_seconds=1.0)
    Path(Layout.of(config).live_socket).symlink_to("blue/web.sock")
    app.version = OLD
    result = _watch(config)
    assert result.returncode == 1
    assert f"answered {OLD}, not {NEW}" in result.stdout
    app.version = NEW[:12]  # an abbreviated answer for the full SHA is the same version
    assert _watch(config).returncode == 0


def test_the_watch_is_in_the_plan_between_the_check_and_the_drain(local_config, blue_live_state):
    from conftest import REL_NEW, container_deploy
    plan = container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW)
    names = [step.name for step in plan.steps]
    assert names.index("check through nginx") + 1 == names.index("watch 2s") == names.index("drain blue") - 1
    assert not step_named(plan, "watch 2s").best_effort, "a failed watch undoes the switch"
    assert traffic.monitor(dataclasses.replace(local_config, monitor_seconds=0), SHA_NEW) == []


def test_the_watch_fails_fast_while_the_new_version_keeps_failing(site):
    """A version failing under real load writes 5xx lines faster than the watch reads them: it must
    still fail at once, not once the flood stops."""
    config, app, server = site
    config = dataclasses.replace(config, monitor_seconds=10.0)
    log = Path(nginx.errors_log(config))
    log.write_text("")
    Path(Layout.of(config).live_socket).symlink_to("blue/web.sock")
    time.sleep(0.05)
    stop = threading.Event()

    def flood():
        with log.open("a", buffering=1) as out:
            while not stop.is_set():
                out.write(f"{time.time():.3f} 0.001 500 GET /\n")
                time.sleep(0.0005)

    writer = threading.Thread(target=flood, daemon=True)
    writer.start()
    try:
        started = time.monotonic()
        result = _watch(config)
        took = time.monotonic() - started
    finally:
        stop.set()
        writer.join()
    assert result.returncode == 1 and "(500 GET /; 500 GET /; 500 GET /): switching back" in result.stdout
    assert took < 2, f"caught after {took:.1f}s"
