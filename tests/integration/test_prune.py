"""`prune` on the real testbed: it keeps what it must (the live release, the previous one, the stopped
colour's containers, the newest KEEP_RELEASES that served) and removes the rest with what only it used;
a release left by a deploy that died never counts as one that served; `--dry-run` lists exactly that
and changes nothing; rollbacks work afterwards.

The deploys before a prune run with KEEP_RELEASES=10, so their own cleanups remove nothing and the
prune (KEEP_RELEASES=3, then 2) decides alone.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from deploytasks import holder, operations
from deploytasks.errors import StepFailed
from deploytasks.layout import Layout
from harness import testbed

from .support import PUBLIC, ROOT, containers, history, serving, sha, target_of

WEB = "127.0.0.1:5000/example/web"


def releases(config) -> list[str]:
    return sorted(os.listdir(Path(config.deploy_path, "releases")))


def image_present(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0


def images_containers_use() -> set[str]:
    out = subprocess.run(["docker", "ps", "-a", "--format", "{{.Image}}"], capture_output=True, text=True,
                         check=True).stdout
    return set(out.split())


def kill_deploy_at(name: str, step: str) -> str:
    """`inv deploy --env local --sha <name>` as a user runs it, SIGKILLed as it reaches `step`: the
    deploying machine dies, leaving the release it made, the lock and the in-progress marker."""
    process = subprocess.Popen(["timeout", "180", sys.executable, "-m", "invoke", "deploy", "--env", "local",
                                "--sha", sha(name)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = []
    for line in process.stdout:
        output.append(line)
        if f"-> {step}" in line:
            subprocess.run(["pkill", "-KILL", "-P", str(process.pid)], check=True)
            break
    output.extend(process.stdout)
    assert process.wait(timeout=60) != 0, "".join(output)
    assert f"-> {step}" in "".join(output), "".join(output)
    return "".join(output)


def wait_until_the_holder_is_dead(config, timeout: float = 90) -> None:
    """Until the killed deploy's lease has lapsed: before that its release is a deploy under way (kept)."""
    deadline = time.monotonic() + timeout
    while True:
        with operations.session(target_of(config), config.hosts[0]) as remote:
            state = operations.read_state(remote, config)
        if state.holder and state.holder.verdict == holder.DEAD:
            return
        assert time.monotonic() < deadline, f"the killed deploy's lock was never judged dead: {state.holder}"
        time.sleep(2)


def listed(out: str, host: str = "127.0.0.1") -> list[str]:
    """The prune listing's keep/remove lines, without the host prefix."""
    prefix = f"[{host}]   "
    return [line[len(prefix):] for line in out.splitlines()
            if line.startswith(prefix + "keep ") or line.startswith(prefix + "remove ")]


def test_prune_keeps_what_it_must(fresh_host, capsys):
    config = fresh_host
    many = target_of(config, keep_releases=10)
    v1, v2, v3 = sha("v1"), sha("v2"), sha("v3")

    operations.deploy(many, v1)                                          # R1 blue
    with pytest.raises(StepFailed, match="not ready after 8s"):          # undone: leaves no release
        operations.deploy(target_of(config, keep_releases=10, health_timeout=8.0), sha("never-ready"))
    for name in ("v2", "v3", "v2", "v3"):                                # R2 green .. R5 blue
        operations.deploy(many, sha(name))
    r1, r2, r3, r4, r5 = releases(config)
    assert [r.rsplit("-", 1)[1] for r in (r1, r2, r3, r4, r5)] == [v1, v2, v3, v2, v3]
    assert serving() == v3 and containers("example-green") == {"web": "exited"}

    # a deploy of v1 dies after pulling (its machine is killed): its release R6 stays, never served
    kill_deploy_at("v1", "networks")
    (r6,) = set(releases(config)) - {r1, r2, r3, r4, r5}
    assert r6.endswith(v1) and serving() == v3
    wait_until_the_holder_is_dead(config)

    # KEEP_RELEASES=3: R5 (live), R4 (previous: green's, stopped) and R3 stay. The old rule kept the
    # newest three by name (R4, R5, R6) and removed R3, which served, for the dead R6.
    v1_image = f"{WEB}:{v1}"
    assert image_present(v1_image) and image_present(f"{WEB}:{v2}") and image_present(f"{WEB}:{v3}")
    gone_images = [] if v1_image in images_containers_use() else [v1_image]  # another app may run v1: kept
    expected = [f"keep    release {r3}  one of the newest 3 that served",
                f"keep    release {r4}  previous (the rollback target)",
                f"keep    release {r5}  live",
                f"remove  release {r1}  older than the newest 3 that served",
                f"remove  release {r2}  older than the newest 3 that served",
                f"remove  release {r6}  no successful deploy of it in the history (it never finished)",
                *(f"remove  image {image}" for image in gone_images)]
    pruning = target_of(config, keep_releases=3)

    before = (releases(config), Path(Layout.of(config).history).read_text(), image_present(v1_image),
              containers("example-blue"), containers("example-green"))
    capsys.readouterr()
    operations.prune(pruning, dry_run=True)
    out = capsys.readouterr().out
    assert "[127.0.0.1] dry run: prune; nothing will be changed" in out
    assert listed(out) == expected, out
    assert (releases(config), Path(Layout.of(config).history).read_text(), image_present(v1_image),
            containers("example-blue"), containers("example-green")) == before, "the dry run changed nothing"
    assert Path(Layout.of(config).lock).exists(), "nor took the dead deploy's lock over"

    operations.prune(pruning, lock_wait=60)
    out = capsys.readouterr().out
    assert listed(out) == expected, out
    assert "took over the deploy lock of a dead deploy" in out
    assert releases(config) == [r3, r4, r5]
    assert not image_present(v1_image) if gone_images else image_present(v1_image)
    assert image_present(f"{WEB}:{v2}") and image_present(f"{WEB}:{v3}"), "the kept releases' images stay"
    assert containers("example-blue") == {"web": "running"}
    assert containers("example-green") == {"web": "exited"}, "the stopped colour is kept: the instant rollback"
    assert serving() == v3
    assert not Path(Layout.of(config).lock).exists(), "the lock was released"
    died, pruned = history(config)[-2:]
    assert (died["kind"], died["sha"], died["outcome"], died.get("release")) == ("deploy", v1, "died", r6)
    assert (pruned["kind"], pruned["outcome"]) == ("prune", "ok")
    assert pruned["prune"] == {"releases": [r1, r2, r6], "images": gone_images, "virtualenvs": []}

    operations.status(target_of(config))  # exits 0: the dead deploy's marker went with its obituary
    assert f"standby green: {v2} " in capsys.readouterr().out  # (status doubts it: a deploy to green died)

    # nothing left to prune
    operations.prune(pruning, dry_run=True)
    assert "prune: nothing to remove (3 release(s) kept; KEEP_RELEASES=3)" in capsys.readouterr().out

    # the rollbacks still work: to the stopped colour, instantly, and to a SHA whose image was pruned
    operations.rollback(target_of(config))
    assert serving() == v2
    assert containers("example-green") == {"web": "running"} and containers("example-blue") == {"web": "exited"}
    operations.rollback(target_of(config), to=v1)  # pulled again from the registry
    assert serving() == v1
    assert requests.get(f"{PUBLIC}/healthz", timeout=5).status_code == 200


