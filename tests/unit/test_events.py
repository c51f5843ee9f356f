"""Hooks and notices around a deploy: real hook scripts in a tmp dir and a real local HTTP receiver,
around deploys to in-memory hosts (every command answers 0 unless a test says otherwise)."""
from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import StubLease
from webhook_receiver import TOKEN, Receiver, closed_port

from deploytasks import events, hooks, lock, locking, operations, registry
from deploytasks.errors import ConfigError, StepFailed
from deploytasks.plan import Plan
from harness.memory import MemoryTransport

HOSTS = ("10.77.0.11", "10.77.0.12", "10.77.0.13")
SHA = "b" * 40
OLD = "a" * 40
ACQUIRE = re.compile(re.escape(shlex.quote(lock._ACQUIRE)))
RELEASE = re.compile(re.escape(shlex.quote(lock._RELEASE)))
VERIFY = re.compile(r"^curl .*127\.0\.0\.1:8080/version")  # the check, not the probe (bash -c ... curl)
PREPARE = re.compile("mkdir -p /srv/example/releases")
HISTORY = re.compile(r'>> "\$1".*/history\.jsonl', re.S)  # a history line appended
MARK = re.compile(r'> "\$1\.tmp".*/state/deploying', re.S)  # the in-progress marker written
READ_STATE = re.compile(r'tail -n 200 "\$history"')


@pytest.fixture
def fleet(monkeypatch):
    """Three fresh in-memory hosts; the check through nginx answers the new SHA on each."""
    hosts = {host: MemoryTransport(host).answer(VERIFY, stdout=SHA) for host in HOSTS}
    monkeypatch.setattr(operations, "connect", lambda config, host, **options: hosts[host])
    monkeypatch.setattr(registry, "missing", lambda images, tag: [])
    monkeypatch.setattr(registry, "tags", lambda image: [SHA, OLD])
    monkeypatch.setattr(locking, "Lease", StubLease)
    return hosts


@pytest.fixture
def hook_dir(tmp_path) -> Path:
    return tmp_path / "hooks"


@pytest.fixture
def log(tmp_path) -> Path:
    return tmp_path / "hooks.log"


