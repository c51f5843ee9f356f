"""Maintenance mode and maintenance-window deploys on the real testbed."""
from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest
import requests

from deploytasks import operations
from deploytasks.errors import StepFailed

from .support import PUBLIC, serving, sha, target_of


def get(path: str, source: str = "127.0.0.1") -> tuple[int, dict, str]:
    conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


def last_record(config) -> dict:
    lines = Path(config.deploy_path, "state", "history.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def test_maintenance_on_off_is_idempotent_and_spares_health_and_allowlist(fresh_host, capsys):
    target = target_of(fresh_host, maintenance_allow=("127.0.0.2",))
    operations.deploy(target, sha("v3"))
    for _ in range(2):
        operations.set_maintenance(target, True)
        status, headers, body = get("/")
        assert status == 503 and headers["Retry-After"] == "30" and "right back" in body
        assert get("/items")[0] == 503
        posted = requests.post(f"{PUBLIC}/items", data="during maintenance", timeout=5)
        assert posted.status_code == 503 and posted.headers["Retry-After"] == "30", "POSTs get the page too"
        assert get("/healthz")[0] == 200 and get("/readyz")[0] == 200 and get("/version")[0] == 200
        status, headers, _ = get("/items", source="127.0.0.2")
        assert status == 200 and headers["X-App-Version"] == sha("v3"), "the allowlisted client reaches the app"
    capsys.readouterr()
    operations.status(target)
    assert "maintenance mode: ON" in capsys.readouterr().out
    for _ in range(2):
        operations.set_maintenance(target, False)
        assert serving() == sha("v3")
    operations.status(target)
    assert "maintenance mode" not in capsys.readouterr().out


def test_maintenance_deploy_runs_a_breaking_migration_inside_a_short_window(fresh_host):
    target = target_of(fresh_host)
    operations.deploy(target, sha("v3"))
    requests.post(f"{PUBLIC}/items", data="kept across the window", timeout=5)
    operations.deploy(target, sha("v4-breaking"), window=True)
    assert serving() == sha("v4-breaking")
    assert get("/")[0] == 200, "the window is closed again"
    record = last_record(fresh_host)
    assert record["outcome"] == "ok" and 0 < record["window_s"] < record["duration_s"]
    assert "kept across the window" in requests.get(f"{PUBLIC}/items", timeout=5).json()


def test_failed_readiness_after_a_breaking_migration_keeps_maintenance_on(fresh_host):
    target = target_of(fresh_host, health_timeout=8.0)
    operations.deploy(target, sha("v3"))
    with pytest.raises(StepFailed) as failure:
        operations.deploy(target, sha("v4-broken"), window=True)
    message = str(failure.value)
    assert "migration had already run" in message
    assert get("/")[0] == 503, "v3 cannot read schema 3: visitors keep the maintenance page"
    assert get("/readyz")[0] == 503, "and v3 says why: it is not ready on the new schema"
    assert Path(fresh_host.deploy_path, "state", "maintenance").exists()
    assert last_record(fresh_host)["outcome"] == "failed"


def test_failed_readiness_with_a_compatible_schema_lifts_the_window(fresh_host):
    target = target_of(fresh_host, health_timeout=8.0)
    operations.deploy(target, sha("v3"))
    with pytest.raises(StepFailed, match="not ready"):
        operations.deploy(target, sha("never-ready"), window=True)
    assert serving() == sha("v3"), "the old version was started again and serves"
    assert not Path(fresh_host.deploy_path, "state", "maintenance").exists()


def test_deploy_and_rollback_work_while_maintenance_is_on_and_leave_it_on(fresh_host):
    """The operator's window: fix forward or roll back behind the maintenance page."""
    target = target_of(fresh_host)
    operations.deploy(target, sha("v2"))
    operations.set_maintenance(target, True)
    operations.deploy(target, sha("v3"))
    assert get("/version")[1]["X-App-Version"] == sha("v3") and get("/")[0] == 503
    operations.rollback(target)
    assert get("/version")[1]["X-App-Version"] == sha("v2") and get("/")[0] == 503
    operations.deploy(target, sha("v3"), window=True)
    assert get("/")[0] == 503, "a window the operator opened stays open after a --maintenance deploy"
    operations.set_maintenance(target, False)
    assert serving() == sha("v3")
