"""The host's nginx: render the site from its template and install it only when it changed.

A new site file is validated with `nginx -t` and nginx is reloaded only if it passes; if it
fails, the previous file is put back before anything reloads nginx. Deploys that do not change
the site never reload nginx: the colour switch happens underneath it (see the template).
"""
from __future__ import annotations

import re

from . import phases
from .config import Config
from .layout import COLOURS, Layout
from .plan import Put, Step, cmd, sh

RETRY_AFTER_SECONDS = 30


def render(template: str, values: dict[str, object]) -> str:
    """`{{name}}` placeholders (nginx's own `$vars` and braces stay untouched); unknown names fail."""

    def value(match: re.Match) -> str:
        return str(values[match.group(1)])

    return re.sub(r"{{\s*(\w+)\s*}}", value, template)


def site(config: Config) -> str:
    return render(config.site_template.read_text(), _placeholders(config))


def _placeholders(config: Config) -> dict[str, object]:
    layout = Layout.of(config)
    return {
        "app": config.app_name,
        "env": config.env,
        "var": _variable_prefix(config),
        "live_socket": layout.live_socket,
        "allow": "".join(f"    {cidr} 1;\n" for cidr in config.maintenance_allow).rstrip("\n"),
        "listen": config.nginx_listen,
        "server_name": config.server_name,
        "default_server": " default_server" if config.server_name == "_" else "",
        "check_locations": "\n".join(f"    location = {path} {{ proxy_pass http://{_variable_prefix(config)}_web; }}"
                                     for path in config.check_paths),
        # the paths one by one, for site templates written before check_locations
        "health_path": config.health_path, "ready_path": config.ready_path, "version_path": config.version_path,
        "relays": relays(config),
        "files": files(config),
        "site_additions": layout.site_additions,
        "maintenance_flag": layout.maintenance_flag,
        "retry_after": RETRY_AFTER_SECONDS,
        "maintenance_page": _nginx_string(config.maintenance_page.read_text(), config),
        "log_formats": log_formats(config),
        "logs": logs(config),
    }


ERRORS_LOG_DIR = "/var/log/nginx"  # the distributions' logrotate rotates *.log there


def errors_log(config: Config) -> str:
    """The 5xx answers of the app (not nginx's maintenance page: it has no upstream), one line
    each, which a deploy's watch reads (MONITOR_SECONDS)."""
    return f"{ERRORS_LOG_DIR}/{config.app_name}-5xx.log"


def log_formats(config: Config) -> str:
    var = _variable_prefix(config)
    return (f'map "$status $upstream_addr" ${var}_app_error {{\n    "~^5[0-9][0-9] ." 1;\n    default 0;\n}}\n'
            f"log_format {var}_errors '$msec $request_time $status $request_method $uri';")


def logs(config: Config) -> str:
    """A server that sets one access_log no longer inherits the http level's: the site's own log
    (NGINX_ACCESS_LOG) is set again beside the 5xx log."""
    var = _variable_prefix(config)
    own = f"    access_log {config.nginx_access_log};\n" if config.nginx_access_log != "off" else ""
    return f"{own}    access_log {errors_log(config)} {var}_errors if=${var}_app_error;"


# Each colour's fixed socket, relayed to the loopback port it listens on: the live link still
# names a socket, so the switch stays one rename and no deploy reloads nginx. Everything the
# site set is passed on as it came; the answer is stamped with the colour that gave it.
_RELAY = """
# {app}'s {colour} colour listens on 127.0.0.1:{port} (WEB_PORT); nginx relays its socket there.
server {{
    listen unix:{socket};
    access_log off;
    location / {{
        proxy_pass http://127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        proxy_set_header X-Real-IP $http_x_real_ip;
        proxy_set_header X-Forwarded-For $http_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $http_x_forwarded_proto;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $http_connection;
        proxy_buffering off;
        proxy_request_buffering off;
        client_max_body_size 0;
        proxy_read_timeout 1h;
        proxy_send_timeout 1h;
        add_header {header} {colour} always;
    }}
}}"""

COLOUR_HEADER = "X-Deploy-Colour"


def relays(config: Config) -> str:
    """The relay server of each colour, when the app listens on a port (else nothing)."""
    if not config.relayed:
        return ""
    layout = Layout.of(config)
    return "".join(_RELAY.format(app=config.app_name, colour=colour, port=config.port(colour),
                                 socket=layout.socket(colour), header=COLOUR_HEADER) for colour in COLOURS) + "\n"


