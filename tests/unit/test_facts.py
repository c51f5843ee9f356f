"""facts: one command reads the host, a parser turns its output into HostState."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import REL_NEW, REL_OLD, SHA_NEW, SHA_OLD

from deploytasks import facts, holder, lock, maintenance, nginx, tracked, traffic
from deploytasks.backends import containers, processes
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
lock-session 4242 gone
lock-lease 240 migrate
lock-running migrate-{REL_NEW} running 4300 1700000010 example-migrate-x migration
lock-holder running 1700000300
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
    assert state.holder.info == state.lock and state.holder.verdict == "running"
    assert (state.holder.session, state.holder.lease_age, state.holder.step) == ("gone", 240, "migrate")
    assert state.holder.running == (holder.Command(f"migrate-{REL_NEW}", "migration", 4300, 1700000010,
                                                   "example-migrate-x", running=True),)
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
    assert facts.parse('lock {"since": 1}\n').holder == holder.Holder({"since": 1})  # not judged: an older script


@pytest.mark.parametrize("lines, shown", [
    (["lock-session 77 alive", "lock-lease 40 start green", "lock-holder alive 1700000300"],
     "its holder is alive: its connection is open, last step: start green"),
    (["lock-session 77 gone", "lock-lease 3 migrate", "lock-holder alive 1700000300",
      "lock-running migrate-r running 88 1700000200 - migration"],
     "its holder is alive: lease renewed 3s ago, last step: migrate; its migration runs (pid 88, since "
     "2023-11-14T22:16:40Z)"),
    (["lock-session 77 gone", "lock-lease 95 ", "lock-holder dead 1700000300",
      "lock-ended migrate-r 0 1700000250 88 123 1700000200 - migration"],
     "its holder is gone (no connection, lease last renewed 95s ago): the next deploy takes it over"),
    (["lock-holder unknown 1700000300"], "whether its holder lives is not recorded (a lock of an older deploytasks)"),
])
def test_describe_state_says_whether_the_lock_holder_lives(local_config, lines, shown):
    info = 'lock {"user": "bob", "from": "ci", "task": "deploy", "sha": "ddddddd", "since": 1700000000}'
    state = facts.parse("\n".join(["now 1700000300", info, *lines]) + "\n")
    assert describe_state(local_config, state) == [
        "example (local): nothing deployed yet", f"deploy lock: held by bob@ci (deploy ddddddd) for 5m; {shown}"]


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
        "sh", layout.lock, str(lock.LEASE_BOUND), "info.json", "session", "lease", "running", "ended", "output",
        "takeover", layout.colour_link("blue"), layout.colour_link("green"), layout.live_socket, layout.current,
        layout.maintenance_flag, layout.releases, layout.history, layout.pidfile("blue"), layout.pidfile("green"),
        layout.in_progress, "", "localhost", layout.venvs, ".venv", "")
    assert facts.read_command(layout, images=True)[-1] == "yes"


SCRIPTS = {
    "facts": facts._SCRIPT, "lock acquire": lock._ACQUIRE, "lock release": lock._RELEASE,
    "lock force release": lock._FORCE_RELEASE, "lock renew": lock._RENEW, "tracked": tracked._TRACK,
    "backup": processes._BACKUP, "remove venvs": processes._REMOVE_VENVS, "build": processes._BUILD,
    "dependencies": processes._DEPENDENCIES, "stop": processes._STOP, "links": traffic._POINT_LINKS,
    "remove images": containers._REMOVE_IMAGES, "nginx install": nginx._INSTALL, "nginx restore": nginx._RESTORE, "lift": maintenance._LIFT_IF_READY,
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_script_spells_a_path_of_the_layout(name):
    """Layout is the only place remote paths are spelled: scripts get them as arguments."""
    spelled = [part for part in ("/releases", "/state", "/current", "/shared", "/.backups", "/venvs",
                                 "/logs", "info.json", "gunicorn.pid", "history.jsonl", ".deploytasks", "/.venv",
                                 "conf.d", "web.sock", "/lock", "/session", "/lease", "/running", "/ended",
                                 "/output", "/takeover")
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
    assert state.holder.verdict == "unknown"  # written without a session or lease: as by an older version
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
    assert ("deploy lock: held by alice@laptop (deploy ccccccc) for 5m; its holder is gone, but its migration is "
            "still running (pid 4300 / container example-migrate-x, since 2023-11-14T22:13:30Z), last step: migrate"
            ) in lines
    assert "recent deploys:" in lines
    assert any("example-green" in line and "Up 3 minutes (healthy)" in line for line in lines)


def test_describe_state_of_a_fresh_host(local_config):
    assert describe_state(local_config, facts.HostState(now=1)) == ["example (local): nothing deployed yet"]


def test_the_docker_format_prints_the_five_tab_separated_fields_the_parser_expects():
    line = next(line for line in facts._SCRIPT.splitlines() if "--format" in line and "container " in line)
    fmt = line.split("'")[1]
    assert fmt.startswith("container ")
    fields = fmt[len("container "):].split("\t")
    assert fields == ['{{.Label "com.docker.compose.project"}}', '{{.Label "com.docker.compose.service"}}',
                      "{{.State}}", "{{.Status}}", "{{.Image}}"]
    assert len(fields) == len(facts.Container.__dataclass_fields__)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("sh"), reason="needs a Linux sh")
def test_the_script_judges_the_lock_holder(tmp_path):
    """The host-state read runs the same judgement as the lock scripts: alive, then dead with its migration running."""
    layout = Layout(str(tmp_path / "srv"), "web")
    info = lock.owner("deploy", SHA_NEW)
    subprocess.run(lock.acquire_argv(layout, info), check=True, timeout=10)
    migration = subprocess.Popen(["sleep", "30"])
    try:
        started = open(f"/proc/{migration.pid}/stat").read().rsplit(")", 1)[1].split()[19]
        with open(f"{layout.lock_running}/migrate-x", "w") as record:
            record.write(f"{migration.pid} {started} 1700000000 - migration\n")
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
        read = lambda: facts.parse(subprocess.run(facts.read_command(layout), capture_output=True, text=True,
                                                  env=env, timeout=10, check=True).stdout)
        state = read()
        assert state.lock == info and state.holder.verdict == "alive" and state.holder.session == "alive"
        assert [c.pid for c in state.holder.running] == [migration.pid]
        with open(f"{layout.lock}/session", "w") as session:
            session.write("1 1 gone\n")  # another boot: the holder's connection is gone
        os.utime(layout.lock_lease, (1_600_000_000, 1_600_000_000))
        assert read().holder.verdict == "running"
    finally:
        migration.kill()
        migration.wait()
    assert read().holder.verdict == "dead"
