"""The tasks users type: `inv deploy`, `fab -H HOST deploy`, rollback, status, maintenance, prune.

A user's tasks.py is `from deploytasks.tasks import ns`; each task parses its options, loads the
environment's configuration from the user's repository and hands over to deploytasks.operations.
No task talks to a host itself.
"""
from __future__ import annotations

import functools
import os
import sys
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


def _target(c, env: str | None, accept_new_host_key: bool = False, task_name: str = "") -> operations.Target | None:
    """`fab -H HOST`: that host, in the environment listing it; `fab -H a,b,c`: those hosts, as one
    rollout. `inv`: every host of --env/DEPLOY_ENV. None: this host's part was done by the rollout
    of an earlier call (fab calls a task once per -H host)."""
    root = project_root(c)
    host = getattr(c, "host", None)
    config = configuration.load(root, configuration.select_env(root, env, host))
    hosts = fab_hosts(sys.argv, host) if host else config.hosts
    stray = [h for h in hosts if h not in config.hosts]
    if stray:
        raise configuration.ConfigError(f"host {', '.join(map(repr, stray))} {'is' if len(stray) == 1 else 'are'} "
                                        f"not in HOSTS of environment {config.env!r}")
    if host and (task_name, host) in _COVERED:
        _COVERED.discard((task_name, host))
        return None
    _COVERED.update((task_name, h) for h in hosts if h != host)
    return operations.Target(config, hosts, accept_new_host_key)


_COVERED: set[tuple[str, str]] = set()  # (task, host) done by an earlier call's rollout


def fab_hosts(argv: list[str], host: str) -> tuple[str, ...]:
    """The hosts of `fab -H a,b,c` (user@ and :port dropped, as Fabric's Connection drops them),
    beginning with `host`'s call; just `host` when it is not among them."""
    value = None
    for i, arg in enumerate(argv):
        if arg in ("-H", "--hosts") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--hosts="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-H") and len(arg) > 2:
            value = arg[2:]
    listed = tuple(dict.fromkeys(_hostname(h) for h in (value or "").split(",") if h.strip()))
    return listed if host in listed else (host,)


def _hostname(text: str) -> str:
    name = text.strip().rsplit("@", 1)[-1]
    if name.startswith("["):
        return name[1:].split("]", 1)[0]
    return name.rsplit(":", 1)[0] if name.count(":") == 1 else name


COMMON_HELP = {
    "env": "environment: envs/ENV.env (default: $DEPLOY_ENV, or the one whose HOSTS has the -H host)",
    "dry-run": "print every command and file of the plan; change nothing",
    "force-unlock": "break the deploy lock first, whoever holds it (a dead holder's is taken over without it); "
                    "refused while the migration it registered still runs, unless --force",
    "force": "with --force-unlock: break the lock even while its migration still runs",
    "lock-wait": "seconds to wait for a deploy lock held by a live deploy (or a running migration); default 0",
    "accept-new-host-key": "trust and save the key an unknown host presents (check it first!)",
}

SWITCH_HELP = {
    "no-probe": "do not run this deploy's probe through nginx (PROBE_RATE=0 turns it off for good)",
}

ROLLOUT_HELP = {
    "batch": "several hosts: switch N hosts at a time, or N% of them (default 1: one host, then the next)",
    "batch-wait": "several hosts: seconds to wait between batches (default 0)",
    "no-rollback": "several hosts: on a failure, keep the hosts already switched on the new version "
                   "(default: switch them back)",
}


@task(help={"sha": "git SHA whose images to deploy (7-40 hex)", "no-migrate": "skip the migration step",
            "maintenance": "switch inside a short maintenance window (migrations the old version cannot run beside)",
            "fast": "process releases: reuse dependencies and build outputs whose inputs did not change",
            **COMMON_HELP, **ROLLOUT_HELP, **SWITCH_HELP})
@friendly
def deploy(c, sha, env=None, dry_run=False, no_migrate=False, maintenance=False, fast=False, force_unlock=False,
           force=False, lock_wait=None, accept_new_host_key=False, batch=None, batch_wait=None, no_rollback=False,
           no_probe=False):
    """Deploy a SHA blue/green with zero downtime (container images or process release)."""
    over = operations.Rollout.of(batch, batch_wait, not no_rollback)
    target = _target(c, env, accept_new_host_key, "deploy")
    if target:
        operations.deploy(target, sha, dry_run=dry_run, migrate=not no_migrate,
                          force_unlock=force_unlock, force=force, lock_wait=lock_wait, window=maintenance,
                          fast=fast, over=over, probing=not no_probe)


