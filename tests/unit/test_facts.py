"""facts: one command reads the host, a parser turns its output into HostState."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import REL_NEW, REL_OLD, SHA_NEW, SHA_OLD

from deploytasks import facts, lock, maintenance, nginx, traffic
from deploytasks.backends import processes
from deploytasks.layout import Layout, other
from deploytasks.operations import describe_state

TAB = "\t"

# As _SCRIPT prints it on a host where green serves REL_NEW and blue keeps REL_OLD, a deploy
# holds the lock, and docker lists three compose containers; plus lines the parser must ignore.
SAMPLE = f"""\
now 1700000300
colour blue ../releases/{REL_OLD}
colour green ../releases/{REL_NEW}/
live green/web.sock
current releases/{REL_NEW}
maintenance on
release {REL_NEW}
release {REL_OLD}
release 20231231T000000Z-0000000
lock {{"from": "laptop", "sha": "ccccccc", "since": 1700000000, "task": "deploy", "token": "t0k", "user": "alice"}}
history {{"time": "2024-01-01T00:00:00Z", "kind": "deploy", "sha": "{SHA_OLD}", "colour": "blue", "outcome": "ok"}}
history {{"time": "2024-01-02T00:00:00Z", "kind": "deploy", "sha": "{SHA_NEW}", "colour": "green", "outcome": "ok"}}
history {{truncated json
history [1, 2, 3]
container example{TAB}db{TAB}running{TAB}Up 2 hours{TAB}127.0.0.1:5000/deploytasks/base:bookworm
container example-green{TAB}web{TAB}running{TAB}Up 3 minutes (healthy){TAB}127.0.0.1:5000/example/web:{SHA_NEW}
container example-blue{TAB}web{TAB}exited{TAB}Exited (0) 3 minutes ago{TAB}127.0.0.1:5000/example/web:{SHA_OLD}
container example-blue{TAB}only three{TAB}fields
colour purple ../releases/x
colour blue
now soon
Warning: Permanently added '[127.0.0.1]:2222' (ED25519) to the list of known hosts.

garbage
"""


def test_parse_realistic_sample():
    state = facts.parse(SAMPLE)
    assert state.now == 1700000300
    assert state.colours == {"blue": REL_OLD, "green": REL_NEW}
    assert state.live == "green" and state.deployed
    assert state.current == REL_NEW
    assert state.maintenance is True
    assert state.releases == ("20231231T000000Z-0000000", REL_OLD, REL_NEW)  # sorted, oldest first
    assert state.lock == {"from": "laptop", "sha": "ccccccc", "since": 1700000000, "task": "deploy",
                          "token": "t0k", "user": "alice"}
    assert [h["sha"] for h in state.history] == [SHA_OLD, SHA_NEW]
    assert [(c.project, c.service, c.state) for c in state.containers] == [
        ("example", "db", "running"), ("example-green", "web", "running"), ("example-blue", "web", "exited")]
    green = state.containers_of("example-green")
    assert len(green) == 1 and green[0].status == "Up 3 minutes (healthy)" and green[0].healthy
    assert green[0].image.endswith(f":{SHA_NEW}")
    assert not state.containers_of("example-blue")[0].healthy
    assert state.release_of("blue") == REL_OLD and state.release_of(None) is None


def test_parse_fresh_host():
    state = facts.parse("now 1700000000\ncolour blue \ncolour green \nlive \ncurrent \n")
    assert state == facts.HostState(now=1700000000)
    assert not state.deployed and state.lock is None and not state.maintenance


def test_parse_live_link_to_something_else_is_not_a_colour():
    assert facts.parse("live /tmp/evil.sock\n").live is None
    assert facts.parse("live blue/web.sock\n").live == "blue"


def test_parse_lock_without_info_keeps_the_raw_text():
    assert facts.parse('lock {"since": 1700000000}\n').lock == {"since": 1700000000}
    assert facts.parse('lock {"since": }\n').lock == {"raw": '{"since": }'}


@pytest.mark.parametrize("status, healthy", [
    ("Up 3 minutes (healthy)", True), ("Up 3 seconds (health: starting)", False),
    ("Up 3 minutes (unhealthy)", False), ("Up 5 minutes", True),
])
def test_container_health(status, healthy):
    assert facts.Container("p", "web", "running", status, "img").healthy is healthy
    assert not facts.Container("p", "web", "exited", status, "img").healthy


def test_read_command_passes_paths_as_arguments():
    layout = Layout("/srv/my app", "web")
    argv = facts.read_command(layout)
    assert argv[:3] == ("sh", "-c", facts._SCRIPT) and argv[3:] == (
        "sh", layout.colour_link("blue"), layout.colour_link("green"), layout.live_socket, layout.current,
        layout.maintenance_flag, layout.releases, layout.lock, layout.lock_info, layout.history,
        layout.pidfile("blue"), layout.pidfile("green"), layout.in_progress, "", "localhost")


SCRIPTS = {
    "facts": facts._SCRIPT, "lock acquire": lock._ACQUIRE, "lock release": lock._RELEASE,
    "backup": processes._BACKUP, "unused venvs": processes._UNUSED_VENVS, "build": processes._BUILD,
    "dependencies": processes._DEPENDENCIES, "stop": processes._STOP, "links": traffic._POINT_LINKS,
    "nginx install": nginx._INSTALL, "nginx restore": nginx._RESTORE, "lift": maintenance._LIFT_IF_READY,
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_script_spells_a_path_of_the_layout(name):
    """Layout is the only place remote paths are spelled: scripts get them as arguments."""
    spelled = [part for part in ("/releases", "/state", "/current", "/shared", "/.backups", "/venvs",
                                 "/logs", "info.json", "gunicorn.pid", "history.jsonl", ".deploytasks", "/.venv",
                                 "conf.d", "web.sock")
               if part in SCRIPTS[name]]
    assert spelled == []


def test_other_colour():
    assert other(None) == "blue" and other("blue") == "green" and other("green") == "blue"


@pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("sh"), reason="needs a Linux sh")
def test_the_script_and_the_parser_agree(tmp_path):
    """Run the real read script on a fake deploy directory (and a fake docker) and parse what it prints."""
    root = tmp_path / "srv"
    for rel in (REL_OLD, REL_NEW):
        (root / "releases" / rel).mkdir(parents=True)
    (root / "releases" / "stray-file").write_text("not a release")
    (root / "state" / "lock").mkdir(parents=True)
    (root / "state" / "lock" / "info.json").write_text('{"user": "bob",\n "since": 1700000000}\n')
    (root / "state" / "maintenance").write_text("")
    (root / "state" / "history.jsonl").write_text("".join(
        f'{{"sha": "{i:07d}", "outcome": "ok"}}\n' for i in range(205)))
    (root / "run" / "green").mkdir(parents=True)
    os.symlink(f"../releases/{REL_OLD}", root / "state" / "blue")
    os.symlink(f"../releases/{REL_NEW}", root / "state" / "green")
    os.symlink("green/web.sock", root / "run" / "web.sock")
    os.symlink(f"releases/{REL_NEW}", root / "current")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(
        "#!/bin/sh\nprintf 'container example-green\\tweb\\trunning\\tUp 1 minute (healthy)\\timg:%s\\n' " + SHA_NEW + "\n")
    (bin_dir / "docker").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LC_ALL": "C"}
    out = subprocess.run(facts.read_command(Layout(str(root), "web")), capture_output=True, text=True, env=env,
                         timeout=10, check=True).stdout
    state = facts.parse(out)
    assert state.now > 1_600_000_000
    assert state.colours == {"blue": REL_OLD, "green": REL_NEW}
    assert state.live == "green" and state.current == REL_NEW and state.maintenance
    assert state.releases == (REL_OLD, REL_NEW)
    assert state.lock == {"user": "bob", "since": 1700000000}
    assert [h["sha"] for h in state.history] == [f"{i:07d}" for i in range(5, 205)]  # the last 200
    assert [(c.project, c.service, c.healthy) for c in state.containers] == [("example-green", "web", True)]


@pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("sh"), reason="needs a Linux sh")
def test_the_script_on_an_empty_host(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    out = subprocess.run(facts.read_command(Layout(str(tmp_path / "none"), "web")), capture_output=True, text=True,
                         env=env, timeout=10, check=True).stdout
    state = facts.parse(out)
    assert not state.deployed and state.colours == {} and state.releases == () and state.lock is None


# --- status text built from facts ---------------------------------------------------------------

def test_describe_state_of_a_busy_host(local_config):
    state = facts.parse(SAMPLE)
    lines = describe_state(local_config, state)
    assert lines[0] == f"example (local): {SHA_NEW} serving from green (release {REL_NEW})"
    assert "maintenance mode: ON (visitors get the maintenance page)" in lines
    assert f"standby blue: {SHA_OLD} (rollback target)" in lines
    assert "deploy lock: held by alice@laptop (deploy ccccccc) for 5m" in lines
    assert "recent deploys:" in lines
    assert any("example-green" in line and "Up 3 minutes (healthy)" in line for line in lines)


def test_describe_state_of_a_fresh_host(local_config):
    assert describe_state(local_config, facts.HostState(now=1)) == ["example (local): nothing deployed yet"]


def test_the_docker_format_prints_the_five_tab_separated_fields_the_parser_expects():
    line = next(line for line in facts._SCRIPT.splitlines() if "--format" in line)
    fmt = line.split("'")[1]
    assert fmt.startswith("container ")
    fields = fmt[len("container "):].split("\t")
    assert fields == ['{{.Label "com.docker.compose.project"}}', '{{.Label "com.docker.compose.service"}}',
                      "{{.State}}", "{{.Status}}", "{{.Image}}"]
    assert len(fields) == len(facts.Container.__dataclass_fields__)
