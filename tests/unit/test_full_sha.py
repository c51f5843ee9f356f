"""An abbreviated --sha becomes the full SHA before anything connects: the release, its image
tags, the history line and every line the deploy prints name the full one.

No network: the registry's tag list is stubbed (registry.tags itself is tested against a local
HTTP server in test_registry.py); hosts are the in-memory transport.
"""
from __future__ import annotations

import json
import re

import pytest

from deploytasks import backends, operations, registry
from deploytasks.errors import ConfigError, DeployError
from harness.memory import MemoryTransport

FULL = "bbbbbbb" + "1" * 33
OTHER = "ccccccc" + "2" * 33
WEB = "127.0.0.1:5000/example/web"  # IMAGE_WEB of envs/local.env


@pytest.fixture
def registry_tags(monkeypatch):
    """The web image's tags as the registry lists them; every listing and manifest check is recorded."""
    asked = {"tags": [], "missing": []}

    def tags(image, session=None):
        asked["tags"].append(image)
        return ["latest", FULL, OTHER, "v1.0"]

    def missing(images, tag):
        asked["missing"].append(tag)
        return []

    monkeypatch.setattr(registry, "tags", tags)
    monkeypatch.setattr(registry, "missing", missing)
    return asked


# --- backends.full_sha: what the task layer calls -------------------------------------------------

def test_full_sha_of_an_abbreviation_is_the_web_images_tag(local_config, registry_tags):
    assert backends.full_sha(local_config, "bbbbbbb") == FULL
    assert backends.full_sha(local_config, " BBBBBBB11 ") == FULL, "typed as people type it"
    assert registry_tags["tags"] == [WEB, WEB]


def test_full_sha_of_a_full_sha_lists_nothing(local_config, registry_tags):
    assert backends.full_sha(local_config, "d" * 40) == "d" * 40
    assert registry_tags["tags"] == []


def test_full_sha_no_match_names_the_image(local_config, registry_tags):
    with pytest.raises(ConfigError, match=f"no image of {WEB} is tagged with a SHA starting 3f2c1e9"):
        backends.full_sha(local_config, "3f2c1e9")


def test_full_sha_checks_what_was_typed_first(local_config, registry_tags):
    with pytest.raises(ConfigError, match="is not a git SHA"):
        backends.full_sha(local_config, "main")
    assert registry_tags["tags"] == []


def test_full_sha_of_a_process_release_is_the_commit(process_config, process_repo, monkeypatch):
    monkeypatch.setattr(registry, "tags", lambda *a, **k: pytest.fail("process releases have no images"))
    full = process_repo[1]["code"]
    assert backends.full_sha(process_config, full[:7]) == full


# --- backends.of: the backend carries the full SHA, its images are checked by it ---------------------

def test_a_container_backend_carries_the_full_sha_and_checks_its_images(local_config, registry_tags):
    assert backends.of(local_config, "bbbbbbb").sha == FULL
    assert registry_tags["missing"] == [FULL]


def test_a_process_backend_carries_the_full_sha(process_config, process_repo):
    full = process_repo[1]["v1"]
    assert backends.of(process_config, full[:7]).sha == full


# --- a whole deploy, as operations runs it --------------------------------------------------------

@pytest.fixture
def memory_host(monkeypatch):
    transport = MemoryTransport("127.0.0.1")
    monkeypatch.setattr(operations, "connect", lambda config, host, **options: transport)
    return transport


def test_a_deploy_of_an_abbreviation_names_the_full_sha_everywhere(local_config, registry_tags, memory_host,
                                                                    capsys):
    memory_host.answer(re.compile(r"/version\b"), stdout=FULL + "\n")  # the check through nginx
    serving = operations.deploy(operations.Target(local_config, ("127.0.0.1",)), "bbbbbbb")
    assert serving == {"127.0.0.1": FULL}
    out = capsys.readouterr().out
    assert f"deploy {FULL} -> " in out and f"done: {FULL} serves from" in out
    assert f"summary: 127.0.0.1 serves {FULL}" in out
    history = [line for line in memory_host.commands if "history.jsonl" in line and '"outcome": "ok"' in line]
    assert len(history) == 1
    record = json.loads(history[0][history[0].index("'{") + 1:history[0].rindex("}'") + 1])
    assert record["sha"] == FULL
    releases = set(re.findall(r"/srv/example/releases/(\d{8}T\d{6}Z-[0-9a-f]+)", "\n".join(memory_host.commands)))
    assert releases and all(release.endswith(f"-{FULL}") for release in releases), releases
    release = next(put for put in memory_host.puts if put.path.endswith("/RELEASE.json"))
    assert json.loads(release.content)["sha"] == FULL
    overlay = next(put for put in memory_host.puts if put.path.endswith("/compose.deploy.yml"))
    assert f"image: {WEB}:{FULL}\n" in overlay.content.decode(), "the image pulled is the one CI tagged"


def test_a_dry_run_prints_the_full_sha(local_config, registry_tags, memory_host, capsys):
    operations.deploy(operations.Target(local_config, ("127.0.0.1",)), "bbbbbbb", dry_run=True)
    out = capsys.readouterr().out
    assert f"dry run: deploy {FULL} to " in out and "/releases/" in out
    assert not re.search(r"releases/\d{8}T\d{6}Z-bbbbbbb(?!1{33})", out), "no release is named by the abbreviation"


def test_rollback_to_an_abbreviation_asks_the_history_for_the_full_sha(local_config, registry_tags, memory_host):
    with pytest.raises(DeployError, match=f"127.0.0.1: {FULL} never served here"):
        operations.rollback(operations.Target(local_config, ("127.0.0.1",)), to="bbbbbbb")
