"""lock and history: the text a user sees, and the argv that reaches the host."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from deploytasks import history, lock
from deploytasks.errors import LockHeld
from deploytasks.layout import Layout

LAYOUT = Layout("/srv/example", "web")
INFO = {"token": "tok-1", "user": "alice", "from": "laptop", "task": "deploy", "sha": "abc1234", "since": 1_000_000}
linux_sh = pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("sh"), reason="needs a Linux sh")


# --- lock text ---------------------------------------------------------------------------------

@pytest.mark.parametrize("age, shown", [(0, "0s"), (45, "45s"), (119, "119s"), (120, "2m"), (7199, "119m"),
                                        (7200, "2h00m"), (3 * 3600 + 5 * 60 + 9, "3h05m")])
def test_describe_names_holder_task_sha_and_age(age, shown):
    assert lock.describe(INFO, now=1_000_000 + age) == f"held by alice@laptop (deploy abc1234) for {shown}"


def test_describe_with_little_information():
    assert lock.describe(None, now=5) == "held by someone@? (a task) for 0s"
    assert lock.describe({"since": 100, "task": "rollback", "sha": None}, now=400) == \
        "held by someone@? (rollback) for 5m"
    assert lock.describe({"since": 200}, now=100).endswith("for 0s")  # clock skew: never negative


def test_held_error_names_everything_and_the_way_out():
    error = lock.held_error("web1.example.com", INFO, now=1_000_000 + 600)
    assert isinstance(error, LockHeld)
    text = str(error)
    for part in ("web1.example.com", "alice", "laptop", "deploy", "abc1234", "10m", "--force-unlock"):
        assert part in text
    assert text == ("web1.example.com: deploy lock held by alice@laptop (deploy abc1234) for 10m; "
                    "if that deploy is dead, rerun with --force-unlock")


def test_owner_records_who_and_when():
    before = int(time.time())
    info = lock.owner("deploy", "abc1234")
    assert set(info) == {"token", "user", "from", "task", "sha", "since"}
    assert info["task"] == "deploy" and info["sha"] == "abc1234"
    assert before <= info["since"] <= int(time.time())
    assert len(info["token"]) == 32 and info["token"] != lock.owner("deploy", None)["token"]


# --- lock argv -----------------------------------------------------------------------------------

def test_acquire_argv_passes_values_as_separate_arguments():
    info = dict(INFO, user="mallory'; rm -rf / #", sha="$(id)")
    argv = lock.acquire_argv(LAYOUT, info)
    assert argv[:2] == ("sh", "-c") and argv[3] == "sh"
    assert argv[2] == lock._ACQUIRE
    assert argv[4:] == ("/srv/example/state/lock", "info.json", json.dumps(info, sort_keys=True))
    assert "mallory" not in argv[2] and "$(id)" not in argv[2]
    assert json.loads(argv[6]) == info


def test_release_argv_removes_only_our_lock():
    argv = lock.release_argv(LAYOUT, INFO)
    assert argv == ("sh", "-c", lock._RELEASE, "sh", "/srv/example/state/lock", "/srv/example/state/lock/info.json",
                    "tok-1")
    assert lock.force_release_argv(LAYOUT) == ("rm", "-rf", "/srv/example/state/lock")


@linux_sh
def test_lock_scripts_work_in_a_real_shell(tmp_path):
    layout = Layout(str(tmp_path / "srv"), "web")
    mine, theirs = lock.owner("deploy", "abc1234"), dict(INFO)

    first = subprocess.run(lock.acquire_argv(layout, theirs), capture_output=True, text=True, timeout=10)
    assert first.returncode == 0
    second = subprocess.run(lock.acquire_argv(layout, mine), capture_output=True, text=True, timeout=10)
    assert second.returncode == lock.HELD_EXIT
    assert json.loads(second.stdout.strip().splitlines()[-1]) == theirs  # the holder is named
    assert list((tmp_path / "srv" / "state").iterdir()) == [tmp_path / "srv" / "state" / "lock"]  # no leftovers

    # releasing with someone else's token leaves the lock alone
    subprocess.run(lock.release_argv(layout, mine), check=True, timeout=10)
    assert (tmp_path / "srv" / "state" / "lock" / "info.json").is_file()
    subprocess.run(lock.release_argv(layout, theirs), check=True, timeout=10)
    assert not (tmp_path / "srv" / "state" / "lock").exists()
    assert subprocess.run(lock.acquire_argv(layout, mine), timeout=10).returncode == 0


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
