"""hooks: finding the team's executables and running them (real shell scripts in a tmp dir)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from deploytasks import hooks


def script(directory: Path, name: str, body: str, mode: int = 0o755) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


# --- finding them -------------------------------------------------------------------------------

def test_a_missing_directory_or_hook_is_no_problem(tmp_path):
    assert hooks.problems(tmp_path / "nowhere") == []
    script(tmp_path, "post-deploy", "true\n")
    assert hooks.problems(tmp_path) == []
    assert hooks.present(tmp_path) == ["post-deploy"]


def test_a_hook_that_cannot_run_is_a_problem_naming_it(tmp_path):
    script(tmp_path, "pre-deploy", "true\n", mode=0o644)
    (tmp_path / "post-switch").mkdir()
    script(tmp_path, "pre-deploy.sample", "true\n", mode=0o644)  # not a hook's name: ignored
    assert hooks.problems(tmp_path) == [
        f"HOOKS_DIR: {tmp_path}/pre-deploy is not executable: `chmod +x` it, or remove it",
        f"HOOKS_DIR: {tmp_path}/post-switch is a directory, not an executable",
    ]


def test_a_file_where_the_directory_should_be_is_a_problem(tmp_path):
    (tmp_path / "hooks").write_text("")
    assert hooks.problems(tmp_path / "hooks") == [f"HOOKS_DIR: {tmp_path}/hooks is not a directory"]


# --- running them ---------------------------------------------------------------------------------

def test_a_hook_gets_its_environment_and_its_output_is_shown_line_by_line(tmp_path):
    path = script(tmp_path, "post-deploy", 'echo "sha=$DEPLOY_SHA"\necho "to stderr" >&2\npwd\n')
    shown: list[str] = []
    ran = hooks.run(path, {"PATH": os.environ["PATH"], "DEPLOY_SHA": "a b;$(id)"}, timeout=10, cwd=tmp_path,
                    show=shown.append)
    assert ran.ok and ran.exited == 0 and ran.ending() == "exit 0"
    assert shown == ["sha=a b;$(id)", "to stderr", str(tmp_path)], "values arrive literally; cwd is the repository"


def test_a_failing_hook_says_its_exit_code_and_keeps_its_last_lines(tmp_path):
    path = script(tmp_path, "pre-deploy", 'for i in $(seq 1 30); do echo "line $i"; done\nexit 3\n')
    ran = hooks.run(path, {"PATH": os.environ["PATH"]}, timeout=10, show=lambda line: None)
    assert not ran.ok and ran.exited == 3 and ran.ending() == "exit 3"
    assert ran.tail == [f"line {i}" for i in range(21, 31)]


def test_a_hook_past_its_timeout_is_stopped_with_everything_it_started(tmp_path):
    marker = tmp_path / "child-alive"
    # the hook's child ignores TERM: the KILL to the whole group still ends it
    path = script(tmp_path, "post-switch", f"sh -c 'trap \"\" TERM; sleep 30; touch {marker}' &\necho started\n"
                                           "sleep 30\n")
    started = time.monotonic()
    original = hooks.KILL_GRACE
    hooks.KILL_GRACE = 0.5
    try:
        ran = hooks.run(path, {"PATH": os.environ["PATH"]}, timeout=0.5, show=lambda line: None)
    finally:
        hooks.KILL_GRACE = original
    assert time.monotonic() - started < 6
    assert not ran.ok and ran.stopped == "timed out after 0.5s (HOOK_TIMEOUT)" and ran.tail == ["started"]
    assert ran.ending() == "timed out after 0.5s (HOOK_TIMEOUT)"
    time.sleep(0.3)
    assert not marker.exists()


def test_a_hook_is_stopped_when_the_deploy_is_interrupted(tmp_path):
    path = script(tmp_path, "pre-deploy", "sleep 30\n")
    asked = time.monotonic() + 0.3
    ran = hooks.run(path, {"PATH": os.environ["PATH"]}, timeout=60, show=lambda line: None,
                    stop=lambda: time.monotonic() > asked)
    assert ran.stopped == "interrupted" and not ran.ok and ran.seconds < 6


def test_a_hook_that_cannot_start_says_why(tmp_path):
    path = tmp_path / "pre-deploy"
    path.write_bytes(b"\x7fELF broken")  # executable, but nothing the kernel can run
    path.chmod(0o755)
    ran = hooks.run(path, {"PATH": os.environ["PATH"]}, timeout=10, show=lambda line: None)
    assert not ran.ok and ran.stopped.startswith("could not start: "), ran


def test_a_hook_killed_by_a_signal_says_so(tmp_path):
    path = script(tmp_path, "post-deploy", "kill -9 $$\n")
    ran = hooks.run(path, {"PATH": os.environ["PATH"]}, timeout=10, show=lambda line: None)
    assert ran.ending() == "killed by signal 9"

