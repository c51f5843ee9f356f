"""Plans: what a deploy or rollback will run, as data (no host needed to check it)."""
from __future__ import annotations

import dataclasses
import shlex
import sys

import pytest
from conftest import container_deploy, container_rollback, REL_NEW, REL_OLD, REPO, SHA_NEW, SHA_OLD, links, step_named as _step, step_names as _names

from deploytasks import config as configuration
from deploytasks import facts, releases, traffic
from deploytasks.backends import containers
from deploytasks.errors import DeployError
from deploytasks.facts import HostState
from deploytasks.layout import Layout
from deploytasks.plan import Cmd, Plan, Poll, Put, Step, Wait, cmd, sh
from deploytasks.tracked import tracked

ROOT = "/srv/example"
HOSTILE_APP_ENV = {
    "SECRET_KEY": "s3cr3t-$(rm -rf /)-value",
    "DB_PASSWORD": "pa ss'; drop table users; --",
    "WEIRD": "a b\t`id` $HOME #not-a-comment \"q\" 'q'",
    "GREETING": "hello; reboot",
}



def _all_cmds(plan: Plan) -> list[Cmd]:
    out = []
    for step in plan.steps:
        out += [a for a in step.actions if isinstance(a, Cmd)]
        out += list(step.undo) + list(step.diagnose)
    return out


def _argvs(plan: Plan) -> list[tuple[str, ...]]:
    argvs = []
    for step in plan.steps:
        for action in (*step.actions, *step.undo, *step.diagnose):
            if isinstance(action, (Cmd, Poll)):
                argvs.append(action.argv)
            if isinstance(action, Cmd) and action.unless:
                argvs.append(action.unless)
    return argvs


@pytest.fixture
def hostile_config(local_raw):
    """The local environment, with hostile app values passed through from the process environment."""
    raw = dict(local_raw, APP_ENV_PASSTHROUGH=",".join(HOSTILE_APP_ENV),
               MIGRATE_COMMAND="python3 -c 'import app; app.migrate(\"all; now\")'")
    return configuration.parse(REPO, "local", raw, dict(HOSTILE_APP_ENV))


# --- deploy -----------------------------------------------------------------------------

def test_first_deploy_starts_blue_without_drain(local_config, first_state):
    plan = container_deploy(local_config, first_state, SHA_NEW, REL_NEW)
    assert plan.kind == "deploy" and plan.sha == SHA_NEW
    assert plan.summary == {"colour": "blue", "release": REL_NEW, "previous": None, "window": False,
                            "probe_interval": None}, "a first deploy has no switch between versions to probe"
    # nothing to route to before the switch: the site is installed right after it (no 502 window)
    assert _names(plan) == ["prepare", "upload release", "pull images", "networks", "stateful services",
                            "migrate", "start blue", "ready: blue", "switch to blue", "nginx site", "check through nginx",
                            "cleanup (0 old release(s))"]
    assert not any(s.name.startswith("drain") for s in plan.steps)
    switch = _step(plan, "switch to blue")
    assert links(switch.actions)[1] == ("blue/web.sock", f"{ROOT}/run/web.sock")
    # nothing served before: undoing removes the links instead of pointing them anywhere
    assert links(switch.undo) == [(None, f"{ROOT}/run/web.sock"), (None, f"{ROOT}/state/blue"), (None, f"{ROOT}/current")]


