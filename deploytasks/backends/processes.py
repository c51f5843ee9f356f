"""Process releases: an app server on the host (gunicorn, or START_COMMAND), one per colour, no containers.

Staging a release: backup -> upload code -> shared links -> dependencies -> build (the rest of
the deploy is the shared skeleton in deploys.py). Each colour's server listens on the colour's
socket, or on its loopback port (LISTEN=port) behind nginx's relay to that socket.

The code of the SHA goes into releases/<UTC-ts>-<sha>/; its virtualenv lives in
shared/venvs/<requirements-hash>-<UTC-ts>/ and is linked in, so `--fast` can reuse one built
for the same requirements (a venv copied to another path breaks its scripts; a link keeps it). Each colour's gunicorn runs
from its own release directory, never through `current`, and listens on the colour's socket:
the switch is the same symlink swap as for containers, and the old gunicorn drains gracefully.
"""
from __future__ import annotations

import shlex

from .. import phases, traffic
from ..config import Config
from ..facts import HostState
from ..layout import APP_ENV, RELEASE_META, RELEASE_VENV, Layout
from ..plan import Cmd, Put, Step, cmd, sh
from ..releases import Freed, timestamp
from ..source import Source
from ..tracked import tracked

_DEPENDENCIES = r"""
venvs=$1; requirements=$2; python=$3; link=$4; reuse=$5; stamp=$6
# a virtualenv is only as good as the interpreter it was made with: the key names both
version=$("$python" -c 'import sys; print("py%d.%d.%d" % sys.version_info[:3])') || exit 1
hash="$7-$version"
if [ "$reuse" = yes ]; then
    for venv in $(ls -1d "$venvs/$hash"-*/ 2>/dev/null | sort -r); do
        venv=${venv%/}
        if [ -f "$venv/.complete" ]; then
            ln -sfn "$venv" "$link"
            echo "dependencies: reused $(basename "$venv") (requirements unchanged; saved ~$(cat "$venv/.complete")s)"
            exit 0
        fi
    done
fi
venv="$venvs/$hash-$stamp"
start=$(date +%s%N)
rm -rf "$venv"
"$python" -m venv "$venv" || exit 1
if [ -f "$requirements" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" || exit 1
fi
seconds=$(awk -v ns=$(( $(date +%s%N) - start )) 'BEGIN { printf "%.1f", ns / 1e9 }')
echo "$seconds" > "$venv/.complete"
ln -sfn "$venv" "$link"
echo "dependencies: installed into $(basename "$venv") in ${seconds}s"
"""

_BUILD = r"""
release=$1; previous=$2; ours=$3; output=$4; hash=$5; reuse=$6; shift 6
meta="$release/$ours"
if [ "$reuse" = yes ] && [ -n "$previous" ] && [ -e "$previous/$output" ] \
   && [ "$(cat "$previous/$ours/build-hash" 2>/dev/null)" = "$hash" ]; then
    rm -rf "$release/$output"
    cp -a "$previous/$output" "$release/$output" || exit 1
    cp "$previous/$ours/build-seconds" "$meta/build-seconds" || exit 1
    echo "build: reused $output from $(basename "$previous") (inputs unchanged; saved ~$(cat "$meta/build-seconds")s)"
else
    start=$(date +%s%N)
    "$meta/run" "$@" || exit 1
    awk -v ns=$(( $(date +%s%N) - start )) 'BEGIN { printf "%.1f\n", ns / 1e9 }' > "$meta/build-seconds"
    echo "build: ran in $(cat "$meta/build-seconds")s"
fi
echo "$hash" > "$meta/build-hash"
"""

_STOP = r"""
pidfile=$1; timeout=$2; releases=$3
pid=$(cat "$pidfile" 2>/dev/null) || exit 0
# a pid file can outlive its process (a reboot): signal only a server running in one of our releases
case "$(readlink "/proc/$pid/cwd" 2>/dev/null)" in
    "$releases"/*) ;;
    *) rm -f "$pidfile"; exit 0 ;;
esac
kill -TERM "$pid"
waited=0
while kill -0 "$pid" 2>/dev/null; do
    if [ "$waited" -ge $((timeout * 10)) ]; then echo "app server $pid still running after ${timeout}s: SIGKILL"; kill -KILL "$pid"; fi
    sleep 0.1; waited=$((waited + 1))
done
rm -f "$pidfile"
"""

