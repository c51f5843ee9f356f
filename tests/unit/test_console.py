"""console: every printed line carries its host and never a secret."""
from __future__ import annotations

import io

from deploytasks.remote.console import MASK, Console


def _console(host="web1", secrets=("hunter2", "hunter2-long", "ab")):
    out = io.StringIO()
    return Console(host, list(secrets), stream=out), out


def test_every_line_is_prefixed_and_masked():
    console, out = _console()
    console("one hunter2\ntwo\n\nthree hunter2-long and hunter2")
    assert out.getvalue().splitlines() == [
        f"[web1] one {MASK}", "[web1] two", "[web1] ", f"[web1] three {MASK} and {MASK}"]
    assert "hunter2" not in out.getvalue()


def test_longer_secrets_are_masked_first():
    console, _ = _console(secrets=("pass", "password123"))
    assert console.mask("password123 pass") == f"{MASK} {MASK}"


def test_very_short_secrets_are_not_masked():
    # masking two-letter values would garble every line; config values that short are not secrets
    console, _ = _console(secrets=("ab", ""))
    assert console.mask("abc") == "abc"


def test_no_host_no_prefix_and_empty_line():
    out = io.StringIO()
    console = Console("", ["hunter2"], stream=out)
    console()
    console("x hunter2")
    assert out.getvalue() == f"\nx {MASK}\n"


def test_line_writer_buffers_partial_lines_and_masks():
    console, out = _console()
    writer = console.writer(indent="  ")
    assert writer.write("pulling hun") == len("pulling hun")
    assert out.getvalue() == ""  # nothing until a line is complete
    writer.write("ter2 done\nprogress 10%\rprogress 100%\r\n\n   \nlast without newline")
    assert out.getvalue().splitlines() == [f"[web1]   pulling {MASK} done", "[web1]   progress 10%",
                                           "[web1]   progress 100%"]
    writer.flush()
    assert out.getvalue().splitlines()[-1] == "[web1]   last without newline"
    writer.flush()  # idempotent
    assert len(out.getvalue().splitlines()) == 4


def test_secrets_from_config_are_masked(local_config):
    out = io.StringIO()
    console = Console("127.0.0.1", local_config.secrets(), stream=out)
    console("SECRET_KEY=local-testbed-not-a-secret BOOT_SECONDS=2")
    assert out.getvalue() == f"[127.0.0.1] SECRET_KEY={MASK} BOOT_SECONDS=2\n"
