"""`inv bench`: what users see during deploys, measured under real load on the testbed.

Each scenario runs one action (a deploy, a rollback, or a baseline done the usual way)
while 8 keep-alive clients send GETs and POSTs through the server's nginx, and reports
failed requests, the longest gap without a successful answer, regressions (a client
answered by the old version after the new one) and latency percentiles. The `control (no
deploy)` row is the same load with nothing happening: every `max_gap_s` reads against it.
Container scenarios use envs/local.env (the app on its unix socket) and envs/local-tcp.env
(the same app on TCP port 8000, relayed by nginx), process scenarios envs/local-process.env,
and the WebSocket row the board app of harness/apps.py (aiohttp on $PORT); every run starts
from an empty test server.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from deploytasks import config as configuration
from deploytasks import operations, phases, probe, traffic
from deploytasks.backends import compose, processes
from deploytasks.errors import DeployError
from deploytasks.facts import HostState, release_sha
from deploytasks.layout import Layout
from deploytasks.plan import Plan, Step, cmd
from deploytasks.remote.executor import Remote, execute

from . import apps, fleet, testbed
from .load import Load, summarize

CONTAINER_ENV = "local"
TCP_ENV = "local-tcp"
PROCESS_ENV = "local-process"
FLEET_ENV = "fleet"  # envs/fleet.env: the hosts of the fleet testbed (harness/fleet.py)
BOARD_ENV = "board"  # generated: the board app's own repository (harness/apps.py)
CONTROL_SECONDS = 15.0  # about as long as a deploy takes here

Action = Callable[[operations.Target], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    env: str
    action: Action
    new_version: str | None  # the version clients should see from the switch on
    before: Action | None = None  # setup, not measured
    window: bool = False  # a maintenance window: its 503 page (with Retry-After) is not a failure
    during: "Callable[[operations.Target], Callable[[], dict]] | None" = None  # started before the
    # action, under the same load; what its finisher returns is added to the row
    bad_version: str | None = None  # a release that fails after its switch: the deploy must take it back


def idle(target: operations.Target) -> None:
    """The control: the same load, and nothing done to the server."""
    time.sleep(CONTROL_SECONDS)


def long_request(seconds: float) -> Callable[[operations.Target], Callable[[], dict]]:
    """One request of `seconds` (an export, a report) started through nginx just before the action."""

    def start(target: operations.Target) -> Callable[[], dict]:
        import requests

        config, result = target.config, {}
        url = f"http://{target.hosts[0]}:{config.nginx_listen}/slow?seconds={seconds:g}"

        def send() -> None:
            began = time.monotonic()
            try:
                response = requests.get(url, timeout=seconds + 60)
                result.update(status=response.status_code, body=response.text.strip())
            except requests.RequestException as exc:
                result.update(status=0, error=type(exc).__name__)
            result["seconds"] = round(time.monotonic() - began, 2)

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        time.sleep(0.5)

        def finish() -> dict:
            thread.join(timeout=seconds + 90)
            return {"long_request": result}

        return finish

    return start


def websocket_held(target: operations.Target) -> Callable[[], dict]:
    """A WebSocket opened on the old version just before the action, sending a message every
    half second: how long it kept being answered, by which version, and when it closed."""
    pinger = apps.Pinger(target.hosts[0], target.config.nginx_listen)
    began = time.monotonic()

    def finish() -> dict:
        pinger.join(timeout=5)
        answers = [reply for _, reply in pinger.answers()]
        return {"websocket": {"answers": len(answers), "answered_by": sorted(set(answers)),
                              "open_s": round(pinger.replies[-1][0] - began, 2) if pinger.replies else 0.0,
                              "ended": pinger.ended()}}

    return finish


def version_sha(target: operations.Target, name: str) -> str:
    """The SHA of an example version: an image tag, or a commit (tag `name`) of the app's repository."""
    if target.config.mode == "processes":
        return apps.git(target.config.processes.source_repo, "rev-parse", f"{name}^{{commit}}")
    return testbed.example_sha(name)


def serve(name: str) -> Action:
    """Make sure `name` serves on every host (a plain deploy, unmeasured) unless it already does."""

    def ensure(target: operations.Target) -> None:
        wanted = version_sha(target, name)
        if any(release_sha(state.release_of(state.live)) != wanted for state in _states(target)):
            deploy(name)(target)

    return ensure


def deploy(name: str, **options) -> Action:
    def act(target: operations.Target) -> None:
        if target.config.mode == "processes":
            options.setdefault("fast", True)
        operations.deploy(target, version_sha(target, name), **options)

    return act