_BACKUP = r"""
root=$1; backups=$2; name=$3; site=$4; keep=$5; shift 5
# then: the members to keep (relative to root), "--", the members to leave out
umask 077
dir="$backups/$name"
mkdir -p "$dir" && cd "$root" || exit 1
members=""
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    if [ -e "$1" ] || [ -L "$1" ]; then members="$members $1"; fi
    shift
done
shift
excludes=""
for skip in "$@"; do excludes="$excludes --exclude=$skip"; done
if [ -n "$members" ]; then tar -cf "$dir/deploy.tar" $excludes $members || exit 1; fi
if [ -f "$site" ]; then cp -p "$site" "$dir/nginx-site.conf" || exit 1; fi
ls -1d "$backups"/*/ | sort | head -n -"$keep" | xargs -r rm -rf
echo "backup: $dir"
"""

# each listed virtualenv, unless a release links to it by now (a deploy with --fast may have
# reused one only doomed releases used)
_REMOVE_VENVS = r"""
releases=$1; name=$2; shift 2
for venv do
    used=no
    for link in "$releases"/*/"$name"; do [ "$(readlink "$link")" = "$venv" ] && used=yes; done
    if [ "$used" = no ]; then rm -rf "$venv" && echo "removed virtualenv ${venv##*/}"
    else echo "kept virtualenv ${venv##*/}: a release links to it"; fi
done
"""


def app_env(values: dict[str, str]) -> str:
    """The app's variables for `set -a; . app.env`: every value shell-quoted."""
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())


def env_wrapper(config: Config, release_dir: str, sha: str) -> str:
    """`.deploytasks/run CMD...`: CMD in the release, with the app's variables and its virtualenv."""
    return "\n".join([
        "#!/bin/sh",
        f"# Rendered by deploytasks for {config.app_name} {sha}: runs a command in this release.",
        f"cd {shlex.quote(release_dir)} || exit 1",
        f"set -a; . ./{APP_ENV}; set +a",
        f"export DEPLOY_SHA={sha} DEPLOY_ENV={shlex.quote(config.env)}",
        f'export PATH={shlex.quote(f"{release_dir}/{RELEASE_VENV}/bin")}:"$PATH"',
        'exec "$@"',
        "",
    ])


# START_COMMAND in the background without systemd: its own session, its pid (exec keeps it) in the pid file
_DAEMON = r"""
script=$1; pidfile=$2; log=$3
setsid sh "$script" </dev/null >>"$log" 2>&1 &
echo $! > "$pidfile"
"""


