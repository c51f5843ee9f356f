"""What the team hears of a deploy or rollback: its hooks (hooks.py) and its webhook (notify.py).

    starting       every host locked and read, each host's plan made, nothing changed yet:
                   pre-deploy (its failure stops the deploy: HookFailed), then the start notice
    switched       one host's traffic moved and answered: post-switch, when it runs per host
    all_switched   every batch switched: post-switch, when it runs once
    finished       the locks released: post-deploy or deploy-failed, then the success or
                   failure notice

A hook runs once per deploy unless HOOKS_PER_HOST names it: then once per host, with
DEPLOY_HOST. A deploy refused before `starting` ended (bad input, a held lock, a failing
pre-deploy) runs no other hook and sends nothing, as nothing changed; a hook or a notice that
fails after that is a warning line and the deploy's outcome stands. Maintenance toggles have
none of these. Every line printed here is masked like the hosts' (Config.secrets).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from . import hooks, notify
from .config import Config
from .errors import ConfigError, DeployError
from .hooks import DEPLOY_FAILED, POST_DEPLOY, POST_SWITCH, PRE_DEPLOY
from .remote.console import Console

SERVING = ("ok", "kept")  # a host's outcomes (rollout.py) after which it serves the new version
# what a hook is told; inherited variables of these names are dropped, so a hook never reads a stale one
VARIABLES = ("DEPLOY_HOOK", "DEPLOY_KIND", "DEPLOY_APP", "DEPLOY_ENV", "DEPLOY_ID", "DEPLOY_SHA",
             "DEPLOY_PREVIOUS_SHA", "DEPLOY_PREVIOUS_SHAS", "DEPLOY_HOSTS", "DEPLOY_HOST", "DEPLOY_COLOUR",
             "DEPLOY_USER", "DEPLOY_SECONDS", "DEPLOY_OUTCOME", "DEPLOY_ERROR")


class HookFailed(DeployError):
    """pre-deploy failed: the deploy stopped before anything changed."""


def check(config: Config) -> None:
    """Hooks that exist but cannot run, refused before any connection opens."""
    problems = hooks.problems(config.hooks_dir)
    if problems:
        raise ConfigError(f"{len(problems)} hook(s) in {config.hooks_dir} cannot run", problems)


@dataclass
class Summary:
    """What a deploy is about, as hooks and notices tell it. `previous` and `colours` are per
    host: hosts of a fleet may have served different versions, from different colours."""

    kind: str
    app: str
    env: str
    id: str
    sha: str = ""
    hosts: tuple[str, ...] = ()
    previous: dict[str, str | None] = field(default_factory=dict)
    colours: dict[str, str | None] = field(default_factory=dict)
    user: str = ""


class Events:
    """One deploy's hooks and notices. `stop()`: whether a running hook is to be stopped (Ctrl-C)."""

    def __init__(self, config: Config, kind: str, ident: str, echo: Callable[[str], None] = print):
        self.config, self.echo = config, echo
        self.summary = Summary(kind, config.app_name, config.env, ident)
        self.clock = time.monotonic()
        self.begun = False  # the start notice went out (or would have): a success or failure notice follows
        self.figures: dict = {}  # the in-deploy probe's figures, when a probe measured the deploy
        self.stop: Callable[[], bool] = lambda: False
        self._secrets = config.secrets()
        self._console = Console("", self._secrets)

    # --- the moments ------------------------------------------------------------------------

    def starting(self, hosts: Sequence[str], plans: Sequence, user: str, stop: Callable[[], bool]) -> None:
        """Before anything changes: pre-deploy (raises HookFailed), then the start notice."""
        self.stop = stop
        self.summary.sha = plans[0].sha or ""
        self.summary.hosts = tuple(hosts)
        self.summary.previous = {host: plan.summary.get("previous") for host, plan in zip(hosts, plans)}
        self.summary.colours = {host: plan.summary.get("colour") for host, plan in zip(hosts, plans)}
        self.summary.user = user
        for host in self._runs(PRE_DEPLOY):
            ran = self._run(PRE_DEPLOY, host, {})
            if ran is not None and not ran.ok:
                where = f" on {host}" if host else ""
                raise HookFailed(f"hook pre-deploy{where} failed ({ran.ending()}): the {self.summary.kind} stopped "
                                 "before anything changed", [self._console.mask(line) for line in ran.tail])
        self.begun = True
        self._notify(notify.START, self.facts())

    def switched(self, host: str) -> None:
        """One host's traffic moved and its check passed (called from that host's thread)."""
        if self._per_host(POST_SWITCH):
            self._later(POST_SWITCH, host, {})

    def all_switched(self) -> None:
        """Every batch switched and answered: post-switch, once."""
        if not self._per_host(POST_SWITCH):
            self._later(POST_SWITCH, None, {})

    def finished(self, outcomes: Mapping[str, str], error: BaseException | None) -> None:
        """The end of a deploy that started: post-deploy or deploy-failed, then the notice.
        Never raises: the deploy's own outcome is what the caller reports."""
        if not self.begun:
            return
        # a Ctrl-C that stopped the rollout must not stop deploy-failed too: from here a hook
        # is stopped only by a second one, which aborts (hooks.run ends the hook on the way out)
        self.stop = lambda: False
        reason = self._console.mask(str(error).splitlines()[0]) if error and str(error) else (
            "interrupted" if error else "")
        overall = "failed" if error else "ok"
        for host in self.summary.hosts:  # a hook run per host: the one its own outcome calls for
            own = outcomes.get(host) or "failed"
            hook = POST_DEPLOY if own in SERVING else DEPLOY_FAILED
            if self._per_host(hook):
                self._later(hook, host, {"DEPLOY_OUTCOME": own, **({"DEPLOY_ERROR": reason} if error else {})})
        once = DEPLOY_FAILED if error else POST_DEPLOY
        if not self._per_host(once):
            self._later(once, None, {"DEPLOY_OUTCOME": overall, **({"DEPLOY_ERROR": reason} if error else {})})
        facts = {**self.facts(), "duration_s": round(self.seconds(), 1), "outcome": overall,
                 "outcomes": dict(outcomes), "probe": dict(self.figures), **({"error": reason} if error else {})}
        self._notify(notify.FAILURE if error else notify.SUCCESS, facts)

    def dry_run(self) -> None:
        """What a dry run leaves out, said once."""
        found = hooks.present(self.config.hooks_dir)
        hooks_line = f"{', '.join(found)} in {self._where()}" if found else f"none in {self._where()}"
        webhook = "WEBHOOK_URL is set" if self.config.webhook_url else "no WEBHOOK_URL"
        self._say(None, f"dry run: runs no hook ({hooks_line}) and sends no notification ({webhook})")

    # --- what they are told -------------------------------------------------------------------

    def seconds(self) -> float:
        return time.monotonic() - self.clock

    def facts(self) -> dict:
        """The notices' data: the deploy as a whole (its previous SHA and colour: the first host's)."""
        s = self.summary
        first = s.hosts[0] if s.hosts else None
        return {"kind": s.kind, "app": s.app, "env": s.env, "id": s.id, "sha": s.sha, "hosts": list(s.hosts),
                "previous_sha": s.previous.get(first), "previous_shas": dict(s.previous),
                "colour": s.colours.get(first), "user": s.user}

    def environment(self, hook: str, host: str | None, extra: Mapping[str, str]) -> dict[str, str]:
        """A hook's environment: this process's, with the DEPLOY_* variables of this moment.
        A run per host gets that host's previous SHA and colour, a run per deploy the first
        host's (the one that migrates; every host's, on a fleet serving one version)."""
        s = self.summary
        one = host or (s.hosts[0] if s.hosts else None)
        told = {
            "DEPLOY_HOOK": hook, "DEPLOY_KIND": s.kind, "DEPLOY_APP": s.app, "DEPLOY_ENV": s.env, "DEPLOY_ID": s.id,
            "DEPLOY_SHA": s.sha, "DEPLOY_PREVIOUS_SHA": s.previous.get(one) or "",
            "DEPLOY_PREVIOUS_SHAS": " ".join(s.previous.get(h) or "-" for h in s.hosts),
            "DEPLOY_HOSTS": " ".join(s.hosts), "DEPLOY_COLOUR": s.colours.get(one) or "",
            "DEPLOY_USER": s.user, "DEPLOY_SECONDS": f"{self.seconds():.1f}",
            **({"DEPLOY_HOST": host} if host else {}), **extra,
        }
        inherited = {name: value for name, value in os.environ.items() if name not in VARIABLES}
        return {**inherited, **told}

    # --- running them ---------------------------------------------------------------------------

    def _per_host(self, hook: str) -> bool:
        return hook in self.config.hooks_per_host

    def _runs(self, hook: str) -> list[str | None]:
        """Once (None), or once for each host."""
        return list(self.summary.hosts) if self._per_host(hook) else [None]

    def _run(self, hook: str, host: str | None, extra: Mapping[str, str]) -> hooks.Ran | None:
        """The hook, if there is one, its output shown as it comes; None: there is none."""
        path = self.config.hooks_dir / hook
        if not path.is_file():
            return None
        self._say(host, f"hook {hook}: running {self._where(path)}")
        ran = hooks.run(path, self.environment(hook, host, extra), timeout=self.config.hook_timeout,
                        cwd=self.config.root, show=lambda line: self._say(host, f"hook {hook}: {line}"),
                        stop=self.stop)
        if ran.ok:
            self._say(host, f"hook {hook}: ok ({ran.seconds:.1f}s)")
        return ran

    def _later(self, hook: str, host: str | None, extra: Mapping[str, str]) -> None:
        """A hook past pre-deploy: its failure is a warning, the deploy's outcome stands."""
        try:
            ran = self._run(hook, host, extra)
        except Exception as error:  # never let a hook's trouble change what the deploy did
            self._say(host, f"! hook {hook} could not run: {error}; the {self.summary.kind}'s outcome stands")
            return
        if ran is not None and not ran.ok:
            self._say(host, f"! hook {hook} failed ({ran.ending()}); the {self.summary.kind}'s outcome stands")

    def _notify(self, event: str, facts: dict) -> None:
        if not self.config.webhook_url:
            return
        try:
            why = notify.send(self.config.webhook_url, notify.payload(event, facts))
        except Exception as error:  # a bug of ours or a library's: still only a warning
            why = f"could not send ({error.__class__.__name__})"
        if why:
            self._say(None, f"! webhook: the {event} notice was not delivered: {why} (a warning only)")

    def _say(self, host: str | None, line: str) -> None:
        if host:
            Console(host, self._secrets)(line)
        else:
            self.echo(self._console.mask(line))

    def _where(self, path=None) -> str:
        """A path as shown: relative to the repository when inside it."""
        path = path or self.config.hooks_dir
        try:
            return str(path.relative_to(self.config.root))
        except ValueError:
            return str(path)
