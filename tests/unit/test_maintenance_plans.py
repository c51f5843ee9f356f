"""Maintenance mode and maintenance-window deploys: plans as data, their scripts in a real sh,
and the inlined maintenance page as nginx itself serves it (when an nginx binary is installed)."""
from __future__ import annotations

import dataclasses
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import container_deploy, REL_NEW, REL_OLD, REPO, SHA_NEW, step_named as _step, step_names as _names

from deploytasks.backends import compose
from deploytasks import config as configuration
from deploytasks import maintenance, nginx, traffic
from deploytasks.plan import Cmd, Poll, Put, cmd

ROOT = "/srv/example"
FLAG = f"{ROOT}/state/maintenance"
linux_sh = pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("sh"), reason="needs a Linux sh")


# --- maintenance-on / maintenance-off ---------------------------------------------------------

def test_toggle_on(local_config, first_state):
    plan = maintenance.toggle(local_config, first_state, True)
    assert plan.kind == "maintenance-on" and plan.sha == ""
    assert _names(plan) == ["prepare", "nginx site", "maintenance on"]
    assert plan.steps[0].actions == (cmd("mkdir", "-p", f"{ROOT}/state", f"{ROOT}/nginx"),)
    site = _step(plan, "nginx site")
    assert site == nginx.install_step(local_config, f"{ROOT}/nginx/site.conf")
    (put,) = [a for a in site.actions if isinstance(a, Put)]
    assert put.path == f"{ROOT}/nginx/site.conf" and put.content == nginx.site(local_config).encode()
    on = _step(plan, "maintenance on")
    touch, poll = on.actions
    assert touch == maintenance.set_flag(local_config, maintenance.OPERATOR)
    assert isinstance(poll, Poll) and poll.expect == "503" and poll.timeout == 10 and poll.interval == 0.2
    assert poll.argv == maintenance.public_status_probe(local_config)
    assert on.undo == (cmd("rm", "-f", FLAG),)


def test_toggle_on_when_already_on_keeps_it_on_if_undone(local_config, first_state):
    plan = maintenance.toggle(local_config, dataclasses.replace(first_state, maintenance=True), True)
    on = _step(plan, "maintenance on")
    assert on.actions[0] == maintenance.set_flag(local_config, maintenance.OPERATOR) and on.undo == ()


def test_toggle_off(local_config, blue_live_state):
    plan = maintenance.toggle(local_config, dataclasses.replace(blue_live_state, maintenance=True), False)
    assert plan.kind == "maintenance-off"
    assert _names(plan) == ["prepare", "nginx site", "maintenance off"]
    off = _step(plan, "maintenance off")
    assert off.actions == (cmd("rm", "-f", FLAG),) and off.undo == (maintenance.set_flag(local_config, "operator"),)
    assert not any(isinstance(a, Poll) for s in plan.steps for a in s.actions)


def test_toggle_for_process_releases(process_config, first_state):
    plan = maintenance.toggle(process_config, first_state, True)
    assert _step(plan, "maintenance on").actions[0].argv[-2:] == ("/srv/example-proc/state/maintenance", "operator")
    assert _step(plan, "maintenance on").actions[1].argv[-1] == "http://127.0.0.1:8081/"


def test_status_probe(local_config):
    assert maintenance.public_status_probe(local_config) == (
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "-H", "Host: localhost",
        "http://127.0.0.1:8080/")
    config = dataclasses.replace(local_config, nginx_listen=443)
    assert maintenance.public_status_probe(config, "/x")[-1] == "http://127.0.0.1:443/x"


def test_maintenance_probe_addresses_the_apps_server_like_verify(local_config):
    config = dataclasses.replace(local_config, server_name="*.shop.example.com shop.example.com www.shop.example.com")
    probe = maintenance.public_status_probe(config)
    verify = traffic.verify(config, SHA_NEW, "green").actions[0].argv
    assert probe[probe.index("-H") + 1] == verify[verify.index("-H") + 1] == "Host: shop.example.com"


@linux_sh
def test_the_flag_says_who_set_it_and_the_state_read_reports_it(tmp_path, local_config):
    from deploytasks import facts
    from deploytasks.layout import Layout

    config = dataclasses.replace(local_config, deploy_path=str(tmp_path))
    layout = Layout.of(config)
    Path(layout.state).mkdir(parents=True)
    read = facts.read_command(layout, config.health_path, "localhost")
    for by in (maintenance.WINDOW, maintenance.OPERATOR):
        subprocess.run(maintenance.set_flag(config, by).argv, check=True)
        state = facts.parse(subprocess.run(read, capture_output=True, text=True).stdout)
        assert state.maintenance and state.maintenance_by == by


# --- window_seconds -------------------------------------------------------------------------

