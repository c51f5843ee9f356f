"""Several test servers on this machine: `inv testbed.up --hosts N` (N up to MAX_HOSTS).

Host i is a network namespace ``dt-h{i}`` (a veth into the bridge ``dt-fleet``, 10.77.0.1/24 on
this side, 10.77.0.1{i} on the host's) plus a mount namespace of its own, in which per-host
directories under FLEET_DIR/h{i}/ are bind-mounted over /srv, /var/lib/docker, /tmp and the
testbed's nginx directory, and a fresh tmpfs covers /run (docker.sock, containerd's state, sshd).
So every path in envs/fleet.env means the same as in envs/local.env, on each host separately.

In each host run, by recorded pid: a relay of 127.0.0.1:5000 to the fleet registry (socat), a
dockerd (``--live-restore``, cgroups under /dt-h{i}), an sshd on 10.77.0.1{i}:22 with its own host
key (root by the testbed's client key; FLEET_KNOWN_HOSTS lists every host's key by address) and
an nginx with the same nginx.conf as the single host's. On this side: a second docker-registry
serving the single host's registry storage on 10.77.0.1:5000 (image names stay
127.0.0.1:5000/...), the app's one database (redis-server on 10.77.0.1:6379: a fleet shares its
database, the rollout migrates once; compose/fleet.yml points web at it), and a front nginx on
127.0.0.1:8090 balancing over the hosts' :8080.

``up(n)`` is idempotent and starts again cleanly after everything was SIGKILLed (the namespaces
and mounts outlive their processes; stale pid files and sockets are cleared). ``down()`` powers
the fleet off: it stops the daemons, then every process left in a host's namespaces (and the
containers under them), and removes the namespaces, mounts, bridge and pid files. The hosts'
data (FLEET_DIR/h{i}: deployed releases, docker images and containers) stays, as a disk stays
when a server is switched off; ``down(purge=True)`` deletes it too.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests

from deploytasks import nginx
from harness import testbed
from harness.testbed import (LOG_DIR, NGINX_CONF, NGINX_ERROR_LOG, NGINX_PID, NGINX_SITE_DIR, STATE_DIR,
                             TestbedError, _alive, _cmdline, _last_line, _pid_file, _read_pid, _remove_stale_sockets,
                             _run, _session, _set_aside_broken_sites, _spawn, _spawn_anew, _stop_pid, _terminate,
                             _wait_for)

Echo = Callable[[str], None]

MAX_HOSTS = 4
FLEET_DIR = STATE_DIR / "fleet"
KNOWN_HOSTS = FLEET_DIR / "known_hosts"
SIZE_FILE = FLEET_DIR / "hosts"  # how many hosts the last up() made (hosts() reads it)
BRIDGE = "dt-fleet"
GATEWAY = "10.77.0.1"  # this side of the bridge
NETNS_DIR = Path("/run/netns")  # where `ip netns` keeps its handles
MNT_DIR = Path("/run/dt-fleet/mnt")  # the mount namespaces' handles (a private bind mount)
REGISTRY_PORT = 5000
REGISTRY_CONFIG = FLEET_DIR / "registry.yml"
DB_PORT = 6379  # the app's database, one for the whole fleet (compose/fleet.yml points web at it)
DB_DIR = FLEET_DIR / "db"
FLEET_PACKAGES = ("redis-server",)  # installed by up(), only when a fleet is asked for
SITE_PORT = 8080  # NGINX_LISTEN of envs/fleet.env
LB_LISTEN = "127.0.0.1:8090"
LB_DIR = FLEET_DIR / "lb"
LB_CONF = LB_DIR / "nginx.conf"
LB_PID = LB_DIR / "nginx.pid"
DOCKERD = "/usr/sbin/dockerd"
HOST_MARKER = "/run/dt-fleet-host"  # inside a host: its name, written when its mounts were made

# path inside a host -> its directory under FLEET_DIR/h{i}
BINDS = {"/srv": "srv", "/var/lib/docker": "docker", str(NGINX_CONF.parent): "nginx", "/tmp": "tmp",
         "/var/log/nginx": "log"}  # log: the sites' 5xx logs (nginx.errors_log), one per host


@dataclass(frozen=True)
class Host:
    index: int

    @property
    def name(self) -> str:
        return f"h{self.index}"

    @property
    def netns(self) -> str:
        return f"dt-h{self.index}"

    @property
    def address(self) -> str:
        return f"10.77.0.1{self.index}"

    @property
    def veth(self) -> str:
        return f"dt-h{self.index}-veth"  # this side; the host's side is eth0

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def mnt_path(self) -> Path:
        return MNT_DIR / self.name

    @property
    def dir(self) -> Path:
        return FLEET_DIR / self.name

    @property
    def cgroup(self) -> str:
        return f"/dt-h{self.index}"

    def part(self, daemon: str) -> str:
        """The pid file / log name of one of its daemons: fleet-h1-dockerd."""
        return f"fleet-{self.name}-{daemon}"

    def path(self, inside: str) -> Path:
        """Where a path inside the host is seen from this side (only for the bound directories)."""
        for mount, sub in sorted(BINDS.items(), key=lambda kv: -len(kv[0])):
            if inside == mount or inside.startswith(mount + "/"):
                return self.dir / sub / inside[len(mount):].lstrip("/")
        raise ValueError(f"{inside} is not under a directory of {self.name} ({', '.join(BINDS)})")

    def enter(self, *cmd: str) -> list[str]:
        return ["nsenter", f"--net={self.netns_path}", f"--mount={self.mnt_path}", "--", *cmd]


def host(index: int) -> Host:
    if not 1 <= index <= MAX_HOSTS:
        raise TestbedError(f"the fleet has hosts 1 to {MAX_HOSTS}, not {index}")
    return Host(index)


def hosts() -> list[str]:
    """The addresses of the fleet's hosts, as up() last made them ([] when there is no fleet)."""
    return [h.address for h in _fleet()]


