"""`inv faults`: every step of a deploy hit by a fault under load, and what users and the next deploy see.

Four flows run as a user runs them, `inv` in a project of its own over the testbed's real sshd:
a container deploy, a process deploy, a rollback and a maintenance-window deploy. At the start of
each of their steps, and once after the last, the deploying process is hit by one fault: SIGKILL,
its SSH connection cut at both ends (`ss -K`), or Ctrl-C. Host faults hit the host at the step
where they hurt: the registry stopped or frozen during the pull, the deploy path's disk full at
the upload, dockerd restarted while the new colour starts, an undo that cannot put traffic back.

After each fault: which version serves (the old, the new, or the maintenance page inside a
window), the requests a load through nginx saw fail, whether a marker item and every item before
it survived, what the host's history says, and whether the next run of the same command, typed
as before (no --force-unlock, no --lock-wait), succeeds and leaves `status` whole. A case passes
when no request failed, nothing was lost, the next run succeeded and `status` exits 0.
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

from deploytasks import config as configuration
from deploytasks.layout import Layout

from . import testbed
from .load import VERSION_HEADER, Load, summarize

KILL, CUT, CTRL_C = "kill", "cut", "ctrl-c"
DEPLOYER_FAULTS = (KILL, CUT, CTRL_C)
REGISTRY_DOWN, REGISTRY_HANGS, DISK_FULL, DOCKERD_RESTART, UNDO_FAILS = (
    "registry down", "registry hangs", "disk full", "dockerd restart", "undo fails")
DONE = "after the last step"
RUN_TIMEOUT = 240.0  # a faulted run that has not ended by then is reported as hung (and killed)
TIMEOUT_PULL = 10  # the faults project's bound on a pull, so a frozen registry costs seconds
DISK_ENV, DISK_PORT, DISK_SIZE = "disk", 8083, "64m"

STEP_LINE = re.compile(r"^\[[^\]]+\] -> (.+)$")
DONE_LINE = re.compile(r"^\[[^\]]+\] done: ")
SERVES = re.compile(r"serves ([0-9a-f]{7,40})")

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Flow:
    name: str
    env: str
    versions: tuple[str, str] = ("v2", "v3")  # alternated: each case deploys the one not serving
    rollback: bool = False
    window: bool = False

    def argv(self, sha: str) -> list[str]:
        if self.rollback:
            return ["rollback", "--env", self.env]
        return ["deploy", "--env", self.env, "--sha", sha] + (["--maintenance"] if self.window else [])


CONTAINER_DEPLOY = Flow("container deploy", "local")
PROCESS_DEPLOY = Flow("process deploy", "local-process")
ROLLBACK = Flow("rollback", "local", rollback=True)
WINDOW_DEPLOY = Flow("window deploy", "local", window=True)
FLOWS = (CONTAINER_DEPLOY, PROCESS_DEPLOY, ROLLBACK, WINDOW_DEPLOY)
DISK_DEPLOY = Flow("container deploy (deploy path on a 64 MB tmpfs)", DISK_ENV)

# the README's test command runs these: each fault in each flow once, at the step it hurts most
SUBSET = {
    CONTAINER_DEPLOY.name: {KILL: "switch to <colour>", CUT: "migrate", CTRL_C: "ready: <colour>"},
    PROCESS_DEPLOY.name: {KILL: "migrate", CUT: "switch to <colour>", CTRL_C: "dependencies"},
    ROLLBACK.name: {KILL: "check through nginx", CUT: "switch to <colour>", CTRL_C: "switch to <colour>"},
    WINDOW_DEPLOY.name: {KILL: "migrate", CUT: "start <colour>", CTRL_C: "switch to <colour>"},
}


def step_name(line: str) -> str:
    """A step as the table names it: colours and counts vary between runs, the step does not."""
    name = re.sub(r"\b(blue|green)\b", "<colour>", line)
    return re.sub(r" \(\d+ old release\(s\)\)", "", name)


# ---------------------------------------------------------------- the user's project

def project(root: Path, base: Path) -> Path:
    """A user's repository for the faults: this one's compose file and env files, its own
    tasks.py, a short TIMEOUT_PULL, and a `disk` environment whose deploy path is a small tmpfs."""
    home = base / "project"
    (home / "envs").mkdir(parents=True)
    shutil.copytree(root / "compose", home / "compose")
    (home / "tasks.py").write_text("from deploytasks.tasks import ns  # noqa: F401\n")
    for env in ("local", "local-process"):
        shutil.copy(root / "envs" / f"{env}.app.env", home / "envs" / f"{env}.app.env")
        text = (root / "envs" / f"{env}.env").read_text()
        (home / "envs" / f"{env}.env").write_text(text + f"TIMEOUT_PULL={TIMEOUT_PULL}\n")
    disk = (root / "envs" / "local.env").read_text()
    disk = re.sub(r"(?m)^APP_NAME=.*$", "APP_NAME=example-disk", disk)
    disk = re.sub(r"(?m)^DEPLOY_PATH=.*$", "DEPLOY_PATH=/srv/example-disk", disk)
    disk = re.sub(r"(?m)^NGINX_LISTEN=.*$", f"NGINX_LISTEN={DISK_PORT}", disk)
    disk = re.sub(r"(?m)^APP_ENV_FILE=.*$", "APP_ENV_FILE=envs/local.app.env", disk)
    (home / "envs" / f"{DISK_ENV}.env").write_text(disk + f"TIMEOUT_PULL={TIMEOUT_PULL}\n")
    return home


def config_of(home: Path, env: str) -> configuration.Config:
    return configuration.load(home, env, environ={})


def version_sha(config: configuration.Config, name: str) -> str:
    return testbed.process_sha(name) if config.mode == "processes" else testbed.example_sha(name)


# ---------------------------------------------------------------- the deploying process

class Deployer:
    """`inv ARGV` in the project, its output read line by line as it comes."""

    def __init__(self, home: Path, argv: list[str]):
        env = {k: v for k, v in os.environ.items() if k not in ("DEPLOY_ENV",)}
        env["PYTHONUNBUFFERED"] = "1"
        self.argv = argv
        self.proc = subprocess.Popen([sys.executable, "-m", "invoke", *argv], cwd=home, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, wanted: Callable[[str], bool], timeout: float = RUN_TIMEOUT) -> str | None:
        """The first line (from here on) that is wanted; None when the run ended first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if line is None:
                self._queue.put(None)
                return None
            if wanted(line):
                return line

    def finish(self, timeout: float = RUN_TIMEOUT) -> int | str:
        """The exit code (negative: the signal); 'hung' if it did not end in time (it is killed)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "hung"

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def run_to_end(home: Path, argv: list[str]) -> tuple[int | str, str]:
    deployer = Deployer(home, argv)
    code = deployer.finish()
    time.sleep(0.05)  # the reader thread drains the pipe
    return code, deployer.output


def cut_ssh(pid: int, port: int) -> int:
    """Cut every SSH connection of process `pid`, at both ends, as a dropped network would: the
    deployer's socket fails at once, sshd sees its session end. Returns how many were cut."""
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True).stdout
    local_ports = []
    for line in out.splitlines():
        if f"pid={pid}," not in line:
            continue
        found = re.search(r"\S+:(\d+)\s+\S+:(\d+)", line)
        if found and int(found.group(2)) == port:
            local_ports.append(found.group(1))
    for local in local_ports:
        subprocess.run(["ss", "-K", "-tn", f"( sport = :{local} or dport = :{local} )"], capture_output=True)
    return len(local_ports)