def test_window_seconds_spans_on_to_off_inclusive():
    steps = [("prepare", 1.0), ("start", 9.0), ("maintenance-on", 0.5), ("stop-old", 2.0), ("migrate", 3.25),
             ("ready", 0.5), ("switch", 0.1), ("maintenance-off", 0.05), ("verify", 1.0)]
    assert maintenance.window_seconds(steps) == 6.4


def test_window_seconds_rounds_and_needs_both_ends():
    assert maintenance.window_seconds([("maintenance-on", 0.123), ("maintenance-off", 0.004)]) == 0.13
    assert maintenance.window_seconds([("prepare", 1.0), ("maintenance-on", 1.0), ("migrate", 2.0)]) is None
    assert maintenance.window_seconds([("maintenance-off", 1.0)]) is None
    assert maintenance.window_seconds([]) is None


# --- window_on_step and its undo --------------------------------------------------------------

def test_window_on_step_lifts_only_if_the_old_colour_is_ready(local_config):
    step = maintenance.window_on_step(local_config, "blue")
    assert step.name == "maintenance on"
    assert step.actions == maintenance.on_step(local_config, by=maintenance.WINDOW).actions
    (undo,) = step.undo
    assert undo.argv[:3] == ("sh", "-c", maintenance._LIFT_IF_READY)
    assert undo.argv[3:] == ("sh", FLAG, f"{ROOT}/run/blue/web.sock", "http://localhost/readyz", "localhost")


def test_window_on_step_without_an_old_colour_just_lifts(local_config):
    assert maintenance.window_on_step(local_config, None).undo == (cmd("rm", "-f", FLAG),)