def of(address: str) -> Host:
    """The fleet host at an address (10.77.0.11 -> h1)."""
    for i in range(1, MAX_HOSTS + 1):
        if Host(i).address == address:
            return Host(i)
    raise TestbedError(f"{address} is not a host of the fleet testbed (10.77.0.11 to 10.77.0.1{MAX_HOSTS})")


def path_on(address: str, inside: str) -> Path:
    """Where a file of a host (under /srv, /tmp, /var/lib/docker or the nginx directory) is seen
    from this side: tests read a host's history or site directly."""
    return of(address).path(inside)


def front() -> tuple[str, int]:
    """The front load balancer's address and port (over every host's nginx)."""
    address, port = LB_LISTEN.rsplit(":", 1)
    return address, int(port)


def stop_nginx(address: str) -> str:
    """A host fault: that host's nginx stops (its site stays); start_nginx() brings it back."""
    h = of(address)
    return _stop(h.part("nginx"), "nginx", h) or "was not running"


def start_nginx(address: str) -> str:
    return _step_nginx(of(address))


def reset_app(config) -> None:
    """testbed.reset_app for each of the config's hosts: as if each were a new machine (never
    point this at a real server), and the fleet's database emptied. Only processes of those
    hosts are touched."""
    app = config.app_name
    script = f"""
for project in {app} {app}-blue {app}-green; do
  ids=$(docker ps -aq --filter label=com.docker.compose.project=$project)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null
done
volumes=$(docker volume ls -q --filter label=com.docker.compose.project={app})
docker volume rm -f {app}_dbdata $volumes >/dev/null 2>&1
docker network rm {app}_default >/dev/null 2>&1
rm -rf {config.deploy_path}
rm -f {config.nginx_site_dir}/{app}.conf
nginx -s reload -c {config.nginx_conf}
"""
    for address in config.hosts:
        h = of(address)
        _kill_app_processes(h, config.deploy_path)
        _run(h.enter("sh", "-c", script), timeout=120)
    _flush_db()


def _kill_app_processes(h: Host, deploy_path: str) -> None:
    """Host app servers (process releases): processes of this host working under deploy_path."""
    prefix = deploy_path.rstrip("/") + "/"
    if prefix == "/":
        return
    mnt = _ns_inode(h.mnt_path)
    app = set()
    for pid in processes(h):
        try:
            same_ns = os.readlink(f"/proc/{pid}/ns/mnt") == f"mnt:[{mnt}]"
            cwd = os.readlink(f"/proc/{pid}/cwd") + "/"
        except OSError:
            continue
        if same_ns and cwd.startswith(prefix):
            app.add(pid)
    _terminate(app)


def _fleet() -> list[Host]:
    try:
        n = int(SIZE_FILE.read_text().strip())
    except (FileNotFoundError, ValueError):
        return []
    return [Host(i) for i in range(1, min(n, MAX_HOSTS) + 1)]


# ---------------------------------------------------------------- pure text

def mount_script(h: Host) -> str:
    """Run by `unshare --mount=<handle> --propagation private sh -c`: the host's own filesystem.
    The new namespace starts as a copy of this one; the copies of what is mounted under the
    paths the host owns (the single host's containers, its netns handles) are dropped first, so
    the host holds no reference to them."""
    owned = "|".join(sorted([*BINDS, "/run"]))
    lines = [
        "set -eu",
        f"awk '{{print $2}}' /proc/self/mounts | grep -E '^({owned})(/|$)' | sort -r |"
        ' while read -r m; do umount -l "$m" 2>/dev/null || true; done',
    ]
    lines += [f"mount --bind {h.dir / sub} {inside}" for inside, sub in BINDS.items()]
    lines += [
        "mount -t tmpfs -o mode=0755,nosuid,nodev dt-fleet-run /run",
        "mkdir -p /run/sshd /run/lock && chmod 1777 /run/lock",
        f"echo {h.name} > {HOST_MARKER}",
    ]
    return "\n".join(lines) + "\n"


def sshd_config(h: Host) -> str:
    return testbed._sshd_config(listen=h.address, port=22, host_key=h.dir / "ssh" / "ssh_host_ed25519_key",
                                pid_file=Path("/run/sshd.pid"))


def nginx_config(h: Host) -> str:
    """The single host's nginx.conf (same paths, inside the host), and after the sites a server
    on SITE_PORT answering 404 with the host's name: a host answers there before any deploy,
    as a server's nginx does. The sites come first and the example's is default_server, so
    once deployed, it gets every request."""
    base = testbed._nginx_config().rstrip()
    assert base.endswith("}")
    return base[:-1] + f"""    server {{
        listen {SITE_PORT};
        server_name {h.name}.fleet.invalid;
        location / {{
            return 404 "no site on {h.name}\\n";
        }}
    }}
}}
"""


