"""`prune`: its plan (exact argv), its listing, its dry run and its run over an in-memory host, and
the task's options, checked before any connection."""
from __future__ import annotations

import dataclasses
import json
import re
import shlex

import pytest
from conftest import GOOD_ENV, StubLease, make_root
from invoke import Context, Exit

from deploytasks import lock, locking, operations, releases, tasks
from deploytasks.backends import containers, processes
from deploytasks.backends.containers import Containers
from deploytasks.backends.processes import Processes
from deploytasks.errors import ConfigError
from deploytasks.facts import HostState
from deploytasks.plan import cmd, sh
from harness.memory import MemoryTransport

ROOT = "/srv/example"
WEB = "127.0.0.1:5000/example/web"
FACTS = re.compile("other-live")  # a word of the host-state script alone
ACQUIRE = re.compile(re.escape(shlex.quote(lock._ACQUIRE)))
RELEASE = re.compile(re.escape(shlex.quote(lock._RELEASE)))


def rel(i: int) -> str:
    return f"202401{i:02d}T000000Z-{i:07x}"


def ok(i: int) -> dict:
    return {"time": f"2024-01-{i:02d}T00:00:01Z", "kind": "deploy", "sha": f"{i:07x}", "release": rel(i),
            "outcome": "ok"}


# six releases: 1..4 served, 5 serves (blue), 4 is green's (stopped), 6 died half way
HISTORY = (*(ok(i) for i in range(1, 6)),
           {"time": "2024-01-06T00:00:01Z", "kind": "deploy", "sha": f"{6:07x}", "release": rel(6), "outcome": "died"})
STATE = HostState(colours={"blue": rel(5), "green": rel(4)}, live="blue", current=rel(5),
                  releases=tuple(rel(i) for i in range(1, 7)), history=HISTORY,
                  images=tuple(f"{WEB}:{i:07x}" for i in range(2, 7)))


def facts_output(state: HostState) -> str:
    """What the host-state script prints for `state` (the subset prune reads)."""
    lines = [f"now {state.now or 1_704_500_000}"]
    lines += [f"colour {colour} ../releases/{release}" for colour, release in state.colours.items()]
    lines += [f"live {state.live}/web.sock", f"current releases/{state.current}"] if state.live else []
    lines += [f"release {r}" for r in state.releases]
    lines += [f"release-venv {r} {venv}" for r, venv in state.release_venvs.items()]
    lines += [f"venv {v}" for v in state.venvs]
    lines += [f"history {json.dumps(record)}" for record in state.history]
    if state.images is not None:
        lines += [f"image {image}" for image in state.images]
        lines.append("images listed")
    return "\n".join(lines) + "\n"


@pytest.fixture
def config(local_config):
    return dataclasses.replace(local_config, keep_releases=3)


# --- the plan ------------------------------------------------------------------------------------

def test_the_plan_removes_the_doomed_releases_then_their_images(config):
    plan = releases.prune(config, STATE, Containers(config))
    assert plan.kind == "prune" and plan.sha == ""
    (step,) = plan.steps
    assert step.phase == "cleanup" and step.name == "prune (3 release(s), 2 image(s), 0 virtualenv(s))"
    assert not step.best_effort and step.undo == (), "a failing prune fails the task; nothing to put back"
    # kept: 5 (live), 4 (previous), 3 (the third newest that served); 6 died, 1 and 2 are older.
    # Images: the host no longer has 1's; 6's and 2's go; 3's, 4's and 5's are kept releases'
    assert step.actions == (cmd("rm", "-rf", *(f"{ROOT}/releases/{rel(i)}" for i in (1, 2, 6))),
                            cmd(*sh(containers._REMOVE_IMAGES, f"{WEB}:{2:07x}", f"{WEB}:{6:07x}")))
    assert plan.summary["record"] == {"prune": {"releases": [rel(1), rel(2), rel(6)],
                                                "images": [f"{WEB}:{2:07x}", f"{WEB}:{6:07x}"], "virtualenvs": []}}


