"""Which releases a host keeps (releases.select), and what goes with the others (Backend.freed):
one rule for the cleanup that ends every deploy and for `prune`, judged from hand-built host states."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import container_deploy

from deploytasks import facts, releases
from deploytasks.backends import containers
from deploytasks.backends.containers import Containers
from deploytasks.backends.processes import Processes
from deploytasks.facts import Container, HostState
from deploytasks.layout import Layout
from deploytasks.plan import sh

ROOT = "/srv/example"
WEB = "127.0.0.1:5000/example/web"


def rel(i: int, sha: str | None = None) -> str:
    """The i-th release (day i of January 2024), of its own SHA unless one is given."""
    return f"202401{i:02d}T000000Z-{sha or f'{i:07x}'}"


def sha_of(release: str) -> str:
    return release.rsplit("-", 1)[1]


def line(release: str, outcome: str = "ok", kind: str = "deploy", named: bool = True, **extra) -> dict:
    """A history line about `release`, written a second after the release was made."""
    day = release[6:8]
    record = {"time": f"2024-01-{day}T00:00:01Z", "kind": kind, "sha": sha_of(release), "outcome": outcome,
              "steps": {"prepare": 0.1, "switch": 0.1} if outcome == "ok" else {}, **extra}
    return {**record, "release": release} if named else record


def host(n: int, *, live: int | None = None, other: int | None = None, failed: dict[int, str] | None = None,
         named: bool = True, **changes) -> HostState:
    """Releases 1..n on a host; each deploy succeeded unless `failed` says how it ended; `live` serves
    from blue, `other` is green's (stopped)."""
    failed = failed or {}
    rels = tuple(rel(i) for i in range(1, n + 1))
    history = tuple(line(r, failed.get(i, "ok"), named=named) for i, r in enumerate(rels, 1))
    colours = {**({"blue": rel(live)} if live else {}), **({"green": rel(other)} if other else {})}
    return dataclasses.replace(HostState(now=1_700_000_000, colours=colours, live="blue" if live else None,
                                         current=rel(live) if live else None, releases=rels, history=history),
                               **changes)


def doomed(state: HostState, keep: int) -> list[int]:
    return [int(r[6:8]) for r in releases.select(state, keep).doomed]


# --- the rule -----------------------------------------------------------------------------------

def test_fewer_releases_than_keep_releases_keeps_them_all():
    assert doomed(host(3, live=3, other=2), 5) == []
    assert doomed(host(0), 5) == [] and releases.select(HostState(), 5) == releases.Selection({}, {})


def test_the_newest_that_served_are_kept_beyond_live_and_previous():
    chosen = releases.select(host(8, live=8, other=7), 5)
    assert [int(r[6:8]) for r in chosen.doomed] == [1, 2, 3]
    assert chosen.keep == {rel(8): "live", rel(7): "previous (the rollback target)",
                           **{rel(i): "one of the newest 5 that served" for i in (4, 5, 6)}}
    assert set(chosen.drop.values()) == {"older than the newest 5 that served"}


def test_a_failed_release_newest_never_takes_a_place_of_the_good_ones():
    # 1..5 served; 6 died half way (its directory left); blue serves 5, green keeps 4
    state = host(6, live=5, other=4, failed={6: "died"})
    chosen = releases.select(state, 3)
    assert chosen.kept == [rel(3), rel(4), rel(5)], "three that served, not the dead one"
    assert chosen.drop == {rel(1): "older than the newest 3 that served", rel(2): "older than the newest 3 that served",
                           rel(6): "its deploy ended 'died'"}


@pytest.mark.parametrize("outcome", ["failed", "failed, not undone", "died", "lost", "rolled back", "undone"])
def test_no_failed_outcome_counts_as_served(outcome):
    assert doomed(host(4, live=2, other=1, failed={3: outcome, 4: outcome}), 2) == [3, 4]


def test_a_release_no_history_line_names_never_finished():
    # 4 was made after the history's oldest line, and no line names it: its deploy is under way
    # nowhere (no marker) and never recorded anything (the deployer died before its obituary)
    state = host(3, live=3, other=2)
    state = dataclasses.replace(state, releases=(*state.releases, rel(4)))
    chosen = releases.select(state, 5)
    assert chosen.drop == {rel(4): "no successful deploy of it in the history (it never finished)"}


