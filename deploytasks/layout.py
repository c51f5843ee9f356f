"""Where everything lives on a host, in one place, so every plan and script agrees on it.

    <deploy_path>/
      releases/<UTC-ts>-<sha>/   what was deployed (compose files, rendered config, app.env 0600)
      current -> releases/...    the release now serving
      shared/                    persistent files (process releases: venvs/, logs/, SHARED_PATHS)
      run/<colour>/<web>.sock    the socket each colour's web service listens on (relayed apps:
                                 <web>.relay.sock, nginx's own, relaying to the colour's loopback port)
      run/<web>.sock -> <colour>/<web>.sock   the live link nginx connects through
      state/<colour> -> ../releases/...       what each colour runs
      state/history.jsonl, state/maintenance
      state/lock/{info.json,session,lease,running/,ended/,output/}   the deploy lock, while held
      nginx/site.conf, nginx/site.d/          the site as last rendered; the user's additions
      .backups/<UTC-ts>/                      process releases: what a rollback needs beyond releases/

No other module spells these names: shell scripts receive the paths as arguments.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import Config

COLOURS = ("blue", "green")
CONTAINER_RUN_DIR = "/run/deploytasks"  # where a container sees its colour's run directory
APP_ENV = "app.env"  # the app's runtime variables in each release (mode 0600)
RELEASE_META = ".deploytasks"  # per-release files of ours (process releases): env wrapper, build hash
RELEASE_VENV = ".venv"  # a process release's link to its virtualenv under shared/venvs
# inside the lock directory (state/lock/), written by the acquire script and the deploy holding it
LOCK_INFO = "info.json"  # who holds it: user, machine, task, SHA, since, token
LOCK_SESSION = "session"  # the holder's sshd session process: "<pid> <start time> <boot id>"
LOCK_LEASE = "lease"  # renewed every few seconds by the holder; holds the step it is at
LOCK_RUNNING = "running"  # one record per registered command while it runs (a migration)
LOCK_ENDED = "ended"  # the same record with its exit status, once it has ended
LOCK_OUTPUT = "output"  # each registered command's output (it must not depend on the connection)
LOCK_TAKEOVER = "takeover"  # made (mkdir) by the one deploy allowed to take a dead holder's lock over
LOCK_NAMES = (LOCK_INFO, LOCK_SESSION, LOCK_LEASE, LOCK_RUNNING, LOCK_ENDED, LOCK_OUTPUT, LOCK_TAKEOVER)


def other(colour: str | None) -> str:
    """The colour a deploy starts: the one not serving (blue for a first deploy)."""
    return "green" if colour == "blue" else "blue"


@dataclass(frozen=True)
class Layout:
    root: str
    web: str
    app: str = "app"
    site_dir: str = "/etc/nginx/conf.d"
    relay: bool = False  # the app listens on a port; nginx listens on each colour's socket

    @classmethod
    def of(cls, config: Config) -> "Layout":
        return cls(config.deploy_path, config.web_service or "web", config.app_name, config.nginx_site_dir,
                   config.relayed)

    def relative(self, path: str) -> str:
        """A path of this layout relative to the root (for tar members)."""
        prefix = self.root + "/"
        if not path.startswith(prefix):
            raise ValueError(f"{path} is not under {self.root}")
        return path[len(prefix):]

    # --- releases
    @property
    def releases(self) -> str:
        return f"{self.root}/releases"

    def release(self, name: str) -> str:
        return f"{self.releases}/{name}"

    @property
    def current(self) -> str:
        return f"{self.root}/current"

    # --- persistent files
    @property
    def shared(self) -> str:
        return f"{self.root}/shared"

    @property
    def venvs(self) -> str:
        return f"{self.shared}/venvs"

    @property
    def logs(self) -> str:
        return f"{self.shared}/logs"

    def log(self, colour: str) -> str:
        return f"{self.logs}/{colour}.log"

    @property
    def backups(self) -> str:
        return f"{self.root}/.backups"

    # --- what each colour runs and listens on
    @property
    def run(self) -> str:
        return f"{self.root}/run"

    def run_dir(self, colour: str) -> str:
        return f"{self.run}/{colour}"

    @property
    def socket_name(self) -> str:
        # a relay socket has a name of its own: switching an app to WEB_PORT must not make nginx
        # bind the path the running colour's own server still listens on
        return f"{self.web}.relay.sock" if self.relay else f"{self.web}.sock"

    def socket(self, colour: str) -> str:
        """What nginx connects to for `colour`: the app's own socket, or nginx's relay to its port."""
        return f"{self.run_dir(colour)}/{self.socket_name}"

    def app_socket(self, colour: str) -> str:
        """Where an app that listens on a unix socket binds it ($APP_SOCKET)."""
        return f"{self.run_dir(colour)}/{self.web}.sock"

    def pidfile(self, colour: str) -> str:
        return f"{self.run_dir(colour)}/gunicorn.pid"

    def start_script(self, colour: str) -> str:
        return f"{self.run_dir(colour)}/start.sh"

    @property
    def live_socket(self) -> str:
        return f"{self.run}/{self.web}.sock"

    def live_target(self, colour: str) -> str:
        """The live link's target for `colour`, relative to the link."""
        return f"{colour}/{self.socket_name}"

    def static_link(self, which: str) -> str:
        """run/static/<live|previous>: the static files nginx serves first, then as a fallback."""
        return f"{self.run}/static/{which}"

    static_name = ".static"  # in a release: its static files (containers: a copy; processes: a link)

    def static_dir(self, release: str) -> str:
        return f"{self.release(release)}/{self.static_name}"

    @property
    def media(self) -> str:
        return f"{self.shared}/media"

    # --- state
    @property
    def state(self) -> str:
        return f"{self.root}/state"

    def colour_link(self, colour: str) -> str:
        return f"{self.state}/{colour}"

    def colour_target(self, release: str) -> str:
        """A colour link's target, relative to the link (state/ -> releases/)."""
        return f"../releases/{release}"

    def current_target(self, release: str) -> str:
        return f"releases/{release}"

    @property
    def history(self) -> str:
        return f"{self.state}/history.jsonl"

    @property
    def lock(self) -> str:
        return f"{self.state}/lock"

    @property
    def lock_info(self) -> str:
        return f"{self.lock}/{LOCK_INFO}"

    @property
    def in_progress(self) -> str:
        """Written when a plan starts, rewritten at each step, removed when it ends cleanly."""
        return f"{self.state}/deploying"

    @property
    def lock_lease(self) -> str:
        return f"{self.lock}/{LOCK_LEASE}"

    @property
    def lock_running(self) -> str:
        return f"{self.lock}/{LOCK_RUNNING}"

    @property
    def lock_ended(self) -> str:
        return f"{self.lock}/{LOCK_ENDED}"

    @property
    def lock_output(self) -> str:
        return f"{self.lock}/{LOCK_OUTPUT}"

    @property
    def maintenance_flag(self) -> str:
        return f"{self.state}/maintenance"

    # --- nginx
    @property
    def nginx_dir(self) -> str:
        return f"{self.root}/nginx"

    def rendered_site(self, release: str | None = None) -> str:
        """The site as rendered for a release, or as last rendered by maintenance-on/off."""
        return f"{self.release(release)}/nginx/site.conf" if release else f"{self.nginx_dir}/site.conf"

    @property
    def site_additions(self) -> str:
        return f"{self.nginx_dir}/site.d"

    @property
    def site(self) -> str:
        """The site file in the host nginx's include directory."""
        return f"{self.site_dir}/{self.app}.conf"

    @property
    def previous_site(self) -> str:
        return f"{self.site_dir}/.{self.app}.conf.previous"
