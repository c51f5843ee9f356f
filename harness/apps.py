"""Apps as teams write them, for the tests and the bench (issue 10): nothing in them is shaped
for deploytasks.

`gallery`: a Django project whose Dockerfile runs gunicorn `--bind 0.0.0.0:8000` on its
command line as a non-root user, collects its static files (hashed names) into the image,
reads its secret and allowed hosts from `env_file: web.env`, keeps uploads in a named
volume, has a redis `db` with its own `env_file`, and its own reverse proxy service with
`build: ./nginx` that serves static and media files from named volumes. One health URL.

`board`: an aiohttp server (not gunicorn) for process releases, listening on `$PORT`, with
a WebSocket endpoint and a slow endpoint for long requests.

Their repositories are written by the tests into a temporary directory; the images are built
there and pushed by full git SHA, as CI would.
"""
from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

from harness import testbed

GALLERY_IMAGE = f"{testbed.REGISTRY}/gallery/web"
WHEELS = ("django==4.2.16", "asgiref==3.8.1", "sqlparse==0.5.1")
WHEEL_CACHE = testbed.STATE_DIR / "wheels"

GALLERY_FILES = {
    "Dockerfile": f"""\
FROM {testbed.BASE_IMAGE_PUSHED}
# the base image has no pip: the wheels are unpacked into vendor/ before the build
COPY vendor /vendor
ENV PYTHONPATH=/vendor PYTHONUNBUFFERED=1 DJANGO_SETTINGS_MODULE=gallery.settings
COPY . /app
WORKDIR /app
RUN SECRET_KEY=build python3 manage.py collectstatic --noinput -v 0 \\
 && useradd --system --uid 10001 --home /app gallery && mkdir -p /app/media && chown gallery /app/media
USER gallery
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--access-logfile", "-", "gallery.wsgi"]
""",
    ".dockerignore": "nginx\n.git\nenvs\n",
    "manage.py": """\
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gallery.settings")
from django.core.management import execute_from_command_line

execute_from_command_line(sys.argv)
""",
    "gallery/__init__.py": "",
    "gallery/settings.py": """\
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ["SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = os.environ.get("ALLOWED_HOSTS", "").split(",")
INSTALLED_APPS = ["django.contrib.staticfiles", "gallery"]
MIDDLEWARE = ["gallery.views.version_header"]
ROOT_URLCONF = "gallery.urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
WSGI_APPLICATION = "gallery.wsgi.application"
DATABASES = {}
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
MEDIA_URL = "/media/"
MEDIA_ROOT = BASE_DIR / "media"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
}
REDIS_URL = os.environ.get("REDIS_URL", "redis://db:6379/0")
""",
    "gallery/wsgi.py": """\
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gallery.settings")
application = get_wsgi_application()
""",
    "gallery/urls.py": """\
from django.urls import path

from . import views

urlpatterns = [
    path("", views.home),
    path("health/", views.health),
    path("items", views.items),
    path("upload", views.upload),
]
""",
    "gallery/views.py": """\
import os

import redis
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

RELEASE = open(os.path.join(os.path.dirname(__file__), "RELEASE")).read().strip()
_db = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=2)


def version_header(get_response):
    def middleware(request):
        response = get_response(request)
        response["X-App-Version"] = RELEASE
        return response
    return middleware


def home(request):
    return render(request, "home.html", {"release": RELEASE})


def health(request):
    _db.ping()
    return HttpResponse("ok")


@csrf_exempt
def items(request):
    if request.method == "POST":
        _db.rpush("items", request.body)
    return JsonResponse({"items": _db.llen("items"), "release": RELEASE})


@csrf_exempt
def upload(request):
    name = default_storage.save(request.GET.get("name", "upload.txt"), ContentFile(request.body))
    return JsonResponse({"url": settings.MEDIA_URL + name})
""",
    "gallery/templates/home.html": """\
{% load static %}<!doctype html>
<html><head><title>gallery {{ release }}</title>
<link rel="stylesheet" href="{% static 'gallery/site.css' %}">
<script src="{% static 'gallery/site.js' %}"></script></head>
<body><h1>gallery {{ release }}</h1></body></html>
""",
    "compose.yml": f"""\
services:
  web:
    build: .
    image: {GALLERY_IMAGE}:${{DEPLOY_SHA:-latest}}
    env_file: web.env
    environment:
      REDIS_URL: redis://db:6379/0
    volumes:
      - static:/app/staticfiles
      - media:/app/media
    depends_on:
      - db
    restart: unless-stopped
  db:
    image: {testbed.BASE_IMAGE_PUSHED}
    env_file: db.env
    command: ["sh", "-c", "exec redis-server --protected-mode no --dir /data --maxmemory $$REDIS_MAXMEMORY"]
    volumes:
      - dbdata:/data
    restart: unless-stopped
  proxy:
    build: ./nginx
    depends_on:
      - web
    ports:
      - "80:80"
    volumes:
      - static:/srv/static:ro
      - media:/srv/media:ro
volumes:
  static:
  media:
  dbdata:
""",
    "web.env": "SECRET_KEY=gallery-secret-key-not-for-printing\nALLOWED_HOSTS=gallery.test\n",
    "db.env": "REDIS_MAXMEMORY=64mb\n",
    "nginx/Dockerfile": "FROM nginx:1.25\nCOPY default.conf /etc/nginx/conf.d/default.conf\n",
    "nginx/default.conf": """\
server {
    listen 80;
    location /static/ { alias /srv/static/; }
    location /media/ { alias /srv/media/; }
    location / { proxy_pass http://web:8000; proxy_set_header Host $host; }
}
""",
}