class AppServer:
    """One colour's app server (gunicorn or START_COMMAND), run from one release, supervised by
    pid file or systemd."""

    def __init__(self, config: Config, state: HostState, colour: str, release: str):
        self.config, self.colour, self.release = config, colour, release
        layout = Layout.of(config)
        self.layout = layout
        self.dir = layout.release(release)
        self.pidfile = layout.pidfile(colour)
        self.script = layout.start_script(colour)
        supervisor = config.processes.supervisor
        self.systemd = supervisor == "systemd" or (supervisor == "auto" and state.systemd)

    @property
    def unit(self) -> str:
        return f"{self.config.app_name}@{self.colour}.service"

    def start_script(self) -> str:
        """What starting this colour runs: gunicorn of this release on this colour's socket, or
        START_COMMAND with $PORT and $APP_SOCKET saying where to listen."""
        config, processes, layout = self.config, self.config.processes, self.layout
        run = f"{shlex.quote(self.dir)}/{RELEASE_META}/run"
        if processes.start_command:
            server = f"{run} {shlex.join(processes.start_command)}"
        else:
            argv = ["--pid", self.pidfile, "--bind", f"unix:{layout.app_socket(self.colour)}", "--chdir", self.dir,
                    "--workers", str(processes.workers), "--graceful-timeout", str(int(config.drain_timeout)),
                    "--error-logfile", layout.log(self.colour), "--capture-output"]
            server = f"{run} gunicorn {shlex.join(argv)} \"$@\" {shlex.quote(processes.app_module)}"
        return "\n".join([
            "#!/bin/sh",
            f"# Rendered by deploytasks: {config.app_name} {self.release} as the {self.colour} colour.",
            f"export DEPLOY_COLOUR={self.colour} APP_SOCKET={shlex.quote(layout.app_socket(self.colour))}"
            f" PORT={config.port(self.colour)} HOST=127.0.0.1",
            f"exec {server}",
            "",
        ])

    def start(self, *, fresh: bool = True) -> Step:
        """Write this colour's start script and (re)start its gunicorn from its release; the
        same for a new release and for a rollback (the release and its venv are all there)."""
        actions: list = [Put(self.script, self.start_script().encode(), mode=0o755)]
        if self.systemd:  # enabled while it is a colour that may serve; drain disables it
            actions += [Put(f"/etc/systemd/system/{self.config.app_name}@.service", unit_file(self.config).encode()),
                        cmd("systemctl", "daemon-reload"), cmd("systemctl", "enable", self.unit)]
        return Step(phases.START, (*actions, *self.restart()), undo=(self.stop(),), diagnose=self.diagnostics(),
                    label=f"start {self.colour}")

    def restart(self) -> tuple[Cmd, ...]:
        fresh_socket = cmd("rm", "-f", self.layout.app_socket(self.colour))  # never nginx's relay socket
        if self.systemd:  # a restart stops the colour first, if it runs
            return fresh_socket, self._stopping(cmd("systemctl", "restart", self.unit))
        if self.config.processes.start_command:
            daemon = cmd(*sh(_DAEMON, self.script, self.pidfile, self.layout.log(self.colour)))
        else:
            daemon = cmd("sh", self.script, "--daemon")
        return self.stop(), fresh_socket, daemon

    def migrate(self) -> Step:
        """MIGRATE_COMMAND in the release, with the app's env and virtualenv; registered in the
        deploy lock, and never writing to the connection, so a lost connection cannot kill it."""
        run = (f"{self.dir}/{RELEASE_META}/run", *self.config.migrate_command)
        record = f"{phases.MIGRATE}-{self.release}"
        return Step(phases.MIGRATE, (cmd(*tracked(self.layout, record, "migration", run), stream=True
                                         ).bounded(self.config.timeout_migrate, "TIMEOUT_MIGRATE"),),
                    outlives_connection=True)

    def stop(self) -> Cmd:
        if self.systemd:
            return self._stopping(cmd("systemctl", "disable", "--now", self.unit))
        return self._stopping(cmd(*sh(_STOP, self.pidfile, str(self.config.stop_grace), self.layout.releases)))

    def _stopping(self, command: Cmd) -> Cmd:
        return command.bounded(self.config.timeout_stop, "TIMEOUT_STOP")

    def diagnostics(self) -> tuple[Cmd, ...]:
        return (cmd("tail", "-n", "30", self.layout.log(self.colour)),)

    def ready(self) -> Step:
        if self.systemd:
            gone = sh('[ "$(systemctl is-active "$1")" = failed ] && echo "its unit $1 has failed: see its log below"; '
                      "true", self.unit)
        else:
            gone = sh('pid=$(cat "$1" 2>/dev/null) || exit 0; kill -0 "$pid" 2>/dev/null '
                      '|| echo "its server (pid $pid) has exited: see its log below"', self.pidfile)
        return traffic.readiness(self.config, self.colour, diagnose=self.diagnostics(), gone=gone)

    def assets(self) -> tuple[Step, ...]:
        return ()  # the release's STATIC_PATH is linked in when it is staged

    def listener(self) -> tuple[str, tuple[str, ...]]:
        return self.layout.socket(self.colour), ()


