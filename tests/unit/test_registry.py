"""registry: image names, URLs, and the manifest check against a tiny local registry."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from deploytasks import registry
from deploytasks.errors import ConfigError


@pytest.mark.parametrize("image, expected", [
    ("ghcr.io/org/web", ("ghcr.io", "org/web")),
    ("127.0.0.1:5000/example/web", ("127.0.0.1:5000", "example/web")),
    ("localhost/web", ("localhost", "web")),
    ("localhost:5000/a/b/c", ("localhost:5000", "a/b/c")),
    ("redis", ("registry-1.docker.io", "library/redis")),
    ("org/web", ("registry-1.docker.io", "org/web")),
])
def test_split(image, expected):
    assert registry.split(image) == expected


@pytest.mark.parametrize("image, expected", [
    ("docker.io/redis", ("registry-1.docker.io", "library/redis")),
    ("docker.io/org/web", ("registry-1.docker.io", "org/web")),
])
def test_split_explicit_docker_hub(image, expected):
    assert registry.split(image) == expected


@pytest.mark.parametrize("reg, url", [
    ("127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("127.0.0.1", "http://127.0.0.1"),
    ("localhost:5000", "http://localhost:5000"),
    ("localhost", "http://localhost"),
    ("[::1]:5000", "http://[::1]:5000"),
    ("ghcr.io", "https://ghcr.io"),
    ("registry.example.com:5000", "https://registry.example.com:5000"),
    ("registry-1.docker.io", "https://registry-1.docker.io"),
    ("10.0.0.5:5000", "https://10.0.0.5:5000"),
])
def test_base_url(reg, url):
    assert registry.base_url(reg) == url


def test_base_url_hostname_starting_with_127_is_not_loopback():
    assert registry.base_url("127.example.com") == "https://127.example.com"


# --- a tiny registry -----------------------------------------------------------------------------

class _Registry(BaseHTTPRequestHandler):
    token = "tok-123"
    seen: list

    def log_message(self, *args):  # keep test output quiet
        pass

    def _reply(self, status, headers=(), body=b""):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.seen.append((self.command, self.path, dict(self.headers)))
        port = self.server.server_address[1]
        if self.path == "/v2/example/web/manifests/good":
            assert "application/vnd.oci.image.index.v1+json" in self.headers["Accept"]
            return self._reply(200, [("Docker-Content-Digest", "sha256:0")])
        if self.path == "/v2/example/web/manifests/missing":
            return self._reply(404)
        if self.path.startswith("/v2/private/web/manifests/"):
            if self.headers.get("Authorization") == f"Bearer {self.token}":
                return self._reply(200 if self.path.endswith("/good") else 404)
            challenge = (f'Bearer realm="http://127.0.0.1:{port}/token",service="test-registry",'
                         f'scope="repository:private/web:pull"')
            return self._reply(401, [("WWW-Authenticate", challenge)])
        if self.path.startswith("/v2/basic/"):
            return self._reply(401, [("WWW-Authenticate", 'Basic realm="registry"')])
        return self._reply(500)

    def do_GET(self):
        self.seen.append((self.command, self.path, dict(self.headers)))
        url = urlparse(self.path)
        if url.path == "/token":
            query = parse_qs(url.query)
            if query.get("service") == ["test-registry"] and query.get("scope") == ["repository:private/web:pull"]:
                return self._reply(200, [("Content-Type", "application/json")],
                                   json.dumps({"token": self.token}).encode())
            return self._reply(400)
        if url.path.endswith("/tags/list"):
            return self._tags(url)
        return self._reply(404)

    def _tags(self, url):
        """Tag lists served in pages of two, each linking to the next as a registry does."""
        repository = url.path[len("/v2/"):-len("/tags/list")]
        if repository == "private/web" and self.headers.get("Authorization") != f"Bearer {self.token}":
            port = self.server.server_address[1]
            challenge = (f'Bearer realm="http://127.0.0.1:{port}/token",service="test-registry",'
                         f'scope="repository:private/web:pull"')
            return self._reply(401, [("WWW-Authenticate", challenge)])
        if repository == "basic/web":
            return self._reply(401, [("WWW-Authenticate", 'Basic realm="registry"')])
        if repository not in TAGS:
            return self._reply(404, [("Content-Type", "application/json")], b'{"errors":[{"code":"NAME_UNKNOWN"}]}')
        if repository == "junk/web":
            return self._reply(200, [("Content-Type", "application/json")], b"<html>")
        tags = TAGS[repository]
        last = parse_qs(url.query).get("last", [None])[0]
        start = tags.index(last) + 1 if last else 0
        page, headers = tags[start:start + 2], [("Content-Type", "application/json")]
        if start + 2 < len(tags):
            headers.append(("Link", NEXT.get(repository, '</v2/{repo}/tags/list?n=2&last={last}>; rel="next"').format(
                repo=repository, last=page[-1], port=self.server.server_address[1])))
        body = {"name": repository, "tags": page if repository != "empty/web" else None}
        return self._reply(200, headers, json.dumps(body).encode())


SHA_A, SHA_B = "3f2c1e9" + "a" * 33, "3f2c1e9" + "b" * 33
TAGS = {
    "example/web": ["latest", SHA_A, "v1.2", "4e5d6c7" + "c" * 33, "cache"],
    "private/web": [SHA_A, "latest", SHA_B],
    "elsewhere/web": [SHA_A, "latest", SHA_B],
    "loop/web": [SHA_A, "latest", SHA_B],
    "absolute/web": [SHA_A, "latest", SHA_B],
    "empty/web": ["x", "y", "z"],
    "junk/web": [],
}
NEXT = {  # how a repository's pages link to the next one (default: a path on the registry)
    "elsewhere/web": '<http://evil.example.com/v2/{repo}/tags/list?last={last}>; rel="next"',
    "loop/web": '</v2/{repo}/tags/list>; rel="next"',
    "absolute/web": '<http://127.0.0.1:{port}/v2/{repo}/tags/list?n=2&last={last}>; rel="next"',
}


@pytest.fixture(scope="module")
def local_registry():
    handler = type("Handler", (_Registry,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler.seen
    finally:
        server.shutdown()
        server.server_close()


def test_exists_200_and_404(local_registry):
    host, _ = local_registry
    assert registry.exists(f"{host}/example/web", "good") is True
    assert registry.exists(f"{host}/example/web", "missing") is False


def test_exists_bearer_challenge(local_registry):
    host, seen = local_registry
    seen.clear()
    assert registry.exists(f"{host}/private/web", "good") is True
    assert registry.exists(f"{host}/private/web", "other") is False
    assert [(method, path.split("?")[0]) for method, path, _ in seen[:3]] == [
        ("HEAD", "/v2/private/web/manifests/good"), ("GET", "/token"), ("HEAD", "/v2/private/web/manifests/good")]


def test_exists_refused_names_the_credentials(local_registry):
    host, _ = local_registry
    with pytest.raises(ConfigError, match=r"refused access to basic/web \(HTTP 401\).*REGISTRY_USER"):
        registry.exists(f"{host}/basic/web", "good")


def test_exists_other_status_is_an_error(local_registry):
    host, _ = local_registry
    with pytest.raises(ConfigError, match=r"answered HTTP 500 for .*/weird/web:good"):
        registry.exists(f"{host}/weird/web", "good")


def test_exists_sends_basic_auth_from_the_environment(local_registry, monkeypatch):
    host, seen = local_registry
    monkeypatch.setenv("REGISTRY_USER", "ci")
    monkeypatch.setenv("REGISTRY_PASSWORD", "pw")
    seen.clear()
    assert registry.exists(f"{host}/example/web", "good")
    assert seen[0][2].get("Authorization", "").startswith("Basic ")


def test_missing_lists_the_absent_tags(local_registry):
    host, _ = local_registry
    images = {"web": f"{host}/example/web", "api": f"{host}/private/web"}
    assert registry.missing(images, "good") == []
    assert registry.missing(images, "missing") == [f"{host}/example/web:missing", f"{host}/private/web:missing"]


def test_unreachable_registry_is_a_config_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"registry 127.0.0.1:{port} unreachable"):
        registry.exists(f"127.0.0.1:{port}/example/web", "good")


def test_credentials_go_only_to_the_registry_they_are_for(local_registry, monkeypatch):
    host, seen = local_registry
    monkeypatch.setenv("REGISTRY_USER", "ci")
    monkeypatch.setenv("REGISTRY_PASSWORD", "pw")
    monkeypatch.setenv("REGISTRY_HOST", "ghcr.io")
    seen.clear()
    assert registry.exists(f"{host}/example/web", "good")
    assert "Authorization" not in seen[0][2], "this registry is not the one the credentials are for"
    monkeypatch.setenv("REGISTRY_HOST", host)
    seen.clear()
    assert registry.exists(f"{host}/private/web", "good")
    token_request = next(headers for method, path, headers in seen if path.startswith("/token"))
    assert token_request.get("Authorization", "").startswith("Basic "), "its own loopback realm gets them"


def test_a_plain_http_realm_elsewhere_never_gets_the_credentials():
    assert registry._may_receive("https://auth.docker.io/token", "registry-1.docker.io")
    assert not registry._may_receive("http://evil.example.com/token", "registry.example.com")
    assert not registry._may_receive("http://127.0.0.1:9/token", "127.0.0.1:5000")
    assert registry._may_receive("http://127.0.0.1:5000/token", "127.0.0.1:5000")


def test_credentials_with_images_from_several_registries_need_registry_host(monkeypatch):
    monkeypatch.setenv("REGISTRY_USER", "ci")
    monkeypatch.setenv("REGISTRY_PASSWORD", "pw")
    monkeypatch.delenv("REGISTRY_HOST", raising=False)
    with pytest.raises(ConfigError, match="set REGISTRY_HOST"):
        registry.missing({"web": "ghcr.io/org/web", "api": "registry.example.com/api"}, "abc1234")


# --- the tag list ----------------------------------------------------------------------------

def test_tags_follows_every_page(local_registry):
    host, seen = local_registry
    seen.clear()
    assert registry.tags(f"{host}/example/web") == TAGS["example/web"]
    assert [path for _, path, _ in seen] == ["/v2/example/web/tags/list",
                                             f"/v2/example/web/tags/list?n=2&last={SHA_A}",
                                             "/v2/example/web/tags/list?n=2&last=4e5d6c7" + "c" * 33]


def test_tags_follows_an_absolute_next_link_on_the_registry(local_registry):
    host, _ = local_registry
    assert registry.tags(f"{host}/absolute/web") == TAGS["absolute/web"]


def test_tags_takes_one_token_for_every_page(local_registry):
    host, seen = local_registry
    seen.clear()
    assert registry.tags(f"{host}/private/web") == TAGS["private/web"]
    assert [path.split("?")[0] for _, path, _ in seen] == [
        "/v2/private/web/tags/list", "/token", "/v2/private/web/tags/list", "/v2/private/web/tags/list"]


def test_tags_sends_basic_auth_from_the_environment(local_registry, monkeypatch):
    host, seen = local_registry
    monkeypatch.setenv("REGISTRY_USER", "ci")
    monkeypatch.setenv("REGISTRY_PASSWORD", "pw")
    seen.clear()
    registry.tags(f"{host}/example/web")
    assert all(headers.get("Authorization", "").startswith("Basic ") for _, _, headers in seen)


def test_tags_of_an_unknown_repository_are_none(local_registry):
    host, _ = local_registry
    assert registry.tags(f"{host}/nowhere/web") == []


def test_tags_null_is_no_tags(local_registry):
    host, _ = local_registry
    assert registry.tags(f"{host}/empty/web") == []


def test_tags_never_follows_a_next_page_to_another_host(local_registry, monkeypatch):
    host, seen = local_registry
    monkeypatch.setenv("REGISTRY_USER", "ci")
    monkeypatch.setenv("REGISTRY_PASSWORD", "pw")
    with pytest.raises(ConfigError, match=r"sent the next page of tags elsewhere \(http://evil.example.com/"):
        registry.tags(f"{host}/elsewhere/web")


def test_tags_stops_at_a_page_linking_to_itself(local_registry):
    host, _ = local_registry
    assert registry.tags(f"{host}/loop/web") == TAGS["loop/web"][:2]


def test_tags_refused_names_the_credentials(local_registry):
    host, _ = local_registry
    with pytest.raises(ConfigError, match=r"refused access to basic/web \(HTTP 401\).*REGISTRY_USER"):
        registry.tags(f"{host}/basic/web")


def test_tags_not_json_is_a_config_error(local_registry):
    host, _ = local_registry
    with pytest.raises(ConfigError, match="tag list of .*junk/web"):
        registry.tags(f"{host}/junk/web")
