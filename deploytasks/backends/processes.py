"""Plans for process releases: gunicorn on the host, one per colour, no containers.

    prepare -> backup -> upload code -> shared links -> dependencies -> build -> nginx site
            -> migrate -> start colour -> ready -> switch -> check through nginx -> drain old -> cleanup

The code of the SHA goes into releases/<UTC-ts>-<sha>/; its virtualenv lives in
shared/venvs/<requirements-hash>-<UTC-ts>/ and is linked in, so `--fast` can reuse one built
for the same requirements (a venv copied to another path breaks its scripts; a link keeps it). Each colour's gunicorn runs
from its own release directory, never through `current`, and listens on the colour's socket:
the switch is the same symlink swap as for containers, and the old gunicorn drains gracefully.
"""
from __future__ import annotations

import shlex

from .. import nginx, traffic
from ..config import Config
from ..facts import HostState, release_sha
from ..layout import APP_ENV, Layout, other
from ..plan import Cmd, Plan, Put, Step, cmd, sh
from ..releases import cleanup_step, prepare_step, timestamp
from ..source import Source

META = ".deploytasks"  # per-release files of ours: env wrapper, build hash and time

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
release=$1; previous=$2; output=$3; hash=$4; reuse=$5; shift 5
meta="$release/.deploytasks"
if [ "$reuse" = yes ] && [ -n "$previous" ] && [ -e "$previous/$output" ] \
   && [ "$(cat "$previous/.deploytasks/build-hash" 2>/dev/null)" = "$hash" ]; then
    rm -rf "$release/$output"
    cp -a "$previous/$output" "$release/$output" || exit 1
    cp "$previous/.deploytasks/build-seconds" "$meta/build-seconds" || exit 1
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
pidfile=$1; timeout=$2
pid=$(cat "$pidfile" 2>/dev/null) || exit 0
# a pid file can outlive its process (a reboot): signal only a gunicorn
if ! kill -0 "$pid" 2>/dev/null || ! tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q gunicorn; then
    rm -f "$pidfile"; exit 0
fi
kill -TERM "$pid"
waited=0
while kill -0 "$pid" 2>/dev/null; do
    if [ "$waited" -ge $((timeout * 10)) ]; then echo "gunicorn $pid still running after ${timeout}s: SIGKILL"; kill -KILL "$pid"; fi
    sleep 0.1; waited=$((waited + 1))
done
rm -f "$pidfile"
"""

_BACKUP = r"""
root=$1; name=$2; site=$3; keep=$4; shift 4
umask 077
dir="$root/.backups/$name"
mkdir -p "$dir" && cd "$root" || exit 1
members=$(for m in current run/*.sock state shared; do [ -e "$m" ] || [ -L "$m" ] && echo "$m"; done)
excludes="--exclude=state/lock --exclude=shared/logs --exclude=shared/venvs"
for data in "$@"; do excludes="$excludes --exclude=shared/$data"; done
if [ -n "$members" ]; then tar -cf "$dir/deploy.tar" $excludes $members || exit 1; fi
if [ -f "$site" ]; then cp -p "$site" "$dir/nginx-site.conf" || exit 1; fi
ls -1d "$root"/.backups/*/ | sort | head -n -"$keep" | xargs -r rm -rf
echo "backup: $dir"
"""

_UNUSED_VENVS = r"""
root=$1
for venv in "$root"/shared/venvs/*/; do
    venv=${venv%/}; [ -d "$venv" ] || continue
    used=no
    for link in "$root"/releases/*/.venv; do [ "$(readlink "$link")" = "$venv" ] && used=yes; done
    if [ "$used" = no ]; then rm -rf "$venv"; echo "removed unused virtualenv $(basename "$venv")"; fi
done
true
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
        f'export PATH={shlex.quote(release_dir + "/.venv/bin")}:"$PATH"',
        'exec "$@"',
        "",
    ])


class Gunicorn:
    """One colour's gunicorn, run from one release, supervised by pid file or systemd."""

    def __init__(self, config: Config, state: HostState, colour: str, release: str):
        self.config, self.colour, self.release = config, colour, release
        layout = Layout.of(config)
        self.layout = layout
        self.dir = layout.release(release)
        self.pidfile = f"{layout.run_dir(colour)}/gunicorn.pid"
        self.script = f"{layout.run_dir(colour)}/start.sh"
        supervisor = config.processes.supervisor
        self.systemd = supervisor == "systemd" or (supervisor == "auto" and state.systemd)

    @property
    def unit(self) -> str:
        return f"{self.config.app_name}@{self.colour}.service"

    def start_script(self) -> str:
        """What starting this colour runs: gunicorn of this release on this colour's socket."""
        processes, layout = self.config.processes, self.layout
        argv = ["--pid", self.pidfile, "--bind", f"unix:{layout.socket(self.colour)}", "--chdir", self.dir,
                "--workers", str(processes.workers), "--graceful-timeout", str(int(self.config.drain_timeout)),
                "--error-logfile", f"{layout.shared}/logs/{self.colour}.log", "--capture-output"]
        return "\n".join([
            "#!/bin/sh",
            f"# Rendered by deploytasks: {self.config.app_name} {self.release} as the {self.colour} colour.",
            f"export DEPLOY_COLOUR={self.colour} APP_SOCKET={shlex.quote(layout.socket(self.colour))}",
            f"exec {shlex.quote(self.dir)}/{META}/run gunicorn {shlex.join(argv)} \"$@\" {shlex.quote(processes.app_module)}",
            "",
        ])

    def start(self) -> Step:
        actions: list = [Put(self.script, self.start_script().encode(), mode=0o755)]
        if self.systemd:  # enabled while it is a colour that may serve; drain disables it
            actions += [Put(f"/etc/systemd/system/{self.config.app_name}@.service", unit_file(self.config).encode()),
                        cmd("systemctl", "daemon-reload"), cmd("rm", "-f", self.layout.socket(self.colour)),
                        cmd("systemctl", "enable", self.unit), cmd("systemctl", "restart", self.unit)]
        else:
            actions += [self.stop(), cmd("rm", "-f", self.layout.socket(self.colour)), cmd("sh", self.script, "--daemon")]
        return Step(f"start {self.colour}", tuple(actions), undo=(self.stop(),), diagnose=self.diagnostics())

    def stop(self) -> Cmd:
        if self.systemd:
            return cmd("systemctl", "disable", "--now", self.unit)
        return cmd(*sh(_STOP, self.pidfile, str(int(self.config.drain_timeout) + 5)))

    def diagnostics(self) -> tuple[Cmd, ...]:
        return (cmd("tail", "-n", "30", f"{self.layout.shared}/logs/{self.colour}.log"),)

    def ready(self) -> Step:
        return traffic.readiness(self.config, self.colour, diagnose=self.diagnostics())


