"""Real checks of a started testbed (python3 -c "from deploytasks import testbed; testbed.up()")."""
import os
import shutil
import subprocess
import tempfile
import time
import uuid

import paramiko
import pytest
import requests
from fabric import Connection

from deploytasks import testbed

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def running_testbed():
    """Skip the module, naming the parts that are down, unless every part is up."""
    down = [f"{part} ({detail})" for part, ok, detail in testbed.status() if not ok]
    if down:
        pytest.skip(f"testbed is not up: {'; '.join(down)}; run testbed.up() first")


def _docker(*args, check=True, timeout=60):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def _curl(sock, path, method="GET"):
    """(status, headers+body) of one request over gunicorn's unix socket."""
    proc = subprocess.run(["curl", "-sS", "-i", "-m", "5", "-X", method, "--unix-socket", sock, f"http://app{path}"],
                          capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        return None, proc.stderr
    return int(proc.stdout.split()[1]), proc.stdout


def _connection(known_hosts=testbed.KNOWN_HOSTS):
    conn = Connection(testbed.SSH_HOST, user="root", port=testbed.SSH_PORT,
                      connect_kwargs={"key_filename": str(testbed.SSH_KEY),
                                      "look_for_keys": False, "allow_agent": False})
    # Fabric auto-adds unknown host keys; the testbed promises a verifiable one.
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    conn.client.load_host_keys(str(known_hosts))
    return conn


def test_registry_lists_every_example_sha():
    resp = requests.get(f"http://{testbed.REGISTRY}/v2/example/web/tags/list", timeout=5)
    assert resp.status_code == 200
    tags = set(resp.json()["tags"])
    assert {v.sha for v in testbed.EXAMPLE_VERSIONS.values()} <= tags
    base_repo, base_tag = testbed.BASE_IMAGE_PUSHED.split("/", 1)[1].rsplit(":", 1)
    assert base_tag in requests.get(f"http://{testbed.REGISTRY}/v2/{base_repo}/tags/list", timeout=5).json()["tags"]


def test_example_shas_are_deterministic():
    assert testbed.example_sha("v1") == "a91b13f4a8eb098b33ab788de5cffeee2636b04f"
    assert all(v.sha == testbed.example_sha(n) and len(v.sha) == 40 for n, v in testbed.EXAMPLE_VERSIONS.items())


def test_docker_compose_plugin_works():
    out = _docker("compose", "version").stdout
    assert out.startswith("Docker Compose version v2.")


def test_ssh_login_through_known_hosts_entry():
    with _connection() as conn:
        result = conn.run("id -u; docker compose version --short; nginx -v 2>&1; curl --version",
                          hide=True, in_stream=False)
    lines = result.stdout.splitlines()
    assert lines[0] == "0"
    assert lines[1].startswith("2.")
    assert lines[2].startswith("nginx version:")
    assert lines[3].startswith("curl ")


def test_ssh_rejects_an_unknown_host_key(tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException):
        with _connection(empty) as conn:
            conn.run("true", hide=True, in_stream=False)


def test_nginx_master_is_alive():
    pid = int((testbed.STATE_DIR / "nginx" / "nginx.pid").read_text())
    os.kill(pid, 0)
    assert "nginx: master process" in open(f"/proc/{pid}/cmdline").read()
    assert testbed.NGINX_SITE_DIR.is_dir()


def test_example_image_serves_over_a_unix_socket():
    v1 = testbed.EXAMPLE_VERSIONS["v1"]
    name = f"dt-it-{uuid.uuid4().hex[:8]}"
    run_dir = tempfile.mkdtemp(prefix="dt-it-")
    sock = os.path.join(run_dir, "web.sock")
    try:
        _docker("network", "create", name)
        _docker("run", "-d", "--name", f"{name}-db", "--network", name, "--network-alias", "db",
                testbed.BASE_IMAGE_PUSHED, "redis-server", "--protected-mode", "no")
        _docker("run", "-d", "--name", f"{name}-web", "--network", name,
                "-e", "GUNICORN_CMD_ARGS=--bind=unix:/run/deploytasks/web.sock",
                "-e", "REDIS_URL=redis://db:6379/0", "-v", f"{run_dir}:/run/deploytasks",
                f"{testbed.EXAMPLE_IMAGE}:{v1.sha}")

        deadline = time.monotonic() + 25
        status, out = None, ""
        while time.monotonic() < deadline and status != 200:
            time.sleep(0.3)
            status, out = _curl(sock, "/healthz") if os.path.exists(sock) else (None, "no socket yet")
        assert status == 200, out
        assert f"X-App-Version: {v1.sha}" in out

        status, out = _curl(sock, "/version")
        assert status == 200 and out.rstrip().endswith(v1.sha)

        status, out = _curl(sock, "/readyz")
        assert status == 503, out
        assert "schema_version 0" in out

        migrate = _docker("exec", f"{name}-web", "python3", "/app/app.py", "migrate")
        assert "schema_version 0 -> 1" in migrate.stdout

        status, out = _curl(sock, "/readyz")
        assert status == 200, out
    finally:
        _docker("rm", "-f", f"{name}-web", f"{name}-db", check=False)
        _docker("network", "rm", name, check=False)
        shutil.rmtree(run_dir, ignore_errors=True)
