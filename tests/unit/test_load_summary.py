"""load.summarize: what users of a deploy would have seen, computed from samples."""
from __future__ import annotations

import pytest

from harness.load import MAINTENANCE_STATUS, Sample, summarize


def ok(client, start, version="v1", end=None, status=200):
    return Sample(client, start, start + 0.01 if end is None else end, status, version)


def test_all_good():
    samples = [ok(c, t / 10) for c in range(3) for t in range(10)]
    summary = summarize(samples, "v2")
    assert summary.requests == 30 and summary.failed == 0 and summary.regressions == 0 and summary.errors == {}
    assert summary.max_gap_s == pytest.approx(0.1, abs=1e-3)
    assert summary.window_s == 0.0


def test_empty():
    summary = summarize([])
    assert (summary.requests, summary.failed, summary.max_gap_s, summary.regressions) == (0, 0, 0.0, 0)


def test_failures_are_counted_by_kind():
    samples = [
        ok(0, 0.0), ok(0, 0.1),
        Sample(0, 0.2, 0.25, 0, "", error="ConnectionRefusedError"),
        Sample(1, 0.2, 0.3, 0, "", error="ConnectionRefusedError"),
        Sample(1, 0.3, 0.31, 502, ""),
        Sample(1, 0.4, 0.41, 503, "", retry_after=False),
        Sample(1, 0.5, 0.51, 404, "v1"),
        ok(0, 1.0),
    ]
    summary = summarize(samples)
    assert summary.failed == 5
    assert summary.errors == {"ConnectionRefusedError": 2, "HTTP 502": 1, "HTTP 503": 1, "HTTP 404": 1}


def test_max_gap_is_the_longest_time_without_a_success():
    samples = [ok(0, 0.0), ok(0, 0.5), Sample(0, 0.6, 0.7, 0, "", error="x"), Sample(0, 0.8, 0.9, 502, ""),
               ok(0, 2.0, end=2.1), ok(0, 2.2)]
    # successes end at 0.01, 0.51, 2.1, 2.21: longest gap 0.51 -> 2.1
    assert summarize(samples).max_gap_s == pytest.approx(1.59, abs=1e-4)


def test_max_gap_counts_the_edges():
    # nothing succeeded for the first second and the last two
    samples = [Sample(0, 0.0, 1.0, 0, "", error="x"), ok(0, 1.0, end=1.1), Sample(0, 1.2, 3.1, 0, "", error="x")]
    assert summarize(samples).max_gap_s == pytest.approx(2.0, abs=1e-4)
    only_failures = [Sample(0, 0.0, 0.5, 0, "", error="x"), Sample(1, 0.2, 1.5, 0, "", error="x")]
    assert summarize(only_failures).max_gap_s == pytest.approx(1.5)


def test_regressions_old_after_new_per_client():
    samples = [
        ok(0, 0.0, "v1"), ok(0, 0.1, "v2"), ok(0, 0.2, "v1"), ok(0, 0.3, "v1"),  # 2 regressions on client 0
        ok(1, 0.0, "v1"), ok(1, 0.15, "v1"), ok(1, 0.25, "v2"), ok(1, 0.35, "v2"),  # clean switch on client 1
        ok(2, 0.05, "v1"), ok(2, 0.4, "v2"), Sample(2, 0.5, 0.51, 0, "", error="x"),  # a failure is no regression
        Sample(2, 0.6, 0.61, 500, "v1"),  # neither is an error page from the old version
    ]
    summary = summarize(samples, "v2")
    assert summary.regressions == 2
    assert summarize(samples).regressions == 0  # no new version given: not measured


def test_regressions_follow_completion_order_not_list_order():
    samples = [ok(0, 0.3, "v1"), ok(0, 0.1, "v2")]  # v1 answered after v2, listed first
    assert summarize(samples, "v2").regressions == 1


def test_maintenance_page_counts_as_ok_only_when_allowed_and_with_retry_after():
    page = Sample(0, 0.1, 0.11, MAINTENANCE_STATUS, "", retry_after=True)
    bare_503 = Sample(1, 0.2, 0.21, MAINTENANCE_STATUS, "", retry_after=False)
    samples = [ok(0, 0.0), page, bare_503, Sample(0, 0.5, 0.9, MAINTENANCE_STATUS, "", retry_after=True), ok(0, 1.0)]

    strict = summarize(samples)
    assert strict.failed == 3 and strict.errors == {"HTTP 503": 3} and strict.window_s == 0.0

    allowed = summarize(samples, maintenance_ok=True)
    assert allowed.failed == 1 and allowed.errors == {"HTTP 503": 1}
    assert allowed.window_s == pytest.approx(0.9 - 0.11, abs=1e-3)
    assert allowed.max_gap_s < strict.max_gap_s
