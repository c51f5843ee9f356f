"""Real checks of a started testbed (python3 -c "from harness import testbed; testbed.up()")."""
import dataclasses
import json
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

from harness import testbed

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


def test_remote_commands_see_a_server_not_this_machine():
    """A command runs with sshd's PATH and nothing of this machine's shell setup (pyenv's init in
    root's ~/.bashrc ran for every command and put its python3 first)."""
    with _connection() as conn:
        result = conn.run('echo "$PATH"; command -v python3; type pyenv >/dev/null 2>&1 && echo pyenv || echo none',
                          hide=True, in_stream=False)
    assert result.stdout.splitlines() == [testbed.REMOTE_PATH, "/usr/bin/python3", "none"]


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



def test_nginx_starts_again_after_a_kill_left_its_unix_sockets(tmp_path):
    """A killed nginx master (or a CI session that ended) leaves workers holding its ports and
    the socket files of `listen unix:`; testbed.up must clear both before starting nginx again."""
    sock = tmp_path / "relay.sock"
    site = testbed.NGINX_SITE_DIR / "zz-killed-nginx-test.conf"
    site.write_text(f"server {{\n    listen unix:{sock};\n    return 200 'relayed';\n}}\n")
    conf = ["-c", str(testbed.NGINX_CONF)]
    try:
        subprocess.run(["nginx", *conf, "-s", "reload"], check=True)
        _wait(sock.is_socket)
        master = int((testbed.STATE_DIR / "nginx" / "nginx.pid").read_text())
        os.kill(master, 9)  # the master alone: its workers live on, orphaned, holding the ports
        _wait(lambda: not testbed._alive(master))
        assert testbed._session(master) - {master}, "its workers live on"
        assert sock.is_socket(), "the kill left the socket file"
        result = testbed._step_nginx(lambda *_: None)
        assert "orphaned workers of a killed nginx" in result and "stale socket(s) removed" in result, result
        assert not {pid for pid in testbed._session(master) if testbed._alive(pid)}, "none left"
        answer = subprocess.run(["curl", "-sS", "-m", "5", "--unix-socket", str(sock), "http://app/"],
                                capture_output=True, text=True, timeout=10)
        assert answer.stdout == "relayed", answer
    finally:
        site.unlink(missing_ok=True)
        if testbed._nginx_master():
            subprocess.run(["nginx", *conf, "-s", "reload"], check=True)
        else:
            testbed._step_nginx(lambda *_: None)