def test_live_and_previous_are_kept_even_when_failed_or_old():
    # a rollback --to 1 left blue on release 1, green on 2; 3..6 served since; 7 serves though its
    # deploy could not be undone (failed, not undone): live, kept, but not one of the places
    state = host(7, live=1, other=2, failed={7: "failed, not undone"})
    state = dataclasses.replace(state, colours={"blue": rel(1), "green": rel(7)}, live="green", current=rel(7))
    chosen = releases.select(state, 2)
    assert chosen.keep == {rel(7): "live", rel(1): "previous (the rollback target)",
                           rel(5): "one of the newest 2 that served", rel(6): "one of the newest 2 that served"}
    assert doomed(state, 2) == [2, 3, 4]


def test_every_colour_and_current_are_kept():
    # no live link (nginx's was removed by hand): both colours and current stay all the same
    state = dataclasses.replace(host(6), colours={"blue": rel(1), "green": rel(2)}, live=None, current=rel(3))
    chosen = releases.select(state, 2)
    assert chosen.keep == {rel(1): "the blue colour's", rel(2): "the green colour's", rel(3): "current",
                           rel(5): "one of the newest 2 that served", rel(6): "one of the newest 2 that served"}
    assert doomed(state, 2) == [4]


def test_the_stopped_colour_is_kept_even_when_its_release_failed():
    # green's release 4 was switched to and is stopped now; a failed record for it changes nothing
    assert 4 not in doomed(host(6, live=6, other=4, failed={4: "failed, not undone"}), 2)


def test_the_same_sha_twice_is_judged_per_release():
    sha = "abcdef0"
    good, dead = rel(1, sha), rel(3, sha)
    state = HostState(colours={"blue": rel(4), "green": rel(5)}, live="blue", current=rel(4),
                      releases=(good, rel(2), dead, rel(4), rel(5)),
                      history=(line(good), line(rel(2)), line(dead, "died"), line(rel(4)), line(rel(5))))
    assert releases.select(state, 4).doomed == [dead]


def test_lines_written_before_lines_named_their_release_are_matched_by_sha_and_time():
    sha = "abcdef0"
    good, dead = rel(1, sha), rel(3, sha)
    state = HostState(colours={"blue": rel(4), "green": rel(2)}, live="blue", current=rel(4),
                      releases=(good, rel(2), dead, rel(4)),
                      history=(line(good, named=False), line(rel(2), named=False), line(rel(4), named=False)))
    # 3 was made after the line of 1 and no line of its own says it served: the one of 1 is not its
    assert releases.select(state, 3).doomed == [dead]
    assert releases.select(state, 3).keep[good] == "one of the newest 3 that served"


def test_a_failed_rollback_to_a_release_says_nothing_of_its_deploy():
    # release 2 served (its deploy line is older than the history kept); a plain rollback to it failed since
    state = host(4, live=4, other=3)
    rollback = line(rel(2), "failed", kind="rollback", failed_after=["start"])
    state = dataclasses.replace(state, history=(*state.history[2:], dict(rollback, time="2024-01-05T00:00:00Z")))
    assert releases.select(state, 3).keep[rel(2)] == "one of the newest 3 that served"


def test_a_failed_rollback_to_that_made_a_release_is_a_failed_deploy():
    state = host(4, live=3, other=2)
    to = line(rel(4), "failed", kind="rollback", failed_after=["prepare", "upload"])
    state = dataclasses.replace(state, history=(*state.history[:3], to))
    assert releases.select(state, 3).drop == {rel(4): "its rollback ended 'failed'"}


def test_releases_older_than_the_history_count_as_served():
    # the history keeps its last 200 lines (or was lost): what it no longer covers cannot be judged
    state = dataclasses.replace(host(6, live=6, other=5), history=host(6).history[3:])
    assert doomed(state, 4) == [1, 2]
    assert doomed(dataclasses.replace(state, history=()), 4) == [1, 2], "no history at all: by name, as before"


