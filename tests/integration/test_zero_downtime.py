"""Behaviour under load: a blue/green deploy drops nothing where a plain recreate drops plenty.

These use the bench's own machinery with fewer requests; `inv bench` is the full measurement.
"""
from __future__ import annotations

import json

from harness import bench

from .support import ROOT

SMALL = {"clients": 8, "rate": 400.0, "min_requests": 1500}


def test_deploy_under_load_fails_nothing_and_never_regresses(fresh_host, tmp_path):
    out = tmp_path / "bench.json"
    env = bench.CONTAINER_ENV
    rows = bench.run(ROOT, str(out), [
        bench.Scenario("deploy v1->v2", env, bench.deploy("v2"), "v2", before=bench.serve("v1")),
        bench.Scenario("rollback v2->v1", env, bench.rollback, "v1"),
        bench.Scenario("baseline: compose up -d recreate", env, bench.compose_recreate, None),
    ], **SMALL)
    assert json.loads(out.read_text()) == rows
    deploy, rollback, baseline = rows
    for row in (deploy, rollback):
        assert row["requests"] >= 1500
        assert (row["failed"], row["regressions"]) == (0, 0), row
    assert baseline["failed"] > 0, "the load generator must see the failures a plain recreate causes"
    assert set(deploy) >= {"scenario", "requests", "failed", "max_gap_s", "regressions", "deploy_s"}