def unit_file(config: Config) -> str:
    """An instanced systemd unit: <app>@blue and <app>@green run each colour's start.sh."""
    layout = Layout.of(config)
    return "\n".join([
        "[Unit]",
        f"Description={config.app_name} (%i colour), app server managed by deploytasks",
        "After=network.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart=/bin/sh {layout.start_script('%i')}",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={config.stop_grace}",
        "Restart=on-failure",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


class Processes:
    """The process backend, for the code of one commit (None: only rollbacks to what a host has)."""

    windows = False  # not yet: the maintenance window is exercised for containers only

    def __init__(self, config: Config, code: Source | None = None, *, fast: bool = False):
        self.config, self.source, self.fast = config, code, fast
        self.sha = code.sha if code else None

    def colour(self, state: HostState, colour: str, release: str) -> AppServer:
        return AppServer(self.config, state, colour, release or "")

    def stage(self, state: HostState, new: AppServer) -> list[Step]:
        config, code = self.config, self.source
        processes, layout = config.processes, Layout.of(config)
        meta = f"{new.dir}/{RELEASE_META}"
        reuse = "yes" if self.fast else "no"
        steps = [
            Step(phases.BACKUP, (backup(layout, timestamp(new.release), config.keep_releases,
                                        (*processes.shared_paths, *(["media"] if config.media_url else []))),)),
            Step(phases.UPLOAD, (
                cmd("mkdir", "-p", meta, layout.logs, layout.venvs),
                Put(f"{new.dir}/.source.tar", code.archive),
                cmd("tar", "-xf", f"{new.dir}/.source.tar", "-C", new.dir),
                cmd("rm", "-f", f"{new.dir}/.source.tar"),
                Put(f"{new.dir}/{APP_ENV}", app_env(config.app_env).encode(), mode=0o600, secret=True),
                Put(f"{meta}/run", env_wrapper(config, new.dir, code.sha).encode(), mode=0o755),
            ), label="upload code"),
        ]
        links = [(f"{layout.shared}/{path}", path) for path in processes.shared_paths]
        if config.media_url:  # uploads: one directory for every release, served by nginx
            links.append((layout.media, config.media_path.rstrip("/")))
        if links or config.static_url:
            steps.append(Step(phases.SHARED_LINKS, tuple(
                action for shared, path in links for action in (
                    cmd("mkdir", "-p", shared),
                    cmd("rm", "-rf", f"{new.dir}/{path}"),
                    cmd("ln", "-sfn", shared, f"{new.dir}/{path}"),
                )
            ) + ((cmd("ln", "-sfn", config.static_path.rstrip("/"), layout.static_dir(new.release)),)
                 if config.static_url else ()), label="shared links"))
        steps.append(Step(phases.DEPENDENCIES, (cmd(*sh(
            _DEPENDENCIES, layout.venvs, f"{new.dir}/{processes.requirements}", processes.python,
            f"{new.dir}/{RELEASE_VENV}", reuse, timestamp(new.release), code.requirements_hash or "none"),
            stream=True).bounded(processes.timeout_dependencies, "TIMEOUT_DEPENDENCIES"),)))
        if processes.build_command:
            previous = layout.release(state.release_of(state.live)) if state.release_of(state.live) else ""
            steps.append(Step(phases.BUILD, (cmd(*sh(_BUILD, new.dir, previous, RELEASE_META, processes.build_output,
                                                     code.build_hash, reuse, *processes.build_command),
                                                 stream=True).bounded(processes.timeout_build, "TIMEOUT_BUILD"),)))
        return steps

    def freed(self, state: HostState, doomed: list[str], kept: list[str]) -> Freed:
        """The virtualenvs no kept release links to (those of the doomed releases, and any a
        failed deploy left unlinked)."""
        layout = Layout.of(self.config)
        linked = {state.release_venvs.get(release) for release in kept}
        venvs = [venv for venv in state.venvs if f"{layout.venvs}/{venv}" not in linked]
        return Freed(tuple(("virtualenv", venv) for venv in venvs),
                     (remove_venvs(layout, venvs),) if venvs else ())


def backup(layout: Layout, name: str, keep: int, shared_paths: tuple[str, ...]) -> Cmd:
    """.backups/<name>/: what a rollback needs that is not in releases/ (the links, state and
    shared files, the nginx site); not the lock (a restored lock would block every deploy),
    logs, virtualenvs, SHARED_PATHS or uploads (user data is the database backups' job)."""
    members = [layout.current, layout.live_socket, layout.state, layout.shared]
    skipped = [layout.lock, layout.logs, layout.venvs, *(f"{layout.shared}/{path}" for path in shared_paths)]
    return cmd(*sh(_BACKUP, layout.root, layout.backups, name, layout.site, str(keep),
                   *map(layout.relative, members), "--", *map(layout.relative, skipped)))


def remove_venvs(layout: Layout, venvs: list[str]) -> Cmd:
    """Remove the named virtualenvs of shared/venvs that no release links to when it runs."""
    return cmd(*sh(_REMOVE_VENVS, layout.releases, RELEASE_VENV, *(f"{layout.venvs}/{venv}" for venv in venvs)))
