"""A constant HTTP load that never retries, to count what users of a deploy would see.

Each client is one keep-alive HTTP/1.1 connection sending GETs and POSTs in turn at a fixed
rate. A failed request is counted and the client reconnects for its next request, as a
simple API client would: it does not retry the one that failed. Runs in its own process so
the deploy it measures does not share its interpreter.
"""
from __future__ import annotations

import http.client
import multiprocessing
import threading
import time
from dataclasses import dataclass, field

VERSION_HEADER = "X-App-Version"
MAINTENANCE_STATUS = 503


@dataclass
class Sample:
    client: int
    start: float
    end: float
    status: int  # 0 = connection error
    version: str
    retry_after: bool = False
    error: str = ""


@dataclass
class Summary:
    requests: int
    failed: int
    max_gap_s: float
    regressions: int
    errors: dict[str, int] = field(default_factory=dict)
    window_s: float = 0.0
    p50_ms: float = 0.0  # latency of the successful requests
    p99_ms: float = 0.0


def _client(number: int, host: str, port: int, interval: float, stop: threading.Event, out: list[Sample],
            site: str | None = None) -> None:
    conn = None
    headers = {"Content-Type": "text/plain", **({"Host": site} if site else {})}
    sent = 0
    next_at = time.monotonic()
    while not stop.is_set():
        method, path, body = ("POST", "/items", f"c{number}-{sent}".encode()) if sent % 2 else ("GET", "/", None)
        sent += 1
        start = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            out.append(Sample(number, start, time.monotonic(), response.status,
                              response.getheader(VERSION_HEADER, ""), bool(response.getheader("Retry-After"))))
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            out.append(Sample(number, start, time.monotonic(), 0, "", error=type(exc).__name__))
            if conn is not None:
                conn.close()
            conn = None
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))


def _generate(host, port, clients, rate, min_requests, min_seconds, control, results, site=None) -> None:
    stop = threading.Event()
    samples: list[list[Sample]] = [[] for _ in range(clients)]
    threads = [threading.Thread(target=_client, args=(n, host, port, clients / rate, stop, samples[n], site), daemon=True)
               for n in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    control.wait()  # the measured action is done
    while (sum(map(len, samples)) < min_requests or time.monotonic() - started < min_seconds):
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join()
    results.put([s for per_client in samples for s in per_client])


class Load:
    """`with Load(...) as load: act()`; then `load.samples`. Keeps going until `min_requests`."""

    def __init__(self, host="127.0.0.1", port=80, clients=8, rate=500.0, min_requests=5000, min_seconds=2.0,
                 site: str | None = None):
        context = multiprocessing.get_context("fork")
        self._done = context.Event()
        self._results = context.Queue()
        self._process = context.Process(target=_generate, daemon=True,
                                        args=(host, port, clients, rate, min_requests, min_seconds, self._done, self._results, site))
        self.samples: list[Sample] = []

    def __enter__(self) -> "Load":
        self._process.start()
        time.sleep(1.0)  # steady state before the action
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(1.0)  # and after it
        self._done.set()
        self.samples = self._results.get(timeout=600)
        self._process.join(timeout=30)


def summarize(samples: list[Sample], new_version: str | None = None, *, maintenance_ok: bool = False) -> Summary:
    """failed: anything but the app's 2xx (or, if allowed, the maintenance 503 with Retry-After).
    max_gap_s: the longest time in which no request succeeded. regressions: answers from another
    version to a client that had already been answered by `new_version`."""
    def ok(s: Sample) -> bool:
        return 200 <= s.status < 300 or (maintenance_ok and s.status == MAINTENANCE_STATUS and s.retry_after)

    failed = [s for s in samples if not ok(s)]
    errors: dict[str, int] = {}
    for s in failed:
        key = s.error or f"HTTP {s.status}"
        errors[key] = errors.get(key, 0) + 1
    successes = sorted(s.end for s in samples if ok(s))
    start = min((s.start for s in samples), default=0.0)
    end = max((s.end for s in samples), default=0.0)
    edges = [start, *successes, end]
    max_gap = max((b - a for a, b in zip(edges, edges[1:])), default=0.0)
    regressions = 0
    if new_version:
        seen_new: set[int] = set()
        for s in sorted(samples, key=lambda s: s.end):
            if s.version == new_version:
                seen_new.add(s.client)
            elif s.client in seen_new and s.version and 200 <= s.status < 300:
                regressions += 1
    window = _maintenance_window(samples) if maintenance_ok else 0.0
    latencies = sorted(s.end - s.start for s in samples if ok(s))
    p50, p99 = (_percentile(latencies, q) * 1000 for q in (0.5, 0.99))
    return Summary(len(samples), len(failed), round(max_gap, 4), regressions, errors, window, round(p50, 2), round(p99, 2))


def _percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def _maintenance_window(samples: list[Sample]) -> float:
    pages = [s.end for s in samples if s.status == MAINTENANCE_STATUS]
    return round(max(pages) - min(pages), 3) if pages else 0.0
