"""The deploy and rollback skeleton every kind of release shares.

    prepare -> stage (backend) -> nginx site -> migrate -> start new -> ready -> probe starts
            -> switch -> check through nginx -> watch (old still running) -> drain old -> cleanup

Everything before the switch happens beside the live colour, which keeps serving; a failure
anywhere stops the new colour and, past the switch, swaps traffic back. With `window`
(a migration the old version cannot run beside), the new colour boots first and a short
maintenance window covers only: stop old, migrate, ready, switch.
"""
from __future__ import annotations

from . import maintenance, nginx, phases, probe, releases, traffic
from .backends import Backend
from .config import Config
from .facts import HostState, release_sha
from .layout import Layout, other
from .plan import Plan, Step
from .releases import prepare_step


def deploy(config: Config, state: HostState, backend: Backend, sha: str, release: str, *, migrate: bool = True,
           kind: str = "deploy", window: bool = False, probing: bool = True) -> Plan:
    layout = Layout.of(config)
    live = state.live
    new = backend.colour(state, other(live), release)
    old = backend.colour(state, live, state.release_of(live)) if live and state.release_of(live) else None
    site = nginx.install_step(config, layout.rendered_site(release))
    # a site routes through the live link; one that does not exist yet (a first deploy, a changed
    # DEPLOY_PATH or WEB_SERVICE) would answer 502 from the reload until the switch: install it after.
    # A relayed app's readiness gate goes through the site's relay sockets: it needs the site first.
    site_after_switch = (not live or state.live_elsewhere) and not window and not config.relayed
    # the probe measures a switch between versions, through a site that is already there
    probing = probing and bool(live) and not site_after_switch and not window
    steps = [prepare_step(layout, release), *backend.stage(state, new), *([] if site_after_switch else [site])]
    migration = [new.migrate()] if migrate and config.migrate_command else []
    if window:
        # the new colour boots outside the window (ready only after the migration); a window the
        # operator opened before the deploy stays open after it, one a dead window deploy left is ours
        own_window = not state.maintenance or state.maintenance_by == maintenance.WINDOW
        steps.append(new.start(fresh=True))
        steps += [maintenance.window_on_step(config, live)] if own_window else []
        if old:
            steps.append(Step(phases.STOP_OLD, (old.stop(),), undo=old.restart(), label=f"stop {old.colour}"))
        steps += [*migration, new.ready(), *new.assets(), traffic.switch(config, state, new.colour, release),
                  *([maintenance.off_step(config, maintenance.WINDOW)] if own_window else []),
                  traffic.verify(config, sha, new.colour)]
    else:
        switch, *after = traffic.switch_over(config, state, new.colour, release, sha, old)
        steps += [*migration, new.start(fresh=True), new.ready(), *new.assets(), *probe.start_step(config, probing), switch,
                  *([site] if site_after_switch else []), *after]
    steps.append(releases.cleanup(config, state, backend, new.colour, release))
    return Plan(kind, sha, tuple(steps), {"colour": new.colour, "release": release,
                                          "previous": release_sha(state.release_of(live)), "window": window,
                                          "probe_interval": probe.interval(config, probing)})


def rollback(config: Config, state: HostState, backend: Backend, *, probing: bool = True) -> Plan:
    """Back to the colour that served before: it is stopped, not gone (containers kept, release
    and virtualenv kept), so this is a start, a gate and a switch; no pull, no build, no migration."""
    colour, release, sha = traffic.rollback_target(state)
    target = backend.colour(state, colour, release)
    old = backend.colour(state, state.live, state.release_of(state.live))
    steps = [target.start(fresh=False), target.ready(), *probe.start_step(config, probing),
             *traffic.switch_over(config, state, colour, release, sha, old)]
    return Plan("rollback", sha, tuple(steps), {"colour": colour, "release": release,
                                                "previous": release_sha(state.release_of(state.live)),
                                                "probe_interval": probe.interval(config, probing)})