def test_second_deploy_starts_green_switches_and_drains_blue(local_config, blue_live_state):
    plan = container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW)
    assert plan.summary == {"colour": "green", "release": REL_NEW, "previous": SHA_OLD, "window": False,
                            "probe_interval": 0.1}
    names = _names(plan)
    assert names == ["prepare", "upload release", "pull images", "networks", "stateful services", "nginx site",
                     "migrate", "start green", "ready: green", "probe 10/s through nginx", "switch to green", "check through nginx", "watch 2s",
                     "drain blue", "cleanup (0 old release(s))"]
    # everything before the switch happens beside the live colour
    assert names.index("ready: green") < names.index("switch to green") < names.index("drain blue")

    switch = _step(plan, "switch to green")
    # what the colour runs first: a crash before the next rename leaves the host truthful
    assert len(switch.actions) == 1, "one round trip"
    assert links(switch.actions) == [
        (f"../releases/{REL_NEW}", f"{ROOT}/state/green"),
        ("green/web.sock", f"{ROOT}/run/web.sock"),
        (f"releases/{REL_NEW}", f"{ROOT}/current"),
    ]
    assert links(switch.undo) == [
        ("blue/web.sock", f"{ROOT}/run/web.sock"),
        (None, f"{ROOT}/state/green"),
        (f"releases/{REL_OLD}", f"{ROOT}/current"),
    ]
    assert switch.undo[-1] == cmd("sleep", "1"), \
        "traffic put back settles, as in drain, before the undo of the start stops the new colour"

    drain = _step(plan, "drain blue")
    assert drain.best_effort
    settle, connections, stop = drain.actions
    assert isinstance(settle, Wait)
    old = f"{ROOT}/releases/{REL_OLD}"
    blue = ("docker", "compose", "-p", "example-blue", "--env-file", f"{old}/compose.env",
            "-f", f"{old}/compose/compose.yml", "-f", f"{old}/compose.deploy.yml")
    # until the connections blue's web container holds on the socket it bound end, or DRAIN_TIMEOUT passes
    script, _, socket_path, limit, *owners = connections.argv[2:]
    assert script == traffic._DRAIN and limit == "10" and socket_path == "/run/deploytasks/web.sock"
    assert tuple(owners) == sh('docker top "$("$@")" -eo pid', *blue, "ps", "-q", "web")
    assert stop.argv == (*blue, "stop", "-t", "15", "web")


def test_deploy_commands_target_the_new_colour_and_release(local_config, blue_live_state):
    plan = container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW)
    new = f"{ROOT}/releases/{REL_NEW}"
    compose_prefix = ("docker", "compose", "-p", "example-green", "--env-file", f"{new}/compose.env",
                      "-f", f"{new}/compose/compose.yml", "-f", f"{new}/compose.deploy.yml")
    pull = _step(plan, "pull images").actions[0]
    assert pull.argv == (*compose_prefix, "pull", "web") and pull.stream
    migrate = _step(plan, "migrate")
    name = f"example-migrate-{REL_NEW.lower()}"  # the one-off container, named so the lock can find it
    assert migrate.actions[0].argv == tracked(Layout.of(local_config), f"migrate-{REL_NEW}", "migration", (
        *compose_prefix, "run", "--rm", "--name", name, "--no-deps", "-T", "web", "python3", "/app/app.py", "migrate"),
        container=name)
    assert migrate.actions[0].stream and migrate.outlives_connection and not migrate.undo
    start = _step(plan, "start green")
    assert start.actions[0].argv == ("rm", "-f", f"{ROOT}/run/green/web.sock")
    assert start.actions[-1].argv == (*compose_prefix, "up", "-d", "--no-deps", "--force-recreate", "--wait",
                                     "--wait-timeout", "60", "web")
    assert start.undo[0].argv == (*compose_prefix, "rm", "-f", "-s", "web")
    assert start.diagnose  # logs are shown when the new colour does not come up
    stateful = _step(plan, "stateful services").actions[0].argv
    assert stateful[:4] == ("docker", "compose", "-p", "example") and stateful[-4:] == ("up", "-d", "--no-recreate", "db")
    networks = _step(plan, "networks").actions
    assert [(n.argv, n.unless) for n in networks] == [
        (("docker", "network", "create", "example_default"), ("docker", "network", "inspect", "example_default"))]
    ready = _step(plan, "ready: green").actions[0]
    assert isinstance(ready, Poll) and f"{ROOT}/run/green/web.sock" in ready.argv
    check = _step(plan, "check through nginx").actions[0]
    assert check.expect == SHA_NEW and "http://127.0.0.1:8080/version" in check.argv
    assert _step(plan, "prepare").undo == (cmd("rm", "-rf", new),)


def test_uploads_are_inside_the_release_and_app_env_is_secret(local_config, first_state):
    plan = container_deploy(local_config, first_state, SHA_NEW, REL_NEW)
    new = f"{ROOT}/releases/{REL_NEW}"
    upload = _step(plan, "upload release")
    mkdir, puts = upload.actions[0], upload.actions[1:]
    assert all(isinstance(p, Put) for p in puts)
    paths = {p.path: p for p in puts}
    assert set(paths) == {f"{new}/compose/compose.yml", f"{new}/compose.deploy.yml", f"{new}/compose.env",
                          f"{new}/app.env", f"{new}/RELEASE.json"}
    assert mkdir.argv == ("mkdir", "-p", new, f"{new}/compose")
    app_env = paths[f"{new}/app.env"]
    assert app_env.secret and app_env.mode == 0o600
    assert b"local-testbed-not-a-secret" in app_env.content
    assert all(not p.secret and p.mode == 0o644 for path, p in paths.items() if path != f"{new}/app.env")
    assert paths[f"{new}/compose/compose.yml"].content == (REPO / "compose" / "compose.yml").read_bytes()