def test_directories_not_named_like_a_release_are_left_alone():
    state = host(4, live=4, other=3)
    state = dataclasses.replace(state, releases=("backup-by-hand", *state.releases, "zz"))
    chosen = releases.select(state, 2)
    assert chosen.keep["backup-by-hand"] == chosen.keep["zz"] == "not named <UTC-ts>-<sha>: not a release of ours"
    assert doomed(dataclasses.replace(state, releases=state.releases[1:-1]), 2) == [1, 2]


def test_the_release_of_a_deploy_under_way_is_kept_but_not_one_left_behind():
    state = host(3, live=2, other=1)
    state = dataclasses.replace(state, releases=(*state.releases, rel(4)))
    marker = {"kind": "deploy", "sha": sha_of(rel(4)), "release": rel(4), "token": "t1", "step": "started"}
    running = dataclasses.replace(state, in_progress=marker, lock={"token": "t1"})
    assert releases.select(running, 2).keep[rel(4)] == "its deploy is under way"
    dead = dataclasses.replace(state, in_progress=marker, lock={"token": "ours"})  # we took its lock over
    assert rel(4) in releases.select(dead, 2).drop


def test_keep_releases_counts_only_what_served():
    state = host(10, live=10, other=9, failed={i: "failed" for i in (2, 4, 6, 8)})
    assert doomed(state, 3) == [1, 2, 3, 4, 5, 6, 8]
    assert doomed(state, 6) == [2, 4, 6, 8]


# --- at the end of a deploy: the same rule, on the host as the switch leaves it -------------------------

def test_after_switch_the_new_release_serves_and_counts_as_served():
    state = host(3, live=3, other=2)
    after = releases.after_switch(state, "green", rel(4))
    assert after.live == "green" and after.colours == {"blue": rel(3), "green": rel(4)} and after.current == rel(4)
    assert after.releases[-1] == rel(4) and after.history[-1]["outcome"] == "ok"
    chosen = releases.select(after, 2)
    assert chosen.keep == {rel(4): "live", rel(3): "previous (the rollback target)"}
    assert chosen.doomed == [rel(1), rel(2)], "green's release before the switch is neither live nor previous"


def test_the_deploy_cleanup_and_prune_agree(local_config):
    """The cleanup of a deploy removes what `prune` right after it would."""
    config = dataclasses.replace(local_config, keep_releases=3)
    state = host(6, live=5, other=4, failed={6: "died"})
    cleanup = container_deploy(config, state, sha_of(rel(7)), rel(7)).steps[-1]
    after = releases.after_switch(state, "green", rel(7))
    plan = releases.prune(config, after, Containers(config))
    assert cleanup.actions == plan.steps[0].actions
    # kept: 7 (live), 5 (previous), 4 (the third newest that served); 6 died
    assert cleanup.actions[0].argv == ("rm", "-rf", *(f"{ROOT}/releases/{rel(i)}" for i in (1, 2, 3, 6)))


# --- what goes with them: images (containers) ------------------------------------------------------

def _images(config, state, keep):
    chosen = releases.select(state, keep)
    return Containers(config).freed(state, chosen.doomed, chosen.kept)


def test_images_of_doomed_releases_go_unless_a_kept_release_uses_their_sha(local_config):
    sha = "abcdef0"
    state = host(4, live=4, other=3)
    state = dataclasses.replace(state, releases=(rel(1, sha), *state.releases[1:3], rel(5, sha), rel(4)),
                                history=(line(rel(1, sha)), *state.history[1:3], line(rel(4)), line(rel(5, sha))),
                                colours={"blue": rel(5, sha), "green": rel(4)}, current=rel(5, sha))
    freed = _images(local_config, state, 2)
    assert releases.select(state, 2).doomed == [rel(1, sha), rel(2), rel(3)]
    assert freed.items == (("image", f"{WEB}:{sha_of(rel(2))}"), ("image", f"{WEB}:{sha_of(rel(3))}")), \
        "release 1's SHA serves again from release 5: its image stays"


