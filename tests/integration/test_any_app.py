"""Apps as they are (issue 10): deployed from an installed wheel in the team's own repository,
with no edit to their files and nothing done by hand on the host. Each gets two deploys and a
rollback under load with 0 failed requests, and a page of each version whose assets all load
(the old page's too, once the new version serves).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import requests

from deploytasks import config as configuration
from harness import testbed
from harness.load import Load, summarize

from harness import apps as anyapp
from .test_user_repository import installed, ok  # noqa: F401  (the fixture, shared)

GALLERY_PORT = 8083
GALLERY_SITE = "gallery.test"
GALLERY = f"http://127.0.0.1:{GALLERY_PORT}"

# everything the team writes for deploytasks: one env file, no change to the app
GALLERY_ENV = {
    **anyapp.testbed_values(GALLERY_PORT, GALLERY_SITE),
    "APP_NAME": "gallery",
    "DEPLOY_PATH": "/srv/gallery",
    "STATELESS_SERVICES": "web",
    "STATEFUL_SERVICES": "db",
    "EXCLUDE_SERVICES": "proxy",
    "COMPOSE_FILES": "compose.yml",
    "IMAGE_WEB": anyapp.GALLERY_IMAGE,
    "WEB_PORT": "8000",
    "HEALTH_PATH": "/health/",
    "STATIC_URL": "/static/",
    "STATIC_PATH": "/app/staticfiles",
    "MEDIA_URL": "/media/",
    "MEDIA_PATH": "/app/media",
}


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, installed):  # noqa: F811
    repo = tmp_path_factory.mktemp("users") / "gallery"
    repo.mkdir()
    ok(["git", "init", "-q", "-b", "main"], repo)
    anyapp.write(repo, {**anyapp.GALLERY_FILES, ".gitignore": "vendor/\nenvs/*.env\n"})
    anyapp.vendor_wheels(repo / "vendor")  # what CI's build step provides; not committed
    ok([str(installed / "deploytasks"), "init"], repo)
    (repo / "envs" / "staging.env").write_text("".join(f"{k}={v}\n" for k, v in GALLERY_ENV.items()))
    shas = {}
    for release in ("v1", "v2", "v3"):
        sha = anyapp.commit(repo, release, {"gallery/RELEASE": release + "\n", **anyapp.gallery_static(release)})
        ok(["docker", "build", "-q", "-t", f"{anyapp.GALLERY_IMAGE}:{sha}", str(repo)], repo)
        ok(["docker", "push", "-q", f"{anyapp.GALLERY_IMAGE}:{sha}"], repo)
        shas[release] = sha
    config = configuration.load(repo, "staging", environ={})
    testbed.reset_app(config)
    yield repo, installed, shas, config
    testbed.reset_app(config)


def page(base: str, site: str) -> tuple[str, str]:
    response = requests.get(base + "/", headers={"Host": site}, timeout=5)
    assert response.status_code == 200, response.text[:500]
    return response.headers.get("X-App-Version", ""), response.text


def assets_load(base: str, site: str, html: str) -> list[str]:
    urls = anyapp.asset_urls(html)
    assert urls, html
    for url in urls:
        response = requests.get(base + url, headers={"Host": site}, timeout=5)
        assert response.status_code == 200, (url, response.status_code)
    return urls


def deploy_under_load(argv, repo, port, site, release) -> str:
    with Load(port=port, clients=4, rate=200.0, min_requests=1500, site=site) as load:
        out = ok(argv, repo)
    summary = summarize(load.samples, new_version=release)
    assert summary.failed == 0 and summary.regressions == 0, (summary, out[-3000:])
    assert summary.requests >= 1500
    return out


def test_a_django_app_with_its_own_proxy_deploys_as_it_is(gallery):
    repo, bin_, shas, config = gallery
    inv = str(bin_ / "inv")
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}

    out = ok([inv, "deploy", "--env", "staging", "--sha", shas["v1"]], repo)  # the first: nothing served before
    assert "gallery-secret-key-not-for-printing" not in out, "the env file's secret is masked"
    version, v1_page = page(GALLERY, GALLERY_SITE)
    assert version == "v1"
    assets_load(GALLERY, GALLERY_SITE, v1_page)

    # the web image runs as a non-root user on TCP; the proxy was never built or started; env files are 0600
    user = ok(["docker", "inspect", "-f", "{{.Config.User}}", "gallery-blue-web-1"], repo).strip()
    assert user == "gallery"
    running = ok(["docker", "ps", "--format", "{{.Names}}"], repo)
    assert "proxy" not in running and "gallery-db-1" in running
    release = Path(config.deploy_path, "current").resolve()
    for name in ("web.env", "db.env"):
        assert stat.S_IMODE(os.stat(release / name).st_mode) == 0o600, name
    maxmemory = ok(["docker", "exec", "gallery-db-1", "redis-cli", "config", "get", "maxmemory"], repo)
    assert "67108864" in maxmemory, "db.env reached the stateful service"

    # uploads: written by the non-root app into shared/media, served by the host's nginx
    uploaded = requests.post(GALLERY + "/upload?name=hello.txt", data=b"hello", headers={"Host": GALLERY_SITE},
                             timeout=5)
    assert uploaded.status_code == 200, uploaded.text[:300]
    upload_url = GALLERY + uploaded.json()["url"]
    media = requests.get(upload_url, headers={"Host": GALLERY_SITE}, timeout=5)
    assert media.status_code == 200 and media.text == "hello"
    assert Path(config.deploy_path, "shared", "media", "hello.txt").exists()

    pages = {}
    for release in ("v2", "v3"):
        _, before_page = page(GALLERY, GALLERY_SITE)
        deploy_under_load([inv, "deploy", "--env", "staging", "--sha", shas[release]], repo, GALLERY_PORT,
                          GALLERY_SITE, release)
        version, pages[release] = page(GALLERY, GALLERY_SITE)
        assert version == release
        new_assets = assets_load(GALLERY, GALLERY_SITE, pages[release])
        assert set(new_assets).isdisjoint(anyapp.asset_urls(before_page)), "hashed names differ between versions"
        assets_load(GALLERY, GALLERY_SITE, before_page)  # a page loaded just before the switch finds its assets
        assert requests.get(upload_url, headers={"Host": GALLERY_SITE}, timeout=5).text == "hello"

    deploy_under_load([inv, "rollback", "--env", "staging"], repo, GALLERY_PORT, GALLERY_SITE, "v2")
    version, page_again = page(GALLERY, GALLERY_SITE)
    assert version == "v2"
    assets_load(GALLERY, GALLERY_SITE, page_again)
    assets_load(GALLERY, GALLERY_SITE, pages["v3"])

    status = ok([inv, "status", "--env", "staging"], repo)
    assert f"{shas['v2']} serving" in status, status
    after = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert after == before, "the app's files are deployed as they are"


BOARD_PORT, BOARD_SITE = anyapp.BOARD_PORT, anyapp.BOARD_SITE
BOARD = f"http://127.0.0.1:{BOARD_PORT}"


@pytest.fixture(scope="module")
def board(tmp_path_factory, installed):  # noqa: F811
    repo = tmp_path_factory.mktemp("users") / "board"
    shas = anyapp.board_project(repo, "staging")
    ok([str(installed / "deploytasks"), "init"], repo)
    config = configuration.load(repo, "staging", environ={})
    testbed.reset_app(config)
    yield repo, installed, shas, config
    testbed.reset_app(config)


def test_an_aiohttp_server_on_port_deploys_as_a_process_release(board):
    import threading
    import time

    repo, bin_, shas, config = board
    inv = str(bin_ / "inv")
    ok([inv, "deploy", "--env", "staging", "--sha", shas["v1"]], repo)  # the first: nothing served before
    version, v1_page = page(BOARD, BOARD_SITE)
    assert version == "v1"
    assets_load(BOARD, BOARD_SITE, v1_page)

    # a long request and a WebSocket, both opened on v1 before the next deploy
    slow: dict = {}
    request = threading.Thread(target=lambda: slow.update(r=requests.get(
        BOARD + "/slow?seconds=20", headers={"Host": BOARD_SITE}, timeout=60), ended=time.monotonic()))
    request.start()
    pinger = anyapp.Pinger("127.0.0.1", BOARD_PORT)  # one message every half second until it closes
    assert pinger.first == "v1:before"
    out = deploy_under_load([inv, "deploy", "--env", "staging", "--sha", shas["v2"]], repo, BOARD_PORT,
                            BOARD_SITE, "v2")
    deployed = time.monotonic()
    request.join(timeout=60)
    pinger.join(timeout=10)
    assert slow["r"].status_code == 200 and slow["r"].text == "slept v1", "the 20 s request outlived the switch"
    slow_ended = slow["ended"]
    assert "drain:" in out, out[-2000:]
    answered = [t for t, reply in pinger.answers()]
    assert {reply for _, reply in pinger.answers()} == {"v1:ping"}, pinger.replies
    assert answered and answered[-1] > slow_ended, "the WebSocket stayed open past the long request, on v1"
    assert pinger.ended() != "open" and pinger.replies[-1][0] <= deployed + 1, "closed when the drain ended"
    version, v2_page = page(BOARD, BOARD_SITE)
    assert version == "v2"
    assets_load(BOARD, BOARD_SITE, v2_page)
    assets_load(BOARD, BOARD_SITE, v1_page)

    deploy_under_load([inv, "deploy", "--env", "staging", "--sha", shas["v3"]], repo, BOARD_PORT, BOARD_SITE, "v3")
    version, v3_page = page(BOARD, BOARD_SITE)
    assert version == "v3"
    assets_load(BOARD, BOARD_SITE, v3_page)
    assets_load(BOARD, BOARD_SITE, v2_page)

    deploy_under_load([inv, "rollback", "--env", "staging"], repo, BOARD_PORT, BOARD_SITE, "v2")
    version, again = page(BOARD, BOARD_SITE)
    assert version == "v2"
    assets_load(BOARD, BOARD_SITE, again)
    assets_load(BOARD, BOARD_SITE, v3_page)
    status = ok([inv, "status", "--env", "staging"], repo)
    assert f"{shas['v2']} serving" in status, status
