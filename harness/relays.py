"""`inv relays`: the candidates for reaching a web service that listens on TCP (WEB_PORT), measured.

The switch needs each colour behind a fixed unix socket (the live link is renamed, nginx is never
reloaded). Something must listen on that socket and pass each connection to the colour's port:

  nginx relay   a server block per colour in the site itself (what deploytasks does)
  socat relay   one `socat UNIX-LISTEN:...,fork TCP:...` process per colour

Both are measured on the same running colour of the example app (envs/local-tcp.env), under the
same load through an nginx site, one after the other, and beside the baseline with no relay at
all (that site proxying to the port directly, which a switch could not use: it is what the relay
costs). Reported: requests, failed, p50/p99 latency, and the memory the relay adds (resident set
of its processes; the nginx relay adds none: it is configuration in the running nginx).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from deploytasks import config as configuration
from deploytasks import operations
from deploytasks.layout import Layout

from . import testbed
from .load import Load, summarize

ENV = "local-tcp"
PROBE_PORT = 8086
SOCAT_SOCKET = "/run/deploytasks-relay-candidate.sock"


def _site(upstream: str) -> str:
    return (f"server {{\n    listen {PROBE_PORT};\n    location / {{\n        proxy_pass http://{upstream};\n"
            f"        proxy_http_version 1.1;\n        proxy_set_header Connection close;\n    }}\n}}\n")


def _install(config, upstream: str) -> None:
    Path(config.nginx_site_dir, "relay-candidate.conf").write_text(_site(upstream))
    subprocess.run(["nginx", "-s", "reload", "-c", config.nginx_conf], check=True, capture_output=True)
    time.sleep(1.0)


def _rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def run(root: Path, out: str | None = None, *, seconds: float = 20.0, clients: int = 8, rate: float = 500.0,
        echo=print) -> list[dict]:
    if not shutil.which("socat"):
        raise SystemExit("relays: socat is needed for the socat candidate (apt-get install socat)")
    testbed.up(echo=echo)
    config = configuration.load(root, ENV)
    target = operations.Target(config, config.hosts[:1])
    testbed.reset_app(config)
    operations.deploy(target, testbed.example_sha("v1"))
    with operations.session(target, target.hosts[0]) as remote:
        live = operations.read_state(remote, config).live
    port = config.port(live)
    rows = []
    socat = None
    try:
        candidates = [
            ("no relay (nginx -> 127.0.0.1:port; a switch could not use it)", f"127.0.0.1:{port}", None),
            ("nginx relay (deploytasks): nginx -> unix socket -> nginx server -> port",
             f"unix:{Layout.of(config).socket(live)}", None),
            ("socat relay: nginx -> unix socket -> socat (fork per connection) -> port", f"unix:{SOCAT_SOCKET}",
             "socat"),
        ]
        for name, upstream, kind in candidates:
            if kind == "socat":
                Path(SOCAT_SOCKET).unlink(missing_ok=True)
                socat = subprocess.Popen(["socat", f"UNIX-LISTEN:{SOCAT_SOCKET},fork,mode=666",
                                          f"TCP:127.0.0.1:{port}"], start_new_session=True)
                time.sleep(0.5)
            _install(config, upstream)
            peak = 0

            def memory() -> int:
                return _rss_kb([socat.pid, *_children(socat.pid)]) if socat else 0

            echo(f"=== {name} ===")
            with Load("127.0.0.1", PROBE_PORT, clients=clients, rate=rate, min_requests=0,
                      min_seconds=seconds) as load:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    peak = max(peak, memory())
                    time.sleep(0.25)
            summary = summarize(load.samples)
            rows.append({"candidate": name, "requests": summary.requests, "failed": summary.failed,
                         "p50_ms": summary.p50_ms, "p99_ms": summary.p99_ms, "relay_rss_kb": peak,
                         "errors": summary.errors})
            echo(json.dumps(rows[-1]))
    finally:
        if socat:
            os.killpg(socat.pid, signal.SIGTERM)
        Path(config.nginx_site_dir, "relay-candidate.conf").unlink(missing_ok=True)
        subprocess.run(["nginx", "-s", "reload", "-c", config.nginx_conf], capture_output=True)
        Path(SOCAT_SOCKET).unlink(missing_ok=True)
        testbed.reset_app(config)
    if out:
        Path(out).write_text(json.dumps(rows, indent=2) + "\n")
    return rows
