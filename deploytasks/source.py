"""The code of a SHA, read from the local git repository (the host needs no access to it).

Also the hashes that decide what `--fast` may reuse: the requirements file's content, and the
git tree ids of the build inputs (git already hashes content; unchanged inputs, same id).
"""
from __future__ import annotations

import hashlib
import shlex
import subprocess
from dataclasses import dataclass, field

from . import shas
from .config import Config
from .errors import ConfigError


@dataclass(frozen=True)
class Source:
    sha: str  # full SHA
    archive: bytes = field(repr=False)  # tar of SOURCE_PATH at that SHA
    requirements_hash: str | None  # None: no requirements file
    build_hash: str | None  # None: no build step


class GitFailed(ConfigError):
    """git ran and said no (unknown revision, no such path): not the same as git missing."""


def _git(config: Config, *args: str, stdin: bytes | None = None) -> bytes:
    repo = config.processes.source_repo
    try:
        return subprocess.run(["git", "-C", str(repo), *args], input=stdin, capture_output=True, check=True,
                              timeout=120).stdout
    except FileNotFoundError:
        raise ConfigError("git is not installed on this machine (process releases are read with git archive)") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"git {args[0]} in {repo} did not finish within 120s") from None
    except subprocess.CalledProcessError as exc:
        raise GitFailed(f"git {args[0]} in {repo}: {exc.stderr.decode(errors='replace').strip()[:200]}") from None


def _tree_path(config: Config, sha: str, path: str = "") -> str:
    inner = "/".join(p for p in (config.processes.source_path, path) if p)
    return f"{sha}:{inner}"


def resolve(config: Config, sha: str) -> str:
    """The full SHA of the commit `sha` (7-40 hex) names. When git's own reading fails or gives
    another commit (a branch or tag named like the SHA wins there), the commits starting with it
    decide: one is the answer, several ask for more characters."""
    try:
        full = _git(config, "rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}").decode().strip()
    except GitFailed:
        full = ""
    if full and full.startswith(sha):
        return full
    commits = _commits_starting(config, sha)
    if len(commits) > 1:
        raise ConfigError(f"--sha {sha} is ambiguous: {len(commits)} commits of {config.processes.source_repo} start "
                          f"with it ({shas.listed(commits)}); give more characters of the SHA")
    if not commits:
        raise ConfigError(f"--sha {sha} is not a commit of {config.processes.source_repo}; nothing was changed")
    return commits[0]


def _commits_starting(config: Config, prefix: str) -> list[str]:
    """The commits whose SHA starts with `prefix` (trees and blobs left out), as git finds them."""
    names = _git(config, "rev-parse", f"--disambiguate={prefix}")
    if not names.strip():
        return []
    kinds = _git(config, "cat-file", "--batch-check=%(objecttype) %(objectname)", stdin=names).decode()
    return shas.starting(prefix, (name for kind, name in (line.split() for line in kinds.splitlines())
                                  if kind == "commit"))


def _object_id(config: Config, sha: str, path: str) -> str | None:
    try:
        return _git(config, "rev-parse", "--verify", "--quiet", _tree_path(config, sha, path)).decode().strip()
    except GitFailed:
        return None


def read(config: Config, sha: str) -> Source:
    full = resolve(config, sha)
    processes = config.processes
    archive = _git(config, "archive", "--format=tar", _tree_path(config, full))
    requirements = _object_id(config, full, processes.requirements)
    build = None
    if processes.build_command:
        inputs = processes.build_inputs or ("",)
        ids = [f"{path}={_object_id(config, full, path)}" for path in inputs]
        build = hashlib.sha256(("\n".join(ids) + "\n" + shlex.join(processes.build_command)).encode()).hexdigest()[:16]
    return Source(full, archive, requirements[:16] if requirements else None, build)