def test_no_migrate_removes_the_migrate_step(local_config, blue_live_state):
    with_migrate = container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW)
    without = container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW, migrate=False)
    assert "migrate" in _names(with_migrate)
    assert _names(without) == [n for n in _names(with_migrate) if n != "migrate"]
    assert not any("migrate" in arg for argv in _argvs(without) for arg in argv)


def test_no_migrate_command_means_no_migrate_step(local_config, first_state):
    config = dataclasses.replace(local_config, migrate_command=())
    assert "migrate" not in _names(container_deploy(config, first_state, SHA_NEW, REL_NEW))


def test_no_stateful_services_means_no_stateful_step(local_config, first_state):
    config = dataclasses.replace(local_config, stateful=())
    assert "stateful services" not in _names(container_deploy(config, first_state, SHA_NEW, REL_NEW))


def test_cleanup_step_removes_only_old_releases(local_config):
    old = tuple(f"2023010{i}T000000Z-{i:07d}" for i in range(1, 8))  # 7 releases, blue serves the last
    state = HostState(colours={"blue": old[-1], "green": old[-2]}, live="blue", current=old[-1], releases=old)
    plan = container_deploy(local_config, state, SHA_NEW, REL_NEW)
    cleanup = plan.steps[-1]
    assert cleanup.best_effort and cleanup.name == "cleanup (3 old release(s))"
    assert cleanup.actions[0] == cmd("rm", "-rf", *(f"{ROOT}/releases/{r}" for r in old[:3]))
    prune = cleanup.actions[1].argv
    assert prune[:4] == ("sh", "-c", containers._REMOVE_IMAGES, "sh")
    assert prune[4:] == tuple(f"127.0.0.1:5000/example/web:{i:07d}" for i in (1, 2, 3)), "their images go too"


# --- every argv is plain data and survives the shell -------------------------------------------

def test_every_argv_is_str_and_round_trips_through_the_shell(hostile_config, blue_live_state):
    plan = container_deploy(hostile_config, blue_live_state, SHA_NEW, REL_NEW)
    argvs = _argvs(plan)
    assert len(argvs) > 15
    for argv in argvs:
        assert isinstance(argv, tuple) and argv and all(type(a) is str for a in argv), argv
        assert shlex.split(shlex.join(argv)) == list(argv)
    # the migrate command's own quoting survives as separate arguments
    migrate = _step(plan, "migrate").actions[0].argv
    assert migrate[-3:] == ("python3", "-c", 'import app; app.migrate("all; now")')


def test_hostile_app_values_go_only_into_the_secret_app_env(hostile_config, blue_live_state):
    plan = container_deploy(hostile_config, blue_live_state, SHA_NEW, REL_NEW)
    joined = "\n".join(shlex.join(argv) for argv in _argvs(plan))
    puts = [a for s in plan.steps for a in s.actions if isinstance(a, Put)]
    for value in HOSTILE_APP_ENV.values():
        assert value not in joined
        carriers = [p for p in puts if value.encode() in p.content or _quoted(value).encode() in p.content]
        assert [p.path for p in carriers] == [f"{ROOT}/releases/{REL_NEW}/app.env"]
        assert carriers[0].secret


def _quoted(value: str) -> str:
    from deploytasks.backends.compose import _quote

    return _quote(value)


# --- describe --------------------------------------------------------------------------------

def test_describe_shows_every_command_and_no_secret(hostile_config, blue_live_state):
    plan = container_deploy(hostile_config, blue_live_state, SHA_NEW, REL_NEW)
    lines = plan.describe()
    text = "\n".join(lines)
    assert hostile_config.secrets()  # the test means something only if there are secrets
    for value in HOSTILE_APP_ENV.values():
        assert value not in text
    assert "<secret values not shown>" in text
    for number, step in enumerate(plan.steps, 1):
        assert f"{number}. {step.name}" in lines
        for action in step.actions:
            assert f"     {action}" in text
        for undo in step.undo:
            assert f"     undo: {undo}" in lines
    # every command that can change the host (actions, their `unless` guards, undos) is shown;
    # `diagnose` commands (read-only ps/logs run after a failure) are not part of the description
    for step in plan.steps:
        for action in (*step.actions, *step.undo):
            if isinstance(action, (Cmd, Poll)):
                assert shlex.join(action.argv) in text
            if isinstance(action, Cmd) and action.unless:
                assert shlex.join(action.unless) in text


