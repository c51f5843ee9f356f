"""Helpers shared by the integration tests (fixtures live in conftest.py)."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import requests

from deploytasks import config as configuration
from deploytasks import operations, testbed

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = "http://127.0.0.1:8080"


def target_of(config: configuration.Config, **changes) -> operations.Target:
    config = dataclasses.replace(config, **changes) if changes else config
    return operations.Target(config, config.hosts)


def reset_host(config: configuration.Config) -> None:
    """Remove every trace of the app from the test server, as if it were a new machine."""
    for project in (config.app_name, f"{config.app_name}-blue", f"{config.app_name}-green"):
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    subprocess.run(["docker", "volume", "rm", "-f", f"{config.app_name}_dbdata"], capture_output=True)
    subprocess.run(["docker", "network", "rm", f"{config.app_name}_default"], capture_output=True)
    shutil.rmtree(config.deploy_path, ignore_errors=True)
    Path(config.nginx_site_dir, f"{config.app_name}.conf").unlink(missing_ok=True)
    subprocess.run(["nginx", "-s", "reload", "-c", config.nginx_conf], check=True)



def serving() -> str:
    return requests.get(f"{PUBLIC}/version", timeout=5).text.strip()


def sha(name: str) -> str:
    return testbed.example_sha(name)
