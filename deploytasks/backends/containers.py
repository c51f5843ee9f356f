"""Container releases: each colour's stateless services are a Compose project of their own
(<app>-blue, <app>-green) running images tagged by SHA; stateful services run once, in project
<app>, and a deploy never recreates them.

Staging a release uploads the team's compose files and env files as they are plus our overlay, pulls the
images (never builds), creates the shared networks and brings up the stateful services.
"""
from __future__ import annotations

import dataclasses
import json
import posixpath

from .. import phases, registry, shas, traffic
from ..config import Config
from ..errors import ConfigError
from ..facts import HostState, release_sha
from ..layout import APP_ENV, CONTAINER_RUN_DIR, Layout
from ..plan import Cmd, Put, Step, cmd, sh
from ..releases import Freed
from ..tracked import tracked
from . import compose

# `up --wait` ends its own wait after HEALTH_TIMEOUT; the host's bound leaves time around it
# for creating and starting the containers
UP_MARGIN = 30


class ContainerColour:
    """Compose commands for one colour of one release."""

    def __init__(self, config: Config, colour: str, release: str, project: str | None = None):
        self.config, self.colour, self.release = config, colour, release
        self.dir = Layout.of(config).release(release)
        self.project = project or compose.project(config, colour)

    def __call__(self, *args: str, stream: bool = False) -> Cmd:
        return Cmd(compose.command(self.config, self.dir, self.project, *args), stream=stream,
                   quiet=compose.shared_volume_warning(self.config))

    def diagnostics(self) -> tuple[Cmd, ...]:
        return self("ps", "-a"), self("logs", "--no-color", "--tail", "30", *self.config.stateless)

    def start(self, *, fresh: bool) -> Step:
        """Bring the colour up and wait for its containers' health checks; undo removes what a
        deploy created, or stops again what a rollback started."""
        services = self.config.stateless
        undo = self._stopping(self("rm", "-f", "-s", *services) if fresh else self("stop", "-t", "5", *services))
        # a recreated colour binds a fresh socket; one still running (a rollback after a failed
        # drain) keeps listening on the one it has
        fresh_socket = (cmd("rm", "-f", Layout.of(self.config).app_socket(self.colour)),
                        *self._socket_owner()) if fresh else ()
        return Step(phases.START, (*fresh_socket, self._up(fresh)), undo=(undo,), diagnose=self.diagnostics(),
                    label=f"start {self.colour}")

    def _socket_owner(self) -> tuple[Cmd, ...]:
        """Give the run directory to the user the web service runs as (its compose `user:`, else
        the image's), so an image that is not root can create its socket there."""
        config = self.config
        if config.relayed:
            return ()  # nothing of the app's is created on the host
        user = str((compose.model(config)["services"].get(config.web_service) or {}).get("user") or "")
        image = f"{config.images[config.web_service]}:{release_sha(self.release)}"
        return (cmd(*sh(_SOCKET_OWNER, Layout.of(config).run_dir(self.colour), image, user)),)

    def restart(self) -> tuple[Cmd, ...]:
        return (self._up(fresh=False),)

    def _up(self, fresh: bool) -> Cmd:
        flags = ("--force-recreate",) if fresh else ()
        return self("up", "-d", "--no-deps", *flags, "--wait", "--wait-timeout",
                    str(int(self.config.health_timeout)), *self.config.stateless
                    ).bounded(int(self.config.health_timeout) + UP_MARGIN, "HEALTH_TIMEOUT")

    def ready(self) -> Step:
        states = self("ps", "-a", "--format", "{{.Service}} {{.State}} {{.ExitCode}}", *self.config.stateless).argv
        return traffic.readiness(self.config, self.colour, diagnose=self.diagnostics(), gone=sh(_GONE, *states))

    def _web_pid(self) -> tuple[str, ...]:
        """Prints the pid of this colour's web container (its network namespace, its user)."""
        return sh('docker inspect -f "{{.State.Pid}}" "$("$@")"', *self("ps", "-q", self.config.web_service).argv)

    def listener(self) -> tuple[str, tuple[str, ...]]:
        # a relayed colour's socket is nginx's, at its own path; an app's own socket has the path
        # bound in the container, the same in both colours: its web container's processes tell
        if self.config.relayed:
            return Layout.of(self.config).socket(self.colour), ()
        processes = sh('docker top "$("$@")" -eo pid', *self("ps", "-q", self.config.web_service).argv)
        return f"{CONTAINER_RUN_DIR}/{Layout.of(self.config).web}.sock", processes

    def assets(self) -> tuple[Step, ...]:
        """Copy the static files out of the running web container (collected at build or at start
        alike) into the release, where nginx serves them from; hand the uploads directory to the
        user the web container runs as."""
        config, layout = self.config, Layout.of(self.config)
        actions = []
        if config.static_url:
            target = layout.static_dir(self.release)
            actions += [cmd("rm", "-rf", target),
                        self("cp", f"{config.web_service}:{config.static_path.rstrip('/')}/.", target)]
        if config.media_url:
            actions.append(cmd(*sh(_OWN_MEDIA, layout.media, *self._web_pid())))
        return (Step(phases.ASSETS, tuple(actions), label="static files"),) if actions else ()

    def stop(self) -> Cmd:
        return self._stopping(self("stop", "-t", str(self.config.stop_grace), *self.config.stateless))

    def _stopping(self, command: Cmd) -> Cmd:
        return command.bounded(self.config.timeout_stop, "TIMEOUT_STOP")

    def migrate(self) -> Step:
        """A one-off container of the new web image, before any traffic moves; named, and
        registered in the deploy lock, so a lost connection neither orphans nor hides it."""
        record = f"{phases.MIGRATE}-{self.release}"
        name = f"{self.config.app_name}-{record}".lower()
        run = self("run", "--rm", "--name", name, "--no-deps", "-T", self.config.web_service,
                   *self.config.migrate_command)
        migration = cmd(*tracked(Layout.of(self.config), record, "migration", run.argv, name), stream=True)
        return Step(phases.MIGRATE, (dataclasses.replace(migration, quiet=run.quiet).bounded(
            self.config.timeout_migrate, "TIMEOUT_MIGRATE"),), outlives_connection=True)


