"""Process releases (MODE=processes): config, plans, and the shell they run, tried in a real `sh`.

No host, no SSH, no docker: plans are compared as data, and their small scripts run locally in
tmp_path against fake `python`, `pip` and `gunicorn` (a release never needs the network here).
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from conftest import process_deploy, process_rollback, GOOD_ENV, REL_NEW, REL_OLD, REPO, SHA_NEW, SHA_OLD, links, make_root, replace_keys as _replace, step_named as _step, step_names as _names

from deploytasks import config as configuration
from deploytasks import facts, releases, source, traffic
from deploytasks.backends import processes
from deploytasks.config import ProcessConfig
from deploytasks.errors import ConfigError, DeployError
from deploytasks.facts import HostState
from deploytasks.layout import RELEASE_META, Layout
from deploytasks.plan import Cmd, Plan, Poll, Put, Step, Wait, cmd, sh
from deploytasks.source import Source
from deploytasks.tracked import tracked

ROOT = "/srv/example-proc"
SITE = "/var/lib/deploytasks-testbed/nginx/conf.d/example-proc.conf"
CODE = Source(SHA_NEW, b"tar of the new code", "req0123456789abc", "bld0123456789abc")
HOSTILE = {
    "SECRET_KEY": "s3cr3t-$(touch pwned)-value",
    "DB_PASSWORD": "pa ss'; drop table users; --",
    "WEIRD": "a b\t`touch pwned2` $HOME #not-a-comment \"q\" 'q' \\ \\\\ \\n ${PATH} *",
    "TRAILING": "ends in a backslash \\",
    "EMPTY": "",
    "UNICODE": "héllo ✓ '\"'",
    "GREETING": "hello; reboot && echo hi | cat > /dev/null",
}
linux_sh = pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("sh"), reason="needs a Linux sh")



def _argvs(plan: Plan) -> list[tuple[str, ...]]:
    return [a.argv for s in plan.steps for a in (*s.actions, *s.undo, *s.diagnose) if isinstance(a, (Cmd, Poll))]


def _with(config, **changes):
    return dataclasses.replace(config, processes=dataclasses.replace(config.processes, **changes))


def _script(action: Cmd) -> tuple[str, tuple[str, ...]]:
    """The fixed script and the positional arguments of a `sh -c SCRIPT sh ARGS...` command."""
    assert action.argv[:2] == ("sh", "-c") and action.argv[3] == "sh", action.argv
    return action.argv[2], action.argv[4:]


def _positions(script: str) -> dict[str, int]:
    """name -> N for the script's `name=$N` (or `name="$N...`) assignments of its positional arguments."""
    return {name: int(n) for name, n in re.findall(r'\b(\w+)="?\$(\d)', script)}


def _named(action: Cmd) -> dict[str, str]:
    """The arguments of a `sh -c SCRIPT sh ARGS...` command by the names the script gives them; the
    ones after those (a command, shared paths) under "rest"."""
    script, args = _script(action)
    positions = _positions(script)
    named = {name: args[n - 1] for name, n in positions.items()}
    named["rest"] = args[max(positions.values()):]
    return named


def _call(script: str, *rest: str, **named) -> tuple[str, ...]:
    """`sh -c SCRIPT sh ARGS` with ARGS placed where the script reads each name."""
    positions = _positions(script)
    assert set(named) == set(positions), (sorted(named), sorted(positions))
    return sh(script, *(str(named[name]) for name in sorted(positions, key=positions.get)), *map(str, rest))


def _run(argv, env=None, timeout=20, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


# ============================================================================================
# config
# ============================================================================================

PROCESS_ENV = """\
APP_NAME=shop
MODE=processes
HOSTS=app1.example.com
DEPLOY_PATH=/srv/shop
"""



def _load(root, env="x"):
    return configuration.load(root, env, environ={})


def _problems(root, env="x") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _load(root, env)
    return caught.value.details


@pytest.fixture
def proc_root(tmp_path, process_repo):
    """Factory: a throwaway root with envs/x.env = PROCESS_ENV (changed) and SOURCE_REPO = the session repo."""
    def build(**changes):
        changes.setdefault("SOURCE_REPO", str(process_repo[0]))
        return make_root(tmp_path, {"x": _replace(PROCESS_ENV, **changes)})
    return build


def test_processes_mode_parses_with_defaults(proc_root, process_repo):
    c = _load(proc_root())
    assert c.mode == "processes"
    assert c.processes == ProcessConfig(
        source_repo=process_repo[0], source_path="", app_module="app:app", workers=4, python="python3",
        requirements="requirements.txt", start_command=(), listen="socket", build_command=(), build_inputs=(),
        build_output="", shared_paths=(), supervisor="auto", timeout_dependencies=900, timeout_build=1800)
    # no STATELESS_SERVICES and no images needed: each colour's gunicorn is the one web "service"
    assert c.stateless == ("web",) and c.web_service == "web" and c.stateful == () and c.images == {}
    # gunicorn listens on the colour's socket itself: nginx connects to the app's own socket
    assert not c.relayed
    assert Layout.of(c).socket("blue") == Layout.of(c).app_socket("blue") == "/srv/shop/run/blue/web.sock"


def test_processes_mode_reads_every_key(proc_root):
    c = _load(proc_root(
        SOURCE_PATH="services/shop", APP_MODULE="shop.wsgi:create_app()", WORKERS="2", PYTHON="/usr/bin/python3.11",
        REQUIREMENTS="requirements/prod.txt", BUILD_COMMAND="npm run build -- --mode 'prod x'",
        BUILD_INPUTS="assets, package.json", BUILD_OUTPUT="static/dist", SHARED_PATHS="uploads,media/cache",
        SUPERVISOR="systemd"))
    p = c.processes
    assert p.source_path == "services/shop" and p.app_module == "shop.wsgi:create_app()" and p.workers == 2
    assert p.python == "/usr/bin/python3.11" and p.requirements == "requirements/prod.txt"
    assert p.build_command == ("npm", "run", "build", "--", "--mode", "prod x")
    assert p.build_inputs == ("assets", "package.json") and p.build_output == "static/dist"
    assert p.shared_paths == ("uploads", "media/cache") and p.supervisor == "systemd"


def test_repo_process_env_parses(local_process_raw, process_repo):
    """envs/local-process.env as the testbed uses it (only SOURCE_REPO moved to a local repository)."""
    c = configuration.parse(REPO, "local-process", dict(local_process_raw, SOURCE_REPO=str(process_repo[0])), {})
    assert c.app_name == "example-proc" and c.mode == "processes" and c.deploy_path == ROOT
    p = c.processes
    assert p.build_command == ("sh", "build.sh") and p.build_inputs == ("assets", "build.sh")
    assert p.build_output == "static" and p.shared_paths == ("uploads",) and p.supervisor == "auto"
    assert c.app_env["SECRET_KEY"] == "local-process-testbed-not-a-secret"
    assert c.migrate_command == ("python3", "app.py", "migrate")


def test_source_repo_relative_to_the_root_and_bare_repos(tmp_path, git_repo, proc_root):
    git_repo(tmp_path / "src", [("one", {"a.txt": "a\n"})])
    assert _load(proc_root(SOURCE_REPO="src")).processes.source_repo == tmp_path / "src"
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "bare.git")], check=True)
    assert _load(proc_root(SOURCE_REPO=str(tmp_path / "bare.git"))).processes.source_repo == tmp_path / "bare.git"


@pytest.mark.parametrize("repo", ["plain", "missing"])
def test_source_repo_must_be_a_git_repository(tmp_path, proc_root, repo):
    (tmp_path / "plain").mkdir()
    problems = _problems(proc_root(SOURCE_REPO=repo))
    assert problems == [f"SOURCE_REPO: {tmp_path / repo} is not a git repository"]


def test_stateless_services_required_for_containers_only(tmp_path, proc_root):
    assert _load(proc_root()).stateless == ("web",)
    root = make_root(tmp_path / "c", {"x": _replace(GOOD_ENV, STATELESS_SERVICES=None, IMAGE_WEB=None)})
    assert "STATELESS_SERVICES: missing (required for MODE=containers)" in _problems(root)


def test_containers_mode_has_no_process_config(local_config):
    assert local_config.processes is None


def test_build_command_needs_build_output(proc_root):
    problems = _problems(proc_root(BUILD_COMMAND="make assets"))
    assert problems == ["BUILD_OUTPUT: required with BUILD_COMMAND (what the build produces, reused by --fast)"]
    assert _load(proc_root(BUILD_COMMAND="make assets", BUILD_OUTPUT="static")).processes.build_output == "static"


PATH_KEYS = ("SOURCE_PATH", "REQUIREMENTS", "BUILD_OUTPUT", "SHARED_PATHS", "BUILD_INPUTS")


@pytest.mark.parametrize("value", ["..", "../up", "a/../../etc", "/abs/path", "a/", ".hidden", "a//b"])
def test_paths_must_stay_inside_the_release(proc_root, value):
    """Each path key given the same bad value: every one is reported, by key, in one error."""
    problems = _problems(proc_root(BUILD_COMMAND="make", **{key: value for key in PATH_KEYS}))
    for key in PATH_KEYS:
        mine = [p for p in problems if p.startswith(f"{key}: ")]
        assert mine and repr(value) in mine[0], (key, problems)
    assert {p.split(":", 1)[0] for p in problems} == set(PATH_KEYS)


