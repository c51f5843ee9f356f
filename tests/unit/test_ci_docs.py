"""docs/ci: every `inv`/`fab` command the CI examples run names a task deploytasks has, with
options that task takes; the production jobs wait for approval and are never cancelled; the shell
script is POSIX and does what its subcommands say (with stub docker and inv, no network).

A user copies these files and finds out a task or option was renamed only when a deploy fails:
this test finds out first.
"""
from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fabric.main
import invoke
import invoke.main
import pytest
import yaml
from conftest import REPO
from invoke import Collection

from deploytasks.tasks import ns

DOCS = REPO / "docs" / "ci"
WORKFLOWS = sorted(DOCS.glob("github/*.yml"))
SCRIPTS = sorted(DOCS.glob("*.sh"))
MARKDOWN = sorted(DOCS.glob("*.md"))
FULL = "3f2c1e9" + "0" * 33

# tokens after which a shell word is a command name, and tokens that end a command
COMMAND_START = {";", "&&", "||", "|", "(", "{", "!", "`", "then", "else", "elif", "if", "do", "while", "until",
                 "time", "exec"}
COMMAND_END = {";", "&&", "||", "|", "&", ")", "}", "`", ";;"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
REDIRECTED_FD = re.compile(r"(?<![\w$-])\d+(?=[<>])")
PROGRAMS = {"inv": invoke.main.program, "invoke": invoke.main.program, "fab": fabric.main.program}


@dataclass(frozen=True)
class Invocation:
    where: str
    program: str  # inv or fab
    argv: tuple[str, ...]  # what follows the program

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join((self.program, *self.argv))}"


# --- finding the commands -----------------------------------------------------------------------