@pytest.fixture
def lift(tmp_path, local_config):
    """Run the plan's own undo of `maintenance on` with a fake curl (failing FAIL_TIMES times) and sleep."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text('#!/bin/sh\necho "curl $*" >> "$CALLS"\n'
                                  'n=$(cat "$CALLS.count" 2>/dev/null || echo 0); echo $((n + 1)) > "$CALLS.count"\n'
                                  '[ "$n" -ge "$FAIL_TIMES" ]\n')
    (bin_dir / "sleep").write_text('#!/bin/sh\necho "sleep $*" >> "$CALLS"\n')
    for name in ("curl", "sleep"):
        (bin_dir / name).chmod(0o755)
    config = dataclasses.replace(local_config, deploy_path=str(tmp_path / "srv"))
    flag = tmp_path / "srv" / "state" / "maintenance"
    flag.parent.mkdir(parents=True)
    (undo,) = maintenance.window_on_step(config, "blue").undo

    def run(fail_times: int):
        flag.touch()
        log.unlink(missing_ok=True)
        Path(f"{log}.count").unlink(missing_ok=True)
        out = subprocess.run(undo.argv, capture_output=True, text=True, timeout=10,
                             env={"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(log), "FAIL_TIMES": str(fail_times)})
        return out, log.read_text().splitlines(), flag.exists()
    run.socket = f"{tmp_path}/srv/run/blue/web.sock"
    return run


@linux_sh
def test_lift_when_the_old_colour_answers_ready(lift):
    out, calls, flag = lift(0)
    assert out.returncode == 0 and not flag
    assert calls == [f"curl -fsS --max-time 2 --unix-socket {lift.socket} -H Host: localhost http://localhost/readyz"]


@linux_sh
def test_lift_after_the_old_colour_comes_back(lift):
    out, calls, flag = lift(3)
    assert out.returncode == 0 and not flag
    assert [c.split()[0] for c in calls] == ["curl", "sleep"] * 3 + ["curl"]
    assert "sleep 1" in calls


@linux_sh
def test_maintenance_stays_on_when_the_old_colour_never_answers(lift):
    out, calls, flag = lift(100)
    assert out.returncode == 1 and flag, "visitors keep the maintenance page rather than errors"
    assert sum(c.startswith("curl") for c in calls) == 10
    assert "MAINTENANCE STAYS ON: the previous version is not ready either" in out.stderr


# --- container_deploy(..., window=True) ------------------------------------------------------

WINDOW_STEPS = ["prepare", "upload release", "pull images", "networks", "stateful services", "nginx site",
                "start green", "maintenance on", "stop blue", "migrate", "ready: green", "switch to green",
                "maintenance off", "check through nginx", "cleanup (0 old release(s))"]


def test_window_deploy_order(local_config, blue_live_state):
    plan = container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW, window=True)
    assert plan.summary == {"colour": "green", "release": REL_NEW, "previous": "aaaaaaa", "window": True,
                            "probe_interval": None}
    assert _names(plan) == WINDOW_STEPS
    assert not any(name.startswith("drain") for name in _names(plan))


def test_window_deploy_steps(local_config, blue_live_state):
    plan = container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW, window=True)
    old, new = f"{ROOT}/releases/{REL_OLD}", f"{ROOT}/releases/{REL_NEW}"
    blue = ("docker", "compose", "-p", "example-blue", "--env-file", f"{old}/compose.env",
            "-f", f"{old}/compose/compose.yml", "-f", f"{old}/compose.deploy.yml")
    green = ("docker", "compose", "-p", "example-green", "--env-file", f"{new}/compose.env",
             "-f", f"{new}/compose/compose.yml", "-f", f"{new}/compose.deploy.yml")
    start = _step(plan, "start green")
    assert start.actions[-1].argv[:len(green)] == green and "--force-recreate" in start.actions[-1].argv
    assert _step(plan, "maintenance on") == maintenance.window_on_step(local_config, "blue")
    stop = _step(plan, "stop blue")
    assert stop.actions == (Cmd((*blue, "stop", "-t", "15", "web"), timeout=40, timeout_key="TIMEOUT_STOP",
                                quiet=compose.shared_volume_warning(local_config)),)
    assert stop.undo == (Cmd((*blue, "up", "-d", "--no-deps", "--wait", "--wait-timeout", "60", "web"),
                             timeout=90, timeout_key="HEALTH_TIMEOUT", quiet=compose.shared_volume_warning(local_config)),), \
        "undo starts the old colour again, bounded by HEALTH_TIMEOUT"
    migrate = _step(plan, "migrate")
    assert green in [migrate.actions[0].argv[i:i + len(green)] for i in range(len(migrate.actions[0].argv))]
    assert migrate.outlives_connection, "a lost connection in the window undoes nothing under a running migration"
    assert _step(plan, "switch to green") == traffic.switch(local_config, blue_live_state, "green", REL_NEW)
    assert _step(plan, "maintenance off") == maintenance.off_step(local_config, maintenance.WINDOW)
    assert _step(plan, "check through nginx").actions[0].expect == SHA_NEW


def test_window_deploy_undo_restarts_the_old_colour_before_lifting(local_config, blue_live_state):
    """A failure at `ready: green` undoes newest first: blue comes back, then the window lifts if blue is ready."""
    plan = container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW, window=True)
    done = list(plan.steps[:plan.steps.index(_step(plan, "ready: green")) + 1])
    undos = [action for step in reversed(done) for action in step.undo]
    restart = _step(plan, "stop blue").undo[0]
    (lift,) = _step(plan, "maintenance on").undo
    assert undos.index(restart) < undos.index(lift) < undos.index(_step(plan, "start green").undo[0])


def test_first_window_deploy_has_nothing_to_stop(local_config, first_state):
    plan = container_deploy(local_config, first_state, SHA_NEW, REL_NEW, window=True)
    assert _names(plan) == [n.replace("green", "blue") for n in WINDOW_STEPS if n != "stop blue"]
    assert _step(plan, "maintenance on").undo == (cmd("rm", "-f", FLAG),)


def test_window_deploy_without_migration(local_config, blue_live_state):
    plan = container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW, window=True, migrate=False)
    assert _names(plan) == [n for n in WINDOW_STEPS if n != "migrate"]


def test_window_the_operator_opened_stays_open(local_config, blue_live_state):
    """maintenance-on before a --maintenance deploy: the deploy neither opens nor closes the window."""
    state = dataclasses.replace(blue_live_state, maintenance=True, maintenance_by=maintenance.OPERATOR)
    plan = container_deploy(local_config, state, SHA_NEW, REL_NEW, window=True)
    assert _names(plan) == [n for n in WINDOW_STEPS if not n.startswith("maintenance")]
    assert not any(FLAG in argv for s in plan.steps for a in (*s.actions, *s.undo) if isinstance(a, Cmd)
                   for argv in a.argv)


def test_a_window_left_by_a_dead_window_deploy_is_the_next_ones_to_close(local_config, blue_live_state):
    """Its deploy held the lock, so a window flag found by the next deploy is a dead deploy's."""
    state = dataclasses.replace(blue_live_state, maintenance=True, maintenance_by=maintenance.WINDOW)
    plan = container_deploy(local_config, state, SHA_NEW, REL_NEW, window=True)
    assert _names(plan) == WINDOW_STEPS


def test_no_window_has_no_maintenance_steps(local_config, blue_live_state):
    plan = container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW)
    assert not any(name.startswith("maintenance") for name in _names(plan))
    assert plan.summary["window"] is False


# --- the inlined maintenance page -------------------------------------------------------------

HOSTILE_PAGE = ("<p>It's $5 \\ back soon: ${HOME} $host \\n \\' \\\\ 'quoted' \"dq\" {braces}; semi; # no comment\n"
                "\ttabbed line with trailing backslash \\\n<!-- €uro ✓ -->\n")


