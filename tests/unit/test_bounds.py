"""Bounds: every remote command class has a timeout from the configuration, set on its Cmd by the
plan builders (plain data; the executor enforces it)."""
from __future__ import annotations

import dataclasses

import pytest
from conftest import (REL_NEW, REPO, SHA_NEW, container_deploy, container_rollback, process_deploy, raw_of,
                      replace_keys, GOOD_ENV, make_root, step_named)

from deploytasks import config as configuration
from deploytasks import keys
from deploytasks.backends.containers import UP_MARGIN
from deploytasks.errors import ConfigError
from deploytasks.plan import Cmd, Plan, Step, cmd
from deploytasks.source import Source

CODE = Source(SHA_NEW, b"tar of the new code", "req0123456789abc", "bld0123456789abc")


def _cmds(plan: Plan) -> list[Cmd]:
    return [a for step in plan.steps for a in (*step.actions, *step.undo, *step.diagnose) if isinstance(a, Cmd)]


def _bound(action: Cmd) -> tuple[float | None, str]:
    return action.timeout, action.timeout_key


def _configured(config, key: str) -> float:
    """A key's value as the plan builders read it (process keys live on config.processes)."""
    owner = config.processes if keys.BY_NAME[key].group == keys.PROCESSES else config
    return getattr(owner, key.lower())


# --- the configuration ---------------------------------------------------------------------------

def test_defaults(local_raw):
    raw = {k: v for k, v in local_raw.items() if not k.startswith("TIMEOUT_")}
    config = configuration.parse(REPO, "local", raw, {})
    assert (config.timeout_command, config.timeout_pull, config.timeout_migrate) == (120, 600, 1800)
    assert config.timeout_stop == config.drain_timeout + 30 == 40, "derived: DRAIN_TIMEOUT + 30"
    assert (config.ssh_alive_seconds, config.ssh_alive_count) == (5, 3)


def test_process_defaults(process_config):
    assert (process_config.processes.timeout_dependencies, process_config.processes.timeout_build) == (900, 1800)


def test_every_bound_is_read(tmp_path):
    text = replace_keys(GOOD_ENV, TIMEOUT_COMMAND="30", TIMEOUT_PULL="90.5", TIMEOUT_MIGRATE="3600", TIMEOUT_STOP="75",
                        SSH_ALIVE_SECONDS="2", SSH_ALIVE_COUNT="4")
    config = configuration.parse(make_root(tmp_path, {}), "t", raw_of(text), {})
    assert (config.timeout_command, config.timeout_pull, config.timeout_migrate, config.timeout_stop) == (30, 90.5, 3600, 75)
    assert (config.ssh_alive_seconds, config.ssh_alive_count) == (2, 4)


def test_a_stop_bound_shorter_than_the_graceful_stop_is_refused(tmp_path):
    root = make_root(tmp_path, {"t": replace_keys(GOOD_ENV, DRAIN_TIMEOUT="30", TIMEOUT_STOP="35")})
    with pytest.raises(ConfigError) as caught:
        configuration.load(root, "t", environ={})
    assert caught.value.details == ["TIMEOUT_STOP: 35 leaves no time to stop a colour: it gets DRAIN_TIMEOUT + 5 = 35s "
                                    "before SIGKILL"]


@pytest.mark.parametrize("key, bad, problem", [
    ("TIMEOUT_PULL", "0", "TIMEOUT_PULL: 0 is out of range 1..86400"),
    ("TIMEOUT_STOP", "soon", "TIMEOUT_STOP: 'soon' is not a number"),
    ("SSH_ALIVE_COUNT", "2.5", "SSH_ALIVE_COUNT: '2.5' is not a whole number"),
])
def test_bad_bounds_are_reported_by_key(tmp_path, key, bad, problem):
    root = make_root(tmp_path, {"t": replace_keys(GOOD_ENV, **{key: bad})})
    with pytest.raises(ConfigError) as caught:
        configuration.load(root, "t", environ={})
    assert problem in caught.value.details


# --- the plans -----------------------------------------------------------------------------------

def test_container_deploy_bounds_each_command_class(local_config, blue_live_state):
    plan = container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW)
    (pull,) = step_named(plan, "pull images").actions
    (stateful,) = step_named(plan, "stateful services").actions
    (migrate,) = step_named(plan, "migrate").actions
    start = step_named(plan, "start green")
    drain = step_named(plan, "drain blue")
    assert _bound(pull) == (600, "TIMEOUT_PULL") and pull.argv[-2:] == ("pull", "web")
    assert _bound(stateful) == (600, "TIMEOUT_PULL"), "its first start pulls the stateful images"
    assert _bound(migrate) == (1800, "TIMEOUT_MIGRATE")
    up = start.actions[-1]
    assert up.argv[-3:] == ("--wait-timeout", "60", "web") and _bound(up) == (60 + UP_MARGIN, "HEALTH_TIMEOUT"), \
        "a little above compose's own --wait-timeout"
    assert [_bound(c) for c in start.undo] == [(40, "TIMEOUT_STOP")]
    # the wait for the old colour's connections (DRAIN_TIMEOUT + 30), then its stop
    assert [_bound(a) for a in drain.actions if isinstance(a, Cmd)] == [(10 + 30, "DRAIN_TIMEOUT"), (40, "TIMEOUT_STOP")]
    # the watch after the switch: MONITOR_SECONDS and a margin
    (watch,) = step_named(plan, "watch 2s").actions
    assert _bound(watch) == (2 + 30, "MONITOR_SECONDS")
    # the rest (links, nginx, probe, cleanup, diagnostics) get TIMEOUT_COMMAND from the executor
    bounded = {id(c) for c in (pull, stateful, migrate, up, watch, *start.undo, *drain.actions)}
    assert all(c.timeout is None for c in _cmds(plan) if id(c) not in bounded)