def _wait(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {condition}"
        time.sleep(0.1)

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


# ---------------------------------------------------------------- process releases

def _git(*args, repo=None):
    return subprocess.run(["git", "-C", str(repo or testbed.PROCESS_REPO), *args],
                          capture_output=True, text=True, check=True, timeout=30).stdout


def test_process_repo_tags_every_version_with_stable_shas(tmp_path):
    first = {name: testbed.process_sha(name) for name in testbed.PROCESS_VERSIONS}
    testbed._PROCESS_SHAS.clear()  # the second call really asks git again
    second = {name: testbed.process_sha(name) for name in testbed.PROCESS_VERSIONS}
    assert first == second
    assert set(_git("tag").split()) == set(testbed.PROCESS_VERSIONS)
    assert {n: _git("rev-parse", n).strip() for n in testbed.PROCESS_VERSIONS} == first
    # one linear branch, oldest first in PROCESS_VERSIONS order
    versions = testbed.PROCESS_VERSIONS
    history = _git("rev-list", "--reverse", "--parents", testbed.PROCESS_BRANCH).splitlines()
    assert history == [first[versions[0]]] + [f"{first[b]} {first[a]}" for a, b in zip(versions, versions[1:])]
    # deterministic: a fresh build elsewhere, at another time, has the very same SHAs
    assert testbed.build_process_repo(tmp_path / "again") == first


def test_process_versions_share_requirements_until_v3():
    req = {n: _git("show", f"{n}:requirements.txt") for n in testbed.PROCESS_VERSIONS}
    assert req["v1"] == req["v2"] == req["never-ready"] == req["bad-migration"]
    assert req["v1"].startswith("gunicorn==") and "\nredis==5." in req["v1"]
    assert req["v3"] != req["v1"] and req["v3"].startswith(req["v1"])
    css = {n: _git("show", f"{n}:assets/style.css") for n in ("v1", "v2", "v3")}
    assert css["v1"] == css["v2"] != css["v3"]


def test_process_build_json_has_flags_but_no_sha():
    for name in testbed.PROCESS_VERSIONS:
        build = json.loads(_git("show", f"{name}:build.json"))
        assert build == {**dataclasses.asdict(testbed.EXAMPLE_VERSIONS[name]), "sha": ""}


def test_git_archive_of_a_process_sha_lists_the_release_files():
    proc = subprocess.run(f"git -C {testbed.PROCESS_REPO} archive {testbed.process_sha('v1')} | tar -tv",
                          shell=True, capture_output=True, text=True, check=True, timeout=30)
    listing = {line.split()[-1]: line.split()[0] for line in proc.stdout.splitlines()}
    assert {"app.py", "build.json", "requirements.txt", "build.sh", "assets/style.css"} <= set(listing)
    assert listing["build.sh"].startswith("-rwx")


def test_process_redis_answers_ping():
    assert _docker("exec", testbed.PROCESS_REDIS_CONTAINER, "redis-cli", "ping").stdout.strip() == "PONG"
    restart = _docker("inspect", "--format", "{{.HostConfig.RestartPolicy.Name}}",
                      testbed.PROCESS_REDIS_CONTAINER).stdout.strip()
    assert restart == "unless-stopped"


def test_process_release_runs_from_a_venv_on_the_host(tmp_path):
    """What a process deploy does, by hand: git archive, venv + pip over SSH, build.sh, gunicorn."""
    sha = testbed.process_sha("v3")
    release = tmp_path / "releases" / sha
    venv = tmp_path / "venv"
    pid_file = tmp_path / "run" / "web" / "gunicorn.pid"
    sock = tmp_path / "run" / "web" / "web.sock"
    release.mkdir(parents=True)
    pid_file.parent.mkdir(parents=True)
    redis_url = f"redis://127.0.0.1:{testbed.PROCESS_REDIS_PORT}/15"  # a db of its own
    gunicorn = None
    try:
        with _connection() as conn:
            conn.run(f"git -C {testbed.PROCESS_REPO} archive {sha} | tar -x -C {release}", hide=True, in_stream=False)
            conn.run(f"python3 -m venv {venv}", hide=True, in_stream=False)
            conn.run(f"{venv}/bin/pip install -q --disable-pip-version-check -r {release}/requirements.txt",
                     hide=True, in_stream=False, timeout=300)
            conn.run(f"{release}/build.sh", hide=True, in_stream=False)
            freeze = conn.run(f"{venv}/bin/pip freeze", hide=True, in_stream=False).stdout
        assert "six==1.16.0" in freeze and "gunicorn==" in freeze
        assert (release / "static" / "app.css").read_text() == _git("show", "v3:assets/style.css")

        env = {**os.environ, "DEPLOY_SHA": sha, "REDIS_URL": redis_url, "BOOT_SECONDS": "0"}
        gunicorn = subprocess.Popen([str(venv / "bin" / "gunicorn"), "--chdir", str(release), "--workers", "2",
                                     "--bind", f"unix:{sock}", "--pid", str(pid_file), "app:app"],
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        status, out = None, ""
        while time.monotonic() < deadline and status != 200:
            time.sleep(0.2)
            status, out = _curl(str(sock), "/version") if sock.exists() else (None, "no socket yet")
        assert status == 200 and out.rstrip().endswith(sha), out
        assert f"X-App-Version: {sha}" in out

        status, out = _curl(str(sock), "/readyz")
        assert status == 503 and "schema_version 0" in out, out
        migrate = subprocess.run([str(venv / "bin" / "python3"), "app.py", "migrate"], cwd=release, env=env,
                                 capture_output=True, text=True, timeout=30)
        assert migrate.returncode == 0 and "schema_version 0 -> 2" in migrate.stdout, migrate.stderr
        status, out = _curl(str(sock), "/readyz")
        assert status == 200, out

        # reset_app's process cleanup finds the master through its pid file and takes the workers along
        master = int(pid_file.read_text())
        workers = [int(p) for p in open(f"/proc/{master}/task/{master}/children").read().split()]
        assert len(workers) == 2
        testbed._kill_app_gunicorns(str(tmp_path))
        assert not any(testbed._alive(p) for p in [master, *workers])
    finally:
        if gunicorn is not None:
            if gunicorn.poll() is None:
                gunicorn.kill()
            gunicorn.wait(timeout=10)
        _docker("exec", testbed.PROCESS_REDIS_CONTAINER, "redis-cli", "-n", "15", "FLUSHDB", check=False)