def _nginx_unquote(text: str, dollar_var: str) -> str:
    """What nginx makes of the body of a single-quoted string (ngx_conf_read_token), `${var}` expanded."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in "\"'\\":
                out.append(nxt)
            elif nxt in "trn":
                out.append({"t": "\t", "r": "\r", "n": "\n"}[nxt])
            else:
                out.append(ch + nxt)
            i += 2
            continue
        if ch == "'":
            raise AssertionError(f"unescaped quote at {i}: {text[max(0, i - 20):i + 20]!r}")
        if ch == "$":
            assert text.startswith("${" + dollar_var + "}", i), f"a stray nginx variable at {i}"
            out.append("$")
            i += len(dollar_var) + 3
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _site_with_page(config, tmp_path: Path, page: str):
    """The project's own nginx/maintenance.html overrides the packaged page; the site stays packaged."""
    (tmp_path / "nginx").mkdir(exist_ok=True)
    (tmp_path / "nginx" / "maintenance.html").write_text(page)
    config = dataclasses.replace(config, root=tmp_path, site_template=configuration.template(tmp_path, "site"),
                                 maintenance_page=configuration.template(tmp_path, "maintenance"))
    assert config.site_template == configuration.PACKAGED_TEMPLATES / "site.conf.template"
    return config, nginx.site(config)


@pytest.mark.parametrize("page", [HOSTILE_PAGE, (REPO / "deploytasks" / "templates" / "maintenance.html").read_text(), "", "\\", "'", "$"])
def test_maintenance_page_round_trips_through_nginx_quoting(local_config, tmp_path, page):
    _, site = _site_with_page(dataclasses.replace(local_config, app_name="my-shop"), tmp_path, page)
    body = re.search(r"return 503 '(.*)';\n    \}\n\}\n\Z", site, re.S).group(1)
    assert _nginx_unquote(body, "my_shop_dollar") == page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, host: str, method: str = "GET"):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/some/page", method=method, headers={"Host": host},
                                     data=b"x=1" if method == "POST" else None)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """nginx (master_process off, temp paths in a tmp dir) with the rendered site, the flag set, and a
    distro-style `default_server` on the same port, as Debian's default site would be."""
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if not binary or not sys.platform.startswith("linux"):
        pytest.skip("needs an nginx binary")
    tmp_path = tmp_path_factory.mktemp("nginx")
    local_config = configuration.load(REPO, "local", environ={})
    port = _free_port()
    config = dataclasses.replace(local_config, deploy_path=str(tmp_path / "srv"), nginx_listen=port,
                                 server_name="shop.example.com")
    (tmp_path / "log").mkdir()
    saved, nginx.ERRORS_LOG_DIR = nginx.ERRORS_LOG_DIR, str(tmp_path / "log")  # not this machine's /var/log
    try:
        config, site = _site_with_page(config, tmp_path, HOSTILE_PAGE)
    finally:
        nginx.ERRORS_LOG_DIR = saved
    (tmp_path / "srv" / "state").mkdir(parents=True)
    (tmp_path / "srv" / "state" / "maintenance").touch()
    (tmp_path / "site.conf").write_text(site)
    temp = "".join(f"    {kind}_temp_path {tmp_path}/temp-{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\nmaster_process off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        f"events {{ worker_connections 32; }}\nhttp {{\n    access_log off;\n{temp}"
        f"    server {{ listen {port} default_server; server_name _; return 200 'distro default site'; }}\n"
        f"    include {tmp_path}/site.conf;\n}}\n")
    argv = [binary, "-p", f"{tmp_path}/", "-e", f"{tmp_path}/error.log", "-c", f"{tmp_path}/nginx.conf"]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=10)
    assert check.returncode == 0, check.stderr  # the rendered site with the hostile page is valid nginx
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.01)
    yield config, port
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def test_nginx_serves_the_page_byte_for_byte_to_every_method(served):
    config, port = served
    for method in ("GET", "POST", "DELETE"):
        status, headers, body = _get(port, "shop.example.com", method)
        assert status == 503, method
        assert body == HOSTILE_PAGE.encode(), method
        assert headers["Retry-After"] == "30" and headers["Content-Type"].startswith("text/html")
    assert _get(port, "other.example.com")[2] == b"distro default site"


def test_maintenance_probe_sees_the_503_with_a_default_server_on_the_port(served):
    """Debian's default site (`listen 80 default_server`) answers requests for other names: the
    probe must name this site, or maintenance-on never sees its 503."""
    config, _ = served
    probe = subprocess.run(maintenance.public_status_probe(config), capture_output=True, text=True, timeout=10,
                           env={"PATH": "/usr/bin:/bin", "NO_PROXY": "*"})
    assert probe.stdout == maintenance.STATUS