def write_hook(directory: Path, name: str, log: Path, then: str = "", mode: int = 0o755) -> Path:
    """A hook that appends one line to `log`: its DEPLOY_* variables, tab-separated; then `then`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\nenv | grep '^DEPLOY_' | sort | tr '\\n' '\\t' >> {shlex.quote(str(log))}\n"
                    f"echo >> {shlex.quote(str(log))}\necho \"{name} says hello\"\n{then}")
    path.chmod(mode)
    return path


def runs(log: Path) -> list[dict[str, str]]:
    """Each hook run, in order: its DEPLOY_* variables."""
    if not log.exists():
        return []
    return [dict(item.split("=", 1) for item in line.split("\t") if item) for line in log.read_text().splitlines()]


def named(log: Path, hook: str) -> list[dict[str, str]]:
    return [run for run in runs(log) if run["DEPLOY_HOOK"] == hook]


def configured(local_config, hook_dir: Path, **changes):
    fast = dict(health_timeout=1.0, health_interval=0.1, hooks_dir=hook_dir)
    return dataclasses.replace(local_config, **{**fast, **changes})


def target(config, hosts=HOSTS):
    return operations.Target(config, tuple(hosts))


def history_of(transport: MemoryTransport) -> list[dict]:
    words = [shlex.split(c) for c in transport.commands if "history.jsonl" in c and ">>" in c]
    return [json.loads(w[-1]) for w in words if w[-2].endswith("history.jsonl")]


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


# --- hooks around a deploy -------------------------------------------------------------------------------

def test_each_hook_runs_once_per_deploy_with_what_it_needs_to_know(fleet, local_config, hook_dir, log, capsys):
    for name in (hooks.PRE_DEPLOY, hooks.POST_SWITCH, hooks.POST_DEPLOY, hooks.DEPLOY_FAILED):
        write_hook(hook_dir, name, log)
    seen_at: dict[str, list[str]] = {}
    fleet[HOSTS[0]].on(PREPARE, lambda: seen_at.setdefault("prepare", [r["DEPLOY_HOOK"] for r in runs(log)]))
    fleet[HOSTS[2]].on(VERIFY, lambda: seen_at.setdefault("last check", [r["DEPLOY_HOOK"] for r in runs(log)]))
    fleet[HOSTS[0]].on(HISTORY, lambda: seen_at.setdefault("history", [r["DEPLOY_HOOK"] for r in runs(log)]))
    operations.deploy(target(configured(local_config, hook_dir)), SHA, echo=print)

    assert [r["DEPLOY_HOOK"] for r in runs(log)] == ["pre-deploy", "post-switch", "post-deploy"]
    assert seen_at["prepare"] == ["pre-deploy"], "pre-deploy ran before anything changed"
    assert seen_at["last check"] == ["pre-deploy"], "post-switch waits for the last batch"
    assert seen_at["history"] == ["pre-deploy", "post-switch"], "post-switch before the finish; post-deploy after"
    assert any(MARK.search(c) for c in fleet[HOSTS[0]].commands), "the marker pattern is the one deploys write"
    fleet_id = history_of(fleet[HOSTS[0]])[-1]["fleet"]
    for run in runs(log):
        assert run["DEPLOY_KIND"] == "deploy" and run["DEPLOY_SHA"] == SHA and run["DEPLOY_ENV"] == "local"
        assert run["DEPLOY_APP"] == "example" and run["DEPLOY_HOSTS"] == " ".join(HOSTS)
        assert run["DEPLOY_ID"] == fleet_id and run["DEPLOY_COLOUR"] == "blue"
        assert run["DEPLOY_PREVIOUS_SHA"] == "" and run["DEPLOY_PREVIOUS_SHAS"] == "- - -", "nothing served before"
        assert "DEPLOY_HOST" not in run
        assert re.fullmatch(r"\S+@\S+", run["DEPLOY_USER"]) and float(run["DEPLOY_SECONDS"]) >= 0
    assert named(log, "post-deploy")[0]["DEPLOY_OUTCOME"] == "ok" and "DEPLOY_OUTCOME" not in runs(log)[0]
    out = capsys.readouterr().out
    assert "hook pre-deploy: pre-deploy says hello" in out and "hook post-deploy: ok (" in out
    assert f"hook pre-deploy: running {hook_dir}/pre-deploy" in out


def test_hooks_per_host_run_on_each_host_as_it_goes(fleet, local_config, hook_dir, log, capsys):
    for name in (hooks.PRE_DEPLOY, hooks.POST_SWITCH, hooks.POST_DEPLOY):
        write_hook(hook_dir, name, log)
    switched_before: dict[str, int] = {}
    for host in HOSTS:
        fleet[host].on(VERIFY, lambda host=host: switched_before.setdefault(host, len(named(log, "post-switch"))))
    config = configured(local_config, hook_dir, hooks_per_host=("pre-deploy", "post-switch"))
    operations.deploy(target(config), SHA, echo=print)

    assert [r.get("DEPLOY_HOST") for r in named(log, "pre-deploy")] == list(HOSTS)
    assert [r.get("DEPLOY_HOST") for r in named(log, "post-switch")] == list(HOSTS)
    assert switched_before == {HOSTS[0]: 0, HOSTS[1]: 1, HOSTS[2]: 2}, "each right after its own host's check"
    assert [r.get("DEPLOY_HOST") for r in named(log, "post-deploy")] == [None], "not asked: once"
    assert f"[{HOSTS[1]}] hook post-switch: post-switch says hello" in capsys.readouterr().out


def test_a_failing_pre_deploy_changes_nothing_and_releases_every_lock(fleet, local_config, hook_dir, log, receiver):
    write_hook(hook_dir, hooks.PRE_DEPLOY, log, then='echo "CI is red for $DEPLOY_SHA"\nexit 3\n')
    for name in (hooks.POST_DEPLOY, hooks.DEPLOY_FAILED):
        write_hook(hook_dir, name, log)
    config = configured(local_config, hook_dir, webhook_url=receiver.url)
    with pytest.raises(events.HookFailed) as failed:
        operations.deploy(target(config), SHA)
    assert str(failed.value).startswith("hook pre-deploy failed (exit 3): the deploy stopped before anything changed")
    assert f"CI is red for {SHA}" in failed.value.details
    for host, transport in fleet.items():
        assert any(ACQUIRE.search(c) for c in transport.commands) and any(RELEASE.search(c) for c in transport.commands)
        assert not any(PREPARE.search(c) or HISTORY.search(c) or MARK.search(c) for c in transport.commands), \
            f"{host} was changed"
        assert transport.puts == []
    assert [r["DEPLOY_HOOK"] for r in runs(log)] == ["pre-deploy"], "no other hook runs"
    assert receiver.received == [], "nothing started: nothing sent"


def test_a_failing_pre_deploy_on_one_host_stops_before_the_next(fleet, local_config, hook_dir, log):
    write_hook(hook_dir, hooks.PRE_DEPLOY, log, then=f'[ "$DEPLOY_HOST" = {HOSTS[1]} ] && exit 1\nexit 0\n')
    config = configured(local_config, hook_dir, hooks_per_host=("pre-deploy",))
    with pytest.raises(events.HookFailed, match=f"hook pre-deploy on {HOSTS[1]} failed \\(exit 1\\)"):
        operations.deploy(target(config), SHA)
    assert [r["DEPLOY_HOST"] for r in runs(log)] == list(HOSTS[:2])
    assert not any(PREPARE.search(c) for t in fleet.values() for c in t.commands)


def test_later_hooks_that_fail_are_warnings_and_the_deploy_stands(fleet, local_config, hook_dir, log, capsys):
    write_hook(hook_dir, hooks.POST_SWITCH, log, then="exit 4\n")
    write_hook(hook_dir, hooks.POST_DEPLOY, log, then="exit 5\n")
    serving = operations.deploy(target(configured(local_config, hook_dir)), SHA, echo=print)
    assert serving == {host: SHA for host in HOSTS}
    assert {history_of(t)[-1]["outcome"] for t in fleet.values()} == {"ok"}
    out = capsys.readouterr().out
    assert "! hook post-switch failed (exit 4); the deploy's outcome stands" in out
    assert "! hook post-deploy failed (exit 5); the deploy's outcome stands" in out


def test_a_hook_past_hook_timeout_is_stopped_and_is_a_warning(fleet, local_config, hook_dir, log, capsys):
    write_hook(hook_dir, hooks.POST_DEPLOY, log, then="sleep 30\n")
    config = configured(local_config, hook_dir, hook_timeout=0.5)
    operations.deploy(target(config, HOSTS[:1]), SHA, echo=print)
    assert "! hook post-deploy failed (timed out after 0.5s (HOOK_TIMEOUT)); the deploy's outcome stands" in \
        capsys.readouterr().out


def test_a_failed_rollout_runs_deploy_failed_once_with_the_outcome_and_the_error(fleet, local_config, hook_dir, log):
    for name in (hooks.PRE_DEPLOY, hooks.POST_SWITCH, hooks.POST_DEPLOY, hooks.DEPLOY_FAILED):
        write_hook(hook_dir, name, log)
    fleet[HOSTS[1]].answer(VERIFY, exited=22, stderr="curl: (22) 502", first=True)
    with pytest.raises(StepFailed):
        operations.deploy(target(configured(local_config, hook_dir)), SHA)
    assert [r["DEPLOY_HOOK"] for r in runs(log)] == ["pre-deploy", "deploy-failed"], "never all switched"
    failed = named(log, "deploy-failed")[0]
    assert failed["DEPLOY_OUTCOME"] == "failed" and HOSTS[1] in failed["DEPLOY_ERROR"]
    assert all(any(RELEASE.search(c) for c in t.commands) for t in fleet.values())


def test_deploy_failed_per_host_gets_each_hosts_outcome(fleet, local_config, hook_dir, log):
    write_hook(hook_dir, hooks.DEPLOY_FAILED, log)
    write_hook(hook_dir, hooks.POST_SWITCH, log)
    fleet[HOSTS[1]].answer(VERIFY, exited=22, first=True)
    config = configured(local_config, hook_dir, hooks_per_host=("deploy-failed", "post-switch"))
    with pytest.raises(StepFailed):
        operations.deploy(target(config), SHA)
    assert [(r["DEPLOY_HOST"], r["DEPLOY_OUTCOME"]) for r in named(log, "deploy-failed")] == [
        (HOSTS[0], "rolled back"), (HOSTS[1], "failed"), (HOSTS[2], "undone")]
    assert [r["DEPLOY_HOST"] for r in named(log, "post-switch")] == [HOSTS[0]], "only host 1's traffic moved"


def test_a_rollback_tells_its_hooks_it_is_one(fleet, local_config, hook_dir, log):
    write_hook(hook_dir, hooks.POST_DEPLOY, log)
    for host in HOSTS:
        fleet[host].answer(READ_STATE, stdout=(
            f"live green/web.sock\ncolour green ../releases/20260101T000000Z-{SHA}\n"
            f"colour blue ../releases/20250101T000000Z-{OLD}\n"
            f"release 20260101T000000Z-{SHA}\nrelease 20250101T000000Z-{OLD}\n"))
        fleet[host].answer(VERIFY, stdout=OLD, first=True)
    operations.rollback(target(configured(local_config, hook_dir)))
    run = named(log, "post-deploy")[0]
    assert (run["DEPLOY_KIND"], run["DEPLOY_SHA"], run["DEPLOY_PREVIOUS_SHA"], run["DEPLOY_COLOUR"]) == \
        ("rollback", OLD, SHA, "blue")
    assert run["DEPLOY_PREVIOUS_SHAS"] == " ".join([SHA] * 3)


def test_a_hook_that_cannot_run_is_refused_before_connecting(fleet, local_config, hook_dir, log):
    write_hook(hook_dir, hooks.POST_DEPLOY, log, mode=0o644)
    with pytest.raises(ConfigError) as refused:
        operations.deploy(target(configured(local_config, hook_dir)), SHA)
    assert refused.value.details == [f"HOOKS_DIR: {hook_dir}/post-deploy is not executable: `chmod +x` it, or "
                                     "remove it"]
    with pytest.raises(ConfigError):
        operations.rollback(target(configured(local_config, hook_dir)))
    assert all(t.calls == [] for t in fleet.values())


def test_a_dry_run_runs_no_hook_and_sends_nothing(fleet, local_config, hook_dir, log, receiver, capsys):
    for name in (hooks.PRE_DEPLOY, hooks.POST_DEPLOY):
        write_hook(hook_dir, name, log)
    config = configured(local_config, hook_dir, webhook_url=receiver.url)
    operations.deploy(target(config, HOSTS[:1]), SHA, dry_run=True, echo=print)
    assert runs(log) == [] and receiver.received == []
    out = capsys.readouterr().out
    assert (f"dry run: runs no hook (pre-deploy, post-deploy in {hook_dir}) and sends no notification "
            "(WEBHOOK_URL is set)") in out
    assert TOKEN not in out


def test_maintenance_toggles_run_no_hook_and_send_nothing(fleet, local_config, hook_dir, log, receiver):
    for name in hooks.NAMES:
        write_hook(hook_dir, name, log)
    operations.set_maintenance(target(configured(local_config, hook_dir, webhook_url=receiver.url)), False)
    assert runs(log) == [] and receiver.received == []


def test_inherited_deploy_variables_never_reach_a_hook(fleet, local_config, hook_dir, log, monkeypatch):
    monkeypatch.setenv("DEPLOY_HOST", "stale.example.com")
    monkeypatch.setenv("DEPLOY_OUTCOME", "stale")
    monkeypatch.setenv("DEPLOY_TEAM_VARIABLE", "kept")  # not one of ours: passed on
    write_hook(hook_dir, hooks.PRE_DEPLOY, log)
    operations.deploy(target(configured(local_config, hook_dir), HOSTS[:1]), SHA)
    run = runs(log)[0]
    assert "DEPLOY_HOST" not in run and "DEPLOY_OUTCOME" not in run and run["DEPLOY_TEAM_VARIABLE"] == "kept"


# --- the webhook around a deploy --------------------------------------------------------------------------

def test_a_deploy_sends_start_then_success_with_its_figures(fleet, local_config, hook_dir, receiver, capsys):
    at_prepare: list[list[str]] = []
    fleet[HOSTS[0]].on(PREPARE, lambda: at_prepare or at_prepare.append(list(receiver.events)))
    config = configured(local_config, hook_dir, webhook_url=receiver.url)
    operations.deploy(target(config), SHA, echo=print)
    assert receiver.events == ["start", "success"] and at_prepare == [["start"]]
    assert {path for path, _ in receiver.received} == {f"/services/{TOKEN}"}
    start, success = (body for _, body in receiver.received)
    assert start["text"] == start["content"] and SHA[:12] in start["text"] and "local" in start["text"]
    facts = success["deploytasks"]
    assert (facts["kind"], facts["sha"], facts["env"], facts["hosts"]) == ("deploy", SHA, "local", list(HOSTS))
    assert facts["outcome"] == "ok" and facts["outcomes"] == {host: "ok" for host in HOSTS}
    assert facts["duration_s"] >= 0 and facts["probe"] == {} and facts["id"] == history_of(fleet[HOSTS[0]])[-1]["fleet"]
    assert "succeeded on" in success["text"]
    assert TOKEN not in capsys.readouterr().out


def test_a_failed_deploy_sends_failure_with_each_hosts_outcome(fleet, local_config, hook_dir, receiver):
    fleet[HOSTS[1]].answer(VERIFY, exited=22, first=True)
    with pytest.raises(StepFailed):
        operations.deploy(target(configured(local_config, hook_dir, webhook_url=receiver.url)), SHA)
    assert receiver.events == ["start", "failure"]
    facts = receiver.received[1][1]["deploytasks"]
    assert facts["outcome"] == "failed" and HOSTS[1] in facts["error"]
    assert facts["outcomes"] == {HOSTS[0]: "rolled back", HOSTS[1]: "failed", HOSTS[2]: "undone"}
    assert "FAILED after" in receiver.received[1][1]["text"]


def test_a_dead_webhook_is_a_warning_and_never_fails_the_deploy(fleet, local_config, hook_dir, capsys):
    url = f"http://127.0.0.1:{closed_port()}/services/{TOKEN}"
    serving = operations.deploy(target(configured(local_config, hook_dir, webhook_url=url), HOSTS[:1]), SHA,
                                echo=print)
    assert serving == {HOSTS[0]: SHA} and history_of(fleet[HOSTS[0]])[-1]["outcome"] == "ok"
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("! webhook")]
    assert warnings == ["! webhook: the start notice was not delivered: could not connect (a warning only)",
                        "! webhook: the success notice was not delivered: could not connect (a warning only)"]
    assert TOKEN not in out and "127.0.0.1:" not in out.replace("127.0.0.1:8080", "")


def test_a_webhook_answering_an_error_is_a_warning(fleet, local_config, hook_dir, receiver, capsys):
    receiver.status = 404
    operations.deploy(target(configured(local_config, hook_dir, webhook_url=receiver.url), HOSTS[:1]), SHA,
                      echo=print)
    assert "! webhook: the success notice was not delivered: answered HTTP 404 (a warning only)" in \
        capsys.readouterr().out


def test_the_webhook_url_is_masked_in_a_failures_output(fleet, local_config, hook_dir, log, receiver, capsys):
    """A hook that prints the URL (say, curl's error), and a failure whose text holds it: masked."""
    write_hook(hook_dir, hooks.DEPLOY_FAILED, log, then=f'echo "curl: (7) {receiver.url}"\nexit 7\n')
    fleet[HOSTS[0]].answer(VERIFY, exited=22, stderr=f"posting to {receiver.url}", first=True)
    with pytest.raises(StepFailed):
        operations.deploy(target(configured(local_config, hook_dir, webhook_url=receiver.url), HOSTS[:1]), SHA,
                          echo=print)
    out = capsys.readouterr().out
    assert "hook deploy-failed: curl: (7) ********" in out and TOKEN not in out
    assert TOKEN not in json.dumps([body for _, body in receiver.received])


def test_deploy_failed_still_runs_after_a_ctrl_c_stopped_the_rollout(local_config, hook_dir, log, capsys):
    """The first Ctrl-C stops a running pre-deploy or post-switch; once the rollout is undone, the
    deploy-failed it calls for runs to its end (a second Ctrl-C would abort it)."""
    write_hook(hook_dir, hooks.DEPLOY_FAILED, log, then="sleep 0.5\necho finished\n")
    told = events.Events(configured(local_config, hook_dir), "deploy", "0123456789ab", echo=print)
    told.starting(HOSTS[:1], [Plan("deploy", SHA, (), {"colour": "green", "previous": OLD})], "me@here",
                  stop=lambda: True)  # Ctrl-C was pressed during the rollout
    told.finished({HOSTS[0]: "failed"}, StepFailed(f"{HOSTS[0]}: interrupted (Ctrl-C)"))
    out = capsys.readouterr().out
    assert "hook deploy-failed: finished" in out and "hook deploy-failed: ok (" in out
    run = named(log, "deploy-failed")[0]
    assert (run["DEPLOY_OUTCOME"], run["DEPLOY_ERROR"]) == ("failed", f"{HOSTS[0]}: interrupted (Ctrl-C)")
    assert (run["DEPLOY_PREVIOUS_SHA"], run["DEPLOY_COLOUR"], run["DEPLOY_ID"]) == (OLD, "green", "0123456789ab")