# ---------------------------------------------------------------- faults

@dataclass
class Fault:
    """What hits a run when its boundary step starts (`hit`), and what clears a host fault
    before the next run (`clear`)."""

    name: str
    hit: Callable[["Deployer", configuration.Config], str]
    clear: Callable[[configuration.Config], None] = lambda config: None


def _signal(signum: int) -> Callable[[Deployer, configuration.Config], str]:
    def hit(deployer: Deployer, config: configuration.Config) -> str:
        os.kill(deployer.proc.pid, signum)
        return signal.Signals(signum).name

    return hit


def _cut(deployer: Deployer, config: configuration.Config) -> str:
    return f"{cut_ssh(deployer.proc.pid, config.ssh_port)} connection(s) cut"


def _registry_down(deployer: Deployer, config: configuration.Config) -> str:
    os.kill(testbed.registry_pid(), signal.SIGTERM)
    return "registry stopped"


def _registry_frozen(deployer: Deployer, config: configuration.Config) -> str:
    os.kill(testbed.registry_pid(), signal.SIGSTOP)  # connections are accepted, nothing is answered
    return "registry frozen"


def _registry_back(config: configuration.Config) -> None:
    try:
        os.kill(testbed.registry_pid(), signal.SIGCONT)
    except testbed.TestbedError:
        pass
    testbed.start_registry(echo=lambda line: None)