def test_describe_previews_public_files_only():
    plan = Plan("deploy", "abc1234", (Step("upload", (
        Put("/a", b"line one\nline two\n"),
        Put("/b", b"TOKEN=abc\n", mode=0o600, secret=True),
        Put("/c", b"\xff\xfe"),
        Wait(1.5, "settle"),
        cmd("echo", "hi there", unless=("test", "-e", "/x")),
    ), undo=(cmd("rm", "-f", "/a"),)),))
    assert plan.describe() == [
        "1. upload",
        "     put /a (mode 0644, 18 bytes)",
        "       | line one",
        "       | line two",
        "     put /b (mode 0600, 10 bytes)",
        "       | <secret values not shown>",
        "     put /c (mode 0644, 2 bytes)",
        "       | <binary>",
        "     wait 1.5s (settle)",
        "     echo 'hi there'    # unless: test -e /x",
        "     undo: rm -f /a",
    ]


def test_cmd_and_sh_helpers():
    assert cmd("a", 1, 2.5).argv == ("a", "1", "2.5")
    assert sh("echo \"$1\"", "x; y") == ("sh", "-c", "echo \"$1\"", "sh", "x; y")
    poll = Poll(("curl", "http://x"), 30, 0.5, expect="abc")
    assert str(poll) == "poll every 0.5s for 30s until it succeeds and prints 'abc': curl http://x"


# --- rollback --------------------------------------------------------------------------------

def test_rollback_with_nothing_deployed(local_config, first_state):
    with pytest.raises(DeployError, match="nothing is deployed"):
        container_rollback(local_config, first_state)


def test_rollback_without_a_release_on_the_other_side(local_config, blue_live_state):
    with pytest.raises(DeployError, match="no previous release on the green side"):
        container_rollback(local_config, blue_live_state)


def test_rollback_when_the_other_release_was_pruned(local_config):
    state = HostState(colours={"blue": REL_OLD, "green": REL_NEW}, live="green", current=REL_NEW, releases=(REL_NEW,))
    with pytest.raises(DeployError, match="no previous release on the blue side"):
        container_rollback(local_config, state)


def test_rollback_starts_the_other_colour_without_recreate_pull_or_migrate(local_config):
    state = HostState(colours={"blue": REL_OLD, "green": REL_NEW}, live="green", current=REL_NEW,
                      releases=(REL_OLD, REL_NEW))
    plan = container_rollback(local_config, state)
    assert plan.kind == "rollback" and plan.sha == SHA_OLD
    assert plan.summary == {"colour": "blue", "release": REL_OLD, "previous": SHA_NEW, "probe_interval": 0.1}
    assert _names(plan) == ["start blue", "ready: blue", "probe 10/s through nginx", "switch to blue", "check through nginx", "watch 2s", "drain green"]
    old = f"{ROOT}/releases/{REL_OLD}"
    start = _step(plan, "start blue").actions
    assert len(start) == 1, "a colour still running keeps its socket: nothing is removed"
    up = start[0].argv
    assert up[:4] == ("docker", "compose", "-p", "example-blue") and f"{old}/compose.deploy.yml" in up
    assert "up" in up and "--force-recreate" not in up
    assert _step(plan, "start blue").undo[0].argv[-4:] == ("stop", "-t", "5", "web")
    every = [a for argv in _argvs(plan) for a in argv]
    assert "pull" not in every and "migrate" not in every and "run" not in every
    switch = _step(plan, "switch to blue")
    assert links(switch.actions)[1] == ("blue/web.sock", f"{ROOT}/run/web.sock")
    assert links(switch.undo)[:2] == [("green/web.sock", f"{ROOT}/run/web.sock"),
                                      (f"../releases/{REL_OLD}", f"{ROOT}/state/blue")]
    drain = _step(plan, "drain green").actions[-1].argv
    assert drain[:4] == ("docker", "compose", "-p", "example-green") and "stop" in drain and f"{ROOT}/releases/{REL_NEW}/compose.env" in drain


# --- releases -------------------------------------------------------------------------------

