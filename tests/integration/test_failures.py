"""When the failure path itself fails: an undo that cannot put traffic back must leave the new
colour serving (not a 502 for everyone), `status` must say so and exit non-zero, and the next
`rollback` must repair the host. On the real testbed."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest
import requests

from deploytasks import deploys, lock, operations, phases, releases
from deploytasks.backends.containers import Containers
from deploytasks.errors import DeployError, StepFailed
from deploytasks.layout import Layout
from deploytasks.plan import Cmd, Poll, Step

from .support import PUBLIC, serving, sha, target_of


def running(project: str) -> bool:
    out = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}"],
                         capture_output=True, text=True, check=True).stdout
    return bool(out.strip())


def test_a_switch_that_cannot_be_undone_keeps_the_new_colour_serving(fresh_host, capsys):
    config = fresh_host
    target = target_of(config)
    layout = Layout.of(config)
    operations.deploy(target, sha("v1"))
    new = sha("v2")

    def plan_for(state):
        """The real v2 plan, with two faults after the switch: the run directory becomes immutable
        (so traffic cannot be put back) and the check through nginx fails."""
        plan = deploys.deploy(config, state, Containers(config, new), new, releases.name(new))
        steps = []
        for step in plan.steps:
            if step.phase == phases.VERIFY:
                step = Step(phases.VERIFY, (Cmd(("chattr", "+i", layout.run)), Poll(("false",), 1, 0.5)),
                            label="check through nginx (made to fail)")
            steps.append(step)
        return dataclasses.replace(plan, steps=tuple(steps))

    try:
        with pytest.raises(StepFailed) as failed:
            operations._each_host(target, "deploy", new, plan_for, dry_run=False, policy=lock.Policy(), echo=print)
        out = capsys.readouterr().out
        assert not failed.value.undone and "traffic could not be put back" in str(failed.value)
        assert "switch to green could not be undone: the undos before it are skipped" in out
        # what serves was left alone: v2 answers, nothing fails
        assert serving() == new and requests.get(f"{PUBLIC}/items", timeout=5).status_code == 200
        assert running(f"{config.app_name}-green") and running(f"{config.app_name}-blue")
        assert any(r.endswith(new) for r in os.listdir(layout.releases)), "its release is kept"
        last = json.loads(Path(layout.history).read_text().splitlines()[-1])
        assert last["outcome"] == "failed, not undone" and last["failed_after"][-1] == phases.SWITCH

        with pytest.raises(DeployError) as broken:
            operations.status(target)
        assert "HALF-DONE: deploy" in str(broken.value) and "stopped at step 'undo failed'" in str(broken.value)
    finally:
        subprocess.run(["chattr", "-i", layout.run], check=True)

    operations.rollback(target)  # the repair: back to v1, which still runs beside it
    assert serving() == sha("v1")
    capsys.readouterr()
    operations.status(target)  # whole again: exits 0
    assert "HALF-DONE" not in capsys.readouterr().out


def test_status_fails_when_the_live_colour_stops_answering(fresh_host, capsys):
    config = fresh_host
    target = target_of(config)
    operations.deploy(target, sha("v1"))
    operations.status(target)
    subprocess.run(["docker", "stop", "-t", "2", f"{config.app_name}-blue-web-1"], check=True, capture_output=True)
    assert requests.get(f"{PUBLIC}/version", timeout=5).status_code == 502
    with pytest.raises(DeployError) as broken:
        operations.status(target)
    assert "the live colour (blue) does not answer /healthz" in str(broken.value)
    assert "!! the live colour does not answer /healthz: visitors get 502" in capsys.readouterr().out