def test_images_a_container_uses_stay_and_only_those_the_host_has_go(local_config):
    state = host(5, live=5, other=4)
    stray = Container("example-green", "web", "exited", "Exited (0)", f"{WEB}:{sha_of(rel(2))}")
    state = dataclasses.replace(state, containers=(stray,))
    assert [name for _, name in _images(local_config, state, 2).items] == [f"{WEB}:{sha_of(rel(i))}" for i in (1, 3)]
    listed = dataclasses.replace(state, images=(f"{WEB}:{sha_of(rel(3))}", f"{WEB}:latest", "redis:7"))
    freed = _images(local_config, listed, 2)
    assert freed.items == (("image", f"{WEB}:{sha_of(rel(3))}"),), "release 1's image is not on the host"
    assert freed.commands[0].argv[4:] == (f"{WEB}:{sha_of(rel(3))}",)
    assert _images(local_config, dataclasses.replace(state, images=()), 2) == releases.Freed(), "none on the host"


def test_docker_hub_images_are_compared_as_docker_names_them(local_config):
    config = dataclasses.replace(local_config, images={"web": "docker.io/library/shop"})
    state = dataclasses.replace(host(4, live=4, other=3), images=(f"shop:{sha_of(rel(1))}", f"acme/shop:{sha_of(rel(2))}"),
                                containers=(Container("x", "web", "exited", "", f"docker.io/library/shop:{sha_of(rel(2))}"),))
    assert _images(config, state, 2).items == (("image", f"docker.io/library/shop:{sha_of(rel(1))}"),)
    assert containers.familiar("docker.io/acme/shop:1") == "acme/shop:1" and containers.familiar("redis") == "redis"
    assert containers.familiar("127.0.0.1:5000/library/x:1") == "127.0.0.1:5000/library/x:1"


def test_every_stateless_service_image_goes(local_config):
    config = dataclasses.replace(local_config, stateless=("web", "worker"),
                                 images={"web": WEB, "worker": "127.0.0.1:5000/example/worker"})
    freed = _images(config, host(4, live=4, other=3), 2)
    assert [name for _, name in freed.items] == sorted(f"{repo}:{sha_of(rel(i))}" for i in (1, 2)
                                                       for repo in (WEB, "127.0.0.1:5000/example/worker"))


# --- what goes with them: virtualenvs (processes) ---------------------------------------------------

def test_virtualenvs_no_kept_release_links_go(process_config):
    state = host(5, live=5, other=4)
    links = {rel(1): "h1-a", rel(2): "h1-a", rel(3): "h2-b", rel(4): "h2-b", rel(5): "h3-c"}
    state = dataclasses.replace(state, venvs=("h0-orphan", "h1-a", "h2-b", "h3-c"),
                                release_venvs={r: f"{process_config.deploy_path}/shared/venvs/{v}"
                                               for r, v in links.items()})
    chosen = releases.select(state, 3)
    assert chosen.doomed == [rel(1), rel(2)]
    freed = Processes(process_config).freed(state, chosen.doomed, chosen.kept)
    assert freed.items == (("virtualenv", "h0-orphan"), ("virtualenv", "h1-a"))
    assert freed.commands[0].argv[-2:] == tuple(f"{process_config.deploy_path}/shared/venvs/{v}"
                                                for v in ("h0-orphan", "h1-a"))


# --- the facts they are judged from -----------------------------------------------------------------

def test_facts_parse_virtualenvs_and_images():
    state = facts.parse("release r1\nrelease-venv r1 /srv/x/shared/venvs/h1-a/\nvenv h1-a\nvenv h0-b\n"
                        f"image {WEB}:abc1234\nimage {WEB}:<none>\nimage {WEB}:abc1234\nimages listed\n")
    assert state.release_venvs == {"r1": "/srv/x/shared/venvs/h1-a"} and state.venvs == ("h0-b", "h1-a")
    assert state.images == (f"{WEB}:abc1234",)
    assert facts.parse(f"image {WEB}:abc1234\n").images is None, "the listing did not finish: unknown"


linux_sh = pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("sh"), reason="needs a Linux sh")


def _fake_docker(tmp_path: Path, script: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "docker").write_text("#!/bin/sh\n" + script)
    (bin_dir / "docker").chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "LC_ALL": "C"}


