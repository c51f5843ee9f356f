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
        return self._reply(404)


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