def known_hosts_text(keys: dict[str, str]) -> str:
    """address -> "type key" of its host key; port 22 needs no [brackets]."""
    return "".join(f"{addr} {key}\n" for addr, key in sorted(keys.items()))


def registry_config() -> str:
    return testbed._registry_config(addr=f"{GATEWAY}:{REGISTRY_PORT}")


def lb_config(fleet: list[Host]) -> str:
    servers = "".join(f"        server {h.address}:{SITE_PORT} max_fails=1 fail_timeout=2s;\n" for h in fleet)
    return f"""# deploytasks fleet testbed: the load balancer in front of the hosts' nginx
user root;
worker_processes 1;
pid {LB_PID};
error_log {LB_DIR / 'error.log'} warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}
    upstream dt_fleet {{
{servers}        keepalive 16;
    }}
    server {{
        listen {LB_LISTEN};
        location / {{
            proxy_pass http://dt_fleet;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


# ---------------------------------------------------------------- public API

def up(n: int, echo: Echo = print) -> list[str]:
    """The single host's testbed (registry, images, client key), then hosts 1..n; hosts above n
    that exist are powered off (down). Returns the hosts' addresses."""
    if not 1 <= n <= MAX_HOSTS:
        raise TestbedError(f"--hosts takes 1 to {MAX_HOSTS}, not {n}")
    testbed.up(echo)
    fleet = [Host(i) for i in range(1, n + 1)]
    for h in (Host(i) for i in range(n + 1, MAX_HOSTS + 1)):
        if _host_exists(h):
            _down_host(h, echo)
    FLEET_DIR.mkdir(parents=True, exist_ok=True)
    SIZE_FILE.write_text(f"{n}\n")
    for part, step in (("fleet-packages", _step_packages), ("bridge", _step_bridge),
                       ("mount-handles", _step_mnt_dir), ("fleet-registry", _step_registry), ("fleet-db", _step_db)):
        _timed(part, lambda: step(), echo)
    for h in fleet:  # one at a time: concurrent `ip netns add`s may both make /run/netns a mount
        _up_host(h, echo, _HOST_STEPS[:1])
    lock = threading.Lock()

    def one_line(line: str) -> None:  # print() from threads may interleave a line and its newline
        with lock:
            echo(line)

    with ThreadPoolExecutor(max_workers=n) as pool:  # the daemons' start-ups overlap
        futures = [pool.submit(_up_host, h, one_line, _HOST_STEPS[1:]) for h in fleet]
        errors = [exc for f in futures if (exc := f.exception())]
    if errors:
        raise errors[0]
    _timed("known-hosts", lambda: _write_known_hosts(fleet), echo)
    for h in fleet:
        _timed(f"{h.name} sshd-login", lambda h=h: _check_login(h), echo)
    _timed("fleet-lb", lambda: _step_lb(fleet), echo)
    return [h.address for h in fleet]


def down(echo: Echo = print, purge: bool = False) -> None:
    """Power the fleet off: processes, namespaces, mounts, bridge, pid files. Only what up() made:
    the single host's testbed is not touched."""
    did = False
    for h in (Host(i) for i in range(1, MAX_HOSTS + 1)):
        if _host_exists(h):
            _down_host(h, echo)
            did = True
    for part, stop in (("fleet-lb", _stop_lb), ("fleet-db", _stop_db), ("fleet-registry", _stop_registry),
                       ("bridge", _remove_bridge), ("mount-handles", _remove_mnt_dir)):
        started = time.monotonic()
        if result := stop():
            echo(f"{part}: {result} ({time.monotonic() - started:.1f}s)")
            did = True
    SIZE_FILE.unlink(missing_ok=True)
    if purge and FLEET_DIR.exists():
        for h in (Host(i) for i in range(1, MAX_HOSTS + 1)):
            shutil.rmtree(h.dir, ignore_errors=True)
        echo(f"fleet: removed the hosts' data under {FLEET_DIR}")
        did = True
    if not did:
        echo("fleet: nothing of the fleet is running")


def status() -> list[tuple[str, bool, str]]:
    """(part, ok, detail) rows of the fleet; [] when there is none (nothing to report)."""
    fleet = _fleet()
    extra = [Host(i) for i in range(len(fleet) + 1, MAX_HOSTS + 1) if _host_exists(Host(i))]
    if not fleet and not extra and not _bridge_exists():
        return []
    rows = [("fleet-bridge", *_guard(_check_bridge)), ("fleet-registry", *_guard(_check_registry)),
            ("fleet-db", *_guard(_check_db))]
    for h in fleet:
        for part, check in _HOST_CHECKS:
            rows.append((f"{h.name} {part}", *_guard(lambda: check(h))))
    for h in extra:
        rows.append((f"{h.name}", False, f"left over beyond the fleet of {len(fleet)}: inv testbed.down"))
    if fleet:
        rows.append(("fleet-lb", *_guard(lambda: _check_lb(fleet))))
    return rows


def processes(h: Host) -> set[int]:
    """Every process of a host: in its network or mount namespace, in its cgroups, or below one
    of those (a container's processes live in namespaces of their own, under the host's shim)."""
    inodes = {i for i in (_ns_inode(h.netns_path), _ns_inode(h.mnt_path)) if i}
    ppids = testbed._ppids()
    found = set()
    for pid in ppids:
        if pid == os.getpid():
            continue
        try:
            ns = {os.readlink(f"/proc/{pid}/ns/{kind}") for kind in ("net", "mnt")}
            cgroups = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        if any(f":[{i}]" in n for n in ns for i in inodes) or f":{h.cgroup}/" in cgroups:
            found.add(pid)
    frontier = set(found)
    while frontier:
        frontier = {pid for pid, parent in ppids.items() if parent in frontier} - found
        found |= frontier
    return found


