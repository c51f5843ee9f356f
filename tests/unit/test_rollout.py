"""Several hosts: batches, locks on all or none, one migration, and the circuit breaker, over
in-memory hosts (every command answers 0 unless a test says otherwise)."""
from __future__ import annotations

import dataclasses
import json
import re
import shlex
import time

import pytest
from conftest import StubLease

from deploytasks import lock, locking, operations, progress, registry, rollout
from deploytasks.errors import ConfigError, DeployError, StepFailed
from harness.memory import MemoryTransport

HOSTS = ("10.77.0.11", "10.77.0.12", "10.77.0.13")
SHA = "b" * 40
ACQUIRE = re.compile(re.escape(shlex.quote(lock._ACQUIRE)))
RELEASE = re.compile(re.escape(shlex.quote(lock._RELEASE)))
MIGRATE = re.compile("example-migrate-")
VERIFY = re.compile(r"127\.0\.0\.1:8080/version")
SWITCH = re.compile(r'while \[ "\$#" -gt 1 \].* /srv/example/run/web\.sock ', re.S)  # the switch, and its undo
STOP_NEW = re.compile(r"docker compose -p example-(blue|green) .* (down|rm)")


# --- batches: pure -------------------------------------------------------------------------------

@pytest.mark.parametrize("batch, expected", [
    (None, [["a"], ["b"], ["c"], ["d"]]),
    ("2", [["a", "b"], ["c", "d"]]),
    (3, [["a", "b", "c"], ["d"]]),
    ("50%", [["a", "b"], ["c", "d"]]),
    ("10%", [["a"], ["b"], ["c"], ["d"]]),
    ("100%", [["a", "b", "c", "d"]]),
])
def test_batches_split_the_hosts_in_order(batch, expected):
    assert rollout.batches(["a", "b", "c", "d"], batch) == expected


@pytest.mark.parametrize("batch", ["0", "-1", "x", "0%", "101%", "1.5"])
def test_a_malformed_batch_is_refused(batch):
    with pytest.raises(ConfigError, match="--batch"):
        rollout.batches(["a"], batch)


@pytest.mark.parametrize("wait", ["soon", -1, 3601])
def test_a_malformed_batch_wait_is_refused(wait):
    with pytest.raises(ConfigError, match="--batch-wait"):
        operations.Rollout.of("1", wait)


# --- a deploy to three in-memory hosts -------------------------------------------------------------

@pytest.fixture
def fleet_of(monkeypatch, local_config):
    """Three fresh in-memory hosts; the check through nginx answers the new SHA on each."""
    hosts = {host: MemoryTransport(host).answer(VERIFY, stdout=SHA) for host in HOSTS}
    fast = dataclasses.replace(local_config, health_timeout=1.0, health_interval=0.1)  # failing polls end soon
    monkeypatch.setattr(operations, "connect", lambda config, host, **options: hosts[host])
    monkeypatch.setattr(registry, "missing", lambda images, tag: [])
    monkeypatch.setattr(registry, "tags", lambda image: [SHA, "c" * 40, "latest"])
    monkeypatch.setattr(locking, "Lease", StubLease)
    return hosts, fast


@pytest.fixture
def fleet(fleet_of):
    return fleet_of[0]


@pytest.fixture
def config(fleet_of):
    return fleet_of[1]


def target(config, hosts=HOSTS):
    return operations.Target(config, tuple(hosts))


def history_of(transport: MemoryTransport) -> list[dict]:
    words = [shlex.split(c) for c in transport.commands if "history.jsonl" in c and ">>" in c]
    return [json.loads(w[-1]) for w in words if w[-2].endswith("history.jsonl")]


def first(transport: MemoryTransport, pattern: re.Pattern) -> int:
    return next(i for i, call in enumerate(transport.calls) if isinstance(call, str) and pattern.search(call))


def test_every_host_is_locked_before_any_changes_and_the_migration_runs_once(fleet, config, capsys):
    serving = operations.deploy(target(config), SHA, echo=print)
    assert serving == {host: SHA for host in HOSTS}
    for host, transport in fleet.items():
        assert first(transport, ACQUIRE) < first(transport, re.compile("mkdir -p /srv/example/releases"))
        assert any(RELEASE.search(c) for c in transport.commands), f"{host} released its lock"
    assert [sum(bool(MIGRATE.search(c)) for c in t.commands) for t in fleet.values()] == [1, 0, 0]
    records = [history_of(t)[-1] for t in fleet.values()]
    assert {r["outcome"] for r in records} == {"ok"} and len({r["fleet"] for r in records}) == 1
    out = capsys.readouterr().out
    assert re.search(r"^host\s+before\s+now\s+outcome\s+duration$", out, re.M), out
    assert all(re.search(rf"^{re.escape(h)}\s+-\s+bbbbbbbbbbbb\s+ok\s", out, re.M) for h in HOSTS), out
    assert "batch 3 of 3: 10.77.0.13" in out