def test_container_rollback_bounds_the_start_and_the_drain(local_config, green_live_state):
    plan = container_rollback(local_config, green_live_state)
    start = step_named(plan, "start blue")
    assert _bound(start.actions[0]) == (90, "HEALTH_TIMEOUT") and _bound(start.undo[0]) == (40, "TIMEOUT_STOP")
    drain = step_named(plan, "drain green").actions
    assert _bound(drain[1]) == (40, "DRAIN_TIMEOUT") and _bound(drain[-1]) == (40, "TIMEOUT_STOP")


@pytest.mark.parametrize("supervisor", ["pidfile", "systemd"])
def test_process_deploy_bounds_each_command_class(process_config, blue_live_state, supervisor):
    config = dataclasses.replace(process_config, processes=dataclasses.replace(process_config.processes,
                                                                               supervisor=supervisor))
    plan = process_deploy(config, blue_live_state, CODE, REL_NEW)
    assert [_bound(a) for a in step_named(plan, "dependencies").actions] == [(900, "TIMEOUT_DEPENDENCIES")]
    assert [_bound(a) for a in step_named(plan, "build").actions] == [(1800, "TIMEOUT_BUILD")]
    assert [_bound(a) for a in step_named(plan, "migrate").actions] == [(1800, "TIMEOUT_MIGRATE")]
    stop = (40, "TIMEOUT_STOP")
    assert [_bound(a) for a in step_named(plan, "drain blue").actions if isinstance(a, Cmd)] == \
        [(10 + 30, "DRAIN_TIMEOUT"), stop]
    start = step_named(plan, "start green")
    assert [_bound(a) for a in start.undo] == [stop]
    starting = [_bound(a) for a in start.actions if isinstance(a, Cmd) and a.argv[:1] in (("systemctl",), ("sh",))]
    if supervisor == "systemd":  # a restart stops the colour first, if it runs
        assert starting == [(None, ""), (None, ""), stop]  # daemon-reload, enable, restart
    else:  # stop what may run, then start it in the background (the stop script runs under sh -c)
        assert starting == [stop, (None, "")]


@pytest.mark.parametrize("kind", ["containers", "processes"])
def test_every_bound_names_the_key_it_comes_from(local_config, process_config, blue_live_state, kind):
    if kind == "containers":
        config, plan = local_config, container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW)
    else:
        config, plan = process_config, process_deploy(process_config, blue_live_state, CODE, REL_NEW)
    bounded = [c for c in _cmds(plan) if c.timeout is not None]
    assert len(bounded) >= 5
    for action in bounded:
        if action.timeout_key == "HEALTH_TIMEOUT":
            assert action.timeout == config.health_timeout + UP_MARGIN
        elif action.timeout_key == "DRAIN_TIMEOUT":  # the drain's wait for open connections, and a margin
            assert action.timeout == config.drain_timeout + 30
        elif action.timeout_key == "MONITOR_SECONDS":  # the watch after the switch, and a margin
            assert action.timeout == config.monitor_seconds + 30
        else:
            assert action.timeout_key.startswith("TIMEOUT_") and action.timeout_key in keys.BY_NAME
            assert action.timeout == _configured(config, action.timeout_key), action


def test_describe_shows_each_bound():
    plan = Plan("deploy", "abc1234", (Step("pull", (
        cmd("docker", "compose", "pull", "web").bounded(600, "TIMEOUT_PULL"),
        cmd("docker", "network", "create", "n", unless=("docker", "network", "inspect", "n")).bounded(30, "TIMEOUT_COMMAND"),
        cmd("true"),
    )),))
    assert plan.describe() == [
        "1. pull",
        "     docker compose pull web    # timeout: 600s (TIMEOUT_PULL)",
        "     docker network create n    # unless: docker network inspect n; timeout: 30s (TIMEOUT_COMMAND)",
        "     true",
    ]


def test_a_bound_leaves_the_command_as_it_was():
    plain = cmd("docker", "compose", "pull", stream=True, unless=("true",))
    bounded = plain.bounded(600, "TIMEOUT_PULL")
    assert (bounded.argv, bounded.unless, bounded.stream) == (plain.argv, plain.unless, plain.stream)
    assert plain.timeout is None and plain.timeout_key == ""