def test_dotdot_in_a_single_path_is_named(proc_root):
    problems = _problems(proc_root(BUILD_COMMAND="make", SOURCE_PATH="a/../b", REQUIREMENTS="a/../b",
                                   BUILD_OUTPUT="a/../b"))
    for key in ("SOURCE_PATH", "REQUIREMENTS", "BUILD_OUTPUT"):
        assert f"{key}: 'a/../b' is not a relative path without '..'" in problems


def test_good_relative_paths(proc_root):
    p = _load(proc_root(SOURCE_PATH="a.b/c_d-e", SHARED_PATHS="up.loads, media/x_1", REQUIREMENTS="req/base-1.txt",
                        BUILD_INPUTS="assets,a..b")).processes
    assert (p.source_path, p.shared_paths, p.requirements, p.build_inputs) == (
        "a.b/c_d-e", ("up.loads", "media/x_1"), "req/base-1.txt", ("assets", "a..b"))


def test_every_process_problem_in_one_error(tmp_path, proc_root):
    (tmp_path / "plain").mkdir()
    root = proc_root(SOURCE_REPO="plain", SOURCE_PATH="../up", REQUIREMENTS="/etc/passwd", APP_MODULE="app",
                     SUPERVISOR="runit", WORKERS="0", PYTHON="python3; rm -rf /", BUILD_COMMAND="make 'oops",
                     BUILD_INPUTS="/abs", SHARED_PATHS="uploads,../../etc")
    with pytest.raises(ConfigError) as caught:
        _load(root)
    error = caught.value
    keys = {p.split(":", 1)[0] for p in error.details}
    assert keys == {"SOURCE_REPO", "SOURCE_PATH", "REQUIREMENTS", "APP_MODULE", "SUPERVISOR", "WORKERS", "PYTHON",
                    "BUILD_COMMAND", "BUILD_INPUTS", "SHARED_PATHS"}
    assert str(error).startswith(f"envs/x.env: {len(error.details)} problem(s):")
    details = "\n".join(error.details)
    assert "APP_MODULE: 'app' is not a WSGI module:callable" in details
    assert "SUPERVISOR: 'runit' must be one of auto, systemd, pidfile" in details
    assert "WORKERS: 0 is out of range 1..64" in details
    assert "BUILD_COMMAND: cannot be split into arguments" in details
    assert "SHARED_PATHS: '../../etc' not relative paths" in details


def test_bad_app_module(proc_root):
    for module in ("app", ":app", "app:", "app:app; rm", "9app:app", "app:app app", "a-b:app"):
        assert _problems(proc_root(APP_MODULE=module)) == [f"APP_MODULE: {module!r} is not a WSGI module:callable"]


# ============================================================================================
# app.env, the env wrapper and the start script, run by a real sh
# ============================================================================================

def _shells() -> list[str]:
    found, seen = [], set()
    for name in ("sh", "dash", "bash"):
        path = shutil.which(name)
        if path and os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            found.append(path)
    return found


