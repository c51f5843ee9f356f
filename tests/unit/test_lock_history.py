"""lock and history: the text a user sees, and the argv that reaches the host."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import time

import pytest

from deploytasks import history, holder, lock
from deploytasks.errors import ConfigError, LockHeld
from deploytasks.layout import Layout

LAYOUT = Layout("/srv/example", "web")
INFO = {"token": "tok-1", "user": "alice", "from": "laptop", "task": "deploy", "sha": "abc1234", "since": 1_000_000}
linux_sh = pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("sh"), reason="needs a Linux sh")


# --- lock text ---------------------------------------------------------------------------------

@pytest.mark.parametrize("age, shown", [(0, "0s"), (45, "45s"), (119, "119s"), (120, "2m"), (7199, "119m"),
                                        (7200, "2h00m"), (3 * 3600 + 5 * 60 + 9, "3h05m")])
def test_describe_names_holder_task_sha_and_age(age, shown):
    assert holder.describe(INFO, now=1_000_000 + age) == f"held by alice@laptop (deploy abc1234) for {shown}"


def test_describe_with_little_information():
    assert holder.describe(None, now=5) == "held by someone@? (a task) for 0s"
    assert holder.describe({"since": 100, "task": "rollback", "sha": None}, now=400) == \
        "held by someone@? (rollback) for 5m"
    assert holder.describe({"since": 200}, now=100).endswith("for 0s")  # clock skew: never negative


def test_held_error_of_an_unjudged_lock_names_everything_and_the_way_out():
    error = holder.held_error("web1.example.com", holder.Holder(INFO), now=1_000_000 + 600)
    assert isinstance(error, LockHeld)
    assert str(error) == ("web1.example.com: deploy lock held by alice@laptop (deploy abc1234) for 10m; "
                          "if that deploy is dead, rerun with --force-unlock")


MIGRATION = holder.Command("migrate-r", "migration", 4242, 1_000_060, "shop-migrate-r", running=True)


def test_parse_what_the_lock_scripts_print():
    lines = ["noise", f"lock {json.dumps(INFO)}", "lock-session 77 gone", "lock-lease 95 start  green",
             "lock-running migrate-r running 4242 1000060 shop-migrate-r migration", "lock-running half",
             "lock-ended old 3 1000050 11 22 1000010 - migration", "lock-takeover", "lock-holder running 1000600",
             "lock-holder bogus 1", "lock-taken-over"]
    assert holder.parse(lines) == holder.Holder(
        INFO, verdict="running", session="gone", lease_age=95, step="start  green",
        commands=(MIGRATION, holder.Command("old", "migration", 11, 1_000_010, None, exit=3)),
        takeover=True, taken_over=True)
    assert holder.parse(["lock-holder dead 1"]) is None, "no lock line: no lock"
    # read while the keeper moved its record: ended wins
    moved = holder.parse(["lock {}", "lock-running m running 1 2 - migration", "lock-ended m 0 3 1 9 2 - migration"])
    assert [(c.running, c.exit) for c in moved.commands] == [(False, 0)]


def test_held_error_for_a_live_holder_offers_waiting():
    found = holder.Holder(INFO, verdict="alive", session="alive", step="start green")
    assert str(holder.held_error("web1", found, now=1_000_600)) == (
        "web1: deploy lock held by alice@laptop (deploy abc1234) for 10m (its holder is alive: its connection is "
        "open, last step: start green); --lock-wait SECONDS waits for it; --force-unlock only if you know that "
        "deploy is dead")
    assert "(waited 30s);" in str(holder.held_error("web1", found, now=1_000_600, waited=30.2))


def test_held_error_for_a_dead_holder_whose_migration_runs():
    found = holder.Holder(INFO, verdict="running", step="migrate", commands=(MIGRATION,))
    assert str(holder.held_error("web1", found, now=1_000_600)) == (
        "web1: deploy lock held by a dead deploy whose migration is still running (pid 4242 / container "
        "shop-migrate-r, since 1970-01-12T13:47:40Z): alice@laptop (deploy abc1234) for 10m, last step: migrate; "
        "the next deploy takes the lock over once it has ended (--lock-wait SECONDS waits for that; "
        "--force-unlock --force breaks the lock anyway)")


def test_takeover_and_force_lines():
    ended = dataclasses.replace(MIGRATION, running=False, exit=0)
    found = holder.Holder(INFO, verdict="dead", step="migrate", commands=(ended,), taken_over=True)
    assert holder.took_over(found, now=1_000_600) == (
        "took over the deploy lock of a dead deploy: alice@laptop (deploy abc1234), held since "
        "1970-01-12T13:46:40Z (10m), last step: migrate; its migration had ended (exit 0)")
    assert holder.forced(None, 0) == "--force-unlock: there was no deploy lock"
    assert holder.forced(holder.Holder(INFO, verdict="alive", session="alive"), now=1_000_600) == (
        "deploy lock removed (--force-unlock): it was held by alice@laptop (deploy abc1234) for 10m "
        "(its holder is alive: its connection is open)")
    assert holder.forced(holder.Holder(INFO, verdict="running", commands=(MIGRATION,)), now=1_000_600).endswith(
        "for 10m; its migration was still running (pid 4242 / container shop-migrate-r, since 1970-01-12T13:47:40Z)")
    refused = str(holder.force_refused("web1", holder.Holder(INFO, verdict="running", commands=(MIGRATION,)),
                                       now=1_000_600))
    assert refused.startswith("web1: --force-unlock refuses to break the deploy lock (held by alice@laptop")
    assert refused.endswith("its migration is still running (pid 4242 / container shop-migrate-r, since "
                            "1970-01-12T13:47:40Z); wait for it to end (the next deploy then takes the lock over) "
                            "or add --force to break it anyway")


def test_owner_records_who_and_when():
    before = int(time.time())
    info = lock.owner("deploy", "abc1234")
    assert set(info) == {"token", "user", "from", "task", "sha", "since"}
    assert info["task"] == "deploy" and info["sha"] == "abc1234"
    assert before <= info["since"] <= int(time.time())
    assert len(info["token"]) == 32 and info["token"] != lock.owner("deploy", None)["token"]


# --- lock argv -----------------------------------------------------------------------------------

HEAD = ("/srv/example/state/lock", str(lock.LEASE_BOUND), "info.json", "session", "lease", "running", "ended",
        "output", "takeover")


def test_acquire_argv_passes_values_as_separate_arguments():
    info = dict(INFO, user="mallory'; rm -rf / #", sha="$(id)")
    argv = lock.acquire_argv(LAYOUT, info)
    assert argv[:2] == ("sh", "-c") and argv[3] == "sh"
    assert argv[2] == lock._ACQUIRE and argv[2].startswith(lock.INSPECT)
    assert argv[4:] == (*HEAD, json.dumps(info, sort_keys=True))
    assert "mallory" not in argv[2] and "$(id)" not in argv[2]
    assert json.loads(argv[-1]) == info


def test_release_force_and_renew_argv():
    assert lock.release_argv(LAYOUT, INFO) == ("sh", "-c", lock._RELEASE, "sh", *HEAD, "tok-1")
    assert lock.force_release_argv(LAYOUT) == ("sh", "-c", lock._FORCE_RELEASE, "sh", *HEAD, "no")
    assert lock.force_release_argv(LAYOUT, force=True)[-1] == "yes"
    assert lock.renew_argv(LAYOUT, INFO, "start  green\n") == (
        "sh", "-c", lock._RENEW, "sh", "/srv/example/state/lock/info.json", "/srv/example/state/lock/lease", "tok-1",
        "start green")  # one line: the lease holds the step as one word run
    assert lock.renew_argv(LAYOUT, INFO, None)[-1] == ""


@pytest.mark.parametrize("options, policy", [
    ({}, lock.Policy()),
    ({"force_unlock": True}, lock.Policy(force_unlock=True)),
    ({"force_unlock": True, "force": True}, lock.Policy(True, True)),
    ({"wait": "90"}, lock.Policy(wait=90.0)),
    ({"wait": 2.5}, lock.Policy(wait=2.5)),
    ({"wait": None}, lock.Policy()),
])
def test_policy_of_the_lock_options(options, policy):
    assert lock.policy(**options) == policy


@pytest.mark.parametrize("options, message", [
    ({"force": True}, "--force goes with --force-unlock"),
    ({"wait": "abc"}, "--lock-wait takes seconds from 0 to 86400, not 'abc'"),
    ({"wait": "-5"}, "--lock-wait takes seconds"),
    ({"wait": "1e9"}, "--lock-wait takes seconds"),
    ({"wait": "nan"}, "--lock-wait takes seconds"),
])
def test_policy_refuses_bad_lock_options(options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        lock.policy(**options)


# --- history --------------------------------------------------------------------------------------

def test_entry():
    started = time.time() - 12.5
    record = history.entry("deploy", "abc1234", "green", INFO, "ok", started,
                           [("prepare", 0.12345), ("switch to green", 0.0004)], warnings=["drain: x"])
    assert record["kind"] == "deploy" and record["sha"] == "abc1234" and record["colour"] == "green"
    assert record["user"] == "alice@laptop" and record["outcome"] == "ok"
    assert record["time"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    assert 12.4 <= record["duration_s"] <= 20
    assert record["steps"] == {"prepare": 0.123, "switch to green": 0.0}
    assert record["warnings"] == ["drain: x"]
    json.dumps(record)  # serialisable as one line


def test_entry_time_is_utc():
    record = history.entry("rollback", "abc1234", None, INFO, "failed", 0.0, [])
    assert record["time"] == "1970-01-01T00:00:00Z" and record["colour"] is None and record["steps"] == {}


def test_last_good_is_newest_first_unique_and_ok_only():
    records = [
        {"sha": "a1", "outcome": "ok"}, {"sha": "b2", "outcome": "ok"}, {"sha": "c3", "outcome": "failed"},
        {"sha": "a1", "outcome": "ok"}, {"outcome": "ok"}, {"sha": None, "outcome": "ok"}, {"sha": "d4"},
    ]
    assert history.last_good(records) == ["a1", "b2"]
    assert history.last_good(tuple(records)) == ["a1", "b2"]
    assert history.last_good([]) == []


def test_append_argv_is_a_fixed_script_with_the_record_as_an_argument():
    record = {"sha": "abc1234", "note": "it's \"$(id)\"; rm -rf /\nnext"}
    argv = history.append_argv(LAYOUT, record)
    assert argv[:2] == ("sh", "-c") and argv[3] == "sh"
    assert argv[4] == "/srv/example/state/history.jsonl"
    assert json.loads(argv[5]) == record and "\n" not in argv[5]
    assert "rm -rf" not in argv[2]


@linux_sh
def test_append_argv_appends_one_json_line(tmp_path):
    layout = Layout(str(tmp_path / "srv"), "web")
    records = [{"sha": "a1", "outcome": "ok"}, {"sha": "b2", "outcome": "failed", "note": "%s %d \\n it's"}]
    for record in records:
        subprocess.run(history.append_argv(layout, record), check=True, timeout=10)
    lines = (tmp_path / "srv" / "state" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records


def test_format_line():
    line = history.format_line({"time": "2024-01-02T03:04:05Z", "kind": "deploy", "sha": "abcdef0123456789",
                                "colour": "green", "outcome": "ok", "duration_s": 12.3, "user": "alice@laptop"})
    assert line.split() == ["2024-01-02T03:04:05Z", "deploy", "abcdef012345", "green", "ok", "12.3s", "alice@laptop"]
    assert history.format_line({}).split()[:5] == ["?", "?", "?", "-", "?"]