def run_blocks(node, where: str = "") -> Iterator[tuple[str, str]]:
    """Every `run:` script of a workflow (or composite action), with where it is: /jobs/JOB/steps[N]."""
    if isinstance(node, dict):
        if isinstance(node.get("run"), str):
            yield where + (f" ({node['name']})" if node.get("name") else ""), node["run"]
        for key, value in node.items():
            yield from run_blocks(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from run_blocks(item, f"{where}[{i}]")


def fenced_blocks(markdown: str) -> Iterator[tuple[int, str]]:
    """The code blocks of a markdown file, with the line each starts on."""
    for match in re.finditer(r"^```[^\n]*\n(.*?)^```", markdown, re.S | re.M):
        yield markdown[:match.start()].count("\n") + 2, match.group(1)


def invocations(script: str, where: str, first_line: int = 1) -> Iterator[Invocation]:
    """Each `inv`/`fab` command of a shell script: in command position (a line's start, after
    `;`, `&&`, `then`, `$(`, an assignment...), to the end of that command; continued lines
    joined, comments left out."""
    script = script.replace("\\\n", " ")
    for number, line in enumerate(script.splitlines(), first_line):
        line = REDIRECTED_FD.sub("", line)  # `2>&1` is a redirection; `--lock-wait 60 >x` is not
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError as error:  # an unbalanced quote: say where, rather than guess
            raise AssertionError(f"{where}:{number}: cannot read {line!r}: {error}") from None
        start = True
        for i, token in enumerate(tokens):
            if start and Path(token).name in PROGRAMS:
                argv = []
                for word in tokens[i + 1:]:
                    if word in COMMAND_END or set(word) <= set("<>&|;()"):
                        break
                    argv.append(word)
                yield Invocation(f"{where}:{number}", Path(token).name, tuple(argv))
            start = token in COMMAND_START or (start and bool(ASSIGNMENT.match(token)))


def all_invocations(path: Path) -> list[Invocation]:
    name = str(path.relative_to(DOCS))
    text = path.read_text()
    if path.suffix == ".yml":
        return [call for step, script in run_blocks(yaml.safe_load(text)) for call in invocations(script, name + step)]
    if path.suffix == ".md":
        return [call for line, block in fenced_blocks(text)
                for call in invocations(block, name, line)]
    return list(invocations(text, name))


# --- checking them against the collection -------------------------------------------------------

def _core_flags(program) -> dict[str, bool]:
    """The program's own flags (before the first task) -> whether each takes a value."""
    return {f"-{name}" if len(name) == 1 else f"--{name}": argument.takes_value
            for argument in (*program.core_args(), *program.task_args()) for name in argument.names}


UNKNOWN = object()  # the task named is not one: its options are not checked, it is reported once


def problems(call: Invocation, collection: Collection = ns) -> list[str]:
    """What `inv`/`fab` would refuse in this command: an unknown task, or an option its task lacks."""
    contexts = {name: context for context in collection.to_contexts() for name in (context.name, *context.aliases)}
    core = _core_flags(PROGRAMS[call.program])
    found, words, task, positional = [], list(call.argv), None, []
    while words:
        word = words.pop(0)
        if word.startswith("-") and task is not UNKNOWN:
            flag, has_value = word.split("=", 1)[0], "=" in word
            takes_value = _takes_value(task, flag, core)
            if takes_value is None:
                found.append(f"{call}: {flag} is not an option of {call.program}" if task is None else
                             f"{call}: task {task.name!r} has no option {flag} (it has {', '.join(sorted(task.flags))})")
            next_is_value = bool(words) and not words[0].startswith("-") and words[0] not in contexts
            if not has_value and words and (takes_value or (takes_value is None and next_is_value)):
                words.pop(0)  # its value (an unknown option's too, so it is not read as a task)
        elif word in contexts:
            task, positional = contexts[word], list(contexts[word].positional_args)
        elif task is UNKNOWN or word.startswith("-"):
            continue
        elif task is not None and positional:
            positional.pop(0)  # a positional argument of the task
        else:
            found.append(f"{call}: {word!r} is not a task (the tasks: {', '.join(sorted(contexts))})")
            task = UNKNOWN
    return found


def _takes_value(task, flag: str, core: dict[str, bool]) -> bool | None:
    """Whether `flag` takes a value where it stands (None: it is not an option there): the task's
    own flags first (long, short, `--no-` of a default-true one), then the program's, which
    invoke also accepts after a task name."""
    if task is not None:
        name = task.inverse_flags.get(flag, flag)
        if name in task.flags:  # a Lexicon: short flags are aliases of the long ones
            return task.flags[name].takes_value
    return core.get(flag)


# --- the documents ------------------------------------------------------------------------------

def test_the_examples_are_there():
    assert [p.name for p in WORKFLOWS] == ["deploy.yml", "promote.yml", "rollback.yml"]
    assert [p.name for p in SCRIPTS] == ["deploy.sh"] and os.access(SCRIPTS[0], os.X_OK)
    assert (DOCS / "README.md").is_file()


@pytest.mark.parametrize("path", [*WORKFLOWS, *SCRIPTS, *MARKDOWN], ids=lambda p: str(p.relative_to(DOCS)))
def test_every_invocation_names_a_task_and_its_options(path):
    calls = all_invocations(path)
    assert calls, f"no inv command found in {path.name}: the extraction missed them"
    found = [problem for call in calls for problem in problems(call)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_github_expression_reaches_a_shell(path):
    """`${{ inputs.to }}` pasted into a script is script injection: values reach run: blocks as
    environment variables only."""
    for where, script in run_blocks(yaml.safe_load(path.read_text())):
        assert "${{" not in script, f"{path.name}{where}: pass it through env:"


def _jobs() -> Iterator[tuple[str, str, dict]]:
    for path in WORKFLOWS:
        for name, job in yaml.safe_load(path.read_text())["jobs"].items():
            yield path.name, name, job


def _touches_production(job: dict) -> bool:
    calls = [call for _, script in run_blocks(job) for call in invocations(script, "")]
    return any("promote" in call.argv or re.search(r"--env[ =]production\b", shlex.join(call.argv)) for call in calls)


def test_production_jobs_wait_for_approval_one_at_a_time_never_cancelled():
    production = [(file, name, job) for file, name, job in _jobs() if _touches_production(job)]
    assert {file for file, _, _ in production} == {"promote.yml", "rollback.yml"}
    groups = set()
    for file, name, job in production:
        assert job.get("environment") == "production", f"{file} {name}: environment: production (reviewers)"
        concurrency = job.get("concurrency") or {}
        assert concurrency.get("cancel-in-progress") is False, f"{file} {name}: never cancel a production deploy"
        groups.add(concurrency.get("group"))
    assert len(groups) == 1 and None not in groups, f"one concurrency group for production, not {groups}"


def test_the_staging_deploy_follows_the_build_and_is_never_cancelled():
    jobs = {name: job for file, name, job in _jobs() if file == "deploy.yml"}
    assert jobs["staging"]["needs"] == "build"
    assert jobs["staging"]["concurrency"]["cancel-in-progress"] is False
    build = "\n".join(script for _, script in run_blocks(jobs["build"]))
    assert '--tag "$IMAGE_WEB:$GITHUB_SHA"' in build, "images are tagged by the full SHA"


# --- the checker itself, fed bad snippets ----------------------------------------------------------

BAD_WORKFLOW = """
jobs:
  ship:
    steps:
      - name: fine
        run: inv deploy --env staging --sha "$SHA" --dry-run
      - name: several lines
        run: |
          echo "inv nonsense --not-checked"   # quoted, and a comment: not commands
          pip install invoke
          inv deploy --env production \\
            --sha "$SHA" --no-such-option
          if [ -n "$TO" ]; then inv rollback --env production --to "$TO" --shaa x; else inv rollbak; fi
          out=$(inv status --env staging --no-migrate) && DEPLOY_ENV=staging inv status
          inv maintenance-on --env staging --sha x
          fab -H app1.example.com deploy --sha=abc1234 --env=staging --typo=1
          inv --echo status --env staging maintenance-on --env staging --force-unlock --force
          inv status --env production 2>&1 | tee status.txt; inv rollback --lock-wait 60 >/dev/null
"""


def test_a_bad_workflow_is_caught():
    calls = [call for step, script in run_blocks(yaml.safe_load(BAD_WORKFLOW))
             for call in invocations(script, "bad.yml" + step)]
    assert [str(call) for call in calls] == [
        "bad.yml/jobs/ship/steps[0] (fine):1: inv deploy --env staging --sha \'$SHA\' --dry-run",
        "bad.yml/jobs/ship/steps[1] (several lines):3: inv deploy --env production --sha \'$SHA\' --no-such-option",
        "bad.yml/jobs/ship/steps[1] (several lines):4: inv rollback --env production --to \'$TO\' --shaa x",
        "bad.yml/jobs/ship/steps[1] (several lines):4: inv rollbak",
        "bad.yml/jobs/ship/steps[1] (several lines):5: inv status --env staging --no-migrate",
        "bad.yml/jobs/ship/steps[1] (several lines):5: inv status",
        "bad.yml/jobs/ship/steps[1] (several lines):6: inv maintenance-on --env staging --sha x",
        "bad.yml/jobs/ship/steps[1] (several lines):7: fab -H app1.example.com deploy --sha=abc1234 --env=staging --typo=1",
        "bad.yml/jobs/ship/steps[1] (several lines):8: inv --echo status --env staging maintenance-on --env staging "
        "--force-unlock --force",
        "bad.yml/jobs/ship/steps[1] (several lines):9: inv status --env production",
        "bad.yml/jobs/ship/steps[1] (several lines):9: inv rollback --lock-wait 60",
    ]
    found = [problem.split(": ", 2)[-1].split(" (")[0] for call in calls for problem in problems(call)]
    assert found == [
        "task 'deploy' has no option --no-such-option",
        "task 'rollback' has no option --shaa",
        "'rollbak' is not a task",
        "task 'status' has no option --no-migrate",
        "task 'maintenance-on' has no option --sha",
        "task 'deploy' has no option --typo",
    ]


def test_a_bad_script_line_is_caught():
    script = "#!/bin/sh\nset -eu\n# inv nothing: a comment\ninv promote --sha \"$sha\" --from staging\n"
    calls = list(invocations(script, "deploy.sh"))
    assert [str(call) for call in calls] == ["deploy.sh:4: inv promote --sha \'$sha\' --from staging"]
    tiny = Collection(*[t for t in ns.tasks.values() if t.name != "promote"])
    assert [p.split(": ", 2)[-1].split(" (")[0] for p in problems(calls[0], tiny)] == ["'promote' is not a task"]


def test_positional_arguments_short_flags_and_program_flags_are_understood():
    """`inv deploy SHA` (the SHA is positional: it has no default) is a deploy, not two tasks."""
    assert problems(Invocation("x", "inv", ("deploy", FULL, "--env", "staging"))) == []
    assert problems(Invocation("x", "inv", ("--list",))) == []
    assert problems(Invocation("x", "fab", ("-H", "web1", "status"))) == []
    assert problems(Invocation("x", "inv", ("status", "-e", "staging", "--echo", "deploy", "-s", FULL))) == [], \
        "short flags, and a program flag after a task name, as invoke reads them"
    assert problems(Invocation("x", "inv", ("-H", "web1", "status"))) == ["x: inv -H web1 status: -H is not an option of inv"]


def test_a_default_true_option_is_turned_off_with_no():
    """`def ship(c, rollback=True)`: invoke offers --no-rollback (underscores become dashes)."""
    @invoke.task
    def ship(c, batch_wait=0, rollback=True):
        pass

    tiny = Collection(ship)
    assert problems(Invocation("x", "inv", ("ship", "--no-rollback", "--batch-wait", "5")), tiny) == []
    assert problems(Invocation("x", "inv", ("ship", "--batch_wait", "5")), tiny) == [
        "x: inv ship --batch_wait 5: task 'ship' has no option --batch_wait (it has --batch-wait, --rollback)"]
    assert problems(Invocation("x", "inv", ("--nope", "status"))) == ["x: inv --nope status: --nope is not an option of inv"]


# --- deploy.sh, run for real with stub docker and inv ------------------------------------------------

def _stub(bin_dir: Path, name: str) -> None:
    """A command that records its arguments, one line per call, in $STUB_LOG."""
    path = bin_dir / name
    path.write_text(f'#!/bin/sh\nprintf "{name}" >> "$STUB_LOG"\nfor a in "$@"; do printf " %s" "$a" >> "$STUB_LOG"; done\n'
                    'echo >> "$STUB_LOG"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def sh(tmp_path):
    """Runs docs/ci/deploy.sh in a throwaway repository with stub docker and inv."""
    repo, bin_dir, home = tmp_path / "repo", tmp_path / "bin", tmp_path / "home"
    for directory in (repo / "envs", bin_dir, home):
        directory.mkdir(parents=True)
    for name in ("docker", "inv"):
        _stub(bin_dir, name)
    log = tmp_path / "calls"

    def run(*args: str, **environ: str) -> tuple[int, list[str], str]:
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "STUB_LOG": str(log), **environ}
        result = subprocess.run(["sh", str(DOCS / "deploy.sh"), *args], cwd=repo, env=env, capture_output=True,
                                text=True, timeout=30)
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return result.returncode, calls, result.stderr

    run.repo = repo
    return run


def test_deploy_sh_is_posix_sh():
    assert subprocess.run(["sh", "-n", str(SCRIPTS[0])], capture_output=True).returncode == 0


def test_deploy_sh_builds_and_pushes_by_the_full_sha(sh):
    code, calls, _ = sh("build", SHA=FULL, IMAGES="reg.example.com/shop/web=. reg.example.com/shop/worker=worker",
                        REGISTRY_USER="ci", REGISTRY_PASSWORD="pw")
    assert code == 0
    assert calls == [
        "docker login reg.example.com --username ci --password-stdin",
        f"docker build --tag reg.example.com/shop/web:{FULL} .", f"docker push reg.example.com/shop/web:{FULL}",
        f"docker build --tag reg.example.com/shop/worker:{FULL} worker",
        f"docker push reg.example.com/shop/worker:{FULL}",
    ]


def test_deploy_sh_refuses_to_build_an_abbreviated_sha(sh):
    code, calls, err = sh("build", SHA="3f2c1e9", IMAGE_WEB="reg.example.com/shop/web")
    assert code != 0 and calls == [] and "not a full git SHA" in err


def test_deploy_sh_staging_writes_the_env_files_and_deploys(sh):
    code, calls, _ = sh("staging", SHA=FULL, STAGING_ENV="APP_NAME=shop\nHOSTS=web1", STAGING_APP_ENV="")
    assert code == 0
    assert calls == [f"inv deploy --env staging --sha {FULL} --lock-wait 600", "inv status --env staging"]
    env_file = sh.repo / "envs" / "staging.env"
    assert env_file.read_text() == "APP_NAME=shop\nHOSTS=web1\n"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert (sh.repo / "envs" / "staging.app.env").exists(), "APP_ENV_FILE must exist, even empty"


def test_deploy_sh_keeps_a_tracked_env_file_and_needs_one(sh):
    code, _, err = sh("staging", SHA=FULL)
    assert code == 2 and "envs/staging.env is missing" in err
    (sh.repo / "envs" / "staging.env").write_text("TRACKED=1\n")
    code, calls, _ = sh("staging", SHA=FULL, STAGING_ENV="OTHER=1")
    assert code == 0 and (sh.repo / "envs" / "staging.env").read_text() == "TRACKED=1\n"


def test_deploy_sh_promote_and_rollback(sh):
    environ = {"SHA": FULL, "STAGING_ENV": "A=1", "PRODUCTION_ENV": "A=2"}
    assert sh("promote", **environ)[1] == [f"inv promote --sha {FULL}", "inv status --env production"]
    assert sh("promote", "3f2c1e9", **environ)[1] == ["inv promote --sha 3f2c1e9", "inv status --env production"]
    assert sh("rollback", **environ)[1] == ["inv rollback --env production", "inv status --env production"]
    assert sh("rollback", "3f2c1e9", **environ)[1] == ["inv rollback --env production --to 3f2c1e9",
                                                       "inv status --env production"]


def test_deploy_sh_without_a_subcommand_shows_its_usage(sh):
    code, calls, err = sh()
    assert code == 2 and calls == [] and "ci/deploy.sh promote [SHA]" in err
