"""deploytasks: the tasks users type. `inv --list` and `fab --list` show the same ones.

Each task parses its options, loads the environment's configuration and hands over to
deploytasks.operations; no task talks to a host itself.
"""
from __future__ import annotations

import functools
import shlex
import sys
from pathlib import Path

from invoke import Collection, Exit, task

from deploytasks import config as configuration
from deploytasks import operations
from deploytasks.errors import DeployError

ROOT = Path(__file__).resolve().parent


def friendly(function):
    """Expected failures end as one clear message and exit code 1, never a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except DeployError as error:
            raise Exit(f"error: {error}", code=1) from None

    return wrapper


def _target(c, env: str | None, accept_new_host_key: bool = False) -> operations.Target:
    """`fab -H HOST`: that host, in the environment listing it. `inv`: every host of --env/DEPLOY_ENV."""
    host = getattr(c, "host", None)
    config = configuration.load(ROOT, configuration.select_env(ROOT, env, host))
    if host and host not in config.hosts:
        raise configuration.ConfigError(f"host {host!r} is not in HOSTS of environment {config.env!r}")
    return operations.Target(config, (host,) if host else config.hosts, accept_new_host_key)


COMMON_HELP = {
    "env": "environment: envs/ENV.env (default: $DEPLOY_ENV, or the one whose HOSTS has the -H host)",
    "dry-run": "print every command and file of the plan; change nothing",
    "force-unlock": "remove a stale deploy lock first (only when its holder is known dead)",
    "accept-new-host-key": "trust and save the key an unknown host presents (check it first!)",
}


@task(help={"sha": "git SHA whose images to deploy (7-40 hex)", "no-migrate": "skip the migration step",
            "maintenance": "switch inside a short maintenance window (migrations the old version cannot run beside)",
            "fast": "process releases: reuse dependencies and build outputs whose inputs did not change",
            **COMMON_HELP})
@friendly
def deploy(c, sha, env=None, dry_run=False, no_migrate=False, maintenance=False, fast=False, force_unlock=False,
           accept_new_host_key=False):
    """Deploy a SHA blue/green with zero downtime (container images or process release)."""
    operations.deploy(_target(c, env, accept_new_host_key), sha, dry_run=dry_run, migrate=not no_migrate,
                      force_unlock=force_unlock, window=maintenance, fast=fast)


@task(help={"to": "redeploy this earlier SHA from history instead of the previous colour",
            "migrate": "with --to: run the migration step too", **COMMON_HELP})
@friendly
def rollback(c, to=None, env=None, migrate=False, dry_run=False, force_unlock=False, accept_new_host_key=False):
    """Go back to the previous version (instant), or --to an earlier SHA."""
    operations.rollback(_target(c, env, accept_new_host_key), to=to, migrate=migrate, dry_run=dry_run,
                        force_unlock=force_unlock)


@task(help={"env": COMMON_HELP["env"], "accept-new-host-key": COMMON_HELP["accept-new-host-key"]})
@friendly
def status(c, env=None, accept_new_host_key=False):
    """Show what runs on each host: colour, SHA, health, lock, recent deploys."""
    operations.status(_target(c, env, accept_new_host_key))


MAINTENANCE_HELP = {k: COMMON_HELP[k] for k in ("env", "dry-run", "force-unlock", "accept-new-host-key")}


@task(help=MAINTENANCE_HELP)
@friendly
def maintenance_on(c, env=None, dry_run=False, force_unlock=False, accept_new_host_key=False):
    """Serve the maintenance page (503 + Retry-After) to everyone but the allowlist."""
    operations.set_maintenance(_target(c, env, accept_new_host_key), True, dry_run=dry_run, force_unlock=force_unlock)


@task(help=MAINTENANCE_HELP)
@friendly
def maintenance_off(c, env=None, dry_run=False, force_unlock=False, accept_new_host_key=False):
    """Stop serving the maintenance page."""
    operations.set_maintenance(_target(c, env, accept_new_host_key), False, dry_run=dry_run, force_unlock=force_unlock)


@task(help={"unit": "only the unit tests (no testbed needed)", "k": "pytest -k expression"})
def test(c, unit=False, k=None):
    """Run the test suite (integration tests start the local testbed)."""
    args = [sys.executable, "-m", "pytest", "-ra"]
    args += ["tests/unit"] if unit else []
    args += ["-k", k] if k else []
    result = c.run(shlex.join(args), pty=False, warn=True)
    if not result.ok:
        raise Exit(code=result.exited)


@task
@friendly
def demo(c):
    """Start the testbed and deploy the example app to it."""
    from deploytasks import demo as demo_module

    demo_module.run(ROOT)


@task(help={"out": "write the results as JSON to this file"})
@friendly
def bench(c, out=None):
    """Measure failed requests and gaps under load during deploys and rollbacks."""
    from deploytasks import bench as bench_module

    bench_module.run(ROOT, out)


@task(name="up")
@friendly
def testbed_up(c):
    """Install and start the local test server (dockerd, registry, sshd, nginx, images)."""
    from deploytasks import testbed

    testbed.up()


@task(name="down")
@friendly
def testbed_down(c):
    """Stop exactly what testbed.up started."""
    from deploytasks import testbed

    testbed.down()


@task(name="status")
@friendly
def testbed_status(c):
    """Show each part of the local test server."""
    from deploytasks import testbed

    parts = testbed.status()
    for part, ok, detail in parts:
        print(f"{'ok  ' if ok else 'DOWN'} {part:12} {detail}")
    if not all(ok for _, ok, _ in parts):
        raise Exit(code=1)


ns = Collection(deploy, rollback, status, maintenance_on, maintenance_off, test, demo, bench)
ns.add_collection(Collection("testbed", testbed_up, testbed_down, testbed_status))
