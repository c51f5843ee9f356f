"""`inv bench`: what users see during deploys, measured under real load on the testbed.

Each scenario runs one action (a deploy, a rollback, or a baseline done the usual way)
while 8 keep-alive clients send GETs and POSTs through the server's nginx, and reports
failed requests, the longest gap without a successful answer, and regressions (a client
answered by the old version after the new one).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import compose
from . import config as configuration
from . import operations, testbed
from .facts import release_sha
from .layout import Layout
from .load import Load, summarize

BENCH_ENV = "local"


@dataclass(frozen=True)
class Scenario:
    name: str
    action: Callable[[operations.Target], None]
    new_version: str | None  # the SHA clients should see from the switch on
    before: Callable[[operations.Target], None] | None = None  # setup, not measured
    window: bool = False  # a maintenance window: its 503 page (with Retry-After) is not a failure


def serve(name: str) -> Callable[[operations.Target], None]:
    """Make sure `name` serves (a plain deploy, unmeasured) unless it already does."""

    def ensure(target: operations.Target) -> None:
        sha = testbed.example_sha(name)
        if _serving_sha(target) != sha:
            operations.deploy(target, sha)

    return ensure


def deploy(name: str) -> Callable[[operations.Target], None]:
    return lambda target: operations.deploy(target, testbed.example_sha(name))


def deploy_in_window(name: str) -> Callable[[operations.Target], None]:
    return lambda target: operations.deploy(target, testbed.example_sha(name), window=True)


def rollback(target: operations.Target) -> None:
    operations.rollback(target)


def compose_recreate(target: operations.Target) -> None:
    """The baseline most guides give: `docker compose up -d` recreating the live service in place."""
    config = target.config
    layout = Layout.of(config)
    for host in target.hosts:
        with operations.session(target, host) as remote:
            state = operations.read_state(remote, layout)
            release = layout.release(state.release_of(state.live))
            project = compose.project(config, state.live)
            remote.check(compose.command(config, release, project, "up", "-d", "--no-deps", "--force-recreate",
                                         "--wait", *config.stateless), "compose up -d")


def container_scenarios() -> list[Scenario]:
    v1, v2, v3 = (testbed.example_sha(n) for n in ("v1", "v2", "v3"))
    return [
        Scenario("container deploy v1->v2", deploy("v2"), v2, before=serve("v1")),
        Scenario("container deploy v2->v3", deploy("v3"), v3, before=serve("v2")),
        Scenario("container rollback v3->v2", rollback, v2, before=serve("v3")),
        Scenario("container baseline: compose up -d recreate", compose_recreate, None),
        # last: its migration is not backward compatible, so no earlier version is ready after it
        Scenario("container maintenance deploy v2->v4 (breaking migration)", deploy_in_window("v4-breaking"),
                 testbed.example_sha("v4-breaking"), before=serve("v2"), window=True),
    ]


def measure(target: operations.Target, scenario: Scenario, *, clients: int, rate: float,
            min_requests: int) -> dict:
    if scenario.before:
        scenario.before(target)
    host = target.hosts[0]
    with Load(host, target.config.nginx_listen, clients=clients, rate=rate, min_requests=min_requests) as load:
        started = time.monotonic()
        scenario.action(target)
        deploy_s = time.monotonic() - started
    summary = summarize(load.samples, scenario.new_version, maintenance_ok=scenario.window)
    row = {
        "scenario": scenario.name,
        "requests": summary.requests,
        "failed": summary.failed,
        "max_gap_s": summary.max_gap_s,
        "regressions": summary.regressions,
        "deploy_s": round(deploy_s, 2),
        "errors": summary.errors,
        "clients": clients,
    }
    if scenario.window:
        steps = _last_record(target).get("steps", {})
        row.update(window_s=summary.window_s, migration_s=steps.get("migrate"),
                   maintenance_pages=sum(1 for s in load.samples if s.status == 503))
    return row


def table(rows: list[dict]) -> str:
    lines = [f"{'scenario':58} {'requests':>8} {'failed':>7} {'max_gap_s':>9} {'regress':>7} {'deploy_s':>8}"
             f" {'window_s':>8}"]
    for row in rows:
        window = f"{row['window_s']:>8.2f}" if "window_s" in row else f"{'':>8}"
        lines.append(f"{row['scenario']:58} {row['requests']:>8} {row['failed']:>7} {row['max_gap_s']:>9.3f} "
                     f"{row['regressions']:>7} {row['deploy_s']:>8.1f} {window}")
    return "\n".join(lines)


def run(root: Path, out: str | None = None, scenarios: list[Scenario] | None = None, *, clients: int = 8,
        rate: float = 500.0, min_requests: int = 5000, echo: Callable[[str], None] = print) -> list[dict]:
    testbed.up(echo=echo)
    config = configuration.load(root, BENCH_ENV)
    testbed.reset_app(config)  # every run starts from an empty server: same data, same schema
    target = operations.Target(config, config.hosts[:1])
    rows = []
    for scenario in scenarios or container_scenarios():
        echo(f"\n=== {scenario.name} ===")
        rows.append(measure(target, scenario, clients=clients, rate=rate, min_requests=min_requests))
    echo("\n" + table(rows))
    if out:
        Path(out).write_text(json.dumps(rows, indent=2) + "\n")
        echo(f"wrote {out}")
    return rows


def _state(target: operations.Target):
    with operations.session(target, target.hosts[0]) as remote:
        return operations.read_state(remote, Layout.of(target.config))


def _serving_sha(target: operations.Target) -> str | None:
    state = _state(target)
    return release_sha(state.release_of(state.live))


def _last_record(target: operations.Target) -> dict:
    history = _state(target).history
    return history[-1] if history else {}