def _env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@linux_sh
@pytest.mark.parametrize("shell", _shells())
def test_app_env_sourced_by_a_real_shell_gives_back_every_value(tmp_path, shell):
    env_file = tmp_path / "app.env"
    env_file.write_text(processes.app_env(HOSTILE))
    assert env_file.read_text().count("\n") == len(HOSTILE), "one line per variable"
    out = _run([shell, "-c", 'set -a; . "$1"; set +a; env', "sh", str(env_file)], env={"PATH": "/usr/bin:/bin"},
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = _env_lines(out.stdout)
    assert {k: got.get(k) for k in HOSTILE} == HOSTILE
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_app_env_keeps_order_and_quotes_everything():
    text = processes.app_env({"B": "2", "A": "x y", "C": ""})
    assert text == "B=2\nA='x y'\nC=''\n"


def _fake_release(base: Path, config, sha: str, values: dict[str, str]) -> Path:
    """A release directory as `upload code` leaves it, with a virtualenv holding `showenv`."""
    release = base / "releases" / "rel $x 'q'"  # quoting must hold even for names the config forbids
    (release / RELEASE_META).mkdir(parents=True)
    (release / processes.APP_ENV).write_text(processes.app_env(values))
    _executable(release / RELEASE_META / "run", processes.env_wrapper(config, str(release), sha))
    _executable(release / ".venv" / "bin" / "showenv", '#!/bin/sh\necho "cwd=$(pwd)"\necho "args=$*"\nenv\n')
    return release


@linux_sh
def test_env_wrapper_runs_a_command_with_the_app_env_and_the_venv(tmp_path, process_config):
    release = _fake_release(tmp_path, process_config, SHA_NEW, HOSTILE)
    out = _run([str(release / ".deploytasks" / "run"), "showenv", "one two", "$(id)"],
               env={"PATH": "/usr/bin:/bin", "HOME": "/nowhere"}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"cwd={release}" and lines[1] == "args=one two $(id)"
    env = _env_lines("\n".join(lines[2:]))
    assert {k: env.get(k) for k in HOSTILE} == HOSTILE
    assert env["DEPLOY_SHA"] == SHA_NEW and env["DEPLOY_ENV"] == "local-process"
    assert env["PATH"].split(":")[0] == f"{release}/.venv/bin" and env["PATH"].endswith(":/usr/bin:/bin")
    assert env["HOME"] == "/nowhere", "the caller's environment is kept"
    assert not any(p.name.startswith("pwned") for p in (*tmp_path.iterdir(), *release.iterdir()))


@linux_sh
def test_env_wrapper_fails_outside_its_release(tmp_path, process_config):
    release = _fake_release(tmp_path, process_config, SHA_NEW, {})
    wrapper = release / ".deploytasks" / "run"
    moved = tmp_path / "run"
    shutil.copy(wrapper, moved)
    shutil.rmtree(release)
    out = _run(["sh", str(moved), "true"], env={"PATH": "/usr/bin:/bin"})
    assert out.returncode != 0


def test_env_wrapper_text(process_config):
    text = processes.env_wrapper(process_config, "/srv/example-proc/releases/r1", "abc1234")
    assert text.splitlines() == [
        "#!/bin/sh",
        "# Rendered by deploytasks for example-proc abc1234: runs a command in this release.",
        "cd /srv/example-proc/releases/r1 || exit 1",
        "set -a; . ./app.env; set +a",
        "export DEPLOY_SHA=abc1234 DEPLOY_ENV=local-process",
        "export PATH=/srv/example-proc/releases/r1/.venv/bin:\"$PATH\"",
        'exec "$@"',
    ]


# ============================================================================================
# plans
# ============================================================================================

def test_first_deploy_steps_in_order(process_config, first_state):
    plan = process_deploy(process_config, first_state, CODE, REL_NEW)
    assert plan.kind == "deploy" and plan.sha == SHA_NEW
    assert plan.summary == {"colour": "blue", "release": REL_NEW, "previous": None, "window": False,
                            "probe_interval": None}, "a first deploy has no switch between versions to probe"
    assert _names(plan) == ["prepare", "backup", "upload code", "shared links", "dependencies", "build",
                            "migrate", "start blue", "ready: blue", "switch to blue", "nginx site",
                            "check through nginx", "cleanup (0 old release(s))"]
    assert not any(name.startswith("drain") for name in _names(plan))


def test_second_deploy_starts_green_and_drains_blue(process_config, blue_live_state):
    plan = process_deploy(process_config, blue_live_state, CODE, REL_NEW)
    assert plan.summary == {"colour": "green", "release": REL_NEW, "previous": SHA_OLD, "window": False,
                            "probe_interval": 0.1}
    assert _names(plan) == ["prepare", "backup", "upload code", "shared links", "dependencies", "build", "nginx site",
                            "migrate", "start green", "ready: green", "probe 10/s through nginx", "switch to green", "check through nginx", "watch 2s",
                            "drain blue", "cleanup (0 old release(s))"]
    drain = _step(plan, "drain blue")
    settle, connections, stop = drain.actions
    assert drain.best_effort and isinstance(settle, Wait)
    # blue's connections end (asked on this host: gunicorn's socket is here) or DRAIN_TIMEOUT passes, then it stops
    assert connections.argv == sh(traffic._DRAIN, f"{ROOT}/run/blue/web.sock", "10")
    assert _script(stop)[0] == processes._STOP
    assert _named(stop) == {"pidfile": f"{ROOT}/run/blue/gunicorn.pid", "timeout": "15",
                            "releases": f"{ROOT}/releases", "rest": ()}
    switch = _step(plan, "switch to green")
    assert switch == traffic.switch(process_config, blue_live_state, "green", REL_NEW), "the same switch as containers"
    pointed = links(switch.actions)
    assert ("green/web.sock", f"{ROOT}/run/web.sock") in pointed
    assert (f"../releases/{REL_NEW}", f"{ROOT}/state/green") in pointed
    assert (f"releases/{REL_NEW}", f"{ROOT}/current") in pointed
    assert ("blue/web.sock", f"{ROOT}/run/web.sock") in links(switch.undo)
    check = _step(plan, "check through nginx").actions[0]
    assert check.expect == SHA_NEW and "http://127.0.0.1:8081/version" in check.argv
    ready = _step(plan, "ready: green").actions[0]
    assert isinstance(ready, Poll) and ready.argv[-5:] == ("--unix-socket", f"{ROOT}/run/green/web.sock",
                                                             "-H", "Host: localhost", "http://localhost/readyz")


def test_deploy_step_details(process_config, first_state):
    plan = process_deploy(process_config, first_state, CODE, REL_NEW)
    new = f"{ROOT}/releases/{REL_NEW}"
    assert _step(plan, "prepare").undo == (cmd("rm", "-rf", new),)

    backup = _step(plan, "backup").actions[0]
    assert _script(backup)[0] == processes._BACKUP
    assert _named(backup) == {"root": ROOT, "backups": f"{ROOT}/.backups", "name": "20240102T000000Z", "site": SITE,
                              "keep": "3", "rest": ("current", "run/web.sock", "state", "shared", "--",
                                                    "state/lock", "shared/logs", "shared/venvs", "shared/uploads")}

    upload = _step(plan, "upload code").actions
    assert upload[0].argv == ("mkdir", "-p", f"{new}/.deploytasks", f"{ROOT}/shared/logs", f"{ROOT}/shared/venvs")
    assert upload[1] == Put(f"{new}/.source.tar", CODE.archive)
    assert upload[2:4] == (cmd("tar", "-xf", f"{new}/.source.tar", "-C", new), cmd("rm", "-f", f"{new}/.source.tar"))
    app_env, run = upload[4], upload[5]
    assert app_env.path == f"{new}/app.env" and app_env.mode == 0o600 and app_env.secret
    assert app_env.content == processes.app_env(process_config.app_env).encode()
    assert run.path == f"{new}/.deploytasks/run" and run.mode == 0o755 and not run.secret
    assert run.content == processes.env_wrapper(process_config, new, SHA_NEW).encode()

    assert [a.argv for a in _step(plan, "shared links").actions] == [
        ("mkdir", "-p", f"{ROOT}/shared/uploads"), ("rm", "-rf", f"{new}/uploads"),
        ("ln", "-sfn", f"{ROOT}/shared/uploads", f"{new}/uploads")]

    deps = _step(plan, "dependencies").actions[0]
    assert deps.stream
    assert _script(deps)[0] == processes._DEPENDENCIES
    assert _named(deps) == {"venvs": f"{ROOT}/shared/venvs", "hash": "req0123456789abc", "stamp": "20240102T000000Z",
                            "requirements": f"{new}/requirements.txt", "python": "python3", "link": f"{new}/.venv",
                            "reuse": "no", "rest": ()}

    build = _step(plan, "build").actions[0]
    assert _script(build)[0] == processes._BUILD and build.stream
    assert _named(build) == {"release": new, "previous": "", "ours": ".deploytasks", "output": "static",
                             "hash": "bld0123456789abc", "reuse": "no", "rest": ("sh", "build.sh")}  # no previous release

    migrate = _step(plan, "migrate")
    assert migrate.actions[0].argv == tracked(Layout.of(process_config), f"migrate-{REL_NEW}", "migration",
                                              (f"{new}/.deploytasks/run", "python3", "app.py", "migrate"))
    assert migrate.actions[0].stream and migrate.outlives_connection

    cleanup = plan.steps[-1]
    assert cleanup.best_effort and cleanup.actions == (), "a first deploy has nothing to clean up"
    # a virtualenv a failed deploy left, linked by no release, goes with the next cleanup
    left = dataclasses.replace(first_state, venvs=("h0-20231231T000000Z",))
    cleanup = process_deploy(process_config, left, CODE, REL_NEW).steps[-1]
    assert _script(cleanup.actions[-1])[0] == processes._REMOVE_VENVS
    assert _named(cleanup.actions[-1]) == {"releases": f"{ROOT}/releases", "name": ".venv",
                                           "rest": (f"{ROOT}/shared/venvs/h0-20231231T000000Z",)}


def test_build_reuses_from_the_live_release(process_config, blue_live_state):
    plan = process_deploy(process_config, blue_live_state, CODE, REL_NEW, fast=True)
    build = _named(_step(plan, "build").actions[0])
    assert build["release"] == f"{ROOT}/releases/{REL_NEW}" and build["previous"] == f"{ROOT}/releases/{REL_OLD}"
    assert build["reuse"] == "yes"


@pytest.mark.parametrize("fast,flag", [(True, "yes"), (False, "no")])
def test_fast_decides_reuse(process_config, blue_live_state, fast, flag):
    plan = process_deploy(process_config, blue_live_state, CODE, REL_NEW, fast=fast)
    assert _named(_step(plan, "dependencies").actions[0])["reuse"] == flag
    assert _named(_step(plan, "build").actions[0])["reuse"] == flag


def test_optional_steps(process_config, first_state):
    config = dataclasses.replace(_with(process_config, shared_paths=(), build_command=(), build_output=""),
                                 migrate_command=())
    code = dataclasses.replace(CODE, requirements_hash=None, build_hash=None)
    plan = process_deploy(config, first_state, code, REL_NEW)
    assert _names(plan) == ["prepare", "backup", "upload code", "dependencies", "start blue",
                            "ready: blue", "switch to blue", "nginx site", "check through nginx", "cleanup (0 old release(s))"]
    assert _named(_step(plan, "dependencies").actions[0])["hash"] == "none"
    assert _named(_step(plan, "backup").actions[0])["rest"][-1] == "shared/venvs", "no SHARED_PATHS to skip"
    assert "migrate" not in _names(process_deploy(process_config, first_state, CODE, REL_NEW, migrate=False))
    assert process_deploy(process_config, first_state, CODE, REL_NEW, kind="redeploy").kind == "redeploy"


def test_cleanup_removes_old_releases_then_unused_venvs(process_config):
    old = tuple(f"2023010{i}T000000Z-{i:07d}" for i in range(1, 7))
    venv = {r: f"h{i % 3}-{r.split('-')[0]}" for i, r in enumerate(old)}  # old[0] and old[3] share h0
    venv[old[3]] = venv[old[0]]
    state = HostState(colours={"blue": old[-1], "green": old[-2]}, live="blue", current=old[-1], releases=old,
                      venvs=tuple(sorted({*venv.values(), "h9-orphan"})),
                      release_venvs={r: f"{ROOT}/shared/venvs/{v}" for r, v in venv.items()})
    cleanup = process_deploy(process_config, state, CODE, REL_NEW).steps[-1]
    # KEEP_RELEASES=3: the new release, old[-1] (the previous: blue keeps it), old[-2]; green, which
    # held old[-2], runs the new release after the switch
    assert cleanup.name == "cleanup (4 old release(s))" and cleanup.best_effort
    assert cleanup.actions[0] == cmd("rm", "-rf", *(f"{ROOT}/releases/{r}" for r in old[:4]))
    remove = _named(cleanup.actions[1])
    assert _script(cleanup.actions[1])[0] == processes._REMOVE_VENVS
    gone = sorted({venv[r] for r in old[:4]} - {venv[r] for r in old[4:]} | {"h9-orphan"})
    assert remove["rest"] == tuple(f"{ROOT}/shared/venvs/{v}" for v in gone)


def _start(plan: Plan, colour: str) -> Step:
    return _step(plan, f"start {colour}")


def test_start_in_pidfile_mode_stops_a_stale_gunicorn_first(process_config, first_state):
    assert process_config.processes.supervisor == "auto" and not first_state.systemd
    start = _start(process_deploy(process_config, first_state, CODE, REL_NEW), "blue")
    put, stop, rm, run = start.actions
    assert put.path == f"{ROOT}/run/blue/start.sh" and put.mode == 0o755
    assert _script(stop)[0] == processes._STOP
    assert _named(stop) == {"pidfile": f"{ROOT}/run/blue/gunicorn.pid", "timeout": "15",
                            "releases": f"{ROOT}/releases", "rest": ()}
    assert rm.argv == ("rm", "-f", f"{ROOT}/run/blue/web.sock")
    assert run.argv == ("sh", f"{ROOT}/run/blue/start.sh", "--daemon")
    assert start.undo == (stop,)
    assert start.diagnose == (cmd("tail", "-n", "30", f"{ROOT}/shared/logs/blue.log"),)
    assert not any("systemctl" in argv for argv in _argvs(process_deploy(process_config, first_state, CODE, REL_NEW)))


@pytest.mark.parametrize("systemd,supervisor", [(True, "auto"), (False, "systemd"), (True, "systemd")])
def test_start_under_systemd(process_config, blue_live_state, systemd, supervisor):
    config = _with(process_config, supervisor=supervisor)
    state = dataclasses.replace(blue_live_state, systemd=systemd)
    plan = process_deploy(config, state, CODE, REL_NEW)
    start = _start(plan, "green")
    put, unit, *commands = start.actions
    assert put.path == f"{ROOT}/run/green/start.sh"
    assert unit.path == "/etc/systemd/system/example-proc@.service"
    assert unit.content == processes.unit_file(config).encode()
    argvs = [c.argv for c in commands]
    assert argvs[0] == ("systemctl", "daemon-reload")
    assert ("rm", "-f", f"{ROOT}/run/green/web.sock") in argvs
    assert argvs[-1] == ("systemctl", "restart", "example-proc@green.service")
    assert argvs.index(("rm", "-f", f"{ROOT}/run/green/web.sock")) < len(argvs) - 1, "the socket goes before the start"
    assert all(a[0] in ("systemctl", "rm") and a[-1] in ("daemon-reload", "example-proc@green.service",
                                                        f"{ROOT}/run/green/web.sock") for a in argvs)
    (undo,) = start.undo
    assert undo.argv[0] == "systemctl" and undo.argv[-1] == "example-proc@green.service"
    assert "stop" in undo.argv or "--now" in undo.argv
    stop_blue = _step(plan, "drain blue").actions[-1]
    assert stop_blue.argv == tuple(a.replace("green", "blue") for a in undo.argv)
    assert not any(processes._STOP in argv for argv in _argvs(plan))
    assert not any("--daemon" in argv for argv in _argvs(plan))


def test_supervisor_pidfile_ignores_systemd(process_config, first_state):
    config = _with(process_config, supervisor="pidfile")
    plan = process_deploy(config, dataclasses.replace(first_state, systemd=True), CODE, REL_NEW)
    assert _start(plan, "blue").actions[-1].argv == ("sh", f"{ROOT}/run/blue/start.sh", "--daemon")


def test_start_script_runs_gunicorn_from_the_release_on_the_colour_socket(process_config, blue_live_state):
    put = _start(process_deploy(process_config, blue_live_state, CODE, REL_NEW), "green").actions[0]
    text = put.content.decode()
    new = f"{ROOT}/releases/{REL_NEW}"
    lines = text.splitlines()
    assert lines[0] == "#!/bin/sh" and not any(line.startswith("cd ") for line in lines)
    assert "current" not in text, "a colour never runs through `current`"
    port = process_config.port("green")
    assert port == process_config.web_host_ports[1]
    assert f"export DEPLOY_COLOUR=green APP_SOCKET={ROOT}/run/green/web.sock PORT={port} HOST=127.0.0.1" in lines
    exec_line = shlex.split(lines[-1])
    assert exec_line == [
        "exec", f"{new}/.deploytasks/run", "gunicorn",
        "--pid", f"{ROOT}/run/green/gunicorn.pid", "--bind", f"unix:{ROOT}/run/green/web.sock", "--chdir", new,
        "--workers", "4", "--graceful-timeout", "10", "--error-logfile", f"{ROOT}/shared/logs/green.log",
        "--capture-output", "$@", "app:app"]
    assert '"$@" app:app' in lines[-1], "extra arguments (--daemon) go before the app module, quoted"


def test_unit_file(process_config):
    text = processes.unit_file(process_config)
    assert text.splitlines() == [
        "[Unit]",
        "Description=example-proc (%i colour), app server managed by deploytasks",
        "After=network.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart=/bin/sh {ROOT}/run/%i/start.sh",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=15",
        "Restart=on-failure",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    assert "--daemon" not in text, "systemd supervises gunicorn in the foreground"


def test_rollback_starts_the_other_colour_from_its_release(process_config, green_live_state):
    plan = process_rollback(process_config, green_live_state)
    assert plan.kind == "rollback" and plan.sha == SHA_OLD
    assert plan.summary == {"colour": "blue", "release": REL_OLD, "previous": SHA_NEW, "probe_interval": 0.1}
    assert _names(plan) == ["start blue", "ready: blue", "probe 10/s through nginx", "switch to blue", "check through nginx", "watch 2s", "drain green"]
    start = _start(plan, "blue")
    script = start.actions[0].content.decode()
    assert f"exec {ROOT}/releases/{REL_OLD}/.deploytasks/run gunicorn" in script and REL_NEW not in script
    assert "--chdir " + f"{ROOT}/releases/{REL_OLD}" in script
    switch = _step(plan, "switch to blue")
    assert switch == traffic.switch(process_config, green_live_state, "blue", REL_OLD)
    assert (f"../releases/{REL_OLD}", f"{ROOT}/state/blue") in links(switch.actions)
    assert _named(_step(plan, "drain green").actions[-1])["pidfile"] == f"{ROOT}/run/green/gunicorn.pid"
    every = "\n".join(" ".join(argv) for argv in _argvs(plan))
    for absent in (processes._DEPENDENCIES, processes._BUILD, "migrate", processes._BACKUP, processes._REMOVE_VENVS):
        assert absent not in every
    assert not any(argv[0] in ("tar", "pip") for argv in _argvs(plan))
    puts = [a.path for s in plan.steps for a in s.actions if isinstance(a, Put)]
    assert not any(path.endswith((".source.tar", "app.env")) for path in puts)


def test_rollback_errors(process_config, first_state, blue_live_state):
    with pytest.raises(DeployError, match="nothing is deployed on this host"):
        process_rollback(process_config, first_state)
    with pytest.raises(DeployError, match="no previous release on the green side"):
        process_rollback(process_config, blue_live_state)
    pruned = HostState(colours={"blue": REL_OLD, "green": REL_NEW}, live="green", current=REL_NEW, releases=(REL_NEW,))
    with pytest.raises(DeployError, match="no previous release on the blue side"):
        process_rollback(process_config, pruned)


def test_hostile_values_only_in_the_secret_app_env(process_config, blue_live_state):
    config = dataclasses.replace(process_config, app_env=dict(HOSTILE))
    plan = process_deploy(config, blue_live_state, CODE, REL_NEW)
    joined = "\n".join(shlex.join(argv) for argv in _argvs(plan))
    puts = [a for s in plan.steps for a in s.actions if isinstance(a, Put)]
    for key, value in HOSTILE.items():
        if len(value) < 3:
            continue
        assert value not in joined
        assert [p.path for p in puts if value.encode() in p.content
                or shlex.quote(value).encode() in p.content] == [f"{ROOT}/releases/{REL_NEW}/app.env"]
    text = "\n".join(plan.describe())
    assert "<secret values not shown>" in text and HOSTILE["SECRET_KEY"] not in text
    for argv in _argvs(plan):
        assert all(type(a) is str for a in argv) and shlex.split(shlex.join(argv)) == list(argv)


# ============================================================================================
# the shell scripts, for real
# ============================================================================================

FAKE_PYTHON = r"""#!/bin/sh
# A fake interpreter. `-c CODE` prints the version tag (FAKE_VERSION); `-m venv DIR` makes
# DIR/bin/{pip,gunicorn}. FAKE_FAIL=version|venv|pip makes that part fail.
case "$1" in
-c) [ "$FAKE_FAIL" = version ] && exit 1; echo "py${FAKE_VERSION:-3.99.0}"; exit 0 ;;
-m) [ "$2" = venv ] || exit 2 ;;
*) exit 2 ;;
esac
[ "$FAKE_FAIL" = venv ] && { echo "no venv for you" >&2; exit 1; }
mkdir -p "$3/bin" || exit 1
cat > "$3/bin/pip" <<'EOF'
#!/bin/sh
[ "$FAKE_FAIL" = pip ] && exit 1
echo "$@" >> "$(dirname "$0")/../pip.log"
EOF
cat > "$3/bin/gunicorn" <<'EOF'
#!/bin/sh
printf '%s\n' "$@" > .gunicorn-args
env > .gunicorn-env
EOF
chmod +x "$3/bin/pip" "$3/bin/gunicorn"
[ -n "$FAKE_LOG" ] && echo "$3" >> "$FAKE_LOG"
exit 0
"""
PY = "py3.99.0"  # the fake interpreter's version tag, part of every virtualenv name


@pytest.fixture
def fake_python(tmp_path):
    return _executable(tmp_path / "fakebin" / "python", FAKE_PYTHON)


@pytest.fixture
def deps(tmp_path, fake_python):
    """Run _DEPENDENCIES for tmp_path/release with the venvs in tmp_path/venvs."""
    venvs, release = tmp_path / "venvs", tmp_path / "release"
    venvs.mkdir(), release.mkdir()

    def run(hash_, stamp, reuse, python=fake_python, **env):
        argv = _call(processes._DEPENDENCIES, venvs=venvs, hash=hash_, stamp=stamp,
                     requirements=release / "requirements.txt", python=python, link=release / ".venv", reuse=reuse)
        return _run(argv, env={"PATH": "/usr/bin:/bin", **env})
    run.venvs, run.release = venvs, release
    return run


def _complete_venv(venvs: Path, name: str, seconds: str = "12.5") -> Path:
    (venvs / name / "bin").mkdir(parents=True)
    (venvs / name / ".complete").write_text(seconds + "\n")
    return venvs / name


@linux_sh
def test_dependencies_install_a_new_venv(deps):
    (deps.release / "requirements.txt").write_text("flask\n")
    out = deps("h1", "S1", "no")
    assert out.returncode == 0, out.stderr
    venv = deps.venvs / f"h1-{PY}-S1"
    assert os.readlink(deps.release / ".venv") == str(venv)
    assert (venv / ".complete").read_text().strip().replace(".", "").isdigit()
    assert (venv / "pip.log").read_text() == \
        f"install --quiet --disable-pip-version-check -r {deps.release / 'requirements.txt'}\n"
    assert out.stdout.startswith(f"dependencies: installed into h1-{PY}-S1 in ") and out.stdout.rstrip().endswith("s")


@linux_sh
def test_dependencies_reuse_the_newest_complete_venv_of_the_same_hash(deps, tmp_path):
    _complete_venv(deps.venvs, f"h1-{PY}-S1", "3.0")
    _complete_venv(deps.venvs, f"h1-{PY}-S2", "7.5")
    (deps.venvs / f"h1-{PY}-S3").mkdir()  # an install that never finished
    _complete_venv(deps.venvs, f"h2-{PY}-S9")  # other requirements
    _complete_venv(deps.venvs, "h1-py3.10.1-S8")  # another interpreter
    log = tmp_path / "python.log"
    out = deps("h1", "S4", "yes", FAKE_LOG=str(log))
    assert out.returncode == 0, out.stderr
    assert os.readlink(deps.release / ".venv") == str(deps.venvs / f"h1-{PY}-S2")
    assert out.stdout == f"dependencies: reused h1-{PY}-S2 (requirements unchanged; saved ~7.5s)\n"
    assert not log.exists() and not (deps.venvs / f"h1-{PY}-S4").exists()


@linux_sh
def test_dependencies_never_reuse_a_venv_of_another_interpreter(deps):
    _complete_venv(deps.venvs, "h1-py3.11.7-S1")
    out = deps("h1", "S2", "yes", FAKE_VERSION="3.12.1")
    assert out.returncode == 0 and "installed" in out.stdout
    assert os.readlink(deps.release / ".venv") == str(deps.venvs / "h1-py3.12.1-S2")
    out = deps("h1", "S3", "yes", FAKE_VERSION="3.11.7")
    assert os.readlink(deps.release / ".venv") == str(deps.venvs / "h1-py3.11.7-S1") and "reused" in out.stdout


@linux_sh
def test_dependencies_build_when_nothing_can_be_reused_or_reuse_is_off(deps):
    (deps.venvs / f"h1-{PY}-S3").mkdir(parents=True)  # incomplete
    _complete_venv(deps.venvs, f"h2-{PY}-S1")
    out = deps("h1", "S4", "yes")
    assert out.returncode == 0 and os.readlink(deps.release / ".venv") == str(deps.venvs / f"h1-{PY}-S4")
    assert not (deps.venvs / f"h1-{PY}-S4" / "pip.log").exists(), "no requirements file: nothing to pip install"
    # without --fast a complete venv of the same requirements is not reused
    out = deps("h2", "S5", "no")
    assert out.returncode == 0 and os.readlink(deps.release / ".venv") == str(deps.venvs / f"h2-{PY}-S5")


@linux_sh
@pytest.mark.parametrize("failing", ["version", "venv", "pip"])
def test_dependencies_failure_leaves_no_link_and_no_complete_venv(deps, failing):
    (deps.release / "requirements.txt").write_text("flask\n")
    out = deps("h1", "S1", "no", FAKE_FAIL=failing)
    assert out.returncode == 1
    assert not os.path.lexists(deps.release / ".venv")
    assert not any((venv / ".complete").exists() for venv in deps.venvs.iterdir())
    # and a later --fast deploy does not pick the broken one
    out = deps("h1", "S2", "yes")
    assert out.returncode == 0 and os.readlink(deps.release / ".venv") == str(deps.venvs / f"h1-{PY}-S2")


BUILD_SH = 'mkdir -p static && cp assets/* static/ && echo "$DEPLOY_SHA" >> "$BUILD_LOG"\n'


def _build_release(base: Path, name: str, config, log: Path, build_sh: str = BUILD_SH) -> Path:
    release = base / name
    (release / RELEASE_META).mkdir(parents=True)
    (release / "assets").mkdir()
    (release / "assets" / "site.css").write_text(f"/* {name} */\n")
    (release / "build.sh").write_text(build_sh)
    (release / processes.APP_ENV).write_text(processes.app_env({"BUILD_LOG": str(log)}))
    _executable(release / RELEASE_META / "run", processes.env_wrapper(config, str(release), name))
    return release


def _build(release, previous, output, hash_, reuse, *command):
    return _run(_call(processes._BUILD, *command, release=release, previous=previous, ours=RELEASE_META,
                      output=output, hash=hash_, reuse=reuse), env={"PATH": "/usr/bin:/bin"})


@linux_sh
def test_build_runs_and_records_its_hash(tmp_path, process_config):
    log = tmp_path / "build.log"
    release = _build_release(tmp_path, "r1", process_config, log)
    out = _build(release, "", "static", "H1", "yes", "sh", "build.sh")
    assert out.returncode == 0, out.stderr
    assert (release / "static" / "site.css").read_text() == "/* r1 */\n"
    assert log.read_text() == "r1\n", "ran once, through the release's env wrapper"
    assert (release / ".deploytasks" / "build-hash").read_text() == "H1\n"
    assert (release / ".deploytasks" / "build-seconds").read_text().strip().replace(".", "").isdigit()
    assert out.stdout.startswith("build: ran in ")


@linux_sh
def test_build_reuses_the_previous_output_when_inputs_are_unchanged(tmp_path, process_config):
    log = tmp_path / "build.log"
    previous = _build_release(tmp_path, "r1", process_config, log)
    assert _build(previous, "", "static", "H1", "no", "sh", "build.sh").returncode == 0
    (previous / ".deploytasks" / "build-seconds").write_text("4.2\n")
    release = _build_release(tmp_path, "r2", process_config, log)
    out = _build(release, previous, "static", "H1", "yes", "sh", "build.sh")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "build: reused static from r1 (inputs unchanged; saved ~4.2s)\n"
    assert log.read_text() == "r1\n", "the build did not run again"
    assert (release / "static" / "site.css").read_text() == "/* r1 */\n", "a copy of the previous output"
    assert not (release / "static").is_symlink()
    assert (release / ".deploytasks" / "build-hash").read_text() == "H1\n"


@linux_sh
def test_build_runs_when_it_cannot_reuse(tmp_path, process_config):
    log = tmp_path / "build.log"
    previous = _build_release(tmp_path, "r1", process_config, log)
    assert _build(previous, "", "static", "H1", "no", "sh", "build.sh").returncode == 0
    cases = {"other-hash": ("H2", previous, "yes"), "no-previous": ("H1", "", "yes"), "no-fast": ("H1", previous, "no")}
    for case, (hash_, prev, reuse) in cases.items():
        release = _build_release(tmp_path, case, process_config, log)
        out = _build(release, prev, "static", hash_, reuse, "sh", "build.sh")
        assert out.returncode == 0 and out.stdout.startswith("build: ran in "), (case, out.stdout, out.stderr)
        assert log.read_text().split()[-1] == case
        assert (release / "static" / "site.css").read_text() == f"/* {case} */\n"
        assert (release / ".deploytasks" / "build-hash").read_text() == f"{hash_}\n"
    shutil.rmtree(previous / "static")  # same hash, but the previous release has no output to copy
    release = _build_release(tmp_path, "no-output", process_config, log)
    out = _build(release, previous, "static", "H1", "yes", "sh", "build.sh")
    assert out.stdout.startswith("build: ran in ") and (release / "static" / "site.css").is_file()
    assert log.read_text().split() == ["r1", *cases, "no-output"]


@linux_sh
def test_a_failed_build_fails_the_step_and_records_no_hash(tmp_path, process_config):
    release = _build_release(tmp_path, "r1", process_config, tmp_path / "log", build_sh="echo broken >&2; exit 3\n")
    out = _build(release, "", "static", "H1", "no", "sh", "build.sh")
    assert out.returncode == 1 and "broken" in out.stderr
    assert not (release / ".deploytasks" / "build-hash").exists()


@linux_sh
def test_build_reuse_of_a_nested_output_fails_or_copies(tmp_path, process_config):
    """BUILD_OUTPUT=dist/static and no dist/ in the code: the copy must not fail silently."""
    log = tmp_path / "build.log"
    nested = "mkdir -p dist/static && cp assets/* dist/static/ && echo \"$DEPLOY_SHA\" >> \"$BUILD_LOG\"\n"
    previous = _build_release(tmp_path, "r1", process_config, log, build_sh=nested)
    assert _build(previous, "", "dist/static", "H1", "no", "sh", "build.sh").returncode == 0
    release = _build_release(tmp_path, "r2", process_config, log, build_sh=nested)  # no dist/ in the code
    out = _build(release, previous, "dist/static", "H1", "yes", "sh", "build.sh")
    assert out.returncode != 0 or (release / "dist" / "static" / "site.css").is_file(), out.stdout + out.stderr


class _Process:
    """A process that is not our shell's child's zombie: reaped by a thread as soon as it dies.
    `name`: its argv[0] (what /proc/PID/cmdline shows), e.g. gunicorn's own process title;
    `cwd`: its working directory (created), what the stop script recognises our servers by."""

    def __init__(self, argv, name=None, cwd=None):
        if cwd is not None:
            Path(cwd).mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([name or argv[0], *argv[1:]], executable=shutil.which(argv[0]), cwd=cwd,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.reaper = threading.Thread(target=self.proc.wait, daemon=True)
        self.reaper.start()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self):
        if self.alive():
            self.proc.kill()
        self.reaper.join(5)


@pytest.fixture
def spawn():
    started = []

    def start(argv, name=None, cwd=None):
        started.append(_Process(argv, name, cwd))
        return started[-1]
    yield start
    for process in started:
        process.kill()


def _stop(pidfile: Path, timeout: str, releases: Path):
    return _run(_call(processes._STOP, pidfile=pidfile, timeout=timeout, releases=releases),
                env={"PATH": "/usr/bin:/bin"}, timeout=20)


@linux_sh
def test_stop_without_a_pid_file_or_with_a_dead_pid(tmp_path):
    pidfile, releases = tmp_path / "gunicorn.pid", tmp_path / "srv" / "releases"
    assert _stop(pidfile, "15", releases).returncode == 0
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    pidfile.write_text(dead + "\n")
    out = _stop(pidfile, "15", releases)
    assert out.returncode == 0 and out.stdout == "" and not pidfile.exists()


@linux_sh
@pytest.mark.skipif(not shutil.which("sleep"), reason="needs sleep")
@pytest.mark.parametrize("where, name", [
    ("elsewhere", None),
    ("elsewhere", "gunicorn: master [app:app]"),  # its name does not make it ours
    ("srv/releases-old/r1", None),  # beside the releases directory, not in it
    ("srv", None),
])
def test_stop_leaves_alone_a_live_process_outside_the_releases(tmp_path, spawn, where, name):
    """A pid file that outlived its server (a reboot) may name someone else's process now: ours
    run in a release (gunicorn --chdir, the env wrapper's cd), so one elsewhere is not ours."""
    other = spawn(["sleep", "30"], name=name, cwd=tmp_path / where)
    pidfile = tmp_path / "gunicorn.pid"
    pidfile.write_text(f"{other.proc.pid}\n")
    out = _stop(pidfile, "0", tmp_path / "srv" / "releases")
    assert out.returncode == 0 and out.stdout == ""
    assert other.alive() and not pidfile.exists()


def _ignores_sigterm(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
    return bool(mask & (1 << (signal.SIGTERM - 1)))


@linux_sh
@pytest.mark.skipif(not shutil.which("sleep"), reason="needs sleep")
def test_stop_terminates_gracefully_and_kills_what_ignores_sigterm(tmp_path, process_config, spawn):
    """Two stops at once (each waits in 0.1 s steps): the plan's own stop of a gunicorn that exits on
    SIGTERM, and a stop with timeout 0 of one that ignores SIGTERM."""
    config = dataclasses.replace(process_config, deploy_path=str(tmp_path / "srv"))
    stop = processes.AppServer(config, HostState(), "blue", REL_OLD).stop()
    graceful_pid, releases = tmp_path / "srv" / "run" / "blue" / "gunicorn.pid", tmp_path / "srv" / "releases"
    assert _named(stop) == {"pidfile": str(graceful_pid), "timeout": "15", "releases": str(releases), "rest": ()}
    graceful_pid.parent.mkdir(parents=True)
    # any server running in a release is ours (START_COMMAND's too), whatever it is called
    graceful = spawn(["sleep", "30"], name="node server.js", cwd=releases / REL_OLD)
    graceful_pid.write_text(f"{graceful.proc.pid}\n")
    # a shell that ignores SIGTERM (its short sleeps end by themselves once it is gone)
    stubborn = spawn(["sh", "-c", 'trap "" TERM; while :; do sleep 0.05; done'], name="/venv/bin/gunicorn",
                     cwd=releases / REL_NEW / "app")
    deadline = time.monotonic() + 5
    while not _ignores_sigterm(stubborn.proc.pid):
        assert time.monotonic() < deadline, "the shell never ignored SIGTERM"
        time.sleep(0.005)
    stubborn_pid = tmp_path / "stubborn.pid"
    stubborn_pid.write_text(str(stubborn.proc.pid))

    env = {"PATH": "/usr/bin:/bin"}
    started = time.monotonic()
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for argv in (stop.argv, _call(processes._STOP, pidfile=stubborn_pid, timeout="0", releases=releases))]
    (graceful_out, graceful_err), (stubborn_out, stubborn_err) = (run.communicate(timeout=20) for run in runs)
    assert [run.returncode for run in runs] == [0, 0], (graceful_err, stubborn_err)
    assert time.monotonic() - started < 5
    graceful.reaper.join(5), stubborn.reaper.join(5)
    assert graceful.proc.returncode == -signal.SIGTERM, "a graceful SIGTERM, not a SIGKILL"
    assert "SIGKILL" not in graceful_out and not graceful_pid.exists()
    assert stubborn.proc.returncode == -signal.SIGKILL
    assert f"app server {stubborn.proc.pid} still running after 0s: SIGKILL" in stubborn_out
    assert not stubborn_pid.exists()


def _backup(root, name, site, keep, *shared_paths):
    """The backup command the plan runs, for a layout rooted at `root` whose site file is `site`."""
    layout = Layout(str(root), "web", site.name.removesuffix(".conf"), str(site.parent))
    return _run(processes.backup(layout, name, int(keep), shared_paths).argv, env={"PATH": "/usr/bin:/bin"})


@linux_sh
def test_backup_archives_state_and_keeps_only_the_newest(tmp_path):
    root, site = tmp_path / "srv", tmp_path / "conf.d" / "shop.conf"
    (root / "releases" / "r1").mkdir(parents=True)
    os.symlink("releases/r1", root / "current")
    (root / "run" / "blue").mkdir(parents=True)
    os.symlink("blue/web.sock", root / "run" / "web.sock")  # the live link (its target socket is not a file)
    (root / "state" / "lock").mkdir(parents=True)
    (root / "state" / "lock" / "info.json").write_text("{}")
    (root / "state" / "history.jsonl").write_text("{}\n")
    os.symlink("../releases/r1", root / "state" / "blue")
    for path in ("shared/uploads/a.txt", "shared/media/cache/b.bin", "shared/config.ini", "shared/logs/blue.log",
                 "shared/venvs/h-1/bin/python"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("x")
    site.parent.mkdir()
    site.write_text("server {}\n")
    for name in ("20240101T000000Z", "20240102T000000Z", "20240103T000000Z"):
        (root / ".backups" / name).mkdir(parents=True)
    out = _backup(root, "20240104T000000Z", site, "3", "uploads", "media/cache")
    assert out.returncode == 0, out.stderr
    new = root / ".backups" / "20240104T000000Z"
    assert out.stdout == f"backup: {new}\n"
    assert sorted(p.name for p in (root / ".backups").iterdir()) == [
        "20240102T000000Z", "20240103T000000Z", "20240104T000000Z"]
    assert (new / "nginx-site.conf").read_text() == "server {}\n"
    assert os.stat(new / "deploy.tar").st_mode & 0o077 == 0, "backups hold app state: private"
    with tarfile.open(new / "deploy.tar") as tar:
        names = set(tar.getnames())
        assert tar.getmember("current").issym() and tar.getmember("current").linkname == "releases/r1"
        assert tar.getmember("run/web.sock").issym() and tar.getmember("run/web.sock").linkname == "blue/web.sock"
    assert {"current", "run/web.sock", "state", "state/blue", "state/history.jsonl", "shared/config.ini"} <= names
    excluded = ("state/lock", "shared/logs", "shared/venvs", "shared/uploads", "shared/media/cache", "releases",
                ".backups", "run/blue")
    assert not any(n.startswith(excluded) for n in names), sorted(names)


@linux_sh
def test_backup_of_an_empty_host(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    out = _backup(root, "20240104T000000Z", tmp_path / "nope.conf", "2")
    assert out.returncode == 0, out.stderr
    assert list((root / ".backups" / "20240104T000000Z").iterdir()) == []


@linux_sh
def test_backup_that_cannot_be_written_fails_the_step(tmp_path):
    root = tmp_path / "srv"
    (root / "state").mkdir(parents=True)
    (root / ".backups").write_text("not a directory")
    assert _backup(root, "20240104T000000Z", tmp_path / "nope.conf", "2").returncode != 0


@linux_sh
def test_remove_venvs_removes_the_listed_ones_no_release_links(tmp_path):
    root = tmp_path / "srv"
    venvs = root / "shared" / "venvs"
    for name in ("h1-S1", "h1-S2", "h2-S3", "h3-S4"):
        (venvs / name / "bin").mkdir(parents=True)
    for release, venv in (("r1", "h1-S2"), ("r2", "h1-S2"), ("r3", "h3-S4")):
        (root / "releases" / release).mkdir(parents=True)
        os.symlink(str(venvs / venv), root / "releases" / release / ".venv")
    (root / "releases" / "r4").mkdir()  # no venv at all
    layout = Layout(str(root), "web")
    # h1-S2 was listed (only doomed releases used it) but a release links to it by now (--fast reused it);
    # h2-S3 is not listed: it stays
    out = _run(processes.remove_venvs(layout, ["h1-S1", "h1-S2", "h9-gone"]).argv, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in venvs.iterdir()) == ["h1-S2", "h2-S3", "h3-S4"]
    assert out.stdout.splitlines() == ["removed virtualenv h1-S1", "kept virtualenv h1-S2: a release links to it",
                                       "removed virtualenv h9-gone"]


@linux_sh
def test_remove_venvs_on_an_empty_host(tmp_path):
    out = _run(processes.remove_venvs(Layout(str(tmp_path / "srv"), "web"), []).argv, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout == ""


# ============================================================================================
# the plan's own steps, run locally: prepare .. start, then cleanup, over four deploys
# ============================================================================================

LOCAL_STEPS = ("prepare", "backup", "upload code", "shared links", "dependencies", "build")


def _run_steps(plan: Plan, names, env) -> str:
    """Run the named steps the way the executor would (Put: temp file with its mode, then rename)."""
    output = []
    for step in plan.steps:
        if not (step.name in names or any(step.name.startswith(n) for n in names)):
            continue
        for action in step.actions:
            if isinstance(action, Put):
                staged = Path(f"{action.path}.tmp-test")
                staged.write_bytes(action.content)
                staged.chmod(action.mode)
                staged.rename(action.path)
            elif isinstance(action, Cmd):
                assert not action.unless
                out = _run(action.argv, env=env)
                assert out.returncode == 0, (step.name, action.argv[:3], out.stdout, out.stderr)
                output.append(out.stdout)
    return "".join(output)


@linux_sh
def test_four_deploys_run_locally_with_fast_reuse_and_cleanup(tmp_path, process_config, process_repo, fake_python):
    shas = process_repo[1]
    root = tmp_path / "srv"
    log, python_log = tmp_path / "build.log", tmp_path / "python.log"
    config = dataclasses.replace(
        _with(process_config, python=str(fake_python)), deploy_path=str(root), keep_releases=2,
        nginx_site_dir=str(tmp_path / "conf.d"), app_env={"BUILD_LOG": str(log), **HOSTILE},
        static_url="/static/", static_path="static", media_url="/media/", media_path="media")
    env = {"PATH": "/usr/bin:/bin", "FAKE_LOG": str(python_log)}
    _executable(tmp_path / "bin" / "docker", "#!/bin/sh\nexit 0\n")  # never the machine's docker
    facts_env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    state = HostState()
    names = []

    def deploy(sha_name, fast, hour, steps=LOCAL_STEPS):
        nonlocal state
        code = source.read(config, shas[sha_name])
        name = releases.name(code.sha, now=1_704_067_200 + 3600 * hour)
        plan = process_deploy(config, state, code, name, fast=fast)
        colour = plan.summary["colour"]
        out = _run_steps(plan, steps, env)
        names.append(name)
        colours = dict(state.colours, **{colour: name})
        seen = facts.parse(_run(facts.read_command(Layout(str(root), "web")), env=facts_env).stdout)  # the venvs
        on_host = [n for n in names if (root / "releases" / n).is_dir()]
        state = HostState(colours=colours, live=colour, current=name, releases=tuple(sorted(on_host)),
                          venvs=seen.venvs, release_venvs=seen.release_venvs)
        return plan, root / "releases" / name, out

    _, r1, out = deploy("v1", fast=False, hour=0, steps=(*LOCAL_STEPS, "start blue"))
    assert "dependencies: installed" in out and "build: ran" in out
    assert (r1 / "app.py").read_text() == "VERSION = 1\n" and not (r1 / ".source.tar").exists()
    assert not (r1 / "README.md").exists(), "only SOURCE_PATH is released"
    assert (r1 / "static" / "site.css").is_file() and os.readlink(r1 / "uploads") == f"{root}/shared/uploads"
    # what nginx serves: the build's output through the release's .static, uploads from shared/media
    assert (r1 / ".static" / "site.css").read_text() == (r1 / "static" / "site.css").read_text()
    assert os.readlink(r1 / "media") == f"{root}/shared/media" and (root / "shared" / "media").is_dir()
    assert os.stat(r1 / "app.env").st_mode & 0o777 == 0o600
    assert os.readlink(r1 / ".venv").startswith(f"{root}/shared/venvs/")
    # the start step ran the fake gunicorn through start.sh and the env wrapper, from the release
    args = (r1 / ".gunicorn-args").read_text().splitlines()
    assert args[:2] == ["--pid", f"{root}/run/blue/gunicorn.pid"] and args[-2:] == ["--daemon", "app:app"]
    assert f"unix:{root}/run/blue/web.sock" in args and args[args.index("--chdir") + 1] == str(r1)
    gunicorn_env = _env_lines((r1 / ".gunicorn-env").read_text())
    assert {k: gunicorn_env.get(k) for k in HOSTILE} == HOSTILE
    assert gunicorn_env["DEPLOY_COLOUR"] == "blue" and gunicorn_env["DEPLOY_SHA"] == shas["v1"]
    assert gunicorn_env["APP_SOCKET"] == f"{root}/run/blue/web.sock" and gunicorn_env["HOST"] == "127.0.0.1"
    assert gunicorn_env["PORT"] == str(config.port("blue"))
    assert gunicorn_env["PWD"] == str(r1)
    assert not any(p.name.startswith("pwned") for p in r1.iterdir()), "app values are data, never run"

    _, r2, out = deploy("readme", fast=False, hour=1)  # same requirements, same inputs, but no --fast
    assert "dependencies: installed" in out and "build: ran" in out
    assert os.readlink(r2 / ".venv") != os.readlink(r1 / ".venv")

    _, r3, out = deploy("code", fast=True, hour=2)  # same requirements and build inputs: both reused
    assert "dependencies: reused" in out and f"build: reused static from {r2.name}" in out
    assert os.readlink(r3 / ".venv") == os.readlink(r2 / ".venv"), "the same virtualenv, linked"
    assert (r3 / "app.py").read_text() == "VERSION = 2\n" and (r3 / "static" / "site.css").is_file()
    assert log.read_text().split() == [shas["v1"], shas["readme"]], "the build ran twice, not three times"

    plan, r4, out = deploy("requirements", fast=True, hour=3, steps=(*LOCAL_STEPS, "cleanup"))
    assert "dependencies: installed" in out and "build: ran" in out  # new requirements; assets changed since r2
    assert len(python_log.read_text().splitlines()) == 3
    # cleanup: r1 and r2 go (KEEP_RELEASES=2: r4, live, and r3, the previous; r2's colour now runs r4),
    # and so does r1's venv; r2's stays, r3 links it (--fast reused it)
    assert plan.steps[-1].name == "cleanup (2 old release(s))"
    assert not r1.exists() and not r2.exists() and r3.exists() and r4.exists()
    venvs = sorted(p.name for p in (root / "shared" / "venvs").iterdir())
    assert venvs == sorted({os.path.basename(os.readlink(r / ".venv")) for r in (r3, r4)})
    assert len(venvs) == 2 and "removed virtualenv" in out
    backups = sorted(p.name for p in (root / ".backups").iterdir())
    assert backups == ["20240101T020000Z", "20240101T030000Z"], "KEEP_RELEASES=2 backups kept"


# ============================================================================================
# facts: systemd and gunicorn processes
# ============================================================================================

def test_parse_systemd_and_process_lines():
    state = facts.parse("systemd yes\nprocess blue 4242\nprocess purple 7\nprocess green x\nprocess green\n")
    assert state.systemd is True and state.processes == {"blue": 4242}
    assert facts.parse("").systemd is False and facts.parse("").processes == {}


def test_status_lists_gunicorn_processes(process_config, green_live_state):
    from deploytasks.operations import describe_state

    lines = describe_state(process_config, dataclasses.replace(green_live_state, processes={"green": 4242}))
    assert f"  gunicorn green pid 4242 running {SHA_NEW}" in lines
    assert f"standby blue: {SHA_OLD} (rollback target)" in lines


@linux_sh
def test_the_script_reports_live_gunicorn_pids_only(tmp_path):
    root = tmp_path / "srv"
    for colour in ("blue", "green"):
        (root / "run" / colour).mkdir(parents=True)
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    (root / "run" / "blue" / "gunicorn.pid").write_text(f"{os.getpid()}\n")
    (root / "run" / "green" / "gunicorn.pid").write_text(f"{dead}\n")
    _executable(tmp_path / "bin" / "docker", "#!/bin/sh\nexit 0\n")  # never the machine's docker
    out = _run(facts.read_command(Layout(str(root), "web")), env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    state = facts.parse(out.stdout)
    assert state.processes == {"blue": os.getpid()}
    assert state.systemd == os.path.isdir("/run/systemd/system")


# ============================================================================================
# START_COMMAND, LISTEN=port, static files and uploads
# ============================================================================================

NODE = ("node", "server.js", "--title", "shop app")


def test_start_command_runs_instead_of_gunicorn_through_the_release_wrapper(process_config, blue_live_state):
    config = _with(process_config, start_command=NODE)
    start = _start(process_deploy(config, blue_live_state, CODE, REL_NEW), "green")
    put, stop, rm, daemon = start.actions
    text, new = put.content.decode(), f"{ROOT}/releases/{REL_NEW}"
    lines = text.splitlines()
    assert "gunicorn " not in text
    # where to listen, as the app reads it: $PORT on $HOST (LISTEN=port), or the socket $APP_SOCKET
    assert lines[2] == (f"export DEPLOY_COLOUR=green APP_SOCKET={ROOT}/run/green/web.sock "
                        f"PORT={config.port('green')} HOST=127.0.0.1")
    assert shlex.split(lines[-1]) == ["exec", f"{new}/.deploytasks/run", *NODE]
    # in the background without systemd: its own session, its pid in the pid file, its output in the log
    assert _script(stop)[0] == processes._STOP and rm.argv == ("rm", "-f", f"{ROOT}/run/green/web.sock")
    assert _script(daemon)[0] == processes._DAEMON
    assert _named(daemon) == {"script": f"{ROOT}/run/green/start.sh", "pidfile": f"{ROOT}/run/green/gunicorn.pid",
                              "log": f"{ROOT}/shared/logs/green.log", "rest": ()}
    assert start.undo == (stop,)


def test_start_command_under_systemd_runs_in_the_foreground(process_config, blue_live_state):
    config = _with(process_config, start_command=NODE, supervisor="systemd")
    plan = process_deploy(config, blue_live_state, CODE, REL_NEW)
    start = _start(plan, "green")
    assert start.actions[-1].argv == ("systemctl", "restart", "example-proc@green.service")
    assert not any(processes._DAEMON in argv for argv in _argvs(plan))


@linux_sh
def test_the_start_script_execs_start_command_in_the_release_with_where_to_listen(tmp_path, process_config):
    release = tmp_path / "srv" / "releases" / REL_NEW
    config = _with(dataclasses.replace(process_config, deploy_path=str(tmp_path / "srv")),
                   start_command=("sh", "-c", 'env > server.env; echo "$$" > server.pid'))
    server = processes.AppServer(config, HostState(), "blue", REL_NEW)
    (release / RELEASE_META).mkdir(parents=True)
    (release / processes.APP_ENV).write_text(processes.app_env({"GREETING": "hello; reboot"}))
    _executable(release / RELEASE_META / "run", processes.env_wrapper(config, str(release), SHA_NEW))
    script = _executable(Path(server.script), server.start_script())
    out = _run(["sh", "-c", 'sh "$1" & echo "$!"; wait', "sh", str(script)], env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert (release / "server.pid").read_text().strip() == out.stdout.strip(), "exec all the way: one pid"
    env = _env_lines((release / "server.env").read_text())
    assert env["PORT"] == str(config.port("blue")) and env["HOST"] == "127.0.0.1"
    assert env["APP_SOCKET"] == f"{tmp_path}/srv/run/blue/web.sock" and env["DEPLOY_COLOUR"] == "blue"
    assert env["DEPLOY_SHA"] == SHA_NEW and env["GREETING"] == "hello; reboot" and env["PWD"] == str(release)
    assert env["PATH"].startswith(f"{release}/.venv/bin:")


# Adopts what the daemon leaves behind (PR_SET_CHILD_SUBREAPER) and reaps it, as init would on a
# host: a server that exits must not linger as a zombie for the stop script's `kill -0`.
_REAPER = r"""
import ctypes, os, subprocess, sys, threading, time
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:
    sys.exit("no subreaper")
subprocess.run(sys.argv[1:], check=True, timeout=10)

def reap():
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(0.02)

threading.Thread(target=reap, daemon=True).start()
print("started", flush=True)
sys.stdin.read()
"""


@linux_sh
@pytest.mark.skipif(not shutil.which("setsid") or not shutil.which("sleep"), reason="needs setsid and sleep")
def test_a_daemonized_start_command_is_what_the_pid_file_names_and_what_stop_stops(tmp_path, process_config):
    root = tmp_path / "srv"
    release = root / "releases" / REL_NEW
    config = _with(dataclasses.replace(process_config, deploy_path=str(root)), start_command=("sleep", "30"))
    server = processes.AppServer(config, HostState(), "blue", REL_NEW)
    (release / RELEASE_META).mkdir(parents=True)
    (release / processes.APP_ENV).write_text("")
    _executable(release / RELEASE_META / "run", processes.env_wrapper(config, str(release), SHA_NEW))
    _executable(Path(server.script), server.start_script())
    Path(server.layout.logs).mkdir(parents=True)
    stop, _, daemon = server.restart()
    reaper = subprocess.Popen([sys.executable, "-c", _REAPER, *daemon.argv], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"})
    pid = None
    try:
        assert reaper.stdout.readline() == "started\n", reaper.stderr.read()
        pid = int(Path(server.pidfile).read_text())
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] != b"sleep":  # the wrapper's exec
            assert time.monotonic() < deadline, Path(f"/proc/{pid}/cmdline").read_bytes()
            time.sleep(0.02)
        assert os.readlink(f"/proc/{pid}/cwd") == str(release), "it runs in its release: what stop recognises"
        assert os.getsid(pid) == pid, "a session of its own: it outlives the SSH session that started it"
        out = _run(stop.argv, env={"PATH": "/usr/bin:/bin"})
        assert out.returncode == 0 and out.stdout == "", out.stderr
        assert not Path(f"/proc/{pid}").exists() and not Path(server.pidfile).exists()
    finally:
        if pid and Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
        reaper.stdin.close()
        reaper.wait(10)


@pytest.fixture
def port_config(proc_root):
    return _load(proc_root(LISTEN="port", START_COMMAND="node server.js", WEB_HOST_PORTS="21000,21001"))


def test_listen_on_a_port_makes_the_layout_relayed(port_config):
    layout = Layout.of(port_config)
    assert port_config.relayed and layout.relay
    assert layout.socket("blue") == "/srv/shop/run/blue/web.relay.sock", "nginx's, relaying to the port"
    assert layout.app_socket("blue") == "/srv/shop/run/blue/web.sock"
    assert layout.live_target("green") == "green/web.relay.sock"


def test_a_server_on_a_port_is_reached_through_its_colour_relay(port_config, blue_live_state):
    plan = process_deploy(port_config, blue_live_state, CODE, REL_NEW)
    script = _start(plan, "green").actions[0].content.decode()
    assert "APP_SOCKET=/srv/shop/run/green/web.sock PORT=21001 HOST=127.0.0.1" in script
    assert ("rm", "-f", "/srv/shop/run/green/web.sock") in _argvs(plan), "its own socket, never nginx's relay"
    assert not any(a[:2] == ("rm", "-f") and a[-1].endswith(".relay.sock") for a in _argvs(plan))
    ready = _step(plan, "ready: green").actions[0]
    assert ready.argv[ready.argv.index("--unix-socket") + 1] == "/srv/shop/run/green/web.relay.sock"
    assert ("green/web.relay.sock", "/srv/shop/run/web.sock") in links(_step(plan, "switch to green").actions)
    site = next(a for a in _step(plan, "nginx site").actions if isinstance(a, Put)).content.decode()
    assert "listen unix:/srv/shop/run/green/web.relay.sock;" in site and "proxy_pass http://127.0.0.1:21001;" in site
    # blue's relay socket is on this host: drained here, no namespace
    assert _step(plan, "drain blue").actions[1].argv == sh(traffic._DRAIN, "/srv/shop/run/blue/web.relay.sock", "30")


def test_shared_links_add_the_uploads_and_the_static_files_link(process_config, first_state):
    config = dataclasses.replace(process_config, static_url="/static/", static_path="static/", media_url="/media/",
                                 media_path="var/media/")
    plan = process_deploy(config, first_state, CODE, REL_NEW)
    new = f"{ROOT}/releases/{REL_NEW}"
    assert [a.argv for a in _step(plan, "shared links").actions] == [
        ("mkdir", "-p", f"{ROOT}/shared/uploads"), ("rm", "-rf", f"{new}/uploads"),
        ("ln", "-sfn", f"{ROOT}/shared/uploads", f"{new}/uploads"),
        ("mkdir", "-p", f"{ROOT}/shared/media"), ("rm", "-rf", f"{new}/var/media"),
        ("ln", "-sfn", f"{ROOT}/shared/media", f"{new}/var/media"),
        ("ln", "-sfn", "static", f"{new}/.static"),  # relative: the release's own files, wherever it lies
    ]
    # linked when staged: nothing to copy between ready and switch
    assert "static files" not in _names(plan) and not any(s.phase == "assets" for s in plan.steps)


def test_static_files_alone_still_get_their_link(process_config, first_state):
    config = dataclasses.replace(_with(process_config, shared_paths=()), static_url="/static/", static_path="static")
    plan = process_deploy(config, first_state, CODE, REL_NEW)
    assert [a.argv for a in _step(plan, "shared links").actions] == [
        ("ln", "-sfn", "static", f"{ROOT}/releases/{REL_NEW}/.static")]


def test_the_backup_leaves_the_uploads_out_like_shared_paths(process_config, first_state):
    config = dataclasses.replace(process_config, media_url="/media/", media_path="media")
    skipped = _named(_step(process_deploy(config, first_state, CODE, REL_NEW), "backup").actions[0])["rest"]
    assert "shared/media" in skipped[skipped.index("--"):]
