"""The edges of a deploy that the happy path never shows: a host left half-done, a live colour
that stopped answering, the site's Host header, a full disk while backing up the nginx site, a
temporary link left by a killed run. Pure functions and the real shell scripts, no host."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REL_NEW, REL_OLD

from deploytasks import facts, history, nginx, operations, progress, traffic
from deploytasks.facts import HostState
from deploytasks.layout import Layout

linux_sh = pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("sh"), reason="needs a Linux sh")
OWNER = {"token": "tok-1", "user": "alice", "from": "laptop"}


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


# --- status tells the truth -------------------------------------------------------------------------

def _serving(**changes) -> HostState:
    return dataclasses.replace(HostState(now=1000, colours={"blue": REL_OLD, "green": REL_NEW}, live="green",
                                         current=REL_NEW, releases=(REL_OLD, REL_NEW), live_answers=True), **changes)


def test_a_healthy_host_has_no_problems(local_config):
    assert operations.problems(local_config, _serving()) == []


def test_a_live_colour_that_does_not_answer_is_a_problem(local_config):
    state = _serving(live_answers=False)
    assert operations.problems(local_config, state) == [
        "the live colour (green) does not answer HEALTH_PATH /healthz on its socket: nginx answers 502; `rollback` or a deploy "
        "repairs it"]
    assert "!! the live colour does not answer HEALTH_PATH /healthz: visitors get 502" in operations.describe_state(local_config, state)


def test_a_marker_whose_deploy_holds_the_lock_is_in_progress_not_a_problem(local_config):
    marker = progress.record("deploy", "bbbbbbb", "green", OWNER, "pull", since=990)
    state = _serving(in_progress=marker, lock={"token": "tok-1", "user": "alice", "since": 990})
    assert operations.problems(local_config, state) == []
    assert "in progress: deploy bbbbbbb by alice@laptop, at step 'pull' (started 10s ago)" in operations.describe_state(
        local_config, state)


@pytest.mark.parametrize("lock", [None, {"token": "someone-else", "since": 999}])
def test_a_marker_left_behind_is_named_with_its_step(local_config, lock):
    marker = progress.record("deploy", "bbbbbbb", "green", OWNER, "switch", since=900)
    [problem] = operations.problems(local_config, _serving(in_progress=marker, lock=lock))
    assert problem == ("HALF-DONE: deploy bbbbbbb by alice@laptop stopped at step 'switch' and did not finish "
                       "(started 100s ago); the next deploy or `rollback` repairs the host")


def test_a_marker_whose_holder_is_dead_is_left_behind_at_the_step_of_its_lease(local_config):
    from deploytasks.holder import Holder

    marker = progress.record("deploy", "bbbbbbb", "green", OWNER, "started", since=900)
    lock = {"token": "tok-1", "user": "alice", "since": 900}
    dead = Holder(info=lock, verdict="dead", session="gone", lease_age=60, step="ready: green")
    [problem] = operations.problems(local_config, _serving(in_progress=marker, lock=lock, holder=dead))
    assert problem.startswith("HALF-DONE: deploy bbbbbbb by alice@laptop stopped at step 'ready: green'")
    alive = dataclasses.replace(dead, verdict="alive", session="alive", lease_age=2)
    assert operations.problems(local_config, _serving(in_progress=marker, lock=lock, holder=alive)) == []


def test_failed_deploys_in_status_say_where_and_why():
    record = history.entry("deploy", "bbbbbbb", "green", OWNER, "failed", 0, [], failed_after=["prepare", "pull"],
                           reason="127.0.0.1: not ready after 60s")
    assert history.format_line(record).splitlines()[1] == "      failed after pull: 127.0.0.1: not ready after 60s"
    assert "\n" not in history.format_line(dict(record, outcome="ok"))


def test_a_deploy_that_died_gets_its_history_line_from_the_next_one():
    """A killed deployer writes nothing; the deploy that takes its lock over records it."""
    marker = progress.record("deploy", "bbbbbbb", "green", OWNER, progress.STARTED, since=900)
    assert progress.unrecorded(marker, {"token": "next"})
    assert not progress.unrecorded(marker, OWNER), "our own marker is not a dead deploy"
    assert not progress.unrecorded(dict(marker, step=progress.UNDO_FAILED), {"token": "next"}), \
        "a failure its deployer survived has its own history line"
    assert not progress.unrecorded(None, OWNER)
    record = progress.obituary(marker, "rollback", "migrate", now=1000)
    assert (record["kind"], record["sha"], record["colour"], record["user"], record["outcome"]) == \
        ("deploy", "bbbbbbb", "green", "alice@laptop", "died")
    assert history.format_line(record).splitlines()[1] == (
        "      the deploying process or its connection died during step 'migrate'; found by the next rollback, "
        "which repaired the host")
    assert not history.served([record], "bbbbbbb"), "a dead deploy is no rollback target"


@linux_sh
def test_the_state_script_reports_the_marker_and_whether_the_live_socket_answers(tmp_path):
    root = tmp_path / "srv"
    layout = Layout(str(root), "web")
    (root / "state").mkdir(parents=True)
    (root / "run").mkdir()
    os.symlink("green/web.sock", layout.live_socket)
    subprocess.run(progress.mark_argv(layout, {"step": "migrate", "token": "t"}), check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "curl.calls"
    _executable(bin_dir / "curl", f'#!/bin/sh\necho "$@" >> {calls}\nexit "${{CURL_EXIT:-0}}"\n')
    for code, answers in (("0", True), ("7", False)):
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CURL_EXIT": code}
        out = subprocess.run(facts.read_command(layout, "/healthz", "shop.example.com"), capture_output=True,
                             text=True, env=env, check=True).stdout
        state = facts.parse(out)
        assert state.live_answers is answers and state.in_progress == {"step": "migrate", "token": "t"}
    assert calls.read_text().splitlines()[0] == (f"-fsS -o /dev/null --max-time 3 --unix-socket {layout.live_socket} "
                                                 "-H Host: shop.example.com http://localhost/healthz")
    subprocess.run(progress.clear_argv(layout), check=True)
    out = subprocess.run(facts.read_command(layout), capture_output=True, text=True,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=True).stdout
    state = facts.parse(out)
    assert state.in_progress is None and state.live_answers is None, "no health path: not asked"


# --- every request deploytasks makes to the app carries the site's name ------------------------------

def test_readiness_sends_the_sites_host_name(local_config):
    config = dataclasses.replace(local_config, server_name="shop.example.com www.shop.example.com")
    [poll] = traffic.readiness(config, "green").actions
    assert poll.argv[poll.argv.index("-H") + 1] == "Host: shop.example.com"


# --- a full disk while the nginx site is backed up never installs an empty site on undo ---------------

@linux_sh
def test_a_failed_backup_of_the_site_leaves_no_previous_to_restore(tmp_path):
    site_dir, release = tmp_path / "conf.d", tmp_path / "release"
    site_dir.mkdir()
    release.mkdir()
    live, previous = site_dir / "shop.conf", site_dir / ".shop.conf.previous"
    live.write_text("server { listen 80; }\n")
    (release / "site.conf").write_text("server { listen 81; }\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # cp writes half the file, then fails as on a full disk; nginx must never be called
    _executable(bin_dir / "cp", '#!/bin/sh\nfor last; do :; done\nprintf "serv" > "$last"\necho "No space left" >&2\nexit 1\n')
    _executable(bin_dir / "nginx", "#!/bin/sh\necho nginx must not run >&2\nexit 9\n")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    out = subprocess.run(nginx.install_argv(str(release / "site.conf"), str(live), str(previous), "/etc/nginx.conf"),
                         capture_output=True, text=True, env=env)
    assert out.returncode == 1 and not previous.exists() and not Path(f"{previous}.tmp").exists()
    assert live.read_text() == "server { listen 80; }\n"
    undo = subprocess.run(nginx.restore_argv(str(live), str(previous), "/etc/nginx.conf"), capture_output=True,
                          text=True, env=env)
    assert undo.returncode == 0 and live.read_text() == "server { listen 80; }\n", "nothing to restore: kept"


# --- a temporary link left by a killed switch is not in the way --------------------------------------

@linux_sh
def test_the_switch_ignores_a_leftover_temporary_link(tmp_path):
    (tmp_path / "blue").mkdir()
    (tmp_path / "green").mkdir()
    link = tmp_path / "web.sock"
    os.symlink("blue/web.sock", link)
    (tmp_path / "web.sock.new").mkdir()  # what an older version's killed run could leave
    os.symlink("elsewhere", tmp_path / "web.sock.new.1")
    subprocess.run(traffic.point_links(("green/web.sock", str(link))).argv, check=True)
    assert os.readlink(link) == "green/web.sock"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blue", "green", "web.sock", "web.sock.new", "web.sock.new.1"]


# --- values in the overlay stay strings for compose's YAML 1.2 ----------------------------------------

@pytest.mark.parametrize("sha", ["1e51234", "1234567", "0123456", "1e5123a", "abcdef0"])
def test_overlay_values_are_strings_to_yaml_1_2(local_config, sha):
    import re

    import yaml

    from deploytasks.backends import compose

    text = compose.overlay(local_config, compose.model(local_config), Layout.of(local_config), "/srv/r", sha, "green")
    loader = type("Loader", (yaml.SafeLoader,), {})
    loader.add_constructor("!reset", lambda loader, node: [])
    web = yaml.load(text, Loader=loader)["services"]["web"]
    assert web["environment"]["DEPLOY_SHA"] == sha and web["labels"]["deploytasks.sha"] == sha
    line = next(line for line in text.splitlines() if "DEPLOY_SHA" in line)
    if re.fullmatch(r"[0-9]+(e[0-9]+)?", sha):
        assert f'"{sha}"' in line or f"'{sha}'" in line, line  # what YAML 1.2 would read as a number is quoted


# --- status calls a standby colour a rollback target only when it is one ----------------------------

def _standby_line(config, state) -> str:
    return next(line for line in operations.describe_state(config, state) if line.startswith("standby "))


def test_the_standby_colour_is_a_rollback_target(local_config):
    assert _standby_line(local_config, _serving()) == "standby blue: aaaaaaa (rollback target)"


def test_a_standby_colour_a_failed_deploy_used_since_is_no_rollback_target(local_config):
    served = {"kind": "deploy", "sha": "bbbbbbb", "colour": "green", "outcome": "ok"}
    failed = {"kind": "deploy", "sha": "ccccccc", "colour": "blue", "outcome": "failed",
              "failed_after": ["prepare", "upload", "pull"]}
    state = _serving(history=(served, failed))
    assert _standby_line(local_config, state) == ("standby blue: aaaaaaa (left by the failed deploy of ccccccc: not a "
                                                  "rollback target; use rollback --to SHA)")
    # a deploy to the colour that served since makes it a target again
    again = {"kind": "deploy", "sha": "aaaaaaa", "colour": "blue", "outcome": "ok"}
    assert _standby_line(local_config, _serving(history=(served, failed, again))).endswith("(rollback target)")


def test_a_failed_plain_rollback_leaves_the_standby_a_rollback_target(local_config):
    """A rollback only starts the standby colour, and its undo stops it again: nothing is removed."""
    failed = {"kind": "rollback", "sha": "aaaaaaa", "colour": "blue", "outcome": "failed", "failed_after": ["start"]}
    assert _standby_line(local_config, _serving(history=(failed,))).endswith("(rollback target)")
    redeploy = dict(failed, failed_after=["prepare", "upload"])  # rollback --to SHA stages a release
    assert "not a rollback target" in _standby_line(local_config, _serving(history=(redeploy,)))


def test_a_standby_colour_whose_release_is_gone_is_no_rollback_target(local_config):
    state = _serving(releases=(REL_NEW,))
    assert _standby_line(local_config, state) == ("standby blue: aaaaaaa (its release was removed: not a rollback "
                                                  "target; use rollback --to SHA)")
