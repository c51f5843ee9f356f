"""`inv demo`: a real zero-downtime deploy of the example app to the local test server.

Starts the testbed, deploys v1, then deploys v2 and rolls back while a constant load runs
through nginx, and prints what those clients saw.
"""
from __future__ import annotations

from pathlib import Path

from deploytasks import config as configuration
from deploytasks import operations

from . import bench


def run(root: Path) -> list[dict]:
    env = bench.CONTAINER_ENV
    scenarios = [
        bench.Scenario("demo: deploy v1->v2 under load", env, bench.deploy("v2"), "v2", before=bench.serve("v1")),
        bench.Scenario("demo: rollback v2->v1 under load", env, bench.rollback, "v1"),
    ]
    rows = bench.run(root, scenarios=scenarios)
    config = configuration.load(root, env)
    print()
    operations.status(operations.Target(config, config.hosts))
    print(f"\nThe example app answers at http://127.0.0.1:{config.nginx_listen}/ (try /version, /items).")
    return rows