def test_a_lock_held_on_one_host_changes_no_host_and_releases_the_others(fleet, config):
    fleet[HOSTS[2]].answer(ACQUIRE, exited=lock.HELD_EXIT, stdout="")
    with pytest.raises(DeployError):
        operations.deploy(target(config), SHA)
    for host, transport in fleet.items():
        assert not any("releases/" in c and "mkdir" in c for c in transport.commands), f"{host} was changed"
    assert all(any(RELEASE.search(c) for c in fleet[h].commands) for h in HOSTS[:2]), "the locks taken are released"
    assert not any(RELEASE.search(c) for c in fleet[HOSTS[2]].commands)


def test_a_failure_in_the_second_batch_switches_the_first_back_and_undoes_the_third(fleet, config, capsys):
    fleet[HOSTS[1]].answer(VERIFY, exited=22, stderr="curl: (22) 502", first=True)
    with pytest.raises(StepFailed, match=HOSTS[1]):
        operations.deploy(target(config), SHA, over=operations.Rollout.of("1"), echo=print)
    one, two, three = (fleet[h] for h in HOSTS)
    switches = [i for i, c in enumerate(one.calls) if isinstance(c, str) and SWITCH.search(c)]
    assert len(switches) == 2, "host 1 switched, then switched back"
    assert not any(SWITCH.search(c) for c in three.commands), "host 3 never switched"
    assert [history_of(t)[-1]["outcome"] for t in (one, two, three)] == ["rolled back", "failed", "undone"]
    assert history_of(one)[-1]["reason"].startswith(f"{HOSTS[1]} failed")
    out = capsys.readouterr().out
    assert f"circuit breaker: {HOSTS[1]} failed" in out
    assert re.search(rf"^{re.escape(HOSTS[0])}\s+-\s+-\s+rolled back\s", out, re.M), out


def test_no_rollback_keeps_the_switched_hosts_on_the_new_version(fleet, config, capsys):
    fleet[HOSTS[1]].answer(VERIFY, exited=22, first=True)
    with pytest.raises(StepFailed):
        operations.deploy(target(config), SHA, over=operations.Rollout.of("1", rollback=False), echo=print)
    one, two, three = (history_of(fleet[h])[-1] for h in HOSTS)
    assert (one["outcome"], two["outcome"], three["outcome"]) == ("ok", "failed", "undone")
    assert one["kept_after"].startswith(f"{HOSTS[1]} failed")
    assert re.search(rf"^{re.escape(HOSTS[0])}\s+-\s+bbbbbbbbbbbb\s+kept\s", capsys.readouterr().out, re.M)


def test_a_failure_while_preparing_switches_no_host(fleet, config):
    fleet[HOSTS[2]].answer(re.compile(r"docker compose -p example-blue .* pull"), exited=1, stderr="manifest unknown")
    with pytest.raises(StepFailed, match="pull"):
        operations.deploy(target(config), SHA, over=operations.Rollout.of("100%"))
    assert not any(SWITCH.search(c) for t in fleet.values() for c in t.commands)
    assert [history_of(fleet[h])[-1]["outcome"] for h in HOSTS] == ["undone", "undone", "failed"]


def test_maintenance_window_deploys_refuse_several_hosts_before_connecting(fleet, config):
    with pytest.raises(ConfigError, match="one host at a time"):
        operations.deploy(target(config), SHA, window=True)
    assert all(t.calls == [] for t in fleet.values())


# --- promotion ------------------------------------------------------------------------------------

READ_STATE = re.compile(r'tail -n 200 "\$history"')


@pytest.fixture
def stages(fleet_of, monkeypatch):
    """staging on the first in-memory host, production on the other two."""
    fleet, config = fleet_of
    staging = operations.Target(dataclasses.replace(config, env="staging"), HOSTS[:1])
    production = operations.Target(dataclasses.replace(config, env="production"), HOSTS[1:])
    return fleet, staging, production


def served(sha: str, outcome: str = "ok") -> str:
    return "history " + json.dumps({"kind": "deploy", "sha": sha, "outcome": outcome}) + "\n"


def test_promote_refuses_a_sha_the_source_never_served(stages):
    fleet, staging, production = stages
    fleet[HOSTS[0]].answer(READ_STATE, stdout=served(SHA, outcome="failed"))
    with pytest.raises(DeployError, match=f"staging never served {SHA}.*--force skips"):
        operations.promote(staging, production, SHA)
    assert all(t.calls == [] for t in (fleet[h] for h in HOSTS[1:])), "production untouched"


def test_promote_deploys_what_the_source_served_and_records_where_it_came_from(stages):
    fleet, staging, production = stages
    fleet[HOSTS[0]].answer(READ_STATE, stdout=served(SHA))
    assert operations.promote(staging, production, SHA[:7]) == {h: SHA for h in HOSTS[1:]}, "the full SHA"
    assert not any(ACQUIRE.search(c) for c in fleet[HOSTS[0]].commands), "staging only read, never locked"
    for host in HOSTS[1:]:
        assert history_of(fleet[host])[-1]["promoted_from"] == "staging"