def _rel(i: int) -> str:
    return f"202401{i:02d}T000000Z-{i:07x}"


def test_release_name_and_sha():
    from deploytasks.facts import release_sha

    assert releases.name("abc1234", now=0) == "19700101T000000Z-abc1234"
    assert release_sha("19700101T000000Z-abc1234") == "abc1234"
    assert release_sha(None) is None


def test_check_sha():
    from deploytasks.errors import ConfigError
    from deploytasks.shas import check, same

    assert check(" ABCDEF1 ") == "abcdef1"
    for bad in ("", "abc", "xyz1234", "a" * 41, "abc1234; id"):
        with pytest.raises(ConfigError, match="not a git SHA"):
            check(bad)
    assert same("abcdef1", "abcdef1234") and same("abcdef1234", "abcdef1") and same("abc", "abc")
    assert not same("abcdef1", "abcdef2") and not same("abcdef", "abcdef1") and not same(None, "abcdef1")


def test_point_links_swaps_and_removes_for_real(tmp_path):
    """The switch's one command, run by a real sh: links are renamed into place, '' removes."""
    import os
    import subprocess

    from deploytasks import traffic

    (tmp_path / "blue").mkdir()
    (tmp_path / "green").mkdir()
    os.symlink("blue", tmp_path / "live")
    os.symlink("blue", tmp_path / "gone")
    command = traffic.point_links(("green", str(tmp_path / "live")), (None, str(tmp_path / "gone")),
                                  ("blue", str(tmp_path / "fresh")))
    subprocess.run(command.argv, check=True)
    assert os.readlink(tmp_path / "live") == "green" and os.readlink(tmp_path / "fresh") == "blue"
    assert not os.path.lexists(tmp_path / "gone")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blue", "fresh", "green", "live"], "no .new left behind"


# --- phases: stable identifiers apart from labels ---------------------------------------------------

def test_a_step_needs_a_known_phase_and_a_plan_holds_each_phase_once():
    from deploytasks import phases

    with pytest.raises(ValueError, match="unknown phase 'switch to green'"):
        Step("switch to green", ())
    with pytest.raises(ValueError, match="phase\\(s\\) start appear twice"):
        Plan("deploy", "abc1234", (Step(phases.START, (), label="start blue"), Step(phases.START, (), label="start green")))
    assert Step(phases.SWITCH, (), label="switch to green").name == "switch to green"
    assert Step(phases.MIGRATE, ()).name == "migrate"


def test_deploy_and_rollback_plans_run_the_phases_in_their_fixed_order(local_config, blue_live_state):
    from deploytasks import phases

    for plan in (container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW),
                 container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW, window=True),
                 container_rollback(local_config, dataclasses.replace(blue_live_state, colours={
                     "blue": REL_OLD, "green": REL_NEW}, releases=(REL_OLD, REL_NEW)))):
        ids = [step.phase for step in plan.steps]
        expected = [p for p in phases.ALL if p in ids]
        if plan.summary.get("window"):  # the window stops the old colour before migrating, and closes before the check
            assert ids == ["prepare", "upload", "pull", "networks", "stateful", "nginx-site", "start", "maintenance-on",
                           "stop-old", "migrate", "ready", "switch", "maintenance-off", "verify", "cleanup"]
        else:
            assert ids == expected, plan.kind


def test_a_changed_web_service_keeps_the_live_colour_and_installs_the_site_after_the_switch(local_config):
    """Served through run/web.sock, now WEB_SERVICE=api: the colour serving is still green (found
    through the old link), the new release goes to blue, and the site, whose upstream is the new
    run/api.sock link, is installed only once that link exists."""
    out = "\n".join([f"colour blue {REL_OLD}", f"colour green ../releases/{REL_NEW}", "live ",
                     "other-live green/web.sock", f"release {REL_OLD}", f"release {REL_NEW}"])
    state = facts.parse(out)
    assert state.live == "green" and state.live_elsewhere
    plan = container_deploy(local_config, state, "ccccccc", "20240103T000000Z-ccccccc")
    names = _names(plan)
    assert plan.summary["colour"] == "blue"
    assert names.index("nginx site") == names.index("switch to blue") + 1
    assert "drain green" in names


# --- static files, uploads and relayed apps ---------------------------------------------------------

def _local(local_raw, **changes):
    return configuration.parse(REPO, "local", dict(local_raw, **changes), {})