def deploy_refused(name: str) -> Action:
    """A deploy that must fail (its watch after the switch sends traffic back); it is the row."""
    def act(target: operations.Target) -> None:
        try:
            operations.deploy(target, version_sha(target, name))
        except DeployError as error:
            print(f"(expected) {str(error).splitlines()[0]}")
            return
        raise DeployError(f"the deploy of {name} succeeded: its watch after the switch did not catch it")

    return act


def on_first_host(action: Action) -> Action:
    def act(target: operations.Target) -> None:
        action(dataclasses.replace(target, hosts=target.hosts[:1]))

    return act


def rollback(target: operations.Target) -> None:
    operations.rollback(target)


def compose_recreate(target: operations.Target) -> None:
    """The baseline most guides give: `docker compose up -d` recreating the live service in place."""
    config = target.config

    def recreate(remote: Remote, state: HostState) -> None:
        release = Layout.of(config).release(state.release_of(state.live))
        remote.check(compose.command(config, release, compose.project(config, state.live), "up", "-d", "--no-deps",
                                     "--force-recreate", "--wait", *config.stateless), "compose up -d")

    _on_live(target, recreate)


def gunicorn_hup(target: operations.Target) -> None:
    """The classic process switch: `kill -HUP` the live gunicorn (new workers, same socket)."""

    def hup(remote: Remote, state: HostState) -> None:
        signal = Step(phases.START, (cmd("kill", "-HUP", str(state.processes[state.live])),), label="kill -HUP")
        execute(remote, Plan("baseline", "", (signal, traffic.readiness(target.config, state.live))))

    _on_live(target, hup)


def gunicorn_restart(target: operations.Target) -> None:
    """Stop the live gunicorn and start it again: what a plain `systemctl restart` does."""

    def restart(remote: Remote, state: HostState) -> None:
        gunicorn = processes.AppServer(target.config, state, state.live, state.release_of(state.live))
        execute(remote, Plan("baseline", "", (gunicorn.start(), gunicorn.ready())))

    _on_live(target, restart)


def container_scenarios() -> list[Scenario]:
    env = CONTAINER_ENV
    return [
        Scenario("control (no deploy)", env, idle, None, before=serve("v1")),
        Scenario("container deploy v1->v2", env, deploy("v2"), "v2", before=serve("v1")),
        Scenario("container deploy v2->v3", env, deploy("v3"), "v3", before=serve("v2")),
        Scenario("container rollback v3->v2", env, rollback, "v2", before=serve("v3")),
        Scenario("container baseline: compose up -d recreate", env, compose_recreate, None),
        Scenario("container deploy v2->v5 that fails after its switch (watched, taken back)", env,
                 deploy_refused("v5-breaks"), None, before=serve("v2"), bad_version="v5-breaks"),
        # last: its migration is not backward compatible, so no earlier version is ready after it
        Scenario("container maintenance deploy v2->v4 (breaking migration)", env, deploy("v4-breaking", window=True),
                 "v4-breaking", before=serve("v2"), window=True),
    ]


def tcp_scenarios() -> list[Scenario]:
    """The same app listening on TCP port 8000 (WEB_PORT), each colour relayed by nginx."""
    env = TCP_ENV
    return [
        Scenario("tcp control (no deploy)", env, idle, None, before=serve("v1")),
        Scenario("tcp container deploy v1->v2 (WEB_PORT relay)", env, deploy("v2"), "v2", before=serve("v1")),
        Scenario("tcp container rollback v2->v1 (WEB_PORT relay)", env, rollback, "v1", before=serve("v2")),
        Scenario("long request (20 s) across a deploy v1->v2", env, deploy("v2"), "v2", before=serve("v1"),
                 during=long_request(20)),
    ]


def websocket_scenarios() -> list[Scenario]:
    """aiohttp on $PORT as a process release (START_COMMAND, LISTEN=port)."""
    return [Scenario("websocket held across a process deploy v1->v2 (aiohttp)", BOARD_ENV, deploy("v2"), "v2",
                     before=serve("v1"), during=websocket_held)]


def process_scenarios() -> list[Scenario]:
    env = PROCESS_ENV
    return [
        Scenario("process deploy v1->v2 (--fast)", env, deploy("v2"), "v2", before=serve("v1")),
        Scenario("process deploy v2->v3 (new dependencies)", env, deploy("v3"), "v3", before=serve("v2")),
        Scenario("process rollback v3->v2", env, rollback, "v2", before=serve("v3")),
        Scenario("process baseline: kill -HUP", env, gunicorn_hup, None),
        Scenario("process baseline: kill and restart", env, gunicorn_restart, None),
    ]