# ---------------------------------------------------------------- helpers

def _timed(part: str, step: Callable[[], str], echo: Echo) -> None:
    started = time.monotonic()
    result = step()
    echo(f"{part}: {result} ({time.monotonic() - started:.1f}s)")


def _guard(check: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - status() reports every failure as a row
        return False, f"{exc.__class__.__name__}: {_last_line(str(exc))}"


def _mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, fstype, optional fields) of this namespace's mounts."""
    rows = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rows.append((fields[4].replace("\\040", " "), right.split()[0], " ".join(fields[6:])))
    return rows


def _mounted(path: Path, fstype: str | None = None) -> bool:
    return any(m == str(path) and (fstype is None or t == fstype) for m, t, _ in _mountinfo())


def _ns_inode(handle: Path) -> int | None:
    """The namespace inode a handle (a bind-mounted nsfs file) holds; None when it holds none."""
    if not _mounted(handle, "nsfs"):
        return None
    try:
        return os.stat(handle).st_ino
    except OSError:
        return None


def _in_ns(pid: int, h: Host) -> bool:
    inode = _ns_inode(h.netns_path)
    try:
        return inode is not None and os.readlink(f"/proc/{pid}/ns/net") == f"net:[{inode}]"
    except OSError:
        return False


def _our_pid(part: str, daemon: str, h: Host | None = None, arg: str | None = None) -> int | None:
    """The recorded pid of a part while that very daemon still runs it: its argv[0] names the
    daemon, and it runs in the host's network namespace (or, for this side's, has `arg` on its
    command line). The single host runs daemons of the same names: never mistake one of those
    for ours. A stale pid file is kept: _spawn_anew() stops what that daemon left, down() removes it."""
    pid = _read_pid(part)
    if pid is None:
        return None
    argv = _cmdline(pid)  # nginx retitles itself: one string "nginx: master process <its argv>"
    if _alive(pid) and daemon in argv[0] and (_in_ns(pid, h) if h else arg in " ".join(argv).split()):
        return pid
    return None


def _stop(part: str, daemon: str, h: Host | None = None, arg: str | None = None) -> str | None:
    """down(): the daemon when it runs (SIGTERM, then SIGKILL), or what a killed one left; the pid
    file either way. None when there was nothing to do."""
    result = None
    if pid := _our_pid(part, daemon, h, arg):
        result = _stop_pid(part, pid)
    elif (old := _read_pid(part)) is not None:
        result = _terminate({p for p in _session(old) if p != old}) or None
        result = f"was not running{f'; what it left: {result}' if result else ''} (stale pid {old})"
    _pid_file(part).unlink(missing_ok=True)
    return result


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(["ip", *args], check=check, timeout=20)


# ---------------------------------------------------------------- this side: bridge, handles, registry

_FORWARD_RULE = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]


def _bridge_exists() -> bool:
    return _ip("link", "show", BRIDGE, check=False).returncode == 0


def _step_bridge() -> str:
    """The fleet's LAN. Docker's FORWARD policy here is DROP and bridged frames go through
    iptables (br_netfilter), so host-to-host traffic needs one ACCEPT rule."""
    created = not _bridge_exists()
    if created:
        _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "replace", f"{GATEWAY}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    if _run(["iptables", "-C", *_FORWARD_RULE], check=False).returncode != 0:
        _run(["iptables", "-I", *_FORWARD_RULE])
    return f"{'created' if created else 'present'} ({BRIDGE}, {GATEWAY}/24)"


def _check_bridge() -> tuple[bool, str]:
    proc = _ip("-br", "addr", "show", BRIDGE, check=False)
    if proc.returncode != 0:
        return False, f"{BRIDGE} missing"
    ok = f"{GATEWAY}/24" in proc.stdout and " UP " in f" {proc.stdout} "
    return ok, _last_line(proc.stdout)


def _remove_bridge() -> str | None:
    notes = []
    while _run(["iptables", "-C", *_FORWARD_RULE], check=False).returncode == 0:
        _run(["iptables", "-D", *_FORWARD_RULE])
        notes.append("forward rule")
    if _bridge_exists():
        _ip("link", "del", BRIDGE)
        notes.insert(0, BRIDGE)
    return f"removed {' and '.join(notes)}" if notes else None


def _step_mnt_dir() -> str:
    """Mount namespace handles may only live on a mount that does not propagate."""
    MNT_DIR.mkdir(parents=True, exist_ok=True)
    made = not _mounted(MNT_DIR)
    if made:
        _run(["mount", "--bind", str(MNT_DIR), str(MNT_DIR)])
    _run(["mount", "--make-private", str(MNT_DIR)])
    return f"{'made' if made else 'present'} ({MNT_DIR}, private)"


def _remove_mnt_dir() -> str | None:
    if not MNT_DIR.exists():
        return None
    for handle in MNT_DIR.iterdir():
        _unmount_handle(handle)
    while _mounted(MNT_DIR):
        _run(["umount", str(MNT_DIR)])
    shutil.rmtree(MNT_DIR.parent, ignore_errors=True)
    return f"removed {MNT_DIR}"