_SOCKET_OWNER = r"""
dir=$1; image=$2; user=${3:-$(docker image inspect -f '{{.Config.User}}' "$image" 2>/dev/null)}
mkdir -p "$dir" || exit 1
case "$user" in ""|root|0|0:*|root:*) exit 0 ;; esac
uid=${user%%:*}
# a name: its uid as the image itself resolves it (its own /etc/passwd)
case "$uid" in *[!0-9]*) uid=$(docker run --rm --user "$user" --entrypoint id "$image" -u 2>/dev/null) \
    || { echo "the web image runs as $user, whose uid could not be read (no id in the image): the socket directory stays root's; use WEB_PORT"; exit 0; } ;;
esac
chown "$uid" "$dir"
"""

# what `compose ps` says of the colour's containers, when one of them has stopped for good
_GONE = r"""
"$@" 2>/dev/null | while read -r service state code; do
    case "$state" in
        exited|dead) echo "its $service container has $state (exit code $code): see its logs below" ;;
        restarting) echo "its $service container keeps restarting (last exit code $code): see its logs below" ;;
    esac
done
"""

# each image untagged (never forced); one a container uses, or already gone, is not a failure
_REMOVE_IMAGES = r"""
failed=0
for image do
    if out=$(docker image rm "$image" 2>&1); then
        echo "removed image $image"
    else
        case "$out" in
            *"No such image"*) echo "image $image: already gone" ;;
            *conflict*) echo "kept image $image: a container uses it" ;;
            *) echo "could not remove image $image: $out"; failed=1 ;;
        esac
    fi
done
exit $failed
"""

_OWN_MEDIA = r"""
media=$1; shift
pid=$("$@") && uid=$(stat -c %u "/proc/$pid") || exit 1
[ "$(stat -c %u "$media")" = "$uid" ] || chown "$uid" "$media"
"""


def full_sha(config: Config, sha: str) -> str:
    """The full SHA an abbreviated `--sha` names: the one tag of the web image starting with it
    (CI tags images by the full SHA). A full SHA is taken as it is, without listing."""
    if shas.full(sha):
        return sha
    image = config.images[config.web_service]
    return shas.expand(sha, registry.tags(image), image)


def check_images(config: Config, sha: str) -> None:
    """Every stateless image of the SHA is in the registry (asked before any connection opens)."""
    missing = registry.missing(config.images, sha)
    if missing:
        raise ConfigError(f"image(s) for {sha} not in the registry; nothing was changed", missing)