def fleet_scenarios(hosts: int) -> list[Scenario]:
    """The container app on `hosts` hosts of the fleet testbed, one rollout each, the load spread
    over every host's nginx and the front balancer across them."""
    env, name = FLEET_ENV, f"hosts {hosts}"
    return [
        Scenario(f"{name} control (no deploy)", env, idle, None, before=serve("v1")),
        # the yardstick: the same rollout to one of these hosts, under the same load, same machine
        Scenario(f"{name}: one host's deploy v1->v2 (the others idle)", env, on_first_host(deploy("v2")), None,
                 before=serve("v1")),
        Scenario(f"{name} deploy v1->v2 (batch 1)", env, deploy("v2"), "v2", before=serve("v1")),
        Scenario(f"{name} deploy v2->v3 (batch 100%)", env, deploy("v3", over=operations.Rollout.of("100%")), "v3",
                 before=serve("v2")),
        Scenario(f"{name} rollback v3->v2", env, rollback, "v2", before=serve("v3")),
    ]


def measure(target: operations.Target, scenario: Scenario, *, clients: int, rate: float,
            min_requests: int, front: tuple[str, int] | None = None) -> dict:
    """The scenario under load through every host's nginx (and a front balancer's, if given),
    the load shared between them: one row, with each entry point's own figures when several."""
    if scenario.before:
        scenario.before(target)
    new_sha = version_sha(target, scenario.new_version) if scenario.new_version else None
    site = None if target.config.server_name == "_" else target.config.server_name.split()[0]
    points = [(host, host, target.config.nginx_listen) for host in target.hosts]
    points += [("front", *front)] if front else []
    with ExitStack() as stack:
        loads = {label: stack.enter_context(Load(host, port, clients=max(2, clients // len(points)),
                                                 rate=rate / len(points), min_requests=min_requests // len(points),
                                                 site=site))
                 for label, host, port in points}
        finish = scenario.during(target) if scenario.during else None
        started, busy = time.monotonic(), _cpu_busy_s()
        began = time.time()
        scenario.action(target)
        deploy_s, busy = time.monotonic() - started, _cpu_busy_s() - busy
        extra = finish() if finish else {}
    summaries = {label: summarize(load.samples, new_sha, maintenance_ok=scenario.window)
                 for label, load in loads.items()}
    summary = summarize([s for load in loads.values() for s in load.samples], new_sha, maintenance_ok=scenario.window)
    row = {
        "scenario": scenario.name,
        "requests": summary.requests,
        "failed": summary.failed,
        "max_gap_s": max(each.max_gap_s for each in summaries.values()),  # the worst entry point's
        "regressions": sum(each.regressions for each in summaries.values()),
        "deploy_s": round(deploy_s, 2),
        "p50_ms": summary.p50_ms,
        "p99_ms": summary.p99_ms,
        "errors": summary.errors,
        "clients": max(2, clients // len(points)) * len(points),
        # the whole machine's CPU during the action (load, nginx and every emulated host included),
        # as a share of all its cores: near 1.0, the action was bound by this machine's CPU
        "cpu_busy": round(busy / (deploy_s * (os.cpu_count() or 1)), 2) if deploy_s else 0.0,
        **({"hosts": len(target.hosts), "through": {label: {"requests": each.requests, "failed": each.failed,
                                                            "max_gap_s": each.max_gap_s,
                                                            "regressions": each.regressions}
                                                    for label, each in summaries.items()}}
           if len(points) > 1 else {}),
        **extra,
        **_probes(target, began),
    }
    if scenario.bad_version:
        row.update(_taken_back([s for load in loads.values() for s in load.samples],
                               version_sha(target, scenario.bad_version)))
    if scenario.window:
        history = _state(target).history
        steps = history[-1].get("steps", {}) if history else {}
        row.update(window_s=summary.window_s, migration_s=steps.get(phases.MIGRATE),
                   maintenance_pages=sum(1 for s in loads[points[0][0]].samples if s.status == 503))
    return row


def _probes(target: operations.Target, since: float) -> dict:
    """What the deploy's own probe saw (each host's history line), beside the load's figures."""
    found = []
    for host in target.hosts:
        history = _state(target, host).history
        record = history[-1] if history else {}
        if record.get("time", "") >= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since - 1)):
            found.append(record.get("probe"))
    figures = probe.combined(found)
    return {"probe": figures} if figures else {}