def _registry_answers(addr: str = f"{GATEWAY}:{REGISTRY_PORT}") -> bool:
    try:
        return requests.get(f"http://{addr}/v2/", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _step_registry() -> str:
    """A second docker-registry serving the single host's storage, on the bridge address."""
    if pid := _our_pid("fleet-registry", "docker-registry", arg=str(REGISTRY_CONFIG)):
        _wait_for("fleet registry", _registry_answers, 10, pid, LOG_DIR / "fleet-registry.log")
        return f"already running (pid {pid})"
    REGISTRY_CONFIG.write_text(registry_config())
    pid, log = _spawn_anew("fleet-registry", ["/usr/bin/docker-registry", "serve", str(REGISTRY_CONFIG)])
    _wait_for("fleet registry", _registry_answers, 30, pid, log)
    return f"started (pid {pid}, {GATEWAY}:{REGISTRY_PORT})"


def _check_registry() -> tuple[bool, str]:
    pid = _our_pid("fleet-registry", "docker-registry", arg=str(REGISTRY_CONFIG))
    if not _registry_answers():
        return False, f"http://{GATEWAY}:{REGISTRY_PORT}/v2/ not answering"
    return pid is not None, f"http://{GATEWAY}:{REGISTRY_PORT}/v2/ answering (pid {pid})"


def _stop_registry() -> str | None:
    return _stop("fleet-registry", "docker-registry", arg=str(REGISTRY_CONFIG))


# ---------------------------------------------------------------- this side: the app's database

def _step_packages() -> str:
    """What only the fleet needs, installed as the testbed installs its own (no service started)."""
    missing = testbed._missing_packages(FLEET_PACKAGES)
    if not missing:
        return "present"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with testbed._no_service_starts():
        _run(["apt-get", "update"], timeout=600, env=env)
        _run(["apt-get", "install", "-y", "--no-install-recommends", *missing], timeout=1800, env=env)
    return f"installed {' '.join(missing)}"


def _db_command(command: bytes = b"PING") -> bytes:
    import socket

    with socket.create_connection((GATEWAY, DB_PORT), timeout=2) as s:
        s.sendall(command + b"\r\n")
        return s.recv(64)


def _db_answers() -> bool:
    try:
        return _db_command().startswith(b"+PONG")
    except OSError:
        return False


_DB = ("fleet-db", "redis-server", f"{GATEWAY}:{DB_PORT}")  # part, daemon, its title's address


def _step_db() -> str:
    """The app's database of the whole fleet (a fleet shares one: the rollout migrates once, on
    the first host): Debian's redis-server on the bridge address, reached from the hosts'
    containers through their NAT."""
    if pid := _our_pid(*_DB[:2], arg=_DB[2]):
        _wait_for("fleet database", _db_answers, 10, pid, LOG_DIR / "fleet-db.log")
        return f"already running (pid {pid})"
    DB_DIR.mkdir(parents=True, exist_ok=True)
    pid, log = _spawn_anew("fleet-db", ["/usr/bin/redis-server", "--bind", GATEWAY, "--port", str(DB_PORT),
                                   "--dir", str(DB_DIR), "--appendonly", "yes", "--save", "",
                                   "--protected-mode", "no", "--daemonize", "no", "--logfile", ""])
    _wait_for("fleet database", _db_answers, 20, pid, log)
    return f"started (pid {pid}, redis://{GATEWAY}:{DB_PORT}/0)"


def _check_db() -> tuple[bool, str]:
    pid = _our_pid(*_DB[:2], arg=_DB[2])
    if pid is None:
        return False, "not running"
    ok = _db_answers()
    return ok, f"pid {pid}; redis://{GATEWAY}:{DB_PORT}/0 {'answers PING' if ok else 'does not answer'}"


def _stop_db() -> str | None:
    return _stop(*_DB[:2], arg=_DB[2])


def _flush_db() -> None:
    try:
        answer = _db_command(b"FLUSHALL")
    except OSError as exc:
        raise TestbedError(f"fleet database at {GATEWAY}:{DB_PORT}: {exc}; run fleet.up()") from None
    if not answer.startswith(b"+OK"):
        raise TestbedError(f"FLUSHALL on the fleet database answered {answer!r}")


# ---------------------------------------------------------------- one host

def _host_exists(h: Host) -> bool:
    parts = ("relay", "dockerd", "sshd", "nginx")
    return h.netns_path.exists() or h.mnt_path.exists() or any(_pid_file(h.part(p)).exists() for p in parts)


def _up_host(h: Host, echo: Echo, steps: list[tuple[str, Callable[[Host], str]]]) -> None:
    for part, step in steps:
        started = time.monotonic()
        try:
            result = step(h)
        except TestbedError as exc:
            raise TestbedError(f"{h.name} {part}: {exc}") from None
        echo(f"{h.name} {part}: {result} ({time.monotonic() - started:.1f}s)")


def _step_netns(h: Host) -> str:
    """`ip netns add`, a veth pair into the bridge, the address, lo up. A handle left as a plain
    file (its mount gone) is removed first."""
    notes = []
    if not _mounted(h.netns_path, "nsfs"):
        if h.netns_path.exists():
            h.netns_path.unlink()
            notes.append("stale handle removed")
        _ip("netns", "add", h.netns)
        notes.append("created")
    if _ip("-n", h.netns, "link", "show", "eth0", check=False).returncode != 0:
        if _ip("link", "show", h.veth, check=False).returncode == 0:
            _ip("link", "del", h.veth)
        _ip("link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.netns)
        notes.append("veth added")
    _ip("link", "set", h.veth, "master", BRIDGE, "up")
    _ip("-n", h.netns, "addr", "replace", f"{h.address}/24", "dev", "eth0")
    _ip("-n", h.netns, "link", "set", "eth0", "up")
    _ip("-n", h.netns, "link", "set", "lo", "up")
    return f"{', '.join(notes) or 'present'} ({h.netns}, {h.address})"


def _check_netns(h: Host) -> tuple[bool, str]:
    if not _mounted(h.netns_path, "nsfs"):
        return False, f"{h.netns} missing"
    proc = _ip("-n", h.netns, "-br", "addr", "show", "eth0", check=False)
    ok = proc.returncode == 0 and f"{h.address}/24" in proc.stdout
    return ok, f"{h.netns}: {_last_line(proc.stdout or proc.stderr)}"


def _host_dirs(h: Host) -> None:
    for sub in BINDS.values():
        (h.dir / sub).mkdir(parents=True, exist_ok=True)
    (h.dir / "tmp").chmod(0o1777)
    (h.dir / "nginx" / "conf.d").mkdir(exist_ok=True)
    (h.dir / "ssh").mkdir(mode=0o700, exist_ok=True)
    for inside in BINDS:  # mount points, on this side
        Path(inside).mkdir(parents=True, exist_ok=True)


def _mounts_ok(h: Host) -> tuple[bool, str]:
    if _ns_inode(h.mnt_path) is None:
        return False, f"no mount namespace at {h.mnt_path}"
    inside = list(BINDS)
    proc = _run(h.enter("sh", "-c", f'cat {HOST_MARKER} && stat -c %d:%i "$@"', "sh", *inside),
                check=False, timeout=20)
    want = [h.name] + [f"{(s := os.stat(h.dir / sub)).st_dev}:{s.st_ino}" for sub in BINDS.values()]
    if proc.returncode != 0 or proc.stdout.split() != want:
        return False, f"mounts of {h.mnt_path} differ: {_last_line(proc.stdout + proc.stderr)}"
    return True, f"{h.mnt_path}: {', '.join(f'{p} <- {h.dir / s}' for p, s in BINDS.items())}, tmpfs /run"


def _unmount_handle(handle: Path) -> None:
    while _mounted(handle):
        _run(["umount", str(handle)])
    handle.unlink(missing_ok=True)


def _step_mounts(h: Host) -> str:
    """The host's own filesystem: kept when its handle still holds it (its containers' state
    lives there), made again when the handle is gone or its mounts are not the ones expected."""
    _host_dirs(h)
    if _ns_inode(h.mnt_path) is not None:
        ok, detail = _mounts_ok(h)
        if ok:
            return "present"
        _unmount_handle(h.mnt_path)
        note = f"remade ({detail})"
    else:
        note = "made"
        h.mnt_path.unlink(missing_ok=True)  # a plain file left without its mount
    h.mnt_path.touch()
    _run(["unshare", f"--mount={h.mnt_path}", "--propagation", "private", "sh", "-c", mount_script(h)],
         timeout=30)
    ok, detail = _mounts_ok(h)
    if not ok:
        raise TestbedError(detail)
    return note


def _step_relay(h: Host) -> str:
    """127.0.0.1:5000 inside the host reaches the fleet registry: images keep their names."""
    part = h.part("relay")
    if pid := _our_pid(part, "socat", h):
        _wait_for(f"{h.name} registry relay", lambda: _relay_answers(h), 10, pid, LOG_DIR / f"{part}.log")
        return f"already running (pid {pid})"
    pid, log = _spawn_anew(part, h.enter("/usr/bin/socat", f"TCP-LISTEN:{REGISTRY_PORT},bind=127.0.0.1,fork,reuseaddr",
                                    f"TCP:{GATEWAY}:{REGISTRY_PORT}"))
    _wait_for(f"{h.name} registry relay", lambda: _relay_answers(h), 10, pid, log)
    return f"started (pid {pid}, 127.0.0.1:{REGISTRY_PORT} -> {GATEWAY}:{REGISTRY_PORT})"


def _relay_answers(h: Host) -> bool:
    proc = _run(h.enter("curl", "-fsS", "-o", "/dev/null", "-m", "3", f"http://127.0.0.1:{REGISTRY_PORT}/v2/"),
                check=False, timeout=10)
    return proc.returncode == 0


def _check_relay(h: Host) -> tuple[bool, str]:
    pid = _our_pid(h.part("relay"), "socat", h)
    if pid is None:
        return False, "not running"
    ok = _relay_answers(h)
    return ok, f"pid {pid}; 127.0.0.1:{REGISTRY_PORT}/v2/ inside {'answers' if ok else 'does not answer'}"


def _docker_answers(h: Host) -> str | None:
    proc = _run(h.enter(testbed._docker_cli(), "info", "--format", "{{.ServerVersion}} {{.LiveRestoreEnabled}}"),
                check=False, timeout=20)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def _clear_docker_state(h: Host) -> str:
    """Before a fresh dockerd: its pid file (a reused pid stops it starting) and containerd's,
    unless that containerd still runs for this host (dockerd then takes it over, containers live)."""
    script = """
rm -f /run/docker.pid
f=/run/docker/containerd/containerd.pid
p=$(cat "$f" 2>/dev/null) || exit 0
if [ -n "$p" ] && [ "$(readlink /proc/$p/ns/mnt 2>/dev/null)" = "$(readlink /proc/self/ns/mnt)" ] &&
   grep -q containerd /proc/$p/cmdline 2>/dev/null; then echo "containerd $p kept"; else rm -f "$f"; fi
"""
    proc = _run(h.enter("sh", "-c", script), check=False, timeout=20)
    return proc.stdout.strip()


def _step_dockerd(h: Host) -> str:
    part = h.part("dockerd")
    if pid := _our_pid(part, "dockerd", h):
        _wait_for(f"{h.name} dockerd", lambda: _docker_answers(h) is not None, 60, pid, LOG_DIR / f"{part}.log")
        return f"already running (pid {pid})"
    kept = _clear_docker_state(h)
    pid, log = _spawn(part, h.enter(DOCKERD, "--live-restore", f"--cgroup-parent={h.cgroup}"))
    _wait_for(f"{h.name} dockerd", lambda: _docker_answers(h) is not None, 90, pid, log)
    return f"started (pid {pid}{', ' + kept if kept else ''})"


def _check_dockerd(h: Host) -> tuple[bool, str]:
    pid = _our_pid(h.part("dockerd"), "dockerd", h)
    if pid is None:
        return False, "not running"
    info = _docker_answers(h)
    return info is not None, f"pid {pid}; " + (f"server {info.split()[0]}" if info else "not answering")


def _host_key(h: Host) -> Path:
    key = h.dir / "ssh" / "ssh_host_ed25519_key"
    if not key.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"deploytasks-fleet-{h.name}", "-f", str(key)])
    key.chmod(0o600)
    return key