def _fill(deployer: Deployer, config: configuration.Config) -> str:
    filler = Path(config.deploy_path, "filler")
    subprocess.run(["fallocate", "-l", str(shutil.disk_usage(config.deploy_path).free), str(filler)],
                   capture_output=True)
    fd = os.open(filler, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # unbuffered: whatever fallocate left
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # no space left: the point
        pass
    finally:
        os.close(fd)
    return f"{shutil.disk_usage(config.deploy_path).free} bytes free"


def _unfill(config: configuration.Config) -> None:
    Path(config.deploy_path, "filler").unlink(missing_ok=True)


def _dockerd_restart(deployer: Deployer, config: configuration.Config) -> str:
    return testbed.restart_dockerd(echo=lambda line: None)


def _freeze_run(deployer: Deployer, config: configuration.Config) -> str:
    subprocess.run(["chattr", "+i", Layout.of(config).run], check=True)
    return "run/ immutable: the switch and its undo fail"


def _thaw_run(config: configuration.Config) -> None:
    subprocess.run(["chattr", "-i", Layout.of(config).run], check=True)


FAULTS = {
    KILL: Fault(KILL, _signal(signal.SIGKILL)),
    CUT: Fault(CUT, _cut),
    CTRL_C: Fault(CTRL_C, _signal(signal.SIGINT)),
    REGISTRY_DOWN: Fault(REGISTRY_DOWN, _registry_down, _registry_back),
    REGISTRY_HANGS: Fault(REGISTRY_HANGS, _registry_frozen, _registry_back),
    DISK_FULL: Fault(DISK_FULL, _fill, _unfill),
    DOCKERD_RESTART: Fault(DOCKERD_RESTART, _dockerd_restart),
    UNDO_FAILS: Fault(UNDO_FAILS, _freeze_run, _thaw_run),
}

# host faults: (flow, fault, the step it hits)
HOST_FAULTS = (
    (CONTAINER_DEPLOY, REGISTRY_DOWN, "pull images"),
    (CONTAINER_DEPLOY, REGISTRY_HANGS, "pull images"),
    (CONTAINER_DEPLOY, DOCKERD_RESTART, "start <colour>"),
    (CONTAINER_DEPLOY, UNDO_FAILS, "switch to <colour>"),
    (DISK_DEPLOY, DISK_FULL, "upload release"),
)


# ---------------------------------------------------------------- one case

def public(config: configuration.Config) -> str:
    return f"http://127.0.0.1:{config.nginx_listen}"


def serving(config: configuration.Config) -> str:
    """What a visitor gets now: the SHA that answered, 'maintenance', or the error."""
    try:
        response = requests.get(f"{public(config)}/", timeout=5)
    except requests.RequestException as error:
        return f"error: {type(error).__name__}"
    if response.status_code == 200:
        return response.headers.get(VERSION_HEADER, "no version header")
    if response.status_code == 503 and response.headers.get("Retry-After"):
        return "maintenance"
    return f"HTTP {response.status_code}"


def items(config: configuration.Config) -> list[str]:
    response = requests.get(f"{public(config)}/items", timeout=5)
    response.raise_for_status()
    return response.json()


def history_lines(config: configuration.Config) -> list[dict]:
    path = Path(Layout.of(config).history)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@dataclass
class Case:
    flow: Flow
    fault: str
    step: str  # a step name as step_name() gives it, or DONE
    index: int | None = None  # which step line the fault waits for (from the probe); None: by name


@dataclass
class Report:
    rows: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(row["ok"] for row in self.rows)


def run_case(home: Path, case: Case, echo: Echo) -> dict:
    """One case; a harness error (the site unreadable, say) is a failed row, not the end of the table."""
    try:
        return _run_case(home, case, echo)
    except Exception as error:  # noqa: BLE001 - reported in the row
        row = {"flow": case.flow.name, "step": case.step, "fault": case.fault, "hit": "?", "exit": "?",
               "left_serving": "?", "requests": 0, "failed": 0, "errors": {}, "data_intact": False,
               "next_run_exit": "?", "status_exit": "?", "history": [], "ok": False,
               "error": f"{type(error).__name__}: {error}"}
        echo(line_of(row) + f"  ({row['error']})")
        return row


def _run_case(home: Path, case: Case, echo: Echo) -> dict:
    config = config_of(home, case.flow.env)
    before = serving(config)
    names = {version_sha(config, v): v for v in case.flow.versions}
    goal = next(sha for sha, v in names.items() if sha != before) if not case.flow.rollback else None
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    requests.post(f"{public(config)}/items", data=marker, timeout=5).raise_for_status()
    kept = items(config)
    history_before = len(history_lines(config))
    fault = FAULTS[case.fault]
    argv = case.flow.argv(goal or "")
    seen, note = 0, "not reached: the run ended first"

    def boundary(line: str) -> bool:
        nonlocal seen
        if case.step == DONE:
            return bool(DONE_LINE.match(line))
        matched = STEP_LINE.match(line)
        if not matched:
            return False
        seen += 1
        return seen == case.index if case.index is not None else step_name(matched.group(1)) == case.step

    try:  # a host fault is cleared whatever happens, or it would break every case after this one
        with Load("127.0.0.1", config.nginx_listen, clients=4, rate=80.0, min_requests=0, min_seconds=0) as load:
            deployer = Deployer(home, argv)
            try:
                if deployer.until(boundary) is not None:
                    note = fault.hit(deployer, config)
                code = deployer.finish()
            finally:
                if deployer.proc.poll() is None:
                    deployer.proc.kill()
            after_fault = serving(config)
    finally:
        fault.clear(config)
    summary = summarize(load.samples, maintenance_ok=case.flow.window)

    next_code, next_out = run_to_end(home, argv)
    claimed = SERVES.search(next_out.splitlines()[-1] if next_out else "")
    now = serving(config)
    status_code, status_out = run_to_end(home, ["status", "--env", case.flow.env])
    found = items(config) if now != "maintenance" and not now.startswith(("HTTP", "error")) else []
    data_ok = marker in found and found[:len(kept)] == kept
    history = [record.get("outcome") for record in history_lines(config)[history_before:]]
    allowed = {before, goal} if goal else set(names)  # a rollback goes either way
    left = "old" if after_fault == before else "new" if after_fault in allowed else after_fault
    ok = (summary.failed == 0 and (after_fault in allowed or (case.flow.window and after_fault == "maintenance"))
          and data_ok and next_code == 0 and claimed is not None and now == claimed.group(1) and status_code == 0)
    row = {
        "flow": case.flow.name, "step": case.step, "fault": case.fault, "hit": note, "exit": code,
        "left_serving": left,
        "requests": summary.requests, "failed": summary.failed, "errors": summary.errors,
        "data_intact": data_ok, "next_run_exit": next_code, "status_exit": status_code,
        "history": history, "ok": ok,
    }
    if not ok:
        row["output"] = deployer.output.splitlines()[-25:]
        row["next_output"] = next_out.splitlines()[-25:]
        row["status_output"] = status_out.splitlines()[-15:]
    echo(line_of(row))
    return row


# ---------------------------------------------------------------- flows

def prepare(home: Path, flow: Flow, echo: Echo) -> list[str]:
    """An empty host, the flow's first version serving (both for a rollback), then one unfaulted
    run of the flow: the control, and the names of its steps."""
    config = config_of(home, flow.env)
    testbed.reset_app(config)
    first, second = (version_sha(config, v) for v in flow.versions)
    for sha in ((first, second) if flow.rollback else (first,)):
        code, out = run_to_end(home, ["deploy", "--env", flow.env, "--sha", sha])
        if code != 0:
            raise testbed.TestbedError(f"{flow.name}: setting up with {sha} failed:\n{out[-2000:]}")
    code, out = run_to_end(home, flow.argv(second if not flow.rollback else ""))
    if code != 0:
        raise testbed.TestbedError(f"{flow.name}: the unfaulted run failed:\n{out[-2000:]}")
    steps = [step_name(m.group(1)) for line in out.splitlines() if (m := STEP_LINE.match(line))]
    echo(f"{flow.name}: {len(steps)} steps: {', '.join(steps)}")
    return steps


def cases_of(flow: Flow, steps: list[str], full: bool) -> list[Case]:
    if full:
        return [Case(flow, fault, step, index) for index, step in enumerate(steps, 1) for fault in DEPLOYER_FAULTS] + \
               [Case(flow, fault, DONE) for fault in DEPLOYER_FAULTS]
    return [Case(flow, fault, step) for fault, step in SUBSET[flow.name].items()]


def run_flow(home: Path, flow: Flow, full: bool, echo: Echo) -> list[dict]:
    steps = prepare(home, flow, echo)
    return [run_case(home, case, echo) for case in cases_of(flow, steps, full)]


@contextmanager
def small_disk(config: configuration.Config):
    """The deploy path on a tmpfs of DISK_SIZE, for the disk-full case; removed afterwards."""
    testbed.reset_app(config)
    Path(config.deploy_path).mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", config.deploy_path], check=True)
    try:
        yield
    finally:
        testbed.reset_app(config)  # its containers hold bind mounts into the tmpfs
        subprocess.run(["umount", "-l", config.deploy_path], check=False)


def run_host_faults(home: Path, echo: Echo, only: tuple[str, ...] | None = None) -> list[dict]:
    rows = []
    for flow, fault, step in HOST_FAULTS:
        if only and fault not in only:
            continue
        if flow is DISK_DEPLOY:
            with small_disk(config_of(home, flow.env)):
                prepare(home, flow, echo)
                rows.append(run_case(home, Case(flow, fault, step), echo))
        else:
            if serving(config_of(home, flow.env)) not in {version_sha(config_of(home, flow.env), v)
                                                          for v in flow.versions}:
                prepare(home, flow, echo)
            rows.append(run_case(home, Case(flow, fault, step), echo))
    return rows


def line_of(row: dict) -> str:
    history = ",".join(str(h) for h in row["history"]) or "-"
    return (f"{row['flow']:18.18} {row['step']:24.24} {row['fault']:15} exit {str(row['exit']):>5} "
            f"left {row['left_serving']:11.11} failed {row['failed']:>3}/{row['requests']:<5} "
            f"data {'ok' if row['data_intact'] else 'LOST':4} next {'ok' if row['next_run_exit'] == 0 else 'FAIL':4} "
            f"status {row['status_exit']} history {history:20} {'PASS' if row['ok'] else 'FAIL'}")


def grid(rows: list[dict]) -> str:
    """The table per flow: a line per step, a column per fault, each cell what visitors were left
    with and failed/total requests; `!` marks a case that did not pass."""
    def table(row: dict) -> str:
        return row["flow"] if row["fault"] in DEPLOYER_FAULTS else "host faults"

    lines = []
    for flow in dict.fromkeys(map(table, rows)):
        mine = [row for row in rows if table(row) == flow]
        columns = list(dict.fromkeys(row["fault"] for row in mine))
        lines.append(f"{flow[:30]:30}" + "".join(f" {fault:17.17}" for fault in columns))
        for step in dict.fromkeys(row["step"] for row in mine):
            cells = {row["fault"]: f"{'' if row['ok'] else '!'}{row['left_serving'][:5]} {row['failed']}/{row['requests']}"
                     for row in mine if row["step"] == step}
            lines.append(f"  {step:28.28}" + "".join(f" {cells.get(fault, '-'):17}" for fault in columns))
    return "\n".join(lines)


def run(root: Path, out: str | None = None, *, full: bool = True, flows: tuple[Flow, ...] = FLOWS,
        host_faults: bool | tuple[str, ...] = True, echo: Echo = print) -> Report:
    """The whole table (full) or the README subset, one case at a time: the flows share the
    testbed's nginx, and one flow's reload (a first deploy installing its site) resets the other's
    idle keep-alive connections, which is not what a case measures."""
    testbed.up(echo=echo)
    report = Report()
    with tempfile.TemporaryDirectory(prefix="deploytasks-faults-") as base:
        home = project(root, Path(base))
        for flow in flows:
            report.rows.extend(run_flow(home, flow, full, echo))
        if host_faults:
            report.rows.extend(run_host_faults(home, echo, host_faults if isinstance(host_faults, tuple) else None))
        for env in ("local", "local-process"):
            testbed.reset_app(config_of(home, env))
    passed = sum(row["ok"] for row in report.rows)
    echo(f"\n{grid(report.rows)}\n\n{passed} of {len(report.rows)} cases passed")
    if out:
        Path(out).write_text(json.dumps(report.rows, indent=2) + "\n")
        echo(f"wrote {out}")
    return report