@linux_sh
def test_the_script_lists_virtualenvs_their_links_and_the_images_when_asked(tmp_path):
    root = tmp_path / "srv"
    venvs = root / "shared" / "venvs"
    for venv in ("h1-a", "h2-b"):
        (venvs / venv).mkdir(parents=True)
    for release, venv in ((rel(1), "h1-a"), (rel(2), None)):
        (root / "releases" / release).mkdir(parents=True)
        if venv:
            os.symlink(str(venvs / venv), root / "releases" / release / ".venv")
    env = _fake_docker(tmp_path, 'if [ "$1 $2" = "image ls" ]; then\n'
                                 f'  printf "image {WEB}:abc1234\\nimage redis:7\\nimage {WEB}:<none>\\n"\n'
                                 '  [ -z "$FAIL" ]; exit $?\nfi\n')
    layout = Layout(str(root), "web")

    def read(**options):
        return facts.parse(subprocess.run(facts.read_command(layout, **options), capture_output=True, text=True,
                                          env=env, timeout=10, check=True).stdout)

    state = read(images=True)
    assert state.releases == (rel(1), rel(2)) and state.venvs == ("h1-a", "h2-b")
    assert state.release_venvs == {rel(1): str(venvs / "h1-a")}
    assert state.images == (f"{WEB}:abc1234", "redis:7")
    assert read().images is None, "not asked"
    env["FAIL"] = "1"
    assert read(images=True).images is None, "docker could not list them: not known"


@linux_sh
def test_removing_images_never_forces_and_says_what_became_of_each(tmp_path):
    calls = tmp_path / "calls"
    env = _fake_docker(tmp_path, f'echo "$@" >> {calls}\ncase "$3" in\n'
                                 '  *:gone) echo "Error response from daemon: No such image: $3" >&2; exit 1 ;;\n'
                                 '  *:used) echo "Error response from daemon: conflict: unable to remove repository '
                                 'reference \\"$3\\" (must force) - container 0123 is using its referenced image" >&2; '
                                 'exit 1 ;;\n'
                                 '  *:broken) echo "Cannot connect to the Docker daemon" >&2; exit 1 ;;\n'
                                 'esac\necho "Untagged: $3"\n')
    command = sh(containers._REMOVE_IMAGES, "r/web:a1", "r/web:gone", "r/web:used")
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=10)
    assert out.returncode == 0, out
    assert out.stdout.splitlines() == ["removed image r/web:a1", "image r/web:gone: already gone",
                                       "kept image r/web:used: a container uses it"]
    assert calls.read_text().splitlines() == ["image rm r/web:a1", "image rm r/web:gone", "image rm r/web:used"]
    out = subprocess.run(sh(containers._REMOVE_IMAGES, "r/web:broken", "r/web:a2"), capture_output=True, text=True,
                         env=env, timeout=10)
    assert out.returncode == 1 and out.stdout.splitlines() == [
        "could not remove image r/web:broken: Cannot connect to the Docker daemon", "removed image r/web:a2"]


def test_history_lines_without_a_usable_time_or_sha_judge_nothing():
    state = host(4, live=4, other=3)
    odd = ({"kind": "deploy", "sha": sha_of(rel(1)), "outcome": "ok"},                 # no time, no release
           {"time": "yesterday", "kind": "deploy", "sha": sha_of(rel(2)), "outcome": "ok"},
           {"time": "2024-01-01T12:00:00Z", "kind": "maintenance-on", "sha": "", "outcome": "ok"},
           {"time": "2024-01-01T12:00:01Z", "kind": "prune", "sha": "", "outcome": "failed"})
    # the oldest usable time is the maintenance line's, after release 1 and before release 2; only
    # release 3's and 4's lines name a release
    state = dataclasses.replace(state, history=(*odd, *state.history[2:]))
    chosen = releases.select(state, 3)
    assert chosen.keep[rel(1)] == "one of the newest 3 that served", "older than every usable line: not judged"
    assert chosen.drop == {rel(2): "no successful deploy of it in the history (it never finished)"}