def test_promote_force_skips_the_history_check_and_says_so_in_the_history(stages):
    fleet, staging, production = stages
    operations.promote(staging, production, SHA, force=True)
    assert fleet[HOSTS[0]].calls == [], "the source is not even read"
    assert history_of(fleet[HOSTS[1]])[-1]["forced"] is True


def test_promote_refuses_environments_that_name_other_images(stages):
    fleet, staging, production = stages
    other = dataclasses.replace(production.config, images={"web": "registry.example.com/other/web"})
    with pytest.raises(ConfigError) as refused:
        operations.promote(staging, operations.Target(other, HOSTS[1:]), SHA, force=True)
    assert "IMAGE_WEB: staging has 127.0.0.1:5000/example/web, production registry.example.com/other/web" in \
        refused.value.details
    assert all(t.calls == [] for t in fleet.values())


def test_a_fleet_rollback_to_different_versions_is_refused(fleet, config):
    older, old = "c" * 40, "d" * 40
    for host, previous in zip(HOSTS, (older, old, old)):
        fleet[host].answer(READ_STATE, stdout=(
            f"live blue/web.sock\ncolour blue ../releases/20260101T000000Z-{SHA}\n"
            f"colour green ../releases/20250101T000000Z-{previous}\n"
            f"release 20260101T000000Z-{SHA}\nrelease 20250101T000000Z-{previous}\n"
            + served(older) + served(old) + served(SHA)))
    with pytest.raises(DeployError, match=f"different versions .*rollback --to {old}"):
        operations.rollback(target(config))
    assert not any(c for t in fleet.values() for c in t.commands if "docker compose" in c)


def test_status_of_a_fleet_shows_the_hosts_side_by_side_and_flags_a_difference(fleet, config, capsys):
    for host, sha in zip(HOSTS, (SHA, SHA, "c" * 40)):
        fleet[host].answer(READ_STATE, stdout=f"live blue/web.sock\ncolour blue ../releases/20260101T000000Z-{sha}\n"
                                              f"release 20260101T000000Z-{sha}\n" + served(sha))
    with pytest.raises(DeployError) as attention:
        operations.status(target(config))
    out = capsys.readouterr().out
    assert re.search(r"^host\s+serving\s+colour\s+maintenance\s+lock\s+last deploy$", out, re.M), out
    assert re.search(rf"^{re.escape(HOSTS[2])}\s+cccccccccccc\s+blue\s+off\s+-\s+deploy cccccccccccc ok$", out, re.M)
    assert "!! the hosts serve different versions: bbbbbbbbbbbb, cccccccccccc" in out
    assert any("serve different versions" in line for line in attention.value.details)


def test_status_of_a_fleet_on_one_version_exits_zero(fleet, config, capsys):
    for host in HOSTS:
        fleet[host].answer(READ_STATE, stdout=f"live blue/web.sock\ncolour blue ../releases/20260101T000000Z-{SHA}\n"
                                              f"release 20260101T000000Z-{SHA}\n" + served(SHA))
    operations.status(target(config))
    assert "different versions" not in capsys.readouterr().out


def test_a_switch_back_that_fails_is_recorded_as_not_undone(fleet, config):
    """Host 1 cannot be switched back after host 2 failed: its history and marker say it needs a repair."""
    fleet[HOSTS[1]].answer(VERIFY, exited=22, first=True)
    fleet[HOSTS[0]].answer(re.compile(r"sh '' /srv/example/run/web\.sock"), exited=1, stderr="Read-only", first=True)
    with pytest.raises(StepFailed):
        operations.deploy(target(config), SHA, over=operations.Rollout.of("1"))
    record = history_of(fleet[HOSTS[0]])[-1]
    assert record["outcome"] == "failed, not undone" and "switch" in record["failed_after"]
    marker = [c for c in fleet[HOSTS[0]].commands if "state/deploying" in c][-1]
    assert progress.UNDO_FAILED in marker, marker


def test_no_host_starts_its_new_colour_before_the_migration_has_run(fleet, config):
    """As on one host: the new version never boots on the old schema, on any host."""
    seen: list[tuple[str, str]] = []
    start = re.compile(r"docker compose -p example-blue .* up -d")

    def slow_migration(host):
        time.sleep(0.5)  # a start that did not wait for it would come in between
        seen.append((host, "migrated"))

    for host, transport in fleet.items():
        transport.on(MIGRATE, lambda host=host: slow_migration(host))
        transport.on(start, lambda host=host: seen.append((host, "start")))
    operations.deploy(target(config), SHA)
    assert seen[0] == (HOSTS[0], "migrated") and sorted(seen[1:]) == [(h, "start") for h in HOSTS], seen


def test_a_failing_migration_starts_no_host(fleet, config):
    fleet[HOSTS[0]].answer(MIGRATE, exited=1, stderr="relation does not exist", first=True)
    with pytest.raises(StepFailed, match="migrat|example-migrate"):
        operations.deploy(target(config), SHA)
    started = [t.host for t in fleet.values() for c in t.commands if re.search(r"up -d", c) and "example-blue" in c]
    assert not started, started
    assert [history_of(fleet[h])[-1]["outcome"] for h in HOSTS] == ["failed", "undone", "undone"]
