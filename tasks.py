"""This repository's tasks: the product's collection plus the dev harness (test, demo, bench,
testbed.*). A user's own tasks.py is just `from deploytasks.tasks import ns`.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from invoke import Collection, Exit, task

from deploytasks.tasks import collection, friendly

ROOT = Path(__file__).resolve().parent


@task(help={"unit": "only the unit tests (no testbed needed)", "k": "pytest -k expression"})
def test(c, unit=False, k=None):
    """Run the test suite (integration tests start the local testbed)."""
    args = [sys.executable, "-m", "pytest", "-ra"]
    args += ["tests/unit"] if unit else []
    args += ["-k", k] if k else []
    with c.cd(str(ROOT)):
        result = c.run(shlex.join(args), pty=False, warn=True)
    if not result.ok:
        raise Exit(code=result.exited)


@task
@friendly
def demo(c):
    """Start the testbed and deploy the example app to it under load."""
    from harness import demo as demo_module

    demo_module.run(ROOT)


@task(help={"out": "write the results as JSON to this file",
            "hosts": "also the fleet scenarios (names with 'hosts'): a rollout to this many hosts of the fleet testbed (2-4)",
            "only": "only the scenarios whose name matches this regular expression"})
@friendly
def bench(c, out=None, hosts=1, only=None):
    """Measure failed requests and gaps under load during deploys and rollbacks."""
    from harness import bench as bench_module

    bench_module.run(ROOT, out, hosts=int(hosts), only=only)


@task(help={"out": "write the results as JSON to this file"})
@friendly
def relays(c, out=None):
    """Measure the candidates for relaying a colour's socket to a TCP app (nginx, socat, none)."""
    from harness import relays as relays_module

    relays_module.run(ROOT, out)


@task(help={"out": "write the table as JSON to this file",
            "subset": "only the README's subset: each fault once in each flow, and the host faults"})
@friendly
def faults(c, out=None, subset=False):
    """Hit every step of four flows with SIGKILL, a cut SSH connection and Ctrl-C, under load.

    Host faults too (registry, full disk, dockerd restart, failing undo); prints the table and
    fails if any case failed."""
    from harness import faults as faults_module

    if not faults_module.run(ROOT, out, full=not subset).passed:
        raise Exit("some fault cases failed (see the table)", code=1)


@task(name="up", help={"hosts": "how many servers, 1 to 4 (default 1); more than 1 adds a fleet of "
                                 "hosts 10.77.0.11... in namespaces, deployed by envs/fleet.env"})
@friendly
def testbed_up(c, hosts=1):
    """Install and start the local test server (dockerd, registry, sshd, nginx, images)."""
    from harness import fleet, testbed

    hosts = int(hosts)
    if not 1 <= hosts <= fleet.MAX_HOSTS:
        raise Exit(f"error: --hosts takes 1 to {fleet.MAX_HOSTS}, not {hosts}", code=1)
    if hosts == 1:
        testbed.up()
    else:
        fleet.up(hosts)


@task(name="down")
@friendly
def testbed_down(c):
    """Stop exactly what testbed.up started (the fleet too, if there is one)."""
    from harness import fleet, testbed

    fleet.down()
    testbed.down()


@task(name="status")
@friendly
def testbed_status(c):
    """Show each part of the local test server."""
    from harness import fleet, testbed

    parts = testbed.status() + fleet.status()
    for part, ok, detail in parts:
        print(f"{'ok  ' if ok else 'DOWN'} {part:12} {detail}")
    if not all(ok for _, ok, _ in parts):
        raise Exit(code=1)


ns = collection()
for dev_task in (test, demo, bench, faults, relays):
    ns.add_task(dev_task)
ns.add_collection(Collection("testbed", testbed_up, testbed_down, testbed_status))