def _write_known_hosts(fleet: list[Host]) -> str:
    keys = {h.address: " ".join(_host_key(h).with_suffix(".pub").read_text().split()[:2]) for h in fleet}
    text = known_hosts_text(keys)
    if KNOWN_HOSTS.exists() and KNOWN_HOSTS.read_text() == text:
        return f"present ({KNOWN_HOSTS}, {len(keys)} hosts)"
    KNOWN_HOSTS.write_text(text)
    return f"written ({KNOWN_HOSTS}, {len(keys)} hosts)"


def _ssh(h: Host, *remote: str, timeout: float = 15) -> subprocess.CompletedProcess:
    return subprocess.run(testbed._ssh_command(*remote, host=h.address, port=22, known_hosts=KNOWN_HOSTS),
                          capture_output=True, text=True, timeout=timeout)


def _login_works(h: Host) -> bool:
    try:
        return _ssh(h, "true").returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _step_sshd(h: Host) -> str:
    part = h.part("sshd")
    _host_key(h)
    config_file = h.dir / "ssh" / "sshd_config"
    config = sshd_config(h)
    if not config_file.exists() or config_file.read_text() != config:
        config_file.write_text(config)
        if pid := _our_pid(part, "sshd", h):
            _stop_pid(part, pid)  # started again below with the new config
    if pid := _our_pid(part, "sshd", h):
        return f"already running (pid {pid})"
    _run(h.enter("/usr/sbin/sshd", "-t", "-f", str(config_file)))
    pid, log = _spawn_anew(part, h.enter("/usr/sbin/sshd", "-D", "-f", str(config_file), "-E", str(LOG_DIR / f"{part}.log")))
    _wait_for(f"{h.name} sshd", lambda: _port_open(h.address, 22), 20, pid, log)
    return f"started (pid {pid}, {h.address}:22)"


