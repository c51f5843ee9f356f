"""Example app for deploytasks: a stdlib WSGI app backed by redis, served by gunicorn.

Its build.json (next to app.py: baked into the image, or committed in the process
releases' git repository) says which git SHA it is, which schema versions it works
with and how it misbehaves, so deploy tests can exercise migrations, readiness gates
and rollbacks against real containers and real host processes. A process release
cannot know its own commit SHA, so its build.json has "sha": "" and the SHA comes
from DEPLOY_SHA, which the deploy tool sets.

    gunicorn app:app                 serve (GUNICORN_CMD_ARGS supplies --bind)
    python3 app.py migrate           raise redis "schema_version" to this build's migrate_to
    python3 app.py healthcheck       exit 0 when /healthz on APP_SOCKET (else port 8000) answers 200
"""
import json
import os
import socket
import sys
import time

if __name__ != "__main__":
    # A real app spends seconds importing its framework; gunicorn workers pay it at boot.
    # The CLI (migrate, healthcheck) runs as __main__ and is not slowed down.
    time.sleep(float(os.environ.get("BOOT_SECONDS", "2")))

BUILD_JSON = os.environ.get("BUILD_JSON") or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                           "build.json")
with open(BUILD_JSON) as _f:
    BUILD = json.load(_f)
SHA = BUILD.get("sha") or os.environ.get("DEPLOY_SHA") or "unknown"
SCHEMA_MIN = int(BUILD["schema_min"])
SCHEMA_MAX = int(BUILD["schema_max"])
REDIS_URL = os.environ.get("REDIS_URL", "redis://db:6379/0")
APP_SOCKET = os.environ.get("APP_SOCKET", "/run/deploytasks/web.sock")

_redis = None


def db():
    """One lazily created client per process; redis-py reconnects by itself."""
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    return _redis


def schema_version():
    return int(db().get("schema_version") or 0)


def not_ready_reason():
    """None when this build can serve traffic, else a one-line reason."""
    try:
        db().ping()
        current = schema_version()
    except Exception as exc:  # redis.exceptions.* and socket errors alike
        return f"redis unavailable at {REDIS_URL}: {exc.__class__.__name__}"
    if not SCHEMA_MIN <= current <= SCHEMA_MAX:
        return f"schema_version {current} outside supported range {SCHEMA_MIN}..{SCHEMA_MAX}"
    if BUILD.get("never_ready"):
        return "this build never becomes ready (never_ready)"
    return None


# ------------------------------------------------------------------ WSGI

def _text(status, body):
    return status, "text/plain; charset=utf-8", body


def _json(status, data):
    return status, "application/json", json.dumps(data) + "\n"


def _read_body(environ):
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    return environ["wsgi.input"].read(length) if length > 0 else b""


_first_visit = None


def broken():
    """A build with breaks_after_s: its pages fail that long after its first visitor (per worker)."""
    global _first_visit
    after = BUILD.get("breaks_after_s")
    if after is None:
        return False
    _first_visit = _first_visit or time.monotonic()
    return time.monotonic() - _first_visit >= after


def route(environ):
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO") or "/"
    if path not in ("/healthz", "/readyz", "/version") and broken():
        return _text("500 Internal Server Error", "error: this build breaks after its first visitor\n")
    if method in ("GET", "HEAD"):
        if path == "/healthz":
            return _text("200 OK", "ok\n")
        if path == "/readyz":
            reason = not_ready_reason()
            if reason is None:
                return _text("200 OK", "ready\n")
            return _text("503 Service Unavailable", f"not ready: {reason}\n")
        if path == "/version":
            return _text("200 OK", SHA + "\n")
        if path == "/":
            return _json("200 OK", {"sha": SHA, "colour": os.environ.get("DEPLOY_COLOUR", "")})
        if path == "/items":
            items = [i.decode("utf-8", "replace") for i in db().lrange("items", 0, -1)]
            return _json("200 OK", items)
        if path == "/slow":  # a long request (an export, a report): ?seconds=N
            seconds = float(dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p)
                            .get("seconds", "20"))
            time.sleep(min(seconds, 120))
            return _text("200 OK", f"slept {seconds:g}s\n")
    if method == "POST" and path == "/items":
        count = db().rpush("items", _read_body(environ))
        return _json("201 Created", {"sha": SHA, "count": count})
    return _text("404 Not Found", "not found\n")


def app(environ, start_response):
    try:
        status, content_type, body = route(environ)
    except Exception as exc:  # keep the version header even on errors
        status, content_type, body = _text("500 Internal Server Error", f"error: {exc.__class__.__name__}\n")
    data = body.encode()
    start_response(status, [
        ("Content-Type", content_type),
        ("Content-Length", str(len(data))),
        ("X-App-Version", SHA),
    ])
    return [] if environ["REQUEST_METHOD"] == "HEAD" else [data]


# ------------------------------------------------------------------ CLI

def migrate():
    """Raise schema_version to this build's migrate_to; never lower it."""
    target = int(BUILD["migrate_to"])
    current = schema_version()
    print(f"migrate: build {SHA[:12]} ({BUILD.get('name', '?')}), redis {REDIS_URL}")
    if BUILD.get("migrate_fails"):
        print(f"schema_version {current} -> {target}")
        print("applying migration 0001_initial ... already applied")
        print("applying migration 0002_add_colour ...")
        print("ERROR: migration 0002 failed: duplicate column", file=sys.stderr)
        return 1
    if current >= target:
        print(f"schema_version {current} >= {target}: nothing to do")
        return 0
    print(f"schema_version {current} -> {target}")
    db().set("schema_version", target)
    print("done")
    return 0


def healthcheck():
    """Compose healthcheck: GET /healthz over the gunicorn unix socket (or, when it listens on a
    port instead, on 127.0.0.1:8000), 2 s budget. Docker runs it every second in every running
    colour: a bare socket and `python3 -S` keep each run to a few milliseconds of CPU (as curl
    would), where http.client's imports cost more than the request."""
    try:
        if os.path.exists(APP_SOCKET):
            conn, address = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), APP_SOCKET
        else:
            conn, address = socket.socket(), ("127.0.0.1", int(os.environ.get("PORT", "8000")))
        with conn:
            conn.settimeout(2)
            conn.connect(address)
            conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            status_line = conn.makefile("rb").readline()
    except OSError as exc:
        print(f"healthcheck: {address}: {exc}", file=sys.stderr)
        return 1
    return 0 if status_line.split(b" ")[1:2] == [b"200"] else 1


def main(argv):
    commands = {"migrate": migrate, "healthcheck": healthcheck}
    if len(argv) != 2 or argv[1] not in commands:
        print(f"usage: {argv[0]} {{{'|'.join(commands)}}}", file=sys.stderr)
        return 2
    try:
        return commands[argv[1]]()
    except Exception as exc:
        print(f"ERROR: {argv[1]}: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
