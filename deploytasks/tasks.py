"""The tasks users type: `inv deploy`, `fab -H HOST deploy`, rollback, status, maintenance.

A user's tasks.py is `from deploytasks.tasks import ns`; each task parses its options, loads the
environment's configuration from the user's repository and hands over to deploytasks.operations.
No task talks to a host itself.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from invoke import Collection, Exit, task

from . import config as configuration
from . import operations
from .errors import DeployError


def friendly(function):
    """Expected failures end as one clear message and exit code 1, never a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except DeployError as error:
            raise Exit(f"error: {error}", code=1) from None

    return wrapper


def project_root(c) -> Path:
    """The user's repository: where invoke/fabric found tasks.py (or fabfile.py), else the
    current directory. Env files, compose files and nginx templates are read relative to it."""
    prefix = getattr(c.config, "_project_prefix", None) if c is not None else None
    return Path(prefix).resolve() if prefix else Path(os.getcwd()).resolve()


def _target(c, env: str | None, accept_new_host_key: bool = False) -> operations.Target:
    """`fab -H HOST`: that host, in the environment listing it. `inv`: every host of --env/DEPLOY_ENV."""
    root = project_root(c)
    host = getattr(c, "host", None)
    config = configuration.load(root, configuration.select_env(root, env, host))
    if host and host not in config.hosts:
        raise configuration.ConfigError(f"host {host!r} is not in HOSTS of environment {config.env!r}")
    return operations.Target(config, (host,) if host else config.hosts, accept_new_host_key)


COMMON_HELP = {
    "env": "environment: envs/ENV.env (default: $DEPLOY_ENV, or the one whose HOSTS has the -H host)",
    "dry-run": "print every command and file of the plan; change nothing",
    "force-unlock": "break the deploy lock first, whoever holds it (a dead holder's is taken over without it); "
                    "refused while the migration it registered still runs, unless --force",
    "force": "with --force-unlock: break the lock even while its migration still runs",
    "lock-wait": "seconds to wait for a deploy lock held by a live deploy (or a running migration); default 0",
    "accept-new-host-key": "trust and save the key an unknown host presents (check it first!)",
}


@task(help={"sha": "git SHA whose images to deploy (7-40 hex)", "no-migrate": "skip the migration step",
            "maintenance": "switch inside a short maintenance window (migrations the old version cannot run beside)",
            "fast": "process releases: reuse dependencies and build outputs whose inputs did not change",
            **COMMON_HELP})
@friendly
def deploy(c, sha, env=None, dry_run=False, no_migrate=False, maintenance=False, fast=False, force_unlock=False,
           force=False, lock_wait=None, accept_new_host_key=False):
    """Deploy a SHA blue/green with zero downtime (container images or process release)."""
    operations.deploy(_target(c, env, accept_new_host_key), sha, dry_run=dry_run, migrate=not no_migrate,
                      force_unlock=force_unlock, force=force, lock_wait=lock_wait, window=maintenance, fast=fast)


@task(help={"to": "redeploy this earlier SHA from history instead of the previous colour",
            "migrate": "with --to: run the migration step too", **COMMON_HELP})
@friendly
def rollback(c, to=None, env=None, migrate=False, dry_run=False, force_unlock=False, force=False, lock_wait=None,
             accept_new_host_key=False):
    """Go back to the previous version (instant), or --to an earlier SHA."""
    operations.rollback(_target(c, env, accept_new_host_key), to=to, migrate=migrate, dry_run=dry_run,
                        force_unlock=force_unlock, force=force, lock_wait=lock_wait)


@task(help={"env": COMMON_HELP["env"], "accept-new-host-key": COMMON_HELP["accept-new-host-key"]})
@friendly
def status(c, env=None, accept_new_host_key=False):
    """Show what runs on each host: colour, SHA, health, lock, recent deploys."""
    operations.status(_target(c, env, accept_new_host_key))


MAINTENANCE_HELP = {k: COMMON_HELP[k] for k in ("env", "dry-run", "force-unlock", "force", "lock-wait",
                                                 "accept-new-host-key")}


@task(help=MAINTENANCE_HELP)
@friendly
def maintenance_on(c, env=None, dry_run=False, force_unlock=False, force=False, lock_wait=None,
                   accept_new_host_key=False):
    """Serve the maintenance page (503 + Retry-After) to everyone but the allowlist."""
    operations.set_maintenance(_target(c, env, accept_new_host_key), True, dry_run=dry_run, force_unlock=force_unlock,
                               force=force, lock_wait=lock_wait)


@task(help=MAINTENANCE_HELP)
@friendly
def maintenance_off(c, env=None, dry_run=False, force_unlock=False, force=False, lock_wait=None,
                    accept_new_host_key=False):
    """Stop serving the maintenance page."""
    operations.set_maintenance(_target(c, env, accept_new_host_key), False, dry_run=dry_run, force_unlock=force_unlock,
                               force=force, lock_wait=lock_wait)


TASKS = (deploy, rollback, status, maintenance_on, maintenance_off)


def collection() -> Collection:
    """A fresh collection of the product's tasks, for a project to extend with its own."""
    return Collection(*TASKS)


ns = collection()