# --- process releases: release directories and the virtualenvs only they used ---------------------------

PROCESS_PUBLIC = "http://127.0.0.1:8081"


def psha(name: str) -> str:
    return testbed.process_sha(name)


def process_serving() -> str:
    return requests.get(f"{PROCESS_PUBLIC}/version", timeout=5).text.strip()


def test_prune_keeps_what_it_must_for_process_releases(proc_host, capsys):
    config = proc_host
    many = target_of(config, keep_releases=10)
    operations.deploy(many, psha("v1"))                   # P1 blue, its own virtualenv
    operations.deploy(many, psha("v2"))                   # P2 green, a new one (no --fast)
    with pytest.raises(StepFailed, match="not ready"):    # its release undone; its virtualenv, if new, left
        operations.deploy(target_of(config, keep_releases=10, health_timeout=6.0), psha("never-ready"))
    operations.deploy(many, psha("v3"), fast=True)        # P3 blue
    operations.deploy(many, psha("v2"), fast=True)        # P4 green
    p1, p2, p3, p4 = releases(config)
    assert process_serving() == psha("v2")

    root = Path(config.deploy_path)
    venvs = root / "shared" / "venvs"

    def venv_of(release: str) -> str:
        return os.path.basename(os.readlink(root / "releases" / release / ".venv"))

    kept_venvs = {venv_of(p3), venv_of(p4)}
    gone_venvs = sorted(set(os.listdir(venvs)) - kept_venvs)
    assert venv_of(p1) in gone_venvs, "only P1 used P1's virtualenv (P2 built its own)"
    expected = [f"keep    release {p3}  previous (the rollback target)",
                f"keep    release {p4}  live",
                f"remove  release {p1}  older than the newest 2 that served",
                f"remove  release {p2}  older than the newest 2 that served",
                *(f"remove  virtualenv {venv}" for venv in gone_venvs)]
    pruning = target_of(config, keep_releases=2)

    before = (releases(config), sorted(os.listdir(venvs)), Path(Layout.of(config).history).read_text())
    capsys.readouterr()
    operations.prune(pruning, dry_run=True)
    assert listed(capsys.readouterr().out) == expected
    assert (releases(config), sorted(os.listdir(venvs)), Path(Layout.of(config).history).read_text()) == before

    operations.prune(pruning)
    assert listed(capsys.readouterr().out) == expected
    assert releases(config) == [p3, p4]
    assert set(os.listdir(venvs)) == kept_venvs, "the virtualenvs of the kept releases, and no other"
    assert process_serving() == psha("v2")
    record = history(config)[-1]
    assert (record["kind"], record["outcome"]) == ("prune", "ok")
    assert record["prune"] == {"releases": [p1, p2], "images": [], "virtualenvs": gone_venvs}

    operations.rollback(target_of(config))  # blue, from P3 and its virtualenv
    assert process_serving() == psha("v3")