@task(help={"to": "redeploy this earlier SHA from history instead of the previous colour",
            "migrate": "with --to: run the migration step too", **COMMON_HELP, **ROLLOUT_HELP, **SWITCH_HELP})
@friendly
def rollback(c, to=None, env=None, migrate=False, dry_run=False, force_unlock=False, force=False, lock_wait=None,
             accept_new_host_key=False, batch=None, batch_wait=None, no_rollback=False, no_probe=False):
    """Go back to the previous version (instant) on every host, or --to an earlier SHA."""
    over = operations.Rollout.of(batch, batch_wait, not no_rollback)
    target = _target(c, env, accept_new_host_key, "rollback")
    if target:
        operations.rollback(target, to=to, migrate=migrate, dry_run=dry_run, force_unlock=force_unlock, force=force,
                            lock_wait=lock_wait, over=over, probing=not no_probe)


@task(help={"sha": "the SHA to promote (7-40 hex): it must have served in the source environment",
            "from": "the environment that ran it (default: staging)",
            "to": "the environment to deploy it to (default: production)",
            "force": "skip the check that the source environment served the SHA (recorded in the history)",
            "dry-run": COMMON_HELP["dry-run"], "force-unlock": COMMON_HELP["force-unlock"],
            "lock-wait": COMMON_HELP["lock-wait"], "accept-new-host-key": COMMON_HELP["accept-new-host-key"],
            **ROLLOUT_HELP, **SWITCH_HELP},
)
@friendly
def promote(c, sha, from_="staging", to="production", force=False, dry_run=False, force_unlock=False, lock_wait=None,
            accept_new_host_key=False, batch=None, batch_wait=None, no_rollback=False, no_probe=False):
    """Deploy to production exactly the images (or commit) staging ran for a SHA; never rebuilds."""
    over = operations.Rollout.of(batch, batch_wait, not no_rollback)
    root = project_root(c)
    source = configuration.load(root, from_)
    target = configuration.load(root, to)
    operations.promote(operations.Target(source, source.hosts, accept_new_host_key),
                       operations.Target(target, target.hosts, accept_new_host_key), sha, force=force,
                       dry_run=dry_run, force_unlock=force_unlock, lock_wait=lock_wait, over=over,
                       probing=not no_probe)


@task(help={"env": COMMON_HELP["env"], "accept-new-host-key": COMMON_HELP["accept-new-host-key"]})
@friendly
def status(c, env=None, accept_new_host_key=False):
    """Show what runs on each host: colour, SHA, health, lock, recent deploys."""
    target = _target(c, env, accept_new_host_key, "status")
    if target:
        operations.status(target)


MAINTENANCE_HELP = {k: COMMON_HELP[k] for k in ("env", "dry-run", "force-unlock", "force", "lock-wait",
                                                 "accept-new-host-key")}


@task(help=MAINTENANCE_HELP)
@friendly
def maintenance_on(c, env=None, dry_run=False, force_unlock=False, force=False, lock_wait=None,
                   accept_new_host_key=False):
    """Serve the maintenance page (503 + Retry-After) to everyone but the allowlist."""
    target = _target(c, env, accept_new_host_key, "maintenance-on")
    if target:
        operations.set_maintenance(target, True, dry_run=dry_run, force_unlock=force_unlock, force=force,
                                   lock_wait=lock_wait)


@task(help=MAINTENANCE_HELP)
@friendly
def maintenance_off(c, env=None, dry_run=False, force_unlock=False, force=False, lock_wait=None,
                    accept_new_host_key=False):
    """Stop serving the maintenance page."""
    target = _target(c, env, accept_new_host_key, "maintenance-off")
    if target:
        operations.set_maintenance(target, False, dry_run=dry_run, force_unlock=force_unlock, force=force,
                                   lock_wait=lock_wait)


@task(help={**MAINTENANCE_HELP, "dry-run": "list what would be removed on each host (releases, images, "
                                            "virtualenvs) and why the rest stays; change nothing"})
@friendly
def prune(c, env=None, dry_run=False, force_unlock=False, force=False, lock_wait=None, accept_new_host_key=False):
    """Remove old releases beyond KEEP_RELEASES and what only they used; never the live, previous or a colour's."""
    target = _target(c, env, accept_new_host_key, "prune")
    if target:
        operations.prune(target, dry_run=dry_run, force_unlock=force_unlock, force=force, lock_wait=lock_wait)


TASKS = (deploy, rollback, promote, status, maintenance_on, maintenance_off, prune)


def collection() -> Collection:
    """A fresh collection of the product's tasks, for a project to extend with its own."""
    return Collection(*TASKS)


ns = collection()