def _taken_back(samples: list, bad_sha: str) -> dict:
    """For a release that fails after its switch: the failures it did not answer itself (0: the
    switch back lost nothing), and the seconds from its first failure until only the old version
    answers again."""
    failed = sorted((s for s in samples if not 200 <= s.status < 300), key=lambda s: s.end)
    by_bad = [s for s in failed if s.version == bad_sha]
    first = min((s.end for s in by_bad), default=None)
    last_bad = max((s.start for s in samples if s.version == bad_sha), default=None)
    back = min((s.end for s in samples if s.start > (last_bad or 0) and 200 <= s.status < 300
                and s.version != bad_sha), default=None)
    return {"failed_by_bad_release": len(by_bad), "failed_otherwise": len(failed) - len(by_bad),
            "back_s": round(back - first, 3) if first is not None and back is not None else None}


def table(rows: list[dict]) -> str:
    lines = [f"{'scenario':58} {'requests':>8} {'failed':>7} {'max_gap_s':>9} {'regress':>7} {'deploy_s':>8}"
             f" {'p50_ms':>6} {'p99_ms':>6} {'cpu':>4} {'window_s':>8}"]
    for row in rows:
        window = f"{row['window_s']:>8.2f}" if "window_s" in row else f"{'':>8}"
        lines.append(f"{row['scenario']:58} {row['requests']:>8} {row['failed']:>7} {row['max_gap_s']:>9.3f} "
                     f"{row['regressions']:>7} {row['deploy_s']:>8.1f} {row['p50_ms']:>6.1f} {row['p99_ms']:>6.1f} {row['cpu_busy']:>4.2f} "
                     f"{window}")
        if "probe" in row:
            seen = row["probe"]
            lines.append(f"    probe (the deploy's own): {seen['failed']} failed of {seen['requests']}, longest gap "
                         f"{seen['gap_ms']} ms, {seen['regressions'] or 0} old after new")
        if "back_s" in row:
            lines.append(f"    taken back: {row['failed_by_bad_release']} failed answered by the bad release, "
                         f"{row['failed_otherwise']} otherwise; old version only again {row['back_s']}s after "
                         "its first failure")
        for key in ("long_request", "websocket", "through"):
            if key in row:
                lines.append(f"    {key}: {json.dumps(row[key])}")
    return "\n".join(lines)


def run(root: Path, out: str | None = None, scenarios: list[Scenario] | None = None, *, hosts: int = 1,
        only: str | None = None, clients: int = 8, rate: float = 500.0, min_requests: int = 5000,
        echo: Callable[[str], None] = print) -> list[dict]:
    """Every scenario (with `hosts` > 1, the fleet's too), or those whose name matches `only`."""
    testbed.up(echo=echo)
    scenarios = scenarios or (container_scenarios() + tcp_scenarios() + process_scenarios() + websocket_scenarios()
                              + (fleet_scenarios(hosts) if hosts > 1 else []))
    if only:
        scenarios = [s for s in scenarios if re.search(only, s.name)]
    targets = {}
    generated = Path(tempfile.mkdtemp(prefix="deploytasks-bench-"))
    for env in dict.fromkeys(s.env for s in scenarios):
        home = root
        if env == BOARD_ENV:
            home = generated / "board"
            apps.board_project(home, env)
        config = configuration.load(home, env)
        if env == FLEET_ENV:
            addresses = fleet.up(hosts, echo=echo)
            config = dataclasses.replace(config, hosts=tuple(addresses[:hosts]))
            fleet.reset_app(config)
            targets[env] = operations.Target(config, config.hosts)
            continue
        testbed.reset_app(config)  # every run starts from an empty server: same data, same schema
        targets[env] = operations.Target(config, config.hosts[:1])
    rows = []
    for scenario in scenarios:
        echo(f"\n=== {scenario.name} ===")
        front = fleet.front() if scenario.env == FLEET_ENV else None
        rows.append(measure(targets[scenario.env], scenario, clients=clients, rate=rate, min_requests=min_requests,
                            front=front))
    echo("\n" + table(rows))
    if out:
        Path(out).write_text(json.dumps(rows, indent=2) + "\n")
        echo(f"wrote {out}")
    return rows


def _cpu_busy_s() -> float:
    """CPU seconds this machine has spent busy since boot, all cores (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _state(target: operations.Target, host: str | None = None) -> HostState:
    with operations.session(target, host or target.hosts[0]) as remote:
        return operations.read_state(remote, target.config)


def _states(target: operations.Target) -> list[HostState]:
    return [_state(target, host) for host in target.hosts]


def _on_live(target: operations.Target, act: Callable[[Remote, HostState], None]) -> None:
    with operations.session(target, target.hosts[0]) as remote:
        act(remote, operations.read_state(remote, target.config))