def test_the_listing_says_what_goes_and_why_the_rest_stays(config):
    listing = releases.prune(config, STATE, Containers(config)).summary["listing"]
    assert listing == [
        "prune: 3 release(s), 2 image(s), 0 virtualenv(s) to remove; KEEP_RELEASES=3",
        f"  keep    release {rel(3)}  one of the newest 3 that served",
        f"  keep    release {rel(4)}  previous (the rollback target)",
        f"  keep    release {rel(5)}  live",
        f"  remove  release {rel(1)}  older than the newest 3 that served",
        f"  remove  release {rel(2)}  older than the newest 3 that served",
        f"  remove  release {rel(6)}  its deploy ended 'died'",
        f"  remove  image {WEB}:{2:07x}",
        f"  remove  image {WEB}:{6:07x}",
    ]


def test_nothing_to_remove(config):
    state = dataclasses.replace(STATE, releases=STATE.releases[2:5], history=HISTORY[2:5])
    plan = releases.prune(config, state, Containers(config))
    assert plan.steps[0].actions == () and plan.steps[0].name == "prune (0 release(s), 0 image(s), 0 virtualenv(s))"
    assert plan.summary["listing"][0] == "prune: nothing to remove (3 release(s) kept; KEEP_RELEASES=3)"


def test_a_process_host_loses_release_directories_and_virtualenvs(process_config):
    config = dataclasses.replace(process_config, keep_releases=3)
    venvs = f"{config.deploy_path}/shared/venvs"
    state = dataclasses.replace(STATE, images=None, venvs=("h1-a", "h2-b", "h3-c"),
                                release_venvs={rel(1): f"{venvs}/h1-a", rel(2): f"{venvs}/h1-a", rel(3): f"{venvs}/h2-b",
                                               rel(4): f"{venvs}/h2-b", rel(5): f"{venvs}/h3-c",
                                               rel(6): f"{venvs}/h3-c"})
    plan = releases.prune(config, state, Processes(config))
    assert plan.steps[0].actions == (
        cmd("rm", "-rf", *(f"{config.deploy_path}/releases/{rel(i)}" for i in (1, 2, 6))),
        cmd(*sh(processes._REMOVE_VENVS, f"{config.deploy_path}/releases", ".venv", f"{venvs}/h1-a")))
    assert plan.summary["listing"][-1] == "  remove  virtualenv h1-a"
    assert "docker" not in " ".join(a for action in plan.steps[0].actions for a in action.argv)


def test_hostile_release_names_reach_rm_as_single_arguments(config):
    hostile = "20240101T000000Z-abc1234; rm -rf /"
    state = dataclasses.replace(STATE, releases=(hostile, *STATE.releases))
    plan = releases.prune(config, state, Containers(config))
    assert hostile not in " ".join(plan.steps[0].actions[0].argv), "not named like a release: left alone"
    assert "  keep    release " + hostile in "\n".join(plan.summary["listing"])


# --- through operations, over an in-memory host ------------------------------------------------------

@pytest.fixture
def memory_host(monkeypatch):
    transport = MemoryTransport("127.0.0.1").answer(FACTS, stdout=facts_output(STATE))
    monkeypatch.setattr(operations, "connect", lambda config, host, **options: transport)
    monkeypatch.setattr(locking, "Lease", StubLease)
    return transport


