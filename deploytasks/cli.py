"""The `deploytasks` command: `deploytasks init` sets up a repository; `--version`.

The tasks themselves run through `inv` / `fab` from the user's repository; this command only
prepares it, so `pip install deploytasks && deploytasks init` is the whole setup.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__, scaffold
from .config import TEMPLATES
from .errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deploytasks",
        description="Zero-downtime blue/green deploys of Compose and gunicorn apps to your own servers over SSH. "
                    "Run `deploytasks init` at the root of your repository, then `inv --list`.")
    parser.add_argument("--version", action="version", version=f"deploytasks {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    init = commands.add_parser(
        "init", help="set up a repository: tasks.py, fabfile.py, env examples, .gitignore",
        description="Write tasks.py, fabfile.py, envs/{staging,production}.env.example (filled from your compose "
                    "file), empty envs/*.app.env for secrets, and the .gitignore lines that keep them out of git. "
                    "Never overwrites a file that exists.")
    init.add_argument("--dir", type=Path, default=Path("."), metavar="PATH",
                      help="the root of your repository (default: the current directory)")
    init.add_argument("--compose", type=Path, action="append", default=[], metavar="FILE",
                      help="a compose file to deploy (repeatable; default: the first of compose.yaml, compose.yml, "
                           "docker-compose.yaml, docker-compose.yml in the root, compose/ or docker/)")
    init.add_argument("--dry-run", action="store_true", help="print what would be written; write nothing")
    args = parser.parse_args(argv)
    return run_init(args.dir, args.compose, args.dry_run)


def run_init(directory: Path, compose: list[Path], dry_run: bool = False) -> int:
    root = directory.resolve()
    if not root.is_dir():
        return _error(f"{directory} is not a directory")
    missing = [str(p) for p in compose if not p.is_file()]
    if missing:
        return _error(f"compose file not found: {', '.join(missing)}")
    try:
        detected = scaffold.detect(root, [p.resolve() for p in compose])
    except ConfigError as error:
        return _error(str(error))
    print(f"deploytasks init: {root}{' (dry run: nothing is written)' if dry_run else ''}")
    if detected.repository:
        print(f"note: {detected.repository}; init belongs at the root of your repository (carrying on)")
    for line in summary(detected):
        print(line)
    try:
        added = scaffold.append_gitignore(root, dry_run)
        written, skipped = scaffold.write(root, scaffold.files(detected), dry_run)
    except OSError as error:
        return _error(f"cannot write in {root}: {error}")
    verb = ("would write", "would skip", "would update") if dry_run else ("wrote", "skipped", "updated")
    print(f"{verb[2]} .gitignore (+{len(added)} lines)" if added else f"{verb[1]} .gitignore (has every line)")
    for name in written:
        print(f"{verb[0]} {name}")
    for name in skipped:
        hint = ": it needs `from deploytasks.tasks import ns`" if name == "tasks.py" and not _ours(root / name) else ""
        print(f"{verb[1]} {name} (exists{hint})")
    own = [name for name in TEMPLATES.values() if (root / "nginx" / name).is_file()]
    print("nginx: " + (f"your nginx/{' and nginx/'.join(own)} replace(s) the packaged default" if own else
                       "the packaged site template and maintenance page are used; add nginx/site.conf.template or "
                       "nginx/maintenance.html to your repository to replace them"))
    print("next steps:")
    for line in next_steps(detected):
        print(f"  {line}")
    return 0


def summary(d: scaffold.Detected) -> list[str]:
    """What was detected, one line per list, with the reason for each service's place."""
    if not d.compose_files:
        where = ", ".join(f"{folder}/" for folder in scaffold.COMPOSE_DIRS)
        return [f"compose: none found in {where}: examples for MODE=processes (gunicorn on the host, "
                f"APP_MODULE={d.app_module or 'app:app (placeholder)'})"]
    lines = [f"compose: {', '.join(d.compose_files)}"
             + (f" (also found, not used: {', '.join(d.unused)})" if d.unused else "")]
    for role in (scaffold.STATELESS, scaffold.STATEFUL, scaffold.LEFT_OUT):
        services = d.role(role)
        if services:
            described = ", ".join(f"{s.name} ({_web(s) if s.name == d.web else ''}{s.why})" for s in services)
            lines.append(f"  {role + ':':10} {described}")
    lines += [f"  check: {problem}" for s in d.role(scaffold.STATELESS) for problem in s.problems]
    if d.role(scaffold.LEFT_OUT):
        lines.append("  left out: in EXCLUDE_SERVICES, never started (a deployed service may not depend on one)")
    return lines


def _web(service: scaffold.Service) -> str:
    return f"WEB_SERVICE{': publishes a port' if service.ports else ''}; "


def next_steps(d: scaffold.Detected) -> list[str]:
    return [
        f"1. cp envs/staging.env.example envs/staging.env   and edit {', '.join(scaffold.placeholders(d))}",
        "2. put the app's secrets in envs/staging.app.env (git ignores it)",
        "3. inv deploy --env staging --sha <sha>   (or: fab -H <host> deploy --sha=<sha>)",
    ]


def _ours(path: Path) -> bool:
    try:
        return "deploytasks" in path.read_text()
    except (OSError, UnicodeDecodeError):
        return False


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