def gallery_static(release: str) -> dict[str, str]:
    """Assets that change with the release, so their hashed names differ between versions."""
    return {
        "gallery/static/gallery/site.css": f"/* gallery {release} */\nh1 {{ color: #224; }}\n",
        "gallery/static/gallery/site.js": f"document.title += ' ({release})';\n",
    }


def vendor_wheels(target: Path) -> None:
    """The framework's wheels, downloaded once per machine, unpacked for the image's PYTHONPATH."""
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    if len(list(WHEEL_CACHE.glob("*.whl"))) < len(WHEELS):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(WHEEL_CACHE), *WHEELS],
                       check=True, capture_output=True, timeout=300)
    target.mkdir(parents=True, exist_ok=True)
    for wheel in WHEEL_CACHE.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)


def write(repo: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


BOARD_FILES = {
    "requirements.txt": "aiohttp==3.10.10\n",
    "server.py": """\
\"\"\"The board: an aiohttp service on $PORT (no gunicorn), with a WebSocket and a slow endpoint.\"\"\"
import asyncio
import os

from aiohttp import web

HERE = os.path.dirname(os.path.abspath(__file__))
RELEASE = open(os.path.join(HERE, "RELEASE")).read().strip()
HEADERS = {"X-App-Version": RELEASE}
ITEMS = []


async def home(request):
    page = (f"<!doctype html><html><head><title>board {RELEASE}</title>"
            f'<link rel="stylesheet" href="/static/board.{RELEASE}.css"></head>'
            f"<body><h1>board {RELEASE}</h1></body></html>")
    return web.Response(text=page, content_type="text/html", headers=HEADERS)


async def health(request):
    return web.Response(text="ok", headers=HEADERS)


async def items(request):
    if request.method == "POST":
        ITEMS.append(await request.read())
    return web.json_response({"items": len(ITEMS), "release": RELEASE}, headers=HEADERS)


async def slow(request):
    await asyncio.sleep(float(request.query.get("seconds", "20")))
    return web.Response(text=f"slept {RELEASE}", headers=HEADERS)


async def socket(request):
    ws = web.WebSocketResponse(heartbeat=None)
    await ws.prepare(request)
    SOCKETS.add(ws)
    try:
        async for message in ws:
            await ws.send_str(f"{RELEASE}:{message.data}")
    finally:
        SOCKETS.discard(ws)
    return ws


async def close_sockets(app):
    \"\"\"On SIGTERM, as aiohttp's documentation advises: close the WebSockets still open.\"\"\"
    for ws in list(SOCKETS):
        await ws.close(code=1001, message=b"server shutdown")


SOCKETS = set()
app = web.Application()
app.on_shutdown.append(close_sockets)
app.router.add_get("/", home)
app.router.add_get("/up", health)
app.router.add_route("*", "/items", items)
app.router.add_get("/slow", slow)
app.router.add_get("/ws", socket)

if __name__ == "__main__":
    web.run_app(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ["PORT"]),
                shutdown_timeout=60, print=None)
""",
}


def board_static(release: str) -> dict[str, str]:
    return {f"public/board.{release}.css": f"/* board {release} */\nh1 {{ font-weight: bold; }}\n"}


def asset_urls(page: str) -> list[str]:
    """Every stylesheet and script a page asks for."""
    return re.findall(r'(?:href|src)="(/[^"]+\.(?:css|js))"', page)


def testbed_values(port: int, site: str) -> dict[str, str]:
    """What an env file says to reach the testbed's server, for a site on `port` named `site`."""
    return {
        "HOSTS": "127.0.0.1",
        "SSH_USER": "root",
        "SSH_PORT": str(testbed.SSH_PORT),
        "SSH_KEY": str(testbed.SSH_KEY),
        "KNOWN_HOSTS": str(testbed.KNOWN_HOSTS),
        "CONNECT_TIMEOUT": "5",
        "NGINX_CONF": str(testbed.NGINX_CONF),
        "NGINX_SITE_DIR": str(testbed.NGINX_SITE_DIR),
        "NGINX_LISTEN": str(port),
        "NGINX_ACCESS_LOG": "off",  # as the testbed's nginx.conf: it logs no request
        "SERVER_NAME": site,
        "HEALTH_TIMEOUT": "90",
        "HEALTH_INTERVAL": "0.5",
        "DRAIN_TIMEOUT": "10",
        "MONITOR_SECONDS": "2",  # the testbed's envs watch 2 s (5 by default): the suite deploys often
    }


BOARD_PORT = 8084
BOARD_SITE = "board.test"


def board_env() -> dict[str, str]:
    """Everything the board's team writes for deploytasks: one env file."""
    return {
        **testbed_values(BOARD_PORT, BOARD_SITE),
        "APP_NAME": "board",
        "MODE": "processes",
        "DEPLOY_PATH": "/srv/board",
        "SOURCE_REPO": ".",
        "START_COMMAND": "python3 server.py",
        "LISTEN": "port",
        "HEALTH_PATH": "/up",
        "STATIC_URL": "/static/",
        "STATIC_PATH": "public",
        "DRAIN_TIMEOUT": "30",
    }


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), "-c", "user.name=dev", "-c", "user.email=dev@example.invalid",
                           *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def commit(repo: Path, release: str, files: dict[str, str]) -> str:
    """Write `files`, commit them as `release` (also a tag), and return the commit's full SHA."""
    write(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", release)
    git(repo, "tag", "-f", release)
    return git(repo, "rev-parse", "HEAD")


def board_project(repo: Path, env: str) -> dict[str, str]:
    """The board's repository with releases v1, v2, v3 and its env file `env`: {release: SHA}."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    write(repo, {**BOARD_FILES, ".gitignore": "envs/*.env\n"})
    (repo / "envs").mkdir()
    (repo / "envs" / f"{env}.env").write_text("".join(f"{k}={v}\n" for k, v in board_env().items()))
    return {release: commit(repo, release, {"RELEASE": release + "\n", **board_static(release)})
            for release in ("v1", "v2", "v3")}


class Pinger:
    """A WebSocket to the board, sending "ping" every half second from a thread of its own until
    the socket closes: `replies` holds (time.monotonic(), reply), the last one "closed (<why>)"."""

    def __init__(self, host: str, port: int, first: str = "before"):
        import threading

        import websocket

        self._closed = (websocket.WebSocketException, OSError)
        self.ws = websocket.create_connection(f"ws://{host}:{port}/ws", host=BOARD_SITE, timeout=10)
        self.ws.send(first)
        self.first = self.ws.recv()  # answered before the thread starts: by the version serving now
        self.replies: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._ping, daemon=True)
        self._thread.start()

    def _ping(self) -> None:
        import time

        try:
            while True:
                self.ws.send("ping")
                reply = self.ws.recv()
                if not reply:  # the server's close frame
                    raise ConnectionResetError("close frame")
                self.replies.append((time.monotonic(), reply))
                time.sleep(0.5)
        except self._closed as exc:
            self.replies.append((time.monotonic(), f"closed ({type(exc).__name__})"))

    def join(self, timeout: float) -> None:
        self._thread.join(timeout=timeout)

    def answers(self) -> list[tuple[float, str]]:
        return [(t, reply) for t, reply in self.replies if not reply.startswith("closed")]

    def ended(self) -> str:
        return self.replies[-1][1] if self.replies and self.replies[-1][1].startswith("closed") else "open"