STATIC = {"STATIC_URL": "/static/", "STATIC_PATH": "/app/static/"}
MEDIA = {"MEDIA_URL": "/media/", "MEDIA_PATH": "/app/media"}


def test_the_static_files_are_copied_out_of_the_new_colour_between_ready_and_switch(local_raw, blue_live_state):
    plan = container_deploy(_local(local_raw, **STATIC), blue_live_state, SHA_NEW, REL_NEW)
    names = _names(plan)
    assert names[names.index("ready: green"):names.index("switch to green") + 1] == [
        "ready: green", "static files", "probe 10/s through nginx", "switch to green"]
    assets = _step(plan, "static files")
    new = f"{ROOT}/releases/{REL_NEW}"
    green = ("docker", "compose", "-p", "example-green", "--env-file", f"{new}/compose.env",
             "-f", f"{new}/compose/compose.yml", "-f", f"{new}/compose.deploy.yml")
    assert assets.phase == "assets" and not assets.undo
    # collected at build or at start alike: taken from the running web container, into the release
    assert [a.argv for a in assets.actions] == [("rm", "-rf", f"{new}/.static"),
                                                (*green, "cp", "web:/app/static/.", f"{new}/.static")]
    assert "uploads directory" not in names


def test_a_first_deploy_and_a_window_deploy_copy_the_static_files_before_their_switch(local_raw, first_state,
                                                                                       blue_live_state):
    config = _local(local_raw, **STATIC)
    names = _names(container_deploy(config, first_state, SHA_NEW, REL_NEW))
    assert names.index("ready: blue") + 1 == names.index("static files") == names.index("switch to blue") - 1
    names = _names(container_deploy(config, blue_live_state, SHA_NEW, REL_NEW, window=True))
    assert "probe 10/s through nginx" not in names, "a window deploy reports its window, not a probe"
    assert names.index("ready: green") + 1 == names.index("static files") == names.index("switch to green") - 1


def test_uploads_get_their_directory_and_the_web_containers_user(local_raw, blue_live_state):
    from deploytasks.backends.containers import _OWN_MEDIA, ContainerColour

    config = _local(local_raw, **MEDIA)
    plan = container_deploy(config, blue_live_state, SHA_NEW, REL_NEW)
    assert _step(plan, "uploads directory").actions == (cmd("mkdir", "-p", f"{ROOT}/shared/media"),)
    (own,) = _step(plan, "static files").actions  # no static files: only the uploads' owner
    web_pid = ContainerColour(config, "green", REL_NEW)._web_pid()
    assert web_pid[:3] == ("sh", "-c", 'docker inspect -f "{{.State.Pid}}" "$("$@")"') and web_pid[-3:] == (
        "ps", "-q", "web") and "example-green" in web_pid
    assert own.argv == sh(_OWN_MEDIA, f"{ROOT}/shared/media", *web_pid)


def test_no_static_files_step_without_static_or_media(local_config, blue_live_state, green_live_state):
    for plan in (container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW),
                 container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW, window=True)):
        assert "static files" not in _names(plan) and not any(s.phase == "assets" for s in plan.steps)


def test_a_rollback_serves_the_static_files_its_release_kept(local_raw, green_live_state):
    plan = container_rollback(_local(local_raw, **STATIC), green_live_state)
    assert _names(plan) == ["start blue", "ready: blue", "probe 10/s through nginx", "switch to blue", "check through nginx", "watch 2s", "drain green"]
    assert (f"../../releases/{REL_OLD}/.static", f"{ROOT}/run/static/live") in links(_step(plan, "switch to blue").actions)


def test_a_relayed_colour_starts_fresh_without_touching_nginx_relay_socket(local_raw, blue_live_state):
    plan = container_deploy(_local(local_raw, WEB_PORT="8000"), blue_live_state, SHA_NEW, REL_NEW)
    assert _step(plan, "start green").actions[0].argv == ("rm", "-f", f"{ROOT}/run/green/web.sock")
    ready = _step(plan, "ready: green").actions[0]
    assert ready.argv[ready.argv.index("--unix-socket") + 1] == f"{ROOT}/run/green/web.relay.sock"
    assert links(_step(plan, "switch to green").actions)[1] == ("green/web.relay.sock", f"{ROOT}/run/web.sock")


