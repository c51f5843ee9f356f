"""The fixed phases of every plan: stable identifiers, apart from the text shown to users.

History, the bench and (later) hooks key on these, never on display labels such as
"switch to green", which may change wording or name a colour. A plan holds each phase at
most once; the order below is the order a deploy runs them in, with two exceptions: the window
deploy boots the new colour before the window opens, and a site with no live link to route
through yet (a first deploy) is installed right after the switch.
"""
from __future__ import annotations

PREPARE = "prepare"            # directories of the release and the app
BACKUP = "backup"              # process releases: state links, shared files and the nginx site
UPLOAD = "upload"              # the release's files: compose files and overlay, or the code
PULL = "pull"                  # container images, by SHA
NETWORKS = "networks"          # networks both colours and the stateful services share
STATEFUL = "stateful"          # stateful services up, never recreated
SHARED_LINKS = "shared-links"  # process releases: persistent paths linked into the release
DEPENDENCIES = "dependencies"  # process releases: the virtualenv
BUILD = "build"                # process releases: BUILD_COMMAND
NGINX = "nginx-site"           # the site, installed only if it changed
MAINTENANCE_ON = "maintenance-on"
STOP_OLD = "stop-old"          # maintenance window: the old colour stops before the migration
MIGRATE = "migrate"
START = "start"                # the new (or rollback target) colour
READY = "ready"                # readiness gate on the colour's own socket
ASSETS = "assets"              # containers: the new colour's static files copied out for nginx
PROBE = "probe"                # this deploy's own requests through nginx start (probe.py)
SWITCH = "switch"              # the point of no return: traffic moves
MAINTENANCE_OFF = "maintenance-off"
VERIFY = "verify"              # the new SHA answers through nginx
MONITOR = "monitor"            # the new colour watched, the old one still running (MONITOR_SECONDS)
DRAIN = "drain"                # the old colour finishes its requests and stops
CLEANUP = "cleanup"            # old releases and images

ALL = (PREPARE, BACKUP, UPLOAD, PULL, NETWORKS, STATEFUL, SHARED_LINKS, DEPENDENCIES, BUILD, NGINX,
       MAINTENANCE_ON, STOP_OLD, MIGRATE, START, READY, ASSETS, PROBE, SWITCH, MAINTENANCE_OFF, VERIFY, MONITOR, DRAIN,
       CLEANUP)
