"""The deploy lock's liveness through the real sshd: what the unit tests can only assume.

The acquire script records the sshd process of its connection; every later command of that
connection runs under the same process; it ends when the connection closes; then the lock of
that (dead) holder is taken over by the next acquire.
"""
from __future__ import annotations

import shlex
import time

from deploytasks import holder, lock
from deploytasks.layout import Layout
from deploytasks.remote.connection import connect

_ANCESTOR = 'p=$$; while [ "$p" -gt 1 ]; do [ "$p" = "$1" ] && echo yes; p=$(cut -d" " -f4 "/proc/$p/stat"); done'


def test_the_lock_records_its_connections_sshd_process_and_outlives_it_only_by_its_lease(fresh_host):
    config = fresh_host
    layout = Layout.of(config)
    first, second = connect(config, config.hosts[0]), connect(config, config.hosts[0])
    try:
        assert first.run(shlex.join(lock.acquire_argv(layout, lock.owner("deploy", "abc1234")))).exited == 0
        pid = first.run(shlex.join(("cat", f"{layout.lock}/session"))).stdout.split()[0]
        assert first.run(shlex.join(("cat", f"/proc/{pid}/comm"))).stdout.startswith("sshd")
        assert "yes" in first.run(shlex.join(("sh", "-c", _ANCESTOR, "sh", pid))).stdout, \
            "a later command of the same connection runs under the recorded process"
        assert "yes" not in second.run(shlex.join(("sh", "-c", _ANCESTOR, "sh", pid))).stdout

        stale = shlex.join(("touch", "-d", "-1 min", layout.lock_lease))
        second.run(stale)
        refused = second.run(shlex.join(lock.acquire_argv(layout, lock.owner("deploy", None))))
        found = holder.parse(refused.stdout.splitlines())
        assert refused.exited == lock.HELD_EXIT and found.verdict == "alive" and found.session == "alive"

        first.close()  # the deploying machine goes away
        deadline = time.monotonic() + 15
        while second.run(shlex.join(("test", "-e", f"/proc/{pid}"))).ok and time.monotonic() < deadline:
            time.sleep(0.2)
        second.run(stale)
        taken = second.run(shlex.join(lock.acquire_argv(layout, lock.owner("deploy", None))))
        assert taken.exited == 0 and "lock-taken-over" in taken.stdout, taken.stdout
    finally:
        first.close()
        second.run(shlex.join(lock.force_release_argv(layout, force=True)))
        second.close()