@pytest.mark.parametrize("changes", [
    STATIC,
    {"WEB_PORT": "8000"},
    MEDIA,
], ids=["static", "relayed", "media"])
def test_phases_stay_in_their_fixed_order_with_files_and_relays(local_raw, blue_live_state, changes):
    from deploytasks import phases

    plan = container_deploy(_local(local_raw, **changes), blue_live_state, SHA_NEW, REL_NEW)
    ids = [step.phase for step in plan.steps]
    assert ids == [p for p in phases.ALL if p in ids]


def test_a_first_relayed_deploy_installs_its_site_before_the_readiness_gate(local_raw, first_state):
    """The gate asks the colour's relay socket, which nginx listens on only once the site is in."""
    plan = container_deploy(_local(local_raw, WEB_PORT="8000"), first_state, SHA_NEW, REL_NEW)
    names, ready = _names(plan), _step(plan, "ready: blue").actions[0]
    assert f"{ROOT}/run/blue/web.relay.sock" in ready.argv
    assert names.index("nginx site") < names.index("start blue") < names.index("ready: blue")


@pytest.mark.skipif(sys.platform != "linux", reason="runs the script with sh")
@pytest.mark.parametrize("user, image_user, uid", [
    ("", "", None),  # root: nothing to give
    ("", "root", None),
    ("1000:1000", "", "1000"),  # the compose file's user: wins over the image's
    ("", "10001", "10001"),
    ("", "gallery", "10001"),  # a name: resolved by the image itself
])
def test_a_fresh_colour_gives_its_socket_directory_to_the_user_its_image_runs_as(tmp_path, local_config,
                                                                               blue_live_state, user, image_user, uid):
    """A non-root web image can create its socket in run/<colour>/ (owned by root otherwise)."""
    import subprocess

    plan = container_deploy(local_config, blue_live_state, SHA_NEW, REL_NEW)
    owner = _step(plan, "start green").actions[1]
    script, args = owner.argv[2], list(owner.argv[4:])
    assert args == [f"{ROOT}/run/green", f"127.0.0.1:5000/example/web:{SHA_NEW}", ""]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text(f"#!/bin/sh\ncase \"$1\" in image) echo '{image_user}' ;; run) echo 10001 ;; esac\n")
    (fake / "chown").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/chowned\n")
    for tool in ("docker", "chown"):
        (fake / tool).chmod(0o755)
    directory = tmp_path / "run" / "green"
    subprocess.run(["sh", "-c", script, "sh", str(directory), args[1], user], check=True,
                   env={"PATH": f"{fake}:/usr/bin:/bin"})
    assert directory.is_dir()
    chowned = tmp_path / "chowned"
    assert (chowned.read_text().split() if chowned.exists() else None) == ([uid, str(directory)] if uid else None)


def test_a_relayed_colour_leaves_its_run_directory_alone(local_raw, blue_live_state):
    plan = container_deploy(_local(local_raw, WEB_PORT="8000"), blue_live_state, SHA_NEW, REL_NEW)
    assert not any("chown" in " ".join(a.argv) for a in _step(plan, "start green").actions)


def test_cleanup_never_counts_a_failed_release_among_the_good_ones_kept(local_config):
    """A deploy that died (or failed and could not undo) leaves its release directory; it must not
    take one of the KEEP_RELEASES places of the releases that served, nor keep its own."""
    rels = tuple(_rel(i) for i in range(1, 7))  # 1..5 deployed fine; 6, the newest, died half way
    good = tuple({"time": f"2024-01-{i:02d}T00:00:01Z", "kind": "deploy", "sha": rels[i - 1].rsplit("-", 1)[1],
                  "release": rels[i - 1], "outcome": "ok"} for i in range(1, 6))
    died = {"time": "2024-01-06T00:00:01Z", "kind": "deploy", "sha": rels[5].rsplit("-", 1)[1], "outcome": "died"}
    state = HostState(colours={"blue": rels[4], "green": rels[3]}, live="blue", current=rels[4], releases=rels,
                      history=(*good, died))
    config = dataclasses.replace(local_config, keep_releases=3)
    cleanup = container_deploy(config, state, SHA_NEW, f"20240107T000000Z-{SHA_NEW}").steps[-1]
    removed = cleanup.actions[0].argv[2:]
    assert f"{ROOT}/releases/{rels[5]}" in removed, "the dead deploy's release goes"
    # kept: the new release (live), the one that served before it (the rollback target), and the
    # newest other release that served (rels[3]): three that served, none that failed
    assert removed == tuple(f"{ROOT}/releases/{r}" for r in (*rels[:3], rels[5]))