class Containers:
    """The container backend, for the images of `sha` (None: only rollbacks to what a host has)."""

    windows = True

    def __init__(self, config: Config, sha: str | None = None):
        self.config, self.sha = config, sha

    def colour(self, state: HostState, colour: str, release: str) -> ContainerColour:
        return ContainerColour(self.config, colour, release)

    def stage(self, state: HostState, new: ContainerColour) -> list[Step]:
        config = self.config
        model = compose.model(config)
        shared = ContainerColour(config, "shared", new.release, project=compose.project(config))
        steps = [
            _upload_step(_uploads(config, model, new.dir, self.sha, new.colour)),
            Step(phases.PULL, (new("pull", *config.stateless, stream=True).bounded(config.timeout_pull, "TIMEOUT_PULL"),),
                 label="pull images"),
            Step(phases.NETWORKS, tuple(
                cmd("docker", "network", "create", name, unless=("docker", "network", "inspect", name))
                for name in compose.shared_networks(config, model).values()
            )),
        ]
        if config.stateful:
            # the first start pulls the stateful services' images: bounded like a pull
            up = shared("up", "-d", "--no-recreate", *config.stateful).bounded(config.timeout_pull, "TIMEOUT_PULL")
            steps.append(Step(phases.STATEFUL, (up,), label="stateful services"))
        if config.media_url:
            steps.append(Step(phases.SHARED_LINKS, (cmd("mkdir", "-p", Layout.of(config).media),),
                              label="uploads directory"))
        return steps

    def freed(self, state: HostState, doomed: list[str], kept: list[str]) -> Freed:
        """The stateless images (IMAGE_*:<sha>) of the doomed releases that no kept release and no
        container uses (the stopped colour's containers are the instant rollback: its images
        stay). Only those the host has, when it could list them. Never forced: docker refuses to
        remove what a container uses, and that image is kept."""
        def refs(releases: list[str]) -> set[str]:
            return {f"{self.config.images[service]}:{release_sha(r)}" for r in releases
                    for service in self.config.stateless if service in self.config.images}

        in_use = {familiar(ref) for ref in (*refs(kept), *(container.image for container in state.containers))}
        present = None if state.images is None else {familiar(ref) for ref in state.images}
        images = sorted(ref for ref in refs(doomed) if familiar(ref) not in in_use
                        and (present is None or familiar(ref) in present))
        return Freed(tuple(("image", image) for image in images),
                     (cmd(*sh(_REMOVE_IMAGES, *images)),) if images else ())


def familiar(ref: str) -> str:
    """An image reference as docker lists it: Docker Hub's registry and `library/` left out
    (docker.io/library/redis:7 is redis:7), so IMAGE_* and what docker says compare."""
    for hub in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if ref.startswith(hub):
            ref = ref[len(hub):]
            break
    return ref[len("library/"):] if ref.startswith("library/") and ref.count("/") == 1 else ref


def _upload_step(files: tuple[Put, ...]) -> Step:
    folders = sorted({posixpath.dirname(put.path) for put in files})
    return Step(phases.UPLOAD, (cmd("mkdir", "-p", *folders), *files), label="upload release")


def _uploads(config, model, release_dir, sha, colour) -> tuple[Put, ...]:
    layout = Layout.of(config)
    files = [Put(f"{release_dir}/{name}", content) for name, content in compose.release_files(config).items()]
    files += [
        Put(f"{release_dir}/{compose.OVERLAY}", compose.overlay(config, model, layout, release_dir, sha, colour).encode()),
        Put(f"{release_dir}/{compose.INTERPOLATION_ENV}", compose.interpolation_env(config, sha, colour).encode()),
        Put(f"{release_dir}/{APP_ENV}", compose.app_env(config.app_env).encode(), mode=0o600, secret=True),
        # the services' own env files, where compose looks for them: beside the compose files
        *(Put(f"{release_dir}/{env_file.name}", env_file.content, mode=0o600, secret=True)
          for env_file in config.env_files),
        Put(f"{release_dir}/RELEASE.json", (json.dumps({"sha": sha, "colour": colour, "env": config.env}) + "\n").encode()),
    ]
    return tuple(files)