def unit_file(config: Config) -> str:
    """An instanced systemd unit: <app>@blue and <app>@green run each colour's start.sh."""
    layout = Layout.of(config)
    return "\n".join([
        "[Unit]",
        f"Description={config.app_name} (%i colour), gunicorn managed by deploytasks",
        "After=network.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart=/bin/sh {layout.run}/%i/start.sh",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={int(config.drain_timeout) + 5}",
        "Restart=on-failure",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def deploy(config: Config, state: HostState, source: Source, release: str, *, migrate: bool = True,
           fast: bool = False, kind: str = "deploy") -> Plan:
    layout = Layout.of(config)
    processes = config.processes
    new = Gunicorn(config, state, other(state.live), release)
    meta = f"{new.dir}/{META}"
    steps = [
        prepare_step(layout, new.dir),
        Step("backup", (cmd(*sh(_BACKUP, layout.root, timestamp(release), nginx.site_path(config),
                                 str(config.keep_releases), *processes.shared_paths)),)),
        Step("upload code", (
            cmd("mkdir", "-p", meta, f"{layout.shared}/logs", f"{layout.shared}/venvs"),
            Put(f"{new.dir}/.source.tar", source.archive),
            cmd("tar", "-xf", f"{new.dir}/.source.tar", "-C", new.dir),
            cmd("rm", "-f", f"{new.dir}/.source.tar"),
            Put(f"{new.dir}/{APP_ENV}", app_env(config.app_env).encode(), mode=0o600, secret=True),
            Put(f"{meta}/run", env_wrapper(config, new.dir, source.sha).encode(), mode=0o755),
        )),
    ]
    if processes.shared_paths:
        steps.append(Step("shared links", tuple(
            action for path in processes.shared_paths for action in (
                cmd("mkdir", "-p", f"{layout.shared}/{path}"),
                cmd("rm", "-rf", f"{new.dir}/{path}"),
                cmd("ln", "-sfn", f"{layout.shared}/{path}", f"{new.dir}/{path}"),
            )
        )))
    steps.append(Step("dependencies", (cmd(*sh(
        _DEPENDENCIES, f"{layout.shared}/venvs", f"{new.dir}/{processes.requirements}", processes.python,
        f"{new.dir}/.venv", "yes" if fast else "no", timestamp(release), source.requirements_hash or "none"),
        stream=True),)))
    if processes.build_command:
        previous = layout.release(state.release_of(state.live)) if state.release_of(state.live) else ""
        steps.append(Step("build", (cmd(*sh(_BUILD, new.dir, previous, processes.build_output, source.build_hash,
                                            "yes" if fast else "no", *processes.build_command), stream=True),)))
    steps.append(nginx.install_step(config, f"{new.dir}/nginx/site.conf"))
    if migrate and config.migrate_command:
        steps.append(Step("migrate", (cmd(f"{meta}/run", *config.migrate_command, stream=True),)))
    old = Gunicorn(config, state, state.live, state.release_of(state.live) or "") if state.live else None
    steps += [new.start(), new.ready(),
              *traffic.switch_over(config, state, new.colour, release, source.sha, (old.stop(),) if old else ())]
    cleanup = cleanup_step(layout, state, config.keep_releases, keep=(release,))
    steps.append(Step(cleanup.name, (*cleanup.actions, cmd(*sh(_UNUSED_VENVS, layout.root))), best_effort=True))
    return Plan(kind, source.sha, tuple(steps), {"colour": new.colour, "release": release,
                                                 "previous": release_sha(state.release_of(state.live)), "window": False})


def rollback(config: Config, state: HostState) -> Plan:
    """Back to the previous release: start its colour again (its venv and build are still
    there), gate, switch, drain. No dependencies, no build, no migration."""
    colour, release, sha = traffic.rollback_target(state)
    target = Gunicorn(config, state, colour, release)
    old = Gunicorn(config, state, state.live, state.release_of(state.live) or "")
    steps = [target.start(), target.ready(), *traffic.switch_over(config, state, colour, release, sha, (old.stop(),))]
    return Plan("rollback", sha, tuple(steps), {"colour": colour, "release": release,
                                                "previous": release_sha(state.release_of(state.live))})

