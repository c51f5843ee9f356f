"""Does the registry have the image for this SHA, and which SHA does an abbreviation name?
Asked before anything on a host changes.

Speaks the registry HTTP API (a HEAD on the manifest; the tag list, page after page), with the
bearer-token dance that GHCR, Docker Hub and most hosted registries require; credentials come
from the process environment (REGISTRY_USER, REGISTRY_PASSWORD), never from an env file.
"""
from __future__ import annotations

import ipaddress
import os
import re
from urllib.parse import urljoin, urlparse

import requests

from .errors import ConfigError

ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
TIMEOUT = 10
DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")


def split(image: str) -> tuple[str, str]:
    """'ghcr.io/org/web' -> ('ghcr.io', 'org/web'); 'redis' -> Docker Hub's 'library/redis'."""
    first, _, rest = image.partition("/")
    if rest and first in DOCKER_HUB_ALIASES:
        image = rest
    elif rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return "registry-1.docker.io", image if "/" in image else f"library/{image}"


def base_url(registry: str) -> str:
    """Docker's own rule: plain HTTP only for registries on the loopback interface."""
    host = registry.split("]")[0].lstrip("[") if registry.startswith("[") else registry.rsplit(":", 1)[0]
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    return f"{'http' if loopback else 'https'}://{registry}"


def exists(image: str, tag: str, session: requests.Session | None = None) -> bool:
    registry, repository = split(image)
    url = f"{base_url(registry)}/v2/{repository}/manifests/{tag}"
    response, _ = _ask(session or requests.Session(), "HEAD", url, registry, repository, {"Accept": ACCEPT})
    if response.status_code not in (200, 404):
        raise ConfigError(f"registry {registry} answered HTTP {response.status_code} for {image}:{tag}")
    return response.status_code == 200


def tags(image: str, session: requests.Session | None = None) -> list[str]:
    """Every tag of `image`, following the registry's pages (`Link: <...>; rel="next"`); none
    when the registry does not know the repository."""
    registry, repository = split(image)
    http = session or requests.Session()
    url, bearer, found, asked = f"{base_url(registry)}/v2/{repository}/tags/list", None, [], set()
    while url and url not in asked:
        asked.add(url)
        response, bearer = _ask(http, "GET", url, registry, repository, {"Accept": "application/json"}, bearer)
        if response.status_code == 404:
            return found
        if response.status_code != 200:
            raise ConfigError(f"registry {registry} answered HTTP {response.status_code} listing the tags of {image}")
        found += _listed_tags(response, image)
        url = _next_page(response, registry)
    return found


def _listed_tags(response: requests.Response, image: str) -> list[str]:
    try:
        return [str(tag) for tag in response.json().get("tags") or ()]
    except (ValueError, AttributeError):
        raise ConfigError(f"registry answered the tag list of {image} with something that is not one") from None


def _next_page(response: requests.Response, registry: str) -> str | None:
    """The next page's URL, on the registry itself only: the credentials go nowhere else."""
    link = response.links.get("next", {}).get("url")
    if not link:
        return None
    url = urljoin(response.url, link)
    if urlparse(url)[:2] != urlparse(base_url(registry))[:2]:
        raise ConfigError(f"registry {registry} sent the next page of tags elsewhere ({url[:120]}): not followed")
    return url


def _ask(http: requests.Session, method: str, url: str, registry: str, repository: str, headers: dict,
         bearer: str | None = None) -> tuple[requests.Response, str | None]:
    """One request with the credentials: basic auth (for their registry only) or the bearer token
    already held, then the token a 401 challenge asks for. Returns the answer and the token, for
    the next request to the same repository. A refusal or no answer is a ConfigError."""
    try:
        response = _send(http, method, url, registry, headers, bearer)
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status_code == 401 and "bearer" in challenge.lower():
            bearer = _token(http, challenge, _basic_auth(registry), registry)
            response = _send(http, method, url, registry, headers, bearer)
    except requests.RequestException as exc:
        raise ConfigError(f"registry {registry} unreachable: {exc.__class__.__name__}: {str(exc)[:160]}") from None
    if response.status_code in (401, 403):
        raise ConfigError(f"registry {registry} refused access to {repository} (HTTP {response.status_code}): "
                          "set REGISTRY_USER and REGISTRY_PASSWORD in the environment")
    return response, bearer


def _send(http: requests.Session, method: str, url: str, registry: str, headers: dict,
          bearer: str | None) -> requests.Response:
    request = getattr(http, method.lower())  # head() and get() keep their own redirect defaults
    if bearer:
        return request(url, headers={**headers, "Authorization": f"Bearer {bearer}"}, timeout=TIMEOUT)
    return request(url, headers=headers, auth=_basic_auth(registry), timeout=TIMEOUT)


def missing(images: dict[str, str], tag: str) -> list[str]:
    registries = sorted({split(image)[0] for image in images.values()})
    if _credentials() and not os.environ.get("REGISTRY_HOST") and len(registries) > 1:
        raise ConfigError(f"REGISTRY_USER is set and the images come from {', '.join(registries)}: set REGISTRY_HOST "
                          "to the one registry the credentials are for")
    with requests.Session() as session:
        return [f"{image}:{tag}" for image in images.values() if not exists(image, tag, session)]


def _credentials():
    user, password = os.environ.get("REGISTRY_USER"), os.environ.get("REGISTRY_PASSWORD")
    return (user, password) if user and password else None


def _basic_auth(registry: str):
    """The credentials, for the registry they are for only (REGISTRY_HOST, when set)."""
    scope = os.environ.get("REGISTRY_HOST")
    return _credentials() if not scope or scope == registry else None


def _may_receive(realm: str, registry: str) -> bool:
    """A token realm gets the credentials over HTTPS, or over HTTP on the registry's own loopback host."""
    url = urlparse(realm)
    return url.scheme == "https" or (url.netloc == registry and base_url(registry).startswith("http:"))


def _token(http: requests.Session, challenge: str, auth, registry: str) -> str:
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = params.pop("realm", "")
    response = http.get(realm, params=params, auth=auth if auth and _may_receive(realm, registry) else None,
                        timeout=TIMEOUT)
    response.raise_for_status()
    body = response.json()
    return body.get("token") or body.get("access_token", "")
