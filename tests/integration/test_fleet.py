"""Several hosts for real: three hosts of the fleet testbed (own network, filesystem, sshd,
dockerd and nginx each), deployed to as one rollout.

Asserted through each host's own nginx and its own history: the hosts prepare in parallel and
the migration runs once; a failure in the second batch switches the first back; locks are
taken on every host or on none; promotion refuses a SHA the source never served; a fleet
rollback leaves every host on one version.
"""
from __future__ import annotations

import dataclasses
import json
import re

import pytest
import requests

from deploytasks import config as configuration
from deploytasks import locking, operations
from deploytasks.errors import DeployError, LockHeld, StepFailed
from deploytasks.layout import Layout
from harness import fleet
from harness.load import Load, summarize

from .support import ROOT, sha

pytestmark = pytest.mark.integration

ENV = "fleet"


@pytest.fixture(scope="module")
def config():
    fleet.up(3, echo=lambda line: None)
    config = configuration.load(ROOT, ENV)
    assert config.hosts == tuple(fleet.hosts()), "envs/fleet.env names the fleet's hosts"
    fleet.reset_app(config)
    return config


def everywhere(config) -> operations.Target:
    return operations.Target(config, config.hosts)


def version_on(config, host: str) -> str:
    """The SHA a host's own nginx answers."""
    return requests.get(f"http://{host}:{config.nginx_listen}{config.version_path}", timeout=5).text.strip()


def history_on(config, host: str) -> list[dict]:
    path = fleet.path_on(host, Layout.of(config).history)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def serve_everywhere(config, name: str) -> None:
    """Every host serving `name` (one rollout, if any host is not)."""
    if {version_on(config, host) for host in config.hosts} != {sha(name)}:
        operations.deploy(everywhere(config), sha(name))
    assert {version_on(config, host) for host in config.hosts} == {sha(name)}


def test_a_fleet_deploy_prepares_every_host_first_migrates_once_and_records_one_rollout(config, capsys):
    serve_everywhere(config, "v1")
    capsys.readouterr()
    serving = operations.deploy(everywhere(config), sha("v2"))
    assert serving == {host: sha("v2") for host in config.hosts}
    assert [version_on(config, host) for host in config.hosts] == [sha("v2")] * 3
    out = capsys.readouterr().out
    first_switch = out.index("-> switch to")
    for host in config.hosts:  # every host was ready before any switched: prepared together
        assert out.index(f"[{host}]    ok ready") < first_switch, out
    records = [history_on(config, host)[-1] for host in config.hosts]
    assert {r["outcome"] for r in records} == {"ok"} and {r["sha"] for r in records} == {sha("v2")}
    assert len({r["fleet"] for r in records}) == 1, "one rollout id on every host"
    assert [("migrate" in r["steps"]) for r in records] == [True, False, False], "the migration ran once"
    assert re.search(r"^host\s+before\s+now\s+outcome\s+duration$", out, re.M)


def test_a_failure_in_the_second_batch_switches_the_first_back_under_load(config, capsys):
    """Host 2's nginx is down: its check through nginx fails after its switch. Host 1 (batch 1)
    had switched: it goes back to v2, host 3 never switched. Clients of hosts 1 and 3 see nothing."""
    serve_everywhere(config, "v2")
    one, two, three = config.hosts
    fleet.stop_nginx(two)
    try:
        with Load(one, config.nginx_listen, clients=4, rate=150, min_requests=0) as load_one, \
                Load(three, config.nginx_listen, clients=4, rate=150, min_requests=0) as load_three:
            with pytest.raises(StepFailed, match=two):
                operations.deploy(everywhere(config), sha("v3"), over=operations.Rollout.of("1"))
    finally:
        fleet.start_nginx(two)
    out = capsys.readouterr().out
    assert f"circuit breaker: {two} failed" in out
    assert [version_on(config, host) for host in config.hosts] == [sha("v2")] * 3
    outcomes = [history_on(config, host)[-1]["outcome"] for host in config.hosts]
    assert outcomes == ["rolled back", "failed", "undone"], outcomes
    for load in (load_one, load_three):
        summary = summarize(load.samples)
        assert summary.requests > 100 and summary.failed == 0, summary


def test_a_lock_held_on_one_host_stops_the_rollout_before_any_host_changes(config):
    serve_everywhere(config, "v2")
    before = [history_on(config, host) for host in config.hosts]
    third = operations.Target(config, config.hosts[2:])
    with operations.session(third, config.hosts[2]) as remote:
        held = locking.take(remote, Layout.of(config), "deploy", "held-by-a-test")
        try:
            with pytest.raises(LockHeld, match=config.hosts[2]):
                operations.deploy(everywhere(config), sha("v3"))
        finally:
            held.end(None)
    assert [history_on(config, host) for host in config.hosts] == before, "no host changed"
    for host in config.hosts[:2]:
        with operations.session(everywhere(config), host) as remote:
            assert operations.read_state(remote, config).lock is None, f"{host}'s lock was released"
    assert [version_on(config, host) for host in config.hosts] == [sha("v2")] * 3


def test_promotion_ships_only_what_the_source_served(config):
    serve_everywhere(config, "v2")
    staging = operations.Target(dataclasses.replace(config, env="staging"), config.hosts[:1])
    production = operations.Target(dataclasses.replace(config, env="production"), config.hosts[1:])
    assert not any(r["sha"] == sha("v3") and r["outcome"] == "ok" for r in history_on(config, config.hosts[0]))
    with pytest.raises(DeployError, match=f"staging never served {sha('v3')}"):
        operations.promote(staging, production, sha("v3"))
    assert [version_on(config, host) for host in config.hosts[1:]] == [sha("v2")] * 2
    operations.deploy(staging, sha("v3"))
    assert operations.promote(staging, production, sha("v3")[:8]) == {h: sha("v3") for h in config.hosts[1:]}
    assert [version_on(config, host) for host in config.hosts] == [sha("v3")] * 3
    assert all(history_on(config, h)[-1]["promoted_from"] == "staging" for h in config.hosts[1:])


def test_a_fleet_rollback_leaves_every_host_on_one_version(config):
    serve_everywhere(config, "v2")
    operations.deploy(everywhere(config), sha("v3"))
    assert operations.rollback(everywhere(config)) == {host: sha("v2") for host in config.hosts}
    assert [version_on(config, host) for host in config.hosts] == [sha("v2")] * 3
    # host 3 alone moves on: its previous version is now v2, the others' v3
    operations.deploy(operations.Target(config, config.hosts[2:]), sha("v1"))
    with pytest.raises(DeployError, match="different versions"):
        operations.rollback(everywhere(config))
    assert [version_on(config, host) for host in config.hosts] == [sha("v2"), sha("v2"), sha("v1")]
    operations.rollback(everywhere(config), to=sha("v2"))
    assert [version_on(config, host) for host in config.hosts] == [sha("v2")] * 3