def test_dry_run_lists_what_would_go_on_each_host_and_changes_nothing(config, memory_host, capsys):
    operations.prune(operations.Target(config, ("127.0.0.1",)), dry_run=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[127.0.0.1] dry run: prune; nothing will be changed"
    assert out[1] == "[127.0.0.1] prune: 3 release(s), 2 image(s), 0 virtualenv(s) to remove; KEEP_RELEASES=3"
    assert f"[127.0.0.1]   remove  release {rel(6)}  its deploy ended 'died'" in out
    assert f"[127.0.0.1]   remove  image {WEB}:{6:07x}" in out
    assert f"[127.0.0.1]   keep    release {rel(4)}  previous (the rollback target)" in out
    assert "[127.0.0.1] 1. prune (3 release(s), 2 image(s), 0 virtualenv(s))" in out
    assert len(memory_host.commands) == 1 and FACTS.search(memory_host.commands[0]), "read the state, nothing else"
    assert memory_host.commands[0].endswith(" yes"), "the state read lists the host's images"


def test_prune_takes_the_lock_removes_and_records_a_history_line(config, memory_host, capsys):
    operations.prune(operations.Target(config, ("127.0.0.1",)))
    commands = memory_host.commands
    acquired = next(i for i, c in enumerate(commands) if ACQUIRE.search(c))
    removed = next(i for i, c in enumerate(commands) if c.startswith("rm -rf /srv/example/releases/"))
    assert acquired < removed < next(i for i, c in enumerate(commands) if RELEASE.search(c))
    assert shlex.split(commands[removed]) == ["rm", "-rf", *(f"{ROOT}/releases/{rel(i)}" for i in (1, 2, 6))]
    assert any(c.startswith("sh -c " + shlex.quote(containers._REMOVE_IMAGES)) for c in commands)
    lines = [shlex.split(c) for c in commands if "history.jsonl" in c and ">>" in c]
    record = json.loads(lines[-1][-1])
    assert (record["kind"], record["sha"], record["outcome"]) == ("prune", "", "ok")
    assert record["prune"]["releases"] == [rel(1), rel(2), rel(6)]
    out = capsys.readouterr().out
    assert f"[127.0.0.1]   remove  release {rel(6)}  its deploy ended 'died'" in out, "what goes, before it goes"
    assert "[127.0.0.1]    ok prune (3 release(s), 2 image(s), 0 virtualenv(s))" in out


def test_prune_writes_the_obituary_of_the_dead_deploy_it_finds(config, memory_host):
    """A deploy that died left its release and its marker: prune takes the lock over, says in the
    history how that deploy ended, and removes its release (judged before: it never finished)."""
    marker = {"kind": "deploy", "sha": f"{6:07x}", "release": rel(6), "colour": "green", "user": "ci@runner",
              "token": "dead", "since": 1_704_499_000, "step": "started"}
    state = dataclasses.replace(STATE, history=HISTORY[:5])
    memory_host.answer(FACTS, stdout=facts_output(state) + f"deploying {json.dumps(marker)}\n", first=True)
    operations.prune(operations.Target(config, ("127.0.0.1",)))
    lines = [json.loads(shlex.split(c)[-1]) for c in memory_host.commands if "history.jsonl" in c and ">>" in c]
    assert [(r["kind"], r["outcome"]) for r in lines] == [("deploy", "died"), ("prune", "ok")]
    assert lines[0]["release"] == rel(6), "the obituary names the dead deploy's release"
    assert lines[1]["prune"]["releases"] == [rel(1), rel(2), rel(6)]


def test_lock_options_are_checked_before_any_connection(config, memory_host):
    target = operations.Target(config, ("127.0.0.1",))
    for options in ({"force": True}, {"lock_wait": "soon"}, {"lock_wait": -1}):
        with pytest.raises(ConfigError):
            operations.prune(target, **options)
    assert memory_host.calls == []


# --- the task --------------------------------------------------------------------------------------

def test_the_task_hands_its_options_to_the_operation(tmp_path, monkeypatch):
    monkeypatch.chdir(make_root(tmp_path, {"good": GOOD_ENV}))
    seen = {}
    monkeypatch.setattr(operations, "prune", lambda target, **options: seen.update(options, hosts=target.hosts))
    tasks.prune(Context(), env="good", dry_run=True, force_unlock=True, force=True, lock_wait="30")
    assert seen == {"dry_run": True, "force_unlock": True, "force": True, "lock_wait": "30",
                    "hosts": ("app1.example.com", "10.0.0.5")}


def test_a_bad_environment_stops_the_task_before_connecting(tmp_path, monkeypatch):
    monkeypatch.chdir(make_root(tmp_path, {"bad": GOOD_ENV.replace("SSH_PORT=22", "SSH_PORT=99999")}))
    monkeypatch.setattr(operations, "connect", lambda *a, **k: pytest.fail("connected"))
    with pytest.raises(Exit) as exit_:
        tasks.prune(Context(), env="bad", dry_run=True)
    assert exit_.value.code == 1 and "SSH_PORT: 99999 is out of range" in exit_.value.message