def _port_open(address: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((address, port)) == 0


def _check_login(h: Host) -> str:
    """After known_hosts is written: a real key login, as Fabric will make."""
    pid = _read_pid(h.part("sshd"))
    _wait_for(f"{h.name} sshd key login", lambda: _login_works(h), 20, pid, LOG_DIR / f"{h.part('sshd')}.log")
    return f"root@{h.address} by key through {KNOWN_HOSTS.name}"


def _check_sshd(h: Host) -> tuple[bool, str]:
    pid = _our_pid(h.part("sshd"), "sshd", h)
    if pid is None:
        return False, "not running"
    if not _login_works(h):
        return False, f"pid {pid}; key login to root@{h.address} fails"
    return True, f"pid {pid}; key login to root@{h.address} works"


def _nginx_master(h: Host) -> int | None:
    try:
        pid = int(h.path(str(NGINX_PID)).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) and "nginx" in _cmdline(pid)[0] and _in_ns(pid, h) else None


def _step_nginx(h: Host) -> str:
    """The same nginx.conf as the single host's, the same paths, inside the host."""
    part = h.part("nginx")
    conf, config = h.path(str(NGINX_CONF)), nginx_config(h)
    changed = not conf.exists() or conf.read_text() != config
    if changed:
        conf.write_text(config)
    base = ["/usr/sbin/nginx", "-e", str(NGINX_ERROR_LOG), "-c", str(NGINX_CONF)]
    if pid := _our_pid(part, "nginx", h):
        if changed:
            _run(h.enter(*base, "-t", "-q"))
            os.kill(pid, signal.SIGHUP)
            return f"reloaded with a new nginx.conf (pid {pid})"
        return f"already running (pid {pid})"
    site_dir = h.path(str(NGINX_SITE_DIR))
    note = (_set_aside_broken_sites(h.enter(*base, "-t", "-q"), site_dir)
            + _remove_stale_sockets(site_dir, h.path))
    _run(h.enter(*base, "-t", "-q"))
    pid, log = _spawn_anew(part, h.enter(*base, "-g", "daemon off;"))
    _wait_for(f"{h.name} nginx", lambda: _nginx_master(h) == pid, 10, pid, h.path(str(NGINX_ERROR_LOG)))
    return f"started (pid {pid}{note})"


def _check_nginx(h: Host) -> tuple[bool, str]:
    pid = _nginx_master(h)
    if pid is None:
        return False, "master not running"
    sites = sorted(p.name for p in h.path(str(NGINX_SITE_DIR)).glob("*.conf"))
    return True, f"master pid {pid}; sites: {', '.join(sites) or 'none'}"


_HOST_STEPS: list[tuple[str, Callable[[Host], str]]] = [
    ("netns", _step_netns),
    ("mounts", _step_mounts),
    ("relay", _step_relay),
    ("dockerd", _step_dockerd),
    ("sshd", _step_sshd),
    ("nginx", _step_nginx),
]

_HOST_CHECKS: list[tuple[str, Callable[[Host], tuple[bool, str]]]] = [
    ("netns", _check_netns),
    ("mounts", _mounts_ok),
    ("relay", _check_relay),
    ("dockerd", _check_dockerd),
    ("sshd", _check_sshd),
    ("nginx", _check_nginx),
]


def _down_host(h: Host, echo: Echo) -> None:
    """Daemons newest first (dockerd leaves the containers: --live-restore), then everything
    still in the host (containers, shims, containerd, an app's gunicorn): SIGTERM, then SIGKILL
    after testbed.LEFTOVER_GRACE. Then the handles: with no process and no handle, the namespaces are gone."""
    for daemon, name in (("nginx", "nginx"), ("sshd", "sshd"), ("dockerd", "dockerd"), ("relay", "socat")):
        started = time.monotonic()
        if result := _stop(h.part(daemon), name, h):
            echo(f"{h.name} {daemon}: {result} ({time.monotonic() - started:.1f}s)")
    started = time.monotonic()
    if left := _terminate(processes(h)):
        echo(f"{h.name} processes: {left} ({time.monotonic() - started:.1f}s)")
    notes = []
    if h.mnt_path.exists():
        _unmount_handle(h.mnt_path)
        notes.append("mount namespace")
    if h.netns_path.exists():
        if _ip("netns", "delete", h.netns, check=False).returncode != 0:
            _unmount_handle(h.netns_path)
        notes.append(f"netns {h.netns}")
    if _ip("link", "show", h.veth, check=False).returncode == 0:
        _ip("link", "del", h.veth)
        notes.append(h.veth)
    if cgroups := _remove_cgroups(h):
        notes.append(f"{cgroups} cgroup dir(s)")
    if notes:
        echo(f"{h.name}: removed {', '.join(notes)}")


def _remove_cgroups(h: Host) -> int:
    """The empty cgroup directories dockerd made under /dt-h{i} in each hierarchy."""
    removed = 0
    for top in Path("/sys/fs/cgroup").glob(f"*{h.cgroup}"):
        for d, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(d)
                removed += 1
            except OSError:
                pass
    return removed


# ---------------------------------------------------------------- the front load balancer

def _lb_master() -> int | None:
    try:
        pid = int(LB_PID.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    argv = " ".join(_cmdline(pid)).split()
    return pid if _alive(pid) and "nginx" in argv[0] and str(LB_CONF) in argv else None


def _step_lb(fleet: list[Host]) -> str:
    LB_DIR.mkdir(parents=True, exist_ok=True)
    config = lb_config(fleet)
    changed = not LB_CONF.exists() or LB_CONF.read_text() != config
    if changed:
        LB_CONF.write_text(config)
    base = ["/usr/sbin/nginx", "-e", str(LB_DIR / "error.log"), "-c", str(LB_CONF)]
    if _our_pid("fleet-lb", "nginx", arg=str(LB_CONF)) is None and (pid := _lb_master()):
        _pid_file("fleet-lb").write_text(f"{pid}\n")  # ours (its config is), its pid file was lost
    if pid := _our_pid("fleet-lb", "nginx", arg=str(LB_CONF)):
        if changed:
            _run([*base, "-t", "-q"])
            os.kill(pid, signal.SIGHUP)
            return f"reloaded for {len(fleet)} hosts (pid {pid})"
        return f"already running (pid {pid})"
    _run([*base, "-t", "-q"])
    pid, log = _spawn_anew("fleet-lb", [*base, "-g", "daemon off;"])
    _wait_for("fleet load balancer", lambda: _lb_master() == pid, 10, pid, LB_DIR / "error.log")
    return f"started (pid {pid}, http://{LB_LISTEN} -> {len(fleet)} hosts :{SITE_PORT})"


def _check_lb(fleet: list[Host]) -> tuple[bool, str]:
    pid = _our_pid("fleet-lb", "nginx", arg=str(LB_CONF))
    if pid is None:
        return False, "not running"
    return True, f"pid {pid}; http://{LB_LISTEN} -> {', '.join(f'{h.address}:{SITE_PORT}' for h in fleet)}"


def _stop_lb() -> str | None:
    return _stop("fleet-lb", "nginx", arg=str(LB_CONF))
