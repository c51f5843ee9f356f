"""Maintenance mode: nginx answers 503 + Retry-After with the maintenance page.

The mode is a flag file the site checks on every request (see templates/site.conf.template), so
turning it on or off is a `touch` or an `rm`: no reload, no connection dropped, idempotent.
Health endpoints and MAINTENANCE_ALLOW addresses always reach the app.
"""
from __future__ import annotations

import dataclasses

from . import nginx, phases
from .config import Config
from .facts import HostState
from .layout import Layout
from .plan import Cmd, Plan, Poll, Step, cmd, sh

STATUS = "503"
# what the flag file says: who set it. A window deploy's flag found by the next deploy is one
# whose deploy died inside its window (it held the lock): the next window deploy lifts it.
OPERATOR, WINDOW = "operator", "window"

# Undo of "maintenance on" during a maintenance deploy: lift the window only if the old
# version answers ready again; otherwise visitors are better served by the maintenance page.
_LIFT_IF_READY = r"""
flag=$1; socket=$2; url=$3; site=$4
for i in 1 2 3 4 5 6 7 8 9 10; do
    if curl -fsS --max-time 2 --unix-socket "$socket" -H "Host: $site" "$url" >/dev/null 2>&1; then rm -f "$flag"; exit 0; fi
    sleep 1
done
echo "MAINTENANCE STAYS ON: the previous version is not ready either (the migration has already run)" >&2
exit 1
"""


def public_status_probe(config: Config, path: str = "/") -> tuple[str, ...]:
    """What nginx answers a visitor, as an HTTP status code on stdout."""
    return nginx.probe(config, path, "-s", "-o", "/dev/null", "-w", "%{http_code}")


def set_flag(config: Config, by: str) -> Cmd:
    return cmd(*sh('printf "%s\\n" "$2" > "$1"', Layout.of(config).maintenance_flag, by))


def on_step(config: Config, already_on: bool = False, by: str = OPERATOR) -> Step:
    """Set the flag (saying who set it) and see the 503 through nginx; undo clears it unless it was on before."""
    flag = Layout.of(config).maintenance_flag
    return Step(phases.MAINTENANCE_ON, (set_flag(config, by), Poll(public_status_probe(config), 10, 0.2, expect=STATUS)),
                undo=() if already_on else (cmd("rm", "-f", flag),), label="maintenance on")


def off_step(config: Config, by: str = OPERATOR) -> Step:
    flag = Layout.of(config).maintenance_flag
    return Step(phases.MAINTENANCE_OFF, (cmd("rm", "-f", flag),), undo=(set_flag(config, by),), label="maintenance off")


def window_on_step(config: Config, old_colour: str | None) -> Step:
    """`on_step` for a maintenance deploy: its undo keeps the window open unless the old version is ready."""
    layout = Layout.of(config)
    undo = (cmd(*sh(_LIFT_IF_READY, layout.maintenance_flag, layout.socket(old_colour),
                    f"http://localhost{config.ready_path}", nginx.probe_host(config))),) if old_colour else on_step(config).undo
    return dataclasses.replace(on_step(config, by=WINDOW), undo=undo)


def toggle(config: Config, state: HostState, on: bool) -> Plan:
    """maintenance-on / maintenance-off: make sure the site is installed, then set or clear the flag."""
    layout = Layout.of(config)
    prepare = Step(phases.PREPARE, (cmd("mkdir", "-p", layout.state, layout.nginx_dir),))
    site = nginx.install_step(config, layout.rendered_site())
    steps = (prepare, site, on_step(config, state.maintenance) if on else off_step(config))
    return Plan("maintenance-on" if on else "maintenance-off", "", steps)


def window_seconds(steps: list[tuple[str, float]]) -> float | None:
    """How long visitors saw the maintenance page: from switching it on to switching it off."""
    names = [phase for phase, _ in steps]
    if phases.MAINTENANCE_ON not in names or phases.MAINTENANCE_OFF not in names:
        return None
    first, last = names.index(phases.MAINTENANCE_ON), names.index(phases.MAINTENANCE_OFF)
    return round(sum(seconds for _, seconds in steps[first:last + 1]), 2)
