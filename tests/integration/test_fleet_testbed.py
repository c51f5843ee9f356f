"""The fleet testbed for real: three hosts in namespaces, each its own sshd, dockerd, nginx and /srv.

The module starts the fleet (harness/fleet.py) and, in its last test, powers it off again, so a
test run leaves no fleet behind; the single host's testbed is never touched.
"""
from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from harness import fleet, testbed

from .support import ROOT

pytestmark = pytest.mark.integration

N = 3


@pytest.fixture(scope="module")
def lines():
    """Every line fleet.up printed at the module's first start."""
    out: list[str] = []
    fleet.up(N, echo=out.append)
    print("\n".join(out))
    return out


@pytest.fixture(scope="module")
def hosts(lines):
    return [fleet.host(i) for i in range(1, N + 1)]


def ssh(h: fleet.Host, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return fleet._ssh(h, command, timeout=timeout)


def ok(h: fleet.Host, command: str, timeout: float = 120) -> str:
    proc = ssh(h, command, timeout)
    assert proc.returncode == 0, f"{h.name}: {command} failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout


def get(url: str, timeout: float = 5) -> requests.Response:
    with requests.Session() as s:
        s.trust_env = False
        return s.get(url, timeout=timeout)


def test_hosts_are_the_fleet_env_files_hosts(hosts):
    from deploytasks import config as configuration

    assert fleet.hosts() == [h.address for h in hosts] == list(configuration.load(ROOT, "fleet").hosts)


def test_ssh_to_each_address_reaches_that_hosts_own_dockerd(hosts):
    pids = set()
    for h in hosts:
        out = ok(h, "docker info --format '{{.ServerVersion}} {{.LiveRestoreEnabled}} {{.DockerRootDir}}'; "
                    "cat /run/docker.pid; echo; cat /run/dt-fleet-host")
        version, live_restore, root, pid, name = out.split()
        assert (live_restore, root, name) == ("true", "/var/lib/docker", h.name)
        assert int(pid) == testbed._read_pid(h.part("dockerd"))
        pids.add(int(pid))
    assert len(pids) == N
    assert testbed._read_pid("dockerd") not in pids  # the single host's dockerd is none of them



def test_each_host_has_docker_compose_wherever_the_checkout_lives(hosts):
    """The plugin is the testbed's own copy, not a link into this checkout's virtualenv: a clean
    clone in /tmp (which each host has its own of) once left every host without `docker compose`."""
    plugin = Path(pwd.getpwuid(0).pw_dir, ".docker", "cli-plugins", "docker-compose")
    assert plugin.resolve() == testbed.COMPOSE_PLUGIN
    for h in hosts:
        assert ok(h, "docker compose version --short").strip()

def test_each_host_pulls_the_example_images_by_their_loopback_registry_name(hosts):
    image = f"{testbed.EXAMPLE_IMAGE}:{testbed.example_sha('v3')}"
    assert image.startswith("127.0.0.1:5000/")
    for h in hosts:
        out = ok(h, f"docker pull -q {image} && docker image inspect --format '{{{{.Id}}}}' {image}", timeout=300)
        assert out.split()[0] == image and out.split()[1].startswith("sha256:")


def test_srv_is_each_hosts_own(hosts):
    name = f"dt-fleet-marker-{uuid.uuid4().hex[:8]}"
    writer, others = hosts[1], [hosts[0], *hosts[2:]]
    ok(writer, f"echo {writer.name} > /srv/{name}")
    try:
        assert ok(writer, f"cat /srv/{name}").strip() == writer.name
        assert writer.path(f"/srv/{name}").read_text().strip() == writer.name  # its directory, seen from here
        for h in others:
            assert ssh(h, f"test -e /srv/{name}").returncode == 1, h.name
        assert not Path(f"/srv/{name}").exists()  # this machine's own /srv
    finally:
        writer.path(f"/srv/{name}").unlink(missing_ok=True)


def test_each_address_reaches_that_hosts_own_nginx(hosts):
    """A probe site in each host's conf.d (the directory the deploys write to) answers with the
    host's name on its address only."""
    conf = f"{testbed.NGINX_SITE_DIR}/zz-fleet-probe.conf"
    reload_ = f"nginx -s reload -c {testbed.NGINX_CONF}"
    try:
        for h in hosts:
            h.path(conf).write_text(f"server {{ listen 8079; location / {{ return 200 '{h.name}\\n'; }} }}\n")
            ok(h, reload_)
        for h in hosts:
            deadline = time.monotonic() + 10
            while True:
                try:
                    answer = get(f"http://{h.address}:8079/").text.strip()
                    break
                except requests.RequestException:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            assert answer == h.name
    finally:
        for h in hosts:
            h.path(conf).unlink(missing_ok=True)
            ssh(h, reload_)


def _serving(h: fleet.Host) -> str | None:
    try:
        resp = get(f"http://{h.address}:{fleet.SITE_PORT}/version")
    except requests.RequestException:
        return None
    return resp.text.strip() if resp.status_code == 200 else None


def _wait_serving(h: fleet.Host, sha: str, timeout: float = 90) -> str | None:
    deadline = time.monotonic() + timeout
    while (seen := _serving(h)) != sha and time.monotonic() < deadline:
        time.sleep(0.5)
    return seen


def _deploy(sha: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("DEPLOY_ENV", "VIRTUAL_ENV", "PYTHONPATH")}
    argv = [str(Path(sys.executable).with_name("inv")), "deploy", "--env", "fleet", "--sha", sha]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def deployed(hosts) -> str:
    """One real deploy with envs/fleet.env (a version other than the one a previous run left)."""
    v1, v2 = testbed.example_sha("v1"), testbed.example_sha("v2")
    sha = v2 if _serving(hosts[0]) == v1 else v1
    print(_deploy(sha))
    return sha


def test_a_deploy_with_the_fleet_env_reaches_every_host(hosts, deployed):
    """One rollout: the migration ran on the first host, in the fleet's one database."""
    for h in hosts:
        assert _serving(h) == deployed, h.name
        assert h.path("/srv/example").is_dir()
        assert (h.path(str(testbed.NGINX_SITE_DIR)) / "example.conf").exists()
        containers = ok(h, "docker ps --format '{{.Image}}'").split()
        assert f"{testbed.EXAMPLE_IMAGE}:{deployed}" in containers, (h.name, containers)
    assert fleet._db_command(b"GET schema_version").splitlines()[1] in (b"1", b"2")


def test_the_front_load_balancer_serves_the_fleet(hosts, deployed):
    answers = {get(f"http://{fleet.LB_LISTEN}/version").text.strip() for _ in range(6)}
    assert answers == {deployed}


def test_a_second_up_finds_everything_running(hosts):
    out: list[str] = []
    fleet.up(N, echo=out.append)
    for h in hosts:
        for part in ("relay", "dockerd", "sshd", "nginx"):
            line = next(ln for ln in out if ln.startswith(f"{h.name} {part}: "))
            assert "already running" in line, line
        assert any(ln.startswith(f"{h.name} mounts: present") for ln in out), out
    rows = fleet.status()
    assert rows and all(up for _, up, _ in rows), rows


def _everything(hosts) -> set[int]:
    pids = set().union(*(fleet.processes(h) for h in hosts))
    for part, name, arg in (("fleet-registry", "docker-registry", str(fleet.REGISTRY_CONFIG)),
                            ("fleet-lb", "nginx", str(fleet.LB_CONF)), fleet._DB):
        if pid := fleet._our_pid(part, name, arg=arg):
            pids |= fleet._session(pid)  # with its workers, as a session's end kills them
    return pids


def test_up_after_a_sigkill_of_everything_starts_again_and_the_apps_come_back(hosts, deployed):
    """As when the session that started it ends: every process dies at once, the namespaces,
    mounts, pid files and sockets stay."""
    single = {part: testbed._read_pid(part) for part in ("dockerd", "registry", "sshd", "nginx")}
    victims = _everything(hosts)
    assert len(victims) > 4 * N
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(testbed._alive(p) for p in victims) and time.monotonic() < deadline:
        time.sleep(0.1)
    out: list[str] = []
    fleet.up(N, echo=out.append)
    print("\n".join(out))
    for h in hosts:
        for part in ("relay", "dockerd", "sshd", "nginx"):
            line = next(ln for ln in out if ln.startswith(f"{h.name} {part}: "))
            assert "started" in line, line
        ok(h, "docker info >/dev/null")
        # restart: unless-stopped brings the app back, as after a power cut
        assert _wait_serving(h, deployed) == deployed, h.name
    assert {part: testbed._read_pid(part) for part in single} == single  # the single host was left alone
    assert all(testbed._alive(pid) for pid in single.values() if pid)


def _fleet_mounts() -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if "/run/dt-fleet" in line or "/run/netns/dt-h" in line or str(fleet.FLEET_DIR) in line]


def test_down_removes_the_fleet_and_only_the_fleet(hosts):
    """Last in this module: it powers the fleet off."""
    before = _everything(hosts)
    assert before
    out: list[str] = []
    fleet.down(echo=out.append)
    print("\n".join(out))
    assert [p for p in before if testbed._alive(p)] == []
    assert not list(fleet.NETNS_DIR.glob("dt-h*"))
    assert subprocess.run(["ip", "link", "show", fleet.BRIDGE], capture_output=True).returncode != 0
    assert subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout.count("dt-h") == 0
    assert _fleet_mounts() == []
    assert not Path("/run/dt-fleet").exists()
    assert list(testbed.PID_DIR.glob("fleet-*")) == []
    assert fleet.hosts() == [] and fleet.status() == []
    assert subprocess.run(["iptables", "-C", *fleet._FORWARD_RULE], capture_output=True).returncode != 0
    assert not [d for d in Path("/sys/fs/cgroup").glob("*/dt-h*")]
    single = {part: (up, detail) for part, up, detail in testbed.status()}
    assert all(single[p][0] for p in ("dockerd", "registry", "sshd", "nginx")), single
    again: list[str] = []
    fleet.down(echo=again.append)
    assert again == ["fleet: nothing of the fleet is running"]
