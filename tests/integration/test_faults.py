"""The fault table's subset in the test suite (the whole table is `inv faults`): each fault
(SIGKILL, a cut SSH connection, Ctrl-C) in each flow (container deploy, process deploy, rollback,
maintenance-window deploy) at the step it hurts most, and each host fault (registry down or
frozen during the pull, a full disk, dockerd restarted, an undo that fails), each under load
through nginx, run as a user runs them: `inv` in a project of its own. And the orphaned
migration: a connection lost while a long migration runs keeps the lock until it has ended.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from harness import faults, testbed

from .support import ROOT


@pytest.fixture(scope="module")
def home(bed, tmp_path_factory):
    home = faults.project(ROOT, tmp_path_factory.mktemp("faults"))
    yield home
    for env in ("local", "local-process"):
        testbed.reset_app(faults.config_of(home, env))


def check(rows: list[dict]) -> None:
    table = "\n".join(faults.line_of(row) for row in rows)
    for row in rows:
        assert not row["hit"].startswith("not reached"), f"the fault never hit:\n{table}"
    failed = [row for row in rows if not row["ok"]]
    assert not failed, f"{table}\n\nfirst failure:\n" + "\n".join(
        f"{key}: {value}" for key, value in failed[0].items())


@pytest.mark.parametrize("flow", faults.FLOWS, ids=lambda flow: flow.name.replace(" ", "-"))
def test_each_deployer_fault_leaves_a_version_serving_and_the_next_run_succeeds(home, flow):
    rows = faults.run_flow(home, flow, full=False, echo=print)
    check(rows)
    assert {row["fault"] for row in rows} == set(faults.DEPLOYER_FAULTS)
    killed = next(row for row in rows if row["fault"] == faults.KILL)
    assert killed["exit"] == -9 and "died" in killed["history"], "the next run writes the dead one's history line"


@pytest.mark.parametrize("fault", [fault for _, fault, _ in faults.HOST_FAULTS])
def test_a_host_fault_leaves_the_old_version_serving_and_the_next_deploy_succeeds(home, fault):
    rows = faults.run_host_faults(home, print, only=(fault,))
    check(rows)
    row = rows[0]
    assert row["exit"] == 1 and row["left_serving"] == "old", row
    assert row["history"][0] in ("failed", "failed, not undone"), row["history"]


def test_a_connection_lost_under_a_long_migration_keeps_the_lock_until_it_has_ended(home):
    """Never both 'released' and 'running': the migration keeps running on the host, the lock
    names it, the next deploy as typed is refused while it runs, `--lock-wait` takes over once it
    has ended, and history says the connection was lost."""
    env = "slow-migration"
    text = (home / "envs" / "local.env").read_text()
    text = re.sub(r"(?m)^MIGRATE_COMMAND=.*$", "MIGRATE_COMMAND=sh -c 'sleep 8 && python3 /app/app.py migrate'", text)
    (home / "envs" / f"{env}.env").write_text(text)
    config = faults.config_of(home, env)
    testbed.reset_app(config)
    v2, v3 = testbed.example_sha("v2"), testbed.example_sha("v3")
    code, out = faults.run_to_end(home, ["deploy", "--env", env, "--sha", v2])
    assert code == 0, out

    deployer = faults.Deployer(home, ["deploy", "--env", env, "--sha", v3])
    assert deployer.until(lambda line: line.endswith("-> migrate")) is not None, deployer.output
    time.sleep(2)  # the migration's container runs
    assert faults.cut_ssh(deployer.proc.pid, config.ssh_port) >= 1
    assert deployer.finish() == 1
    assert "the connection was lost while the migration ran" in deployer.output
    assert faults.serving(config) == v2

    code, status = faults.run_to_end(home, ["status", "--env", env])
    assert code == 1 and "migration" in status and "still running" in status, status
    code, refused = faults.run_to_end(home, ["deploy", "--env", env, "--sha", v3])
    assert code == 1 and "whose migration is still running" in refused, refused

    code, out = faults.run_to_end(home, ["deploy", "--env", env, "--sha", v3, "--lock-wait", "60"])
    assert code == 0 and "took over the deploy lock of a dead deploy" in out, out
    assert "its migration had ended (exit 0)" in out, out
    assert faults.serving(config) == v3
    outcomes = [record["outcome"] for record in faults.history_lines(config)]
    assert outcomes[-2:] == ["lost", "ok"], outcomes
    testbed.reset_app(config)
