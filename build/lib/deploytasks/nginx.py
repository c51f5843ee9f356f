"""The host's nginx: render the site from its template and install it only when it changed.

A new site file is validated with `nginx -t` and nginx is reloaded only if it passes; if it
fails, the previous file is put back before anything reloads nginx. Deploys that do not change
the site never reload nginx: the colour switch happens underneath it (see the template).
"""
from __future__ import annotations

import re

from . import phases
from .config import Config
from .layout import Layout
from .plan import Put, Step, cmd, sh

RETRY_AFTER_SECONDS = 30


def render(template: str, values: dict[str, object]) -> str:
    """`{{name}}` placeholders (nginx's own `$vars` and braces stay untouched); unknown names fail."""

    def value(match: re.Match) -> str:
        return str(values[match.group(1)])

    return re.sub(r"{{\s*(\w+)\s*}}", value, template)


def site(config: Config) -> str:
    layout = Layout.of(config)
    template = config.site_template.read_text()
    return render(template, {
        "app": config.app_name,
        "env": config.env,
        "var": _variable_prefix(config),
        "live_socket": layout.live_socket,
        "allow": "".join(f"    {cidr} 1;\n" for cidr in config.maintenance_allow).rstrip("\n"),
        "listen": config.nginx_listen,
        "server_name": config.server_name,
        "default_server": " default_server" if config.server_name == "_" else "",
        "health_path": config.health_path,
        "ready_path": config.ready_path,
        "version_path": config.version_path,
        "site_additions": layout.site_additions,
        "maintenance_flag": layout.maintenance_flag,
        "retry_after": RETRY_AFTER_SECONDS,
        "maintenance_page": _nginx_string(config.maintenance_page.read_text(), config),
    })


def _nginx_string(text: str, config: Config) -> str:
    """Text for a single-quoted nginx string: quotes and backslashes escaped, `$` literal."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'")
    return escaped.replace("$", "${" + _variable_prefix(config) + "_dollar}")


def _variable_prefix(config: Config) -> str:
    return config.app_name.replace("-", "_")


def probe_host(config: Config) -> str:
    """The Host header our own checks send, so they reach this site and not another one."""
    return next((n for n in config.server_name.split() if n != "_" and "*" not in n), "localhost")


def probe(config: Config, path: str, *curl_options: str) -> tuple[str, ...]:
    """A request through the host's nginx to this site, as a visitor makes it."""
    return ("curl", *curl_options, "--max-time", "5", "-H", f"Host: {probe_host(config)}",
            f"http://127.0.0.1:{config.nginx_listen}{path}")


_INSTALL = r"""
new=$1; live=$2; previous=$3; conf=$4
rm -f "$previous"
cmp -s "$new" "$live" && { echo "site unchanged: no reload"; exit 0; }
# a partial copy (a full disk) must never become "previous": undo would install it
if [ -f "$live" ]; then cp -p "$live" "$previous.tmp" && mv -f "$previous.tmp" "$previous" || { rm -f "$previous.tmp"; exit 1; }; fi
cp "$new" "$live.tmp" && mv -fT "$live.tmp" "$live" || exit 1
restore() { if [ -f "$previous" ]; then mv -fT "$previous" "$live"; else rm -f "$live"; fi; }
if ! out=$(nginx -t -c "$conf" 2>&1); then
    restore
    echo "$out" >&2
    echo "nginx -t rejected the new site; the previous site file is back and nginx was not reloaded" >&2
    exit 1
fi
if ! nginx -s reload -c "$conf"; then restore; echo "nginx reload failed; the previous site file is back" >&2; exit 1; fi
echo "site installed, nginx reloaded"
"""

_RESTORE = r"""
live=$1; previous=$2; conf=$3
[ -f "$previous" ] || exit 0
mv -fT "$previous" "$live" && nginx -s reload -c "$conf" && echo "previous nginx site restored"
"""


def install_argv(rendered: str, live: str, previous: str, conf: str) -> tuple[str, ...]:
    return sh(_INSTALL, rendered, live, previous, conf)


def restore_argv(live: str, previous: str, conf: str) -> tuple[str, ...]:
    return sh(_RESTORE, live, previous, conf)


def install_step(config: Config, rendered_path: str) -> Step:
    """Render the site to `rendered_path` and install it, unless the installed one is identical.

    The site does not name a colour, so it changes only with the configuration: most deploys
    skip the reload (and the keep-alive resets every reload causes). Undo puts the previous
    site back if this step replaced it."""
    layout = Layout.of(config)
    return Step(
        phases.NGINX,
        (
            cmd("mkdir", "-p", layout.site_additions),
            Put(rendered_path, site(config).encode()),
            cmd(*install_argv(rendered_path, layout.site, layout.previous_site, config.nginx_conf)),
        ),
        undo=(cmd(*restore_argv(layout.site, layout.previous_site, config.nginx_conf)),),
        label="nginx site",
    )