def files(config: Config) -> str:
    """Static files from the live release, then the previous one (a page of either version finds
    its assets while both serve); uploads from shared/media. nginx reads only the deploy path."""
    layout, var = Layout.of(config), _variable_prefix(config)
    blocks = []
    if config.static_url:
        prefix = config.static_url.replace(".", r"\.")
        blocks.append(
            f"    location ~ ^{prefix}(?<{var}_asset>.*)$ {{\n"
            f"        root {layout.run}/static;\n"
            f"        try_files /live/${var}_asset /previous/${var}_asset =404;\n"
            f"    }}")
    if config.media_url:
        blocks.append(f"    location ^~ {config.media_url} {{\n        alias {layout.media}/;\n    }}")
    return "\n".join(blocks)


# placeholders a site template needs for what the configuration asks of it
NEEDED = {"relays": lambda c: c.relayed, "files": lambda c: bool(c.static_url or c.media_url),
          "live_socket": lambda c: True}


def template_problems(config: Config) -> list[str]:
    """What an own site template lacks for this configuration, or names that render cannot fill."""
    text = config.site_template.read_text()
    used = set(re.findall(r"{{\s*(\w+)\s*}}", text))
    unknown = sorted(used - set(_placeholders(config)))
    missing = sorted(name for name, needed in NEEDED.items() if needed(config) and name not in used)
    if {"ready_path", "version_path"} & used and len(config.check_paths) < 3:
        missing.append("check_locations")  # one path each would be a duplicate or an empty location
    return ([f"{config.site_template}: unknown placeholder(s) {', '.join(unknown)}"] if unknown else []) + \
           ([f"{config.site_template}: lacks {{{{{name}}}}}, needed for this configuration (see the packaged "
             f"site.conf.template)" for name in missing])


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


# nginx cannot bind a unix socket whose file exists: one left by an nginx that was killed would
# fail the reload. Only files no process listens on are removed (a listening one is nginx's own).
_STALE_RELAYS = r"""
for socket in "$@"; do
    [ -S "$socket" ] || continue
    [ -n "$(ss -Hxl src "$socket" 2>/dev/null)" ] || { rm -f "$socket"; echo "removed a stale relay socket: $socket"; }
done
true
"""


# The same file left by an nginx killed or cut off by a power loss would stop nginx from starting
# at all (every site down). Where systemd runs nginx, a drop-in removes this app's relay sockets
# before nginx starts; systemd runs ExecStartPre only when nginx is not running, so none is live.
_BOOT_CLEANUP = r"""
file=$1; shift
[ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 || exit 0
want="[Service]
# deploytasks: stale relay sockets (an nginx that was killed leaves them, and cannot bind them again)
ExecStartPre=-/bin/rm -f $*"
[ "$(cat "$file" 2>/dev/null)" = "$want" ] && exit 0
if mkdir -p "$(dirname "$file")" && printf '%s\n' "$want" > "$file" && systemctl daemon-reload; then
    echo "nginx.service drop-in written: $file"
else
    echo "warning: could not write $file; if nginx is killed, remove $* before starting it" >&2
fi
true
"""

SYSTEMD_DROPIN_DIR = "/etc/systemd/system/nginx.service.d"


def relay_sockets(config: Config) -> list[str]:
    """The sockets nginx itself listens on for this app: one per colour when relayed, else none."""
    layout = Layout.of(config)
    return [layout.socket(colour) for colour in COLOURS] if config.relayed else []


def listened_sockets(conf_text: str) -> list[str]:
    """The unix sockets an nginx configuration listens on (`listen unix:PATH ...;`)."""
    return re.findall(r"^\s*listen\s+unix:([^\s;]+)", conf_text, flags=re.M)


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
    sockets = relay_sockets(config)
    relay_dirs = [layout.run_dir(colour) for colour in COLOURS] if config.relayed else []
    dropin = f"{SYSTEMD_DROPIN_DIR}/deploytasks{config.deploy_path.rstrip('/').replace('/', '-')}.conf"
    return Step(
        phases.NGINX,
        (
            cmd("mkdir", "-p", layout.site_additions, ERRORS_LOG_DIR, *relay_dirs),  # where the 5xx log goes
            *([cmd(*sh(_STALE_RELAYS, *sockets)), cmd(*sh(_BOOT_CLEANUP, dropin, *sockets))] if sockets else []),
            Put(rendered_path, site(config).encode()),
            cmd(*install_argv(rendered_path, layout.site, layout.previous_site, config.nginx_conf)),
        ),
        undo=(cmd(*restore_argv(layout.site, layout.previous_site, config.nginx_conf)),),
        label="nginx site",
    )
